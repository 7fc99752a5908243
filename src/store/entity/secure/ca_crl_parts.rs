//! `ca_crl_parts` table: the DER of each CA's stored CRL in pieces of at
//! most 1 MiB, in `part` order.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "ca_crl_parts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub ca_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub part: i32,
    pub der: Vec<u8>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::ca_crls::Entity",
        from = "Column::CaId",
        to = "super::ca_crls::Column::CaId"
    )]
    Crl,
}

impl ActiveModelBehavior for ActiveModel {}
