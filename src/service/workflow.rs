//! Approval with separation of duties. The server enforces: approvers act
//! only on requests of their own organisation, never on their own, once
//! each; a rejection ends the workflow; the approval that completes the
//! count issues the certificate (decision 3), and of concurrent final
//! approvals exactly one does — the others get 409. Requesters may cancel
//! their pending requests; pending requests expire.

use chrono::{Duration, Utc};
use serde::Deserialize;

use super::error::{ServiceError, ServiceResult};
use super::issuance::{RequestView, Reservation};
use super::{Clm, Principal};
use crate::domain::ApprovedCertificate;
use crate::domain::model::{
    Actor, AuditEvent, CertificateRequest, Notification, Outcome, RequestContext, WorkflowInstance,
};
use crate::domain::{
    OrganizationId, RequestId, RequestStatus, Role, UserId, WorkflowKind, new_row_id,
};
use crate::store::StoreError;

/// Longest comment or reason kept with a decision.
const MAX_COMMENT: usize = 2000;

/// One approver's decision on a request.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ApprovalView {
    pub approver_id: crate::domain::UserId,
    /// `approve` or `reject`.
    pub decision: String,
    pub comment: Option<String>,
    #[schema(format = DateTime)]
    pub at: String,
}

/// Body of approve (`comment`) and reject (`reason`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub comment: Option<String>,
    pub reason: Option<String>,
}

fn text(s: Option<String>, what: &str, required: bool) -> ServiceResult<Option<String>> {
    let s = s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    match &s {
        None if required => Err(ServiceError::invalid(
            "invalid_decision",
            format!("{what} is required"),
        )),
        Some(t)
            if t.chars().count() > MAX_COMMENT
                || t.chars().any(|c| c.is_control() && c != '\n') =>
        {
            Err(ServiceError::invalid(
                "invalid_decision",
                format!("{what} must be at most {MAX_COMMENT} printable characters"),
            ))
        }
        _ => Ok(s),
    }
}

fn conflict(e: StoreError) -> ServiceError {
    match e {
        StoreError::Conflict(m) => ServiceError::conflict("request_decided", m),
        other => other.into(),
    }
}

impl Clm {
    /// Opens the workflow of a request that needs approvals and tells the
    /// organisation's approvers (decision 3: clm_secure already holds the
    /// request).
    pub(super) async fn open_workflow(
        &self,
        request: &CertificateRequest,
        required: u8,
        approver_roles: &[Role],
        p: &Principal,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        let now = Utc::now();
        let workflow = WorkflowInstance {
            id: new_row_id(),
            kind: WorkflowKind::CertificateRequest,
            request_id: request.id,
            organization_id: request.organization_id,
            requester_id: request.requester_id,
            status: RequestStatus::PendingApproval,
            approvals_required: required,
            approvals_count: 0,
            expires_at: now + Duration::seconds(self.settings.request_ttl_seconds),
            created_at: now,
        };
        let notices: Vec<Notification> = self
            .approvers(
                request.organization_id,
                approver_roles,
                request.requester_id,
            )
            .await?
            .into_iter()
            .map(|u| {
                Notification::new(
                    request.organization_id,
                    u,
                    "request.pending",
                    format!(
                        "Certificate request for {} awaits approval",
                        display(request)
                    ),
                    format!(
                        "{} requested a certificate; {required} approval(s) are needed.",
                        p.email
                    ),
                    serde_json::json!({ "request_id": request.id }),
                )
            })
            .collect();
        let event = AuditEvent::new(p.actor(), "workflow.opened", ctx)
            .org(Some(request.organization_id))
            .target("certificate_request", request.id)
            .details(serde_json::json!({ "approvals_required": required, "expires_at": super::rfc3339(workflow.expires_at) }));
        self.core
            .create_workflow(&workflow, &notices, &event)
            .await?;
        Ok(())
    }

    /// Holders of `roles` in `org`, each once, never `requester`.
    pub(super) async fn approvers(
        &self,
        org: OrganizationId,
        roles: &[Role],
        requester: UserId,
    ) -> ServiceResult<Vec<UserId>> {
        let mut approvers = Vec::new();
        for role in roles {
            approvers.extend(self.core.users_with_role(org, *role).await?);
        }
        approvers.sort();
        approvers.dedup();
        approvers.retain(|u| *u != requester);
        Ok(approvers)
    }

