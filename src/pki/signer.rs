//! How the PKI room signs through the [`Signer`] seam.
//!
//! Certificates are signed in two phases, like Boulder: rcgen encodes the
//! TBSCertificate against a stand-in key that only knows the public half
//! ([`ToBeSigned`]), the caller may record those exact bytes, and only then
//! does the token sign them. This keeps the signer's own error (rcgen's
//! error type cannot carry it) and lets every signature be checked against
//! the issuer's public key before a certificate leaves this room.
//!
//! [`SignerKey`] is the direct adapter for rcgen APIs that sign in one go
//! (CRLs, for instance).

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use sha2::{Digest, Sha256};

use super::PkiError;
use crate::domain::der;
use crate::domain::{KeyAlgorithm, Signer};

/// The rcgen signature algorithm a key of `alg` signs with; the digest is
/// the one the [`Signer`] contract names for the key.
pub(crate) fn rcgen_algorithm(alg: KeyAlgorithm) -> &'static rcgen::SignatureAlgorithm {
    match alg {
        KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            &rcgen::PKCS_RSA_SHA256
        }
        KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
    }
}

/// The AlgorithmIdentifier DER of the signature a key of `alg` makes
/// (ECDSA and Ed25519 without parameters, RSA with NULL, RFC 5758/8410/4055).
pub(crate) fn algorithm_identifier(alg: KeyAlgorithm) -> &'static [u8] {
    match alg {
        KeyAlgorithm::EcdsaP256 => &[
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
        ],
        KeyAlgorithm::EcdsaP384 => &[
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
        ],
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => &[
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
            0x00,
        ],
        KeyAlgorithm::Ed25519 => &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70],
    }
}

/// The ring algorithm that verifies what a key of `alg` signs.
pub(crate) fn verification_algorithm(alg: KeyAlgorithm) -> &'static dyn VerificationAlgorithm {
    match alg {
        KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        KeyAlgorithm::Ed25519 => &signature::ED25519,
    }
}

/// Splits one whole TLV, header included, off the front of `input`.
fn split_tlv(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, _, rest) = der::read_tlv(input)?;
    Some((&input[..input.len() - rest.len()], rest))
}

/// The subjectPublicKey BIT STRING contents of an SPKI (what rcgen calls
/// the key's `der_bytes`).
pub(crate) fn subject_public_key_bits(spki: &[u8]) -> Result<Vec<u8>, PkiError> {
    let bad = || PkiError::encoding("malformed SubjectPublicKeyInfo");
    let (tag, body, rest) = der::read_tlv(spki).ok_or_else(bad)?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(bad());
    }
    let (_, _, rest) = der::read_tlv(body).ok_or_else(bad)?; // AlgorithmIdentifier
    let (tag, bits, rest) = der::read_tlv(rest).ok_or_else(bad)?;
    match (tag, bits.split_first(), rest.is_empty()) {
        (0x03, Some((0, key)), true) => Ok(key.to_vec()),
        _ => Err(bad()),
    }
}

/// The SPKI as rcgen writes it for a key of `alg` with the bits of `spki`.
pub(crate) fn canonical_spki(spki: &[u8], alg: KeyAlgorithm) -> Result<Vec<u8>, PkiError> {
    Ok(rcgen::PublicKeyData::subject_public_key_info(
        &PublicKeyBits::new(spki, alg)?,
    ))
}

/// RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
pub(crate) fn key_identifier(subject_public_key: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, subject_public_key)
        .as_ref()
        .to_vec()
}

/// A public key as rcgen wants it: the bit-string contents and the
/// algorithm. As a [`rcgen::SigningKey`] it is the stand-in of phase one
/// and returns an empty signature.
pub(crate) struct PublicKeyBits {
    pub(crate) bits: Vec<u8>,
    pub(crate) key_algorithm: KeyAlgorithm,
}

