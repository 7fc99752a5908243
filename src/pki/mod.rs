//! The PKI room: CSR parsing and verification, certificate building with
//! rcgen, and the checks that bind keys to certificates. It signs only
//! through [`crate::domain::Signer`] and knows nothing of PKCS#11, SQL or
//! HTTP.
//!
//! Errors: [`PkiError::user_code`] separates the requester's mistakes
//! (4xx, message safe to show) from internal failures (5xx, log only).
//! Signing is blocking; callers run builders on the blocking pool.

mod build;
mod crl;
mod csr;
mod error;
mod inspect;
pub mod ocsp;
mod pkcs12;
mod signer;
#[cfg(test)]
mod testutil;

pub use build::{
    CaSubject, Issuer, PublicUrls, TlsKey, build_intermediate_ca, build_leaf, build_root_ca,
    new_serial, prepare_intermediate_ca, prepare_leaf, prepare_link_certificate,
    prepare_ocsp_signer, prepare_root_ca, serial_hex,
};
pub use crl::{RevokedList, prepare_crl};
pub use csr::{MAX_CSR_TEXT_LEN, ParsedCsr, parse_csr, parse_csr_der};
pub use error::PkiError;
pub use inspect::{
    CertInfo, allows_client_auth, common_name, fingerprint_sha256_hex, not_after, not_before,
    prove_key_matches, spki_of, spki_sha256_hex, subject_string, to_pem, verify_signed_by,
};
pub use pkcs12::{MIN_PASSPHRASE_CHARS, build_pkcs12, check_passphrase};
pub use signer::{SignerKey, ToBeSigned};
