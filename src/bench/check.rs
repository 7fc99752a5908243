//! What the benchmark checks in the server's answers, read as a relying
//! party reads them: certificates, OCSP responses and CRLs, each with its
//! signature verified against the CA certificate.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::domain::der;

type Checked<T> = Result<T, String>;

fn parse_cert(der: &[u8]) -> Checked<X509Certificate<'_>> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    Ok(cert)
}

/// `cert_der` was signed by the CA of `ca_der`, certifies `spki_der` and
/// names exactly `dns_names`.
pub fn leaf(cert_der: &[u8], ca_der: &[u8], spki_der: &[u8], dns_names: &[String]) -> Checked<()> {
    crate::pki::verify_signed_by(cert_der, ca_der).map_err(|e| e.to_string())?;
    let cert = parse_cert(cert_der)?;
    if cert.public_key().raw != spki_der {
        return Err("the certificate does not certify the CSR's key".into());
    }
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut wanted = dns_names.to_vec();
    names.sort();
    wanted.sort();
    if names != wanted {
        return Err(format!("names {names:?}, asked for {wanted:?}"));
    }
    Ok(())
}

/// What an OCSP response says about one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OcspStatus {
    Good,
    Revoked,
    Unknown,
}

/// Reads a successful OCSPResponse: the responder certificate it carries
/// must be issued by the CA of `ca_der`, its signature must verify with
/// that certificate's key, and it must answer about `serial` (magnitude).
pub fn ocsp_response(response: &[u8], ca_der: &[u8], serial: &[u8]) -> Checked<OcspStatus> {
    let bad = |what: &str| format!("OCSP response: {what}");
    let tlv = |input: &[u8], tag: u8, what: &str| -> Checked<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let (t, content, rest) = der::read_tlv(input).ok_or_else(|| bad(what))?;
        if t != tag {
            return Err(bad(what));
        }
        let whole = input[..input.len() - rest.len()].to_vec();
        Ok((content.to_vec(), whole, rest.to_vec()))
    };
    let (outer, _, _) = tlv(response, 0x30, "not a SEQUENCE")?;
    let (status, _, rest) = tlv(&outer, 0x0a, "no response status")?;
    if status != [0] {
        return Err(bad(&format!("status {status:?}, not successful")));
    }
    let (bytes, _, _) = tlv(&rest, 0xa0, "no responseBytes")?;
    let (bytes, _, _) = tlv(&bytes, 0x30, "bad responseBytes")?;
    let (_oid, _, rest) = tlv(&bytes, 0x06, "no response type")?;
    let (basic, _, _) = tlv(&rest, 0x04, "no response")?;
    let (basic, _, _) = tlv(&basic, 0x30, "bad BasicOCSPResponse")?;
    let (tbs, tbs_whole, rest) = tlv(&basic, 0x30, "no tbsResponseData")?;
    let (_alg, _, rest) = tlv(&rest, 0x30, "no signature algorithm")?;
    let (signature, _, rest) = tlv(&rest, 0x03, "no signature")?;
    let (certs, _, _) = tlv(&rest, 0xa0, "no responder certificate")?;
    let (certs, _, _) = tlv(&certs, 0x30, "bad certificate list")?;
    let (_, responder_der, _) = tlv(&certs, 0x30, "bad responder certificate")?;

    crate::pki::verify_signed_by(&responder_der, ca_der)
        .map_err(|e| bad(&format!("responder certificate: {e}")))?;
    let responder = parse_cert(&responder_der)?;
    let alg = verification_algorithm(&responder)?;
    let sig = signature.get(1..).ok_or_else(|| bad("empty signature"))?;
    ring::signature::UnparsedPublicKey::new(
        alg,
        responder.public_key().subject_public_key.data.as_ref(),
    )
    .verify(&tbs_whole, sig)
    .map_err(|_| bad("the signature does not verify"))?;

    // ResponseData: [0] version?, responderID, producedAt, responses.
    let mut fields = tbs.as_slice();
    if fields.first() == Some(&0xa0) {
        fields = der::read_tlv(fields).ok_or_else(|| bad("version"))?.2;
    }
    let (_, _, rest) = der::read_tlv(fields).ok_or_else(|| bad("responderID"))?;
    let (_, _, rest) = tlv(rest, 0x18, "producedAt")?;
    let (responses, _, _) = tlv(&rest, 0x30, "responses")?;
    let (single, _, _) = tlv(&responses, 0x30, "no single response")?;
    let (cert_id, _, rest) = tlv(&single, 0x30, "certID")?;
    let (_, _, id_rest) = tlv(&cert_id, 0x30, "hash algorithm")?;
    let (_, _, id_rest) = tlv(&id_rest, 0x04, "name hash")?;
    let (_, _, id_rest) = tlv(&id_rest, 0x04, "key hash")?;
    let (got_serial, _, _) = tlv(&id_rest, 0x02, "serial")?;
    let magnitude: Vec<u8> = got_serial.into_iter().skip_while(|b| *b == 0).collect();
    if magnitude != serial {
        return Err(bad("it answers about another serial"));
    }
    match rest.first() {
        Some(0x80) => Ok(OcspStatus::Good),
        Some(0xa1) => Ok(OcspStatus::Revoked),
        Some(0x82) => Ok(OcspStatus::Unknown),
        _ => Err(bad("no certificate status")),
    }
}

fn verification_algorithm(
    cert: &X509Certificate<'_>,
) -> Checked<&'static dyn ring::signature::VerificationAlgorithm> {
    use x509_parser::public_key::PublicKey;
    match cert.public_key().parsed() {
        Ok(PublicKey::EC(p)) if p.key_size() == 256 => Ok(&ring::signature::ECDSA_P256_SHA256_ASN1),
        Ok(PublicKey::EC(p)) if p.key_size() == 384 => Ok(&ring::signature::ECDSA_P384_SHA384_ASN1),
        Ok(PublicKey::RSA(_)) => Ok(&ring::signature::RSA_PKCS1_2048_8192_SHA256),
        _ => Err("unsupported responder key".into()),
    }
}

/// A CRL as a relying party sees it.
#[derive(Clone, Debug)]
pub struct CrlSummary {
    pub number: u64,
    pub entries: usize,
}

/// Parses `crl_der`, verifies its signature with the CA certificate's key
/// and that the CA issued it.
pub fn crl(crl_der: &[u8], ca_der: &[u8]) -> Checked<CrlSummary> {
    let (_, crl) = CertificateRevocationList::from_der(crl_der).map_err(|e| format!("CRL: {e}"))?;
    let ca = parse_cert(ca_der)?;
    if crl.issuer().as_raw() != ca.subject().as_raw() {
        return Err("the CRL's issuer is not the CA".into());
    }
    crl.verify_signature(ca.public_key())
        .map_err(|e| format!("CRL signature: {e}"))?;
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or("the CRL has no number")?;
    Ok(CrlSummary {
        number,
        entries: crl.iter_revoked_certificates().count(),
    })
}

/// The CRL number alone, without verifying (for polling).
pub fn crl_number(crl_der: &[u8]) -> Option<u64> {
    let (_, crl) = CertificateRevocationList::from_der(crl_der).ok()?;
    crl.crl_number().and_then(|n| u64::try_from(n).ok())
}

/// DER of the first certificate in `pem`.
pub fn pem_der(pem: &str) -> Checked<Vec<u8>> {
    pem::parse(pem)
        .map(|p| p.contents().to_vec())
        .map_err(|e| format!("PEM: {e}"))
}
