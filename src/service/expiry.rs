//! Expiry monitoring: owners hear 30, 7 and 1 days (configurable) before
//! notAfter, once each, and certificates past notAfter are marked expired.
//!
//! A certificate is due the notice of `d` days once its notAfter is within
//! `d` days (and not within the next smaller threshold) and it has had no
//! notice of `d` days or fewer. Each threshold's band of notAfter moves
//! forward with the clock, and certificates enter it at its far edge, so a
//! sweep reads each band from where the previous sweep left it
//! ([`ExpirySchedule`]): the cost follows the certificates that come due,
//! not how many have had their notice. What appears inside a band behind
//! that mark is found another way: a certificate issued for less than a
//! threshold among those created since the previous sweep; one released
//! from hold, or mirrored late by reconciliation, by the sweep of the whole
//! bands once an hour.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

use super::Clm;
use super::error::ServiceResult;
use crate::domain::model::{Actor, AuditEvent, Notification, RequestContext};
use crate::domain::{CertificateId, CertificateStatus, last_row_id_before};
use crate::store::{ExpiringCertificate, StoreError};

/// Rows one query reads; the next sweep continues.
const BATCH: u64 = 500;
/// How often a sweep reads the whole bands instead of continuing.
const FULL_SWEEP_MINUTES: i64 = 60;
/// How far before the previous sweep's start the certificates created
/// since are read: ids are stamped before the mirror's transaction
/// commits, by instances whose clocks may differ slightly.
const CREATED_OVERLAP_SECONDS: i64 = 10;

/// Where this instance's sweeps stand. In memory: a restarted instance, or
/// one that takes the job over, begins with a whole sweep.
#[derive(Debug, Default)]
pub struct ExpirySchedule(Mutex<Option<Sweeps>>);

#[derive(Debug)]
struct Sweeps {
    last_started: DateTime<Utc>,
    full_started: DateTime<Utc>,
    /// Per threshold (days): every certificate with a notAfter up to this
    /// has had its notice, as of the last sweep.
    noticed_to: HashMap<u32, DateTime<Utc>>,
}

/// What a sweep starting now reads.
#[derive(Debug, Default)]
struct Plan {
    noticed_to: HashMap<u32, DateTime<Utc>>,
    /// Certificates created after this id (`None`: the whole bands are
    /// read, which covers them).
    created_after: Option<CertificateId>,
}

impl ExpirySchedule {
    fn plan(&self, now: DateTime<Utc>) -> Plan {
        let sweeps = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*sweeps {
            Some(s) if now - s.full_started < Duration::minutes(FULL_SWEEP_MINUTES) => Plan {
                noticed_to: s.noticed_to.clone(),
                created_after: Some(CertificateId(last_row_id_before(
                    s.last_started - Duration::seconds(CREATED_OVERLAP_SECONDS),
                ))),
            },
            _ => Plan::default(),
        }
    }

