//! The server under test: its environment (data directory, databases,
//! listeners) and the `clm serve` child process.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Backend, BenchError, BenchResult, Token, setup};
use crate::config::Config;
use crate::domain::Secret;
use crate::store;

pub const ADMIN_EMAIL: &str = "admin@bench.test";

/// Everything one backend's server is configured with.
pub struct Env {
    pub backend: Backend,
    pub dir: PathBuf,
    vars: Vec<(String, String)>,
    pub admin_password: String,
    pg: Option<(Secret, Vec<String>)>,
}

impl Env {
    /// A fresh data directory under `dir`, and for PostgreSQL two fresh
    /// databases on the server at `pg_url`.
    pub async fn prepare(
        backend: Backend,
        dir: &Path,
        token: &Token,
        pg_url: &str,
    ) -> BenchResult<Env> {
        let dir = dir.join(match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        });
        std::fs::create_dir_all(&dir)?;
        let admin_password = format!("Bench-{}", uuid::Uuid::new_v4().simple());
        let mut vars: Vec<(String, String)> = vec![
            ("CLM_DATA_DIR".into(), dir.display().to_string()),
            ("SOFTHSM2_CONF".into(), token.conf.display().to_string()),
            (
                "CLM_PKCS11_PIN_FILE".into(),
                token.pin_file.display().to_string(),
            ),
            ("CLM_BOOTSTRAP_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
            (
                "CLM_BOOTSTRAP_ADMIN_PASSWORD".into(),
                admin_password.clone(),
            ),
            ("CLM_LOG_FORMAT".into(), "json".into()),
        ];
        let mut pg = None;
        if backend == Backend::Postgres {
            let admin = Secret::new(pg_url.to_string());
            let stem = format!("clm_bench_{}", uuid::Uuid::new_v4().simple());
            let mut names = Vec::new();
            for which in ["core", "secure"] {
                let name = format!("{stem}_{which}");
                store::bench_create_database(&admin, &name).await?;
                vars.push((
                    format!("CLM_{}_DATABASE_URL", which.to_uppercase()),
                    format!("{}/{name}", pg_url.trim_end_matches('/')),
                ));
                names.push(name);
            }
            pg = Some((admin, names));
        }
        Ok(Env {
            backend,
            dir,
            vars,
            admin_password,
            pg,
        })
    }

    /// The configuration the server reads, for this process's own handles
    /// on the same databases and token.
    pub fn config(&self) -> BenchResult<Config> {
        let map: HashMap<String, String> = self.vars.iter().cloned().collect();
        Config::from_sources(&map, None, None).map_err(setup)
    }

    /// What `--keep` leaves behind on PostgreSQL.
    pub fn report_databases(&self) {
        if let Some((_, names)) = &self.pg {
            println!("clm bench: PostgreSQL databases kept: {}", names.join(", "));
        }
    }

    pub async fn drop_databases(&self) {
        if let Some((admin, names)) = &self.pg {
            for name in names {
                if let Err(e) = store::bench_drop_database(admin, name).await {
                    eprintln!("clm bench: could not drop database {name}: {e}");
                }
            }
        }
    }
}

/// A running `clm serve`. Killed when dropped.
pub struct Server {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub api: String,
    /// `http://127.0.0.1:PORT`, the relying parties' listener.
    pub public: String,
    /// The root CA certificate of the API's TLS certificate (PEM).
    pub tls_root_pem: Vec<u8>,
    log: PathBuf,
}

impl Server {
    pub async fn start(env: &Env) -> BenchResult<Server> {
        let (api_port, public_port) = (free_port()?, free_port()?);
        let api = format!("https://127.0.0.1:{api_port}");
        let public = format!("http://127.0.0.1:{public_port}");
        let log = env.dir.join("server.log");
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // The server's log filter, to look inside a run (statements,
            // spans); the default otherwise.
            .envs(std::env::var("CLM_LOG").ok().map(|f| ("CLM_LOG", f)))
            .env("CLM_LISTEN", format!("127.0.0.1:{api_port}"))
            .env("CLM_HTTP_LISTEN", format!("127.0.0.1:{public_port}"))
            .env("CLM_PUBLIC_URL", &public)
            // One principal drives all the load: the per-principal issuance
            // limit would measure itself.
            .env("CLM_ISSUANCE_RATE_PER_MINUTE", "0")
            .stdout(std::fs::File::create(env.dir.join("server.out"))?)
            .stderr(std::fs::File::create(&log)?)
            .stdin(Stdio::null())
            .spawn()?;
        let mut server = Server {
            child,
            api,
            public,
            tls_root_pem: Vec::new(),
            log,
        };
        server
            .wait_until_serving(&env.dir.join("tls/ca.pem"))
            .await?;
        Ok(server)
    }

    async fn wait_until_serving(&mut self, ca_path: &Path) -> BenchResult<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(setup(format!(
                    "clm serve exited early ({status}); see {}",
                    self.log.display()
                )));
            }
            if let Ok(pem) = std::fs::read(ca_path)
                && let Ok(client) = super::api::client(&pem)
                && let Ok(r) = client.get(format!("{}/healthz", self.api)).send().await
                && r.status().is_success()
            {
                self.tls_root_pem = pem;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(setup(format!(
                    "clm serve did not come up in time; see {}",
                    self.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// CPU time (user + system) the server has used so far. Unlike a rate,
    /// its per-request share hardly moves when other work shares the
    /// machine, so it compares builds on a busy machine too.
    pub fn cpu_time(&self) -> BenchResult<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name, which is in parentheses and may
        // contain spaces: utime and stime are the 12th and 13th of them.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| BenchError::Setup("unreadable /proc stat".into()))?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> BenchResult<u64> {
            fields
                .get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| BenchError::Setup("unreadable /proc stat".into()))
        };
        // Linux reports these in USER_HZ, which is 100 on every platform
        // clm runs on.
        Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
    }

    /// (VmRSS, VmHWM) of the server in bytes.
    pub fn memory(&self) -> BenchResult<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> BenchResult<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .ok_or_else(|| BenchError::Setup(format!("no {name} in /proc status")))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> BenchResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
