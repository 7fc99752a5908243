//! Test-only helpers: a software [`Signer`] (integration tests sign with
//! SoftHSM instead), CSR makers, and the outside judges (openssl, pkilint).

use std::path::Path;
use std::process::Command;

use crate::domain::{KeyAlgorithm, SignError, Signer};

/// A software key behind the [`Signer`] seam, for encoding tests only.
pub(crate) struct SoftSigner {
    key: rcgen::KeyPair,
    algorithm: KeyAlgorithm,
    spki: Vec<u8>,
}

impl SoftSigner {
    pub(crate) fn new(algorithm: KeyAlgorithm) -> Self {
        let key = match algorithm.rsa_bits() {
            // rcgen cannot generate RSA keys with ring; openssl can.
            Some(bits) => {
                let out = Command::new("openssl")
                    .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
                    .arg(format!("rsa_keygen_bits:{bits}"))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(
                    std::str::from_utf8(&out.stdout).unwrap(),
                    &rcgen::PKCS_RSA_SHA256,
                )
                .unwrap()
            }
            None => {
                rcgen::KeyPair::generate_for(super::signer::rcgen_algorithm(algorithm)).unwrap()
            }
        };
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        Self {
            key,
            algorithm,
            spki,
        }
    }
}

impl Signer for SoftSigner {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
    fn public_key_spki(&self) -> &[u8] {
        &self.spki
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        rcgen::SigningKey::sign(&self.key, message).map_err(|e| SignError::Failed(e.to_string()))
    }
}

/// A PEM CSR from rcgen with a CN and DNS/IP SANs.
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

/// A PEM CSR from `openssl req -new` with a throw-away key; `key_args`
/// picks the key (`-newkey rsa:2048`, ...) and digest.
pub(crate) fn openssl_csr(key_args: &[&str], subject: &str, san: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req",
        "-new",
        "-nodes",
        "-keyout",
        "/dev/null",
        "-subj",
        subject,
    ])
    .args(key_args);
    if let Some(san) = san {
        cmd.arg("-addext").arg(format!("subjectAltName={san}"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether an outside tool is installed. A missing tool skips the test
/// with a note, unless `CLM_TEST_REQUIRE_TOOLS=1` demands it.
pub(crate) fn tool_available(program: &str, probe: &[&str]) -> bool {
    let found = Command::new(program)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CLM_TEST_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "{program} is required (CLM_TEST_REQUIRE_TOOLS=1) but not installed"
        );
        eprintln!("note: {program} is not installed; skipping its checks");
    }
    found
}

/// Runs a pkilint command on `files` and returns its findings of severity
/// WARNING and above.
pub(crate) fn pkilint(program: &str, files: &[&Path]) -> String {
    let out = Command::new(program)
        .args(["lint", "-s", "WARNING"])
        .args(files)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    // pkilint exits non-zero when it reports anything; a crash prints to
    // stderr and reports nothing, which must not pass for "clean".
    assert!(
        out.status.success() || !report.trim().is_empty(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// A software root CA of `alg`: its signer and certificate.
pub(crate) fn test_ca(alg: KeyAlgorithm) -> (SoftSigner, Vec<u8>) {
    let signer = SoftSigner::new(alg);
    let subject = crate::pki::CaSubject {
        common_name: "Test CA".into(),
        organization: Some("clm tests".into()),
    };
    let der = crate::pki::build_root_ca(&signer, &subject, 30, &crate::pki::new_serial()).unwrap();
    (signer, der)
}
