//! The HSM room: the only place that imports `cryptoki`.
//!
//! One PKCS#11 context per process and module; one long-lived *anchor*
//! session logged in as the user (PKCS#11 logins belong to the application,
//! so every other session of the process shares it); a bounded pool of
//! further sessions that blocking callers check out for one operation each
//! (`pool`).
//!
//! Recovery (`pool`, `recovery`): every PKCS#11 failure is classified by the
//! cure it needs ([`error::Trouble`]): a lost session is replaced, a lost
//! login is renewed, a lost token or library is met by re-initialising the
//! module (`C_Finalize`, `C_Initialize`, find the token by label again, log
//! in again), and the operation is retried once. Trouble that survives
//! its recovery feeds a circuit breaker that, once open, fails operations
//! fast (one atomic load) and lets one probe through per backoff period.
//!
//! What SoftHSM 2.6.1 does when its token directory disappears under a
//! running process (measured by renaming `tokens/<uuid>` or the whole
//! `tokens` directory away and back while sessions are open):
//! - sessions stay open and still report `CKS_RW_USER_FUNCTIONS`;
//!   `C_Login` answers `CKR_USER_ALREADY_LOGGED_IN`;
//! - `C_GetTokenInfo` answers `CKR_GENERAL_ERROR`, while the slot still
//!   reports a token present;
//! - `C_Sign` on a cached object handle answers `CKR_OBJECT_HANDLE_INVALID`
//!   and `C_FindObjects` finds *nothing* — indistinguishable from a deleted
//!   key unless `C_GetTokenInfo` is asked, which is why a miss is checked
//!   against the token before it is reported as [`HsmError::KeyNotFound`];
//! - when the directory comes back, nothing changes: the token stays
//!   broken for this process until `C_Finalize` + `C_Initialize` (which
//!   re-reads `SOFTHSM2_CONF` and the token directory). After that the slot
//!   id is the same (SoftHSM derives it from the token serial), the login
//!   must be redone, and every object handle is different: the old numbers
//!   are invalid or, worse, name *other* objects. Cached handles therefore
//!   carry the module generation they were found in ([`HandleCache`]) and
//!   are re-found by `CKA_ID` in a new generation;
//! - with the whole `tokens` directory gone even `C_Initialize` fails, so
//!   a re-initialise may leave the module uninitialised until the next
//!   probe.
//!
//! More in `docs/hsm.md`.
//!
//! Owned here: key pairs for CAs and their signatures (`keys`), the AES
//! key-encryption key and the HMAC key (`secret`), wrapping end-entity keys
//! under the KEK (`wrap`). The rest of clm sees keys only as [`HsmKey`] (a
//! [`crate::domain::Signer`]) and [`SecretKeyRef`], never PKCS#11 types.
//! Every `*_blocking` method blocks; the `async` twins move it onto tokio's
//! blocking pool so no runtime worker waits on the token, except the work
//! done many times a second (issuance, audit MACs, OCSP signatures), which
//! runs on the token's own threads (`workers`, [`Hsm::run_on_token_threads`]).

mod audit;
mod error;
mod keys;
mod pool;
mod recovery;
mod secret;
mod workers;
mod wrap;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};

pub use audit::AuditKeyring;
pub use error::{HsmError, Trouble};
pub use keys::HsmKey;
pub use secret::{KeyAttributes, SecretKeyRef, SecretKind};

use crate::domain::Secret;
use recovery::{Breaker, M_RECOVERIES, Op};

pub type HsmResult<T> = Result<T, HsmError>;

/// One loaded library, shared by every [`Hsm`] of the process that uses it.
struct Module {
    path: PathBuf,
    /// Operations hold it shared; re-initialising holds it exclusively, so
    /// that `C_Finalize` never runs while another thread is inside a call.
    live: RwLock<Live>,
    /// Digest of the PIN each slot was logged in with. Needed because
    /// `C_Login` on a token this process is already logged in to answers
    /// `CKR_USER_ALREADY_LOGGED_IN` without looking at the PIN: a second
    /// `Hsm::open` with a wrong PIN must still fail.
    logins: Mutex<HashMap<Slot, [u8; 32]>>,
    /// Held exclusively by operations that add or remove token objects and
    /// shared by all others (see `Op::changes_token_objects`). It guards no
    /// data, only timing.
    objects: RwLock<()>,
}

