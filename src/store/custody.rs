//! Wrapped private keys of server-side key generation (`private_keys`),
//! stored and read back only in their wrapped form, and the requests to
//! recover them (`key_recoveries`).

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use uuid::Uuid;

use super::entity::secure::{key_recoveries, private_keys};
use super::{SecureDb, StoreError, StoreResult, audit, parse_one};
use crate::domain::model::{AuditEvent, KeyRecovery, WrappedKey};
use crate::domain::{CertificateId, KeyId, OrganizationId, RecoveryStatus, UserId, new_row_id};

/// The only wrap mechanism clm uses (RFC 5649 AES key wrap with padding).
pub const WRAP_MECHANISM: &str = "CKM_AES_KEY_WRAP_PAD";

impl SecureDb {
    /// Archives a wrapped key with its audit entry, one transaction.
    pub async fn insert_private_key(&self, k: &WrappedKey, event: &AuditEvent) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let now = Utc::now();
        private_keys::ActiveModel {
            id: Set(new_row_id()),
            certificate_id: Set(k.certificate_id.0),
            organization_id: Set(k.organization_id.0),
            kek_id: Set(k.kek_id.0),
            kek_version: Set(k.kek_version),
            wrap_mechanism: Set(WRAP_MECHANISM.to_string()),
            wrapped_key: Set(k.wrapped.clone()),
            key_algorithm: Set(k.key_algorithm.as_str().to_string()),
            status: Set("archived".to_string()),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Every archived key with its certificate, for `clm keys verify`.
    pub async fn all_archived_keys(&self) -> StoreResult<Vec<(CertificateId, WrappedKey)>> {
        private_keys::Entity::find()
            .filter(private_keys::Column::Status.eq("archived"))
            .all(&self.read)
            .await?
            .into_iter()
            .map(|r| {
                let id = CertificateId(r.certificate_id);
                Ok((id, wrapped_from(r)?))
            })
            .collect()
    }

    /// The archived key of a certificate, if one was kept.
    pub async fn archived_key(
        &self,
        certificate: CertificateId,
    ) -> StoreResult<Option<WrappedKey>> {
        private_keys::Entity::find()
            .filter(private_keys::Column::CertificateId.eq(certificate.0))
            .filter(private_keys::Column::Status.eq("archived"))
            .one(&self.read)
            .await?
            .map(wrapped_from)
            .transpose()
    }
}

impl SecureDb {
    pub async fn insert_key_recovery(
        &self,
        r: &KeyRecovery,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        key_recoveries::ActiveModel {
            id: Set(r.id),
            certificate_id: Set(r.certificate_id.0),
            organization_id: Set(r.organization_id.0),
            requester_id: Set(r.requester_id.0),
            status: Set(r.status.as_str().to_string()),
            completed_at: Set(None),
            created_at: Set(r.created_at),
            updated_at: Set(r.created_at),
        }
        .insert(&txn)
        .await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn find_key_recovery(&self, id: Uuid) -> StoreResult<Option<KeyRecovery>> {
        key_recoveries::Entity::find_by_id(id)
            .one(&self.read)
            .await?
            .map(recovery_from)
            .transpose()
    }

    /// The requester's newest recovery of `certificate` that is still
    /// pending or approved (and not yet delivered).
    pub async fn open_key_recovery(
        &self,
        certificate: CertificateId,
        requester: UserId,
    ) -> StoreResult<Option<KeyRecovery>> {
        key_recoveries::Entity::find()
            .filter(key_recoveries::Column::CertificateId.eq(certificate.0))
            .filter(key_recoveries::Column::RequesterId.eq(requester.0))
            .filter(key_recoveries::Column::Status.is_in([
                RecoveryStatus::PendingApproval.as_str(),
                RecoveryStatus::Approved.as_str(),
            ]))
            .order_by_desc(key_recoveries::Column::CreatedAt)
            .one(&self.read)
            .await?
            .map(recovery_from)
            .transpose()
    }

    /// Compare-and-set of a recovery's status, audited. Delivery is
    /// `approved → completed`: of two concurrent deliveries one wins.
    pub async fn move_key_recovery(
        &self,
        id: Uuid,
        from: RecoveryStatus,
        to: RecoveryStatus,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let mut update = key_recoveries::Entity::update_many()
            .col_expr(key_recoveries::Column::Status, Expr::value(to.as_str()))
            .col_expr(key_recoveries::Column::UpdatedAt, Expr::value(Utc::now()));
        if to == RecoveryStatus::Completed {
            update = update.col_expr(
                key_recoveries::Column::CompletedAt,
                Expr::value(Some(Utc::now())),
            );
        }
        let res = update
            .filter(key_recoveries::Column::Id.eq(id))
            .filter(key_recoveries::Column::Status.eq(from.as_str()))
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::Conflict(format!(
                "the recovery is no longer {from}"
            )));
        }
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }
}

fn wrapped_from(r: private_keys::Model) -> StoreResult<WrappedKey> {
    Ok(WrappedKey {
        certificate_id: CertificateId(r.certificate_id),
        organization_id: OrganizationId(r.organization_id),
        kek_id: KeyId(r.kek_id),
        kek_version: r.kek_version,
        wrapped: r.wrapped_key,
        key_algorithm: parse_one(&r.key_algorithm)?,
    })
}

fn recovery_from(r: key_recoveries::Model) -> StoreResult<KeyRecovery> {
    Ok(KeyRecovery {
        id: r.id,
        certificate_id: CertificateId(r.certificate_id),
        organization_id: OrganizationId(r.organization_id),
        requester_id: UserId(r.requester_id),
        status: parse_one(&r.status)?,
        created_at: r.created_at,
    })
}
