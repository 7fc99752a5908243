//! Tamper evidence for `audit_log` (issue #7): seq, entry hash and MAC
//! columns, `audit_seals`, `audit_checkpoints`, `audit_purge_permits`.
//! The shared shape is in [`crate::audit_chain`].

use sea_orm_migration::prelude::*;

use crate::audit_chain::{self, AuditTables};

pub const TABLES: AuditTables = AuditTables {
    prefix: "clm_core",
    log: "audit_log",
    seals: "audit_seals",
    checkpoints: "audit_checkpoints",
    permits: "audit_purge_permits",
    indexes: &[
        ("idx_audit_occurred", &["occurred_at"]),
        ("idx_audit_org", &["organization_id", "occurred_at"]),
        ("idx_audit_actor", &["actor_id", "occurred_at"]),
    ],
    org_seq_index: "idx_audit_org_seq",
};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000001_audit_chain"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        audit_chain::up(manager, &TABLES).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        audit_chain::down(manager, &TABLES).await
    }
}
