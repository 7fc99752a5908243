//! Group commit: writes of one kind from concurrent callers share a
//! transaction.
//!
//! Every issuance writes three small transactions (intent, certificate,
//! mirror), each with an audit entry. Alone, each costs a BEGIN, a seq draw,
//! an HSM MAC, a few INSERTs and a COMMIT — on SQLite all of it through the
//! one writer connection, so concurrent issuances queue behind each other's
//! round trips. A [`Batcher`] hands the writes that arrive while a
//! transaction is in flight to one writer task, which stores them together:
//! one transaction, multi-row statements, one seq draw and one batched MAC
//! call per log. Callers wait for the commit, so durability is unchanged:
//! an answer never precedes the commit of its rows.
//!
//! A batch that fails as a whole (a duplicate serial, a request decided
//! meanwhile) is rolled back and its jobs are retried one by one on the
//! single-write path, so one caller's conflict never becomes another's.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreResult};

/// At most this many writes share one transaction; more wait for the next.
pub(super) const MAX_BATCH: usize = 128;

/// One caller's write and where its outcome goes.
pub(super) struct Job<T> {
    pub item: T,
    reply: oneshot::Sender<StoreResult<()>>,
}

impl<T> Job<T> {
    pub fn answer(self, result: StoreResult<()>) {
        // The caller may have gone away (its request was cancelled); the
        // write stands all the same, as it would without batching.
        let _ = self.reply.send(result);
    }
}

/// The queue in front of one writer task.
pub(super) struct Batcher<T> {
    queue: mpsc::Sender<Job<T>>,
}

impl<T> std::fmt::Debug for Batcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the writer task on `runtime`. `write` gets
    /// every job that arrived while the previous batch was being written
    /// (at least one, at most [`MAX_BATCH`]) and must answer each.
    pub fn start<F, Fut>(runtime: &tokio::runtime::Handle, mut write: F) -> Self
    where
        F: FnMut(Vec<Job<T>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (queue, mut jobs) = mpsc::channel(MAX_BATCH * 4);
        runtime.spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
                write(std::mem::take(&mut batch)).await;
            }
        });
        Batcher { queue }
    }

    /// Queues `item` and waits until its batch is committed (or failed).
    pub async fn submit(&self, item: T) -> StoreResult<()> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Job { item, reply })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Database("the database writer stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submissions_share_batches_and_each_gets_its_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let seen = batches.clone();
        let runtime = tokio::runtime::Handle::current();
        let batcher = Arc::new(Batcher::start(&runtime, move |jobs: Vec<Job<u32>>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                // Slow enough that the other submissions queue up meanwhile.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                for job in jobs {
                    let odd = job.item % 2 == 1;
                    job.answer(if odd {
                        Err(StoreError::Conflict("odd".into()))
                    } else {
                        Ok(())
                    });
                }
            }
        }));
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let b = batcher.clone();
            tasks.push(tokio::spawn(async move { (i, b.submit(i).await) }));
        }
        for t in tasks {
            let (i, result) = t.await.unwrap();
            assert_eq!(
                result.is_err(),
                i % 2 == 1,
                "job {i} got another job's answer"
            );
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 200, "no batching happened: {n} batches for 200 jobs");
    }
}
