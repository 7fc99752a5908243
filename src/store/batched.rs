//! The issuance writes that concurrent requests commit together
//! ([`super::group`]): in clm_secure the intent (request with its reserved
//! serial) and the issued certificate with its request's compare-and-set
//! `approved → issued`; in clm_core the certificate's metadata mirror and
//! the webhook deliveries that announce it. Each with its audit entry, in
//! the same transaction as the rows it records.

use std::sync::{Arc, OnceLock};

use sea_orm::sea_query::{CaseStatement, Expr};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

use super::entity::core::certificate_metadata;
use super::entity::secure::{certificate_requests, certificates};
use super::group::{Batcher, Job};
use super::secure_db::{certificate_active_model, request_active_model, require_issuing_cas};
use super::{CoreDb, SecureDb, StoreError, StoreResult, audit, webhooks};
use crate::domain::audit::AuditLog;
use crate::domain::model::{AuditEvent, Certificate, CertificateRequest, WebhookEvent};
use crate::domain::{RequestId, RequestStatus};

/// A lazily started writer task; handles that differ in their audit signer
/// get their own (`with_audit_mac` starts afresh).
pub(super) type Writer<T> = Arc<OnceLock<Batcher<T>>>;

pub(super) enum IssuanceWrite {
    Intent {
        request: CertificateRequest,
        event: AuditEvent,
    },
    Issued {
        request: RequestId,
        cert: Certificate,
        event: AuditEvent,
    },
}

impl IssuanceWrite {
    fn event(&self) -> &AuditEvent {
        match self {
            IssuanceWrite::Intent { event, .. } | IssuanceWrite::Issued { event, .. } => event,
        }
    }
}

pub(super) struct Mirror {
    pub cert: Certificate,
    pub event: AuditEvent,
    pub notice: Option<WebhookEvent>,
}

impl SecureDb {
    pub(super) fn issuance_writes(&self) -> &Batcher<IssuanceWrite> {
        self.issuance.get_or_init(|| {
            // The task's own handle has no writer of its own: it must not
            // keep its queue open (and itself alive) after the last caller.
            let db = SecureDb {
                issuance: Writer::default(),
                ..self.clone()
            };
            Batcher::start(&self.runtime, move |jobs| {
                let db = db.clone();
                async move { db.write_issuance_batch(jobs).await }
            })
        })
    }

    async fn write_issuance_batch(&self, jobs: Vec<Job<IssuanceWrite>>) {
        if jobs.len() > 1 {
            match self.write_issuance_together(&jobs).await {
                Ok(()) => {
                    for job in jobs {
                        job.answer(Ok(()));
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, jobs = jobs.len(), "batch rolled back; writing its jobs one by one")
                }
            }
        }
        for job in jobs {
            let result = match &job.item {
                IssuanceWrite::Intent { request, event } => {
                    self.insert_request_alone(request, event).await
                }
                IssuanceWrite::Issued {
                    request,
                    cert,
                    event,
                } => self.complete_issuance_alone(*request, cert, event).await,
            };
            job.answer(result);
        }
    }

    /// All of `jobs` in one transaction, or none of them.
    async fn write_issuance_together(&self, jobs: &[Job<IssuanceWrite>]) -> StoreResult<()> {
        let mut requests = Vec::new();
        let mut issued = Vec::new();
        for job in jobs {
            match &job.item {
                IssuanceWrite::Intent { request, .. } => requests.push(request),
                IssuanceWrite::Issued { request, cert, .. } => issued.push((*request, cert)),
            }
        }
        let txn = super::begin_write(&self.db).await?;
        let signers = requests.iter().map(|r| r.ca_id);
        require_issuing_cas(&txn, signers.chain(issued.iter().map(|(_, c)| c.ca_id))).await?;
        if !requests.is_empty() {
            certificate_requests::Entity::insert_many(
                requests.into_iter().map(request_active_model),
            )
            .exec_without_returning(&txn)
            .await?;
        }
        if !issued.is_empty() {
            certificates::Entity::insert_many(
                issued.iter().map(|(_, c)| certificate_active_model(c)),
            )
            .exec_without_returning(&txn)
            .await?;
            // One compare-and-set for all: each request must still be
            // `approved`, or the whole batch falls back to single writes
            // where the loser gets its own conflict.
            let certificate_of = issued.iter().fold(CaseStatement::new(), |case, (r, c)| {
                case.case(
                    certificate_requests::Column::Id.eq(r.0),
                    Expr::value(Some(c.id.0)),
                )
            });
            let moved = certificate_requests::Entity::update_many()
                .col_expr(
                    certificate_requests::Column::Status,
                    Expr::value(RequestStatus::Issued.as_str()),
                )
                .col_expr(
                    certificate_requests::Column::CertificateId,
                    certificate_of.into(),
                )
                // Not left to the touch trigger, which would update each
                // row a second time (SQLite).
                .col_expr(
                    certificate_requests::Column::UpdatedAt,
                    Expr::value(chrono::Utc::now()),
                )
                .filter(certificate_requests::Column::Id.is_in(issued.iter().map(|(r, _)| r.0)))
                .filter(certificate_requests::Column::Status.eq(RequestStatus::Approved.as_str()))
                .exec(&txn)
                .await?;
            if moved.rows_affected != issued.len() as u64 {
                return Err(StoreError::Conflict(
                    "a request of the batch was decided meanwhile".into(),
                ));
            }
        }
        let events: Vec<&AuditEvent> = jobs.iter().map(|j| j.item.event()).collect();
        audit::insert_many(&txn, AuditLog::Secure, &self.audit, &events).await?;
        txn.commit().await?;
        Ok(())
    }
}

