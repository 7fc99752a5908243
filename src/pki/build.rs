//! Building certificates with rcgen from what a profile approved — never by
//! copying a CSR's extensions — and signing them through a [`Signer`].

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose, SanType, SerialNumber,
    SignatureAlgorithm,
};
use time::OffsetDateTime;

use super::PkiError;
use crate::domain::der;
use crate::domain::{
    ApprovedCertificate, CaId, ExtendedKeyUsage, KeyAlgorithm, San, Secret, SignError, Signer,
};

/// The URLs relying parties need, written into CRL DP and AIA.
#[derive(Clone, Debug)]
pub struct PublicUrls {
    pub crl: String,
    pub ocsp: String,
    pub ca_issuers: String,
}

impl PublicUrls {
    /// URLs for certificates issued by `ca` under the public base URL.
    pub fn new(base: &str, ca: CaId) -> Self {
        let base = base.trim_end_matches('/');
        Self {
            crl: format!("{base}/crl/{ca}.crl"),
            ocsp: format!("{base}/ocsp"),
            ca_issuers: format!("{base}/ca/{ca}.der"),
        }
    }
}

/// Subject of a CA certificate.
#[derive(Clone, Debug)]
pub struct CaSubject {
    pub common_name: String,
    pub organization: Option<String>,
}

/// 16 random bytes from a CSPRNG as a positive, minimal DER INTEGER: the
/// first byte is forced into 0x40..=0x7f (positive, never a leading zero),
/// which leaves 126 random bits — well above the 64 bits CAs must use.
pub fn random_serial() -> Vec<u8> {
    let mut serial = vec![0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x3f) | 0x40;
    serial
}

/// Lower-case hex of a serial, as the API and the database show it.
pub fn serial_hex(serial: &[u8]) -> String {
    hex::encode(serial)
}

/// Adapts a clm [`Signer`] to rcgen. rcgen's error type cannot carry ours,
/// so the signer's own error is kept aside for the caller.
struct RcgenKey<'a> {
    signer: &'a dyn Signer,
    subject_public_key: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
    failure: Mutex<Option<SignError>>,
}

impl<'a> RcgenKey<'a> {
    fn new(signer: &'a dyn Signer) -> Result<Self, PkiError> {
        Ok(Self {
            subject_public_key: subject_public_key_bits(signer.public_key_spki())?,
            algorithm: signature_algorithm(signer.algorithm())?,
            signer,
            failure: Mutex::new(None),
        })
    }

    /// The signer's error, if rcgen failed because of it.
    fn take_failure(&self) -> Option<SignError> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }
}

impl rcgen::PublicKeyData for RcgenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.subject_public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for RcgenKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.signer.sign(msg).map_err(|e| {
            if let Ok(mut slot) = self.failure.lock() {
                *slot = Some(e);
            }
            rcgen::Error::RemoteKeyError
        })
    }
}

/// A subject public key given as SPKI bytes (from a CSR or the token).
struct SubjectKey {
    bits: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl rcgen::PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

fn signature_algorithm(alg: KeyAlgorithm) -> Result<&'static SignatureAlgorithm, PkiError> {
    Ok(match alg {
        KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            &rcgen::PKCS_RSA_SHA256
        }
        KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
    })
}

/// The subjectPublicKey BIT STRING contents of an SPKI.
fn subject_public_key_bits(spki: &[u8]) -> Result<Vec<u8>, PkiError> {
    let bad = || PkiError::Encoding("malformed SubjectPublicKeyInfo".into());
    let (tag, body, _) = der::read_tlv(spki).ok_or_else(bad)?;
    if tag != 0x30 {
        return Err(bad());
    }
    let (_, _, rest) = der::read_tlv(body).ok_or_else(bad)?; // AlgorithmIdentifier
    let (tag, bits, _) = der::read_tlv(rest).ok_or_else(bad)?;
    match (tag, bits.split_first()) {
        (0x03, Some((0, key))) => Ok(key.to_vec()),
        _ => Err(bad()),
    }
}

/// RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
fn key_identifier(subject_public_key: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, subject_public_key)
        .as_ref()
        .to_vec()
}

fn offset(t: DateTime<Utc>) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(|e| PkiError::Encoding(e.to_string()))
}

/// An issuing CA: its signer and its certificate (whose subject DN and
/// SKI become the issued certificates' issuer DN and AKI).
pub struct Issuer<'a> {
    signer: &'a dyn Signer,
    certificate_der: Vec<u8>,
    not_after: DateTime<Utc>,
}

