//! `secure_audit_log` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "secure_audit_log")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Position in the log, assigned by the writer from the database's
    /// sequence (never reused).
    pub seq: i64,
    pub occurred_at: DateTimeUtc,
    pub actor_id: Option<Uuid>,
    pub actor_kind: String,
    pub organization_id: Option<Uuid>,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub outcome: String,
    pub request_id: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: Json,
    /// SHA-256 of the canonical entry (`domain::audit::entry_hash`).
    pub entry_hash: Option<Vec<u8>>,
    /// HMAC-SHA-256 of `entry_hash` under the audit key, computed in the HSM.
    pub mac: Option<Vec<u8>>,
    pub mac_key_version: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
