//! The run: the yardsticks once, then for each backend a fresh server and
//! the stages against it, then the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::api::{self, Api};
use super::report::{Report, Target, Unit};
use super::server::{ADMIN_EMAIL, Env, Server};
use super::{
    Backend, BenchError, BenchResult, Options, Stage, Token, check, data, fill, issue, relying,
};
use crate::domain::{CaId, KeyAlgorithm, OrganizationId, ProfileId, UserId};
use crate::hsm::{Hsm, HsmKey};
use crate::store::{CoreDb, SecureDb};

/// Raw `C_Sign` rates of this run (the best of 1 and 2 threads).
#[derive(Clone, Copy, Debug, Default)]
pub struct Yardsticks {
    pub p256: Option<f64>,
    pub rsa2048: Option<f64>,
}

/// A CA as the benchmark uses it.
#[derive(Clone, Debug)]
pub struct Ca {
    pub id: String,
    pub der: Vec<u8>,
    pub pem: String,
}

/// One backend's run: the server, a logged-in client and what earlier
/// stages left for later ones.
pub struct Run<'a> {
    pub opts: &'a Options,
    pub backend: Backend,
    pub env: &'a Env,
    pub server: &'a Server,
    pub api: Api,
    pub hsm: Hsm,
    pub yard: Yardsticks,
    pub report: &'a mut Report,
    /// Where this backend's sample outputs go.
    pub artifacts: Option<PathBuf>,
    pub default_profile: String,
    pub default_ca: Ca,
    pub root_id: String,
    pub admin_id: UserId,
    pub organization: OrganizationId,
    /// Certificate ids issued by the default CA through the API.
    pub issued: Vec<String>,
    stores: Option<(SecureDb, CoreDb)>,
}

impl Run<'_> {
    pub fn row(
        &mut self,
        stage: Stage,
        figure: impl Into<String>,
        value: f64,
        unit: Unit,
        yardstick: Option<String>,
        target: Option<Target>,
    ) {
        self.report.row(
            Some(self.backend),
            stage,
            figure,
            value,
            unit,
            yardstick,
            target,
        );
    }

    pub fn check(&mut self, stage: Stage, name: impl Into<String>, r: Result<String, String>) {
        self.report.check(Some(self.backend), stage, name, r);
    }

    /// This process's own handles on the server's databases.
    pub async fn stores(&mut self) -> BenchResult<(SecureDb, CoreDb)> {
        if let Some(s) = &self.stores {
            return Ok(s.clone());
        }
        let cfg = self.env.config()?;
        let secure = SecureDb::connect(&cfg.secure_database_url).await?;
        let core = CoreDb::connect(&cfg.core_database_url).await?;
        self.stores = Some((secure.clone(), core.clone()));
        Ok((secure, core))
    }

    /// After a bulk fill: both databases settled as a server that had
    /// stored the rows one by one would be ([`SecureDb::bench_settle`]),
    /// and the written pages flushed to disk, so that the next timing does
    /// not include the kernel writing back the fill.
    pub async fn settle(&mut self) -> BenchResult<()> {
        let (secure, core) = self.stores().await?;
        secure.bench_settle().await?;
        core.bench_settle().await?;
        tokio::task::spawn_blocking(|| std::process::Command::new("sync").status())
            .await
            .map_err(|e| BenchError::Check(format!("sync: {e}")))??;
        Ok(())
    }

    /// Writes a sample output for outside tools.
    pub fn artifact(&self, name: &str, bytes: &[u8]) -> BenchResult<()> {
        if let Some(dir) = &self.artifacts {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join(name), bytes)?;
        }
        Ok(())
    }

    pub async fn ca(&self, id: &str) -> BenchResult<Ca> {
        let v = self.api.get_json(&format!("/api/v1/cas/{id}")).await?;
        let pem = v["certificate_pem"]
            .as_str()
            .ok_or_else(|| BenchError::Http(format!("CA {id} without certificate_pem")))?
            .to_string();
        Ok(Ca {
            id: id.to_string(),
            der: check::pem_der(&pem).map_err(BenchError::Check)?,
            pem,
        })
    }

    /// A new intermediate CA under the root and an auto-approved profile
    /// for P-256 keys under `bench.test` on it.
    pub async fn new_ca(&mut self, name: &str, alg: KeyAlgorithm) -> BenchResult<(Ca, String)> {
        let created = self
            .api
            .post_json(
                "/api/v1/cas",
                &json!({
                    "name": name,
                    "kind": "intermediate",
                    "parent_id": self.root_id,
                    "subject": format!("clm bench {name}"),
                    "key_algorithm": alg,
                    "validity_days": 1825,
                }),
                201,
            )
            .await?;
        let id = str_field(&created, "id")?;
        let profile = self
            .api
            .post_json(
                "/api/v1/profiles",
                &json!({
                    "name": name,
                    "ca_id": id,
                    "key_algorithms": ["ecdsa-p256"],
                    "allowed_dns_suffixes": ["bench.test"],
                    "max_validity_days": 397,
                    "extended_key_usages": ["serverAuth"],
                }),
                201,
            )
            .await?;
        if profile["required_approvals"] != 0 {
            return Err(BenchError::Check(format!(
                "profile {name} is not auto-approved: {profile}"
            )));
        }
        Ok((self.ca(&id).await?, str_field(&profile, "id")?))
    }

    /// A CA's key as loaded in this process, for bulk fills.
    pub async fn fill_ca(
        &mut self,
        ca: &Ca,
        profile: Option<&str>,
        alg: KeyAlgorithm,
    ) -> BenchResult<Arc<fill::FillCa>> {
        let (secure, _) = self.stores().await?;
        let ca_id = CaId(parse_uuid(&ca.id)?);
        let stored = secure
            .find_ca(ca_id)
            .await?
            .ok_or_else(|| BenchError::Check(format!("CA {} not in clm_secure", ca.id)))?;
        let cka_id = hex::decode(&stored.key.ckaid_hex).map_err(super::setup)?;
        let key = self.hsm.find_key_pair(alg, &cka_id).await?;
        Ok(Arc::new(fill::FillCa {
            ca_id,
            ca_der: ca.der.clone(),
            key: Arc::new(key),
            organization: self.organization,
            profile: profile.map(parse_uuid).transpose()?.map(ProfileId),
            owner: Some(self.admin_id),
            public_url: self.server.public.clone(),
        }))
    }
}

