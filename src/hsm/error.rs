//! The HSM room's error type and the classification of PKCS#11 return
//! values into the recovery they call for. Messages are for the log: they
//! may name a PKCS#11 function and return code, never a PIN or key material.

use std::time::Duration;

use cryptoki::error::{Error as CkError, RvError};

#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("no token labelled `{0}` in any slot")]
    TokenNotFound(String),
    /// The token refused the PIN (the reason is a return code, not the PIN).
    #[error("login to the token failed: {0}")]
    LoginFailed(String),
    #[error("cannot load the PKCS#11 module: {0}")]
    Module(String),
    /// The token answers, and has no object with that `CKA_ID`.
    #[error("key not found in the token")]
    KeyNotFound,
    #[error("algorithm {0} is not supported for keys in the token")]
    UnsupportedAlgorithm(String),
    /// Token trouble that recovery has not cured (yet), the circuit breaker
    /// failing fast, or an exhausted session pool: retrying after
    /// `retry_after` may succeed (callers answer 503).
    #[error("token unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    /// Trouble seen inside one attempt, before the pool decided what to do
    /// about it; [`Hsm::with_session`](super::Hsm) turns what it cannot cure
    /// into [`HsmError::Unavailable`].
    #[error("token trouble ({0:?}): {1}")]
    Trouble(Trouble, String),
    #[error("PKCS#11 operation failed: {0}")]
    Pkcs11(String),
    /// Bytes from the token or the caller that do not have the expected shape.
    #[error("unexpected key encoding: {0}")]
    Encoding(String),
}

impl HsmError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, HsmError::Unavailable { .. } | HsmError::Trouble(..))
    }

    /// How long a caller should wait before trying again, for retryable
    /// errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HsmError::Unavailable { retry_after, .. } => Some(*retry_after),
            HsmError::Trouble(..) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    pub(super) fn unavailable(reason: impl Into<String>, retry_after: Duration) -> Self {
        HsmError::Unavailable {
            reason: reason.into(),
            retry_after,
        }
    }
}

/// What went wrong with the connection to the token, by the cure it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trouble {
    /// The session is gone: open another one.
    Session,
    /// The application's login is gone: log in again.
    Login,
    /// The token or the library is gone: `C_Finalize`, `C_Initialize`, find
    /// the token by label, log in.
    Token,
}

impl Trouble {
    /// Label value for metrics.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Trouble::Session => "session",
            Trouble::Login => "login",
            Trouble::Token => "token",
        }
    }

    /// What `/readyz` may say about it (no return codes).
    pub(super) fn public_reason(self) -> &'static str {
        match self {
            Trouble::Session => "the token's sessions keep failing",
            Trouble::Login => "the login to the token was lost",
            Trouble::Token => "the token is not present or not responding",
        }
    }

    pub(super) fn from_rv(rv: RvError) -> Option<Trouble> {
        match rv {
            RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::SessionCount => {
                Some(Trouble::Session)
            }
            RvError::UserNotLoggedIn => Some(Trouble::Login),
            RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SlotIdInvalid
            | RvError::CryptokiNotInitialized => Some(Trouble::Token),
            _ => None,
        }
    }
}

impl From<CkError> for HsmError {
    fn from(e: CkError) -> Self {
        match e {
            CkError::Pkcs11(rv, func) => match Trouble::from_rv(rv) {
                Some(t) => HsmError::Trouble(t, format!("{func:?}: {rv:?}")),
                None if matches!(rv, RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid) => {
                    HsmError::KeyNotFound
                }
                None => HsmError::Pkcs11(format!("{func:?}: {rv:?}")),
            },
            other => HsmError::Pkcs11(other.to_string()),
        }
    }
}
