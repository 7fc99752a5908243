//! The served OpenAPI document: it covers the contract of API.md, every
//! operation in it is served, Swagger UI comes from the binary with local
//! assets only, and schemathesis — an outside judge — finds no server error
//! and no answer (status, content type, body, headers) that the document
//! does not promise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{TestApp, ec_csr};
use serde_json::{Value, json};

on_both_backends! {
    the_document_holds => document_is_complete_and_true;
}

/// API.md's endpoints: external clients rely on them.
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/me"),
    ("get", "/api/v1/organizations"),
    ("post", "/api/v1/organizations"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users"),
    ("post", "/api/v1/api-keys"),
    ("delete", "/api/v1/api-keys/{id}"),
    ("get", "/api/v1/cas"),
    ("get", "/api/v1/cas/{id}"),
    ("post", "/api/v1/cas"),
    ("get", "/api/v1/profiles"),
    ("post", "/api/v1/profiles"),
    ("post", "/api/v1/certificate-requests"),
    ("get", "/api/v1/certificate-requests"),
    ("get", "/api/v1/certificate-requests/{id}"),
    ("post", "/api/v1/certificate-requests/{id}/approve"),
    ("post", "/api/v1/certificate-requests/{id}/reject"),
    ("get", "/api/v1/certificates"),
    ("get", "/api/v1/certificates/{id}"),
    ("post", "/api/v1/certificates/{id}/revoke"),
    ("post", "/api/v1/certificates/{id}/renew"),
    ("post", "/api/v1/certificates/{id}/private-key"),
    ("get", "/api/v1/audit"),
    ("get", "/api/v1/audit/verify"),
    ("get", "/ca/{id}.der"),
    ("get", "/crl/{id}.crl"),
    ("post", "/ocsp"),
    ("get", "/ocsp/{request}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
];

async fn document_is_complete_and_true(app: &TestApp) {
    let r = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for (method, path) in CONTRACT {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not in the document"
        );
    }
    every_documented_operation_is_served(app, &doc).await;
    docs_ui_is_local(app).await;
    let token = app.admin_token().await;
    // Random ids mostly meet 404: a second pass aims at objects that exist.
    // They are made first, while logging in is still allowed: the first
    // pass's login attempts may use up the login rate limit.
    let config = app.path("schemathesis.toml");
    std::fs::write(&config, objects_to_aim_at(app, &token).await).unwrap();
    schemathesis(app, &token, None, &[]).await;
    schemathesis(
        app,
        &token,
        Some(&config),
        &["--include-path-regex", r"\{id\}"],
    )
    .await;
}

