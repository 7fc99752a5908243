//! Hostile and broken input: each case gets a 4xx problem document that
//! names the problem, nothing is persisted, and the server keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestApp, ec_csr, rsa_csr};
use serde_json::{Value, json};

on_both_backends! {
    every_bad_request_is_a_problem_document => bad_requests_are_refused_and_leave_no_trace;
    authentication_is_required => missing_or_wrong_tokens_are_401;
}

/// Asserts status, problem+json, the machine code, and returns the body.
async fn expect_problem(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "expected {status} {code}");
    let ct = r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(ct, "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty());
    assert!(body["title"].is_string() && body["type"].is_string());
    body
}

async fn counts(app: &TestApp, token: &str) -> (usize, usize) {
    let reqs: Value = app
        .get(token, "/api/v1/certificate-requests?per_page=1000")
        .await
        .json()
        .await
        .unwrap();
    let certs: Value = app
        .get(token, "/api/v1/certificates?per_page=1000")
        .await
        .json()
        .await
        .unwrap();
    (
        reqs["items"].as_array().unwrap().len(),
        certs["items"].as_array().unwrap().len(),
    )
}

async fn bad_requests_are_refused_and_leave_no_trace(app: &TestApp) {
    let token = app.admin_token().await;
    let default_profile = app.default_profile_id(&token).await;
    let cas: Value = app.get(&token, "/api/v1/cas").await.json().await.unwrap();
    let intermediate = cas
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "intermediate")
        .unwrap()["id"]
        .clone();

    // A narrow profile: P-384 only, *.corp.test, 30 days.
    let narrow = app
        .create_profile(
            &token,
            &json!({
                "name": "narrow",
                "ca_id": intermediate,
                "key_algorithms": ["ecdsa-p384"],
                "allowed_dns_suffixes": ["corp.test"],
                "allow_ip_sans": false,
                "max_validity_days": 30,
                "extended_key_usages": ["serverAuth"],
                "required_approvals": 0,
                "allow_server_keygen": false
            }),
        )
        .await;

    let before = counts(app, &token).await;

    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let good_csr = ec_csr(&["ok.clm.test"]);
    let mut tampered = pem::parse(&good_csr).unwrap().into_contents();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x55;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", tampered));
    let ca_cert_pem = cas[0]["certificate_pem"].as_str().unwrap().to_string();

    let submit = |profile: &str, csr: String, validity: Option<u32>| {
        let mut body = json!({ "profile_id": profile, "csr_pem": csr });
        if let Some(v) = validity {
            body["validity_days"] = json!(v);
        }
        body
    };
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "text that is not PEM",
            submit(&default_profile, "hello, I am not a CSR".into(), None),
            400,
            "invalid_csr",
        ),
        (
            "a certificate instead of a CSR",
            submit(&default_profile, ca_cert_pem, None),
            400,
            "not_a_csr",
        ),
        (
            "a CSR whose signature does not verify",
            submit(&default_profile, tampered, None),
            400,
            "bad_csr_signature",
        ),
        (
            "an RSA key under 2048 bits",
            submit(&default_profile, rsa_csr(1024, "weak.clm.test"), None),
            400,
            "weak_key",
        ),
        (
            "a key type the profile does not allow",
            submit(&narrow, ec_csr(&["a.corp.test"]), None),
            400,
            "profile_violation",
        ),
        (
            "a SAN outside the profile",
            submit(
                &narrow,
                common::csr_for(&p384, &["a.corp.test", "evil.example.com"]),
                None,
            ),
            400,
            "profile_violation",
        ),
        (
            "a validity above the profile maximum",
            submit(&narrow, common::csr_for(&p384, &["a.corp.test"]), Some(31)),
            400,
            "profile_violation",
        ),
        (
            "an unknown profile id",
            submit(&uuid::Uuid::new_v4().to_string(), good_csr.clone(), None),
            404,
            "not_found",
        ),
        (
            "JSON of the wrong shape",
            json!({ "profile": 7, "csr": ["x"] }),
            400,
            "invalid_body",
        ),
        (
            "a profile id that is not a UUID",
            submit("not-a-uuid", good_csr.clone(), None),
            400,
            "invalid_body",
        ),
    ];
    for (what, body, status, code) in cases {
        let r = app
            .post(&token, "/api/v1/certificate-requests", &body)
            .await;
        let problem = expect_problem(r, status, code).await;
        eprintln!("{what}: {}", problem["detail"]);
    }

    // A body over 64 KiB.
    let huge = json!({ "profile_id": default_profile, "csr_pem": "A".repeat(70 * 1024) });
    expect_problem(
        app.post(&token, "/api/v1/certificate-requests", &huge)
            .await,
        413,
        "body_too_large",
    )
    .await;

    // Broken JSON.
    let r = app
        .client
        .post(app.url("/api/v1/certificate-requests"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"profile_id\": ")
        .send()
        .await
        .unwrap();
    expect_problem(r, 400, "invalid_body").await;

    // Text PostgreSQL cannot hold (NUL), where the URL parser would have
    // taken it.
    let r = app
        .post(
            &token,
            "/api/v1/webhooks",
            &json!({ "url": "https://hooks.clm.test/\u{0}" }),
        )
        .await;
    expect_problem(r, 400, "invalid_webhook").await;
    let hooks: Value = app
        .get(&token, "/api/v1/webhooks")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(hooks, json!([]), "nothing stored");

    // A malformed UUID in a path.
    for path in [
        "/api/v1/certificates/12345",
        "/api/v1/cas/x'%20OR%201=1--",
        "/api/v1/certificate-requests/zz",
    ] {
        expect_problem(app.get(&token, path).await, 400, "invalid_id").await;
    }
    // Control characters in free-text filters (PostgreSQL cannot compare
    // text holding NUL: this was a 500 that schemathesis found).
    for path in [
        "/api/v1/certificates?q=ab%00cd",
        "/api/v1/certificates?q=%1B%5B2J",
        "/api/v1/audit?action=x%00",
        "/api/v1/audit?target_id=%00",
    ] {
        expect_problem(app.get(&token, path).await, 400, "invalid_query").await;
    }
    // An unknown but well-formed id.
    let missing = format!("/api/v1/certificates/{}", uuid::Uuid::new_v4());
    expect_problem(app.get(&token, &missing).await, 404, "not_found").await;

    // Nothing was persisted and the server still serves.
    assert_eq!(counts(app, &token).await, before);
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ok = app
        .post(
            &token,
            "/api/v1/certificate-requests",
            &submit(&default_profile, good_csr, None),
        )
        .await;
    assert_eq!(ok.status(), 201);
}

