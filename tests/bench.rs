//! The CI smoke run of the benchmark (docs/performance.md): `clm bench run
//! --quick` on each backend must finish, pass every correctness check it
//! makes, report every stage, and leave outputs that openssl accepts.
//! Speed is not judged here.
//!
//! `clm bench run` starts its own servers (its own token and databases),
//! so these tests do not use `TestApp`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::postgres_available;
use serde_json::Value;

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

fn smoke_run(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let markdown = dir.path().join("bench.md");
    let artifacts = dir.path().join("artifacts");
    let out = Command::new(env!("CARGO_BIN_EXE_clm"))
        .args(["bench", "run", "--quick", "--backend", backend])
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--artifacts")
        .arg(&artifacts)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clm bench run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["ok"], true, "{stdout}");
    let checks = report["checks"].as_array().unwrap();
    let failed: Vec<&Value> = checks.iter().filter(|c| c["ok"] != true).collect();
    assert!(failed.is_empty(), "failed checks: {failed:?}");
    // Every stage reported its checks and its figures.
    for stage in ["issue", "rsa", "ocsp", "audit", "list", "crl"] {
        assert!(
            checks
                .iter()
                .any(|c| c["stage"] == stage
                    && c["name"] == format!("stage {stage} ran to completion")),
            "stage {stage} did not run: {stdout}"
        );
    }
    let rows = report["rows"].as_array().unwrap();
    let figure = |prefix: &str| -> f64 {
        rows.iter()
            .find(|r| r["figure"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no figure `{prefix}`: {stdout}"))["value"]
            .as_f64()
            .unwrap()
    };
    for prefix in [
        "raw C_Sign P-256, 1 thread",
        "raw C_Sign RSA-2048, 2 threads",
        "issuance, P-256 CA",
        "issuance, RSA-2048 CA",
        "OCSP responses, no nonce",
        "audit verification",
        "list p99, q= serial",
        "server peak RSS",
    ] {
        assert!(figure(prefix) > 0.0, "figure `{prefix}` is not positive");
    }
    // Targets are compared (pass or miss), and beside their yardstick.
    let issuance = rows
        .iter()
        .find(|r| {
            r["figure"]
                .as_str()
                .unwrap()
                .starts_with("issuance, RSA-2048")
        })
        .unwrap();
    assert!(issuance["pass"].is_boolean(), "{issuance}");
    assert!(
        issuance["yardstick"]
            .as_str()
            .unwrap()
            .contains("raw C_Sign RSA-2048"),
        "{issuance}"
    );
    assert!(figure("CRL of 2,001 entries: size") > 0.0);
    assert!(report["machine"]["nproc"].as_u64().unwrap() > 0);
    let md = std::fs::read_to_string(&markdown).unwrap();
    assert!(md.contains("| backend | figure | value |"), "{md}");
    assert!(md.contains("issuance, P-256 CA"), "{md}");

    // What the run served, judged by openssl.
    let art = artifacts.join(backend);
    std::fs::write(
        art.join("chain.pem"),
        [
            std::fs::read_to_string(art.join("root.pem")).unwrap(),
            std::fs::read_to_string(art.join("ca.pem")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    for stage in ["issue", "rsa"] {
        let leaf = format!("{stage}-leaf.pem");
        let chain = format!("{stage}-leaf-chain.pem");
        let text = openssl(
            &["verify", "-CAfile", "root.pem", "-untrusted", &chain, &leaf],
            &art,
        );
        assert!(text.contains(": OK"), "{text}");
    }
    std::fs::write(
        art.join("crl-chain.pem"),
        [
            std::fs::read_to_string(art.join("root.pem")).unwrap(),
            std::fs::read_to_string(art.join("crl-ca.pem")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let text = openssl(
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "crl.der",
            "-CAfile",
            "crl-chain.pem",
            "-noout",
            "-verify",
            "-text",
        ],
        &art,
    );
    assert!(text.contains("verify OK"), "{text}");
    assert_eq!(text.matches("Serial Number:").count(), 2_001, "CRL entries");
    let text = openssl(
        &[
            "ocsp",
            "-reqin",
            "ocsp-request.der",
            "-respin",
            "ocsp-response.der",
            "-CAfile",
            "chain.pem",
            "-resp_text",
        ],
        &art,
    );
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(text.contains("Cert Status: good"), "{text}");
}

#[test]
fn quick_run_on_sqlite() {
    smoke_run("sqlite");
}

#[test]
fn quick_run_on_postgres() {
    if !postgres_available() {
        if std::env::var("CLM_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
            panic!(
                "PostgreSQL on 127.0.0.1:5432 is required (CLM_TEST_REQUIRE_POSTGRES=1) but unreachable"
            );
        }
        eprintln!("note: PostgreSQL unreachable; skipping the PostgreSQL smoke run");
        return;
    }
    smoke_run("postgres");
}