/// `[[operations]]` that fix `{id}` to an existing object: a request
/// waiting for approval (by another user, so the admin may decide it), a
/// certificate, a client certificate of the admin's that is bound, a
/// webhook and a user.
async fn objects_to_aim_at(app: &TestApp, admin: &str) -> String {
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    let me: Value = app.get(admin, "/api/v1/me").await.json().await.unwrap();
    let org = me["organization_id"].as_str().unwrap();
    let (user, requester) = app
        .create_user(admin, org, "requester@clm.test", &["requester"])
        .await;
    let cas: Value = app.get(admin, "/api/v1/cas").await.json().await.unwrap();
    let ca = cas
        .as_array()
        .unwrap()
        .iter()
        // The first pass may have rolled CAs over.
        .find(|c| c["kind"] == "intermediate" && c["status"] == "active")
        .unwrap();
    let r = app
        .post(
            admin,
            "/api/v1/profiles",
            &json!({ "name": "one-approval", "ca_id": id(ca), "key_algorithms": ["ecdsa-p256"],
                     "allowed_dns_suffixes": ["example.org"], "max_validity_days": 90,
                     "extended_key_usages": ["serverAuth"], "required_approvals": 1 }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let profile = id(&r.json().await.unwrap());
    let mut requests = Vec::new();
    for name in ["pending.example.org", "issued.example.org"] {
        let body = json!({ "profile_id": profile, "csr_pem": ec_csr(&[name]) });
        let r = app
            .post(&requester, "/api/v1/certificate-requests", &body)
            .await;
        assert_eq!(r.status(), 201);
        requests.push(id(&r.json().await.unwrap()));
    }
    let approve = format!("/api/v1/certificate-requests/{}/approve", requests[1]);
    let issued: Value = app
        .post(admin, &approve, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(issued["status"], "issued", "{issued}");
    // The default profile issues clientAuth certificates.
    let default_profile = app.default_profile_id(admin).await;
    let body = json!({ "profile_id": default_profile, "csr_pem": ec_csr(&["client.clm.test"]) });
    let r = app.post(admin, "/api/v1/certificate-requests", &body).await;
    assert_eq!(r.status(), 201);
    let client_cert = r.json::<Value>().await.unwrap()["certificate_id"]
        .as_str()
        .unwrap()
        .to_string();
    let binding = format!("/api/v1/certificates/{client_cert}/binding");
    assert_eq!(app.post(admin, &binding, &json!({})).await.status(), 201);
    let r = app
        .post(
            admin,
            "/api/v1/webhooks",
            &json!({ "url": "https://127.0.0.1:9/hook" }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let webhook = id(&r.json().await.unwrap());
    // The regexes are disjoint: each operation gets one object.
    [
        ("certificate-requests/\\{id\\}", requests[0].clone()),
        (
            "certificates/\\{id\\}(?!/binding)",
            issued["certificate_id"].as_str().unwrap().to_string(),
        ),
        ("certificates/\\{id\\}/binding$", client_cert),
        ("webhooks/\\{id\\}", webhook),
        ("users/\\{id\\}", user),
    ]
    .iter()
    .map(|(path, id)| {
        format!(
            "[[operations]]\ninclude-path-regex = '^/api/v1/{path}'\nparameters = {{ \"path.id\" = \"{id}\" }}\n\n"
        )
    })
    .collect()
}

/// Sends each documented operation with placeholder parameters and no
/// token: whatever it answers must come from its handler, not from the
/// fallback for unrouted requests.
async fn every_documented_operation_is_served(app: &TestApp, doc: &Value) {
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", &uuid::Uuid::new_v4().to_string())
                .replace("{file}", "index.html")
                .replace("{request}", "MAA=");
            let r = app
                .client
                .request(method.to_uppercase().parse().unwrap(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or_default();
            let unrouted = status == 405 || (status == 404 && body["detail"] == "no such endpoint");
            assert!(!unrouted, "{method} {path} is documented but not served");
        }
    }
}

/// `/api/docs/` is Swagger UI from the binary: every asset it names is
/// relative and served, and nothing points at another host.
async fn docs_ui_is_local(app: &TestApp) {
    let get = |path: &str| app.client.get(app.url(path)).send();
    let r = get("/api/docs").await.unwrap();
    assert_eq!(r.status(), 200, "the redirect leads to the page");
    assert_eq!(r.url().path(), "/api/docs/");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    let assets: Vec<&str> = ["src=\"", "href=\""]
        .iter()
        .flat_map(|attr| html.split(attr).skip(1))
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert!(assets.len() >= 5, "{assets:?}");
    for asset in &assets {
        assert!(
            !asset.contains("//") && !asset.contains(':'),
            "{asset} is not a local asset"
        );
        let r = get(&format!("/api/docs/{}", asset.trim_start_matches("./")))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        let text = String::from_utf8_lossy(&r.bytes().await.unwrap()).into_owned();
        if asset.ends_with(".css") {
            assert!(
                !text.contains("url(http"),
                "{asset} loads from another host"
            );
        }
    }
    let init = get("/api/docs/swagger-initializer.js")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("\"/api/v1/openapi.json\""), "{init}");
    assert!(
        !init.contains("http"),
        "the UI is told to fetch elsewhere:\n{init}"
    );
}

/// schemathesis against the served document, as the admin. Bounded: 20
/// examples per operation, a few minutes on two shared cores;
/// `CLM_FUZZ_EXAMPLES` asks for more when hunting by hand.
async fn schemathesis(app: &TestApp, token: &str, config: Option<&std::path::Path>, args: &[&str]) {
    if Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CLM_TEST_REQUIRE_TOOLS").is_err(),
            "schemathesis is required but not installed (scripts/deps.sh)"
        );
        eprintln!("note: schemathesis not installed; skipping");
        return;
    }
    let examples = std::env::var("CLM_FUZZ_EXAMPLES").unwrap_or_else(|_| "20".into());
    let mut cmd = Command::new("schemathesis");
    if let Some(config) = config {
        cmd.arg("--config-file").arg(config);
    }
    cmd.arg("run")
        .arg(app.url("/api/v1/openapi.json"))
        .arg("--tls-verify")
        .arg(app.path("tls/ca.pem"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // Every check but `positive_data_acceptance`: the document states
        // shapes, not everything the server judges (a CSR must be a real
        // CSR, a name must be free), so schema-valid is not acceptable.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", &examples, "--workers", "1"])
        // `/api/docs` answers 308; the check is on that answer.
        .args(["--max-redirects", "0", "--request-timeout", "60"])
        // Logging out would end the session the run uses. Other
        // self-destructive calls need what schemathesis cannot know (the
        // current password) or are refused (deactivating oneself is 409).
        .args(["--exclude-path", "/api/v1/auth/logout"])
        .arg("--no-color")
        .current_dir(app.data_dir.path())
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&app.server_log(), 40)
    );
    // Not a run that tested nothing.
    assert!(report.contains(" passed"), "{report}");
    // The session survived the run, so everything after it was judged as
    // the admin and not as an anonymous caller.
    assert_eq!(app.get(token, "/api/v1/me").await.status(), 200);
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
