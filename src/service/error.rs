//! The service's one error type. Each variant carries what the *user* may be
//! told; causes that must stay private (SQL, PKCS#11 return codes, key
//! labels) travel in `log` fields and are written to the log by `http`.

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
    /// A dependency (the HSM, usually) is unavailable; retrying may help.
    #[error("{message}")]
    Unavailable { message: &'static str, log: String },
    #[error("internal error")]
    Internal { log: String },
}

pub type ServiceResult<T> = Result<T, ServiceError>;

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
            StoreError::Conflict(m) | StoreError::Duplicate(m) => Self::Internal {
                log: format!("unexpected conflict: {m}"),
            },
            other => Self::internal(other),
        }
    }
}

impl From<HsmError> for ServiceError {
    fn from(e: HsmError) -> Self {
        if e.is_retryable() {
            Self::Unavailable {
                message: "the HSM is unavailable; retry later",
                log: e.to_string(),
            }
        } else {
            Self::internal(e)
        }
    }
}

impl From<PkiError> for ServiceError {
    fn from(e: PkiError) -> Self {
        match e.user_code() {
            Some(code) => Self::invalid(code, e.to_string()),
            None => Self::internal(e),
        }
    }
}
