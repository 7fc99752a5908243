//! What happens around every request on both listeners: the request id,
//! the span that carries it into every log line of the request, the access
//! log line and the HTTP metrics.
//!
//! The id is the client's `X-Request-Id` when well formed (1–64 characters
//! of `A–Z a–z 0–9 - _ . :`), otherwise a fresh UUID; it is echoed in the
//! response and is the `request_id` of the audit entries the request writes
//! ([`super::extract::Ctx`] reads it from the request's extensions). The
//! access log and the metrics name the route pattern
//! (`/api/v1/certificates/{id}`), never the query string or a header.

use std::future::Future;
use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use tracing::Instrument;

use super::extract::RequestId;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest path the access log writes (the rest is cut).
const MAX_LOGGED_PATH: usize = 256;

pub fn observe<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>> + use<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    let id = request_id(req.headers());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id);
    let method = method_label(req.method());
    let path: String = req.path().chars().take(MAX_LOGGED_PATH).collect();
    let started = Instant::now();
    let in_flight = InFlight::enter();
    let fut = span.in_scope(|| srv.call(req));
    async move {
        let result = fut.await;
        drop(in_flight);
        let (status, route) = match &result {
            Ok(res) => (res.status(), res.request().match_pattern()),
            Err(e) => (e.as_response_error().status_code(), None),
        };
        let route = route.unwrap_or_else(|| "unmatched".into());
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        record(method, &route, status, ms);
        tracing::info!(
            method,
            route = %route,
            path = %path,
            status = status.as_u16(),
            duration_ms = (ms * 1000.0).round() / 1000.0,
            "request"
        );
        let mut res = result?;
        if let Ok(v) = HeaderValue::from_str(&id) {
            res.headers_mut().insert(REQUEST_ID, v);
        }
        Ok(res)
    }
    .instrument(span)
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Methods as metric labels: anything unusual is `other`, so a client
/// cannot create series at will.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn record(method: &'static str, route: &str, status: StatusCode, ms: f64) {
    metrics::counter!(
        "clm_http_requests_total",
        "method" => method,
        "route" => route.to_string(),
        "status" => status.as_str().to_string()
    )
    .increment(1);
    let class = match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    };
    metrics::histogram!(
        "clm_http_request_duration_milliseconds",
        "method" => method,
        "route" => route.to_string(),
        "status_class" => class
    )
    .record(ms);
}

/// `clm_http_requests_in_flight`, also right when a client goes away and
/// the request's future is dropped.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!("clm_http_requests_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("clm_http_requests_in_flight").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_request_ids_are_taken_only_when_well_formed() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(REQUEST_ID, HeaderValue::from_str(v).unwrap());
            request_id(&h)
        };
        assert_eq!(with("abc-123_x.y:z"), "abc-123_x.y:z");
        for bad in ["", "has space", "quote\"", &"x".repeat(65), "new\tline"] {
            let got = with(bad);
            assert_ne!(got, bad);
            assert!(uuid::Uuid::parse_str(&got).is_ok(), "{got}");
        }
        assert!(uuid::Uuid::parse_str(&request_id(&HeaderMap::new())).is_ok());
    }
}