impl PublicKeyBits {
    pub(crate) fn new(spki: &[u8], key_algorithm: KeyAlgorithm) -> Result<Self, PkiError> {
        Ok(Self {
            bits: subject_public_key_bits(spki)?,
            key_algorithm,
        })
    }
}

impl rcgen::PublicKeyData for PublicKeyBits {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen_algorithm(self.key_algorithm)
    }
}

impl rcgen::SigningKey for PublicKeyBits {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(Vec::new())
    }
}

/// The exact DER a CA is about to sign, bound to the key that must sign it.
#[derive(Clone, Debug)]
pub struct ToBeSigned {
    tbs: Vec<u8>,
    signature_algorithm: Vec<u8>,
    signer_key_bits: Vec<u8>,
    signer_algorithm: KeyAlgorithm,
}

impl ToBeSigned {
    /// Takes an rcgen structure (certificate or CRL) encoded with a
    /// [`PublicKeyBits`] stand-in apart into what must be signed.
    pub(crate) fn from_unsigned(unsigned: &[u8], signer: &PublicKeyBits) -> Result<Self, PkiError> {
        let bad = || PkiError::encoding("rcgen produced an unexpected structure");
        let (tag, body, rest) = der::read_tlv(unsigned).ok_or_else(bad)?;
        if tag != 0x30 || !rest.is_empty() {
            return Err(bad());
        }
        let (tbs, rest) = split_tlv(body).ok_or_else(bad)?;
        let (signature_algorithm, _) = split_tlv(rest).ok_or_else(bad)?;
        Ok(Self {
            tbs: tbs.to_vec(),
            signature_algorithm: signature_algorithm.to_vec(),
            signer_key_bits: signer.bits.clone(),
            signer_algorithm: signer.key_algorithm,
        })
    }

    /// A structure this room encoded itself (CRLs, OCSP responses) whose
    /// signatureAlgorithm is the one `signer_spki` signs with.
    pub(crate) fn new(
        tbs: Vec<u8>,
        signer_spki: &[u8],
        signer_algorithm: KeyAlgorithm,
    ) -> Result<Self, PkiError> {
        Ok(Self {
            tbs,
            signature_algorithm: algorithm_identifier(signer_algorithm).to_vec(),
            signer_key_bits: subject_public_key_bits(signer_spki)?,
            signer_algorithm,
        })
    }

    /// The AlgorithmIdentifier DER of the signature.
    pub(crate) fn signature_algorithm(&self) -> &[u8] {
        &self.signature_algorithm
    }

    /// The TBSCertificate (or TBSCertList) DER, to be recorded before signing.
    pub fn tbs_der(&self) -> &[u8] {
        &self.tbs
    }

    /// SHA-256 of [`Self::tbs_der`], lower-case hex: small enough for an audit entry.
    pub fn tbs_sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(&self.tbs))
    }

    /// Signs with `signer`, which must hold the key this was prepared for,
    /// and returns the whole DER structure, built in the TBS's own buffer
    /// (a CRL's can be 46 MB; a copy beside it would double that). The
    /// signature is verified before it is returned, so a token that returns
    /// the wrong encoding (raw `r‖s`, say) fails here rather than in a
    /// relying party. Blocking: the signer is.
    pub fn sign(self, signer: &dyn Signer) -> Result<Vec<u8>, PkiError> {
        let signature = der::bit_string(&self.signature(signer)?);
        Ok(der::sequence_around(
            &[],
            self.tbs,
            &[&self.signature_algorithm, &signature],
        ))
    }

    /// The verified signature alone, for structures that carry more after
    /// it (a BasicOCSPResponse's certificates). Blocking.
    pub(crate) fn signature(&self, signer: &dyn Signer) -> Result<Vec<u8>, PkiError> {
        if signer.algorithm() != self.signer_algorithm
            || subject_public_key_bits(signer.public_key_spki())? != self.signer_key_bits
        {
            return Err(PkiError::KeyMismatch(
                "the signer is not the key the certificate was prepared for".into(),
            ));
        }
        let signature = signer.sign(&self.tbs)?;
        UnparsedPublicKey::new(
            verification_algorithm(self.signer_algorithm),
            &self.signer_key_bits,
        )
        .verify(&self.tbs, &signature)
        .map_err(|_| PkiError::KeyMismatch("the signer's signature does not verify".into()))?;
        Ok(signature)
    }
}

