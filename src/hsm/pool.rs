//! The session pool: a bounded set of PKCS#11 sessions that blocking callers
//! check out for one operation each, and the recovery policy around every
//! operation (breaker, classify, recover, retry once).
//!
//! `Session` is `Send` but not `Sync`, so a session is owned by exactly one
//! thread while checked out. Sessions are opened lazily up to `max`; a caller
//! that finds all of them busy waits on a condition variable, bounded by
//! [`CHECKOUT_TIMEOUT`] so an HSM that hangs turns into a retryable error
//! instead of a pile of stuck blocking threads. The pool also remembers
//! which slot and module generation its sessions belong to: after a
//! re-initialise its old sessions are abandoned, never closed.

use std::ops::Deref;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use super::error::Trouble;
use super::recovery::{
    Admission, M_ERRORS, M_OP_DURATION, M_POOL_BUSY, M_POOL_MAX, M_POOL_WAIT, M_RECOVERIES, Op,
};
use super::{Hsm, HsmError, HsmResult, Live, abandon};

const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct Pool {
    state: Mutex<PoolState>,
    available: Condvar,
}

struct PoolState {
    idle: Vec<Session>,
    /// Sessions checked out right now (each counts against `max`).
    busy: usize,
    max: usize,
    /// The module generation of `idle` and `slot`.
    generation: u64,
    /// `None` while the token has not been found again after a
    /// re-initialise.
    slot: Option<Slot>,
}

impl Pool {
    pub(super) fn new(max: usize) -> Self {
        let max = max.max(1);
        metrics::gauge!(M_POOL_MAX).set(max as f64);
        metrics::gauge!(M_POOL_BUSY).set(0.0);
        Pool {
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                busy: 0,
                max,
                generation: 0,
                slot: None,
            }),
            available: Condvar::new(),
        }
    }

    fn lock(&self) -> HsmResult<MutexGuard<'_, PoolState>> {
        self.state
            .lock()
            .map_err(|_| super::lock_poisoned("session pool"))
    }

    pub(super) fn generation(&self) -> u64 {
        self.lock().map(|s| s.generation).unwrap_or(u64::MAX)
    }

    /// The token's slot, if the pool is connected in `generation`.
    pub(super) fn slot(&self, generation: u64) -> HsmResult<Slot> {
        let state = self.lock()?;
        match state.slot {
            Some(slot) if state.generation == generation => Ok(slot),
            _ => Err(HsmError::Trouble(
                Trouble::Token,
                "not connected to the token in this module generation".into(),
            )),
        }
    }

    pub(super) fn connect(&self, generation: u64, slot: Slot) {
        if let Ok(mut state) = self.lock() {
            state.generation = generation;
            state.slot = Some(slot);
        }
    }

    pub(super) fn disconnect(&self, generation: u64) {
        if let Ok(mut state) = self.lock() {
            state.generation = generation;
            state.slot = None;
        }
    }

    /// Empties the pool: sessions of `current` are closed, older ones
    /// abandoned.
    pub(super) fn drain(&self, current: Option<u64>) {
        let (idle, generation) = match self.lock() {
            Ok(mut state) => (std::mem::take(&mut state.idle), state.generation),
            Err(_) => return,
        };
        if Some(generation) == current {
            // Closed outside the lock: C_CloseSession may be slow on a
            // network HSM.
            drop(idle);
        } else {
            idle.into_iter().for_each(abandon);
        }
    }
}

/// A checked-out session. Goes back to the pool when dropped (also during a
/// panic), unless `keep` was cleared because it saw session trouble.
struct PooledSession<'a> {
    pool: &'a Pool,
    session: Option<Session>,
    keep: bool,
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        let session = self.session.take().filter(|_| self.keep);
        let mut returned = None;
        match self.pool.state.lock() {
            Ok(mut state) => {
                state.busy = state.busy.saturating_sub(1);
                metrics::gauge!(M_POOL_BUSY).set(state.busy as f64);
                if let Some(s) = session {
                    state.idle.push(s);
                }
            }
            Err(_) => returned = session,
        }
        drop(returned);
        self.pool.available.notify_one();
    }
}

/// What an operation sees: its session (by `Deref`), plus what it needs to
/// cache object handles and to ask after the token.
pub(crate) struct Conn<'a> {
    session: &'a Session,
    /// Module generation the session belongs to (see [`super::HandleCache`]).
    pub(super) generation: u64,
    ctx: &'a Pkcs11,
    slot: Slot,
}

