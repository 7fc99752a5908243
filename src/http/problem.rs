//! Error policy of the API, in one place: every failure becomes an RFC 9457
//! `application/problem+json` body with a stable machine `code`. Service
//! errors carry separate user and log messages; only the user message is
//! sent, the log message goes to the log (for 5xx) and never to the client.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::service::ServiceError;

/// An RFC 9457 problem document: the body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "https://clm.invalid/problems/invalid-id",
    "title": "Bad Request",
    "status": 400,
    "detail": "the id in the path is not a UUID",
    "code": "invalid_id"
}))]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP reason phrase of `status`.
    pub title: &'static str,
    pub status: u16,
    /// What was wrong, for people.
    pub detail: String,
    /// What was wrong, for programs: stable across releases.
    pub code: &'static str,
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    retry_after: Option<u64>,
    allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            allow: None,
        }
    }

    /// For a 405: the methods the path has.
    pub fn with_allow(mut self, methods: String) -> Self {
        self.allow = Some(methods);
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid bearer token (or a bound client certificate) is required",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use ServiceError::*;
        match &e {
            Invalid { code, message } => Self::new(StatusCode::BAD_REQUEST, code, message.clone()),
            Unauthenticated => Self::unauthenticated(),
            CredentialRefused { code, message } => {
                Self::new(StatusCode::UNAUTHORIZED, code, *message)
            }
            Forbidden(m) => Self::new(StatusCode::FORBIDDEN, "forbidden", *m),
            NotFound(what) => Self::not_found(format!("{what} not found")),
            Conflict { code, message } => Self::new(StatusCode::CONFLICT, code, message.clone()),
            RateLimited { retry_after_secs } => {
                let mut err =
                    Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string());
                err.retry_after = Some(*retry_after_secs);
                err
            }
            Unavailable {
                code,
                message,
                retry_after_secs,
                ..
            } => {
                tracing::warn!(code, error = %e.log_message(), "dependency unavailable");
                let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, *message);
                err.retry_after = Some(*retry_after_secs);
                err
            }
            Internal { .. } => {
                tracing::error!(error = %e.log_message(), "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "an internal error occurred; it has been logged",
                )
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let body = Problem {
            kind: format!(
                "https://clm.invalid/problems/{}",
                self.code.replace('_', "-")
            ),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code,
        };
        let mut resp = HttpResponse::build(self.status);
        resp.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        if self.status == StatusCode::UNAUTHORIZED {
            resp.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let Some(secs) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let Some(methods) = &self.allow {
            resp.insert_header((header::ALLOW, methods.as_str()));
        }
        resp.json(body)
    }
}
