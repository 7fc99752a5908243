//! The HSM room's error type. Messages are for the log: they may name a
//! PKCS#11 function and return code, never a PIN or key material.

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
    #[error("key not found in the token")]
    KeyNotFound,
    #[error("algorithm {0} is not supported for keys in the token")]
    UnsupportedAlgorithm(String),
    /// Session or device trouble that survived one reopen-and-retry, or an
    /// exhausted session pool: retrying later may succeed (callers answer 503).
    #[error("token unavailable: {0}")]
    Unavailable(String),
    #[error("PKCS#11 operation failed: {0}")]
    Pkcs11(String),
    /// Bytes from the token or the caller that do not have the expected shape.
    #[error("unexpected key encoding: {0}")]
    Encoding(String),
}

impl HsmError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, HsmError::Unavailable(_))
    }
}

/// Return codes after which the session (or the login) is gone and a fresh
/// session, logged in again, may succeed.
pub(super) fn is_session_trouble(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::TokenNotPresent
            | RvError::CryptokiNotInitialized
    )
}

impl From<CkError> for HsmError {
    fn from(e: CkError) -> Self {
        match e {
            CkError::Pkcs11(rv, func) if is_session_trouble(rv) => {
                HsmError::Unavailable(format!("{func:?}: {rv:?}"))
            }
            CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _) => {
                HsmError::KeyNotFound
            }
            CkError::Pkcs11(rv, func) => HsmError::Pkcs11(format!("{func:?}: {rv:?}")),
            other => HsmError::Pkcs11(other.to_string()),
        }
    }
}
