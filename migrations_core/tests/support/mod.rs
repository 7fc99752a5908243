//! What the schema tests of both migrators share: a fresh database per test
//! on each backend (a temporary SQLite file; a uniquely named PostgreSQL
//! database on 127.0.0.1:5432, dropped afterwards even when the test
//! fails), and small raw-SQL helpers. Included by path from
//! migrations_secure's tests as well.

#![allow(dead_code)]

use std::future::Future;

use sea_orm_migration::sea_orm::prelude::{ChronoDateTimeUtc, Uuid};
use sea_orm_migration::sea_orm::{
    ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, DbErr, QueryResult, Statement,
    Value,
};
use sea_orm_migration::sea_query::{Alias, Expr, ExprTrait, Query};

const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Runs `scenario` against a new SQLite file, removed afterwards.
pub async fn on_sqlite<F, Fut>(scenario: F)
where
    F: FnOnce(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = std::env::temp_dir().join(format!("clm-schema-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("test.db").display());
    let db = Database::connect(url).await.unwrap();
    // sqlx turns foreign keys on by default; the tests rely on it.
    assert_eq!(
        scalar_i64(&db, "PRAGMA foreign_keys").await.unwrap(),
        1,
        "foreign keys off"
    );
    scenario(db).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `scenario` against a new PostgreSQL database, dropped afterwards
/// whatever the outcome. Skips with a note when PostgreSQL is unreachable,
/// unless `CLM_TEST_REQUIRE_POSTGRES=1`.
pub async fn on_postgres<F, Fut>(prefix: &str, scenario: F)
where
    F: FnOnce(DatabaseConnection) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admin = match Database::connect(POSTGRES_ADMIN_URL).await {
        Ok(db) => db,
        Err(e) => {
            assert!(
                std::env::var("CLM_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "PostgreSQL on 127.0.0.1:5432 is required (CLM_TEST_REQUIRE_POSTGRES=1) but unreachable: {e}"
            );
            eprintln!("note: PostgreSQL on 127.0.0.1:5432 unreachable, test skipped: {e}");
            return;
        }
    };
    let name = format!("{prefix}_{}", Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    // A task of its own, so that a failing assertion comes back here as
    // an error and the database is still dropped.
    let outcome = tokio::spawn(async move {
        let db = Database::connect(url).await.unwrap();
        scenario(db.clone()).await;
        db.close().await.unwrap();
    })
    .await;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

pub async fn exec(db: &DatabaseConnection, sql: &str) -> Result<(), DbErr> {
    db.execute_unprepared(sql).await.map(|_| ())
}

pub async fn row(db: &DatabaseConnection, sql: &str) -> Result<QueryResult, DbErr> {
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(sql.to_string()))
}

pub async fn rows(db: &DatabaseConnection, sql: &str) -> Result<Vec<QueryResult>, DbErr> {
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
}

pub async fn scalar_i64(db: &DatabaseConnection, sql: &str) -> Result<i64, DbErr> {
    row(db, sql).await?.try_get_by_index::<i64>(0)
}

/// Rows in `relation` (a table or view, optionally with a WHERE clause);
/// an error if it does not exist.
pub async fn count(db: &DatabaseConnection, relation: &str) -> Result<i64, DbErr> {
    scalar_i64(db, &format!("SELECT COUNT(*) FROM {relation}")).await
}

/// Inserts one row through sea-query, so that every value is bound and
/// stored exactly as sea-orm stores it.
pub async fn insert(
    db: &DatabaseConnection,
    table: &str,
    cols: Vec<(&str, Value)>,
) -> Result<(), DbErr> {
    let (names, values): (Vec<_>, Vec<_>) = cols.into_iter().unzip();
    let stmt = Query::insert()
        .into_table(Alias::new(table))
        .columns(names.into_iter().map(Alias::new))
        .values(values.into_iter().map(Expr::val))
        .map_err(|e| DbErr::Custom(e.to_string()))?
        .to_owned();
    db.execute(&stmt).await.map(|_| ())
}

/// `updated_at` (or another timestamp column) of the row `id` of `table`,
/// read back through sea-orm as `DateTimeUtc`.
pub async fn timestamp(
    db: &DatabaseConnection,
    table: &str,
    column: &str,
    id: Uuid,
) -> Result<ChronoDateTimeUtc, DbErr> {
    let stmt = Query::select()
        .column(Alias::new(column))
        .from(Alias::new(table))
        .and_where(Expr::col(Alias::new("id")).eq(id))
        .to_owned();
    let r = db
        .query_one(&stmt)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(table.to_string()))?;
    r.try_get::<ChronoDateTimeUtc>("", column)
}

/// The text SQLite holds in a timestamp column (sqlx's format or the
/// trigger's), for checking that the two agree.
pub async fn sqlite_text(
    db: &DatabaseConnection,
    table: &str,
    column: &str,
    id: Uuid,
) -> Result<String, DbErr> {
    let stmt = Query::select()
        .expr(Expr::cust(format!("CAST({column} AS TEXT)")))
        .from(Alias::new(table))
        .and_where(Expr::col(Alias::new("id")).eq(id))
        .to_owned();
    let r = db
        .query_one(&stmt)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(table.to_string()))?;
    r.try_get_by_index::<String>(0)
}

/// Whole seconds since the epoch, so that values survive PostgreSQL's
/// microsecond precision unchanged.
pub fn now() -> ChronoDateTimeUtc {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    ChronoDateTimeUtc::from_timestamp(secs, 0).unwrap()
}

pub fn days_from_now(days: i64) -> ChronoDateTimeUtc {
    ChronoDateTimeUtc::from_timestamp(now().timestamp() + days * 86_400, 0).unwrap()
}

pub fn long_ago() -> ChronoDateTimeUtc {
    ChronoDateTimeUtc::from_timestamp(1_000_000_000, 0).unwrap()
}

/// Every schema object in the database except the migrators' tracking
/// tables: tables, views, indexes and triggers (SQLite), or tables, views,
/// triggers and functions (PostgreSQL). `down` must leave this empty.
pub async fn leftovers(db: &DatabaseConnection) -> Vec<String> {
    let sql = match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            "SELECT table_type || ' ' || table_name AS name FROM information_schema.tables \
               WHERE table_schema = 'public' AND table_name NOT LIKE 'seaql_migrations%' \
             UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal \
             UNION ALL SELECT 'function ' || p.proname FROM pg_proc p \
               JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' \
             UNION ALL SELECT 'type ' || t.typname FROM pg_type t \
               JOIN pg_namespace n ON n.oid = t.typnamespace \
               WHERE n.nspname = 'public' AND t.typtype = 'e'"
        }
        _ => {
            "SELECT type || ' ' || name AS name FROM sqlite_master \
             WHERE name NOT LIKE 'sqlite_%' AND tbl_name NOT LIKE 'seaql_migrations%'"
        }
    };
    rows(db, sql)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String>("", "name").unwrap())
        .collect()
}

/// Names of the migration tracking tables present.
pub async fn tracking_tables(db: &DatabaseConnection) -> Vec<String> {
    let sql = match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            "SELECT table_name AS name FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_name LIKE 'seaql_migrations%' ORDER BY 1"
        }
        _ => {
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name LIKE 'seaql_migrations%' ORDER BY 1"
        }
    };
    rows(db, sql)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String>("", "name").unwrap())
        .collect()
}

/// "Now minus a minute" as SQL comparable with stored timestamps.
pub fn a_minute_ago(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        DatabaseBackend::Postgres => "(now() - interval '1 minute')",
        _ => "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-1 minute')",
    }
}

/// Asserts that `sql` is refused, and names the rule in the message.
pub async fn refused(db: &DatabaseConnection, sql: &str, rule: &str) {
    assert!(exec(db, sql).await.is_err(), "{rule}: `{sql}` was accepted");
}
