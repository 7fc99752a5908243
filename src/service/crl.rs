//! CRLs: one per CA, signed in the HSM with the CA's key, numbered by a
//! compare-and-set counter in clm_secure so that numbers only grow even with
//! several instances. Re-signed after every revocation (a burst coalesces
//! into few signatures) and by the CRL job before nextUpdate comes close.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};

use super::Clm;
use super::error::{ServiceError, ServiceResult};
use crate::domain::CaId;
use crate::domain::model::{Actor, AuditEvent, RequestContext};
use crate::pki;
use crate::store::{StoreError, StoredCrl};

/// Attempts at storing a CRL when another writer took the number first.
const NUMBER_ATTEMPTS: usize = 3;
/// Entries from which a CRL's lists and buffers (about 50 bytes an entry,
/// several times over while it is built) are worth giving back to the
/// system once it is stored.
const LARGE_CRL: usize = 20_000;

/// Per CA: when the newest CRL signing started. A revocation committed
/// before that instant is already on it.
#[derive(Default)]
pub(super) struct CrlState {
    signing: Mutex<HashMap<CaId, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    served: std::sync::RwLock<HashMap<CaId, Arc<ServedCrl>>>,
}

/// A CRL as `/crl/{ca}.crl` serves it.
#[derive(Debug)]
pub struct ServedCrl {
    pub number: i64,
    pub this_update: DateTime<Utc>,
    pub next_update: DateTime<Utc>,
    pub entries: i64,
    pub der: bytes::Bytes,
}

impl CrlState {
    fn signing_lock(&self, ca: CaId) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        let mut map = self.signing.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(ca).or_default().clone()
    }

    fn cached(&self, ca: CaId) -> Option<Arc<ServedCrl>> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ca)
            .cloned()
    }

    fn remember(&self, ca: CaId, crl: Arc<ServedCrl>) {
        let mut map = self.served.write().unwrap_or_else(|e| e.into_inner());
        // Never replace a newer CRL with an older one.
        if map.get(&ca).is_none_or(|c| c.number < crl.number) {
            map.insert(ca, crl);
        }
    }
}

impl Clm {
    /// The CRL of `ca` for relying parties. Served from memory while the
    /// stored number is unchanged; signed on first use.
    pub async fn crl(&self, ca: CaId) -> ServiceResult<Arc<ServedCrl>> {
        let stored = self.secure.latest_crl_header(ca).await?;
        if let (Some((n, _)), Some(cached)) = (stored, self.crl_state.cached(ca))
            && cached.number == n
        {
            return Ok(cached);
        }
        if let Some(stored) = self.secure.latest_crl(ca).await? {
            let served = Arc::new(served(stored));
            self.crl_state.remember(ca, served.clone());
            return Ok(served);
        }
        if self.secure.find_ca(ca).await?.is_none() {
            return Err(ServiceError::NotFound("CA"));
        }
        self.refresh_crl_after_change(ca).await?;
        self.crl_state
            .cached(ca)
            .ok_or_else(|| ServiceError::internal("CRL signed but not remembered"))
    }

    /// Re-signs the CRL of `ca` unless a signing that started after this
    /// call began is already done: concurrent revocations wait for one
    /// signature instead of each making their own.
    pub(super) async fn refresh_crl_after_change(&self, ca: CaId) -> ServiceResult<()> {
        let changed = Instant::now();
        let lock = self.crl_state.signing_lock(ca);
        let mut last_started = lock.lock().await;
        if last_started.is_some_and(|t| t > changed) {
            return Ok(());
        }
        let started = Instant::now();
        self.sign_crl(ca).await?;
        *last_started = Some(started);
        Ok(())
    }

    /// The CRL job: re-signs every CA's CRL that is missing or past half of
    /// its validity. Returns how many were signed.
    pub async fn refresh_due_crls(&self) -> ServiceResult<usize> {
        let mut signed = 0;
        let half = Duration::seconds(self.settings.crl_validity_seconds / 2);
        for ca in self.secure.list_cas().await? {
            if self.signing_key(ca.id).await.is_err() {
                continue;
            }
            let due = match self.secure.latest_crl_header(ca.id).await? {
                Some((_, this_update)) => Utc::now() >= this_update + half,
                None => true,
            };
            if due {
                match self.refresh_crl_after_change(ca.id).await {
                    Ok(()) => signed += 1,
                    Err(e) => {
                        tracing::warn!(ca = %ca.id, error = %e.log_message(), "CRL refresh failed")
                    }
                }
            }
        }
        Ok(signed)
    }