struct Live {
    ctx: Pkcs11,
    /// Bumped by every re-initialise. Sessions and object handles of an
    /// older generation mean nothing (their numbers may now name other
    /// sessions and objects) and are never used or closed.
    generation: u64,
    /// `ctx` was finalized and initialising it again failed.
    finalized: bool,
}

/// `C_Initialize` may run once per process and library (until
/// `C_Finalize`), so modules are shared by (canonical) path.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();

fn lock_poisoned(what: &str) -> HsmError {
    HsmError::Pkcs11(format!("{what} lock poisoned"))
}

fn load(path: &Path) -> HsmResult<Pkcs11> {
    let ctx =
        Pkcs11::new(path).map_err(|e| HsmError::Module(format!("{}: {e}", path.display())))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| HsmError::Module(format!("{}: {e}", path.display())))?;
    Ok(ctx)
}

fn module_for(path: &Path) -> HsmResult<Arc<Module>> {
    // Two spellings of one library would dlopen the same code and fail the
    // second initialise.
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut map = MODULES
        .get_or_init(Mutex::default)
        .lock()
        .map_err(|_| lock_poisoned("PKCS#11 module registry"))?;
    if let Some(m) = map.get(&key) {
        return Ok(m.clone());
    }
    let module = Arc::new(Module {
        live: RwLock::new(Live {
            ctx: load(&key)?,
            generation: 0,
            finalized: false,
        }),
        path: key.clone(),
        logins: Mutex::default(),
        objects: RwLock::default(),
    });
    map.insert(key, module.clone());
    Ok(module)
}

fn pin_digest(pin: &Secret) -> [u8; 32] {
    Sha256::digest(pin.expose().as_bytes()).into()
}

/// The slot holding the token labelled `label`.
fn find_slot(ctx: &Pkcs11, label: &str) -> HsmResult<Slot> {
    ctx.get_slots_with_token()?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|t| t.label().trim_end() == label)
        })
        .ok_or_else(|| HsmError::TokenNotFound(label.to_string()))
}

/// A session of an older module generation: the library no longer knows
/// it, and closing its number could close somebody else's new session.
fn abandon(session: Session) {
    std::mem::forget(session);
}

/// A handle on one logged-in token. Cheap to clone; the sessions close when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Hsm {
    inner: Arc<Inner>,
}

struct Inner {
    module: Arc<Module>,
    token_label: String,
    pin: Secret,
    /// Holds the login: PKCS#11 logs the application out when its last
    /// session closes, and pooled sessions come and go. Tagged with the
    /// generation it was opened in.
    anchor: Mutex<Option<(u64, Session)>>,
    /// Bumped whenever the anchor session is replaced: the session-object
    /// copies it held ([`WorkingCopy`]) are gone with it.
    anchor_epoch: std::sync::atomic::AtomicU64,
    pool: pool::Pool,
    breaker: Breaker,
    /// One thread per pooled session, for the token work done many times a
    /// second.
    workers: workers::Workers,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let current = self.module.live.read().map(|l| l.generation).ok();
        let anchor = self.anchor.get_mut().ok().and_then(Option::take);
        if let Some((generation, session)) = anchor
            && Some(generation) != current
        {
            abandon(session);
        }
        self.pool.drain(current);
    }
}

/// Why the token is unavailable, for readiness: no return codes.
#[derive(Clone, Debug)]
pub struct HsmStatus {
    pub reason: String,
    pub retry_after: Duration,
}

