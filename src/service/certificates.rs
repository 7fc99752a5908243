//! Reading certificates: one with its chain, or a filtered page of them.

use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};

use super::error::{ServiceError, ServiceResult};
use super::{Clm, Listing, Principal, rfc3339};
use crate::domain::model::CertificateBrief;
use crate::domain::{
    CaId, CertificateId, CertificateStatus, ProfileId, RequestId, RevocationReason,
};
use crate::pki;
use crate::store::{CertificateFilter, CertificateOrder, Page};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CertificateView {
    pub id: CertificateId,
    /// Lower-case hex.
    pub serial: String,
    pub subject: String,
    pub sans: Vec<String>,
    #[schema(format = DateTime)]
    pub not_before: String,
    #[schema(format = DateTime)]
    pub not_after: String,
    pub status: CertificateStatus,
    #[schema(value_type = Option<RevocationReason>)]
    pub revocation_reason: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
    pub ca_id: CaId,
    pub profile_id: Option<ProfileId>,
    pub request_id: Option<RequestId>,
    pub fingerprint_sha256: String,
    /// The certificate this one renewed.
    pub replaces_certificate_id: Option<CertificateId>,
    pub certificate_pem: String,
    /// Issuer certificates from the issuing CA up to and including the root.
    pub chain_pem: String,
}

/// One row of the certificate list (no PEM: lists stay light).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CertificateSummary {
    pub id: CertificateId,
    /// Lower-case hex.
    pub serial: String,
    pub subject: String,
    pub sans: Vec<String>,
    #[schema(format = DateTime)]
    pub not_before: String,
    #[schema(format = DateTime)]
    pub not_after: String,
    pub status: CertificateStatus,
    pub ca_id: CaId,
    pub profile_id: Option<ProfileId>,
}

impl From<&CertificateBrief> for CertificateSummary {
    fn from(c: &CertificateBrief) -> Self {
        Self {
            id: c.id,
            serial: c.serial_hex.clone(),
            subject: c.subject.clone(),
            sans: c.sans.clone(),
            not_before: rfc3339(c.not_before),
            not_after: rfc3339(c.not_after),
            status: c.status,
            ca_id: c.ca_id,
            profile_id: c.profile_id,
        }
    }
}

/// Query of `GET /api/v1/certificates`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CertificateQuery {
    pub status: Option<CertificateStatus>,
    /// Substring of the subject, or the beginning of the serial (hex,
    /// colons between its bytes allowed), in any case; `%` and `_` are
    /// plain characters.
    #[param(max_length = 200)]
    pub q: Option<String>,
    /// Not yet expired, and `not_after` within this many days; the list is
    /// then ordered by `not_after`, soonest first (otherwise newest first).
    #[param(maximum = 36_500)]
    pub expiring_within_days: Option<u32>,
    pub ca_id: Option<uuid::Uuid>,
    /// 1 to 1000000, default 1.
    #[param(minimum = 1, maximum = 1_000_000)]
    pub page: Option<u64>,
    /// 1 to 1000, default 50.
    #[param(minimum = 1, maximum = 1000)]
    pub per_page: Option<u64>,
}

impl Clm {
    pub async fn list_certificates(
        &self,
        p: &Principal,
        q: CertificateQuery,
    ) -> ServiceResult<Listing<CertificateSummary>> {
        let page = page_of(q.page, q.per_page)?;
        let text = filter_text("q", q.q, 200)?;
        if q.expiring_within_days.is_some_and(|d| d > 36_500) {
            return Err(ServiceError::invalid(
                "invalid_query",
                "expiring_within_days is too large",
            ));
        }
        let filter = CertificateFilter {
            status: q.status,
            ca_id: q.ca_id.map(CaId),
            not_after_before: q
                .expiring_within_days
                .map(|d| Utc::now() + Duration::days(i64::from(d))),
            // "Expiring" means not expired yet.
            not_after_after: q.expiring_within_days.map(|_| Utc::now()),
            text: text.filter(|t| !t.is_empty()),
            order: if q.expiring_within_days.is_some() {
                CertificateOrder::SoonestExpiry
            } else {
                CertificateOrder::Newest
            },
        };
        let (rows, total) = self
            .secure
            .list_certificates(p.scope(), &filter, page)
            .await?;
        Ok(Listing::counted(
            rows.iter().map(CertificateSummary::from).collect(),
            page,
            total,
        ))
    }

    pub async fn get_certificate(
        &self,
        p: &Principal,
        id: CertificateId,
    ) -> ServiceResult<CertificateView> {
        let cert = self
            .secure
            .find_certificate(id)
            .await?
            .filter(|c| p.can_see(c.organization_id))
            .ok_or(ServiceError::NotFound("certificate"))?;
        let chain_pem = self.chain_pem(cert.ca_id).await?;
        Ok(CertificateView {
            id: cert.id,
            serial: cert.serial_hex,
            subject: cert.subject,
            sans: cert.sans,
            not_before: rfc3339(cert.not_before),
            not_after: rfc3339(cert.not_after),
            status: cert.status,
            revocation_reason: cert.revocation_reason,
            revoked_at: cert.revoked_at.map(rfc3339),
            ca_id: cert.ca_id,
            profile_id: cert.profile_id,
            request_id: cert.request_id,
            fingerprint_sha256: cert.fingerprint_sha256,
            replaces_certificate_id: cert.replaces_certificate_id,
            certificate_pem: pki::to_pem("CERTIFICATE", &cert.certificate_der),
            chain_pem,
        })
    }
}

/// Most rows one page may hold.
pub const MAX_PER_PAGE: u64 = 1000;

/// Validates paging parameters (defaults: page 1, 50 per page).
/// A free-text filter from a query string: at most `max` characters and no
/// control characters (PostgreSQL cannot even compare text holding NUL, and
/// no stored value contains one).
pub fn filter_text(name: &str, value: Option<String>, max: usize) -> ServiceResult<Option<String>> {
    let Some(v) = value else { return Ok(None) };
    if v.chars().count() > max {
        return Err(ServiceError::invalid(
            "invalid_query",
            format!("{name} must be at most {max} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            "invalid_query",
            format!("{name} must not contain control characters"),
        ));
    }
    Ok(Some(v))
}

pub fn page_of(page: Option<u64>, per_page: Option<u64>) -> ServiceResult<Page> {
    let page = page.unwrap_or(1);
    let per_page = per_page.unwrap_or(50);
    if page == 0 || page > 1_000_000 {
        return Err(ServiceError::invalid(
            "invalid_query",
            "page must be between 1 and 1000000",
        ));
    }
    if per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(ServiceError::invalid(
            "invalid_query",
            format!("per_page must be between 1 and {MAX_PER_PAGE}"),
        ));
    }
    Ok(Page { page, per_page })
}