    async fn sign_crl(&self, ca_id: CaId) -> ServiceResult<()> {
        let ca = self
            .secure
            .find_ca(ca_id)
            .await?
            .ok_or(ServiceError::NotFound("CA"))?;
        let ca_der = ca
            .certificate_der
            .clone()
            .ok_or_else(|| ServiceError::internal(format!("CA {ca_id} has no certificate")))?;
        let key = self.signing_key(ca_id).await?;
        let idp = pki::PublicUrls::new(&self.settings.public_url, ca_id).crl;
        // Built from what is live, not on top of what earlier bursts left
        // in the allocator: the peak is what the server is judged by.
        let size_hint = self.crl_size_hint(ca_id);
        let large = size_hint >= LARGE_CRL;
        if large {
            crate::memory::release_freed_in_background().await;
        }
        for attempt in 1..=NUMBER_ATTEMPTS {
            let number = self.secure.next_crl_number(ca_id).await?;
            let mut revoked = pki::RevokedList::with_capacity(size_hint);
            self.secure
                .each_revoked_serial(ca_id, |r| {
                    let mut serial = [0u8; 20];
                    let bytes = serial
                        .get_mut(..r.serial_hex.len() / 2)
                        .ok_or_else(|| ServiceError::internal("serial longer than 20 bytes"))?;
                    hex::decode_to_slice(&r.serial_hex, bytes).map_err(ServiceError::internal)?;
                    revoked
                        .push(bytes, r.revoked_at, r.reason)
                        .map_err(ServiceError::internal)
                })
                .await?;
            let count = revoked.len() as i64;
            let this_update = Utc::now();
            let next_update = this_update + Duration::seconds(self.settings.crl_validity_seconds);
            let (k, der_in, idp_c) = (key.clone(), ca_der.clone(), idp.clone());
            let der = crate::logging::spawn_blocking_in_span(move || {
                let number = u64::try_from(number).map_err(pki::PkiError::encoding)?;
                let issuer = pki::Issuer::new(k.as_ref(), &der_in)?;
                pki::prepare_crl(&issuer, number, this_update, next_update, &idp_c, revoked)?
                    .sign(k.as_ref())
            })
            .await
            .map_err(ServiceError::internal)??;
            let stored = StoredCrl {
                ca_id,
                crl_number: number,
                this_update,
                next_update,
                entry_count: count,
                der,
            };
            let event = AuditEvent::new(Actor::SYSTEM, "crl.signed", &RequestContext::default())
                .org(ca.organization_id)
                .target("ca", ca_id)
                .details(serde_json::json!({
                    "crl_number": number,
                    "entries": count,
                    "next_update": super::rfc3339(next_update),
                }));
            match self.secure.store_crl(&stored, &event).await {
                Ok(()) => {
                    self.crl_state.remember(ca_id, Arc::new(served(stored)));
                    if large || count >= LARGE_CRL as i64 {
                        crate::memory::release_freed_in_background().await;
                    }
                    return Ok(());
                }
                // Another instance stored this number first; ours is
                // discarded and a fresh one (with what they saw) is signed.
                Err(StoreError::Conflict(_)) if attempt < NUMBER_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::internal("CRL number kept being taken"))
    }

    /// About as many entries as the CRL `ca` last had: one allocation for
    /// the whole list instead of doubling up to 46 MB.
    fn crl_size_hint(&self, ca: CaId) -> usize {
        self.crl_state
            .cached(ca)
            .map_or(0, |c| usize::try_from(c.entries).unwrap_or(0) + 1024)
    }
}

fn served(c: StoredCrl) -> ServedCrl {
    ServedCrl {
        number: c.crl_number,
        this_update: c.this_update,
        next_update: c.next_update,
        entries: c.entry_count,
        der: c.der.into(),
    }
}
