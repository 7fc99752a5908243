//! clm_secure, KEK rotation: at most one rotation per key purpose runs at a
//! time — the database refuses a second one, whichever instance starts it.

use migrations_core::sql;
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000012_kek_rotation"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // A partial unique index: the same statement on both backends.
        sql::run(
            manager,
            &["CREATE UNIQUE INDEX uq_key_rotation_running ON key_rotation_history (key_purpose) \
               WHERE status = 'running'"
                .to_string()],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::run(
            manager,
            &["DROP INDEX IF EXISTS uq_key_rotation_running".to_string()],
        )
        .await
    }
}
