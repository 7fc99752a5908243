//! The OCSP responder (RFC 6960). Each CA has a delegated responder whose
//! key lives in the HSM and whose certificate the CA issues and renews.
//! Answers without a nonce are cached per serial and re-signed in the
//! background before they age, so the hot path is a parse and a map lookup;
//! a status change drops the serial's cached answers (here at once, on other
//! instances through a poll of changed certificates).

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};

use super::Clm;
use super::error::{ServiceError, ServiceResult};
use crate::domain::model::{Actor, AuditEvent, Certificate, KeyReference, RequestContext};
use crate::domain::{
    CaId, CertificateId, CertificateStatus, KeyAlgorithm, KeyId, KeyPurpose, KeyStatus,
    RevocationReason, Signer,
};
use crate::hsm::HsmKey;
use crate::pki::{self, ocsp};
use crate::store::{SerialStatus, StatusChange};

use super::ocsp_cache::{BoundedMap, HeapSize};

/// Memory the cached answers may hold, about 50,000 answers of a P-256
/// responder; beyond it the cache is cleared and refills from demand.
const CACHE_BYTES: usize = 64 << 20;
/// Cached answers re-signed per background pass.
const REFRESH_BATCH: usize = 5_000;
/// How long before the newest status change seen a change may still
/// become visible: from a writer's stamp to its commit, plus the skew
/// between instances' clocks. Each poll reads this window again.
const CHANGE_OVERLAP: Duration = Duration::seconds(30);
/// Status changes read per query.
const CHANGE_PAGE: u64 = 10_000;

/// A CA's delegated responder, loaded and proven against its certificate.
struct Responder {
    ca_id: CaId,
    issuer: ocsp::IssuerHashes,
    key: Arc<HsmKey>,
    certificate_der: Vec<u8>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CacheKey {
    ca: CaId,
    serial_hex: String,
    hash: ocsp::HashAlgorithm,
}

struct Cached {
    der: Arc<Vec<u8>>,
    refresh_at: DateTime<Utc>,
    cert_id: ocsp::CertId,
}

impl HeapSize for CacheKey {
    fn heap_bytes(&self) -> usize {
        self.serial_hex.capacity()
    }
}

impl HeapSize for Cached {
    fn heap_bytes(&self) -> usize {
        // The answer's bytes are shared with those in flight; counted
        // here, where they stay. An `Arc` holds its two counts and the
        // vector's header beside them.
        let arc = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Vec<u8>>();
        arc + self.der.capacity() + self.cert_id.heap_bytes()
    }
}

pub(super) struct OcspState {
    responders: RwLock<Vec<Arc<Responder>>>,
    cache: RwLock<BoundedMap<CacheKey, Cached>>,
    /// `updated_at` of the newest certificate change already applied.
    watermark: tokio::sync::Mutex<Option<DateTime<Utc>>>,
}

impl Default for OcspState {
    fn default() -> Self {
        Self {
            responders: RwLock::default(),
            cache: RwLock::new(BoundedMap::new(CACHE_BYTES)),
            watermark: tokio::sync::Mutex::default(),
        }
    }
}

/// What `/ocsp` sends back: always an OCSPResponse; `malformed` answers
/// go out with HTTP 400, everything else with 200.
pub struct OcspAnswer {
    pub der: Arc<Vec<u8>>,
    pub malformed: bool,
    /// Seconds a shared cache may keep a successful answer.
    pub max_age: Option<i64>,
}

impl OcspAnswer {
    fn error(status: ocsp::ResponseStatus) -> Self {
        Self {
            der: Arc::new(ocsp::error_response(status)),
            malformed: status == ocsp::ResponseStatus::MalformedRequest,
            max_age: None,
        }
    }
}

impl OcspState {
    /// Drops the cached answers about one serial (all hash algorithms).
    /// One lookup per hash, not a pass over the cache: the change poll
    /// forgets every certificate issued since its last run, thousands a
    /// poll on a busy CA, while answers wait for the write lock.
    pub(super) fn forget(&self, ca: CaId, serial_hex: &str) {
        let mut key = CacheKey {
            ca,
            serial_hex: serial_hex.to_owned(),
            hash: ocsp::HashAlgorithm::Sha1,
        };
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        for hash in ocsp::HashAlgorithm::ALL {
            key.hash = hash;
            cache.remove(&key);
        }
    }

    fn responder_for(&self, id: &ocsp::CertId) -> Option<Arc<Responder>> {
        self.responders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|r| r.issuer.names(id))
            .cloned()
    }

    fn cached(&self, key: &CacheKey) -> Option<Arc<Vec<u8>>> {
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map(|c| c.der.clone())
    }
}

