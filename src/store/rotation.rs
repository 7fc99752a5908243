//! KEK rotation in clm_secure: the rotation record, the batches of
//! archived keys moved from one KEK to the other (compare-and-set per key,
//! progress and audit in the same transaction), and the key status changes
//! that start, finish and roll back a rotation.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use uuid::Uuid;

use super::entity::secure::{encryption_keys, key_rotation_history, private_keys};
use super::{SecureDb, StoreError, StoreResult, audit, parse_one};
use crate::domain::model::{AuditEvent, KeyReference, KeyRotation};
use crate::domain::{
    KeyAlgorithm, KeyId, KeyPurpose, KeyStatus, RotationStatus, UserId, new_row_id,
};

/// One archived key to move: (row id, wrapped bytes, algorithm).
pub type ArchivedRow = (Uuid, Vec<u8>, KeyAlgorithm);

impl SecureDb {
    /// Starts a KEK rotation: registers `new` (active at once, so keys
    /// archived from now on use it), deprecates `old` and records the
    /// rotation — one transaction. A rotation already running is a
    /// [`StoreError::Duplicate`] (a partial unique index), whoever starts it.
    pub async fn start_kek_rotation(
        &self,
        old: &KeyReference,
        new: &KeyReference,
        by: Option<UserId>,
        event: &AuditEvent,
    ) -> StoreResult<KeyRotation> {
        let txn = super::begin_write(&self.db).await?;
        let now = Utc::now();
        let total = private_keys::Entity::find()
            .filter(private_keys::Column::KekId.eq(old.id.0))
            .count(&txn)
            .await?;
        let rotation = KeyRotation {
            id: new_row_id(),
            old_key_id: Some(old.id),
            new_key_id: new.id,
            status: RotationStatus::Running,
            total_count: i64::try_from(total).map_err(super::error::corrupt)?,
            rewrapped_count: 0,
            started_at: now,
            finished_at: None,
        };
        // The new key first: the rotation record refers to it.
        encryption_keys::ActiveModel {
            id: Set(new.id.0),
            label: Set(new.label.clone()),
            ckaid_hex: Set(new.ckaid_hex.clone()),
            pkcs11_uri: Set(new.pkcs11_uri.clone()),
            purpose: Set(new.purpose.as_str().to_string()),
            algorithm: Set(new.algorithm.clone()),
            status: Set(KeyStatus::Active.as_str().to_string()),
            version: Set(new.version),
            parent_key_id: Set(Some(old.id.0)),
            activated_at: Set(Some(now)),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        key_rotation_history::ActiveModel {
            id: Set(rotation.id),
            key_purpose: Set(KeyPurpose::Kek.as_str().to_string()),
            old_key_id: Set(Some(old.id.0)),
            new_key_id: Set(new.id.0),
            status: Set(rotation.status.as_str().to_string()),
            total_count: Set(rotation.total_count),
            rewrapped_count: Set(0),
            initiated_by: Set(by.map(Into::into)),
            error: Set(None),
            started_at: Set(now),
            finished_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await?;
        set_key_status(&txn, old.id, KeyStatus::Active, KeyStatus::Deprecated).await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(rotation)
    }

    pub async fn running_kek_rotation(&self) -> StoreResult<Option<KeyRotation>> {
        key_rotation_history::Entity::find()
            .filter(key_rotation_history::Column::KeyPurpose.eq(KeyPurpose::Kek.as_str()))
            .filter(key_rotation_history::Column::Status.eq(RotationStatus::Running.as_str()))
            .one(&self.read)
            .await?
            .map(rotation_from)
            .transpose()
    }

    /// Rotations, newest first.
    pub async fn kek_rotations(&self, limit: u64) -> StoreResult<Vec<KeyRotation>> {
        key_rotation_history::Entity::find()
            .filter(key_rotation_history::Column::KeyPurpose.eq(KeyPurpose::Kek.as_str()))
            .order_by_desc(key_rotation_history::Column::StartedAt)
            .limit(limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(rotation_from)
            .collect()
    }

    /// The next archived keys still wrapped under `kek`.
    pub async fn keys_under(&self, kek: KeyId, limit: u64) -> StoreResult<Vec<ArchivedRow>> {
        private_keys::Entity::find()
            .filter(private_keys::Column::KekId.eq(kek.0))
            .order_by_asc(private_keys::Column::Id)
            .limit(limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(|r| Ok((r.id, r.wrapped_key, parse_one(&r.key_algorithm)?)))
            .collect()
    }

    /// Stores one batch of rewrapped keys: each row moves only if it is
    /// still under `from` (compare-and-set), and the rotation's progress and
    /// an audit entry go in the same transaction. Returns the rows moved.
    pub async fn store_rewrapped(
        &self,
        rotation: Uuid,
        from: &KeyReference,
        to: &KeyReference,
        rows: &[(Uuid, Vec<u8>)],
        event: &AuditEvent,
    ) -> StoreResult<u64> {
        let txn = super::begin_write(&self.db).await?;
        let mut moved = 0;
        for (id, wrapped) in rows {
            moved += private_keys::Entity::update_many()
                .col_expr(
                    private_keys::Column::WrappedKey,
                    Expr::value(wrapped.clone()),
                )
                .col_expr(private_keys::Column::KekId, Expr::value(to.id.0))
                .col_expr(private_keys::Column::KekVersion, Expr::value(to.version))
                .col_expr(private_keys::Column::UpdatedAt, Expr::value(Utc::now()))
                .filter(private_keys::Column::Id.eq(*id))
                .filter(private_keys::Column::KekId.eq(from.id.0))
                .exec(&txn)
                .await?
                .rows_affected;
        }
        key_rotation_history::Entity::update_many()
            .col_expr(
                key_rotation_history::Column::RewrappedCount,
                Expr::col(key_rotation_history::Column::RewrappedCount).add(moved as i64),
            )
            .col_expr(
                key_rotation_history::Column::UpdatedAt,
                Expr::value(Utc::now()),
            )
            .filter(key_rotation_history::Column::Id.eq(rotation))
            .exec(&txn)
            .await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(moved)
    }

    /// `running → completed` once no key is left under the old KEK; the old
    /// KEK stays `deprecated` until `rollback_until`.
    pub async fn finish_kek_rotation(
        &self,
        rotation: &KeyRotation,
        rollback_until: DateTime<Utc>,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        move_rotation(
            &txn,
            rotation.id,
            RotationStatus::Running,
            RotationStatus::Completed,
        )
        .await?;
        if let Some(old) = rotation.old_key_id {
            encryption_keys::Entity::update_many()
                .col_expr(
                    encryption_keys::Column::DeprecatedAt,
                    Expr::value(Some(Utc::now())),
                )
                .col_expr(
                    encryption_keys::Column::RollbackExpiresAt,
                    Expr::value(Some(rollback_until)),
                )
                .filter(encryption_keys::Column::Id.eq(old.0))
                .exec(&txn)
                .await?;
        }
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Rollback, step one: the completed rotation becomes a running one in
    /// the other direction — the old KEK active again, the new one
    /// disabled, and a rotation record from new to old.
    pub async fn start_kek_rollback(
        &self,
        completed: &KeyRotation,
        by: Option<UserId>,
        event: &AuditEvent,
    ) -> StoreResult<KeyRotation> {
        let old = completed
            .old_key_id
            .ok_or_else(|| StoreError::Corrupt("rotation without an old key".into()))?;
        let txn = super::begin_write(&self.db).await?;
        move_rotation(
            &txn,
            completed.id,
            RotationStatus::Completed,
            RotationStatus::RolledBack,
        )
        .await?;
        set_key_status(&txn, old, KeyStatus::Deprecated, KeyStatus::Active).await?;
        set_key_status(
            &txn,
            completed.new_key_id,
            KeyStatus::Active,
            KeyStatus::Disabled,
        )
        .await?;
        let total = private_keys::Entity::find()
            .filter(private_keys::Column::KekId.eq(completed.new_key_id.0))
            .count(&txn)
            .await?;
        let now = Utc::now();
        let back = KeyRotation {
            id: new_row_id(),
            old_key_id: Some(completed.new_key_id),
            new_key_id: old,
            status: RotationStatus::Running,
            total_count: i64::try_from(total).map_err(super::error::corrupt)?,
            rewrapped_count: 0,
            started_at: now,
            finished_at: None,
        };
        key_rotation_history::ActiveModel {
            id: Set(back.id),
            key_purpose: Set(KeyPurpose::Kek.as_str().to_string()),
            old_key_id: Set(Some(completed.new_key_id.0)),
            new_key_id: Set(old.0),
            status: Set(back.status.as_str().to_string()),
            total_count: Set(back.total_count),
            rewrapped_count: Set(0),
            initiated_by: Set(by.map(Into::into)),
            error: Set(None),
            started_at: Set(now),
            finished_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(back)
    }

    /// Retired KEKs (deprecated by a rotation, or disabled by a rollback)
    /// whose rollback window has passed.
    pub async fn kek_past_rollback(&self, now: DateTime<Utc>) -> StoreResult<Vec<KeyReference>> {
        encryption_keys::Entity::find()
            .filter(encryption_keys::Column::Purpose.eq(KeyPurpose::Kek.as_str()))
            .filter(
                encryption_keys::Column::Status
                    .is_in([KeyStatus::Deprecated.as_str(), KeyStatus::Disabled.as_str()]),
            )
            .filter(encryption_keys::Column::RollbackExpiresAt.lte(now))
            .all(&self.read)
            .await?
            .into_iter()
            .map(super::secure_db::key_from)
            .collect()
    }

    /// When the deprecated key `id` may no longer be rolled back to.
    pub async fn rollback_deadline(&self, id: KeyId) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(encryption_keys::Entity::find_by_id(id.0)
            .one(&self.read)
            .await?
            .and_then(|k| k.rollback_expires_at))
    }

    /// Since when the newest active key of `purpose` has been active.
    pub async fn active_since(&self, purpose: KeyPurpose) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(encryption_keys::Entity::find()
            .filter(encryption_keys::Column::Purpose.eq(purpose.as_str()))
            .filter(encryption_keys::Column::Status.eq(KeyStatus::Active.as_str()))
            .order_by_desc(encryption_keys::Column::Version)
            .one(&self.read)
            .await?
            .and_then(|k| k.activated_at.or(Some(k.created_at))))
    }

    /// `from → to` for a registered key, compare-and-set, audited.
    pub async fn move_key(
        &self,
        id: KeyId,
        from: KeyStatus,
        to: KeyStatus,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        set_key_status(&txn, id, from, to).await?;
        if to == KeyStatus::Destroyed {
            encryption_keys::Entity::update_many()
                .col_expr(
                    encryption_keys::Column::DestroyedAt,
                    Expr::value(Some(Utc::now())),
                )
                .filter(encryption_keys::Column::Id.eq(id.0))
                .exec(&txn)
                .await?;
        }
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }
}

async fn set_key_status<C: sea_orm::ConnectionTrait>(
    db: &C,
    id: KeyId,
    from: KeyStatus,
    to: KeyStatus,
) -> StoreResult<()> {
    let res = encryption_keys::Entity::update_many()
        .col_expr(encryption_keys::Column::Status, Expr::value(to.as_str()))
        .col_expr(encryption_keys::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(encryption_keys::Column::Id.eq(id.0))
        .filter(encryption_keys::Column::Status.eq(from.as_str()))
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Err(StoreError::Conflict(format!("the key is no longer {from}")));
    }
    Ok(())
}

async fn move_rotation<C: sea_orm::ConnectionTrait>(
    db: &C,
    id: Uuid,
    from: RotationStatus,
    to: RotationStatus,
) -> StoreResult<()> {
    let res = key_rotation_history::Entity::update_many()
        .col_expr(
            key_rotation_history::Column::Status,
            Expr::value(to.as_str()),
        )
        .col_expr(
            key_rotation_history::Column::FinishedAt,
            Expr::value(Some(Utc::now())),
        )
        .col_expr(
            key_rotation_history::Column::UpdatedAt,
            Expr::value(Utc::now()),
        )
        .filter(key_rotation_history::Column::Id.eq(id))
        .filter(key_rotation_history::Column::Status.eq(from.as_str()))
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Err(StoreError::Conflict(format!(
            "the rotation is no longer {from}"
        )));
    }
    Ok(())
}

fn rotation_from(r: key_rotation_history::Model) -> StoreResult<KeyRotation> {
    Ok(KeyRotation {
        id: r.id,
        old_key_id: r.old_key_id.map(KeyId),
        new_key_id: KeyId(r.new_key_id),
        status: parse_one(&r.status)?,
        total_count: r.total_count,
        rewrapped_count: r.rewrapped_count,
        started_at: r.started_at,
        finished_at: r.finished_at,
    })
}
