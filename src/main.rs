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
    init_logging(&cfg);
    let result = actix_web::rt::System::new().block_on(async move {
        match command {
            Command::Init => init(&cfg).await.map(|_| ExitCode::SUCCESS),
            Command::Serve => serve(&cfg).await.map(|_| ExitCode::SUCCESS),
            Command::Migrate => migrate(&cfg).await.map(|_| ExitCode::SUCCESS),
            Command::Hsm {
                command: HsmCommand::Check,
            } => hsm_check(&cfg).await,
            Command::User {
                command: UserCommand::Add { email, roles, org },
            } => user_add(&cfg, &email, &roles, &org)
                .await
                .map(|_| ExitCode::SUCCESS),
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

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
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
    let clm = init(cfg).await?;
    spawn_jobs(clm.clone(), cfg.job_interval_seconds);
    let tls_dir = cfg.tls_dir();
    clm::http::serve(
        clm,
        clm::http::Listeners {
            api: &cfg.listen,
            public: &cfg.http_listen,
            tls_dir: cfg.tls_enabled.then_some(tls_dir.as_path()),
        },
    )
    .await?;
    Ok(())
}

/// Periodic background work of this instance. Every job is safe to run
/// on several instances at once (compare-and-set in the databases).
fn spawn_jobs(clm: Clm, interval_seconds: i64) {
    use std::time::Duration;
    let period = Duration::from_secs(u64::try_from(interval_seconds).unwrap_or(30));
    // Webhooks are wanted soon after their event: at least every 5 seconds.
    let hooks = clm.clone();
    match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => every(
            period.min(Duration::from_secs(5)),
            "webhook delivery",
            move || {
                let (hooks, client) = (hooks.clone(), client.clone());
                async move { hooks.deliver_webhooks(&client).await }
            },
        ),
        Err(e) => tracing::error!(error = %e, "webhook client unavailable; deliveries stop"),
    }
    let c = clm.clone();
    every(period, "request expiry", move || {
        let c = c.clone();
        async move { c.expire_overdue_requests().await }
    });
    let c = clm.clone();
    every(period, "certificate expiry", move || {
        let c = c.clone();
        async move { c.expiry_sweep().await.map(|r| r.notices + r.expired) }
    });
    let c = clm.clone();
    every(period, "CRL refresh", move || {
        let c = c.clone();
        async move { c.refresh_due_crls().await }
    });
    // Other instances' revocations reach this cache through this poll.
    let c = clm.clone();
    every(Duration::from_secs(2), "OCSP cache refresh", move || {
        let c = c.clone();
        async move { c.refresh_ocsp_cache().await }
    });
    every(
        Duration::from_secs(3600),
        "OCSP responder renewal",
        move || {
            let c = clm.clone();
            async move { c.ensure_ocsp_signers().await }
        },
    );
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
    println!("clm user add: created {}", added.user["id"]);
    if let Some(pw) = added.generated_password {
        println!(
            "clm user add: generated password (shown once): {}",
            pw.expose()
        );
    }
    Ok(())
}
