//! Both audit logs at the storage level: the writer that appends an entry —
//! with its seq, entry hash and HSM MAC — inside the transaction of the
//! change it records, and [`AuditStore`], the reads and writes the sealer,
//! verifier, query API and purge need (seals, checkpoints, pages of entries
//! in seq order, the purge through a permit row).
//!
//! The hot path takes no application lock and reads no previous entry: one
//! seq draw (PostgreSQL: a sequence behind a ROW EXCLUSIVE lock that only
//! the sealer's brief SHARE lock conflicts with; SQLite: the single writer's
//! `max + 1`), one HMAC in the HSM, one INSERT.

use std::borrow::Borrow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Func, Order, Query, SelectStatement};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, EntityTrait, QueryResult, Set,
};
use uuid::Uuid;

use super::audit_packed as packed;
use super::entity::{core::audit_log, secure::secure_audit_log};
use super::{StoreError, StoreResult};
use crate::domain::audit::{
    AuditEntry, AuditLog, AuditMac, Checkpoint, CheckpointBody, EntryFields, Seal, SealBody,
    entry_hash, truncate_to_micros,
};
use crate::domain::model::AuditEvent;
use crate::domain::new_row_id;

/// The MAC source a database handle writes audit entries with. Empty for
/// handles opened without the token: their audit writes fail instead of
/// storing entries without a MAC.
#[derive(Clone, Default)]
pub struct AuditSigner(Option<Arc<dyn AuditMac>>);

impl AuditSigner {
    pub fn new(mac: Arc<dyn AuditMac>) -> Self {
        Self(Some(mac))
    }
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "AuditSigner(hsm)"
        } else {
            "AuditSigner(none)"
        })
    }
}

/// Table names of one log.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tables {
    pub log: &'static str,
    pub seals: &'static str,
    pub checkpoints: &'static str,
    pub permits: &'static str,
    pub prefix: &'static str,
}

pub(crate) fn tables(log: AuditLog) -> Tables {
    match log {
        AuditLog::Core => Tables {
            log: "audit_log",
            seals: "audit_seals",
            checkpoints: "audit_checkpoints",
            permits: "audit_purge_permits",
            prefix: "clm_core",
        },
        AuditLog::Secure => Tables {
            log: "secure_audit_log",
            seals: "secure_audit_seals",
            checkpoints: "secure_audit_checkpoints",
            permits: "secure_audit_purge_permits",
            prefix: "clm_secure",
        },
    }
}

/// Both logs share their columns; one definition keeps them in step.
macro_rules! audit_row {
    ($table:ident, $e:expr, $seq:expr, $id:expr, $at:expr, $hash:expr, $mac:expr, $v:expr) => {
        $table::ActiveModel {
            id: Set($id),
            seq: Set($seq),
            occurred_at: Set($at),
            actor_id: Set($e.actor.id.map(Into::into)),
            actor_kind: Set($e.actor.kind.to_string()),
            organization_id: Set($e.organization_id.map(Into::into)),
            action: Set($e.action.to_string()),
            target_type: Set($e.target_type.map(str::to_string)),
            target_id: Set($e.target_id.clone()),
            outcome: Set($e.outcome.as_str().to_string()),
            request_id: Set($e.context.request_id.clone()),
            source_ip: Set($e.context.source_ip.clone()),
            user_agent: Set($e.context.user_agent.clone()),
            details: Set($e.details.clone()),
            entry_hash: Set(Some($hash)),
            mac: Set(Some($mac)),
            mac_key_version: Set(Some($v)),
        }
    };
}

pub(crate) async fn insert_core<C: ConnectionTrait>(
    db: &C,
    signer: &AuditSigner,
    e: &AuditEvent,
) -> StoreResult<()> {
    let p = prepare(db, AuditLog::Core, signer, e).await?;
    audit_log::Entity::insert(audit_row!(
        audit_log, e, p.seq, p.id, p.at, p.hash, p.mac, p.version
    ))
    .exec_without_returning(db)
    .await?;
    Ok(())
}

