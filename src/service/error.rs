//! The service's one error type. Each variant carries what the *user* may be
//! told; causes that must stay private (SQL, PKCS#11 return codes, key
//! labels) travel in `log` fields and are written to the log by `http`.

use crate::domain::SignError;
use crate::domain::audit::AuditMacError;
use crate::hsm::HsmError;
use crate::pki::PkiError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input was understood but is not acceptable.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("authentication required")]
    Unauthenticated,
    /// A credential the caller proved to hold is refused; `code` says why
    /// (a client certificate that is revoked, expired, not bound…).
    #[error("{message}")]
    CredentialRefused {
        code: &'static str,
        message: &'static str,
    },
    #[error("{0}")]
    Forbidden(&'static str),
    /// Also the answer for objects of another organisation (decision 7).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Too many attempts; retry after the given number of seconds.
    #[error("too many requests; retry after the number of seconds in Retry-After")]
    RateLimited { retry_after_secs: u64 },
    /// A dependency (the HSM, usually) is unavailable; retrying after
    /// `retry_after_secs` may help. `code` is `hsm_unavailable` (the token
    /// is away; reads keep working) or `ca_unavailable` (one CA's key is
    /// missing from the token; other CAs keep issuing).
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: &'static str,
        retry_after_secs: u64,
        log: String,
    },
    #[error("internal error")]
    Internal { log: String },
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// A missing CA key needs an operator; asking again soon does not help.
const CA_RETRY_AFTER_SECS: u64 = 300;

impl ServiceError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    /// The CA that would sign is retired or disabled, or its own
    /// certificate is revoked or on hold.
    pub fn ca_inactive() -> Self {
        Self::conflict(
            "ca_inactive",
            "the profile's CA is not issuing: it is retired or disabled, or its certificate is revoked or on hold",
        )
    }

    /// The token is away (or recovering): 503, retry after `retry_after_secs`.
    pub fn hsm_unavailable(retry_after_secs: u64, log: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            code: "hsm_unavailable",
            message: "the HSM is unavailable; retry later",
            retry_after_secs: retry_after_secs.max(1),
            log: log.to_string(),
        }
    }

    /// A CA whose key is not (or no longer) usable in the token.
    pub fn ca_unavailable(log: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            code: "ca_unavailable",
            message: "this CA cannot sign: its key is missing from the HSM or does not match its certificate",
            retry_after_secs: CA_RETRY_AFTER_SECS,
            log: log.to_string(),
        }
    }

    pub fn internal(log: impl std::fmt::Display) -> Self {
        Self::Internal {
            log: log.to_string(),
        }
    }

    /// Text for the log: the private cause where there is one.
    pub fn log_message(&self) -> String {
        match self {
            Self::Unavailable { log, .. } | Self::Internal { log } => log.clone(),
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound("object"),
            StoreError::CaInactive(_) => Self::ca_inactive(),
            StoreError::Conflict(m) | StoreError::Duplicate(m) => Self::Internal {
                log: format!("unexpected conflict: {m}"),
            },
            // The change could not be audited because the token is away:
            // nothing was written.
            StoreError::Audit(AuditMacError::Unavailable {
                reason,
                retry_after_secs,
            }) => Self::hsm_unavailable(retry_after_secs, format!("audit MAC: {reason}")),
            other => Self::internal(other),
        }
    }
}

impl From<HsmError> for ServiceError {
    fn from(e: HsmError) -> Self {
        match e.retry_after() {
            Some(wait) => Self::hsm_unavailable(wait.as_secs(), e),
            None => Self::internal(e),
        }
    }
}

impl From<PkiError> for ServiceError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::Signing(SignError::Unavailable(log)) => Self::hsm_unavailable(1, log),
            PkiError::Signing(SignError::KeyMissing) => {
                Self::ca_unavailable("the signing key is missing from the token")
            }
            e => match e.user_code() {
                Some(code) => Self::invalid(code, e.to_string()),
                None => Self::internal(e),
            },
        }
    }
}
