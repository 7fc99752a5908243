//! Stages over large stored data: audit verification and the certificate
//! list and search.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::fill::{self, Mix};
use super::report::{Target, Unit, thousands};
use super::stages::Run;
use super::{BenchError, BenchResult, Stage, load};
use crate::domain::KeyAlgorithm;
use crate::service::Clm;
use crate::store::{COUNT_HORIZON, SEARCH_COUNT_HORIZON};

pub async fn audit(run: &mut Run<'_>) -> BenchResult<()> {
    // The service in this process, on the server's databases and token:
    // entries are written by the production writer (one HSM MAC each)
    // while the server seals them as it always does.
    let clm = Clm::open(&run.env.config()?).await?;
    let n = run.opts.sizes.audit;
    let started = Instant::now();
    clm.bench_audit_fill(n, 1000).await?;
    run.row(
        Stage::Audit,
        format!("fill: audit entries written ({})", thousands(n as f64)),
        n as f64 / started.elapsed().as_secs_f64(),
        Unit::PerSecond,
        None,
        None,
    );
    run.report
        .note("production writer, HSM MAC each, 1,000 per transaction");
    let started = Instant::now();
    let report = clm.verify_audit().await?;
    let secs = started.elapsed().as_secs_f64();
    let entries: u64 = report.logs.iter().map(|l| l.entries).sum();
    run.row(
        Stage::Audit,
        "audit verification",
        entries as f64 / secs,
        Unit::PerSecond,
        None,
        Some(Target::AtLeast(100_000.0)),
    );
    run.report.note(format!(
        "{} entries in {secs:.2} s, both logs; target = 1 M in 10 s",
        thousands(entries as f64)
    ));
    let verdict = if !report.ok {
        Err(format!("verification failed: {:?}", report.logs))
    } else if entries < n {
        Err(format!("{entries} entries verified, {n} written"))
    } else {
        Ok(format!(
            "both trails intact, {} entries, {} seals",
            entries,
            report.logs.iter().map(|l| l.seals).sum::<u64>()
        ))
    };
    run.check(Stage::Audit, "audit trails verify", verdict);
    Ok(())
}

/// What the first answer of a query must show.
type Expectation = Box<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// One list query.
struct Query {
    label: String,
    path: String,
    expect: Expectation,
}

/// Clients of the list stage's "busy" figures.
const BUSY_CLIENTS: usize = 8;

/// `requests` GETs of `path` from `clients` at once, 30 s at most.
async fn list_load(run: &Run<'_>, path: &str, clients: usize, requests: usize) -> load::Stats {
    let api = run.api.clone();
    let (stats, _) = load::drive(
        clients,
        Vec::new(),
        vec![path.to_string(); requests],
        Some(Duration::from_secs(30)),
        move |path: String| {
            let api = api.clone();
            async move {
                let r = api.get(&path).send().await.map_err(|e| e.to_string())?;
                let status = r.status();
                r.bytes().await.map_err(|e| e.to_string())?;
                if status == 200 {
                    Ok(())
                } else {
                    Err(status.to_string())
                }
            }
        },
    )
    .await;
    stats
}

