//! The token taken away from a running server and given back: issuance and
//! everything else that needs the HSM answers 503 with `Retry-After`,
//! reads, CRLs and cached OCSP answers keep working, `/readyz` says why,
//! and the server recovers by itself — with backoff, not by spinning.
//! Judged by `openssl verify` and `openssl ocsp`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestApp, ec_csr, write};
use serde_json::{Value, json};

on_both_backends! {
    token_outage_is_survived_and_recovered => token_outage;
}

async fn request_certificate(
    app: &TestApp,
    token: &str,
    profile: &str,
    cn: &str,
) -> reqwest::Response {
    app.post(
        token,
        "/api/v1/certificate-requests",
        &json!({ "profile_id": profile, "csr_pem": ec_csr(&[cn]) }),
    )
    .await
}

async fn certificate(app: &TestApp, token: &str, id: &str) -> Value {
    let r = app.get(token, &format!("/api/v1/certificates/{id}")).await;
    assert_eq!(r.status(), 200, "GET certificate {id}");
    r.json().await.unwrap()
}

/// A 503 problem with `Retry-After` and `code`, that names no PKCS#11 detail.
async fn expect_unavailable(r: reqwest::Response, code: &str) -> Value {
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let text = r.text().await.unwrap();
    for leak in [
        "CKR",
        "C_",
        "Pkcs11",
        "GeneralError",
        "ObjectHandle",
        "clm-ca-",
    ] {
        assert!(!text.contains(leak), "problem leaks {leak}: {text}");
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], 503);
    body
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

struct Files {
    leaf: PathBuf,
    issuer: PathBuf,
    chain: PathBuf,
}

fn files(app: &TestApp, dir: &Path, cert: &Value) -> Files {
    let chain_pem = cert["chain_pem"].as_str().unwrap();
    let issuer = ::pem::parse_many(chain_pem).unwrap()[0].clone();
    Files {
        leaf: write(dir, "leaf.pem", cert["certificate_pem"].as_str().unwrap()),
        issuer: write(dir, "issuer.pem", &::pem::encode(&issuer)),
        chain: write(dir, "chain.pem", &format!("{chain_pem}{}", app.root_pem())),
    }
}

/// `openssl ocsp` against the plain-HTTP listener: its whole report.
fn openssl_ocsp(app: &TestApp, f: &Files, nonce: bool) -> String {
    run(Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(&f.issuer)
        .arg("-cert")
        .arg(&f.leaf)
        .args(["-url", &format!("{}/ocsp", app.public)])
        .arg("-CAfile")
        .arg(&f.chain)
        .arg(if nonce { "-nonce" } else { "-no_nonce" }))
    .1
}

