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
mod problem;
mod relying;
mod tls;

use std::path::Path;
use std::time::Duration;

use actix_web::{App, HttpServer, web};

pub use extract::MAX_BODY;
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

/// Routes of the API listener.
pub fn api_routes(cfg: &mut web::ServiceConfig) {
    use handlers::*;
    cfg.service(
        web::scope("/api/v1")
            .route("/auth/login", web::post().to(login))
            .route("/auth/logout", web::post().to(logout))
            .route("/me", web::get().to(me))
            .route("/me/password", web::post().to(change_password))
            .route("/organizations", web::get().to(list_organizations))
            .route("/organizations", web::post().to(create_organization))
            .route("/users", web::get().to(list_users))
            .route("/users", web::post().to(create_user))
            .route("/users/{id}", web::get().to(get_user))
            .route("/users/{id}/deactivate", web::post().to(deactivate_user))
            .route("/users/{id}/unlock", web::post().to(unlock_user))
            .route("/api-keys", web::get().to(list_api_keys))
            .route("/api-keys", web::post().to(create_api_key))
            .route("/api-keys/{id}", web::delete().to(revoke_api_key))
            .route("/cas", web::get().to(list_cas))
            .route("/cas", web::post().to(create_ca))
            .route("/cas/{id}", web::get().to(get_ca))
            .route("/cas/{id}/rollover", web::post().to(rollover_ca))
            .route("/keys/kek/rotate", web::post().to(rotate_kek))
            .route("/keys/kek/rollback", web::post().to(rollback_kek))
            .route("/keys/rotations", web::get().to(kek_rotations))
            .route("/profiles", web::get().to(list_profiles))
            .route("/profiles", web::post().to(create_profile))
            .route("/certificate-requests", web::post().to(submit_request))
            .route("/certificate-requests", web::get().to(list_requests))
            .route("/certificates", web::get().to(list_certificates))
            .route("/certificate-requests/{id}", web::get().to(get_request))
            .route(
                "/certificate-requests/{id}/approve",
                web::post().to(approve_request),
            )
            .route(
                "/certificate-requests/{id}/reject",
                web::post().to(reject_request),
            )
            .route(
                "/certificate-requests/{id}/cancel",
                web::post().to(cancel_request),
            )
            .route(
                "/certificate-requests/{id}/retry",
                web::post().to(retry_request),
            )
            .route("/notifications", web::get().to(list_notifications))
            .route("/webhooks", web::get().to(list_webhooks))
            .route("/webhooks", web::post().to(create_webhook))
            .route("/webhooks/{id}", web::delete().to(disable_webhook))
            .route(
                "/webhooks/{id}/deliveries",
                web::get().to(webhook_deliveries),
            )
            .route(
                "/notifications/{id}/read",
                web::post().to(read_notification),
            )
            .route("/certificates/{id}", web::get().to(get_certificate))
            .route(
                "/certificates/{id}/revoke",
                web::post().to(revoke_certificate),
            )
            .route(
                "/certificates/{id}/release-hold",
                web::post().to(release_hold),
            )
            .route(
                "/certificates/{id}/renew",
                web::post().to(renew_certificate),
            )
            .route("/certificates/{id}/binding", web::post().to(bindings::bind))
            .route("/certificates/{id}/binding", web::get().to(bindings::get))
            .route(
                "/certificates/{id}/binding",
                web::delete().to(bindings::unbind),
            )
            .route(
                "/certificates/{id}/private-key",
                web::post().to(recover_private_key),
            )
            .route(
                "/key-recoveries/{id}/{decision}",
                web::post().to(decide_key_recovery),
            )
            .route("/audit", web::get().to(audit::query))
            .route("/audit/verify", web::get().to(audit::verify))
            .route("/audit/export", web::get().to(audit::export)),
    );
    public_routes(cfg);
}

/// Routes served on both listeners, anonymous.
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    use handlers::*;
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics::scrape))
        .route("/ca/{file}", web::get().to(ca_certificate_der))
        .route("/crl/{file}", web::get().to(relying::crl))
        .route("/ocsp", web::post().to(relying::ocsp_post))
        // Base64 may contain `/`: the request is the rest of the path.
        .route("/ocsp/{request:.*}", web::get().to(relying::ocsp_get));
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
            .configure(api_routes)
            .default_service(web::to(handlers::not_found))
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
            .configure(public_routes)
            .default_service(web::to(handlers::not_found))
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
