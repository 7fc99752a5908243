//! SQLite's read of a page of audit entries as one row.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every
//! row to the reader through a channel, each column copied into an
//! allocation of its own: for a verification of a million entries that
//! hand-off, not the hashing, was most of the time (thread wake-ups and the
//! allocator; docs/performance.md). Here SQLite folds the page into one
//! JSON array (`json_group_array`), which crosses once and is decoded here.
//!
//! The page must come out exactly as the row-by-row read would decode it,
//! or verification would judge other values than are stored. It is decoded
//! only from the types clm writes (blob ids and digests, RFC 3339 text
//! times, JSON text details); anything else — a value of another type, a
//! time in another format, text that is not UTF-8 — makes [`page`] return
//! `None`, and the caller reads the page row by row.

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement};
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::audit::AuditEntry;

/// Blob columns as hex, NULL kept NULL (SQLite's `hex(NULL)` is `''`).
fn hex_of(column: &str) -> String {
    format!("CASE WHEN {column} IS NULL THEN NULL ELSE hex({column}) END")
}

fn sql(table: &str) -> String {
    // In the order of `Packed`'s fields.
    let columns = [
        "seq".to_string(),
        hex_of("id"),
        "occurred_at".into(),
        hex_of("actor_id"),
        "actor_kind".into(),
        hex_of("organization_id"),
        "action".into(),
        "target_type".into(),
        "target_id".into(),
        "outcome".into(),
        "request_id".into(),
        "source_ip".into(),
        "user_agent".into(),
        "details".into(),
        hex_of("entry_hash"),
        hex_of("mac"),
        "mac_key_version".into(),
    ];
    format!(
        "SELECT json_group_array(json_array({})) AS page FROM \
         (SELECT * FROM {table} WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?)",
        columns.join(", ")
    )
}

/// One entry as `json_array` wrote it (serde reads a struct from an array
/// in field order).
#[derive(Deserialize)]
struct Packed {
    seq: i64,
    id: String,
    occurred_at: String,
    actor_id: Option<String>,
    actor_kind: String,
    organization_id: Option<String>,
    action: String,
    target_type: Option<String>,
    target_id: Option<String>,
    outcome: String,
    request_id: Option<String>,
    source_ip: Option<String>,
    user_agent: Option<String>,
    details: String,
    entry_hash: Option<String>,
    mac: Option<String>,
    mac_key_version: Option<i32>,
}

/// Entries with `after < seq <= up_to`, in seq order, at most `limit`; `None`
/// when the page cannot be read this way (module docs).
pub(super) async fn page(
    db: &DatabaseConnection,
    table: &str,
    after: i64,
    up_to: Option<i64>,
    limit: u64,
) -> Option<Vec<AuditEntry>> {
    let statement = Statement::from_sql_and_values(
        DatabaseBackend::Sqlite,
        sql(table),
        [
            after.into(),
            up_to.unwrap_or(i64::MAX).into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    );
    let row = db.query_one_raw(statement).await.ok()??;
    let text: String = row.try_get("", "page").ok()?;
    let packed: Vec<Packed> = serde_json::from_str(&text).ok()?;
    // SQLite aggregates the ordered subquery in its order; that is how it
    // works, not what it promises.
    if !packed.is_sorted_by_key(|p| p.seq) {
        return None;
    }
    packed.into_iter().map(unpack).collect()
}

fn unpack(p: Packed) -> Option<AuditEntry> {
    Some(AuditEntry {
        seq: p.seq,
        id: uuid(&p.id).ok()?,
        occurred_at: chrono::DateTime::parse_from_rfc3339(&p.occurred_at)
            .ok()?
            .to_utc(),
        actor_id: p.actor_id.as_deref().map(uuid).transpose().ok()?,
        actor_kind: p.actor_kind,
        organization_id: p.organization_id.as_deref().map(uuid).transpose().ok()?,
        action: p.action,
        target_type: p.target_type,
        target_id: p.target_id,
        outcome: p.outcome,
        request_id: p.request_id,
        source_ip: p.source_ip,
        user_agent: p.user_agent,
        details: serde_json::from_str(&p.details).ok()?,
        entry_hash: p.entry_hash.as_deref().map(hex::decode).transpose().ok()?,
        mac: p.mac.as_deref().map(hex::decode).transpose().ok()?,
        mac_key_version: p.mac_key_version,
    })
}

/// A 16-byte blob, as the row-by-row read accepts a uuid.
fn uuid(hex: &str) -> Result<Uuid, hex::FromHexError> {
    let mut raw = [0u8; 16];
    hex::decode_to_slice(hex, &mut raw)?;
    Ok(Uuid::from_bytes(raw))
}
