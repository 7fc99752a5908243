//! `certificates` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "certificates")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Option<Uuid>,
    pub ca_id: Uuid,
    pub request_id: Option<Uuid>,
    pub profile_id: Option<Uuid>,
    pub owner_id: Option<Uuid>,
    pub serial_hex: String,
    pub subject: String,
    pub sans: Json,
    pub key_algorithm: String,
    pub not_before: DateTimeUtc,
    pub not_after: DateTimeUtc,
    pub status: String,
    pub is_ca: bool,
    pub certificate_der: Vec<u8>,
    pub fingerprint_sha256: String,
    pub replaces_certificate_id: Option<Uuid>,
    pub revoked_at: Option<DateTimeUtc>,
    pub revocation_reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
