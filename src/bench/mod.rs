//! `clm bench run`: the benchmark of docs/performance.md (issue #9).
//!
//! A driver room like `main.rs`: it starts `clm serve` (this executable) as
//! a child process on a fresh data directory with its own SoftHSM token and
//! fresh databases, loads it over the network like clients would (HTTPS
//! API, plain-HTTP OCSP and CRLs), fills the databases in bulk where a
//! stage needs millions of rows, and reports every figure next to its
//! yardstick (measured in the same run) and its target. Correctness is
//! checked along the way; a failed check fails the run, a missed target
//! does not.
//!
//! Each backend is a separate installation with a token of its own (the
//! audit trail's head lives in the token). The SoftHSM library reads
//! `SOFTHSM2_CONF` once per process, so `run` creates one token directory
//! per backend and runs that backend in a re-executed copy of itself with
//! `SOFTHSM2_CONF` pointing there ([`WORK_DIR_ENV`] names the directory,
//! [`BACKEND_ENV`] the backend); that copy and its server share the token,
//! and its report comes back as JSON for the final tables.

mod api;
mod check;
mod data;
mod fill;
mod http1;
mod issue;
mod load;
mod relying;
mod report;
mod server;
mod stages;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use crate::domain::Secret;
use crate::hsm::{Hsm, HsmError};
use crate::pki::PkiError;
use crate::service::ServiceError;
use crate::store::StoreError;

pub use report::Report;

/// Set in the re-executed benchmark process: its work directory.
pub const WORK_DIR_ENV: &str = "CLM_BENCH_WORK_DIR";
/// Set in the re-executed benchmark process: the backend it runs.
pub const BACKEND_ENV: &str = "CLM_BENCH_BACKEND";
/// What the re-executed process leaves in its work directory.
const PART_REPORT: &str = "report.json";

const PKCS11_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN_LABEL: &str = "clm";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("check failed: {0}")]
    Check(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    #[error("PKI: {0}")]
    Pki(#[from] PkiError),
    #[error("service: {0}")]
    Service(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ServiceError> for BenchError {
    fn from(e: ServiceError) -> Self {
        BenchError::Service(e.log_message())
    }
}

impl From<reqwest::Error> for BenchError {
    fn from(e: reqwest::Error) -> Self {
        BenchError::Http(e.to_string())
    }
}

fn setup(what: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(what.to_string())
}

pub type BenchResult<T> = Result<T, BenchError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// `sqlite`, `postgres` or `both`.
#[derive(Clone, Debug)]
pub struct Backends(pub Vec<Backend>);

impl FromStr for Backends {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sqlite" => Ok(Backends(vec![Backend::Sqlite])),
            "postgres" | "postgresql" => Ok(Backends(vec![Backend::Postgres])),
            "both" => Ok(Backends(vec![Backend::Sqlite, Backend::Postgres])),
            other => Err(format!("`{other}`: expected sqlite, postgres or both")),
        }
    }
}

/// The stages, in the order they run.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Raw `C_Sign` rates (the yardstick of issuance); once per run.
    Sign,
    Issue,
    Rsa,
    Ocsp,
    Audit,
    List,
    Crl,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Sign,
        Stage::Issue,
        Stage::Rsa,
        Stage::Ocsp,
        Stage::Audit,
        Stage::List,
        Stage::Crl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Sign => "sign",
            Stage::Issue => "issue",
            Stage::Rsa => "rsa",
            Stage::Ocsp => "ocsp",
            Stage::Audit => "audit",
            Stage::List => "list",
            Stage::Crl => "crl",
        }
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Stage::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                format!("`{s}`: expected one of sign, issue, rsa, ocsp, audit, list, crl")
            })
    }
}

/// How much work each stage does.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Sizes {
    /// Seconds of each raw `C_Sign` measurement.
    pub sign_seconds: f64,
    /// Issuances on the P-256 CA (measured; warm-up comes on top).
    pub issue: usize,
    /// Issuances on the RSA-2048 CA.
    pub rsa: usize,
    /// OCSP requests (without nonce; a tenth as many with one).
    pub ocsp: usize,
    /// Revoked certificates of the CRL CA, one CRL measured at each.
    pub crl: Vec<usize>,
    /// Audit entries written before verification.
    pub audit: u64,
    /// Certificates stored before the list and search queries.
    pub list: usize,
    /// Requests per list query (fewer if the query is slow: each query
    /// stops taking new requests after 30 s).
    pub list_requests: usize,
}

impl Sizes {
    /// The sizes issue #9 names.
    pub fn full() -> Self {
        Sizes {
            sign_seconds: 5.0,
            issue: 20_000,
            rsa: 4_000,
            ocsp: 200_000,
            crl: vec![100_000, 1_000_000],
            audit: 1_000_000,
            list: 1_000_000,
            list_requests: 200,
        }
    }

