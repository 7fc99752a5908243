//! `certificate_expiry_notices` table: one row per notice sent.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "certificate_expiry_notices")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub certificate_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub days_before: i32,
    pub sent_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
