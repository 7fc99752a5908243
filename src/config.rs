//! Settings: environment variables (`CLM_*`, see API.md) over an optional
//! `clm.toml` over defaults. Secrets are held in [`Secret`] so that printing
//! the configuration (`{:?}`) never shows a PIN, password or database URL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::domain::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    File { path: PathBuf, message: String },
    #[error("setting {key} is not valid: {message}")]
    Invalid { key: &'static str, message: String },
    #[error(
        "no PKCS#11 PIN: set CLM_PKCS11_PIN or CLM_PKCS11_PIN_FILE, or run softhsm/init-token.sh for a development token"
    )]
    NoPin,
}

/// The resolved configuration of one clm process.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub core_database_url: Secret,
    pub secure_database_url: Secret,
    pub pkcs11_module: PathBuf,
    pub pkcs11_token_label: String,
    pub pkcs11_pin: Option<Secret>,
    pub hsm_pool_size: usize,
    pub listen: String,
    pub tls_enabled: bool,
    pub http_listen: String,
    pub public_url: String,
    pub bootstrap_admin_email: String,
    pub bootstrap_admin_password: Option<Secret>,
    /// Absolute lifetime of a login session.
    pub session_ttl_minutes: i64,
    /// A session unused for this long ends.
    pub session_idle_minutes: i64,
    /// Consecutive failed logins that lock an account…
    pub login_max_failures: i64,
    /// …for this long (or until an administrator unlocks it).
    pub login_lockout_seconds: i64,
    /// Login attempts accepted per source address and minute.
    pub login_rate_per_minute: i64,
    /// Issuance requests (submissions, renewals) per user or API key and
    /// minute, per instance; 0 = no limit.
    pub issuance_rate_per_minute: u32,
    /// On SIGTERM, requests in flight get this long to finish.
    pub shutdown_timeout_seconds: u64,
    /// A request pending approval for longer expires.
    pub request_ttl_seconds: i64,
    /// How often background jobs (request expiry) run.
    pub job_interval_seconds: i64,
    /// A periodic job's lease lapses this long after its holder last
    /// renewed it (a killed instance's jobs move on after this).
    pub job_lease_seconds: i64,
    /// How often the reconciliation pass runs in the background.
    pub reconcile_interval_seconds: i64,
    /// First wait before a failed webhook delivery is retried; doubles
    /// with every attempt.
    pub webhook_retry_base_seconds: i64,
    /// A CRL's nextUpdate is this long after its thisUpdate; it is
    /// re-signed once half of that has passed.
    pub crl_validity_seconds: i64,
    /// Lifetime of an OCSP response (nextUpdate − thisUpdate); cached
    /// responses are re-signed once half of it has passed.
    pub ocsp_validity_seconds: i64,
    /// Validity of the delegated OCSP signing certificates; renewed when a
    /// third is left.
    pub ocsp_signer_days: i64,
    /// A retired KEK can be rolled back to for this long, then it is
    /// destroyed in the token (0: at the next job run, no rollback).
    pub kek_rollback_days: i64,
    /// Rotate the KEK automatically this often; 0 = only by hand.
    pub kek_rotation_days: i64,
    /// Archived keys rewrapped per committed batch.
    pub kek_rewrap_batch: i64,
    /// Pause between rewrap batches (lets tests interrupt a rotation).
    pub kek_rewrap_pause_ms: i64,
    /// Owners are notified this many days before notAfter, once each.
    pub expiry_notice_days: Vec<u32>,
    /// `json` (default) or `text`.
    pub log_format: String,
    /// How often `clm serve` seals new audit entries (issue #7).
    pub audit_seal_interval_seconds: i64,
    /// Sealed audit entries older than this are purged (daily job).
    pub audit_retention_days: i64,
}

