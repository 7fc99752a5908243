//! The HSM side of tamper-evident audit: the keyring of audit MAC keys by
//! version (implements [`crate::domain::audit::AuditMac`] for the store),
//! batched MACs for the sealer and verifier, and the per-log *head* — a
//! token data object (`CKO_DATA`) holding the newest seal's number, last seq
//! and MAC, which deleting rows from a database cannot roll back.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::recovery::Op;
use super::{Hsm, HsmError, HsmResult, WorkingCopy};
use crate::domain::audit::{AuditLog, AuditMac, AuditMacError, MacFuture, MacManyFuture};

/// Application name on the head objects (`CKA_APPLICATION`).
const HEAD_APPLICATION: &[u8] = b"clm-audit";

/// One audit key: its `CKA_ID` and the working copy it MACs with (see
/// [`WorkingCopy`]; made again after a relogin or a re-initialise).
#[derive(Clone)]
struct KeyEntry {
    cka_id: Vec<u8>,
    copy: Arc<WorkingCopy>,
}

#[derive(Default)]
struct Keys {
    current: Option<i32>,
    by_version: HashMap<i32, KeyEntry>,
}

/// The audit MAC keys this process knows, by version. Cheap to clone.
#[derive(Clone)]
pub struct AuditKeyring {
    hsm: Hsm,
    keys: Arc<RwLock<Keys>>,
}

impl std::fmt::Debug for AuditKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeyring").finish_non_exhaustive()
    }
}

fn poisoned() -> HsmError {
    HsmError::Pkcs11("audit keyring lock poisoned".into())
}

impl AuditKeyring {
    pub fn new(hsm: Hsm) -> Self {
        Self {
            hsm,
            keys: Arc::default(),
        }
    }

    /// Makes the key with `cka_id` known as `version`; `current` makes it
    /// the one new entries are MACed with.
    pub fn install(&self, version: i32, cka_id: Vec<u8>, current: bool) -> HsmResult<()> {
        let mut keys = self.keys.write().map_err(|_| poisoned())?;
        let same = keys
            .by_version
            .get(&version)
            .is_some_and(|k| k.cka_id == cka_id);
        if !same {
            keys.by_version.insert(
                version,
                KeyEntry {
                    cka_id,
                    copy: Arc::default(),
                },
            );
        }
        if current && keys.current.is_none_or(|c| c <= version) {
            keys.current = Some(version);
        }
        Ok(())
    }

    pub fn current(&self) -> Option<i32> {
        self.keys.read().ok().and_then(|k| k.current)
    }

    fn entry(&self, version: i32) -> HsmResult<KeyEntry> {
        self.keys
            .read()
            .map_err(|_| poisoned())?
            .by_version
            .get(&version)
            .cloned()
            .ok_or(HsmError::KeyNotFound)
    }

    /// HMAC-SHA-256 of each item under the key of `version`, on one
    /// session: the sealer and the verifier check thousands at a time.
    pub fn mac_many_blocking(&self, version: i32, items: &[Vec<u8>]) -> HsmResult<Vec<[u8; 32]>> {
        let entry = self.entry(version)?;
        self.hsm.with_session(Op::Mac, |s| {
            let copy = || {
                self.hsm
                    .working_copy(s, &entry.copy, ObjectClass::SECRET_KEY, &entry.cka_id)
            };
            let mut handle = copy()?;
            let mut out = Vec::with_capacity(items.len());
            for data in items {
                let mac = match s.sign(&Mechanism::Sha256Hmac, handle, data) {
                    Ok(m) => m,
                    Err(e) => match HsmError::from(e) {
                        // The copy is gone (its anchor session was
                        // replaced): copy the token key again.
                        HsmError::KeyNotFound => {
                            self.hsm.drop_working_copy(&entry.copy);
                            handle = copy()?;
                            s.sign(&Mechanism::Sha256Hmac, handle, data)?
                        }
                        other => return Err(other),
                    },
                };
                out.push(
                    mac.try_into()
                        .map_err(|_| HsmError::Encoding("HMAC of unexpected length".into()))?,
                );
            }
            Ok(out)
        })
    }

    pub async fn mac_many(&self, version: i32, items: Vec<Vec<u8>>) -> HsmResult<Vec<[u8; 32]>> {
        let ring = self.clone();
        self.hsm
            .run_on_token_threads(move || ring.mac_many_blocking(version, &items))
            .await?
    }

    /// The head of `log` as stored in the token, `None` before the first
    /// seal. Should a replacement have been interrupted (two objects), the
    /// one naming the later seal is the head.
    pub async fn read_head(&self, log: AuditLog) -> HsmResult<Option<Vec<u8>>> {
        let label = head_label(log);
        self.hsm
            .run(move |h| {
                h.with_session(Op::AuditHead, |s| {
                    Ok(head_values(s, &label)?
                        .into_iter()
                        .map(|(_, v)| v)
                        .max_by_key(|v| seal_no_of(v)))
                })
            })
            .await
    }

