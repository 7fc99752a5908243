//! Periodic background work shared by every instance on the same
//! databases: CRL refresh, expiry notices, KEK maintenance (rewrap),
//! reconciliation, webhook delivery, audit sealing and purge. A run takes
//! the job's lease in clm_core first (`store::lease`), so that one instance
//! runs it, once per period; the holder renews the lease while the run
//! lasts and gives it back afterwards. An instance killed mid-run stops
//! renewing, and after `CLM_JOB_LEASE_SECONDS` another takes over. The jobs
//! themselves stay compare-and-set, so a run that overlaps a lapsed lease
//! repeats work but never corrupts it.

use std::future::Future;
use std::time::Duration;

use super::Clm;
use super::error::ServiceResult;
use crate::store::JobLease;

/// Part of the period that must pass since the last start anywhere: the
/// instances' timers drift, and a tick slightly early still belongs to the
/// next period rather than skipping it.
const PERIOD_SLACK: f64 = 0.9;

/// The lease of the KEK maintenance job, which the rewrap that the API
/// starts shares.
pub const KEK_MAINTENANCE: &str = "KEK maintenance";

/// Who holds a lease: host, process and a random part (a restarted process
/// may get the same pid).
pub(super) fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &nonce[..8])
}

impl Clm {
    /// Runs `job` under the lease `name` when this instance can take it:
    /// `Ok(None)` when another instance holds it or it started less than
    /// `period` ago.
    pub async fn run_leased<T>(
        &self,
        name: &'static str,
        period: Duration,
        job: impl Future<Output = ServiceResult<T>>,
    ) -> ServiceResult<Option<T>> {
        let ttl = Duration::from_secs(self.settings.job_lease_seconds.unsigned_abs().max(1));
        let taken = self
            .core
            .acquire_lease(name, &self.instance, period.mul_f64(PERIOD_SLACK), ttl)
            .await?;
        if !taken {
            metrics::counter!("clm_job_runs_total", "job" => name, "outcome" => "skipped")
                .increment(1);
            return Ok(None);
        }
        // The renewals run beside the job, not inside its task: on SQLite
        // there is one write connection, and a renewal awaited while the
        // job held it in a transaction would wait for the job forever.
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let renewer = tokio::spawn({
            let (core, holder, stop) = (self.core.clone(), self.instance.clone(), stop.clone());
            async move {
                let mut renew = tokio::time::interval(ttl / 3);
                renew.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.notified() => return,
                        _ = renew.tick() => {}
                    }
                    match core.renew_lease(name, &holder, ttl).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(
                            job = name,
                            "job lease lapsed during the run; another instance may repeat it"
                        ),
                        Err(e) => tracing::warn!(job = name, error = %e, "job lease not renewed"),
                    }
                }
            }
        });
        let result = job.await;
        // Between renewals, never in the middle of one.
        stop.notify_one();
        if let Err(e) = renewer.await {
            tracing::warn!(job = name, error = %e, "job lease renewal task failed");
        }
        if let Err(e) = self.core.release_lease(name, &self.instance).await {
            tracing::warn!(job = name, error = %e, "job lease not released; it lapses by itself");
        }
        let outcome = if result.is_ok() { "ran" } else { "failed" };
        metrics::counter!("clm_job_runs_total", "job" => name, "outcome" => outcome).increment(1);
        result.map(Some)
    }

    /// Every job's lease: who holds it, when it last started, how often it
    /// ran.
    pub async fn job_leases(&self) -> ServiceResult<Vec<JobLease>> {
        Ok(self.core.list_leases().await?)
    }

    /// The SQLite log job (`store::wal`): checkpoints each database whose
    /// log readers kept from starting over. Returns how many it emptied.
    /// Every instance may run it: a checkpoint is SQLite's own to order.
    pub async fn checkpoint_long_logs(&self) -> ServiceResult<usize> {
        let mut emptied = 0;
        for (database, checkpoint) in [
            ("clm_core", self.core.checkpoint_long_log().await?),
            ("clm_secure", self.secure.checkpoint_long_log().await?),
        ] {
            match checkpoint {
                Some(c) if c.emptied => emptied += 1,
                Some(c) => tracing::warn!(
                    database,
                    frames = c.frames,
                    "SQLite log not emptied: a reader or writer outlasted the busy timeout"
                ),
                None => {}
            }
        }
        Ok(emptied)
    }
}
