//! Webhooks per organisation and their persistent delivery queue.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    integer, integer_null, json_binary, text, text_null, timestamp_with_time_zone as ts,
    timestamp_with_time_zone_null as ts_null, uuid, uuid_null,
};

use crate::sql::{self, created_at, fk, id, index, one_of, rule, updated_at};

const PREFIX: &str = "clm_core";

fn tables() -> Vec<TableCreateStatement> {
    vec![
        Table::create()
            .table("webhooks")
            .col(id())
            .col(uuid("organization_id"))
            .col(text("url"))
            .col(json_binary("events"))
            .col(text("status"))
            .col(uuid_null("created_by"))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk("webhooks", "organization_id", "organizations"))
            .check(one_of("webhooks", "status", &["active", "disabled"]))
            .to_owned(),
        Table::create()
            .table("webhook_deliveries")
            .col(id())
            .col(uuid("webhook_id"))
            .col(uuid("organization_id"))
            .col(text("event"))
            .col(json_binary("payload"))
            .col(text("status"))
            .col(integer("attempts").default(0))
            .col(ts("next_attempt_at"))
            .col(integer_null("last_status_code"))
            .col(text_null("last_error"))
            .col(ts_null("delivered_at"))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk("webhook_deliveries", "webhook_id", "webhooks"))
            .check(one_of(
                "webhook_deliveries",
                "status",
                &["pending", "delivered", "failed"],
            ))
            .check(rule("webhook_deliveries", "attempts", "attempts >= 0"))
            .to_owned(),
    ]
}

fn indexes() -> Vec<IndexCreateStatement> {
    vec![
        index(
            "idx_webhooks_org",
            "webhooks",
            &["organization_id", "status"],
        ),
        // The delivery worker's query: what is due now.
        index(
            "idx_webhook_deliveries_due",
            "webhook_deliveries",
            &["status", "next_attempt_at"],
        ),
        index(
            "idx_webhook_deliveries_hook",
            "webhook_deliveries",
            &["webhook_id", "created_at"],
        ),
    ]
}

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000002_webhooks"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        sql::create(manager, tables(), indexes()).await?;
        let mut triggers = Vec::new();
        for table in ["webhooks", "webhook_deliveries"] {
            triggers.extend(sql::touch_trigger(PREFIX, table, backend));
        }
        sql::run(manager, &triggers).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::drop_tables(manager, &["webhook_deliveries", "webhooks"]).await
    }
}
