//! The PKI room's error type. Variants with a [`PkiError::user_code`] are
//! the requester's fault and are reported as such; the rest are internal.

use crate::domain::SignError;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("csr_pem is not a PEM document")]
    NotPem,
    #[error("the PEM document is a {0}, not a certificate signing request")]
    NotACsr(String),
    #[error("the CSR cannot be parsed: {0}")]
    MalformedCsr(String),
    #[error("the CSR's signature does not verify with its own public key")]
    BadCsrSignature,
    #[error("RSA keys must have at least 2048 bits; this one has {0}")]
    WeakRsaKey(usize),
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
    #[error(transparent)]
    Signing(#[from] SignError),
    #[error("certificate encoding failed: {0}")]
    Encoding(String),
    #[error("the key does not match the certificate: {0}")]
    KeyMismatch(String),
}

impl PkiError {
    /// The machine code for errors caused by the requester; `None` for
    /// internal failures.
    pub fn user_code(&self) -> Option<&'static str> {
        match self {
            PkiError::NotPem | PkiError::MalformedCsr(_) => Some("invalid_csr"),
            PkiError::NotACsr(_) => Some("not_a_csr"),
            PkiError::BadCsrSignature => Some("bad_csr_signature"),
            PkiError::WeakRsaKey(_) => Some("weak_key"),
            PkiError::UnsupportedKey(_) => Some("unsupported_key"),
            PkiError::Signing(_) | PkiError::Encoding(_) | PkiError::KeyMismatch(_) => None,
        }
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        match e {
            // Our signer's error comes back wrapped by rcgen.
            rcgen::Error::RemoteKeyError => {
                PkiError::Signing(SignError::Failed("remote key error".into()))
            }
            other => PkiError::Encoding(other.to_string()),
        }
    }
}
