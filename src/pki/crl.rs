//! Certificate revocation lists (RFC 5280 §5), encoded by hand: a CA with a
//! million revocations must get its CRL built in well under a second, which
//! a general-purpose encoder allocating per field does not do.

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::PkiError;
use super::build::Issuer;
use super::signer::ToBeSigned;
use crate::domain::{RevocationReason, der};

/// Extension OIDs (content octets of 2.5.29.x).
const OID_AKI: &[u8] = &[0x55, 0x1d, 0x23];
const OID_CRL_NUMBER: &[u8] = &[0x55, 0x1d, 0x14];
const OID_IDP: &[u8] = &[0x55, 0x1d, 0x1c];
const OID_REASON: &[u8] = &[0x55, 0x1d, 0x15];

/// The revokedCertificates of a CRL, encoded entry by entry as the
/// revocations are read: a million entries never exist as a million
/// separate values, only as their DER.
#[derive(Debug, Default)]
pub struct RevokedList {
    der: Vec<u8>,
    count: usize,
}

impl RevokedList {
    /// Room for about `entries` entries (one with a 16-byte serial and a
    /// reason takes about 50 bytes).
    pub fn with_capacity(entries: usize) -> Self {
        Self {
            der: Vec::with_capacity(entries.saturating_mul(50)),
            count: 0,
        }
    }

