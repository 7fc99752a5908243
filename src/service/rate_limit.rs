//! Issuance rate limit per principal (`CLM_ISSUANCE_RATE_PER_MINUTE`): a
//! token bucket per user or API key that holds a minute's worth of
//! requests and refills continuously. It keeps one runaway client (a CI
//! loop, a leaked API key) from taking the HSM and the databases away from
//! everybody else.
//!
//! The buckets live in the memory of this instance: behind a load balancer
//! N instances admit up to N times the rate, and a restart refills every
//! bucket. Nothing is persisted, a refused request leaves no trace but the
//! 429 (and its access-log line).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use uuid::Uuid;

use super::Principal;
use super::error::{ServiceError, ServiceResult};

/// Beyond this many buckets, full ones (principals quiet for a minute) are
/// forgotten, so the map stays bounded.
const MAX_BUCKETS: usize = 10_000;

pub struct RateLimiter {
    /// Capacity and refill per minute; 0 = no limit.
    per_minute: u32,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::default(),
        }
    }

    /// Takes one token of `p`'s bucket, or says how many seconds until the
    /// next one.
    pub fn check(&self, p: &Principal) -> ServiceResult<()> {
        // An API key has its own bucket; a user's sessions share one.
        let key = p.api_key_id.map_or(p.user_id.0, |k| k.0);
        self.take(key, Instant::now())
    }

    fn take(&self, key: Uuid, now: Instant) -> ServiceResult<()> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self
            .buckets
            .lock()
            .map_err(|_| ServiceError::internal("rate limiter poisoned"))?;
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < capacity
            });
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let refilled = now.duration_since(bucket.updated).as_secs_f64() * per_second;
        bucket.tokens = (bucket.tokens + refilled).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / per_second;
        Err(ServiceError::RateLimited {
            retry_after_secs: wait.ceil().max(1.0) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_one_minute_then_the_refill_rate() {
        let limiter = RateLimiter::new(60);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        for _ in 0..60 {
            limiter.take(a, t0).unwrap();
        }
        match limiter.take(a, t0) {
            Err(ServiceError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 1),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Another principal is not affected.
        limiter.take(b, t0).unwrap();
        // One token per second comes back, never more than the capacity.
        limiter.take(a, t0 + Duration::from_secs(1)).unwrap();
        assert!(limiter.take(a, t0 + Duration::from_secs(1)).is_err());
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..60 {
            limiter.take(a, later).unwrap();
        }
        assert!(limiter.take(a, later).is_err());
    }

    #[test]
    fn zero_means_no_limit() {
        let limiter = RateLimiter::new(0);
        let key = Uuid::new_v4();
        for _ in 0..10_000 {
            limiter.take(key, Instant::now()).unwrap();
        }
    }

    #[test]
    fn quiet_principals_are_forgotten() {
        let limiter = RateLimiter::new(60);
        let t0 = Instant::now();
        for _ in 0..MAX_BUCKETS {
            limiter.take(Uuid::new_v4(), t0).unwrap();
        }
        limiter
            .take(Uuid::new_v4(), t0 + Duration::from_secs(61))
            .unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}
