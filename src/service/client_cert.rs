//! Authentication by TLS client certificate (mTLS), and the bindings that
//! say whom a certificate authenticates as.
//!
//! A certificate authenticates nobody until its owner binds it, with a
//! bearer token, to the principal making that call: bound in a login
//! session it acts as the user, bound with an API key it acts as that key
//! (its roles, its expiry, its revocation). Only the certificate's owner may
//! bind it and only to themselves, so nobody can make a certificate act as
//! a principal they do not control; and a call authenticated by a
//! certificate cannot bind one, so every binding goes back to a login or
//! an API key.
//!
//! Every request re-reads clm's own state — the certificate by the SHA-256
//! of its DER, its issuers, the binding, the user and the key — so a
//! revocation, hold, unbinding or deactivation takes effect on the next
//! request, on every instance, even inside an open TLS connection.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal, rfc3339};
use crate::domain::model::{
    Actor, AuditEvent, Certificate, ClientCertBinding, Outcome, RequestContext, User,
};
use crate::domain::{ApiKeyId, CertificateId, CertificateStatus, Permission, UserId, new_row_id};
use crate::pki;
use crate::store::{IssuerState, StoreError};

/// Why a client certificate does not authenticate, in the client's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a certificate clm issued (or not this exact one).
    Unknown,
    /// A CA certificate, or one whose extended key usage lacks clientAuth.
    NotClientAuth,
    NotYetValid,
    Expired,
    Revoked,
    OnHold,
    /// The issuing CA, or one above it, is disabled or expired.
    IssuerInactive,
    NotBound,
    /// The user is deactivated, or the API key revoked or expired.
    PrincipalInactive,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Unknown => "client_certificate_unknown",
            Refusal::NotClientAuth => "client_certificate_not_for_client_auth",
            Refusal::NotYetValid => "client_certificate_not_yet_valid",
            Refusal::Expired => "client_certificate_expired",
            Refusal::Revoked => "client_certificate_revoked",
            Refusal::OnHold => "client_certificate_on_hold",
            Refusal::IssuerInactive => "client_certificate_issuer_inactive",
            Refusal::NotBound => "client_certificate_not_bound",
            Refusal::PrincipalInactive => "client_certificate_principal_inactive",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Unknown => "the client certificate was not issued by this clm",
            Refusal::NotClientAuth => {
                "the client certificate is not for client authentication (extended key usage clientAuth)"
            }
            Refusal::NotYetValid => "the client certificate is not valid yet",
            Refusal::Expired => "the client certificate has expired",
            Refusal::Revoked => "the client certificate is revoked",
            Refusal::OnHold => "the client certificate is on hold",
            Refusal::IssuerInactive => {
                "the CA that issued the client certificate is not in service"
            }
            Refusal::NotBound => {
                "the client certificate is not bound to a user or API key (POST /api/v1/certificates/{id}/binding)"
            }
            Refusal::PrincipalInactive => {
                "the user or API key the client certificate is bound to is no longer active"
            }
        }
    }
}

impl From<Refusal> for ServiceError {
    fn from(r: Refusal) -> Self {
        ServiceError::CredentialRefused {
            code: r.code(),
            message: r.message(),
        }
    }
}

/// The certificate's own state at `now`: what the CA says of it, before
/// anyone asks whom it is bound to. Validity comes from clm's record, which
/// holds the certificate's own notBefore/notAfter.
fn judge(cert: &Certificate, client_auth: bool, now: DateTime<Utc>) -> Result<(), Refusal> {
    if cert.is_ca || !client_auth {
        return Err(Refusal::NotClientAuth);
    }
    match cert.status {
        CertificateStatus::Revoked => return Err(Refusal::Revoked),
        CertificateStatus::OnHold => return Err(Refusal::OnHold),
        CertificateStatus::Expired => return Err(Refusal::Expired),
        CertificateStatus::Valid => {}
    }
    if now < cert.not_before {
        return Err(Refusal::NotYetValid);
    }
    // RFC 5280: valid through notAfter inclusive.
    if now > cert.not_after {
        return Err(Refusal::Expired);
    }
    Ok(())
}

