//! The circuit breaker in front of the token, its backoff, and the metric
//! names of the HSM room.
//!
//! Closed: operations go to the token; trouble is met by one recovery (see
//! [`Trouble`]) and one retry. After [`OPEN_AFTER`] operations in a row
//! whose recovery did not help, the breaker opens: operations fail fast
//! without touching the token until the backoff has passed. Then exactly
//! one caller is let through as the probe (half-open): it runs the pending
//! recovery and its own operation; success closes the breaker, failure
//! opens it again with twice the backoff, up to [`BACKOFF_CAP`].
//!
//! The check every operation makes is one atomic load; nothing here calls
//! the token.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::{HsmError, Trouble};

/// Consecutive failed recoveries after which the breaker opens.
pub(super) const OPEN_AFTER: u32 = 3;
/// First wait after the breaker opens.
pub(super) const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest wait between two probes.
pub(super) const BACKOFF_CAP: Duration = Duration::from_secs(30);

pub(super) const M_OP_DURATION: &str = "clm_hsm_operation_duration_milliseconds";
pub(super) const M_ERRORS: &str = "clm_hsm_errors_total";
pub(super) const M_POOL_BUSY: &str = "clm_hsm_pool_sessions_busy";
pub(super) const M_POOL_MAX: &str = "clm_hsm_pool_sessions_max";
pub(super) const M_POOL_WAIT: &str = "clm_hsm_pool_wait_milliseconds";
pub(super) const M_CIRCUIT_OPEN: &str = "clm_hsm_circuit_open";
pub(super) const M_RECOVERIES: &str = "clm_hsm_recoveries_total";

/// What an operation does, as the `op` label of the metrics (a fixed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Sign,
    Mac,
    Generate,
    Find,
    Wrap,
    Unwrap,
    Destroy,
    AuditHead,
    Check,
}

impl Op {
    /// Whether the operation adds or removes token objects. SoftHSM 2.6.1
    /// fails such a change (`CKR_GENERAL_ERROR`, `CKR_TEMPLATE_INCONSISTENT`)
    /// when another thread of the process searches the token at the same
    /// moment (softhsm/SoftHSMv2#573, fixed after 2.6.1), so these run
    /// alone and everything else side by side.
    pub(super) fn changes_token_objects(self) -> bool {
        matches!(self, Op::Generate | Op::Destroy | Op::AuditHead)
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Op::Sign => "sign",
            Op::Mac => "mac",
            Op::Generate => "generate",
            Op::Find => "find",
            Op::Wrap => "wrap",
            Op::Unwrap => "unwrap",
            Op::Destroy => "destroy",
            Op::AuditHead => "audit_head",
            Op::Check => "check",
        }
    }
}

/// How an operation may proceed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// The breaker is closed.
    Normal,
    /// This caller is the one probe of a half-open breaker and must first
    /// run the pending recovery.
    Probe(Trouble),
}

pub(super) struct Breaker {
    /// The one value the hot path reads.
    open: AtomicBool,
    /// A half-open probe is under way.
    probing: AtomicBool,
    /// Consecutive operations whose recovery failed.
    failures: AtomicU32,
    /// Milliseconds since `epoch` before which an open breaker lets nobody
    /// through.
    retry_at_ms: AtomicU64,
    /// The worst trouble since the breaker last closed ([`Trouble`] as u8):
    /// the probe runs its recovery.
    pending: AtomicU8,
    epoch: Instant,
    /// For the log and `/readyz`: why the token is unavailable.
    reason: Mutex<&'static str>,
}

fn trouble_of(v: u8) -> Trouble {
    match v {
        0 => Trouble::Session,
        1 => Trouble::Login,
        _ => Trouble::Token,
    }
}

fn code_of(t: Trouble) -> u8 {
    match t {
        Trouble::Session => 0,
        Trouble::Login => 1,
        Trouble::Token => 2,
    }
}

/// The wait after `failures` consecutive failures (the first opening
/// waits [`BACKOFF_BASE`]).
pub(super) fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(OPEN_AFTER).min(16);
    BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP)
}

