//! What the use cases record for operators through the `metrics` facade
//! (exported as Prometheus by `http`; docs/operations.md lists them): the
//! issuance counter, latency and the time in each of its phases, and the
//! gauges that come from the databases, which the exporter refreshes when
//! scraped (at most every few seconds).

use std::time::Instant;

use chrono::Utc;

use super::Clm;
use super::error::ServiceResult;
use crate::domain::audit::AuditLog;
use crate::domain::model::CertificateAuthority;
use crate::domain::{ProfileId, RequestStatus};

/// The steps of one issuance in the order decision 3 of the design takes
/// them. Each is timed from the end of the one before: whether issuance
/// waits for the databases or for the token shows in
/// `clm_issuance_phase_duration_milliseconds`.
#[derive(Clone, Copy, Debug)]
pub(super) enum Phase {
    /// The intent — request and reserved serial — committed in clm_secure.
    Reserve,
    /// The certificate built and signed in the token, its signature checked.
    Sign,
    /// The certificate and its audit entry committed in clm_secure.
    Store,
    /// Its metadata mirrored into clm_core.
    Mirror,
}

impl Phase {
    const fn as_str(self) -> &'static str {
        match self {
            Phase::Reserve => "reserve",
            Phase::Sign => "sign",
            Phase::Store => "store",
            Phase::Mirror => "mirror",
        }
    }
}

/// The `phase` labels of `clm_issuance_phase_duration_milliseconds`, in
/// the order issuance takes them.
pub const ISSUANCE_PHASES: [&str; 4] = [
    Phase::Reserve.as_str(),
    Phase::Sign.as_str(),
    Phase::Store.as_str(),
    Phase::Mirror.as_str(),
];

/// Times one issuance (reservation → signature → stored certificate).
/// Dropped without [`IssuanceTimer::issued`] — an error, or the request
/// going away — it counts as failed.
pub(super) struct IssuanceTimer {
    started: Instant,
    phase_started: Instant,
    ca: String,
    profile_id: String,
    done: bool,
}

impl IssuanceTimer {
    pub(super) fn start(ca: &CertificateAuthority, profile: ProfileId) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            phase_started: now,
            ca: ca.name.clone(),
            profile_id: profile.to_string(),
            done: false,
        }
    }

    /// `phase` is over; the next one starts now.
    pub(super) fn phase_done(&mut self, phase: Phase) {
        let now = Instant::now();
        metrics::histogram!("clm_issuance_phase_duration_milliseconds", "phase" => phase.as_str())
            .record((now - self.phase_started).as_secs_f64() * 1000.0);
        self.phase_started = now;
    }

    pub(super) fn issued(mut self) {
        self.record("issued");
    }

    fn record(&mut self, outcome: &'static str) {
        self.done = true;
        let labels = [
            ("ca", self.ca.clone()),
            ("profile_id", self.profile_id.clone()),
            ("outcome", outcome.to_string()),
        ];
        metrics::counter!("clm_issuance_total", &labels).increment(1);
        metrics::histogram!("clm_issuance_duration_milliseconds", &labels)
            .record(self.started.elapsed().as_secs_f64() * 1000.0);
    }
}

impl Drop for IssuanceTimer {
    fn drop(&mut self) {
        if !self.done {
            self.record("failed");
        }
    }
}

impl Clm {
    /// Sets the gauges that come from the databases: a handful of indexed
    /// counts and timestamps.
    pub async fn refresh_gauges(&self) -> ServiceResult<()> {
        let pending = self
            .secure
            .count_requests_with_status(RequestStatus::PendingApproval)
            .await?;
        metrics::gauge!("clm_pending_approvals").set(pending as f64);

        let now = Utc::now();
        let cas = self.secure.list_cas().await?;
        for (ca_id, this_update) in self.secure.crl_this_updates().await? {
            let name = cas
                .iter()
                .find(|c| c.id == ca_id)
                .map(|c| c.name.clone())
                .unwrap_or_default();
            let age = (now - this_update).num_milliseconds() as f64 / 1000.0;
            metrics::gauge!("clm_crl_age_seconds", "ca" => name, "ca_id" => ca_id.to_string())
                .set(age);
        }

        for log in AuditLog::ALL {
            let store = match log {
                AuditLog::Core => self.core.audit_store(),
                AuditLog::Secure => self.secure.audit_store(),
            };
            let seal = store.latest_seal().await?;
            let sealed_through = match &seal {
                Some(s) => s.body.last_seq,
                None => store
                    .latest_checkpoint()
                    .await?
                    .map_or(0, |c| c.body.purged_through_seq),
            };
            let unsealed = store.count_entries_after(sealed_through).await?;
            metrics::gauge!("clm_audit_unsealed_entries", "log" => log.as_str())
                .set(unsealed as f64);
            if let Some(s) = seal {
                let age = (now - s.body.sealed_at).num_milliseconds() as f64 / 1000.0;
                metrics::gauge!("clm_audit_seal_age_seconds", "log" => log.as_str()).set(age);
            }
        }
        Ok(())
    }
}