/// Every CA from the issuer up must be in service: active, or retired by a
/// rollover (it still vouches for what it issued), and not expired.
fn issuers_in_service(chain: &[IssuerState], now: DateTime<Utc>) -> Result<(), Refusal> {
    if chain
        .iter()
        .all(|ca| matches!(ca.status.as_str(), "active" | "retired") && now <= ca.not_after)
    {
        Ok(())
    } else {
        Err(Refusal::IssuerInactive)
    }
}

/// What one TLS connection remembers between its requests: the outcome of
/// certificate authentication last audited for it. A connection making many
/// calls writes one audit entry, not one per call, and a new one when the
/// outcome changes (a revocation while the connection is open).
#[derive(Debug, Default)]
pub struct ConnectionAudit(Mutex<Option<&'static str>>);

impl ConnectionAudit {
    /// Records `outcome`; true when it differs from the last one recorded.
    fn changed(&self, outcome: &'static str) -> bool {
        match self.0.lock() {
            Ok(mut last) => last.replace(outcome) != Some(outcome),
            // Auditing twice is better than not at all.
            Err(_) => true,
        }
    }
}

/// The result of checking one certificate, with what the audit entry needs.
struct Verdict {
    cert: Option<Certificate>,
    binding: Option<ClientCertBinding>,
    outcome: Result<Principal, Refusal>,
}

/// Bindings are touched at most this often, to spare a write per request.
const TOUCH_EVERY_SECONDS: i64 = 60;

/// A binding as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BindingView {
    pub certificate_id: CertificateId,
    pub bound_to: BoundTo,
    pub user_id: UserId,
    pub api_key_id: Option<ApiKeyId>,
    /// Lower-case hex.
    pub serial: String,
    pub fingerprint_sha256: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Updated at most once a minute.
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
}

/// What a bound certificate authenticates as: its owner, or the API key
/// that bound it (with that key's roles).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BoundTo {
    User,
    ApiKey,
}

fn binding_view(b: &ClientCertBinding, cert: &Certificate) -> BindingView {
    BindingView {
        certificate_id: b.certificate_id,
        bound_to: if b.api_key_id.is_some() {
            BoundTo::ApiKey
        } else {
            BoundTo::User
        },
        user_id: b.user_id,
        api_key_id: b.api_key_id,
        serial: cert.serial_hex.clone(),
        fingerprint_sha256: cert.fingerprint_sha256.clone(),
        created_at: rfc3339(b.created_at),
        last_used_at: b.last_used_at.map(rfc3339),
    }
}

impl Clm {
    /// Resolves the client certificate of the TLS connection (DER of the
    /// leaf, whose key the TLS handshake proved) to the principal it is
    /// bound to, or refuses it with a reason the client can read.
    pub async fn authenticate_client_certificate(
        &self,
        der: &[u8],
        seen: &ConnectionAudit,
        ctx: &RequestContext,
    ) -> ServiceResult<Principal> {
        let now = Utc::now();
        let fingerprint = pki::fingerprint_sha256_hex(der);
        let verdict = self.check_client_certificate(&fingerprint, now).await?;
        let outcome = match &verdict.outcome {
            Ok(_) => "success",
            Err(r) => r.code(),
        };
        metrics::counter!("clm_client_certificate_auth_total", "outcome" => outcome).increment(1);
        if seen.changed(outcome) {
            self.audit_certificate_auth(&verdict, &fingerprint, ctx)
                .await?;
        }
        let principal = verdict.outcome?;
        if let Some(b) = &verdict.binding
            && b.last_used_at
                .is_none_or(|t| (now - t).num_seconds() >= TOUCH_EVERY_SECONDS)
        {
            self.core.touch_client_cert_binding(b.id, now).await?;
            if let Some(key) = b.api_key_id {
                self.core.touch_api_key(key, now).await?;
            }
        }
        Ok(principal)
    }