impl Hsm {
    /// Opens the token labelled `token_label` through the PKCS#11 library
    /// `module` and logs in as the user with `pin`. Blocking.
    ///
    /// `pool_size` bounds the sessions used for operations (the anchor
    /// session comes on top) and is the number of the token's threads; 0 is
    /// taken as 1.
    pub fn open(
        module: &Path,
        token_label: &str,
        pin: &Secret,
        pool_size: usize,
    ) -> HsmResult<Hsm> {
        let module = module_for(module)?;
        let hsm = Hsm {
            inner: Arc::new(Inner {
                module,
                token_label: token_label.to_string(),
                pin: pin.clone(),
                anchor: Mutex::new(None),
                anchor_epoch: std::sync::atomic::AtomicU64::new(0),
                pool: pool::Pool::new(pool_size),
                breaker: Breaker::new(),
                workers: workers::Workers::start(pool_size)?,
            }),
        };
        let live = hsm.live()?;
        let slot = find_slot(&live.ctx, token_label)?;
        hsm.inner.pool.connect(live.generation, slot);
        hsm.login(&live, slot)?;
        drop(live);
        Ok(hsm)
    }

    pub fn token_label(&self) -> &str {
        &self.inner.token_label
    }

    fn live(&self) -> HsmResult<RwLockReadGuard<'_, Live>> {
        self.inner
            .module
            .live
            .read()
            .map_err(|_| lock_poisoned("PKCS#11 module"))
    }

    /// Opens a new anchor session, logs it in and puts it in place of the
    /// old one (which is closed only after the new one holds the login).
    fn login(&self, live: &Live, slot: Slot) -> HsmResult<()> {
        let mut anchor = self
            .inner
            .anchor
            .lock()
            .map_err(|_| lock_poisoned("anchor session"))?;
        let session = live.ctx.open_rw_session(slot)?;
        let pin = AuthPin::new(self.inner.pin.expose().into());
        let digest = pin_digest(&self.inner.pin);
        let mut logins = self
            .inner
            .module
            .logins
            .lock()
            .map_err(|_| lock_poisoned("login registry"))?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {
                logins.insert(slot, digest);
            }
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                if logins.get(&slot).is_some_and(|k| *k != digest) {
                    return Err(HsmError::LoginFailed(
                        "the process is logged in to this token with a different PIN".into(),
                    ));
                }
            }
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinLocked
                | RvError::PinExpired),
                _,
            )) => return Err(HsmError::LoginFailed(format!("C_Login: {rv:?}"))),
            Err(e) => return Err(e.into()),
        }
        drop(logins);
        self.inner
            .anchor_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Some((generation, old)) = anchor.replace((live.generation, session))
            && generation != live.generation
        {
            abandon(old);
        }
        Ok(())
    }

    #[cfg(test)]
    fn anchor_state(&self) -> HsmResult<SessionState> {
        let anchor = self
            .inner
            .anchor
            .lock()
            .map_err(|_| lock_poisoned("anchor session"))?;
        match anchor.as_ref() {
            Some((_, s)) => Ok(s.get_session_info()?.session_state()),
            None => Err(HsmError::Trouble(
                Trouble::Login,
                "no anchor session".into(),
            )),
        }
    }

    /// Renews the login on a new anchor session.
    fn relogin(&self) -> HsmResult<()> {
        let live = self.live()?;
        let slot = self.inner.pool.slot(live.generation)?;
        self.login(&live, slot)
    }

    /// Re-initialises the module (unless another handle already did since
    /// this one connected), then finds the token by label again and logs
    /// in. Holds the module exclusively: no other call is under way.
    fn reinitialise(&self) -> HsmResult<()> {
        let mut live = self
            .inner
            .module
            .live
            .write()
            .map_err(|_| lock_poisoned("PKCS#11 module"))?;
        if self.inner.pool.generation() == live.generation {
            // Sessions are closed while the library still knows them.
            self.inner.pool.drain(Some(live.generation));
            if let Ok(mut anchor) = self.inner.anchor.lock()
                && let Some((generation, session)) = anchor.take()
                && generation != live.generation
            {
                abandon(session);
            }
            tracing::info!(
                generation = live.generation,
                "re-initialising the PKCS#11 module"
            );
            if !live.finalized
                && let Err(e) = live.ctx.clone().finalize()
            {
                tracing::warn!(error = %e, "C_Finalize failed; initialising anyway");
            }
            live.finalized = true;
            // SoftHSM refuses C_Initialize while its token directory is
            // gone; the next probe tries again.
            live.ctx = load(&self.inner.module.path)?;
            live.finalized = false;
            live.generation += 1;
            if let Ok(mut logins) = self.inner.module.logins.lock() {
                logins.clear();
            }
            metrics::counter!(M_RECOVERIES, "kind" => "reinitialise").increment(1);
            tracing::info!(
                generation = live.generation,
                "PKCS#11 module re-initialised"
            );
        }
        // Disconnected until the token is found: the next probe
        // re-initialises again (SoftHSM only sees a returned token after
        // C_Initialize).
        self.inner.pool.disconnect(live.generation);
        let slot = find_slot(&live.ctx, &self.inner.token_label)?;
        self.login(&live, slot)?;
        self.inner.pool.connect(live.generation, slot);
        Ok(())
    }

    /// Whether the token answers `C_GetTokenInfo`: the check that tells a
    /// missing object from a missing token (SoftHSM finds nothing when its
    /// token directory is gone).
    fn token_answers(&self) -> bool {
        let Ok(live) = self.live() else { return false };
        self.inner
            .pool
            .slot(live.generation)
            .is_ok_and(|slot| live.ctx.get_token_info(slot).is_ok())
    }

    /// `None` while the breaker lets operations through (also when a probe
    /// is due: the caller's operation may be it); otherwise why the token is
    /// unavailable and when the next recovery attempt is due. One atomic
    /// load when all is well.
    pub fn unavailable(&self) -> Option<HsmStatus> {
        if !self.inner.breaker.refuses() {
            return None;
        }
        match self.inner.breaker.refusal() {
            HsmError::Unavailable {
                reason,
                retry_after,
            } => Some(HsmStatus {
                reason,
                retry_after,
            }),
            _ => None,
        }
    }

    /// The token answers and the login is in place. Goes through the
    /// breaker like any operation, so readiness probes also drive recovery
    /// (a lost login is renewed, a lost token re-initialised).
    pub fn health_check_blocking(&self) -> HsmResult<()> {
        self.with_session(Op::Check, |c| {
            c.token_info()?;
            match c.get_session_info()?.session_state() {
                SessionState::RwUser => Ok(()),
                state => Err(HsmError::Trouble(
                    Trouble::Login,
                    format!("session is {state:?}, not logged in"),
                )),
            }
        })
    }

    pub async fn health_check(&self) -> HsmResult<()> {
        self.run(|h| h.health_check_blocking()).await
    }

    /// Runs `f`, blocking work that calls the token many times a second
    /// (signing certificates and OCSP responses, MACing audit entries), on
    /// the token's own threads ([`workers`]).
    pub async fn run_on_token_threads<T, F>(&self, f: F) -> HsmResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.inner.workers.run(f).await
    }

    /// Runs a blocking HSM operation on tokio's blocking pool.
    async fn run<T, F>(&self, f: F) -> HsmResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Hsm) -> HsmResult<T> + Send + 'static,
    {
        let hsm = self.clone();
        crate::logging::spawn_blocking_in_span(move || f(&hsm))
            .await
            .map_err(|e| HsmError::Pkcs11(format!("HSM task failed: {e}")))?
    }

    /// Ends this process's use of the token at shutdown: closes the idle
    /// pooled sessions and the anchor session (which logs out), then
    /// `C_Finalize` — cryptoki's `Drop` does not finalise. Call once, when
    /// nothing uses the HSM any more: every later operation fails.
    pub fn finalize(&self) -> HsmResult<()> {
        let mut live = self
            .inner
            .module
            .live
            .write()
            .map_err(|_| lock_poisoned("PKCS#11 module"))?;
        // Sessions are closed while the library still knows them.
        self.inner.pool.drain(Some(live.generation));
        let anchor = self
            .inner
            .anchor
            .lock()
            .map_err(|_| lock_poisoned("anchor session"))?
            .take();
        match anchor {
            Some((generation, session)) if generation == live.generation => drop(session),
            Some((_, session)) => abandon(session),
            None => {}
        }
        if live.finalized {
            return Ok(());
        }
        live.finalized = true;
        Ok(live.ctx.clone().finalize()?)
    }

    /// RFC 7512 URI naming an object of this token by label and `CKA_ID`,
    /// without a `type` (a key pair's two halves share the id).
    pub fn pkcs11_uri(&self, label: &str, cka_id: &[u8]) -> String {
        pkcs11_uri(&self.inner.token_label, label, cka_id, None)
    }
}

