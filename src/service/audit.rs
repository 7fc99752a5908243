//! Tamper-evident audit (DESIGN.md decision 5, issue #7): loading the audit
//! MAC keys into the keyring the stores write with, sealing, verification,
//! key rotation, retention purge, the auditors' query and export, and the
//! `bench audit-fill` generator. docs/audit.md explains the design and the
//! limits of what it guarantees.
//!
//! Layout of the guarantees: every entry carries HMAC(key_v, entry_hash)
//! where entry_hash covers every field and its seq; a *seal* states a seq
//! range, its gaps, the running hash of (seq, entry_hash) over the range
//! and the previous seal's MAC, and is MACed itself; the newest seal's
//! number, last seq and MAC also live in the HSM (the *head*), which a
//! database writer cannot roll back.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::audit_cursor::{EntryCursor, Hashed};
use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal};
use crate::domain::audit::{
    AuditEntry, AuditHead, AuditLog, Checkpoint, CheckpointBody, Fold, Seal, SealBody,
    encode_checkpoint, encode_seal, entry_hash, macs_equal, truncate_to_micros,
};
use crate::domain::model::{Actor, AuditEvent, KeyReference, Outcome, RequestContext};
use crate::domain::{KeyId, KeyPurpose, KeyStatus, Permission};
use crate::store::{AuditFilter, AuditStore};

/// Entries per page when streaming a log (bounds memory).
const PAGE: u64 = 5_000;
/// Entries per read while verifying: several reads run at once, and
/// smaller pages stay in the CPU caches between the read and the check
/// (1,000 verified a million entries faster than 400 or 5,000).
const VERIFY_PAGE: u64 = 1_000;
/// Seals per page when streaming the chain.
const SEAL_PAGE: u64 = 500;
/// Most entries one seal covers; a backlog becomes several seals.
const MAX_SEAL_ENTRIES: u64 = 20_000;
/// How far from its own seq verification looks for the seq an entry's
/// stored hash was made for, to tell `reordered` from `modified`.
const REORDER_WINDOW: i64 = 256;

/// Why verification stopped at an entry or seal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The entry's content does not match its hash or MAC.
    Modified,
    /// A seq a seal vouches for holds no entry.
    Missing,
    /// An entry the chain does not account for (a seq a seal lists as a
    /// gap, below the log's start, or an unsealed entry without a valid MAC).
    Inserted,
    /// The entry is authentic but sits at another seq than it was written at.
    Reordered,
    /// The newest sealed entries (and seals) are gone: the HSM's head names
    /// a later seal than the database has.
    Truncated,
    /// A seal or checkpoint is forged, missing from the chain or does not
    /// match the entries it covers.
    BadSeal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Modified => "modified",
            Reason::Missing => "missing",
            Reason::Inserted => "inserted",
            Reason::Reordered => "reordered",
            Reason::Truncated => "truncated",
            Reason::BadSeal => "bad_seal",
        }
    }
}

/// The first problem found in one log.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct BadEntry {
    pub seq: Option<i64>,
    pub id: Option<Uuid>,
    pub seal_no: Option<i64>,
    pub reason: Reason,
    pub detail: String,
}

impl std::fmt::Display for BadEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.reason.as_str())?;
        if let Some(seq) = self.seq {
            write!(f, " at seq {seq}")?;
        }
        if let Some(id) = self.id {
            write!(f, " (id {id})")?;
        }
        if let Some(n) = self.seal_no {
            write!(f, " [seal {n}]")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// Verification of one log.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LogReport {
    pub log: AuditLog,
    pub ok: bool,
    pub entries: u64,
    pub seals: u64,
    /// Entries newer than the last seal: protected by their MACs only until
    /// the next seal (see docs/audit.md).
    pub unsealed: u64,
    pub first_bad: Option<BadEntry>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    pub ok: bool,
    pub logs: Vec<LogReport>,
}

/// What one sealing pass did for one log.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SealOutcome {
    pub seals: u64,
    pub entries: u64,
    /// Set when sealing stopped at an entry it will not vouch for.
    pub refused: Option<String>,
}

/// The end of the verified chain so far: the last seal (or checkpoint).
#[derive(Clone, Debug)]
struct Tip {
    seal_no: i64,
    mac: Vec<u8>,
    last_seq: i64,
}

impl Tip {
    fn start(checkpoint: Option<&Checkpoint>) -> Tip {
        match checkpoint {
            Some(c) => Tip {
                seal_no: c.body.purged_through_seal,
                mac: c.body.seal_mac.clone(),
                last_seq: c.body.purged_through_seq,
            },
            None => Tip {
                seal_no: 0,
                mac: Vec::new(),
                last_seq: 0,
            },
        }
    }

    fn of(seal: &Seal) -> Tip {
        Tip {
            seal_no: seal.body.seal_no,
            mac: seal.mac.clone(),
            last_seq: seal.body.last_seq,
        }
    }
}

fn bad(e: Option<&AuditEntry>, seal_no: Option<i64>, reason: Reason, detail: String) -> BadEntry {
    BadEntry {
        seq: e.map(|e| e.seq),
        id: e.map(|e| e.id),
        seal_no,
        reason,
        detail,
    }
}

