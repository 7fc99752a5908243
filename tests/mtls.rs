//! mTLS (issue #8): client certificates issued by clm authenticate API calls
//! as the user or API key their owner bound them to, and stop at once when
//! clm's own records say so (revocation, hold, unbinding, a revoked key, a
//! deactivated user) — on the same TLS connection, with a 401 that says why.
//! Keys are generated here, never by the server. Clients: reqwest (rustls)
//! and curl (OpenSSL); foreign certificates are made with openssl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{TestApp, csr_for, write};
use serde_json::{Value, json};

on_both_backends! {
    a_bound_certificate_authenticates_until_revoked => bound_until_revoked;
    an_api_key_binding_acts_as_the_key => api_key_binding;
    certificates_that_must_not_authenticate => refused_certificates;
}

/// A client certificate issued by clm for a key made here.
struct ClientCert {
    id: String,
    cert_pem: String,
    key_pem: String,
}

impl ClientCert {
    /// A reqwest client that presents this certificate (and trusts clm's
    /// root). It keeps its connection between calls.
    fn client(&self, app: &TestApp) -> reqwest::Client {
        identity_client(app, &format!("{}{}", self.cert_pem, self.key_pem))
    }
}

fn identity_client(app: &TestApp, pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(app.root_pem().as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn issue(app: &TestApp, token: &str, profile: &str, name: &str) -> ClientCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let id = app
        .request_certificate(
            token,
            &json!({ "profile_id": profile, "csr_pem": csr_for(&key, &[name]) }),
        )
        .await;
    let cert: Value = app
        .get(token, &format!("/api/v1/certificates/{id}"))
        .await
        .json()
        .await
        .unwrap();
    ClientCert {
        id,
        cert_pem: cert["certificate_pem"].as_str().unwrap().to_string(),
        key_pem: key.serialize_pem(),
    }
}

async fn bind(app: &TestApp, token: &str, cert: &ClientCert) -> reqwest::Response {
    app.post(
        token,
        &format!("/api/v1/certificates/{}/binding", cert.id),
        &json!({}),
    )
    .await
}

/// `GET /api/v1/me` with the client's certificate and no bearer token.
async fn me(client: &reqwest::Client, app: &TestApp) -> (u16, Value) {
    let r = client.get(app.url("/api/v1/me")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn expect_refused(client: &reqwest::Client, app: &TestApp, code: &str) {
    let r = client.get(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "{code}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty());
}

/// `auth.client_certificate` audit entries about `cert`.
async fn auth_audit(app: &TestApp, admin: &str, cert: &ClientCert) -> Vec<Value> {
    let page: Value = app
        .get(
            admin,
            &format!(
                "/api/v1/audit?log=core&action=auth.client_certificate&target_id={}",
                cert.id
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    page["items"].as_array().unwrap().clone()
}

async fn bound_until_revoked(app: &TestApp) {
    let admin = app.admin_token().await;
    let org = app.create_org(&admin, "Mtls Alpha").await;
    let (alice_id, alice) = app
        .create_user(&admin, &org, "alice@alpha.test", &["requester"])
        .await;
    let (_, bob) = app
        .create_user(&admin, &org, "bob@alpha.test", &["requester"])
        .await;
    let profile = app.default_profile_id(&alice).await;
    let cert = issue(app, &alice, &profile, "alice.alpha.test").await;
    let client = cert.client(app);

    // Issued is not enough: nobody has said whom it stands for.
    expect_refused(&client, app, "client_certificate_not_bound").await;
    // Only the owner binds it, and only to themselves.
    let r = bind(app, &bob, &cert).await;
    assert_eq!(r.status(), 403);
    let r = bind(app, &alice, &cert).await;
    assert_eq!(r.status(), 201);
    let binding: Value = r.json().await.unwrap();
    assert_eq!(binding["bound_to"], "user", "{binding}");
    assert_eq!(binding["user_id"], alice_id.as_str());
    assert_eq!(bind(app, &alice, &cert).await.status(), 409);
    let other_org = app.create_org(&admin, "Mtls Other").await;
    let (_, outsider) = app
        .create_user(&admin, &other_org, "eve@other.test", &["requester"])
        .await;
    let binding_path = format!("/api/v1/certificates/{}/binding", cert.id);
    assert_eq!(app.get(&outsider, &binding_path).await.status(), 404);
    assert_eq!(bind(app, &outsider, &cert).await.status(), 404);

    // Now it is Alice, with her roles, on one connection for several calls.
    for _ in 0..3 {
        let (status, body) = me(&client, app).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["email"], "alice@alpha.test");
        assert_eq!(body["authentication"]["method"], "client_certificate");
        assert_eq!(body["authentication"]["certificate_id"], cert.id.as_str());
        assert_eq!(body["authentication"]["roles"], json!(["requester"]));
    }
    let r = client
        .post(app.url("/api/v1/certificate-requests"))
        .json(&json!({ "profile_id": profile, "csr_pem": common::ec_csr(&["svc.alpha.test"]) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "a requester may request");
    let request: Value = r.json().await.unwrap();
    let issued: Value = app
        .get(
            &alice,
            &format!(
                "/api/v1/certificates/{}",
                request["certificate_id"].as_str().unwrap()
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(issued["status"], "valid", "owned by Alice: {issued}");
    // A certificate cannot bind others: a stolen one cannot entrench itself.
    let r = client
        .post(app.url(&format!(
            "/api/v1/certificates/{}/binding",
            request["certificate_id"].as_str().unwrap()
        )))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The bearer path is unchanged, and a token wins over the certificate.
    let r = client
        .get(app.url("/api/v1/me"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["email"], "bob@alpha.test", "{body}");
    assert_eq!(body["authentication"]["method"], "session");
    let (status, body) = me(&app.client, app).await;
    assert_eq!((status, &body["code"]), (401, &json!("unauthenticated")));

    // An outside client (curl with OpenSSL) is served the same way.
    let dir = tempfile::tempdir().unwrap();
    let out = curl_me(app, dir.path(), &cert);
    assert_eq!(out["email"], "alice@alpha.test", "{out}");

    // Audited like logins: per connection and outcome, not per call. The
    // five calls above came back to back on reqwest's kept connection, curl
    // made one more.
    let entries = auth_audit(app, &admin, &cert).await;
    let successes: Vec<&Value> = entries
        .iter()
        .filter(|e| e["outcome"] == "success")
        .collect();
    assert!((2..6).contains(&successes.len()), "{entries:#?}");
    assert!(successes.iter().all(|e| e["actor_id"] == alice_id.as_str()
        && e["actor_kind"] == "user"
        && e["organization_id"] == org.as_str()));
    assert!(
        entries
            .iter()
            .any(|e| e["details"]["reason"] == "client_certificate_not_bound"),
        "{entries:#?}"
    );

    // Revoked: the very next call on the open connection is refused, and
    // so is a new connection — with a reason, not a TLS failure.
    let r = app
        .post(
            &alice,
            &format!("/api/v1/certificates/{}/revoke", cert.id),
            &json!({ "reason": "keyCompromise" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    expect_refused(&client, app, "client_certificate_revoked").await;
    expect_refused(&client, app, "client_certificate_revoked").await;
    expect_refused(&cert.client(app), app, "client_certificate_revoked").await;
    let failures: Vec<Value> = auth_audit(app, &admin, &cert)
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "failure")
        .collect();
    let revoked: Vec<&Value> = failures
        .iter()
        .filter(|e| e["details"]["reason"] == "client_certificate_revoked")
        .collect();
    assert!((2..4).contains(&revoked.len()), "{failures:#?}");
    assert!(
        revoked.iter().all(|e| e["actor_id"] == alice_id.as_str()),
        "{revoked:#?}"
    );
}

/// `curl --cert --key --cacert … /api/v1/me`, parsed.
fn curl_me(app: &TestApp, dir: &Path, cert: &ClientCert) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--cacert"])
        .arg(app.path("tls/ca.pem"))
        .arg("--cert")
        .arg(write(dir, "client.pem", &cert.cert_pem))
        .arg("--key")
        .arg(write(dir, "client.key", &cert.key_pem))
        .arg(app.url("/api/v1/me"))
        .output()
        .expect("curl must be installed");
    assert!(
        out.status.success(),
        "curl: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn api_key_binding(app: &TestApp) {
    let admin = app.admin_token().await;
    let org = app.create_org(&admin, "Mtls Beta").await;
    let (carol_id, carol) = app
        .create_user(&admin, &org, "carol@beta.test", &["requester", "auditor"])
        .await;
    let profile = app.default_profile_id(&carol).await;
    let key: Value = app
        .post(
            &carol,
            "/api/v1/api-keys",
            &json!({ "name": "ci", "roles": ["auditor"] }),
        )
        .await
        .json()
        .await
        .unwrap();
    let key_token = key["token"].as_str().unwrap();
    let key_id = key["id"].as_str().unwrap();

    // Bound with the API key, the certificate acts as the key.
    let by_key = issue(app, &carol, &profile, "ci.beta.test").await;
    let r = bind(app, key_token, &by_key).await;
    assert_eq!(r.status(), 201);
    let binding: Value = r.json().await.unwrap();
    assert_eq!(binding["bound_to"], "api_key", "{binding}");
    assert_eq!(binding["api_key_id"], key_id);
    let client = by_key.client(app);
    let (status, body) = me(&client, app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["authentication"]["api_key_id"], key_id);
    assert_eq!(body["authentication"]["roles"], json!(["auditor"]));
    let r = client
        .post(app.url("/api/v1/certificate-requests"))
        .json(&json!({ "profile_id": profile, "csr_pem": common::ec_csr(&["x.beta.test"]) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the key may not request certificates");
    let shown: Value = app
        .get(
            &carol,
            &format!("/api/v1/certificates/{}/binding", by_key.id),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["api_key_id"], key_id, "{shown}");
    assert!(shown["last_used_at"].is_string(), "{shown}");

    // The key revoked: the certificate stops with it.
    let r = app
        .client
        .delete(app.url(&format!("/api/v1/api-keys/{key_id}")))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    expect_refused(&client, app, "client_certificate_principal_inactive").await;

    // Bound in a session it acts as Carol; her deactivation ends that.
    let by_user = issue(app, &carol, &profile, "carol.beta.test").await;
    assert_eq!(bind(app, &carol, &by_user).await.status(), 201);
    let client = by_user.client(app);
    let (status, body) = me(&client, app).await;
    assert_eq!((status, &body["id"]), (200, &json!(carol_id)));
    let mut roles: Vec<&str> = body["authentication"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    roles.sort();
    assert_eq!(roles, ["auditor", "requester"], "{body}");
    let r = app
        .post(
            &admin,
            &format!("/api/v1/users/{carol_id}/deactivate"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 204);
    expect_refused(&client, app, "client_certificate_not_bound").await;
    assert_eq!(
        app.get(
            &admin,
            &format!("/api/v1/certificates/{}/binding", by_user.id)
        )
        .await
        .status(),
        404,
        "deactivation ended the binding"
    );
}

async fn refused_certificates(app: &TestApp) {
    let admin = app.admin_token().await;
    let org = app.create_org(&admin, "Mtls Gamma").await;
    let (_, dave) = app
        .create_user(&admin, &org, "dave@gamma.test", &["requester"])
        .await;
    let (_, ca_admin) = app
        .create_user(&admin, &org, "ca@gamma.test", &["ca_admin"])
        .await;
    let cas: Value = app.get(&admin, "/api/v1/cas").await.json().await.unwrap();
    let intermediate = cas
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "intermediate")
        .unwrap()
        .clone();
    let servers_only = app
        .create_profile(
            &ca_admin,
            &json!({
                "name": "servers-only",
                "ca_id": intermediate["id"],
                "key_algorithms": ["ecdsa-p256"],
                "allowed_dns_suffixes": ["test"],
                "max_validity_days": 30,
                "extended_key_usages": ["serverAuth"],
            }),
        )
        .await;

    // serverAuth only: neither bindable nor accepted.
    let server = issue(app, &dave, &servers_only, "web.gamma.test").await;
    let r = bind(app, &dave, &server).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_client_auth");
    expect_refused(
        &server.client(app),
        app,
        "client_certificate_not_for_client_auth",
    )
    .await;

    // A hold suspends a bound certificate; releasing it restores it.
    let profile = app.default_profile_id(&dave).await;
    let cert = issue(app, &dave, &profile, "dave.gamma.test").await;
    assert_eq!(bind(app, &dave, &cert).await.status(), 201);
    let client = cert.client(app);
    assert_eq!(me(&client, app).await.0, 200);
    let r = app
        .post(
            &admin,
            &format!("/api/v1/certificates/{}/revoke", cert.id),
            &json!({ "reason": "certificateHold" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    expect_refused(&client, app, "client_certificate_on_hold").await;
    let r = app
        .post(
            &admin,
            &format!("/api/v1/certificates/{}/release-hold", cert.id),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(me(&client, app).await.0, 200);

    // Unbound by its owner: refused on the next call.
    let r = app
        .client
        .delete(app.url(&format!("/api/v1/certificates/{}/binding", cert.id)))
        .bearer_auth(&dave)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    expect_refused(&client, app, "client_certificate_not_bound").await;

    // Certificates clm did not sign fail the handshake: one from a foreign
    // CA, and one naming clm's intermediate as issuer, signed by another key.
    let dir = tempfile::tempdir().unwrap();
    let intermediate_pem = intermediate["certificate_pem"].as_str().unwrap();
    for (name, forged) in [
        ("foreign", foreign_client_cert(dir.path(), "foreign", None)),
        (
            "impostor",
            foreign_client_cert(dir.path(), "impostor", Some(intermediate_pem)),
        ),
    ] {
        let r = identity_client(app, &forged)
            .get(app.url("/api/v1/me"))
            .send()
            .await;
        assert!(r.is_err(), "{name}: {:?}", r.map(|r| r.status()));
    }
    // …and the server keeps serving, certificates and tokens alike.
    assert_eq!(app.get(&admin, "/healthz").await.status(), 200);
    assert_eq!(bind(app, &dave, &cert).await.status(), 201);
    let (status, body) = me(&client, app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email"], "dave@gamma.test");
}

/// A client certificate (clientAuth) and its key, PEM, from a CA openssl
/// makes here: self-signed, or — with `copy_of` — a copy of that CA
/// certificate (same subject and extensions) re-signed with a new key.
fn foreign_client_cert(dir: &Path, stem: &str, copy_of: Option<&str>) -> String {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let f = |suffix: &str| format!("{stem}-{suffix}");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &f("ca.key"),
    ]);
    match copy_of {
        None => openssl(&[
            "req",
            "-x509",
            "-key",
            &f("ca.key"),
            "-subj",
            "/CN=Foreign CA",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-out",
            &f("ca.pem"),
        ]),
        Some(pem) => {
            write(dir, &f("template.pem"), pem);
            openssl(&[
                "x509",
                "-in",
                &f("template.pem"),
                "-key",
                &f("ca.key"),
                "-out",
                &f("ca.pem"),
            ]);
        }
    }
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &f("leaf.key"),
        "-subj",
        "/CN=mallory.gamma.test",
        "-out",
        &f("leaf.csr"),
    ]);
    write(dir, &f("ext.cnf"), "extendedKeyUsage=clientAuth\n");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &f("leaf.csr"),
        "-CA",
        &f("ca.pem"),
        "-CAkey",
        &f("ca.key"),
        "-set_serial",
        "7",
        "-days",
        "30",
        "-extfile",
        &f("ext.cnf"),
        "-out",
        &f("leaf.pem"),
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    format!("{}{}", read(&f("leaf.pem")), read(&f("leaf.key")))
}
