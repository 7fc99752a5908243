//! The session pool: a bounded set of PKCS#11 sessions that blocking callers
//! check out for one operation each, and the reopen-and-retry-once policy
//! for session trouble.
//!
//! `Session` is `Send` but not `Sync`, so a session is owned by exactly one
//! thread while checked out. Sessions are opened lazily up to `max`; a caller
//! that finds all of them busy waits on a condition variable, bounded by
//! [`CHECKOUT_TIMEOUT`] so an HSM that hangs turns into a retryable error
//! instead of a pile of stuck blocking threads.

use std::ops::Deref;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use cryptoki::session::Session;

use super::{Hsm, HsmError, HsmResult};

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
}

impl Pool {
    pub(super) fn new(max: usize) -> Self {
        Pool {
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                busy: 0,
                max: max.max(1),
            }),
            available: Condvar::new(),
        }
    }

    /// Closes every idle session: after session trouble they are suspect.
    pub(super) fn clear_idle(&self) {
        let idle = match self.state.lock() {
            Ok(mut state) => std::mem::take(&mut state.idle),
            Err(_) => return,
        };
        // Closed outside the lock: C_CloseSession may be slow on a network HSM.
        drop(idle);
    }
}

fn poisoned() -> HsmError {
    HsmError::Pkcs11("session pool lock poisoned".into())
}

/// A checked-out session. Goes back to the pool when dropped (also during a
/// panic), unless [`PooledSession::discard`] marked it as broken.
pub(super) struct PooledSession<'a> {
    pool: &'a Pool,
    session: Option<Session>,
    keep: bool,
}

impl PooledSession<'_> {
    fn discard(&mut self) {
        self.keep = false;
    }
}

impl Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Only `drop` takes the session out.
        match &self.session {
            Some(s) => s,
            None => unreachable!("pooled session used after release"),
        }
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        let session = self.session.take().filter(|_| self.keep);
        let mut returned = None;
        match self.pool.state.lock() {
            Ok(mut state) => {
                state.busy = state.busy.saturating_sub(1);
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

impl Hsm {
    fn checkout(&self) -> HsmResult<PooledSession<'_>> {
        let pool = &self.inner.pool;
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        let mut state = pool.state.lock().map_err(|_| poisoned())?;
        while state.busy >= state.max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HsmError::Unavailable(format!(
                    "all {} HSM sessions busy for {}s",
                    state.max,
                    CHECKOUT_TIMEOUT.as_secs()
                )));
            }
            state = pool
                .available
                .wait_timeout(state, left)
                .map_err(|_| poisoned())?
                .0;
        }
        state.busy += 1;
        let idle = state.idle.pop();
        drop(state);
        // From here the guard owns the slot: an error below releases it.
        let mut guard = PooledSession {
            pool,
            session: idle,
            keep: true,
        };
        if guard.session.is_none() {
            guard.session = Some(self.inner.ctx.open_rw_session(self.inner.slot)?);
        }
        Ok(guard)
    }

    /// One try of `op`; `Err` is checkout trouble (never retried: a busy or
    /// unreachable pool is not cured by reopening), `Ok` carries `op`'s result.
    fn attempt<T>(&self, op: &mut impl FnMut(&Session) -> HsmResult<T>) -> HsmResult<HsmResult<T>> {
        let mut session = self.checkout()?;
        let result = op(&session);
        if matches!(result, Err(HsmError::Unavailable(_))) {
            session.discard();
        }
        Ok(result)
    }

    /// Runs `op` on a pooled session. Session trouble (which
    /// `From<cryptoki::Error>` maps to [`HsmError::Unavailable`]) discards the
    /// session and the idle ones, renews the login and retries `op` once on a
    /// fresh session; a second failure is returned as it is.
    ///
    /// `op` may run twice, so it must be safe to repeat: at worst a retried
    /// key generation leaves an orphan object that nothing references.
    pub(super) fn with_session<T>(
        &self,
        mut op: impl FnMut(&Session) -> HsmResult<T>,
    ) -> HsmResult<T> {
        match self.attempt(&mut op)? {
            Err(HsmError::Unavailable(reason)) => {
                tracing::warn!(%reason, token = %self.inner.token_label,
                    "PKCS#11 session trouble; reopening and retrying once");
                self.inner.pool.clear_idle();
                self.login()?;
                self.attempt(&mut op)?
            }
            other => other,
        }
    }
}