pub(crate) async fn insert_secure<C: ConnectionTrait>(
    db: &C,
    signer: &AuditSigner,
    e: &AuditEvent,
) -> StoreResult<()> {
    let p = prepare(db, AuditLog::Secure, signer, e).await?;
    secure_audit_log::Entity::insert(audit_row!(
        secure_audit_log,
        e,
        p.seq,
        p.id,
        p.at,
        p.hash,
        p.mac,
        p.version
    ))
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// An audit entry on its own, in its own transaction (events with no other
/// row to change, e.g. a failed login).
pub(crate) async fn append(
    db: &DatabaseConnection,
    log: AuditLog,
    signer: &AuditSigner,
    e: &AuditEvent,
) -> StoreResult<()> {
    let txn = super::begin_write(db).await?;
    match log {
        AuditLog::Core => insert_core(&txn, signer, e).await?,
        AuditLog::Secure => insert_secure(&txn, signer, e).await?,
    }
    txn.commit().await?;
    Ok(())
}

/// Everything of an entry that is not the event itself.
struct Prepared {
    seq: i64,
    id: Uuid,
    at: DateTime<Utc>,
    hash: Vec<u8>,
    mac: Vec<u8>,
    version: i32,
}

async fn prepare<C: ConnectionTrait>(
    db: &C,
    log: AuditLog,
    signer: &AuditSigner,
    e: &AuditEvent,
) -> StoreResult<Prepared> {
    prepare_many(db, log, signer, std::slice::from_ref(e))
        .await?
        .pop()
        .ok_or_else(|| StoreError::Database("no audit entry prepared".into()))
}

/// Seqs, ids, times, hashes and MACs (one HSM round trip) for `events`.
async fn prepare_many<C: ConnectionTrait, E: Borrow<AuditEvent>>(
    db: &C,
    log: AuditLog,
    signer: &AuditSigner,
    events: &[E],
) -> StoreResult<Vec<Prepared>> {
    let mac = signer.0.as_ref().ok_or(StoreError::Audit(
        crate::domain::audit::AuditMacError::NoKey,
    ))?;
    let version = mac.current_version()?;
    let seqs = next_seqs(db, log, events.len()).await?;
    let mut out = Vec::with_capacity(events.len());
    for (e, seq) in events.iter().map(Borrow::borrow).zip(seqs) {
        let id = new_row_id();
        let at = truncate_to_micros(Utc::now());
        let fields = EntryFields {
            seq,
            id,
            occurred_at: at,
            actor_id: e.actor.id.map(|a| a.0),
            actor_kind: e.actor.kind,
            organization_id: e.organization_id.map(|o| o.0),
            action: e.action,
            target_type: e.target_type,
            target_id: e.target_id.as_deref(),
            outcome: e.outcome.as_str(),
            request_id: e.context.request_id.as_deref(),
            source_ip: e.context.source_ip.as_deref(),
            user_agent: e.context.user_agent.as_deref(),
            details: &e.details,
            key_version: version,
        };
        out.push(Prepared {
            seq,
            id,
            at,
            hash: entry_hash(log, &fields).to_vec(),
            mac: Vec::new(),
            version,
        });
    }
    let macs = if out.len() == 1 {
        vec![mac.mac(version, out[0].hash.clone()).await?]
    } else {
        mac.mac_many(version, out.iter().map(|p| p.hash.clone()).collect())
            .await?
    };
    for (p, m) in out.iter_mut().zip(macs) {
        p.mac = m.to_vec();
    }
    Ok(out)
}

/// Appends `events` to `log` inside the caller's transaction with one seq
/// draw, one HSM round trip and one multi-row INSERT — the bulk form of
/// [`insert_core`] / [`insert_secure`], same hashes and MACs.
pub(super) async fn insert_many<C: ConnectionTrait, E: Borrow<AuditEvent>>(
    db: &C,
    log: AuditLog,
    signer: &AuditSigner,
    events: &[E],
) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let prepared = prepare_many(db, log, signer, events).await?;
    let rows = events.iter().map(Borrow::borrow).zip(prepared);
    match log {
        AuditLog::Core => {
            audit_log::Entity::insert_many(rows.map(|(e, p)| {
                audit_row!(audit_log, e, p.seq, p.id, p.at, p.hash, p.mac, p.version)
            }))
            .exec_without_returning(db)
            .await?;
        }
        AuditLog::Secure => {
            secure_audit_log::Entity::insert_many(rows.map(|(e, p)| {
                audit_row!(
                    secure_audit_log,
                    e,
                    p.seq,
                    p.id,
                    p.at,
                    p.hash,
                    p.mac,
                    p.version
                )
            }))
            .exec_without_returning(db)
            .await?;
        }
    }
    Ok(())
}

