//! Operations: no secret reaches the server's output while it handles every
//! kind of secret; the log is JSON lines whose request lines carry the
//! request id (the same one the audit entries and the response carry);
//! SIGTERM under load loses nothing and half-writes nothing; `/metrics`
//! names route patterns and the use cases' series; issuance is rate
//! limited per principal; PostgreSQL connections dropped while idle are
//! replaced before they fail a request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Backend, TestApp, ec_csr};
use serde_json::{Value, json};

macro_rules! on_both {
    ($($name:ident => $scenario:ident;)*) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(super::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario(super::Backend::Postgres).await;
            }
        }
    )*};
}

on_both! {
    no_secret_reaches_the_logs => secrets_stay_out_of_the_logs;
    sigterm_under_load_loses_nothing => shutdown_under_load;
    metrics_and_issuance_rate_limits => metrics_and_rate_limits;
}

/// PostgreSQL drops the server's connections while they sit in the pool (a
/// restart, an administrator, an idle timeout). The pool checks a
/// connection only after it has been idle for a second (a busy pool would
/// otherwise pay a round trip per query), so once that second has passed
/// the next requests get fresh connections, on both databases, instead of
/// errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_dropped_while_idle_are_replaced() {
    let Some(app) = TestApp::start(Backend::Postgres).await else {
        return;
    };
    let token = app.admin_token().await;
    app.issue(&token, &["before-drop.clm.test"]).await;
    for db in app.pg_databases() {
        let dropped = app
            .psql(
                "postgres",
                &format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = '{db}' AND pid <> pg_backend_pid()"
                ),
            )
            .unwrap();
        assert_ne!(dropped, "0", "the server held no connection to {db}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Reads and writes on clm_secure, the mirror on clm_core.
    let after = app.issue(&token, &["after-drop.clm.test"]).await;
    assert_eq!(after["status"], "valid", "{after}");
    let r = app.get(&token, "/api/v1/audit/verify").await;
    assert_eq!(r.status(), 200, "{}", app.server_log());
}

/// A graceful shutdown ends within this (the load test's
/// `CLM_SHUTDOWN_TIMEOUT_SECONDS`; the default is 30).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// One API call with a chosen request id; checks that the id comes back.
async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    request_id: &str,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, app.url(path))
        .header("x-request-id", request_id);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    assert_eq!(
        r.headers().get("x-request-id").unwrap(),
        request_id,
        "the request id is echoed"
    );
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The private key inside a PKCS#12, as DER and PEM.
fn key_of_pkcs12(p12_b64: &str, passphrase: &str) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let p12 = base64::engine::general_purpose::STANDARD
        .decode(p12_b64)
        .unwrap();
    std::fs::write(dir.path().join("k.p12"), p12).unwrap();
    let passin = format!("pass:{passphrase}");
    openssl(
        dir.path(),
        &[
            "pkcs12", "-in", "k.p12", "-passin", &passin, "-nocerts", "-nodes", "-out", "k.pem",
        ],
    );
    openssl(
        dir.path(),
        &["pkey", "-in", "k.pem", "-outform", "DER", "-out", "k.der"],
    );
    openssl(dir.path(), &["pkey", "-in", "k.pem", "-out", "k8.pem"]);
    (
        std::fs::read(dir.path().join("k.der")).unwrap(),
        std::fs::read_to_string(dir.path().join("k8.pem")).unwrap(),
    )
}

/// The ways a secret could be written: as is, hex, base64, and a byte
/// slice's `Debug`.
fn forms(secret: &[u8]) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = vec![
        hex::encode(secret),
        b64.encode(secret),
        format!("{secret:?}"),
    ];
    if let Ok(text) = std::str::from_utf8(secret) {
        out.push(text.to_string());
    }
    out
}

async fn keygen_profile(app: &TestApp, token: &str) -> String {
    let intermediate = app.intermediate_ca_id(token).await;
    app.create_profile(
        token,
        &json!({
            "name": "ops-keygen",
            "ca_id": intermediate,
            "key_algorithms": ["ecdsa-p256"],
            "allowed_dns_suffixes": ["clm.test"],
            "max_validity_days": 90,
            "extended_key_usages": ["clientAuth"],
            "allow_server_keygen": true
        }),
    )
    .await
}

/// Each line parsed as a JSON object, or a failure naming the line.
fn json_lines(what: &str, text: &str) -> Vec<serde_json::Map<String, Value>> {
    text.lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => {
                for key in ["timestamp", "level", "target", "message"] {
                    assert!(m.contains_key(key), "{what}: no {key} in {line}");
                }
                m
            }
            _ => panic!("{what}: a line that is not a JSON object: {line}"),
        })
        .collect()
}

