//! clm_core, mTLS: which principal a client certificate authenticates as.
//! A binding names a clm_secure certificate by id (the databases are never
//! joined) and the user, or the API key of that user, it acts as. One
//! binding per certificate; unbinding deletes the row (the audit log keeps
//! the history).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    timestamp_with_time_zone_null as ts_null, uuid, uuid_null, uuid_uniq,
};

use crate::sql::{self, created_at, fk, id, index, updated_at};

const TABLE: &str = "client_certificate_bindings";

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000030_client_certificate_bindings"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let table = Table::create()
            .table(TABLE)
            .col(id())
            .col(uuid_uniq("certificate_id"))
            .col(uuid("organization_id"))
            .col(uuid("user_id"))
            .col(uuid_null("api_key_id"))
            .col(ts_null("last_used_at"))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk(TABLE, "organization_id", "organizations"))
            .foreign_key(&mut fk(TABLE, "user_id", "users"))
            .foreign_key(&mut fk(TABLE, "api_key_id", "api_keys"))
            .to_owned();
        // A password change or deactivation ends the user's bindings.
        let by_user = index("idx_client_certificate_bindings_user", TABLE, &["user_id"]);
        sql::create(manager, vec![table], vec![by_user]).await?;
        let backend = manager.get_database_backend();
        sql::run(manager, &sql::touch_trigger("clm_core", TABLE, backend)).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::drop_tables(manager, &[TABLE]).await
    }
}