/// The next `n` seqs of `log`, drawn inside the caller's transaction, in
/// ascending order.
async fn next_seqs<C: ConnectionTrait>(db: &C, log: AuditLog, n: usize) -> StoreResult<Vec<i64>> {
    let t = tables(log);
    let backend = db.get_database_backend();
    if backend == DatabaseBackend::Postgres {
        let sql = if n == 1 {
            format!("SELECT {}_audit_next_seq() AS seq", t.prefix)
        } else {
            format!(
                "SELECT {}_audit_next_seq() AS seq FROM generate_series(1, {n})",
                t.prefix
            )
        };
        let rows = db
            .query_all_raw(sea_orm::Statement::from_string(backend, sql))
            .await?;
        let mut seqs = rows
            .iter()
            .map(|r| r.try_get::<i64>("", "seq"))
            .collect::<Result<Vec<_>, _>>()?;
        seqs.sort_unstable();
        return Ok(seqs);
    }
    // One writer, whose transactions hold the write lock from BEGIN
    // IMMEDIATE on (`begin_write`): the numbers after the high-water mark
    // are ours.
    // sqlite_sequence remembers numbers of deleted rows too, so a seq is
    // never handed out twice.
    let sql = format!(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{log}'), 0), \
         COALESCE((SELECT MAX(seq) FROM {log}), 0)) + 1 AS seq",
        log = t.log
    );
    let first = db
        .query_one_raw(sea_orm::Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| StoreError::Database("no seq returned".into()))?
        .try_get::<i64>("", "seq")?;
    Ok((first..first + n as i64).collect())
}

/// Filters of the auditors' query.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub organization_id: Option<Uuid>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub actor_id: Option<Uuid>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub outcome: Option<String>,
    /// Keyset cursor: only entries with a greater seq.
    pub after_seq: Option<i64>,
}

/// One log's seals, checkpoints and entries, for the sealer, the verifier,
/// the query API and the purge.
#[derive(Clone, Debug)]
pub struct AuditStore {
    pub(super) db: DatabaseConnection,
    /// Verification and the auditors' queries: on SQLite the read-only
    /// connections, so that a long verification neither waits for nor
    /// holds up the one writer, and reads in parallel.
    pub(super) read: DatabaseConnection,
    pub(super) log: AuditLog,
}

const ENTRY_COLUMNS: &[&str] = &[
    "seq",
    "id",
    "occurred_at",
    "actor_id",
    "actor_kind",
    "organization_id",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "request_id",
    "source_ip",
    "user_agent",
    "details",
    "entry_hash",
    "mac",
    "mac_key_version",
];

const SEAL_COLUMNS: &[&str] = &[
    "seal_no",
    "first_seq",
    "last_seq",
    "entry_count",
    "gaps",
    "running_hash",
    "prev_mac",
    "key_version",
    "sealed_at",
    "mac",
];

fn entry_from(r: &QueryResult) -> StoreResult<AuditEntry> {
    Ok(AuditEntry {
        seq: r.try_get("", "seq")?,
        id: r.try_get("", "id")?,
        occurred_at: r.try_get("", "occurred_at")?,
        actor_id: r.try_get("", "actor_id")?,
        actor_kind: r.try_get("", "actor_kind")?,
        organization_id: r.try_get("", "organization_id")?,
        action: r.try_get("", "action")?,
        target_type: r.try_get("", "target_type")?,
        target_id: r.try_get("", "target_id")?,
        outcome: r.try_get("", "outcome")?,
        request_id: r.try_get("", "request_id")?,
        source_ip: r.try_get("", "source_ip")?,
        user_agent: r.try_get("", "user_agent")?,
        details: r.try_get("", "details")?,
        entry_hash: r.try_get("", "entry_hash")?,
        mac: r.try_get("", "mac")?,
        mac_key_version: r.try_get("", "mac_key_version")?,
    })
}