/// Keys a `clm.toml` may set: the environment variable names without the
/// `CLM_` prefix, in lower case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<String>,
    core_database_url: Option<Secret>,
    secure_database_url: Option<Secret>,
    pkcs11_module: Option<String>,
    pkcs11_token_label: Option<String>,
    pkcs11_pin: Option<Secret>,
    pkcs11_pin_file: Option<String>,
    hsm_pool_size: Option<i64>,
    listen: Option<String>,
    tls_enabled: Option<bool>,
    http_listen: Option<String>,
    public_url: Option<String>,
    bootstrap_admin_email: Option<String>,
    bootstrap_admin_password: Option<Secret>,
    session_ttl_minutes: Option<i64>,
    session_idle_minutes: Option<i64>,
    login_max_failures: Option<i64>,
    login_lockout_seconds: Option<i64>,
    login_rate_per_minute: Option<i64>,
    issuance_rate_per_minute: Option<i64>,
    shutdown_timeout_seconds: Option<i64>,
    request_ttl_seconds: Option<i64>,
    job_interval_seconds: Option<i64>,
    job_lease_seconds: Option<i64>,
    reconcile_interval_seconds: Option<i64>,
    webhook_retry_base_seconds: Option<i64>,
    crl_validity_seconds: Option<i64>,
    ocsp_validity_seconds: Option<i64>,
    ocsp_signer_days: Option<i64>,
    expiry_notice_days: Option<String>,
    kek_rollback_days: Option<i64>,
    kek_rotation_days: Option<i64>,
    kek_rewrap_batch: Option<i64>,
    kek_rewrap_pause_ms: Option<i64>,
    log_format: Option<String>,
    audit_seal_interval_seconds: Option<i64>,
    audit_retention_days: Option<i64>,
}

