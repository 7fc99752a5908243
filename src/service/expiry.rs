//! Expiry monitoring: owners hear 30, 7 and 1 days (configurable) before
//! notAfter, once each, and certificates past notAfter are marked expired.

use chrono::{Duration, Utc};

use super::Clm;
use super::error::ServiceResult;
use crate::domain::CertificateStatus;
use crate::domain::model::{Actor, AuditEvent, Notification, RequestContext};
use crate::store::{ExpiringCertificate, StoreError};

/// Rows one sweep looks at; the next sweep continues.
const BATCH: u64 = 500;

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExpiryReport {
    pub notices: usize,
    pub expired: usize,
}

impl Clm {
    pub async fn expiry_sweep(&self) -> ServiceResult<ExpiryReport> {
        let mut report = ExpiryReport::default();
        let ctx = RequestContext::default();
        if let Some(&longest) = self.settings.expiry_notice_days.first() {
            let horizon = Utc::now() + Duration::days(i64::from(longest));
            for c in self
                .core
                .certificates_expiring_before(horizon, BATCH)
                .await?
            {
                if self.send_expiry_notice(&c, &ctx).await? {
                    report.notices += 1;
                }
            }
        }
        for cert in self.secure.overdue_certificates(Utc::now(), BATCH).await? {
            let event = AuditEvent::new(Actor::SYSTEM, "certificate.expired", &ctx)
                .org(cert.organization_id)
                .target("certificate", cert.id)
                .details(serde_json::json!({ "ca_id": cert.ca_id, "serial": cert.serial_hex }));
            match self.secure.mark_expired(cert.id, &event).await {
                Ok(()) => {}
                // Revoked or expired by someone else meanwhile.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            report.expired += 1;
            if let Err(e) = self
                .core
                .mirror_certificate_status(cert.id, CertificateStatus::Expired)
                .await
            {
                tracing::warn!(certificate = %cert.id, error = %e, "expiry not mirrored to clm_core");
            }
            if let Some(org) = cert.organization_id {
                self.emit(
                    org,
                    "certificate.expired",
                    serde_json::json!({ "certificate_id": cert.id, "serial": cert.serial_hex }),
                )
                .await;
            }
        }
        Ok(report)
    }

    /// Sends the notice due for `c` now, if it was not sent before. Only the
    /// nearest threshold counts: a certificate issued for five days gets the
    /// 7-day notice, never a late 30-day one.
    async fn send_expiry_notice(
        &self,
        c: &ExpiringCertificate,
        ctx: &RequestContext,
    ) -> ServiceResult<bool> {
        let left = c.not_after - Utc::now();
        let Some(days) = self
            .settings
            .expiry_notice_days
            .iter()
            .copied()
            .filter(|d| left <= Duration::days(i64::from(*d)))
            .min()
        else {
            return Ok(false);
        };
        if self.core.expiry_notices_sent(c.id).await?.contains(&days) {
            return Ok(false);
        }
        let name = c.common_name.as_deref().unwrap_or(&c.serial_hex);
        let notice = match (c.organization_id, c.owner_id) {
            (Some(org), Some(owner)) => Some(Notification::new(
                org,
                owner,
                "certificate.expiring",
                format!("Your certificate for {name} expires in {days} day(s) or less"),
                format!(
                    "Certificate {} ({name}) expires at {}; renew it before then.",
                    c.serial_hex,
                    super::rfc3339(c.not_after)
                ),
                serde_json::json!({
                    "certificate_id": c.id,
                    "days_before": days,
                    "not_after": super::rfc3339(c.not_after),
                }),
            )),
            _ => None,
        };
        let event = AuditEvent::new(Actor::SYSTEM, "certificate.expiry_notice", ctx)
            .org(c.organization_id)
            .target("certificate", c.id)
            .details(serde_json::json!({ "days_before": days }));
        match self
            .core
            .record_expiry_notice(c.id, days, notice.as_ref(), &event)
            .await
        {
            Ok(()) => {}
            // Another instance sent it first.
            Err(StoreError::Duplicate(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        if let Some(org) = c.organization_id {
            self.emit(
                org,
                "certificate.expiring",
                serde_json::json!({ "certificate_id": c.id, "days_before": days }),
            )
            .await;
        }
        Ok(true)
    }
}
