//! Reconciliation: what a crash, a kill -9 or a database failover can leave
//! between the two databases (DESIGN.md decision 3 orders the writes so
//! that clm_secure is always ahead), found and repaired.
//!
//! - a certificate in clm_secure that clm_core's mirror lacks (the process
//!   died between steps 3 and 4 of issuance): copied over, and announced to
//!   the webhooks subscribed to `request.issued` as step 4 would have;
//! - a mirror whose status lags clm_secure's (a revocation or expiry whose
//!   mirroring was cut off): brought up to date;
//! - a request left in `approved` with its serial reserved and nothing
//!   stored (the process died while signing): failed, so the requester sees
//!   it and may submit again; the serial stays reserved and is never used;
//! - a mirror row whose certificate clm_secure does not have: cannot come
//!   from a crash, is not repaired, and makes the pass report failure.
//!
//! clm_secure is walked in id order page by page, so a pass over millions
//! of certificates holds one page in memory. Every repair is idempotent and
//! goes through the same compare-and-set writes as the normal path, so a
//! pass may run beside live traffic and on two instances at once.
//!
//! A pass may look only at what changed since a moment (the background
//! job's passes after its first, [`ReconcileSchedule`]): certificates and
//! mirrors created since then — ids are UUIDv7, so that is a range of each
//! primary key — and certificates whose status changed since then, from
//! the index the OCSP caches poll. A crash leaves its inconsistency on rows
//! it was writing, all stamped at that moment, so these passes find what
//! the full walk finds at a cost that follows the traffic, not the size of
//! the databases. What they cannot see is a database put back in time (a
//! restore, a failover that lost commits), which the full passes — at
//! start-up, once a day and `clm reconcile` — are for.

use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::Clm;
use super::error::ServiceResult;
use crate::domain::model::{Actor, AuditEvent, Outcome, RequestContext};
use crate::domain::{CertificateId, CertificateStatus, RequestStatus, last_row_id_before};
use crate::store::{StatusChange, StoreError};

/// Rows read per round trip.
const PAGE: u64 = 1_000;
/// Ids each finding keeps to show; the counts are complete.
const EXAMPLES: usize = 10;

/// The grace period of the background pass and of `clm reconcile` unless
/// told otherwise.
pub const DEFAULT_GRACE_SECONDS: i64 = 300;

/// How a pass runs.
#[derive(Clone, Copy, Debug)]
pub struct ReconcileOptions {
    /// Report only; change nothing.
    pub dry_run: bool,
    /// A request in `approved` is interrupted only after this long: an
    /// issuance in progress on another instance takes well under a second.
    pub grace_seconds: i64,
    /// Compare only certificates created, or whose status changed, at this
    /// moment or later; `None` compares every certificate.
    pub since: Option<DateTime<Utc>>,
}

/// One kind of inconsistency: how many were found, how many repaired.
#[derive(Debug, Default, Serialize)]
pub struct Finding {
    pub found: u64,
    pub repaired: u64,
    /// The first few ids.
    pub examples: Vec<String>,
}

impl Finding {
    fn saw(&mut self, id: impl ToString) {
        self.found += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(id.to_string());
        }
    }
}

/// What a pass found and did.
#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    pub dry_run: bool,
    /// Only what was created or changed since then (`null`: everything).
    pub since: Option<DateTime<Utc>>,
    /// End-entity certificates of clm_secure compared with the mirror.
    pub certificates_checked: u64,
    /// Certificates clm_core's mirror lacks.
    pub missing_mirrors: Finding,
    /// Mirrors whose status differs from clm_secure's.
    pub stale_statuses: Finding,
    /// Requests left in `approved` by an interrupted issuance.
    pub interrupted_requests: Finding,
    /// Mirror rows without a certificate in clm_secure (never repaired).
    pub orphan_mirrors: Finding,
}

impl ReconcileReport {
    /// Nothing is left inconsistent.
    pub fn consistent(&self) -> bool {
        self.orphan_mirrors.found == 0
            && [
                &self.missing_mirrors,
                &self.stale_statuses,
                &self.interrupted_requests,
            ]
            .iter()
            .all(|f| f.repaired == f.found)
    }

    /// Repairs made (the background job logs this).
    pub fn repairs(&self) -> u64 {
        self.missing_mirrors.repaired
            + self.stale_statuses.repaired
            + self.interrupted_requests.repaired
    }
}

/// How far before the previous pass's start the next looks again. Ids and
/// `updated_at` are stamped by the instance that writes the row, before
/// its transaction commits: this covers the clocks of the instances
/// disagreeing and a commit that lands after the previous pass read past
/// its stamp.
const OVERLAP_SECONDS: i64 = 300;
/// How often the background job walks everything anyway.
const FULL_PASS_HOURS: i64 = 24;

/// Where the background job's passes stand on this instance. Kept in
/// memory: a restarted instance, or one that takes the job over from
/// another, begins with a full pass.
#[derive(Debug, Default)]
pub struct ReconcileSchedule(Mutex<Option<Passes>>);

