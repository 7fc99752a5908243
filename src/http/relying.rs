//! What relying parties fetch anonymously, on both listeners: CRLs and
//! the OCSP responder. Bodies are DER, not JSON; malformed OCSP requests get
//! an OCSP `malformedRequest` answer with status 400 so that OCSP clients can
//! still read it.

use actix_web::body::SizedStream;
use actix_web::http::header::{self, CacheControl, CacheDirective, HttpDate};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use base64::Engine;
use futures_util::{Stream, StreamExt};

use super::handlers::IdPath;
use super::openapi::Binary;
use super::problem::ApiError;
use crate::service::{Clm, OcspAnswer};

type Result<T> = std::result::Result<T, ApiError>;

/// A CRL goes to actix in pieces of this size: actix copies a body into
/// the connection's write buffer, so a million-entry CRL (46 MB) handed
/// over in one piece cost a 46 MB copy for every download in progress.
const CRL_PIECE: usize = 64 * 1024;

/// Larger OCSP requests are refused unread (a request for 16 certificates
/// fits in a few hundred bytes).
const MAX_OCSP_REQUEST: usize = 8 * 1024;

/// The CA's current CRL, DER.
#[utoipa::path(
    tag = "relying-parties",
    params(IdPath),
    security(()),
    responses(
        (status = 200, description = "The CRL", content_type = "application/pkix-crl", body = Binary,
            headers(
                ("Cache-Control" = String), ("ETag" = String, description = "The CRL number"),
                ("Last-Modified" = String, description = "thisUpdate"), ("Expires" = String, description = "nextUpdate"),
            )),
    ),
)]
#[get("/crl/{id}.crl")]
pub async fn crl(clm: web::Data<Clm>, id: web::Path<IdPath>) -> Result<HttpResponse> {
    let crl = clm.crl(id.get()?).await?;
    let max_age = (crl.next_update - chrono::Utc::now())
        .num_seconds()
        .clamp(0, 3600) as u32;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/pkix-crl"))
        .insert_header(CacheControl(vec![
            CacheDirective::Public,
            CacheDirective::MaxAge(max_age),
        ]))
        .insert_header((header::ETAG, format!("\"{}\"", crl.number)))
        .insert_header((
            header::LAST_MODIFIED,
            HttpDate::from(std::time::SystemTime::from(crl.this_update)),
        ))
        .insert_header((
            header::EXPIRES,
            HttpDate::from(std::time::SystemTime::from(crl.next_update)),
        ))
        .body(in_pieces(crl.der.clone())))
}

/// `der` as slices of it (no copies), with its length: sent with a
/// `Content-Length`, not chunked.
fn in_pieces(
    der: web::Bytes,
) -> SizedStream<impl Stream<Item = std::result::Result<web::Bytes, std::convert::Infallible>>> {
    let len = der.len();
    let pieces = (0..len)
        .step_by(CRL_PIECE)
        .map(move |start| Ok(der.slice(start..len.min(start + CRL_PIECE))));
    SizedStream::new(len as u64, futures_util::stream::iter(pieces))
}

/// The OCSP responder (RFC 6960), request in the body.
#[utoipa::path(
    tag = "relying-parties",
    security(()),
    request_body(content = Binary, content_type = "application/ocsp-request", description = "DER OCSPRequest"),
    responses(
        (status = 200, description = "An OCSPResponse (also `unauthorized` for certificates of other issuers)",
            content_type = "application/ocsp-response", body = Binary, headers(("Cache-Control" = String))),
        (status = 400, description = "The request is not an OCSP request: an OCSPResponse `malformedRequest`",
            content_type = "application/ocsp-response", body = Binary),
        (status = 413, description = "Larger than 8 KiB"),
        (status = 415, description = "Not `application/ocsp-request`"),
    ),
)]
#[post("/ocsp")]
pub async fn ocsp_post(
    clm: web::Data<Clm>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/ocsp-request") {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "OCSP requests are sent as application/ocsp-request",
        ));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::bad_request("bad_body", "the body could not be read"))?;
        if body.len() + chunk.len() > MAX_OCSP_REQUEST {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(ocsp_response(clm.ocsp_answer(&body).await))
}

/// The OCSP responder, RFC 6960 appendix A.1: the DER request, base64,
/// URL-encoded, in the path.
#[utoipa::path(
    tag = "relying-parties",
    security(()),
    params(("request" = String, Path, description = "base64 of the DER OCSPRequest, URL-encoded")),
    responses(
        (status = 200, description = "An OCSPResponse", content_type = "application/ocsp-response", body = Binary,
            headers(("Cache-Control" = String))),
        (status = 400, description = "Not base64 (a problem document), or not an OCSP request (an OCSPResponse `malformedRequest`)",
            content(
                (Binary = "application/ocsp-response"),
                (super::problem::Problem = "application/problem+json"),
            )),
        (status = 413, description = "Longer than 16 KiB"),
    ),
)]
// Base64 may contain `/`: the request is the rest of the path.
#[get("/ocsp/{request:.*}")]
pub async fn ocsp_get(clm: web::Data<Clm>, encoded: web::Path<String>) -> Result<HttpResponse> {
    if encoded.len() > MAX_OCSP_REQUEST * 2 {
        return Err(too_large());
    }
    let decoded = percent_decode(&encoded);
    let der = base64::engine::general_purpose::STANDARD
        .decode(decoded.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(decoded.trim()))
        .map_err(|_| ApiError::bad_request("malformed_ocsp_request", "the path is not base64"))?;
    Ok(ocsp_response(clm.ocsp_answer(&der).await))
}

fn ocsp_response(answer: OcspAnswer) -> HttpResponse {
    let mut res = if answer.malformed {
        HttpResponse::BadRequest()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::CONTENT_TYPE, "application/ocsp-response"));
    match answer.max_age {
        Some(secs) => res.insert_header(CacheControl(vec![
            CacheDirective::Public,
            CacheDirective::MaxAge(secs.clamp(0, 86_400) as u32),
        ])),
        None => res.insert_header(CacheControl(vec![CacheDirective::NoStore])),
    };
    res.body(answer.der.as_ref().clone())
}

fn too_large() -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("OCSP requests are at most {MAX_OCSP_REQUEST} bytes"),
    )
}

/// `%2B`, `%2F` and `%3D` as clients escape them in the path; actix hands
/// the segment over still encoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
