//! Extractors: the authenticated principal (bearer token or client
//! certificate), the request context and optional JSON bodies, plus the
//! error handlers that turn actix's own extractor failures (bad JSON, bad
//! path ids, oversized bodies) into problem documents.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::error::{JsonPayloadError, PathError, PayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use uuid::Uuid;

use super::problem::ApiError;
use super::tls::PeerCertificate;
use crate::domain::model::RequestContext;
use crate::service::{Clm, Principal};

/// Largest JSON body accepted anywhere in the API.
pub const MAX_BODY: usize = 64 * 1024;

/// The caller, resolved from `Authorization: Bearer <token>` or, without
/// one, from the client certificate of the TLS connection. A bearer token
/// wins: a client configured with a certificate can still act with a
/// token. Nothing else (no forwarded header) ever names the caller.
pub struct Auth(pub Principal);

impl FromRequest for Auth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let clm = req.app_data::<web::Data<Clm>>().cloned();
        let token = bearer_token(req);
        let peer = req.conn_data::<Arc<PeerCertificate>>().cloned();
        let ctx = request_context(req);
        Box::pin(async move {
            let Some(clm) = clm else {
                return Err(ApiError::unauthenticated());
            };
            let principal = match (token, peer) {
                (Some(token), _) => clm.authenticate(&token).await,
                (None, Some(peer)) => {
                    clm.authenticate_client_certificate(&peer.der, &peer.audit, &ctx)
                        .await
                }
                (None, None) => return Err(ApiError::unauthenticated()),
            };
            principal.map(Auth).map_err(ApiError::from)
        })
    }
}

fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Request id, source address and user agent for audit entries.
pub struct Ctx(pub RequestContext);

/// Set by the request-id middleware so that logs and audit entries agree.
#[derive(Clone)]
pub struct RequestId(pub String);

impl FromRequest for Ctx {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(Ok(Ctx(request_context(req))))
    }
}

fn request_context(req: &HttpRequest) -> RequestContext {
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let user_agent = req
        .headers()
        .get(actix_web::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect());
    RequestContext {
        request_id,
        source_ip: req.peer_addr().map(|a| a.ip().to_string()),
        user_agent,
    }
}

/// A path id that must be a UUID; anything else is a 400, not a 404.
pub fn parse_id<T: From<Uuid>>(raw: &str) -> Result<T, ApiError> {
    Uuid::parse_str(raw)
        .map(T::from)
        .map_err(|_| ApiError::bad_request("invalid_id", "the id in the path is not a UUID"))
}

/// A JSON body that may be left out: no body (or `null`) is
/// `T::default()`, anything else must be JSON of `T` as for `web::Json`
/// (actix's own `Option<Json<T>>` would silently drop a malformed body).
pub struct OptionalJson<T>(pub T);

impl<T: serde::de::DeserializeOwned + Default + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = req.mime_type().ok().flatten().is_some_and(|m| {
            m.subtype() == actix_web::mime::JSON || m.suffix() == Some(actix_web::mime::JSON)
        });
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            let body = body.await.map_err(|e| {
                json_problem(&match e.as_error::<PayloadError>() {
                    Some(PayloadError::Overflow) => JsonPayloadError::Overflow { limit: MAX_BODY },
                    _ => JsonPayloadError::Payload(PayloadError::Incomplete(None)),
                })
            })?;
            if body.is_empty() {
                return Ok(Self(T::default()));
            }
            if !is_json {
                return Err(json_problem(&JsonPayloadError::ContentType));
            }
            serde_json::from_slice::<Option<T>>(&body)
                .map(|t| Self(t.unwrap_or_default()))
                .map_err(|e| json_problem(&JsonPayloadError::Deserialize(e)))
        })
    }
}

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY)
        .error_handler(|err, _req| json_problem(&err).into())
}

fn json_problem(err: &JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body exceeds {MAX_BODY} bytes"),
            )
        }
        JsonPayloadError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be application/json",
        ),
        JsonPayloadError::Deserialize(e) => {
            ApiError::bad_request("invalid_body", format!("the JSON body is not valid: {e}"))
        }
        _ => ApiError::bad_request("invalid_body", "the request body could not be read"),
    }
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err: PathError, _req| {
        ApiError::bad_request("invalid_path", format!("invalid path parameter: {err}")).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err: QueryPayloadError, _req| {
        ApiError::bad_request("invalid_query", format!("invalid query string: {err}")).into()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use actix_web::{App, HttpResponse, test, web};

    use super::OptionalJson;

    #[derive(Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        comment: Option<String>,
    }

    async fn echo(OptionalJson(b): OptionalJson<Body>) -> HttpResponse {
        HttpResponse::Ok().body(b.comment.unwrap_or_else(|| "-".into()))
    }

    /// (content type, body) → (status, answer or problem code).
    async fn send(content_type: Option<&str>, body: &'static str) -> (u16, String) {
        let app = test::init_service(
            App::new()
                .app_data(web::PayloadConfig::new(64))
                .route("/", web::post().to(echo)),
        )
        .await;
        let mut req = test::TestRequest::post().uri("/").set_payload(body);
        if let Some(ct) = content_type {
            req = req.insert_header(("content-type", ct));
        }
        let res = test::call_service(&app, req.to_request()).await;
        let status = res.status().as_u16();
        let bytes = test::read_body(res).await;
        let text = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(problem) => problem["code"].as_str().unwrap().to_string(),
            Err(_) => String::from_utf8(bytes.to_vec()).unwrap(),
        };
        (status, text)
    }

    #[actix_web::test]
    async fn optional_bodies_may_be_left_out_but_not_malformed() {
        let json = Some("application/json");
        assert_eq!(send(None, "").await, (200, "-".into()));
        assert_eq!(send(json, "null").await, (200, "-".into()));
        assert_eq!(send(json, r#"{"comment":"ok"}"#).await, (200, "ok".into()));
        assert_eq!(
            send(json, r#"{"comment":1}"#).await,
            (400, "invalid_body".into())
        );
        assert_eq!(
            send(json, r#"{"other":1}"#).await,
            (400, "invalid_body".into())
        );
        assert_eq!(send(json, "{").await, (400, "invalid_body".into()));
        assert_eq!(
            send(Some("text/plain"), r#"{"comment":"x"}"#).await,
            (415, "unsupported_media_type".into())
        );
        let big =
            r#"{"comment":"................................................................"}"#;
        assert_eq!(send(json, big).await, (413, "body_too_large".into()));
    }
}
