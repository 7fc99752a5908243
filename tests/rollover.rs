//! CA rollover: new key and certificate under the same name; leaves under
//! the old and the new key both verify with openssl, a request approved
//! after the rollover is signed by the new key, the retired key keeps
//! answering for what it issued, and a root rollover's link certificate lets
//! chains to the new root validate for those who trust only the old one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{TestApp, ec_csr, openssl_verify as verify, write};
use serde_json::{Value, json};

on_both_backends! {
    intermediate_rollover_keeps_old_and_new_leaves_valid => intermediate_rollover;
    root_rollover_links_old_trust_to_the_new_key => root_rollover;
    repeated_rollovers_sign_with_the_parents_current_key => repeated_rollovers;
    concurrent_rollovers_leave_no_unused_key => concurrent_rollovers;
}

async fn issue_with(app: &TestApp, token: &str, profile: &str, name: &str) -> Value {
    let id = app
        .request_certificate(
            token,
            &json!({ "profile_id": profile, "csr_pem": ec_csr(&[name]) }),
        )
        .await;
    app.get_json(token, &format!("/api/v1/certificates/{id}"))
        .await
}

async fn ca(app: &TestApp, token: &str, id: &str) -> Value {
    app.get_json(token, &format!("/api/v1/cas/{id}")).await
}

async fn ca_of_kind(app: &TestApp, token: &str, kind: &str) -> Value {
    let cas: Value = app.get(token, "/api/v1/cas").await.json().await.unwrap();
    cas.as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == kind && c["status"] == "active")
        .unwrap()
        .clone()
}

fn pem(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap().to_string()
}

