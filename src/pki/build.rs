//! Building certificates with rcgen from what a profile approved — never by
//! copying a CSR's extensions — and signing them through a [`Signer`].
//!
//! Every builder comes in two halves: `prepare_*` returns the exact
//! [`ToBeSigned`] bytes (so the caller can record them with the reserved
//! serial first), and `build_*` prepares and signs in one call.

use chrono::{DateTime, Utc};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::PkiError;
use super::signer::{PublicKeyBits, ToBeSigned, key_identifier};
use crate::domain::der;
use crate::domain::profile::MAX_COMMON_NAME_LEN;
use crate::domain::{ApprovedCertificate, CaId, ExtendedKeyUsage, San, Secret, Signer};

const OID_AIA: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
/// id-ad-ocsp and id-ad-caIssuers, DER content octets.
const ID_AD_OCSP: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
const ID_AD_CA_ISSUERS: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];

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

/// A fresh 16-byte serial: positive and minimal as DER wants it (the first
/// byte is 0x40..=0x7f: never negative, never a leading zero), made of 46
/// bits of the current Unix time in milliseconds and then 80 bits from a
/// CSPRNG — more than the 64 unpredictable bits CAs must put in a serial.
///
/// The time comes first so that serials made later sort later: the unique
/// (CA, serial) indexes of certificates and requests then grow at their
/// right edge, and a transaction of many issuances writes a few index pages
/// instead of one page per certificate at random (docs/performance.md).
/// The time they show is the certificate's notBefore anyway.
pub fn new_serial() -> Vec<u8> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut serial = vec![0u8; 16];
    serial[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    serial[0] = (serial[0] & 0x3f) | 0x40;
    rand::rng().fill_bytes(&mut serial[6..]);
    serial
}

/// Lower-case hex of a serial, as the API and the database show it.
pub fn serial_hex(serial: &[u8]) -> String {
    hex::encode(serial)
}

/// The serial must already be the content of a positive, minimal DER
/// INTEGER of at most 20 octets, so that [`serial_hex`] of what was
/// reserved equals the hex of what the certificate carries.
fn serial_number(serial: &[u8]) -> Result<SerialNumber, PkiError> {
    match serial.first() {
        Some(0x01..=0x7f) if serial.len() <= 20 => Ok(SerialNumber::from_slice(serial)),
        _ => Err(PkiError::encoding(
            "a serial must be 1 to 20 bytes with a first byte in 01..7f",
        )),
    }
}

fn offset(t: DateTime<Utc>) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(PkiError::encoding)
}

/// notAfter is inclusive (RFC 5280 §4.1.2.5): a period of `days` days ends
/// one second before the same time `days` days later.
fn end_of(not_before: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    not_before + chrono::Duration::days(i64::from(days)) - chrono::Duration::seconds(1)
}

/// An issuing CA: its signer and its certificate, whose subject DN and SKI
/// become the issued certificates' issuer DN and AKI.
pub struct Issuer<'a> {
    signer: &'a dyn Signer,
    public: PublicKeyBits,
    certificate_der: Vec<u8>,
    subject_raw: Vec<u8>,
    not_after: DateTime<Utc>,
}

impl<'a> Issuer<'a> {
    /// Refuses a signer whose key is not the certificate's: everything it
    /// signed would fail to verify.
    pub fn new(signer: &'a dyn Signer, ca_certificate_der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) =
            X509Certificate::from_der(ca_certificate_der).map_err(PkiError::encoding)?;
        let public = PublicKeyBits::new(signer.public_key_spki(), signer.algorithm())?;
        if cert.public_key().subject_public_key.data.as_ref() != public.bits.as_slice() {
            return Err(PkiError::KeyMismatch(
                "the signer's key is not the CA certificate's key".into(),
            ));
        }
        Ok(Self {
            not_after: super::inspect::utc(cert.validity().not_after)?,
            certificate_der: ca_certificate_der.to_vec(),
            subject_raw: cert.subject().as_raw().to_vec(),
            public,
            signer,
        })
    }

