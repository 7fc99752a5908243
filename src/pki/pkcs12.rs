//! PKCS#12 for keys clm generated: what `openssl pkcs12` opens and what
//! current OpenSSL writes itself — PBES2 with PBKDF2-HMAC-SHA-256 and
//! AES-256-CBC for the key and the certificates, and an HMAC-SHA-256 MAC.

use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
    PrivateKeyChain,
};

use super::PkiError;
use crate::domain::Secret;

/// The shortest passphrase a PKCS#12 may be protected with.
pub const MIN_PASSPHRASE_CHARS: usize = 12;
/// PBKDF2 and MAC iterations: OpenSSL 3's default for PBKDF2 in PKCS#12.
const ITERATIONS: u32 = 2048;

/// Checks a passphrase before any key is generated for it.
pub fn check_passphrase(passphrase: &Secret) -> Result<(), PkiError> {
    let chars = passphrase.expose().chars().count();
    if chars < MIN_PASSPHRASE_CHARS {
        return Err(PkiError::WeakPassphrase(MIN_PASSPHRASE_CHARS));
    }
    if chars > 1024 || passphrase.expose().chars().any(char::is_control) {
        return Err(PkiError::InvalidPassphrase);
    }
    Ok(())
}

/// A PKCS#12 holding the private key (`pkcs8_pem`, PEM `PRIVATE KEY`) with
/// its certificate and the issuer chain (issuing CA first), under
/// `passphrase`.
pub fn build_pkcs12(
    pkcs8_pem: &Secret,
    certificate_der: &[u8],
    chain_der: &[Vec<u8>],
    friendly_name: &str,
    passphrase: &Secret,
) -> Result<Vec<u8>, PkiError> {
    check_passphrase(passphrase)?;
    let mut der = pem::parse(pkcs8_pem.expose())
        .map_err(|_| PkiError::encoding("the private key is not PEM"))?
        .into_contents();
    let key = PrivateKey::from_der(&der);
    der.fill(0);
    let key = key.map_err(|_| PkiError::encoding("the private key is not PKCS#8"))?;
    let mut certs = Vec::with_capacity(chain_der.len() + 1);
    certs.push(Certificate::from_der(certificate_der).map_err(PkiError::encoding)?);
    for c in chain_der {
        certs.push(Certificate::from_der(c).map_err(PkiError::encoding)?);
    }
    // The localKeyId links key and certificate; its SHA-1 fingerprint is
    // what OpenSSL uses.
    let local_key_id =
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, certificate_der)
            .as_ref()
            .to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs)),
    );
    store
        .writer(passphrase.expose())
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(ITERATIONS)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .mac_iterations(ITERATIONS)
        .write()
        .map_err(PkiError::encoding)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::pki::testutil::tool_available;

    fn key_and_cert() -> (Secret, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["p12.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (Secret::new(key.serialize_pem()), cert.der().to_vec())
    }

    #[test]
    fn short_or_odd_passphrases_are_refused() {
        let (key, cert) = key_and_cert();
        for bad in ["short", "elevenchars", "twelve chars\n"] {
            assert!(
                build_pkcs12(&key, &cert, &[], "x", &Secret::new(bad)).is_err(),
                "{bad}"
            );
        }
        assert!(matches!(
            check_passphrase(&Secret::new("0123456789a")),
            Err(PkiError::WeakPassphrase(12))
        ));
        check_passphrase(&Secret::new("twelve chars")).unwrap();
    }

    #[test]
    fn openssl_opens_it_and_the_key_matches() {
        if !tool_available("openssl", &["version"]) {
            return;
        }
        let (key, cert) = key_and_cert();
        let pass = "correct horse battery";
        let p12 = build_pkcs12(
            &key,
            &cert,
            std::slice::from_ref(&cert),
            "clm",
            &Secret::new(pass),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.p12");
        std::fs::write(&path, &p12).unwrap();
        let open = |pw: &str, extra: &[&str]| {
            Command::new("openssl")
                .args(["pkcs12", "-in"])
                .arg(&path)
                .args(["-passin", &format!("pass:{pw}"), "-nodes"])
                .args(extra)
                .output()
                .unwrap()
        };
        let out = open(pass, &["-info"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("MAC: sha256"), "{text}");
        assert!(text.contains("AES-256-CBC"), "{text}");
        assert!(text.contains("PBKDF2"), "{text}");
        let pem_out = String::from_utf8_lossy(&out.stdout).into_owned();
        let key_pem = pem::parse_many(&pem_out)
            .unwrap()
            .into_iter()
            .find(|p| p.tag() == "PRIVATE KEY")
            .unwrap();
        assert_eq!(
            key_pem.contents(),
            pem::parse(key.expose()).unwrap().contents()
        );
        assert!(!open("wrong passphrase!", &[]).status.success());
    }
}
