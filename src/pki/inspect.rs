//! Reading certificates back: the fields clm stores, PEM encoding, and the
//! proofs that a certificate was signed by an issuer and that a token key
//! belongs to a certificate.

use chrono::{DateTime, TimeZone, Utc};
use rand::RngCore;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::PkiError;
use crate::domain::{KeyAlgorithm, Signer};

/// The fields of a certificate that clm stores beside its DER.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub subject: String,
    pub serial_hex: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub fingerprint_sha256: String,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::Encoding(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::Encoding(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

fn utc(t: x509_parser::time::ASN1Time) -> Result<DateTime<Utc>, PkiError> {
    Utc.timestamp_opt(t.timestamp(), 0)
        .single()
        .ok_or_else(|| PkiError::Encoding("time out of range".into()))
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse(der)?;
        Ok(Self {
            subject: cert.subject().to_string(),
            serial_hex: hex::encode(cert.raw_serial()),
            not_before: utc(cert.validity().not_before)?,
            not_after: utc(cert.validity().not_after)?,
            fingerprint_sha256: hex::encode(Sha256::digest(der)),
        })
    }

    /// The first certificate of a PEM bundle.
    pub fn from_pem(text: &str) -> Result<Self, PkiError> {
        let doc = pem::parse(text).map_err(|_| PkiError::Encoding("not PEM".into()))?;
        Self::from_der(doc.contents())
    }
}

pub fn to_pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The certificate's signature verifies with the issuer certificate's key.
pub fn verify_signed_by(cert_der: &[u8], issuer_der: &[u8]) -> Result<(), PkiError> {
    let cert = parse(cert_der)?;
    let issuer = parse(issuer_der)?;
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|e| PkiError::KeyMismatch(format!("signature does not verify: {e}")))
}

fn verification_algorithm(alg: KeyAlgorithm) -> &'static dyn VerificationAlgorithm {
    match alg {
        KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        KeyAlgorithm::Ed25519 => &signature::ED25519,
    }
}

/// Proves that `signer` holds the private key of the certificate: the
/// public keys are equal and a fresh random challenge signed by `signer`
/// verifies with the certificate's key. Blocking (it signs).
pub fn prove_key_matches(signer: &dyn Signer, cert_der: &[u8]) -> Result<(), PkiError> {
    let cert = parse(cert_der)?;
    if cert.public_key().raw != signer.public_key_spki() {
        return Err(PkiError::KeyMismatch("public keys differ".into()));
    }
    let mut challenge = [0u8; 32];
    rand::rng().fill_bytes(&mut challenge);
    let sig = signer.sign(&challenge)?;
    UnparsedPublicKey::new(
        verification_algorithm(signer.algorithm()),
        cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(&challenge, &sig)
    .map_err(|_| PkiError::KeyMismatch("challenge signature does not verify".into()))
}
