//! clm_core's side of the certificate lifecycle: the status mirror in
//! `certificate_metadata` and the expiry notices sent to owners.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
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

    /// Valid certificates with notAfter in `[from, to]`, soonest first, that
    /// have had no notice of `days` days or fewer: those due the notice of
    /// `days` when `[from, to]` lies within `days` of now.
    pub async fn certificates_due_notice(
        &self,
        days: u32,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<ExpiringCertificate>> {
        Ok(due_notice(days, from, to, limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(expiring)
            .collect())
    }

    /// Up to `limit` mirrored certificates with an id after `after` and
    /// notAfter in `(from, to]`, in id order, with their status: among the
    /// certificates created since a moment, those that may be due a notice.
    pub async fn certificates_created_after(
        &self,
        after: CertificateId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<(ExpiringCertificate, CertificateStatus)>> {
        created_after(after, from, to, limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(|r| {
                let status = super::parse_one(&r.status)?;
                Ok((expiring(r), status))
            })
            .collect()
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

fn expiring(r: certificate_metadata::Model) -> ExpiringCertificate {
    ExpiringCertificate {
        id: CertificateId(r.id),
        organization_id: r.organization_id.map(OrganizationId),
        owner_id: r.owner_id.map(UserId),
        common_name: r.common_name,
        serial_hex: r.serial_hex,
        not_after: r.not_after,
    }
}

/// The query of [`CoreDb::certificates_due_notice`]: a range of the
/// status-and-notAfter index, each entry checked against the notices'
/// primary key.
fn due_notice(
    days: u32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u64,
) -> sea_orm::Select<certificate_metadata::Entity> {
    let notices = certificate_expiry_notices::Entity;
    let sent = Query::select()
        .expr(Expr::val(1))
        .from(notices)
        .and_where(
            Expr::col((notices, certificate_expiry_notices::Column::CertificateId)).equals((
                certificate_metadata::Entity,
                certificate_metadata::Column::Id,
            )),
        )
        .and_where(
            Expr::col((notices, certificate_expiry_notices::Column::DaysBefore))
                .lte(i64::from(days)),
        )
        .to_owned();
    certificate_metadata::Entity::find()
        .filter(certificate_metadata::Column::Status.eq(CertificateStatus::Valid.as_str()))
        .filter(certificate_metadata::Column::NotAfter.gte(from))
        .filter(certificate_metadata::Column::NotAfter.lte(to))
        .filter(Expr::exists(sent).not())
        .order_by_asc(certificate_metadata::Column::NotAfter)
        .limit(limit)
}

/// The query of [`CoreDb::certificates_created_after`]. No condition on
/// the status: with one, the status-and-notAfter index would be read
/// instead of the primary key's range of new rows.
fn created_after(
    after: CertificateId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u64,
) -> sea_orm::Select<certificate_metadata::Entity> {
    certificate_metadata::Entity::find()
        .filter(certificate_metadata::Column::Id.gt(after.0))
        .filter(certificate_metadata::Column::NotAfter.gt(from))
        .filter(certificate_metadata::Column::NotAfter.lte(to))
        .order_by_asc(certificate_metadata::Column::Id)
        .limit(limit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sea_orm::QueryTrait;

    use super::*;

    /// Each sweep reads the certificates due a notice from the expiry
    /// index, stepping over those that had it by the notices' primary key,
    /// and the new ones from the primary key.
    #[tokio::test]
    async fn certificates_due_a_notice_are_read_from_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::sqlite_core_for_plans(dir.path()).await;
        let now = Utc::now();
        let q = due_notice(7, now, now + chrono::Duration::days(7), 500).into_query();
        let plan = crate::store::sqlite_plan(&db.read, &q).await;
        assert_eq!(
            plan,
            [
                "SEARCH certificate_metadata USING INDEX idx_certificate_metadata_status_not_after (status=? AND not_after>? AND not_after<?)",
                "CORRELATED SCALAR SUBQUERY 1",
                "SEARCH certificate_expiry_notices USING COVERING INDEX sqlite_autoindex_certificate_expiry_notices_1 (certificate_id=? AND days_before<?)",
            ],
            "{plan:?}"
        );
        let q = created_after(CertificateId::new(), now, now, 500).into_query();
        let plan = crate::store::sqlite_plan(&db.read, &q).await;
        assert_eq!(
            plan,
            [
                "SEARCH certificate_metadata USING INDEX sqlite_autoindex_certificate_metadata_1 (id>?)"
            ],
            "{plan:?}"
        );
    }
}
