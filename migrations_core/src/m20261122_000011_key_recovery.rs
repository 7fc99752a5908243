//! clm_core, key recovery: the workflow engine also runs the approvals of
//! key-recovery requests, so each workflow says what it decides.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::text;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000011_key_recovery"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("workflow_instances")
                    .add_column(text("kind").default("certificate_request"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("workflow_instances")
                    .drop_column("kind")
                    .to_owned(),
            )
            .await
    }
}
