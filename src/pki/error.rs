//! The PKI room's error type.
//!
//! Variants with a [`PkiError::user_code`] are the requester's fault: their
//! messages are written for the requester and become 4xx answers. The rest
//! are internal and their text goes to the log only. No message ever
//! carries key material; at most an OID, a size or a PEM label.

use crate::domain::SignError;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("the CSR is neither a PEM document nor base64-encoded DER")]
    NotPem,
    #[error("the PEM document is a {0}, not a certificate signing request")]
    NotACsr(String),
    #[error("the CSR cannot be parsed: {0}")]
    MalformedCsr(String),
    #[error("the CSR's signature does not verify with its own public key")]
    BadCsrSignature,
    #[error("the CSR is signed with {0}, which is not accepted")]
    UnsupportedCsrSignature(String),
    #[error("RSA keys must have at least 2048 bits; this one has {bits}")]
    WeakRsaKey { bits: usize },
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
    #[error("invalid subject: {0}")]
    InvalidSubject(String),
    #[error(transparent)]
    Signing(#[from] SignError),
    #[error("certificate encoding failed: {0}")]
    Encoding(String),
    #[error("the key does not match the certificate: {0}")]
    KeyMismatch(String),
    #[error("the certificate was not issued by that CA: {0}")]
    NotIssuedBy(String),
    #[error("the passphrase must have at least {0} characters")]
    WeakPassphrase(usize),
    #[error("the passphrase must be at most 1024 characters without control characters")]
    InvalidPassphrase,
}

impl PkiError {
    /// The machine code for errors caused by the requester; `None` for
    /// internal failures.
    pub fn user_code(&self) -> Option<&'static str> {
        match self {
            PkiError::NotPem | PkiError::MalformedCsr(_) => Some("invalid_csr"),
            PkiError::NotACsr(_) => Some("not_a_csr"),
            PkiError::BadCsrSignature => Some("bad_csr_signature"),
            PkiError::UnsupportedCsrSignature(_) => Some("unsupported_csr_signature"),
            PkiError::WeakRsaKey { .. } => Some("weak_key"),
            PkiError::UnsupportedKey(_) => Some("unsupported_key"),
            PkiError::InvalidSubject(_) => Some("invalid_subject"),
            PkiError::WeakPassphrase(_) => Some("passphrase_too_short"),
            PkiError::InvalidPassphrase => Some("invalid_passphrase"),
            PkiError::Signing(_)
            | PkiError::Encoding(_)
            | PkiError::KeyMismatch(_)
            | PkiError::NotIssuedBy(_) => None,
        }
    }

    pub(crate) fn encoding(what: impl std::fmt::Display) -> Self {
        PkiError::Encoding(what.to_string())
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        match e {
            // Only `SignerKey` reports this, and it has lost the cause by
            // then; certificates are signed outside rcgen so they keep it.
            rcgen::Error::RemoteKeyError => {
                PkiError::Signing(SignError::Failed("the signer refused".into()))
            }
            other => PkiError::Encoding(other.to_string()),
        }
    }
}