impl<'a> Issuer<'a> {
    pub fn new(signer: &'a dyn Signer, ca_certificate_der: &[u8]) -> Result<Self, PkiError> {
        let info = super::CertInfo::from_der(ca_certificate_der)?;
        Ok(Self {
            signer,
            certificate_der: ca_certificate_der.to_vec(),
            not_after: info.not_after,
        })
    }

    /// Signs `params` for `subject` with this CA's key.
    fn sign(
        &self,
        params: &CertificateParams,
        subject: &impl rcgen::PublicKeyData,
    ) -> Result<Vec<u8>, PkiError> {
        let key = RcgenKey::new(self.signer)?;
        let ca = rustls_pki_types::CertificateDer::from(self.certificate_der.as_slice());
        let issuer = rcgen::Issuer::from_ca_cert_der(&ca, &key)?;
        match params.signed_by(subject, &issuer) {
            Ok(cert) => Ok(cert.der().to_vec()),
            Err(e) => Err(key
                .take_failure()
                .map(PkiError::Signing)
                .unwrap_or_else(|| e.into())),
        }
    }
}

fn subject_key(spki_der: &[u8], alg: KeyAlgorithm) -> Result<SubjectKey, PkiError> {
    Ok(SubjectKey {
        bits: subject_public_key_bits(spki_der)?,
        algorithm: signature_algorithm(alg)?,
    })
}

fn ca_params(
    subject: &CaSubject,
    spki_bits: &[u8],
    validity_days: u32,
    serial: &[u8],
    path_len: Option<u8>,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(o) = &subject.organization {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, subject.common_name.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(spki_bits));
    params.use_authority_key_identifier_extension = true;
    let now = Utc::now();
    params.not_before = offset(now)?;
    params.not_after = offset(now + chrono::Duration::days(i64::from(validity_days)))?;
    Ok(params)
}

/// A self-signed root CA certificate.
pub fn build_root_ca(
    signer: &dyn Signer,
    subject: &CaSubject,
    validity_days: u32,
    serial: &[u8],
) -> Result<Vec<u8>, PkiError> {
    let key = RcgenKey::new(signer)?;
    let params = ca_params(
        subject,
        &key.subject_public_key,
        validity_days,
        serial,
        None,
    )?;
    match params.self_signed(&key) {
        Ok(cert) => Ok(cert.der().to_vec()),
        Err(e) => Err(key
            .take_failure()
            .map(PkiError::Signing)
            .unwrap_or_else(|| e.into())),
    }
}

/// An intermediate CA certificate (path length 0) for the key `spki_der`,
/// signed by `issuer`.
pub fn build_intermediate_ca(
    subject: &CaSubject,
    spki_der: &[u8],
    key_algorithm: KeyAlgorithm,
    issuer: &Issuer<'_>,
    validity_days: u32,
    serial: &[u8],
    urls: Option<&PublicUrls>,
) -> Result<Vec<u8>, PkiError> {
    let subject_key = subject_key(spki_der, key_algorithm)?;
    let mut params = ca_params(subject, &subject_key.bits, validity_days, serial, Some(0))?;
    params.not_after = params.not_after.min(offset(issuer.not_after)?);
    if let Some(urls) = urls {
        add_urls(&mut params, urls);
    }
    issuer.sign(&params, &subject_key)
}

/// An end-entity certificate for `subject_spki_der`, exactly as `approved`
/// says, valid from `not_before` and never beyond the issuer's notAfter.
pub fn build_leaf(
    approved: &ApprovedCertificate,
    subject_spki_der: &[u8],
    issuer: &Issuer<'_>,
    serial: &[u8],
    not_before: DateTime<Utc>,
    urls: &PublicUrls,
) -> Result<Vec<u8>, PkiError> {
    let subject_key = subject_key(subject_spki_der, approved.key_algorithm)?;
    let mut params = CertificateParams::default();
    // A certificate without a subject needs a critical SAN; repeating the
    // first SAN as CN keeps the subject non-empty and readable.
    let cn = approved
        .common_name
        .clone()
        .or_else(|| approved.sans.first().map(San::to_string));
    let mut dn = DistinguishedName::new();
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    params.distinguished_name = dn;
    params.subject_alt_names = approved
        .sans
        .iter()
        .map(|san| match san {
            San::Dns(d) => d
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| PkiError::Encoding(format!("`{d}` is not IA5"))),
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        })
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = match approved.key_algorithm.rsa_bits() {
        Some(_) => vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ],
        None => vec![KeyUsagePurpose::DigitalSignature],
    };
    params.extended_key_usages = approved
        .extended_key_usages
        .iter()
        .map(|e| eku(*e))
        .collect();
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(&subject_key.bits));
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset(not_before)?;
    let not_after = (not_before + chrono::Duration::days(i64::from(approved.validity_days)))
        .min(issuer.not_after);
    params.not_after = offset(not_after)?;
    add_urls(&mut params, urls);
    issuer.sign(&params, &subject_key)
}

