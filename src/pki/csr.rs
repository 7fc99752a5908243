//! Certificate signing requests: unwrapping, parsing and self-signature
//! verification with x509-parser, and what the request asks for (key type
//! judged from the SPKI itself, CN, DNS and IP SANs).
//!
//! rcgen's CSR parser is not used: it rejects unknown extensions and can
//! mislabel the key algorithm from the signature algorithm. The CSR's other
//! extensions are ignored on purpose; certificates are built from what the
//! profile approved.

use std::net::IpAddr;

use base64::Engine;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::error::X509Error;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::PkiError;
use super::signer::canonical_spki;
use crate::domain::{KeyAlgorithm, San};

const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_SAN: &str = "2.5.29.17";
/// sha1WithRSAEncryption and its old alias, ecdsa-with-SHA1, dsa-with-sha1.
const SHA1_SIGNATURES: [&str; 4] = [
    "1.2.840.113549.1.1.5",
    "1.3.14.3.2.29",
    "1.2.840.10045.4.1",
    "1.2.840.10040.4.3",
];

/// Far above any honest CSR (an RSA-4096 CSR with 100 SANs is about 5 KiB);
/// refusing early keeps the parser away from hostile sizes.
pub const MAX_CSR_TEXT_LEN: usize = 64 * 1024;

/// What a verified CSR asks for.
#[derive(Clone, Debug)]
pub struct ParsedCsr {
    pub der: Vec<u8>,
    /// The SubjectPublicKeyInfo exactly as the CSR carries it.
    pub spki_der: Vec<u8>,
    pub key_algorithm: KeyAlgorithm,
    pub common_name: Option<String>,
    pub sans: Vec<San>,
}

/// Parses a CSR given as PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE
/// REQUEST`) or as bare base64 DER, and verifies its self-signature.
pub fn parse_csr(text: &str) -> Result<ParsedCsr, PkiError> {
    if text.len() > MAX_CSR_TEXT_LEN {
        return Err(PkiError::MalformedCsr(format!(
            "it is longer than {MAX_CSR_TEXT_LEN} bytes"
        )));
    }
    let text = text.trim();
    let der = if text.starts_with("-----BEGIN") {
        let doc = pem::parse(text).map_err(|_| PkiError::NotPem)?;
        match doc.tag() {
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => doc.into_contents(),
            other => {
                // The label is echoed to the requester; keep it short and
                // printable.
                let label: String = other
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
                    .take(40)
                    .collect();
                return Err(PkiError::NotACsr(label.to_lowercase()));
            }
        }
    } else {
        let compact: String = text.split_ascii_whitespace().collect();
        match base64::engine::general_purpose::STANDARD.decode(compact) {
            Ok(der) if der.first() == Some(&0x30) => der,
            _ => return Err(PkiError::NotPem),
        }
    };
    parse_csr_der(&der)
}

/// Parses and verifies a DER CSR (e.g. one stored earlier).
pub fn parse_csr_der(der: &[u8]) -> Result<ParsedCsr, PkiError> {
    if der.len() > MAX_CSR_TEXT_LEN {
        return Err(PkiError::MalformedCsr("it is too large".into()));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| PkiError::MalformedCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::MalformedCsr(
            "trailing bytes after the CSR".into(),
        ));
    }
    let info = &csr.certification_request_info;
    // The key is judged before the signature: ring refuses to verify with
    // weak RSA keys, and "too weak" is the more useful answer.
    let key_algorithm = key_algorithm_of(&info.subject_pki)?;
    // The certificate's SPKI is written by rcgen from the key bits and the
    // algorithm; insisting on the canonical form here is what lets the
    // certificate carry the CSR's SPKI byte for byte.
    if canonical_spki(info.subject_pki.raw, key_algorithm)? != info.subject_pki.raw {
        return Err(PkiError::UnsupportedKey(
            "the SubjectPublicKeyInfo is not DER in its usual form".into(),
        ));
    }
    let signature_oid = csr.signature_algorithm.algorithm.to_id_string();
    if SHA1_SIGNATURES.contains(&signature_oid.as_str()) {
        return Err(PkiError::UnsupportedCsrSignature("SHA-1".into()));
    }
    csr.verify_signature().map_err(|e| match e {
        X509Error::SignatureUnsupportedAlgorithm => {
            PkiError::UnsupportedCsrSignature(format!("the algorithm {signature_oid}"))
        }
        _ => PkiError::BadCsrSignature,
    })?;

    let common_name = match info.subject.iter_common_name().next() {
        Some(cn) => Some(
            cn.as_str()
                .map_err(|_| PkiError::MalformedCsr("the common name is not a string".into()))?
                .to_string(),
        ),
        None => None,
    };
    Ok(ParsedCsr {
        spki_der: info.subject_pki.raw.to_vec(),
        sans: requested_sans(&csr)?,
        der: der.to_vec(),
        key_algorithm,
        common_name,
    })
}