impl Clm {
    /// Answers one OCSP request. Never fails: trouble becomes an OCSP error
    /// status (malformedRequest, unauthorized, tryLater, internalError).
    pub async fn ocsp_answer(&self, request_der: &[u8]) -> OcspAnswer {
        let request = match ocsp::parse_request(request_der) {
            Ok(r) => r,
            Err(_) => return OcspAnswer::error(ocsp::ResponseStatus::MalformedRequest),
        };
        let mut responder = None;
        for id in &request.cert_ids {
            match self.ocsp.responder_for(id) {
                // One response is signed by one responder: all CertIDs must
                // name the same CA.
                Some(r)
                    if responder
                        .as_ref()
                        .is_none_or(|x: &Arc<Responder>| x.ca_id == r.ca_id) =>
                {
                    responder = Some(r)
                }
                _ => return OcspAnswer::error(ocsp::ResponseStatus::Unauthorized),
            }
        }
        let Some(responder) = responder else {
            return OcspAnswer::error(ocsp::ResponseStatus::MalformedRequest);
        };
        let max_age = Some(self.settings.ocsp_validity_seconds / 2);
        let cacheable = request.nonce.is_none() && request.cert_ids.len() == 1;
        if cacheable {
            let id = &request.cert_ids[0];
            let key = cache_key(responder.ca_id, id);
            if let Some(der) = self.ocsp.cached(&key) {
                return OcspAnswer {
                    der,
                    malformed: false,
                    max_age,
                };
            }
        }
        match self
            .sign_ocsp(&responder, &request.cert_ids, request.nonce.as_deref())
            .await
        {
            Ok(der) => {
                let der = Arc::new(der);
                if cacheable {
                    self.remember_ocsp(&responder, &request.cert_ids[0], der.clone());
                }
                OcspAnswer {
                    der,
                    malformed: false,
                    max_age: if request.nonce.is_some() {
                        None
                    } else {
                        max_age
                    },
                }
            }
            Err(ServiceError::Unavailable { log, .. }) => {
                tracing::warn!(reason = %log, "OCSP answered tryLater");
                OcspAnswer::error(ocsp::ResponseStatus::TryLater)
            }
            Err(e) => {
                tracing::error!(error = %e.log_message(), "OCSP answer failed");
                OcspAnswer::error(ocsp::ResponseStatus::InternalError)
            }
        }
    }

    fn remember_ocsp(&self, responder: &Responder, id: &ocsp::CertId, der: Arc<Vec<u8>>) {
        let refresh_at = Utc::now() + Duration::seconds(self.settings.ocsp_validity_seconds / 2);
        let mut cache = self.ocsp.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.insert(
            cache_key(responder.ca_id, id),
            Cached {
                der,
                refresh_at,
                cert_id: id.clone(),
            },
        );
    }

    /// Looks up each serial and signs one response in the HSM.
    async fn sign_ocsp(
        &self,
        responder: &Responder,
        ids: &[ocsp::CertId],
        nonce: Option<&[u8]>,
    ) -> ServiceResult<Vec<u8>> {
        let now = Utc::now();
        let next = now + Duration::seconds(self.settings.ocsp_validity_seconds);
        let mut singles = Vec::with_capacity(ids.len());
        for id in ids {
            let status = self
                .secure
                .serial_status(responder.ca_id, &hex::encode(id.serial()))
                .await?;
            singles.push(ocsp::SingleResponse {
                cert_id: id.clone(),
                status: cert_status(status.as_ref()),
                this_update: now,
                next_update: next,
            });
        }
        let key = responder.key.clone();
        let cert = responder.certificate_der.clone();
        let nonce = nonce.map(<[u8]>::to_vec);
        self.hsm
            .run_on_token_threads(move || {
                ocsp::sign_response(key.as_ref(), &cert, now, &singles, nonce.as_deref())
            })
            .await?
            .map_err(Into::into)
    }

    /// Drops the cached answers about every certificate whose status
    /// changed since the last poll, reading again the changes stamped
    /// within [`CHANGE_OVERLAP`] of the newest seen: a writer stamps
    /// `updated_at` before it commits, and instances' clocks differ, so a
    /// change can become visible after a poll has seen later stamps. Read
    /// from the newest stamp alone, such a revocation would never be
    /// applied here, and this instance would answer `good` until the
    /// cached answer's refresh. Forgetting twice costs a lookup.
    async fn forget_changed(&self) -> ServiceResult<()> {
        let mut watermark = self.ocsp.watermark.lock().await;
        let mut newest = watermark.unwrap_or_else(|| Utc::now() - Duration::minutes(5));
        let mut after = StatusChange::from(newest - CHANGE_OVERLAP);
        loop {
            let page = self
                .secure
                .status_changes_after(&after, CHANGE_PAGE)
                .await?;
            for c in &page {
                self.ocsp.forget(c.ca, &c.serial_hex);
            }
            let full = page.len() as u64 == CHANGE_PAGE;
            match page.into_iter().last() {
                Some(last) => {
                    newest = newest.max(last.at);
                    after = last;
                }
                None => break,
            }
            if !full {
                break;
            }
        }
        *watermark = Some(newest);
        Ok(())
    }