fn eku(e: ExtendedKeyUsage) -> ExtendedKeyUsagePurpose {
    match e {
        ExtendedKeyUsage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsage::CodeSigning => ExtendedKeyUsagePurpose::CodeSigning,
        ExtendedKeyUsage::EmailProtection => ExtendedKeyUsagePurpose::EmailProtection,
        ExtendedKeyUsage::TimeStamping => ExtendedKeyUsagePurpose::TimeStamping,
        ExtendedKeyUsage::OcspSigning => ExtendedKeyUsagePurpose::OcspSigning,
    }
}

/// CRL distribution point, and AIA (OCSP and caIssuers), which rcgen does
/// not model and is added as a raw extension.
fn add_urls(params: &mut CertificateParams, urls: &PublicUrls) {
    params.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![urls.crl.clone()],
    }];
    const ID_AD_OCSP: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    const ID_AD_CA_ISSUERS: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
    // AccessDescription ::= SEQUENCE { accessMethod OID, accessLocation [6] IA5String URI }
    let access = |method: &[u8], uri: &str| {
        der::sequence(&[&der::tlv(0x06, method), &der::tlv(0x86, uri.as_bytes())])
    };
    let aia = der::sequence(&[
        &access(ID_AD_OCSP, &urls.ocsp),
        &access(ID_AD_CA_ISSUERS, &urls.ca_issuers),
    ]);
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 1, 1],
            aia,
        ));
}

/// A software key pair for a TLS server (the API listener's own key, which
/// is not a CA key and lives in the data directory like any server key).
pub struct TlsKey {
    private_key_pem: Secret,
    spki_der: Vec<u8>,
}

