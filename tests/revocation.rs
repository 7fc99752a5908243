//! Revocation, holds, CRLs, the OCSP responder, renewal and expiry notices,
//! against a running server, judged by `openssl crl`, `openssl verify
//! -crl_check`, `openssl ocsp` and pkilint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Backend, TestApp, ec_csr, write};
use serde_json::{Value, json};

on_both_backends! {
    revocation_reaches_crl_and_ocsp => revocation_reaches_crl_and_ocsp;
    holds_can_be_released_or_made_final => holds;
    only_owner_or_ca_admin_may_revoke => who_may_revoke;
    renewal_replaces_and_supersedes => renewal;
    bad_relying_party_input_is_refused => bad_relying_party_input;
    status_changes_are_read_once_each_in_order => status_changes;
    a_ca_out_of_service_elsewhere_issues_nothing_more => ca_out_of_service_elsewhere;
    a_ca_on_hold_issues_nothing_until_released => ca_on_hold;
    an_inactive_ca_fails_none_of_its_neighbours => inactive_ca_beside_another;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_of_several_parts_sqlite() {
    let mut app = TestApp::start(Backend::Sqlite).await.unwrap();
    crl_of_several_parts(&mut app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_of_several_parts_postgres() {
    let Some(mut app) = TestApp::start(Backend::Postgres).await else {
        return;
    };
    crl_of_several_parts(&mut app).await;
}

/// An issuance that races its CA's revocation on PostgreSQL: the CA row is
/// changed in a transaction held open behind the server's back while the
/// request arrives. Reading the row as it was before that commit (the
/// cached copy, or a plain read) would sign and store; the issuance's own
/// transactions wait for the commit and then refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuance_racing_its_cas_revocation_is_refused() {
    let Some(app) = TestApp::start(Backend::Postgres).await else {
        return;
    };
    let token = app.admin_token().await;
    let profile = app.default_profile_id(&token).await;
    let first = app.issue(&token, &["before.clm.test"]).await;
    let disable = app.disable_ca_statement(first["ca_id"].as_str().unwrap());
    let db = app.pg_databases()[1].clone();
    let revocation = tokio::task::spawn_blocking(move || {
        common::psql(
            &db,
            &format!("BEGIN; {disable}; SELECT pg_sleep(1.5); COMMIT;"),
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app
        .post(
            &token,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": profile, "csr_pem": ec_csr(&["racing.clm.test"]) }),
        )
        .await;
    revocation.await.unwrap().unwrap();
    assert_eq!(r.status(), 409, "{}", app.server_log());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "ca_inactive", "{body}");
    assert_eq!(
        app.sql(
            "secure",
            "SELECT count(*) FROM certificates WHERE subject LIKE '%racing.clm.test%'"
        ),
        "0"
    );
}

/// Another instance's revocation reaches this one's OCSP cache even when
/// its transaction committed after this instance had already seen a later
/// stamp: writers stamp `updated_at` before they commit, and instances'
/// clocks differ. Played here with a revocation written behind the
/// server's back, stamped before one the server has already polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_committed_late_reaches_the_ocsp_cache() {
    // Two writers at once need PostgreSQL: SQLite's one writer commits in
    // the order it stamps.
    let Some(app) = TestApp::start(Backend::Postgres).await else {
        return;
    };
    let token = app.admin_token().await;
    let late = app.issue(&token, &["late.clm.test"]).await;
    let early = app.issue(&token, &["early.clm.test"]).await;
    let dir = tempfile::tempdir().unwrap();
    let f = files(&app, dir.path(), &late);
    let report = openssl_ocsp(&app, dir.path(), &f, false);
    assert!(report.contains("leaf.pem: good"), "{report}");

    let early_id = early["id"].as_str().unwrap();
    assert_eq!(
        revoke(&app, &token, early_id, "superseded").await.status(),
        200
    );
    // The cache's poll runs every 2 s: by now it has seen that stamp.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    app.sql(
        "secure",
        &format!(
            "UPDATE certificates SET status = 'revoked', revocation_reason = 'keyCompromise', \
             revoked_at = now(), \
             updated_at = (SELECT updated_at FROM certificates WHERE id = '{early_id}') \
                 - interval '5 seconds' \
             WHERE id = '{}'",
            late["id"].as_str().unwrap()
        ),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let report = openssl_ocsp(&app, dir.path(), &f, false);
        if report.contains("leaf.pem: revoked") {
            assert!(report.contains("Reason: keyCompromise"), "{report}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the late revocation never reached the cache: {report}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the OCSP caches poll, read one change a page as a mass revocation
/// is read ten thousand a page: every revocation once, in (`updated_at`,
/// id) order, also across a page boundary between two changes stamped
/// alike; never a certificate that was only issued.
async fn status_changes(app: &TestApp) {
    let token = app.admin_token().await;
    let start = chrono::Utc::now() - chrono::Duration::minutes(1);
    let fresh = app.issue(&token, &["fresh.changes.clm.test"]).await;
    let mut revoked = Vec::new();
    for name in ["a", "b", "c"] {
        let cert = app
            .issue(&token, &[&format!("{name}.changes.clm.test")])
            .await;
        let id = cert["id"].as_str().unwrap().to_string();
        assert_eq!(revoke(app, &token, &id, "superseded").await.status(), 200);
        revoked.push(id);
    }
    let literal = |id: &str| app.uuid_literal(id.parse().unwrap());
    app.sql(
        "secure",
        &format!(
            "UPDATE certificates SET updated_at = \
             (SELECT updated_at FROM certificates WHERE id = {}) WHERE id = {}",
            literal(&revoked[0]),
            literal(&revoked[1])
        ),
    );
    // Stamped alike now: one page ends between them.
    let stamps = app.sql(
        "secure",
        &format!(
            "SELECT COUNT(DISTINCT updated_at) FROM certificates WHERE id IN ({}, {})",
            literal(&revoked[0]),
            literal(&revoked[1])
        ),
    );
    assert_eq!(stamps.trim(), "1");

    let url = clm::domain::Secret::new(app.database_url("secure"));
    let db = clm::store::SecureDb::connect(&url).await.unwrap();
    let mut after = clm::store::StatusChange::from(start);
    let mut seen = Vec::new();
    while let Some(change) = db
        .status_changes_after(&after, 1)
        .await
        .unwrap()
        .into_iter()
        .next()
    {
        seen.push((change.at, change.id.0.to_string()));
        after = change;
    }
    assert!(seen.is_sorted(), "{seen:?}");
    let mut ids: Vec<String> = seen.into_iter().map(|(_, id)| id).collect();
    ids.sort();
    revoked.sort();
    assert_eq!(ids, revoked, "each revocation once; not {}", fresh["id"]);
}

/// `POST /api/v1/certificates/{id}/revoke` with `reason`.
async fn revoke(app: &TestApp, token: &str, id: &str, reason: &str) -> reqwest::Response {
    app.post(
        token,
        &format!("/api/v1/certificates/{id}/revoke"),
        &json!({ "reason": reason }),
    )
    .await
}

/// Files the leaf, its issuer and the whole chain (issuer first) in `dir`.
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

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `openssl ocsp` against the plain-HTTP listener: its report and whether
/// it verified the response. The response is kept in `dir/resp.der`.
fn openssl_ocsp(app: &TestApp, dir: &Path, f: &Files, nonce: bool) -> String {
    let (_, text) = run(Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(&f.issuer)
        .arg("-cert")
        .arg(&f.leaf)
        .args(["-url", &format!("{}/ocsp", app.public)])
        .arg("-CAfile")
        .arg(&f.chain)
        .arg(if nonce { "-nonce" } else { "-no_nonce" })
        .arg("-respout")
        .arg(dir.join("resp.der")));
    text
}

async fn fetch_crl(app: &TestApp, ca: &str, dir: &Path) -> PathBuf {
    let r = app
        .client
        .get(format!("{}/crl/{ca}.crl", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/pkix-crl");
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age"),
        "CRLs carry caching headers"
    );
    let length: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let der = r.bytes().await.unwrap();
    assert_eq!(length, der.len(), "CRLs are sent with their length");
    let path = dir.join("crl.der");
    std::fs::write(&path, &der).unwrap();
    path
}

fn crl_text(crl: &Path, chain: &Path) -> String {
    let (ok, text) = run(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(crl)
        .arg("-CAfile")
        .arg(chain));
    assert!(ok && text.contains("verify OK"), "openssl crl: {text}");
    text
}

fn verify_with_crl(dir: &Path, crl: &Path, f: &Files) -> (bool, String) {
    let pem = dir.join("crl.pem");
    let (ok, text) = run(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(crl)
        .arg("-out")
        .arg(&pem));
    assert!(ok, "{text}");
    run(Command::new("openssl")
        .args(["verify", "-crl_check", "-CAfile"])
        .arg(&f.chain)
        .arg("-CRLfile")
        .arg(&pem)
        .arg(&f.leaf))
}

fn pkilint(tool: &str, args: &[&str], file: &Path) {
    if Command::new(tool).arg("--help").output().is_err() {
        assert!(
            std::env::var("CLM_TEST_REQUIRE_TOOLS").is_err(),
            "pkilint ({tool}) is required but not installed"
        );
        eprintln!("note: {tool} not installed; skipping");
        return;
    }
    let (_, report) = run(Command::new(tool).arg("lint").args(args).arg(file));
    assert!(
        !report.contains("ERROR") && !report.contains("FATAL"),
        "{tool}:\n{report}"
    );
}

/// Polls until the CRL of `ca` lists (or no longer lists) `serial`.
async fn crl_until(app: &TestApp, ca: &str, serial: &str, listed: bool, f: &Files) -> String {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..50 {
        let crl = fetch_crl(app, ca, dir.path()).await;
        let text = crl_text(&crl, &f.chain).to_ascii_lowercase();
        if text.contains(serial) == listed {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the CRL never {} {serial}",
        if listed { "listed" } else { "dropped" }
    );
}

async fn revocation_reaches_crl_and_ocsp(app: &TestApp) {
    let token = app.admin_token().await;
    let cert = app.issue(&token, &["revoke.clm.test"]).await;
    let (id, ca, serial) = (
        cert["id"].as_str().unwrap(),
        cert["ca_id"].as_str().unwrap(),
        cert["serial"].as_str().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let f = files(app, dir.path(), &cert);

    // Before: OCSP says good (with and without a nonce), the CRL verifies
    // and does not stop the leaf.
    for nonce in [true, false] {
        let report = openssl_ocsp(app, dir.path(), &f, nonce);
        assert!(report.contains("Response verify OK"), "{report}");
        assert!(report.contains("leaf.pem: good"), "{report}");
    }
    pkilint("lint_ocsp_response", &[], &dir.path().join("resp.der"));
    let crl = fetch_crl(app, ca, dir.path()).await;
    let before = crl_text(&crl, &f.chain);
    pkilint("lint_crl", &["-t", "CRL", "-p", "PKIX"], &crl);
    let (ok, text) = verify_with_crl(dir.path(), &crl, &f);
    assert!(ok, "a valid leaf passes -crl_check: {text}");

    // Revoke.
    let r = revoke(app, &token, id, "keyCompromise").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "revoked");
    assert_eq!(body["revocation_reason"], "keyCompromise");
    assert!(body["revoked_at"].is_string());

    // OCSP knows at once, cached answer or not, with time and reason.
    for nonce in [false, true] {
        let report = openssl_ocsp(app, dir.path(), &f, nonce);
        assert!(report.contains("Response verify OK"), "{report}");
        assert!(report.contains("leaf.pem: revoked"), "{report}");
        assert!(report.contains("Reason: keyCompromise"), "{report}");
        assert!(report.contains("Revocation Time"), "{report}");
    }
    pkilint("lint_ocsp_response", &[], &dir.path().join("resp.der"));

    // The CRL lists it with its reason, under a higher number, and openssl
    // now refuses the leaf.
    let after = crl_until(app, ca, serial, true, &f).await;
    assert!(after.contains("key compromise"), "{after}");
    assert!(crl_number(&after) > crl_number(&before.to_ascii_lowercase()));
    let crl = fetch_crl(app, ca, dir.path()).await;
    pkilint("lint_crl", &["-t", "CRL", "-p", "PKIX"], &crl);
    let (ok, text) = verify_with_crl(dir.path(), &crl, &f);
    assert!(!ok && text.contains("certificate revoked"), "{text}");

    // Revoked is final.
    let r = revoke(app, &token, id, "superseded").await;
    assert_eq!(r.status(), 409);
    let r = app
        .post(
            &token,
            &format!("/api/v1/certificates/{id}/release-hold"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 409);

    // The list filters by status.
    let list: Value = app
        .get(&token, "/api/v1/certificates?status=revoked")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id)
    );

    // The root's CRL is served too (and verifies against the root).
    let root_id = app.root_ca_id(&token).await.as_str().unwrap().to_string();
    let root_crl = fetch_crl(app, &root_id, dir.path()).await;
    let root_file = write(dir.path(), "root.pem", &app.root_pem());
    crl_text(&root_crl, &root_file);

    // Revoking the intermediate puts it on the root's CRL and takes it out
    // of service.
    let inter: Value = app
        .get(&token, &format!("/api/v1/cas/{ca}"))
        .await
        .json()
        .await
        .unwrap();
    let r = revoke(
        app,
        &token,
        inter["certificate_id"].as_str().unwrap(),
        "cACompromise",
    )
    .await;
    assert_eq!(r.status(), 200);
    let inter_serial = r.json::<Value>().await.unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let root_crl = fetch_crl(app, &root_id, dir.path()).await;
    let text = crl_text(&root_crl, &root_file).to_ascii_lowercase();
    assert!(
        text.contains(&inter_serial) && text.contains("ca compromise"),
        "{text}"
    );
    let status = app
        .get(&token, &format!("/api/v1/cas/{ca}"))
        .await
        .json::<Value>()
        .await
        .unwrap()["status"]
        .clone();
    assert_eq!(status, "disabled");
    let profile = app.default_profile_id(&token).await;
    let r = app
        .post(
            &token,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": profile, "csr_pem": ec_csr(&["late.clm.test"]) }),
        )
        .await;
    assert_eq!(r.status(), 409, "no issuance through a revoked CA");
}

/// 30,000 revocations put straight into the database make a CRL of about
/// 1.4 MB: stored as two parts of `ca_crl_parts`, served whole, and after a
/// restart (nothing in memory) served again from the parts, byte for byte.
async fn crl_of_several_parts(app: &mut TestApp) {
    const BULK: usize = 30_000;
    let token = app.admin_token().await;
    let template = app.issue(&token, &["template.clm.test"]).await;
    let ca = template["ca_id"].as_str().unwrap().to_string();
    app.copy_certificate(
        "template.clm.test",
        BULK,
        "c0",
        &[
            ("status", "'revoked'"),
            ("revoked_at", "created_at"),
            ("revocation_reason", "'superseded'"),
        ],
    );
    let id = match app.backend {
        Backend::Sqlite => "randomblob(16)",
        Backend::Postgres => "gen_random_uuid()",
    };
    app.sql(
        "secure",
        &format!(
            "INSERT INTO certificate_revocations (id, certificate_id, ca_id, serial_hex, reason, \
             revoked_at, created_at) \
             SELECT {id}, id, ca_id, serial_hex, 'superseded', revoked_at, created_at \
             FROM certificates WHERE subject LIKE 'CN=bulk-%'"
        ),
    );
    // One more through the API re-signs the CRL with all of them.
    let last = app.issue(&token, &["last.clm.test"]).await;
    let r = revoke(app, &token, last["id"].as_str().unwrap(), "keyCompromise").await;
    assert_eq!(r.status(), 200);

    let dir = tempfile::tempdir().unwrap();
    let f = files(app, dir.path(), &last);
    let serial = last["serial"].as_str().unwrap();
    let text = crl_until(app, &ca, serial, true, &f).await;
    assert_eq!(
        text.matches("serial number:").count(),
        BULK + 1,
        "every revocation listed"
    );
    let served = std::fs::read(fetch_crl(app, &ca, dir.path()).await).unwrap();
    assert!(
        served.len() > 1 << 20,
        "{} bytes: not more than one part",
        served.len()
    );
    let parts = app.sql(
        "secure",
        &format!("SELECT count(*) FROM ca_crl_parts WHERE ca_id = (SELECT ca_id FROM certificates WHERE serial_hex = '{serial}')"),
    );
    assert_eq!(
        parts.trim(),
        "2",
        "a 1.4 MB CRL is two parts of 1 MiB at most"
    );

    app.kill_and_restart().await;
    let again = std::fs::read(fetch_crl(app, &ca, dir.path()).await).unwrap();
    assert!(
        again == served,
        "the stored parts put together are the CRL served before"
    );
}

fn crl_number(text: &str) -> u64 {
    let at = text.find("x509v3 crl number:").unwrap();
    text[at..].lines().nth(1).unwrap().trim().parse().unwrap()
}

async fn holds(app: &TestApp) {
    let token = app.admin_token().await;
    let cert = app.issue(&token, &["hold.clm.test"]).await;
    let id = cert["id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = files(app, dir.path(), &cert);
    let path = format!("/api/v1/certificates/{id}/revoke");
    let revoke = |reason: &'static str| {
        let (path, token) = (path.clone(), token.clone());
        async move { app.post(&token, &path, &json!({ "reason": reason })).await }
    };

    let r = revoke("certificateHold").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "on_hold");
    let report = openssl_ocsp(app, dir.path(), &f, false);
    assert!(
        report.contains("leaf.pem: revoked") && report.contains("Reason: certificateHold"),
        "{report}"
    );
    assert_eq!(revoke("certificateHold").await.status(), 409, "held twice");

    // Released: good again, on OCSP and on the CRL.
    let r = app
        .post(
            &token,
            &format!("/api/v1/certificates/{id}/release-hold"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "valid");
    let report = openssl_ocsp(app, dir.path(), &f, false);
    assert!(report.contains("leaf.pem: good"), "{report}");
    let serial = cert["serial"].as_str().unwrap();
    crl_until(app, cert["ca_id"].as_str().unwrap(), serial, false, &f).await;

    // A hold may become final; then nothing brings it back.
    assert_eq!(revoke("certificateHold").await.status(), 200);
    let r = revoke("cessationOfOperation").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "revoked");
    let r = app
        .post(
            &token,
            &format!("/api/v1/certificates/{id}/release-hold"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let report = openssl_ocsp(app, dir.path(), &f, false);
    assert!(report.contains("Reason: cessationOfOperation"), "{report}");
}

async fn who_may_revoke(app: &TestApp) {
    let admin = app.admin_token().await;
    let org = app.create_org(&admin, "Revokers").await;
    let other_org = app.create_org(&admin, "Strangers").await;
    let (_, owner) = app
        .create_user(&admin, &org, "owner@revokers.test", &["requester"])
        .await;
    let (_, colleague) = app
        .create_user(&admin, &org, "colleague@revokers.test", &["requester"])
        .await;
    let (_, stranger) = app
        .create_user(&admin, &other_org, "x@strangers.test", &["requester"])
        .await;
    let (_, ca_admin) = app
        .create_user(&admin, &org, "ca@revokers.test", &["ca_admin"])
        .await;
    let mine = app.issue(&owner, &["mine.clm.test"]).await;
    let theirs = app.issue(&owner, &["theirs.clm.test"]).await;
    let path = |c: &Value| format!("/api/v1/certificates/{}/revoke", c["id"].as_str().unwrap());
    let body = json!({ "reason": "affiliationChanged" });

    // Someone else's certificate does not exist for you.
    for token in [&colleague, &stranger] {
        let r = app.post(token, &path(&mine), &body).await;
        assert_eq!(r.status(), 404);
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "errors are problem documents"
        );
    }
    // A bad reason is named.
    let r = app
        .post(&owner, &path(&mine), &json!({ "reason": "removeFromCRL" }))
        .await;
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_reason");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("keyCompromise")
    );
    let r = app.post(&owner, &path(&mine), &json!({})).await;
    assert_eq!(r.status(), 400);
    // Nothing was persisted by the refusals.
    let still: Value = app
        .get(
            &owner,
            &format!("/api/v1/certificates/{}", mine["id"].as_str().unwrap()),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["status"], "valid");

    // The owner and a CA admin may.
    assert_eq!(app.post(&owner, &path(&mine), &body).await.status(), 200);
    assert_eq!(
        app.post(&ca_admin, &path(&theirs), &body).await.status(),
        200
    );
    // Only a CA admin releases holds.
    let held = app.issue(&owner, &["held.clm.test"]).await;
    let hold = json!({ "reason": "certificateHold" });
    assert_eq!(app.post(&owner, &path(&held), &hold).await.status(), 200);
    let release = format!(
        "/api/v1/certificates/{}/release-hold",
        held["id"].as_str().unwrap()
    );
    assert_eq!(app.post(&owner, &release, &json!({})).await.status(), 403);
    assert_eq!(
        app.post(&ca_admin, &release, &json!({})).await.status(),
        200
    );

    // The owner heard about the CA admin's revocation.
    let notes: Value = app
        .get(&owner, "/api/v1/notifications")
        .await
        .json()
        .await
        .unwrap();
    let notes = notes["items"]
        .as_array()
        .or(notes.as_array())
        .unwrap()
        .clone();
    assert!(
        notes.iter().any(|n| n["kind"] == "certificate.revoked"),
        "{notes:?}"
    );
}

async fn renewal(app: &TestApp) {
    let admin = app.admin_token().await;
    let old = app
        .issue(&admin, &["renew.clm.test", "www.renew.clm.test"])
        .await;
    let old_id = old["id"].as_str().unwrap();
    let renew = format!("/api/v1/certificates/{old_id}/renew");

    // Without a CSR the default profile refuses to certify the same key.
    let r = app.post(&admin, &renew, &json!({})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "csr_required");

    // With a new key: same names (whatever the CSR asks for), linked, and
    // the old one superseded once the new one exists.
    let r = app
        .post(
            &admin,
            &renew,
            &json!({ "csr_pem": ec_csr(&["other.clm.test"]), "revoke_replaced": true }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let request: Value = r.json().await.unwrap();
    assert_eq!(request["status"], "issued");
    assert_eq!(request["sans"], old["sans"]);
    let new: Value = app
        .get(
            &admin,
            &format!(
                "/api/v1/certificates/{}",
                request["certificate_id"].as_str().unwrap()
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(new["sans"], old["sans"]);
    assert_ne!(new["serial"], old["serial"]);
    assert_eq!(new["replaces_certificate_id"], old_id);
    let old_now: Value = app
        .get(&admin, &format!("/api/v1/certificates/{old_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(old_now["status"], "revoked");
    assert_eq!(old_now["revocation_reason"], "superseded");

    // A revoked certificate is not renewed.
    let r = app
        .post(
            &admin,
            &renew,
            &json!({ "csr_pem": ec_csr(&["x.clm.test"]) }),
        )
        .await;
    assert_eq!(r.status(), 409);

    // A profile that allows key reuse renews without a CSR, same key.
    let intermediate = app
        .get(&admin, "/api/v1/cas")
        .await
        .json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "intermediate")
        .unwrap()["id"]
        .clone();
    let r = app
        .post(
            &admin,
            "/api/v1/profiles",
            &json!({
                "name": "reuse",
                "ca_id": intermediate,
                "key_algorithms": ["ecdsa-p256"],
                "allowed_dns_suffixes": ["clm.test"],
                "max_validity_days": 30,
                "extended_key_usages": ["serverAuth"],
                "allow_key_reuse": true
            }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let profile: Value = r.json().await.unwrap();
    assert_eq!(profile["allow_key_reuse"], true);
    let r = app
        .post(
            &admin,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": profile["id"], "csr_pem": ec_csr(&["reuse.clm.test"]) }),
        )
        .await;
    let first: Value = r.json().await.unwrap();
    let first_id = first["certificate_id"].as_str().unwrap();
    let r = app
        .post(
            &admin,
            &format!("/api/v1/certificates/{first_id}/renew"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let second: Value = r.json().await.unwrap();
    let pem_of = |id: &str| {
        let admin = admin.clone();
        let id = id.to_string();
        async move {
            app.get(&admin, &format!("/api/v1/certificates/{id}"))
                .await
                .json::<Value>()
                .await
                .unwrap()["certificate_pem"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let spki = |pem_text: String| {
        let der = ::pem::parse(pem_text).unwrap().into_contents();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        c.public_key().raw.to_vec()
    };
    let a = spki(pem_of(first_id).await);
    let b = spki(pem_of(second["certificate_id"].as_str().unwrap()).await);
    assert_eq!(a, b, "same key");
    // The old one stays valid unless asked otherwise.
    let first_now: Value = app
        .get(&admin, &format!("/api/v1/certificates/{first_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first_now["status"], "valid");
}

/// The expiry job runs every second here, so notices are observable.
mod owners_hear_before_expiry_once {
    use common::{Backend, TestApp};

    use super::*;

    const FAST_JOBS: &[(&str, &str)] = &[("CLM_JOB_INTERVAL_SECONDS", "1")];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let app = TestApp::start_with(Backend::Sqlite, FAST_JOBS)
            .await
            .unwrap();
        expiry_notices(&app).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(app) = TestApp::start_with(Backend::Postgres, FAST_JOBS).await else {
            return;
        };
        expiry_notices(&app).await;
    }
}

/// Issues a certificate for `name` valid five days, through the default
/// profile; its id.
async fn issue_for_five_days(app: &TestApp, token: &str, name: &str) -> String {
    let profile = app.default_profile_id(token).await;
    let body = json!({ "profile_id": profile, "csr_pem": ec_csr(&[name]), "validity_days": 5 });
    app.request_certificate(token, &body).await
}

async fn expiry_notices(app: &TestApp) {
    let admin = app.admin_token().await;
    let org = app.create_org(&admin, "Expiring").await;
    let (_, owner) = app
        .create_user(&admin, &org, "owner@expiring.test", &["requester"])
        .await;
    let cert_id = issue_for_five_days(app, &owner, "soon.clm.test").await;
    let long = app.issue(&owner, &["later.clm.test"]).await;

    // The filter finds the short one only.
    let list: Value = app
        .get(&owner, "/api/v1/certificates?expiring_within_days=6")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&cert_id.as_str()));
    assert!(!ids.contains(&long["id"].as_str().unwrap()));

    // The 7-day notice arrives, once, and no late 30-day notice.
    let mut notices = Vec::new();
    for _ in 0..60 {
        let notes: Value = app
            .get(&owner, "/api/v1/notifications")
            .await
            .json()
            .await
            .unwrap();
        let notes = notes["items"]
            .as_array()
            .or(notes.as_array())
            .unwrap()
            .clone();
        notices = notes
            .into_iter()
            .filter(|n| n["kind"] == "certificate.expiring")
            .collect();
        if !notices.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0]["data"]["days_before"], 7);
    assert_eq!(notices[0]["data"]["certificate_id"], cert_id);
    // Several more job runs send nothing new.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let notes: Value = app
        .get(&owner, "/api/v1/notifications")
        .await
        .json()
        .await
        .unwrap();
    let notes = notes["items"]
        .as_array()
        .or(notes.as_array())
        .unwrap()
        .clone();
    assert_eq!(
        notes
            .iter()
            .filter(|n| n["kind"] == "certificate.expiring")
            .count(),
        1
    );
}

/// More certificates come due than one query reads: each sweep goes on
/// where the last stopped, among new certificates and in the bands alike.
mod every_certificate_due_a_notice_gets_it {
    use common::{Backend, TestApp};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let app = TestApp::start_with(Backend::Sqlite, &[("CLM_JOB_INTERVAL_SECONDS", "1")])
            .await
            .unwrap();
        many_expiry_notices(app).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(app) =
            TestApp::start_with(Backend::Postgres, &[("CLM_JOB_INTERVAL_SECONDS", "1")]).await
        else {
            return;
        };
        many_expiry_notices(app).await;
    }
}

/// Stores `n` copies of the mirror of `cert` under fresh ids, as if that
/// many certificates with its notAfter had been issued `ago`.
fn copy_mirror(app: &TestApp, cert: &str, n: usize, ago: Duration) {
    let issued = chrono::Utc::now() - ago;
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let id = clm::domain::row_id_at(issued);
            format!("({}, '{i:x}')", app.uuid_literal(id))
        })
        .collect();
    app.sql(
        "core",
        &format!(
            "WITH copies (id, suffix) AS (VALUES {}) \
             INSERT INTO certificate_metadata (id, organization_id, ca_id, profile_id, \
             request_id, owner_id, common_name, sans, serial_hex, not_before, not_after, status, \
             created_at, updated_at) SELECT copies.id, organization_id, ca_id, profile_id, NULL, \
             owner_id, common_name, sans, serial_hex || copies.suffix, not_before, not_after, \
             status, created_at, updated_at FROM copies, certificate_metadata WHERE certificate_metadata.id = {}",
            rows.join(", "),
            app.uuid_literal(cert.parse().unwrap()),
        ),
    );
}

/// Waits until `n` 7-day notices have been sent.
async fn notices_sent(app: &TestApp, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sent: usize = app
            .sql(
                "core",
                "SELECT count(*) FROM certificate_expiry_notices WHERE days_before = 7",
            )
            .parse()
            .unwrap();
        if sent == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sent} of {n} notices sent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn many_expiry_notices(mut app: TestApp) {
    let admin = app.admin_token().await;
    let cert = issue_for_five_days(&app, &admin, "many.clm.test").await;
    notices_sent(&app, 1).await;

    // Issued while the server runs: found among the new certificates.
    copy_mirror(&app, &cert, 1_200, Duration::ZERO);
    notices_sent(&app, 1_201).await;

    // Issued an hour before the server starts: its first sweep reads the
    // bands from their near edge, the next ones go on a page at a time
    // (the copies share one notAfter).
    app.terminate(Duration::from_secs(30)).await;
    copy_mirror(&app, &cert, 1_200, Duration::from_secs(3_600));
    app.restart().await;
    notices_sent(&app, 2_401).await;
}

async fn bad_relying_party_input(app: &TestApp) {
    let ocsp = format!("{}/ocsp", app.public);
    let post = |body: Vec<u8>| {
        app.client
            .post(&ocsp)
            .header("content-type", "application/ocsp-request")
            .body(body)
            .send()
    };

    // Garbage, truncations and bit flips of a real request never give a 5xx.
    let token = app.admin_token().await;
    let cert = app.issue(&token, &["ocsp-bad.clm.test"]).await;
    let dir = tempfile::tempdir().unwrap();
    let f = files(app, dir.path(), &cert);
    let req = dir.path().join("req.der");
    let (ok, text) = run(Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(&f.issuer)
        .arg("-cert")
        .arg(&f.leaf)
        .arg("-reqout")
        .arg(&req));
    assert!(ok, "{text}");
    let good = std::fs::read(&req).unwrap();
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"garbage".to_vec(),
        vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
        vec![0x30; 4000],
    ];
    for cut in [1, 2, good.len() / 2, good.len() - 1] {
        inputs.push(good[..cut].to_vec());
    }
    for i in (0..good.len()).step_by(7) {
        let mut flipped = good.clone();
        flipped[i] ^= 0x5a;
        inputs.push(flipped);
    }
    for body in inputs {
        let r = post(body).await.unwrap();
        assert!(r.status().as_u16() < 500, "{}", r.status());
        if r.status() == 400 {
            assert_eq!(r.headers()["content-type"], "application/ocsp-response");
            // OCSPResponse { responseStatus malformedRequest (1) }
            assert_eq!(
                r.bytes().await.unwrap().as_ref(),
                [0x30, 0x03, 0x0a, 0x01, 0x01]
            );
        }
    }
    // Oversized: refused unread, as a problem document.
    let r = post(vec![0x30; 20_000]).await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // Not an OCSP request at all.
    let r = app
        .client
        .post(&ocsp)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = app
        .client
        .get(format!("{ocsp}/%%%not-base64"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());

    // A GET with the real request in base64 works.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&good);
    let r = app
        .client
        .get(format!(
            "{ocsp}/{}",
            b64.replace('/', "%2F").replace('+', "%2B")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/ocsp-response");

    // Another issuer's certificate: unauthorized.
    let foreign = dir.path();
    let (ok, text) = run(Command::new("openssl").current_dir(foreign).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "fca.key",
        "-out",
        "fca.pem",
        "-subj",
        "/CN=Foreign CA",
        "-days",
        "2",
    ]));
    assert!(ok, "{text}");
    let (ok, text) = run(Command::new("openssl").current_dir(foreign).args([
        "ocsp", "-issuer", "fca.pem", "-serial", "0x1234", "-reqout", "freq.der",
    ]));
    assert!(ok, "{text}");
    let r = post(std::fs::read(foreign.join("freq.der")).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // OCSPResponse { responseStatus unauthorized (6) }
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        [0x30, 0x03, 0x0a, 0x01, 0x06]
    );

    // CRLs: unknown CA → 404, not a CA id → 4xx; both problem documents.
    for path in [
        format!("/crl/{}.crl", uuid::Uuid::new_v4()),
        "/crl/not-an-id.crl".to_string(),
        "/crl/nothing".to_string(),
    ] {
        let r = app
            .client
            .get(format!("{}{path}", app.public))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }

    // And the server still serves.
    let report = openssl_ocsp(app, dir.path(), &f, true);
    assert!(report.contains("leaf.pem: good"), "{report}");
}

/// A CA taken out of service by another instance (played here behind the
/// server's back, right after this instance read the CA as active) issues
/// nothing from the next request on: the issuance's transactions check the
/// CA themselves instead of trusting the one-second copy issuance reads.
async fn ca_out_of_service_elsewhere(app: &TestApp) {
    let token = app.admin_token().await;
    let first = app.issue(&token, &["before.clm.test"]).await;
    let before = stored_requests(app);
    app.disable_ca_elsewhere(first["ca_id"].as_str().unwrap());
    refused_as_inactive(app, &token, "after.clm.test").await;
    assert_eq!(stored_requests(app), before, "nothing is stored");
}

/// A request through the default profile, which must be refused with
/// `409 ca_inactive`.
async fn refused_as_inactive(app: &TestApp, token: &str, name: &str) {
    let profile = app.default_profile_id(token).await;
    let r = app
        .post(
            token,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": profile, "csr_pem": ec_csr(&[name]) }),
        )
        .await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "ca_inactive", "{body}");
}

fn stored_requests(app: &TestApp) -> usize {
    app.sql("secure", "SELECT count(*) FROM certificate_requests")
        .parse()
        .unwrap()
}

/// A CA whose own certificate is on hold (a key suspected, not yet known,
/// to be compromised) issues nothing until the hold is released: a
/// certificate issued meanwhile would chain through a suspended CA, and
/// stay valid if the suspicion proved wrong or be signed by a compromised
/// key if it proved right.
async fn ca_on_hold(app: &TestApp) {
    let token = app.admin_token().await;
    let ca = app.intermediate_ca_id(&token).await;
    let inter: Value = app
        .get(&token, &format!("/api/v1/cas/{}", ca.as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    let ca_cert = inter["certificate_id"].as_str().unwrap();
    app.issue(&token, &["before-hold.clm.test"]).await;
    assert_eq!(
        revoke(app, &token, ca_cert, "certificateHold")
            .await
            .status(),
        200
    );
    refused_as_inactive(app, &token, "held.clm.test").await;
    let r = app
        .post(
            &token,
            &format!("/api/v1/certificates/{ca_cert}/release-hold"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.issue(&token, &["after-hold.clm.test"]).await;
}

/// Requests through a CA out of service and through a working one arrive
/// together, so that they share group commits: each gets its own answer
/// (the shared transaction is refused as a whole, then each is written
/// alone), and nothing of the refused ones is stored.
async fn inactive_ca_beside_another(app: &TestApp) {
    let token = app.admin_token().await;
    let root = app.root_ca_id(&token).await;
    let halted = app
        .create_intermediate(&token, &root, "halted", "Halted CA")
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let halted_profile = app
        .create_profile(
            &token,
            &json!({
                "name": "halted", "ca_id": halted, "key_algorithms": ["ecdsa-p256"],
                "allowed_dns_suffixes": ["halted.test"], "allow_ip_sans": false,
                "max_validity_days": 30, "extended_key_usages": ["serverAuth"],
                "required_approvals": 0, "allow_server_keygen": false
            }),
        )
        .await;
    let working_profile = app.default_profile_id(&token).await;
    // Both CAs sign once, so this instance holds both as active.
    app.request_certificate(
        &token,
        &json!({ "profile_id": halted_profile, "csr_pem": ec_csr(&["first.halted.test"]) }),
    )
    .await;
    app.issue(&token, &["first.clm.test"]).await;
    let before = stored_requests(app);
    app.disable_ca_elsewhere(&halted);
    const EACH: usize = 24;
    let token = &token;
    let answers = futures_util::future::join_all((0..2 * EACH).map(|i| {
        let (profile, name) = if i % 2 == 0 {
            (&working_profile, format!("n{i}.clm.test"))
        } else {
            (&halted_profile, format!("n{i}.halted.test"))
        };
        let body = json!({ "profile_id": profile, "csr_pem": ec_csr(&[&name]) });
        async move {
            let r = app.post(token, "/api/v1/certificate-requests", &body).await;
            (i, r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    }))
    .await;
    for (i, status, body) in answers {
        if i % 2 == 0 {
            assert_eq!(status, 201, "{body}");
            assert_eq!(body["status"], "issued", "{body}");
        } else {
            assert_eq!(
                (status, body["code"].as_str()),
                (409, Some("ca_inactive")),
                "{body}"
            );
        }
    }
    assert_eq!(
        stored_requests(app),
        before + EACH,
        "only the working CA's requests are stored"
    );
}