    /// The CA's notAfter, beyond which nothing it issues may be valid.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    pub(crate) fn signer(&self) -> &dyn Signer {
        self.signer
    }

    /// The CA's subject Name, DER, as issued certificates and CRLs name
    /// their issuer.
    pub(crate) fn subject_raw(&self) -> &[u8] {
        &self.subject_raw
    }

    /// What the CA's certificates and CRLs carry as AuthorityKeyIdentifier.
    pub(crate) fn key_identifier(&self) -> Vec<u8> {
        key_identifier(&self.public.bits)
    }

    /// Encodes `params` for `subject_spki_der` as issued by this CA and
    /// checks that what rcgen wrote is what was meant.
    fn prepare(
        &self,
        params: &CertificateParams,
        subject: &PublicKeyBits,
        subject_spki_der: &[u8],
    ) -> Result<ToBeSigned, PkiError> {
        let ca = rustls_pki_types::CertificateDer::from(self.certificate_der.as_slice());
        let issuer = rcgen::Issuer::from_ca_cert_der(&ca, &self.public)?;
        let unsigned = params.signed_by(subject, &issuer)?;
        check_unsigned(unsigned.der(), subject_spki_der, Some(&self.subject_raw))?;
        ToBeSigned::from_unsigned(unsigned.der(), &self.public)
    }
}

/// rcgen re-encodes the issuer DN from its parsed form and the SPKI from
/// the key bits; both must come out byte-identical or relying parties will
/// not chain the certificate or will see another key.
fn check_unsigned(
    unsigned: &[u8],
    subject_spki_der: &[u8],
    issuer_name: Option<&[u8]>,
) -> Result<(), PkiError> {
    let (_, cert) = X509Certificate::from_der(unsigned).map_err(PkiError::encoding)?;
    if cert.public_key().raw != subject_spki_der {
        return Err(PkiError::encoding(
            "the subject public key did not survive encoding unchanged",
        ));
    }
    if issuer_name.is_some_and(|name| cert.issuer().as_raw() != name) {
        return Err(PkiError::encoding(
            "the issuer name differs from the CA certificate's subject",
        ));
    }
    Ok(())
}

