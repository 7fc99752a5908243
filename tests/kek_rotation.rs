//! KEK rotation over 1,000 archived keys: refused while one runs, survives
//! a SIGKILL of the server midway, leaves every key unwrappable under the
//! new KEK, and rolls back inside the window.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestApp};
use serde_json::{Value, json};

/// Small batches with a pause between them, so that the kill lands midway.
const SETTINGS: &[(&str, &str)] = &[
    ("CLM_KEK_REWRAP_BATCH", "50"),
    ("CLM_KEK_REWRAP_PAUSE_MS", "150"),
    ("CLM_JOB_INTERVAL_SECONDS", "1"),
    // The killed server's lease on the rewrap lapses after this, and the
    // restarted one takes the rotation over.
    ("CLM_JOB_LEASE_SECONDS", "3"),
];
const KEYS: usize = 1000;
/// A rollback window of zero: the job destroys the old KEK at once.
const NO_WINDOW: &[(&str, &str)] = &[
    ("CLM_KEK_ROLLBACK_DAYS", "0"),
    ("CLM_JOB_INTERVAL_SECONDS", "1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let mut app = TestApp::start_with(Backend::Sqlite, SETTINGS)
        .await
        .unwrap();
    rotation_survives_a_kill_and_rolls_back(&mut app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_window_closes() {
    let app = TestApp::start_with(Backend::Sqlite, NO_WINDOW)
        .await
        .unwrap();
    old_kek_is_destroyed_after_the_window(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_window_closes() {
    let Some(app) = TestApp::start_with(Backend::Postgres, NO_WINDOW).await else {
        return;
    };
    old_kek_is_destroyed_after_the_window(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(mut app) = TestApp::start_with(Backend::Postgres, SETTINGS).await else {
        return;
    };
    rotation_survives_a_kill_and_rolls_back(&mut app).await;
}

fn run(app: &TestApp, args: &[&str]) -> String {
    let out = app.clm(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "clm {args:?}: {text}");
    text
}

async fn newest_rotation(app: &TestApp, token: &str) -> Value {
    let r = app.get(token, "/api/v1/keys/rotations").await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()[0].clone()
}

async fn rotation_survives_a_kill_and_rolls_back(app: &mut TestApp) {
    run(app, &["bench", "keys-fill", "--count", &KEYS.to_string()]);
    let admin = app.admin_token().await;

    let r = app
        .post(&admin, "/api/v1/keys/kek/rotate", &json!({}))
        .await;
    assert_eq!(r.status(), 202, "{}", app.server_log());
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["status"], "running");
    assert_eq!(started["total_count"], KEYS);
    let r = app
        .post(&admin, "/api/v1/keys/kek/rotate", &json!({}))
        .await;
    assert_eq!(r.status(), 409, "a second rotation while one runs");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "rotation_running");

    // Kill the server while the rotation is midway.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = newest_rotation(app, &admin).await;
        let done = now["rewrapped_count"].as_i64().unwrap();
        if done > 0 && done < KEYS as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "never midway: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.kill_and_restart().await;
    let admin = app.admin_token().await;
    let interrupted = newest_rotation(app, &admin).await;
    assert_eq!(interrupted["id"], started["id"]);

    // The restarted server resumes and completes it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let finished = loop {
        let now = newest_rotation(app, &admin).await;
        if now["status"] == "completed" {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "never completed: {now}\n{}",
            app.server_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(finished["rewrapped_count"], KEYS, "{finished}");

    // Every key unwraps under the new KEK and matches its certificate.
    let report = run(app, &["keys", "verify"]);
    assert!(
        report.contains(&format!("{KEYS} of {KEYS} archived keys")),
        "{report}"
    );
    let check = run(app, &["hsm", "check"]);
    assert_eq!(check.matches("ok\tkek").count(), 2, "{check}");

    // Rollback inside the window: back under the first KEK, all intact.
    run(app, &["keys", "rollback-kek"]);
    let report = run(app, &["keys", "verify"]);
    assert!(
        report.contains(&format!("{KEYS} of {KEYS} archived keys")),
        "{report}"
    );
    let rotations: Value = app
        .get(&admin, "/api/v1/keys/rotations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rotations[0]["status"], "completed", "{rotations}");
    assert_eq!(rotations[0]["new_key_id"], started["old_key_id"]);
    assert_eq!(rotations[1]["status"], "rolled_back", "{rotations}");
    // Only one rollback per rotation.
    let out = app.clm(&["keys", "rollback-kek"]);
    assert!(!out.status.success());

    // The window of the rotation that was rolled back is spent.
    let r = app
        .post(&admin, "/api/v1/keys/kek/rollback", &json!({}))
        .await;
    assert_eq!(r.status(), 409);
}

fn token_secret_keys(app: &TestApp) -> String {
    app.pkcs11_tool(&["--list-objects", "--type", "secrkey"])
}

async fn old_kek_is_destroyed_after_the_window(app: &TestApp) {
    run(app, &["bench", "keys-fill", "--count", "20"]);
    assert!(token_secret_keys(app).contains("clm-kek-v1"));
    // The CLI rotates in the foreground.
    let out = run(app, &["keys", "rotate-kek"]);
    assert!(out.contains("20/20"), "{out}");

    let deadline = Instant::now() + Duration::from_secs(30);
    while token_secret_keys(app).contains("clm-kek-v1") {
        assert!(Instant::now() < deadline, "{}", app.server_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let objects = token_secret_keys(app);
    assert!(objects.contains("clm-kek-v2"), "{objects}");
    let check = run(app, &["hsm", "check"]);
    assert_eq!(check.matches("ok\tkek").count(), 1, "{check}");
    let report = run(app, &["keys", "verify"]);
    assert!(report.contains("20 of 20 archived keys"), "{report}");
    let out = app.clm(&["keys", "rollback-kek"]);
    assert!(
        !out.status.success(),
        "no rollback once the old KEK is gone"
    );
}
