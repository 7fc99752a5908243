//! `TestApp`: a real `clm serve` process per test, with fresh databases
//! (two SQLite files, or two PostgreSQL databases created for the test and
//! dropped afterwards) and its own SoftHSM token directory. Tests talk to it
//! over HTTPS exactly as a client would.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const ADMIN_EMAIL: &str = "admin@clm.test";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub backend: Backend,
    pub data_dir: tempfile::TempDir,
    /// `https://127.0.0.1:PORT` of the API listener.
    pub api: String,
    /// `http://127.0.0.1:PORT` of the plain-HTTP listener.
    pub public: String,
    pub client: reqwest::Client,
    pub admin_password: String,
    pg_databases: Vec<String>,
    child: Option<Child>,
    /// Environment of the server, without its listen addresses.
    env: Vec<(String, String)>,
}

/// Runs `body` against a fresh app on the given backend, or skips (with a
/// note) when PostgreSQL is not reachable and not required.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident => $scenario:ident;)*) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = $crate::common::TestApp::start($crate::common::Backend::Sqlite).await.unwrap();
                super::$scenario(&app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(app) = $crate::common::TestApp::start($crate::common::Backend::Postgres).await else {
                    return;
                };
                super::$scenario(&app).await;
            }
        }
    )*};
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// PostgreSQL answers on 127.0.0.1:5432 as `postgres`.
pub fn postgres_available() -> bool {
    psql("postgres", "SELECT 1").is_ok()
}

