//! Webhooks per organisation and their persistent delivery queue.

use sea_orm_migration::prelude::*;

use crate::sql::{self, render, statements};

const PREFIX: &str = "clm_core";

const TABLES: &str = r#"
CREATE TABLE webhooks (
    id {uuid} PRIMARY KEY,
    organization_id {uuid} NOT NULL REFERENCES organizations(id),
    url text NOT NULL,
    events {json} NOT NULL,
    status text NOT NULL CHECK (status IN ('active','disabled')),
    created_by {uuid} NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE INDEX idx_webhooks_org ON webhooks (organization_id, status);
CREATE TABLE webhook_deliveries (
    id {uuid} PRIMARY KEY,
    webhook_id {uuid} NOT NULL REFERENCES webhooks(id),
    organization_id {uuid} NOT NULL,
    event text NOT NULL,
    payload {json} NOT NULL,
    status text NOT NULL CHECK (status IN ('pending','delivered','failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at {ts} NOT NULL,
    last_status_code integer NULL,
    last_error text NULL,
    delivered_at {ts} NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX idx_webhook_deliveries_hook ON webhook_deliveries (webhook_id, created_at);
"#;

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
        let mut all = statements(&render(TABLES, backend));
        for table in ["webhooks", "webhook_deliveries"] {
            all.extend(sql::touch_trigger(PREFIX, table, backend));
        }
        sql::run(manager, &all).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let all = [
            "DROP TABLE IF EXISTS webhook_deliveries",
            "DROP TABLE IF EXISTS webhooks",
        ]
        .map(String::from);
        sql::run(manager, &all).await
    }
}
