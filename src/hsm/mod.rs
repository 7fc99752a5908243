//! The HSM room: the only place that imports `cryptoki`.
//!
//! One PKCS#11 context per process and module; one long-lived *anchor*
//! session logged in as the user (PKCS#11 logins belong to the application,
//! so every other session of the process shares it); a bounded pool of
//! further sessions that blocking callers check out for one operation each
//! (`pool`). Session trouble (closed or invalid handles, a lost login, a
//! removed device) is met by discarding the session, logging in again and
//! retrying once.
//!
//! Owned here: key pairs for CAs and their signatures (`keys`), the AES
//! key-encryption key and the HMAC key (`secret`), wrapping end-entity keys
//! under the KEK (`wrap`). The rest of clm sees keys only as [`HsmKey`] (a
//! [`crate::domain::Signer`]) and [`SecretKeyRef`], never PKCS#11 types.
//! Every `*_blocking` method blocks; the `async` twins move it onto tokio's
//! blocking pool so no runtime worker waits on the token.

mod audit;
mod error;
mod keys;
mod pool;
mod secret;
mod wrap;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};

pub use audit::AuditKeyring;
pub use error::HsmError;
pub use keys::HsmKey;
pub use secret::{KeyAttributes, SecretKeyRef};

use crate::domain::Secret;

pub type HsmResult<T> = Result<T, HsmError>;

/// One initialised library, plus a digest of the PIN each slot was logged in
/// with. The digest is needed because `C_Login` on a token this process is
/// already logged in to answers `CKR_USER_ALREADY_LOGGED_IN` without looking
/// at the PIN: a second `Hsm::open` with a wrong PIN must still fail.
struct Module {
    ctx: Pkcs11,
    logins: HashMap<Slot, [u8; 32]>,
}

/// `C_Initialize` may run once per process and library, so contexts are
/// shared by (canonical) module path.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Module>>> = OnceLock::new();

fn modules() -> HsmResult<std::sync::MutexGuard<'static, HashMap<PathBuf, Module>>> {
    MODULES
        .get_or_init(Mutex::default)
        .lock()
        .map_err(|_| HsmError::Pkcs11("PKCS#11 module registry poisoned".into()))
}

fn context_for(module: &Path) -> HsmResult<(PathBuf, Pkcs11)> {
    // Two spellings of one library would dlopen the same code and fail the
    // second initialise.
    let key = module
        .canonicalize()
        .unwrap_or_else(|_| module.to_path_buf());
    let mut map = modules()?;
    if let Some(m) = map.get(&key) {
        return Ok((key, m.ctx.clone()));
    }
    let ctx = Pkcs11::new(&key).map_err(|e| HsmError::Module(format!("{}: {e}", key.display())))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| HsmError::Module(format!("{}: {e}", key.display())))?;
    map.insert(
        key.clone(),
        Module {
            ctx: ctx.clone(),
            logins: HashMap::new(),
        },
    );
    Ok((key, ctx))
}

fn pin_digest(pin: &Secret) -> [u8; 32] {
    Sha256::digest(pin.expose().as_bytes()).into()
}

/// A handle on one logged-in token. Cheap to clone; the sessions close when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Hsm {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Pkcs11,
    module: PathBuf,
    slot: Slot,
    token_label: String,
    pin: Secret,
    /// Holds the login: PKCS#11 logs the application out when its last
    /// session closes, and pooled sessions come and go.
    anchor: Mutex<Option<Session>>,
    pool: pool::Pool,
}

impl Hsm {
    /// Opens the token labelled `token_label` through the PKCS#11 library
    /// `module` and logs in as the user with `pin`. Blocking.
    ///
    /// `pool_size` bounds the sessions used for operations (the anchor
    /// session comes on top); 0 is taken as 1.
    pub fn open(
        module: &Path,
        token_label: &str,
        pin: &Secret,
        pool_size: usize,
    ) -> HsmResult<Hsm> {
        let (module, ctx) = context_for(module)?;
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
                module,
                slot,
                token_label: token_label.to_string(),
                pin: pin.clone(),
                anchor: Mutex::new(None),
                pool: pool::Pool::new(pool_size),
            }),
        };
        hsm.login()?;
        Ok(hsm)
    }

    pub fn token_label(&self) -> &str {
        &self.inner.token_label
    }

    /// Opens a new anchor session, logs it in and puts it in place of the
    /// old one (which is closed only after the new one holds the login).
    fn login(&self) -> HsmResult<()> {
        let mut anchor = self
            .inner
            .anchor
            .lock()
            .map_err(|_| HsmError::Pkcs11("anchor session lock poisoned".into()))?;
        let session = self.inner.ctx.open_rw_session(self.inner.slot)?;
        let pin = AuthPin::new(self.inner.pin.expose().into());
        let digest = pin_digest(&self.inner.pin);
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {
                if let Some(m) = modules()?.get_mut(&self.inner.module) {
                    m.logins.insert(self.inner.slot, digest);
                }
            }
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                let known = modules()?
                    .get(&self.inner.module)
                    .and_then(|m| m.logins.get(&self.inner.slot).copied());
                if known.is_some_and(|k| k != digest) {
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
        *anchor = Some(session);
        Ok(())
    }

    fn anchor_state(&self) -> HsmResult<SessionState> {
        let anchor = self
            .inner
            .anchor
            .lock()
            .map_err(|_| HsmError::Pkcs11("anchor session lock poisoned".into()))?;
        match anchor.as_ref() {
            Some(s) => Ok(s.get_session_info()?.session_state()),
            None => Err(HsmError::Unavailable("no anchor session".into())),
        }
    }

    /// The token answers and the login is in place; a lost login is renewed
    /// once before this reports failure.
    pub fn health_check_blocking(&self) -> HsmResult<()> {
        self.inner.ctx.get_token_info(self.inner.slot)?;
        match self.anchor_state() {
            Ok(SessionState::RwUser) => return Ok(()),
            Ok(_) | Err(HsmError::Unavailable(_)) => {}
            Err(e) => return Err(e),
        }
        tracing::warn!(token = %self.inner.token_label, "HSM login lost; logging in again");
        self.login()?;
        match self.anchor_state()? {
            SessionState::RwUser => Ok(()),
            state => Err(HsmError::Unavailable(format!(
                "anchor session is {state:?}, not logged in"
            ))),
        }
    }

    pub async fn health_check(&self) -> HsmResult<()> {
        self.run(|h| h.health_check_blocking()).await
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

    /// RFC 7512 URI naming an object of this token by label and `CKA_ID`,
    /// without a `type` (a key pair's two halves share the id).
    pub fn pkcs11_uri(&self, label: &str, cka_id: &[u8]) -> String {
        pkcs11_uri(&self.inner.token_label, label, cka_id, None)
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
        state => Err(HsmError::Unavailable(format!(
            "session not logged in ({state:?})"
        ))),
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

    pub(crate) fn fixture() -> &'static Fixture {
        FIXTURE.get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("clm-hsm-test-")
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
            hsm.with_session(|s| Ok(s.logout()?)).unwrap();
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