/// Checks an entry's stored hash against its content. `Err` names what is
/// wrong; a legacy entry (no MAC, written before this scheme) has no stored
/// hash and passes here — only the first seal may adopt such entries.
fn check_hash(log: AuditLog, e: &AuditEntry) -> Result<[u8; 32], (Reason, String)> {
    check_computed_hash(log, e, entry_hash(log, &e.fields()))
}

/// [`check_hash`] with the hash of the entry's content already computed.
fn check_computed_hash(
    log: AuditLog,
    e: &AuditEntry,
    h: [u8; 32],
) -> Result<[u8; 32], (Reason, String)> {
    match &e.entry_hash {
        None if e.mac.is_none() => Ok(h),
        None => Err((Reason::Modified, "the entry hash is missing".into())),
        Some(stored) if macs_equal(stored, &h) => Ok(h),
        Some(stored) => {
            // Authentic content written at another seq?
            let mut fields = e.fields();
            for d in 1..=REORDER_WINDOW {
                for seq in [e.seq - d, e.seq + d] {
                    fields.seq = seq;
                    if macs_equal(stored, &entry_hash(log, &fields)) {
                        return Err((
                            Reason::Reordered,
                            format!("the entry was written at seq {seq}"),
                        ));
                    }
                }
            }
            Err((
                Reason::Modified,
                "the content does not match the entry hash".into(),
            ))
        }
    }
}

impl Clm {
    fn audit_store(&self, log: AuditLog) -> AuditStore {
        match log {
            AuditLog::Core => self.core.audit_store(),
            AuditLog::Secure => self.secure.audit_store(),
        }
    }

    /// Registered audit MAC keys, every version that can still verify.
    async fn audit_keys_registered(&self) -> ServiceResult<Vec<KeyReference>> {
        Ok(self
            .secure
            .list_keys()
            .await?
            .into_iter()
            .filter(|k| k.purpose == KeyPurpose::AuditMac && k.status != KeyStatus::Destroyed)
            .collect())
    }

    /// Loads every registered audit key into the keyring; the newest active
    /// one becomes current. Run at start-up and by the seal job, so that a
    /// rotation by another process is picked up within one interval.
    pub async fn load_audit_keys(&self) -> ServiceResult<()> {
        for k in self.audit_keys_registered().await? {
            let ckaid = hex::decode(&k.ckaid_hex).map_err(ServiceError::internal)?;
            self.audit_keys
                .install(k.version, ckaid, k.status == KeyStatus::Active)?;
        }
        Ok(())
    }

    async fn audit_version(&self) -> ServiceResult<i32> {
        self.audit_keys
            .current()
            .ok_or_else(|| ServiceError::internal("no audit MAC key loaded"))
    }

    async fn mac_one(&self, version: i32, data: Vec<u8>) -> ServiceResult<[u8; 32]> {
        let mut macs = self.audit_keys.mac_many(version, vec![data]).await?;
        macs.pop()
            .ok_or_else(|| ServiceError::internal("no MAC returned"))
    }