async fn missing_or_wrong_tokens_are_401(app: &TestApp) {
    let paths = [
        "/api/v1/me",
        "/api/v1/cas",
        "/api/v1/profiles",
        "/api/v1/certificates",
    ];
    for path in paths {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.headers().get("www-authenticate").unwrap(), "Bearer");
        expect_problem(r, 401, "unauthenticated").await;
        expect_problem(
            app.get("clm_s_not-a-real-token", path).await,
            401,
            "unauthenticated",
        )
        .await;
        let r = app
            .client
            .get(app.url(path))
            .header("authorization", "Basic YWRtaW46YWRtaW4=")
            .send()
            .await
            .unwrap();
        expect_problem(r, 401, "unauthenticated").await;
    }
    // Wrong password and unknown user answer alike, and so does an address
    // no user can have (PostgreSQL cannot even compare text holding NUL).
    let mut bodies = Vec::new();
    for (email, pw) in [
        (common::ADMIN_EMAIL, "wrong-password-123"),
        ("nobody@clm.test", "wrong-password-123"),
        ("\u{0}\u{d0}@clm.test", "wrong-password-123"),
    ] {
        let r = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({ "email": email, "password": pw }))
            .send()
            .await
            .unwrap();
        bodies.push(expect_problem(r, 401, "unauthenticated").await);
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[0], bodies[2]);

    // Logout invalidates the token at once.
    let token = app.admin_token().await;
    assert_eq!(app.get(&token, "/api/v1/me").await.status(), 200);
    let r = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    expect_problem(app.get(&token, "/api/v1/me").await, 401, "unauthenticated").await;
}
