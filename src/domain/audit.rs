//! The tamper-evidence rules of both audit logs, as pure functions: the
//! canonical encoding and hash of an entry, the running hash a seal folds
//! its entries into, the bytes a seal's MAC covers, and the [`AuditMac`]
//! seam through which the store asks the HSM for MACs without knowing it.
//!
//! Everything here is also what an offline verifier re-implements (see
//! `docs/audit.md`), so the encodings are deliberately simple: a domain tag,
//! then fixed-width big-endian integers and `u32`-length-prefixed byte
//! strings, optional values marked by a presence byte.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Which of the two logs an entry or seal belongs to. Part of every hash so
/// that an entry or seal of one log can never be replayed into the other.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AuditLog {
    /// clm_core `audit_log`: application events.
    Core,
    /// clm_secure `secure_audit_log`: key and certificate operations.
    Secure,
}

impl AuditLog {
    pub const ALL: [AuditLog; 2] = [AuditLog::Core, AuditLog::Secure];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditLog::Core => "core",
            AuditLog::Secure => "secure",
        }
    }
}

impl std::fmt::Display for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AuditLog {
    type Err = super::algorithm::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "core" => Ok(AuditLog::Core),
            "secure" => Ok(AuditLog::Secure),
            other => Err(super::algorithm::UnknownName(
                other.chars().take(64).collect(),
            )),
        }
    }
}

/// Every stored field of one entry, as hashed. `occurred_at` is exact to
/// the microsecond (the writer truncates before storing, both backends keep
/// microseconds). `key_version` 0 marks an entry written before entries
/// carried MACs (adopted by the first seal only).
#[derive(Clone, Debug, PartialEq)]
pub struct EntryFields<'a> {
    pub seq: i64,
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub actor_id: Option<Uuid>,
    pub actor_kind: &'a str,
    pub organization_id: Option<Uuid>,
    pub action: &'a str,
    pub target_type: Option<&'a str>,
    pub target_id: Option<&'a str>,
    pub outcome: &'a str,
    pub request_id: Option<&'a str>,
    pub source_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub details: &'a serde_json::Value,
    pub key_version: i32,
}

const ENTRY_TAG: &[u8] = b"clm-audit-entry-v1";
const FOLD_TAG: &[u8] = b"clm-audit-fold-v1";
const SEAL_TAG: &[u8] = b"clm-audit-seal-v1";
const CHECKPOINT_TAG: &[u8] = b"clm-audit-checkpoint-v1";

/// Appends `u32` length + bytes.
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Fields are bounded far below 4 GiB (a JSON body is at most 64 KiB);
    // saturating keeps the function total without a panic path.
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
    }
}

