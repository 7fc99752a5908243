//! Persistence of both databases; the only room that imports `sea_orm`.
//!
//! [`CoreDb`] (clm_core: tenants, users, sessions, profiles, workflows,
//! notifications, application audit, certificate metadata) and [`SecureDb`]
//! (clm_secure: key registry, CAs, certificates, requests, revocations,
//! security audit) are separate handles over separate connections. They are
//! never joined; the service layer orders writes across them (DESIGN.md
//! decision 3). State changes are compare-and-set: an update that finds the
//! row in an unexpected state affects zero rows and becomes
//! [`StoreError::Conflict`].

mod audit;
mod audit_packed;
mod batched;
mod cache;
mod certificate_list;
mod client_cert;
mod core_db;
mod custody;
pub mod entity;
mod error;
mod expiry;
mod gauges;
mod group;
mod identity;
mod lease;
mod reconcile;
mod revocation;
mod rotation;
mod secure_db;
mod wal;
mod webhooks;
mod workflow;
// Last, apart from the rest: `clm bench run` only.
mod bench_fill;

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

pub use audit::{AuditFilter, AuditSigner, AuditStore};
pub use certificate_list::{COUNT_HORIZON, SEARCH_COUNT_HORIZON, Total};
pub use client_cert::IssuerState;
pub use core_db::{CoreDb, LiveSession, NewUser};
pub use error::{StoreError, StoreResult};
pub use expiry::ExpiringCertificate;
pub use identity::LiveApiKey;
pub use lease::JobLease;
pub use revocation::{Revocation, RevokedSerial, SerialStatus, StatusChange, StoredCrl};
pub use rotation::ArchivedRow;
pub use secure_db::SecureDb;
pub use wal::Checkpoint as LogCheckpoint;
pub use webhooks::AttemptResult;
pub use workflow::Approval;

pub use bench_fill::{bench_create_database, bench_drop_database};

use crate::domain::{CaId, CertificateStatus, Secret};

/// One page of a list: 1-based page number and its size.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub page: u64,
    pub per_page: u64,
}

impl Page {
    fn offset(self) -> u64 {
        self.page.saturating_sub(1).saturating_mul(self.per_page)
    }
}

/// Filters of the certificate list.
#[derive(Clone, Debug, Default)]
pub struct CertificateFilter {
    pub status: Option<CertificateStatus>,
    pub ca_id: Option<CaId>,
    /// Only certificates whose notAfter is at or before this instant.
    pub not_after_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Only certificates whose notAfter is after this instant.
    pub not_after_after: Option<chrono::DateTime<chrono::Utc>>,
    /// A substring of the subject, or the beginning of the serial.
    pub text: Option<String>,
    pub order: CertificateOrder,
}

/// The order of the certificate list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertificateOrder {
    /// Newest first (by creation).
    #[default]
    Newest,
    /// The one to expire soonest first: how one works through renewals.
    SoonestExpiry,
}

/// The connections of one database: `write` for everything that changes
/// it (and reads inside those transactions), `read` for plain reads.
///
/// SQLite has one writer; with a single pooled connection every read
/// would queue behind whatever transaction is in flight, so reads get a
/// pool of read-only connections of their own (WAL lets them run beside
/// the writer and see every committed transaction). PostgreSQL uses one
/// pool for both.
#[derive(Clone, Debug)]
pub(crate) struct Connections {
    pub write: DatabaseConnection,
    pub read: DatabaseConnection,
    /// The runtime the handle was opened on: its writer tasks
    /// (`store::group`) run there, not on whichever HTTP worker happens to
    /// write first.
    pub runtime: tokio::runtime::Handle,
}

