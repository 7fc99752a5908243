//! Cheap reads behind the operators' gauges (`GET /metrics`): counts and
//! timestamps only, each one indexed query, no locks taken.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Func, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect,
};
use uuid::Uuid;

use super::entity::secure::{ca_crls, certificate_requests};
use super::{AuditStore, SecureDb, StoreResult, audit};
use crate::domain::{CaId, RequestStatus};

impl SecureDb {
    pub async fn count_requests_with_status(&self, status: RequestStatus) -> StoreResult<u64> {
        Ok(certificate_requests::Entity::find()
            .filter(certificate_requests::Column::Status.eq(status.as_str()))
            .count(&self.read)
            .await?)
    }

    /// `thisUpdate` of the stored (served) CRL of every CA that has one.
    pub async fn crl_this_updates(&self) -> StoreResult<Vec<(CaId, DateTime<Utc>)>> {
        let rows: Vec<(Uuid, DateTime<Utc>)> = ca_crls::Entity::find()
            .select_only()
            .column(ca_crls::Column::CaId)
            .column(ca_crls::Column::ThisUpdate)
            .into_tuple()
            .all(&self.read)
            .await?;
        Ok(rows.into_iter().map(|(id, at)| (CaId(id), at)).collect())
    }
}

impl AuditStore {
    /// Entries with a seq above `seq` (those not sealed yet, given the
    /// newest seal's last seq).
    pub async fn count_entries_after(&self, seq: i64) -> StoreResult<u64> {
        let mut q = Query::select();
        q.from(Alias::new(audit::tables(self.log).log))
            .expr_as(Func::count(Expr::col(Alias::new("seq"))), Alias::new("n"))
            .and_where(Expr::col(Alias::new("seq")).gt(seq));
        let n = match self.read.query_one(&q).await? {
            Some(row) => row.try_get::<i64>("", "n")?,
            None => 0,
        };
        Ok(n.unsigned_abs())
    }
}
