//! `ca_crls` table: the latest signed CRL of each CA (its DER is in
//! `ca_crl_parts`).

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
    /// Length of the DER, the sum of its parts.
    pub der_length: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
