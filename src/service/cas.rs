//! Certificate authorities as the API shows them, and the cache of CA keys
//! that proved at start-up that they match their certificates.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal, rfc3339};
use crate::domain::model::{CertificateAuthority, RequestContext};
use crate::domain::{CaId, CaKind, KeyAlgorithm, OrganizationId, Permission};
use crate::hsm::{HsmError, HsmKey};
use crate::pki;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CaView {
    pub id: CaId,
    pub name: String,
    pub kind: CaKind,
    pub subject: String,
    #[schema(format = DateTime)]
    pub not_before: String,
    #[schema(format = DateTime)]
    pub not_after: String,
    #[schema(value_type = KeyAlgorithm)]
    pub key_algorithm: String,
    /// The CA's certificate as a certificate record (revocable by CA admins).
    pub certificate_id: Option<crate::domain::CertificateId>,
    pub certificate_pem: String,
    /// Issuer certificates above this CA up to and including the root;
    /// empty for a root.
    pub chain_pem: String,
    pub parent_id: Option<CaId>,
    pub organization_id: Option<OrganizationId>,
    pub status: String,
    pub crl_url: String,
    pub ocsp_url: String,
}

/// Body of `POST /api/v1/cas`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCa {
    pub name: String,
    pub kind: CaKind,
    pub parent_id: Option<uuid::Uuid>,
    /// The CA's common name.
    pub subject: String,
    pub key_algorithm: KeyAlgorithm,
    pub validity_days: u32,
}

/// Longest validity of a CA certificate clm creates (25 years).
const MAX_CA_VALIDITY_DAYS: u32 = 9131;

/// Longest issuer chain followed; guards against a corrupt parent loop.
const MAX_CHAIN: usize = 8;

impl Clm {
    pub async fn list_cas(&self, p: &Principal) -> ServiceResult<Vec<CaView>> {
        let mut out = Vec::new();
        for ca in self.secure.list_cas().await? {
            if p.can_see(ca.organization_id) {
                out.push(self.ca_view(&ca).await?);
            }
        }
        Ok(out)
    }

    pub async fn get_ca(&self, p: &Principal, id: CaId) -> ServiceResult<CaView> {
        let ca = self
            .secure
            .find_ca(id)
            .await?
            .filter(|ca| p.can_see(ca.organization_id))
            .ok_or(ServiceError::NotFound("CA"))?;
        self.ca_view(&ca).await
    }