    /// A request the caller may decide on, with its workflow: same
    /// organisation, not the requester, holding one of the profile's
    /// approver roles (a super admin always may).
    async fn decidable(
        &self,
        p: &Principal,
        id: RequestId,
    ) -> ServiceResult<(CertificateRequest, WorkflowInstance)> {
        let request = self
            .secure
            .find_request(id)
            .await?
            .filter(|r| p.can_see(Some(r.organization_id)))
            .ok_or(ServiceError::NotFound("certificate request"))?;
        if request.organization_id != p.organization_id {
            return Err(ServiceError::Forbidden(
                "only approvers of the request's organisation may decide",
            ));
        }
        if request.requester_id == p.user_id {
            return Err(ServiceError::Forbidden(
                "nobody may decide on their own request",
            ));
        }
        let approver_roles = self
            .core
            .find_profile(request.profile_id)
            .await?
            .map(|pr| pr.rules.approver_roles)
            .unwrap_or_else(|| vec![Role::Approver]);
        if !p
            .roles
            .iter()
            .any(|r| *r == Role::SuperAdmin || approver_roles.contains(r))
        {
            return Err(ServiceError::Forbidden(
                "your roles may not approve requests of this profile",
            ));
        }
        let workflow = self.core.find_workflow(id).await?.ok_or_else(|| {
            ServiceError::conflict("request_decided", "the request does not need approval")
        })?;
        Ok((request, workflow))
    }

    pub async fn approve_request(
        &self,
        p: &Principal,
        id: RequestId,
        body: Decision,
        ctx: &RequestContext,
    ) -> ServiceResult<RequestView> {
        let comment = text(body.comment, "comment", false)?;
        let (request, workflow) = self.decidable(p, id).await?;
        let event = AuditEvent::new(p.actor(), "request.approved", ctx)
            .org(Some(request.organization_id))
            .target("certificate_request", request.id)
            .details(serde_json::json!({ "comment": comment }));
        let approval = self
            .core
            .approve(workflow.id, p.user_id, comment.as_deref(), &event)
            .await
            .map_err(conflict)?;
        if approval.completed {
            self.emit(
                request.organization_id,
                "request.approved",
                super::issuance::event_data(&request),
            )
            .await;
            self.issue_approved(
                request,
                &workflow,
                RequestStatus::PendingApproval,
                p.actor(),
                ctx,
            )
            .await?;
        }
        self.get_request(p, id).await
    }

