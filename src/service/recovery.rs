//! Key recovery: an archived private key comes back only to a holder of
//! `RecoverKeys`, only after someone else approved it through the workflow
//! engine, and only once per approval. Every step is audited; the key is
//! unwrapped inside the token and leaves it only inside a PKCS#12 under the
//! requester's passphrase.
//!
//! `POST /certificates/{id}/private-key` is the whole protocol: the first
//! call opens a recovery (202), approvers approve it, the same call then
//! delivers (200) and closes it.

use base64::Engine as _;
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};

use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal, rfc3339};
use crate::domain::model::{
    AuditEvent, KeyRecovery, Notification, RequestContext, WorkflowInstance,
};
use crate::domain::{
    CertificateId, Permission, RecoveryStatus, RequestId, RequestStatus, Role, Secret,
    WorkflowKind, new_row_id,
};
use crate::pki;
use crate::store::StoreError;

/// Who may approve a recovery (a super admin always may).
const RECOVERY_APPROVERS: &[Role] = &[Role::Approver];

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryBody {
    pub passphrase: Secret,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecoveryView {
    pub id: uuid::Uuid,
    pub certificate_id: CertificateId,
    pub status: RecoveryStatus,
    pub approvals_required: u8,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Only in the answer that delivers the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkcs12: Option<String>,
}

fn view(r: &KeyRecovery, pkcs12: Option<String>) -> RecoveryView {
    RecoveryView {
        id: r.id,
        certificate_id: r.certificate_id,
        status: r.status,
        approvals_required: 1,
        created_at: rfc3339(r.created_at),
        pkcs12,
    }
}

impl Clm {
    /// Opens a recovery, reports a pending one, or delivers an approved one.
    /// Returns the view and whether the key is in it.
    pub async fn recover_private_key(
        &self,
        p: &Principal,
        id: CertificateId,
        body: RecoveryBody,
        ctx: &RequestContext,
    ) -> ServiceResult<(RecoveryView, bool)> {
        p.require(Permission::RecoverKeys)?;
        pki::check_passphrase(&body.passphrase)?;
        let cert = self
            .secure
            .find_certificate(id)
            .await?
            .filter(|c| p.can_see(c.organization_id))
            .ok_or(ServiceError::NotFound("certificate"))?;
        let archived = self
            .secure
            .archived_key(id)
            .await?
            .ok_or(ServiceError::NotFound("archived key"))?;

        match self.secure.open_key_recovery(id, p.user_id).await? {
            Some(r) if r.status == RecoveryStatus::Approved => {
                let event = AuditEvent::new(p.actor(), "key.recovered", ctx)
                    .org(Some(r.organization_id))
                    .target("certificate", id)
                    .details(serde_json::json!({ "recovery_id": r.id }));
                // Closed before the key is built: a second caller racing
                // this one gets a conflict, never a second copy.
                self.secure
                    .move_key_recovery(
                        r.id,
                        RecoveryStatus::Approved,
                        RecoveryStatus::Completed,
                        &event,
                    )
                    .await
                    .map_err(conflict)?;
                let kek = self
                    .secure
                    .find_key(archived.kek_id)
                    .await?
                    .ok_or_else(|| ServiceError::internal("archived key names a missing KEK"))?;
                let kek_cka_id = hex::decode(&kek.ckaid_hex).map_err(ServiceError::internal)?;
                let spki = pki::spki_of(&cert.certificate_der)?;
                let pkcs8 = self
                    .hsm
                    .export_private_key(&kek_cka_id, archived.wrapped, archived.key_algorithm, spki)
                    .await?;
                let chain = self.chain_der(cert.ca_id).await?;
                let (der, name, pass) = (cert.certificate_der, cert.serial_hex, body.passphrase);
                let p12 = crate::logging::spawn_blocking_in_span(move || {
                    pki::build_pkcs12(&pkcs8, &der, &chain, &name, &pass)
                })
                .await
                .map_err(ServiceError::internal)??;
                let done = KeyRecovery {
                    status: RecoveryStatus::Completed,
                    ..r
                };
                let encoded = base64::engine::general_purpose::STANDARD.encode(p12);
                Ok((view(&done, Some(encoded)), true))
            }
            Some(r) => Ok((view(&r, None), false)),
            None => Ok((self.open_key_recovery(p, id, ctx).await?, false)),
        }
    }

    async fn open_key_recovery(
        &self,
        p: &Principal,
        certificate: CertificateId,
        ctx: &RequestContext,
    ) -> ServiceResult<RecoveryView> {
        let now = Utc::now();
        let recovery = KeyRecovery {
            id: new_row_id(),
            certificate_id: certificate,
            organization_id: p.organization_id,
            requester_id: p.user_id,
            status: RecoveryStatus::PendingApproval,
            created_at: now,
        };
        let event = AuditEvent::new(p.actor(), "key.recovery_requested", ctx)
            .org(Some(p.organization_id))
            .target("certificate", certificate)
            .details(serde_json::json!({ "recovery_id": recovery.id }));
        self.secure.insert_key_recovery(&recovery, &event).await?;
        let workflow = WorkflowInstance {
            id: new_row_id(),
            kind: WorkflowKind::KeyRecovery,
            // The workflow's subject is the recovery.
            request_id: RequestId(recovery.id),
            organization_id: p.organization_id,
            requester_id: p.user_id,
            status: RequestStatus::PendingApproval,
            approvals_required: 1,
            approvals_count: 0,
            expires_at: now + Duration::seconds(self.settings.request_ttl_seconds),
            created_at: now,
        };
        let notices: Vec<Notification> = self
            .approvers(p.organization_id, RECOVERY_APPROVERS, p.user_id)
            .await?
            .into_iter()
            .map(|u| {
                Notification::new(
                    p.organization_id,
                    u,
                    "key_recovery.pending",
                    "A private key recovery awaits approval".into(),
                    format!(
                        "{} asks for the archived key of certificate {certificate}.",
                        p.email
                    ),
                    serde_json::json!({ "recovery_id": recovery.id, "certificate_id": certificate }),
                )
            })
            .collect();
        let event = AuditEvent::new(p.actor(), "workflow.opened", ctx)
            .org(Some(p.organization_id))
            .target("key_recovery", recovery.id)
            .details(serde_json::json!({ "approvals_required": 1 }));
        self.core
            .create_workflow(&workflow, &notices, &event)
            .await?;
        Ok(view(&recovery, None))
    }

    /// One approval (the workflow needs one) by someone other than the
    /// requester, holding an approver role in the same organisation.
    pub async fn decide_key_recovery(
        &self,
        p: &Principal,
        id: uuid::Uuid,
        approve: bool,
        ctx: &RequestContext,
    ) -> ServiceResult<RecoveryView> {
        let recovery = self
            .secure
            .find_key_recovery(id)
            .await?
            .filter(|r| p.can_see(Some(r.organization_id)))
            .ok_or(ServiceError::NotFound("key recovery"))?;
        if recovery.requester_id == p.user_id {
            return Err(ServiceError::Forbidden(
                "nobody may decide on their own key recovery",
            ));
        }
        if recovery.organization_id != p.organization_id
            || !p
                .roles
                .iter()
                .any(|r| *r == Role::SuperAdmin || RECOVERY_APPROVERS.contains(r))
        {
            return Err(ServiceError::Forbidden(
                "only approvers of the organisation may decide key recoveries",
            ));
        }
        let workflow = self
            .core
            .find_workflow(RequestId(id))
            .await?
            .filter(|w| w.kind == WorkflowKind::KeyRecovery)
            .ok_or_else(|| ServiceError::internal("key recovery without its workflow"))?;
        let (action, to) = if approve {
            ("key.recovery_approved", RecoveryStatus::Approved)
        } else {
            ("key.recovery_rejected", RecoveryStatus::Rejected)
        };
        let event = AuditEvent::new(p.actor(), action, ctx)
            .org(Some(recovery.organization_id))
            .target("key_recovery", id)
            .details(serde_json::json!({ "certificate_id": recovery.certificate_id }));
        let completed = if approve {
            self.core
                .approve(workflow.id, p.user_id, None, &event)
                .await
                .map_err(conflict)?
                .completed
        } else {
            self.core
                .reject(workflow.id, p.user_id, "rejected", &event)
                .await
                .map_err(conflict)?;
            true
        };
        if completed {
            self.secure
                .move_key_recovery(id, RecoveryStatus::PendingApproval, to, &event)
                .await
                .map_err(conflict)?;
            let notice = Notification::new(
                recovery.organization_id,
                recovery.requester_id,
                if approve {
                    "key_recovery.approved"
                } else {
                    "key_recovery.rejected"
                },
                format!(
                    "Your key recovery was {}",
                    if approve { "approved" } else { "rejected" }
                ),
                format!("Recovery {id} of certificate {}.", recovery.certificate_id),
                serde_json::json!({ "recovery_id": id }),
            );
            self.core.notify(&[notice]).await?;
        }
        let now = self
            .secure
            .find_key_recovery(id)
            .await?
            .ok_or(ServiceError::NotFound("key recovery"))?;
        Ok(view(&now, None))
    }

    /// The expiry job's part for recoveries nobody decided in time.
    pub(super) async fn expire_key_recovery(
        &self,
        w: &WorkflowInstance,
        ctx: &RequestContext,
    ) -> ServiceResult<bool> {
        let event = AuditEvent::new(
            crate::domain::model::Actor::SYSTEM,
            "key.recovery_expired",
            ctx,
        )
        .org(Some(w.organization_id))
        .target("key_recovery", w.request_id);
        match self
            .core
            .move_workflow(
                w.id,
                RequestStatus::PendingApproval,
                RequestStatus::Expired,
                &[],
                &event,
            )
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        match self
            .secure
            .move_key_recovery(
                w.request_id.0,
                RecoveryStatus::PendingApproval,
                RecoveryStatus::Expired,
                &event,
            )
            .await
        {
            Ok(()) | Err(StoreError::Conflict(_)) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

fn conflict(e: StoreError) -> ServiceError {
    match e {
        StoreError::Conflict(m) => ServiceError::conflict("recovery_decided", m),
        other => other.into(),
    }
}
