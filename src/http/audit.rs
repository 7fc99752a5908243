//! Handlers of the auditors' API: query, verify and NDJSON export of both
//! audit logs. Authorisation and scoping are the service's.

use actix_web::{HttpResponse, get, web};

use super::extract::Auth;
use super::problem::ApiError;
use crate::domain::audit::AuditLog;
use crate::service::{AuditPage, AuditQuery, Clm, ExportCursor, ExportQuery, VerifyReport};

type Result<T> = std::result::Result<T, ApiError>;

/// A page of one audit log, oldest first, filtered; scoped to the caller's
/// organisation unless a super admin asks.
#[utoipa::path(
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        (status = 403, description = "Not an auditor"),
    ),
)]
#[get("/api/v1/audit")]
pub async fn query(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.audit_query(&p, q.into_inner()).await?))
}

/// Verifies both audit logs: 200 with the report either way; `ok` says
/// whether both are intact.
#[utoipa::path(
    tag = "audit",
    responses(
        (status = 200, description = "The report", body = VerifyReport),
        (status = 403, description = "Not an auditor"),
    ),
)]
#[get("/api/v1/audit/verify")]
pub async fn verify(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.audit_verify_for(&p).await?))
}

/// Exports one audit log as NDJSON, streamed: a header, the checkpoint and
/// HSM head, every seal, then every entry with its seq, hash, MAC and key
/// version (docs/audit.md).
#[utoipa::path(
    tag = "audit",
    params(ExportQuery),
    responses(
        (status = 200, description = "One JSON object per line", content_type = "application/x-ndjson", body = String),
        (status = 403, description = "Not an auditor"),
    ),
)]
#[get("/api/v1/audit/export")]
pub async fn export(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    q: web::Query<ExportQuery>,
) -> Result<HttpResponse> {
    let log = q.into_inner().log.unwrap_or(AuditLog::Core);
    // The first page eagerly, so that refusals are a proper problem document.
    let (first, next) = clm.audit_export_page(&p, log, ExportCursor::Start).await?;
    let head = web::Bytes::from(ndjson(&first));
    let rest = futures_util::stream::unfold(next, move |cursor| {
        let clm = clm.clone();
        let p = p.clone();
        async move {
            let cursor = cursor?;
            match clm.audit_export_page(&p, log, cursor).await {
                Ok((lines, next)) => Some((
                    Ok::<_, actix_web::Error>(web::Bytes::from(ndjson(&lines))),
                    next,
                )),
                Err(e) => {
                    // Headers are gone; ending early is all that is left.
                    tracing::error!(error = %e.log_message(), "audit export failed");
                    None
                }
            }
        }
    });
    let body = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok::<_, actix_web::Error>(head) }),
        rest,
    );
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(body))
}

fn ndjson(lines: &[serde_json::Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}
