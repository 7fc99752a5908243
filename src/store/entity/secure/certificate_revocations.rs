//! `certificate_revocations` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "certificate_revocations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub certificate_id: Uuid,
    pub ca_id: Uuid,
    pub serial_hex: String,
    pub reason: String,
    pub revoked_at: DateTimeUtc,
    pub invalidity_date: Option<DateTimeUtc>,
    pub revoked_by: Option<Uuid>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