    /// The OCSP job: applies status changes made by other instances and
    /// re-signs cached answers past half their life. Returns how many were
    /// re-signed.
    pub async fn refresh_ocsp_cache(&self) -> ServiceResult<usize> {
        self.forget_changed().await?;
        let due: Vec<(CacheKey, ocsp::CertId)> = {
            let now = Utc::now();
            let cache = self.ocsp.cache.read().unwrap_or_else(|e| e.into_inner());
            cache
                .iter()
                .filter(|(_, c)| c.refresh_at <= now)
                .take(REFRESH_BATCH)
                .map(|(k, c)| (k.clone(), c.cert_id.clone()))
                .collect()
        };
        let mut refreshed = 0;
        for (key, id) in due {
            let Some(responder) = self.ocsp.responder_for(&id) else {
                continue;
            };
            match self
                .sign_ocsp(&responder, std::slice::from_ref(&id), None)
                .await
            {
                Ok(der) => {
                    self.remember_ocsp(&responder, &id, Arc::new(der));
                    refreshed += 1;
                }
                Err(e) => {
                    // Dropped: the next request signs afresh (or answers
                    // tryLater while the HSM is away).
                    tracing::warn!(error = %e.log_message(), "cached OCSP answer not refreshed");
                    self.ocsp
                        .cache
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                }
            }
        }
        Ok(refreshed)
    }

    /// Makes sure every CA whose key is loaded has a current delegated OCSP
    /// responder (issuing or renewing its certificate when a third of its
    /// life is left) and loads them all. Returns how many were issued.
    pub async fn ensure_ocsp_signers(&self) -> ServiceResult<usize> {
        let mut issued = 0;
        let mut responders = Vec::new();
        let renew_margin = Duration::days(self.settings.ocsp_signer_days) / 3;
        for ca in self.secure.list_cas().await? {
            let Ok(ca_key) = self.signing_key(ca.id).await else {
                continue;
            };
            let Some(ca_der) = ca.certificate_der.clone() else {
                continue;
            };
            let current = self.secure.ocsp_signer(ca.id).await?;
            let (key_ref, cert) = match current {
                Some((k, c)) if c.not_after - Utc::now() > renew_margin => (k, c),
                previous => {
                    let (k, c) = self
                        .issue_ocsp_signer(&ca, ca_key, &ca_der, previous.map(|(k, _)| k))
                        .await?;
                    issued += 1;
                    (k, c)
                }
            };
            let ckaid = hex::decode(&key_ref.ckaid_hex).map_err(ServiceError::internal)?;
            let key = Arc::new(
                self.hsm
                    .find_key_pair(KeyAlgorithm::EcdsaP256, &ckaid)
                    .await?,
            );
            let k = key.clone();
            let cert_der = cert.certificate_der.clone();
            tokio::task::spawn_blocking(move || pki::prove_key_matches(k.as_ref(), &cert_der))
                .await
                .map_err(ServiceError::internal)??;
            responders.push(Arc::new(Responder {
                ca_id: ca.id,
                issuer: ocsp::IssuerHashes::of(&ca_der)?,
                key,
                certificate_der: cert.certificate_der,
            }));
        }
        *self
            .ocsp
            .responders
            .write()
            .unwrap_or_else(|e| e.into_inner()) = responders;
        Ok(issued)
    }