fn requested_sans(csr: &X509CertificationRequest<'_>) -> Result<Vec<San>, PkiError> {
    let mut sans = Vec::new();
    for attribute in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(requested) = attribute.parsed_attribute() else {
            continue;
        };
        for ext in &requested.extensions {
            if ext.oid.to_id_string() != OID_SAN {
                continue;
            }
            // A SAN extension we cannot read must not silently shrink the
            // request to its CN.
            let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
                return Err(PkiError::MalformedCsr(
                    "the subjectAltName extension cannot be parsed".into(),
                ));
            };
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(San::Dns(d.to_ascii_lowercase())),
                    GeneralName::IPAddress(bytes) => sans.push(San::Ip(ip_from(bytes)?)),
                    // Other name forms are not certified; the profile
                    // decides what goes into the certificate.
                    _ => {}
                }
            }
        }
    }
    Ok(sans)
}

fn ip_from(bytes: &[u8]) -> Result<IpAddr, PkiError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::from(v4))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::from(v6))
    } else {
        Err(PkiError::MalformedCsr(format!(
            "an IP address SAN of {} bytes",
            bytes.len()
        )))
    }
}

fn key_algorithm_of(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyAlgorithm, PkiError> {
    let oid = spki.algorithm.algorithm.to_id_string();
    let key = spki.subject_public_key.data.as_ref();
    match oid.as_str() {
        OID_EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .ok_or_else(|| PkiError::UnsupportedKey("EC key without a named curve".into()))?;
            let (algorithm, point_len) = match curve.as_str() {
                OID_P256 => (KeyAlgorithm::EcdsaP256, 65),
                OID_P384 => (KeyAlgorithm::EcdsaP384, 97),
                other => return Err(PkiError::UnsupportedKey(format!("EC curve {other}"))),
            };
            // ring verifies only uncompressed points; say so rather than
            // report a bad signature.
            if key.len() != point_len || key.first() != Some(&0x04) {
                return Err(PkiError::UnsupportedKey(
                    "EC public keys must be uncompressed points".into(),
                ));
            }
            Ok(algorithm)
        }
        OID_RSA => {
            let bits = match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus)?,
                _ => {
                    return Err(PkiError::MalformedCsr(
                        "the RSA public key cannot be parsed".into(),
                    ));
                }
            };
            match bits {
                b if b < 2048 => Err(PkiError::WeakRsaKey { bits: b }),
                2048 => Ok(KeyAlgorithm::Rsa2048),
                3072 => Ok(KeyAlgorithm::Rsa3072),
                4096 => Ok(KeyAlgorithm::Rsa4096),
                b => Err(PkiError::UnsupportedKey(format!(
                    "RSA with {b} bits (2048, 3072 or 4096 are accepted)"
                ))),
            }
        }
        OID_ED25519 if key.len() == 32 => Ok(KeyAlgorithm::Ed25519),
        OID_ED25519 => Err(PkiError::MalformedCsr(
            "an Ed25519 public key must be 32 bytes".into(),
        )),
        other => Err(PkiError::UnsupportedKey(format!("algorithm {other}"))),
    }
}

