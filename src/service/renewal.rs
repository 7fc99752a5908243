//! Renewal: a new request for the names of an existing certificate, through
//! the same profile and workflow, linked to the certificate it replaces.

use serde::Deserialize;

use super::error::{ServiceError, ServiceResult};
use super::issuance::{Renewal, RequestView, SubjectKey};
use super::{Clm, Principal};
use crate::domain::model::{Actor, RequestContext};
use crate::domain::{
    CertificateId, CertificateStatus, Permission, RequestedCertificate, RevocationReason,
};
use crate::pki;

/// Body of `POST /api/v1/certificates/{id}/renew`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    /// A CSR for the new key; without one the profile must allow reusing
    /// the replaced certificate's key.
    pub csr_pem: Option<String>,
    pub validity_days: Option<u32>,
    /// Revoke the replaced certificate as `superseded` once the new one is
    /// issued.
    #[serde(default)]
    pub revoke_replaced: bool,
}

impl Clm {
    /// Only the owner renews; to anyone else the certificate does not exist.
    pub async fn renew_certificate(
        &self,
        p: &Principal,
        id: CertificateId,
        body: RenewBody,
        idempotency_key: Option<String>,
        ctx: &RequestContext,
    ) -> ServiceResult<(RequestView, bool)> {
        p.require(Permission::RequestCertificates)?;
        if let Some(existing) = self
            .idempotent_replay(p, idempotency_key.as_deref())
            .await?
        {
            return Ok((existing, false));
        }
        self.issuance_limiter.check(p)?;
        let old = self
            .secure
            .find_certificate(id)
            .await?
            .filter(|c| !c.is_ca && p.can_see(c.organization_id) && c.owner_id == Some(p.user_id))
            .ok_or(ServiceError::NotFound("certificate"))?;
        if old.status == CertificateStatus::Revoked {
            return Err(ServiceError::conflict(
                "certificate_revoked",
                "a revoked certificate cannot be renewed; request a new one",
            ));
        }
        let not_renewable = || {
            ServiceError::conflict(
                "not_renewable",
                "the certificate was not issued through a profile that still exists",
            )
        };
        let old_request = match old.request_id {
            Some(r) => self.secure.find_request(r).await?,
            None => None,
        }
        .ok_or_else(not_renewable)?;
        let profile = self
            .core
            .find_profile(old_request.profile_id)
            .await?
            .ok_or_else(not_renewable)?;

        let (key, key_algorithm) = match body.csr_pem {
            Some(pem) => {
                let csr = pki::parse_csr(&pem)?;
                let algorithm = csr.key_algorithm;
                (
                    SubjectKey {
                        csr_der: Some(csr.der),
                        spki_der: csr.spki_der,
                    },
                    algorithm,
                )
            }
            None if profile.rules.allow_key_reuse => (
                SubjectKey {
                    csr_der: None,
                    spki_der: pki::spki_of(&old.certificate_der)?,
                },
                old_request.key_algorithm,
            ),
            None => {
                return Err(ServiceError::invalid(
                    "csr_required",
                    "this profile does not allow renewing with the same key: give csr_pem",
                ));
            }
        };
        // The names come from the certificate being renewed, never from the
        // new CSR: renewal does not change what is certified.
        let wanted = RequestedCertificate {
            common_name: Some(old_request.subject.clone()).filter(|s| !s.is_empty()),
            sans: old_request.sans.clone(),
            key_algorithm,
            validity_days: body.validity_days,
        };
        let renewal = Renewal {
            replaces: old.id,
            supersede: body.revoke_replaced,
        };
        self.file_request(
            p,
            &profile,
            &wanted,
            key,
            Some(renewal),
            idempotency_key,
            ctx,
        )
        .await
    }

    /// After a renewal was issued: the replaced certificate is revoked as
    /// `superseded`. The new certificate exists either way, so a failure
    /// (it was revoked meanwhile, say) is logged, not returned.
    pub(super) async fn supersede(&self, old: CertificateId, actor: Actor, ctx: &RequestContext) {
        let result = match self.secure.find_certificate(old).await {
            Ok(Some(cert)) => self
                .revoke_as(actor, &cert, RevocationReason::Superseded, ctx)
                .await
                .map(|_| ()),
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::warn!(certificate = %old, error = %e.log_message(), "replaced certificate not revoked as superseded");
        }
    }
}
