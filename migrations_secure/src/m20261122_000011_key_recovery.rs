//! clm_secure, key recovery: each request to recover an archived private
//! key, decided through clm_core's workflow engine and delivered at most once.

use migrations_core::sql::{self, created_at, fk, id, index, one_of, updated_at};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{timestamp_with_time_zone_null as ts_null, uuid};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000011_key_recovery"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::create(
            manager,
            vec![
                Table::create()
                    .table("key_recoveries")
                    .col(id())
                    .col(uuid("certificate_id"))
                    .col(uuid("organization_id"))
                    .col(uuid("requester_id"))
                    .col(ColumnDef::new("status").text().not_null())
                    .col(ts_null("completed_at"))
                    .col(created_at())
                    .col(updated_at())
                    .foreign_key(&mut fk("key_recoveries", "certificate_id", "certificates"))
                    .check(one_of(
                        "key_recoveries",
                        "status",
                        &[
                            "pending_approval",
                            "approved",
                            "completed",
                            "rejected",
                            "expired",
                        ],
                    ))
                    .to_owned(),
            ],
            vec![index(
                "idx_key_recoveries_certificate",
                "key_recoveries",
                &["certificate_id", "requester_id"],
            )],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::drop_tables(manager, &["key_recoveries"]).await
    }
}