    async fn check_client_certificate(
        &self,
        fingerprint: &str,
        now: DateTime<Utc>,
    ) -> ServiceResult<Verdict> {
        let refuse = |cert, binding, r| Verdict {
            cert,
            binding,
            outcome: Err(r),
        };
        let Some(cert) = self
            .secure
            .find_certificate_by_fingerprint(fingerprint)
            .await?
        else {
            return Ok(refuse(None, None, Refusal::Unknown));
        };
        // Read first so that a refusal is audited against the principal
        // the certificate stood for.
        let binding = self
            .core
            .find_client_cert_binding(cert.id)
            .await?
            .filter(|b| cert.organization_id == Some(b.organization_id));
        let client_auth = pki::allows_client_auth(&cert.certificate_der)?;
        let usable = judge(&cert, client_auth, now).and(issuers_in_service(
            &self.secure.issuer_chain(cert.ca_id).await?,
            now,
        ));
        if let Err(r) = usable {
            return Ok(refuse(Some(cert), binding, r));
        }
        let Some(binding) = binding else {
            return Ok(refuse(Some(cert), None, Refusal::NotBound));
        };
        let user = self
            .core
            .find_user(binding.user_id)
            .await?
            .filter(|u| User::is_active(u) && u.organization_id == binding.organization_id);
        let Some(user) = user else {
            return Ok(refuse(
                Some(cert),
                Some(binding),
                Refusal::PrincipalInactive,
            ));
        };
        let mut principal = match binding.api_key_id {
            None => Principal::of(user.into(), None, None),
            Some(key_id) => {
                let key = self.core.find_api_key(key_id).await?.filter(|k| {
                    k.user_id == user.id
                        && k.revoked_at.is_none()
                        && k.expires_at.is_none_or(|t| t > now)
                });
                let Some(key) = key else {
                    return Ok(refuse(
                        Some(cert),
                        Some(binding),
                        Refusal::PrincipalInactive,
                    ));
                };
                super::auth::api_key_principal(key.id, &key.roles, user.into())
            }
        };
        principal.client_certificate_id = Some(cert.id);
        Ok(Verdict {
            cert: Some(cert),
            binding: Some(binding),
            outcome: Ok(principal),
        })
    }

    /// `auth.client_certificate` in clm_core's audit log, like `auth.login`:
    /// who (the bound principal, if any), which certificate, and on failure
    /// why.
    async fn audit_certificate_auth(
        &self,
        v: &Verdict,
        fingerprint: &str,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        let actor = match (&v.outcome, &v.binding) {
            (Ok(p), _) => p.actor(),
            (Err(_), Some(b)) => Actor {
                id: Some(b.user_id),
                kind: if b.api_key_id.is_some() {
                    "api_key"
                } else {
                    "user"
                },
            },
            (Err(_), None) => Actor::ANONYMOUS,
        };
        let mut details = serde_json::json!({ "fingerprint_sha256": fingerprint });
        let mut event = AuditEvent::new(actor, "auth.client_certificate", ctx);
        if let Some(cert) = &v.cert {
            details["serial"] = cert.serial_hex.clone().into();
            details["ca_id"] = serde_json::json!(cert.ca_id);
            event = event
                .org(cert.organization_id)
                .target("certificate", cert.id);
        }
        if let Some(key) = v.binding.as_ref().and_then(|b| b.api_key_id) {
            details["api_key_id"] = serde_json::json!(key);
        }
        if let Err(r) = &v.outcome {
            details["reason"] = r.code().into();
            event = event.outcome(Outcome::Failure);
        }
        self.core.append_audit(&event.details(details)).await?;
        Ok(())
    }

    /// The certificates of every CA clm has (active, retired or disabled):
    /// what the TLS listener accepts client certificates from.
    pub async fn client_ca_certificates(&self) -> ServiceResult<Vec<Vec<u8>>> {
        Ok(self.secure.ca_certificates().await?)
    }

