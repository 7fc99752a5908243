//! The PKI room: CSR parsing and verification, certificate building with
//! rcgen, and the checks that bind keys to certificates. It signs only
//! through [`crate::domain::Signer`] and knows nothing of PKCS#11, SQL or
//! HTTP.

mod build;
mod csr;
mod error;
mod inspect;

pub use build::{
    CaSubject, Issuer, PublicUrls, TlsKey, build_intermediate_ca, build_leaf, build_root_ca,
    random_serial, serial_hex,
};
pub use csr::{ParsedCsr, parse_csr};
pub use error::PkiError;
pub use inspect::{CertInfo, prove_key_matches, to_pem, verify_signed_by};
