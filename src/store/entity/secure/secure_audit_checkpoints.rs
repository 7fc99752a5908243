//! `secure_audit_checkpoints` table: what each retention purge left behind.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "secure_audit_checkpoints")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub purged_through_seal: i64,
    pub purged_through_seq: i64,
    pub seal_mac: Vec<u8>,
    pub key_version: i32,
    pub created_at: DateTimeUtc,
    pub mac: Vec<u8>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