    /// Issues a responder certificate for `ca`, reusing the previous
    /// responder key when there is one (a P-256 key in the HSM).
    async fn issue_ocsp_signer(
        &self,
        ca: &crate::domain::model::CertificateAuthority,
        ca_key: Arc<HsmKey>,
        ca_der: &[u8],
        previous: Option<KeyReference>,
    ) -> ServiceResult<(KeyReference, Certificate)> {
        let ctx = RequestContext::default();
        let key_ref = match previous {
            Some(k) => k,
            None => {
                let label = format!("clm-ocsp-{}", ca.id);
                let key = self
                    .hsm
                    .generate_key_pair(KeyAlgorithm::EcdsaP256, &label)
                    .await?;
                let key_ref = KeyReference {
                    id: KeyId::new(),
                    pkcs11_uri: self.hsm.pkcs11_uri(&label, key.cka_id()),
                    ckaid_hex: hex::encode(key.cka_id()),
                    label,
                    purpose: KeyPurpose::OcspSigning,
                    algorithm: KeyAlgorithm::EcdsaP256.as_str().to_string(),
                    status: KeyStatus::Active,
                    version: 1,
                    public_key_der: Some(key.public_key_spki().to_vec()),
                };
                let event = AuditEvent::new(Actor::SYSTEM, "key.generated", &ctx)
                    .org(ca.organization_id)
                    .target("encryption_key", key_ref.id)
                    .details(serde_json::json!({
                        "purpose": KeyPurpose::OcspSigning,
                        "algorithm": KeyAlgorithm::EcdsaP256,
                        "ca_id": ca.id,
                    }));
                self.secure
                    .insert_key(&key_ref, ca.organization_id, &event)
                    .await?;
                key_ref
            }
        };
        let spki = key_ref
            .public_key_der
            .clone()
            .ok_or_else(|| ServiceError::internal("OCSP key registered without its public key"))?;
        let serial = pki::new_serial();
        let now = Utc::now();
        let not_after = (now + Duration::days(self.settings.ocsp_signer_days)).min(ca.not_after);
        let common_name = format!("{} OCSP Responder", ca.name);
        let (issuer_der, s) = (ca_der.to_vec(), serial.clone());
        let der = crate::logging::spawn_blocking_in_span(move || {
            let issuer = pki::Issuer::new(ca_key.as_ref(), &issuer_der)?;
            pki::prepare_ocsp_signer(
                &issuer,
                &common_name,
                &spki,
                KeyAlgorithm::EcdsaP256,
                &s,
                now,
                not_after,
            )?
            .sign(ca_key.as_ref())
        })
        .await
        .map_err(ServiceError::internal)??;
        let info = pki::CertInfo::from_der(&der)?;
        let cert = Certificate {
            id: CertificateId::new(),
            organization_id: ca.organization_id,
            ca_id: ca.id,
            request_id: None,
            profile_id: None,
            owner_id: None,
            serial_hex: pki::serial_hex(&serial),
            subject: info.subject,
            sans: Vec::new(),
            key_algorithm: KeyAlgorithm::EcdsaP256.as_str().to_string(),
            not_before: info.not_before,
            not_after: info.not_after,
            status: CertificateStatus::Valid,
            is_ca: false,
            certificate_der: der,
            fingerprint_sha256: info.fingerprint_sha256,
            revoked_at: None,
            revocation_reason: None,
            replaces_certificate_id: None,
            created_at: now,
        };
        let event = AuditEvent::new(Actor::SYSTEM, "ocsp_signer.issued", &ctx)
            .org(ca.organization_id)
            .target("certificate", cert.id)
            .details(serde_json::json!({
                "ca_id": ca.id,
                "key_id": key_ref.id,
                "serial": cert.serial_hex,
                "not_after": super::rfc3339(cert.not_after),
            }));
        self.secure
            .insert_ocsp_signer(ca.id, &key_ref, &cert, &event)
            .await?;
        Ok((key_ref, cert))
    }
}

fn cache_key(ca: CaId, id: &ocsp::CertId) -> CacheKey {
    CacheKey {
        ca,
        serial_hex: hex::encode(id.serial()),
        hash: id.hash_algorithm(),
    }
}

/// A serial clm never issued is `unknown`; expired ones stay `good` (the
/// CA vouches for the status of what it issued, RFC 6960 §2.2).
fn cert_status(s: Option<&SerialStatus>) -> ocsp::CertStatus {
    match s {
        None => ocsp::CertStatus::Unknown,
        Some(s) => match s.status {
            CertificateStatus::Valid | CertificateStatus::Expired => ocsp::CertStatus::Good,
            CertificateStatus::Revoked | CertificateStatus::OnHold => ocsp::CertStatus::Revoked {
                at: s.revoked_at.unwrap_or_else(Utc::now),
                reason: Some(s.reason.unwrap_or(RevocationReason::Unspecified)),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_serial_drops_its_answers_under_every_hash_and_nothing_else() {
        let state = OcspState::default();
        let (ca, other_ca) = (CaId::new(), CaId::new());
        let entries = [(ca, [1u8, 2]), (ca, [1, 3]), (other_ca, [1, 2])];
        for (ca, serial) in entries {
            for hash in ocsp::HashAlgorithm::ALL {
                let id = ocsp::CertId::for_tests(hash, &serial);
                state.cache.write().unwrap().insert(
                    cache_key(ca, &id),
                    Cached {
                        der: Arc::new(vec![0x30, 0x00]),
                        refresh_at: Utc::now(),
                        cert_id: id,
                    },
                );
            }
        }
        state.forget(ca, "0102");
        for (ca_, serial) in entries {
            for hash in ocsp::HashAlgorithm::ALL {
                let id = ocsp::CertId::for_tests(hash, &serial);
                let gone = ca_ == ca && serial == [1, 2];
                assert_eq!(
                    state.cached(&cache_key(ca_, &id)).is_none(),
                    gone,
                    "{serial:?} {hash:?}"
                );
            }
        }
    }
}