impl Deref for Conn<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session
    }
}

impl Conn<'_> {
    /// `C_GetTokenInfo`: fails when the token is gone even though sessions
    /// still look fine.
    pub(super) fn token_info(&self) -> HsmResult<()> {
        self.ctx.get_token_info(self.slot)?;
        Ok(())
    }
}

/// Reopens a probe's breaker if the probe panics, so the next one can run.
struct Unstick<'a>(&'a super::recovery::Breaker);

impl Drop for Unstick<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed(Trouble::Token);
        }
    }
}

impl Hsm {
    fn checkout<'p>(&'p self, live: &Live) -> HsmResult<(PooledSession<'p>, Slot)> {
        let pool = &self.inner.pool;
        let started = Instant::now();
        let deadline = started + CHECKOUT_TIMEOUT;
        let mut state = pool.lock()?;
        let slot = match state.slot {
            Some(slot) if state.generation == live.generation => slot,
            _ => {
                return Err(HsmError::Trouble(
                    Trouble::Token,
                    "the module was re-initialised or the token is not found yet".into(),
                ));
            }
        };
        while state.busy >= state.max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HsmError::unavailable(
                    format!(
                        "all {} HSM sessions busy for {}s",
                        state.max,
                        CHECKOUT_TIMEOUT.as_secs()
                    ),
                    Duration::from_secs(1),
                ));
            }
            state = pool
                .available
                .wait_timeout(state, left)
                .map_err(|_| super::lock_poisoned("session pool"))?
                .0;
        }
        state.busy += 1;
        metrics::gauge!(M_POOL_BUSY).set(state.busy as f64);
        let idle = state.idle.pop();
        drop(state);
        metrics::histogram!(M_POOL_WAIT).record(started.elapsed().as_secs_f64() * 1e3);
        // From here the guard owns the slot: an error below releases it.
        let mut guard = PooledSession {
            pool,
            session: idle,
            keep: true,
        };
        if guard.session.is_none() {
            guard.session = Some(live.ctx.open_rw_session(slot)?);
        }
        Ok((guard, slot))
    }

    /// One try of `f` on a pooled session. A session that saw session
    /// trouble is not put back.
    fn attempt<T>(&self, op: Op, f: &mut impl FnMut(&Conn<'_>) -> HsmResult<T>) -> HsmResult<T> {
        let live = self.live()?;
        let (mut pooled, slot) = self.checkout(&live)?;
        let Some(session) = pooled.session.as_ref() else {
            return Err(HsmError::Pkcs11("pooled session missing".into()));
        };
        let conn = Conn {
            session,
            generation: live.generation,
            ctx: &live.ctx,
            slot,
        };
        // Taken after the checkout: nobody waits for a session while
        // holding it. A panic inside `f` poisons nothing it guards.
        let objects = &self.inner.module.objects;
        let result = if op.changes_token_objects() {
            let _alone = objects.write().unwrap_or_else(PoisonError::into_inner);
            f(&conn)
        } else {
            let _shared = objects.read().unwrap_or_else(PoisonError::into_inner);
            f(&conn)
        };
        if matches!(result, Err(HsmError::Trouble(..))) {
            pooled.keep = false;
        }
        // The session goes back before the module lock is released.
        drop(pooled);
        drop(live);
        result
    }

    /// The trouble behind a failed attempt, if any. An empty find or an
    /// unclassified failure is checked against the token: SoftHSM answers
    /// a vanished token with empty finds and general errors.
    fn trouble_in<T>(&self, result: &HsmResult<T>) -> Option<(Trouble, String)> {
        match result {
            Err(HsmError::Trouble(t, detail)) => Some((*t, detail.clone())),
            Err(e @ (HsmError::KeyNotFound | HsmError::Pkcs11(_))) if !self.token_answers() => {
                Some((Trouble::Token, format!("{e}; C_GetTokenInfo fails")))
            }
            _ => None,
        }
    }

    /// Runs the cure for `trouble`.
    fn recover(&self, trouble: Trouble) -> HsmResult<()> {
        match trouble {
            Trouble::Session => {
                let current = self.live()?.generation;
                self.inner.pool.drain(Some(current));
            }
            Trouble::Login => {
                let current = self.live()?.generation;
                self.inner.pool.drain(Some(current));
                match self.relogin() {
                    // The login needs a token: escalate.
                    Err(HsmError::Trouble(Trouble::Token, _)) => {
                        return self.recover(Trouble::Token);
                    }
                    other => other?,
                }
            }
            Trouble::Token => self.reinitialise()?,
        }
        if trouble != Trouble::Token {
            metrics::counter!(M_RECOVERIES, "kind" => trouble.as_str()).increment(1);
        }
        Ok(())
    }

    /// Runs `f` on a pooled session, behind the circuit breaker. Trouble
    /// (see [`Trouble`]) is met by its recovery and one retry; what
    /// survives that counts against the breaker and is returned as
    /// [`HsmError::Unavailable`].
    ///
    /// `f` may run twice, so it must be safe to repeat: at worst a retried
    /// key generation leaves an orphan object that nothing references.
    pub(super) fn with_session<T>(
        &self,
        op: Op,
        mut f: impl FnMut(&Conn<'_>) -> HsmResult<T>,
    ) -> HsmResult<T> {
        let started = Instant::now();
        let result = self.guarded(op, &mut f);
        metrics::histogram!(M_OP_DURATION, "op" => op.as_str())
            .record(started.elapsed().as_secs_f64() * 1e3);
        result
    }

    fn guarded<T>(&self, op: Op, f: &mut impl FnMut(&Conn<'_>) -> HsmResult<T>) -> HsmResult<T> {
        let breaker = &self.inner.breaker;
        let admission = match breaker.admit() {
            Ok(a) => a,
            Err(refused) => {
                metrics::counter!(M_ERRORS, "op" => op.as_str(), "kind" => "circuit_open")
                    .increment(1);
                return Err(refused);
            }
        };
        let _unstick = matches!(admission, Admission::Probe(_)).then_some(Unstick(breaker));
        if let Admission::Probe(pending) = admission {
            tracing::info!(recovery = pending.as_str(), "HSM probe: trying to recover");
            if let Err(e) = self.recover(pending) {
                tracing::warn!(error = %e, "HSM recovery failed");
                breaker.failed(pending);
                return Err(breaker.refusal());
            }
        }
        let result = self.attempt(op, f);
        let Some((trouble, detail)) = self.trouble_in(&result) else {
            if matches!(result, Err(HsmError::Pkcs11(_))) {
                metrics::counter!(M_ERRORS, "op" => op.as_str(), "kind" => "other").increment(1);
            }
            return self.settle(&admission, result);
        };
        metrics::counter!(M_ERRORS, "op" => op.as_str(), "kind" => trouble.as_str()).increment(1);
        tracing::warn!(op = op.as_str(), %detail, token = %self.inner.token_label,
            "PKCS#11 trouble; recovering ({}) and retrying once", trouble.as_str());
        let retried = self.recover(trouble).and_then(|()| {
            let again = self.attempt(op, f);
            match self.trouble_in(&again) {
                Some((t, d)) => Err(HsmError::Trouble(t, d)),
                None => Ok(again),
            }
        });
        match retried {
            Ok(result) => self.settle(&admission, result),
            // Also a recovery that failed outright (no token with the label
            // after re-initialising, C_Initialize refused).
            Err(e) => {
                let worst = match &e {
                    HsmError::Trouble(t, _) => trouble.max(*t),
                    _ => trouble,
                };
                tracing::warn!(op = op.as_str(), error = %e, "PKCS#11 trouble persists after recovery");
                breaker.failed(worst);
                Err(HsmError::unavailable(
                    worst.public_reason(),
                    breaker.retry_after().max(Duration::from_secs(1)),
                ))
            }
        }
    }

    /// Tells the breaker about an operation that reached the token.
    fn settle<T>(&self, admission: &Admission, result: HsmResult<T>) -> HsmResult<T> {
        match (&result, admission) {
            // A busy pool proves nothing about the token either way; a
            // probe that met one must leave room for the next probe.
            (Err(HsmError::Unavailable { .. }), Admission::Probe(t)) => {
                self.inner.breaker.failed(*t)
            }
            (Err(HsmError::Unavailable { .. }), Admission::Normal) => {}
            _ => self.inner.breaker.succeeded(),
        }
        result
    }
}