fn ca_params(
    subject: &CaSubject,
    spki_bits: &[u8],
    validity_days: u32,
    serial: &[u8],
    path_len: Option<u8>,
) -> Result<CertificateParams, PkiError> {
    let cn = subject.common_name.trim();
    if cn.is_empty() || cn.chars().count() > MAX_COMMON_NAME_LEN || cn.chars().any(char::is_control)
    {
        return Err(PkiError::InvalidSubject(
            "a CA's common name must be 1 to 64 printable characters".into(),
        ));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(o) = subject.organization.as_deref().map(str::trim) {
        if o.is_empty() || o.chars().count() > 64 || o.chars().any(char::is_control) {
            return Err(PkiError::InvalidSubject(
                "an organization name must be 1 to 64 printable characters".into(),
            ));
        }
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(serial_number(serial)?);
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(spki_bits));
    params.use_authority_key_identifier_extension = true;
    let now = Utc::now();
    params.not_before = offset(now)?;
    params.not_after = offset(end_of(now, validity_days))?;
    Ok(params)
}

/// The to-be-signed part of a self-signed root CA certificate for the key
/// of `signer` (which is not asked to sign here).
pub fn prepare_root_ca(
    signer: &dyn Signer,
    subject: &CaSubject,
    validity_days: u32,
    serial: &[u8],
) -> Result<ToBeSigned, PkiError> {
    let key = PublicKeyBits::new(signer.public_key_spki(), signer.algorithm())?;
    let params = ca_params(subject, &key.bits, validity_days, serial, None)?;
    let unsigned = params.self_signed(&key)?;
    check_unsigned(unsigned.der(), signer.public_key_spki(), None)?;
    ToBeSigned::from_unsigned(unsigned.der(), &key)
}

/// A self-signed root CA certificate. Blocking (it signs).
pub fn build_root_ca(
    signer: &dyn Signer,
    subject: &CaSubject,
    validity_days: u32,
    serial: &[u8],
) -> Result<Vec<u8>, PkiError> {
    prepare_root_ca(signer, subject, validity_days, serial)?.sign(signer)
}

/// The to-be-signed part of an intermediate CA certificate (path length
/// 0: it issues end-entity certificates only) for the key `spki_der`.
pub fn prepare_intermediate_ca(
    subject: &CaSubject,
    spki_der: &[u8],
    key_algorithm: crate::domain::KeyAlgorithm,
    issuer: &Issuer<'_>,
    validity_days: u32,
    serial: &[u8],
    urls: Option<&PublicUrls>,
) -> Result<ToBeSigned, PkiError> {
    let subject_key = PublicKeyBits::new(spki_der, key_algorithm)?;
    let mut params = ca_params(subject, &subject_key.bits, validity_days, serial, Some(0))?;
    params.not_after = params.not_after.min(offset(issuer.not_after)?);
    if let Some(urls) = urls {
        add_urls(&mut params, urls);
    }
    issuer.prepare(&params, &subject_key, spki_der)
}

/// A link certificate of a root rollover: the new root key (`spki_der`)
/// certified by the old root (`issuer`) under the same name, without a path
/// length limit, so that chains to the new root also validate for relying
/// parties that still trust only the old one.
pub fn prepare_link_certificate(
    subject: &CaSubject,
    spki_der: &[u8],
    key_algorithm: crate::domain::KeyAlgorithm,
    issuer: &Issuer<'_>,
    validity_days: u32,
    serial: &[u8],
) -> Result<ToBeSigned, PkiError> {
    let subject_key = PublicKeyBits::new(spki_der, key_algorithm)?;
    let mut params = ca_params(subject, &subject_key.bits, validity_days, serial, None)?;
    params.not_after = params.not_after.min(offset(issuer.not_after)?);
    issuer.prepare(&params, &subject_key, spki_der)
}

/// An intermediate CA certificate signed by `issuer`. Blocking (it signs).
pub fn build_intermediate_ca(
    subject: &CaSubject,
    spki_der: &[u8],
    key_algorithm: crate::domain::KeyAlgorithm,
    issuer: &Issuer<'_>,
    validity_days: u32,
    serial: &[u8],
    urls: Option<&PublicUrls>,
) -> Result<Vec<u8>, PkiError> {
    prepare_intermediate_ca(
        subject,
        spki_der,
        key_algorithm,
        issuer,
        validity_days,
        serial,
        urls,
    )?
    .sign(issuer.signer)
}

/// The to-be-signed part of an end-entity certificate for
/// `subject_spki_der`, exactly as `approved` says, valid from `not_before`
/// and never beyond the issuer's notAfter.
pub fn prepare_leaf(
    approved: &ApprovedCertificate,
    subject_spki_der: &[u8],
    issuer: &Issuer<'_>,
    serial: &[u8],
    not_before: DateTime<Utc>,
    urls: &PublicUrls,
) -> Result<ToBeSigned, PkiError> {
    let subject_key = PublicKeyBits::new(subject_spki_der, approved.key_algorithm)?;
    let mut params = CertificateParams::default();
    // Without a CN the first SAN is repeated as CN, which keeps the
    // subject readable; a name too long for a CN leaves the subject empty
    // and rcgen then marks the SAN extension critical, as RFC 5280 wants.
    let cn = approved.common_name.clone().or_else(|| {
        approved
            .sans
            .first()
            .map(San::to_string)
            .filter(|s| s.len() <= MAX_COMMON_NAME_LEN)
    });
    let mut dn = DistinguishedName::new();
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    if dn.iter().next().is_none() && approved.sans.is_empty() {
        return Err(PkiError::InvalidSubject(
            "the certificate would name nobody".into(),
        ));
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
                .map_err(|_| PkiError::InvalidSubject("a DNS name is not ASCII".into())),
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        })
        .collect::<Result<_, _>>()?;
    // ExplicitNoCa writes basicConstraints cA=FALSE and, with it, the SKI.
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
    params.serial_number = Some(serial_number(serial)?);
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(&subject_key.bits));
    params.use_authority_key_identifier_extension = true;
    let not_after = end_of(not_before, approved.validity_days).min(issuer.not_after);
    if not_after <= not_before {
        return Err(PkiError::encoding(
            "the issuing CA expires before the certificate would start",
        ));
    }
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    add_urls(&mut params, urls);
    issuer.prepare(&params, &subject_key, subject_spki_der)
}

