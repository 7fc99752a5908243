//! A registered CA key deleted from the token (by `pkcs11-tool`, an outside
//! tool): issuance with that CA is refused with a clear 503 while the server
//! runs and after a restart, webhooks hear of each request that failed,
//! everything else keeps working, and `clm hsm check` names the missing
//! key. Rolling the CA over replaces the key, and the failed request's
//! retry is issued from the new one (judged by `openssl verify`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, TestApp, ec_csr, openssl_verify};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let mut app = TestApp::start(Backend::Sqlite).await.unwrap();
    missing_ca_key(&mut app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(mut app) = TestApp::start(Backend::Postgres).await else {
        return;
    };
    missing_ca_key(&mut app).await;
}

async fn request(app: &TestApp, token: &str, profile: &str, cn: &str) -> reqwest::Response {
    app.post(
        token,
        "/api/v1/certificate-requests",
        &json!({ "profile_id": profile, "csr_pem": ec_csr(&[cn]) }),
    )
    .await
}

/// A profile of `ca` for names under `doomed.test`; returns its id.
async fn profile(app: &TestApp, token: &str, ca: &str, approvals: u8) -> String {
    app.create_profile(
        token,
        &json!({
            "name": format!("doomed-{approvals}"), "ca_id": ca,
            "key_algorithms": ["ecdsa-p256"], "allowed_dns_suffixes": ["doomed.test"],
            "allow_ip_sans": false, "max_validity_days": 30,
            "extended_key_usages": ["serverAuth"], "required_approvals": approvals,
            "allow_server_keygen": false
        }),
    )
    .await
}

