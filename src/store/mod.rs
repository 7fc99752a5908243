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
mod core_db;
mod custody;
pub mod entity;
mod error;
mod expiry;
mod identity;
mod revocation;
mod rotation;
mod secure_db;
mod webhooks;
mod workflow;
// Last, apart from the rest: `clm bench run` only.
mod bench_fill;

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};

pub use audit::{AuditFilter, AuditSigner, AuditStore};
pub use core_db::{CoreDb, NewUser};
pub use error::{StoreError, StoreResult};
pub use expiry::ExpiringCertificate;
pub use revocation::{Revocation, RevokedSerial, SerialStatus, StoredCrl};
pub use rotation::ArchivedRow;
pub use secure_db::SecureDb;
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
    /// Substring of the subject or the serial.
    pub text: Option<String>,
}

async fn connect(url: &Secret) -> StoreResult<DatabaseConnection> {
    let raw = url.expose();
    let mut opts = ConnectOptions::new(raw.to_string());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10));
    if raw.starts_with("sqlite:") {
        // SQLite serialises writers anyway; one connection avoids
        // SQLITE_BUSY between our own connections. Never touch the pool
        // while holding a transaction on it.
        opts.max_connections(1).min_connections(1);
    } else {
        opts.max_connections(16).min_connections(1);
    }
    let db = Database::connect(opts).await.map_err(|e| {
        // The error text of sqlx can contain the URL; never log it whole.
        StoreError::Database(format!(
            "cannot connect: {}",
            redact_url(&e.to_string(), raw)
        ))
    })?;
    if raw.starts_with("sqlite:") {
        db.execute_unprepared(
            "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;",
        )
        .await?;
    }
    Ok(db)
}

fn redact_url(message: &str, url: &str) -> String {
    message.replace(url, "[database url]")
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
