//! Issuance through the API: client-made P-256 CSRs, auto-approved
//! profiles, every certificate signed in the token and stored with its
//! audit entries — on the P-256 intermediate and on an RSA-2048 one.

use serde_json::{Value, json};

use super::api::Api;
use super::report::{Target, Unit, thousands};
use super::stages::{Ca, Run, str_field};
use super::{Backend, BenchError, BenchResult, Stage, check, load};
use crate::domain::KeyAlgorithm;
use crate::service::ISSUANCE_PHASES;

/// A prepared request: the CSR and what the certificate must say.
#[derive(Clone)]
pub struct Csr {
    pub names: Vec<String>,
    pub spki: Vec<u8>,
    pub pem: String,
}

/// An issued certificate and what it was asked for.
#[derive(Clone)]
pub struct Issued {
    pub id: String,
    pub csr: Csr,
}

pub async fn p256(run: &mut Run<'_>) -> BenchResult<()> {
    let (target, p99) = match run.backend {
        Backend::Sqlite => (5_000.0, 25.0),
        Backend::Postgres => (3_000.0, 25.0),
    };
    let yard = run
        .yard
        .p256
        .map(|r| format!("raw C_Sign P-256 {}/s", thousands(r)));
    let ca = run.default_ca.clone();
    let profile = run.default_profile.clone();
    let n = run.opts.sizes.issue;
    let issued = issuance(
        run,
        Stage::Issue,
        "P-256 CA",
        &profile,
        &ca,
        n,
        yard,
        Some(target),
        Some(p99),
    )
    .await?;
    run.issued = issued.into_iter().map(|i| i.id).collect();
    Ok(())
}

pub async fn rsa(run: &mut Run<'_>) -> BenchResult<()> {
    let (ca, profile) = run.new_ca("bench-rsa-2048", KeyAlgorithm::Rsa2048).await?;
    let yard = run.yard.rsa2048;
    let n = run.opts.sizes.rsa;
    issuance(
        run,
        Stage::Rsa,
        "RSA-2048 CA",
        &profile,
        &ca,
        n,
        yard.map(|r| format!("raw C_Sign RSA-2048 {}/s (target 85 %)", thousands(r))),
        yard.map(|r| 0.85 * r),
        None,
    )
    .await?;
    Ok(())
}

pub fn csr(name: String) -> BenchResult<Csr> {
    let key = rcgen::KeyPair::generate().map_err(|e| BenchError::Setup(e.to_string()))?;
    let names = vec![name.clone(), format!("www.{name}")];
    let mut params = rcgen::CertificateParams::new(names.clone())
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    Ok(Csr {
        names,
        spki: rcgen::PublicKeyData::subject_public_key_info(&key),
        pem,
    })
}

/// `count` CSRs for names under `tag.bench.test`, made before any clock
/// starts.
pub async fn csrs(tag: &str, count: usize) -> BenchResult<Vec<Csr>> {
    let tag = tag.to_string();
    tokio::task::spawn_blocking(move || {
        (0..count)
            .map(|i| csr(format!("c{i}.{tag}.bench.test")))
            .collect()
    })
    .await
    .map_err(super::setup)?
}

