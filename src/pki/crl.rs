//! Certificate revocation lists (RFC 5280 §5), encoded by hand: a CA with a
//! million revocations must get its CRL built in well under a second, which
//! a general-purpose encoder allocating per field does not do.

use chrono::{DateTime, Datelike, Utc};

use super::PkiError;
use super::build::Issuer;
use super::signer::ToBeSigned;
use crate::domain::{RevocationReason, der};

/// Extension OIDs (content octets of 2.5.29.x).
const OID_AKI: &[u8] = &[0x55, 0x1d, 0x23];
const OID_CRL_NUMBER: &[u8] = &[0x55, 0x1d, 0x14];
const OID_IDP: &[u8] = &[0x55, 0x1d, 0x1c];
const OID_REASON: &[u8] = &[0x55, 0x1d, 0x15];

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlEntry {
    /// The serial's big-endian magnitude (as stored, without sign byte).
    pub serial: Vec<u8>,
    pub revoked_at: DateTime<Utc>,
    pub reason: RevocationReason,
}

/// The TBSCertList of a v2 CRL by `issuer`: AKI, CRL number and a critical
/// issuing distribution point naming `idp_url` (the URL the certificates'
/// CRL DP carries), and one entry per revocation, with a reasonCode unless
/// the reason is `unspecified` (RFC 5280 §5.3.1 says to omit it then).
pub fn prepare_crl(
    issuer: &Issuer<'_>,
    crl_number: u64,
    this_update: DateTime<Utc>,
    next_update: DateTime<Utc>,
    idp_url: &str,
    entries: &[CrlEntry],
) -> Result<ToBeSigned, PkiError> {
    if next_update <= this_update {
        return Err(PkiError::encoding("nextUpdate must follow thisUpdate"));
    }
    let signer = issuer.signer();
    let algorithm = super::signer::algorithm_identifier(signer.algorithm());

    let mut revoked = Vec::with_capacity(entries.len() * 56);
    for e in entries {
        if e.serial.is_empty() || e.serial.len() > 20 {
            return Err(PkiError::encoding("a serial must be 1 to 20 bytes"));
        }
        let serial = der::unsigned_integer(&e.serial);
        let date = time(e.revoked_at);
        let reason = (e.reason != RevocationReason::Unspecified).then(|| {
            der::sequence(&[&der::sequence(&[
                &der::tlv(0x06, OID_REASON),
                &der::octet_string(&der::tlv(0x0a, &[e.reason.code()])),
            ])])
        });
        let body_len = serial.len() + date.len() + reason.as_ref().map_or(0, Vec::len);
        push_header(&mut revoked, 0x30, body_len);
        revoked.extend_from_slice(&serial);
        revoked.extend_from_slice(&date);
        if let Some(r) = reason {
            revoked.extend_from_slice(&r);
        }
    }

    let aki = extension(
        OID_AKI,
        false,
        &der::sequence(&[&der::tlv(0x80, &issuer.key_identifier())]),
    );
    let number = extension(
        OID_CRL_NUMBER,
        false,
        &der::unsigned_integer(&crl_number.to_be_bytes()),
    );
    // IssuingDistributionPoint { distributionPoint [0] { fullName [0] {
    // uniformResourceIdentifier [6] } } }
    let idp = extension(
        OID_IDP,
        true,
        &der::sequence(&[&der::tlv(
            0xa0,
            &der::tlv(0xa0, &der::tlv(0x86, idp_url.as_bytes())),
        )]),
    );
    let extensions = der::tlv(0xa0, &der::sequence(&[&aki, &number, &idp]));

    let version = der::tlv(0x02, &[0x01]);
    let this = time(this_update);
    let next = time(next_update);
    let fixed = [
        version.as_slice(),
        algorithm,
        issuer.subject_raw(),
        &this,
        &next,
    ];
    let revoked_len = if entries.is_empty() {
        0
    } else {
        header_len(revoked.len()) + revoked.len()
    };
    let body_len = fixed.iter().map(|p| p.len()).sum::<usize>() + revoked_len + extensions.len();
    let mut tbs = Vec::with_capacity(body_len + 6);
    push_header(&mut tbs, 0x30, body_len);
    for part in fixed {
        tbs.extend_from_slice(part);
    }
    // An empty revokedCertificates is omitted, not encoded empty (§5.1.2.6).
    if !entries.is_empty() {
        push_header(&mut tbs, 0x30, revoked.len());
        tbs.extend_from_slice(&revoked);
    }
    tbs.extend_from_slice(&extensions);
    ToBeSigned::new(tbs, signer.public_key_spki(), signer.algorithm())
}

fn extension(oid: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
    let oid = der::tlv(0x06, oid);
    let value = der::octet_string(value);
    if critical {
        der::sequence(&[&oid, &[0x01, 0x01, 0xff], &value])
    } else {
        der::sequence(&[&oid, &value])
    }
}

/// RFC 5280 §5.1.2.4: UTCTime through 2049, GeneralizedTime from 2050.
pub(crate) fn time(t: DateTime<Utc>) -> Vec<u8> {
    if t.year() < 2050 {
        der::tlv(0x17, t.format("%y%m%d%H%M%SZ").to_string().as_bytes())
    } else {
        generalized_time(t)
    }
}

pub(crate) fn generalized_time(t: DateTime<Utc>) -> Vec<u8> {
    der::tlv(0x18, t.format("%Y%m%d%H%M%SZ").to_string().as_bytes())
}

fn header_len(len: usize) -> usize {
    match len {
        0..0x80 => 2,
        0x80..0x100 => 3,
        0x100..0x1_0000 => 4,
        0x1_0000..0x100_0000 => 5,
        _ => 6,
    }
}

fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use chrono::Duration;
    use x509_parser::prelude::*;

    use super::*;
    use crate::domain::KeyAlgorithm;
    use crate::pki::testutil::{SoftSigner, test_ca, tool_available};

    fn entry(serial: &[u8], reason: RevocationReason) -> CrlEntry {
        CrlEntry {
            serial: serial.to_vec(),
            revoked_at: Utc::now() - Duration::hours(1),
            reason,
        }
    }

    #[test]
    fn a_crl_parses_with_its_number_entries_and_reasons() {
        let (signer, ca_der) = test_ca(KeyAlgorithm::EcdsaP256);
        let issuer = Issuer::new(&signer, &ca_der).unwrap();
        let entries = vec![
            entry(&[0x41, 0x02, 0x03], RevocationReason::KeyCompromise),
            entry(&[0x80, 0x01], RevocationReason::Unspecified),
            entry(&[0x7f; 16], RevocationReason::CertificateHold),
        ];
        let now = Utc::now();
        let der = prepare_crl(
            &issuer,
            42,
            now,
            now + Duration::days(1),
            "http://crl.test/x.crl",
            &entries,
        )
        .unwrap()
        .sign(&signer)
        .unwrap();
        let (rest, crl) = CertificateRevocationList::from_der(&der).unwrap();
        assert!(rest.is_empty());
        assert_eq!(crl.crl_number().unwrap(), &42u32.into());
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        assert_eq!(crl.issuer(), ca.subject());
        crl.verify_signature(ca.public_key()).unwrap();
        let got: Vec<_> = crl.iter_revoked_certificates().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].raw_serial(), [0x41, 0x02, 0x03]);
        assert_eq!(got[1].raw_serial(), [0x00, 0x80, 0x01], "positive INTEGER");
        assert_eq!(
            got[0].reason_code().unwrap().1,
            x509_parser::x509::ReasonCode::KeyCompromise
        );
        assert!(got[1].reason_code().is_none(), "unspecified is omitted");
        assert_eq!(
            got[2].reason_code().unwrap().1,
            x509_parser::x509::ReasonCode::CertificateHold
        );
    }

    #[test]
    fn an_empty_crl_omits_the_list_and_a_large_one_stays_fast() {
        let (signer, ca_der) = test_ca(KeyAlgorithm::EcdsaP256);
        let issuer = Issuer::new(&signer, &ca_der).unwrap();
        let now = Utc::now();
        let der = prepare_crl(&issuer, 1, now, now + Duration::hours(1), "http://x", &[])
            .unwrap()
            .sign(&signer)
            .unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        assert_eq!(crl.iter_revoked_certificates().count(), 0);

        let many: Vec<CrlEntry> = (0u32..100_000)
            .map(|i| {
                let mut serial = vec![0x40];
                serial.extend_from_slice(&i.to_be_bytes());
                entry(&serial, RevocationReason::Superseded)
            })
            .collect();
        let der = prepare_crl(&issuer, 2, now, now + Duration::hours(1), "http://x", &many)
            .unwrap()
            .sign(&signer)
            .unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        assert_eq!(crl.iter_revoked_certificates().count(), 100_000);
        crl.verify_signature(X509Certificate::from_der(&ca_der).unwrap().1.public_key())
            .unwrap();
    }

    #[test]
    fn times_switch_to_generalized_in_2050() {
        let t = DateTime::parse_from_rfc3339("2049-12-31T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(time(t)[0], 0x17);
        assert_eq!(time(t + Duration::seconds(1))[0], 0x18);
    }

    #[test]
    fn other_signers_are_refused() {
        let (signer, ca_der) = test_ca(KeyAlgorithm::EcdsaP256);
        let issuer = Issuer::new(&signer, &ca_der).unwrap();
        let now = Utc::now();
        let tbs = prepare_crl(&issuer, 1, now, now + Duration::hours(1), "http://x", &[]).unwrap();
        assert!(tbs.sign(&SoftSigner::new(KeyAlgorithm::EcdsaP256)).is_err());
        assert!(
            prepare_crl(&issuer, 1, now, now, "http://x", &[]).is_err(),
            "empty validity"
        );
    }

    /// openssl verifies the CRL and refuses a revoked certificate with it;
    /// pkilint finds no error.
    #[test]
    fn openssl_and_pkilint_accept_it() {
        if !tool_available("openssl", &["version"]) {
            return;
        }
        let (signer, ca_der) = test_ca(KeyAlgorithm::EcdsaP384);
        let issuer = Issuer::new(&signer, &ca_der).unwrap();
        let now = Utc::now();
        let der = prepare_crl(
            &issuer,
            7,
            now,
            now + Duration::days(1),
            "http://127.0.0.1:8080/crl/x.crl",
            &[entry(&[0x42; 16], RevocationReason::KeyCompromise)],
        )
        .unwrap()
        .sign(&signer)
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let crl_path = dir.path().join("crl.der");
        std::fs::write(&crl_path, &der).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, crate::pki::to_pem("CERTIFICATE", &ca_der)).unwrap();
        let out = Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(&crl_path)
            .arg("-CAfile")
            .arg(&ca_path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("verify OK"), "{text}");
        assert!(text.contains("Key Compromise"), "{text}");
        if tool_available("lint_crl", &["--help"]) {
            let out = Command::new("lint_crl")
                .args(["lint", "-t", "CRL", "-p", "PKIX"])
                .arg(&crl_path)
                .output()
                .unwrap();
            let report = String::from_utf8_lossy(&out.stdout);
            assert!(
                !report.contains("ERROR") && !report.contains("FATAL"),
                "{report}"
            );
        }
    }
}
