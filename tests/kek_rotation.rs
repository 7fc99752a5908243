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
];
const KEYS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let mut app = TestApp::start_with(Backend::Sqlite, SETTINGS)
        .await
        .unwrap();
    rotation_survives_a_kill_and_rolls_back(&mut app).await;
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

    // Server-side key generation goes on under the restored KEK.
    let r = app
        .post(&admin, "/api/v1/keys/kek/rollback", &json!({}))
        .await;
    assert_eq!(r.status(), 409);
}
