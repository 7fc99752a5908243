//! clm_core: tenants, users and roles, sessions, certificate profiles,
//! certificate metadata and the application audit log.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, JoinType, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, RelationDef, RelationTrait, Select, Set,
};
use uuid::Uuid;

use super::entity::core::{
    organizations, policies, roles, sessions, user_organizations, user_roles, users,
};
use super::{StoreError, StoreResult, audit, json_strings, parse_all, parse_one};
use crate::domain::model::{
    AuditEvent, Identity, Organization, Profile, Session, USER_ACTIVE, User,
};
use crate::domain::{
    CaId, OrganizationId, ProfileId, ProfileRules, Role, Secret, SessionId, UserId, new_row_id,
};

/// Handle on clm_core.
#[derive(Clone, Debug)]
pub struct CoreDb {
    /// Writes, and reads that must see this handle's own transaction.
    pub(super) db: DatabaseConnection,
    /// Plain reads (see [`super::Connections`]).
    pub(super) read: DatabaseConnection,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) mirror: super::batched::Writer<super::batched::Mirror>,
    /// Profiles and webhooks as issuance sees them (`store::cache`).
    pub(super) profiles: super::cache::Recent<ProfileId, Option<Profile>>,
    pub(super) webhooks:
        super::cache::Recent<OrganizationId, Vec<super::entity::core::webhooks::Model>>,
    /// MACs audit entries; empty until [`CoreDb::with_audit_mac`].
    pub(super) audit: audit::AuditSigner,
}

/// A live session as authentication sees it: what decides whether the
/// token still works, and whose it is.
#[derive(Clone, Debug)]
pub struct LiveSession {
    pub id: SessionId,
    pub expires_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub user: Identity,
}

/// What is needed to create a user; the hash is computed by the service.
pub struct NewUser<'a> {
    pub organization_id: OrganizationId,
    pub email: &'a str,
    pub display_name: Option<&'a str>,
    pub password_hash: &'a str,
    pub roles: &'a [Role],
    pub granted_by: Option<UserId>,
}

impl CoreDb {
    pub async fn connect(url: &Secret) -> StoreResult<Self> {
        let c = super::connect(url).await?;
        Ok(Self {
            db: c.write,
            read: c.read,
            runtime: c.runtime,
            mirror: Default::default(),
            profiles: Default::default(),
            webhooks: Default::default(),
            audit: audit::AuditSigner::default(),
        })
    }

    /// This handle, writing audit entries MACed by `mac`. Without it every
    /// audited change fails rather than store an entry without a MAC.
    pub fn with_audit_mac(self, mac: std::sync::Arc<dyn crate::domain::audit::AuditMac>) -> Self {
        Self {
            audit: audit::AuditSigner::new(mac),
            mirror: Default::default(),
            ..self
        }
    }

    /// Checkpoints this database's SQLite log if readers kept it from
    /// starting over (`store::wal`).
    pub async fn checkpoint_long_log(&self) -> StoreResult<Option<super::LogCheckpoint>> {
        super::wal::checkpoint_if_long(&self.db).await
    }

    /// Seals, checkpoints and entries of this database's audit log.
    pub fn audit_store(&self) -> audit::AuditStore {
        audit::AuditStore {
            db: self.db.clone(),
            read: self.read.clone(),
            log: crate::domain::audit::AuditLog::Core,
        }
    }

    pub fn audit_signer(&self) -> &audit::AuditSigner {
        &self.audit
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        super::migrate::<migrations_core::Migrator>(&self.db).await
    }

    pub async fn ping(&self) -> StoreResult<()> {
        super::ping(&self.db).await
    }

    pub async fn append_audit(&self, event: &AuditEvent) -> StoreResult<()> {
        audit::append(
            &self.db,
            crate::domain::audit::AuditLog::Core,
            &self.audit,
            event,
        )
        .await
    }

    // ---- organisations -------------------------------------------------

    pub async fn find_organization_by_slug(&self, slug: &str) -> StoreResult<Option<Organization>> {
        let row = organizations::Entity::find()
            .filter(organizations::Column::Slug.eq(slug))
            .one(&self.read)
            .await?;
        Ok(row.map(organization_from))
    }

    pub async fn find_organization(&self, id: OrganizationId) -> StoreResult<Option<Organization>> {
        let row = organizations::Entity::find_by_id(id.0)
            .one(&self.read)
            .await?;
        Ok(row.map(organization_from))
    }