/// A [`Signer`] as an rcgen signing key, for rcgen APIs that sign in one
/// step. rcgen cannot carry the signer's error, so a failure surfaces as
/// [`PkiError::Signing`] without its cause; prefer [`ToBeSigned`].
pub struct SignerKey<'a> {
    signer: &'a dyn Signer,
    public: PublicKeyBits,
}

impl<'a> SignerKey<'a> {
    pub fn new(signer: &'a dyn Signer) -> Result<Self, PkiError> {
        Ok(Self {
            public: PublicKeyBits::new(signer.public_key_spki(), signer.algorithm())?,
            signer,
        })
    }
}

impl rcgen::PublicKeyData for SignerKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public.bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen_algorithm(self.public.key_algorithm)
    }
}

impl rcgen::SigningKey for SignerKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.signer.sign(msg).map_err(|e| {
            tracing::warn!(error = %e, "signing through rcgen failed");
            rcgen::Error::RemoteKeyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SignError;
    use crate::pki::testutil::SoftSigner;

    #[test]
    fn spki_bits_round_trip_through_rcgen() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa2048,
        ] {
            let s = SoftSigner::new(alg);
            assert_eq!(
                canonical_spki(s.public_key_spki(), alg).unwrap(),
                s.public_key_spki(),
                "{alg}"
            );
        }
        assert!(subject_public_key_bits(&[0x30, 0x00]).is_err());
        assert!(subject_public_key_bits(&[]).is_err());
    }

    #[test]
    fn the_direct_adapter_signs_verifiably() {
        let s = SoftSigner::new(KeyAlgorithm::EcdsaP384);
        let key = SignerKey::new(&s).unwrap();
        let sig = rcgen::SigningKey::sign(&key, b"message").unwrap();
        UnparsedPublicKey::new(
            verification_algorithm(KeyAlgorithm::EcdsaP384),
            rcgen::PublicKeyData::der_bytes(&key),
        )
        .verify(b"message", &sig)
        .unwrap();
    }

    /// A token that forgets the DER conversion: returns raw r‖s.
    struct RawEcdsa(SoftSigner);

    impl Signer for RawEcdsa {
        fn algorithm(&self) -> KeyAlgorithm {
            self.0.algorithm()
        }
        fn public_key_spki(&self) -> &[u8] {
            self.0.public_key_spki()
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
            let der_sig = self.0.sign(message)?;
            Ok(der_sig[der_sig.len() - 64..].to_vec())
        }
    }

    #[test]
    fn bad_signatures_never_leave_the_room() {
        let good = SoftSigner::new(KeyAlgorithm::EcdsaP256);
        let stand_in = PublicKeyBits::new(good.public_key_spki(), good.algorithm()).unwrap();
        let unsigned = rcgen::CertificateParams::new(vec!["x.test".to_string()])
            .unwrap()
            .self_signed(&stand_in)
            .unwrap();
        let tbs = ToBeSigned::from_unsigned(unsigned.der(), &stand_in).unwrap();
        assert_eq!(tbs.tbs_sha256_hex().len(), 64);

        let raw = RawEcdsa(good);
        assert!(matches!(
            tbs.clone().sign(&raw),
            Err(PkiError::KeyMismatch(_))
        ));
        let other = SoftSigner::new(KeyAlgorithm::EcdsaP256);
        assert!(matches!(
            tbs.clone().sign(&other),
            Err(PkiError::KeyMismatch(_))
        ));
        let signed = tbs.sign(&raw.0).unwrap();
        crate::pki::verify_signed_by(&signed, &signed).unwrap();
    }
}