    /// `POST /api/v1/certificates/{id}/binding`: the caller's own
    /// certificate will authenticate as the caller — the user in a login
    /// session, the API key when called with one.
    pub async fn bind_client_certificate(
        &self,
        p: &Principal,
        id: CertificateId,
        ctx: &RequestContext,
    ) -> ServiceResult<BindingView> {
        if p.client_certificate_id.is_some() {
            return Err(ServiceError::Forbidden(
                "bind certificates with a bearer token (a login session or an API key), not with a client certificate",
            ));
        }
        let cert = self
            .secure
            .find_certificate(id)
            .await?
            .filter(|c| p.can_see(c.organization_id))
            .ok_or(ServiceError::NotFound("certificate"))?;
        if cert.owner_id != Some(p.user_id) || cert.organization_id != Some(p.organization_id) {
            return Err(ServiceError::Forbidden(
                "only the certificate's owner may bind it, and only to themselves",
            ));
        }
        let now = Utc::now();
        let usable = judge(&cert, pki::allows_client_auth(&cert.certificate_der)?, now).and(
            issuers_in_service(&self.secure.issuer_chain(cert.ca_id).await?, now),
        );
        match usable {
            Ok(()) => {}
            Err(Refusal::NotClientAuth) => {
                return Err(ServiceError::invalid(
                    "not_client_auth",
                    "the certificate's extended key usage does not include clientAuth; issue it from a profile that allows clientAuth",
                ));
            }
            Err(r) => {
                return Err(ServiceError::conflict(
                    "certificate_not_usable",
                    r.message(),
                ));
            }
        }
        let binding = ClientCertBinding {
            id: new_row_id(),
            certificate_id: cert.id,
            organization_id: p.organization_id,
            user_id: p.user_id,
            api_key_id: p.api_key_id,
            last_used_at: None,
            created_at: now,
        };
        let event = AuditEvent::new(p.actor(), "client_certificate.bound", ctx)
            .org(Some(p.organization_id))
            .target("certificate", cert.id)
            .details(serde_json::json!({
                "serial": cert.serial_hex,
                "fingerprint_sha256": cert.fingerprint_sha256,
                "api_key_id": p.api_key_id,
            }));
        self.core
            .insert_client_cert_binding(&binding, &event)
            .await
            .map_err(|e| match e {
                StoreError::Duplicate(_) => ServiceError::conflict(
                    "already_bound",
                    "the certificate is already bound; remove that binding first",
                ),
                other => other.into(),
            })?;
        Ok(binding_view(&binding, &cert))
    }

    /// `GET /api/v1/certificates/{id}/binding`, for whoever may see the
    /// certificate.
    pub async fn client_certificate_binding(
        &self,
        p: &Principal,
        id: CertificateId,
    ) -> ServiceResult<BindingView> {
        let cert = self
            .secure
            .find_certificate(id)
            .await?
            .filter(|c| p.can_see(c.organization_id))
            .ok_or(ServiceError::NotFound("certificate"))?;
        let binding = self
            .core
            .find_client_cert_binding(id)
            .await?
            .ok_or(ServiceError::NotFound("binding"))?;
        Ok(binding_view(&binding, &cert))
    }

