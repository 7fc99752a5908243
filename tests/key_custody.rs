//! Server-side key generation: the key is generated in the HSM, the
//! requester gets a PKCS#12 that `openssl pkcs12` opens, the key matches the
//! certificate, and the databases hold it only wrapped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::{Backend, TestApp, openssl};
use serde_json::{Value, json};

on_both_backends! {
    generated_keys_come_back_as_pkcs12_once => generated_keys_come_back_as_pkcs12;
    bad_key_generation_requests_are_refused => bad_key_generation_requests;
    archived_keys_come_back_only_after_approval => recovery_needs_permission_and_approval;
}

async fn keygen_profile(app: &TestApp, token: &str, extra: Value) -> String {
    let cas: Value = app.get(token, "/api/v1/cas").await.json().await.unwrap();
    let intermediate = cas
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "intermediate")
        .unwrap()["id"]
        .clone();
    let mut body = json!({
        "name": format!("keygen-{}", uuid::Uuid::new_v4()),
        "ca_id": intermediate,
        "key_algorithms": ["ecdsa-p256", "rsa-2048"],
        "allowed_dns_suffixes": ["clm.test"],
        "max_validity_days": 90,
        "extended_key_usages": ["clientAuth"],
        "allow_server_keygen": true
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    app.create_profile(token, &body).await
}

async fn generated_keys_come_back_as_pkcs12(app: &TestApp) {
    let token = app.admin_token().await;
    let profile = keygen_profile(app, &token, json!({})).await;
    let pass = "a long enough passphrase";
    for alg in ["ecdsa-p256", "rsa-2048"] {
        let r = app
            .client
            .post(app.url("/api/v1/certificate-requests"))
            .bearer_auth(&token)
            .header("idempotency-key", format!("keygen-{alg}"))
            .json(&json!({
                "profile_id": profile,
                "subject": { "common_name": "device.clm.test" },
                "sans": ["device.clm.test"],
                "key_algorithm": alg,
                "passphrase": pass
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "issued");
        let p12 = base64::engine::general_purpose::STANDARD
            .decode(body["pkcs12"].as_str().unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.p12"), &p12).unwrap();
        let passin = format!("pass:{pass}");

        // openssl opens it; the key inside matches the certificate clm
        // stored, and the chain is there.
        let (ok, text) = openssl(
            &[
                "pkcs12", "-in", "k.p12", "-passin", &passin, "-nodes", "-out", "all.pem",
            ],
            dir.path(),
        );
        assert!(ok, "{text}");
        let (ok, text) = openssl(
            &[
                "pkcs12", "-in", "k.p12", "-passin", &passin, "-nocerts", "-nodes", "-out",
                "key.pem",
            ],
            dir.path(),
        );
        assert!(ok, "{text}");
        let (ok, from_key) = openssl(&["pkey", "-in", "key.pem", "-pubout"], dir.path());
        assert!(ok, "{from_key}");
        let cert: Value = app
            .get(
                &token,
                &format!(
                    "/api/v1/certificates/{}",
                    body["certificate_id"].as_str().unwrap()
                ),
            )
            .await
            .json()
            .await
            .unwrap();
        std::fs::write(
            dir.path().join("cert.pem"),
            cert["certificate_pem"].as_str().unwrap(),
        )
        .unwrap();
        let (ok, from_cert) = openssl(
            &["x509", "-in", "cert.pem", "-pubkey", "-noout"],
            dir.path(),
        );
        assert!(ok, "{from_cert}");
        assert_eq!(from_key, from_cert, "{alg}: the key is the certificate's");
        let all = std::fs::read_to_string(dir.path().join("all.pem")).unwrap();
        assert_eq!(
            all.matches("BEGIN CERTIFICATE").count(),
            3,
            "leaf, intermediate, root"
        );
        let (ok, _) = openssl(
            &[
                "pkcs12",
                "-in",
                "k.p12",
                "-passin",
                "pass:not the passphrase",
                "-nodes",
            ],
            dir.path(),
        );
        assert!(!ok, "a wrong passphrase opens nothing");

        // A retry gets the request, never the key a second time.
        let r = app
            .client
            .post(app.url("/api/v1/certificate-requests"))
            .bearer_auth(&token)
            .header("idempotency-key", format!("keygen-{alg}"))
            .json(&json!({
                "profile_id": profile,
                "subject": { "common_name": "device.clm.test" },
                "sans": ["device.clm.test"],
                "key_algorithm": alg,
                "passphrase": pass
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let replay: Value = r.json().await.unwrap();
        assert_eq!(replay["id"], body["id"]);
        assert!(replay.get("pkcs12").is_none());

        // The private key is nowhere in plain form in the databases: not its
        // secret (the EC scalar, the first RSA prime), which is what the
        // PKCS#8 holds beyond the public key the certificate also carries.
        let (ok, text) = openssl(&["pkey", "-in", "key.pem", "-text", "-noout"], dir.path());
        assert!(ok, "{text}");
        let secret = secret_bytes(
            &text,
            if alg == "rsa-2048" {
                "prime1:"
            } else {
                "priv:"
            },
        );
        // A scalar may start with zero bytes; 24 of 32 is still plenty.
        assert!(secret.len() >= 24, "{alg}: {text}");
        if app.backend == Backend::Sqlite {
            let mut scanned = 0;
            for entry in std::fs::read_dir(app.data_dir.path()).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if !name.starts_with("clm_") {
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                scanned += bytes.len();
                // Any 16-byte window of the secret would be a leak.
                assert!(
                    !secret
                        .windows(16)
                        .any(|w| bytes.windows(16).any(|b| b == w)),
                    "{name} contains private key bytes"
                );
            }
            assert!(scanned > 0, "database files were scanned");
        }
    }
}

/// The hex block after `label` in `openssl pkey -text` output, as bytes
/// (without the sign byte).
fn secret_bytes(text: &str, label: &str) -> Vec<u8> {
    let start = text.find(label).unwrap() + label.len();
    let hex: String = text[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .flat_map(|l| l.trim().split(':'))
        .filter(|h| !h.is_empty())
        .collect();
    let bytes = hex::decode(hex).unwrap();
    match bytes.split_first() {
        Some((0, rest)) => rest.to_vec(),
        _ => bytes,
    }
}

async fn bad_key_generation_requests(app: &TestApp) {
    let token = app.admin_token().await;
    let profile = keygen_profile(app, &token, json!({})).await;
    let post = |body: Value| {
        let token = token.clone();
        async move {
            app.post(&token, "/api/v1/certificate-requests", &body)
                .await
        }
    };
    let base = json!({
        "profile_id": profile,
        "subject": { "common_name": "x.clm.test" },
        "sans": ["x.clm.test"],
        "key_algorithm": "ecdsa-p256",
        "passphrase": "a long enough passphrase"
    });
    let cases = [
        ("passphrase", json!("eleven char"), "passphrase_too_short"),
        ("sans", json!(["evil.example.com"]), "profile_violation"),
        ("key_algorithm", json!("ed25519"), "profile_violation"),
        (
            "csr_pem",
            json!("-----BEGIN CERTIFICATE REQUEST-----"),
            "csr_or_server_key",
        ),
    ];
    for (field, value, code) in cases {
        let mut body = base.clone();
        body[field] = value;
        let r = post(body).await;
        assert_eq!(r.status(), 400, "{field}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["code"], code, "{field}: {problem}");
    }
    // The default profile does not generate keys.
    let mut body = base.clone();
    body["profile_id"] = json!(app.default_profile_id(&token).await);
    let r = post(body).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "server_keygen_not_allowed"
    );
    // Nothing was issued by the refusals.
    let list: Value = app
        .get(&token, "/api/v1/certificates?q=x.clm.test")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 0, "{list}");
}

async fn recovery_needs_permission_and_approval(app: &TestApp) {
    let admin = app.admin_token().await;
    let org = app.create_org(&admin, "Custody").await;
    let (_, owner) = app
        .create_user(&admin, &org, "owner@custody.test", &["requester"])
        .await;
    let (_, officer) = app
        .create_user(&admin, &org, "officer@custody.test", &["ca_admin"])
        .await;
    let (_, approver) = app
        .create_user(&admin, &org, "approver@custody.test", &["approver"])
        .await;
    let archived = keygen_profile(app, &officer, json!({})).await;
    let not_archived = keygen_profile(app, &officer, json!({ "allow_key_archival": false })).await;
    let generate = |profile: String| {
        let owner = owner.clone();
        async move {
            let r = app
                .post(
                    &owner,
                    "/api/v1/certificate-requests",
                    &json!({
                        "profile_id": profile,
                        "sans": ["vault.clm.test"],
                        "passphrase": "the owner's passphrase"
                    }),
                )
                .await;
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["certificate_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let cert = generate(archived).await;
    let path = format!("/api/v1/certificates/{cert}/private-key");
    let body = json!({ "passphrase": "the officer's passphrase" });

    // Without the permission: refused. With it: a recovery waits.
    assert_eq!(app.post(&owner, &path, &body).await.status(), 403);
    let r = app.post(&officer, &path, &body).await;
    assert_eq!(r.status(), 202);
    let pending: Value = r.json().await.unwrap();
    assert_eq!(pending["status"], "pending_approval");
    assert!(pending.get("pkcs12").is_none());
    let again: Value = app.post(&officer, &path, &body).await.json().await.unwrap();
    assert_eq!(again["id"], pending["id"], "one open recovery at a time");
    let short = app
        .post(&officer, &path, &json!({ "passphrase": "too short" }))
        .await;
    assert_eq!(short.status(), 400);

    // Nobody approves their own recovery; a requester cannot approve.
    let approve = format!(
        "/api/v1/key-recoveries/{}/approve",
        pending["id"].as_str().unwrap()
    );
    assert_eq!(app.post(&officer, &approve, &json!({})).await.status(), 403);
    assert_eq!(app.post(&owner, &approve, &json!({})).await.status(), 403);
    let r = app.post(&approver, &approve, &json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "approved");
    assert_eq!(
        app.post(&approver, &approve, &json!({})).await.status(),
        409,
        "decided once"
    );

    // Delivered once: a PKCS#12 whose key is the certificate's.
    let r = app.post(&officer, &path, &body).await;
    assert_eq!(r.status(), 200);
    let delivered: Value = r.json().await.unwrap();
    assert_eq!(delivered["status"], "completed");
    let p12 = base64::engine::general_purpose::STANDARD
        .decode(delivered["pkcs12"].as_str().unwrap())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.p12"), &p12).unwrap();
    let (ok, text) = openssl(
        &[
            "pkcs12",
            "-in",
            "r.p12",
            "-passin",
            "pass:the officer's passphrase",
            "-nocerts",
            "-nodes",
            "-out",
            "key.pem",
        ],
        dir.path(),
    );
    assert!(ok, "{text}");
    let (_, from_key) = openssl(&["pkey", "-in", "key.pem", "-pubout"], dir.path());
    let cert_json: Value = app
        .get(&officer, &format!("/api/v1/certificates/{cert}"))
        .await
        .json()
        .await
        .unwrap();
    std::fs::write(
        dir.path().join("cert.pem"),
        cert_json["certificate_pem"].as_str().unwrap(),
    )
    .unwrap();
    let (_, from_cert) = openssl(
        &["x509", "-in", "cert.pem", "-pubkey", "-noout"],
        dir.path(),
    );
    assert!(from_key.contains("BEGIN PUBLIC KEY"), "{from_key}");
    assert_eq!(from_key, from_cert);
    let r = app.post(&officer, &path, &body).await;
    assert_eq!(r.status(), 202, "a second copy needs a second approval");
    let second: Value = r.json().await.unwrap();
    assert_ne!(second["id"], pending["id"]);
    let decide = |what: &str| {
        format!(
            "/api/v1/key-recoveries/{}/{what}",
            second["id"].as_str().unwrap()
        )
    };
    assert_eq!(
        app.post(&approver, &decide("maybe"), &json!({}))
            .await
            .status(),
        404
    );
    let r = app.post(&approver, &decide("reject"), &json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "rejected");
    let r = app.post(&officer, &path, &body).await;
    assert_eq!(r.status(), 202, "a rejected recovery delivers nothing");

    // A profile that forbids archival keeps nothing to recover.
    let kept_nothing = generate(not_archived).await;
    let r = app
        .post(
            &officer,
            &format!("/api/v1/certificates/{kept_nothing}/private-key"),
            &body,
        )
        .await;
    assert_eq!(r.status(), 404);
}