    /// A sweep that started at `started` with `plan` finished.
    fn done(&self, started: DateTime<Utc>, plan: &Plan, noticed_to: HashMap<u32, DateTime<Utc>>) {
        let mut sweeps = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let full_started = match (&*sweeps, plan.created_after) {
            (Some(s), Some(_)) => s.full_started,
            _ => started,
        };
        *sweeps = Some(Sweeps {
            last_started: started,
            full_started,
            noticed_to,
        });
    }
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExpiryReport {
    pub notices: usize,
    pub expired: usize,
}

impl Clm {
    /// Sends the expiry notices that are due, and marks certificates past
    /// notAfter expired.
    pub async fn expiry_sweep(&self, schedule: &ExpirySchedule) -> ServiceResult<ExpiryReport> {
        let mut report = ExpiryReport::default();
        let ctx = RequestContext::default();
        let now = Utc::now();
        let plan = schedule.plan(now);
        let (due, noticed_to) = self.due_notices(now, &plan).await?;
        for c in &due {
            if self.send_expiry_notice(c, &ctx).await? {
                report.notices += 1;
            }
        }
        schedule.done(now, &plan, noticed_to);
        for cert in self.secure.overdue_certificates(Utc::now(), BATCH).await? {
            let event = AuditEvent::new(Actor::SYSTEM, "certificate.expired", &ctx)
                .org(cert.organization_id)
                .target("certificate", cert.id)
                .details(serde_json::json!({ "ca_id": cert.ca_id, "serial": cert.serial_hex }));
            match self.secure.mark_expired(cert.id, &event).await {
                Ok(()) => {}
                // Revoked or expired by someone else meanwhile.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            report.expired += 1;
            if let Err(e) = self
                .core
                .mirror_certificate_status(cert.id, CertificateStatus::Expired)
                .await
            {
                tracing::warn!(certificate = %cert.id, error = %e, "expiry not mirrored to clm_core");
            }
            if let Some(org) = cert.organization_id {
                self.emit(
                    org,
                    "certificate.expired",
                    serde_json::json!({ "certificate_id": cert.id, "serial": cert.serial_hex }),
                )
                .await;
            }
        }
        Ok(report)
    }

    /// The certificates due a notice at `now`, and where each band's
    /// reading stopped.
    async fn due_notices(
        &self,
        now: DateTime<Utc>,
        plan: &Plan,
    ) -> ServiceResult<(Vec<ExpiringCertificate>, HashMap<u32, DateTime<Utc>>)> {
        let mut due = Vec::new();
        let mut noticed_to = HashMap::new();
        let mut near = now;
        // Nearest threshold first: the bands are (now, now + 1d],
        // (now + 1d, now + 7d], … for 1, 7, … days.
        for &days in self.settings.expiry_notice_days.iter().rev() {
            let far = now + Duration::days(i64::from(days));
            let from = plan.noticed_to.get(&days).map_or(near, |&t| t.max(near));
            let band = self
                .core
                .certificates_due_notice(days, from, far, BATCH)
                .await?;
            // A full page stops inside the band: the next sweep goes on
            // from its last notAfter (those sharing it are read again, and
            // skipped once they have their notice).
            let reached = match band.last() {
                Some(last) if band.len() as u64 == BATCH => last.not_after,
                _ => far,
            };
            noticed_to.insert(days, reached);
            due.extend(band);
            near = far;
        }
        if let Some(mut after) = plan.created_after {
            // Up to the longest threshold (`near` now): beyond it nothing is
            // due.
            loop {
                let created = self
                    .core
                    .certificates_created_after(after, now, near, BATCH)
                    .await?;
                let Some((last, _)) = created.last() else {
                    break;
                };
                after = last.id;
                due.extend(
                    created
                        .into_iter()
                        .filter(|(_, status)| *status == CertificateStatus::Valid)
                        .map(|(c, _)| c),
                );
            }
        }
        let mut seen = HashSet::new();
        due.retain(|c| seen.insert(c.id));
        Ok((due, noticed_to))
    }

    /// Sends the notice due for `c` now, if it was not sent before. Only the
    /// nearest threshold counts: a certificate issued for five days gets the
    /// 7-day notice, never a late 30-day one.
    async fn send_expiry_notice(
        &self,
        c: &ExpiringCertificate,
        ctx: &RequestContext,
    ) -> ServiceResult<bool> {
        let left = c.not_after - Utc::now();
        let Some(days) = self
            .settings
            .expiry_notice_days
            .iter()
            .copied()
            .filter(|d| left <= Duration::days(i64::from(*d)))
            .min()
        else {
            return Ok(false);
        };
        if self.core.expiry_notices_sent(c.id).await?.contains(&days) {
            return Ok(false);
        }
        let name = c.common_name.as_deref().unwrap_or(&c.serial_hex);
        let notice = match (c.organization_id, c.owner_id) {
            (Some(org), Some(owner)) => Some(Notification::new(
                org,
                owner,
                "certificate.expiring",
                format!("Your certificate for {name} expires in {days} day(s) or less"),
                format!(
                    "Certificate {} ({name}) expires at {}; renew it before then.",
                    c.serial_hex,
                    super::rfc3339(c.not_after)
                ),
                serde_json::json!({
                    "certificate_id": c.id,
                    "days_before": days,
                    "not_after": super::rfc3339(c.not_after),
                }),
            )),
            _ => None,
        };
        let event = AuditEvent::new(Actor::SYSTEM, "certificate.expiry_notice", ctx)
            .org(c.organization_id)
            .target("certificate", c.id)
            .details(serde_json::json!({ "days_before": days }));
        match self
            .core
            .record_expiry_notice(c.id, days, notice.as_ref(), &event)
            .await
        {
            Ok(()) => {}
            // Another instance sent it first.
            Err(StoreError::Duplicate(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        if let Some(org) = c.organization_id {
            self.emit(
                org,
                "certificate.expiring",
                serde_json::json!({ "certificate_id": c.id, "days_before": days }),
            )
            .await;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_go_on_where_the_last_stopped_and_start_over_hourly() {
        let schedule = ExpirySchedule::default();
        let t0 = Utc::now();
        let first = schedule.plan(t0);
        assert!(first.noticed_to.is_empty() && first.created_after.is_none());
        let marks = HashMap::from([(7, t0 + Duration::days(7))]);
        schedule.done(t0, &first, marks.clone());

        let t1 = t0 + Duration::seconds(30);
        let next = schedule.plan(t1);
        assert_eq!(next.noticed_to, marks);
        let created_after = next.created_after.unwrap();
        let bound = t0 - Duration::seconds(CREATED_OVERLAP_SECONDS);
        assert_eq!(created_after, CertificateId(last_row_id_before(bound)));
        schedule.done(t1, &next, marks.clone());

        // An hour after the last whole sweep, not after the last sweep.
        let late = t0 + Duration::minutes(FULL_SWEEP_MINUTES);
        let whole = schedule.plan(late);
        assert!(whole.noticed_to.is_empty() && whole.created_after.is_none());
        schedule.done(late, &whole, marks);
        assert!(
            schedule
                .plan(late + Duration::seconds(30))
                .created_after
                .is_some()
        );
    }
}
