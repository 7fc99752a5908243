//! clm_core's side of the certificate lifecycle: the status mirror in
//! `certificate_metadata` and the expiry notices sent to owners.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use super::entity::core::{certificate_expiry_notices, certificate_metadata};
use super::{CoreDb, StoreError, StoreResult, audit, workflow};
use crate::domain::model::{AuditEvent, Notification};
use crate::domain::{CertificateId, CertificateStatus, OrganizationId, UserId};

/// A certificate that may be due an expiry notice.
#[derive(Clone, Debug)]
pub struct ExpiringCertificate {
    pub id: CertificateId,
    pub organization_id: Option<OrganizationId>,
    pub owner_id: Option<UserId>,
    pub common_name: Option<String>,
    pub serial_hex: String,
    pub not_after: DateTime<Utc>,
}

impl CoreDb {
    /// Mirrors a status change made in clm_secure (which stays the source
    /// of truth). Idempotent.
    pub async fn mirror_certificate_status(
        &self,
        id: CertificateId,
        status: CertificateStatus,
    ) -> StoreResult<()> {
        certificate_metadata::Entity::update_many()
            .col_expr(
                certificate_metadata::Column::Status,
                Expr::value(status.as_str()),
            )
            .filter(certificate_metadata::Column::Id.eq(id.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Valid certificates whose notAfter falls before `horizon`, soonest
    /// first.
    pub async fn certificates_expiring_before(
        &self,
        horizon: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<ExpiringCertificate>> {
        Ok(certificate_metadata::Entity::find()
            .filter(certificate_metadata::Column::Status.eq(CertificateStatus::Valid.as_str()))
            .filter(certificate_metadata::Column::NotAfter.lte(horizon))
            .filter(certificate_metadata::Column::NotAfter.gt(Utc::now()))
            .order_by_asc(certificate_metadata::Column::NotAfter)
            .limit(limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(|r| ExpiringCertificate {
                id: CertificateId(r.id),
                organization_id: r.organization_id.map(OrganizationId),
                owner_id: r.owner_id.map(UserId),
                common_name: r.common_name,
                serial_hex: r.serial_hex,
                not_after: r.not_after,
            })
            .collect())
    }

    /// The notices already sent for `id` (days before notAfter).
    pub async fn expiry_notices_sent(&self, id: CertificateId) -> StoreResult<Vec<u32>> {
        let days: Vec<i32> = certificate_expiry_notices::Entity::find()
            .select_only()
            .column(certificate_expiry_notices::Column::DaysBefore)
            .filter(certificate_expiry_notices::Column::CertificateId.eq(id.0))
            .into_tuple()
            .all(&self.read)
            .await?;
        Ok(days
            .into_iter()
            .filter_map(|d| u32::try_from(d).ok())
            .collect())
    }

    /// Records that the `days_before` notice for `id` went out, with its
    /// notification and audit entry. The primary key makes it once only:
    /// a second sender gets [`StoreError::Duplicate`] and nothing is written.
    pub async fn record_expiry_notice(
        &self,
        id: CertificateId,
        days_before: u32,
        notice: Option<&Notification>,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let days = i32::try_from(days_before)
            .map_err(|_| StoreError::Corrupt("notice days out of range".into()))?;
        let txn = super::begin_write(&self.db).await?;
        certificate_expiry_notices::ActiveModel {
            certificate_id: Set(id.0),
            days_before: Set(days),
            sent_at: Set(Utc::now()),
        }
        .insert(&txn)
        .await?;
        if let Some(n) = notice {
            workflow::insert_notifications(&txn, std::slice::from_ref(n)).await?;
        }
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }
}