/// An end-entity certificate; see [`prepare_leaf`]. Blocking (it signs).
pub fn build_leaf(
    approved: &ApprovedCertificate,
    subject_spki_der: &[u8],
    issuer: &Issuer<'_>,
    serial: &[u8],
    not_before: DateTime<Utc>,
    urls: &PublicUrls,
) -> Result<Vec<u8>, PkiError> {
    prepare_leaf(approved, subject_spki_der, issuer, serial, not_before, urls)?.sign(issuer.signer)
}

/// id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1): relying parties need not
/// check the responder certificate's own revocation status.
const OID_OCSP_NOCHECK: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5];

/// The certificate of a CA's delegated OCSP responder: id-kp-OCSPSigning
/// only, digitalSignature, id-pkix-ocsp-nocheck, no CRL DP or AIA (it is
/// short-lived and renewed instead of revoked).
pub fn prepare_ocsp_signer(
    issuer: &Issuer<'_>,
    common_name: &str,
    subject_spki_der: &[u8],
    subject_algorithm: crate::domain::KeyAlgorithm,
    serial: &[u8],
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
) -> Result<ToBeSigned, PkiError> {
    let subject_key = PublicKeyBits::new(subject_spki_der, subject_algorithm)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
    params.serial_number = Some(serial_number(serial)?);
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(&subject_key.bits));
    params.use_authority_key_identifier_extension = true;
    let not_after = not_after.min(issuer.not_after);
    if not_after <= not_before {
        return Err(PkiError::encoding(
            "the issuing CA expires before the responder certificate would start",
        ));
    }
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            OID_OCSP_NOCHECK,
            der::NULL.to_vec(),
        ));
    issuer.prepare(&params, &subject_key, subject_spki_der)
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
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            OID_AIA,
            authority_info_access(&urls.ocsp, &urls.ca_issuers),
        ));
}