fn seal_from(r: &QueryResult) -> StoreResult<Seal> {
    let gaps: serde_json::Value = r.try_get("", "gaps")?;
    let gaps = serde_json::from_value::<Vec<i64>>(gaps)
        .map_err(|e| super::error::corrupt(format!("seal gaps: {e}")))?;
    Ok(Seal {
        body: SealBody {
            seal_no: r.try_get("", "seal_no")?,
            first_seq: r.try_get("", "first_seq")?,
            last_seq: r.try_get("", "last_seq")?,
            entry_count: r.try_get("", "entry_count")?,
            gaps,
            running_hash: r.try_get("", "running_hash")?,
            prev_mac: r.try_get("", "prev_mac")?,
            key_version: r.try_get("", "key_version")?,
            sealed_at: r.try_get("", "sealed_at")?,
        },
        mac: r.try_get("", "mac")?,
    })
}

fn checkpoint_from(r: &QueryResult) -> StoreResult<Checkpoint> {
    Ok(Checkpoint {
        body: CheckpointBody {
            purged_through_seal: r.try_get("", "purged_through_seal")?,
            purged_through_seq: r.try_get("", "purged_through_seq")?,
            seal_mac: r.try_get("", "seal_mac")?,
            key_version: r.try_get("", "key_version")?,
            created_at: r.try_get("", "created_at")?,
        },
        mac: r.try_get("", "mac")?,
    })
}

fn select(table: &'static str, columns: &[&'static str]) -> SelectStatement {
    let mut q = Query::select();
    q.from(Alias::new(table));
    for c in columns {
        q.column(Alias::new(*c));
    }
    q
}

impl AuditStore {
    pub fn log(&self) -> AuditLog {
        self.log
    }

    fn t(&self) -> Tables {
        tables(self.log)
    }

    fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == DatabaseBackend::Postgres
    }

    /// The highest seq below which no entry can still appear: every
    /// transaction that drew a smaller seq has committed or rolled back.
    ///
    /// PostgreSQL: writers hold ROW EXCLUSIVE on the log from drawing their
    /// seq to their commit, so taking SHARE mode waits for exactly those in
    /// flight and, while held (microseconds: one `max` on the primary key),
    /// keeps new ones from drawing. A short `lock_timeout` makes the sealer,
    /// not a writer, give up if it would have to queue behind a long
    /// transaction; it simply tries again at the next tick.
    /// SQLite has one writer: whatever is visible is all there is.
    pub async fn committed_high_water(&self) -> StoreResult<Option<i64>> {
        let txn = super::begin_write(&self.db).await?;
        if self.is_postgres() {
            txn.execute_unprepared("SET LOCAL lock_timeout = '200ms'")
                .await?;
            txn.execute_unprepared(&format!("LOCK TABLE {} IN SHARE MODE", self.t().log))
                .await?;
        }
        let mut q = Query::select();
        q.from(Alias::new(self.t().log))
            .expr_as(Func::max(Expr::col(Alias::new("seq"))), Alias::new("m"));
        let row = txn.query_one(&q).await?;
        txn.commit().await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<i64>>("", "m")?,
            None => None,
        })
    }

    /// Entries with `after < seq <= up_to`, in seq order, at most `limit`,
    /// read on the writer's connection (the sealer, which works beside
    /// the writes anyway).
    pub async fn entries(
        &self,
        after: i64,
        up_to: Option<i64>,
        limit: u64,
    ) -> StoreResult<Vec<AuditEntry>> {
        self.entries_on(&self.db, after, up_to, limit).await
    }

    /// [`Self::entries`] on the read connections (verification).
    pub async fn read_entries(
        &self,
        after: i64,
        up_to: Option<i64>,
        limit: u64,
    ) -> StoreResult<Vec<AuditEntry>> {
        self.entries_on(&self.read, after, up_to, limit).await
    }

    async fn entries_on(
        &self,
        db: &DatabaseConnection,
        after: i64,
        up_to: Option<i64>,
        limit: u64,
    ) -> StoreResult<Vec<AuditEntry>> {
        // On SQLite the page crosses from the connection's thread as one
        // row (`store::audit_packed`).
        if !self.is_postgres()
            && let Some(page) = packed::page(db, self.t().log, after, up_to, limit).await
        {
            return Ok(page);
        }
        self.entries_row_by_row(db, after, up_to, limit).await
    }

    async fn entries_row_by_row(
        &self,
        db: &DatabaseConnection,
        after: i64,
        up_to: Option<i64>,
        limit: u64,
    ) -> StoreResult<Vec<AuditEntry>> {
        let mut q = select(self.t().log, ENTRY_COLUMNS);
        q.and_where(Expr::col(Alias::new("seq")).gt(after));
        if let Some(hi) = up_to {
            q.and_where(Expr::col(Alias::new("seq")).lte(hi));
        }
        q.order_by(Alias::new("seq"), Order::Asc).limit(limit);
        db.query_all(&q).await?.iter().map(entry_from).collect()
    }

    /// A page of the auditors' query, in seq order.
    pub async fn query(&self, f: &AuditFilter, limit: u64) -> StoreResult<Vec<AuditEntry>> {
        let mut q = select(self.t().log, ENTRY_COLUMNS);
        let col = |c: &str| Expr::col(Alias::new(c));
        if let Some(org) = f.organization_id {
            q.and_where(col("organization_id").eq(org));
        }
        if let Some(from) = f.from {
            q.and_where(col("occurred_at").gte(from));
        }
        if let Some(to) = f.to {
            q.and_where(col("occurred_at").lt(to));
        }
        if let Some(a) = f.actor_id {
            q.and_where(col("actor_id").eq(a));
        }
        if let Some(a) = &f.action {
            q.and_where(col("action").eq(a.as_str()));
        }
        if let Some(t) = &f.target_type {
            q.and_where(col("target_type").eq(t.as_str()));
        }
        if let Some(t) = &f.target_id {
            q.and_where(col("target_id").eq(t.as_str()));
        }
        if let Some(o) = &f.outcome {
            q.and_where(col("outcome").eq(o.as_str()));
        }
        if let Some(after) = f.after_seq {
            q.and_where(col("seq").gt(after));
        }
        q.order_by(Alias::new("seq"), Order::Asc).limit(limit);
        self.read
            .query_all(&q)
            .await?
            .iter()
            .map(entry_from)
            .collect()
    }

    /// Seals with a number above `after`, in order, at most `limit`.
    pub async fn seals(&self, after: i64, limit: u64) -> StoreResult<Vec<Seal>> {
        let mut q = select(self.t().seals, SEAL_COLUMNS);
        q.and_where(Expr::col(Alias::new("seal_no")).gt(after))
            .order_by(Alias::new("seal_no"), Order::Asc)
            .limit(limit);
        self.read
            .query_all(&q)
            .await?
            .iter()
            .map(seal_from)
            .collect()
    }

    pub async fn latest_seal(&self) -> StoreResult<Option<Seal>> {
        let mut q = select(self.t().seals, SEAL_COLUMNS);
        q.order_by(Alias::new("seal_no"), Order::Desc).limit(1);
        self.db
            .query_one(&q)
            .await?
            .as_ref()
            .map(seal_from)
            .transpose()
    }

    /// The newest checkpoint: where the log starts after purges.
    pub async fn latest_checkpoint(&self) -> StoreResult<Option<Checkpoint>> {
        let mut q = select(
            self.t().checkpoints,
            &[
                "purged_through_seal",
                "purged_through_seq",
                "seal_mac",
                "key_version",
                "created_at",
                "mac",
            ],
        );
        q.order_by(Alias::new("purged_through_seal"), Order::Desc)
            .limit(1);
        self.db
            .query_one(&q)
            .await?
            .as_ref()
            .map(checkpoint_from)
            .transpose()
    }

    /// Stores a seal. A seal with the same number (another sealer was
    /// faster) is a [`StoreError::Duplicate`].
    pub async fn insert_seal(&self, s: &Seal) -> StoreResult<()> {
        let b = &s.body;
        let mut q = Query::insert();
        q.into_table(Alias::new(self.t().seals))
            .columns(SEAL_COLUMNS.iter().map(|c| Alias::new(*c)))
            .values([
                b.seal_no.into(),
                b.first_seq.into(),
                b.last_seq.into(),
                b.entry_count.into(),
                serde_json::json!(b.gaps).into(),
                b.running_hash.clone().into(),
                b.prev_mac.clone().into(),
                b.key_version.into(),
                b.sealed_at.into(),
                s.mac.clone().into(),
            ])
            .map_err(|e| StoreError::Database(e.to_string()))?;
        self.db.execute(&q).await?;
        Ok(())
    }

    /// Deletes every seal up to `through` (a prefix of the chain) with its
    /// entries, stores `checkpoint` and the audit entry of the purge — one
    /// transaction. The write-once triggers let the deletes pass only
    /// because of the permit rows this transaction writes and removes.
    pub async fn purge(
        &self,
        through: &Seal,
        checkpoint: &Checkpoint,
        signer: &AuditSigner,
        event: &AuditEvent,
    ) -> StoreResult<u64> {
        let t = self.t();
        let txn = super::begin_write(&self.db).await?;
        let now = Utc::now();
        for (table, up_to) in [
            (t.log, through.body.last_seq),
            (t.seals, through.body.seal_no),
        ] {
            let mut q = Query::insert();
            q.into_table(Alias::new(t.permits))
                .columns(["id", "table_name", "up_to", "created_at"].map(Alias::new))
                .values([new_row_id().into(), table.into(), up_to.into(), now.into()])
                .map_err(|e| StoreError::Database(e.to_string()))?;
            txn.execute(&q).await?;
        }
        let deleted = txn
            .execute(
                Query::delete()
                    .from_table(Alias::new(t.log))
                    .and_where(Expr::col(Alias::new("seq")).lte(through.body.last_seq)),
            )
            .await?
            .rows_affected();
        txn.execute(
            Query::delete()
                .from_table(Alias::new(t.seals))
                .and_where(Expr::col(Alias::new("seal_no")).lte(through.body.seal_no)),
        )
        .await?;
        txn.execute(Query::delete().from_table(Alias::new(t.permits)))
            .await?;
        let c = &checkpoint.body;
        let mut q = Query::insert();
        q.into_table(Alias::new(t.checkpoints))
            .columns(
                [
                    "purged_through_seal",
                    "purged_through_seq",
                    "seal_mac",
                    "key_version",
                    "created_at",
                    "mac",
                ]
                .map(Alias::new),
            )
            .values([
                c.purged_through_seal.into(),
                c.purged_through_seq.into(),
                c.seal_mac.clone().into(),
                c.key_version.into(),
                c.created_at.into(),
                checkpoint.mac.clone().into(),
            ])
            .map_err(|e| StoreError::Database(e.to_string()))?;
        txn.execute(&q).await?;
        match self.log {
            AuditLog::Core => insert_core(&txn, signer, event).await?,
            AuditLog::Secure => insert_secure(&txn, signer, event).await?,
        }
        txn.commit().await?;
        Ok(deleted)
    }

    /// Writes `events` in transactions of `batch` entries each through the
    /// production writer's bulk form (for `clm bench audit-fill`).
    pub async fn append_many(
        &self,
        signer: &AuditSigner,
        events: &[AuditEvent],
        batch: usize,
    ) -> StoreResult<()> {
        // Bounded by the backends' limits on bound parameters per statement.
        for chunk in events.chunks(batch.clamp(1, 1000)) {
            let txn = super::begin_write(&self.db).await?;
            insert_many(&txn, self.log, signer, chunk).await?;
            txn.commit().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;

    use super::*;

    fn row(seq: i64, all: bool) -> secure_audit_log::ActiveModel {
        let some = |s: &str| all.then(|| s.to_string());
        secure_audit_log::ActiveModel {
            id: Set(Uuid::now_v7()),
            seq: Set(seq),
            occurred_at: Set(Utc.timestamp_micros(1_796_662_137_118_502 + seq).unwrap()),
            actor_id: Set(all.then(Uuid::new_v4)),
            actor_kind: Set("user".into()),
            organization_id: Set(all.then(Uuid::new_v4)),
            action: Set(format!("certificate.revoked \"{seq}\"")),
            target_type: Set(some("certificate")),
            target_id: Set(some("ä\\\u{0}\t\u{1f512}")),
            outcome: Set("success".into()),
            request_id: Set(some("req-\u{7f}")),
            source_ip: Set(some("::1")),
            user_agent: Set(some("curl/8 \"quoted\" \n")),
            details: Set(if all {
                serde_json::json!({ "z": [1.5e300, -0, 18446744073709551615u64], "ä": { "k": null }, "a": "\u{0}" })
            } else {
                serde_json::json!({})
            }),
            entry_hash: Set(all.then(|| vec![0, 255, 7, 0])),
            mac: Set(all.then(|| vec![0xab; 32])),
            mac_key_version: Set(all.then_some(i32::MAX)),
        }
    }

    async fn store_with(
        rows: Vec<secure_audit_log::ActiveModel>,
    ) -> (tempfile::TempDir, AuditStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite_secure_for_plans(dir.path())
            .await
            .audit_store();
        secure_audit_log::Entity::insert_many(rows)
            .exec_without_returning(&store.db)
            .await
            .unwrap();
        (dir, store)
    }

    /// The verifier judges what the packed read returns: it must be what
    /// the row-by-row read decodes, value for value.
    #[tokio::test]
    async fn a_packed_page_reads_as_its_rows_do() {
        let (_dir, store) = store_with(vec![
            row(1, true),
            row(2, false),
            row(3, true),
            row(7, true),
        ])
        .await;
        let table = store.t().log;
        let by_row = store
            .entries_row_by_row(&store.read, 0, None, 100)
            .await
            .unwrap();
        assert_eq!(by_row.len(), 4);
        let packed = packed::page(&store.read, table, 0, None, 100).await;
        assert_eq!(packed.as_deref(), Some(&by_row[..]));
        // The bounds and the limit.
        let packed = packed::page(&store.read, table, 1, Some(7), 2).await;
        assert_eq!(packed.as_deref(), Some(&by_row[1..3]));
        let packed = packed::page(&store.read, table, 7, None, 100).await;
        assert_eq!(packed.as_deref(), Some(&[][..]));
    }

    /// A value clm does not write — here a time in another format that the
    /// row-by-row read still accepts — is not guessed at: the page is read
    /// row by row.
    #[tokio::test]
    async fn a_page_the_packed_read_cannot_decode_is_read_row_by_row() {
        let (_dir, store) = store_with(vec![row(1, true)]).await;
        let columns = ENTRY_COLUMNS[3..].join(", ");
        store
            .db
            .execute_unprepared(&format!(
                "INSERT INTO secure_audit_log (seq, id, occurred_at, {columns}) \
                 SELECT 2, randomblob(16), '2026-12-07 16:49:16.753428', {columns} \
                 FROM secure_audit_log WHERE seq = 1"
            ))
            .await
            .unwrap();
        assert_eq!(
            packed::page(&store.read, store.t().log, 0, None, 10).await,
            None
        );
        let entries = store.read_entries(0, None, 10).await.unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[1].occurred_at,
            Utc.with_ymd_and_hms(2026, 12, 7, 16, 49, 16).unwrap()
                + chrono::Duration::microseconds(753_428)
        );
    }
}