impl Config {
    /// Reads the process environment and the config file at `path` (or
    /// `./clm.toml` when it exists).
    pub fn load_from(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("CLM_"))
            .collect();
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| Some(PathBuf::from("clm.toml")).filter(|p| p.exists()));
        let file_text = match &path {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        Self::from_sources(&env, file_text.as_deref(), path.as_deref())
    }

    /// Pure resolution from an environment map and an optional file body.
    pub fn from_sources(
        env: &HashMap<String, String>,
        file_text: Option<&str>,
        file_path: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = match file_text {
            Some(text) => toml::from_str(text).map_err(|e| ConfigError::File {
                path: file_path.map(Path::to_path_buf).unwrap_or_default(),
                message: e.message().to_string(),
            })?,
            None => FileConfig::default(),
        };
        let var = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();

        let data_dir = PathBuf::from(
            var("CLM_DATA_DIR")
                .or(file.data_dir)
                .unwrap_or_else(|| "./data".into()),
        );
        let sqlite_url = |name: &str| {
            Secret::new(format!(
                "sqlite://{}?mode=rwc",
                data_dir.join(name).display()
            ))
        };
        let core_database_url = var("CLM_CORE_DATABASE_URL")
            .map(Secret::new)
            .or(file.core_database_url)
            .unwrap_or_else(|| sqlite_url("clm_core.db"));
        let secure_database_url = var("CLM_SECURE_DATABASE_URL")
            .map(Secret::new)
            .or(file.secure_database_url)
            .unwrap_or_else(|| sqlite_url("clm_secure.db"));

        let pin_file = var("CLM_PKCS11_PIN_FILE")
            .or(file.pkcs11_pin_file)
            .map(PathBuf::from);
        let pkcs11_pin = match (
            var("CLM_PKCS11_PIN").map(Secret::new).or(file.pkcs11_pin),
            pin_file,
        ) {
            (Some(pin), _) => Some(pin),
            (None, Some(path)) => Some(read_pin(&path)?),
            // Development default: the PIN softhsm/init-token.sh generated.
            (None, None) => {
                let dev = data_dir.join("softhsm").join("user.pin");
                if dev.exists() {
                    Some(read_pin(&dev)?)
                } else {
                    None
                }
            }
        };

        let tls_enabled = match var("CLM_TLS_ENABLED") {
            Some(v) => parse_bool("CLM_TLS_ENABLED", &v)?,
            None => file.tls_enabled.unwrap_or(true),
        };
        // Positive whole numbers: environment over file over default.
        let positive =
            |key: &'static str, from_file: Option<i64>, default: i64| -> Result<i64, ConfigError> {
                let v = match var(key) {
                    Some(v) => parse_num(key, &v)?,
                    None => from_file.unwrap_or(default),
                };
                if v <= 0 {
                    return Err(ConfigError::Invalid {
                        key,
                        message: "must be a positive number".into(),
                    });
                }
                Ok(v)
            };
        let non_negative =
            |key: &'static str, from_file: Option<i64>, default: i64| -> Result<i64, ConfigError> {
                let v = match var(key) {
                    Some(v) => parse_num(key, &v)?,
                    None => from_file.unwrap_or(default),
                };
                if v < 0 {
                    return Err(ConfigError::Invalid {
                        key,
                        message: "must not be negative".into(),
                    });
                }
                Ok(v)
            };
        let hsm_pool_size = positive("CLM_HSM_POOL_SIZE", file.hsm_pool_size, 8)? as usize;
        let session_ttl_minutes =
            positive("CLM_SESSION_TTL_MINUTES", file.session_ttl_minutes, 8 * 60)?;
        let session_idle_minutes =
            positive("CLM_SESSION_IDLE_MINUTES", file.session_idle_minutes, 30)?;
        let login_max_failures = positive("CLM_LOGIN_MAX_FAILURES", file.login_max_failures, 5)?;
        let login_lockout_seconds =
            positive("CLM_LOGIN_LOCKOUT_SECONDS", file.login_lockout_seconds, 900)?;
        let login_rate_per_minute =
            positive("CLM_LOGIN_RATE_PER_MINUTE", file.login_rate_per_minute, 30)?;
        // A minute's burst of 3000 covers benchmarks and bulk roll-outs; the
        // sustained 50/s is a fraction of what one instance issues, so a
        // runaway client cannot starve the others.
        let issuance_rate_per_minute = u32::try_from(non_negative(
            "CLM_ISSUANCE_RATE_PER_MINUTE",
            file.issuance_rate_per_minute,
            3000,
        )?)
        .map_err(|_| ConfigError::Invalid {
            key: "CLM_ISSUANCE_RATE_PER_MINUTE",
            message: "too large".into(),
        })?;
        let shutdown_timeout_seconds = positive(
            "CLM_SHUTDOWN_TIMEOUT_SECONDS",
            file.shutdown_timeout_seconds,
            30,
        )?
        .unsigned_abs();
        let request_ttl_seconds = positive(
            "CLM_REQUEST_TTL_SECONDS",
            file.request_ttl_seconds,
            7 * 24 * 3600,
        )?;
        let job_interval_seconds =
            positive("CLM_JOB_INTERVAL_SECONDS", file.job_interval_seconds, 30)?;
        let job_lease_seconds = positive("CLM_JOB_LEASE_SECONDS", file.job_lease_seconds, 30)?;
        let reconcile_interval_seconds = positive(
            "CLM_RECONCILE_INTERVAL_SECONDS",
            file.reconcile_interval_seconds,
            600,
        )?;
        let webhook_retry_base_seconds = positive(
            "CLM_WEBHOOK_RETRY_BASE_SECONDS",
            file.webhook_retry_base_seconds,
            5,
        )?;
        let crl_validity_seconds = positive(
            "CLM_CRL_VALIDITY_SECONDS",
            file.crl_validity_seconds,
            24 * 3600,
        )?;
        let ocsp_validity_seconds = positive(
            "CLM_OCSP_VALIDITY_SECONDS",
            file.ocsp_validity_seconds,
            3600,
        )?;
        let ocsp_signer_days = positive("CLM_OCSP_SIGNER_DAYS", file.ocsp_signer_days, 30)?;
        let expiry_notice_days = notice_days(
            &var("CLM_EXPIRY_NOTICE_DAYS")
                .or(file.expiry_notice_days)
                .unwrap_or_else(|| "30,7,1".into()),
        )?;
        let audit_seal_interval_seconds = positive(
            "CLM_AUDIT_SEAL_INTERVAL_SECONDS",
            file.audit_seal_interval_seconds,
            1,
        )?;
        // Seven years (seed 001: SOX/GDPR retention).
        let audit_retention_days =
            positive("CLM_AUDIT_RETENTION_DAYS", file.audit_retention_days, 2555)?;
        let kek_rollback_days = non_negative("CLM_KEK_ROLLBACK_DAYS", file.kek_rollback_days, 7)?;
        let kek_rotation_days = non_negative("CLM_KEK_ROTATION_DAYS", file.kek_rotation_days, 365)?;
        let kek_rewrap_batch = positive("CLM_KEK_REWRAP_BATCH", file.kek_rewrap_batch, 100)?;
        let kek_rewrap_pause_ms =
            non_negative("CLM_KEK_REWRAP_PAUSE_MS", file.kek_rewrap_pause_ms, 0)?;
        let public_url = var("CLM_PUBLIC_URL")
            .or(file.public_url)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into())
            .trim_end_matches('/')
            .to_string();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                key: "CLM_PUBLIC_URL",
                message: "must be an http:// or https:// URL".into(),
            });
        }
        let log_format = var("CLM_LOG_FORMAT")
            .or(file.log_format)
            .unwrap_or_else(|| "json".into());
        if log_format != "json" && log_format != "text" {
            return Err(ConfigError::Invalid {
                key: "CLM_LOG_FORMAT",
                message: "must be `json` or `text`".into(),
            });
        }

        Ok(Config {
            core_database_url,
            secure_database_url,
            pkcs11_module: PathBuf::from(
                var("CLM_PKCS11_MODULE")
                    .or(file.pkcs11_module)
                    .unwrap_or_else(|| "/usr/lib/softhsm/libsofthsm2.so".into()),
            ),
            pkcs11_token_label: var("CLM_PKCS11_TOKEN_LABEL")
                .or(file.pkcs11_token_label)
                .unwrap_or_else(|| "clm".into()),
            pkcs11_pin,
            hsm_pool_size,
            listen: var("CLM_LISTEN")
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:8443".into()),
            tls_enabled,
            http_listen: var("CLM_HTTP_LISTEN")
                .or(file.http_listen)
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            public_url,
            bootstrap_admin_email: var("CLM_BOOTSTRAP_ADMIN_EMAIL")
                .or(file.bootstrap_admin_email)
                .unwrap_or_else(|| "admin@localhost".into()),
            bootstrap_admin_password: var("CLM_BOOTSTRAP_ADMIN_PASSWORD")
                .map(Secret::new)
                .or(file.bootstrap_admin_password),
            session_ttl_minutes,
            session_idle_minutes,
            login_max_failures,
            login_lockout_seconds,
            login_rate_per_minute,
            issuance_rate_per_minute,
            shutdown_timeout_seconds,
            request_ttl_seconds,
            job_interval_seconds,
            job_lease_seconds,
            reconcile_interval_seconds,
            webhook_retry_base_seconds,
            crl_validity_seconds,
            ocsp_validity_seconds,
            ocsp_signer_days,
            expiry_notice_days,
            kek_rollback_days,
            kek_rotation_days,
            kek_rewrap_batch,
            kek_rewrap_pause_ms,
            log_format,
            audit_seal_interval_seconds,
            audit_retention_days,
            data_dir,
        })
    }

    /// The PIN, or the error that says how to provide one.
    pub fn pin(&self) -> Result<&Secret, ConfigError> {
        self.pkcs11_pin.as_ref().ok_or(ConfigError::NoPin)
    }

    /// Where generated TLS material lives.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }
}

