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
use crate::domain::{CertificateId, CertificateStatus};

/// A page of the walk over clm_secure's certificates.
#[derive(Debug, Default)]
pub struct CertificateStates {
    /// The end-entity certificates of the page, with their status.
    pub states: Vec<(CertificateId, CertificateStatus)>,
    /// Where the next page starts after (`None`: the walk is done).
    pub last: Option<CertificateId>,
}

impl SecureDb {
    /// Up to `limit` certificates with an id after `after`, in id order,
    /// and the status of the end-entity ones among them: the source of
    /// truth the mirror is compared with.
    pub async fn certificate_states_after(
        &self,
        after: Option<CertificateId>,
        limit: u64,
    ) -> StoreResult<CertificateStates> {
        let rows: Vec<(Uuid, String, bool)> = states_after(after, limit)
            .into_tuple()
            .all(&self.read)
            .await?;
        Ok(CertificateStates {
            last: rows.last().map(|(id, ..)| CertificateId(*id)),
            states: end_entities(rows)?,
        })
    }

    /// The end-entity certificates among `ids`, with their status.
    pub async fn certificate_states(
        &self,
        ids: &[CertificateId],
    ) -> StoreResult<Vec<(CertificateId, CertificateStatus)>> {
        let rows: Vec<(Uuid, String, bool)> = states()
            .filter(certificates::Column::Id.is_in(ids.iter().map(|i| i.0)))
            .into_tuple()
            .all(&self.read)
            .await?;
        end_entities(rows)
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
        approved_before(before, limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(request_from)
            .collect()
    }
}

/// Id, status and whether it is a CA's, of certificates. CA certificates
/// are left out after reading, not in the SQL: a condition on `is_ca` led
/// SQLite to the list indexes that begin with it, which read and sorted
/// every certificate for each page of the walk in id order (a million
/// certificates took over three minutes); the walk reads the primary key.
fn states() -> sea_orm::Select<certificates::Entity> {
    certificates::Entity::find()
        .select_only()
        .column(certificates::Column::Id)
        .column(certificates::Column::Status)
        .column(certificates::Column::IsCa)
}

fn states_after(after: Option<CertificateId>, limit: u64) -> sea_orm::Select<certificates::Entity> {
    let mut q = states();
    if let Some(after) = after {
        q = q.filter(certificates::Column::Id.gt(after.0));
    }
    q.order_by_asc(certificates::Column::Id).limit(limit)
}

fn end_entities(
    rows: Vec<(Uuid, String, bool)>,
) -> StoreResult<Vec<(CertificateId, CertificateStatus)>> {
    rows.into_iter()
        .filter(|(_, _, is_ca)| !is_ca)
        .map(|(id, status, _)| Ok((CertificateId(id), parse_one(&status)?)))
        .collect()
}

const APPROVED: &str = "status = 'approved'";

/// The query of [`SecureDb::requests_approved_before`]. Its status is
/// written into the SQL rather than bound: a statement's plan is made
/// before any value is bound, and only a literal lets it use the partial
/// index of requests in `approved` (migration
/// m20261207_000002_approved_requests).
fn approved_before(
    before: DateTime<Utc>,
    limit: u64,
) -> sea_orm::Select<certificate_requests::Entity> {
    certificate_requests::Entity::find()
        .filter(Expr::cust(APPROVED))
        .filter(certificate_requests::Column::UpdatedAt.lt(before))
        .order_by_asc(certificate_requests::Column::UpdatedAt)
        .limit(limit)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sea_orm::QueryTrait;

    use super::*;
    use crate::domain::RequestStatus;

    /// The walk in id order reads the primary key, a page at a time.
    #[tokio::test]
    async fn the_walk_over_certificates_reads_the_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::sqlite_secure_for_plans(dir.path()).await;
        let q = states_after(Some(CertificateId::new()), 1_000).into_query();
        let plan = crate::store::sqlite_plan(&db.read, &q).await;
        assert_eq!(
            plan,
            ["SEARCH certificates USING INDEX sqlite_autoindex_certificates_1 (id>?)"],
            "{plan:?}"
        );
    }

    /// Reconciliation looks for interrupted issuance every few minutes:
    /// it reads the few requests in `approved`, not every request ever
    /// made.
    #[tokio::test]
    async fn interrupted_requests_are_read_from_their_partial_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::sqlite_secure_for_plans(dir.path()).await;
        assert_eq!(
            APPROVED,
            format!("status = '{}'", RequestStatus::Approved.as_str())
        );
        let q = approved_before(Utc::now(), 100).into_query();
        let plan = crate::store::sqlite_plan(&db.read, &q).await;
        assert_eq!(
            plan,
            ["SEARCH certificate_requests USING INDEX idx_requests_approved (updated_at<?)"],
            "{plan:?}"
        );
    }
}