/// The exact bit length of an RSA modulus given as DER INTEGER content.
/// (x509-parser's `key_size` only counts whole bytes after the first, so a
/// 2049-bit modulus would pass for 2048.)
fn modulus_bits(modulus: &[u8]) -> Result<usize, PkiError> {
    if modulus.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(PkiError::MalformedCsr("the RSA modulus is negative".into()));
    }
    let skip = modulus.iter().take_while(|b| **b == 0).count();
    Ok(match modulus.get(skip) {
        Some(first) => (modulus.len() - skip) * 8 - first.leading_zeros() as usize,
        None => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::testutil::{csr_pem, openssl_csr};

    #[test]
    fn ec_and_ed25519_csrs_parse_with_their_names() {
        for (alg, expected) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyAlgorithm::EcdsaP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyAlgorithm::EcdsaP384),
            (&rcgen::PKCS_ED25519, KeyAlgorithm::Ed25519),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let csr = parse_csr(&csr_pem(&key, "a.test", &["A.test", "10.0.0.1", "::1"])).unwrap();
            assert_eq!(csr.key_algorithm, expected);
            assert_eq!(
                csr.spki_der,
                rcgen::PublicKeyData::subject_public_key_info(&key)
            );
            assert_eq!(csr.common_name.as_deref(), Some("a.test"));
            assert_eq!(
                csr.sans,
                vec![
                    San::Dns("a.test".into()),
                    San::Ip("10.0.0.1".parse().unwrap()),
                    San::Ip("::1".parse().unwrap()),
                ]
            );
        }
    }

    #[test]
    fn the_key_decides_the_algorithm_not_the_signature() {
        // A P-384 key signing with SHA-256: rcgen's parser calls it P-256.
        let pem = openssl_csr(
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-sha256",
            ],
            "/CN=p384.test",
            Some("DNS:p384.test"),
        );
        let csr = parse_csr(&pem).unwrap();
        assert_eq!(csr.key_algorithm, KeyAlgorithm::EcdsaP384);
        assert_eq!(csr.sans, vec![San::Dns("p384.test".into())]);
    }

    #[test]
    fn rsa_sizes_are_classified_exactly() {
        let rsa = |bits: u32| {
            openssl_csr(
                &["-newkey", &format!("rsa:{bits}")],
                "/CN=rsa.test",
                Some("DNS:rsa.test,IP:192.0.2.7"),
            )
        };
        let csr = parse_csr(&rsa(2048)).unwrap();
        assert_eq!(csr.key_algorithm, KeyAlgorithm::Rsa2048);
        assert_eq!(csr.common_name.as_deref(), Some("rsa.test"));
        assert_eq!(
            csr.sans,
            vec![
                San::Dns("rsa.test".into()),
                San::Ip("192.0.2.7".parse().unwrap())
            ]
        );
        assert_eq!(
            parse_csr(&rsa(3072)).unwrap().key_algorithm,
            KeyAlgorithm::Rsa3072
        );
        assert!(matches!(
            parse_csr(&rsa(1024)),
            Err(PkiError::WeakRsaKey { bits: 1024 })
        ));
        assert!(matches!(
            parse_csr(&rsa(2047)),
            Err(PkiError::WeakRsaKey { bits: 2047 })
        ));
        assert!(matches!(
            parse_csr(&rsa(2056)),
            Err(PkiError::UnsupportedKey(_))
        ));
    }

    #[test]
    fn modulus_bits_are_exact() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]).unwrap(), 16);
        assert_eq!(modulus_bits(&[0x01, 0x00, 0x00]).unwrap(), 17);
        assert_eq!(modulus_bits(&[0x7f, 0xff]).unwrap(), 15);
        assert!(modulus_bits(&[0x80, 0x00]).is_err());
    }

    #[test]
    fn sha1_signed_csrs_are_refused() {
        let pem = openssl_csr(&["-newkey", "rsa:2048", "-sha1"], "/CN=old.test", None);
        assert!(matches!(
            parse_csr(&pem),
            Err(PkiError::UnsupportedCsrSignature(_))
        ));
    }

    #[test]
    fn der_in_base64_is_accepted() {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem_text = csr_pem(&key, "b64.test", &["b64.test"]);
        let body: String = pem_text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let csr = parse_csr(&body).unwrap();
        assert_eq!(csr.der, pem::parse(&pem_text).unwrap().into_contents());
        let new_label = pem_text.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
        assert!(parse_csr(&new_label).is_ok());
        assert_eq!(parse_csr_der(&csr.der).unwrap().sans, csr.sans);
    }

    #[test]
    fn bad_input_is_named() {
        for junk in ["hello, I am not a CSR", "", "AAAA", "-----BEGIN nonsense"] {
            assert!(matches!(parse_csr(junk), Err(PkiError::NotPem)), "{junk}");
        }
        assert!(matches!(
            parse_csr(&"A".repeat(MAX_CSR_TEXT_LEN + 1)),
            Err(PkiError::MalformedCsr(_))
        ));

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        match parse_csr(&cert.pem()) {
            Err(e @ PkiError::NotACsr(_)) => {
                assert_eq!(
                    e.to_string(),
                    "the PEM document is a certificate, not a certificate signing request"
                );
                assert_eq!(e.user_code(), Some("not_a_csr"));
            }
            other => panic!("{other:?}"),
        }
        match parse_csr(&key.serialize_pem()) {
            Err(e @ PkiError::NotACsr(_)) => {
                // The refusal names the label, never the key.
                assert!(e.to_string().contains("private key"), "{e}");
                assert!(!e.to_string().contains("MI"), "{e}");
            }
            other => panic!("{other:?}"),
        }

        let good = csr_pem(&key, "a.test", &["a.test"]);
        let mut der = pem::parse(&good).unwrap().into_contents();
        let n = der.len();
        der[n - 5] ^= 0x01;
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.clone()));
        assert!(matches!(
            parse_csr(&tampered),
            Err(PkiError::BadCsrSignature)
        ));
        // A changed name in the signed part breaks the signature too.
        let mut renamed = pem::parse(&good).unwrap().into_contents();
        let at = renamed.windows(6).position(|w| w == b"a.test").unwrap();
        renamed[at] = b'b';
        let renamed = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", renamed));
        assert!(matches!(
            parse_csr(&renamed),
            Err(PkiError::BadCsrSignature)
        ));

        let junk = pem::encode(&pem::Pem::new(
            "CERTIFICATE REQUEST",
            vec![0x30, 0x03, 0x02, 0x01, 0x00],
        ));
        assert!(matches!(parse_csr(&junk), Err(PkiError::MalformedCsr(_))));
        let mut trailing = pem::parse(&good).unwrap().into_contents();
        trailing.push(0);
        assert!(matches!(
            parse_csr_der(&trailing),
            Err(PkiError::MalformedCsr(_))
        ));
    }

    #[test]
    fn unsupported_curves_are_named() {
        let pem = openssl_csr(
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
            "/CN=p521.test",
            None,
        );
        match parse_csr(&pem) {
            Err(PkiError::UnsupportedKey(m)) => assert!(m.contains("1.3.132.0.35"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