/// Microseconds since the epoch: the precision both backends store.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// `t` cut to whole microseconds, so that what is hashed is what is stored.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// JSON with object keys sorted by their UTF-8 bytes and no insignificant
/// whitespace. PostgreSQL's `jsonb` reorders keys and SQLite keeps the text
/// as written, so the hash must not depend on either.
pub fn canonical_json(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(&Value::String((*k).clone()), out);
                out.push(b':');
                if let Some(x) = map.get(*k) {
                    canonical_json(x, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(x, out);
            }
            out.push(b']');
        }
        // Scalars: serde_json's own rendering is already canonical.
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

/// The canonical encoding of one entry of `log`.
pub fn encode_entry(log: AuditLog, e: &EntryFields<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(ENTRY_TAG);
    put_bytes(&mut out, log.as_str().as_bytes());
    out.extend_from_slice(&e.seq.to_be_bytes());
    out.extend_from_slice(e.id.as_bytes());
    out.extend_from_slice(&micros(e.occurred_at).to_be_bytes());
    put_opt(
        &mut out,
        e.actor_id.as_ref().map(|u| u.as_bytes().as_slice()),
    );
    put_bytes(&mut out, e.actor_kind.as_bytes());
    put_opt(
        &mut out,
        e.organization_id.as_ref().map(|u| u.as_bytes().as_slice()),
    );
    put_bytes(&mut out, e.action.as_bytes());
    put_opt(&mut out, e.target_type.map(str::as_bytes));
    put_opt(&mut out, e.target_id.map(str::as_bytes));
    put_bytes(&mut out, e.outcome.as_bytes());
    put_opt(&mut out, e.request_id.map(str::as_bytes));
    put_opt(&mut out, e.source_ip.map(str::as_bytes));
    put_opt(&mut out, e.user_agent.map(str::as_bytes));
    let mut json = Vec::with_capacity(128);
    canonical_json(e.details, &mut json);
    put_bytes(&mut out, &json);
    out.extend_from_slice(&e.key_version.to_be_bytes());
    out
}

/// SHA-256 of [`encode_entry`]: what the per-entry MAC covers.
pub fn entry_hash(log: AuditLog, e: &EntryFields<'_>) -> [u8; 32] {
    Sha256::digest(encode_entry(log, e)).into()
}

/// The running hash a seal folds its entries into, in seq order. It starts
/// from the seal's own position (log, number, previous seal's MAC), so the
/// same entries under another seal fold to another value.
#[derive(Clone, Debug)]
pub struct Fold {
    state: [u8; 32],
    count: u64,
}

impl Fold {
    pub fn start(log: AuditLog, seal_no: i64, prev_mac: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(FOLD_TAG);
        h.update(log.as_str().as_bytes());
        h.update(seal_no.to_be_bytes());
        h.update((prev_mac.len() as u32).to_be_bytes());
        h.update(prev_mac);
        Fold {
            state: h.finalize().into(),
            count: 0,
        }
    }

    pub fn add(&mut self, seq: i64, entry_hash: &[u8; 32]) {
        let mut h = Sha256::new();
        h.update(self.state);
        h.update(seq.to_be_bytes());
        h.update(entry_hash);
        self.state = h.finalize().into();
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn value(&self) -> [u8; 32] {
        self.state
    }
}

/// What a seal states about a contiguous range of one log. `gaps` are the
/// seqs inside `first_seq..=last_seq` that no entry holds (a PostgreSQL
/// sequence skips the numbers of rolled-back transactions); stating them
/// makes every other seq in the range an entry that must exist.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealBody {
    pub seal_no: i64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub entry_count: i64,
    pub gaps: Vec<i64>,
    #[serde(with = "hex_bytes")]
    pub running_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub prev_mac: Vec<u8>,
    pub key_version: i32,
    pub sealed_at: DateTime<Utc>,
}

/// The bytes a seal's MAC covers.
pub fn encode_seal(log: AuditLog, s: &SealBody) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + 8 * s.gaps.len());
    out.extend_from_slice(SEAL_TAG);
    put_bytes(&mut out, log.as_str().as_bytes());
    for n in [s.seal_no, s.first_seq, s.last_seq, s.entry_count] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&(s.gaps.len() as u64).to_be_bytes());
    for g in &s.gaps {
        out.extend_from_slice(&g.to_be_bytes());
    }
    put_bytes(&mut out, &s.running_hash);
    put_bytes(&mut out, &s.prev_mac);
    out.extend_from_slice(&s.key_version.to_be_bytes());
    out.extend_from_slice(&micros(s.sealed_at).to_be_bytes());
    out
}

/// What a purge leaves behind: the last seal it removed, so that the first
/// remaining seal still chains to something the HSM vouched for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointBody {
    pub purged_through_seal: i64,
    pub purged_through_seq: i64,
    #[serde(with = "hex_bytes")]
    pub seal_mac: Vec<u8>,
    pub key_version: i32,
    pub created_at: DateTime<Utc>,
}

/// The bytes a checkpoint's MAC covers.
pub fn encode_checkpoint(log: AuditLog, c: &CheckpointBody) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(CHECKPOINT_TAG);
    put_bytes(&mut out, log.as_str().as_bytes());
    out.extend_from_slice(&c.purged_through_seal.to_be_bytes());
    out.extend_from_slice(&c.purged_through_seq.to_be_bytes());
    put_bytes(&mut out, &c.seal_mac);
    out.extend_from_slice(&c.key_version.to_be_bytes());
    out.extend_from_slice(&micros(c.created_at).to_be_bytes());
    out
}

/// The signed head kept in the HSM, one per log: the newest seal's number,
/// last seq and MAC. Deleting the newest seals from the database cannot
/// lower it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditHead {
    pub seal_no: i64,
    pub last_seq: i64,
    pub mac: [u8; 32],
}

impl AuditHead {
    pub const LEN: usize = 48;

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&self.seal_no.to_be_bytes());
        out.extend_from_slice(&self.last_seq.to_be_bytes());
        out.extend_from_slice(&self.mac);
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        Some(AuditHead {
            seal_no: i64::from_be_bytes(b[0..8].try_into().ok()?),
            last_seq: i64::from_be_bytes(b[8..16].try_into().ok()?),
            mac: b[16..48].try_into().ok()?,
        })
    }
}

/// Compares MACs without an early exit.
pub fn macs_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why an audit MAC could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum AuditMacError {
    /// No audit MAC key is registered or loaded (e.g. a command that opened
    /// the databases without the token): nothing may be written unMACed.
    #[error("no audit MAC key is available")]
    NoKey,
    #[error("audit MAC key version {0} is unknown")]
    UnknownVersion(i32),
    /// The token is unavailable for now; retrying later may succeed.
    #[error("audit MAC unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after_secs: u64,
    },
    #[error("audit MAC failed: {0}")]
    Failed(String),
}

