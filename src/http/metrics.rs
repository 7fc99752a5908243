//! `GET /metrics` (anonymous, on both listeners): everything recorded
//! through the `metrics` facade in any room, in the Prometheus text format.
//! The recorder is installed once by `clm serve`; before that (and in the
//! other commands) recording is a no-op.
//!
//! Every histogram gets the same buckets, in milliseconds. Gauges that
//! come from the databases are refreshed by the scrape itself, at most
//! every [`GAUGE_REFRESH`] and within [`GAUGE_DEADLINE`], so scraping often
//! or from several Prometheus servers costs the databases nothing more.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, get, web};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::service::Clm;

const BUCKETS_MS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0,
];
const GAUGE_REFRESH: Duration = Duration::from_secs(10);
const GAUGE_DEADLINE: Duration = Duration::from_secs(2);
/// Histogram samples are folded into their buckets this often even when
/// nobody scrapes, so memory stays flat.
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static REFRESHED: Mutex<Option<Instant>> = Mutex::new(None);

/// Installs the Prometheus recorder (once per process; later calls keep
/// the first) and describes the series recorded outside the HSM room.
pub fn install() {
    if HANDLE.get().is_some() {
        return;
    }
    let installed = PrometheusBuilder::new()
        .set_buckets(BUCKETS_MS)
        .and_then(PrometheusBuilder::install_recorder);
    match installed {
        Ok(handle) => {
            let _ = HANDLE.set(handle);
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics recorder not installed; /metrics stays empty");
            return;
        }
    }
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "clm_http_requests_total",
        "HTTP requests answered, by method, route pattern and status code"
    );
    describe_histogram!(
        "clm_http_request_duration_milliseconds",
        "HTTP request latency in ms, by method, route pattern and status class"
    );
    describe_gauge!(
        "clm_http_requests_in_flight",
        "HTTP requests being served now"
    );
    describe_counter!(
        "clm_issuance_total",
        "certificate issuances by CA name, profile id and outcome (issued, failed)"
    );
    describe_histogram!(
        "clm_issuance_duration_milliseconds",
        "issuance latency in ms (reserve serial, sign in the HSM, store)"
    );
    describe_histogram!(
        "clm_issuance_phase_duration_milliseconds",
        "time in ms of each issuance phase: reserve (intent committed), sign (built and signed in the HSM), store (certificate committed), mirror (clm_core metadata committed)"
    );
    describe_gauge!(
        "clm_pending_approvals",
        "certificate requests waiting for approval"
    );
    describe_gauge!(
        "clm_crl_age_seconds",
        "seconds since thisUpdate of the CRL served for each CA"
    );
    describe_gauge!(
        "clm_audit_unsealed_entries",
        "audit entries not yet covered by a seal, per log"
    );
    describe_gauge!(
        "clm_audit_seal_age_seconds",
        "seconds since the newest audit seal, per log"
    );
}

/// Keeps histogram memory bounded between scrapes (runs until the process
/// stops).
pub fn spawn_upkeep() {
    if let Some(handle) = HANDLE.get() {
        actix_web::rt::spawn(async move {
            let mut tick = actix_web::rt::time::interval(UPKEEP);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    tag = "meta",
    security(()),
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)),
)]
#[get("/metrics")]
pub async fn scrape(clm: web::Data<Clm>) -> HttpResponse {
    refresh_gauges(&clm).await;
    let body = HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}

async fn refresh_gauges(clm: &Clm) {
    {
        let Ok(mut last) = REFRESHED.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < GAUGE_REFRESH) {
            return;
        }
        // Claimed before the queries: concurrent scrapes serve the values
        // they find instead of queueing up behind the databases.
        *last = Some(Instant::now());
    }
    match tokio::time::timeout(GAUGE_DEADLINE, clm.refresh_gauges()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e.log_message(), "metrics gauges not refreshed"),
        Err(_) => tracing::warn!("metrics gauges not refreshed within the deadline"),
    }
}
