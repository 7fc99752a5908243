//! Building blocks both migrators share. Tables, indexes and foreign keys
//! go through the sea-query schema builder, so each column type is mapped
//! per backend by the same code sea-orm itself uses (`uuid`/`timestamptz`/
//! `jsonb`/`bytea` on PostgreSQL; on SQLite names with the affinity sqlx's
//! values need). Triggers, trigger functions and views differ in syntax
//! between the backends and are written out per backend here.
//!
//! PostgreSQL trigger functions carry a per-database prefix (`clm_core_`,
//! `clm_secure_`) so that both schemas can live in one database — as they do
//! in the tests — and each `down` drops only its own.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    json_binary, pk_uuid, text, text_null, timestamp_with_time_zone, uuid_null,
};
use sea_orm_migration::sea_orm::DatabaseBackend;

/// What the SQLite triggers and views use for "now". sqlx stores a
/// `DateTime<Utc>` on SQLite as RFC 3339 text with a `+00:00` offset
/// (`2026-11-22T10:11:12.123456789+00:00`); this yields the same shape
/// with milliseconds, which sea-orm reads back as `DateTimeUtc` and which
/// compares correctly as text with what sqlx wrote.
pub const SQLITE_NOW: &str = "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')";

/// The `id uuid PRIMARY KEY` every entity table starts with.
pub fn id() -> ColumnDef {
    pk_uuid("id")
}

/// `created_at timestamptz NOT NULL`.
pub fn created_at() -> ColumnDef {
    timestamp_with_time_zone("created_at")
}

/// `updated_at timestamptz NOT NULL`, kept current by [`touch_trigger`].
pub fn updated_at() -> ColumnDef {
    timestamp_with_time_zone("updated_at")
}

/// A CHECK restricting `column` of `table` to `values`. Named
/// `ck_<table>_<column>` so that a violation says which rule was broken.
pub fn one_of(table: &str, column: &'static str, values: &[&'static str]) -> Check {
    Check::named(
        format!("ck_{table}_{column}"),
        Expr::col(column).is_in(values.iter().copied()),
    )
}

/// A named CHECK written as SQL, for rules the expression builder does not
/// say more clearly than SQL itself (comparisons between columns, ranges).
pub fn rule(table: &str, name: &str, sql: &'static str) -> Check {
    Check::named(format!("ck_{table}_{name}"), Expr::cust(sql))
}

/// A foreign key `table.column → target.id`, named `fk_<table>_<column>`.
/// Only ever within one database: clm_core and clm_secure reference each
/// other by UUID only.
pub fn fk(
    table: &'static str,
    column: &'static str,
    target: &'static str,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_{table}_{column}"))
        .from(table, column)
        .to(target, "id")
        .to_owned()
}