    pub async fn insert_organization(
        &self,
        name: &str,
        slug: &str,
        event: &AuditEvent,
    ) -> StoreResult<Organization> {
        let txn = super::begin_write(&self.db).await?;
        let now = Utc::now();
        let row = organizations::ActiveModel {
            id: Set(new_row_id()),
            name: Set(name.to_string()),
            slug: Set(slug.to_string()),
            status: Set("active".into()),
            settings: Set(serde_json::json!({})),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        let mut event = event.clone().target("organization", row.id);
        event.organization_id = Some(OrganizationId(row.id));
        audit::insert_core(&txn, &self.audit, &event).await?;
        txn.commit().await?;
        Ok(organization_from(row))
    }

    // ---- users -----------------------------------------------------------

    pub async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let row = users::Entity::find()
            .filter(users::Column::Email.eq(email.to_lowercase()))
            .filter(users::Column::DeletedAt.is_null())
            .one(&self.read)
            .await?;
        match row {
            Some(u) => Ok(Some(self.user_with_roles(u).await?)),
            None => Ok(None),
        }
    }

    pub async fn find_user(&self, id: UserId) -> StoreResult<Option<User>> {
        let row = users::Entity::find_by_id(id.0)
            .filter(users::Column::DeletedAt.is_null())
            .one(&self.read)
            .await?;
        match row {
            Some(u) => Ok(Some(self.user_with_roles(u).await?)),
            None => Ok(None),
        }
    }

    /// Whether any active user holds `role` (e.g. "is there a super admin yet").
    pub async fn any_user_with_role(&self, role: Role) -> StoreResult<bool> {
        let Some(role_row) = roles::Entity::find()
            .filter(roles::Column::Name.eq(role.as_str()))
            .one(&self.read)
            .await?
        else {
            return Ok(false);
        };
        let n = user_roles::Entity::find()
            .filter(user_roles::Column::RoleId.eq(role_row.id))
            .count(&self.read)
            .await?;
        Ok(n > 0)
    }

    pub(super) async fn user_with_roles(&self, u: users::Model) -> StoreResult<User> {
        let links = user_roles::Entity::find()
            .filter(user_roles::Column::UserId.eq(u.id))
            .find_also_related(roles::Entity)
            .all(&self.read)
            .await?;
        user_from(u, links.into_iter().map(|(_, role)| role))
    }

