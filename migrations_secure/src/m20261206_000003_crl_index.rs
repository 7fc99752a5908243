//! clm_secure, the CRL's read from the index alone: `idx_revocations_ca
//! (ca_id, revoked_at)` becomes `idx_revocations_crl (ca_id, revoked_at,
//! serial_hex, reason)`, every column a CRL entry needs. Through the old
//! index each of a million revocations was a lookup of its row, one page
//! read each in no useful order (2.4 s in SQLite for a million-entry CRL
//! against 0.3 s from the covering index; docs/performance.md).

use migrations_core::sql::{index, replace_index};
use sea_orm_migration::prelude::*;

const TABLE: &str = "certificate_revocations";

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000003_crl_index"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let covering = index(
            "idx_revocations_crl",
            TABLE,
            &["ca_id", "revoked_at", "serial_hex", "reason"],
        );
        replace_index(manager, TABLE, "idx_revocations_ca", covering).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let narrow = index("idx_revocations_ca", TABLE, &["ca_id", "revoked_at"]);
        replace_index(manager, TABLE, "idx_revocations_crl", narrow).await
    }
}
