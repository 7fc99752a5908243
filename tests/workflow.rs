//! Approval workflows with separation of duties, on both backends: 2-of-N
//! approval, self-approval, double votes, rejection, cancellation, expiry,
//! a race of final approvals, and who is told what.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, TestApp, ec_csr};
use serde_json::{Value, json};

on_both_backends! {
    two_of_n_approvals_issue_the_certificate => two_of_n;
    separation_of_duties_is_enforced => separation_of_duties;
    rejection_and_cancellation_end_the_workflow => reject_and_cancel;
    parallel_final_approvals_issue_exactly_once => race;
    a_final_approval_under_a_ca_out_of_service_fails_the_request => ca_out_of_service;
}

struct Org {
    admin: String,
    requester: String,
    approvers: Vec<String>,
    profile: String,
}

/// An organisation with a requester, `n` approvers and a profile needing
/// `required` approvals.
async fn org(app: &TestApp, name: &str, n: usize, required: u8) -> Org {
    let root = app.admin_token().await;
    let org = app.create_org(&root, name).await;
    let slug = name.to_lowercase();
    let (_, admin) = app
        .create_user(
            &root,
            &org,
            &format!("admin@{slug}.test"),
            &["org_admin", "ca_admin"],
        )
        .await;
    let (_, requester) = app
        .create_user(&root, &org, &format!("req@{slug}.test"), &["requester"])
        .await;
    let mut approvers = Vec::new();
    for i in 0..n {
        approvers.push(
            app.create_user(&root, &org, &format!("appr{i}@{slug}.test"), &["approver"])
                .await
                .1,
        );
    }
    let ca = app.intermediate_ca_id(&admin).await;
    let profile = app
        .create_profile(
            &admin,
            &json!({ "name": "approved-tls", "ca_id": ca, "key_algorithms": ["ecdsa-p256"],
                     "allowed_dns_suffixes": [format!("{slug}.test")], "max_validity_days": 90,
                     "extended_key_usages": ["serverAuth"], "required_approvals": required }),
        )
        .await;
    Org {
        admin,
        requester,
        approvers,
        profile,
    }
}