/// A PostgreSQL URL as clm connects with it: on a loopback host with no
/// `sslmode` of its own, `sslmode=disable`.
///
/// libpq's default (`prefer`) negotiates TLS with a local server too, where
/// it protects nothing — and sqlx 0.9.0 leaves Nagle's algorithm on, so a
/// statement larger than one TLS record (16 KiB: every batch of the group
/// commit) leaves in several writes and waits ~40 ms for a delayed ACK
/// (sqlx issue #4335). Measured: 2 000 audit entries/s with TLS on
/// loopback, 17 000/s without (docs/performance.md). An explicit `sslmode`
/// is always kept.
fn postgres_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return raw.to_string();
    };
    let loopback = match url.host() {
        // `postgres:` is not a special scheme: its host stays text.
        Some(url::Host::Domain(d)) => {
            d == "localhost"
                || d.trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if !loopback || url.query_pairs().any(|(k, _)| k == "sslmode") {
        return raw.to_string();
    }
    url.query_pairs_mut().append_pair("sslmode", "disable");
    url.to_string()
}

/// Read-only connections SQLite opens beside its writer.
const SQLITE_READERS: u32 = 4;

async fn connect(url: &Secret) -> StoreResult<Connections> {
    let raw = url.expose();
    if !raw.starts_with("sqlite:") {
        let db = open(&postgres_url(raw), 16, false).await?;
        return Ok(Connections {
            write: db.clone(),
            read: db,
            runtime: tokio::runtime::Handle::current(),
        });
    }
    // SQLite serialises writers anyway; one connection avoids SQLITE_BUSY
    // between our own connections. Never touch the write pool while
    // holding a transaction on it.
    let write = open(raw, 1, false).await?;
    let read = open(raw, SQLITE_READERS, true).await?;
    Ok(Connections {
        write,
        read,
        runtime: tokio::runtime::Handle::current(),
    })
}

/// How long a pooled PostgreSQL connection may sit idle before it is
/// checked (a round trip) on its next checkout.
const CHECK_IF_IDLE_FOR: Duration = Duration::from_secs(1);

async fn open(url: &str, connections: u32, read_only: bool) -> StoreResult<DatabaseConnection> {
    use sea_orm::sqlx::sqlite::SqliteJournalMode;
    let mut opts = ConnectOptions::new(url.to_string());
    if url.starts_with("sqlite:") {
        // sqlx checks a pooled connection before every checkout; for
        // SQLite that is a round trip to the connection's worker thread
        // (two thread wake-ups per query) that can never find anything: a
        // file has no server that could drop the connection.
        opts.test_before_acquire(false);
    } else {
        // Only a connection idle long enough for a restart, a proxy or
        // the server to have dropped it is checked before use; a busy pool
        // no longer pays a round trip to PostgreSQL per checkout. A
        // connection that breaks while in use fails its query and is
        // discarded when returned (sqlx checks every connection then).
        opts.test_before_acquire_if_idle_for(CHECK_IF_IDLE_FOR);
    }
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .max_connections(connections)
        .min_connections(1)
        // Per connection, so that a connection the pool opens later has
        // them too. Statement journals and sorts stay in memory instead
        // of temporary files.
        .map_sqlx_sqlite_opts(move |o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5))
                .pragma("temp_store", "memory")
                .read_only(read_only)
        });
    Database::connect(opts).await.map_err(|e| {
        // The error text of sqlx can contain the URL; never log it whole.
        StoreError::Database(format!(
            "cannot connect: {}",
            redact_url(&e.to_string(), url)
        ))
    })
}

/// Starts a transaction on a write connection. On SQLite it is `BEGIN
/// IMMEDIATE`: the write lock is taken at once, waiting out the busy timeout
/// if another process (`clm bench keys-fill`, a CLI command beside the
/// server) holds it. A deferred transaction would take it only at its first
/// write, and one whose snapshot another process has committed past by then
/// fails at once with SQLITE_BUSY, which no busy timeout waits out.
/// PostgreSQL ignores the mode.
async fn begin_write(db: &DatabaseConnection) -> StoreResult<DatabaseTransaction> {
    Ok(db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await?)
}

fn redact_url(message: &str, url: &str) -> String {
    message.replace(url, "[database url]")
}

/// Applies `M`'s pending migrations. It looks before it writes: the
/// migrator's own bookkeeping starts with `CREATE TABLE IF NOT EXISTS`,
/// which PostgreSQL refuses to a role without CREATE on the schema even when
/// the table exists, and the runtime roles of scripts/postgres-roles.sql
/// have no DDL rights. With nothing pending this only reads.
async fn migrate<M: sea_orm_migration::MigratorTrait>(db: &DatabaseConnection) -> StoreResult<()> {
    if M::get_pending_migrations_read_only(db).await?.is_empty() {
        return Ok(());
    }
    M::up(db, None).await?;
    Ok(())
}

async fn ping(db: &DatabaseConnection) -> StoreResult<()> {
    db.execute_unprepared("SELECT 1").await?;
    Ok(())
}

/// JSON array of strings, as the schema stores lists.
fn json_strings<I, S>(items: I) -> serde_json::Value
where
    I: IntoIterator<Item = S>,
    S: ToString,
{
    serde_json::Value::Array(
        items
            .into_iter()
            .map(|s| serde_json::Value::String(s.to_string()))
            .collect(),
    )
}

fn strings_from_json(v: &serde_json::Value) -> StoreResult<Vec<String>> {
    v.as_array()
        .ok_or_else(|| error::corrupt("expected a JSON array"))?
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| error::corrupt("expected strings"))
        })
        .collect()
}

fn parse_all<T: std::str::FromStr>(v: &serde_json::Value) -> StoreResult<Vec<T>> {
    strings_from_json(v)?
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|_| error::corrupt(format!("unknown value `{s}`")))
        })
        .collect()
}

fn parse_one<T: std::str::FromStr>(s: &str) -> StoreResult<T> {
    s.parse()
        .map_err(|_| error::corrupt(format!("unknown value `{s}`")))
}