    /// Creates a root or intermediate CA with a fresh key in the HSM. A
    /// super admin creates system-wide CAs; a ca_admin, CAs of their own
    /// organisation.
    pub async fn create_ca_for(
        &self,
        p: &Principal,
        body: NewCa,
        ctx: &RequestContext,
    ) -> ServiceResult<CaView> {
        p.require(Permission::ManageCas)?;
        let name = body.name.trim();
        if name.is_empty()
            || name.chars().count() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ServiceError::invalid(
                "invalid_ca",
                "name must be 1 to 64 letters, digits, `-`, `_` or `.`",
            ));
        }
        let cn = body.subject.trim();
        if cn.is_empty() || cn.chars().count() > 64 || cn.chars().any(char::is_control) {
            return Err(ServiceError::invalid(
                "invalid_ca",
                "subject must be a common name of 1 to 64 printable characters",
            ));
        }
        if !body.key_algorithm.is_ca_capable() {
            return Err(ServiceError::invalid(
                "invalid_ca",
                format!("{} cannot be used for a CA key", body.key_algorithm),
            ));
        }
        if body.validity_days == 0 || body.validity_days > MAX_CA_VALIDITY_DAYS {
            return Err(ServiceError::invalid(
                "invalid_ca",
                format!("validity_days must be between 1 and {MAX_CA_VALIDITY_DAYS}"),
            ));
        }
        let parent = match (body.kind, body.parent_id) {
            (CaKind::Root, None) => None,
            (CaKind::Root, Some(_)) => {
                return Err(ServiceError::invalid(
                    "invalid_ca",
                    "a root CA has no parent_id",
                ));
            }
            (CaKind::Intermediate, None) => {
                return Err(ServiceError::invalid(
                    "invalid_ca",
                    "an intermediate CA needs parent_id",
                ));
            }
            (CaKind::Intermediate, Some(id)) => Some(
                self.secure
                    .find_ca(CaId(id))
                    .await?
                    .filter(|ca| p.can_see(ca.organization_id))
                    .ok_or(ServiceError::NotFound("parent CA"))?,
            ),
        };
        if self.secure.find_ca_by_name(name).await?.is_some() {
            return Err(ServiceError::conflict(
                "duplicate_ca",
                "a CA with this name already exists",
            ));
        }
        let org = p.scope();
        let ca = self
            .create_ca(
                name,
                cn,
                body.key_algorithm,
                body.validity_days,
                parent.as_ref(),
                org,
                ctx,
            )
            .await?;
        self.ca_view(&ca).await
    }

    /// A CA's certificate for relying parties (AIA caIssuers); public.
    pub async fn ca_certificate_der(&self, id: CaId) -> ServiceResult<Vec<u8>> {
        self.secure
            .find_ca(id)
            .await?
            .and_then(|ca| ca.certificate_der)
            .ok_or(ServiceError::NotFound("CA certificate"))
    }

    async fn ca_view(&self, ca: &CertificateAuthority) -> ServiceResult<CaView> {
        let chain_pem = match ca.parent_id {
            Some(parent) if ca.kind == CaKind::Intermediate => self.chain_pem(parent).await?,
            _ => String::new(),
        };
        Ok(CaView {
            id: ca.id,
            name: ca.name.clone(),
            kind: ca.kind,
            subject: ca.subject.clone(),
            not_before: rfc3339(ca.not_before),
            not_after: rfc3339(ca.not_after),
            key_algorithm: ca.key_algorithm.as_str().to_string(),
            certificate_id: ca.certificate_id,
            certificate_pem: ca
                .certificate_der
                .as_deref()
                .map(|d| pki::to_pem("CERTIFICATE", d))
                .unwrap_or_default(),
            chain_pem,
            parent_id: ca.parent_id,
            organization_id: ca.organization_id,
            status: ca.status.clone(),
            crl_url: format!("{}/crl/{}.crl", self.settings.public_url, ca.id),
            ocsp_url: format!("{}/ocsp", self.settings.public_url),
        })
    }

    /// PEM of `ca` and every CA above it, nearest first.
    pub(super) async fn chain_pem(&self, ca: CaId) -> ServiceResult<String> {
        let mut pem = String::new();
        let mut next = Some(ca);
        for _ in 0..MAX_CHAIN {
            let Some(id) = next else { break };
            let ca =
                self.secure.find_ca(id).await?.ok_or_else(|| {
                    ServiceError::internal(format!("chain names missing CA {id}"))
                })?;
            if let Some(der) = &ca.certificate_der {
                pem.push_str(&pki::to_pem("CERTIFICATE", der));
            }
            next = if ca.kind == CaKind::Root {
                None
            } else {
                ca.parent_id
            };
        }
        Ok(pem)
    }

    /// A CA that exists and may sign now.
    pub(super) async fn usable_ca(&self, id: CaId) -> ServiceResult<CertificateAuthority> {
        let ca = self
            .secure
            .find_issuing_ca(id)
            .await?
            .ok_or_else(|| ServiceError::internal(format!("profile names missing CA {id}")))?;
        if !ca.is_active() {
            return Err(ServiceError::ca_inactive());
        }
        Ok(ca)
    }

    /// The CA's key, if it proved itself at start-up and the token is
    /// available. Refused up front (503, nothing persisted) while the
    /// breaker in front of the token is open — `hsm_unavailable` — and for
    /// a CA whose key is missing from the token or does not match its
    /// certificate — `ca_unavailable` — while everything else keeps
    /// working. Two atomic loads and a map lookup: no HSM call.
    pub(super) async fn signing_key(&self, id: CaId) -> ServiceResult<Arc<HsmKey>> {
        if let Some(down) = self.hsm.unavailable() {
            return Err(ServiceError::hsm_unavailable(
                down.retry_after.as_secs(),
                down.reason,
            ));
        }
        match self.ca_keys.read().await.get(&id) {
            Some(key) if !key.is_missing() => Ok(key.clone()),
            Some(_) => Err(ServiceError::ca_unavailable(format!(
                "the key of CA {id} is missing from the token"
            ))),
            None => Err(ServiceError::ca_unavailable(format!(
                "no verified HSM key loaded for CA {id}"
            ))),
        }
    }

    /// Loads every CA key from the token and makes it prove, by signing a
    /// fresh challenge, that it belongs to the CA certificate (as Boulder
    /// does at start-up); the keys that pass become the ones that sign.
    /// Returns the CAs that failed, with the reason.
    pub async fn load_ca_keys(&self) -> ServiceResult<Vec<(CaId, String)>> {
        let (loaded, failed) = self.verify_ca_keys().await?;
        for (id, why) in &failed {
            tracing::error!(ca = %id, reason = %why, "CA cannot sign");
        }
        *self.ca_keys.write().await = loaded;
        Ok(failed)
    }

    /// Every CA's key, found in the token and proven against the CA's
    /// certificate; and the CAs whose key is missing or does not match.
    pub(super) async fn verify_ca_keys(
        &self,
    ) -> ServiceResult<(HashMap<CaId, Arc<HsmKey>>, Vec<(CaId, String)>)> {
        let mut failed = Vec::new();
        let mut loaded = HashMap::new();
        for ca in self.secure.list_cas().await? {
            let Some(cert_der) = ca.certificate_der.clone() else {
                failed.push((ca.id, "no certificate stored".to_string()));
                continue;
            };
            let ckaid = match hex::decode(&ca.key.ckaid_hex) {
                Ok(b) => b,
                Err(_) => {
                    failed.push((ca.id, "registered CKA_ID is not hex".to_string()));
                    continue;
                }
            };
            let key = match self.hsm.find_key_pair(ca.key_algorithm, &ckaid).await {
                Ok(k) => Arc::new(k),
                Err(HsmError::KeyNotFound) => {
                    failed.push((ca.id, "key missing from the token".to_string()));
                    continue;
                }
                Err(e) if e.is_retryable() => return Err(e.into()),
                Err(e) => {
                    failed.push((ca.id, format!("key not usable in the token: {e}")));
                    continue;
                }
            };
            let k = key.clone();
            let proof =
                tokio::task::spawn_blocking(move || pki::prove_key_matches(k.as_ref(), &cert_der))
                    .await
                    .map_err(ServiceError::internal)?;
            match proof {
                Ok(()) => {
                    loaded.insert(ca.id, key);
                }
                Err(e) => failed.push((
                    ca.id,
                    format!("HSM key does not match the certificate: {e}"),
                )),
            }
        }
        Ok((loaded, failed))
    }
}
