//! Reading certificates back: the fields clm stores, PEM encoding, and the
//! proofs that a certificate was issued by a CA and that a token key
//! belongs to a certificate (checked at start-up, like Boulder does).

use chrono::{DateTime, TimeZone, Utc};
use rand::RngCore;
use ring::signature::UnparsedPublicKey;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::PkiError;
use super::signer::verification_algorithm;
use crate::domain::Signer;

/// The fields of a certificate that clm stores beside its DER.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub subject: String,
    pub serial_hex: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub fingerprint_sha256: String,
    pub spki_sha256: String,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(PkiError::encoding)?;
    if !rest.is_empty() {
        return Err(PkiError::encoding("trailing bytes after the certificate"));
    }
    Ok(cert)
}

pub(crate) fn utc(t: x509_parser::time::ASN1Time) -> Result<DateTime<Utc>, PkiError> {
    Utc.timestamp_opt(t.timestamp(), 0)
        .single()
        .ok_or_else(|| PkiError::encoding("time out of range"))
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse(der)?;
        Ok(Self {
            subject: cert.subject().to_string(),
            serial_hex: hex::encode(cert.raw_serial()),
            not_before: utc(cert.validity().not_before)?,
            not_after: utc(cert.validity().not_after)?,
            fingerprint_sha256: fingerprint_sha256_hex(der),
            spki_sha256: spki_sha256_hex(cert.public_key().raw),
        })
    }

    /// The first certificate of a PEM bundle.
    pub fn from_pem(text: &str) -> Result<Self, PkiError> {
        let doc = pem::parse(text).map_err(|_| PkiError::encoding("not PEM"))?;
        Self::from_der(doc.contents())
    }
}

/// PEM with LF line endings on every platform (the files are served).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// SHA-256 of a DER SubjectPublicKeyInfo, lower-case hex: names a key
/// across certificates and tokens.
pub fn spki_sha256_hex(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

/// SHA-256 of a certificate's DER, lower-case hex.
pub fn fingerprint_sha256_hex(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// The subject DN as x509-parser prints it (`O=clm, CN=Root`).
pub fn subject_string(cert_der: &[u8]) -> Result<String, PkiError> {
    Ok(parse(cert_der)?.subject().to_string())
}

/// The first common name of the subject, if there is one.
pub fn common_name(cert_der: &[u8]) -> Result<Option<String>, PkiError> {
    let cert = parse(cert_der)?;
    Ok(cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string))
}

/// The certificate's SubjectPublicKeyInfo DER.
pub fn spki_of(cert_der: &[u8]) -> Result<Vec<u8>, PkiError> {
    Ok(parse(cert_der)?.public_key().raw.to_vec())
}

pub fn not_before(cert_der: &[u8]) -> Result<DateTime<Utc>, PkiError> {
    utc(parse(cert_der)?.validity().not_before)
}

pub fn not_after(cert_der: &[u8]) -> Result<DateTime<Utc>, PkiError> {
    utc(parse(cert_der)?.validity().not_after)
}

/// Whether the certificate may authenticate a TLS client: an end-entity
/// certificate whose extended key usage names clientAuth (or
/// anyExtendedKeyUsage). clm always writes the extension, so a certificate
/// without it is refused too.
pub fn allows_client_auth(cert_der: &[u8]) -> Result<bool, PkiError> {
    let cert = parse(cert_der)?;
    if cert.is_ca() {
        return Ok(false);
    }
    Ok(cert
        .extended_key_usage()
        .map_err(PkiError::encoding)?
        .is_some_and(|eku| eku.value.client_auth || eku.value.any))
}

/// `cert` names `issuer` as its issuer and its signature verifies with
/// the issuer certificate's key.
pub fn verify_signed_by(cert_der: &[u8], issuer_der: &[u8]) -> Result<(), PkiError> {
    let cert = parse(cert_der)?;
    let issuer = parse(issuer_der)?;
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(PkiError::NotIssuedBy(
            "the issuer name is not the CA's subject".into(),
        ));
    }
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|e| PkiError::NotIssuedBy(format!("the signature does not verify: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KeyAlgorithm, SignError};
    use crate::pki::testutil::SoftSigner;

    fn self_signed(s: &SoftSigner) -> Vec<u8> {
        crate::pki::build_root_ca(
            s,
            &crate::pki::CaSubject {
                common_name: "Inspect Root".into(),
                organization: None,
            },
            30,
            &crate::pki::new_serial(),
        )
        .unwrap()
    }

    #[test]
    fn fields_read_back() {
        let s = SoftSigner::new(KeyAlgorithm::EcdsaP256);
        let der = self_signed(&s);
        let info = CertInfo::from_der(&der).unwrap();
        assert_eq!(info.subject, "CN=Inspect Root");
        assert_eq!(subject_string(&der).unwrap(), info.subject);
        assert_eq!(not_before(&der).unwrap(), info.not_before);
        assert_eq!(not_after(&der).unwrap(), info.not_after);
        assert_eq!(info.fingerprint_sha256, fingerprint_sha256_hex(&der));
        assert_eq!(info.spki_sha256, spki_sha256_hex(s.public_key_spki()));
        assert_eq!(spki_of(&der).unwrap(), s.public_key_spki());
        let pem_text = to_pem("CERTIFICATE", &der);
        assert!(pem_text.starts_with("-----BEGIN CERTIFICATE-----\n") && !pem_text.contains('\r'));
        assert_eq!(
            CertInfo::from_pem(&pem_text).unwrap().serial_hex,
            info.serial_hex
        );
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(CertInfo::from_der(&trailing).is_err());
    }

    /// Same public key, but the token signs with something else: only the
    /// challenge catches it.
    struct Impostor(SoftSigner, SoftSigner);

    impl Signer for Impostor {
        fn algorithm(&self) -> KeyAlgorithm {
            self.0.algorithm()
        }
        fn public_key_spki(&self) -> &[u8] {
            self.0.public_key_spki()
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
            self.1.sign(message)
        }
    }

    #[test]
    fn the_challenge_catches_a_token_with_a_lying_public_key() {
        let real = SoftSigner::new(KeyAlgorithm::EcdsaP256);
        let der = self_signed(&real);
        prove_key_matches(&real, &der).unwrap();
        let impostor = Impostor(real, SoftSigner::new(KeyAlgorithm::EcdsaP256));
        match prove_key_matches(&impostor, &der) {
            Err(PkiError::KeyMismatch(m)) => assert!(m.contains("challenge"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_end_entities_with_client_auth_authenticate_clients() {
        let s = SoftSigner::new(KeyAlgorithm::EcdsaP256);
        assert!(!allows_client_auth(&self_signed(&s)).unwrap(), "a CA");
        let leaf = |ekus: Vec<rcgen::ExtendedKeyUsagePurpose>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["c.test".into()]).unwrap();
            params.extended_key_usages = ekus;
            params.self_signed(&key).unwrap().der().to_vec()
        };
        use rcgen::ExtendedKeyUsagePurpose::*;
        assert!(allows_client_auth(&leaf(vec![ServerAuth, ClientAuth])).unwrap());
        assert!(allows_client_auth(&leaf(vec![Any])).unwrap());
        assert!(!allows_client_auth(&leaf(vec![ServerAuth])).unwrap());
        assert!(!allows_client_auth(&leaf(vec![])).unwrap(), "no EKU");
    }

    #[test]
    fn ed25519_and_rsa_keys_prove_themselves() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::Rsa2048] {
            let s = SoftSigner::new(alg);
            prove_key_matches(&s, &self_signed(&s)).unwrap();
        }
    }
}
