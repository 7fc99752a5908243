//! The HTTP room: actix-web listeners, routing, extractors and the mapping
//! of service errors to problem documents. The only room (with `main.rs`)
//! that imports actix.
//!
//! Two listeners: the API (HTTPS with rustls unless `CLM_TLS_ENABLED=false`,
//! accepting client certificates issued by clm — see [`tls`]) and a
//! plain-HTTP listener for what relying parties fetch anonymously (CA
//! certificates, CRLs and OCSP), which must not need TLS.

mod audit;
mod bindings;
mod extract;
mod handlers;
mod metrics;
mod middleware;
mod openapi;
mod problem;
mod relying;
mod tls;

use std::path::Path;
use std::time::Duration;

use actix_web::{App, HttpServer, web};

pub use extract::MAX_BODY;
pub use openapi::Routes;
pub use problem::{ApiError, Problem};

use crate::service::Clm;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS material in {path}: {message}")]
    Tls { path: String, message: String },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("stopped by a second signal before the requests in flight finished")]
    Interrupted,
}

pub struct Listeners<'a> {
    pub api: &'a str,
    pub public: &'a str,
    /// Directory with `server.crt` (chain) and `server.key`; `None` = plain HTTP.
    pub tls_dir: Option<&'a Path>,
    /// After SIGTERM, requests in flight get this long to finish.
    pub shutdown_timeout: Duration,
}

/// Installs the metrics recorder; call once at start-up, before anything
/// records.
pub fn install_metrics() {
    metrics::install();
}

/// Routes of the API listener: one `add` per endpoint, which also puts it
/// in the OpenAPI document (docs/api.md).
pub fn api_routes(r: &mut Routes) {
    use handlers::*;
    r.add(login)
        .add(logout)
        .add(me)
        .add(change_password)
        .add(list_organizations)
        .add(create_organization)
        .add(list_users)
        .add(create_user)
        .add(get_user)
        .add(deactivate_user)
        .add(unlock_user)
        .add(list_api_keys)
        .add(create_api_key)
        .add(revoke_api_key)
        .add(list_cas)
        .add(create_ca)
        .add(get_ca)
        .add(rollover_ca)
        .add(rotate_kek)
        .add(rollback_kek)
        .add(kek_rotations)
        .add(list_profiles)
        .add(create_profile)
        .add(submit_request)
        .add(list_requests)
        .add(get_request)
        .add(approve_request)
        .add(reject_request)
        .add(cancel_request)
        .add(retry_request)
        .add(list_certificates)
        .add(get_certificate)
        .add(revoke_certificate)
        .add(release_hold)
        .add(renew_certificate)
        .add(bindings::bind)
        .add(bindings::get)
        .add(bindings::unbind)
        .add(recover_private_key)
        .add(approve_key_recovery)
        .add(reject_key_recovery)
        .add(list_notifications)
        .add(read_notification)
        .add(list_webhooks)
        .add(create_webhook)
        .add(disable_webhook)
        .add(webhook_deliveries)
        .add(audit::query)
        .add(audit::verify)
        .add(audit::export)
        .add(openapi::openapi_json)
        .add(openapi::docs_redirect)
        .add(openapi::docs_index)
        .add(openapi::docs_asset);
    public_routes(r);
}

/// Routes served on both listeners, anonymous.
pub fn public_routes(r: &mut Routes) {
    use handlers::*;
    r.add(healthz)
        .add(readyz)
        .add(metrics::scrape)
        .add(ca_certificate_der)
        .add(relying::crl)
        .add(relying::ocsp_post)
        .add(relying::ocsp_get);
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully (see
/// `StopSignals::stop_on_signal`); returns once both listeners have
/// stopped.
pub async fn serve(
    clm: Clm,
    listeners: Listeners<'_>,
    signals: StopSignals,
) -> Result<(), HttpError> {
    let data = web::Data::new(clm);
    let api_data = data.clone();
    let api = HttpServer::new(move || {
        App::new()
            .app_data(api_data.clone())
            .app_data(extract::json_config())
            .app_data(extract::path_config())
            .app_data(extract::query_config())
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .wrap_fn(middleware::observe)
            .configure(openapi::configure(api_routes))
    });
    let api = match listeners.tls_dir {
        Some(dir) => {
            let client_cas = tls::ClientCas::load_and_follow(data.get_ref().clone()).await;
            api.on_connect(tls::on_connect)
                .bind_rustls_0_23(listeners.api, tls::server_config(dir, client_cas)?)
                .map_err(|source| HttpError::Bind {
                    addr: listeners.api.to_string(),
                    source,
                })?
        }
        None => api.bind(listeners.api).map_err(|source| HttpError::Bind {
            addr: listeners.api.to_string(),
            source,
        })?,
    };
    let public = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(extract::path_config())
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .wrap_fn(middleware::observe)
            .configure(openapi::configure(public_routes))
    })
    .bind(listeners.public)
    .map_err(|source| HttpError::Bind {
        addr: listeners.public.to_string(),
        source,
    })?;
    let timeout = listeners.shutdown_timeout.as_secs();
    // Each server would otherwise handle the signals itself and, once done,
    // stop the whole actix System — cutting short the other one's drain.
    let api = api.disable_signals().shutdown_timeout(timeout).run();
    let public = public.disable_signals().shutdown_timeout(timeout).run();
    let forced =
        signals.stop_on_signal([api.handle(), public.handle()], listeners.shutdown_timeout);
    metrics::spawn_upkeep();
    tracing::info!(
        api = listeners.api,
        public = listeners.public,
        tls = listeners.tls_dir.is_some(),
        "listening"
    );
    tokio::select! {
        (a, b) = futures_util::future::join(api, public) => a.and(b).map_err(HttpError::Serve),
        // Dropping the servers drops their connections.
        () = forced => Err(HttpError::Interrupted),
    }
}

/// SIGTERM and SIGINT, caught from [`StopSignals::register`] on: register
/// before start-up work (migrations, bootstrap) so that a signal during it
/// stops the server once it is up instead of killing the process midway.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    /// The first signal starts the graceful stop of both servers: the
    /// listeners close at once (new connections are refused), idle
    /// keep-alive connections are closed, requests in flight get `timeout`
    /// to finish. Resolves on a second signal, which should not wait.
    async fn stop_on_signal(
        mut self,
        servers: [actix_web::dev::ServerHandle; 2],
        timeout: Duration,
    ) {
        let name = self.next().await;
        tracing::info!(
            signal = name,
            timeout_seconds = timeout.as_secs(),
            "shutting down: listeners closed, finishing requests in flight"
        );
        for server in &servers {
            // The command is sent now; the server futures carry it out.
            drop(server.stop(true));
        }
        let name = self.next().await;
        tracing::warn!(
            signal = name,
            "second signal: dropping the connections still open"
        );
    }
}
