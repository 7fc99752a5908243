//! The `clm` command line: wires configuration, logging, the service and
//! the HTTP listeners together.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use clm::config::Config;
use clm::service::{Clm, InitReport};

#[derive(Parser)]
#[command(
    name = "clm",
    version,
    about = "HSM-backed certificate lifecycle manager"
)]
struct Cli {
    /// Configuration file (default: ./clm.toml when present). Environment
    /// variables override it.
    #[arg(long, global = true, env = "CLM_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or migrate both databases and bootstrap keys, CAs and the first admin.
    Init,
    /// Run the service (performs missing init steps first).
    Serve,
    /// Apply pending migrations to both databases.
    Migrate,
    /// Inspect the PKCS#11 token.
    Hsm {
        #[command(subcommand)]
        command: HsmCommand,
    },
    /// Manage users from the host.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// The tamper-evident audit trails.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Key-encryption keys and archived private keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Compare clm_secure with clm_core's certificate mirror, repair what an
    /// interrupted process left behind and verify both audit trails; exit
    /// non-zero if anything stays inconsistent.
    Reconcile {
        /// Report only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// A request still in `approved` after this long was interrupted.
        #[arg(long, default_value_t = clm::service::DEFAULT_GRACE_SECONDS)]
        grace_seconds: i64,
        /// Compare only certificates created, or whose status changed, at
        /// this moment (RFC 3339) or later, instead of every certificate:
        /// after a crash at a known time, on databases too large to walk.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Background jobs: which instance holds each lease, when each last ran.
    Jobs,
    /// Load generators for benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Exit 0 if both audit trails are intact; non-zero and the first bad
    /// entry otherwise.
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Seal every committed entry now (the server does so every
    /// CLM_AUDIT_SEAL_INTERVAL_SECONDS).
    Seal,
    /// New audit MAC key in the HSM (version + 1); the old one stays for
    /// verification.
    RotateKey,
    /// Delete whole seals older than the retention (CLM_AUDIT_RETENTION_DAYS
    /// unless given), leaving a checkpoint and an audited entry.
    Purge {
        #[arg(long)]
        retention_days: Option<i64>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// New KEK version; rewrap every archived key (resumes a rotation that
    /// was interrupted).
    RotateKek,
    /// Back to the previous KEK, inside its rollback window.
    RollbackKek,
    /// The rotations with their progress.
    Status,
    /// Unwrap every archived key in the HSM and check it against its
    /// certificate; non-zero exit on any failure.
    Verify,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The benchmark of docs/performance.md: a fresh server (this binary,
    /// own token and databases) loaded over the network, every figure next
    /// to its yardstick and target. Exits non-zero if a correctness check
    /// fails (not for a missed target).
    Run(Box<BenchRunArgs>),
    /// Create N real server-generated, archived keys (for rotation tests
    /// and benchmarks).
    KeysFill {
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Write N real audit entries (half per log) through the production
    /// writer, `batch` per transaction.
    AuditFill {
        #[arg(long)]
        entries: u64,
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// Issuance throughput (CSR → certificate signed in the HSM, all
    /// database writes and audit entries) with audit MACs and the sealer on,
    /// then off. The "off" run writes entries that do not verify: use a
    /// throwaway installation.
    Issue {
        #[arg(long, default_value_t = 300)]
        requests: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Rounds of each (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

#[derive(clap::Args)]
struct BenchRunArgs {
    /// sqlite, postgres or both.
    #[arg(long, default_value = "both")]
    backend: clm::bench::Backends,
    /// PostgreSQL server (a user that may create databases); the run
    /// creates its own databases there and drops them afterwards.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg_url: String,
    /// Smoke-run sizes (seconds, not minutes); checks correctness.
    #[arg(long)]
    quick: bool,
    /// Stages to run, comma-separated: sign, issue, rsa, ocsp, audit, list, crl.
    #[arg(long, value_delimiter = ',')]
    stages: Option<Vec<clm::bench::Stage>>,
    /// Concurrent clients of the issuance and OCSP stages.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Issuances on the P-256 CA.
    #[arg(long)]
    issue: Option<usize>,
    /// Issuances on the RSA-2048 CA.
    #[arg(long)]
    rsa: Option<usize>,
    /// OCSP requests.
    #[arg(long)]
    ocsp: Option<usize>,
    /// Revoked certificates at which a CRL is measured, comma-separated.
    #[arg(long, value_delimiter = ',')]
    crl: Option<Vec<usize>>,
    /// Audit entries to write and verify.
    #[arg(long)]
    audit: Option<u64>,
    /// Certificates stored for the list and search queries.
    #[arg(long)]
    list: Option<usize>,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the results as a markdown table.
    #[arg(long)]
    markdown: Option<std::path::PathBuf>,
    /// Leave sample outputs (CA, certificate, OCSP, CRL) here.
    #[arg(long)]
    artifacts: Option<std::path::PathBuf>,
    /// Keep the work directory (server logs, SQLite files, token) and the
    /// PostgreSQL databases.
    #[arg(long)]
    keep: bool,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. The password is read from CLM_USER_PASSWORD, or
    /// generated and printed once.
    Add {
        #[arg(long)]
        email: String,
        /// A role to grant; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Slug of the organisation.
        #[arg(long, default_value = "system")]
        org: String,
    },
}

#[derive(Subcommand)]
enum HsmCommand {
    /// Token reachable and logged in; every registered key present; every
    /// CA key matching its certificate. Exits non-zero otherwise.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The benchmark reads no configuration (it makes its own) and runs
    // on a runtime of its own; its report is its output.
    if let Command::Bench {
        command: BenchCommand::Run(args),
    } = cli.command
    {
        return bench_run(*args);
    }
    run(cli.command, cli.config.as_deref())
}

fn run(command: Command, config_path: Option<&std::path::Path>) -> ExitCode {
    let cfg = match Config::load_from(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("clm: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_writer = clm::logging::init(cfg.log_format == "json");
    // The system's runtime (background jobs, the database writers of the
    // group commit, the audit sealer) gets worker threads of its own: on
    // actix's default single thread the writers alone saturated it under
    // load (docs/performance.md). The HTTP workers keep their own threads.
    let result = actix_web::rt::System::with_tokio_rt(|| {
        match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("clm-system")
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                // Start-up: without a runtime nothing can run.
                eprintln!("clm: cannot start the runtime: {e}");
                std::process::exit(1)
            }
        }
    })
    .block_on(async move {
        match command {
            Command::Init => init(&cfg).await.map(|_| ExitCode::SUCCESS),
            Command::Serve => serve(&cfg).await.map(|_| ExitCode::SUCCESS),
            Command::Migrate => migrate(&cfg).await.map(|_| ExitCode::SUCCESS),
            Command::Reconcile {
                dry_run,
                grace_seconds,
                since,
                json,
            } => {
                let opts = clm::service::ReconcileOptions {
                    dry_run,
                    grace_seconds,
                    since,
                };
                reconcile(&cfg, opts, json).await
            }
            Command::Jobs => jobs(&cfg).await,
            Command::Hsm {
                command: HsmCommand::Check,
            } => hsm_check(&cfg).await,
            Command::User {
                command: UserCommand::Add { email, roles, org },
            } => user_add(&cfg, &email, &roles, &org)
                .await
                .map(|_| ExitCode::SUCCESS),
            Command::Audit { command } => audit(&cfg, command).await,
            Command::Keys { command } => keys(&cfg, command).await,
            // Dispatched in `main`.
            Command::Bench {
                command: BenchCommand::Run(_),
            } => Ok(ExitCode::SUCCESS),
            Command::Bench {
                command: BenchCommand::KeysFill { count, concurrency },
            } => {
                let clm = init(&unthrottled(&cfg)).await?;
                let n = clm
                    .bench_keys_fill(&cfg.bootstrap_admin_email, count, concurrency)
                    .await
                    .map_err(|e| e.log_message())?;
                println!("clm bench keys-fill: {n} archived keys created");
                Ok(ExitCode::SUCCESS)
            }
            Command::Bench {
                command: BenchCommand::AuditFill { entries, batch },
            } => bench_audit_fill(&cfg, entries, batch).await,
            Command::Bench {
                command:
                    BenchCommand::Issue {
                        requests,
                        concurrency,
                        rounds,
                    },
            } => bench_issue(&cfg, requests, concurrency, rounds).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "command failed");
            eprintln!("clm: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

async fn open(cfg: &Config) -> CliResult<Clm> {
    Ok(Clm::open(cfg).await.map_err(|e| e.log_message())?)
}

async fn init(cfg: &Config) -> CliResult<Clm> {
    let clm = open(cfg).await?;
    let report = clm.bootstrap(cfg).await.map_err(|e| e.log_message())?;
    print_report(&report);
    Ok(clm)
}

fn print_report(report: &InitReport) {
    if report.actions.is_empty() {
        println!("clm init: nothing to do, everything is in place");
    }
    for action in &report.actions {
        println!("clm init: {action}");
    }
    print_admin_password(report);
}

fn print_admin_password(report: &InitReport) {
    // Shown once, on stdout and never in the log.
    if let (Some(email), Some(pw)) = (&report.admin_email, &report.admin_password) {
        println!(
            "clm init: bootstrap admin {email} has the generated password: {}",
            pw.expose()
        );
        println!("clm init: store it now; it is not shown again");
    }
}

async fn serve(cfg: &Config) -> CliResult<()> {
    let signals = clm::http::StopSignals::register()?;
    clm::http::install_metrics();
    let clm = open(cfg).await?;
    // In the log (JSON), not on stdout: only a generated password goes there.
    let report = clm.bootstrap(cfg).await.map_err(|e| e.log_message())?;
    for action in &report.actions {
        tracing::info!(action = %action, "init");
    }
    print_admin_password(&report);
    spawn_jobs(clm.clone(), cfg);
    spawn_audit_jobs(
        clm.clone(),
        cfg.audit_seal_interval_seconds,
        cfg.audit_retention_days,
    );
    let tls_dir = cfg.tls_dir();
    let timeout = std::time::Duration::from_secs(cfg.shutdown_timeout_seconds);
    clm::http::serve(
        clm.clone(),
        clm::http::Listeners {
            api: &cfg.listen,
            public: &cfg.http_listen,
            tls_dir: cfg.tls_enabled.then_some(tls_dir.as_path()),
            shutdown_timeout: timeout,
        },
        signals,
    )
    .await?;
    // Requests are answered; let job runs in progress finish, then close
    // the token.
    if !clm::service::shutdown::stop_jobs(timeout).await {
        tracing::warn!("background jobs still running at the shutdown timeout");
    }
    clm.hsm().finalize().map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

/// Periodic background work. Jobs that act on the shared databases run
/// under a lease (`service::jobs`): of several instances one runs each, once
/// per period. The OCSP cache refresh is this process's own.
fn spawn_jobs(clm: Clm, cfg: &Config) {
    use std::time::Duration;
    let period = Duration::from_secs(u64::try_from(cfg.job_interval_seconds).unwrap_or(30));
    // Webhooks are wanted soon after their event: at least every 5 seconds.
    match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => leased(
            &clm,
            period.min(Duration::from_secs(5)),
            "webhook delivery",
            move |c| {
                let client = client.clone();
                async move { c.deliver_webhooks(&client).await }
            },
        ),
        Err(e) => tracing::error!(error = %e, "webhook client unavailable; deliveries stop"),
    }
    leased(&clm, period, "request expiry", |c| async move {
        c.expire_overdue_requests().await
    });
    let expiry = std::rc::Rc::new(clm::service::ExpirySchedule::default());
    leased(&clm, period, "certificate expiry", move |c| {
        let expiry = expiry.clone();
        async move { c.expiry_sweep(&expiry).await.map(|r| r.notices + r.expired) }
    });
    // Resumes an interrupted KEK rotation, destroys KEKs past their
    // rollback window, rotates on schedule.
    leased(
        &clm,
        period,
        clm::service::KEK_MAINTENANCE,
        |c| async move { c.kek_maintenance().await },
    );
    leased(&clm, period, "CRL refresh", |c| async move {
        c.refresh_due_crls().await
    });
    let schedule = std::rc::Rc::new(clm::service::ReconcileSchedule::default());
    leased(
        &clm,
        Duration::from_secs(cfg.reconcile_interval_seconds.unsigned_abs()),
        "reconciliation",
        move |c| {
            let schedule = schedule.clone();
            async move {
                let report = c.reconcile_scheduled(&schedule).await?;
                if !report.consistent() {
                    tracing::error!(
                        orphan_mirrors = report.orphan_mirrors.found,
                        "reconciliation found what it cannot repair; run clm reconcile"
                    );
                }
                Ok(usize::try_from(report.repairs()).unwrap_or(usize::MAX))
            }
        },
    );
    leased(
        &clm,
        Duration::from_secs(3600),
        "OCSP responder renewal",
        |c| async move { c.ensure_ocsp_signers().await },
    );
    // What bursts of requests left in the allocator goes back to the
    // system once a minute (src/memory.rs).
    every(Duration::from_secs(60), "memory release", || async {
        clm::memory::release_freed_in_background().await;
        Ok(0)
    });
    // A SQLite log that readers keep from starting over grows by every
    // transaction until this empties it (store::wal).
    every(Duration::from_secs(2), "SQLite log checkpoint", {
        let c = clm.clone();
        move || {
            let c = c.clone();
            async move { c.checkpoint_long_logs().await }
        }
    });
    // Other instances' revocations reach this cache through this poll.
    every(Duration::from_secs(2), "OCSP cache refresh", move || {
        let c = clm.clone();
        async move { c.refresh_ocsp_cache().await }
    });
}

/// [`every`] `period`, under the job's lease.
fn leased<F, Fut>(clm: &Clm, period: std::time::Duration, name: &'static str, job: F)
where
    F: Fn(Clm) -> Fut + 'static,
    Fut: std::future::Future<Output = clm::service::ServiceResult<usize>> + 'static,
{
    let clm = clm.clone();
    let job = std::rc::Rc::new(job);
    every(period, name, move || {
        let (c, job) = (clm.clone(), job.clone());
        async move {
            Ok(c.run_leased(name, period, job(c.clone()))
                .await?
                .unwrap_or(0))
        }
    });
}

/// Runs `job` every `period`, logging what it did and why it failed.
fn every<F, Fut>(period: std::time::Duration, name: &'static str, job: F)
where
    F: Fn() -> Fut + 'static,
    Fut: std::future::Future<Output = clm::service::ServiceResult<usize>>,
{
    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(period);
        loop {
            tick.tick().await;
            let Some(_run) = clm::service::shutdown::begin_job().await else {
                break;
            };
            match job().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(job = name, items = n, "background job"),
                Err(e) => {
                    tracing::warn!(job = name, error = %e.log_message(), "background job failed")
                }
            }
        }
    });
}

/// Audit sealing (every `seal_seconds`; it also picks up audit keys rotated
/// by another process) and the daily retention purge.
fn spawn_audit_jobs(clm: Clm, seal_seconds: i64, retention_days: i64) {
    let period = std::time::Duration::from_secs(u64::try_from(seal_seconds).unwrap_or(1));
    let sealer = clm.clone();
    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(period);
        loop {
            tick.tick().await;
            let Some(_run) = clm::service::shutdown::begin_job().await else {
                break;
            };
            if let Err(e) = sealer.load_audit_keys().await {
                tracing::warn!(error = %e.log_message(), "audit key reload failed");
            }
            // Keys are this process's to load; sealing is one instance's.
            match sealer
                .run_leased("audit seal", period, sealer.seal_audit())
                .await
            {
                Ok(outcomes) => {
                    for (log, o) in outcomes.into_iter().flatten() {
                        if let Some(why) = o.refused {
                            tracing::error!(log = %log, reason = %why, "audit sealing refused");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e.log_message(), "audit seal job failed"),
            }
        }
    });
    let daily = std::time::Duration::from_secs(24 * 3600);
    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(daily);
        loop {
            tick.tick().await;
            let Some(_run) = clm::service::shutdown::begin_job().await else {
                break;
            };
            let ctx = clm::domain::model::RequestContext {
                request_id: Some(format!("purge-{}", uuid::Uuid::new_v4())),
                ..Default::default()
            };
            let purge = clm.purge_audit(retention_days, &ctx);
            match clm.run_leased("audit purge", daily, purge).await {
                Ok(done) => {
                    for (log, n) in done.into_iter().flatten().filter(|(_, n)| *n > 0) {
                        tracing::info!(log = %log, purged = n, "audit entries past retention purged");
                    }
                }
                Err(e) => tracing::warn!(error = %e.log_message(), "audit purge job failed"),
            }
        }
    });
}

/// `clm reconcile`: the pass the background job runs, then both audit
/// trails verified; exit 0 only if everything is consistent.
async fn reconcile(
    cfg: &Config,
    opts: clm::service::ReconcileOptions,
    json: bool,
) -> CliResult<ExitCode> {
    let dry_run = opts.dry_run;
    let clm = open(cfg).await?;
    let report = clm.reconcile(opts).await.map_err(|e| e.log_message())?;
    let audit = clm.verify_audit().await.map_err(|e| e.log_message())?;
    if json {
        let both = serde_json::json!({ "reconcile": report, "audit": audit });
        println!("{}", serde_json::to_string_pretty(&both)?);
    } else {
        let verb = if dry_run { "would repair" } else { "repaired" };
        let scope = match report.since {
            Some(t) => format!(" (created or changed since {})", t.to_rfc3339()),
            None => String::new(),
        };
        println!(
            "reconcile: {} certificates compared with clm_core's mirror{scope}",
            report.certificates_checked
        );
        for (what, f) in [
            ("missing mirrors", &report.missing_mirrors),
            ("out-of-date mirror statuses", &report.stale_statuses),
            ("interrupted requests", &report.interrupted_requests),
        ] {
            let n = if dry_run { f.found } else { f.repaired };
            println!("reconcile: {what}: {} found, {n} {verb}", f.found);
        }
        let orphans = &report.orphan_mirrors;
        if orphans.found > 0 {
            println!(
                "reconcile: FAILED: {} mirrored certificates unknown to clm_secure (first: {})",
                orphans.found,
                orphans.examples.join(", ")
            );
        }
        for l in &audit.logs {
            match &l.first_bad {
                None => println!("audit {}: ok, {} entries", l.log, l.entries),
                Some(b) => println!("audit {}: FAILED: {b}", l.log),
            }
        }
    }
    // A dry run repairs nothing, so anything it finds counts against it.
    Ok(if report.consistent() && audit.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `clm jobs`: the job leases of every instance on these databases.
async fn jobs(cfg: &Config) -> CliResult<ExitCode> {
    let clm = open(cfg).await?;
    for l in clm.job_leases().await.map_err(|e| e.log_message())? {
        let started = chrono::DateTime::from_timestamp_millis(l.last_started_ms)
            .map_or_else(|| "never".into(), |t| t.to_rfc3339());
        println!(
            "{}: {} runs, last started {started} by {}, {}",
            l.name,
            l.runs,
            l.last_holder.as_deref().unwrap_or("nobody"),
            match &l.holder {
                Some(h) => format!("running on {h}"),
                None => "idle".into(),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit(cfg: &Config, command: AuditCommand) -> CliResult<ExitCode> {
    let clm = open(cfg).await?;
    let ctx = clm::domain::model::RequestContext {
        request_id: Some(format!("cli-{}", uuid::Uuid::new_v4())),
        user_agent: Some("clm audit".into()),
        ..Default::default()
    };
    match command {
        AuditCommand::Verify { json } => {
            let report = clm.verify_audit().await.map_err(|e| e.log_message())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for l in &report.logs {
                    match &l.first_bad {
                        None => println!(
                            "{}: ok, {} entries, {} seals, {} unsealed",
                            l.log, l.entries, l.seals, l.unsealed
                        ),
                        Some(b) => println!("{}: FAILED: {b}", l.log),
                    }
                }
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Seal => {
            let mut code = ExitCode::SUCCESS;
            for (log, o) in clm.seal_audit().await.map_err(|e| e.log_message())? {
                println!("{log}: sealed {} entries in {} seals", o.entries, o.seals);
                if let Some(why) = o.refused {
                    println!("{log}: REFUSED: {why}");
                    code = ExitCode::FAILURE;
                }
            }
            Ok(code)
        }
        AuditCommand::RotateKey => {
            let v = clm
                .rotate_audit_key(&ctx)
                .await
                .map_err(|e| e.log_message())?;
            println!("clm audit rotate-key: audit MAC key version {v} is active");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Purge { retention_days } => {
            let days = retention_days.unwrap_or(cfg.audit_retention_days);
            for (log, n) in clm
                .purge_audit(days, &ctx)
                .await
                .map_err(|e| e.log_message())?
            {
                println!("{log}: purged {n} entries older than {days} days");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `clm bench run`: outside the actix system, on a runtime of its own.
fn bench_run(a: BenchRunArgs) -> ExitCode {
    let mut sizes = if a.quick {
        clm::bench::Sizes::quick()
    } else {
        clm::bench::Sizes::full()
    };
    sizes.issue = a.issue.unwrap_or(sizes.issue);
    sizes.rsa = a.rsa.unwrap_or(sizes.rsa);
    sizes.ocsp = a.ocsp.unwrap_or(sizes.ocsp);
    sizes.crl = a.crl.unwrap_or(sizes.crl);
    sizes.audit = a.audit.unwrap_or(sizes.audit);
    sizes.list = a.list.unwrap_or(sizes.list);
    let mut stages = a.stages.unwrap_or_else(|| clm::bench::Stage::ALL.to_vec());
    stages.sort();
    stages.dedup();
    let opts = clm::bench::Options {
        backends: a.backend.0,
        pg_url: a.pg_url,
        stages,
        clients: a.clients,
        quick: a.quick,
        sizes,
        json: a.json,
        markdown: a.markdown,
        artifacts: a.artifacts,
        keep: a.keep,
    };
    match clm::bench::run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("clm bench run: correctness checks failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("clm bench run: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench_audit_fill(cfg: &Config, entries: u64, batch: usize) -> CliResult<ExitCode> {
    let clm = open(cfg).await?;
    let started = std::time::Instant::now();
    clm.bench_audit_fill(entries, batch)
        .await
        .map_err(|e| e.log_message())?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "clm bench audit-fill: {entries} entries in {secs:.2}s ({:.0}/s)",
        entries as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// Load generators issue as one principal as fast as they can: the
/// issuance rate limit is for clients, not for them.
fn unthrottled(cfg: &Config) -> Config {
    Config {
        issuance_rate_per_minute: 0,
        ..cfg.clone()
    }
}

async fn bench_issue(
    cfg: &Config,
    requests: usize,
    concurrency: usize,
    rounds: usize,
) -> CliResult<ExitCode> {
    let cfg = &unthrottled(cfg);
    let clm = open(cfg).await?;
    // Proves and loads the CA keys (changes nothing on an initialised
    // installation).
    clm.bootstrap(cfg).await.map_err(|e| e.log_message())?;
    let p = clm
        .principal_for_benchmark(&cfg.bootstrap_admin_email)
        .await
        .map_err(|e| e.log_message())?;
    let profile = clm
        .default_profile_for_benchmark()
        .await
        .map_err(|e| e.log_message())?;
    let off = clm.without_audit_macs_for_benchmark();
    let mut on_rates = Vec::new();
    let mut off_rates = Vec::new();
    // All "on" rounds first: the entries of an "off" round carry no valid
    // MAC, and the sealer (rightly) stops sealing at the first of them.
    let plan: Vec<(usize, bool)> = [true, false]
        .into_iter()
        .flat_map(|on| (0..rounds.max(1)).map(move |r| (r, on)))
        .collect();
    {
        for (round, audit_on) in plan {
            let app = if audit_on { clm.clone() } else { off.clone() };
            let csrs: Vec<String> = (0..requests)
                .map(|i| {
                    let name = format!("b{round}-{i}-{audit_on}.bench.test");
                    let key = rcgen::KeyPair::generate()?;
                    let mut params = rcgen::CertificateParams::new(vec![name.clone()])?;
                    params
                        .distinguished_name
                        .push(rcgen::DnType::CommonName, name);
                    params.serialize_request(&key)?.pem()
                })
                .collect::<Result<_, rcgen::Error>>()?;
            // With audit on, the sealer runs alongside as in `clm serve`.
            let with_sealer = std::env::var("CLM_BENCH_SEALER").map_or(true, |v| v != "off");
            let sealer = (audit_on && with_sealer).then(|| {
                let s = clm.clone();
                actix_web::rt::spawn(async move {
                    let mut tick = actix_web::rt::time::interval(std::time::Duration::from_secs(1));
                    loop {
                        tick.tick().await;
                        let _ = s.seal_audit().await;
                    }
                })
            });
            let started = std::time::Instant::now();
            let queue = std::sync::Arc::new(std::sync::Mutex::new(csrs));
            let mut workers = Vec::new();
            for _ in 0..concurrency.max(1) {
                let (app, p, queue) = (app.clone(), p.clone(), queue.clone());
                workers.push(actix_web::rt::spawn(async move {
                    let ctx = clm::domain::model::RequestContext::default();
                    loop {
                        let next = queue.lock().ok().and_then(|mut q| q.pop());
                        let Some(csr) = next else { break };
                        let body = clm::service::SubmitRequest {
                            profile_id: profile,
                            csr_pem: Some(csr),
                            validity_days: None,
                            subject: None,
                            sans: None,
                            key_algorithm: None,
                            passphrase: None,
                        };
                        if let Err(e) = app.submit_request(&p, body, None, &ctx).await {
                            return Err(e.log_message());
                        }
                    }
                    Ok(())
                }));
            }
            for w in workers {
                w.await??;
            }
            let rate = requests as f64 / started.elapsed().as_secs_f64();
            if let Some(s) = sealer {
                s.abort();
            }
            println!(
                "round {round}: audit {}: {rate:.1} issuances/s",
                if audit_on { "on " } else { "off" }
            );
            if audit_on {
                on_rates.push(rate);
            } else {
                off_rates.push(rate);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (on, off) = (median(&mut on_rates), median(&mut off_rates));
    println!(
        "clm bench issue: audit on {on:.1}/s, off {off:.1}/s, on/off = {:.1} %",
        100.0 * on / off
    );
    Ok(ExitCode::SUCCESS)
}

async fn keys(cfg: &Config, command: KeysCommand) -> CliResult<ExitCode> {
    let clm = open(cfg).await?;
    let ctx = clm::domain::model::RequestContext::default();
    let actor = clm::domain::model::Actor::SYSTEM;
    let print = |r: &clm::domain::model::KeyRotation| {
        println!(
            "{}\t{}\t{}/{}\tstarted {}",
            r.id, r.status, r.rewrapped_count, r.total_count, r.started_at
        )
    };
    match command {
        KeysCommand::RotateKek | KeysCommand::RollbackKek => {
            let rollback = matches!(command, KeysCommand::RollbackKek);
            if !rollback
                && let Some(r) = clm
                    .continue_kek_rotation()
                    .await
                    .map_err(|e| e.log_message())?
            {
                println!("clm keys: resumed and finished an interrupted rotation");
                print(&r);
                return Ok(ExitCode::SUCCESS);
            }
            let started = if rollback {
                clm.start_kek_rollback(actor, &ctx).await
            } else {
                clm.start_kek_rotation(actor, &ctx).await
            }
            .map_err(|e| e.log_message())?;
            println!("clm keys: started, {} keys to rewrap", started.total_count);
            if let Some(r) = clm
                .continue_kek_rotation()
                .await
                .map_err(|e| e.log_message())?
            {
                print(&r);
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Status => {
            for r in clm
                .kek_rotation_history()
                .await
                .map_err(|e| e.log_message())?
            {
                print(&r);
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Verify => {
            let (checked, failures) = clm
                .verify_archived_keys()
                .await
                .map_err(|e| e.log_message())?;
            for f in &failures {
                println!("FAIL\t{f}");
            }
            println!(
                "clm keys verify: {} of {checked} archived keys unwrap and match",
                checked - failures.len()
            );
            Ok(if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn migrate(cfg: &Config) -> CliResult<()> {
    clm::service::migrate(cfg)
        .await
        .map_err(|e| e.log_message())?;
    println!("clm migrate: both databases are up to date");
    Ok(())
}

async fn hsm_check(cfg: &Config) -> CliResult<ExitCode> {
    let clm = open(cfg).await?;
    let report = clm.hsm_check().await.map_err(|e| e.log_message())?;
    let mut ok = true;
    for line in &report {
        println!(
            "{}\t{}\t{}\t{}",
            if line.ok { "ok" } else { "FAIL" },
            line.purpose,
            line.label,
            line.detail
        );
        ok &= line.ok;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn user_add(cfg: &Config, email: &str, roles: &[String], org: &str) -> CliResult<()> {
    let roles = roles
        .iter()
        .map(|r| {
            r.parse::<clm::domain::Role>()
                .map_err(|e| format!("--role: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let password = std::env::var("CLM_USER_PASSWORD")
        .ok()
        .map(clm::domain::Secret::new);
    let clm = open(cfg).await?;
    let added = clm
        .add_user_as_operator(email, &roles, org, password)
        .await
        .map_err(|e| e.log_message())?;
    println!("clm user add: created {}", added.user.id);
    if let Some(pw) = added.generated_password {
        println!(
            "clm user add: generated password (shown once): {}",
            pw.expose()
        );
    }
    Ok(())
}
