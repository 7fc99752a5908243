//! Identity and tenancy: who may call what (a role × endpoint matrix),
//! organisations that cannot see each other, escalation attempts, lockout
//! and its release, and tokens that die at once on logout, deactivation,
//! password change and revocation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, TestApp, ec_csr};
use serde_json::{Value, json};

on_both_backends! {
    each_role_gets_exactly_its_endpoints => role_matrix;
    organisations_cannot_see_each_other => tenant_isolation;
    escalation_attempts_are_refused => escalation;
    tokens_die_at_once => token_invalidation;
    api_keys_act_with_a_subset_of_roles => api_keys;
    hostile_text_is_refused_or_stored_verbatim => hostile_text;
    operators_add_users_from_the_host => cli_user_add;
}

async fn cli_user_add(app: &TestApp) {
    let out = app.clm(&[
        "user",
        "add",
        "--email",
        "Auditor@CLI.test",
        "--role",
        "auditor",
        "--role",
        "requester",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let password = stdout
        .lines()
        .find_map(|l| l.split("(shown once): ").nth(1))
        .expect("generated password printed once");
    let token = app.login("auditor@cli.test", password.trim()).await;
    let me: Value = app.get(&token, "/api/v1/me").await.json().await.unwrap();
    assert_eq!(me["roles"], json!(["requester", "auditor"]));
    assert_eq!(me["organization"]["slug"], "system");

    let out = app.clm_with(
        &[
            "user",
            "add",
            "--email",
            "ops@cli.test",
            "--role",
            "ca_admin",
        ],
        &[("CLM_USER_PASSWORD", PASSWORD)],
    );
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(PASSWORD));
    app.login("ops@cli.test", PASSWORD).await;

    // Bad input is named and creates nothing.
    for (args, why) in [
        (
            vec!["user", "add", "--email", "x@cli.test", "--role", "root"],
            "unknown role",
        ),
        (
            vec![
                "user",
                "add",
                "--email",
                "x@cli.test",
                "--role",
                "auditor",
                "--org",
                "nope",
            ],
            "unknown organisation",
        ),
        (
            vec![
                "user",
                "add",
                "--email",
                "ops@cli.test",
                "--role",
                "auditor",
            ],
            "duplicate email",
        ),
    ] {
        let out = app.clm(&args);
        assert!(!out.status.success(), "{why}");
    }
    let out = app.clm_with(
        &[
            "user",
            "add",
            "--email",
            "weak@cli.test",
            "--role",
            "auditor",
        ],
        &[("CLM_USER_PASSWORD", "short")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 12"));
}

const PASSWORD: &str = "a sufficiently long passphrase";

async fn status(r: reqwest::Response) -> u16 {
    r.status().as_u16()
}

async fn role_matrix(app: &TestApp) {
    let admin = app.admin_token().await;
    let org = app.create_org(&admin, "Matrix Org").await;
    let root = app.root_ca_id(&admin).await;
    let profile = app.default_profile_id(&admin).await;

    let roles = [
        "super_admin",
        "org_admin",
        "ca_admin",
        "approver",
        "requester",
        "auditor",
    ];
    let mut tokens = Vec::new();
    for role in roles {
        let (_, token) = app
            .create_user(&admin, &org, &format!("{role}@matrix.test"), &[role])
            .await;
        tokens.push((role, token));
    }

    // Expected status per role, in the order of `roles`.
    let mut n = 0;
    for (role, token) in &tokens {
        let i = roles.iter().position(|r| r == role).unwrap();
        let allowed = |set: &[&str]| set.contains(role);
        n += 1;
        let cells: Vec<(&str, u16, u16)> = vec![
            ("GET /organizations", status(app.get(token, "/api/v1/organizations").await).await, if allowed(&["super_admin"]) { 200 } else { 403 }),
            (
                "POST /organizations",
                status(app.post(token, "/api/v1/organizations", &json!({ "name": format!("Org {n} by {role}") })).await).await,
                if allowed(&["super_admin"]) { 201 } else { 403 },
            ),
            ("GET /users", status(app.get(token, "/api/v1/users").await).await, if allowed(&["super_admin", "org_admin"]) { 200 } else { 403 }),
            (
                "POST /users",
                status(
                    app.post(
                        token,
                        "/api/v1/users",
                        &json!({ "email": format!("new{i}@matrix.test"), "password": PASSWORD, "roles": ["requester"] }),
                    )
                    .await,
                )
                .await,
                if allowed(&["super_admin", "org_admin"]) { 201 } else { 403 },
            ),
            (
                "POST /profiles",
                status(
                    app.post(
                        token,
                        "/api/v1/profiles",
                        &json!({
                            "name": format!("profile-{role}"),
                            "ca_id": root,
                            "key_algorithms": ["ecdsa-p256"],
                            "allowed_dns_suffixes": ["matrix.test"],
                            "max_validity_days": 30,
                            "extended_key_usages": ["clientAuth"]
                        }),
                    )
                    .await,
                )
                .await,
                if allowed(&["super_admin", "ca_admin"]) { 201 } else { 403 },
            ),
            (
                "POST /cas",
                status(
                    app.post(
                        token,
                        "/api/v1/cas",
                        &json!({
                            "name": format!("ca-by-{role}"),
                            "kind": "intermediate",
                            "parent_id": root,
                            "subject": format!("{role} issuing CA"),
                            "key_algorithm": "ecdsa-p256",
                            "validity_days": 365
                        }),
                    )
                    .await,
                )
                .await,
                if allowed(&["super_admin", "ca_admin"]) { 201 } else { 403 },
            ),
            (
                "POST /certificate-requests",
                status(
                    app.post(
                        token,
                        "/api/v1/certificate-requests",
                        &json!({ "profile_id": profile, "csr_pem": ec_csr(&[&format!("{i}.matrix.test")]) }),
                    )
                    .await,
                )
                .await,
                if allowed(&["super_admin", "requester"]) { 201 } else { 403 },
            ),
            ("GET /cas", status(app.get(token, "/api/v1/cas").await).await, 200),
            ("GET /certificates", status(app.get(token, "/api/v1/certificates").await).await, 200),
            ("GET /me", status(app.get(token, "/api/v1/me").await).await, 200),
            (
                "POST /api-keys",
                status(app.post(token, "/api/v1/api-keys", &json!({ "name": "k", "roles": [role] })).await).await,
                201,
            ),
        ];
        for (cell, got, want) in cells {
            assert_eq!(got, want, "{role} × {cell}");
        }
    }
}

async fn tenant_isolation(app: &TestApp) {
    let admin = app.admin_token().await;
    let (org_a, org_b) = (
        app.create_org(&admin, "Alpha").await,
        app.create_org(&admin, "Beta").await,
    );
    let (_, a_admin) = app
        .create_user(
            &admin,
            &org_a,
            "admin@alpha.test",
            &["org_admin", "ca_admin", "requester"],
        )
        .await;
    let (b_user, b_admin) = app
        .create_user(
            &admin,
            &org_b,
            "admin@beta.test",
            &["org_admin", "ca_admin", "requester"],
        )
        .await;

    // Beta owns a CA, a profile, a request, a certificate and an API key.
    let root = app.root_ca_id(&b_admin).await;
    let ca = app
        .create_intermediate(&b_admin, &root, "beta-ca", "Beta CA")
        .await;
    let profile: Value = app
        .post(
            &b_admin,
            "/api/v1/profiles",
            &json!({ "name": "beta-tls", "ca_id": ca["id"], "key_algorithms": ["ecdsa-p256"],
                     "allowed_dns_suffixes": ["beta.test"], "max_validity_days": 30, "extended_key_usages": ["serverAuth"] }),
        )
        .await
        .json()
        .await
        .unwrap();
    let request: Value = app
        .post(
            &b_admin,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": profile["id"], "csr_pem": ec_csr(&["www.beta.test"]) }),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(request["status"], "issued", "{request}");
    let key: Value = app
        .post(
            &b_admin,
            "/api/v1/api-keys",
            &json!({ "name": "beta-ci", "roles": ["requester"] }),
        )
        .await
        .json()
        .await
        .unwrap();

    // Alpha gets 404 for every one of Beta's objects…
    let paths = [
        format!("/api/v1/cas/{}", ca["id"].as_str().unwrap()),
        format!(
            "/api/v1/certificate-requests/{}",
            request["id"].as_str().unwrap()
        ),
        format!(
            "/api/v1/certificates/{}",
            request["certificate_id"].as_str().unwrap()
        ),
        format!("/api/v1/users/{b_user}"),
    ];
    for path in &paths {
        assert_eq!(app.get(&a_admin, path).await.status(), 404, "{path}");
        assert_eq!(
            app.get(&b_admin, path).await.status(),
            200,
            "{path} for its owner"
        );
    }
    let r = app
        .client
        .delete(app.url(&format!("/api/v1/api-keys/{}", key["id"].as_str().unwrap())))
        .bearer_auth(&a_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "another organisation's API key");
    let r = app
        .post(
            &a_admin,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": profile["id"], "csr_pem": ec_csr(&["x.beta.test"]) }),
        )
        .await;
    assert_eq!(r.status(), 404, "another organisation's profile");
    let r = app
        .post(&a_admin, "/api/v1/profiles", &json!({ "name": "steal", "ca_id": ca["id"], "key_algorithms": ["ecdsa-p256"],
                                                     "max_validity_days": 1, "extended_key_usages": ["serverAuth"] }))
        .await;
    assert_eq!(r.status(), 404, "another organisation's CA");
    let r = app
        .post(
            &a_admin,
            &format!("/api/v1/users/{b_user}/deactivate"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 404);

    // …and never sees them in lists or counts.
    let text = |v: &Value| v.to_string();
    let lists = [
        "/api/v1/cas",
        "/api/v1/profiles",
        "/api/v1/certificate-requests",
        "/api/v1/certificates",
        "/api/v1/users",
    ];
    for path in lists {
        let v: Value = app.get(&a_admin, path).await.json().await.unwrap();
        for id in [
            &ca["id"],
            &profile["id"],
            &request["id"],
            &request["certificate_id"],
        ] {
            assert!(
                !text(&v).contains(id.as_str().unwrap()),
                "{path} shows Beta's {id}"
            );
        }
        assert!(!text(&v).contains("beta.test"), "{path} shows Beta's names");
        if let Some(total) = v.get("total") {
            assert_eq!(total, 0, "{path} counts Beta's objects");
        }
    }
    let keys: Value = app
        .get(&a_admin, "/api/v1/api-keys")
        .await
        .json()
        .await
        .unwrap();
    assert!(!text(&keys).contains("beta-ci"));
}

async fn escalation(app: &TestApp) {
    let admin = app.admin_token().await;
    let (org_a, org_b) = (
        app.create_org(&admin, "Gamma").await,
        app.create_org(&admin, "Delta").await,
    );
    let (_, org_admin) = app
        .create_user(&admin, &org_a, "oa@gamma.test", &["org_admin"])
        .await;
    let (_, requester) = app
        .create_user(&admin, &org_a, "req@gamma.test", &["requester"])
        .await;

    let attempts = [
        (
            "org_admin grants super_admin",
            &org_admin,
            json!({ "email": "x1@gamma.test", "password": PASSWORD, "roles": ["super_admin"] }),
        ),
        (
            "org_admin creates a user in another organisation",
            &org_admin,
            json!({ "email": "x2@delta.test", "password": PASSWORD, "roles": ["requester"], "organization_id": org_b }),
        ),
        (
            "requester creates a user",
            &requester,
            json!({ "email": "x3@gamma.test", "password": PASSWORD, "roles": ["requester"] }),
        ),
    ];
    for (what, token, body) in attempts {
        let r = app.post(token, "/api/v1/users", &body).await;
        assert_eq!(r.status(), 403, "{what}");
    }
    let r = app
        .post(
            &requester,
            "/api/v1/api-keys",
            &json!({ "name": "more", "roles": ["requester", "ca_admin"] }),
        )
        .await;
    assert_eq!(r.status(), 403, "API key with a role its creator lacks");
    let r = app
        .post(
            &org_admin,
            "/api/v1/organizations",
            &json!({ "name": "Mine Now" }),
        )
        .await;
    assert_eq!(r.status(), 403, "org_admin creates an organisation");

    // Nothing was created by the refused attempts.
    let users: Value = app.get(&admin, "/api/v1/users").await.json().await.unwrap();
    for email in ["x1@gamma.test", "x2@delta.test", "x3@gamma.test"] {
        assert!(!users.to_string().contains(email), "{email} exists");
    }
    // A duplicate e-mail is a conflict, not a second account.
    let r = app
        .post(
            &org_admin,
            "/api/v1/users",
            &json!({ "email": "REQ@gamma.test", "password": PASSWORD, "roles": ["requester"] }),
        )
        .await;
    assert_eq!(r.status(), 409);
}

async fn token_invalidation(app: &TestApp) {
    let admin = app.admin_token().await;
    let org = app.create_org(&admin, "Epsilon").await;
    let (user, token) = app
        .create_user(&admin, &org, "u@epsilon.test", &["requester"])
        .await;
    let second_session = app.login("u@epsilon.test", PASSWORD).await;
    let key: Value = app
        .post(
            &token,
            "/api/v1/api-keys",
            &json!({ "name": "ci", "roles": ["requester"] }),
        )
        .await
        .json()
        .await
        .unwrap();
    let key_token = key["token"].as_str().unwrap().to_string();
    assert_eq!(app.get(&key_token, "/api/v1/me").await.status(), 200);

    // A password change ends every session and key of the user.
    let r = app
        .post(
            &token,
            "/api/v1/me/password",
            &json!({ "current_password": PASSWORD, "new_password": "another long passphrase" }),
        )
        .await;
    assert_eq!(r.status(), 204);
    for t in [&token, &second_session, &key_token] {
        assert_eq!(app.get(t, "/api/v1/me").await.status(), 401);
    }
    let token = app.login("u@epsilon.test", "another long passphrase").await;
    assert_eq!(app.get(&token, "/api/v1/me").await.status(), 200);

    // Deactivation ends them at once, and login is refused afterwards.
    let r = app
        .post(
            &admin,
            &format!("/api/v1/users/{user}/deactivate"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(app.get(&token, "/api/v1/me").await.status(), 401);
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "email": "u@epsilon.test", "password": "another long passphrase" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .post(
            &admin,
            &format!("/api/v1/users/{user}/deactivate"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 409, "deactivating twice");
}

async fn api_keys(app: &TestApp) {
    let admin = app.admin_token().await;
    let org = app.create_org(&admin, "Zeta").await;
    let (_, token) = app
        .create_user(&admin, &org, "ops@zeta.test", &["requester", "ca_admin"])
        .await;
    let key: Value = app
        .post(
            &token,
            "/api/v1/api-keys",
            &json!({ "name": "pipeline", "roles": ["requester"] }),
        )
        .await
        .json()
        .await
        .unwrap();
    let secret = key["token"].as_str().unwrap();
    assert!(secret.starts_with("clm_k_"));

    // The key requests certificates but cannot administer profiles.
    let profile = app.default_profile_id(secret).await;
    let r = app
        .post(
            secret,
            "/api/v1/certificate-requests",
            &json!({ "profile_id": profile, "csr_pem": ec_csr(&["ci.zeta.test"]) }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = app.post(secret, "/api/v1/profiles", &json!({ "name": "p", "ca_id": uuid::Uuid::new_v4(), "key_algorithms": ["ecdsa-p256"],
                                                       "max_validity_days": 1, "extended_key_usages": ["serverAuth"] })).await;
    assert_eq!(r.status(), 403);

    // The token is shown once: the list has its prefix and last use, not the token.
    let keys: Value = app
        .get(&token, "/api/v1/api-keys")
        .await
        .json()
        .await
        .unwrap();
    assert!(!keys.to_string().contains(secret));
    assert!(keys[0]["last_used_at"].is_string(), "{keys}");
    assert!(secret.starts_with(keys[0]["token_prefix"].as_str().unwrap()));

    // Revocation takes effect at once; a second revocation is a conflict.
    let path = format!("/api/v1/api-keys/{}", key["id"].as_str().unwrap());
    let r = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(app.get(secret, "/api/v1/me").await.status(), 401);
    let r = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // Expiry in the past is refused.
    let r = app
        .post(
            &token,
            "/api/v1/api-keys",
            &json!({ "name": "old", "roles": ["requester"], "expires_at": "2020-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(r.status(), 400);
}

async fn hostile_text(app: &TestApp) {
    let admin = app.admin_token().await;
    let sql = "x'); DROP TABLE users; --";
    // SQL-looking text is either refused as invalid or stored verbatim.
    let r = app
        .post(&admin, "/api/v1/organizations", &json!({ "name": sql }))
        .await;
    assert_eq!(r.status(), 201);
    let orgs: Value = app
        .get(&admin, "/api/v1/organizations")
        .await
        .json()
        .await
        .unwrap();
    assert!(orgs.as_array().unwrap().iter().any(|o| o["name"] == sql));
    for body in [
        json!({ "email": sql, "password": PASSWORD, "roles": ["requester"] }),
        json!({ "email": "ok@x.test", "password": PASSWORD, "roles": ["requester"], "display_name": "\u{0007}bell" }),
        json!({ "email": "ok@x.test", "password": PASSWORD, "roles": ["root"] }),
    ] {
        let r = app.post(&admin, "/api/v1/users", &body).await;
        assert_eq!(r.status(), 400, "{body}");
    }
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "email": sql, "password": sql }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // 100 KB in any text field is refused before it is read.
    let big = "a".repeat(100 * 1024);
    for (path, body) in [
        ("/api/v1/organizations", json!({ "name": big })),
        (
            "/api/v1/users",
            json!({ "email": "b@x.test", "password": big, "roles": ["requester"] }),
        ),
        (
            "/api/v1/auth/login",
            json!({ "email": big, "password": "x" }),
        ),
        (
            "/api/v1/api-keys",
            json!({ "name": big, "roles": ["super_admin"] }),
        ),
    ] {
        let r = app.post(&admin, path, &body).await;
        assert_eq!(r.status(), 413, "{path}");
    }
    // The users table is still there.
    assert_eq!(app.get(&admin, "/api/v1/users").await.status(), 200);
}

/// Lockout after the configured failures; released by an administrator or
/// when the window passes. Login attempts per source are rate limited.
async fn lockout(app: &TestApp) {
    let admin = app.admin_token().await;
    let org = app.create_org(&admin, "Eta").await;
    let (user, _) = app
        .create_user(&admin, &org, "victim@eta.test", &["requester"])
        .await;
    let login = |pw: &'static str| {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({ "email": "victim@eta.test", "password": pw }))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(login("wrong password!!").await.unwrap().status(), 401);
    }
    // Locked: even the right password is refused, with the same answer.
    assert_eq!(login(PASSWORD).await.unwrap().status(), 401);
    let r = app
        .post(&admin, &format!("/api/v1/users/{user}/unlock"), &json!({}))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(login(PASSWORD).await.unwrap().status(), 200);

    for _ in 0..3 {
        assert_eq!(login("wrong password!!").await.unwrap().status(), 401);
    }
    assert_eq!(login(PASSWORD).await.unwrap().status(), 401);
    tokio::time::sleep(std::time::Duration::from_secs(LOCKOUT_SECONDS + 1)).await;
    assert_eq!(
        login(PASSWORD).await.unwrap().status(),
        200,
        "released after the window"
    );

    // The per-source limit (20 a minute here) answers 429 with Retry-After.
    let mut limited = None;
    for _ in 0..25 {
        let r = login("wrong password!!").await.unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("no 429 within 25 attempts");
    assert!(r.headers().get("retry-after").is_some());
}

/// Long enough that a loaded CI machine locks and checks within it.
const LOCKOUT_SECONDS: u64 = 10;

async fn lockout_on(backend: Backend) {
    let settings = [
        ("CLM_LOGIN_MAX_FAILURES", "3"),
        ("CLM_LOGIN_LOCKOUT_SECONDS", &LOCKOUT_SECONDS.to_string()),
        ("CLM_LOGIN_RATE_PER_MINUTE", "20"),
    ];
    if let Some(app) = TestApp::start_with(backend, &settings).await {
        lockout(&app).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_and_release_sqlite() {
    lockout_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_and_release_postgres() {
    lockout_on(Backend::Postgres).await;
}
