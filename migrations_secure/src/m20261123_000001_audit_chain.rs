//! Tamper evidence for `secure_audit_log` (issue #7): seq, entry hash and
//! MAC columns, `secure_audit_seals`, `secure_audit_checkpoints`,
//! `secure_audit_purge_permits`. The shared shape is in
//! [`migrations_core::audit_chain`].

use migrations_core::audit_chain::{self, AuditTables};
use sea_orm_migration::prelude::*;

pub const TABLES: AuditTables = AuditTables {
    prefix: "clm_secure",
    log: "secure_audit_log",
    seals: "secure_audit_seals",
    checkpoints: "secure_audit_checkpoints",
    permits: "secure_audit_purge_permits",
    indexes: &[
        ("idx_secure_audit_occurred", &["occurred_at"]),
        ("idx_secure_audit_org", &["organization_id", "occurred_at"]),
        ("idx_secure_audit_target", &["target_type", "target_id"]),
    ],
    org_seq_index: "idx_secure_audit_org_seq",
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