    /// Replaces the head of `log`. SoftHSM (like many tokens) keeps a data
    /// object's value read-only, so the new head is created first and the
    /// old objects destroyed after: at every moment one head is present.
    pub async fn write_head(&self, log: AuditLog, value: Vec<u8>) -> HsmResult<()> {
        let label = head_label(log);
        self.hsm
            .run(move |h| {
                h.with_session(Op::AuditHead, |s| {
                    let old = head_values(s, &label)?;
                    let new = s.create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Label(label.as_bytes().to_vec()),
                        Attribute::Application(HEAD_APPLICATION.to_vec()),
                        Attribute::Value(value.clone()),
                    ])?;
                    for (obj, _) in old {
                        if obj != new {
                            s.destroy_object(obj)?;
                        }
                    }
                    Ok(())
                })
            })
            .await
    }
}

/// The seal number a head value starts with (malformed values sort first).
fn seal_no_of(v: &[u8]) -> i64 {
    v.get(0..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .unwrap_or(i64::MIN)
}

impl AuditMac for AuditKeyring {
    fn current_version(&self) -> Result<i32, AuditMacError> {
        self.current().ok_or(AuditMacError::NoKey)
    }

    fn mac(&self, version: i32, data: Vec<u8>) -> MacFuture<'_> {
        Box::pin(async move {
            let mut macs = self
                .mac_many(version, vec![data])
                .await
                .map_err(|e| mac_error(version, e))?;
            macs.pop()
                .ok_or_else(|| AuditMacError::Failed("no MAC returned".into()))
        })
    }

    fn mac_many(&self, version: i32, items: Vec<Vec<u8>>) -> MacManyFuture<'_> {
        Box::pin(async move {
            AuditKeyring::mac_many(self, version, items)
                .await
                .map_err(|e| mac_error(version, e))
        })
    }
}

fn mac_error(version: i32, e: HsmError) -> AuditMacError {
    match e {
        HsmError::KeyNotFound => AuditMacError::UnknownVersion(version),
        e if e.is_retryable() => AuditMacError::Unavailable {
            retry_after_secs: e.retry_after().map_or(1, |d| d.as_secs().max(1)),
            reason: e.to_string(),
        },
        other => AuditMacError::Failed(other.to_string()),
    }
}

fn head_label(log: AuditLog) -> String {
    format!("clm-audit-head-{}", log.as_str())
}

fn head_values(s: &Session, label: &str) -> HsmResult<Vec<(ObjectHandle, Vec<u8>)>> {
    let template = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(HEAD_APPLICATION.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let mut out = Vec::new();
    for obj in s.find_objects(&template)? {
        let value = s
            .get_attributes(obj, &[AttributeType::Value])?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            })
            .unwrap_or_default();
        out.push((obj, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::testing::fixture;
    use super::*;

    #[tokio::test]
    async fn keyring_macs_match_single_hmacs_and_versions_differ() {
        let hsm = &fixture().hsm;
        let a = hsm.generate_mac_key_blocking("ring-a").unwrap();
        let b = hsm.generate_mac_key_blocking("ring-b").unwrap();
        let ring = AuditKeyring::new(hsm.clone());
        assert!(matches!(ring.current_version(), Err(AuditMacError::NoKey)));
        ring.install(1, a.cka_id.clone(), true).unwrap();
        ring.install(2, b.cka_id.clone(), false).unwrap();
        assert_eq!(ring.current_version().unwrap(), 1);
        let m = ring.mac(1, b"x".to_vec()).await.unwrap();
        assert_eq!(m, hsm.hmac_sha256_blocking(&a.cka_id, b"x").unwrap());
        let many = ring
            .mac_many(2, vec![b"x".to_vec(), b"y".to_vec()])
            .await
            .unwrap();
        assert_eq!(many[0], hsm.hmac_sha256_blocking(&b.cka_id, b"x").unwrap());
        assert_ne!(many[0], m);
        assert!(matches!(
            ring.mac(9, b"x".to_vec()).await,
            Err(AuditMacError::UnknownVersion(9))
        ));
        ring.install(2, b.cka_id.clone(), true).unwrap();
        assert_eq!(ring.current_version().unwrap(), 2);
    }

    #[tokio::test]
    async fn the_head_is_a_token_object_that_is_replaced() {
        let ring = AuditKeyring::new(fixture().hsm.clone());
        // Both logs' heads are per token; this test owns the secure one
        // only within this test process's token.
        let log = AuditLog::Secure;
        ring.write_head(log, vec![1; 48]).await.unwrap();
        assert_eq!(ring.read_head(log).await.unwrap(), Some(vec![1; 48]));
        ring.write_head(log, vec![2; 48]).await.unwrap();
        assert_eq!(ring.read_head(log).await.unwrap(), Some(vec![2; 48]));
        let label = head_label(log);
        let n = fixture()
            .hsm
            .with_session(Op::AuditHead, |s| Ok(head_values(s, &label)?.len()))
            .unwrap();
        assert_eq!(n, 1, "the old head is destroyed");
    }
}
