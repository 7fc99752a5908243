//! DDL helpers shared by both migrators: tables written once with type
//! placeholders and rendered per backend, so the SQLite and PostgreSQL
//! schemas cannot drift apart; triggers, which differ in syntax, written out
//! per backend. PostgreSQL trigger functions carry a per-database prefix so
//! that both schemas can live in one database and be dropped independently.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

/// Replaces `{uuid}`, `{ts}`, `{json}`, `{bytes}`, `{bool}`, `{bigint}` with
/// the backend's types. SQLite stores what sqlx writes: UUIDs as 16-byte
/// blobs, timestamps as RFC 3339 text.
pub fn render(ddl: &str, backend: DatabaseBackend) -> String {
    let types: &[(&str, &str)] = match backend {
        DatabaseBackend::Postgres => &[
            ("{uuid}", "uuid"),
            ("{ts}", "timestamptz"),
            ("{json}", "jsonb"),
            ("{bytes}", "bytea"),
            ("{bool}", "boolean"),
            ("{bigint}", "bigint"),
        ],
        _ => &[
            ("{uuid}", "blob"),
            ("{ts}", "text"),
            ("{json}", "text"),
            ("{bytes}", "blob"),
            ("{bool}", "boolean"),
            ("{bigint}", "integer"),
        ],
    };
    types
        .iter()
        .fold(ddl.to_string(), |s, (k, v)| s.replace(k, v))
}

/// Runs the statements in order.
pub async fn run(manager: &SchemaManager<'_>, statements: &[String]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for s in statements {
        db.execute_unprepared(s).await?;
    }
    Ok(())
}

/// `updated_at` maintenance for `table`.
pub fn touch_trigger(prefix: &str, table: &str, backend: DatabaseBackend) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![format!(
            "CREATE TRIGGER {table}_touch BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {prefix}_touch_updated_at()"
        )],
        _ => vec![format!(
            "CREATE TRIGGER {table}_touch AFTER UPDATE ON {table} FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at \
             BEGIN UPDATE {table} SET updated_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now') WHERE id = NEW.id; END"
        )],
    }
}

/// Refuses UPDATE and DELETE on `table`.
pub fn write_once_trigger(prefix: &str, table: &str, backend: DatabaseBackend) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![format!(
            "CREATE TRIGGER {table}_write_once BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {prefix}_write_once()"
        )],
        _ => vec![
            format!(
                "CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} BEGIN SELECT RAISE(ABORT, '{table} is write-once'); END"
            ),
            format!(
                "CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} BEGIN SELECT RAISE(ABORT, '{table} is write-once'); END"
            ),
        ],
    }
}

/// Refuses any change of `status` away from `revoked` on `table`.
pub fn no_unrevoke_trigger(prefix: &str, table: &str, backend: DatabaseBackend) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![format!(
            "CREATE TRIGGER {table}_no_unrevoke BEFORE UPDATE OF status ON {table} FOR EACH ROW \
             WHEN (OLD.status = 'revoked' AND NEW.status <> 'revoked') EXECUTE FUNCTION {prefix}_no_unrevoke()"
        )],
        _ => vec![format!(
            "CREATE TRIGGER {table}_no_unrevoke BEFORE UPDATE OF status ON {table} \
             WHEN OLD.status = 'revoked' AND NEW.status <> 'revoked' \
             BEGIN SELECT RAISE(ABORT, 'a revoked certificate stays revoked'); END"
        )],
    }
}

/// The PL/pgSQL functions the PostgreSQL triggers call.
pub fn pg_functions(prefix: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE OR REPLACE FUNCTION {prefix}_touch_updated_at() RETURNS trigger AS $$ \
             BEGIN NEW.updated_at = now(); RETURN NEW; END $$ LANGUAGE plpgsql"
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {prefix}_write_once() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION '% is write-once', TG_TABLE_NAME; END $$ LANGUAGE plpgsql"
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {prefix}_no_unrevoke() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION 'a revoked certificate stays revoked'; END $$ LANGUAGE plpgsql"
        ),
    ]
}

/// Drops what [`pg_functions`] created (after the tables using them).
pub fn drop_pg_functions(prefix: &str) -> Vec<String> {
    ["touch_updated_at", "write_once", "no_unrevoke"]
        .iter()
        .map(|f| format!("DROP FUNCTION IF EXISTS {prefix}_{f}()"))
        .collect()
}

/// Splits a rendered script on `;` at line ends (table DDL never contains
/// one elsewhere).
pub fn statements(script: &str) -> Vec<String> {
    script
        .split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}