pub type MacFuture<'a> = Pin<Box<dyn Future<Output = Result<[u8; 32], AuditMacError>> + Send + 'a>>;

/// HMAC-SHA-256 under the audit key of a given version, computed wherever
/// the key lives (the HSM). Object-safe so the store can hold
/// `Arc<dyn AuditMac>` without knowing the HSM.
pub trait AuditMac: Send + Sync {
    /// The version new entries are MACed with.
    fn current_version(&self) -> Result<i32, AuditMacError>;
    /// HMAC-SHA-256 of `data` under the key of `version`.
    fn mac(&self, version: i32, data: Vec<u8>) -> MacFuture<'_>;
    /// MACs of many items (bulk writers); one round trip where the
    /// implementation can.
    fn mac_many(&self, version: i32, items: Vec<Vec<u8>>) -> MacManyFuture<'_> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(items.len());
            for data in items {
                out.push(self.mac(version, data).await?);
            }
            Ok(out)
        })
    }
}

pub type MacManyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<[u8; 32]>, AuditMacError>> + Send + 'a>>;

/// One stored entry with everything verification needs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub actor_id: Option<Uuid>,
    pub actor_kind: String,
    pub organization_id: Option<Uuid>,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub outcome: String,
    pub request_id: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: serde_json::Value,
    /// Hex.
    #[serde(with = "hex_opt")]
    #[schema(value_type = Option<String>)]
    pub entry_hash: Option<Vec<u8>>,
    /// Hex.
    #[serde(with = "hex_opt")]
    #[schema(value_type = Option<String>)]
    pub mac: Option<Vec<u8>>,
    pub mac_key_version: Option<i32>,
}

impl AuditEntry {
    /// The fields as hashed (a missing key version hashes as 0).
    pub fn fields(&self) -> EntryFields<'_> {
        EntryFields {
            seq: self.seq,
            id: self.id,
            occurred_at: self.occurred_at,
            actor_id: self.actor_id,
            actor_kind: &self.actor_kind,
            organization_id: self.organization_id,
            action: &self.action,
            target_type: self.target_type.as_deref(),
            target_id: self.target_id.as_deref(),
            outcome: &self.outcome,
            request_id: self.request_id.as_deref(),
            source_ip: self.source_ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            details: &self.details,
            key_version: self.mac_key_version.unwrap_or(0),
        }
    }
}

/// A stored seal: its statement and the HSM's MAC over [`encode_seal`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Seal {
    #[serde(flatten)]
    pub body: SealBody,
    #[serde(with = "hex_bytes")]
    pub mac: Vec<u8>,
}

/// A stored checkpoint and the HSM's MAC over [`encode_checkpoint`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Checkpoint {
    #[serde(flatten)]
    pub body: CheckpointBody,
    #[serde(with = "hex_bytes")]
    pub mac: Vec<u8>,
}