    /// `DELETE /api/v1/certificates/{id}/binding`: whoever may revoke the
    /// certificate (its owner, `RevokeAnyCertificate`) may unbind it.
    pub async fn unbind_client_certificate(
        &self,
        p: &Principal,
        id: CertificateId,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        let cert = self
            .secure
            .find_certificate(id)
            .await?
            .filter(|c| p.can_see(c.organization_id))
            .filter(|c| c.owner_id == Some(p.user_id) || p.has(Permission::RevokeAnyCertificate))
            .ok_or(ServiceError::NotFound("certificate"))?;
        let event = AuditEvent::new(p.actor(), "client_certificate.unbound", ctx)
            .org(cert.organization_id)
            .target("certificate", cert.id)
            .details(serde_json::json!({ "serial": cert.serial_hex }));
        self.core
            .delete_client_cert_binding(cert.id, &event)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => ServiceError::NotFound("binding"),
                other => other.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::domain::{CaId, OrganizationId};

    /// A real certificate with the given validity, and clm's record of it
    /// (times as `pki::CertInfo` reads them from the DER).
    fn issued(not_before: DateTime<Utc>, not_after: DateTime<Utc>) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["client.test".into()]).unwrap();
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp(not_before.timestamp()).unwrap();
        params.not_after =
            time::OffsetDateTime::from_unix_timestamp(not_after.timestamp()).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let info = pki::CertInfo::from_der(&der).unwrap();
        Certificate {
            id: CertificateId::new(),
            organization_id: Some(OrganizationId::new()),
            ca_id: CaId::new(),
            request_id: None,
            profile_id: None,
            owner_id: None,
            serial_hex: info.serial_hex,
            subject: info.subject,
            sans: vec!["client.test".into()],
            key_algorithm: "ecdsa-p256".into(),
            not_before: info.not_before,
            not_after: info.not_after,
            status: CertificateStatus::Valid,
            is_ca: false,
            fingerprint_sha256: info.fingerprint_sha256,
            certificate_der: der,
            revoked_at: None,
            revocation_reason: None,
            replaces_certificate_id: None,
            created_at: not_before,
        }
    }

    #[test]
    fn validity_is_judged_by_the_certificates_own_dates() {
        let now = Utc::now();
        let day = Duration::days(1);
        let current = issued(now - day, now + day);
        assert!(pki::allows_client_auth(&current.certificate_der).unwrap());
        assert_eq!(judge(&current, true, now), Ok(()));

        let expired = issued(now - day * 10, now - day);
        assert_eq!(judge(&expired, true, now), Err(Refusal::Expired));
        // Valid through notAfter, not a second longer.
        assert_eq!(judge(&expired, true, expired.not_after), Ok(()));
        assert_eq!(
            judge(&expired, true, expired.not_after + Duration::seconds(1)),
            Err(Refusal::Expired)
        );

        let future = issued(now + day, now + day * 10);
        assert_eq!(judge(&future, true, now), Err(Refusal::NotYetValid));
        assert_eq!(judge(&future, true, future.not_before), Ok(()));
    }

    #[test]
    fn status_and_purpose_come_before_dates() {
        let now = Utc::now();
        let mut cert = issued(now - Duration::days(10), now - Duration::days(1));
        assert_eq!(judge(&cert, false, now), Err(Refusal::NotClientAuth));
        cert.status = CertificateStatus::Revoked;
        assert_eq!(judge(&cert, true, now), Err(Refusal::Revoked));
        cert.status = CertificateStatus::OnHold;
        assert_eq!(judge(&cert, true, now), Err(Refusal::OnHold));
        cert.status = CertificateStatus::Valid;
        cert.is_ca = true;
        assert_eq!(judge(&cert, true, now), Err(Refusal::NotClientAuth));
    }

    #[test]
    fn every_issuer_up_to_the_root_must_be_in_service() {
        let now = Utc::now();
        let ca = |status: &str, not_after| IssuerState {
            ca_id: CaId::new(),
            status: status.into(),
            not_after,
        };
        let later = now + Duration::days(1);
        assert_eq!(
            issuers_in_service(&[ca("active", later), ca("retired", later)], now),
            Ok(())
        );
        for chain in [
            vec![ca("active", later), ca("disabled", later)],
            vec![ca("disabled", later)],
            vec![ca("active", now - Duration::days(1))],
        ] {
            assert_eq!(
                issuers_in_service(&chain, now),
                Err(Refusal::IssuerInactive)
            );
        }
    }

    #[test]
    fn a_connection_audits_each_change_of_outcome_once() {
        let seen = ConnectionAudit::default();
        assert!(seen.changed("success"));
        assert!(!seen.changed("success"));
        assert!(seen.changed(Refusal::Revoked.code()));
        assert!(!seen.changed(Refusal::Revoked.code()));
    }
}
