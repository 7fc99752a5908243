//! Certificate requests and issuance, in the order of DESIGN.md decision 3:
//! record the intent with a reserved serial in clm_secure → sign in the HSM
//! → store certificate and audit entry in one clm_secure transaction →
//! mirror metadata into clm_core. A crash between steps leaves a request in
//! `approved` with its serial reserved, which reconciliation can account for;
//! never a certificate that clm_secure does not know.

use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ServiceError, ServiceResult};
use super::{Clm, Listing, Principal, rfc3339};
use crate::domain::model::{
    Actor, AuditEvent, Certificate, CertificateAuthority, CertificateRequest, Outcome, Profile,
    RequestContext,
};
use crate::domain::{
    ApprovedCertificate, CaId, CertificateId, CertificateStatus, Permission, ProfileId, RequestId,
    RequestStatus, RequestedCertificate, San,
};
use crate::hsm::HsmKey;
use crate::pki;
use crate::store::{Page, StoreError};

/// Body of `POST /api/v1/certificate-requests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub profile_id: Uuid,
    pub csr_pem: Option<String>,
    pub validity_days: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct RequestView {
    pub id: RequestId,
    pub status: RequestStatus,
    pub certificate_id: Option<CertificateId>,
    pub approvals_required: u8,
    pub approvals: Vec<serde_json::Value>,
    pub profile_id: ProfileId,
    pub ca_id: CaId,
    pub subject: String,
    pub sans: Vec<String>,
    pub key_algorithm: String,
    pub validity_days: u32,
    pub failure_reason: Option<String>,
    pub created_at: String,
}

/// The key a request certifies, and the CSR that proved possession of it
/// (none when a renewal reuses the replaced certificate's key).
pub(super) struct SubjectKey {
    pub csr_der: Option<Vec<u8>>,
    pub spki_der: Vec<u8>,
}

/// A request that renews an existing certificate.
#[derive(Clone, Copy, Debug)]
pub(super) struct Renewal {
    pub replaces: CertificateId,
    /// Revoke the replaced certificate as `superseded` once issued.
    pub supersede: bool,
}

/// How step 1 records the intent to issue.
#[derive(Clone, Copy, Debug)]
pub(super) enum Reservation {
    /// A request that is not stored yet (auto-approved profiles).
    New,
    /// A stored request moving `from → approved` (final approval, retry).
    Existing { from: RequestStatus },
}

/// Draws of a fresh serial before giving up: a collision of 127 random bits
/// means something is wrong with the random source, not bad luck.
const SERIAL_ATTEMPTS: usize = 3;

impl Clm {
    /// Submits a CSR against a profile. Returns the request and whether it
    /// was created now (`false`: an earlier request with the same
    /// `Idempotency-Key` is returned instead).
    pub async fn submit_request(
        &self,
        p: &Principal,
        body: SubmitRequest,
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

        let profile = self
            .core
            .find_profile(ProfileId(body.profile_id))
            .await?
            .filter(|pr| p.can_see(pr.organization_id))
            .ok_or(ServiceError::NotFound("profile"))?;
        let csr_pem = body.csr_pem.ok_or_else(|| {
            ServiceError::invalid(
                "csr_required",
                "csr_pem is required: give a PEM certificate signing request",
            )
        })?;
        let csr = pki::parse_csr(&csr_pem)?;
        let wanted = RequestedCertificate {
            common_name: csr.common_name.clone(),
            sans: csr.sans.clone(),
            key_algorithm: csr.key_algorithm,
            validity_days: body.validity_days,
        };
        let key = SubjectKey {
            csr_der: Some(csr.der),
            spki_der: csr.spki_der,
        };
        self.file_request(p, &profile, &wanted, key, None, idempotency_key, ctx)
            .await
    }

