//! clm_core, renewal and expiry: profiles may allow renewal with the same
//! key, and the expiry job scans certificate metadata by status and notAfter.

use crate::sql::index;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::boolean;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000010_renewal"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("policies")
                    .add_column(boolean("allow_key_reuse").default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_certificate_metadata_expiry",
                "certificate_metadata",
                &["status", "not_after"],
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_certificate_metadata_expiry")
                    .table("certificate_metadata")
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("policies")
                    .drop_column("allow_key_reuse")
                    .to_owned(),
            )
            .await
    }
}