/// An object handle remembered together with the module generation it was
/// found in; shared by the clones of a key.
#[derive(Default)]
pub(crate) struct HandleCache(Mutex<Option<(u64, ObjectHandle)>>);

impl HandleCache {
    fn found(generation: u64, handle: ObjectHandle) -> Self {
        HandleCache(Mutex::new(Some((generation, handle))))
    }

    /// The handle, if it was found in `generation`.
    fn get(&self, generation: u64) -> Option<ObjectHandle> {
        match *self.0.lock().ok()? {
            Some((g, h)) if g == generation => Some(h),
            _ => None,
        }
    }

    fn set(&self, generation: u64, handle: ObjectHandle) {
        if let Ok(mut c) = self.0.lock() {
            *c = Some((generation, handle));
        }
    }

    /// The cached handle of `generation`, else the object of `class` with
    /// `cka_id` found now (and remembered).
    fn get_or_find(
        &self,
        session: &Session,
        generation: u64,
        class: ObjectClass,
        cka_id: &[u8],
    ) -> HsmResult<ObjectHandle> {
        if let Some(h) = self.get(generation) {
            return Ok(h);
        }
        let h = find_one(session, class, cka_id)?;
        self.set(generation, h);
        Ok(h)
    }
}

/// A session-object copy of a token key, made on the anchor session, for
/// keys used thousands of times a second (the audit MAC key).
///
/// SoftHSM checks a token object's files (open, lock, read, close) on every
/// use; on a session object it does not, so HMAC runs at about 150 000/s
/// instead of 44 000/s, and two threads no longer slow each other down
/// (docs/performance.md). The copy is created with `C_CopyObject`
/// (`CKA_TOKEN` false; sensitive and non-extractable stay as they are), so
/// the key never leaves the token. It lives as long as the anchor session:
/// a new anchor (relogin) or a re-initialise makes a new copy.
#[derive(Default)]
pub(crate) struct WorkingCopy(Mutex<Option<(u64, u64, ObjectHandle)>>);

