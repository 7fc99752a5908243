//! The load generator, two ways, every latency recorded in a histogram:
//! - [`drive`]: a fixed number of concurrent clients, each sending its next
//!   request as soon as the last one was answered (closed loop): the most
//!   the server can do, and its latency when saturated;
//! - [`paced`]: requests sent at a fixed rate whatever the answers (open
//!   loop): the latency at that rate.

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

    fn empty() -> Self {
        Stats {
            requests: 0,
            errors: 0,
            first_error: None,
            seconds: 0.0,
            hist: histogram(),
        }
    }

    fn record(&mut self, outcome: Result<Duration, String>) {
        match outcome {
            Ok(took) => {
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                self.hist.saturating_record(us.max(1));
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: Stats) {
        let _ = self.hist.add(&other.hist);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
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
            let mut stats = Stats::empty();
            let mut results = Vec::new();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(item) = next else { break };
                let sent = Instant::now();
                let outcome = f(item).await.map(|r| results.push(r));
                stats.record(outcome.map(|()| sent.elapsed()));
            }
            (stats, results)
        }));
    }
    let mut stats = Stats::empty();
    let mut all = Vec::new();
    for w in workers {
        match w.await {
            Ok((part, results)) => {
                stats.merge(part);
                all.extend(results);
            }
            Err(e) => stats.record(Err(format!("client task: {e}"))),
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    stats.requests = stats.hist.len();
    (stats, all)
}

/// Sends `items` at `rate` per second (open loop): item `i` is due
/// `i / rate` seconds after the start, however the answers before it went.
/// Its latency counts from when it was due, so time lost behind a slow
/// answer, or behind the generator itself, is counted rather than hidden
/// (no coordinated omission). At most `max_in_flight` requests are
/// outstanding; a request due beyond that waits, and its wait counts.
///
/// Requests are released by a thread of their own with the operating
/// system's sleep: tokio's timer ticks in milliseconds, which at 20,000
/// requests per second would release them in bursts of twenty.
pub async fn paced<T, F, Fut>(rate: f64, max_in_flight: usize, items: Vec<T>, f: F) -> Stats
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let stats = Arc::new(Mutex::new(Stats::empty()));
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let f = Arc::new(f);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let shared = stats.clone();
    let dispatcher = std::thread::spawn(move || {
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let due = started + interval.mul_f64(i as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let Ok(slot) = runtime.block_on(slots.clone().acquire_owned()) else {
                break;
            };
            let (f, stats) = (f.clone(), shared.clone());
            tasks.push(runtime.spawn(async move {
                let outcome = f(item).await.map(|()| due.elapsed());
                drop(slot);
                if let Ok(mut s) = stats.lock() {
                    s.record(outcome);
                }
            }));
        }
        for t in tasks {
            let _ = runtime.block_on(t);
        }
        started.elapsed()
    });
    let elapsed = tokio::task::spawn_blocking(move || dispatcher.join())
        .await
        .ok()
        .and_then(Result::ok);
    let mut stats = match Arc::try_unwrap(stats).map(Mutex::into_inner) {
        Ok(Ok(s)) => s,
        _ => {
            let mut s = Stats::empty();
            s.record(Err("the paced load did not finish".into()));
            s
        }
    };
    stats.seconds = elapsed.map_or(0.0, |e| e.as_secs_f64());
    stats.requests = stats.hist.len();
    stats
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// One answer stalls for 200 ms while requests keep falling due, one a
    /// millisecond: each of those counts its wait from when it was due,
    /// where a closed-loop client would have sent them late and measured
    /// them as fast.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn latency_counts_from_when_a_request_was_due() {
        let items: Vec<u32> = (0..100).collect();
        let stats = paced(1_000.0, 1, items, |i| async move {
            if i == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(())
        })
        .await;
        assert_eq!((stats.requests, stats.errors), (100, 0));
        // Every other item was due (at i ms) while item 0 stalled the only
        // slot for 200 ms: each waited at least 200 - 99 ms, however
        // quickly it was answered once sent. A busy machine only adds.
        let fastest = stats.percentile_ms(0.0);
        assert!(fastest >= 100.0, "fastest {fastest} ms");
        // The last was due at 99 ms: the run cannot have been shorter.
        assert!(stats.seconds >= 0.099, "{}", stats.seconds);
    }
}