/// POSTs one CSR; only `201` with status `issued` counts.
pub async fn submit(api: &Api, profile: &str, c: Csr) -> Result<Issued, String> {
    let r = api
        .post(
            "/api/v1/certificate-requests",
            &json!({ "profile_id": profile, "csr_pem": c.pem }),
        )
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    match (
        status.as_u16(),
        body["status"].as_str(),
        body["certificate_id"].as_str(),
    ) {
        (201, Some("issued"), Some(id)) => Ok(Issued {
            id: id.to_string(),
            csr: c,
        }),
        _ => Err(format!("{status}: {body}")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn issuance(
    run: &mut Run<'_>,
    stage: Stage,
    label: &str,
    profile: &str,
    ca: &Ca,
    count: usize,
    yardstick: Option<String>,
    target_rate: Option<f64>,
    target_p99: Option<f64>,
) -> BenchResult<Vec<Issued>> {
    let warm = (count / 10).clamp(1, 1000);
    let mut all = csrs(stage.name(), warm + count).await?;
    let items = all.split_off(warm);
    let (api, profile_id) = (run.api.clone(), profile.to_string());
    let clients = run.opts.clients;
    let phases_before = phase_totals(&run.api).await?;
    let cpu_before = run.server.cpu_time()?;
    let (stats, issued) = load::drive(clients, all, items, None, move |c| {
        let (api, profile_id) = (api.clone(), profile_id.clone());
        async move { submit(&api, &profile_id, c).await }
    })
    .await;
    run.row(
        stage,
        format!("issuance, {label}, {clients} clients"),
        stats.rate(),
        Unit::PerSecond,
        yardstick,
        target_rate.map(Target::AtLeast),
    );
    run.report
        .note(format!("{} requests after {warm} warm-up", stats.requests));
    let cpu = run.server.cpu_time()?.saturating_sub(cpu_before);
    run.row(
        stage,
        format!("server CPU per issuance, {label}"),
        cpu.as_secs_f64() * 1e3 / (warm + count) as f64,
        Unit::Millis,
        None,
        None,
    );
    run.report.note(
        "user + system time of the server over the stage (warm-up included) per request"
            .to_string(),
    );
    let phases = phase_totals(&run.api).await?;
    report_phases(run, stage, label, &phases_before, &phases, warm + count);
    run.row(
        stage,
        format!("issuance latency p50, {label}"),
        stats.percentile_ms(0.5),
        Unit::Millis,
        None,
        None,
    );
    run.row(
        stage,
        format!("issuance latency p99, {label}"),
        stats.percentile_ms(0.99),
        Unit::Millis,
        None,
        target_p99.map(Target::AtMost),
    );
    run.check(
        stage,
        format!("every {label} request answered 201 issued"),
        match stats.failure() {
            None => Ok(format!("{} issued", issued.len())),
            Some(f) => Err(f),
        },
    );
    let verdict = verify_sample(run, stage, &issued, ca).await;
    run.check(
        stage,
        format!("sample of {label} certificates verified"),
        verdict,
    );
    Ok(issued)
}

/// Per phase (in [`ISSUANCE_PHASES`] order): the milliseconds spent and the
/// issuances counted so far, from the server's `/metrics`.
async fn phase_totals(api: &Api) -> BenchResult<Vec<(f64, f64)>> {
    let page = api
        .http
        .get(format!("{}/metrics", api.public))
        .send()
        .await?
        .text()
        .await?;
    Ok(ISSUANCE_PHASES
        .iter()
        .map(|phase| {
            let sample = |suffix: &str| {
                let name = format!(
                    "clm_issuance_phase_duration_milliseconds_{suffix}{{phase=\"{phase}\"}} "
                );
                page.lines()
                    .find_map(|l| l.strip_prefix(name.as_str()))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (sample("sum"), sample("count"))
        })
        .collect())
}

/// Where the stage's issuances spent their time inside the server, from
/// the phase histogram's growth over the stage; every issuance must have
/// been counted in every phase.
fn report_phases(
    run: &mut Run<'_>,
    stage: Stage,
    label: &str,
    before: &[(f64, f64)],
    after: &[(f64, f64)],
    issued: usize,
) {
    let grown: Vec<(f64, f64)> = before
        .iter()
        .zip(after)
        .map(|((ms0, n0), (ms1, n1))| (ms1 - ms0, n1 - n0))
        .collect();
    let means: Vec<f64> = grown.iter().map(|(ms, n)| ms / n.max(1.0)).collect();
    run.row(
        stage,
        format!("issuance time in the service (mean), {label}"),
        means.iter().sum(),
        Unit::Millis,
        None,
        None,
    );
    let parts: Vec<String> = ISSUANCE_PHASES
        .iter()
        .zip(&means)
        .map(|(phase, ms)| format!("{phase} {ms:.2} ms"))
        .collect();
    run.report.note(format!(
        "{}: the intent's commit in clm_secure, building and signing in the token, the certificate's commit in clm_secure, the mirror's in clm_core (clm_issuance_phase_duration_milliseconds); the rest of the latency is TLS, HTTP, authentication and the CSR's check",
        parts.join(", ")
    ));
    let miscounted: Vec<String> = ISSUANCE_PHASES
        .iter()
        .zip(&grown)
        .filter(|(_, (_, n))| *n as usize != issued)
        .map(|(phase, (_, n))| format!("{phase}: {n}"))
        .collect();
    run.check(
        stage,
        format!("phase metrics of {label} count every issuance"),
        if miscounted.is_empty() {
            Ok(format!(
                "{issued} in each of {} phases",
                ISSUANCE_PHASES.len()
            ))
        } else {
            Err(format!(
                "expected {issued} in each phase, counted {}",
                miscounted.join(", ")
            ))
        },
    );
}

/// Reads back up to 20 certificates spread over the run and checks each
/// as a relying party would.
async fn verify_sample(
    run: &Run<'_>,
    stage: Stage,
    issued: &[Issued],
    ca: &Ca,
) -> Result<String, String> {
    if issued.is_empty() {
        return Err("nothing was issued".into());
    }
    let step = (issued.len() / 20).max(1);
    let mut checked = 0;
    for (k, i) in issued.iter().step_by(step).enumerate() {
        let v = run
            .api
            .get_json(&format!("/api/v1/certificates/{}", i.id))
            .await
            .map_err(|e| e.to_string())?;
        if v["status"] != "valid" || v["ca_id"] != ca.id.as_str() {
            return Err(format!("certificate {}: {v}", i.id));
        }
        let pem = str_field(&v, "certificate_pem").map_err(|e| e.to_string())?;
        let der = check::pem_der(&pem)?;
        check::leaf(&der, &ca.der, &i.csr.spki, &i.csr.names)
            .map_err(|e| format!("certificate {}: {e}", i.id))?;
        if k == 0 {
            let chain = str_field(&v, "chain_pem").map_err(|e| e.to_string())?;
            let name = format!("{}-leaf", stage.name());
            run.artifact(&format!("{name}.pem"), pem.as_bytes())
                .and_then(|()| run.artifact(&format!("{name}-chain.pem"), chain.as_bytes()))
                .map_err(|e| e.to_string())?;
        }
        checked += 1;
    }
    Ok(format!(
        "{checked} certificates: signed by the CA, the CSR's key, the asked names"
    ))
}