/// AuthorityInfoAccessSyntax ::= SEQUENCE OF AccessDescription, each
/// `SEQUENCE { accessMethod OID, accessLocation [6] IMPLICIT IA5String }`.
fn authority_info_access(ocsp: &str, ca_issuers: &str) -> Vec<u8> {
    let access = |method: &[u8], uri: &str| {
        der::sequence(&[&der::tlv(0x06, method), &der::tlv(0x86, uri.as_bytes())])
    };
    der::sequence(&[
        &access(ID_AD_OCSP, ocsp),
        &access(ID_AD_CA_ISSUERS, ca_issuers),
    ])
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
    use std::path::PathBuf;
    use std::process::Command;

    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};

    use super::*;
    use crate::domain::KeyAlgorithm;
    use crate::pki::testutil::{SoftSigner, csr_pem, openssl_csr, pkilint, tool_available};
    use crate::pki::{CertInfo, parse_csr, prove_key_matches, to_pem, verify_signed_by};

    const BASE: &str = "http://127.0.0.1:8080/";

    struct Chain {
        root: Vec<u8>,
        root_key: SoftSigner,
        intermediate: Vec<u8>,
        inter_key: SoftSigner,
        inter_id: CaId,
    }

    fn subject(cn: &str) -> CaSubject {
        CaSubject {
            common_name: cn.into(),
            organization: Some("clm".into()),
        }
    }

    fn chain_of(root_alg: KeyAlgorithm, inter_alg: KeyAlgorithm) -> Chain {
        let root_key = SoftSigner::new(root_alg);
        let inter_key = SoftSigner::new(inter_alg);
        let root = build_root_ca(&root_key, &subject("Test Root"), 3650, &new_serial()).unwrap();
        let issuer = Issuer::new(&root_key, &root).unwrap();
        let urls = PublicUrls::new(BASE, CaId::new());
        let intermediate = build_intermediate_ca(
            &subject("Test Intermediate"),
            inter_key.public_key_spki(),
            inter_alg,
            &issuer,
            1825,
            &new_serial(),
            Some(&urls),
        )
        .unwrap();
        Chain {
            root,
            root_key,
            intermediate,
            inter_key,
            inter_id: CaId::new(),
        }
    }

    fn chain() -> Chain {
        chain_of(KeyAlgorithm::EcdsaP384, KeyAlgorithm::EcdsaP256)
    }

    fn approved_from(
        csr_text: &str,
        days: u32,
        ekus: &[ExtendedKeyUsage],
    ) -> (ApprovedCertificate, Vec<u8>) {
        let csr = parse_csr(csr_text).unwrap();
        (
            ApprovedCertificate {
                common_name: csr.common_name.clone(),
                sans: csr.sans.clone(),
                key_algorithm: csr.key_algorithm,
                validity_days: days,
                extended_key_usages: ekus.to_vec(),
            },
            csr.spki_der,
        )
    }

    fn leaf(chain: &Chain, csr: &str, days: u32) -> Vec<u8> {
        let (approved, spki) = approved_from(
            csr,
            days,
            &[ExtendedKeyUsage::ServerAuth, ExtendedKeyUsage::ClientAuth],
        );
        let issuer = Issuer::new(&chain.inter_key, &chain.intermediate).unwrap();
        build_leaf(
            &approved,
            &spki,
            &issuer,
            &new_serial(),
            Utc::now(),
            &PublicUrls::new(BASE, chain.inter_id),
        )
        .unwrap()
    }

    fn ext<'a>(
        cert: &'a X509Certificate<'a>,
        oid: &str,
    ) -> Option<&'a x509_parser::extensions::X509Extension<'a>> {
        cert.extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == oid)
    }

    fn ski(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
        cert.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
    }

    fn aki(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
        cert.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    // keyIdentifier only: issuer name and serial would pin the
                    // CA certificate and break rollover.
                    assert!(a.authority_cert_issuer.is_none() && a.authority_cert_serial.is_none());
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
    }

    #[test]
    fn serials_are_positive_minimal_random_and_ordered_in_time() {
        let a = new_serial();
        assert_eq!(a.len(), 16);
        assert!((0x40..=0x7f).contains(&a[0]));
        // The random part alone tells serials of the same millisecond apart.
        let tails: std::collections::HashSet<Vec<u8>> =
            (0..1000).map(|_| new_serial()[6..].to_vec()).collect();
        assert_eq!(tails.len(), 1000);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_serial();
        assert!(
            serial_hex(&a) < serial_hex(&b),
            "a later serial sorts later"
        );
        assert_eq!(serial_hex(&[0x4a, 0x01]), "4a01");
        for bad in [&[][..], &[0x00, 0x01], &[0x80], &[0x01; 21]] {
            assert!(serial_number(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ca_certificates_have_the_ca_extensions() {
        let chain = chain();
        let (_, root) = X509Certificate::from_der(&chain.root).unwrap();
        let (_, inter) = X509Certificate::from_der(&chain.intermediate).unwrap();
        assert_eq!(root.subject().to_string(), "O=clm, CN=Test Root");
        assert_eq!(root.issuer().as_raw(), root.subject().as_raw());
        assert_eq!(inter.issuer().as_raw(), root.subject().as_raw());
        for (cert, path_len) in [(&root, None), (&inter, Some(0))] {
            let bc = cert.basic_constraints().unwrap().unwrap();
            assert!(bc.critical && bc.value.ca);
            assert_eq!(bc.value.path_len_constraint, path_len);
            let ku = cert.key_usage().unwrap().unwrap();
            assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
            assert!(!ku.value.digital_signature());
            assert_eq!(
                ski(cert).unwrap(),
                key_identifier(&cert.public_key().subject_public_key.data)
            );
        }
        assert_eq!(aki(&root), ski(&root));
        assert_eq!(aki(&inter), ski(&root));
        assert!(ext(&root, "1.3.6.1.5.5.7.1.1").is_none());
        assert!(ext(&inter, "1.3.6.1.5.5.7.1.1").is_some());
        assert_eq!(inter.public_key().raw, chain.inter_key.public_key_spki());
        verify_signed_by(&chain.root, &chain.root).unwrap();
        verify_signed_by(&chain.intermediate, &chain.root).unwrap();
        prove_key_matches(&chain.root_key, &chain.root).unwrap();
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
        assert!(matches!(
            verify_signed_by(&der, &chain.root),
            Err(PkiError::NotIssuedBy(_))
        ));

        let (_, inter) = X509Certificate::from_der(&chain.intermediate).unwrap();
        assert_eq!(cert.issuer().as_raw(), inter.subject().as_raw());
        assert_eq!(cert.subject().to_string(), "CN=www.clm.test");
        assert_eq!(aki(&cert), ski(&inter));
        assert_eq!(
            ski(&cert).unwrap(),
            key_identifier(rcgen::PublicKeyData::der_bytes(&key))
        );

        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca && bc.value.path_len_constraint.is_none());
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.digital_signature());
        assert!(!ku.value.key_encipherment() && !ku.value.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(!eku.critical);
        assert!(eku.value.server_auth && eku.value.client_auth && !eku.value.code_signing);
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        assert!(!sans.critical);
        assert_eq!(
            sans.value.general_names,
            vec![
                GeneralName::DNSName("www.clm.test"),
                GeneralName::IPAddress(&[10, 1, 2, 3]),
            ]
        );

        let crl_url = format!("http://127.0.0.1:8080/crl/{}.crl", chain.inter_id);
        match ext(&cert, "2.5.29.31").map(|e| e.parsed_extension()) {
            Some(ParsedExtension::CRLDistributionPoints(dps)) => {
                assert_eq!(dps.points.len(), 1);
                match &dps.points[0].distribution_point {
                    Some(DistributionPointName::FullName(names)) => {
                        assert_eq!(names, &vec![GeneralName::URI(&crl_url)])
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        let aia = ext(&cert, "1.3.6.1.5.5.7.1.1").unwrap();
        assert!(!aia.critical);
        match aia.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => {
                let found: Vec<(String, GeneralName<'_>)> = aia
                    .accessdescs
                    .iter()
                    .map(|d| (d.access_method.to_id_string(), d.access_location.clone()))
                    .collect();
                let issuers = format!("http://127.0.0.1:8080/ca/{}.der", chain.inter_id);
                assert_eq!(
                    found,
                    vec![
                        (
                            "1.3.6.1.5.5.7.48.1".to_string(),
                            GeneralName::URI("http://127.0.0.1:8080/ocsp")
                        ),
                        ("1.3.6.1.5.5.7.48.2".to_string(), GeneralName::URI(&issuers)),
                    ]
                );
            }
            other => panic!("{other:?}"),
        }

        let info = CertInfo::from_der(&der).unwrap();
        assert_eq!(
            info.not_after - info.not_before,
            chrono::Duration::days(90) - chrono::Duration::seconds(1)
        );
        let serial = cert.raw_serial();
        assert!(serial[0] & 0x80 == 0 && serial[0] != 0 && serial.len() * 8 >= 64);
        assert_eq!(info.serial_hex.len(), 32);
    }

    #[test]
    fn rsa_keys_and_rsa_cas() {
        let chain = chain_of(KeyAlgorithm::Rsa3072, KeyAlgorithm::Rsa2048);
        prove_key_matches(&chain.inter_key, &chain.intermediate).unwrap();
        let csr = openssl_csr(
            &["-newkey", "rsa:2048"],
            "/CN=rsa.clm.test",
            Some("DNS:rsa.clm.test"),
        );
        let der = leaf(&chain, &csr, 30);
        verify_signed_by(&der, &chain.intermediate).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            parse_csr(&csr).unwrap().spki_der.as_slice()
        );
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment());
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.11"
        );
    }

    #[test]
    fn a_leaf_without_a_cn_takes_its_first_san_or_none() {
        let chain = chain();
        let issuer = Issuer::new(&chain.inter_key, &chain.intermediate).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let long = format!("{}.clm.test", "a".repeat(60));
        for (first, expected_subject, critical) in [
            ("short.clm.test", "CN=short.clm.test", false),
            (long.as_str(), "", true),
        ] {
            let approved = ApprovedCertificate {
                common_name: None,
                sans: vec![San::Dns(first.into())],
                key_algorithm: KeyAlgorithm::EcdsaP256,
                validity_days: 10,
                extended_key_usages: vec![ExtendedKeyUsage::ServerAuth],
            };
            let der = build_leaf(
                &approved,
                &spki,
                &issuer,
                &new_serial(),
                Utc::now(),
                &PublicUrls::new(BASE, chain.inter_id),
            )
            .unwrap();
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(cert.subject().to_string(), expected_subject);
            assert_eq!(
                cert.subject_alternative_name().unwrap().unwrap().critical,
                critical
            );
        }
    }

    #[test]
    fn validity_never_exceeds_the_issuer() {
        let chain = chain();
        let key = rcgen::KeyPair::generate().unwrap();
        let der = leaf(&chain, &csr_pem(&key, "a.clm.test", &["a.clm.test"]), 3000);
        let inter = CertInfo::from_der(&chain.intermediate).unwrap();
        assert_eq!(CertInfo::from_der(&der).unwrap().not_after, inter.not_after);

        let issuer = Issuer::new(&chain.inter_key, &chain.intermediate).unwrap();
        let (approved, spki) = approved_from(&csr_pem(&key, "b.clm.test", &["b.clm.test"]), 1, &[]);
        let late = issuer.not_after() + chrono::Duration::days(1);
        assert!(matches!(
            build_leaf(
                &approved,
                &spki,
                &issuer,
                &new_serial(),
                late,
                &PublicUrls::new(BASE, chain.inter_id)
            ),
            Err(PkiError::Encoding(_))
        ));
    }

    #[test]
    fn the_prepared_bytes_are_what_gets_signed() {
        let chain = chain();
        let issuer = Issuer::new(&chain.inter_key, &chain.intermediate).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let (approved, spki) = approved_from(
            &csr_pem(&key, "t.clm.test", &["t.clm.test"]),
            5,
            &[ExtendedKeyUsage::ClientAuth],
        );
        let serial = new_serial();
        let tbs = prepare_leaf(
            &approved,
            &spki,
            &issuer,
            &serial,
            Utc::now(),
            &PublicUrls::new(BASE, chain.inter_id),
        )
        .unwrap();
        // Another key — even the root's — cannot sign it.
        assert!(matches!(
            tbs.clone().sign(&chain.root_key),
            Err(PkiError::KeyMismatch(_))
        ));
        let der = tbs.clone().sign(&chain.inter_key).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.tbs_certificate.as_ref(), tbs.tbs_der());
        assert_eq!(cert.raw_serial(), serial.as_slice());
        verify_signed_by(&der, &chain.intermediate).unwrap();
    }

    #[test]
    fn a_signer_for_another_key_is_refused() {
        let chain = chain();
        assert!(matches!(
            Issuer::new(&chain.root_key, &chain.intermediate),
            Err(PkiError::KeyMismatch(_))
        ));
        assert!(matches!(
            build_root_ca(&chain.root_key, &subject(" "), 10, &new_serial()),
            Err(PkiError::InvalidSubject(_))
        ));
    }

    #[test]
    fn key_proofs_detect_a_foreign_key() {
        let chain = chain();
        prove_key_matches(&chain.inter_key, &chain.intermediate).unwrap();
        let other = SoftSigner::new(KeyAlgorithm::EcdsaP256);
        assert!(matches!(
            prove_key_matches(&other, &chain.intermediate),
            Err(PkiError::KeyMismatch(_))
        ));
    }

    fn write_pem(dir: &tempfile::TempDir, name: &str, der: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, to_pem("CERTIFICATE", der)).unwrap();
        p
    }

    #[test]
    fn openssl_verifies_the_chain() {
        let chain = chain_of(KeyAlgorithm::EcdsaP384, KeyAlgorithm::Rsa2048);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let der = leaf(
            &chain,
            &csr_pem(&key, "svc.clm.test", &["svc.clm.test"]),
            90,
        );
        let dir = tempfile::tempdir().unwrap();
        let (root, inter, leaf) = (
            write_pem(&dir, "root.pem", &chain.root),
            write_pem(&dir, "inter.pem", &chain.intermediate),
            write_pem(&dir, "leaf.pem", &der),
        );
        let out = Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile"])
            .arg(&root)
            .arg("-untrusted")
            .arg(&inter)
            .arg(&leaf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// pkilint's RFC 5280 linter on each certificate and on each
    /// issuer/subject pair. Only findings of WARNING and above count;
    /// pkilint reports nothing below that for a clean certificate.
    #[test]
    fn pkilint_finds_nothing() {
        if !tool_available("lint_pkix_cert", &["--help"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (root_alg, inter_alg, leaf_args) in [
            (
                KeyAlgorithm::EcdsaP384,
                KeyAlgorithm::EcdsaP256,
                vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            ),
            (
                KeyAlgorithm::Rsa4096,
                KeyAlgorithm::Rsa2048,
                vec!["-newkey", "rsa:2048"],
            ),
        ] {
            let chain = chain_of(root_alg, inter_alg);
            let csr = openssl_csr(
                &leaf_args,
                "/CN=lint.clm.test",
                Some("DNS:lint.clm.test,IP:192.0.2.1"),
            );
            let der = leaf(&chain, &csr, 90);
            let tag = format!("{root_alg}-{inter_alg}");
            let root = write_pem(&dir, &format!("root-{tag}.pem"), &chain.root);
            let inter = write_pem(&dir, &format!("inter-{tag}.pem"), &chain.intermediate);
            let leaf = write_pem(&dir, &format!("leaf-{tag}.pem"), &der);
            for file in [&root, &inter, &leaf] {
                let report = pkilint("lint_pkix_cert", &[file]);
                assert!(report.trim().is_empty(), "{}:\n{report}", file.display());
            }
            for (issuer, subject) in [(&root, &root), (&root, &inter), (&inter, &leaf)] {
                let report = pkilint("lint_pkix_signer_signee_cert_chain", &[issuer, subject]);
                assert!(
                    report.trim().is_empty(),
                    "{} -> {}:\n{report}",
                    issuer.display(),
                    subject.display()
                );
            }
        }
    }
}
