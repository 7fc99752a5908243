//! What the reconciliation pass (`service::reconcile`) reads to compare the
//! two databases: certificates of clm_secure against clm_core's metadata
//! mirror, walked by primary key in pages so that memory stays bounded at
//! any size, and requests left in `approved` by an interrupted issuance.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::entity::core::certificate_metadata;
use super::entity::secure::{certificate_requests, certificates};
use super::secure_db::request_from;
use super::{CoreDb, SecureDb, StoreResult, parse_one};
use crate::domain::model::CertificateRequest;
use crate::domain::{CertificateId, CertificateStatus, RequestStatus};

impl SecureDb {
    /// End-entity certificates with an id after `after`, in id order, with
    /// their status: the source of truth the mirror is compared with.
    pub async fn certificate_states_after(
        &self,
        after: Option<CertificateId>,
        limit: u64,
    ) -> StoreResult<Vec<(CertificateId, CertificateStatus)>> {
        let mut q = certificates::Entity::find()
            .select_only()
            .column(certificates::Column::Id)
            .column(certificates::Column::Status)
            .filter(certificates::Column::IsCa.eq(false));
        if let Some(after) = after {
            q = q.filter(certificates::Column::Id.gt(after.0));
        }
        let rows: Vec<(Uuid, String)> = q
            .order_by_asc(certificates::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(&self.read)
            .await?;
        rows.into_iter()
            .map(|(id, status)| Ok((CertificateId(id), parse_one(&status)?)))
            .collect()
    }

    /// Which of `ids` name a certificate in clm_secure.
    pub async fn existing_certificates(&self, ids: &[Uuid]) -> StoreResult<HashSet<Uuid>> {
        let found: Vec<Uuid> = certificates::Entity::find()
            .select_only()
            .column(certificates::Column::Id)
            .filter(certificates::Column::Id.is_in(ids.iter().copied()))
            .into_tuple()
            .all(&self.read)
            .await?;
        Ok(found.into_iter().collect())
    }

    /// Requests in `approved` (a serial reserved, nothing stored yet) not
    /// touched since `before`: issuance that a crash interrupted.
    pub async fn requests_approved_before(
        &self,
        before: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<CertificateRequest>> {
        certificate_requests::Entity::find()
            .filter(certificate_requests::Column::Status.eq(RequestStatus::Approved.as_str()))
            .filter(certificate_requests::Column::UpdatedAt.lt(before))
            .order_by_asc(certificate_requests::Column::UpdatedAt)
            .limit(limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(request_from)
            .collect()
    }
}

impl CoreDb {
    /// The mirrored status of each of `ids` that clm_core has.
    pub async fn mirror_states(
        &self,
        ids: &[CertificateId],
    ) -> StoreResult<HashMap<CertificateId, String>> {
        let rows: Vec<(Uuid, String)> = certificate_metadata::Entity::find()
            .select_only()
            .column(certificate_metadata::Column::Id)
            .column(certificate_metadata::Column::Status)
            .filter(certificate_metadata::Column::Id.is_in(ids.iter().map(|i| i.0)))
            .into_tuple()
            .all(&self.read)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, status)| (CertificateId(id), status))
            .collect())
    }

    /// Sets the mirrored status of `id` to `to` if it still is `from`.
    pub async fn repair_mirror_status(
        &self,
        id: CertificateId,
        from: &str,
        to: CertificateStatus,
    ) -> StoreResult<()> {
        certificate_metadata::Entity::update_many()
            .col_expr(
                certificate_metadata::Column::Status,
                Expr::value(to.as_str()),
            )
            .filter(certificate_metadata::Column::Id.eq(id.0))
            .filter(certificate_metadata::Column::Status.eq(from))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Ids of mirrored certificates after `after`, in id order.
    pub async fn mirror_ids_after(
        &self,
        after: Option<Uuid>,
        limit: u64,
    ) -> StoreResult<Vec<Uuid>> {
        let mut q = certificate_metadata::Entity::find()
            .select_only()
            .column(certificate_metadata::Column::Id);
        if let Some(after) = after {
            q = q.filter(certificate_metadata::Column::Id.gt(after));
        }
        Ok(q.order_by_asc(certificate_metadata::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(&self.read)
            .await?)
    }
}