    /// Issues a request whose approvals are complete (or an approver's retry
    /// of a failed one), and moves the workflow to its outcome.
    async fn issue_approved(
        &self,
        mut request: CertificateRequest,
        workflow: &WorkflowInstance,
        from: RequestStatus,
        actor: Actor,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        let profile = self
            .core
            .find_profile(request.profile_id)
            .await?
            .ok_or_else(|| {
                ServiceError::conflict("profile_gone", "the request's profile no longer exists")
            })?;
        let spki_der = self.request_spki(&request).await?;
        let approved = ApprovedCertificate {
            common_name: Some(request.subject.clone()).filter(|s| !s.is_empty()),
            sans: request.sans.clone(),
            key_algorithm: request.key_algorithm,
            validity_days: request.validity_days,
            extended_key_usages: profile.rules.extended_key_usages.clone(),
        };
        let workflow_from = if from == RequestStatus::Failed {
            RequestStatus::Failed
        } else {
            RequestStatus::Approved
        };
        // The profile's CA, not the one the request was filed under: a
        // rollover meanwhile moved the profile to the CA's new key, and the
        // retired key signs nothing new.
        let outcome = match (
            self.usable_ca(profile.ca_id).await,
            self.signing_key(profile.ca_id).await,
        ) {
            (Ok(ca), Ok(key)) => {
                self.issue(
                    &mut request,
                    &approved,
                    &spki_der,
                    &ca,
                    key,
                    actor.clone(),
                    Reservation::Existing { from },
                    ctx,
                )
                .await
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let (to, kind, title) = match &outcome {
            Ok(_) => (
                RequestStatus::Issued,
                "request.issued",
                "Your certificate was issued",
            ),
            // Somebody else moved the request on; the workflow follows them.
            Err(ServiceError::Conflict {
                code: "request_decided",
                ..
            }) => return outcome.map(|_| ()),
            Err(_) => (
                RequestStatus::Failed,
                "request.failed",
                "Issuing your certificate failed",
            ),
        };
        if let Err(e) = &outcome
            && from == RequestStatus::PendingApproval
            && request.status != RequestStatus::Failed
        {
            // Signing never started (the CA cannot sign, or is out of
            // service): record the failure so that an approver can retry
            // later.
            let reason = e.to_string();
            let event = AuditEvent::new(actor.clone(), "certificate.issuance_failed", ctx)
                .org(Some(request.organization_id))
                .target("certificate_request", request.id)
                .outcome(Outcome::Failure)
                .details(serde_json::json!({ "ca_id": request.ca_id, "reason": reason }));
            match self
                .secure
                .fail_request(request.id, from, &reason, &event)
                .await
            {
                Ok(()) => self.emit_failed(&request, &reason).await,
                Err(store_err) => {
                    tracing::warn!(request = %request.id, error = %store_err, "could not mark request failed")
                }
            }
        }
        if workflow_from != to {
            let notice = Notification::new(
                request.organization_id,
                request.requester_id,
                kind,
                title.to_string(),
                format!("Request {} for {}.", request.id, display(&request)),
                serde_json::json!({ "request_id": request.id, "certificate_id": request.certificate_id }),
            );
            let event = AuditEvent::new(actor, "workflow.completed", ctx)
                .org(Some(request.organization_id))
                .target("certificate_request", request.id)
                .details(serde_json::json!({ "status": to }));
            if let Err(e) = self
                .core
                .move_workflow(workflow.id, workflow_from, to, &[notice], &event)
                .await
            {
                tracing::warn!(request = %request.id, error = %e, "workflow status not updated");
            }
        }
        outcome.map(|_| ())
    }

    pub async fn reject_request(
        &self,
        p: &Principal,
        id: RequestId,
        body: Decision,
        ctx: &RequestContext,
    ) -> ServiceResult<RequestView> {
        let reason = text(body.reason, "reason", true)?.unwrap_or_default();
        let (request, workflow) = self.decidable(p, id).await?;
        let event = AuditEvent::new(p.actor(), "request.rejected", ctx)
            .org(Some(request.organization_id))
            .target("certificate_request", request.id)
            .details(serde_json::json!({ "reason": reason }));
        self.core
            .reject(workflow.id, p.user_id, &reason, &event)
            .await
            .map_err(conflict)?;
        self.secure
            .move_request(
                request.id,
                RequestStatus::PendingApproval,
                RequestStatus::Rejected,
                &event,
            )
            .await
            .map_err(conflict)?;
        let notice = Notification::new(
            request.organization_id,
            request.requester_id,
            "request.rejected",
            "Your certificate request was rejected".into(),
            format!("Request for {} was rejected: {reason}", display(&request)),
            serde_json::json!({ "request_id": request.id }),
        );
        self.core.notify(&[notice]).await?;
        let mut data = super::issuance::event_data(&request);
        data["status"] = serde_json::json!(RequestStatus::Rejected);
        data["reason"] = serde_json::json!(reason);
        self.emit(request.organization_id, "request.rejected", data)
            .await;
        self.get_request(p, id).await
    }

    /// The requester withdraws a pending request.
    pub async fn cancel_request(
        &self,
        p: &Principal,
        id: RequestId,
        ctx: &RequestContext,
    ) -> ServiceResult<RequestView> {
        let request = self
            .secure
            .find_request(id)
            .await?
            .filter(|r| p.can_see(Some(r.organization_id)))
            .ok_or(ServiceError::NotFound("certificate request"))?;
        if request.requester_id != p.user_id {
            return Err(ServiceError::Forbidden(
                "only the requester may cancel a request",
            ));
        }
        let workflow = self.core.find_workflow(id).await?.ok_or_else(|| {
            ServiceError::conflict("request_decided", "the request is not pending")
        })?;
        let event = AuditEvent::new(p.actor(), "request.cancelled", ctx)
            .org(Some(request.organization_id))
            .target("certificate_request", request.id);
        self.core
            .move_workflow(
                workflow.id,
                RequestStatus::PendingApproval,
                RequestStatus::Cancelled,
                &[],
                &event,
            )
            .await
            .map_err(conflict)?;
        self.secure
            .move_request(
                request.id,
                RequestStatus::PendingApproval,
                RequestStatus::Cancelled,
                &event,
            )
            .await
            .map_err(conflict)?;
        self.get_request(p, id).await
    }

    /// An approver retries the issuance of a `failed` request.
    pub async fn retry_request(
        &self,
        p: &Principal,
        id: RequestId,
        ctx: &RequestContext,
    ) -> ServiceResult<RequestView> {
        let (request, workflow) = self.decidable(p, id).await?;
        if request.status != RequestStatus::Failed {
            return Err(ServiceError::conflict(
                "request_decided",
                "only a failed request can be retried",
            ));
        }
        self.issue_approved(request, &workflow, RequestStatus::Failed, p.actor(), ctx)
            .await?;
        self.get_request(p, id).await
    }

    /// Background job: pending requests past their time expire, and their
    /// requesters are told. Returns how many expired.
    pub async fn expire_overdue_requests(&self) -> ServiceResult<usize> {
        let ctx = RequestContext {
            request_id: Some(format!("job-{}", uuid::Uuid::new_v4())),
            ..Default::default()
        };
        let mut n = 0;
        for w in self.core.overdue_workflows(Utc::now(), 100).await? {
            if w.kind == WorkflowKind::KeyRecovery {
                n += usize::from(self.expire_key_recovery(&w, &ctx).await?);
                continue;
            }
            let event = AuditEvent::new(Actor::SYSTEM, "request.expired", &ctx)
                .org(Some(w.organization_id))
                .target("certificate_request", w.request_id);
            let notice = Notification::new(
                w.organization_id,
                w.requester_id,
                "request.expired",
                "Your certificate request expired".into(),
                format!("Request {} was not decided in time.", w.request_id),
                serde_json::json!({ "request_id": w.request_id }),
            );
            match self
                .core
                .move_workflow(
                    w.id,
                    RequestStatus::PendingApproval,
                    RequestStatus::Expired,
                    &[notice],
                    &event,
                )
                .await
            {
                Ok(()) => {
                    self.secure
                        .move_request(
                            w.request_id,
                            RequestStatus::PendingApproval,
                            RequestStatus::Expired,
                            &event,
                        )
                        .await?;
                    n += 1;
                }
                Err(StoreError::Conflict(_)) => {} // decided meanwhile
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    /// The caller's notifications, newest first.
    pub async fn notifications(
        &self,
        p: &Principal,
        unread_only: bool,
    ) -> ServiceResult<Vec<Notification>> {
        Ok(self.core.list_notifications(p.user_id, unread_only).await?)
    }

    pub async fn mark_notification_read(&self, p: &Principal, id: uuid::Uuid) -> ServiceResult<()> {
        self.core
            .mark_notification_read(p.user_id, id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => ServiceError::NotFound("notification"),
                other => other.into(),
            })
    }

    /// The decisions taken on a request so far.
    pub(super) async fn approvals_of(&self, id: RequestId) -> ServiceResult<Vec<ApprovalView>> {
        let Some(w) = self.core.find_workflow(id).await? else {
            return Ok(Vec::new());
        };
        Ok(self
            .core
            .workflow_steps(w.id)
            .await?
            .into_iter()
            .map(|s| ApprovalView {
                approver_id: s.actor_id,
                decision: s.decision,
                comment: s.comment,
                at: super::rfc3339(s.created_at),
            })
            .collect())
    }
}

fn display(r: &CertificateRequest) -> String {
    if r.subject.is_empty() {
        r.sans.first().map(ToString::to_string).unwrap_or_default()
    } else {
        r.subject.clone()
    }
}