/// Runs `sql` in `db` as the `postgres` superuser.
pub fn psql(db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

impl TestApp {
    /// `None` only for PostgreSQL when it is unreachable and
    /// `CLM_TEST_REQUIRE_POSTGRES` is not set.
    pub async fn start(backend: Backend) -> Option<TestApp> {
        Self::start_with(backend, &[]).await
    }

    /// Like [`TestApp::start`], with extra `CLM_*` settings.
    pub async fn start_with(backend: Backend, settings: &[(&str, &str)]) -> Option<TestApp> {
        let data_dir = tempfile::tempdir().unwrap();
        let mut pg_databases = Vec::new();
        let mut env: Vec<(String, String)> = Vec::new();
        if backend == Backend::Postgres {
            if !postgres_available() {
                if std::env::var("CLM_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                    panic!(
                        "PostgreSQL on 127.0.0.1:5432 is required (CLM_TEST_REQUIRE_POSTGRES=1) but unreachable"
                    );
                }
                eprintln!(
                    "note: PostgreSQL unreachable; skipping the PostgreSQL variant of this test"
                );
                return None;
            }
            let stem = format!("clm_test_{}", uuid::Uuid::new_v4().simple());
            for which in ["core", "secure"] {
                let name = format!("{stem}_{which}");
                psql("postgres", &format!("CREATE DATABASE {name}")).unwrap();
                env.push((
                    format!("CLM_{}_DATABASE_URL", which.to_uppercase()),
                    format!("postgres://postgres@127.0.0.1:5432/{name}"),
                ));
                pg_databases.push(name);
            }
        }

        let status = Command::new("bash")
            .arg(repo_root().join("softhsm/init-token.sh"))
            .arg(data_dir.path())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "softhsm/init-token.sh failed");

        let admin_password = format!("Adm1n-{}", uuid::Uuid::new_v4().simple());
        let conf = data_dir.path().join("softhsm/softhsm2.conf");
        env.extend([
            ("CLM_DATA_DIR".into(), data_dir.path().display().to_string()),
            ("SOFTHSM2_CONF".into(), conf.display().to_string()),
            ("CLM_BOOTSTRAP_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
            (
                "CLM_BOOTSTRAP_ADMIN_PASSWORD".into(),
                admin_password.clone(),
            ),
            ("CLM_LOG_FORMAT".into(), "json".into()),
            ("CLM_HSM_POOL_SIZE".into(), "4".into()),
        ]);
        env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));

        let mut app = TestApp {
            backend,
            api: String::new(),
            public: String::new(),
            client: reqwest::Client::new(),
            admin_password,
            pg_databases,
            child: None,
            data_dir,
            env,
        };
        app.wait_until_serving().await;
        Some(app)
    }

    /// Starts `clm serve` on two free ports.
    fn spawn_server(&mut self) {
        let (api_port, public_port) = (free_port(), free_port());
        self.api = format!("https://127.0.0.1:{api_port}");
        self.public = format!("http://127.0.0.1:{public_port}");
        let mut env = self.env.clone();
        env.extend([
            ("CLM_LISTEN".to_string(), format!("127.0.0.1:{api_port}")),
            (
                "CLM_HTTP_LISTEN".to_string(),
                format!("127.0.0.1:{public_port}"),
            ),
            ("CLM_PUBLIC_URL".to_string(), self.public.clone()),
        ]);
        std::fs::write(
            self.path("test.env"),
            env.iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect::<String>(),
        )
        .unwrap();
        let log = std::fs::File::create(self.path("server.log")).unwrap();
        let out = std::fs::File::create(self.path("server.out")).unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_clm"))
                .arg("serve")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdout(out)
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// A second `clm serve` on this app's databases and SoftHSM token: its
    /// own ports and data directory (log, TLS certificate), as another
    /// instance behind the same load balancer would have. Dropping it stops
    /// only that process.
    pub async fn peer(&self) -> TestApp {
        assert_eq!(
            self.backend,
            Backend::Postgres,
            "instances share PostgreSQL"
        );
        let data_dir = tempfile::tempdir().unwrap();
        let pin_file = self.path("softhsm/user.pin").display().to_string();
        let mut peer = TestApp {
            backend: self.backend,
            api: String::new(),
            public: String::new(),
            client: reqwest::Client::new(),
            admin_password: self.admin_password.clone(),
            pg_databases: Vec::new(),
            child: None,
            data_dir,
            env: self.env.clone(),
        };
        peer.set_env("CLM_DATA_DIR", &peer.data_dir.path().display().to_string());
        peer.set_env("CLM_PKCS11_PIN_FILE", &pin_file);
        peer.wait_until_serving().await;
        peer
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL of the server, without a restart.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGKILL of the server, then a fresh start on the same data.
    pub async fn kill_and_restart(&mut self) {
        self.kill();
        self.wait_until_serving().await;
    }

    /// Sends SIGTERM to the server (without waiting for it).
    pub fn send_sigterm(&self) {
        let child = self.child.as_ref().expect("the server is running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
    }

    /// Waits (up to `deadline`) for the server to exit and returns its
    /// exit status; kills it and fails the test when it does not.
    pub async fn wait_for_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > until {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!(
                    "clm serve did not exit within {deadline:?}:\n{}",
                    self.server_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then [`TestApp::wait_for_exit`].
    pub async fn terminate(&mut self, deadline: Duration) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait_for_exit(deadline).await
    }

    /// Starts the server again on the same data (after [`TestApp::terminate`]).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.wait_until_serving().await;
    }

    /// Adds or replaces a server setting for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    async fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let ca_path = self.data_dir.path().join("tls/ca.pem");
        let mut spawns = 1;
        self.spawn_server();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // Another test may have taken a port between our probe and the bind.
                if self.server_log().contains("cannot bind") && spawns < 3 {
                    spawns += 1;
                    self.spawn_server();
                    continue;
                }
                panic!("clm serve exited early ({status}):\n{}", self.server_log());
            }
            if ca_path.exists() {
                let root = reqwest::Certificate::from_pem(&std::fs::read(&ca_path).unwrap());
                if let Ok(root) = root {
                    let client = reqwest::Client::builder()
                        .add_root_certificate(root)
                        .tls_built_in_root_certs(false)
                        .timeout(Duration::from_secs(60))
                        .build()
                        .unwrap();
                    if let Ok(r) = client.get(format!("{}/healthz", self.api)).send().await
                        && r.status().is_success()
                    {
                        self.client = client;
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "clm serve did not come up:\n{}",
                self.server_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Names of this test's PostgreSQL databases (`[core, secure]`); empty
    /// on SQLite.
    pub fn pg_databases(&self) -> &[String] {
        &self.pg_databases
    }

    /// Runs `statements` directly against `which` database (`core` or
    /// `secure`), behind clm's back: stdout, or stderr when it fails.
    pub fn try_sql(&self, which: &str, statements: &str) -> Result<String, String> {
        let out = match self.backend {
            Backend::Sqlite => Command::new("sqlite3")
                .args(["-cmd", ".timeout 5000"])
                .arg(self.path(&format!("clm_{which}.db")))
                .arg(statements)
                .output()
                .unwrap(),
            Backend::Postgres => {
                let db = match which {
                    "core" => &self.pg_databases[0],
                    _ => &self.pg_databases[1],
                };
                return psql(db, statements);
            }
        };
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// The URL of `which` database (`core` or `secure`), as the server
    /// has it: for a test that opens the store itself.
    pub fn database_url(&self, which: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!(
                "sqlite://{}?mode=rw",
                self.path(&format!("clm_{which}.db")).display()
            ),
            Backend::Postgres => {
                let key = format!("CLM_{}_DATABASE_URL", which.to_uppercase());
                self.env
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone())
                    .unwrap()
            }
        }
    }

    /// SQL literal of bytes for the backend.
    pub fn bytes_literal(&self, b: &[u8]) -> String {
        match self.backend {
            Backend::Sqlite => format!("X'{}'", hex::encode(b)),
            Backend::Postgres => format!("'\\x{}'::bytea", hex::encode(b)),
        }
    }

    /// `id` as an SQL literal of the id columns: SQLite stores UUIDs as
    /// 16-byte blobs.
    pub fn uuid_literal(&self, id: uuid::Uuid) -> String {
        match self.backend {
            Backend::Sqlite => self.bytes_literal(id.as_bytes()),
            Backend::Postgres => format!("'{id}'::uuid"),
        }
    }

    /// [`TestApp::try_sql`] that must succeed.
    pub fn sql(&self, which: &str, statements: &str) -> String {
        self.try_sql(which, statements)
            .unwrap_or_else(|e| panic!("SQL failed: {statements}\n{e}"))
    }

    /// Runs `sql` in `db` as the `postgres` superuser.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        psql(db, sql)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.data_dir.path().join(rel)
    }

    /// What the server has logged. Its writer thread writes lines in
    /// batches a few milliseconds apart (src/logging/queue.rs): a line
    /// logged while the last request was served is in the file after a
    /// short wait.
    pub fn server_log(&self) -> String {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }

    /// What the server wrote on stdout.
    pub fn server_out(&self) -> String {
        std::fs::read_to_string(self.path("server.out")).unwrap_or_default()
    }

    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.path("tls/ca.pem")).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let r = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login failed:\n{}", self.server_log());
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, &self.admin_password).await
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `GET path` as `token`, its body as JSON.
    pub async fn get_json(&self, token: &str, path: &str) -> Value {
        self.get(token, path).await.json().await.unwrap()
    }

    pub async fn post(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Copies the certificate whose subject contains `template` `n` times
    /// straight into clm_secure, as bulk data no test could issue in time:
    /// subjects `CN=bulk-<i>.clm.test`, serials `<serial_prefix>` followed
    /// by `i` in hex to 32 digits, fresh ids and fingerprints. `set` gives
    /// columns their own SQL values instead of the template's.
    pub fn copy_certificate(
        &self,
        template: &str,
        n: usize,
        serial_prefix: &str,
        set: &[(&str, &str)],
    ) {
        const COPIED: [&str; 16] = [
            "organization_id",
            "ca_id",
            "profile_id",
            "owner_id",
            "sans",
            "key_algorithm",
            "not_before",
            "not_after",
            "status",
            "revoked_at",
            "revocation_reason",
            "is_ca",
            "certificate_der",
            "created_at",
            "updated_at",
            "replaces_certificate_id",
        ];
        let digits = 32 - serial_prefix.len();
        let (rows, id, serial, fingerprint) = match self.backend {
            Backend::Sqlite => (
                format!(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})"
                ),
                "randomblob(16)".to_string(),
                format!("printf('{serial_prefix}%0{digits}x', i)"),
                "printf('%064x', i)".to_string(),
            ),
            Backend::Postgres => (
                format!("WITH n(i) AS (SELECT generate_series(1, {n}))"),
                "gen_random_uuid()".to_string(),
                format!("'{serial_prefix}' || lpad(to_hex(i), {digits}, '0')"),
                "lpad(to_hex(i), 64, '0')".to_string(),
            ),
        };
        let mut columns = vec!["id", "serial_hex", "subject", "fingerprint_sha256"];
        let mut values = vec![
            id.as_str(),
            serial.as_str(),
            "'CN=bulk-' || i || '.clm.test'",
            fingerprint.as_str(),
        ];
        for c in COPIED {
            columns.push(c);
            values.push(set.iter().find(|(k, _)| *k == c).map_or(c, |(_, v)| *v));
        }
        self.sql(
            "secure",
            &format!(
                "{rows} INSERT INTO certificates ({}) SELECT {} FROM certificates, n \
                 WHERE subject LIKE '%{template}%'",
                columns.join(", "),
                values.join(", ")
            ),
        );
    }

    /// `POST /api/v1/certificate-requests` with `body`, which must be
    /// issued at once: the new certificate's id.
    pub async fn request_certificate(&self, token: &str, body: &Value) -> String {
        let r = self.post(token, "/api/v1/certificate-requests", body).await;
        assert_eq!(r.status(), 201, "{}", self.server_log());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "issued", "{body}");
        body["certificate_id"].as_str().unwrap().to_string()
    }

    /// Issues a certificate for `names` (the first is the CN) through the
    /// default profile; the certificate as `GET /api/v1/certificates/{id}`
    /// shows it.
    pub async fn issue(&self, token: &str, names: &[&str]) -> Value {
        let profile = self.default_profile_id(token).await;
        let id = self
            .request_certificate(
                token,
                &json!({ "profile_id": profile, "csr_pem": ec_csr(names) }),
            )
            .await;
        let r = self.get(token, &format!("/api/v1/certificates/{id}")).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// The id of the intermediate CA `clm init` created.
    pub async fn intermediate_ca_id(&self, token: &str) -> Value {
        self.first_ca_of_kind(token, "intermediate").await
    }

    /// The id of the root CA `clm init` created.
    pub async fn root_ca_id(&self, token: &str) -> Value {
        self.first_ca_of_kind(token, "root").await
    }

    async fn first_ca_of_kind(&self, token: &str, kind: &str) -> Value {
        let cas = self.get_json(token, "/api/v1/cas").await;
        cas.as_array()
            .unwrap()
            .iter()
            .find(|c| c["kind"] == kind)
            .unwrap_or_else(|| panic!("a {kind} CA in {cas}"))["id"]
            .clone()
    }

    /// Creates a P-256 intermediate CA under `parent` (201 expected); the
    /// answer.
    pub async fn create_intermediate(
        &self,
        token: &str,
        parent: &Value,
        name: &str,
        subject: &str,
    ) -> Value {
        let body = json!({ "name": name, "kind": "intermediate", "parent_id": parent,
                           "subject": subject, "key_algorithm": "ecdsa-p256", "validity_days": 365 });
        let r = self.post(token, "/api/v1/cas", &body).await;
        assert_eq!(r.status(), 201, "create CA {body}");
        r.json().await.unwrap()
    }

    /// Takes CA `id` out of service behind the server's back, as another
    /// instance's revocation of its certificate would.
    pub fn disable_ca_elsewhere(&self, id: &str) {
        self.sql("secure", &self.disable_ca_statement(id));
    }

    /// The statement of [`TestApp::disable_ca_elsewhere`], for a test that
    /// runs it in a transaction of its own.
    pub fn disable_ca_statement(&self, id: &str) -> String {
        let id = self.uuid_literal(id.parse().unwrap());
        format!("UPDATE certificate_authorities SET status = 'disabled' WHERE id = {id}")
    }

    /// Creates an organisation (as the bootstrap admin) and returns its id.
    pub async fn create_org(&self, admin: &str, name: &str) -> String {
        let r = self
            .post(admin, "/api/v1/organizations", &json!({ "name": name }))
            .await;
        assert_eq!(r.status(), 201, "create organisation {name}");
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a user with `roles` in `org` and returns (id, token).
    pub async fn create_user(
        &self,
        admin: &str,
        org: &str,
        email: &str,
        roles: &[&str],
    ) -> (String, String) {
        let password = "a sufficiently long passphrase";
        let r = self
            .post(
                admin,
                "/api/v1/users",
                &json!({ "email": email, "password": password, "roles": roles, "organization_id": org }),
            )
            .await;
        assert_eq!(r.status(), 201, "create user {email}");
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        (id, self.login(email, password).await)
    }

    /// Creates the profile `body` describes and returns its id.
    pub async fn create_profile(&self, token: &str, body: &Value) -> String {
        let r = self.post(token, "/api/v1/profiles", body).await;
        assert_eq!(r.status(), 201, "create profile {body}");
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Rolls CA `id` over (201 expected); the answer.
    pub async fn rollover(&self, token: &str, id: &str) -> Value {
        let r = self
            .post(token, &format!("/api/v1/cas/{id}/rollover"), &json!({}))
            .await;
        assert_eq!(r.status(), 201, "rollover of {id}:\n{}", self.server_log());
        r.json().await.unwrap()
    }

    /// The system-wide profile `clm init` creates.
    pub async fn default_profile_id(&self, token: &str) -> String {
        let profiles: Value = self
            .get(token, "/api/v1/profiles")
            .await
            .json()
            .await
            .unwrap();
        profiles
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "default")
            .expect("default profile")["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Runs `clm` with this app's environment (e.g. `hsm check`).
    pub fn clm(&self, args: &[&str]) -> std::process::Output {
        self.clm_with(args, &[])
    }

    /// Runs `clm` with this app's environment plus `extra` variables.
    pub fn clm_with(&self, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
        let env = std::fs::read_to_string(self.path("test.env")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_clm"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.lines().filter_map(|l| l.split_once('=')))
            .envs(extra.iter().copied())
            .output()
            .unwrap()
    }

    /// The token's user PIN (for outside tools and secret scans).
    pub fn pin(&self) -> String {
        std::fs::read_to_string(self.path("softhsm/user.pin"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Runs `pkcs11-tool` against this app's token with its user PIN.
    pub fn pkcs11_tool(&self, args: &[&str]) -> String {
        let pin = self.pin();
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", self.path("softhsm/softhsm2.conf"))
            .args([
                "--module",
                "/usr/lib/softhsm/libsofthsm2.so",
                "--token-label",
                "clm",
                "--login",
                "--pin",
            ])
            .arg(&pin)
            .args(args)
            .output()
            .expect("pkcs11-tool (Debian package opensc) must be installed");
        assert!(
            out.status.success(),
            "pkcs11-tool failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for db in &self.pg_databases {
            if let Err(e) = psql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            ) {
                eprintln!("could not drop test database {db}: {e}");
            }
        }
    }
}

/// A fresh P-256 key and a CSR for `names` (first name is the CN).
pub fn ec_csr(names: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    csr_for(&key, names)
}

pub fn csr_for(key: &rcgen::KeyPair, names: &[&str]) -> String {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, names[0]);
    params.distinguished_name = dn;
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// An RSA CSR made by openssl (rcgen cannot generate RSA keys).
pub fn rsa_csr(bits: u32, cn: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            &format!("rsa:{bits}"),
            "-nodes",
            "-subj",
        ])
        .arg(format!("/CN={cn}"))
        .args(["-addext", &format!("subjectAltName=DNS:{cn}")])
        .arg("-keyout")
        .arg(dir.path().join("k.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Writes `content` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// `openssl ARGS` run in `dir`: whether it passed, and what it said.
pub fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `openssl verify` of `leaf` against `trusted` with `untrusted` as the
/// chain (files written in `dir`): whether it passed, and what it said.
pub fn openssl_verify(dir: &Path, trusted: &str, untrusted: &str, leaf: &str) -> (bool, String) {
    write(dir, "trusted.pem", trusted);
    write(dir, "untrusted.pem", untrusted);
    write(dir, "leaf.pem", leaf);
    openssl(
        &[
            "verify",
            "-CAfile",
            "trusted.pem",
            "-untrusted",
            "untrusted.pem",
            "leaf.pem",
        ],
        dir,
    )
}
