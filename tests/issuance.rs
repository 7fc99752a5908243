//! The walking skeleton end to end: log in, submit a CSR, get a certificate
//! signed by the HSM-held intermediate, and have tools we did not write
//! judge it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{TestApp, ec_csr, rsa_csr, write};
use serde_json::{Value, json};
use x509_parser::prelude::*;

on_both_backends! {
    csr_becomes_a_certificate_that_openssl_accepts => csr_becomes_a_certificate;
    rsa_csrs_are_issued_too => rsa_csr_is_issued;
    ca_keys_live_in_the_token_and_never_leave_it => ca_keys_are_sensitive;
    pkilint_finds_no_errors => pkilint_accepts_root_intermediate_and_leaf;
    idempotent_retries_return_the_same_request => idempotency_key_returns_same_request;
    restart_proves_ca_keys_and_init_is_idempotent => init_is_idempotent;
}

async fn issue(app: &TestApp, token: &str, csr: &str) -> Value {
    let profile = app.default_profile_id(token).await;
    let r = app
        .post(
            token,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": profile, "csr_pem": csr }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "issued", "{body}");
    let id = body["certificate_id"].as_str().unwrap();
    let r = app.get(token, &format!("/api/v1/certificates/{id}")).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn pem_der(pem_text: &str) -> Vec<u8> {
    ::pem::parse(pem_text).unwrap().into_contents()
}

async fn csr_becomes_a_certificate(app: &TestApp) {
    let token = app.admin_token().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = common::csr_for(&key, &["app.clm.test", "api.clm.test"]);
    let cert = issue(app, &token, &csr).await;

    // The certificate parses, carries the CSR's public key and the names.
    let der = pem_der(cert["certificate_pem"].as_str().unwrap());
    let (_, x509) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        x509.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    let sans: Vec<String> = cert["sans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(sans, ["app.clm.test", "api.clm.test"]);
    assert!(!x509.is_ca());
    let serial = x509.raw_serial();
    assert!(
        serial.len() >= 8 && serial[0] & 0x80 == 0,
        "serial must be positive and ≥ 64 bits"
    );
    assert_eq!(cert["serial"].as_str().unwrap(), hex::encode(serial));
    assert_eq!(cert["status"], "valid");

    // Its signature verifies against the intermediate of the chain.
    let chain = ::pem::parse_many(cert["chain_pem"].as_str().unwrap()).unwrap();
    assert_eq!(chain.len(), 2, "chain is intermediate + root");
    let (_, intermediate) = X509Certificate::from_der(chain[0].contents()).unwrap();
    x509.verify_signature(Some(intermediate.public_key()))
        .unwrap();

    // openssl, which we did not write, accepts the chain up to the root.
    let dir = tempfile::tempdir().unwrap();
    let leaf = write(
        dir.path(),
        "leaf.pem",
        cert["certificate_pem"].as_str().unwrap(),
    );
    let untrusted = write(dir.path(), "chain.pem", cert["chain_pem"].as_str().unwrap());
    let root = write(dir.path(), "root.pem", &app.root_pem());
    let out = Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&untrusted)
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The CA list shows the same intermediate and root.
    let cas: Value = app.get(&token, "/api/v1/cas").await.json().await.unwrap();
    let cas = cas.as_array().unwrap();
    assert_eq!(cas.len(), 2);
    let inter = cas.iter().find(|c| c["kind"] == "intermediate").unwrap();
    assert_eq!(inter["id"], cert["ca_id"]);
    assert_eq!(
        pem_der(inter["certificate_pem"].as_str().unwrap()),
        chain[0].contents()
    );
    assert!(
        inter["crl_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/crl/{}.crl", inter["id"].as_str().unwrap()))
    );

    // Readiness reports both databases and the token.
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = r.json().await.unwrap();
    for check in ["clm_core", "clm_secure", "hsm"] {
        assert_eq!(ready["checks"][check]["status"], "ok", "{ready}");
    }

    // AIA caIssuers points at the plain-HTTP listener, which serves the CA.
    let r = app
        .client
        .get(format!(
            "{}/ca/{}.der",
            app.public,
            inter["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), chain[0].contents());

    // Nothing secret reached the log: not the PIN, the password or the token.
    let log = app.server_log();
    assert!(
        log.contains("\"request_id\""),
        "logs are JSON with request ids"
    );
    for secret in [app.pin(), app.admin_password.clone(), token.clone()] {
        assert!(
            !log.contains(&secret),
            "a secret leaked into the server log"
        );
    }
}

async fn rsa_csr_is_issued(app: &TestApp) {
    let token = app.admin_token().await;
    let cert = issue(app, &token, &rsa_csr(2048, "rsa.clm.test")).await;
    let der = pem_der(cert["certificate_pem"].as_str().unwrap());
    let (_, x509) = X509Certificate::from_der(&der).unwrap();
    assert!(matches!(
        x509.public_key().parsed().unwrap(),
        x509_parser::public_key::PublicKey::RSA(_)
    ));
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
}

async fn ca_keys_are_sensitive(app: &TestApp) {
    let objects = app.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    let blocks: Vec<&str> = objects.split("Private Key Object").skip(1).collect();
    assert_eq!(
        blocks.len(),
        4,
        "root and intermediate keys and their OCSP responders' keys:\n{objects}"
    );
    assert_eq!(
        blocks
            .iter()
            .filter(|b| b.contains("label:      clm-ca-"))
            .count(),
        2
    );
    for block in blocks {
        assert!(block.contains("sensitive"), "{block}");
        assert!(block.contains("never extractable"), "{block}");
        assert!(
            !block.contains("extractable\n") || block.contains("never extractable"),
            "{block}"
        );
    }
    // Registered by reference: the registry lists PKCS#11 URIs the check resolves.
    let out = app.clm(&["hsm", "check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hsm check failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("ok\tca_signing"))
            .count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("ok\tkek"), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("ok\tocsp_signing"))
            .count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("ok\taudit_mac"), "{stdout}");

    // A wrong PIN is refused, and neither PIN is echoed anywhere.
    let wrong = "999999-not-the-pin";
    let out = app.clm_with(&["hsm", "check"], &[("CLM_PKCS11_PIN", wrong)]);
    assert!(
        !out.status.success(),
        "hsm check with a wrong PIN must fail"
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("login"), "{printed}");
    assert!(
        !printed.contains(wrong) && !printed.contains(&app.pin()),
        "{printed}"
    );
}

async fn pkilint_accepts_root_intermediate_and_leaf(app: &TestApp) {
    if Command::new("lint_pkix_cert")
        .arg("--help")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CLM_TEST_REQUIRE_TOOLS").is_err(),
            "pkilint (lint_pkix_cert) is required but not installed"
        );
        eprintln!("note: pkilint not installed; skipping");
        return;
    }
    let token = app.admin_token().await;
    let cert = issue(app, &token, &ec_csr(&["lint.clm.test"])).await;
    let chain = ::pem::parse_many(cert["chain_pem"].as_str().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let items = [
        (
            "leaf",
            cert["certificate_pem"].as_str().unwrap().to_string(),
        ),
        ("intermediate", ::pem::encode(&chain[0])),
        ("root", ::pem::encode(&chain[1])),
    ];
    for (name, pem_text) in items {
        let path = write(dir.path(), &format!("{name}.pem"), &pem_text);
        let out = Command::new("lint_pkix_cert")
            .arg("lint")
            .arg(&path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            !report.contains("ERROR") && !report.contains("FATAL"),
            "pkilint on the {name}:\n{report}"
        );
    }
}

async fn idempotency_key_returns_same_request(app: &TestApp) {
    let token = app.admin_token().await;
    let profile = app.default_profile_id(&token).await;
    let body = json!({ "profile_id": profile, "csr_pem": ec_csr(&["retry.clm.test"]) });
    let send = || {
        app.client
            .post(app.url("/api/v1/certificate-requests"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "order-4711")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["certificate_id"], second["certificate_id"]);
}

async fn init_is_idempotent(app: &TestApp) {
    let out = app.clm(&["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("nothing to do"),
        "second init changed something:\n{stdout}"
    );
    // The running server still works, and still has exactly two CAs.
    let token = app.admin_token().await;
    let cas: Value = app.get(&token, "/api/v1/cas").await.json().await.unwrap();
    assert_eq!(cas.as_array().unwrap().len(), 2);
}
