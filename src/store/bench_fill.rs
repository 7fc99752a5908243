//! Bulk writes for `clm bench run` only: certificates (and their
//! revocations) stored the way issuance and revocation store them, but in
//! multi-row inserts of many rows per transaction, so that a million rows
//! take seconds instead of hours; and the PostgreSQL databases a benchmark
//! creates for itself and drops afterwards. Nothing here writes audit
//! entries: the rows stand for certificates issued before the benchmark.

use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, Database, EntityTrait, Set};
use uuid::Uuid;

use super::entity::core::certificate_metadata;
use super::entity::secure::{certificate_revocations, certificates};
use super::secure_db::certificate_active_model;
use super::{CoreDb, SecureDb, StoreError, StoreResult};
use crate::domain::model::Certificate;
use crate::domain::{CertificateStatus, Secret, UserId};

/// Rows per INSERT statement: under both backends' limits on bound
/// parameters (PostgreSQL 65 535, SQLite 32 766) for the widest table.
const ROWS_PER_STATEMENT: usize = 1_000;
/// Rows per transaction.
const ROWS_PER_TRANSACTION: usize = 10_000;

impl SecureDb {
    /// Stores `certs`; each revoked or held one gets its
    /// `certificate_revocations` row as [`SecureDb::revoke`] writes it
    /// (revoked by `revoked_by`).
    pub async fn bench_insert_certificates(
        &self,
        certs: &[Certificate],
        revoked_by: Option<UserId>,
    ) -> StoreResult<()> {
        for txn_rows in certs.chunks(ROWS_PER_TRANSACTION) {
            let txn = super::begin_write(&self.db).await?;
            for rows in txn_rows.chunks(ROWS_PER_STATEMENT) {
                certificates::Entity::insert_many(rows.iter().map(certificate_active_model))
                    .exec_without_returning(&txn)
                    .await?;
                let revocations: Vec<_> = rows
                    .iter()
                    .filter(|c| {
                        matches!(
                            c.status,
                            CertificateStatus::Revoked | CertificateStatus::OnHold
                        )
                    })
                    .map(|c| certificate_revocations::ActiveModel {
                        id: Set(Uuid::new_v4()),
                        certificate_id: Set(c.id.0),
                        ca_id: Set(c.ca_id.0),
                        serial_hex: Set(c.serial_hex.clone()),
                        reason: Set(c.revocation_reason.clone().unwrap_or_default()),
                        revoked_at: Set(c.revoked_at.unwrap_or(c.created_at)),
                        invalidity_date: Set(None),
                        revoked_by: Set(revoked_by.map(Into::into)),
                        created_at: Set(c.revoked_at.unwrap_or(c.created_at)),
                    })
                    .collect();
                if !revocations.is_empty() {
                    certificate_revocations::Entity::insert_many(revocations)
                        .exec_without_returning(&txn)
                        .await?;
                }
            }
            txn.commit().await?;
        }
        Ok(())
    }

    /// What a server does on its own long before a million certificates
    /// have been issued one by one: see [`settle`].
    pub async fn bench_settle(&self) -> StoreResult<()> {
        settle(&self.db, "certificates, certificate_revocations").await
    }
}

/// After a bulk fill: on PostgreSQL what autovacuum does (planner
/// statistics and the visibility map, without which no index-only scan is
/// index-only) and a checkpoint; on SQLite the WAL copied into the
/// database. A measurement right after a fill would otherwise pay for
/// work the fill left behind (a vacuum running beside it, a checkpoint of
/// hundreds of megabytes inside the next commit). SQLite keeps no
/// statistics unless asked, and clm never asks (see
/// `store::certificate_list`).
async fn settle(db: &sea_orm::DatabaseConnection, tables: &str) -> StoreResult<()> {
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        db.execute_unprepared(&format!("VACUUM (ANALYZE) {tables}"))
            .await?;
        // Best effort: CHECKPOINT needs a superuser (or pg_checkpoint),
        // the benchmark only a user who may create databases.
        let _ = db.execute_unprepared("CHECKPOINT").await;
    } else {
        db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
            .await?;
    }
    Ok(())
}

