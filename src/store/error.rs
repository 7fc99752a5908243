//! The store's one error type. Messages are for logs; `service` decides what
//! a user is told.

use sea_orm::{DbErr, SqlErr};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A compare-and-set precondition did not hold: somebody else changed
    /// the row first.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A unique constraint refused the row.
    #[error("duplicate: {0}")]
    Duplicate(String),
    /// The CA named is not issuing as this transaction sees it (retired or
    /// disabled, or its own certificate revoked or on hold): nothing may
    /// be issued under it.
    #[error("CA {0} is not issuing")]
    CaInactive(crate::domain::CaId),
    /// A stored value could not be read back into a domain type.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(String),
    /// An audit entry could not be MACed, so the change it records is not
    /// made either.
    #[error("audit: {0}")]
    Audit(#[from] crate::domain::audit::AuditMacError),
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> Self {
        match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(m)) => StoreError::Duplicate(m),
            _ => StoreError::Database(e.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}
