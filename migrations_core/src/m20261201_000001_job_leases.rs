//! clm_core, background jobs across instances: one row per periodic job
//! (CRL refresh, expiry notices, rewrap, reconciliation, webhooks, audit
//! sealing and purge). An instance runs a job only after taking its lease
//! with a compare-and-set, so that of several instances on the same
//! databases one runs it, once per period. Times are milliseconds since
//! the epoch on the database's clock, so that instances whose clocks
//! disagree still agree on who holds a lease.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, string, string_null};

use crate::sql;

const TABLE: &str = "job_leases";

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000001_job_leases"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let table = Table::create()
            .table(TABLE)
            .col(string("name").primary_key())
            // The instance running the job, NULL when nobody is.
            .col(string_null("holder"))
            // A holder that stops renewing (killed) loses the lease then.
            .col(big_integer("expires_at_ms"))
            // Start of the last run: the next one waits for the period.
            .col(big_integer("last_started_ms"))
            .col(string_null("last_holder"))
            .col(big_integer("runs"))
            .to_owned();
        sql::create(manager, vec![table], vec![]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::drop_tables(manager, &[TABLE]).await
    }
}