impl Hsm {
    /// The working copy of the token object of `class` with `cka_id`, made
    /// now if this anchor session has none.
    pub(super) fn working_copy(
        &self,
        conn: &pool::Conn<'_>,
        copy: &WorkingCopy,
        class: ObjectClass,
        cka_id: &[u8],
    ) -> HsmResult<ObjectHandle> {
        use std::sync::atomic::Ordering;
        let epoch = self.inner.anchor_epoch.load(Ordering::Acquire);
        if let Ok(held) = copy.0.lock()
            && let Some((generation, e, handle)) = *held
            && generation == conn.generation
            && e == epoch
        {
            return Ok(handle);
        }
        let anchor = self
            .inner
            .anchor
            .lock()
            .map_err(|_| lock_poisoned("anchor session"))?;
        let Some((generation, session)) = anchor.as_ref() else {
            return Err(HsmError::Trouble(
                Trouble::Login,
                "no anchor session".into(),
            ));
        };
        if *generation != conn.generation {
            return Err(HsmError::Trouble(
                Trouble::Token,
                "the anchor session belongs to an older module generation".into(),
            ));
        }
        let original = find_one(session, class, cka_id)?;
        // Under an id of its own, so that no lookup by the key's id (which
        // must see the token object, e.g. `clm hsm check`) finds the copy.
        let mut copy_id = cka_id.to_vec();
        copy_id.extend_from_slice(b"/working-copy");
        let handle =
            session.copy_object(original, &[Attribute::Token(false), Attribute::Id(copy_id)])?;
        // Read under the anchor lock, which every replacement of the anchor
        // holds: the epoch is the copy's.
        let epoch = self.inner.anchor_epoch.load(Ordering::Acquire);
        if let Ok(mut held) = copy.0.lock() {
            *held = Some((conn.generation, epoch, handle));
        }
        Ok(handle)
    }