    /// Whether `mac` is the HSM's MAC of `data` under `version` (an unknown
    /// version is simply not valid).
    async fn mac_valid(&self, version: i32, data: Vec<u8>, mac: &[u8]) -> ServiceResult<bool> {
        match self.audit_keys.mac_many(version, vec![data]).await {
            Ok(m) => Ok(m.first().is_some_and(|m| macs_equal(m, mac))),
            Err(crate::hsm::HsmError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Indexes (into `entries`) whose MAC is not valid, checked in batches
    /// per key version.
    async fn invalid_macs(&self, entries: &[(&AuditEntry, [u8; 32])]) -> ServiceResult<Vec<usize>> {
        let mut by_version: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        let mut bad = Vec::new();
        for (i, (e, _)) in entries.iter().enumerate() {
            match (e.mac_key_version, &e.mac) {
                (Some(v), Some(_)) => by_version.entry(v).or_default().push(i),
                _ => bad.push(i),
            }
        }
        for (version, idx) in by_version {
            let data: Vec<Vec<u8>> = idx.iter().map(|i| entries[*i].1.to_vec()).collect();
            match self.audit_keys.mac_many(version, data).await {
                Ok(macs) => {
                    for (i, m) in idx.iter().zip(macs) {
                        let stored = entries[*i].0.mac.as_deref().unwrap_or_default();
                        if !macs_equal(&m, stored) {
                            bad.push(*i);
                        }
                    }
                }
                Err(crate::hsm::HsmError::KeyNotFound) => bad.extend(idx),
                Err(e) => return Err(e.into()),
            }
        }
        bad.sort_unstable();
        Ok(bad)
    }

    async fn read_head(&self, log: AuditLog) -> ServiceResult<Option<AuditHead>> {
        match self.audit_keys.read_head(log).await? {
            None => Ok(None),
            Some(bytes) => AuditHead::from_bytes(&bytes)
                .map(Some)
                .ok_or_else(|| ServiceError::internal("malformed audit head in the token")),
        }
    }

    /// Whether a head that was missing when a verification began has been
    /// written since. The sealer commits a seal before it writes the head,
    /// so a verification that read the head just before the first seal
    /// committed finds seals and no head with nothing wrong; the head
    /// follows within a few HSM calls. A head that stays away is reported.
    async fn head_followed(&self, log: AuditLog) -> ServiceResult<bool> {
        for wait in [0, 100, 200] {
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            if self.read_head(log).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    // ---- sealing ---------------------------------------------------------

    /// Seals both logs up to what has committed.
    pub async fn seal_audit(&self) -> ServiceResult<Vec<(AuditLog, SealOutcome)>> {
        let mut out = Vec::new();
        for log in AuditLog::ALL {
            out.push((log, self.seal_log(log).await?));
        }
        Ok(out)
    }

    /// Seals everything of `log` that committed, after checking each entry
    /// (hash and MAC in the HSM) — a sealer never vouches for an entry the
    /// HSM did not MAC. Refuses to extend a chain whose newest seal does not
    /// match the head in the HSM (that is truncation, to be reported, not
    /// papered over).
    pub async fn seal_log(&self, log: AuditLog) -> ServiceResult<SealOutcome> {
        let store = self.audit_store(log);
        let mut outcome = SealOutcome::default();
        let Some(hi) = store.committed_high_water().await? else {
            return Ok(outcome);
        };
        let checkpoint = store.latest_checkpoint().await?;
        let mut tip = match store.latest_seal().await? {
            Some(s) => Tip::of(&s),
            None => Tip::start(checkpoint.as_ref()),
        };
        let head = self.read_head(log).await?;
        if let Some(h) = &head {
            let agrees = if h.seal_no == tip.seal_no {
                macs_equal(&h.mac, &tip.mac)
            } else if h.seal_no < tip.seal_no {
                // The head lags (a crash between commit and head update):
                // fine if the chain passes through it.
                store
                    .seals(h.seal_no - 1, 1)
                    .await?
                    .first()
                    .is_some_and(|s| s.body.seal_no == h.seal_no && macs_equal(&s.mac, &h.mac))
            } else {
                false
            };
            if !agrees {
                let why = format!(
                    "the newest seal in the database ({}) does not match the head in the HSM ({}); not sealing",
                    tip.seal_no, h.seal_no
                );
                tracing::error!(log = %log, "{why}");
                outcome.refused = Some(why);
                return Ok(outcome);
            }
            if h.seal_no < tip.seal_no {
                self.write_head(log, &tip).await?;
            }
        } else if tip.seal_no == 1 && checkpoint.is_none() {
            // The head write after the very first seal was lost (a crash):
            // nothing older can have been hidden yet.
            self.write_head(log, &tip).await?;
        } else if tip.seal_no > 0 {
            let why = "seals exist but there is no head in the HSM; not sealing".to_string();
            tracing::error!(log = %log, "{why}");
            outcome.refused = Some(why);
            return Ok(outcome);
        }
        let version = self.audit_version().await?;

        while tip.last_seq < hi {
            let seal_no = tip.seal_no + 1;
            let mut fold = Fold::start(log, seal_no, &tip.mac);
            let mut gaps = Vec::new();
            let mut expected = tip.last_seq + 1;
            let mut last = tip.last_seq;
            let mut stop: Option<String> = None;
            'pages: while fold.count() < MAX_SEAL_ENTRIES {
                let want = PAGE.min(MAX_SEAL_ENTRIES - fold.count());
                let page = store.entries(last, Some(hi), want).await?;
                if page.is_empty() {
                    break;
                }
                let mut checked = Vec::with_capacity(page.len());
                for e in &page {
                    match check_hash(log, e) {
                        Ok(h) => checked.push((e, h)),
                        Err((reason, why)) => {
                            stop = Some(format!(
                                "seq {} ({}): {} — {why}",
                                e.seq,
                                e.id,
                                reason.as_str()
                            ));
                            break;
                        }
                    }
                }
                let mut invalid = self.invalid_macs(&checked).await?;
                // Entries written before MACs existed are adopted by the
                // very first seal only.
                if seal_no == 1 {
                    invalid.retain(|i| checked[*i].0.mac.is_some());
                }
                if let Some(first) = invalid.first() {
                    let e = checked[*first].0;
                    stop = Some(format!("seq {} ({}): the MAC is not valid", e.seq, e.id));
                    checked.truncate(*first);
                }
                for (e, h) in &checked {
                    while expected < e.seq {
                        gaps.push(expected);
                        expected += 1;
                    }
                    fold.add(e.seq, h);
                    expected = e.seq + 1;
                    last = e.seq;
                }
                if stop.is_some() || (page.len() as u64) < want {
                    break 'pages;
                }
            }
            if fold.count() > 0 {
                let body = SealBody {
                    seal_no,
                    first_seq: tip.last_seq + 1,
                    last_seq: last,
                    entry_count: fold.count() as i64,
                    gaps,
                    running_hash: fold.value().to_vec(),
                    prev_mac: tip.mac.clone(),
                    key_version: version,
                    sealed_at: truncate_to_micros(Utc::now()),
                };
                let mac = self.mac_one(version, encode_seal(log, &body)).await?;
                let seal = Seal {
                    body,
                    mac: mac.to_vec(),
                };
                match store.insert_seal(&seal).await {
                    Ok(()) => {}
                    // Another instance sealed this number first; its seal
                    // stands and the next pass continues from it.
                    Err(crate::store::StoreError::Duplicate(_)) => return Ok(outcome),
                    Err(e) => return Err(e.into()),
                }
                tip = Tip::of(&seal);
                self.write_head(log, &tip).await?;
                outcome.seals += 1;
                outcome.entries += seal.body.entry_count as u64;
            }
            if let Some(why) = stop {
                tracing::error!(log = %log, "audit entry refused by the sealer: {why}");
                outcome.refused = Some(why);
                break;
            }
            if fold.count() == 0 {
                break;
            }
        }
        Ok(outcome)
    }

    async fn write_head(&self, log: AuditLog, tip: &Tip) -> ServiceResult<()> {
        let mac: [u8; 32] = tip
            .mac
            .as_slice()
            .try_into()
            .map_err(|_| ServiceError::internal("seal MAC of unexpected length"))?;
        // Never move the head backwards (two instances sealing at once).
        if let Some(h) = self.read_head(log).await?
            && h.seal_no > tip.seal_no
        {
            return Ok(());
        }
        let head = AuditHead {
            seal_no: tip.seal_no,
            last_seq: tip.last_seq,
            mac,
        };
        Ok(self.audit_keys.write_head(log, head.to_bytes()).await?)
    }

    // ---- verification ----------------------------------------------------

    /// Verifies both logs (`clm audit verify`, `GET /api/v1/audit/verify`).
    pub async fn verify_audit(&self) -> ServiceResult<VerifyReport> {
        let mut logs = Vec::new();
        for log in AuditLog::ALL {
            logs.push(self.verify_log(log).await?);
        }
        Ok(VerifyReport {
            ok: logs.iter().all(|l| l.ok),
            logs,
        })
    }

    /// Streams one log in seq order against its seals, the checkpoint and
    /// the HSM head; stops at the first problem.
    pub async fn verify_log(&self, log: AuditLog) -> ServiceResult<LogReport> {
        let mut report = LogReport {
            log,
            ok: false,
            entries: 0,
            seals: 0,
            unsealed: 0,
            first_bad: None,
        };
        let first_bad = self.verify_inner(log, &mut report).await?;
        report.ok = first_bad.is_none();
        report.first_bad = first_bad;
        Ok(report)
    }

    async fn verify_inner(
        &self,
        log: AuditLog,
        report: &mut LogReport,
    ) -> ServiceResult<Option<BadEntry>> {
        let store = self.audit_store(log);
        let checkpoint = store.latest_checkpoint().await?;
        if let Some(c) = &checkpoint
            && !self
                .mac_valid(c.body.key_version, encode_checkpoint(log, &c.body), &c.mac)
                .await?
        {
            return Ok(Some(bad(
                None,
                Some(c.body.purged_through_seal),
                Reason::BadSeal,
                "the purge checkpoint's MAC is not valid".into(),
            )));
        }
        let mut tip = Tip::start(checkpoint.as_ref());
        let head = self.read_head(log).await?;
        let mut head_seen = head.as_ref().is_none_or(|h| h.seal_no <= tip.seal_no);
        if let (Some(h), Some(c)) = (&head, &checkpoint)
            && h.seal_no == c.body.purged_through_seal
            && !macs_equal(&h.mac, &c.body.seal_mac)
        {
            return Ok(Some(bad(
                None,
                Some(h.seal_no),
                Reason::BadSeal,
                "the checkpoint does not match the head in the HSM".into(),
            )));
        }
        // From the very start: an entry below the log's start is inserted.
        let mut cursor = EntryCursor::new(store.clone(), i64::MIN, VERIFY_PAGE);
        let mut seal_after = tip.seal_no;
        loop {
            let seals = store.seals(seal_after, SEAL_PAGE).await?;
            let Some(last) = seals.last() else { break };
            cursor.announce(last.body.last_seq);
            // Seal MACs, one HSM call per seal.
            for s in &seals {
                seal_after = s.body.seal_no;
                if let Some(b) = self.check_seal_link(log, &tip, s).await? {
                    return Ok(Some(b));
                }
                if let Some(h) = &head
                    && h.seal_no == s.body.seal_no
                {
                    if !macs_equal(&h.mac, &s.mac) {
                        return Ok(Some(bad(
                            None,
                            Some(s.body.seal_no),
                            Reason::BadSeal,
                            "the seal differs from the one the HSM head names".into(),
                        )));
                    }
                    head_seen = true;
                }
                if let Some(b) = self
                    .verify_sealed_range(log, s, &mut cursor, report)
                    .await?
                {
                    return Ok(Some(b));
                }
                report.seals += 1;
                tip = Tip::of(s);
            }
        }
        if let Some(h) = &head
            && !head_seen
        {
            return Ok(Some(BadEntry {
                seq: Some(tip.last_seq + 1),
                id: None,
                seal_no: Some(tip.seal_no + 1),
                reason: Reason::Truncated,
                detail: format!(
                    "the HSM head names seal {} through seq {}, the database ends at seal {} (seq {})",
                    h.seal_no, h.last_seq, tip.seal_no, tip.last_seq
                ),
            }));
        }
        if head.is_none() && tip.seal_no > 0 && !self.head_followed(log).await? {
            return Ok(Some(bad(
                None,
                Some(tip.seal_no),
                Reason::BadSeal,
                "seals exist but there is no head in the HSM".into(),
            )));
        }
        // The unsealed tail: each entry must carry a valid MAC.
        loop {
            let mut page = Vec::new();
            while (page.len() as u64) < PAGE {
                match cursor.next().await? {
                    Some(e) => page.push(e),
                    None => break,
                }
            }
            if page.is_empty() {
                break;
            }
            let mut checked = Vec::with_capacity(page.len());
            for Hashed { entry: e, hash } in &page {
                if e.seq <= tip.last_seq {
                    return Ok(Some(bad(
                        Some(e),
                        None,
                        Reason::Inserted,
                        "the entry lies inside the sealed range but no seal accounts for it".into(),
                    )));
                }
                match check_computed_hash(log, e, *hash) {
                    Ok(h) => checked.push((e, h)),
                    Err((reason, why)) => return Ok(Some(bad(Some(e), None, reason, why))),
                }
            }
            if let Some(i) = self.invalid_macs(&checked).await?.first() {
                let e = checked[*i].0;
                return Ok(Some(bad(
                    Some(e),
                    None,
                    Reason::Inserted,
                    "the entry's MAC is not valid: the HSM never MACed it".into(),
                )));
            }
            report.entries += checked.len() as u64;
            report.unsealed += checked.len() as u64;
        }
        Ok(None)
    }

    /// The seal follows `tip` and carries a valid MAC.
    async fn check_seal_link(
        &self,
        log: AuditLog,
        tip: &Tip,
        s: &Seal,
    ) -> ServiceResult<Option<BadEntry>> {
        let b = &s.body;
        let fail = |detail: String| {
            Ok(Some(BadEntry {
                seq: Some(tip.last_seq + 1),
                id: None,
                seal_no: Some(b.seal_no),
                reason: Reason::BadSeal,
                detail,
            }))
        };
        if b.seal_no != tip.seal_no + 1 {
            return fail(format!(
                "seal {} follows seal {}: seals are missing",
                b.seal_no, tip.seal_no
            ));
        }
        if !macs_equal(&b.prev_mac, &tip.mac) {
            return fail("the seal does not chain to the previous seal".into());
        }
        if b.first_seq != tip.last_seq + 1 {
            return fail(format!(
                "the seal starts at seq {}, expected {}",
                b.first_seq,
                tip.last_seq + 1
            ));
        }
        if !self
            .mac_valid(b.key_version, encode_seal(log, b), &s.mac)
            .await?
        {
            return fail("the seal's MAC is not valid".into());
        }
        Ok(None)
    }

    /// Entries of one seal's range against the seal.
    async fn verify_sealed_range(
        &self,
        log: AuditLog,
        s: &Seal,
        cursor: &mut EntryCursor,
        report: &mut LogReport,
    ) -> ServiceResult<Option<BadEntry>> {
        let b = &s.body;
        let mut gaps = b.gaps.iter().copied().peekable();
        let mut fold = Fold::start(log, b.seal_no, &b.prev_mac);
        let mut expected = b.first_seq;
        let n = Some(b.seal_no);
        // Skips the seals's gaps up to `upto`; the first seq before it that
        // is no gap is missing.
        let mut missing_before = |expected: &mut i64, upto: i64| -> Option<i64> {
            while *expected < upto {
                while gaps.next_if(|g| *g < *expected).is_some() {}
                if gaps.next_if_eq(expected).is_some() {
                    *expected += 1;
                } else {
                    return Some(*expected);
                }
            }
            None
        };
        while let Some(next) = cursor.peek().await? {
            if next.entry.seq > b.last_seq {
                break;
            }
            let Some(Hashed { entry: e, hash }) = cursor.next().await? else {
                break;
            };
            if e.seq < expected {
                return Ok(Some(bad(
                    Some(&e),
                    n,
                    Reason::Inserted,
                    "the entry lies before the sealed chain".into(),
                )));
            }
            if let Some(m) = missing_before(&mut expected, e.seq) {
                return Ok(Some(BadEntry {
                    seq: Some(m),
                    id: None,
                    seal_no: n,
                    reason: Reason::Missing,
                    detail: format!("seal {} vouches for seq {m}, no entry holds it", b.seal_no),
                }));
            }
            if b.gaps.binary_search(&e.seq).is_ok() {
                return Ok(Some(bad(
                    Some(&e),
                    n,
                    Reason::Inserted,
                    "the seal lists this seq as never written".into(),
                )));
            }
            let h = match check_computed_hash(log, &e, hash) {
                Ok(h) => h,
                Err((reason, why)) => return Ok(Some(bad(Some(&e), n, reason, why))),
            };
            if e.mac.is_none() && b.seal_no != 1 {
                return Ok(Some(bad(
                    Some(&e),
                    n,
                    Reason::Inserted,
                    "the entry has no MAC".into(),
                )));
            }
            fold.add(e.seq, &h);
            expected = e.seq + 1;
            report.entries += 1;
        }
        if let Some(m) = missing_before(&mut expected, b.last_seq + 1) {
            return Ok(Some(BadEntry {
                seq: Some(m),
                id: None,
                seal_no: n,
                reason: Reason::Missing,
                detail: format!("seal {} vouches for seq {m}, no entry holds it", b.seal_no),
            }));
        }
        if fold.count() as i64 == b.entry_count && macs_equal(&fold.value(), &b.running_hash) {
            return Ok(None);
        }
        // Every entry matches its stored hash, yet the seal disagrees: some
        // stored hash was recomputed after a change. The MACs say which.
        let store = self.audit_store(log);
        let mut after = b.first_seq - 1;
        loop {
            let page = store.read_entries(after, Some(b.last_seq), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let checked: Vec<(&AuditEntry, [u8; 32])> = page
                .iter()
                .map(|e| (e, entry_hash(log, &e.fields())))
                .collect();
            let mut invalid = self.invalid_macs(&checked).await?;
            if b.seal_no == 1 {
                invalid.retain(|i| checked[*i].0.mac.is_some());
            }
            if let Some(i) = invalid.first() {
                return Ok(Some(bad(
                    Some(checked[*i].0),
                    n,
                    Reason::Modified,
                    "the content and hash were changed: the MAC does not match".into(),
                )));
            }
        }
        Ok(Some(bad(
            None,
            n,
            Reason::BadSeal,
            "the seal's running hash does not match its entries".into(),
        )))
    }

    // ---- rotation --------------------------------------------------------

    /// `clm audit rotate-key`: a new HSM MAC key becomes version n+1; the
    /// old one is deprecated but kept for verification.
    pub async fn rotate_audit_key(&self, ctx: &RequestContext) -> ServiceResult<i32> {
        let old = self
            .secure
            .find_active_key(KeyPurpose::AuditMac)
            .await?
            .ok_or_else(|| ServiceError::internal("no active audit MAC key"))?;
        let next = self
            .audit_keys_registered()
            .await?
            .iter()
            .map(|k| k.version)
            .max()
            .unwrap_or(old.version)
            + 1;
        let label = format!("clm-audit-mac-v{next}");
        let handle = self.hsm.generate_mac_key(&label).await?;
        let key = KeyReference {
            id: KeyId::new(),
            pkcs11_uri: self.hsm.pkcs11_uri(&label, &handle.cka_id),
            ckaid_hex: hex::encode(&handle.cka_id),
            label,
            purpose: KeyPurpose::AuditMac,
            algorithm: "hmac-sha256".into(),
            status: KeyStatus::Active,
            version: next,
            public_key_der: None,
        };
        // Known to the keyring (not yet current) so it can verify at once.
        self.audit_keys
            .install(next, handle.cka_id.clone(), false)?;
        let event = AuditEvent::new(Actor::SYSTEM, "key.rotated", ctx)
            .target("encryption_key", key.id)
            .details(serde_json::json!({
                "purpose": KeyPurpose::AuditMac,
                "version": next,
                "previous_key_id": old.id,
                "previous_version": old.version,
            }));
        self.secure.rotate_key(old.id, &key, &event).await?;
        self.audit_keys.install(next, handle.cka_id, true)?;
        Ok(next)
    }

    // ---- retention -------------------------------------------------------

    /// Deletes whole seals (and their entries) sealed before `retention_days`
    /// ago, in both logs; each purge leaves a MACed checkpoint and an
    /// `audit.purge` entry. Returns the entries deleted per log.
    pub async fn purge_audit(
        &self,
        retention_days: i64,
        ctx: &RequestContext,
    ) -> ServiceResult<Vec<(AuditLog, u64)>> {
        let cutoff = Utc::now() - chrono::Duration::days(retention_days.max(0));
        let mut out = Vec::new();
        for log in AuditLog::ALL {
            out.push((log, self.purge_log(log, cutoff, retention_days, ctx).await?));
        }
        Ok(out)
    }

    async fn purge_log(
        &self,
        log: AuditLog,
        cutoff: DateTime<Utc>,
        retention_days: i64,
        ctx: &RequestContext,
    ) -> ServiceResult<u64> {
        let store = self.audit_store(log);
        let start = store
            .latest_checkpoint()
            .await?
            .map(|c| c.body.purged_through_seal)
            .unwrap_or(0);
        // The newest seal older than the cutoff, never the newest seal of
        // all (the head in the HSM names it; the chain must go on from it).
        let Some(latest) = store.latest_seal().await? else {
            return Ok(0);
        };
        let mut through: Option<Seal> = None;
        let mut after = start;
        'scan: loop {
            let seals = store.seals(after, SEAL_PAGE).await?;
            if seals.is_empty() {
                break;
            }
            for s in seals {
                after = s.body.seal_no;
                if s.body.seal_no >= latest.body.seal_no || s.body.sealed_at >= cutoff {
                    break 'scan;
                }
                through = Some(s);
            }
        }
        let Some(through) = through else {
            return Ok(0);
        };
        // Only a verified prefix is purged: purging must not launder tampering.
        let report = self.verify_log(log).await?;
        if let Some(b) = report.first_bad {
            return Err(ServiceError::conflict(
                "audit_not_intact",
                format!("the {log} audit log does not verify ({b}); not purging"),
            ));
        }
        let version = self.audit_version().await?;
        let body = CheckpointBody {
            purged_through_seal: through.body.seal_no,
            purged_through_seq: through.body.last_seq,
            seal_mac: through.mac.clone(),
            key_version: version,
            created_at: truncate_to_micros(Utc::now()),
        };
        let mac = self.mac_one(version, encode_checkpoint(log, &body)).await?;
        let checkpoint = Checkpoint {
            body,
            mac: mac.to_vec(),
        };
        let event = AuditEvent::new(Actor::SYSTEM, "audit.purge", ctx)
            .target("audit_log", log)
            .details(serde_json::json!({
                "retention_days": retention_days,
                "purged_through_seal": through.body.seal_no,
                "purged_through_seq": through.body.last_seq,
            }))
            .outcome(Outcome::Success);
        let signer = match log {
            AuditLog::Core => self.core.audit_signer(),
            AuditLog::Secure => self.secure.audit_signer(),
        };
        Ok(store.purge(&through, &checkpoint, signer, &event).await?)
    }

    // ---- queries ---------------------------------------------------------

    /// `GET /api/v1/audit`: a keyset page of one log (by seq), filtered,
    /// organisation-scoped for everyone but a super admin.
    pub async fn audit_query(&self, p: &Principal, q: AuditQuery) -> ServiceResult<AuditPage> {
        p.require(Permission::ReadAudit)?;
        if let Some(o) = &q.outcome
            && !["success", "failure", "denied"].contains(&o.as_str())
        {
            return Err(ServiceError::invalid(
                "invalid_outcome",
                "outcome must be success, failure or denied",
            ));
        }
        let limit = q.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ServiceError::invalid(
                "invalid_limit",
                "limit must be between 1 and 1000",
            ));
        }
        let log = q.log.unwrap_or(AuditLog::Core);
        let filter = AuditFilter {
            organization_id: p.scope().map(|o| o.0),
            from: q.from,
            to: q.to,
            actor_id: q.actor_id,
            action: super::certificates::filter_text("action", q.action, 200)?,
            target_type: super::certificates::filter_text("target_type", q.target_type, 200)?,
            target_id: super::certificates::filter_text("target_id", q.target_id, 200)?,
            outcome: q.outcome,
            after_seq: q.after,
        };
        let items = self.audit_store(log).query(&filter, limit).await?;
        let next = if items.len() as u64 == limit {
            items.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(AuditPage {
            log,
            items,
            next_after: next,
        })
    }

    /// `GET /api/v1/audit/verify`.
    pub async fn audit_verify_for(&self, p: &Principal) -> ServiceResult<VerifyReport> {
        p.require(Permission::ReadAudit)?;
        self.verify_audit().await
    }

    /// One page of an export: seals first (all of them, `seal_after` on),
    /// then entries. Whole-log exports (what offline verification needs)
    /// are for unscoped auditors; others get their organisation's entries.
    pub async fn audit_export_page(
        &self,
        p: &Principal,
        log: AuditLog,
        cursor: ExportCursor,
    ) -> ServiceResult<(Vec<serde_json::Value>, Option<ExportCursor>)> {
        p.require(Permission::ReadAudit)?;
        let store = self.audit_store(log);
        match cursor {
            ExportCursor::Start => {
                let mut lines = vec![serde_json::json!({
                    "type": "header",
                    "log": log,
                    "format": "clm-audit-export-v1",
                    "scoped_to": p.scope(),
                })];
                if p.scope().is_none()
                    && let Some(c) = store.latest_checkpoint().await?
                {
                    lines.push(serde_json::json!({ "type": "checkpoint", "checkpoint": c }));
                }
                if p.scope().is_none()
                    && let Some(h) = self.read_head(log).await?
                {
                    lines.push(serde_json::json!({
                        "type": "head",
                        "seal_no": h.seal_no,
                        "last_seq": h.last_seq,
                        "mac": hex::encode(h.mac),
                    }));
                }
                let next = if p.scope().is_none() {
                    ExportCursor::Seals(0)
                } else {
                    ExportCursor::Entries(i64::MIN)
                };
                Ok((lines, Some(next)))
            }
            ExportCursor::Seals(after) => {
                let seals = store.seals(after, SEAL_PAGE).await?;
                let next = match seals.last() {
                    Some(s) => ExportCursor::Seals(s.body.seal_no),
                    None => ExportCursor::Entries(i64::MIN),
                };
                let lines = seals
                    .into_iter()
                    .map(|s| serde_json::json!({ "type": "seal", "seal": s }))
                    .collect();
                Ok((lines, Some(next)))
            }
            ExportCursor::Entries(after) => {
                let filter = AuditFilter {
                    organization_id: p.scope().map(|o| o.0),
                    after_seq: Some(after),
                    ..Default::default()
                };
                let entries = store.query(&filter, PAGE).await?;
                let next = entries.last().map(|e| ExportCursor::Entries(e.seq));
                let lines = entries
                    .into_iter()
                    .map(|e| serde_json::json!({ "type": "entry", "entry": e }))
                    .collect();
                Ok((lines, next))
            }
        }
    }

    // ---- benchmark support ----------------------------------------------

    /// `clm bench audit-fill`: `n` real entries through the production
    /// writer (HSM MAC each), `batch` per transaction, alternating logs.
    pub async fn bench_audit_fill(&self, n: u64, batch: usize) -> ServiceResult<()> {
        let ctx = RequestContext {
            request_id: Some(format!("bench-{}", Uuid::new_v4())),
            source_ip: Some("127.0.0.1".into()),
            user_agent: Some("clm bench audit-fill".into()),
        };
        let chunk = 10_000u64;
        let mut done = 0u64;
        while done < n {
            let take = chunk.min(n - done);
            let events: Vec<AuditEvent> = (done..done + take)
                .map(|i| {
                    AuditEvent::new(Actor::SYSTEM, "bench.entry", &ctx)
                        .target("bench", i)
                        .details(serde_json::json!({ "i": i, "note": "benchmark entry" }))
                })
                .collect();
            let half = events.len() / 2;
            let (core, secure) = events.split_at(half);
            self.core
                .audit_store()
                .append_many(self.core.audit_signer(), core, batch)
                .await?;
            self.secure
                .audit_store()
                .append_many(self.secure.audit_signer(), secure, batch)
                .await?;
            done += take;
        }
        Ok(())
    }
}

/// A page of `GET /api/v1/audit`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub log: AuditLog,
    pub items: Vec<AuditEntry>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_after: Option<i64>,
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// `core` (default) or `secure`.
    pub log: Option<AuditLog>,
    /// RFC 3339; entries at or after.
    pub from: Option<DateTime<Utc>>,
    /// RFC 3339; entries before.
    pub to: Option<DateTime<Utc>>,
    pub actor_id: Option<Uuid>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    #[param(value_type = Option<Outcome>)]
    pub outcome: Option<String>,
    /// Keyset cursor: the `next_after` of the previous page.
    pub after: Option<i64>,
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// Query of `GET /api/v1/audit/export`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    pub log: Option<AuditLog>,
}

/// Where an export continues.
#[derive(Clone, Copy, Debug)]
pub enum ExportCursor {
    Start,
    Seals(i64),
    Entries(i64),
}

/// A MAC source without a key, for the audit-off baseline of
/// `clm bench issue` only: every entry it writes fails verification, so it
/// is never used outside that benchmark (which runs on throwaway data).
struct UnkeyedForBenchmark;

impl crate::domain::audit::AuditMac for UnkeyedForBenchmark {
    fn current_version(&self) -> Result<i32, crate::domain::audit::AuditMacError> {
        Ok(0)
    }

    fn mac(&self, _version: i32, _data: Vec<u8>) -> crate::domain::audit::MacFuture<'_> {
        Box::pin(async { Ok([0u8; 32]) })
    }
}

impl Clm {
    /// This application with audit entries written without HSM MACs — the
    /// "audit off" baseline of `clm bench issue`. Entries it writes do not
    /// verify; never use it on data that matters.
    pub fn without_audit_macs_for_benchmark(&self) -> Clm {
        let mac: std::sync::Arc<dyn crate::domain::audit::AuditMac> =
            std::sync::Arc::new(UnkeyedForBenchmark);
        let mut clm = self.clone();
        clm.core = clm.core.with_audit_mac(mac.clone());
        clm.secure = clm.secure.with_audit_mac(mac);
        clm
    }