pub async fn list(run: &mut Run<'_>) -> BenchResult<()> {
    let (ca, _) = run.new_ca("bench-list", KeyAlgorithm::EcdsaP256).await?;
    let fill_ca = run.fill_ca(&ca, None, KeyAlgorithm::EcdsaP256).await?;
    let (secure, core) = run.stores().await?;
    let n = run.opts.sizes.list;
    let started = Instant::now();
    let samples = fill::fill(&secure, &core, &fill_ca, (0, n, n), Mix::Inventory).await?;
    run.row(
        Stage::List,
        format!("fill: certificates stored ({})", thousands(n as f64)),
        n as f64 / started.elapsed().as_secs_f64(),
        Unit::PerSecond,
        None,
        None,
    );
    run.report.note(
        "93 % valid, 5 % expired, 2 % revoked; built, signed in the token, bulk inserts; \
         then settled (PostgreSQL VACUUM (ANALYZE), checkpoints, sync)",
    );
    run.settle().await?;
    let (probe_index, probe_serial) = samples
        .get(samples.len() / 2)
        .cloned()
        .ok_or_else(|| BenchError::Check("nothing filled".into()))?;
    let deep = (n / 50).clamp(1, 1000);
    let team = fill::team(7);
    let team_count = (0..n).filter(|i| i % 50 == 7).count() as u64;
    let cn = format!("svc-{probe_index}.");
    let list_ca = ca.id.clone();
    // Past the count horizon `total` is the horizon, flagged inexact.
    let total_is = |expected: u64, at_least: bool, horizon: u64| {
        move |v: &Value| {
            let (total, exact) = (v["total"].as_u64(), v["total_exact"].as_bool());
            let ok = match (total, exact) {
                (Some(t), Some(false)) => t == horizon && (at_least || expected > horizon),
                (Some(t), Some(true)) => t == expected || (at_least && t > expected),
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "total {total:?} (exact {exact:?}), expected {expected}"
                ))
            }
        }
    };
    let all_items = |what: &'static str, ok: fn(&Value) -> bool| {
        move |v: &Value| {
            let items = v["items"].as_array().ok_or("no items")?;
            if items.is_empty() || !items.iter().all(ok) {
                return Err(format!("items not all {what}"));
            }
            Ok(())
        }
    };
    let horizon = chrono::Utc::now() + chrono::Duration::days(91);
    let queries = vec![
        Query {
            label: "page 1".into(),
            path: "/api/v1/certificates".into(),
            expect: Box::new(total_is(n as u64, true, COUNT_HORIZON)),
        },
        Query {
            label: format!("deep page (page {deep})"),
            path: format!("/api/v1/certificates?page={deep}"),
            expect: Box::new(all_items("present", |_| true)),
        },
        Query {
            label: "q= subject substring (one match)".into(),
            path: format!("/api/v1/certificates?q={cn}"),
            expect: Box::new(move |v| {
                let s = v["items"][0]["subject"].as_str().unwrap_or_default();
                if v["total"] == 1 && s.contains(&cn) {
                    Ok(())
                } else {
                    Err(format!("total {}, first {s}", v["total"]))
                }
            }),
        },
        Query {
            label: format!("q= subject substring ({team}, 2 %)"),
            path: format!("/api/v1/certificates?q={team}."),
            expect: Box::new(total_is(team_count, false, SEARCH_COUNT_HORIZON)),
        },
        Query {
            label: "q= serial".into(),
            path: format!("/api/v1/certificates?q={probe_serial}"),
            expect: Box::new(move |v| {
                if v["total"] == 1 && v["items"][0]["serial"] == probe_serial.as_str() {
                    Ok(())
                } else {
                    Err(format!("total {}", v["total"]))
                }
            }),
        },
        Query {
            label: "status=revoked".into(),
            path: "/api/v1/certificates?status=revoked".into(),
            expect: Box::new(all_items("revoked", |i| i["status"] == "revoked")),
        },
        Query {
            label: "expiring_within_days=90".into(),
            path: "/api/v1/certificates?expiring_within_days=90".into(),
            expect: Box::new(move |v| {
                all_items("valid", |i| i["status"] != "expired")(v)?;
                let late = v["items"].as_array().into_iter().flatten().find(|i| {
                    i["not_after"]
                        .as_str()
                        .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                        .is_none_or(|t| t > horizon)
                });
                late.map_or(Ok(()), |i| Err(format!("{} expires later", i["id"])))
            }),
        },
        Query {
            label: "ca_id= (the filled CA)".into(),
            path: format!("/api/v1/certificates?ca_id={list_ca}"),
            expect: Box::new(total_is(n as u64, false, COUNT_HORIZON)),
        },
    ];
    let requests = run.opts.sizes.list_requests;
    let mut verdicts = Vec::new();
    for q in queries {
        let first = run.api.get_json(&q.path).await?;
        if let Err(e) = (q.expect)(&first) {
            verdicts.push(format!("{}: {e}", q.label));
        }
        // Latency is measured one request at a time (the target); the
        // same query from 8 clients at once shows what two cores do
        // when busy, in the note.
        let alone = list_load(run, &q.path, 1, requests).await;
        let busy = list_load(run, &q.path, BUSY_CLIENTS, requests).await;
        for f in [alone.failure(), busy.failure()].into_iter().flatten() {
            verdicts.push(format!("{}: {f}", q.label));
        }
        run.row(
            Stage::List,
            format!("list p99, {}", q.label),
            alone.percentile_ms(0.99),
            Unit::Millis,
            None,
            Some(Target::AtMost(20.0)),
        );
        run.report.note(format!(
            "p50 {:.2} ms, {} requests; {BUSY_CLIENTS} clients: p99 {:.2} ms, p50 {:.2} ms",
            alone.percentile_ms(0.5),
            alone.requests,
            busy.percentile_ms(0.99),
            busy.percentile_ms(0.5),
        ));
    }
    run.check(
        Stage::List,
        "list and search answers are right",
        if verdicts.is_empty() {
            Ok(format!(
                "8 queries over {} stored certificates",
                thousands(n as f64)
            ))
        } else {
            Err(verdicts.join("; "))
        },
    );
    Ok(())
}