    /// A live session as authentication needs it, in one read: every
    /// request that carries a session token makes it. `None` for an
    /// unknown, revoked or expired session, or a deleted user.
    pub async fn find_live_session(
        &self,
        digest: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<LiveSession>> {
        let query = sessions::Entity::find()
            .select_only()
            .column(sessions::Column::Id)
            .column(sessions::Column::ExpiresAt)
            .column(sessions::Column::LastSeenAt)
            .filter(sessions::Column::TokenDigest.eq(digest))
            .filter(sessions::Column::RevokedAt.is_null())
            .filter(sessions::Column::ExpiresAt.gt(now))
            .filter(sessions::Column::IdleExpiresAt.gt(now));
        let found: Option<(Uuid, DateTime<Utc>, DateTime<Utc>, Identity)> =
            live_identity(&self.read, query, sessions::Relation::User.def()).await?;
        Ok(
            found.map(|(id, expires_at, last_seen_at, user)| LiveSession {
                id: SessionId(id),
                expires_at,
                last_seen_at,
                user,
            }),
        )
    }

    /// Creates a user with its roles and organisation membership, audited,
    /// in one transaction. A duplicate e-mail is a [`StoreError::Conflict`].
    pub async fn insert_user(&self, new: NewUser<'_>, event: &AuditEvent) -> StoreResult<User> {
        let txn = super::begin_write(&self.db).await?;
        let now = Utc::now();
        let id = new_row_id();
        users::ActiveModel {
            id: Set(id),
            organization_id: Set(new.organization_id.0),
            email: Set(new.email.to_lowercase()),
            display_name: Set(new.display_name.map(str::to_string)),
            password_hash: Set(new.password_hash.to_string()),
            status: Set("active".into()),
            failed_login_count: Set(0),
            password_changed_at: Set(Some(now)),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        user_organizations::ActiveModel {
            user_id: Set(id),
            organization_id: Set(new.organization_id.0),
            created_at: Set(now),
        }
        .insert(&txn)
        .await?;
        for role in new.roles {
            let role_row = roles::Entity::find()
                .filter(roles::Column::Name.eq(role.as_str()))
                .one(&txn)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("system role {role} is not seeded")))?;
            user_roles::ActiveModel {
                user_id: Set(id),
                role_id: Set(role_row.id),
                granted_by: Set(new.granted_by.map(Into::into)),
                created_at: Set(now),
            }
            .insert(&txn)
            .await?;
        }
        let event = event
            .clone()
            .org(Some(new.organization_id))
            .target("user", id)
            .details(serde_json::json!({ "email": new.email.to_lowercase(), "roles": new.roles }));
        audit::insert_core(&txn, &self.audit, &event).await?;
        txn.commit().await?;
        self.find_user(UserId(id))
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn record_login(&self, user: UserId, at: DateTime<Utc>) -> StoreResult<()> {
        users::Entity::update_many()
            .col_expr(users::Column::LastLoginAt, Expr::value(Some(at)))
            .col_expr(users::Column::FailedLoginCount, Expr::value(0))
            .filter(users::Column::Id.eq(user.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    // ---- sessions --------------------------------------------------------

    pub async fn insert_session(&self, s: &Session, event: &AuditEvent) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        sessions::ActiveModel {
            id: Set(s.id.0),
            user_id: Set(s.user_id.0),
            token_digest: Set(s.token_digest.clone()),
            expires_at: Set(s.expires_at),
            idle_expires_at: Set(s.idle_expires_at),
            last_seen_at: Set(s.last_seen_at),
            source_ip: Set(event.context.source_ip.clone()),
            user_agent: Set(event.context.user_agent.clone()),
            created_at: Set(s.created_at),
            updated_at: Set(s.created_at),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Compare-and-set: only a session that is not yet revoked is revoked.
    pub async fn revoke_session(&self, id: SessionId, event: &AuditEvent) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let res = sessions::Entity::update_many()
            .col_expr(sessions::Column::RevokedAt, Expr::value(Some(Utc::now())))
            .filter(sessions::Column::Id.eq(id.0))
            .filter(sessions::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::Conflict("session already revoked".into()));
        }
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    // ---- profiles --------------------------------------------------------

    pub async fn insert_profile(&self, p: &Profile, event: &AuditEvent) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let r = &p.rules;
        policies::ActiveModel {
            id: Set(p.id.0),
            organization_id: Set(p.organization_id.map(Into::into)),
            name: Set(p.name.clone()),
            policy_type: Set("certificate_profile".into()),
            ca_id: Set(p.ca_id.0),
            key_algorithms: Set(json_strings(r.key_algorithms.iter().map(|a| a.as_str()))),
            allowed_dns_suffixes: Set(json_strings(&r.allowed_dns_suffixes)),
            allow_ip_sans: Set(r.allow_ip_sans),
            max_validity_days: Set(r.max_validity_days as i32),
            extended_key_usages: Set(json_strings(
                r.extended_key_usages.iter().map(|e| e.as_str()),
            )),
            required_approvals: Set(i32::from(r.required_approvals)),
            approver_roles: Set(json_strings(r.approver_roles.iter().map(|r| r.as_str()))),
            allow_server_keygen: Set(r.allow_server_keygen),
            allow_key_archival: Set(r.allow_key_archival),
            allow_key_reuse: Set(r.allow_key_reuse),
            status: Set("active".into()),
            created_at: Set(p.created_at),
            updated_at: Set(p.created_at),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        self.profiles.clear();
        Ok(())
    }

    /// Profiles visible to `org`: its own and the system-wide ones.
    /// After a CA rollover: the old CA's profiles issue from the new one.
    pub async fn repoint_profiles(
        &self,
        from: CaId,
        to: CaId,
        event: &AuditEvent,
    ) -> StoreResult<u64> {
        let txn = super::begin_write(&self.db).await?;
        let res = policies::Entity::update_many()
            .col_expr(policies::Column::CaId, Expr::value(to.0))
            .filter(policies::Column::CaId.eq(from.0))
            .exec(&txn)
            .await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        self.profiles.clear();
        Ok(res.rows_affected)
    }

    pub async fn list_profiles(&self, org: Option<OrganizationId>) -> StoreResult<Vec<Profile>> {
        let mut q = policies::Entity::find()
            .filter(policies::Column::PolicyType.eq("certificate_profile"))
            .filter(policies::Column::DeletedAt.is_null());
        q = match org {
            Some(org) => q.filter(
                policies::Column::OrganizationId
                    .eq(org.0)
                    .or(policies::Column::OrganizationId.is_null()),
            ),
            None => q,
        };
        q.order_by_asc(policies::Column::CreatedAt)
            .all(&self.read)
            .await?
            .into_iter()
            .map(profile_from)
            .collect()
    }

    /// A profile (a copy at most a second old, see `store::cache`).
    pub async fn find_profile(&self, id: ProfileId) -> StoreResult<Option<Profile>> {
        self.profiles
            .get_or_read(id, || self.read_profile(id))
            .await
    }

    async fn read_profile(&self, id: ProfileId) -> StoreResult<Option<Profile>> {
        policies::Entity::find_by_id(id.0)
            .filter(policies::Column::PolicyType.eq("certificate_profile"))
            .filter(policies::Column::DeletedAt.is_null())
            .one(&self.read)
            .await?
            .map(profile_from)
            .transpose()
    }

    pub async fn find_system_profile_by_name(&self, name: &str) -> StoreResult<Option<Profile>> {
        policies::Entity::find()
            .filter(policies::Column::Name.eq(name))
            .filter(policies::Column::OrganizationId.is_null())
            .one(&self.read)
            .await?
            .map(profile_from)
            .transpose()
    }

    // ---- certificate metadata ------------------------------------------
}

/// A row of [`live_identity`]: the credential's three columns, then the
/// user's.
type IdentityRow<A, B, C> = (A, B, C, Uuid, Uuid, String, String, Option<String>);

/// The credential `query` selects, joined to its user and the user's
/// roles, read in one statement: the narrow lookups of authentication,
/// which run on every request. `query` selects three columns of the
/// credential; the user's id, organisation, e-mail and status and a role
/// name follow them, one row per role (one without a role for a user with
/// none). Deleted users are left out. `None` without a row.
pub(super) async fn live_identity<E, A, B, C>(
    db: &DatabaseConnection,
    query: Select<E>,
    to_user: RelationDef,
) -> StoreResult<Option<(A, B, C, Identity)>>
where
    E: EntityTrait,
    IdentityRow<A, B, C>: sea_orm::TryGetableMany,
{
    let rows: Vec<IdentityRow<A, B, C>> = query
        .column_as(users::Column::Id, "identity_user_id")
        .column(users::Column::OrganizationId)
        .column(users::Column::Email)
        .column(users::Column::Status)
        .column(roles::Column::Name)
        .join(JoinType::InnerJoin, to_user)
        .join(JoinType::LeftJoin, user_roles::Relation::User.def().rev())
        .join(JoinType::LeftJoin, user_roles::Relation::Role.def())
        .filter(users::Column::DeletedAt.is_null())
        .into_tuple()
        .all(db)
        .await?;
    let mut roles = rows
        .iter()
        .filter_map(|r| r.7.as_deref())
        .map(parse_one::<Role>)
        .collect::<StoreResult<Vec<_>>>()?;
    roles.sort();
    Ok(rows
        .into_iter()
        .next()
        .map(|(a, b, c, user, org, email, status, _)| {
            let who = Identity {
                user_id: UserId(user),
                organization_id: OrganizationId(org),
                email,
                active: status == USER_ACTIVE,
                roles,
            };
            (a, b, c, who)
        }))
}

fn user_from(
    u: users::Model,
    roles: impl Iterator<Item = Option<roles::Model>>,
) -> StoreResult<User> {
    let mut role_list = roles
        .flatten()
        .map(|role| parse_one::<Role>(&role.name))
        .collect::<StoreResult<Vec<_>>>()?;
    role_list.sort();
    Ok(User {
        id: UserId(u.id),
        locked_until: u.locked_until,
        failed_login_count: u.failed_login_count,
        organization_id: OrganizationId(u.organization_id),
        email: u.email,
        display_name: u.display_name,
        status: u.status,
        roles: role_list,
        password_hash: u.password_hash,
        created_at: u.created_at,
    })
}

fn organization_from(r: organizations::Model) -> Organization {
    Organization {
        id: OrganizationId(r.id),
        name: r.name,
        slug: r.slug,
        status: r.status,
        created_at: r.created_at,
    }
}

fn profile_from(r: policies::Model) -> StoreResult<Profile> {
    Ok(Profile {
        id: ProfileId(r.id),
        organization_id: r.organization_id.map(OrganizationId),
        name: r.name,
        ca_id: CaId(r.ca_id),
        rules: ProfileRules {
            key_algorithms: parse_all(&r.key_algorithms)?,
            allowed_dns_suffixes: super::strings_from_json(&r.allowed_dns_suffixes)?,
            allow_ip_sans: r.allow_ip_sans,
            max_validity_days: u32::try_from(r.max_validity_days).map_err(super::error::corrupt)?,
            extended_key_usages: parse_all(&r.extended_key_usages)?,
            required_approvals: u8::try_from(r.required_approvals)
                .map_err(super::error::corrupt)?,
            allow_server_keygen: r.allow_server_keygen,
            allow_key_archival: r.allow_key_archival,
            allow_key_reuse: r.allow_key_reuse,
            approver_roles: parse_all(&r.approver_roles)?,
        },
        created_at: r.created_at,
    })
}