async fn submit(app: &TestApp, o: &Org, token: &str, name: &str) -> Value {
    let r = app
        .post(
            token,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": o.profile, "csr_pem": ec_csr(&[name]) }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "pending_approval", "{v}");
    assert!(v["certificate_id"].is_null());
    v
}

async fn decide(app: &TestApp, token: &str, id: &str, verb: &str, body: Value) -> (u16, Value) {
    let r = app
        .post(
            token,
            &format!("/api/v1/certificate-requests/{id}/{verb}"),
            &body,
        )
        .await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET /api/v1/certificate-requests/{id}` as `token` sees it.
async fn request(app: &TestApp, token: &str, id: &str) -> Value {
    app.get_json(token, &format!("/api/v1/certificate-requests/{id}"))
        .await
}

async fn kinds(app: &TestApp, token: &str) -> Vec<String> {
    let v: Value = app
        .get(token, "/api/v1/notifications")
        .await
        .json()
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap().to_string())
        .collect()
}

async fn two_of_n(app: &TestApp) {
    let o = org(app, "Two", 3, 2).await;
    let other = org(app, "Elsewhere", 1, 1).await;
    let req = submit(app, &o, &o.requester, "www.two.test").await;
    let id = req["id"].as_str().unwrap();
    assert_eq!(req["approvals_required"], 2);
    let listed: Value = app
        .get(
            &o.requester,
            "/api/v1/certificate-requests?status=pending_approval",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["items"][0]["approvals_required"], 2, "{listed}");

    let (s, v) = decide(
        app,
        &o.approvers[0],
        id,
        "approve",
        json!({ "comment": "looks right" }),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "pending_approval");
    assert_eq!(v["approvals"][0]["comment"], "looks right");
    let (s, v) = decide(app, &o.approvers[1], id, "approve", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "issued", "{v}");
    assert_eq!(v["approvals"].as_array().unwrap().len(), 2);
    let cert = app
        .get(
            &o.requester,
            &format!(
                "/api/v1/certificates/{}",
                v["certificate_id"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(cert.status(), 200);

    // A third approval after completion is refused.
    assert_eq!(
        decide(app, &o.approvers[2], id, "approve", json!({}))
            .await
            .0,
        409
    );

    // Approvers were told of the pending request, the requester of issuance;
    // nobody else.
    for a in &o.approvers {
        assert!(kinds(app, a).await.contains(&"request.pending".to_string()));
    }
    assert_eq!(kinds(app, &o.requester).await, ["request.issued"]);
    assert!(kinds(app, &other.approvers[0]).await.is_empty());
    assert!(kinds(app, &o.admin).await.is_empty());

    // Reading a notification marks it; someone else's is not found.
    let list: Value = app
        .get(&o.requester, "/api/v1/notifications")
        .await
        .json()
        .await
        .unwrap();
    let nid = list[0]["id"].as_str().unwrap();
    let r = app
        .post(
            &o.requester,
            &format!("/api/v1/notifications/{nid}/read"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 204);
    let unread: Value = app
        .get(&o.requester, "/api/v1/notifications?unread=true")
        .await
        .json()
        .await
        .unwrap();
    assert!(unread.as_array().unwrap().is_empty());
    let r = app
        .post(
            &o.approvers[0],
            &format!("/api/v1/notifications/{nid}/read"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 404);
}

async fn separation_of_duties(app: &TestApp) {
    let o = org(app, "Sod", 2, 2).await;
    let root = app.admin_token().await;
    let orgs: Value = app
        .get(&root, "/api/v1/organizations")
        .await
        .json()
        .await
        .unwrap();
    let org_id = orgs
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "Sod")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, both) = app
        .create_user(&root, &org_id, "both@sod.test", &["requester", "approver"])
        .await;
    let req = submit(app, &o, &both, "self.sod.test").await;
    let id = req["id"].as_str().unwrap();
    assert_eq!(
        decide(app, &both, id, "approve", json!({})).await.0,
        403,
        "self-approval"
    );
    assert_eq!(
        decide(app, &o.requester, id, "approve", json!({})).await.0,
        403,
        "a requester is no approver"
    );

    assert_eq!(
        decide(app, &o.approvers[0], id, "approve", json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        decide(app, &o.approvers[0], id, "approve", json!({}))
            .await
            .0,
        409,
        "double vote"
    );
    let v = request(app, &both, id).await;
    assert_eq!(v["approvals"].as_array().unwrap().len(), 1);

    // A profile may name which roles approve: here ca_admin, not approver.
    let cas: Value = app.get(&o.admin, "/api/v1/cas").await.json().await.unwrap();
    let ca = cas
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "intermediate")
        .unwrap()["id"]
        .clone();
    let r = app
        .post(
            &o.admin,
            "/api/v1/profiles",
            &json!({ "name": "ca-approved", "ca_id": ca, "key_algorithms": ["ecdsa-p256"],
                     "allowed_dns_suffixes": ["sod.test"], "max_validity_days": 30,
                     "extended_key_usages": ["serverAuth"], "required_approvals": 1,
                     "approver_roles": ["ca_admin"] }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let profile: Value = r.json().await.unwrap();
    assert_eq!(profile["approver_roles"], json!(["ca_admin"]));
    let r = app
        .post(
            &o.requester,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": profile["id"], "csr_pem": ec_csr(&["ca.sod.test"]) }),
        )
        .await;
    let pending: Value = r.json().await.unwrap();
    let pid = pending["id"].as_str().unwrap();
    assert_eq!(
        decide(app, &o.approvers[1], pid, "approve", json!({}))
            .await
            .0,
        403,
        "role not named by the profile"
    );
    let (s, v) = decide(app, &o.admin, pid, "approve", json!({})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("issued")), "{v}");

    // Approvers of another organisation cannot even see it.
    let other = org(app, "Foreign", 1, 1).await;
    assert_eq!(
        decide(app, &other.approvers[0], id, "approve", json!({}))
            .await
            .0,
        404
    );
}

async fn reject_and_cancel(app: &TestApp) {
    let o = org(app, "Rej", 2, 1).await;
    let req = submit(app, &o, &o.requester, "a.rej.test").await;
    let id = req["id"].as_str().unwrap();
    assert_eq!(
        decide(app, &o.approvers[0], id, "reject", json!({}))
            .await
            .0,
        400,
        "a reason is required"
    );
    let (s, v) = decide(
        app,
        &o.approvers[0],
        id,
        "reject",
        json!({ "reason": "unknown host" }),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "rejected");
    assert_eq!(
        decide(app, &o.approvers[1], id, "approve", json!({}))
            .await
            .0,
        409,
        "approve after reject"
    );
    assert!(
        kinds(app, &o.requester)
            .await
            .contains(&"request.rejected".to_string())
    );

    let req = submit(app, &o, &o.requester, "b.rej.test").await;
    let id = req["id"].as_str().unwrap();
    assert_eq!(
        decide(app, &o.approvers[0], id, "cancel", json!({}))
            .await
            .0,
        403,
        "only the requester cancels"
    );
    let (s, v) = decide(app, &o.requester, id, "cancel", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "cancelled");
    assert_eq!(
        decide(app, &o.approvers[0], id, "approve", json!({}))
            .await
            .0,
        409,
        "approve after cancel"
    );
    assert_eq!(
        decide(app, &o.requester, id, "cancel", json!({})).await.0,
        409,
        "cancel twice"
    );
}

async fn race(app: &TestApp) {
    let o = org(app, "Race", 10, 1).await;
    let req = submit(app, &o, &o.requester, "race.race.test").await;
    let id = req["id"].as_str().unwrap().to_string();
    let calls = o.approvers.iter().map(|token| {
        let (client, url, token) = (
            app.client.clone(),
            app.url(&format!("/api/v1/certificate-requests/{id}/approve")),
            token.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let mut statuses: Vec<u16> = Vec::new();
    for c in calls.collect::<Vec<_>>() {
        statuses.push(c.await.unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        9,
        "{statuses:?}"
    );
    let certs: Value = app
        .get(&o.requester, "/api/v1/certificates")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(certs["total"], 1, "exactly one certificate");
    let v = request(app, &o.requester, &id).await;
    assert_eq!(v["status"], "issued");
    assert_eq!(v["approvals"].as_array().unwrap().len(), 1);
}

async fn expiry(backend: Backend) {
    let settings = [
        ("CLM_REQUEST_TTL_SECONDS", "2"),
        ("CLM_JOB_INTERVAL_SECONDS", "1"),
    ];
    let Some(app) = TestApp::start_with(backend, &settings).await else {
        return;
    };
    let o = org(&app, "Late", 1, 1).await;
    let req = submit(&app, &o, &o.requester, "late.late.test").await;
    let id = req["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let v = request(&app, &o.requester, id).await;
        if v["status"] == "expired" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "request never expired: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(
        decide(&app, &o.approvers[0], id, "approve", json!({}))
            .await
            .0,
        409
    );
    assert!(
        kinds(&app, &o.requester)
            .await
            .contains(&"request.expired".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_expire_sqlite() {
    expiry(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_expire_postgres() {
    expiry(Backend::Postgres).await;
}

/// A webhook receiver on loopback that records what it gets.
struct Receiver {
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

/// Headers (lower-case names) and body of one received request.
type Received = (std::collections::HashMap<String, String>, Vec<u8>);

impl Receiver {
    async fn start(port: u16) -> Receiver {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_len, headers) = loop {
                        let n = sock.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "connection closed mid-request");
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
                            let headers: std::collections::HashMap<String, String> = head
                                .lines()
                                .skip(1)
                                .filter_map(|l| l.split_once(':'))
                                .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
                                .collect();
                            break (pos + 4, headers);
                        }
                    };
                    let len: usize = headers.get("content-length").unwrap().parse().unwrap();
                    while buf.len() < head_len + len {
                        let n = sock.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    sink.lock()
                        .unwrap()
                        .push((headers, buf[head_len..head_len + len].to_vec()));
                    sock.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await
                    .unwrap();
                });
            }
        });
        Receiver { got }
    }

    /// Event types received so far, after checking every signature.
    fn events(&self, secret: &str) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(h, body)| {
                let ts = &h["x-clm-timestamp"];
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
                let expected = hex::encode(
                    ring::hmac::sign(&key, &[ts.as_bytes(), b".", body].concat()).as_ref(),
                );
                assert_eq!(
                    h["x-clm-signature"],
                    format!("sha256={expected}"),
                    "signature verifies"
                );
                let v: Value = serde_json::from_slice(body).unwrap();
                assert_eq!(v["type"].as_str(), h.get("x-clm-event").map(String::as_str));
                v["type"].as_str().unwrap().to_string()
            })
            .collect()
    }
}

async fn wait_for<F: Fn() -> bool>(what: &str, f: F) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn webhooks(backend: Backend) {
    let settings = [
        ("CLM_JOB_INTERVAL_SECONDS", "1"),
        ("CLM_WEBHOOK_RETRY_BASE_SECONDS", "1"),
    ];
    let Some(app) = TestApp::start_with(backend, &settings).await else {
        return;
    };
    let o = org(&app, "Hooked", 1, 1).await;
    // A port nobody listens on yet: the receiver is "down".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = app
        .post(
            &o.admin,
            "/api/v1/webhooks",
            &json!({ "url": format!("http://127.0.0.1:{port}/hook") }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let hook: Value = r.json().await.unwrap();
    let secret = hook["secret"].as_str().unwrap().to_string();
    let deliveries = format!(
        "/api/v1/webhooks/{}/deliveries",
        hook["id"].as_str().unwrap()
    );

    let req = submit(&app, &o, &o.requester, "hook.hooked.test").await;
    let id = req["id"].as_str().unwrap().to_string();
    // The first attempt fails and is scheduled again.
    let mut failed_once = false;
    for _ in 0..100 {
        let list: Value = app.get(&o.admin, &deliveries).await.json().await.unwrap();
        if list[0]["attempts"].as_i64().unwrap_or(0) >= 1 {
            assert_eq!(list[0]["status"], "pending");
            assert!(list[0]["last_error"].is_string());
            failed_once = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(failed_once, "no failed attempt recorded");

    // The receiver comes up: the queued event is redelivered, signed.
    let receiver = Receiver::start(port).await;
    wait_for("redelivery", || !receiver.events(&secret).is_empty()).await;
    assert_eq!(receiver.events(&secret)[0], "request.created");

    assert_eq!(
        decide(&app, &o.approvers[0], &id, "approve", json!({}))
            .await
            .0,
        200
    );
    wait_for("approval and issuance events", || {
        receiver.events(&secret).len() >= 3
    })
    .await;
    let events = receiver.events(&secret);
    assert!(
        events.contains(&"request.approved".to_string())
            && events.contains(&"request.issued".to_string()),
        "{events:?}"
    );

    let list: Value = app.get(&o.admin, &deliveries).await.json().await.unwrap();
    let first = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event"] == "request.created")
        .unwrap();
    assert_eq!(first["status"], "delivered");
    assert!(first["attempts"].as_i64().unwrap() >= 2, "{first}");

    // Another organisation sees neither the webhook nor its deliveries.
    let other = org(&app, "Unhooked", 1, 1).await;
    let theirs: Value = app
        .get(&other.admin, "/api/v1/webhooks")
        .await
        .json()
        .await
        .unwrap();
    assert!(theirs.as_array().unwrap().is_empty());
    assert_eq!(app.get(&other.admin, &deliveries).await.status(), 404);

    // The secret is shown once and stored nowhere.
    let hooks: Value = app
        .get(&o.admin, "/api/v1/webhooks")
        .await
        .json()
        .await
        .unwrap();
    assert!(!hooks.to_string().contains(&secret));
    if backend == Backend::Sqlite {
        for db in [
            "clm_core.db",
            "clm_secure.db",
            "clm_core.db-wal",
            "clm_secure.db-wal",
        ] {
            if let Ok(bytes) = std::fs::read(app.path(db)) {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "secret in {db}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_redelivered_sqlite() {
    webhooks(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_redelivered_postgres() {
    webhooks(Backend::Postgres).await;
}

/// The final approval of a request whose CA another instance has just
/// taken out of service (played behind the server's back, while this
/// instance still holds the CA's copy from a moment ago): nothing is
/// issued, the request and its workflow fail, and the requester is told.
async fn ca_out_of_service(app: &TestApp) {
    let o = org(app, "Halted", 1, 1).await;
    let req = submit(app, &o, &o.requester, "www.halted.test").await;
    let id = req["id"].as_str().unwrap();
    let ca = app.intermediate_ca_id(&o.admin).await;
    let root = app.admin_token().await;
    app.issue(&root, &["warm.clm.test"]).await;
    app.disable_ca_elsewhere(ca.as_str().unwrap());
    let (s, v) = decide(app, &o.approvers[0], id, "approve", json!({})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("ca_inactive")), "{v}");
    let v = request(app, &o.requester, id).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["certificate_id"].is_null());
    assert_eq!(kinds(app, &o.requester).await, ["request.failed"]);
}
