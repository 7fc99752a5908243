//! clm_secure: the index the OCSP caches poll holds status changes only.
//!
//! Each instance reads the certificates whose status changed since its last
//! poll (revoked, held, released, expired) and drops its cached answers
//! about them. The poll re-reads a window of changes it has already seen,
//! because a writer stamps `updated_at` before it commits (service::ocsp);
//! with every issued certificate in the index, that window would hold
//! every issuance of the last half minute. A certificate's `updated_at`
//! equals its `created_at` until its row is first updated, so the index
//! keeps exactly the rows updated since: a fresh issuance no longer writes
//! an entry to it, and the poll never reads one.

use migrations_core::sql;
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000001_status_changes"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::run(
            manager,
            &[
                "CREATE INDEX idx_certificates_status_changed ON certificates (updated_at, id) \
                 WHERE updated_at <> created_at"
                    .to_string(),
                "DROP INDEX idx_certificates_updated".to_string(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::run(
            manager,
            &[
                "CREATE INDEX idx_certificates_updated ON certificates (updated_at)".to_string(),
                "DROP INDEX idx_certificates_status_changed".to_string(),
            ],
        )
        .await
    }
}