async fn secrets_stay_out_of_the_logs(backend: Backend) {
    // Debug level: more lines that could leak.
    let Some(mut app) = TestApp::start_with(backend, &[("CLM_LOG", "debug")]).await else {
        return;
    };
    // The PIN through the environment, as in production.
    let pin = app.pin();
    app.set_env("CLM_PKCS11_PIN", &pin);
    assert!(app.terminate(SHUTDOWN_TIMEOUT).await.success());
    let mut log = app.server_log();
    let mut out = app.server_out();
    app.restart().await;

    use reqwest::Method;
    let so_pin = std::fs::read_to_string(app.path("softhsm/so.pin")).unwrap();
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("user PIN", pin.clone().into_bytes()),
        ("SO PIN", so_pin.trim().as_bytes().to_vec()),
        ("admin password", app.admin_password.clone().into_bytes()),
    ];

    let login = |email: &str, password: &str| json!({ "email": email, "password": password });
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(login(common::ADMIN_EMAIL, &app.admin_password)),
        "ops-login",
    )
    .await;
    assert_eq!(status, 200);
    let admin = body["token"].as_str().unwrap().to_string();
    secrets.push(("admin session token", admin.clone().into_bytes()));

    let wrong = "Wr0ng-but-plausible-password";
    secrets.push(("wrong password", wrong.into()));
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(login(common::ADMIN_EMAIL, wrong)),
        "ops-wrong-login",
    )
    .await;
    assert_eq!(status, 401);

    let me: Value = app.get(&admin, "/api/v1/me").await.json().await.unwrap();
    let org = me["organization_id"].as_str().unwrap().to_string();
    let approver_pw = "approver passphrase 7c1e9b";
    secrets.push(("new user's password", approver_pw.into()));
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/users",
        Some(&admin),
        Some(json!({
            "email": "approver@ops.test",
            "password": approver_pw,
            "roles": ["approver"],
            "organization_id": org
        })),
        "ops-create-user",
    )
    .await;
    assert_eq!(status, 201);
    let approver = app.login("approver@ops.test", approver_pw).await;
    secrets.push(("approver session token", approver.clone().into_bytes()));

    // Refused in the service, which logs why: that line belongs to the
    // request.
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/api-keys",
        Some(&approver),
        Some(json!({ "name": "too mighty", "roles": ["ca_admin"] })),
        "ops-key-role",
    )
    .await;
    assert_eq!(status, 403);

    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/api-keys",
        Some(&admin),
        Some(json!({ "name": "ops", "roles": ["super_admin"] })),
        "ops-apikey",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let api_key = body["token"].as_str().unwrap().to_string();
    secrets.push(("API key", api_key.clone().into_bytes()));
    let (status, _) = call(
        &app,
        Method::GET,
        "/api/v1/me",
        Some(&api_key),
        None,
        "ops-apikey-use",
    )
    .await;
    assert_eq!(status, 200);

    // The same over HTTP/2 (its own code path, its own debug lines).
    let out_h2 = Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--cacert")
        .arg(app.path("tls/ca.pem"))
        .args(["-H", "x-request-id: ops-h2"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {api_key}"))
        .arg(app.url("/api/v1/me"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out_h2.stdout), "2 200");

    // Server-side key generation: a passphrase in, a PKCS#12 out.
    let profile = keygen_profile(&app, &admin).await;
    let passphrase = "keygen passphrase 4f1d2a";
    secrets.push(("keygen passphrase", passphrase.into()));
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/certificate-requests",
        Some(&admin),
        Some(json!({
            "profile_id": profile,
            "sans": ["vault.clm.test"],
            "passphrase": passphrase
        })),
        "ops-keygen",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let p12 = body["pkcs12"].as_str().unwrap().to_string();
    let cert = body["certificate_id"].as_str().unwrap().to_string();
    let (key_der, key_pem) = key_of_pkcs12(&p12, passphrase);
    secrets.push(("PKCS#12", p12.into_bytes()));
    secrets.push(("private key", key_der.clone()));
    for line in key_pem.lines().filter(|l| l.len() == 64) {
        secrets.push(("private key PEM line", line.as_bytes().to_vec()));
    }

    // Key recovery: asked for, approved by someone else, delivered.
    let recovery_pass = "recovery passphrase 9b3c77";
    secrets.push(("recovery passphrase", recovery_pass.into()));
    let path = format!("/api/v1/certificates/{cert}/private-key");
    let ask = json!({ "passphrase": recovery_pass });
    let (status, pending) = call(
        &app,
        Method::POST,
        &path,
        Some(&admin),
        Some(ask.clone()),
        "ops-recovery-ask",
    )
    .await;
    assert_eq!(status, 202, "{pending}");
    let approve = format!(
        "/api/v1/key-recoveries/{}/approve",
        pending["id"].as_str().unwrap()
    );
    let (status, _) = call(
        &app,
        Method::POST,
        &approve,
        Some(&approver),
        Some(json!({})),
        "ops-recovery-approve",
    )
    .await;
    assert_eq!(status, 200);
    let (status, delivered) = call(
        &app,
        Method::POST,
        &path,
        Some(&admin),
        Some(ask),
        "ops-recovery-deliver",
    )
    .await;
    assert_eq!(status, 200, "{delivered}");
    let p12 = delivered["pkcs12"].as_str().unwrap().to_string();
    assert_eq!(key_of_pkcs12(&p12, recovery_pass).0, key_der);
    secrets.push(("recovered PKCS#12", p12.into_bytes()));

    let new_pw = "changed approver passphrase 51aa";
    secrets.push(("changed password", new_pw.into()));
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/me/password",
        Some(&approver),
        Some(json!({ "current_password": approver_pw, "new_password": new_pw })),
        "ops-password",
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/auth/logout",
        Some(&admin),
        None,
        "ops-logout",
    )
    .await;
    assert_eq!(status, 204);

    // The audit entry of the login has the request's id.
    let auditor = app.login(common::ADMIN_EMAIL, &app.admin_password).await;
    let page: Value = app
        .get(
            &auditor,
            "/api/v1/audit?log=core&action=auth.login&limit=1000",
        )
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["request_id"].as_str())
        .collect();
    assert!(ids.contains(&"ops-login"), "{ids:?}");
    assert!(ids.contains(&"ops-wrong-login"), "{ids:?}");

    assert!(app.terminate(SHUTDOWN_TIMEOUT).await.success());
    log.push_str(&app.server_log());
    out.push_str(&app.server_out());

    for (what, secret) in &secrets {
        for form in forms(secret) {
            assert!(!log.contains(&form), "the {what} reached the log");
            assert!(!out.contains(&form), "the {what} reached stdout");
        }
    }

    // JSON lines, on stderr and (if anything) on stdout.
    let lines = json_lines("server.log", &log);
    json_lines("server.out", &out);
    let of = |id: &str| -> Vec<&serde_json::Map<String, Value>> {
        lines
            .iter()
            .filter(|l| l.get("request_id").and_then(Value::as_str) == Some(id))
            .collect()
    };
    for (id, route, status) in [
        ("ops-login", "/api/v1/auth/login", 200),
        ("ops-wrong-login", "/api/v1/auth/login", 401),
        ("ops-create-user", "/api/v1/users", 201),
        ("ops-key-role", "/api/v1/api-keys", 403),
        ("ops-apikey", "/api/v1/api-keys", 201),
        ("ops-apikey-use", "/api/v1/me", 200),
        ("ops-h2", "/api/v1/me", 200),
        ("ops-keygen", "/api/v1/certificate-requests", 201),
        (
            "ops-recovery-ask",
            "/api/v1/certificates/{id}/private-key",
            202,
        ),
        (
            "ops-recovery-approve",
            "/api/v1/key-recoveries/{id}/approve",
            200,
        ),
        ("ops-password", "/api/v1/me/password", 204),
        ("ops-logout", "/api/v1/auth/logout", 204),
    ] {
        let access: Vec<_> = of(id)
            .into_iter()
            .filter(|l| l["message"] == "request")
            .collect();
        assert_eq!(access.len(), 1, "one access-log line for {id}");
        assert_eq!(access[0]["route"], route, "{id}");
        assert_eq!(access[0]["status"], status, "{id}");
        let get = id == "ops-apikey-use" || id == "ops-h2";
        assert_eq!(access[0]["method"], if get { "GET" } else { "POST" });
        assert!(access[0]["duration_ms"].is_number(), "{id}");
    }
    // A line from the service room, logged while serving the request,
    // carries the request's id.
    let refused: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "API key asked for a role its creator lacks")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["request_id"], "ops-key-role");
    assert_eq!(refused[0]["target"], "clm::service::api_keys");
    // Every access-log line has an id; ids the server made are UUIDs.
    for l in lines.iter().filter(|l| l["message"] == "request") {
        let id = l["request_id"].as_str().expect("access line with an id");
        assert!(
            id.starts_with("ops-") || uuid::Uuid::parse_str(id).is_ok(),
            "{id}"
        );
        assert!(!l["path"].as_str().unwrap().contains('?'));
    }
}

