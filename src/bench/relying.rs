//! What relying parties ask for, on the plain-HTTP listener: OCSP answers
//! and CRLs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::fill::{self, Mix};
use super::http1::Http1;
use super::issue;
use super::report::{Target, Unit, thousands};
use super::stages::{Run, str_field};
use super::{BenchError, BenchResult, Stage, check, load};
use crate::domain::KeyAlgorithm;
use crate::pki::ocsp::{HashAlgorithm, encode_request};

/// Distinct certificates asked about at most.
const OCSP_CERTIFICATES: usize = 10_000;
/// Requests per second of the open-loop run: the target's rate.
const OCSP_RATE: f64 = 20_000.0;
/// Requests outstanding at most in the open-loop run (and so connections).
const PACED_IN_FLIGHT: usize = 512;

pub async fn ocsp(run: &mut Run<'_>) -> BenchResult<()> {
    if run.issued.is_empty() {
        // Without the issuance stage: a few certificates to ask about.
        let api = run.api.clone();
        let profile = run.default_profile.clone();
        for c in issue::csrs("ocsp", 200).await? {
            let i = issue::submit(&api, &profile, c)
                .await
                .map_err(BenchError::Http)?;
            run.issued.push(i.id);
        }
    }
    let serials = serials_of(run, OCSP_CERTIFICATES).await?;
    let ca = run.default_ca.clone();
    let requests: Vec<Vec<u8>> = serials
        .iter()
        .map(|s| encode_request(&ca.der, s, HashAlgorithm::Sha1, None))
        .collect::<Result<_, _>>()?;
    let total = run.opts.sizes.ocsp;
    let items: Vec<Vec<u8>> = requests.iter().cycle().take(total).cloned().collect();
    let client = Arc::new(Http1::new(&run.api.public).map_err(BenchError::Http)?);
    let clients = run.opts.clients;
    let post = move |body: Vec<u8>| {
        let client = client.clone();
        async move {
            let answer = client
                .post("/ocsp", "application/ocsp-request", &body)
                .await?;
            if answer.status != 200 || answer.body.is_empty() {
                return Err(format!("{}, {} bytes", answer.status, answer.body.len()));
            }
            Ok(answer.body)
        }
    };
    // The warm-up asks about every certificate once: answers without a
    // nonce are cached, as a responder in production has them.
    let (stats, _) = load::drive(clients, requests.clone(), items, None, post.clone()).await;
    run.row(
        Stage::Ocsp,
        format!("OCSP responses, no nonce, {clients} clients"),
        stats.rate(),
        Unit::PerSecond,
        None,
        Some(Target::AtLeast(20_000.0)),
    );
    run.report.note(format!(
        "{} requests over {} certificates, SHA-1 CertIDs as openssl sends",
        stats.requests,
        requests.len()
    ));
    run.row(
        Stage::Ocsp,
        "OCSP latency p50, no nonce",
        stats.percentile_ms(0.5),
        Unit::Millis,
        None,
        None,
    );
    run.row(
        Stage::Ocsp,
        "OCSP latency p99, no nonce, saturated",
        stats.percentile_ms(0.99),
        Unit::Millis,
        None,
        None,
    );
    run.report.note(format!(
        "{clients} clients sending back to back: the queue of a saturated server, not a target"
    ));
    run.check(
        Stage::Ocsp,
        "every OCSP request answered 200",
        stats
            .failure()
            .map_or(Ok(format!("{} answers", stats.requests)), Err),
    );

    // The target's rate, offered whatever the answers: the latency a
    // responder shows while serving 20,000 answers a second.
    let items: Vec<Vec<u8>> = requests.iter().cycle().take(total).cloned().collect();
    let offered = items.len();
    let answer = post.clone();
    let cpu_before = run.server.cpu_time()?;
    let paced = load::paced(OCSP_RATE, PACED_IN_FLIGHT, items, move |body| {
        let answered = answer(body);
        async move { answered.await.map(drop) }
    })
    .await;
    let cpu = run.server.cpu_time()?.saturating_sub(cpu_before);
    let rate = thousands(OCSP_RATE);
    run.row(
        Stage::Ocsp,
        format!("OCSP answered, no nonce, {rate}/s offered"),
        paced.rate(),
        Unit::PerSecond,
        None,
        None,
    );
    run.report.note(format!(
        "open loop: {offered} requests, each sent when due, latency counted from then"
    ));
    // What answering costs the server at the target's rate: the headroom
    // left on two cores shared with the load generator.
    run.row(
        Stage::Ocsp,
        format!("server CPU per OCSP answer, no nonce, {rate}/s offered"),
        cpu.as_secs_f64() * 1e6 / offered.max(1) as f64,
        Unit::Micros,
        None,
        None,
    );
    run.report
        .note("user + system time of the server over the open-loop run, per request".to_string());
    run.row(
        Stage::Ocsp,
        format!("OCSP latency p50, no nonce, {rate}/s offered"),
        paced.percentile_ms(0.5),
        Unit::Millis,
        None,
        None,
    );
    run.row(
        Stage::Ocsp,
        format!("OCSP latency p99, no nonce, {rate}/s offered"),
        paced.percentile_ms(0.99),
        Unit::Millis,
        None,
        Some(Target::AtMost(5.0)),
    );
    run.check(
        Stage::Ocsp,
        format!("every OCSP request at {rate}/s answered 200, at the pace offered"),
        // The pace is judged over a second or more: a smoke run's few
        // requests end within the first answers' latency.
        match paced.failure() {
            Some(e) => Err(e),
            None if paced.rate() < 0.95 * OCSP_RATE && offered as f64 > OCSP_RATE => Err(format!(
                "{:.0}/s answered of {rate}/s offered",
                paced.rate()
            )),
            None => Ok(format!("{} answers", paced.requests)),
        },
    );

    // With a nonce every answer is signed for the asker.
    let signed: Vec<Vec<u8>> = serials
        .iter()
        .cycle()
        .take((total / 20).max(100))
        .map(|s| {
            let nonce: [u8; 16] = rand::random();
            encode_request(&ca.der, s, HashAlgorithm::Sha256, Some(&nonce))
        })
        .collect::<Result<_, _>>()?;
    let warm: Vec<Vec<u8>> = signed.iter().take(clients).cloned().collect();
    let (stats, _) = load::drive(clients, warm, signed, None, post.clone()).await;
    run.row(
        Stage::Ocsp,
        format!("OCSP responses, with nonce (signed each), {clients} clients"),
        stats.rate(),
        Unit::PerSecond,
        run.yard
            .p256
            .map(|r| format!("raw C_Sign P-256 {}/s", thousands(r))),
        None,
    );
    run.row(
        Stage::Ocsp,
        "OCSP latency p99, with nonce",
        stats.percentile_ms(0.99),
        Unit::Millis,
        None,
        None,
    );
    run.check(
        Stage::Ocsp,
        "every OCSP request with a nonce answered 200",
        stats
            .failure()
            .map_or(Ok(format!("{} answers", stats.requests)), Err),
    );

    // A sample read as a relying party reads it.
    let mut verdict = Ok(String::new());
    let step = (serials.len() / 20).max(1);
    for (k, serial) in serials.iter().step_by(step).enumerate() {
        let nonce = (k % 2 == 1).then(rand::random::<[u8; 16]>);
        let req = encode_request(
            &ca.der,
            serial,
            HashAlgorithm::Sha1,
            nonce.as_ref().map(|n| &n[..]),
        )?;
        let answer = post(req.clone()).await.map_err(BenchError::Http)?;
        if k == 0 {
            run.artifact("ocsp-request.der", &req)?;
            run.artifact("ocsp-response.der", &answer)?;
        }
        match check::ocsp_response(&answer, &ca.der, serial) {
            Ok(check::OcspStatus::Good) => {}
            Ok(other) => {
                verdict = Err(format!("serial {}: {other:?}", hex::encode(serial)));
                break;
            }
            Err(e) => {
                verdict = Err(format!("serial {}: {e}", hex::encode(serial)));
                break;
            }
        }
        verdict = Ok(format!(
            "{} answers: good, signed by the CA's responder, about the serial asked",
            k + 1
        ));
    }
    run.check(Stage::Ocsp, "sample of OCSP answers verified", verdict);
    Ok(())
}