pub fn str_field(v: &Value, name: &str) -> BenchResult<String> {
    v[name]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BenchError::Http(format!("no `{name}` in {v}")))
}

pub fn parse_uuid(s: &str) -> BenchResult<uuid::Uuid> {
    s.parse()
        .map_err(|_| BenchError::Http(format!("`{s}` is not a UUID")))
}

/// One backend's run on the token in `dir`: the yardsticks, then a fresh
/// server and the stages against it.
pub async fn run_backend(opts: &Options, backend: Backend, dir: &Path) -> BenchResult<Report> {
    let token = Token::of(dir);
    let mut report = Report::new(opts.quick, opts.clients, opts.sizes.clone());
    println!("== {} ==", backend.name());
    let hsm = token.open().await?;
    let mut yard = Yardsticks::default();
    if opts.stages.contains(&Stage::Sign) {
        println!("-- {} / sign (yardstick) --", backend.name());
        if let Err(e) = sign(&hsm, backend, opts, &mut report, &mut yard).await {
            let detail = Err(e.to_string());
            report.check(Some(backend), Stage::Sign, "raw C_Sign measured", detail);
        }
    }
    match Env::prepare(backend, dir, &token, &opts.pg_url).await {
        Ok(env) => {
            if let Err(e) = on_backend(opts, &env, &hsm, yard, &mut report).await {
                let detail = Err(e.to_string());
                report.check(
                    Some(backend),
                    Stage::Sign,
                    "server started and logged in",
                    detail,
                );
            }
            if opts.keep {
                env.report_databases();
            } else {
                env.drop_databases().await;
            }
        }
        Err(e) => {
            let detail = Err(e.to_string());
            report.check(Some(backend), Stage::Sign, "databases created", detail);
        }
    }
    Ok(report)
}

/// Raw `C_Sign` with fresh P-256 and RSA-2048 keys in the shared token,
/// on 1 and 2 threads, before any server runs.
async fn sign(
    hsm: &Hsm,
    backend: Backend,
    opts: &Options,
    report: &mut Report,
    yard: &mut Yardsticks,
) -> BenchResult<()> {
    let secs = Duration::from_secs_f64(opts.sizes.sign_seconds);
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
        let key = Arc::new(
            hsm.generate_key_pair(alg, &format!("bench-yardstick-{alg}"))
                .await?,
        );
        let mut best: f64 = 0.0;
        for threads in [1, 2] {
            let rate = sign_rate(&key, threads, secs).await?;
            best = best.max(rate);
            report.row(
                Some(backend),
                Stage::Sign,
                format!(
                    "raw C_Sign {}, {threads} thread{}",
                    if alg == KeyAlgorithm::EcdsaP256 {
                        "P-256"
                    } else {
                        "RSA-2048"
                    },
                    if threads > 1 { "s" } else { "" }
                ),
                rate,
                Unit::PerSecond,
                None,
                None,
            );
        }
        match alg {
            KeyAlgorithm::EcdsaP256 => yard.p256 = Some(best),
            _ => yard.rsa2048 = Some(best),
        }
    }
    Ok(())
}