    /// Checks `wanted` against the profile and files the request: pending
    /// approval when the profile needs approvals, otherwise issued at once.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn file_request(
        &self,
        p: &Principal,
        profile: &Profile,
        wanted: &RequestedCertificate,
        key: SubjectKey,
        renewal: Option<Renewal>,
        idempotency_key: Option<String>,
        ctx: &RequestContext,
    ) -> ServiceResult<(RequestView, bool)> {
        let approved = profile
            .rules
            .check(wanted)
            .map_err(|v| ServiceError::invalid("profile_violation", v.to_string()))?;
        let ca = self.usable_ca(profile.ca_id).await?;

        let mut request = CertificateRequest {
            id: RequestId::new(),
            organization_id: p.organization_id,
            profile_id: profile.id,
            requester_id: p.user_id,
            ca_id: ca.id,
            status: RequestStatus::PendingApproval,
            csr_der: key.csr_der.clone(),
            subject: approved.common_name.clone().unwrap_or_default(),
            sans: approved.sans.clone(),
            key_algorithm: approved.key_algorithm,
            validity_days: approved.validity_days,
            reserved_serial_hex: None,
            certificate_id: None,
            failure_reason: None,
            idempotency_key,
            replaces_certificate_id: renewal.map(|r| r.replaces),
            supersede_replaced: renewal.is_some_and(|r| r.supersede),
            created_at: Utc::now(),
        };
        let required = profile.rules.required_approvals;
        if required > 0 {
            let event = AuditEvent::new(p.actor(), "request.submitted", ctx)
                .org(Some(p.organization_id))
                .target("certificate_request", request.id)
                .details(serde_json::json!({
                    "profile_id": profile.id,
                    "approvals_required": required,
                    "replaces_certificate_id": request.replaces_certificate_id,
                }));
            self.insert_pending_request(&request, &event).await?;
            if let Err(e) = self
                .open_workflow(&request, required, &profile.rules.approver_roles, p, ctx)
                .await
            {
                // clm_secure holds the request; reconciliation reopens the
                // workflow. The requester still gets the request's id.
                tracing::error!(request = %request.id, error = %e.log_message(), "workflow not opened");
            }
            self.emit(
                request.organization_id,
                "request.created",
                event_data(&request),
            )
            .await;
            return Ok((request_view(&request, required), true));
        }

        request.status = RequestStatus::Approved;
        let signing_key = self.signing_key(ca.id).await?;
        self.emit(
            request.organization_id,
            "request.created",
            event_data(&request),
        )
        .await;
        let cert = self
            .issue(
                &mut request,
                &approved,
                &key.spki_der,
                &ca,
                signing_key,
                p.actor(),
                Reservation::New,
                ctx,
            )
            .await?;
        Ok((
            RequestView {
                certificate_id: Some(cert.id),
                ..request_view(&request, required)
            },
            true,
        ))
    }

    /// The public key a stored request certifies: from its CSR, or, for a
    /// renewal with the same key, from the certificate it replaces.
    pub(super) async fn request_spki(
        &self,
        request: &CertificateRequest,
    ) -> ServiceResult<Vec<u8>> {
        if let Some(csr_der) = &request.csr_der {
            return Ok(pki::parse_csr_der(csr_der)?.spki_der);
        }
        let replaced = match request.replaces_certificate_id {
            Some(id) => self.secure.find_certificate(id).await?,
            None => None,
        };
        let replaced = replaced
            .ok_or_else(|| ServiceError::internal("request without a CSR or a key to reuse"))?;
        Ok(pki::spki_of(&replaced.certificate_der)?)
    }

    /// The request an earlier call with the same `Idempotency-Key` created.
    pub(super) async fn idempotent_replay(
        &self,
        p: &Principal,
        idempotency_key: Option<&str>,
    ) -> ServiceResult<Option<RequestView>> {
        let Some(key) = idempotency_key else {
            return Ok(None);
        };
        let Some(existing) = self
            .secure
            .find_request_by_idempotency_key(p.user_id, key)
            .await?
        else {
            return Ok(None);
        };
        let profile = self.core.find_profile(existing.profile_id).await?;
        let required = profile.map(|p| p.rules.required_approvals).unwrap_or(0);
        Ok(Some(request_view(&existing, required)))
    }

    async fn insert_pending_request(
        &self,
        request: &CertificateRequest,
        event: &AuditEvent,
    ) -> ServiceResult<()> {
        match self.secure.insert_request(request, event).await {
            // The only unique key a pending request can hit is its
            // idempotency key: a concurrent retry of the same submission.
            Err(StoreError::Duplicate(_)) => Err(ServiceError::conflict(
                "duplicate_request",
                "a request with this Idempotency-Key is being processed",
            )),
            other => Ok(other?),
        }
    }

    /// Reserves a serial, signs through the HSM and stores the result.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn issue(
        &self,
        request: &mut CertificateRequest,
        approved: &ApprovedCertificate,
        spki_der: &[u8],
        ca: &CertificateAuthority,
        key: Arc<HsmKey>,
        actor: Actor,
        reservation: Reservation,
        ctx: &RequestContext,
    ) -> ServiceResult<Certificate> {
        // Step 1: the intent, with a serial nobody else can take.
        let mut serial = pki::random_serial();
        for attempt in 1..=SERIAL_ATTEMPTS {
            request.reserved_serial_hex = Some(pki::serial_hex(&serial));
            let event = AuditEvent::new(actor.clone(), "certificate.issuance_intent", ctx)
                .org(Some(request.organization_id))
                .target("certificate_request", request.id)
                .details(serde_json::json!({
                    "ca_id": ca.id,
                    "serial": request.reserved_serial_hex,
                    "profile_id": request.profile_id,
                }));
            let reserved = match reservation {
                Reservation::New => self.secure.insert_request(request, &event).await,
                Reservation::Existing { from } => {
                    let serial_hex = pki::serial_hex(&serial);
                    self.secure
                        .approve_request(request.id, from, &serial_hex, &event)
                        .await
                }
            };
            match reserved {
                Ok(()) => break,
                Err(StoreError::Duplicate(_)) if attempt < SERIAL_ATTEMPTS => {
                    serial = pki::random_serial()
                }
                Err(StoreError::Conflict(_)) => {
                    return Err(ServiceError::conflict(
                        "request_decided",
                        "the request was already decided by someone else",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }

        // Step 2: sign. rcgen's signing callback is synchronous and the HSM
        // call blocks, so the whole build runs on the blocking pool.
        let issuer_der = ca
            .certificate_der
            .clone()
            .ok_or_else(|| ServiceError::internal(format!("CA {} has no certificate", ca.id)))?;
        let urls = pki::PublicUrls::new(&self.settings.public_url, ca.id);
        let approved_c = approved.clone();
        let spki = spki_der.to_vec();
        let serial_c = serial.clone();
        let now = Utc::now();
        let built = tokio::task::spawn_blocking(move || {
            let issuer = pki::Issuer::new(key.as_ref(), &issuer_der)?;
            pki::build_leaf(&approved_c, &spki, &issuer, &serial_c, now, &urls)
        })
        .await
        .map_err(ServiceError::internal)?;
        let der = match built {
            Ok(der) => der,
            Err(e) => {
                let reason = "signing failed";
                let event = AuditEvent::new(actor.clone(), "certificate.issuance_failed", ctx)
                    .org(Some(request.organization_id))
                    .target("certificate_request", request.id)
                    .outcome(Outcome::Failure)
                    .details(serde_json::json!({ "ca_id": ca.id, "reason": reason }));
                if let Err(store_err) = self.secure.fail_request(request.id, reason, &event).await {
                    tracing::error!(request = %request.id, error = %store_err, "could not mark request failed");
                }
                request.status = RequestStatus::Failed;
                return Err(match ServiceError::from(e) {
                    ServiceError::Invalid { .. } => ServiceError::internal("signing failed"),
                    other => other,
                });
            }
        };

        // Step 3: the certificate and its audit entry, one transaction.
        let info = pki::CertInfo::from_der(&der)?;
        let cert = Certificate {
            id: CertificateId::new(),
            organization_id: Some(request.organization_id),
            ca_id: ca.id,
            request_id: Some(request.id),
            profile_id: Some(request.profile_id),
            owner_id: Some(request.requester_id),
            serial_hex: pki::serial_hex(&serial),
            subject: info.subject,
            sans: approved.sans.iter().map(San::to_string).collect(),
            key_algorithm: approved.key_algorithm.as_str().to_string(),
            not_before: info.not_before,
            not_after: info.not_after,
            status: CertificateStatus::Valid,
            is_ca: false,
            certificate_der: der,
            fingerprint_sha256: info.fingerprint_sha256,
            revoked_at: None,
            revocation_reason: None,
            replaces_certificate_id: request.replaces_certificate_id,
            created_at: Utc::now(),
        };
        let event = AuditEvent::new(actor.clone(), "certificate.issued", ctx)
            .org(Some(request.organization_id))
            .target("certificate", cert.id)
            .details(serde_json::json!({
                "request_id": request.id,
                "ca_id": ca.id,
                "serial": cert.serial_hex,
                "subject": cert.subject,
                "not_after": rfc3339(cert.not_after),
            }));
        self.secure
            .complete_issuance(request.id, &cert, &event)
            .await?;
        request.status = RequestStatus::Issued;
        request.certificate_id = Some(cert.id);
        let mut data = event_data(request);
        data["certificate_id"] = serde_json::json!(cert.id);
        data["serial"] = serde_json::json!(cert.serial_hex);
        data["not_after"] = serde_json::json!(rfc3339(cert.not_after));
        self.emit(request.organization_id, "request.issued", data)
            .await;

        // Step 4: clm_core follows. If this fails the certificate exists all
        // the same; reconciliation copies it over later.
        if let Err(e) = self.core.record_certificate(&cert, &event).await {
            tracing::warn!(certificate = %cert.id, error = %e, "certificate metadata not yet mirrored to clm_core");
        }
        if request.supersede_replaced
            && let Some(old) = request.replaces_certificate_id
        {
            self.supersede(old, actor, ctx).await;
        }
        Ok(cert)
    }

    pub async fn list_requests(
        &self,
        p: &Principal,
        status: Option<RequestStatus>,
        page: Page,
    ) -> ServiceResult<Listing<RequestView>> {
        let (rows, total) = self.secure.list_requests(p.scope(), status, page).await?;
        // A page names few profiles: look each up once, not once per row.
        let mut required_by_profile = std::collections::HashMap::new();
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let required = match required_by_profile.get(&r.profile_id) {
                Some(n) => *n,
                None => {
                    let n = self
                        .core
                        .find_profile(r.profile_id)
                        .await?
                        .map(|pr| pr.rules.required_approvals)
                        .unwrap_or(0);
                    required_by_profile.insert(r.profile_id, n);
                    n
                }
            };
            items.push(request_view(r, required));
        }
        Ok(Listing::new(items, page, total))
    }

    pub async fn get_request(&self, p: &Principal, id: RequestId) -> ServiceResult<RequestView> {
        let request = self
            .secure
            .find_request(id)
            .await?
            .filter(|r| p.can_see(Some(r.organization_id)))
            .ok_or(ServiceError::NotFound("certificate request"))?;
        let required = self
            .core
            .find_profile(request.profile_id)
            .await?
            .map(|pr| pr.rules.required_approvals)
            .unwrap_or(0);
        Ok(RequestView {
            approvals: self.approvals_of(id).await?,
            ..request_view(&request, required)
        })
    }
}

/// What webhook events say about a request (names, never keys or CSRs).
pub(super) fn event_data(r: &CertificateRequest) -> serde_json::Value {
    serde_json::json!({
        "request_id": r.id,
        "profile_id": r.profile_id,
        "requester_id": r.requester_id,
        "subject": r.subject,
        "sans": r.sans.iter().map(San::to_string).collect::<Vec<_>>(),
        "status": r.status,
    })
}

fn request_view(r: &CertificateRequest, approvals_required: u8) -> RequestView {
    RequestView {
        id: r.id,
        status: r.status,
        certificate_id: r.certificate_id,
        approvals_required,
        approvals: Vec::new(),
        profile_id: r.profile_id,
        ca_id: r.ca_id,
        subject: r.subject.clone(),
        sans: r.sans.iter().map(San::to_string).collect(),
        key_algorithm: r.key_algorithm.as_str().to_string(),
        validity_days: r.validity_days,
        failure_reason: r.failure_reason.clone(),
        created_at: rfc3339(r.created_at),
    }
}
