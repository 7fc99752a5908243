//! The HTTP room: actix-web listeners, routing, extractors and the mapping
//! of service errors to problem documents. The only room (with `main.rs`)
//! that imports actix.
//!
//! Two listeners: the API (HTTPS with rustls unless `CLM_TLS_ENABLED=false`)
//! and a plain-HTTP listener for what relying parties fetch anonymously
//! (CA certificates, later CRLs and OCSP), which must not need TLS.

mod audit;
mod extract;
mod handlers;
mod openapi;
mod problem;
mod relying;

use std::path::Path;

use actix_web::dev::Service;
use actix_web::{App, HttpMessage, HttpServer, web};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
}

pub struct Listeners<'a> {
    pub api: &'a str,
    pub public: &'a str,
    /// Directory with `server.crt` (chain) and `server.key`; `None` = plain HTTP.
    pub tls_dir: Option<&'a Path>,
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
        .add(ca_certificate_der)
        .add(relying::crl)
        .add(relying::ocsp_post)
        .add(relying::ocsp_get);
}

/// Serves until the process is asked to stop.
pub async fn serve(clm: Clm, listeners: Listeners<'_>) -> Result<(), HttpError> {
    let data = web::Data::new(clm);
    let api_data = data.clone();
    let api = HttpServer::new(move || {
        App::new()
            .app_data(api_data.clone())
            .app_data(extract::json_config())
            .app_data(extract::path_config())
            .app_data(extract::query_config())
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .wrap_fn(request_id)
            .configure(openapi::configure(api_routes))
    });
    let api = match listeners.tls_dir {
        Some(dir) => api
            .bind_rustls_0_23(listeners.api, tls_config(dir)?)
            .map_err(|source| HttpError::Bind {
                addr: listeners.api.to_string(),
                source,
            })?,
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
            .wrap_fn(request_id)
            .configure(openapi::configure(public_routes))
    })
    .bind(listeners.public)
    .map_err(|source| HttpError::Bind {
        addr: listeners.public.to_string(),
        source,
    })?;
    tracing::info!(
        api = listeners.api,
        public = listeners.public,
        tls = listeners.tls_dir.is_some(),
        "listening"
    );
    let (a, b) = futures_util::future::join(api.run(), public.run()).await;
    a.and(b).map_err(HttpError::Serve)
}

/// Gives every request an id (the client's `X-Request-Id` if sane), logs the
/// request with it and echoes it in the response.
fn request_id<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
+ use<S, B>
where
    S: Service<
            actix_web::dev::ServiceRequest,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
{
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(extract::RequestId(id.clone()));
    let method = req.method().to_string();
    let path = req.path().to_string();
    let started = std::time::Instant::now();
    let fut = srv.call(req);
    async move {
        let mut res = fut.await?;
        tracing::info!(
            request_id = %id,
            method = %method,
            path = %path,
            status = res.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        );
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&id) {
            res.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("x-request-id"),
                v,
            );
        }
        Ok(res)
    }
}

fn tls_config(dir: &Path) -> Result<rustls::ServerConfig, HttpError> {
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    let tls_err = |path: &Path, message: String| HttpError::Tls {
        path: path.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| tls_err(&cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(&cert_path, e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_file(&key_path).map_err(|e| tls_err(&key_path, e.to_string()))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_err(dir, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| tls_err(dir, e.to_string()))
}
