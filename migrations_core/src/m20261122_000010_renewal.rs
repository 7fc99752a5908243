//! clm_core, renewal and expiry: profiles may allow renewal with the same
//! key; the expiry job records each notice it sent in a table whose primary key makes "once
//! each" hold even with several instances (it replaces the JSON column the
//! first version had for this).

use crate::sql;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    boolean, integer, json_binary_null, timestamp_with_time_zone, uuid,
};

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
            .alter_table(
                Table::alter()
                    .table("certificate_metadata")
                    .drop_column("expiry_notices")
                    .to_owned(),
            )
            .await?;
        sql::create(
            manager,
            vec![
                Table::create()
                    .table("certificate_expiry_notices")
                    .col(uuid("certificate_id"))
                    .col(integer("days_before"))
                    .col(timestamp_with_time_zone("sent_at"))
                    .primary_key(Index::create().col("certificate_id").col("days_before"))
                    .foreign_key(&mut sql::fk(
                        "certificate_expiry_notices",
                        "certificate_id",
                        "certificate_metadata",
                    ))
                    .to_owned(),
            ],
            vec![],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::drop_tables(manager, &["certificate_expiry_notices"]).await?;
        manager
            .alter_table(
                Table::alter()
                    .table("certificate_metadata")
                    .add_column(json_binary_null("expiry_notices"))
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
