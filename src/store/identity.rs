//! clm_core identity records beyond creation: organisation and user lists,
//! failed logins and lockout, deactivation and password changes (which end
//! every session, API key and client certificate binding of the user in the
//! same transaction), session idle expiry, and API keys.

use chrono::{DateTime, Utc};
use sea_orm::prelude::Json;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, RelationTrait, Set,
};
use uuid::Uuid;

use super::core_db::live_identity;
use super::entity::core::{api_keys, organizations, sessions, users};
use super::{CoreDb, StoreError, StoreResult, audit, json_strings, parse_all};
use crate::domain::model::{ApiKey, AuditEvent, Identity, Organization, User};
use crate::domain::{ApiKeyId, OrganizationId, Role, SessionId, UserId};

/// A live API key as authentication sees it: the roles it was given, when
/// it was last used, and whose it is.
#[derive(Clone, Debug)]
pub struct LiveApiKey {
    pub id: ApiKeyId,
    pub roles: Vec<Role>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub user: Identity,
}

/// Ends every session, API key and client certificate binding of `user`
/// (inside the caller's transaction).
async fn revoke_credentials<C: ConnectionTrait>(
    db: &C,
    user: UserId,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    sessions::Entity::update_many()
        .col_expr(sessions::Column::RevokedAt, Expr::value(Some(now)))
        .filter(sessions::Column::UserId.eq(user.0))
        .filter(sessions::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    api_keys::Entity::update_many()
        .col_expr(api_keys::Column::RevokedAt, Expr::value(Some(now)))
        .filter(api_keys::Column::UserId.eq(user.0))
        .filter(api_keys::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    super::client_cert::delete_bindings_of(db, user).await?;
    Ok(())
}

impl CoreDb {
    pub async fn list_organizations(&self) -> StoreResult<Vec<Organization>> {
        Ok(organizations::Entity::find()
            .filter(organizations::Column::DeletedAt.is_null())
            .order_by_asc(organizations::Column::CreatedAt)
            .all(&self.read)
            .await?
            .into_iter()
            .map(|r| Organization {
                id: OrganizationId(r.id),
                name: r.name,
                slug: r.slug,
                status: r.status,
                created_at: r.created_at,
            })
            .collect())
    }

    /// Users of `scope` (all organisations for `None`), oldest first.
    pub async fn list_users(&self, scope: Option<OrganizationId>) -> StoreResult<Vec<User>> {
        let mut q = users::Entity::find().filter(users::Column::DeletedAt.is_null());
        if let Some(org) = scope {
            q = q.filter(users::Column::OrganizationId.eq(org.0));
        }
        let rows = q
            .order_by_asc(users::Column::CreatedAt)
            .all(&self.read)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.user_with_roles(r).await?);
        }
        Ok(out)
    }

    /// Counts a failed login. When the count reaches `max_failures` the
    /// account is locked until `lock_until`. Returns whether this failure
    /// locked it. The increment is one UPDATE, so concurrent failures are
    /// all counted.
    pub async fn record_login_failure(
        &self,
        user: UserId,
        max_failures: i32,
        lock_until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let txn = super::begin_write(&self.db).await?;
        users::Entity::update_many()
            .col_expr(
                users::Column::FailedLoginCount,
                Expr::col(users::Column::FailedLoginCount).add(1),
            )
            .filter(users::Column::Id.eq(user.0))
            .exec(&txn)
            .await?;
        let locked = users::Entity::update_many()
            .col_expr(users::Column::LockedUntil, Expr::value(Some(lock_until)))
            .col_expr(users::Column::FailedLoginCount, Expr::value(0))
            .filter(users::Column::Id.eq(user.0))
            .filter(users::Column::FailedLoginCount.gte(max_failures))
            .exec(&txn)
            .await?
            .rows_affected
            > 0;
        txn.commit().await?;
        Ok(locked)
    }

    /// Clears a lockout (administrator action), audited.
    pub async fn unlock_user(&self, user: UserId, event: &AuditEvent) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        users::Entity::update_many()
            .col_expr(
                users::Column::LockedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(users::Column::FailedLoginCount, Expr::value(0))
            .filter(users::Column::Id.eq(user.0))
            .exec(&txn)
            .await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// `active → disabled` (compare-and-set); every session and API key of
    /// the user ends in the same transaction.
    pub async fn deactivate_user(&self, user: UserId, event: &AuditEvent) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let res = users::Entity::update_many()
            .col_expr(users::Column::Status, Expr::value("disabled"))
            .filter(users::Column::Id.eq(user.0))
            .filter(users::Column::Status.ne("disabled"))
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::Conflict("user already deactivated".into()));
        }
        revoke_credentials(&txn, user, Utc::now()).await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Replaces the password hash and ends every session and API key.
    pub async fn set_password(
        &self,
        user: UserId,
        hash: &str,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let now = Utc::now();
        users::Entity::update_many()
            .col_expr(users::Column::PasswordHash, Expr::value(hash))
            .col_expr(users::Column::PasswordChangedAt, Expr::value(Some(now)))
            .filter(users::Column::Id.eq(user.0))
            .exec(&txn)
            .await?;
        revoke_credentials(&txn, user, now).await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Pushes a session's idle expiry forward.
    pub async fn touch_session(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
        idle_until: DateTime<Utc>,
    ) -> StoreResult<()> {
        sessions::Entity::update_many()
            .col_expr(sessions::Column::LastSeenAt, Expr::value(now))
            .col_expr(sessions::Column::IdleExpiresAt, Expr::value(idle_until))
            .filter(sessions::Column::Id.eq(id.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn insert_api_key(&self, k: &ApiKey, event: &AuditEvent) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        api_keys::ActiveModel {
            id: Set(k.id.0),
            organization_id: Set(k.organization_id.0),
            user_id: Set(k.user_id.0),
            name: Set(k.name.clone()),
            token_digest: Set(k.token_digest.clone()),
            token_prefix: Set(k.token_prefix.clone()),
            roles: Set(json_strings(k.roles.iter().map(|r| r.as_str()))),
            expires_at: Set(k.expires_at),
            last_used_at: Set(None),
            revoked_at: Set(None),
            created_at: Set(k.created_at),
            updated_at: Set(k.created_at),
        }
        .insert(&txn)
        .await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// The key with this digest if it is neither revoked nor expired.
    pub async fn find_live_api_key(
        &self,
        digest: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<LiveApiKey>> {
        let query = api_keys::Entity::find()
            .select_only()
            .column(api_keys::Column::Id)
            .column(api_keys::Column::Roles)
            .column(api_keys::Column::LastUsedAt)
            .filter(api_keys::Column::TokenDigest.eq(digest))
            .filter(api_keys::Column::RevokedAt.is_null())
            .filter(
                api_keys::Column::ExpiresAt
                    .is_null()
                    .or(api_keys::Column::ExpiresAt.gt(now)),
            );
        let found: Option<(Uuid, Json, Option<DateTime<Utc>>, Identity)> =
            live_identity(&self.read, query, api_keys::Relation::User.def()).await?;
        found
            .map(|(id, key_roles, last_used_at, user)| {
                Ok(LiveApiKey {
                    id: ApiKeyId(id),
                    roles: parse_all(&key_roles)?,
                    last_used_at,
                    user,
                })
            })
            .transpose()
    }

    pub async fn list_api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKey>> {
        api_keys::Entity::find()
            .filter(api_keys::Column::UserId.eq(user.0))
            .order_by_asc(api_keys::Column::CreatedAt)
            .all(&self.read)
            .await?
            .into_iter()
            .map(api_key_from)
            .collect()
    }

    pub async fn find_api_key(&self, id: ApiKeyId) -> StoreResult<Option<ApiKey>> {
        api_keys::Entity::find_by_id(id.0)
            .one(&self.read)
            .await?
            .map(api_key_from)
            .transpose()
    }

    /// Compare-and-set: only a key that is not yet revoked is revoked.
    pub async fn revoke_api_key(&self, id: ApiKeyId, event: &AuditEvent) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let res = api_keys::Entity::update_many()
            .col_expr(api_keys::Column::RevokedAt, Expr::value(Some(Utc::now())))
            .filter(api_keys::Column::Id.eq(id.0))
            .filter(api_keys::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::Conflict("API key already revoked".into()));
        }
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn touch_api_key(&self, id: ApiKeyId, now: DateTime<Utc>) -> StoreResult<()> {
        api_keys::Entity::update_many()
            .col_expr(api_keys::Column::LastUsedAt, Expr::value(Some(now)))
            .filter(api_keys::Column::Id.eq(id.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

fn api_key_from(r: api_keys::Model) -> StoreResult<ApiKey> {
    Ok(ApiKey {
        id: ApiKeyId(r.id),
        organization_id: OrganizationId(r.organization_id),
        user_id: UserId(r.user_id),
        name: r.name,
        token_digest: r.token_digest,
        token_prefix: r.token_prefix,
        roles: parse_all(&r.roles)?,
        expires_at: r.expires_at,
        last_used_at: r.last_used_at,
        revoked_at: r.revoked_at,
        created_at: r.created_at,
    })
}
