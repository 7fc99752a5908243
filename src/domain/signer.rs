//! The signing seam between `pki` (which encodes) and `hsm` (which holds the
//! keys). Neither room imports the other; both know this trait.
//!
//! Contract, stated once because it is the classic PKCS#11 trap: `sign`
//! receives the *whole message* (e.g. a TBSCertificate), the implementation
//! hashes it with the digest that belongs to the key's algorithm (SHA-256 for
//! P-256 and RSA, SHA-384 for P-384) and returns the signature in the encoding
//! X.509 uses: DER `SEQUENCE { r, s }` for ECDSA, the raw PKCS#1 v1.5
//! signature block for RSA.

use super::algorithm::KeyAlgorithm;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The token is unreachable or refused; the message is for logs only.
    #[error("signing key unavailable: {0}")]
    Unavailable(String),
    /// The token answers but no longer holds the key.
    #[error("the signing key is missing from the token")]
    KeyMissing,
    #[error("signing failed: {0}")]
    Failed(String),
}

/// A private key that can sign but never leaves its token.
pub trait Signer: Send + Sync {
    fn algorithm(&self) -> KeyAlgorithm;
    /// DER SubjectPublicKeyInfo of the key.
    fn public_key_spki(&self) -> &[u8];
    /// Blocking: call from a blocking context (`spawn_blocking`).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError>;
}
