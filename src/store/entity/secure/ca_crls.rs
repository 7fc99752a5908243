//! `ca_crls` table: the latest signed CRL of each CA.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "ca_crls")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub ca_id: Uuid,
    pub crl_number: i64,
    pub this_update: DateTimeUtc,
    pub next_update: DateTimeUtc,
    pub entry_count: i64,
    pub crl_der: Vec<u8>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