/// Signatures per second of `key` on `threads` threads for `duration`,
/// through the hsm layer alone (a pooled session per signature; SHA-256 in
/// software first for ECDSA, as every clm signature): the token's rate,
/// without HTTP, databases or certificate encoding. The message is the
/// size of a TBSCertificate.
async fn sign_rate(key: &Arc<HsmKey>, threads: usize, duration: Duration) -> BenchResult<f64> {
    let started = std::time::Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for _ in 0..threads {
        let key = key.clone();
        workers.push(tokio::task::spawn_blocking(move || {
            let message = [0x5a_u8; 600];
            let mut n = 0u64;
            while std::time::Instant::now() < deadline {
                crate::domain::Signer::sign(key.as_ref(), &message)?;
                n += 1;
            }
            Ok::<u64, crate::domain::SignError>(n)
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w
            .await
            .map_err(super::setup)?
            .map_err(|e| BenchError::Setup(format!("signing: {e}")))?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn on_backend(
    opts: &Options,
    env: &Env,
    hsm: &Hsm,
    yard: Yardsticks,
    report: &mut Report,
) -> BenchResult<()> {
    let server = Server::start(env).await?;
    let http = api::client(&server.tls_root_pem)?;
    let api = Api::login(
        http,
        &server.api,
        &server.public,
        ADMIN_EMAIL,
        &env.admin_password,
    )
    .await?;
    let me = api.get_json("/api/v1/me").await?;
    let profiles = api.get_json("/api/v1/profiles").await?;
    let default = profiles
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "default"))
        .cloned()
        .ok_or_else(|| BenchError::Check("no default profile".into()))?;
    let cas = api.get_json("/api/v1/cas").await?;
    let root_id = cas
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["parent_id"].is_null()))
        .map(|c| str_field(c, "id"))
        .transpose()?
        .ok_or_else(|| BenchError::Check("no root CA".into()))?;
    let admin_id = UserId(parse_uuid(&str_field(&me, "id")?)?);
    let organization = OrganizationId(parse_uuid(&str_field(&me, "organization_id")?)?);
    let mut run = Run {
        opts,
        backend: env.backend,
        env,
        server: &server,
        api,
        hsm: hsm.clone(),
        yard,
        report,
        artifacts: opts.artifacts.as_ref().map(|d| {
            d.join(match env.backend {
                Backend::Sqlite => "sqlite",
                Backend::Postgres => "postgres",
            })
        }),
        default_profile: str_field(&default, "id")?,
        default_ca: Ca {
            id: String::new(),
            der: Vec::new(),
            pem: String::new(),
        },
        root_id,
        admin_id,
        organization,
        issued: Vec::new(),
        stores: None,
    };
    run.default_ca = run.ca(&str_field(&default, "ca_id")?).await?;
    let auto = default["required_approvals"] == 0;
    run.check(
        Stage::Issue,
        "the default profile is auto-approved",
        if auto {
            Ok(format!("profile {}", run.default_profile))
        } else {
            Err(format!(
                "required_approvals = {}",
                default["required_approvals"]
            ))
        },
    );
    run.artifact("ca.pem", run.default_ca.pem.as_bytes())?;
    let root = run.ca(&run.root_id.clone()).await?;
    run.artifact("root.pem", root.pem.as_bytes())?;

    for &stage in opts.stages.iter().filter(|s| **s != Stage::Sign) {
        println!("-- {} / {} --", env.backend.name(), stage.name());
        let outcome = match stage {
            Stage::Sign => Ok(()),
            Stage::Issue => issue::p256(&mut run).await,
            Stage::Rsa => issue::rsa(&mut run).await,
            Stage::Ocsp => relying::ocsp(&mut run).await,
            Stage::Crl => relying::crl(&mut run).await,
            Stage::Audit => data::audit(&mut run).await,
            Stage::List => data::list(&mut run).await,
        };
        run.check(
            stage,
            format!("stage {} ran to completion", stage.name()),
            outcome.map(|()| "done".into()).map_err(|e| e.to_string()),
        );
        let (rss, _) = server.memory()?;
        run.row(
            stage,
            format!("server RSS after {}", stage.name()),
            rss as f64 / 1e6,
            Unit::Megabytes,
            None,
            Some(Target::AtMost(256.0)),
        );
    }
    let (_, peak) = server.memory()?;
    run.row(
        Stage::Sign,
        "server peak RSS (VmHWM) over the run",
        peak as f64 / 1e6,
        Unit::Megabytes,
        None,
        Some(Target::AtMost(256.0)),
    );
    Ok(())
}