/// For plan and store tests: a fresh, migrated clm_secure on SQLite in `dir`.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) async fn sqlite_secure_for_plans(dir: &std::path::Path) -> SecureDb {
    let url = format!("sqlite://{}/secure.db?mode=rwc", dir.display());
    let db = SecureDb::connect(&crate::domain::Secret::new(url))
        .await
        .unwrap();
    db.migrate().await.unwrap();
    db
}

/// For plan tests: a fresh, migrated clm_core on SQLite in `dir`.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) async fn sqlite_core_for_plans(dir: &std::path::Path) -> CoreDb {
    let url = format!("sqlite://{}/core.db?mode=rwc", dir.display());
    let db = CoreDb::connect(&crate::domain::Secret::new(url))
        .await
        .unwrap();
    db.migrate().await.unwrap();
    db
}

/// For plan tests: SQLite's `EXPLAIN QUERY PLAN` of `q` on `read` (a
/// database's read connections), one line per step.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) async fn sqlite_plan(
    read: &sea_orm::DatabaseConnection,
    q: &impl sea_orm::StatementBuilder,
) -> Vec<String> {
    let q = sea_orm::DbBackend::Sqlite.build(q);
    let explain = sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Sqlite,
        format!("EXPLAIN QUERY PLAN {}", q.sql),
        q.values.map(|v| v.0).unwrap_or_default(),
    );
    read.query_all_raw(explain)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("", "detail").unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::postgres_url;
    use sea_orm::{ConnectionTrait, Statement};

    /// `.cargo/config.toml` builds SQLite with the query planner stability
    /// guarantee; without it every `LIMIT ?` statement is compiled again
    /// at each use (docs/performance.md).
    #[tokio::test]
    async fn sqlite_is_built_with_planner_stability() {
        let db = super::open("sqlite::memory:", 1, false).await.unwrap();
        let options: Vec<String> = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "PRAGMA compile_options",
            ))
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get_by_index::<String>(0).unwrap())
            .collect();
        assert!(
            options.iter().any(|o| o == "ENABLE_QPSG"),
            "SQLite built without SQLITE_ENABLE_QPSG: {options:?}"
        );
    }

    /// Two processes writing one SQLite file (`clm bench keys-fill` or a
    /// CLI command beside the server): a transaction that reads, sees the
    /// other commit, then writes must wait for the lock, not fail.
    #[tokio::test]
    async fn sqlite_write_transactions_wait_for_another_process() {
        use sea_orm::TransactionTrait;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let ours = super::open(&url, 1, false).await.unwrap();
        let theirs = super::open(&url, 1, false).await.unwrap();
        let run = |db: &sea_orm::DatabaseConnection, sql: &str| {
            let (db, sql) = (db.clone(), sql.to_string());
            async move { db.execute_unprepared(&sql).await }
        };
        run(&ours, "CREATE TABLE t (x INTEGER)").await.unwrap();

        // A deferred transaction's snapshot is overtaken: SQLITE_BUSY at once.
        let txn = ours.begin().await.unwrap();
        txn.execute_unprepared("SELECT count(*) FROM t")
            .await
            .unwrap();
        run(&theirs, "INSERT INTO t VALUES (1)").await.unwrap();
        let err = txn.execute_unprepared("INSERT INTO t VALUES (2)").await;
        assert!(err.is_err_and(|e| e.to_string().contains("locked")));
        txn.rollback().await.unwrap();

        // `begin_write` holds the lock from BEGIN on: the other process waits.
        let txn = super::begin_write(&ours).await.unwrap();
        txn.execute_unprepared("SELECT count(*) FROM t")
            .await
            .unwrap();
        let other = tokio::spawn(run(&theirs, "INSERT INTO t VALUES (3)"));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        txn.execute_unprepared("INSERT INTO t VALUES (4)")
            .await
            .unwrap();
        txn.commit().await.unwrap();
        other.await.unwrap().unwrap();
        let rows = ours
            .query_one_raw(Statement::from_string(
                ours.get_database_backend(),
                "SELECT group_concat(x) AS xs FROM (SELECT x FROM t ORDER BY x)",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rows.try_get::<String>("", "xs").unwrap(), "1,3,4");
    }

    #[test]
    fn loopback_postgres_skips_tls_unless_told_otherwise() {
        assert_eq!(
            postgres_url("postgres://postgres@127.0.0.1:5432/clm_core"),
            "postgres://postgres@127.0.0.1:5432/clm_core?sslmode=disable"
        );
        assert_eq!(
            postgres_url("postgres://u:p@localhost/db?application_name=clm"),
            "postgres://u:p@localhost/db?application_name=clm&sslmode=disable"
        );
        assert_eq!(
            postgres_url("postgres://[::1]/db"),
            "postgres://[::1]/db?sslmode=disable"
        );
        for kept in [
            "postgres://postgres@127.0.0.1/db?sslmode=require",
            "postgres://db.example.net/clm_core",
            "postgres://10.0.0.7:5432/clm_core",
        ] {
            assert_eq!(postgres_url(kept), kept);
        }
    }
}
