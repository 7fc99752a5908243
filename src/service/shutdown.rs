//! Stopping background work at shutdown without cutting a run in half.
//!
//! Every run of a background job (and the KEK rewrap the API starts) holds
//! a [`JobRun`] for its duration. [`stop_jobs`] lets no new run start and
//! waits for the runs in progress; after it, job loops end at their next
//! tick (`begin_job` answers `None`) and the HSM can be finalised. One gate per process, like the
//! signals that trigger it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{RwLock, RwLockReadGuard};

static STOPPING: AtomicBool = AtomicBool::new(false);
static RUNS: RwLock<()> = RwLock::const_new(());

/// One job run in progress; the shutdown waits for it.
pub struct JobRun {
    _held: RwLockReadGuard<'static, ()>,
}

/// A run may start: `None` once the process is stopping.
pub async fn begin_job() -> Option<JobRun> {
    let guard = RUNS.read().await;
    (!STOPPING.load(Ordering::SeqCst)).then_some(JobRun { _held: guard })
}

/// Refuses new runs and waits up to `timeout` for those in progress.
/// `false` if some were still running when the time was up.
pub async fn stop_jobs(timeout: Duration) -> bool {
    STOPPING.store(true, Ordering::SeqCst);
    tokio::time::timeout(timeout, RUNS.write()).await.is_ok()
}