#[derive(Clone, Copy, Debug)]
struct Passes {
    last_started: DateTime<Utc>,
    last_full_started: DateTime<Utc>,
}

impl ReconcileSchedule {
    /// What a pass starting at `now` must cover: changes since the moment
    /// returned, or everything (`None`).
    fn since(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let passes = (*self.0.lock().unwrap_or_else(|p| p.into_inner()))?;
        (now - passes.last_full_started < Duration::hours(FULL_PASS_HOURS))
            .then(|| passes.last_started - Duration::seconds(OVERLAP_SECONDS))
    }

    /// A pass that started at `started` finished.
    fn done(&self, started: DateTime<Utc>, full: bool) {
        let mut passes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let last_full_started = match *passes {
            Some(p) if !full => p.last_full_started,
            _ => started,
        };
        *passes = Some(Passes {
            last_started: started,
            last_full_started,
        });
    }
}

impl Clm {
    /// One reconciliation pass over both databases.
    pub async fn reconcile(&self, opts: ReconcileOptions) -> ServiceResult<ReconcileReport> {
        let mut report = ReconcileReport {
            dry_run: opts.dry_run,
            since: opts.since,
            ..Default::default()
        };
        let ctx = RequestContext {
            request_id: Some(format!("reconcile-{}", uuid::Uuid::new_v4())),
            ..Default::default()
        };
        // Rows created since then have greater ids.
        let before = opts.since.map(|t| CertificateId(last_row_id_before(t)));
        self.reconcile_interrupted(opts, &ctx, &mut report).await?;
        self.reconcile_mirrors(before, opts, &ctx, &mut report)
            .await?;
        if let (Some(since), Some(before)) = (opts.since, before) {
            self.reconcile_status_changes(since, before, opts, &ctx, &mut report)
                .await?;
        }
        self.find_orphan_mirrors(before, &mut report).await?;
        Ok(report)
    }

    /// The background job's pass: everything on its first run on this
    /// instance and once a day, otherwise what changed since the previous
    /// pass began.
    pub async fn reconcile_scheduled(
        &self,
        schedule: &ReconcileSchedule,
    ) -> ServiceResult<ReconcileReport> {
        let started = Utc::now();
        let since = schedule.since(started);
        let opts = ReconcileOptions {
            dry_run: false,
            grace_seconds: DEFAULT_GRACE_SECONDS,
            since,
        };
        let report = self.reconcile(opts).await?;
        // Only a pass that finished moves the schedule on: one cut off by
        // an error leaves its span to the next.
        schedule.done(started, since.is_none());
        Ok(report)
    }

    async fn reconcile_interrupted(
        &self,
        opts: ReconcileOptions,
        ctx: &RequestContext,
        report: &mut ReconcileReport,
    ) -> ServiceResult<()> {
        let before = Utc::now() - chrono::Duration::seconds(opts.grace_seconds.max(0));
        let reason = "interrupted before the certificate was stored";
        loop {
            let stuck = self.secure.requests_approved_before(before, PAGE).await?;
            let full = stuck.len() as u64 == PAGE;
            for r in &stuck {
                report.interrupted_requests.saw(r.id);
                if opts.dry_run {
                    continue;
                }
                let event = AuditEvent::new(Actor::SYSTEM, "certificate.issuance_failed", ctx)
                    .org(Some(r.organization_id))
                    .target("certificate_request", r.id)
                    .outcome(Outcome::Failure)
                    .details(serde_json::json!({
                        "ca_id": r.ca_id,
                        "reserved_serial": r.reserved_serial_hex,
                        "reason": reason,
                        "by": "reconciliation",
                    }));
                match self
                    .secure
                    .fail_request(r.id, RequestStatus::Approved, reason, &event)
                    .await
                {
                    Ok(()) => report.interrupted_requests.repaired += 1,
                    // Issued or failed meanwhile: nothing left to repair.
                    Err(StoreError::Conflict(_)) => report.interrupted_requests.repaired += 1,
                    Err(e) => return Err(e.into()),
                }
                self.emit_failed(r, reason).await;
            }
            // A dry run fails nothing, so the same rows would come back.
            if !full || opts.dry_run {
                return Ok(());
            }
        }
    }

    /// Certificates with an id after `after` (all when `None`), in id
    /// order.
    async fn reconcile_mirrors(
        &self,
        mut after: Option<CertificateId>,
        opts: ReconcileOptions,
        ctx: &RequestContext,
        report: &mut ReconcileReport,
    ) -> ServiceResult<()> {
        loop {
            let page = self.secure.certificate_states_after(after, PAGE).await?;
            let Some(last) = page.last else {
                return Ok(());
            };
            after = Some(last);
            self.compare_with_mirrors(page.states, opts, ctx, report)
                .await?;
        }
    }

