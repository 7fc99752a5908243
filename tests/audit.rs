//! Tamper-evident audit (issue #7) end to end: real entries from API calls,
//! sealed by `clm audit seal`, then changed directly in the database —
//! write-once triggers dropped first, as an attacker with database access
//! would — and `clm audit verify` must fail naming the first bad entry.
//! Also: an untouched log of 100 k entries verifies, the auditors' API
//! (roles, scoping, keyset pages, export checked offline), purge and key
//! rotation leave a verifiable log, and the server's seal job runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use clm::domain::audit::{AuditLog, EntryFields, Fold, entry_hash};
use common::{Backend, TestApp, ec_csr};
use serde_json::{Value, json};

/// Like `on_both_backends!`, with the seal job slowed down so that each
/// test decides when entries are sealed.
macro_rules! on_both {
    ($($name:ident => $scenario:ident;)*) => {$(
        mod $name {
            const SETTINGS: &[(&str, &str)] = &[("CLM_AUDIT_SEAL_INTERVAL_SECONDS", "3600")];

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = $crate::common::TestApp::start_with($crate::common::Backend::Sqlite, SETTINGS).await.unwrap();
                super::$scenario(&app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(app) = $crate::common::TestApp::start_with($crate::common::Backend::Postgres, SETTINGS).await else {
                    return;
                };
                super::$scenario(&app).await;
            }
        }
    )*};
}

on_both! {
    a_changed_field_is_named => changed_field;
    a_deleted_row_is_named => deleted_row;
    a_forged_row_is_named => forged_row;
    swapped_rows_are_named => swapped_rows;
    dropped_newest_rows_and_seals_are_named => dropped_newest;
    a_deleted_head_is_named => deleted_head;
    a_changed_secure_entry_is_named => changed_secure_entry;
    an_untouched_log_of_100k_entries_verifies => untouched_100k;
    auditors_query_verify_and_export => auditor_api;
    purge_leaves_a_verifiable_log => purge;
    rotated_keys_keep_old_entries_verifiable => rotation;
}

on_both_backends! {
    the_server_seals_on_its_own => seal_job;
}

// ---- helpers -------------------------------------------------------------

/// `psql` database name or SQLite file of one of the app's databases.
/// Runs SQL directly against `which` database (`core` or `secure`).
fn sql(app: &TestApp, which: &str, statements: &str) -> String {
    app.sql(which, statements)
}

fn log_table(which: &str) -> &'static str {
    if which == "core" {
        "audit_log"
    } else {
        "secure_audit_log"
    }
}

fn seals_table(which: &str) -> &'static str {
    if which == "core" {
        "audit_seals"
    } else {
        "secure_audit_seals"
    }
}

/// Drops the write-once triggers of `table`, as an attacker would.
fn drop_guards(app: &TestApp, which: &str, table: &str) {
    let statements = match app.backend {
        Backend::Sqlite => format!(
            "DROP TRIGGER IF EXISTS {table}_no_update; DROP TRIGGER IF EXISTS {table}_no_delete;"
        ),
        Backend::Postgres => format!("DROP TRIGGER IF EXISTS {table}_write_once ON {table};"),
    };
    sql(app, which, &statements);
}