impl Breaker {
    pub(super) fn new() -> Self {
        metrics::gauge!(M_CIRCUIT_OPEN).set(0.0);
        Breaker {
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            retry_at_ms: AtomicU64::new(0),
            pending: AtomicU8::new(0),
            epoch: Instant::now(),
            reason: Mutex::new(""),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Open, and no probe may start now (one is under way or not yet due).
    pub(super) fn refuses(&self) -> bool {
        self.is_open()
            && (self.probing.load(Ordering::Acquire)
                || self.now_ms() < self.retry_at_ms.load(Ordering::Acquire))
    }

    /// Time left before the next probe, in whole seconds rounded up (zero
    /// when closed or due).
    pub(super) fn retry_after(&self) -> Duration {
        let left = self
            .retry_at_ms
            .load(Ordering::Acquire)
            .saturating_sub(self.now_ms());
        Duration::from_secs(left.div_ceil(1000))
    }

    fn reason(&self) -> &'static str {
        self.reason.lock().map(|r| *r).unwrap_or("")
    }

    /// The error of a caller that is turned away.
    pub(super) fn refusal(&self) -> HsmError {
        let wait = self.retry_after().max(Duration::from_secs(1));
        HsmError::unavailable(
            format!(
                "{}; circuit open, next recovery attempt in {}s",
                self.reason(),
                wait.as_secs()
            ),
            wait,
        )
    }

    pub(super) fn admit(&self) -> Result<Admission, HsmError> {
        if !self.open.load(Ordering::Acquire) {
            return Ok(Admission::Normal);
        }
        if self.now_ms() < self.retry_at_ms.load(Ordering::Acquire)
            || self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Err(self.refusal());
        }
        Ok(Admission::Probe(trouble_of(
            self.pending.load(Ordering::Acquire),
        )))
    }

    /// An operation reached the token and got an answer.
    pub(super) fn succeeded(&self) {
        if self.failures.load(Ordering::Acquire) == 0 && !self.is_open() {
            return;
        }
        let was_open = self.open.swap(false, Ordering::AcqRel);
        self.failures.store(0, Ordering::Release);
        self.pending.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
        if was_open {
            metrics::gauge!(M_CIRCUIT_OPEN).set(0.0);
            tracing::info!("HSM available again; circuit closed");
        }
    }

    /// An operation's trouble survived its recovery (or the probe's
    /// recovery failed). Opens the breaker once failures repeat, and pushes
    /// the next probe out by the backoff.
    pub(super) fn failed(&self, trouble: Trouble) {
        self.pending.fetch_max(code_of(trouble), Ordering::AcqRel);
        if let Ok(mut r) = self.reason.lock() {
            *r = trouble_of(self.pending.load(Ordering::Acquire)).public_reason();
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= OPEN_AFTER {
            let wait = backoff(failures);
            let at = self
                .now_ms()
                .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            self.retry_at_ms.store(at, Ordering::Release);
            if !self.open.swap(true, Ordering::AcqRel) {
                metrics::gauge!(M_CIRCUIT_OPEN).set(1.0);
            }
            tracing::warn!(
                failures,
                next_attempt_ms = wait.as_millis() as u64,
                reason = self.reason(),
                "HSM unavailable; circuit open"
            );
        }
        self.probing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_repeated_failures_and_lets_one_probe_through() {
        let b = Breaker::new();
        assert_eq!(b.admit().unwrap(), Admission::Normal);
        for _ in 1..OPEN_AFTER {
            b.failed(Trouble::Session);
            assert_eq!(b.admit().unwrap(), Admission::Normal);
        }
        b.failed(Trouble::Token);
        assert!(b.is_open());
        let refused = b.admit().unwrap_err();
        assert!(refused.is_retryable());
        assert!(refused.retry_after().unwrap() >= Duration::from_secs(1));
        // Once the backoff has passed: one probe, and it runs the worst
        // pending recovery; a second caller is still turned away.
        assert!(b.refuses());
        b.retry_at_ms.store(0, Ordering::Release);
        // Due: callers are no longer turned away up front, one may probe.
        assert!(!b.refuses());
        assert_eq!(b.admit().unwrap(), Admission::Probe(Trouble::Token));
        assert!(b.refuses());
        assert!(b.admit().is_err());
        b.failed(Trouble::Token);
        assert!(b.is_open() && b.retry_after() > Duration::ZERO);
        b.retry_at_ms.store(0, Ordering::Release);
        assert_eq!(b.admit().unwrap(), Admission::Probe(Trouble::Token));
        b.succeeded();
        assert!(!b.is_open());
        assert_eq!(b.admit().unwrap(), Admission::Normal);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(OPEN_AFTER), BACKOFF_BASE);
        assert_eq!(backoff(OPEN_AFTER + 1), BACKOFF_BASE * 2);
        assert_eq!(backoff(OPEN_AFTER + 3), BACKOFF_BASE * 8);
        assert_eq!(backoff(OPEN_AFTER + 100), BACKOFF_CAP);
    }
}
