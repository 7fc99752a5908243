//! The HSM room's error type. Messages name PKCS#11 return codes for the
//! log; they never contain a PIN or key material.

use cryptoki::error::{Error as CkError, RvError};

#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("no token labelled `{0}` in any slot")]
    TokenNotFound(String),
    #[error("login to the token failed: {0}")]
    LoginFailed(String),
    #[error("cannot load the PKCS#11 module: {0}")]
    Module(String),
    #[error("key not found in the token")]
    KeyNotFound,
    #[error("algorithm {0} is not supported for keys in the token")]
    UnsupportedAlgorithm(String),
    /// Session or device trouble that reopening may cure; callers answer 503.
    #[error("token unavailable: {0}")]
    Unavailable(String),
    #[error("PKCS#11 operation failed: {0}")]
    Pkcs11(String),
    #[error("unexpected data from the token: {0}")]
    Encoding(String),
}

impl HsmError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, HsmError::Unavailable(_))
    }
}

/// Return codes after which the session (or the login) is gone and a fresh
/// one may succeed.
pub(super) fn is_session_trouble(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

impl From<CkError> for HsmError {
    fn from(e: CkError) -> Self {
        match &e {
            CkError::Pkcs11(rv, func) if is_session_trouble(&e) => {
                HsmError::Unavailable(format!("{func:?}: {rv:?}"))
            }
            CkError::Pkcs11(rv, func) => HsmError::Pkcs11(format!("{func:?}: {rv:?}")),
            other => HsmError::Pkcs11(format!("{other:?}")),
        }
    }
}
