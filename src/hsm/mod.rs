//! The HSM room: the only place that imports `cryptoki`.
//!
//! One PKCS#11 context per process and module; one long-lived *anchor*
//! session logged in as the user (PKCS#11 logins are per application, so
//! every other session of the process shares it); a bounded pool of further
//! sessions that blocking callers check out for one operation each. Session
//! trouble (closed or invalid handles, a lost login, a removed device) is
//! met by discarding the session, logging in again and retrying once.
//!
//! The rest of clm sees keys only as [`HsmKey`] (a [`Signer`]) and
//! [`SecretKeyRef`], never PKCS#11 types. Every operation here blocks; the
//! `async` wrappers move it onto tokio's blocking pool.

mod error;
mod keys;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

pub use error::HsmError;
pub use keys::{HsmKey, KeyAttributes, SecretKeyRef};

use crate::domain::Secret;

pub type HsmResult<T> = Result<T, HsmError>;

/// Contexts already initialised in this process, by module path: PKCS#11
/// allows one `C_Initialize` per process.
static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

fn context_for(module: &Path) -> HsmResult<Pkcs11> {
    let map = CONTEXTS.get_or_init(Mutex::default);
    let mut map = map
        .lock()
        .map_err(|_| HsmError::Pkcs11("context registry poisoned".into()))?;
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    let ctx =
        Pkcs11::new(module).map_err(|e| HsmError::Module(format!("{}: {e}", module.display())))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// A handle on one token. Cheap to clone.
#[derive(Clone)]
pub struct Hsm {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Pkcs11,
    slot: Slot,
    token_label: String,
    pin: Secret,
    anchor: Mutex<Option<Session>>,
    pool: Mutex<Pool>,
    available: Condvar,
}

struct Pool {
    idle: Vec<Session>,
    /// Sessions currently checked out.
    busy: usize,
    max: usize,
}

impl Hsm {
    /// Opens the token labelled `token_label` through `module` and logs in.
    pub fn open(
        module: &Path,
        token_label: &str,
        pin: &Secret,
        pool_size: usize,
    ) -> HsmResult<Hsm> {
        let ctx = context_for(module)?;
        let slot = ctx
            .get_slots_with_token()?
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|t| t.label().trim_end() == token_label)
            })
            .ok_or_else(|| HsmError::TokenNotFound(token_label.to_string()))?;
        let hsm = Hsm {
            inner: Arc::new(Inner {
                ctx,
                slot,
                token_label: token_label.to_string(),
                pin: pin.clone(),
                anchor: Mutex::new(None),
                pool: Mutex::new(Pool {
                    idle: Vec::new(),
                    busy: 0,
                    max: pool_size.max(1),
                }),
                available: Condvar::new(),
            }),
        };
        hsm.login()?;
        Ok(hsm)
    }

    pub fn token_label(&self) -> &str {
        &self.inner.token_label
    }

    /// (Re)creates the anchor session and logs it in.
    fn login(&self) -> HsmResult<()> {
        let mut anchor = self
            .inner
            .anchor
            .lock()
            .map_err(|_| HsmError::Pkcs11("anchor poisoned".into()))?;
        let session = self.inner.ctx.open_rw_session(self.inner.slot)?;
        let pin = AuthPin::new(self.inner.pin.expose().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired),
                _,
            )) => {
                return Err(HsmError::LoginFailed(format!("{rv:?}")));
            }
            Err(e) => return Err(e.into()),
        }
        *anchor = Some(session);
        Ok(())
    }

    /// Runs `op` on a pooled session. On session trouble the session is
    /// discarded, the login renewed and `op` retried once on a new session.
    pub(crate) fn with_session<T>(
        &self,
        mut op: impl FnMut(&Session) -> Result<T, CkError>,
    ) -> HsmResult<T> {
        let session = self.checkout()?;
        match op(&session) {
            Ok(v) => {
                self.checkin(Some(session));
                Ok(v)
            }
            Err(e) if error::is_session_trouble(&e) => {
                tracing::warn!(error = ?e, "PKCS#11 session trouble; reopening");
                drop(session);
                self.checkin(None);
                self.reset_idle();
                self.login()?;
                let session = self.checkout()?;
                let result = op(&session);
                self.checkin(result.is_ok().then_some(session));
                Ok(result?)
            }
            Err(e) => {
                self.checkin(Some(session));
                Err(e.into())
            }
        }
    }

    fn checkout(&self) -> HsmResult<Session> {
        let poisoned = || HsmError::Pkcs11("session pool poisoned".into());
        let mut pool = self.inner.pool.lock().map_err(|_| poisoned())?;
        while pool.busy >= pool.max {
            pool = self.inner.available.wait(pool).map_err(|_| poisoned())?;
        }
        pool.busy += 1;
        let idle = pool.idle.pop();
        drop(pool);
        match idle {
            Some(s) => Ok(s),
            None => self
                .inner
                .ctx
                .open_rw_session(self.inner.slot)
                .map_err(|e| {
                    self.checkin(None);
                    e.into()
                }),
        }
    }

    /// Returns a session (or just its slot in the pool when `None`).
    fn checkin(&self, session: Option<Session>) {
        if let Ok(mut pool) = self.inner.pool.lock() {
            pool.busy = pool.busy.saturating_sub(1);
            if let Some(s) = session {
                pool.idle.push(s);
            }
        }
        self.inner.available.notify_one();
    }

    fn reset_idle(&self) {
        if let Ok(mut pool) = self.inner.pool.lock() {
            pool.idle.clear();
        }
    }

    /// The token answers and our login is in place.
    pub fn health_check_blocking(&self) -> HsmResult<()> {
        self.inner.ctx.get_token_info(self.inner.slot)?;
        let state = self.with_session(|s| s.get_session_info().map(|i| i.session_state()))?;
        if state == SessionState::RwUser {
            Ok(())
        } else {
            Err(HsmError::Unavailable(format!(
                "session state is {state:?}, not logged in"
            )))
        }
    }

    /// Runs a blocking HSM operation on tokio's blocking pool.
    async fn run<T, F>(&self, f: F) -> HsmResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Hsm) -> HsmResult<T> + Send + 'static,
    {
        let hsm = self.clone();
        tokio::task::spawn_blocking(move || f(&hsm))
            .await
            .map_err(|e| HsmError::Pkcs11(format!("HSM task failed: {e}")))?
    }

    pub async fn health_check(&self) -> HsmResult<()> {
        self.run(|h| h.health_check_blocking()).await
    }

    /// RFC 7512 URI of a token object.
    pub fn pkcs11_uri(&self, label: &str, cka_id: &[u8]) -> String {
        let pct = |s: &str| -> String {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        };
        let id: String = cka_id.iter().map(|b| format!("%{b:02X}")).collect();
        format!(
            "pkcs11:token={};object={};id={id}",
            pct(&self.inner.token_label),
            pct(label)
        )
    }
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("token", &self.inner.token_label)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! One real SoftHSM token per test process.

    use std::sync::OnceLock;

    use super::Hsm;
    use crate::domain::Secret;

    pub(crate) struct Fixture {
        pub hsm: Hsm,
        pub pin: String,
    }

    static FIXTURE: OnceLock<Fixture> = OnceLock::new();

    pub(crate) fn fixture() -> &'static Fixture {
        FIXTURE.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("clm-hsm-test-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm/init-token.sh");
            let status = std::process::Command::new("bash")
                .arg(script)
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("run init-token.sh");
            assert!(status.success(), "init-token.sh failed");
            let conf = dir.join("softhsm/softhsm2.conf");
            // SAFETY: runs once, before this process initialises the PKCS#11
            // library (the only reader of SOFTHSM2_CONF); other test threads
            // do not read or write this variable.
            #[allow(unsafe_code)]
            unsafe {
                std::env::set_var("SOFTHSM2_CONF", &conf);
            }
            let pin = std::fs::read_to_string(dir.join("softhsm/user.pin"))
                .expect("pin")
                .trim()
                .to_string();
            let hsm = Hsm::open(
                std::path::Path::new("/usr/lib/softhsm/libsofthsm2.so"),
                "clm",
                &Secret::new(pin.clone()),
                4,
            )
            .expect("open test token");
            Fixture { hsm, pin }
        })
    }
}