impl TlsKey {
    pub fn generate() -> Result<Self, PkiError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Ok(Self {
            private_key_pem: Secret::new(key.serialize_pem()),
            spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
        })
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    pub fn private_key_pem(&self) -> &Secret {
        &self.private_key_pem
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use x509_parser::prelude::*;

    use super::*;
    use crate::pki::csr::tests::csr_pem;
    use crate::pki::{CertInfo, parse_csr, prove_key_matches, to_pem, verify_signed_by};

    /// A software signer for unit tests of the encoding only; integration
    /// tests sign with SoftHSM.
    struct SoftSigner(rcgen::KeyPair, KeyAlgorithm);

    impl Signer for SoftSigner {
        fn algorithm(&self) -> KeyAlgorithm {
            self.1
        }
        fn public_key_spki(&self) -> &[u8] {
            Box::leak(rcgen::PublicKeyData::subject_public_key_info(&self.0).into_boxed_slice())
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
            rcgen::SigningKey::sign(&self.0, message).map_err(|e| SignError::Failed(e.to_string()))
        }
    }

    fn soft(alg: &'static SignatureAlgorithm, k: KeyAlgorithm) -> SoftSigner {
        SoftSigner(rcgen::KeyPair::generate_for(alg).unwrap(), k)
    }

    struct Chain {
        root: Vec<u8>,
        intermediate: Vec<u8>,
        inter_key: SoftSigner,
    }

    fn chain() -> Chain {
        let root_key = soft(&rcgen::PKCS_ECDSA_P384_SHA384, KeyAlgorithm::EcdsaP384);
        let inter_key = soft(&rcgen::PKCS_ECDSA_P256_SHA256, KeyAlgorithm::EcdsaP256);
        let subject = |cn: &str| CaSubject {
            common_name: cn.into(),
            organization: Some("clm".into()),
        };
        let root = build_root_ca(&root_key, &subject("Test Root"), 3650, &random_serial()).unwrap();
        let issuer = Issuer::new(&root_key, &root).unwrap();
        let urls = PublicUrls::new("http://127.0.0.1:8080", CaId::new());
        let intermediate = build_intermediate_ca(
            &subject("Test Intermediate"),
            inter_key.public_key_spki(),
            KeyAlgorithm::EcdsaP256,
            &issuer,
            1825,
            &random_serial(),
            Some(&urls),
        )
        .unwrap();
        Chain {
            root,
            intermediate,
            inter_key,
        }
    }

    fn leaf(chain: &Chain, csr: &str, days: u32) -> Vec<u8> {
        let csr = parse_csr(csr).unwrap();
        let approved = ApprovedCertificate {
            common_name: csr.common_name.clone(),
            sans: csr.sans.clone(),
            key_algorithm: csr.key_algorithm,
            validity_days: days,
            extended_key_usages: vec![
                crate::domain::ExtendedKeyUsage::ServerAuth,
                crate::domain::ExtendedKeyUsage::ClientAuth,
            ],
        };
        let issuer = Issuer::new(&chain.inter_key, &chain.intermediate).unwrap();
        let urls = PublicUrls::new("http://127.0.0.1:8080/", CaId::new());
        build_leaf(
            &approved,
            &csr.spki_der,
            &issuer,
            &random_serial(),
            Utc::now(),
            &urls,
        )
        .unwrap()
    }

    #[test]
    fn serials_are_positive_minimal_and_random() {
        let a = random_serial();
        assert_eq!(a.len(), 16);
        assert!((0x40..=0x7f).contains(&a[0]));
        assert_ne!(a, random_serial());
        assert_eq!(serial_hex(&[0x4a, 0x01]), "4a01");
    }

    #[test]
    fn leaf_carries_what_the_profile_approved() {
        let chain = chain();
        let key = rcgen::KeyPair::generate().unwrap();
        let der = leaf(
            &chain,
            &csr_pem(&key, "www.clm.test", &["www.clm.test", "10.1.2.3"]),
            90,
        );
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
        verify_signed_by(&der, &chain.intermediate).unwrap();
        verify_signed_by(&chain.intermediate, &chain.root).unwrap();
        assert!(verify_signed_by(&der, &chain.root).is_err());

        let (_, inter) = X509Certificate::from_der(&chain.intermediate).unwrap();
        assert_eq!(cert.issuer().as_raw(), inter.subject().as_raw());
        let ski = inter
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            });
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        assert_eq!(ski, aki);
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
        let sans = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 2);
        let info = CertInfo::from_der(&der).unwrap();
        assert_eq!((info.not_after - info.not_before).num_days(), 90);
        assert!(cert.raw_serial()[0] & 0x80 == 0);
        let has = |oid: &str| {
            cert.extensions()
                .iter()
                .any(|e| e.oid.to_id_string() == oid)
        };
        assert!(has("2.5.29.31"), "CRL distribution point");
        assert!(has("1.3.6.1.5.5.7.1.1"), "authority information access");
        assert!(has("2.5.29.14"), "subject key identifier");
    }

    #[test]
    fn validity_never_exceeds_the_issuer() {
        let chain = chain();
        let key = rcgen::KeyPair::generate().unwrap();
        let der = leaf(&chain, &csr_pem(&key, "a.clm.test", &["a.clm.test"]), 3000);
        let inter = CertInfo::from_der(&chain.intermediate).unwrap();
        assert_eq!(CertInfo::from_der(&der).unwrap().not_after, inter.not_after);
    }

    #[test]
    fn key_proofs_detect_a_foreign_key() {
        let chain = chain();
        prove_key_matches(&chain.inter_key, &chain.intermediate).unwrap();
        let other = soft(&rcgen::PKCS_ECDSA_P256_SHA256, KeyAlgorithm::EcdsaP256);
        assert!(matches!(
            prove_key_matches(&other, &chain.intermediate),
            Err(PkiError::KeyMismatch(_))
        ));
    }

    #[test]
    fn openssl_and_pkilint_accept_the_chain() {
        let chain = chain();
        let key = rcgen::KeyPair::generate().unwrap();
        let der = leaf(
            &chain,
            &csr_pem(&key, "svc.clm.test", &["svc.clm.test"]),
            90,
        );
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, der: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, to_pem("CERTIFICATE", der)).unwrap();
            p
        };
        let (root, inter, leaf) = (
            write("root.pem", &chain.root),
            write("inter.pem", &chain.intermediate),
            write("leaf.pem", &der),
        );
        let out = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&root)
            .arg("-untrusted")
            .arg(&inter)
            .arg(&leaf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        if Command::new("lint_pkix_cert")
            .arg("--help")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("CLM_TEST_REQUIRE_TOOLS").is_err(),
                "pkilint is required"
            );
            return;
        }
        for p in [&root, &inter, &leaf] {
            let out = Command::new("lint_pkix_cert")
                .arg("lint")
                .arg(p)
                .output()
                .unwrap();
            let report = String::from_utf8_lossy(&out.stdout);
            assert!(
                !report.contains("ERROR") && !report.contains("FATAL"),
                "{}:\n{report}",
                p.display()
            );
        }
    }
}