    /// A smoke run: small, and quick on a debug build.
    pub fn quick() -> Self {
        Sizes {
            sign_seconds: 0.5,
            issue: 200,
            rsa: 50,
            ocsp: 2_000,
            crl: vec![2_000],
            audit: 5_000,
            list: 5_000,
            list_requests: 20,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub backends: Vec<Backend>,
    /// PostgreSQL server URL of a user that may create databases.
    pub pg_url: String,
    pub stages: Vec<Stage>,
    /// Concurrent clients of the issuance and OCSP stages.
    pub clients: usize,
    pub quick: bool,
    pub sizes: Sizes,
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    /// Where to leave sample outputs (CA, certificate, OCSP, CRL) for
    /// outside tools.
    pub artifacts: Option<PathBuf>,
    /// Keep the work directory (server logs, SQLite files, the token) and
    /// the PostgreSQL databases.
    pub keep: bool,
}

/// Runs the benchmark. `Ok(true)` when every correctness check passed.
pub fn run(opts: &Options) -> BenchResult<bool> {
    match (std::env::var_os(WORK_DIR_ENV), std::env::var(BACKEND_ENV)) {
        (Some(dir), Ok(backend)) => {
            let backend = Backends::from_str(&backend)
                .ok()
                .and_then(|b| b.0.first().copied())
                .ok_or_else(|| setup(format!("{BACKEND_ENV}={backend}")))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(nproc())
                .enable_all()
                .build()?;
            let dir = PathBuf::from(dir);
            let report = runtime.block_on(stages::run_backend(opts, backend, &dir))?;
            std::fs::write(
                dir.join(PART_REPORT),
                serde_json::to_vec(&report).map_err(setup)?,
            )?;
            Ok(report.ok)
        }
        _ => run_backends(opts),
    }
}

/// One child process per backend, then the merged report.
fn run_backends(opts: &Options) -> BenchResult<bool> {
    let work = std::env::temp_dir().join(format!("clm-bench-{}", uuid::Uuid::new_v4().simple()));
    let mut report = Report::new(opts.quick, opts.clients, opts.sizes.clone());
    println!("{}", report.header());
    for &backend in &opts.backends {
        let dir = work.join(backend.slug());
        let part = std::fs::create_dir_all(&dir)
            .map_err(BenchError::from)
            .and_then(|()| run_child(backend, &dir))
            .and_then(|()| {
                let bytes = std::fs::read(dir.join(PART_REPORT))?;
                serde_json::from_slice::<Report>(&bytes).map_err(setup)
            });
        match part {
            Ok(part) => report.merge(part),
            Err(e) => report.check(
                Some(backend),
                Stage::Sign,
                "the backend's run reported",
                Err(e.to_string()),
            ),
        }
    }
    println!("\n{}", report.human());
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report).map_err(setup)?)?;
    }
    if let Some(path) = &opts.markdown {
        std::fs::write(path, report.markdown())?;
    }
    if opts.keep {
        println!("clm bench: work directory kept in {}", work.display());
    } else if let Err(e) = std::fs::remove_dir_all(&work) {
        eprintln!("clm bench: could not remove {}: {e}", work.display());
    }
    Ok(report.ok)
}

/// This executable again, for one backend, on a token of its own in `dir`.
fn run_child(backend: Backend, dir: &Path) -> BenchResult<()> {
    let conf = init_token(dir)?;
    Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(WORK_DIR_ENV, dir)
        .env(BACKEND_ENV, backend.slug())
        .env("SOFTHSM2_CONF", conf)
        .status()?;
    // Its exit status says whether its checks passed; its report says
    // which, and a missing report is the failure.
    Ok(())
}

/// The token of one backend's run, made by the script developers use.
/// Returns its `SOFTHSM2_CONF`.
fn init_token(dir: &Path) -> BenchResult<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("softhsm/init-token.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| setup(format!("{}: {e}", script.display())))?;
    if !status.success() {
        return Err(setup("softhsm/init-token.sh failed"));
    }
    Ok(dir.join("softhsm/softhsm2.conf"))
}

/// One backend's token, as seen from its work directory.
#[derive(Clone, Debug)]
struct Token {
    conf: PathBuf,
    pin_file: PathBuf,
}

impl Token {
    fn of(work_dir: &Path) -> Self {
        Token {
            conf: work_dir.join("softhsm/softhsm2.conf"),
            pin_file: work_dir.join("softhsm/user.pin"),
        }
    }

    async fn open(&self) -> BenchResult<Hsm> {
        let pin = Secret::new(std::fs::read_to_string(&self.pin_file)?.trim().to_string());
        tokio::task::spawn_blocking(move || {
            Hsm::open(Path::new(PKCS11_MODULE), TOKEN_LABEL, &pin, 8)
        })
        .await
        .map_err(setup)?
        .map_err(BenchError::from)
    }
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
