//! Several instances on one pair of databases, and what a crash leaves
//! behind: serials never reused, each background job run by one instance
//! once per period through its lease, kill -9 under load repaired and
//! proven consistent by `clm reconcile`, which also announces to webhooks
//! the certificates a crash kept from being announced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Backend, TestApp, ec_csr};
use serde_json::{Value, json};

on_both_backends! {
    reconcile_repairs_what_a_crash_leaves => reconcile_repairs;
    reconcile_since_a_moment_compares_what_changed_since => reconcile_since;
}

/// Submits a CSR for `cn` through `profile`; the response body, or why
/// there was none.
async fn submit(app: &TestApp, token: &str, profile: &str, cn: &str) -> Result<Value, String> {
    let r = app
        .client
        .post(app.url("/api/v1/certificate-requests"))
        .bearer_auth(token)
        .json(&json!({ "profile_id": profile, "csr_pem": ec_csr(&[cn]) }))
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.map_err(|e| format!("{status}: {e}"))?;
    if status == 201 {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

async fn certificate(app: &TestApp, token: &str, id: &str) -> Value {
    let r = app.get(token, &format!("/api/v1/certificates/{id}")).await;
    assert_eq!(r.status(), 200, "certificate {id}");
    r.json().await.unwrap()
}

async fn revoke(app: &TestApp, token: &str, id: &str) {
    let r = app
        .post(
            token,
            &format!("/api/v1/certificates/{id}/revoke"),
            &json!({ "reason": "keyCompromise" }),
        )
        .await;
    assert_eq!(r.status(), 200, "revoking {id}");
}

/// `clm reconcile ARGS --json`: exit success and the parsed report.
fn reconcile(app: &TestApp, args: &[&str]) -> (bool, Value) {
    let mut all = vec!["reconcile", "--json"];
    all.extend_from_slice(args);
    let out = app.clm(&all);
    let text = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "clm reconcile printed no JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

fn found(report: &Value, what: &str) -> (u64, u64) {
    let f = &report["reconcile"][what];
    (
        f["found"].as_u64().unwrap(),
        f["repaired"].as_u64().unwrap(),
    )
}

/// The certificates announced by `request.issued` deliveries of `hook`.
async fn announced(app: &TestApp, token: &str, hook: &str) -> Vec<String> {
    let queued: Value = app
        .get(token, &format!("/api/v1/webhooks/{hook}/deliveries"))
        .await
        .json()
        .await
        .unwrap();
    let mut ids: Vec<String> = queued
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["event"] == "request.issued")
        .map(|d| {
            d["payload"]["data"]["certificate_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

async fn reconcile_repairs(app: &TestApp) {
    let admin = app.admin_token().await;
    // Nothing listens there: deliveries wait in the queue, where they are
    // counted.
    let r = app
        .post(
            &admin,
            "/api/v1/webhooks",
            &json!({ "url": "http://127.0.0.1:9/hook", "events": ["request.issued"] }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let hook = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let kept = app.issue(&admin, &["kept.clm.test"]).await;
    let revoked = app.issue(&admin, &["revoked.clm.test"]).await;
    let revoked_id = revoked["id"].as_str().unwrap();
    revoke(app, &admin, revoked_id).await;
    let revoked = certificate(app, &admin, revoked_id).await;
    let kept_id = kept["id"].as_str().unwrap();
    let mut both = vec![kept_id.to_string(), revoked_id.to_string()];
    both.sort();
    assert_eq!(announced(app, &admin, &hook).await, both);

    // A request that waits for an approval, to play an issuance cut off
    // between reserving its serial and storing the certificate.
    let ca = app.intermediate_ca_id(&admin).await;
    let approval_profile = app
        .create_profile(
            &admin,
            &json!({ "name": "approved", "ca_id": ca, "key_algorithms": ["ecdsa-p256"],
                     "allowed_dns_suffixes": ["clm.test"], "max_validity_days": 30,
                     "extended_key_usages": ["serverAuth"], "required_approvals": 1 }),
        )
        .await;
    let pending = submit(app, &admin, &approval_profile, "cut-off.clm.test")
        .await
        .unwrap();
    assert_eq!(pending["status"], "pending_approval");
    let pending_id = pending["id"].as_str().unwrap();

    // What a process killed at the wrong moments leaves behind.
    let (kept_serial, revoked_serial) = (
        kept["serial"].as_str().unwrap(),
        revoked["serial"].as_str().unwrap(),
    );
    // Killed before step 4: neither the mirror nor its announcement, which
    // are stored together.
    let about_kept = match app.backend {
        Backend::Sqlite => format!("json_extract(payload, '$.data.certificate_id') = '{kept_id}'"),
        Backend::Postgres => format!("payload->'data'->>'certificate_id' = '{kept_id}'"),
    };
    app.sql(
        "core",
        &format!(
            "DELETE FROM certificate_metadata WHERE serial_hex = '{kept_serial}'; \
             DELETE FROM webhook_deliveries WHERE {about_kept}"
        ),
    );
    assert_eq!(announced(app, &admin, &hook).await, [revoked_id]);
    // The mirror as it was before the revocation's step in clm_core.
    rewind_mirror(app, revoked_serial);
    app.sql(
        "secure",
        "UPDATE certificate_requests SET status = 'approved', reserved_serial_hex = '7a11ed0ff5e7' \
         WHERE status = 'pending_approval'",
    );
    let mirrored = |serial: &str| {
        app.sql(
            "core",
            &format!("SELECT status FROM certificate_metadata WHERE serial_hex = '{serial}'"),
        )
    };

    // A dry run names all three and changes nothing.
    let (ok, dry) = reconcile(app, &["--dry-run", "--grace-seconds", "0"]);
    assert!(!ok, "a dry run with findings exits non-zero: {dry}");
    for what in ["missing_mirrors", "stale_statuses", "interrupted_requests"] {
        assert_eq!(found(&dry, what), (1, 0), "{what}: {dry}");
    }
    assert_eq!(dry["reconcile"]["orphan_mirrors"]["found"], 0);
    assert_eq!(mirrored(kept_serial), "");
    // Within the grace period a request in `approved` may be being signed
    // by another instance: not touched.
    let (_, recent) = reconcile(app, &["--dry-run", "--grace-seconds", "3600"]);
    assert_eq!(found(&recent, "interrupted_requests"), (0, 0), "{recent}");

    let (ok, done) = reconcile(app, &["--grace-seconds", "0"]);
    assert!(ok, "everything is repairable: {done}");
    for what in ["missing_mirrors", "stale_statuses", "interrupted_requests"] {
        assert_eq!(found(&done, what), (1, 1), "{what}: {done}");
    }
    assert_eq!(done["audit"]["ok"], true, "{done}");
    assert_eq!(mirrored(kept_serial), "valid");
    assert_eq!(mirrored(revoked_serial), "revoked");
    // Copied over and announced once, as step 4 would have.
    assert_eq!(announced(app, &admin, &hook).await, both);
    let request: Value = app
        .get(
            &admin,
            &format!("/api/v1/certificate-requests/{pending_id}"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(request["status"], "failed", "{request}");
    assert!(
        request["failure_reason"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    let audit: Value = app
        .get(
            &admin,
            "/api/v1/audit?log=secure&action=certificate.issuance_failed",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");

    // Repaired means a second pass finds nothing.
    let (ok, again) = reconcile(app, &["--dry-run", "--grace-seconds", "0"]);
    assert!(ok, "{again}");
    let leaves = app.sql(
        "secure",
        "SELECT count(*) FROM certificates WHERE NOT is_ca",
    );
    assert_eq!(
        again["reconcile"]["certificates_checked"].to_string(),
        leaves,
        "every end-entity certificate compared: {again}"
    );

    // A mirror without a certificate cannot come from a crash: reported,
    // never "repaired".
    let new_id = match app.backend {
        Backend::Sqlite => "randomblob(16)",
        Backend::Postgres => "gen_random_uuid()",
    };
    app.sql(
        "core",
        &format!(
            "INSERT INTO certificate_metadata (id, organization_id, ca_id, profile_id, request_id, \
             owner_id, common_name, sans, serial_hex, not_before, not_after, status, created_at, \
             updated_at) SELECT {new_id}, organization_id, ca_id, profile_id, request_id, owner_id, \
             common_name, sans, serial_hex || '01', not_before, not_after, status, created_at, \
             updated_at FROM certificate_metadata WHERE serial_hex = '{kept_serial}'"
        ),
    );
    let (ok, orphan) = reconcile(app, &[]);
    assert!(!ok, "{orphan}");
    assert_eq!(found(&orphan, "orphan_mirrors"), (1, 0), "{orphan}");
    let text = String::from_utf8_lossy(&app.clm(&["reconcile"]).stdout).to_string();
    assert!(
        text.contains("FAILED: 1 mirrored certificates unknown to clm_secure"),
        "{text}"
    );
}

/// Rewinds the mirror of the certificate with `serial` to `valid`, as if
/// its revocation's step in clm_core had been cut off (the trigger that
/// keeps revoked rows revoked would refuse the rewind, so it goes first).
fn rewind_mirror(app: &TestApp, serial: &str) {
    let on_table = match app.backend {
        Backend::Sqlite => "",
        Backend::Postgres => " ON certificate_metadata",
    };
    app.sql(
        "core",
        &format!(
            "DROP TRIGGER IF EXISTS certificate_metadata_no_unrevoke{on_table}; \
             UPDATE certificate_metadata SET status = 'valid' WHERE serial_hex = '{serial}'"
        ),
    );
}

fn drop_mirror(app: &TestApp, serial: &str) {
    app.sql(
        "core",
        &format!("DELETE FROM certificate_metadata WHERE serial_hex = '{serial}'"),
    );
}

fn examples(report: &Value, what: &str) -> Value {
    report["reconcile"][what]["examples"].clone()
}

/// `--since` (and the background job's passes after its first) compares
/// the certificates created since the moment, found by their time-ordered
/// ids, and the older ones whose status changed since, found by the index
/// of status changes; an older certificate nothing touched is left to the
/// full pass.
async fn reconcile_since(app: &TestApp) {
    let admin = app.admin_token().await;
    let old_revoked = app.issue(&admin, &["old-revoked.clm.test"]).await;
    let old_untouched = app.issue(&admin, &["old-untouched.clm.test"]).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let new = app.issue(&admin, &["new.clm.test"]).await;
    let old_revoked_id = old_revoked["id"].as_str().unwrap();
    revoke(app, &admin, old_revoked_id).await;

    // Each kind of damage a crash leaves, on each kind of certificate.
    let serial = |c: &Value| c["serial"].as_str().unwrap().to_string();
    rewind_mirror(app, &serial(&old_revoked));
    drop_mirror(app, &serial(&new));
    drop_mirror(app, &serial(&old_untouched));

    let (ok, dry) = reconcile(app, &["--dry-run", "--since", &since]);
    assert!(!ok, "{dry}");
    assert!(dry["reconcile"]["since"].is_string(), "{dry}");
    assert_eq!(
        dry["reconcile"]["certificates_checked"], 2,
        "the new certificate and the old one revoked since: {dry}"
    );
    assert_eq!(
        examples(&dry, "missing_mirrors"),
        json!([new["id"]]),
        "{dry}"
    );
    assert_eq!(
        examples(&dry, "stale_statuses"),
        json!([old_revoked_id]),
        "{dry}"
    );

    let (ok, done) = reconcile(app, &["--since", &since]);
    assert!(ok, "{done}");
    assert_eq!(found(&done, "missing_mirrors"), (1, 1), "{done}");
    assert_eq!(found(&done, "stale_statuses"), (1, 1), "{done}");

    // The full pass finds what lies before the moment.
    let (ok, full) = reconcile(app, &["--dry-run"]);
    assert!(!ok, "{full}");
    assert_eq!(full["reconcile"]["since"], Value::Null);
    assert_eq!(
        examples(&full, "missing_mirrors"),
        json!([old_untouched["id"]]),
        "{full}"
    );
    assert_eq!(found(&full, "stale_statuses"), (0, 0), "{full}");
}

/// The background job's first pass walks everything, its later ones what
/// changed since the pass before: damage done after the first is repaired
/// by the later ones.
async fn reconciliation_job_repairs(backend: Backend) {
    let Some(app) = TestApp::start_with(backend, &[("CLM_RECONCILE_INTERVAL_SECONDS", "1")]).await
    else {
        return;
    };
    let admin = app.admin_token().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while runs_of(&app, "reconciliation") < 2 {
        assert!(Instant::now() < deadline, "the job did not run twice");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cert = app.issue(&admin, &["job.clm.test"]).await;
    let serial = cert["serial"].as_str().unwrap();
    drop_mirror(&app, serial);
    let mirrored = || {
        app.sql(
            "core",
            &format!("SELECT count(*) FROM certificate_metadata WHERE serial_hex = '{serial}'"),
        )
    };
    while mirrored() != "1" {
        assert!(
            Instant::now() < deadline,
            "the job did not repair the mirror"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciliation_job_repairs_what_changed_since_its_last_pass_sqlite() {
    reconciliation_job_repairs(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciliation_job_repairs_what_changed_since_its_last_pass_postgres() {
    reconciliation_job_repairs(Backend::Postgres).await;
}

/// Runs of each job so far, by name.
fn job_runs(app: &TestApp) -> Vec<(String, i64, String)> {
    app.sql(
        "core",
        "SELECT name, runs, COALESCE(last_holder, '') FROM job_leases ORDER BY name",
    )
    .lines()
    .map(|l| {
        let mut parts = l.split('|');
        let name = parts.next().unwrap().to_string();
        let runs = parts.next().unwrap().parse().unwrap();
        (name, runs, parts.next().unwrap_or_default().to_string())
    })
    .collect()
}

fn runs_of(app: &TestApp, job: &str) -> i64 {
    job_runs(app)
        .into_iter()
        .find(|(n, _, _)| n == job)
        .map_or(0, |(_, r, _)| r)
}

/// Settings both instances of a test run with: jobs every second, leases
/// that lapse three seconds after a holder stops renewing.
const FAST_JOBS: &[(&str, &str)] = &[
    ("CLM_JOB_INTERVAL_SECONDS", "1"),
    ("CLM_JOB_LEASE_SECONDS", "3"),
    ("CLM_AUDIT_SEAL_INTERVAL_SECONDS", "1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_serials_and_jobs() {
    let Some(a) = TestApp::start_with(Backend::Postgres, FAST_JOBS).await else {
        return;
    };
    let b = a.peer().await;
    // One session, known to both: they share the databases.
    let token = a.admin_token().await;
    let profile = a.default_profile_id(&token).await;

    let started = Instant::now();
    let before = runs_of(&a, "CRL refresh");
    let mut serials = HashSet::new();
    for round in 0..5 {
        let answers = futures_util::future::join_all((round * 24..(round + 1) * 24).map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            let (token, profile, cn) = (&token, &profile, format!("pair-{i}.clm.test"));
            async move { submit(app, token, profile, &cn).await }
        }))
        .await;
        for answer in answers {
            let body = answer.expect("both instances issue");
            let cert = certificate(&a, &token, body["certificate_id"].as_str().unwrap()).await;
            let serial = cert["serial"].as_str().unwrap().to_string();
            assert!(serials.insert(serial), "serial reused");
        }
    }
    assert_eq!(serials.len(), 120);
    assert_eq!(
        a.sql(
            "secure",
            "SELECT count(*) - count(DISTINCT (ca_id, serial_hex)) FROM certificates"
        ),
        "0"
    );

    // Each instance ticks every second; with the lease the CRL refresh runs
    // about once a second in all, not twice.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let runs = runs_of(&a, "CRL refresh") - before;
    assert!(runs >= 2, "the job runs: {runs} runs in {elapsed:.1} s");
    assert!(
        (runs as f64) <= elapsed / 0.9 + 2.0,
        "{runs} runs in {elapsed:.1} s: the lease lets one instance run it per period"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_leaves_everything_consistent() {
    let Some(mut a) = TestApp::start_with(Backend::Postgres, FAST_JOBS).await else {
        return;
    };
    let b = a.peer().await;
    let token = a.admin_token().await;
    let profile = a.default_profile_id(&token).await;
    let (pid_a, pid_b) = (a.pid().unwrap(), b.pid().unwrap());

    // Eight clients per instance, each issuing and revoking every third
    // certificate, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = |app: &TestApp, n: usize| {
        let (client, api, token, profile, stop) = (
            app.client.clone(),
            app.api.clone(),
            token.clone(),
            profile.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            // Revoked: Some(answer), or None when the answer was lost.
            let mut issued: Vec<(String, Option<bool>)> = Vec::new();
            let mut errors = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let sent = client
                    .post(format!("{api}/api/v1/certificate-requests"))
                    .bearer_auth(&token)
                    .json(&json!({ "profile_id": profile,
                                   "csr_pem": ec_csr(&[&format!("w{n}-{i}.clm.test")]) }))
                    .send()
                    .await;
                let body: Value = match sent {
                    Ok(r) if r.status() == 201 => match r.json().await {
                        Ok(b) => b,
                        Err(e) => {
                            errors.push(format!("cut off: {e}"));
                            continue;
                        }
                    },
                    Ok(r) => {
                        errors.push(format!("{}", r.status()));
                        continue;
                    }
                    Err(e) => {
                        errors.push(format!("{e}"));
                        continue;
                    }
                };
                let id = body["certificate_id"].as_str().unwrap().to_string();
                let mut revoked = Some(false);
                if i % 3 == 0 {
                    let r = client
                        .post(format!("{api}/api/v1/certificates/{id}/revoke"))
                        .bearer_auth(&token)
                        .json(&json!({ "reason": "superseded" }))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => revoked = Some(true),
                        Ok(r) => errors.push(format!("revoke {}", r.status())),
                        Err(e) => {
                            revoked = None;
                            errors.push(format!("revoke: {e}"));
                        }
                    }
                }
                issued.push((id, revoked));
            }
            (issued, errors)
        })
    };
    let on_a: Vec<_> = (0..8).map(|n| worker(&a, n)).collect();
    let on_b: Vec<_> = (8..16).map(|n| worker(&b, n)).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.kill();
    // B carries on alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);

    let mut confirmed = Vec::new();
    for w in on_a {
        // Clients of A lose their answers at the kill; what they were told
        // before it must hold.
        confirmed.extend(w.await.unwrap().0);
    }
    let mut b_issued = 0;
    for w in on_b {
        let (issued, errors) = w.await.unwrap();
        assert!(errors.is_empty(), "B kept serving: {errors:?}");
        b_issued += issued.len();
        confirmed.extend(issued);
    }
    assert!(
        b_issued > 0 && confirmed.len() > b_issued,
        "both instances issued"
    );
    for (id, revoked) in &confirmed {
        let cert = certificate(&b, &token, id).await;
        // A revocation whose answer the kill swallowed may or may not have
        // committed; one that was answered holds.
        if let Some(revoked) = revoked {
            let status = if *revoked { "revoked" } else { "valid" };
            assert_eq!(
                cert["status"], status,
                "what a client was told holds: {cert}"
            );
        }
    }
    assert_eq!(
        a.sql(
            "secure",
            "SELECT count(*) - count(DISTINCT (ca_id, serial_hex)) FROM certificates"
        ),
        "0"
    );

    // A's leases lapse and B takes its jobs over.
    let deadline = Instant::now() + Duration::from_secs(30);
    let b_marker = format!(":{pid_b}:");
    let short_jobs = [
        "CRL refresh",
        "request expiry",
        "certificate expiry",
        "audit seal",
    ];
    loop {
        let runs = job_runs(&a);
        let on_b = short_jobs.iter().all(|job| {
            runs.iter()
                .any(|(n, _, holder)| n == job && holder.contains(&b_marker))
        });
        if on_b {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B did not take over A's ({pid_a}) jobs: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The reconciliation pass proves (and repairs) consistency: whatever A
    // was doing at the kill is accounted for, and both audit trails verify.
    drop(b);
    let (ok, report) = reconcile(&a, &["--grace-seconds", "0"]);
    assert!(ok, "consistent after kill -9: {report}");
    assert_eq!(report["audit"]["ok"], true, "{report}");
    let (ok, again) = reconcile(&a, &["--dry-run", "--grace-seconds", "0"]);
    assert!(ok, "nothing left to repair: {again}");

    // A comes back on the same data and serves.
    a.restart().await;
    let body = submit(&a, &token, &profile, "after-restart.clm.test")
        .await
        .unwrap();
    assert_eq!(body["status"], "issued", "{body}");
}
