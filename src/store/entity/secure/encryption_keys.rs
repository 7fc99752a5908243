//! `encryption_keys` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "encryption_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub label: String,
    pub ckaid_hex: String,
    pub pkcs11_uri: String,
    pub purpose: String,
    pub algorithm: String,
    pub status: String,
    pub version: i32,
    pub parent_key_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub public_key_der: Option<Vec<u8>>,
    pub activated_at: Option<DateTimeUtc>,
    pub deprecated_at: Option<DateTimeUtc>,
    pub destroyed_at: Option<DateTimeUtc>,
    pub rollback_expires_at: Option<DateTimeUtc>,
    pub metadata: Option<Json>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
