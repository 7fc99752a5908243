//! clm_secure: requests in `approved` indexed on their own.
//!
//! A request is in `approved` from the moment its serial is reserved until
//! its certificate is stored (well under a second), or for good when a
//! crash cut its issuance short. Reconciliation looks for the latter every
//! few minutes (service::reconcile); without this index it read and sorted
//! every request ever made to find them. The index holds only the
//! requests in flight, so it stays a few pages at any size.

use migrations_core::sql;
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000002_approved_requests"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::run(
            manager,
            &[
                "CREATE INDEX idx_requests_approved ON certificate_requests (updated_at) \
               WHERE status = 'approved'"
                    .to_string(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::run(manager, &["DROP INDEX idx_requests_approved".to_string()]).await
    }
}