/// A plain index `name` on `table (columns…)`.
pub fn index(
    name: &'static str,
    table: &'static str,
    columns: &[&'static str],
) -> IndexCreateStatement {
    let mut i = Index::create();
    i.name(name).table(table);
    for c in columns {
        i.col(*c);
    }
    i.to_owned()
}

/// `new` created, then the index `old` of `table` dropped: a query never
/// finds itself without one of them.
pub async fn replace_index(
    manager: &SchemaManager<'_>,
    table: &'static str,
    old: &'static str,
    new: IndexCreateStatement,
) -> Result<(), DbErr> {
    manager.create_index(new).await?;
    manager
        .drop_index(Index::drop().name(old).table(table).to_owned())
        .await
}

/// A unique index `name` on `table (columns…)`.
pub fn unique(
    name: &'static str,
    table: &'static str,
    columns: &[&'static str],
) -> IndexCreateStatement {
    index(name, table, columns).unique().to_owned()
}

/// The shape both audit logs share (`audit_log`, `secure_audit_log`):
/// one definition keeps them in step, as the store's audit writer expects.
pub fn audit_table(name: &'static str) -> TableCreateStatement {
    Table::create()
        .table(name)
        .col(id())
        .col(timestamp_with_time_zone("occurred_at"))
        .col(uuid_null("actor_id"))
        .col(text("actor_kind"))
        .col(uuid_null("organization_id"))
        .col(text("action"))
        .col(text_null("target_type"))
        .col(text_null("target_id"))
        .col(text("outcome"))
        .col(text_null("request_id"))
        .col(text_null("source_ip"))
        .col(text_null("user_agent"))
        .col(json_binary("details"))
        .check(one_of(name, "outcome", &["success", "failure", "denied"]))
        .to_owned()
}

/// Creates the tables, then the indexes, in order.
pub async fn create(
    manager: &SchemaManager<'_>,
    tables: Vec<TableCreateStatement>,
    indexes: Vec<IndexCreateStatement>,
) -> Result<(), DbErr> {
    for t in tables {
        manager.create_table(t).await?;
    }
    for i in indexes {
        manager.create_index(i).await?;
    }
    Ok(())
}

/// Drops `tables` in the order given (dependants first); their indexes
/// and triggers go with them on both backends.
pub async fn drop_tables(
    manager: &SchemaManager<'_>,
    tables: &[&'static str],
) -> Result<(), DbErr> {
    for t in tables {
        manager
            .drop_table(Table::drop().table(*t).if_exists().to_owned())
            .await?;
    }
    Ok(())
}

/// Drops `views` (before the tables they read).
pub async fn drop_views(manager: &SchemaManager<'_>, views: &[&str]) -> Result<(), DbErr> {
    let statements: Vec<String> = views
        .iter()
        .map(|v| format!("DROP VIEW IF EXISTS {v}"))
        .collect();
    run(manager, &statements).await
}

/// Runs raw statements in order.
pub async fn run(manager: &SchemaManager<'_>, statements: &[String]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for s in statements {
        db.execute_unprepared(s).await?;
    }
    Ok(())
}

/// Keeps `updated_at` of `table` current: a writer that does not set it
/// gets the time of the update. Both backends behave the same way — an
/// explicitly written value wins — because SQLite can only amend a row
/// after the fact and the guard `NEW.updated_at = OLD.updated_at` is what
/// stops its trigger from chasing its own update.
pub fn touch_trigger(prefix: &str, table: &str, backend: DatabaseBackend) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![format!(
            "CREATE TRIGGER {table}_touch BEFORE UPDATE ON {table} FOR EACH ROW \
             EXECUTE FUNCTION {prefix}_touch_updated_at()"
        )],
        _ => vec![format!(
            "CREATE TRIGGER {table}_touch AFTER UPDATE ON {table} FOR EACH ROW \
             WHEN NEW.updated_at = OLD.updated_at \
             BEGIN UPDATE {table} SET updated_at = {SQLITE_NOW} WHERE id = NEW.id; END"
        )],
    }
}

/// Refuses UPDATE and DELETE on `table`: audit rows are written once.
pub fn write_once_trigger(prefix: &str, table: &str, backend: DatabaseBackend) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![format!(
            "CREATE TRIGGER {table}_write_once BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW \
             EXECUTE FUNCTION {prefix}_write_once()"
        )],
        _ => vec![
            format!(
                "CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} \
                 BEGIN SELECT RAISE(ABORT, '{table} is write-once'); END"
            ),
            format!(
                "CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} \
                 BEGIN SELECT RAISE(ABORT, '{table} is write-once'); END"
            ),
        ],
    }
}

/// Refuses any change of `status` away from `revoked` on `table`.
pub fn no_unrevoke_trigger(prefix: &str, table: &str, backend: DatabaseBackend) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![format!(
            "CREATE TRIGGER {table}_no_unrevoke BEFORE UPDATE OF status ON {table} FOR EACH ROW \
             WHEN (OLD.status = 'revoked' AND NEW.status <> 'revoked') \
             EXECUTE FUNCTION {prefix}_no_unrevoke()"
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
             BEGIN \
               IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN NEW.updated_at := now(); END IF; \
               RETURN NEW; \
             END $$ LANGUAGE plpgsql"
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

/// Drops what [`pg_functions`] created (after the tables whose triggers
/// use them).
pub fn drop_pg_functions(prefix: &str) -> Vec<String> {
    ["touch_updated_at", "write_once", "no_unrevoke"]
        .iter()
        .map(|f| format!("DROP FUNCTION IF EXISTS {prefix}_{f}()"))
        .collect()
}
