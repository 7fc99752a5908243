//! `certificate_requests` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "certificate_requests")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Uuid,
    pub profile_id: Uuid,
    pub requester_id: Uuid,
    pub ca_id: Uuid,
    pub status: String,
    pub csr_der: Option<Vec<u8>>,
    pub subject: String,
    pub sans: Json,
    pub key_algorithm: String,
    pub validity_days: i32,
    pub reserved_serial_hex: Option<String>,
    pub tbs_der: Option<Vec<u8>>,
    pub certificate_id: Option<Uuid>,
    pub replaces_certificate_id: Option<Uuid>,
    pub failure_reason: Option<String>,
    pub idempotency_key: Option<String>,
    pub supersede_replaced: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