/// The certificate verifies up to the root: signed by the CA's real key.
fn openssl_verify(f: &Files) {
    let (ok, text) = run(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&f.chain)
        .arg(&f.leaf));
    assert!(ok, "openssl verify: {text}");
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// What is taken away: the token's own directory (`tokens/<uuid>`) on
/// SQLite, the whole `tokens` directory on PostgreSQL — SoftHSM reacts
/// differently to the two (without `tokens`, even `C_Initialize` fails),
/// and recovery must cope with both.
fn token_dir(app: &TestApp) -> PathBuf {
    let tokens = app.path("softhsm/tokens");
    if app.backend == common::Backend::Postgres {
        return tokens;
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&tokens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one token directory: {dirs:?}");
    dirs.pop().unwrap()
}

async fn token_outage(app: &TestApp) {
    let admin = app.admin_token().await;
    let profile = app.default_profile_id(&admin).await;
    let r = request_certificate(app, &admin, &profile, "before.outage.test").await;
    assert_eq!(r.status(), 201);
    let issued: Value = r.json().await.unwrap();
    let id = issued["certificate_id"].as_str().unwrap().to_string();
    let cert = certificate(app, &admin, &id).await;
    let ca = cert["ca_id"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let f = files(app, dir.path(), &cert);
    // Asked once while all is well, so the responder has it cached.
    let report = openssl_ocsp(app, &f, false);
    assert!(report.contains(": good"), "{report}");
    let crl_url = format!("{}/crl/{ca}.crl", app.public);
    assert_eq!(app.client.get(&crl_url).send().await.unwrap().status(), 200);

    // Take the token away under the running server.
    let token = token_dir(app);
    let away = app.path("token-away");
    std::fs::rename(&token, &away).unwrap();
    let outage = Instant::now();

    // Issuance (and login, which is audited with an HSM MAC) fail cleanly.
    for cn in ["during.outage.test", "again.outage.test"] {
        let r = request_certificate(app, &admin, &profile, cn).await;
        let body = expect_unavailable(r, "hsm_unavailable").await;
        assert!(body["detail"].as_str().unwrap().contains("HSM"), "{body}");
    }
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "email": common::ADMIN_EMAIL, "password": app.admin_password }))
        .send()
        .await
        .unwrap();
    expect_unavailable(r, "hsm_unavailable").await;

    // Reads keep working with the session already held.
    let again = certificate(app, &admin, &id).await;
    assert_eq!(again["serial"], cert["serial"]);
    let r = app.get(&admin, "/api/v1/certificates").await;
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str()),
        "{list}"
    );
    assert_eq!(app.get(&admin, "/api/v1/cas").await.status(), 200);
    assert_eq!(app.get(&admin, "/api/v1/me").await.status(), 200);

    // Relying parties: the stored CRL, the cached OCSP answer; an answer
    // that needs a fresh signature (a nonce) is a clean tryLater.
    let r = app.client.get(&crl_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/pkix-crl");
    let report = openssl_ocsp(app, &f, false);
    assert!(
        report.contains(": good") && report.contains("Response verify OK"),
        "{report}"
    );
    let report = openssl_ocsp(app, &f, true);
    assert!(report.to_ascii_lowercase().contains("trylater"), "{report}");

    // Health and readiness.
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = readyz(app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["hsm"]["status"], "unavailable", "{body}");
    assert!(
        body["checks"]["hsm"]["reason"]
            .as_str()
            .unwrap()
            .contains("token"),
        "{body}"
    );
    assert_eq!(body["checks"]["clm_core"]["status"], "ok", "{body}");
    assert_eq!(body["checks"]["clm_secure"]["status"], "ok", "{body}");
    assert!(!body.to_string().contains("CKR"), "{body}");

    // Stay away a while, with clients knocking, so backoff has to work.
    while outage.elapsed() < Duration::from_secs(6) {
        let r = request_certificate(app, &admin, &profile, "knock.outage.test").await;
        expect_unavailable(r, "hsm_unavailable").await;
        readyz(app).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = app.server_log();
    let reinits_during_outage = count(&log, "re-initialising the PKCS#11 module");
    assert!(reinits_during_outage >= 1, "recovery was attempted:\n{log}");
    // Backoff 0.5 s doubling: a handful of attempts in 6 s, not one per
    // request (the loop above made dozens).
    assert!(
        reinits_during_outage <= 12,
        "{reinits_during_outage} re-initialisations in 6 s:\n{log}"
    );
    assert!(log.contains("circuit open"), "{log}");

    // Give it back: issuance comes back by itself, without a restart.
    std::fs::rename(&away, &token).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let back = loop {
        let r = request_certificate(app, &admin, &profile, "after.outage.test").await;
        if r.status() == 201 {
            break r.json::<Value>().await.unwrap();
        }
        expect_unavailable(r, "hsm_unavailable").await;
        assert!(
            Instant::now() < deadline,
            "issuance did not recover:\n{}",
            app.server_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (status, body) = readyz(app).await;
    assert_eq!(status, 200, "{body}");
    // Signed with the CA's own key although every object handle changed.
    let after = certificate(app, &admin, back["certificate_id"].as_str().unwrap()).await;
    let dir2 = tempfile::tempdir().unwrap();
    let f2 = files(app, dir2.path(), &after);
    openssl_verify(&f2);
    let report = openssl_ocsp(app, &f2, true);
    assert!(
        report.contains(": good") && report.contains("Response verify OK"),
        "{report}"
    );
    assert_eq!(app.client.get(&crl_url).send().await.unwrap().status(), 200);
    app.login(common::ADMIN_EMAIL, &app.admin_password).await;

    let log = app.server_log();
    assert!(log.contains("circuit closed"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // Every operation that needed the HSM had failed cleanly: none became a 500.
    assert_eq!(count(&log, "internal error"), 0, "{log}");
}
