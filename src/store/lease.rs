//! clm_core `job_leases`: which instance runs a periodic job now, and when
//! it last started. Taking a lease is one compare-and-set UPDATE, so of
//! several instances racing for it exactly one wins, on both backends.
//! All times come from the database's clock (milliseconds since the
//! epoch): instances need not agree on the time, only on the database.

use std::time::Duration;

use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ColumnTrait, DatabaseBackend, EntityTrait, QueryFilter, QueryOrder, Set};

use super::entity::core::job_leases;
use super::{CoreDb, StoreResult};

/// A lease row as `clm jobs` and the tests see it.
#[derive(Clone, Debug)]
pub struct JobLease {
    pub name: String,
    pub holder: Option<String>,
    pub last_holder: Option<String>,
    pub runs: i64,
    /// Milliseconds since the epoch, database clock.
    pub last_started_ms: i64,
    pub expires_at_ms: i64,
}

/// The database's "now" in milliseconds since the epoch.
fn now_ms(backend: DatabaseBackend) -> &'static str {
    match backend {
        DatabaseBackend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        _ => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl CoreDb {
    /// Takes the lease on `job` for `holder` when nobody holds a live one
    /// and the last run started at least `period` ago; `true` if taken.
    /// The lease lapses after `ttl` unless [`CoreDb::renew_lease`] extends
    /// it.
    pub async fn acquire_lease(
        &self,
        job: &str,
        holder: &str,
        period: Duration,
        ttl: Duration,
    ) -> StoreResult<bool> {
        job_leases::Entity::insert(job_leases::ActiveModel {
            name: Set(job.to_string()),
            holder: Set(None),
            expires_at_ms: Set(0),
            last_started_ms: Set(0),
            last_holder: Set(None),
            runs: Set(0),
        })
        .on_conflict(
            OnConflict::column(job_leases::Column::Name)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        let now = now_ms(self.db.get_database_backend());
        let taken = job_leases::Entity::update_many()
            .col_expr(job_leases::Column::Holder, Expr::value(holder))
            .col_expr(job_leases::Column::LastHolder, Expr::value(holder))
            .col_expr(
                job_leases::Column::ExpiresAtMs,
                Expr::cust(format!("{now} + {}", millis(ttl))),
            )
            .col_expr(job_leases::Column::LastStartedMs, Expr::cust(now))
            .col_expr(
                job_leases::Column::Runs,
                Expr::col(job_leases::Column::Runs).add(1),
            )
            .filter(job_leases::Column::Name.eq(job))
            .filter(
                job_leases::Column::Holder
                    .is_null()
                    .or(Expr::cust(format!("expires_at_ms < {now}"))),
            )
            .filter(Expr::cust(format!(
                "last_started_ms <= {now} - {}",
                millis(period)
            )))
            .exec(&self.db)
            .await?;
        Ok(taken.rows_affected == 1)
    }

    /// Extends `holder`'s lease on `job` by `ttl` from now; `false` if it
    /// has lapsed and someone else may hold it.
    pub async fn renew_lease(&self, job: &str, holder: &str, ttl: Duration) -> StoreResult<bool> {
        let now = now_ms(self.db.get_database_backend());
        let renewed = job_leases::Entity::update_many()
            .col_expr(
                job_leases::Column::ExpiresAtMs,
                Expr::cust(format!("{now} + {}", millis(ttl))),
            )
            .filter(job_leases::Column::Name.eq(job))
            .filter(job_leases::Column::Holder.eq(holder))
            .exec(&self.db)
            .await?;
        Ok(renewed.rows_affected == 1)
    }

    /// Gives the lease back after a run; the period still counts from the
    /// run's start.
    pub async fn release_lease(&self, job: &str, holder: &str) -> StoreResult<()> {
        job_leases::Entity::update_many()
            .col_expr(
                job_leases::Column::Holder,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                job_leases::Column::ExpiresAtMs,
                Expr::cust(now_ms(self.db.get_database_backend())),
            )
            .filter(job_leases::Column::Name.eq(job))
            .filter(job_leases::Column::Holder.eq(holder))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn list_leases(&self) -> StoreResult<Vec<JobLease>> {
        Ok(job_leases::Entity::find()
            .order_by_asc(job_leases::Column::Name)
            .all(&self.read)
            .await?
            .into_iter()
            .map(|r| JobLease {
                name: r.name,
                holder: r.holder,
                last_holder: r.last_holder,
                runs: r.runs,
                last_started_ms: r.last_started_ms,
                expires_at_ms: r.expires_at_ms,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::domain::Secret;

    async fn core() -> (tempfile::TempDir, CoreDb) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/core.db?mode=rwc", dir.path().display());
        let db = CoreDb::connect(&Secret::new(url)).await.unwrap();
        db.migrate().await.unwrap();
        (dir, db)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn one_holder_at_a_time_and_once_per_period() {
        let (_dir, db) = core().await;
        assert!(db.acquire_lease("crl", "a", HOUR, HOUR).await.unwrap());
        assert!(!db.acquire_lease("crl", "b", HOUR, HOUR).await.unwrap());
        // Another job is another lease.
        assert!(db.acquire_lease("expiry", "b", HOUR, HOUR).await.unwrap());
        db.release_lease("crl", "a").await.unwrap();
        // Released, but the period since the last start has not passed.
        assert!(!db.acquire_lease("crl", "b", HOUR, HOUR).await.unwrap());
        assert!(
            db.acquire_lease("crl", "b", Duration::ZERO, HOUR)
                .await
                .unwrap()
        );
        let crl = db.list_leases().await.unwrap().remove(0);
        assert_eq!((crl.name.as_str(), crl.runs), ("crl", 2));
        assert_eq!(crl.holder.as_deref(), Some("b"));
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_taken_over_and_its_holder_cannot_renew() {
        let (_dir, db) = core().await;
        let short = Duration::from_millis(50);
        assert!(
            db.acquire_lease("rewrap", "a", Duration::ZERO, short)
                .await
                .unwrap()
        );
        assert!(db.renew_lease("rewrap", "a", short).await.unwrap());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            db.acquire_lease("rewrap", "b", Duration::ZERO, HOUR)
                .await
                .unwrap()
        );
        assert!(!db.renew_lease("rewrap", "a", HOUR).await.unwrap());
        // A late release by the old holder does not free b's lease.
        db.release_lease("rewrap", "a").await.unwrap();
        assert!(
            !db.acquire_lease("rewrap", "c", Duration::ZERO, HOUR)
                .await
                .unwrap()
        );
    }
}