    /// Appends one revocation; `serial` is the big-endian magnitude (as
    /// stored, without sign byte). A reasonCode is written unless the
    /// reason is `unspecified` (RFC 5280 §5.3.1 says to omit it then).
    pub fn push(
        &mut self,
        serial: &[u8],
        revoked_at: DateTime<Utc>,
        reason: RevocationReason,
    ) -> Result<(), PkiError> {
        if serial.is_empty() || serial.len() > 20 {
            return Err(PkiError::encoding("a serial must be 1 to 20 bytes"));
        }
        let out = &mut self.der;
        let start = out.len();
        // Its content is at most 23 + 17 + 14 bytes, so the length takes
        // the short form; it is filled in once the entry is written.
        out.extend_from_slice(&[0x30, 0]);
        der::push_unsigned_integer(out, serial);
        push_time(out, revoked_at);
        if reason != RevocationReason::Unspecified {
            // SEQUENCE { SEQUENCE { OID reasonCode, OCTET STRING { ENUMERATED } } }
            out.extend_from_slice(&[0x30, 12, 0x30, 10, 0x06, 3]);
            out.extend_from_slice(OID_REASON);
            out.extend_from_slice(&[0x04, 3, 0x0a, 1, reason.code()]);
        }
        out[start + 1] = (out.len() - start - 2) as u8;
        self.count += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The TBSCertList of a v2 CRL by `issuer`: AKI, CRL number and a critical
/// issuing distribution point naming `idp_url` (the URL the certificates'
/// CRL DP carries), and the entries of `revoked` (taken: the TBSCertList
/// is written around their DER, in the same buffer).
pub fn prepare_crl(
    issuer: &Issuer<'_>,
    crl_number: u64,
    this_update: DateTime<Utc>,
    next_update: DateTime<Utc>,
    idp_url: &str,
    revoked: RevokedList,
) -> Result<ToBeSigned, PkiError> {
    if next_update <= this_update {
        return Err(PkiError::encoding("nextUpdate must follow thisUpdate"));
    }
    let signer = issuer.signer();
    let algorithm = super::signer::algorithm_identifier(signer.algorithm());

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
    // An empty revokedCertificates is omitted, not encoded empty (§5.1.2.6).
    let mut entries_header = Vec::new();
    if !revoked.is_empty() {
        der::push_header(&mut entries_header, 0x30, revoked.der.len());
    }
    // Written around the entries' DER in its buffer: a second buffer the
    // size of a million entries beside it was the server's peak memory
    // (docs/performance.md).
    let tbs = der::sequence_around(
        &[
            &version,
            algorithm,
            issuer.subject_raw(),
            &this,
            &next,
            &entries_header,
        ],
        revoked.der,
        &[&extensions],
    );
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
    let mut out = Vec::with_capacity(17);
    push_time(&mut out, t);
    out
}

pub(crate) fn generalized_time(t: DateTime<Utc>) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    push_digits(&mut out, t, true);
    out
}

fn push_time(out: &mut Vec<u8>, t: DateTime<Utc>) {
    push_digits(out, t, t.year() >= 2050);
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ`, written
/// digit by digit: a million CRL entries cannot afford a formatter each.
fn push_digits(out: &mut Vec<u8>, t: DateTime<Utc>, generalized: bool) {
    let year = u32::try_from(t.year()).unwrap_or(0) % 10_000;
    if generalized {
        out.extend_from_slice(&[0x18, 15]);
        push_two(out, year / 100);
    } else {
        out.extend_from_slice(&[0x17, 13]);
    }
    for v in [
        year % 100,
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    ] {
        push_two(out, v);
    }
    out.push(b'Z');
}

fn push_two(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&[b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8]);
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use chrono::Duration;
    use x509_parser::prelude::*;

    use super::*;
    use crate::domain::KeyAlgorithm;
    use crate::pki::testutil::{SoftSigner, test_ca, tool_available};

    fn list(entries: &[(&[u8], RevocationReason)]) -> RevokedList {
        let mut list = RevokedList::default();
        for (serial, reason) in entries {
            list.push(serial, Utc::now() - Duration::hours(1), *reason)
                .unwrap();
        }
        list
    }

    #[test]
    fn a_crl_parses_with_its_number_entries_and_reasons() {
        let (signer, ca_der) = test_ca(KeyAlgorithm::EcdsaP256);
        let issuer = Issuer::new(&signer, &ca_der).unwrap();
        let entries = list(&[
            (&[0x41, 0x02, 0x03], RevocationReason::KeyCompromise),
            (&[0x80, 0x01], RevocationReason::Unspecified),
            (&[0x7f; 16], RevocationReason::CertificateHold),
        ]);
        let now = Utc::now();
        let der = prepare_crl(
            &issuer,
            42,
            now,
            now + Duration::days(1),
            "http://crl.test/x.crl",
            entries,
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
        let der = prepare_crl(
            &issuer,
            1,
            now,
            now + Duration::hours(1),
            "http://x",
            RevokedList::default(),
        )
        .unwrap()
        .sign(&signer)
        .unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        assert_eq!(crl.iter_revoked_certificates().count(), 0);

        let mut many = RevokedList::with_capacity(100_000);
        for i in 0u32..100_000 {
            let mut serial = vec![0x40];
            serial.extend_from_slice(&i.to_be_bytes());
            many.push(&serial, now, RevocationReason::Superseded)
                .unwrap();
        }
        let der = prepare_crl(&issuer, 2, now, now + Duration::hours(1), "http://x", many)
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
        assert_eq!(time(t), b"\x17\x0d491231235959Z");
        assert_eq!(time(t + Duration::seconds(1)), b"\x18\x0f20500101000000Z");
        let t = DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(generalized_time(t), b"\x18\x0f20260304050607Z");
    }

    #[test]
    fn serials_are_positive_integers_without_leading_zeros() {
        let mut l = RevokedList::default();
        assert!(
            l.push(&[], Utc::now(), RevocationReason::Unspecified)
                .is_err()
        );
        assert!(
            l.push(&[1; 21], Utc::now(), RevocationReason::Unspecified)
                .is_err()
        );
        l.push(&[0, 0, 0x7f], Utc::now(), RevocationReason::Unspecified)
            .unwrap();
        assert_eq!(&l.der[..5], &[0x30, 18, 0x02, 1, 0x7f]);
        let mut l = RevokedList::default();
        l.push(&[0xff; 20], Utc::now(), RevocationReason::KeyCompromise)
            .unwrap();
        // SEQUENCE(INTEGER 2 + 21, UTCTime 15, reasonCode extensions 14)
        assert_eq!(&l.der[..5], &[0x30, 23 + 15 + 14, 0x02, 21, 0]);
        assert_eq!(l.der.len(), 2 + 23 + 15 + 14);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn other_signers_are_refused() {
        let (signer, ca_der) = test_ca(KeyAlgorithm::EcdsaP256);
        let issuer = Issuer::new(&signer, &ca_der).unwrap();
        let now = Utc::now();
        let tbs = prepare_crl(
            &issuer,
            1,
            now,
            now + Duration::hours(1),
            "http://x",
            RevokedList::default(),
        )
        .unwrap();
        assert!(tbs.sign(&SoftSigner::new(KeyAlgorithm::EcdsaP256)).is_err());
        assert!(
            prepare_crl(&issuer, 1, now, now, "http://x", RevokedList::default()).is_err(),
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
            list(&[(&[0x42; 16], RevocationReason::KeyCompromise)]),
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
