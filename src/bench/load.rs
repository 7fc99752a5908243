//! The load generator: prepared inputs handed to a fixed number of
//! concurrent clients, each sending its next request as soon as the last
//! one was answered (closed loop), every latency recorded in a histogram.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What one measured run did.
#[derive(Clone, Debug)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    /// Latencies in microseconds.
    hist: Histogram<u64>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// `None` when every request succeeded, else what went wrong.
    pub fn failure(&self) -> Option<String> {
        (self.errors > 0).then(|| {
            format!(
                "{} of {} requests failed, first: {}",
                self.errors,
                self.requests + self.errors,
                self.first_error.as_deref().unwrap_or("?")
            )
        })
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits: never fails for these bounds.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// Sends `warmup` (unmeasured), then `items` through `clients` concurrent
/// clients calling `f`. Clients stop taking new items once `limit` has
/// passed. Returns the statistics of the measured part and the results of
/// the successful requests (in completion order).
pub async fn drive<T, R, F, Fut>(
    clients: usize,
    warmup: Vec<T>,
    items: Vec<T>,
    limit: Option<Duration>,
    f: F,
) -> (Stats, Vec<R>)
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, String>> + Send + 'static,
{
    let f = Arc::new(f);
    if !warmup.is_empty() {
        let _ = round(clients, warmup, None, f.clone()).await;
    }
    round(clients, items, limit, f).await
}

async fn round<T, R, F, Fut>(
    clients: usize,
    items: Vec<T>,
    limit: Option<Duration>,
    f: Arc<F>,
) -> (Stats, Vec<R>)
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, String>> + Send + 'static,
{
    let queue = Arc::new(Mutex::new(VecDeque::from(items)));
    let started = Instant::now();
    let deadline = limit.map(|l| started + l);
    let mut workers = Vec::new();
    for _ in 0..clients.max(1) {
        let (queue, f) = (queue.clone(), f.clone());
        workers.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut results = Vec::new();
            let (mut errors, mut first_error) = (0u64, None);
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(item) = next else { break };
                let sent = Instant::now();
                match f(item).await {
                    Ok(r) => {
                        let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        hist.saturating_record(us.max(1));
                        results.push(r);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (hist, results, errors, first_error)
        }));
    }
    let mut stats = Stats {
        requests: 0,
        errors: 0,
        first_error: None,
        seconds: 0.0,
        hist: histogram(),
    };
    let mut all = Vec::new();
    for w in workers {
        match w.await {
            Ok((hist, results, errors, first_error)) => {
                let _ = stats.hist.add(&hist);
                all.extend(results);
                stats.errors += errors;
                if stats.first_error.is_none() {
                    stats.first_error = first_error;
                }
            }
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    stats.requests = stats.hist.len();
    (stats, all)
}