/// 503 `ca_unavailable` that says what is wrong in words, not return codes.
async fn expect_ca_unavailable(r: reqwest::Response) {
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let text = r.text().await.unwrap();
    for leak in ["CKR", "C_", "Pkcs11", "ObjectHandle", "clm-ca-"] {
        assert!(!text.contains(leak), "problem leaks {leak}: {text}");
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["code"], "ca_unavailable", "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("key is missing from the HSM"), "{detail}");
}

/// `clm hsm check`: whether it passed, and what it printed.
fn hsm_check(app: &TestApp) -> (bool, String) {
    let out = app.clm(&["hsm", "check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The `CKA_ID` (hex) of the private key labelled `label`, as OpenSC lists it.
fn private_key_id(app: &TestApp, label: &str) -> String {
    let listing = app.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    let mut lines = listing.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line == format!("label:      {label}")
            || line.strip_prefix("label:").map(str::trim) == Some(label)
        {
            for next in lines.by_ref() {
                if let Some(id) = next.strip_prefix("ID:") {
                    return id.trim().to_string();
                }
            }
        }
    }
    panic!("no private key labelled {label}:\n{listing}");
}

async fn missing_ca_key(app: &mut TestApp) {
    let (ok, report) = hsm_check(app);
    assert!(ok, "a healthy token passes:\n{report}");
    assert!(!report.contains("FAIL"), "{report}");
    for purpose in ["kek", "audit_mac", "ca_signing", "ocsp_signing"] {
        assert!(
            report.contains(&format!("ok\t{purpose}\t")),
            "{purpose}:\n{report}"
        );
    }

    let admin = app.admin_token().await;
    let root = app.root_ca_id(&admin).await;
    let doomed = app
        .create_intermediate(&admin, &root, "doomed", "Doomed CA")
        .await;
    let doomed_id = doomed["id"].as_str().unwrap().to_string();
    let doomed_profile = profile(app, &admin, &doomed_id, 0).await;
    let default_profile = app.default_profile_id(&admin).await;
    // Subscribers hear of each request that fails. Nothing listens on the
    // address: the deliveries wait in the queue, where they are counted.
    let r = app
        .post(
            &admin,
            "/api/v1/webhooks",
            &json!({ "url": "http://127.0.0.1:9/hook", "events": ["request.failed"] }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let deliveries = format!(
        "/api/v1/webhooks/{}/deliveries",
        r.json::<Value>().await.unwrap()["id"].as_str().unwrap()
    );
    // The doomed CA signs once, so the server holds its key's handle.
    assert_eq!(
        request(app, &admin, &doomed_profile, "first.doomed.test")
            .await
            .status(),
        201
    );

    // A request on the same CA that waits for its approver meanwhile.
    let me: Value = app.get(&admin, "/api/v1/me").await.json().await.unwrap();
    let (_, approver) = app
        .create_user(
            &admin,
            me["organization_id"].as_str().unwrap(),
            "approver@doomed.test",
            &["approver"],
        )
        .await;
    let approved_profile = profile(app, &admin, &doomed_id, 1).await;
    let r = request(app, &admin, &approved_profile, "waiting.doomed.test").await;
    assert_eq!(r.status(), 201);
    let waiting = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        app.get(&admin, &deliveries)
            .await
            .json::<Value>()
            .await
            .unwrap(),
        json!([]),
        "nothing has failed yet"
    );

    let label = format!("clm-ca-{doomed_id}");
    let id = private_key_id(app, &label);
    app.pkcs11_tool(&["--delete-object", "--type", "privkey", "--id", &id]);

    // While the server runs: that CA is refused, every time, cleanly.
    for cn in ["second.doomed.test", "third.doomed.test"] {
        expect_ca_unavailable(request(app, &admin, &doomed_profile, cn).await).await;
    }
    // Nor does it certify a CA of its own, and no key is made for one.
    let private_keys = app
        .pkcs11_tool(&["--list-objects", "--type", "privkey"])
        .matches("label:")
        .count();
    expect_ca_unavailable(
        app.post(
            &admin,
            "/api/v1/cas",
            &json!({ "name": "doomed-child", "kind": "intermediate", "parent_id": doomed_id,
                     "subject": "Doomed Child CA", "key_algorithm": "ecdsa-p256", "validity_days": 30 }),
        )
        .await,
    )
    .await;
    assert_eq!(
        app.pkcs11_tool(&["--list-objects", "--type", "privkey"])
            .matches("label:")
            .count(),
        private_keys
    );
    // The final approval finds the CA unable to sign: that request fails.
    expect_ca_unavailable(
        app.post(
            &approver,
            &format!("/api/v1/certificate-requests/{waiting}/approve"),
            &json!({}),
        )
        .await,
    )
    .await;
    // Nothing is left half-done: no request holds a reserved serial
    // without a certificate or a recorded failure.
    let requests: Value = app
        .get(&admin, "/api/v1/certificate-requests?per_page=1000")
        .await
        .json()
        .await
        .unwrap();
    let items = requests["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .all(|r| r["status"] == "issued" || r["status"] == "failed"),
        "{requests}"
    );
    let failed = items.iter().filter(|r| r["status"] == "failed").count();
    assert!((2..=3).contains(&failed), "{requests}");
    let waited = items.iter().find(|r| r["id"] == waiting.as_str()).unwrap();
    assert_eq!(waited["status"], "failed", "{waited}");
    assert!(
        waited["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("key is missing from the HSM")),
        "{waited}"
    );
    let queued: Value = app.get(&admin, &deliveries).await.json().await.unwrap();
    let queued = queued.as_array().unwrap();
    assert_eq!(
        queued.len(),
        failed,
        "one event per failed request: {queued:?}"
    );
    assert!(queued.iter().all(|d| d["event"] == "request.failed"));

    // Everything else keeps working.
    let r = request(app, &admin, &default_profile, "other.ca.test").await;
    assert_eq!(r.status(), 201);
    let other = r.json::<Value>().await.unwrap();
    let cert_id = other["certificate_id"].as_str().unwrap();
    assert_eq!(
        app.get(&admin, &format!("/api/v1/certificates/{cert_id}"))
            .await
            .status(),
        200
    );
    assert_eq!(app.get(&admin, "/api/v1/certificates").await.status(), 200);
    assert_eq!(
        app.get(&admin, &format!("/api/v1/cas/{doomed_id}"))
            .await
            .status(),
        200
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the token itself is fine");

    // `clm hsm check` names the missing key and fails.
    let (ok, report) = hsm_check(app);
    assert!(!ok, "a missing key fails the check:\n{report}");
    let line = report
        .lines()
        .find(|l| l.starts_with("FAIL\tca_signing\t") && l.contains(&label))
        .unwrap_or_else(|| panic!("no FAIL line for {label}:\n{report}"));
    assert!(line.contains("missing from the token"), "{line}");
    assert!(
        report.contains(&format!("FAIL\tca_certificate_match\t{doomed_id}")),
        "{report}"
    );
    assert!(report.contains("ok\tkek\t"), "the rest is fine:\n{report}");

    // After a restart the CA fails its start-up proof; the server serves.
    app.kill_and_restart().await;
    assert!(
        app.server_log().contains("CA cannot sign"),
        "{}",
        app.server_log()
    );
    let admin = app.admin_token().await;
    expect_ca_unavailable(request(app, &admin, &doomed_profile, "fourth.doomed.test").await).await;
    assert_eq!(
        request(app, &admin, &default_profile, "after.restart.test")
            .await
            .status(),
        201
    );
    let cas: Value = app.get(&admin, "/api/v1/cas").await.json().await.unwrap();
    assert!(
        cas.as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == doomed_id.as_str())
    );

    // A retry cannot help while the key is gone; the request stays failed.
    let retry = format!("/api/v1/certificate-requests/{waiting}/retry");
    expect_ca_unavailable(app.post(&approver, &retry, &json!({})).await).await;
    let still: Value = app
        .get(&admin, &format!("/api/v1/certificate-requests/{waiting}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["status"], "failed", "{still}");
    assert!(still["failure_reason"].is_string(), "{still}");

    // The lost key is replaced by a rollover: the root certifies a new key
    // under the CA's name, and the CA's profiles follow it.
    let rolled = app.rollover(&admin, &doomed_id).await;
    let new_ca = rolled["ca"]["id"].clone();
    assert_eq!(rolled["retired_ca_id"], doomed_id.as_str());

    // The retry is issued from the new key, and the old reason is gone.
    let r = app.post(&approver, &retry, &json!({})).await;
    assert_eq!(r.status(), 200, "{}", app.server_log());
    let retried: Value = r.json().await.unwrap();
    assert_eq!(retried["status"], "issued", "{retried}");
    assert_eq!(retried["ca_id"], new_ca, "{retried}");
    assert!(retried["failure_reason"].is_null(), "{retried}");
    let cert: Value = app
        .get(
            &admin,
            &format!(
                "/api/v1/certificates/{}",
                retried["certificate_id"].as_str().unwrap()
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cert["ca_id"], new_ca);
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = openssl_verify(
        dir.path(),
        &app.root_pem(),
        cert["chain_pem"].as_str().unwrap(),
        cert["certificate_pem"].as_str().unwrap(),
    );
    assert!(ok, "{text}");
    // And the CA's profile issues again.
    assert_eq!(
        request(app, &admin, &doomed_profile, "fifth.doomed.test")
            .await
            .status(),
        201
    );
}