    /// Certificates created before `since` (ids up to `before`) whose
    /// status changed at `since` or later; those created since were
    /// compared in id order.
    async fn reconcile_status_changes(
        &self,
        since: DateTime<Utc>,
        before: CertificateId,
        opts: ReconcileOptions,
        ctx: &RequestContext,
        report: &mut ReconcileReport,
    ) -> ServiceResult<()> {
        let mut after = StatusChange::from(since);
        loop {
            let changes = self.secure.status_changes_after(&after, PAGE).await?;
            let Some(last) = changes.last() else {
                return Ok(());
            };
            after = last.clone();
            let older: Vec<CertificateId> = changes
                .iter()
                .map(|c| c.id)
                .filter(|id| *id <= before)
                .collect();
            let page = self.secure.certificate_states(&older).await?;
            self.compare_with_mirrors(page, opts, ctx, report).await?;
        }
    }

    /// Compares each certificate's status with its mirror, repairing what
    /// differs unless this is a dry run.
    async fn compare_with_mirrors(
        &self,
        page: Vec<(CertificateId, CertificateStatus)>,
        opts: ReconcileOptions,
        ctx: &RequestContext,
        report: &mut ReconcileReport,
    ) -> ServiceResult<()> {
        report.certificates_checked += page.len() as u64;
        let ids: Vec<CertificateId> = page.iter().map(|(id, _)| *id).collect();
        let mirrored = self.core.mirror_states(&ids).await?;
        for (id, status) in page {
            match mirrored.get(&id) {
                None => {
                    report.missing_mirrors.saw(id);
                    if !opts.dry_run && self.copy_mirror(id, ctx).await? {
                        report.missing_mirrors.repaired += 1;
                    }
                }
                Some(m) if m != status.as_str() => {
                    report.stale_statuses.saw(id);
                    if !opts.dry_run && self.repair_status(id, m).await? {
                        report.stale_statuses.repaired += 1;
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Copies one certificate's metadata, with its current status, into
    /// clm_core; `false` if clm_secure no longer has it (rows are never
    /// deleted, but the pass does not assume it).
    async fn copy_mirror(&self, id: CertificateId, ctx: &RequestContext) -> ServiceResult<bool> {
        let Some(cert) = self.secure.find_certificate(id).await? else {
            return Ok(false);
        };
        let event = AuditEvent::new(Actor::SYSTEM, "certificate.mirrored", ctx)
            .org(cert.organization_id)
            .target("certificate", cert.id)
            .details(serde_json::json!({
                "ca_id": cert.ca_id,
                "serial": cert.serial_hex,
                "by": "reconciliation",
            }));
        // Issuance announces a certificate with its mirror, so a missing
        // mirror means it was never announced either.
        let notice = match cert.request_id {
            Some(request) => self
                .secure
                .find_request(request)
                .await?
                .map(|r| super::issuance::issued_event(&r, &cert)),
            None => None,
        };
        match self.core.record_certificate(&cert, &event, notice).await {
            // Issuance's own step 4 got there at the same moment.
            Ok(()) | Err(StoreError::Duplicate(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(true)
    }

    /// Sets the mirror of `id` from `seen` to clm_secure's status as it is
    /// now: the page read earlier may predate a revocation whose own
    /// mirroring has landed since, which must not be undone.
    async fn repair_status(&self, id: CertificateId, seen: &str) -> ServiceResult<bool> {
        let Some(cert) = self.secure.find_certificate(id).await? else {
            return Ok(false);
        };
        if cert.status.as_str() != seen {
            self.core
                .repair_mirror_status(id, seen, cert.status)
                .await?;
        }
        Ok(true)
    }

    /// Mirrors with an id after `after` (all when `None`) that clm_secure
    /// lacks.
    async fn find_orphan_mirrors(
        &self,
        after: Option<CertificateId>,
        report: &mut ReconcileReport,
    ) -> ServiceResult<()> {
        let mut after = after.map(|a| a.0);
        loop {
            let ids = self.core.mirror_ids_after(after, PAGE).await?;
            let Some(&last) = ids.last() else {
                return Ok(());
            };
            after = Some(last);
            let known = self.secure.existing_certificates(&ids).await?;
            for id in ids.iter().filter(|id| !known.contains(id)) {
                report.orphan_mirrors.saw(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_walks_everything_first_and_daily_and_otherwise_what_changed() {
        let schedule = ReconcileSchedule::default();
        let t0 = Utc::now();
        assert_eq!(schedule.since(t0), None, "the first pass is full");
        schedule.done(t0, true);
        let t1 = t0 + Duration::minutes(10);
        let overlap = Duration::seconds(OVERLAP_SECONDS);
        assert_eq!(schedule.since(t1), Some(t0 - overlap));
        schedule.done(t1, false);
        let t2 = t1 + Duration::minutes(10);
        assert_eq!(schedule.since(t2), Some(t1 - overlap));
        // A pass cut off by an error does not move the schedule on.
        assert_eq!(
            schedule.since(t2 + Duration::minutes(10)),
            Some(t1 - overlap)
        );
        assert_eq!(schedule.since(t0 + Duration::hours(FULL_PASS_HOURS)), None);
    }
}