impl CoreDb {
    /// See [`settle`].
    pub async fn bench_settle(&self) -> StoreResult<()> {
        settle(&self.db, "certificate_metadata").await
    }

    /// The clm_core mirror of `certs`, as issuance records it.
    pub async fn bench_insert_certificate_metadata(
        &self,
        certs: &[Certificate],
    ) -> StoreResult<()> {
        for txn_rows in certs.chunks(ROWS_PER_TRANSACTION) {
            let txn = super::begin_write(&self.db).await?;
            for rows in txn_rows.chunks(ROWS_PER_STATEMENT) {
                certificate_metadata::Entity::insert_many(rows.iter().map(|c| {
                    certificate_metadata::ActiveModel {
                        updated_at: Set(c.revoked_at.unwrap_or(c.created_at)),
                        ..super::batched::metadata_model(c)
                    }
                }))
                // Reconciliation's daily full pass may copy a batch from
                // clm_secure between the fill's two inserts: the same rows.
                .on_conflict(
                    OnConflict::column(certificate_metadata::Column::Id)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
            }
            txn.commit().await?;
        }
        Ok(())
    }
}

/// Creates the PostgreSQL database `name` through the server at
/// `admin_url` (a URL with a user allowed to create databases).
pub async fn bench_create_database(admin_url: &Secret, name: &str) -> StoreResult<()> {
    admin_statement(admin_url, &format!("CREATE DATABASE {}", checked(name)?)).await
}

/// Drops the PostgreSQL database `name`, closing its connections.
pub async fn bench_drop_database(admin_url: &Secret, name: &str) -> StoreResult<()> {
    admin_statement(
        admin_url,
        &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", checked(name)?),
    )
    .await
}

/// Database names are spliced into DDL: lower-case letters, digits and `_`.
fn checked(name: &str) -> StoreResult<&str> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(StoreError::Database(format!(
            "`{name}` is not a plain database name"
        )))
    }
}

async fn admin_statement(admin_url: &Secret, sql: &str) -> StoreResult<()> {
    let db = Database::connect(admin_url.expose()).await.map_err(|e| {
        StoreError::Database(format!(
            "cannot connect: {}",
            super::redact_url(&e.to_string(), admin_url.expose())
        ))
    })?;
    let done = db.execute_unprepared(sql).await;
    let _ = db.close().await;
    done?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::{Duration, Utc};
    use sea_orm::PaginatorTrait;

    use super::*;
    use crate::domain::{CaId, CertificateId};

    fn filled(at_days_ago: i64) -> Certificate {
        let not_before = Utc::now() - Duration::days(at_days_ago);
        Certificate {
            id: CertificateId(crate::domain::row_id_at(not_before)),
            organization_id: None,
            ca_id: CaId::new(),
            request_id: None,
            profile_id: None,
            owner_id: None,
            serial_hex: format!("{at_days_ago:02x}"),
            subject: "CN=filled".into(),
            sans: vec![],
            key_algorithm: "ecdsa-p256".into(),
            not_before,
            not_after: not_before + Duration::days(397),
            status: CertificateStatus::Valid,
            is_ca: false,
            certificate_der: vec![0x30, 0x00],
            fingerprint_sha256: format!("{at_days_ago:064x}"),
            revoked_at: None,
            revocation_reason: None,
            replaces_certificate_id: None,
            created_at: not_before,
        }
    }

    /// A mirror that reconciliation copied first is left as it is, and
    /// the rest of the batch is stored.
    #[tokio::test]
    async fn mirrors_already_copied_do_not_fail_the_fill() {
        let dir = tempfile::tempdir().unwrap();
        let core = crate::store::sqlite_core_for_plans(dir.path()).await;
        let certs: Vec<Certificate> = (1..=3).map(filled).collect();
        core.bench_insert_certificate_metadata(&certs[..1])
            .await
            .unwrap();
        core.bench_insert_certificate_metadata(&certs)
            .await
            .unwrap();
        let stored = certificate_metadata::Entity::find()
            .count(&core.db)
            .await
            .unwrap();
        assert_eq!(stored, 3);
    }
}
