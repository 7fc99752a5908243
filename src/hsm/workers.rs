//! The token's threads: a fixed set, one per pooled session, that run the
//! blocking token work done many times a second (building and signing a
//! certificate, the audit MACs, OCSP responses signed on demand) one job
//! after another from a shared queue.
//!
//! Why not tokio's blocking pool: each `spawn_blocking` hands its job to a
//! parked thread, waking it, and that thread parks again when the job is
//! done, so every signature paid for a sleeping thread's wake-up and its
//! scheduling. Threads that take their next job from a queue run back to
//! back while there is work: a P-256 issuance cost 7 % less server CPU and
//! OCSP answers signed one by one came 17 % faster (docs/performance.md,
//! "The token's threads"). More threads than sessions would only wait for
//! a session; fewer would leave sessions of a network HSM idle while its
//! signatures travel.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{HsmError, HsmResult};

type Job = Box<dyn FnOnce() + Send>;

/// The queue in front of the threads, which end when it is dropped.
pub(super) struct Workers {
    queue: flume::Sender<Job>,
}

impl Workers {
    /// Starts `threads` threads (at least one), named `clm-token`.
    pub(super) fn start(threads: usize) -> HsmResult<Self> {
        let (queue, jobs) = flume::unbounded::<Job>();
        spawn(&jobs, threads)?;
        Ok(Workers { queue })
    }

    /// Runs `f` on one of the threads, in the caller's span, and waits for
    /// its result. A panic in `f` is caught there and becomes an error, so
    /// that it costs neither the thread nor the process.
    pub(super) async fn run<T, F>(&self, f: F) -> HsmResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let span = tracing::Span::current();
        let job: Job = Box::new(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| span.in_scope(f)));
            // The caller may have gone away (its request was cancelled).
            let _ = done.send(outcome);
        });
        self.queue.send(job).map_err(|_| failed("stopped"))?;
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_panic)) => Err(failed("panicked")),
            Err(_) => Err(failed("was dropped")),
        }
    }
}

fn spawn(jobs: &flume::Receiver<Job>, threads: usize) -> HsmResult<Vec<JoinHandle<()>>> {
    (0..threads.max(1))
        .map(|_| {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name("clm-token".into())
                .spawn(move || {
                    while let Ok(job) = jobs.recv() {
                        job();
                    }
                })
                .map_err(|e| HsmError::Pkcs11(format!("cannot start the token's threads: {e}")))
        })
        .collect()
}

fn failed(how: &str) -> HsmError {
    HsmError::Pkcs11(format!("HSM task {how}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_off_the_callers_thread_and_a_panic_is_an_error() {
        let workers = Workers::start(2).unwrap();
        let caller = std::thread::current().id();
        let name = workers
            .run(move || {
                assert_ne!(std::thread::current().id(), caller);
                std::thread::current().name().map(str::to_string)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("clm-token"));

        let err = workers
            .run(|| -> u8 { panic!("a job that panics") })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");

        // Both threads survived the panic: two jobs that each wait for the
        // other can only finish if they run at the same time.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (a, b) = (barrier.clone(), barrier);
        let (x, y) = tokio::join!(
            workers.run(move || a.wait().is_leader()),
            workers.run(move || b.wait().is_leader())
        );
        assert_ne!(x.unwrap(), y.unwrap());
    }

    #[test]
    fn the_threads_end_when_their_queue_closes() {
        let (queue, jobs) = flume::unbounded::<Job>();
        let threads = spawn(&jobs, 3).unwrap();
        assert_eq!(threads.len(), 3);
        drop(jobs);
        drop(queue);
        for t in threads {
            t.join().unwrap();
        }
    }
}