mod hex_opt {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(details: &serde_json::Value) -> EntryFields<'_> {
        EntryFields {
            seq: 7,
            id: Uuid::from_u128(1),
            occurred_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            actor_id: None,
            actor_kind: "system",
            organization_id: Some(Uuid::from_u128(2)),
            action: "key.generated",
            target_type: Some("encryption_key"),
            target_id: Some("k"),
            outcome: "success",
            request_id: None,
            source_ip: None,
            user_agent: None,
            details,
            key_version: 1,
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let d = json!({"a": 1});
        let base = fields(&d);
        let h = entry_hash(AuditLog::Core, &base);
        let d2 = json!({"a": 2});
        let variants: Vec<EntryFields<'_>> = vec![
            EntryFields {
                seq: 8,
                ..base.clone()
            },
            EntryFields {
                id: Uuid::from_u128(3),
                ..base.clone()
            },
            EntryFields {
                occurred_at: base.occurred_at + chrono::Duration::microseconds(1),
                ..base.clone()
            },
            EntryFields {
                actor_id: Some(Uuid::nil()),
                ..base.clone()
            },
            EntryFields {
                actor_kind: "user",
                ..base.clone()
            },
            EntryFields {
                organization_id: None,
                ..base.clone()
            },
            EntryFields {
                action: "key.generatee",
                ..base.clone()
            },
            EntryFields {
                target_type: None,
                ..base.clone()
            },
            EntryFields {
                target_id: Some("K"),
                ..base.clone()
            },
            EntryFields {
                outcome: "failure",
                ..base.clone()
            },
            EntryFields {
                request_id: Some(""),
                ..base.clone()
            },
            EntryFields {
                source_ip: Some("::1"),
                ..base.clone()
            },
            EntryFields {
                user_agent: Some("x"),
                ..base.clone()
            },
            EntryFields {
                details: &d2,
                ..base.clone()
            },
            EntryFields {
                key_version: 2,
                ..base.clone()
            },
        ];
        for v in &variants {
            assert_ne!(entry_hash(AuditLog::Core, v), h, "{v:?}");
        }
        assert_ne!(entry_hash(AuditLog::Secure, &base), h, "log is bound");
    }

    #[test]
    fn length_prefixes_keep_adjacent_fields_apart() {
        let d = json!({});
        let a = EntryFields {
            target_type: Some("ab"),
            target_id: Some("c"),
            ..fields(&d)
        };
        let b = EntryFields {
            target_type: Some("a"),
            target_id: Some("bc"),
            ..fields(&d)
        };
        assert_ne!(
            entry_hash(AuditLog::Core, &a),
            entry_hash(AuditLog::Core, &b)
        );
        // None and Some("") differ too.
        let c = EntryFields {
            request_id: Some(""),
            ..fields(&d)
        };
        assert_ne!(
            entry_hash(AuditLog::Core, &c),
            entry_hash(AuditLog::Core, &fields(&d))
        );
    }

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": [1, {"y":2,"x":1}], "a": "é"}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":"é","b":[1,{"x":1,"y":2}]}"#).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        canonical_json(&a, &mut x);
        canonical_json(&b, &mut y);
        assert_eq!(x, y);
        assert_eq!(
            String::from_utf8(x).unwrap(),
            r#"{"a":"é","b":[1,{"x":1,"y":2}]}"#
        );
    }

    #[test]
    fn the_fold_depends_on_order_position_and_seal() {
        let (h1, h2) = ([1u8; 32], [2u8; 32]);
        let fold = |seal: i64, prev: &[u8], items: &[(i64, [u8; 32])]| {
            let mut f = Fold::start(AuditLog::Core, seal, prev);
            for (s, h) in items {
                f.add(*s, h);
            }
            (f.value(), f.count())
        };
        let base = fold(1, &[], &[(1, h1), (2, h2)]);
        assert_eq!(base.1, 2);
        assert_eq!(base, fold(1, &[], &[(1, h1), (2, h2)]));
        assert_ne!(base.0, fold(1, &[], &[(1, h2), (2, h1)]).0, "reordered");
        assert_ne!(base.0, fold(1, &[], &[(1, h1), (3, h2)]).0, "renumbered");
        assert_ne!(base.0, fold(2, &[], &[(1, h1), (2, h2)]).0, "other seal");
        assert_ne!(base.0, fold(1, &[0], &[(1, h1), (2, h2)]).0, "other chain");
        assert_ne!(base.0, fold(1, &[], &[(1, h1)]).0, "cut");
        let mut f = Fold::start(AuditLog::Core, 1, &[]);
        f.add(1, &h1);
        let mut g = Fold::start(AuditLog::Secure, 1, &[]);
        g.add(1, &h1);
        assert_ne!(f.value(), g.value(), "log is bound");
    }

    #[test]
    fn seal_encoding_covers_every_field() {
        let s = SealBody {
            seal_no: 3,
            first_seq: 10,
            last_seq: 20,
            entry_count: 10,
            gaps: vec![15],
            running_hash: vec![9; 32],
            prev_mac: vec![8; 32],
            key_version: 1,
            sealed_at: DateTime::from_timestamp_micros(1).unwrap(),
        };
        let e = encode_seal(AuditLog::Core, &s);
        let changed = [
            SealBody {
                seal_no: 4,
                ..s.clone()
            },
            SealBody {
                first_seq: 11,
                ..s.clone()
            },
            SealBody {
                last_seq: 21,
                ..s.clone()
            },
            SealBody {
                entry_count: 11,
                ..s.clone()
            },
            SealBody {
                gaps: vec![],
                ..s.clone()
            },
            SealBody {
                running_hash: vec![0; 32],
                ..s.clone()
            },
            SealBody {
                prev_mac: vec![],
                ..s.clone()
            },
            SealBody {
                key_version: 2,
                ..s.clone()
            },
            SealBody {
                sealed_at: DateTime::from_timestamp_micros(2).unwrap(),
                ..s.clone()
            },
        ];
        for c in &changed {
            assert_ne!(encode_seal(AuditLog::Core, c), e, "{c:?}");
        }
        assert_ne!(encode_seal(AuditLog::Secure, &s), e);
    }

    #[test]
    fn head_round_trips() {
        let h = AuditHead {
            seal_no: 5,
            last_seq: 99,
            mac: [7; 32],
        };
        assert_eq!(AuditHead::from_bytes(&h.to_bytes()), Some(h));
        assert_eq!(AuditHead::from_bytes(&[0; 47]), None);
    }

    #[test]
    fn macs_compare_exactly() {
        assert!(macs_equal(&[1, 2], &[1, 2]));
        assert!(!macs_equal(&[1, 2], &[1, 3]));
        assert!(!macs_equal(&[1, 2], &[1]));
    }
}