async fn intermediate_rollover(app: &TestApp) {
    let token = app.admin_token().await;
    let profile = app.default_profile_id(&token).await;
    let old = ca_of_kind(app, &token, "intermediate").await;
    let before = issue_with(app, &token, &profile, "before.clm.test").await;
    assert_eq!(before["ca_id"], old["id"]);
    // A request that waits for its approver across the rollover.
    let approval_profile = app
        .create_profile(
            &token,
            &json!({
                "name": "approved", "ca_id": old["id"],
                "key_algorithms": ["ecdsa-p256"], "allowed_dns_suffixes": ["clm.test"],
                "allow_ip_sans": false, "max_validity_days": 30,
                "extended_key_usages": ["serverAuth"], "required_approvals": 1,
                "allow_server_keygen": false
            }),
        )
        .await;
    let r = app
        .post(
            &token,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": approval_profile, "csr_pem": ec_csr(&["waiting.clm.test"]) }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let waiting = pem(&r.json().await.unwrap(), "id");
    let me: Value = app.get(&token, "/api/v1/me").await.json().await.unwrap();
    let (_, approver) = app
        .create_user(
            &token,
            &pem(&me, "organization_id"),
            "approver@clm.test",
            &["approver"],
        )
        .await;

    let r = app
        .post(
            &token,
            &format!("/api/v1/cas/{}/rollover", pem(&old, "id")),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let rolled: Value = r.json().await.unwrap();
    let new = &rolled["ca"];
    assert_ne!(new["id"], old["id"]);
    assert_eq!(rolled["retired_ca_id"], old["id"]);
    assert_eq!(new["name"], old["name"]);
    assert_eq!(new["subject"], old["subject"]);
    assert_ne!(new["certificate_pem"], old["certificate_pem"], "a new key");
    assert!(rolled.get("link_certificate_pem").is_none());
    assert_eq!(ca(app, &token, &pem(&old, "id")).await["status"], "retired");
    let again = app
        .post(
            &token,
            &format!("/api/v1/cas/{}/rollover", pem(&old, "id")),
            &json!({}),
        )
        .await;
    assert_eq!(again.status(), 409, "a retired CA is not rolled over again");

    // New issuance uses the new key; both leaves verify with their own
    // intermediate, and not with the other.
    let after = issue_with(app, &token, &profile, "after.clm.test").await;
    assert_eq!(after["ca_id"], new["id"]);
    // Approved now, the waiting request is signed by the new key too.
    let r = app
        .post(
            &approver,
            &format!("/api/v1/certificate-requests/{waiting}/approve"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", app.server_log());
    let approved: Value = r.json().await.unwrap();
    assert_eq!(approved["status"], "issued", "{approved}");
    assert_eq!(approved["ca_id"], new["id"], "{approved}");
    let late: Value = app
        .get(
            &token,
            &format!("/api/v1/certificates/{}", pem(&approved, "certificate_id")),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(late["ca_id"], new["id"]);
    let dir = tempfile::tempdir().unwrap();
    let root = app.root_pem();
    let (ok, text) = verify(
        dir.path(),
        &root,
        &pem(&old, "certificate_pem"),
        &pem(&before, "certificate_pem"),
    );
    assert!(ok, "old leaf: {text}");
    let (ok, text) = verify(
        dir.path(),
        &root,
        &pem(new, "certificate_pem"),
        &pem(&after, "certificate_pem"),
    );
    assert!(ok, "new leaf: {text}");
    let (ok, text) = verify(
        dir.path(),
        &root,
        &pem(new, "certificate_pem"),
        &pem(&late, "certificate_pem"),
    );
    assert!(ok, "leaf approved after the rollover: {text}");
    let (ok, _) = verify(
        dir.path(),
        &root,
        &pem(&old, "certificate_pem"),
        &pem(&after, "certificate_pem"),
    );
    assert!(!ok, "the new leaf is not signed by the old key");

    // The retired key still answers for what it issued: revoke the old
    // leaf, its CRL (the old CA's) lists it and verifies with the old
    // certificate; OCSP says revoked for it and good for the new one.
    let r = app
        .post(
            &token,
            &format!("/api/v1/certificates/{}/revoke", pem(&before, "id")),
            &json!({ "reason": "superseded" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let crl = app
        .client
        .get(format!("{}/crl/{}.crl", app.public, pem(&old, "id")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(dir.path().join("crl.der"), &crl).unwrap();
    let old_ca = write(dir.path(), "old-ca.pem", &pem(&old, "certificate_pem"));
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(dir.path().join("crl.der"))
        .arg("-CAfile")
        .arg(&old_ca)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("verify OK"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains(&pem(&before, "serial")),
        "{text}"
    );
    for (leaf, issuer, expect) in [(&before, &old, "revoked"), (&after, new, "good")] {
        let leaf_path = write(dir.path(), "l.pem", &pem(leaf, "certificate_pem"));
        let issuer_path = write(dir.path(), "i.pem", &pem(issuer, "certificate_pem"));
        let ca_file = write(
            dir.path(),
            "all.pem",
            &format!("{}{root}", pem(issuer, "certificate_pem")),
        );
        let out = Command::new("openssl")
            .args(["ocsp", "-issuer"])
            .arg(&issuer_path)
            .arg("-cert")
            .arg(&leaf_path)
            .args(["-url", &format!("{}/ocsp", app.public)])
            .arg("-CAfile")
            .arg(&ca_file)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("Response verify OK"), "{text}");
        assert!(text.contains(&format!("l.pem: {expect}")), "{text}");
    }

    // The token holds both keys and the registry knows them.
    let out = app.clm(&["hsm", "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

async fn root_rollover(app: &TestApp) {
    let token = app.admin_token().await;
    let old_root = ca_of_kind(app, &token, "root").await;
    let r = app
        .post(
            &token,
            &format!("/api/v1/cas/{}/rollover", pem(&old_root, "id")),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", app.server_log());
    let rolled: Value = r.json().await.unwrap();
    let new_root = &rolled["ca"];
    let link = pem(&rolled, "link_certificate_pem");

    // A new intermediate under the new root, and a leaf under it.
    let inter = app
        .create_intermediate(
            &token,
            &new_root["id"],
            "after-root-rollover",
            "clm Intermediate G2",
        )
        .await;
    let profile = app
        .create_profile(
            &token,
            &json!({
                "name": "g2",
                "ca_id": inter["id"],
                "key_algorithms": ["ecdsa-p256"],
                "allowed_dns_suffixes": ["clm.test"],
                "max_validity_days": 30,
                "extended_key_usages": ["serverAuth"]
            }),
        )
        .await;
    let leaf = issue_with(app, &token, &profile, "g2.clm.test").await;

    let dir = tempfile::tempdir().unwrap();
    let inter_pem = pem(&inter, "certificate_pem");
    // Trusting the new root: the plain chain.
    let (ok, text) = verify(
        dir.path(),
        &pem(new_root, "certificate_pem"),
        &inter_pem,
        &pem(&leaf, "certificate_pem"),
    );
    assert!(ok, "new root: {text}");
    // Trusting only the old root: through the link certificate.
    let (ok, text) = verify(
        dir.path(),
        &app.root_pem(),
        &format!("{inter_pem}{link}"),
        &pem(&leaf, "certificate_pem"),
    );
    assert!(ok, "old root and link: {text}");
    let (ok, _) = verify(
        dir.path(),
        &app.root_pem(),
        &inter_pem,
        &pem(&leaf, "certificate_pem"),
    );
    assert!(
        !ok,
        "without the link the old root does not vouch for the new key"
    );

    // Leaves of the existing intermediate (signed by the old root key)
    // still verify against the old root.
    let profile = app.default_profile_id(&token).await;
    let old_chain_leaf = issue_with(app, &token, &profile, "still.clm.test").await;
    let (ok, text) = verify(
        dir.path(),
        &app.root_pem(),
        &pem(&old_chain_leaf, "chain_pem"),
        &pem(&old_chain_leaf, "certificate_pem"),
    );
    assert!(ok, "{text}");
}

/// A root rolled over twice within the same second, then the intermediate
/// it had issued: each retired CA keeps a name of its own, and the
/// intermediate's new certificate is signed by the root's current key.
async fn repeated_rollovers(app: &TestApp) {
    let token = app.admin_token().await;
    let first = ca_of_kind(app, &token, "root").await;
    let second = app.rollover(&token, &pem(&first, "id")).await["ca"].clone();
    let third = app.rollover(&token, &pem(&second, "id")).await["ca"].clone();
    assert_eq!(third["name"], first["name"]);
    let retired = [
        ca(app, &token, &pem(&first, "id")).await,
        ca(app, &token, &pem(&second, "id")).await,
    ];
    for r in &retired {
        assert_eq!(r["status"], "retired");
        assert!(
            r["name"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}.retired-", pem(&first, "name"))),
            "{r}"
        );
    }
    assert_ne!(retired[0]["name"], retired[1]["name"]);

    let old_inter = ca_of_kind(app, &token, "intermediate").await;
    assert_eq!(old_inter["parent_id"], first["id"]);
    let new_inter = app.rollover(&token, &pem(&old_inter, "id")).await["ca"].clone();
    assert_eq!(new_inter["parent_id"], third["id"]);
    let profile = app.default_profile_id(&token).await;
    let leaf = issue_with(app, &token, &profile, "current.clm.test").await;
    assert_eq!(leaf["ca_id"], new_inter["id"]);
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = verify(
        dir.path(),
        &pem(&third, "certificate_pem"),
        &pem(&new_inter, "certificate_pem"),
        &pem(&leaf, "certificate_pem"),
    );
    assert!(ok, "the current root: {text}");
    let (ok, _) = verify(
        dir.path(),
        &pem(&first, "certificate_pem"),
        &pem(&new_inter, "certificate_pem"),
        &pem(&leaf, "certificate_pem"),
    );
    assert!(!ok, "the first root key did not sign the new intermediate");
}

/// The CA signing keys: registered and not destroyed (clm_secure), and
/// private keys labelled as CA keys in the token (as OpenSC lists them).
fn ca_keys(app: &TestApp) -> (usize, usize) {
    let registered = app.sql(
        "secure",
        "SELECT count(*) FROM encryption_keys WHERE purpose = 'ca_signing' AND status <> 'destroyed'",
    );
    let listing = app.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    let in_token = listing
        .lines()
        .filter(|l| l.trim().starts_with("label:") && l.contains("clm-ca-"))
        .count();
    (registered.parse().unwrap(), in_token)
}

/// Several rollovers of one CA at once (a double click, two operators):
/// exactly one wins, and the keys the others generated leave the token and
/// are marked destroyed in the registry, audited.
async fn concurrent_rollovers(app: &TestApp) {
    let token = app.admin_token().await;
    let old = ca_of_kind(app, &token, "intermediate").await;
    let path = format!("/api/v1/cas/{}/rollover", pem(&old, "id"));
    let body = json!({});
    let answers =
        futures_util::future::join_all((0..4).map(|_| app.post(&token, &path, &body))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409], "{}", app.server_log());

    let cas: usize = app
        .sql("secure", "SELECT count(*) FROM certificate_authorities")
        .parse()
        .unwrap();
    assert_eq!(ca_keys(app), (cas, cas), "one key per CA, in both places");
    let destroyed: usize = app
        .sql(
            "secure",
            "SELECT count(*) FROM encryption_keys WHERE purpose = 'ca_signing' AND status = 'destroyed'",
        )
        .parse()
        .unwrap();
    // The requests overlap (each generates its key before any is stored),
    // so the losers made keys to destroy.
    assert!(destroyed >= 1, "no rollover lost after making its key");
    let audit: Value = app
        .get(
            &token,
            "/api/v1/audit?log=secure&action=key.destroyed&limit=100",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        audit["items"].as_array().map(Vec::len),
        Some(destroyed),
        "{audit}"
    );
    let out = app.clm(&["hsm", "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