    /// The bootstrap super admin as a principal, for benchmarks that drive
    /// use cases without HTTP.
    pub async fn principal_for_benchmark(&self, email: &str) -> ServiceResult<Principal> {
        let user = self
            .core
            .find_user_by_email(email)
            .await?
            .ok_or(ServiceError::NotFound("user"))?;
        Ok(Principal {
            user_id: user.id,
            organization_id: user.organization_id,
            email: user.email,
            roles: user.roles,
            session_id: None,
            api_key_id: None,
            client_certificate_id: None,
        })
    }

    /// The system-wide default profile's id.
    pub async fn default_profile_for_benchmark(&self) -> ServiceResult<Uuid> {
        Ok(self
            .core
            .find_system_profile_by_name(super::bootstrap::DEFAULT_PROFILE_NAME)
            .await?
            .ok_or(ServiceError::NotFound("profile"))?
            .id
            .0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64) -> AuditEntry {
        AuditEntry {
            seq,
            id: Uuid::from_u128(seq as u128),
            occurred_at: DateTime::from_timestamp_micros(1_000_000).unwrap(),
            actor_id: None,
            actor_kind: "system".into(),
            organization_id: None,
            action: "a".into(),
            target_type: None,
            target_id: None,
            outcome: "success".into(),
            request_id: None,
            source_ip: None,
            user_agent: None,
            details: serde_json::json!({}),
            entry_hash: None,
            mac: Some(vec![0; 32]),
            mac_key_version: Some(1),
        }
    }

    fn hashed(seq: i64) -> AuditEntry {
        let mut e = entry(seq);
        e.entry_hash = Some(entry_hash(AuditLog::Core, &e.fields()).to_vec());
        e
    }

    #[test]
    fn hash_checks_name_modified_and_reordered_entries() {
        let e = hashed(10);
        assert!(check_hash(AuditLog::Core, &e).is_ok());
        let mut m = e.clone();
        m.action = "b".into();
        assert_eq!(
            check_hash(AuditLog::Core, &m).unwrap_err().0,
            Reason::Modified
        );
        // The content of seq 11 moved to seq 10.
        let mut moved = hashed(11);
        moved.seq = 10;
        let (reason, why) = check_hash(AuditLog::Core, &moved).unwrap_err();
        assert_eq!(reason, Reason::Reordered);
        assert!(why.contains("seq 11"), "{why}");
        // A MACed entry without its hash is not a legacy entry.
        assert_eq!(
            check_hash(AuditLog::Core, &entry(3)).unwrap_err().0,
            Reason::Modified
        );
        let mut legacy = entry(3);
        legacy.mac = None;
        assert!(check_hash(AuditLog::Core, &legacy).is_ok());
    }

    #[test]
    fn bad_entries_print_seq_id_and_reason() {
        let e = hashed(42);
        let b = bad(Some(&e), Some(3), Reason::Modified, "x".into());
        let text = b.to_string();
        assert!(text.starts_with("modified at seq 42 (id "), "{text}");
        assert!(text.contains("[seal 3]"), "{text}");
    }
}
