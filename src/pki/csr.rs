//! Certificate signing requests: PEM unwrapping, parsing and
//! self-signature verification with x509-parser, and what the request asks
//! for (key type from the SPKI itself, CN, DNS and IP SANs). rcgen's CSR
//! parser is not used: it rejects unknown extensions and can mislabel the
//! key algorithm from the signature algorithm.

use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::PkiError;
use crate::domain::{KeyAlgorithm, San};

const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";

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

/// Parses a PEM CSR and verifies its signature.
pub fn parse_csr(text: &str) -> Result<ParsedCsr, PkiError> {
    let doc = pem::parse(text.trim()).map_err(|_| PkiError::NotPem)?;
    match doc.tag() {
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => {}
        other => {
            return Err(PkiError::NotACsr(
                other.chars().take(40).collect::<String>().to_lowercase(),
            ));
        }
    }
    let der = doc.into_contents();
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| PkiError::MalformedCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::MalformedCsr(
            "trailing bytes after the CSR".into(),
        ));
    }
    let info = &csr.certification_request_info;
    // The key is judged first: ring refuses to verify with weak RSA keys,
    // and "too weak" is the more useful answer than "bad signature".
    let key_algorithm = key_algorithm_of(&info.subject_pki)?;
    csr.verify_signature()
        .map_err(|_| PkiError::BadCsrSignature)?;
    let common_name = match info.subject.iter_common_name().next() {
        Some(cn) => Some(
            cn.as_str()
                .map_err(|_| PkiError::MalformedCsr("the common name is not a string".into()))?
                .to_string(),
        ),
        None => None,
    };
    let mut sans = Vec::new();
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
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
    }
    Ok(ParsedCsr {
        spki_der: info.subject_pki.raw.to_vec(),
        der: der.clone(),
        key_algorithm,
        common_name,
        sans,
    })
}

fn ip_from(bytes: &[u8]) -> Result<IpAddr, PkiError> {
    match bytes.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| PkiError::MalformedCsr("bad IPv4".into()))?,
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| PkiError::MalformedCsr("bad IPv6".into()))?,
        )),
        n => Err(PkiError::MalformedCsr(format!(
            "an IP address SAN of {n} bytes"
        ))),
    }
}

fn key_algorithm_of(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<KeyAlgorithm, PkiError> {
    let oid = spki.algorithm.algorithm.to_id_string();
    match oid.as_str() {
        OID_EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .ok_or_else(|| PkiError::UnsupportedKey("EC key without a named curve".into()))?;
            match curve.as_str() {
                OID_P256 => Ok(KeyAlgorithm::EcdsaP256),
                OID_P384 => Ok(KeyAlgorithm::EcdsaP384),
                other => Err(PkiError::UnsupportedKey(format!("EC curve {other}"))),
            }
        }
        OID_RSA => {
            let bits = match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
                _ => {
                    return Err(PkiError::MalformedCsr(
                        "the RSA public key cannot be parsed".into(),
                    ));
                }
            };
            match bits {
                b if b < 2048 => Err(PkiError::WeakRsaKey(b)),
                2048 => Ok(KeyAlgorithm::Rsa2048),
                3072 => Ok(KeyAlgorithm::Rsa3072),
                4096 => Ok(KeyAlgorithm::Rsa4096),
                b => Err(PkiError::UnsupportedKey(format!(
                    "RSA with {b} bits (2048, 3072 or 4096 are accepted)"
                ))),
            }
        }
        OID_ED25519 => Ok(KeyAlgorithm::Ed25519),
        other => Err(PkiError::UnsupportedKey(format!("algorithm {other}"))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn csr_pem(key: &rcgen::KeyPair, cn: &str, sans: &[&str]) -> String {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    pub(crate) fn openssl_rsa_csr(bits: u32) -> String {
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                &format!("rsa:{bits}"),
                "-nodes",
                "-subj",
                "/CN=rsa.test",
                "-keyout",
                "/dev/null",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn ec_csrs_parse_with_their_names() {
        for (alg, expected) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyAlgorithm::EcdsaP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyAlgorithm::EcdsaP384),
            (&rcgen::PKCS_ED25519, KeyAlgorithm::Ed25519),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let csr = parse_csr(&csr_pem(&key, "a.test", &["a.test", "10.0.0.1"])).unwrap();
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
                    San::Ip("10.0.0.1".parse().unwrap())
                ]
            );
        }
    }

    #[test]
    fn rsa_sizes_are_classified() {
        assert_eq!(
            parse_csr(&openssl_rsa_csr(2048)).unwrap().key_algorithm,
            KeyAlgorithm::Rsa2048
        );
        assert!(matches!(
            parse_csr(&openssl_rsa_csr(1024)),
            Err(PkiError::WeakRsaKey(1024))
        ));
    }

    #[test]
    fn bad_input_is_named() {
        assert!(matches!(parse_csr("hello"), Err(PkiError::NotPem)));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(parse_csr(&cert.pem()), Err(PkiError::NotACsr(_))));

        let good = csr_pem(&key, "a.test", &["a.test"]);
        let mut der = pem::parse(&good).unwrap().into_contents();
        let n = der.len();
        der[n - 5] ^= 0x01;
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        assert!(matches!(
            parse_csr(&tampered),
            Err(PkiError::BadCsrSignature)
        ));

        let junk = pem::encode(&pem::Pem::new(
            "CERTIFICATE REQUEST",
            vec![0x30, 0x03, 0x02, 0x01, 0x00],
        ));
        assert!(matches!(parse_csr(&junk), Err(PkiError::MalformedCsr(_))));
    }
}