impl CoreDb {
    /// Mirrors an issued certificate's metadata into clm_core (decision 3,
    /// step 4) with its audit entry and the deliveries of `notice` to the
    /// webhooks subscribed to it: a certificate is announced exactly when
    /// its mirror is stored. Nothing happens if the mirror is there already
    /// (reconciliation may get there first). Concurrent calls share
    /// transactions.
    pub async fn record_certificate(
        &self,
        c: &Certificate,
        event: &AuditEvent,
        notice: Option<WebhookEvent>,
    ) -> StoreResult<()> {
        self.mirror_writes()
            .submit(Mirror {
                cert: c.clone(),
                event: event.clone(),
                notice,
            })
            .await
    }

    fn mirror_writes(&self) -> &Batcher<Mirror> {
        self.mirror.get_or_init(|| {
            let db = CoreDb {
                mirror: Writer::default(),
                ..self.clone()
            };
            Batcher::start(&self.runtime, move |jobs| {
                let db = db.clone();
                async move {
                    if jobs.len() > 1 {
                        match db.write_mirrors(&jobs).await {
                            Ok(()) => {
                                for job in jobs {
                                    job.answer(Ok(()));
                                }
                                return;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "mirror batch rolled back; writing one by one")
                            }
                        }
                    }
                    for job in jobs {
                        let result = db.write_mirrors(std::slice::from_ref(&job)).await;
                        job.answer(result);
                    }
                }
            })
        })
    }

    async fn write_mirrors(&self, jobs: &[Job<Mirror>]) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let present: Vec<uuid::Uuid> = certificate_metadata::Entity::find()
            .select_only()
            .column(certificate_metadata::Column::Id)
            .filter(certificate_metadata::Column::Id.is_in(jobs.iter().map(|j| j.item.cert.id.0)))
            .into_tuple()
            .all(&txn)
            .await?;
        let mut seen = std::collections::HashSet::<uuid::Uuid>::from_iter(present);
        // A batch may carry the same certificate twice (a retry beside the
        // original): store it once.
        let missing: Vec<&Mirror> = jobs
            .iter()
            .map(|j| &j.item)
            .filter(|m| seen.insert(m.cert.id.0))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        certificate_metadata::Entity::insert_many(missing.iter().map(|m| metadata_model(&m.cert)))
            .exec_without_returning(&txn)
            .await?;
        let events: Vec<&AuditEvent> = missing.iter().map(|m| &m.event).collect();
        audit::insert_many(&txn, AuditLog::Core, &self.audit, &events).await?;
        let notices: Vec<&WebhookEvent> =
            missing.iter().filter_map(|m| m.notice.as_ref()).collect();
        let deliveries = self.deliveries_of(notices).await?;
        webhooks::insert_deliveries(&txn, deliveries).await?;
        txn.commit().await?;
        Ok(())
    }
}

pub(super) fn metadata_model(c: &Certificate) -> certificate_metadata::ActiveModel {
    use sea_orm::Set;
    certificate_metadata::ActiveModel {
        id: Set(c.id.0),
        organization_id: Set(c.organization_id.map(Into::into)),
        ca_id: Set(c.ca_id.0),
        profile_id: Set(c.profile_id.map(Into::into)),
        request_id: Set(c.request_id.map(Into::into)),
        owner_id: Set(c.owner_id.map(Into::into)),
        common_name: Set(Some(c.subject.clone())),
        sans: Set(super::json_strings(&c.sans)),
        serial_hex: Set(c.serial_hex.clone()),
        not_before: Set(c.not_before),
        not_after: Set(c.not_after),
        status: Set(c.status.as_str().to_string()),
        created_at: Set(c.created_at),
        updated_at: Set(c.created_at),
    }
}