/// Serials (magnitudes) of up to `max` valid certificates of the default
/// CA, read from the certificate list.
async fn serials_of(run: &Run<'_>, max: usize) -> BenchResult<Vec<Vec<u8>>> {
    let mut serials = Vec::new();
    let mut page = 1;
    while serials.len() < max {
        let v = run
            .api
            .get_json(&format!(
                "/api/v1/certificates?ca_id={}&status=valid&per_page=1000&page={page}",
                run.default_ca.id
            ))
            .await?;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        for i in items {
            serials.push(hex::decode(str_field(&i, "serial")?).map_err(super::setup)?);
        }
        page += 1;
    }
    serials.truncate(max);
    if serials.is_empty() {
        return Err(BenchError::Check(
            "no certificates to ask OCSP about".into(),
        ));
    }
    Ok(serials)
}

pub async fn crl(run: &mut Run<'_>) -> BenchResult<()> {
    let (ca, profile) = run.new_ca("bench-crl", KeyAlgorithm::EcdsaP256).await?;
    let url = format!("{}/crl/{}.crl", run.api.public, ca.id);
    // Signed on first use; afterwards only revocations (and the refresh
    // job, days later) sign.
    let first = fetch(run, &url).await?;
    let mut expected = check::crl(&first, &ca.der)
        .map_err(BenchError::Check)?
        .entries;
    let fill_ca = run
        .fill_ca(&ca, Some(&profile), KeyAlgorithm::EcdsaP256)
        .await?;
    let (secure, core) = run.stores().await?;
    let mut sizes = run.opts.sizes.crl.clone();
    sizes.sort_unstable();
    let largest = sizes.last().copied().unwrap_or(0);
    let mut filled = 0;
    for size in sizes {
        let started = Instant::now();
        fill::fill(
            &secure,
            &core,
            &fill_ca,
            (filled, size - filled, largest),
            Mix::Revoked,
        )
        .await?;
        let secs = started.elapsed().as_secs_f64();
        run.settle().await?;
        expected += size - filled;
        run.row(
            Stage::Crl,
            format!(
                "fill: revoked certificates stored (up to {})",
                thousands(size as f64)
            ),
            (size - filled) as f64 / secs,
            Unit::PerSecond,
            None,
            None,
        );
        run.report.note(
            "built, signed in the token, multi-row inserts in both databases; \
             then settled (PostgreSQL VACUUM (ANALYZE), checkpoints, sync)",
        );
        filled = size;

        // One more, through the API: issued, then revoked.
        let c = issue::csrs("crl", 1).await?.remove(0);
        let issued = issue::submit(&run.api, &profile, c)
            .await
            .map_err(BenchError::Http)?;
        let before = check::crl_number(&fetch(run, &url).await?)
            .ok_or_else(|| BenchError::Check("served CRL has no number".into()))?;
        let started = Instant::now();
        run.api
            .post_json(
                &format!("/api/v1/certificates/{}/revoke", issued.id),
                &json!({ "reason": "keyCompromise" }),
                200,
            )
            .await?;
        let revoked_in = started.elapsed().as_secs_f64();
        expected += 1;
        let deadline = Instant::now() + Duration::from_secs(300);
        // The clock stops when the new CRL's last byte has arrived. Its
        // number is read from the ETag the server sends: parsing a million
        // entries is the relying party's time, not the server's. The check
        // below parses the bytes and holds them to that number.
        let (served, tagged) = loop {
            let (der, tag) = fetch_tagged(run, &url).await?;
            if let Some(n) = tag.filter(|n| *n > before) {
                break (der, n);
            }
            if Instant::now() > deadline {
                return Err(BenchError::Check(format!(
                    "no CRL after number {before} within 300 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let served_in = started.elapsed().as_secs_f64();
        let entries = thousands(expected as f64);
        run.row(
            Stage::Crl,
            format!("CRL of {entries} entries: revocation → new CRL served"),
            served_in,
            Unit::Seconds,
            None,
            (size >= 1_000_000).then_some(Target::AtMost(5.0)),
        );
        run.report.note(format!(
            "revoke call {revoked_in:.2} s (re-signs before it answers), then GET"
        ));
        run.row(
            Stage::Crl,
            format!("CRL of {entries} entries: size"),
            served.len() as f64 / 1e6,
            Unit::Megabytes,
            None,
            None,
        );
        let started = Instant::now();
        let again = fetch(run, &url).await?;
        run.row(
            Stage::Crl,
            format!("CRL of {entries} entries: GET (cached)"),
            started.elapsed().as_secs_f64() * 1000.0,
            Unit::Millis,
            None,
            None,
        );
        let verdict = check::crl(&served, &ca.der).and_then(|s| {
            if s.entries != expected {
                Err(format!("{} entries, expected {expected}", s.entries))
            } else if s.number <= before {
                Err(format!("number {} not above {before}", s.number))
            } else if s.number != tagged {
                Err(format!("number {}, ETag {tagged}", s.number))
            } else if again != served {
                Err("a second GET served other bytes".into())
            } else {
                Ok(format!(
                    "number {}, {} entries, signature verified",
                    s.number, s.entries
                ))
            }
        });
        if verdict.is_ok() && filled == run.opts.sizes.crl.iter().copied().min().unwrap_or(0) {
            run.artifact("crl.der", &served)?;
            run.artifact("crl-ca.pem", ca.pem.as_bytes())?;
        }
        run.check(Stage::Crl, format!("CRL of {entries} entries"), verdict);
    }
    Ok(())
}

async fn fetch(run: &Run<'_>, url: &str) -> BenchResult<Vec<u8>> {
    Ok(fetch_tagged(run, url).await?.0)
}

/// The body and the number in its ETag (`"<CRL number>"`).
async fn fetch_tagged(run: &Run<'_>, url: &str) -> BenchResult<(Vec<u8>, Option<u64>)> {
    let r = run.api.http.get(url).send().await?;
    if r.status() != 200 {
        return Err(BenchError::Http(format!("GET {url}: {}", r.status())));
    }
    let tag = r
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_matches('"').parse().ok());
    Ok((r.bytes().await?.to_vec(), tag))
}