fn clm_ok(app: &TestApp, args: &[&str]) -> String {
    let out = app.clm(args);
    assert!(
        out.status.success(),
        "clm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `clm audit verify`: (exit status ok, stdout).
fn verify(app: &TestApp) -> (bool, String) {
    let out = app.clm(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() || stdout.contains("FAILED"),
        "verify neither passed nor reported: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

fn assert_fails(app: &TestApp, expected: &str) {
    let (ok, out) = verify(app);
    assert!(!ok, "verify passed a tampered log:\n{out}");
    assert!(out.contains(expected), "expected `{expected}` in:\n{out}");
}

fn max_seq(app: &TestApp, which: &str) -> i64 {
    sql(
        app,
        which,
        &format!("SELECT max(seq) FROM {}", log_table(which)),
    )
    .parse()
    .unwrap()
}

/// Real entries in both logs: users and an organisation (clm_core), a
/// certificate issued through the HSM (clm_secure).
async fn produce(app: &TestApp, tag: &str) -> String {
    let admin = app.admin_token().await;
    let org = app.create_org(&admin, &format!("Org {tag}")).await;
    for i in 0..3 {
        app.create_user(
            &admin,
            &org,
            &format!("u{i}-{tag}@clm.test"),
            &["requester"],
        )
        .await;
    }
    let profile = app.default_profile_id(&admin).await;
    let r = app
        .post(
            &admin,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": profile, "csr_pem": ec_csr(&[&format!("{tag}.clm.test")]) }),
        )
        .await;
    assert_eq!(r.status(), 201);
    org
}

async fn produce_and_seal(app: &TestApp) {
    produce(app, "a").await;
    clm_ok(app, &["audit", "seal"]);
    let (ok, out) = verify(app);
    assert!(ok, "an untouched log must verify:\n{out}");
}

/// A seq in the middle of the sealed core log.
fn middle(app: &TestApp, which: &str) -> i64 {
    max_seq(app, which) / 2 + 1
}

// ---- tampering -------------------------------------------------------------

async fn changed_field(app: &TestApp) {
    produce_and_seal(app).await;
    let seq = middle(app, "core");
    drop_guards(app, "core", "audit_log");
    sql(
        app,
        "core",
        &format!("UPDATE audit_log SET action = 'forged' WHERE seq = {seq}"),
    );
    assert_fails(app, &format!("core: FAILED: modified at seq {seq} (id "));
}

async fn changed_secure_entry(app: &TestApp) {
    produce_and_seal(app).await;
    let seq = middle(app, "secure");
    drop_guards(app, "secure", "secure_audit_log");
    sql(
        app,
        "secure",
        &format!("UPDATE secure_audit_log SET outcome = 'failure' WHERE seq = {seq}"),
    );
    assert_fails(app, &format!("secure: FAILED: modified at seq {seq} (id "));
}

async fn deleted_row(app: &TestApp) {
    produce_and_seal(app).await;
    let seq = middle(app, "core");
    drop_guards(app, "core", "audit_log");
    sql(
        app,
        "core",
        &format!("DELETE FROM audit_log WHERE seq = {seq}"),
    );
    assert_fails(app, &format!("core: FAILED: missing at seq {seq} "));
}

/// A forger with database access but without the HSM: a complete row at
/// the next seq whose entry hash is right (SHA-256 is public) and whose MAC
/// is made up.
async fn forged_row(app: &TestApp) {
    produce_and_seal(app).await;
    let admin = app.admin_token().await;
    let last = max_seq(app, "core");
    let page: Value = app
        .get(
            &admin,
            &format!("/api/v1/audit?log=core&after={}&limit=1", last - 1),
        )
        .await
        .json()
        .await
        .unwrap();
    let src = &page["items"][0];
    assert_eq!(src["seq"], last);
    let seq = last + 1;
    let id = uuid::Uuid::new_v4();
    let opt = |k: &str| src[k].as_str().map(str::to_string);
    let (actor_kind, action, outcome) = (
        opt("actor_kind").unwrap(),
        opt("action").unwrap(),
        opt("outcome").unwrap(),
    );
    let (target_type, target_id, request_id, source_ip, user_agent) = (
        opt("target_type"),
        opt("target_id"),
        opt("request_id"),
        opt("source_ip"),
        opt("user_agent"),
    );
    let fields = EntryFields {
        seq,
        id,
        occurred_at: src["occurred_at"].as_str().unwrap().parse().unwrap(),
        actor_id: opt("actor_id").map(|s| s.parse().unwrap()),
        actor_kind: &actor_kind,
        organization_id: opt("organization_id").map(|s| s.parse().unwrap()),
        action: &action,
        target_type: target_type.as_deref(),
        target_id: target_id.as_deref(),
        outcome: &outcome,
        request_id: request_id.as_deref(),
        source_ip: source_ip.as_deref(),
        user_agent: user_agent.as_deref(),
        details: &src["details"],
        key_version: src["mac_key_version"].as_i64().unwrap() as i32,
    };
    let hash = entry_hash(AuditLog::Core, &fields);
    sql(
        app,
        "core",
        &format!(
            "INSERT INTO audit_log (seq, id, occurred_at, actor_id, actor_kind, organization_id, \
             action, target_type, target_id, outcome, request_id, source_ip, user_agent, details, \
             entry_hash, mac, mac_key_version) \
             SELECT {seq}, {}, occurred_at, actor_id, actor_kind, organization_id, action, \
             target_type, target_id, outcome, request_id, source_ip, user_agent, details, {}, {}, \
             mac_key_version FROM audit_log WHERE seq = {last}",
            app.uuid_literal(id),
            app.bytes_literal(&hash),
            app.bytes_literal(&[0x5a; 32]),
        ),
    );
    assert_fails(
        app,
        &format!("core: FAILED: inserted at seq {seq} (id {id})"),
    );
    // The sealer will not vouch for it either, and says so.
    let out = app.clm(&["audit", "seal"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("REFUSED: seq {seq}")));
    assert_fails(
        app,
        &format!("core: FAILED: inserted at seq {seq} (id {id})"),
    );
}

const CONTENT: &str = "id, occurred_at, actor_id, actor_kind, organization_id, action, target_type, \
    target_id, outcome, request_id, source_ip, user_agent, details, entry_hash, mac, mac_key_version";

/// Two authentic rows trade places (everything but their seq).
async fn swapped_rows(app: &TestApp) {
    produce_and_seal(app).await;
    let a = middle(app, "core");
    let b = a + 1;
    drop_guards(app, "core", "audit_log");
    let temp_id = match app.backend {
        Backend::Sqlite => "randomblob(16)",
        Backend::Postgres => "gen_random_uuid()",
    };
    sql(
        app,
        "core",
        &format!(
            "CREATE TEMP TABLE t AS SELECT seq, {CONTENT} FROM audit_log WHERE seq IN ({a}, {b}); \
             UPDATE audit_log SET id = {temp_id} WHERE seq = {a}; \
             UPDATE audit_log SET ({CONTENT}) = (SELECT {CONTENT} FROM t WHERE t.seq = {a}) WHERE seq = {b}; \
             UPDATE audit_log SET ({CONTENT}) = (SELECT {CONTENT} FROM t WHERE t.seq = {b}) WHERE seq = {a};"
        ),
    );
    assert_fails(app, &format!("core: FAILED: reordered at seq {a} (id "));
    let (_, out) = verify(app);
    assert!(out.contains(&format!("written at seq {b}")), "{out}");
}

/// The newest entries and the seals covering them are deleted: only the
/// head in the HSM still knows they existed.
async fn dropped_newest(app: &TestApp) {
    produce_and_seal(app).await;
    let kept = max_seq(app, "core");
    produce(app, "b").await;
    clm_ok(app, &["audit", "seal"]);
    assert!(verify(app).0);
    let newest_seal: i64 = sql(app, "core", "SELECT max(seal_no) FROM audit_seals")
        .parse()
        .unwrap();
    assert!(newest_seal >= 2);
    drop_guards(app, "core", "audit_log");
    drop_guards(app, "core", seals_table("core"));
    sql(
        app,
        "core",
        &format!(
            "DELETE FROM audit_log WHERE seq > {kept}; DELETE FROM audit_seals WHERE seal_no = {newest_seal};"
        ),
    );
    assert_fails(
        app,
        &format!("core: FAILED: truncated at seq {} ", kept + 1),
    );
    // The sealer will not paper over it by sealing new entries.
    let out = app.clm(&["audit", "seal"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("core: REFUSED"));
    assert_fails(app, "core: FAILED: truncated");
}

/// The head in the HSM is destroyed (which needs the token's PIN): the
/// seals can no longer be checked for truncation, and verification says so.
async fn deleted_head(app: &TestApp) {
    produce_and_seal(app).await;
    app.pkcs11_tool(&[
        "--delete-object",
        "--type",
        "data",
        "--label",
        "clm-audit-head-core",
    ]);
    assert_fails(app, "core: FAILED: bad_seal");
    assert_fails(app, "seals exist but there is no head in the HSM");
    let (_, out) = verify(app);
    assert!(out.contains("secure: ok"), "{out}");
}

// ---- volume ------------------------------------------------------------------

async fn untouched_100k(app: &TestApp) {
    let started = std::time::Instant::now();
    clm_ok(
        app,
        &[
            "bench",
            "audit-fill",
            "--entries",
            "100000",
            "--batch",
            "500",
        ],
    );
    let filled = started.elapsed();
    clm_ok(app, &["audit", "seal"]);
    let sealed = started.elapsed();
    let (ok, out) = verify(app);
    eprintln!(
        "100k: fill {filled:?}, seal {:?}, verify {:?}\n{out}",
        sealed - filled,
        started.elapsed() - sealed
    );
    assert!(ok, "{out}");
    let entries: u64 = out
        .lines()
        .filter_map(|l| l.split(", ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(entries >= 100_000, "{out}");
}

// ---- auditors' API -------------------------------------------------------------

async fn auditor_api(app: &TestApp) {
    let admin = app.admin_token().await;
    let org = produce(app, "api").await;
    let (_, auditor) = app
        .create_user(&admin, &org, "auditor@clm.test", &["auditor"])
        .await;
    let (_, requester) = app
        .create_user(&admin, &org, "req@clm.test", &["requester"])
        .await;
    clm_ok(app, &["audit", "seal"]);

    // Roles.
    assert_eq!(
        app.get(&requester, "/api/v1/audit/verify").await.status(),
        403
    );
    assert_eq!(app.get(&requester, "/api/v1/audit").await.status(), 403);
    assert_eq!(
        app.get(&requester, "/api/v1/audit/export").await.status(),
        403
    );
    let r = app.get(&auditor, "/api/v1/audit/verify").await;
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["ok"], true, "{report}");

    // Scoped to the auditor's organisation, keyset pages of two.
    let mut after: Option<i64> = None;
    let mut seen = Vec::new();
    loop {
        let path = match after {
            Some(a) => format!("/api/v1/audit?log=core&limit=2&after={a}"),
            None => "/api/v1/audit?log=core&limit=2".to_string(),
        };
        let page: Value = app.get(&auditor, &path).await.json().await.unwrap();
        for e in page["items"].as_array().unwrap() {
            assert_eq!(e["organization_id"], org.as_str(), "{e}");
            seen.push(e["seq"].as_i64().unwrap());
        }
        match page["next_after"].as_i64() {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    // Filters.
    let page: Value = app
        .get(
            &auditor,
            "/api/v1/audit?log=core&action=user.created&outcome=success",
        )
        .await
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    assert!(items.len() >= 4 && items.iter().all(|e| e["action"] == "user.created"));
    let future = "2999-01-01T00:00:00Z";
    let page: Value = app
        .get(&admin, &format!("/api/v1/audit?log=secure&from={future}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    for bad in [
        "outcome=maybe",
        "limit=0",
        "log=other",
        "after=x",
        "colour=red",
    ] {
        let r = app.get(&auditor, &format!("/api/v1/audit?{bad}")).await;
        assert_eq!(r.status(), 400, "{bad}");
    }

    // Export of the whole log (super admin) re-verified offline: entry
    // hashes recomputed, folded into each seal's running hash.
    for log in [AuditLog::Core, AuditLog::Secure] {
        let r = app
            .get(&admin, &format!("/api/v1/audit/export?log={log}"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        let text = r.text().await.unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "header");
        let seals: Vec<&Value> = lines
            .iter()
            .filter(|l| l["type"] == "seal")
            .map(|l| &l["seal"])
            .collect();
        let entries: Vec<&Value> = lines
            .iter()
            .filter(|l| l["type"] == "entry")
            .map(|l| &l["entry"])
            .collect();
        assert!(!seals.is_empty() && !entries.is_empty());
        offline_check(log, &seals, &entries);
    }
}

fn offline_check(log: AuditLog, seals: &[&Value], entries: &[&Value]) {
    let mut prev_mac = String::new();
    let mut i = 0;
    for s in seals {
        assert_eq!(s["prev_mac"].as_str().unwrap(), prev_mac, "chain");
        let mut fold = Fold::start(
            log,
            s["seal_no"].as_i64().unwrap(),
            &hex::decode(s["prev_mac"].as_str().unwrap()).unwrap(),
        );
        while i < entries.len()
            && entries[i]["seq"].as_i64().unwrap() <= s["last_seq"].as_i64().unwrap()
        {
            let e = entries[i];
            let opt = |k: &str| e[k].as_str().map(str::to_string);
            let (kind, action, outcome) = (
                opt("actor_kind").unwrap(),
                opt("action").unwrap(),
                opt("outcome").unwrap(),
            );
            let (tt, ti, rq, ip, ua) = (
                opt("target_type"),
                opt("target_id"),
                opt("request_id"),
                opt("source_ip"),
                opt("user_agent"),
            );
            let f = EntryFields {
                seq: e["seq"].as_i64().unwrap(),
                id: e["id"].as_str().unwrap().parse().unwrap(),
                occurred_at: e["occurred_at"].as_str().unwrap().parse().unwrap(),
                actor_id: opt("actor_id").map(|s| s.parse().unwrap()),
                actor_kind: &kind,
                organization_id: opt("organization_id").map(|s| s.parse().unwrap()),
                action: &action,
                target_type: tt.as_deref(),
                target_id: ti.as_deref(),
                outcome: &outcome,
                request_id: rq.as_deref(),
                source_ip: ip.as_deref(),
                user_agent: ua.as_deref(),
                details: &e["details"],
                key_version: e["mac_key_version"].as_i64().unwrap_or(0) as i32,
            };
            let h = entry_hash(log, &f);
            assert_eq!(
                hex::encode(h),
                e["entry_hash"].as_str().unwrap(),
                "entry {}",
                f.seq
            );
            fold.add(f.seq, &h);
            i += 1;
        }
        assert_eq!(
            hex::encode(fold.value()),
            s["running_hash"].as_str().unwrap(),
            "seal {}",
            s["seal_no"]
        );
        assert_eq!(fold.count() as i64, s["entry_count"].as_i64().unwrap());
        prev_mac = s["mac"].as_str().unwrap().to_string();
    }
}

// ---- retention, rotation, the seal job ----------------------------------------------

async fn purge(app: &TestApp) {
    produce_and_seal(app).await;
    produce(app, "b").await;
    clm_ok(app, &["audit", "seal"]);
    let first_before = sql(app, "core", "SELECT min(seq) FROM audit_log");
    // Nothing is older than seven years.
    let out = clm_ok(app, &["audit", "purge"]);
    assert!(out.contains("core: purged 0 entries"), "{out}");
    let out = clm_ok(app, &["audit", "purge", "--retention-days", "0"]);
    assert!(!out.contains("core: purged 0 entries"), "{out}");
    let first_after = sql(app, "core", "SELECT min(seq) FROM audit_log");
    assert_ne!(first_before, first_after);
    let (ok, out) = verify(app);
    assert!(ok, "after purge:\n{out}");
    clm_ok(app, &["audit", "seal"]);
    let (ok, out) = verify(app);
    assert!(ok, "after purge and seal:\n{out}");
    let admin = app.admin_token().await;
    let page: Value = app
        .get(&admin, "/api/v1/audit?log=core&action=audit.purge")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        !page["items"].as_array().unwrap().is_empty(),
        "the purge is audited"
    );
    // Outside a purge the triggers still refuse.
    let direct = app.try_sql("core", "DELETE FROM audit_log");
    assert!(direct.is_err(), "write-once must hold");
    // Tampering below the checkpoint's start is still caught.
    let seq: i64 = first_after.parse().unwrap();
    drop_guards(app, "core", "audit_log");
    sql(
        app,
        "core",
        &format!("UPDATE audit_log SET action = 'x' WHERE seq = {seq}"),
    );
    assert_fails(app, &format!("core: FAILED: modified at seq {seq} "));
}

async fn rotation(app: &TestApp) {
    produce_and_seal(app).await;
    let out = clm_ok(app, &["audit", "rotate-key"]);
    assert!(out.contains("version 2"), "{out}");
    // The running server picks the new version up with its next seal job;
    // until then it still writes version 1, which stays valid.
    produce(app, "after-rotation").await;
    // A process started after the rotation writes version 2.
    let out = app.clm_with(
        &[
            "user",
            "add",
            "--email",
            "late@clm.test",
            "--role",
            "auditor",
        ],
        &[("CLM_USER_PASSWORD", "a sufficiently long passphrase")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    clm_ok(app, &["audit", "seal"]);
    let (ok, out) = verify(app);
    assert!(ok, "{out}");
    let versions = sql(
        app,
        "core",
        "SELECT DISTINCT mac_key_version FROM audit_log ORDER BY 1",
    );
    assert_eq!(
        versions.lines().collect::<Vec<_>>(),
        ["1", "2"],
        "{versions}"
    );
    let seal_versions = sql(
        app,
        "core",
        "SELECT DISTINCT key_version FROM audit_seals ORDER BY 1",
    );
    assert_eq!(seal_versions.lines().collect::<Vec<_>>(), ["1", "2"]);
    let keys = sql(
        app,
        "secure",
        "SELECT version || ':' || status FROM encryption_keys WHERE purpose = 'audit_mac' ORDER BY version",
    );
    assert_eq!(
        keys.lines().collect::<Vec<_>>(),
        ["1:deprecated", "2:active"]
    );
    // Tampering with an old-key entry is still caught.
    drop_guards(app, "core", "audit_log");
    sql(
        app,
        "core",
        "UPDATE audit_log SET action = 'x' WHERE seq = 2",
    );
    assert_fails(app, "core: FAILED: modified at seq 2 ");
}

async fn seal_job(app: &TestApp) {
    produce(app, "job").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, out) = verify(app);
        assert!(ok, "{out}");
        if out.lines().all(|l| l.ends_with(" 0 unsealed")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not sealed by the job:\n{out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}