/// What happened to one request of the load.
enum Outcome {
    Answered {
        cn: String,
        status: u16,
        body: Value,
    },
    /// No answer: the connection was refused or closed unanswered.
    Unanswered {
        cn: String,
        connect: bool,
        error: String,
    },
}

/// Clients that each send one request after another, so that requests are
/// in flight whenever the signal comes, however fast the server answers.
const CLIENTS: usize = 16;
/// A client gives up after this many requests (only reached if the signal
/// never stops the server).
const PER_CLIENT_AT_MOST: usize = 40;

/// One issuance request on a new connection.
async fn issue_once(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    profile: &str,
    cn: String,
) -> Outcome {
    let sent = client
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "profile_id": profile, "csr_pem": ec_csr(&[&cn]) }))
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Unanswered {
                cn,
                connect: e.is_connect(),
                error: format!("{e:?}"),
            };
        }
    };
    let status = response.status().as_u16();
    match response.json::<Value>().await {
        Ok(body) => Outcome::Answered { cn, status, body },
        Err(e) => Outcome::Unanswered {
            cn,
            connect: false,
            error: format!("body cut off after {status}: {e:?}"),
        },
    }
}

async fn shutdown_under_load(backend: Backend) {
    let Some(mut app) =
        TestApp::start_with(backend, &[("CLM_SHUTDOWN_TIMEOUT_SECONDS", "60")]).await
    else {
        return;
    };
    let token = app.admin_token().await;
    let profile = app.default_profile_id(&token).await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    // A connection per request: each one is either accepted before the
    // listener closes or refused.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(app.root_pem().as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let url = app.url("/api/v1/certificate-requests");
    // Each client sends until a request goes unanswered (the listener has
    // closed), so the load does not end before the signal does.
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, url, token, profile) =
                (client.clone(), url.clone(), token.clone(), profile.clone());
            let (answered, tag) = (answered.clone(), tag.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for n in 0..PER_CLIENT_AT_MOST {
                    let cn = format!("load-{tag}-{c}-{n}.clm.test");
                    let outcome = issue_once(&client, &url, &token, &profile, cn).await;
                    let was_answered = matches!(outcome, Outcome::Answered { .. });
                    outcomes.push(outcome);
                    if !was_answered {
                        break;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                outcomes
            })
        })
        .collect();

    // SIGTERM once the first answers are in, while the clients keep sending.
    let deadline = Instant::now() + Duration::from_secs(120);
    while answered.load(Ordering::SeqCst) < 4 {
        assert!(
            Instant::now() < deadline,
            "no answers:\n{}",
            app.server_log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.send_sigterm();
    // New connections are refused while the answers are still coming.
    for addr in [&app.api, &app.public] {
        let addr = addr.rsplit('/').next().unwrap();
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{addr} still accepts connections"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Requests from now on get no connection and leave nothing behind.
    for i in 0..4 {
        let cn = format!("load-{tag}-late-{i}.clm.test");
        let outcome = issue_once(&client, &url, &token, &profile, cn.clone()).await;
        assert!(
            matches!(outcome, Outcome::Unanswered { connect: true, .. }),
            "{cn} was not refused at connect"
        );
    }
    let exit = app.wait_for_exit(SHUTDOWN_TIMEOUT).await;
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap());
    }
    let log = app.server_log();
    assert!(exit.success(), "clm serve exited with {exit}:\n{log}");

    // Every answer is a certificate; the others never reached a handler.
    let mut issued = HashMap::new();
    let mut unanswered = BTreeSet::new();
    for o in outcomes {
        match o {
            Outcome::Answered { cn, status, body } => {
                assert_eq!(status, 201, "{cn}: {body}");
                assert_eq!(body["status"], "issued", "{body}");
                issued.insert(cn, body["certificate_id"].as_str().unwrap().to_string());
            }
            Outcome::Unanswered { cn, connect, error } => {
                // Refused at connect, or accepted but closed before the
                // request was read (hyper reports a keep-alive connection
                // the server closed as idle just as the request went out
                // as IncompleteMessage, and one closed while its TLS
                // handshake was under way, before the request could be
                // sent, as "connection was not ready"): nothing
                // half-answered.
                let closed = error.contains("closed")
                    || error.contains("reset")
                    || error.contains("IncompleteMessage")
                    || error.contains("connection was not ready");
                assert!(
                    connect || (closed && !error.starts_with("body cut off")),
                    "{cn}: {error}"
                );
                unanswered.insert(cn);
            }
        }
    }
    // The signal came while requests were in flight: some were answered
    // after it.
    let after_signal = log
        .lines()
        .skip_while(|l| !l.contains("shutting down: listeners closed"))
        .filter(|l| l.contains("\"route\":\"/api/v1/certificate-requests\""))
        .count();
    assert!(
        after_signal > 0,
        "no request finished after SIGTERM:\n{log}"
    );
    eprintln!(
        "{} answered ({after_signal} after SIGTERM), {} refused",
        issued.len(),
        unanswered.len()
    );

    // Nothing half-written, as the databases are left.
    assert_eq!(
        sql(
            &app,
            "secure",
            "SELECT count(*) FROM certificate_requests WHERE status = 'approved'"
        ),
        "0",
        "a request reserved a serial but has no certificate"
    );
    assert_eq!(
        sql(
            &app,
            "secure",
            "SELECT count(*) FROM certificates WHERE request_id IS NOT NULL"
        ),
        sql(
            &app,
            "core",
            "SELECT count(*) FROM certificate_metadata WHERE request_id IS NOT NULL"
        ),
        "clm_core mirrors every issued certificate of clm_secure"
    );
    let verify = app.clm(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "clm audit verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // After a restart: exactly the answered requests have certificates.
    app.restart().await;
    let token = app.admin_token().await;
    for (cn, id) in &issued {
        let r = app.get(&token, &format!("/api/v1/certificates/{id}")).await;
        assert_eq!(r.status(), 200, "{cn}");
        let cert: Value = r.json().await.unwrap();
        assert!(cert["subject"].as_str().unwrap().contains(cn.as_str()));
    }
    let list: Value = app
        .get(
            &token,
            &format!("/api/v1/certificates?q=load-{tag}&per_page=100"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["total"].as_u64().unwrap() as usize,
        issued.len(),
        "a certificate exists for a request that got no answer"
    );
}

/// One query against `which` database (`core` or `secure`), read directly.
fn sql(app: &TestApp, which: &str, query: &str) -> String {
    app.sql(which, query)
}

/// The sum of the samples `name{labels…}` in a Prometheus text page
/// (`None`: no such sample).
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

async fn metrics_page(app: &TestApp, base: &str) -> String {
    let r = app
        .client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    r.text().await.unwrap()
}

async fn submit(app: &TestApp, profile: &Value, cn: &str, token: &str) -> reqwest::Response {
    app.post(
        token,
        "/api/v1/certificate-requests",
        &json!({ "profile_id": profile, "csr_pem": ec_csr(&[cn]) }),
    )
    .await
}

async fn request_count(app: &TestApp, token: &str) -> u64 {
    app.get(token, "/api/v1/certificate-requests")
        .await
        .json::<Value>()
        .await
        .unwrap()["total"]
        .as_u64()
        .unwrap()
}

async fn metrics_and_rate_limits(backend: Backend) {
    let Some(app) = TestApp::start_with(backend, &[("CLM_ISSUANCE_RATE_PER_MINUTE", "3")]).await
    else {
        return;
    };
    let admin = app.admin_token().await;
    let default = app.default_profile_id(&admin).await;
    let intermediate = app.intermediate_ca_id(&admin).await;
    let approved_profile = json!(
        app.create_profile(
            &admin,
            &json!({
                "name": "ops-approved",
                "ca_id": intermediate,
                "key_algorithms": ["ecdsa-p256"],
                "allowed_dns_suffixes": ["clm.test"],
                "max_validity_days": 90,
                "extended_key_usages": ["serverAuth"],
                "required_approvals": 1
            }),
        )
        .await
    );
    // Three requests a minute for this principal: two issued, one pending.
    let first = submit(&app, &json!(default), "m1.clm.test", &admin).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let cert = first["certificate_id"].as_str().unwrap().to_string();
    assert_eq!(
        submit(&app, &json!(default), "m2.clm.test", &admin)
            .await
            .status(),
        201
    );
    let pending = submit(&app, &approved_profile, "m3.clm.test", &admin).await;
    assert_eq!(pending.status(), 201);
    assert_eq!(
        pending.json::<Value>().await.unwrap()["status"],
        "pending_approval"
    );

    let before = request_count(&app, &admin).await;
    let limited = submit(&app, &json!(default), "m4.clm.test", &admin).await;
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "one token per 20 s: {retry}");
    assert_eq!(
        limited.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = limited.json().await.unwrap();
    assert_eq!(problem["code"], "rate_limited");
    assert_eq!(problem["status"], 429);
    // Renewals draw from the same bucket.
    let r = app
        .post(
            &admin,
            &format!("/api/v1/certificates/{cert}/renew"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        request_count(&app, &admin).await,
        before,
        "a refused request leaves nothing"
    );

    // An API key is a principal of its own.
    let key: Value = app
        .post(
            &admin,
            "/api/v1/api-keys",
            &json!({ "name": "ci", "roles": ["super_admin"] }),
        )
        .await
        .json()
        .await
        .unwrap();
    let key = key["token"].as_str().unwrap();
    assert_eq!(
        submit(&app, &json!(default), "m5.clm.test", key)
            .await
            .status(),
        201
    );

    // Route patterns, never raw paths or query strings.
    assert_eq!(
        app.get(&admin, &format!("/api/v1/certificates/{cert}"))
            .await
            .status(),
        200
    );
    let r = app
        .client
        .get(app.url("/no/such/place?token=hunter2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Both listeners export; the gauges from the databases follow within
    // their refresh bound.
    let public = metrics_page(&app, &app.public).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut page = metrics_page(&app, &app.api).await;
    while sample(&page, "clm_pending_approvals", &[]).unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "pending approval not counted:\n{page}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        page = metrics_page(&app, &app.api).await;
    }
    for text in [&public, &page] {
        assert!(
            text.contains("# TYPE clm_http_requests_total counter"),
            "{text}"
        );
    }
    let requests = |route: &str, status: &str| {
        sample(
            &page,
            "clm_http_requests_total",
            &[("method", "POST"), ("route", route), ("status", status)],
        )
        .unwrap_or(0.0)
    };
    assert!(
        requests("/api/v1/certificate-requests", "201") >= 4.0,
        "{page}"
    );
    assert_eq!(
        requests("/api/v1/certificate-requests", "429"),
        1.0,
        "{page}"
    );
    assert_eq!(
        requests("/api/v1/certificates/{id}/renew", "429"),
        1.0,
        "{page}"
    );
    assert!(
        sample(
            &page,
            "clm_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/api/v1/certificates/{id}"),
                ("status", "200")
            ]
        )
        .is_some(),
        "{page}"
    );
    assert!(
        sample(
            &page,
            "clm_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        )
        .is_some()
    );
    for raw in [cert.as_str(), "no/such", "hunter2"] {
        assert!(!page.contains(raw), "{raw} in the metrics");
    }
    assert!(
        sample(
            &page,
            "clm_http_request_duration_milliseconds_bucket",
            &[
                ("route", "/api/v1/certificate-requests"),
                ("status_class", "2xx"),
                ("le", "30000")
            ]
        )
        .unwrap()
            >= 4.0
    );
    let default = default.as_str();
    assert!(
        sample(
            &page,
            "clm_issuance_total",
            &[
                ("ca", "clm-intermediate"),
                ("profile_id", default),
                ("outcome", "issued")
            ]
        )
        .unwrap()
            >= 3.0,
        "{page}"
    );
    assert!(
        sample(
            &page,
            "clm_issuance_duration_milliseconds_count",
            &[("profile_id", default), ("outcome", "issued")]
        )
        .unwrap()
            >= 3.0
    );
    // Each issuance passes through every phase once, in order.
    for phase in ["reserve", "sign", "store", "mirror"] {
        let count = sample(
            &page,
            "clm_issuance_phase_duration_milliseconds_count",
            &[("phase", phase)],
        );
        assert!(count.unwrap_or(0.0) >= 3.0, "{phase}: {count:?}");
    }
    for ca in ["clm-root", "clm-intermediate"] {
        let age = sample(&page, "clm_crl_age_seconds", &[("ca", ca)]).expect("CRL age");
        assert!(age >= 0.0, "{ca}: {age}");
    }
    for log in ["core", "secure"] {
        assert!(sample(&page, "clm_audit_unsealed_entries", &[("log", log)]).is_some());
        assert!(sample(&page, "clm_audit_seal_age_seconds", &[("log", log)]).is_some());
    }
    assert!(sample(&page, "clm_http_requests_in_flight", &[]).unwrap() >= 1.0);
}