    /// Forgets `copy` (its handle was refused): the next use copies anew.
    pub(super) fn drop_working_copy(&self, copy: &WorkingCopy) {
        if let Ok(mut held) = copy.0.lock() {
            *held = None;
        }
    }
}

/// A fresh random `CKA_ID` (16 bytes, the same on both halves of a pair).
fn new_cka_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
    id
}

/// The first object of `class` with `cka_id`. Labels are not unique, ids
/// are ours, so this is the only lookup clm uses.
///
/// A miss is double-checked against the login: `C_FindObjects` silently
/// hides private objects from a session that lost its login, and that must
/// surface as session trouble (retried after logging in), not as a missing key.
fn find_one(session: &Session, class: ObjectClass, cka_id: &[u8]) -> HsmResult<ObjectHandle> {
    let template = [Attribute::Class(class), Attribute::Id(cka_id.to_vec())];
    if let Some(found) = session.find_objects(&template)?.into_iter().next() {
        return Ok(found);
    }
    match session.get_session_info()?.session_state() {
        SessionState::RwUser | SessionState::RoUser => Err(HsmError::KeyNotFound),
        state => Err(HsmError::Trouble(
            Trouble::Login,
            format!("session not logged in ({state:?})"),
        )),
    }
}

/// RFC 7512 `pkcs11:` URI. Everything outside the unreserved set is
/// percent-encoded; the id always is, byte by byte.
fn pkcs11_uri(token: &str, label: &str, cka_id: &[u8], object_type: Option<&str>) -> String {
    let pct = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let id: String = cka_id.iter().map(|b| format!("%{b:02X}")).collect();
    let mut uri = format!("pkcs11:token={};object={};id={id}", pct(token), pct(label));
    if let Some(t) = object_type {
        uri.push_str(";type=");
        uri.push_str(t);
    }
    uri
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
    //! One real SoftHSM token directory per test process, made by
    //! `softhsm/init-token.sh` exactly as developers make theirs.

    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    use super::Hsm;
    use crate::domain::Secret;

    pub(crate) const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
    pub(crate) const LABEL: &str = "clm";
    /// A second token of the same directory that no test logs in to with its
    /// right PIN, so the token itself judges a wrong one. Extra labels must
    /// not start with `clm`: `pkcs11-tool --token-label` matches prefixes.
    pub(crate) const SPARE_LABEL: &str = "spare-token";
    /// A third token for tests that log the application out: logins are
    /// per token, so the shared `clm` login of parallel tests is untouched.
    pub(crate) const RELOGIN_LABEL: &str = "relogin-token";
    pub(crate) const RELOGIN_PIN: &str = "relogin-user-pin";

    pub(crate) struct Fixture {
        pub hsm: Hsm,
        pub pin: String,
        /// `SOFTHSM2_CONF` of the token directory, for outside tools.
        pub conf: PathBuf,
        /// Keeps the token directory alive for the whole test process.
        _dir: tempfile::TempDir,
    }

    static FIXTURE: OnceLock<Fixture> = OnceLock::new();

    const DIR_PREFIX: &str = "clm-hsm-test-";

    /// The fixture lives in a static, which is never dropped, so each test
    /// process leaves its token directory behind (nextest runs every test
    /// in a process of its own). The next one removes those whose process
    /// has ended: the directory names carry the pid.
    fn remove_dirs_of_ended_tests() {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(DIR_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    pub(crate) fn fixture() -> &'static Fixture {
        FIXTURE.get_or_init(|| {
            remove_dirs_of_ended_tests();
            let dir = tempfile::Builder::new()
                .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
                .tempdir()
                .expect("temp dir");
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm/init-token.sh");
            let status = Command::new("bash")
                .arg(script)
                .arg(dir.path())
                .stdout(Stdio::null())
                .status()
                .expect("run init-token.sh");
            assert!(status.success(), "init-token.sh failed");
            let conf = dir.path().join("softhsm/softhsm2.conf");
            for (label, pin) in [
                (SPARE_LABEL, "spare-user-pin"),
                (RELOGIN_LABEL, RELOGIN_PIN),
            ] {
                let status = Command::new("softhsm2-util")
                    .args(["--init-token", "--free", "--label", label])
                    .args(["--so-pin", "test-so-pin", "--pin", pin])
                    .env("SOFTHSM2_CONF", &conf)
                    .stdout(Stdio::null())
                    .status()
                    .expect("run softhsm2-util");
                assert!(status.success(), "init of token {label} failed");
            }
            // SAFETY: runs once, inside this OnceLock, before this process
            // initialises the PKCS#11 library (the only reader of
            // SOFTHSM2_CONF, read at C_Initialize); no test reads or writes
            // the environment concurrently.
            #[allow(unsafe_code)]
            unsafe {
                std::env::set_var("SOFTHSM2_CONF", &conf);
            }
            let pin = std::fs::read_to_string(dir.path().join("softhsm/user.pin"))
                .expect("user.pin")
                .trim()
                .to_string();
            let hsm = Hsm::open(Path::new(MODULE), LABEL, &Secret::new(pin.clone()), 4)
                .expect("open test token");
            Fixture {
                hsm,
                pin,
                conf,
                _dir: dir,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::testing::{LABEL, MODULE, RELOGIN_LABEL, RELOGIN_PIN, SPARE_LABEL, fixture};
    use super::*;
    use crate::domain::{KeyAlgorithm, Signer};

    #[test]
    fn a_wrong_pin_is_refused_and_not_repeated() {
        fixture();
        let wrong = "0123-wrong-pin-4567";
        let err = Hsm::open(Path::new(MODULE), SPARE_LABEL, &Secret::new(wrong), 1)
            .expect_err("wrong PIN must not log in");
        assert!(matches!(err, HsmError::LoginFailed(_)), "{err:?}");
        assert!(!err.to_string().contains(wrong), "{err}");
        assert!(!format!("{err:?}").contains(wrong), "{err:?}");
    }

    #[test]
    fn a_wrong_pin_fails_even_while_the_process_is_logged_in() {
        let f = fixture();
        let wrong = format!("{}x", f.pin);
        let err = Hsm::open(Path::new(MODULE), LABEL, &Secret::new(wrong.clone()), 1)
            .expect_err("wrong PIN must not log in");
        assert!(matches!(err, HsmError::LoginFailed(_)), "{err:?}");
        assert!(!err.to_string().contains(&wrong));
        // The shared login survives the refused attempt.
        f.hsm.health_check_blocking().unwrap();
    }

    #[test]
    fn a_second_open_shares_the_context_and_login() {
        let f = fixture();
        let other = Hsm::open(Path::new(MODULE), LABEL, &Secret::new(f.pin.clone()), 2).unwrap();
        other.health_check_blocking().unwrap();
        drop(other);
        f.hsm.health_check_blocking().unwrap();
    }

    #[test]
    fn an_unknown_token_is_named() {
        let f = fixture();
        let missing = Hsm::open(
            Path::new(MODULE),
            "no-such-token",
            &Secret::new(f.pin.clone()),
            1,
        );
        assert!(matches!(missing, Err(HsmError::TokenNotFound(t)) if t == "no-such-token"));
    }

    #[test]
    fn a_lost_login_is_renewed_and_the_operation_retried() {
        fixture();
        let hsm = Hsm::open(
            Path::new(MODULE),
            RELOGIN_LABEL,
            &Secret::new(RELOGIN_PIN),
            2,
        )
        .unwrap();
        let key = hsm
            .generate_key_pair_blocking(KeyAlgorithm::EcdsaP256, "relogin")
            .unwrap();
        let mac = hsm.generate_mac_key_blocking("relogin").unwrap();
        let logout = |hsm: &Hsm| {
            hsm.with_session(Op::Check, |s| Ok(s.logout()?)).unwrap();
            assert_ne!(hsm.anchor_state().unwrap(), SessionState::RwUser);
        };

        // C_Sign on a private key answers CKR_USER_NOT_LOGGED_IN.
        logout(&hsm);
        key.sign(b"after logout").unwrap();
        // C_FindObjects silently hides private objects: the miss is checked.
        logout(&hsm);
        hsm.hmac_sha256_blocking(&mac.cka_id, b"after logout")
            .unwrap();
        logout(&hsm);
        hsm.health_check_blocking().unwrap();
        assert_eq!(hsm.anchor_state().unwrap(), SessionState::RwUser);

        // The audit keyring MACs with a working copy on the anchor session;
        // a relogin replaces the anchor (and the copy dies with it), and the
        // next MAC is still the token key's.
        let ring = AuditKeyring::new(hsm.clone());
        ring.install(1, mac.cka_id.clone(), true).unwrap();
        let expected = hsm.hmac_sha256_blocking(&mac.cka_id, b"copy").unwrap();
        assert_eq!(
            ring.mac_many_blocking(1, &[b"copy".to_vec()]).unwrap()[0],
            expected
        );
        logout(&hsm);
        assert_eq!(
            ring.mac_many_blocking(1, &[b"copy".to_vec()]).unwrap()[0],
            expected
        );
        // Lookups by the key's id see the token object only.
        assert!(hsm.key_exists_blocking(&mac.cka_id).unwrap());
    }

    /// Re-initialising renumbers every object handle (measured with
    /// SoftHSM): cached handles of an older generation must never be used,
    /// or a CA could sign with another CA's key. Finalizing affects the
    /// whole process, so this needs a process of its own (nextest).
    #[test]
    fn after_a_reinitialise_every_key_still_signs_as_itself() {
        if std::env::var_os("NEXTEST").is_none() {
            eprintln!("note: needs a test process of its own (cargo nextest); skipped");
            return;
        }
        let f = fixture();
        let hsm = &f.hsm;
        let keys: Vec<HsmKey> = (0..3)
            .map(|i| {
                hsm.generate_key_pair_blocking(KeyAlgorithm::EcdsaP256, &format!("reinit-{i}"))
                    .unwrap()
            })
            .collect();
        let mac = hsm.generate_mac_key_blocking("reinit-mac").unwrap();
        let ring = AuditKeyring::new(hsm.clone());
        ring.install(1, mac.cka_id.clone(), true).unwrap();
        let mac_before = ring.mac_many_blocking(1, &[b"entry".to_vec()]).unwrap();
        for k in &keys {
            k.sign(b"warm the handle cache").unwrap();
        }
        let other = Hsm::open(Path::new(MODULE), LABEL, &Secret::new(f.pin.clone()), 2).unwrap();
        let generation = hsm.live().unwrap().generation;

        hsm.reinitialise().unwrap();
        assert_eq!(hsm.live().unwrap().generation, generation + 1);
        // In reverse order, so the new handles are handed out differently.
        for k in keys.iter().rev() {
            let sig = k.sign(b"after").unwrap();
            super::keys::tests::verify(k.algorithm(), k.public_key_spki(), b"after", &sig);
        }
        assert_eq!(
            ring.mac_many_blocking(1, &[b"entry".to_vec()]).unwrap(),
            mac_before
        );
        // The other handle on the module reconnects by itself.
        other.health_check_blocking().unwrap();
        hsm.health_check_blocking().unwrap();
        assert!(hsm.unavailable().is_none());
    }

    #[test]
    fn uris_follow_rfc_7512() {
        assert_eq!(
            pkcs11_uri("clm", "ca key/1", &[0x01, 0xab], Some("private")),
            "pkcs11:token=clm;object=ca%20key%2F1;id=%01%AB;type=private"
        );
        assert_eq!(
            fixture().hsm.pkcs11_uri("k", &[0xff]),
            "pkcs11:token=clm;object=k;id=%FF"
        );
    }
}
