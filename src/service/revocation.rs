//! Revoking certificates, placing and releasing holds. clm_secure records
//! the change (status, revocation row, audit entry in one transaction);
//! then the CA's CRL is re-signed and cached OCSP answers for the serial are
//! dropped before the caller hears back, so a relying party asking right
//! after sees the revocation.

use chrono::Utc;
use serde::Deserialize;

use super::certificates::CertificateView;
use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal};
use crate::domain::model::{Actor, AuditEvent, Certificate, Notification, RequestContext};
use crate::domain::{CertificateId, CertificateStatus, Permission, RevocationReason};
use crate::store::{Revocation, StoreError};

/// Body of `POST /api/v1/certificates/{id}/revoke`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    #[schema(value_type = RevocationReason)]
    pub reason: String,
}

impl Clm {
    /// The owner or a holder of `RevokeAnyCertificate` revokes (or holds).
    /// Anyone else is told the certificate does not exist.
    pub async fn revoke_certificate(
        &self,
        p: &Principal,
        id: CertificateId,
        body: RevokeBody,
        ctx: &RequestContext,
    ) -> ServiceResult<CertificateView> {
        let reason = parse_reason(&body.reason)?;
        let cert = self.revocable_certificate(p, id).await?;
        self.revoke_as(p.actor(), &cert, reason, ctx).await?;
        if cert.owner_id != Some(p.user_id) {
            self.tell_owner(&cert, reason).await;
        }
        self.get_certificate(p, id).await
    }

    /// `on_hold → valid`. Only for `RevokeAnyCertificate`: a hold placed
    /// because a key may be compromised is not the owner's to lift.
    pub async fn release_hold(
        &self,
        p: &Principal,
        id: CertificateId,
        ctx: &RequestContext,
    ) -> ServiceResult<CertificateView> {
        p.require(Permission::RevokeAnyCertificate)?;
        let cert = self.revocable_certificate(p, id).await?;
        if cert.status != CertificateStatus::OnHold {
            return Err(ServiceError::conflict(
                "not_on_hold",
                format!("the certificate is {}, not on hold", cert.status),
            ));
        }
        let event = AuditEvent::new(p.actor(), "certificate.hold_released", ctx)
            .org(cert.organization_id)
            .target("certificate", cert.id)
            .details(serde_json::json!({ "ca_id": cert.ca_id, "serial": cert.serial_hex }));
        let released = self
            .secure
            .release_hold(cert.id, &event)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    ServiceError::conflict("not_on_hold", "the certificate is no longer on hold")
                }
                other => other.into(),
            })?;
        self.after_status_change(&released).await;
        self.get_certificate(p, id).await
    }

    /// Records the revocation and brings CRL, OCSP and clm_core up to date.
    /// Used by the API and by renewal (superseding the old certificate).
    pub(super) async fn revoke_as(
        &self,
        actor: Actor,
        cert: &Certificate,
        reason: RevocationReason,
        ctx: &RequestContext,
    ) -> ServiceResult<Certificate> {
        let from = cert.status;
        let allowed = match from {
            CertificateStatus::Valid => true,
            // A hold may be made final, not held twice.
            CertificateStatus::OnHold => !reason.is_hold(),
            CertificateStatus::Revoked | CertificateStatus::Expired => false,
        };
        if !allowed {
            return Err(ServiceError::conflict(
                "not_revocable",
                format!("the certificate is {from}; it cannot be revoked with {reason}"),
            ));
        }
        let action = if reason.is_hold() {
            "certificate.held"
        } else {
            "certificate.revoked"
        };
        let event = AuditEvent::new(actor, action, ctx)
            .org(cert.organization_id)
            .target("certificate", cert.id)
            .details(serde_json::json!({
                "ca_id": cert.ca_id,
                "serial": cert.serial_hex,
                "reason": reason,
                "previous_status": from,
            }));
        let revocation = Revocation {
            certificate: cert.id,
            from,
            reason,
            at: Utc::now(),
            by: event.actor.id,
        };
        let revoked = self
            .secure
            .revoke(&revocation, &event)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => ServiceError::conflict(
                    "not_revocable",
                    "the certificate's status changed meanwhile; read it again",
                ),
                other => other.into(),
            })?;
        self.after_status_change(&revoked).await;
        if let Some(org) = revoked.organization_id {
            self.emit(
                org,
                action,
                serde_json::json!({
                    "certificate_id": revoked.id,
                    "serial": revoked.serial_hex,
                    "ca_id": revoked.ca_id,
                    "reason": reason,
                }),
            )
            .await;
        }
        Ok(revoked)
    }

    /// After clm_secure changed a certificate's status: the CRL is re-signed
    /// (coalesced with concurrent revocations), OCSP answers for the serial
    /// are dropped, and clm_core's mirror follows. The change itself is
    /// already durable; failures here are repaired by the CRL job and the
    /// OCSP cache's poll, so they are logged, not returned.
    async fn after_status_change(&self, cert: &Certificate) {
        self.ocsp.forget(cert.ca_id, &cert.serial_hex);
        if let Err(e) = self.refresh_crl_after_change(cert.ca_id).await {
            tracing::warn!(ca = %cert.ca_id, error = %e.log_message(), "CRL not re-signed after a revocation; the CRL job will retry");
        }
        if let Err(e) = self
            .core
            .mirror_certificate_status(cert.id, cert.status)
            .await
        {
            tracing::warn!(certificate = %cert.id, error = %e, "status not mirrored to clm_core");
        }
    }

    /// A certificate the principal may revoke; anything else is "not found"
    /// (the rule: someone else's certificate does not exist for you).
    async fn revocable_certificate(
        &self,
        p: &Principal,
        id: CertificateId,
    ) -> ServiceResult<Certificate> {
        self.secure
            .find_certificate(id)
            .await?
            .filter(|c| p.can_see(c.organization_id))
            .filter(|c| {
                if c.is_ca {
                    // A CA certificate (an intermediate, on its parent's
                    // CRL) is revoked by those who manage CAs.
                    p.has(Permission::ManageCas)
                } else {
                    c.owner_id == Some(p.user_id) || p.has(Permission::RevokeAnyCertificate)
                }
            })
            .ok_or(ServiceError::NotFound("certificate"))
    }

    async fn tell_owner(&self, cert: &Certificate, reason: RevocationReason) {
        // What clm requested for itself (its TLS certificate) is owned by
        // the nil user, who has no inbox.
        let owner = cert.owner_id.filter(|o| !o.0.is_nil());
        let (Some(org), Some(owner)) = (cert.organization_id, owner) else {
            return;
        };
        let notice = Notification::new(
            org,
            owner,
            "certificate.revoked",
            "Your certificate was revoked".into(),
            format!(
                "Certificate {} ({}) was revoked: {reason}.",
                cert.serial_hex, cert.subject
            ),
            serde_json::json!({ "certificate_id": cert.id, "reason": reason }),
        );
        if let Err(e) = self.core.notify(&[notice]).await {
            tracing::warn!(certificate = %cert.id, error = %e, "revocation notice not stored");
        }
    }
}

fn parse_reason(text: &str) -> ServiceResult<RevocationReason> {
    text.parse().map_err(|_| {
        let names: Vec<&str> = RevocationReason::ALL.iter().map(|r| r.as_str()).collect();
        ServiceError::invalid(
            "invalid_reason",
            format!("reason must be one of {}", names.join(", ")),
        )
    })
}
