//! Least-privilege PostgreSQL roles (`scripts/postgres-roles.sql`): a
//! server migrated and bootstrapped as the superuser is handed over to an
//! owner role per database and restarted as the runtime roles, which hold
//! no DDL rights at all (with nothing pending, start-up only reads the
//! migrators' tracking tables). It serves, issues and revokes, its
//! background jobs seal the audit logs, `clm reconcile` repairs a missing
//! mirror and `clm audit verify` passes — while the runtime roles cannot
//! drop, disable or bypass the write-once triggers, alter or truncate a
//! table, create anything in the schema, record a migration, or reach the
//! other database. PostgreSQL only; skipped like the other PostgreSQL tests
//! when it is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Backend, TestApp};
use serde_json::{Value, json};

const SHUTDOWN: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres-roles.sql")
}

/// `sql` in `db`, connected as `user` (trust authentication).
fn psql(user: &str, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-U", user, "-d", db])
        .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// `sql` must fail for `user`, with `why` in the error.
fn refused(user: &str, db: &str, sql: &str, why: &str) {
    match psql(user, db, sql) {
        Ok(out) => panic!("{user} in {db} was allowed `{sql}` (answer: {out:?})"),
        Err(e) => assert!(
            e.contains(why),
            "{user} in {db}: `{sql}` failed, but not with {why:?}: {e}"
        ),
    }
}

/// This run's roles (cluster-wide, hence unique names), dropped at the end
/// whatever happens. Declared before the app, so that it is dropped after
/// the app has dropped its databases.
struct Roles {
    core_owner: String,
    core_app: String,
    core_auditor: String,
    secure_owner: String,
    secure_app: String,
    secure_auditor: String,
    databases: Vec<String>,
    applied: bool,
}

impl Roles {
    fn new() -> Roles {
        let s = &uuid::Uuid::new_v4().simple().to_string()[..10];
        Roles {
            core_owner: format!("clm_core_owner_{s}"),
            core_app: format!("clm_core_app_{s}"),
            core_auditor: format!("clm_core_auditor_{s}"),
            secure_owner: format!("clm_secure_owner_{s}"),
            secure_app: format!("clm_secure_app_{s}"),
            secure_auditor: format!("clm_secure_auditor_{s}"),
            databases: Vec::new(),
            applied: false,
        }
    }

    fn all(&self) -> [&str; 6] {
        [
            &self.core_owner,
            &self.core_app,
            &self.core_auditor,
            &self.secure_owner,
            &self.secure_app,
            &self.secure_auditor,
        ]
    }

    /// Runs the script as the superuser on this run's databases.
    fn apply(&mut self) {
        self.applied = true;
        let vars = [
            ("core_db", self.databases[0].as_str()),
            ("secure_db", self.databases[1].as_str()),
            ("core_owner", &self.core_owner),
            ("core_app", &self.core_app),
            ("core_auditor", &self.core_auditor),
            ("secure_owner", &self.secure_owner),
            ("secure_app", &self.secure_app),
            ("secure_auditor", &self.secure_auditor),
        ];
        let mut cmd = Command::new("psql");
        cmd.args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-v", "ON_ERROR_STOP=1"]);
        for (k, v) in vars {
            cmd.arg("-v").arg(format!("{k}={v}"));
        }
        let out = cmd.arg("-f").arg(script()).output().unwrap();
        assert!(
            out.status.success(),
            "scripts/postgres-roles.sql failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        if !self.applied {
            return;
        }
        let list = self.all().join(", ");
        // The app drops its databases first; should one be left, what the
        // roles own or were granted there must go before the roles can.
        for db in &self.databases {
            let _ = psql(
                "postgres",
                db,
                &format!("REASSIGN OWNED BY {list} TO postgres; DROP OWNED BY {list}"),
            );
        }
        if let Err(e) = psql(
            "postgres",
            "postgres",
            &format!("DROP ROLE IF EXISTS {list}"),
        ) {
            eprintln!("could not drop the test roles {list}: {e}");
        }
    }
}

/// Waits until the newest seal of `log` covers `seq`.
async fn sealed_through(app: &TestApp, db: &str, seals: &str, seq: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last: i64 = app
            .psql(
                db,
                &format!("SELECT COALESCE(max(last_seq), 0) FROM {seals}"),
            )
            .unwrap()
            .parse()
            .unwrap();
        if last >= seq {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{seals} never reached seq {seq} (at {last}):\n{}",
            app.server_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn runtime_url(role: &str, db: &str) -> String {
    // Trust authentication: the password is never checked.
    format!("postgres://{role}:unused@127.0.0.1:5432/{db}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_roles_serve_but_cannot_change_the_schema() {
    let mut roles = Roles::new();
    let Some(mut app) = TestApp::start(Backend::Postgres).await else {
        return;
    };
    roles.databases = app.pg_databases().to_vec();
    let (core_db, secure_db) = (roles.databases[0].clone(), roles.databases[1].clone());

    // Something from before the hand-over, written as the superuser.
    let admin = app.admin_token().await;
    let before = app.issue(&admin, &["before.roles.clm.test"]).await;
    assert!(
        app.terminate(SHUTDOWN).await.success(),
        "{}",
        app.server_log()
    );

    // The hand-over: every object in the schema belongs to the owner role.
    roles.apply();
    for (db, owner) in [
        (&core_db, &roles.core_owner),
        (&secure_db, &roles.secure_owner),
    ] {
        let schema_owner = app
            .psql(
                db,
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'",
            )
            .unwrap();
        assert_eq!(&schema_owner, owner);
        let foreign = app
            .psql(
                db,
                &format!(
                    "SELECT string_agg(relname, ', ') FROM pg_class \
                     WHERE relnamespace = 'public'::regnamespace AND relowner <> '{owner}'::regrole"
                ),
            )
            .unwrap();
        assert_eq!(foreign, "", "objects not owned by {owner}");
        let functions = app
            .psql(
                db,
                &format!(
                    "SELECT string_agg(proname, ', ') FROM pg_proc p \
                     WHERE pronamespace = 'public'::regnamespace AND proowner <> '{owner}'::regrole \
                       AND prorettype <> 'event_trigger'::regtype \
                       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass \
                                         AND d.objid = p.oid AND d.deptype = 'e')"
                ),
            )
            .unwrap();
        // Extension members (pg_trgm's) stay the superuser's, as the script says.
        assert_eq!(functions, "", "functions not owned by {owner}");
    }

    let core_url = runtime_url(&roles.core_app, &core_db);
    let secure_url = runtime_url(&roles.secure_app, &secure_db);
    let runtime = [
        ("CLM_CORE_DATABASE_URL", core_url.as_str()),
        ("CLM_SECURE_DATABASE_URL", secure_url.as_str()),
    ];

    // The runtime roles may read the tracking tables, nothing more: that
    // is all the start-up's look for pending migrations needs.
    for (db, role, tracking) in [
        (&core_db, &roles.core_app, "seaql_migrations_core"),
        (&secure_db, &roles.secure_app, "seaql_migrations_secure"),
    ] {
        let held = app
            .psql(
                db,
                &format!(
                    "SELECT string_agg(privilege_type, ',' ORDER BY privilege_type) \
                     FROM information_schema.role_table_grants \
                     WHERE grantee = '{role}' AND table_name = '{tracking}'"
                ),
            )
            .unwrap();
        assert_eq!(held, "SELECT", "{role} on {tracking}");
        let create = app
            .psql(
                db,
                &format!("SELECT has_schema_privilege('{role}', 'public', 'CREATE')"),
            )
            .unwrap();
        assert_eq!(create, "f", "{role} may create in the schema");
    }

    // The server as the runtime roles, straight after the script: no DDL
    // right is needed to start.
    for (k, v) in runtime {
        app.set_env(k, v);
    }
    app.restart().await;
    let admin = app.admin_token().await;
    let cert = app.issue(&admin, &["roles.clm.test"]).await;
    let id = cert["id"].as_str().unwrap();
    let r = app
        .post(
            &admin,
            &format!("/api/v1/certificates/{id}/revoke"),
            &json!({ "reason": "keyCompromise" }),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", app.server_log());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "revoked");
    let r = app
        .get(
            &admin,
            &format!("/api/v1/certificates/{}", before["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status(), 200, "what the superuser wrote is readable");
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "/readyz as the runtime roles");

    // It really is connected as them, and only as them.
    for (db, role) in [(&core_db, &roles.core_app), (&secure_db, &roles.secure_app)] {
        let users = app
            .psql(
                db,
                &format!(
                    "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity \
                     WHERE datname = '{db}' AND pid <> pg_backend_pid()"
                ),
            )
            .unwrap();
        assert_eq!(&users, role, "connections to {db}");
    }

    // The sealer (a background job: LOCK TABLE … IN SHARE MODE, then a
    // seal row) works as the runtime roles: both logs get sealed through
    // the revocation's entries.
    for (db, log, seals) in [
        (&core_db, "audit_log", "audit_seals"),
        (&secure_db, "secure_audit_log", "secure_audit_seals"),
    ] {
        let newest: i64 = app
            .psql(db, &format!("SELECT max(seq) FROM {log}"))
            .unwrap()
            .parse()
            .unwrap();
        sealed_through(&app, db, seals, newest).await;
    }
    assert!(
        !app.server_log().contains("permission denied"),
        "{}",
        app.server_log()
    );

    let verify = |app: &TestApp| {
        let out = app.clm_with(&["audit", "verify"], &runtime);
        assert!(
            out.status.success(),
            "clm audit verify as the runtime roles: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    verify(&app);

    // `clm reconcile` as the runtime roles (the periodic reconciliation
    // runs as them in production) repairs a mirror lost in clm_core. The
    // server's `reconciliation` job is not due again for ten minutes; were
    // it to get there first, the pass would still exit 0 with the mirror
    // back.
    let serial = before["serial"].as_str().unwrap();
    let mirror = format!("SELECT count(*) FROM certificate_metadata WHERE serial_hex = '{serial}'");
    app.psql(
        &core_db,
        &format!("DELETE FROM certificate_metadata WHERE serial_hex = '{serial}'"),
    )
    .unwrap();
    let out = app.clm_with(&["reconcile", "--json"], &runtime);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clm reconcile as the runtime roles: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&text).unwrap();
    let missing = &report["reconcile"]["missing_mirrors"];
    assert_eq!(missing["found"], missing["repaired"], "{report}");
    assert_eq!(
        report["reconcile"]["orphan_mirrors"]["found"], 0,
        "{report}"
    );
    assert_eq!(report["audit"]["ok"], true, "{report}");
    assert_eq!(app.psql(&core_db, &mirror).unwrap(), "1", "{report}");

    // What the runtime roles must not do.
    let planted = "permission denied for schema public";
    for (db, app_role, log, tracking) in [
        (
            &core_db,
            &roles.core_app,
            "audit_log",
            "seaql_migrations_core",
        ),
        (
            &secure_db,
            &roles.secure_app,
            "secure_audit_log",
            "seaql_migrations_secure",
        ),
    ] {
        let oldest = format!("seq = (SELECT min(seq) FROM {log})");
        for (sql, why) in [
            (
                format!("DROP TRIGGER {log}_write_once ON {log}"),
                "must be owner",
            ),
            (
                format!("ALTER TABLE {log} DISABLE TRIGGER {log}_write_once"),
                "must be owner",
            ),
            (
                format!("ALTER TABLE {log} ADD COLUMN planted integer"),
                "must be owner",
            ),
            (format!("DROP TABLE {log}"), "must be owner"),
            (format!("TRUNCATE {log}"), "permission denied"),
            (
                format!("UPDATE {log} SET action = 'planted' WHERE {oldest}"),
                "permission denied",
            ),
            // DELETE is held (for the retention purge); the trigger refuses it.
            (
                format!("DELETE FROM {log} WHERE {oldest}"),
                &format!("{log} is write-once"),
            ),
            (
                "SET session_replication_role = replica".to_string(),
                "permission denied",
            ),
            (
                format!(
                    "INSERT INTO {tracking} (version, applied_at) VALUES ('m29991231_000001_planted', 0)"
                ),
                "permission denied",
            ),
            ("CREATE TABLE planted (id integer)".to_string(), planted),
            (
                "CREATE FUNCTION planted() RETURNS integer LANGUAGE sql AS 'SELECT 1'".to_string(),
                planted,
            ),
            (
                "CREATE TEMPORARY TABLE planted (id integer)".to_string(),
                "permission denied",
            ),
            ("CREATE SCHEMA planted".to_string(), "permission denied"),
        ] {
            refused(app_role, db, &sql, why);
        }
    }
    // The owner holds UPDATE; the write-once trigger still refuses it.
    refused(
        &roles.core_owner,
        &core_db,
        "UPDATE audit_log SET action = 'planted' WHERE seq = (SELECT min(seq) FROM audit_log)",
        "audit_log is write-once",
    );

    // The databases are apart: no role of one connects to the other, and
    // even inside it (a superuser acting as the role) nothing is readable.
    for (role, db) in [
        (&roles.core_app, &secure_db),
        (&roles.core_owner, &secure_db),
        (&roles.secure_app, &core_db),
        (&roles.secure_owner, &core_db),
    ] {
        refused(role, db, "SELECT 1", "permission denied for database");
    }
    for (sql, why) in [
        (
            format!(
                "SET ROLE {}; SELECT count(*) FROM public.private_keys",
                roles.core_app
            ),
            "permission denied for schema public",
        ),
        (
            format!(
                "SET ROLE {}; SELECT count(*) FROM public.certificates",
                roles.core_auditor
            ),
            "permission denied for schema public",
        ),
    ] {
        let e = app.psql(&secure_db, &sql).unwrap_err();
        assert!(e.contains(why), "{sql}: {e}");
    }

    // Auditors read, never write, and never credentials or key material.
    let count = |db: &str, role: &str, table: &str| -> i64 {
        app.psql(
            db,
            &format!("SET ROLE {role}; SELECT count(*) FROM public.{table}"),
        )
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap()
    };
    assert!(count(&core_db, &roles.core_auditor, "audit_log") > 0);
    assert!(count(&core_db, &roles.core_auditor, "certificate_metadata") >= 2);
    assert!(count(&secure_db, &roles.secure_auditor, "secure_audit_log") > 0);
    assert!(count(&secure_db, &roles.secure_auditor, "certificates") >= 2);
    for (db, role, sql, why) in [
        (
            &core_db,
            &roles.core_auditor,
            "SELECT count(*) FROM public.users",
            "permission denied for table users",
        ),
        (
            &core_db,
            &roles.core_auditor,
            "SELECT count(*) FROM public.sessions",
            "permission denied for table sessions",
        ),
        (
            &core_db,
            &roles.core_auditor,
            "DELETE FROM public.audit_seals",
            "permission denied",
        ),
        (
            &secure_db,
            &roles.secure_auditor,
            "SELECT count(*) FROM public.private_keys",
            "permission denied for table private_keys",
        ),
        (
            &secure_db,
            &roles.secure_auditor,
            "UPDATE public.certificates SET status = 'valid'",
            "permission denied",
        ),
    ] {
        let e = app
            .psql(db, &format!("SET ROLE {role}; {sql}"))
            .unwrap_err();
        assert!(e.contains(why), "{role}: {sql}: {e}");
    }

    // A table a later migration creates (as the owner) gets the grants.
    psql(
        &roles.core_owner,
        &core_db,
        "CREATE TABLE later_migration (id integer PRIMARY KEY)",
    )
    .unwrap();
    psql(
        &roles.core_app,
        &core_db,
        "INSERT INTO later_migration VALUES (1); UPDATE later_migration SET id = 2; \
         DELETE FROM later_migration",
    )
    .unwrap();
    refused(
        &roles.core_app,
        &core_db,
        "TRUNCATE later_migration",
        "permission denied",
    );
    assert_eq!(
        count(&core_db, &roles.core_auditor, "later_migration"),
        0,
        "the auditor reads it"
    );
    psql(&roles.core_owner, &core_db, "DROP TABLE later_migration").unwrap();

    // `clm migrate` as the owners: nothing pending, nothing refused.
    let out = app.clm_with(
        &["migrate"],
        &[
            (
                "CLM_CORE_DATABASE_URL",
                &runtime_url(&roles.core_owner, &core_db),
            ),
            (
                "CLM_SECURE_DATABASE_URL",
                &runtime_url(&roles.secure_owner, &secure_db),
            ),
        ],
    );
    assert!(
        out.status.success(),
        "clm migrate as the owners: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // None of the refused attempts touched the trails; the server still
    // serves and stops cleanly.
    verify(&app);
    let r = app.get(&admin, "/api/v1/me").await;
    assert_eq!(r.status(), 200);
    assert!(
        app.terminate(SHUTDOWN).await.success(),
        "{}",
        app.server_log()
    );
}