/// "30,7,1" → [30, 7, 1]: distinct whole days, largest first.
fn notice_days(text: &str) -> Result<Vec<u32>, ConfigError> {
    let invalid = || ConfigError::Invalid {
        key: "CLM_EXPIRY_NOTICE_DAYS",
        message: "expected a comma-separated list of days between 1 and 3650".into(),
    };
    let mut days = text
        .split(',')
        .map(|d| d.trim().parse::<u32>().map_err(|_| invalid()))
        .collect::<Result<Vec<_>, _>>()?;
    if days.iter().any(|d| !(1..=3650).contains(d)) {
        return Err(invalid());
    }
    days.sort_unstable_by(|a, b| b.cmp(a));
    days.dedup();
    Ok(days)
}

fn read_pin(path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Secret::new(text.trim()))
}

fn parse_bool(key: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid {
            key,
            message: "expected true or false".into(),
        }),
    }
}

fn parse_num<T: std::str::FromStr>(key: &'static str, v: &str) -> Result<T, ConfigError> {
    v.parse().map_err(|_| ConfigError::Invalid {
        key,
        message: "expected a number".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_data_dir() {
        let c = Config::from_sources(&env(&[("CLM_DATA_DIR", "/tmp/x")]), None, None).unwrap();
        assert_eq!(
            c.core_database_url.expose(),
            "sqlite:///tmp/x/clm_core.db?mode=rwc"
        );
        assert_eq!(
            c.secure_database_url.expose(),
            "sqlite:///tmp/x/clm_secure.db?mode=rwc"
        );
        assert_eq!(c.listen, "127.0.0.1:8443");
        assert!(c.tls_enabled);
        assert_eq!(c.pkcs11_token_label, "clm");
        assert!(c.pkcs11_pin.is_none());
        assert!(matches!(c.pin(), Err(ConfigError::NoPin)));
    }

    #[test]
    fn environment_overrides_file() {
        let file = "listen = \"0.0.0.0:9\"\ntls_enabled = true\npkcs11_pin = \"from-file\"\n";
        let c =
            Config::from_sources(&env(&[("CLM_TLS_ENABLED", "false")]), Some(file), None).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9");
        assert!(!c.tls_enabled);
        assert_eq!(c.pin().unwrap().expose(), "from-file");
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = Config::from_sources(
            &env(&[
                ("CLM_PKCS11_PIN", "pin-4711"),
                ("CLM_BOOTSTRAP_ADMIN_PASSWORD", "hunter2hunter2"),
                ("CLM_CORE_DATABASE_URL", "postgres://clm:dbpass@db/clm_core"),
            ]),
            None,
            None,
        )
        .unwrap();
        let printed = format!("{c:?}");
        for secret in ["pin-4711", "hunter2hunter2", "dbpass"] {
            assert!(!printed.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn expiry_notice_days_are_sorted_and_checked() {
        let c = Config::from_sources(&env(&[("CLM_EXPIRY_NOTICE_DAYS", "1, 30,7,7")]), None, None)
            .unwrap();
        assert_eq!(c.expiry_notice_days, vec![30, 7, 1]);
        assert_eq!(
            Config::from_sources(&env(&[]), None, None)
                .unwrap()
                .expiry_notice_days,
            vec![30, 7, 1]
        );
        for bad in ["0", "x", "7,,1", "99999"] {
            let err = Config::from_sources(&env(&[("CLM_EXPIRY_NOTICE_DAYS", bad)]), None, None)
                .unwrap_err();
            assert!(err.to_string().contains("CLM_EXPIRY_NOTICE_DAYS"), "{bad}");
        }
    }

    #[test]
    fn issuance_rate_and_shutdown_timeout() {
        let c = Config::from_sources(&env(&[]), None, None).unwrap();
        assert_eq!(c.issuance_rate_per_minute, 3000);
        assert_eq!(c.shutdown_timeout_seconds, 30);
        let c = Config::from_sources(&env(&[("CLM_ISSUANCE_RATE_PER_MINUTE", "0")]), None, None)
            .unwrap();
        assert_eq!(c.issuance_rate_per_minute, 0, "0 turns the limit off");
        for (key, bad) in [
            ("CLM_ISSUANCE_RATE_PER_MINUTE", "-1"),
            ("CLM_ISSUANCE_RATE_PER_MINUTE", "99999999999"),
            ("CLM_SHUTDOWN_TIMEOUT_SECONDS", "0"),
        ] {
            let err = Config::from_sources(&env(&[(key, bad)]), None, None).unwrap_err();
            assert!(err.to_string().contains(key), "{key}={bad}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let err =
            Config::from_sources(&env(&[("CLM_TLS_ENABLED", "maybe")]), None, None).unwrap_err();
        assert!(err.to_string().contains("CLM_TLS_ENABLED"));
        let err = Config::from_sources(&env(&[]), Some("no_such_key = 1"), None).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }));
    }

    #[test]
    fn pin_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "123456\n").unwrap();
        let c = Config::from_sources(
            &env(&[("CLM_PKCS11_PIN_FILE", p.to_str().unwrap())]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.pin().unwrap().expose(), "123456");
    }
}
