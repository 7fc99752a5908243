//! `certificate_metadata` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "certificate_metadata")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Option<Uuid>,
    pub ca_id: Uuid,
    pub profile_id: Option<Uuid>,
    pub request_id: Option<Uuid>,
    pub owner_id: Option<Uuid>,
    pub common_name: Option<String>,
    pub sans: Json,
    pub serial_hex: String,
    pub not_before: DateTimeUtc,
    pub not_after: DateTimeUtc,
    pub status: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
