//! `secure_audit_seals` table: write-once seals over contiguous seq ranges.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "secure_audit_seals")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub seal_no: i64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub entry_count: i64,
    /// JSON array of the seqs in the range that hold no entry.
    pub gaps: Json,
    pub running_hash: Vec<u8>,
    pub prev_mac: Vec<u8>,
    pub key_version: i32,
    pub sealed_at: DateTimeUtc,
    pub mac: Vec<u8>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
