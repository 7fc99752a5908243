//! Users: created, listed, deactivated and unlocked by administrators of
//! their organisation; passwords changed by their owners. Deactivation and
//! password changes end every session and API key of the user at once.

use chrono::Utc;
use serde::Deserialize;

use super::auth::{check_password_policy, hash_password, verify_password};
use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal, UserView};
use crate::domain::model::{AuditEvent, RequestContext, User};
use crate::domain::{OrganizationId, Permission, Role, Secret, UserId};
use crate::store::{NewUser, StoreError};

/// Body of `POST /api/v1/users`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    pub email: String,
    pub password: Secret,
    pub roles: Vec<Role>,
    /// Defaults to the caller's organisation.
    pub organization_id: Option<uuid::Uuid>,
    pub display_name: Option<String>,
}

/// Body of `POST /api/v1/me/password`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: Secret,
    pub new_password: Secret,
}

fn validate_email(email: &str) -> ServiceResult<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && local.len() <= 64
                && (domain.contains('.') || domain == "localhost")
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(ServiceError::invalid(
            "invalid_email",
            "email must be an address like name@example.org",
        ))
    }
}

impl Clm {
    /// Creates a user. An org_admin works inside their own organisation and
    /// cannot grant super_admin; both attempts are refused with 403.
    pub async fn create_user(
        &self,
        p: &Principal,
        body: NewUserBody,
        ctx: &RequestContext,
    ) -> ServiceResult<UserView> {
        p.require(Permission::ManageUsers)?;
        let org = body
            .organization_id
            .map(OrganizationId)
            .unwrap_or(p.organization_id);
        if p.scope().is_some_and(|mine| mine != org) {
            return Err(ServiceError::Forbidden(
                "you may only manage users of your own organisation",
            ));
        }
        if body.roles.contains(&Role::SuperAdmin) && !p.roles.contains(&Role::SuperAdmin) {
            return Err(ServiceError::Forbidden(
                "only a super admin may grant super_admin",
            ));
        }
        if body.roles.is_empty() {
            return Err(ServiceError::invalid(
                "invalid_user",
                "roles must name at least one role",
            ));
        }
        let email = validate_email(&body.email)?;
        let display_name = body
            .display_name
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty());
        if display_name.is_some_and(|d| d.chars().count() > 200 || d.chars().any(char::is_control))
        {
            return Err(ServiceError::invalid(
                "invalid_user",
                "display_name must be at most 200 printable characters",
            ));
        }
        check_password_policy(&body.password)?;
        if self.core.find_organization(org).await?.is_none() {
            return Err(ServiceError::NotFound("organisation"));
        }
        let pw = body.password.clone();
        let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
            .await
            .map_err(ServiceError::internal)??;
        let mut roles = body.roles.clone();
        roles.sort();
        roles.dedup();
        let event = AuditEvent::new(p.actor(), "user.created", ctx);
        let user = self
            .core
            .insert_user(
                NewUser {
                    organization_id: org,
                    email: &email,
                    display_name,
                    password_hash: &hash,
                    roles: &roles,
                    granted_by: Some(p.user_id),
                },
                &event,
            )
            .await
            .map_err(|e| match e {
                StoreError::Duplicate(_) => ServiceError::conflict(
                    "duplicate_email",
                    "a user with this email already exists",
                ),
                other => other.into(),
            })?;
        Ok(UserView::from(&user))
    }

    pub async fn list_users(&self, p: &Principal) -> ServiceResult<Vec<UserView>> {
        p.require(Permission::ManageUsers)?;
        Ok(self
            .core
            .list_users(p.scope())
            .await?
            .iter()
            .map(UserView::from)
            .collect())
    }

    /// A user the caller may administer; other organisations' are 404.
    async fn managed_user(&self, p: &Principal, id: UserId) -> ServiceResult<User> {
        p.require(Permission::ManageUsers)?;
        self.core
            .find_user(id)
            .await?
            .filter(|u| p.can_see(Some(u.organization_id)))
            .ok_or(ServiceError::NotFound("user"))
    }

    pub async fn get_user(&self, p: &Principal, id: UserId) -> ServiceResult<UserView> {
        Ok(UserView::from(&self.managed_user(p, id).await?))
    }

    pub async fn deactivate_user(
        &self,
        p: &Principal,
        id: UserId,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        let user = self.managed_user(p, id).await?;
        if user.id == p.user_id {
            return Err(ServiceError::conflict(
                "cannot_deactivate_self",
                "you cannot deactivate yourself",
            ));
        }
        if user.roles.contains(&Role::SuperAdmin) && !p.roles.contains(&Role::SuperAdmin) {
            return Err(ServiceError::Forbidden(
                "only a super admin may deactivate a super admin",
            ));
        }
        let event = AuditEvent::new(p.actor(), "user.deactivated", ctx)
            .org(Some(user.organization_id))
            .target("user", user.id);
        self.core
            .deactivate_user(user.id, &event)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    ServiceError::conflict("already_deactivated", "the user is already deactivated")
                }
                other => other.into(),
            })
    }

    pub async fn unlock_user(
        &self,
        p: &Principal,
        id: UserId,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        let user = self.managed_user(p, id).await?;
        let event = AuditEvent::new(p.actor(), "user.unlocked", ctx)
            .org(Some(user.organization_id))
            .target("user", user.id);
        Ok(self.core.unlock_user(user.id, &event).await?)
    }

    /// Changes the caller's own password; every session and API key of the
    /// caller ends, including the one used for this call.
    pub async fn change_password(
        &self,
        p: &Principal,
        body: PasswordChange,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        let user = self
            .core
            .find_user(p.user_id)
            .await?
            .ok_or(ServiceError::Unauthenticated)?;
        let (current, hash) = (body.current_password.clone(), user.password_hash.clone());
        let ok = tokio::task::spawn_blocking(move || verify_password(&current, &hash))
            .await
            .map_err(ServiceError::internal)?;
        if !ok {
            return Err(ServiceError::Forbidden("the current password is wrong"));
        }
        check_password_policy(&body.new_password)?;
        let pw = body.new_password.clone();
        let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
            .await
            .map_err(ServiceError::internal)??;
        let event = AuditEvent::new(p.actor(), "user.password_changed", ctx)
            .org(Some(user.organization_id))
            .target("user", user.id)
            .details(serde_json::json!({ "at": super::rfc3339(Utc::now()) }));
        Ok(self.core.set_password(user.id, &hash, &event).await?)
    }
}

/// What `clm user add` did.
pub struct AddedUser {
    pub user: UserView,
    /// Set when the password was generated; shown once to the operator.
    pub generated_password: Option<Secret>,
}

impl Clm {
    /// `clm user add`: an operator with access to the host creates a user in
    /// the organisation with `org_slug`. Audited as a system action.
    pub async fn add_user_as_operator(
        &self,
        email: &str,
        roles: &[Role],
        org_slug: &str,
        password: Option<Secret>,
    ) -> ServiceResult<AddedUser> {
        let org = self
            .core
            .find_organization_by_slug(org_slug)
            .await?
            .ok_or(ServiceError::NotFound("organisation"))?;
        let (password, generated) = match password {
            Some(pw) => (pw, false),
            None => (super::auth::generate_password(), true),
        };
        // The operator acts with every right inside the target organisation.
        let operator = Principal {
            user_id: UserId(uuid::Uuid::nil()),
            organization_id: org.id,
            email: "operator@localhost".into(),
            roles: vec![Role::SuperAdmin],
            session_id: None,
            api_key_id: None,
            client_certificate_id: None,
        };
        let ctx = RequestContext {
            request_id: Some(format!("cli-{}", uuid::Uuid::new_v4())),
            user_agent: Some("clm user add".into()),
            ..Default::default()
        };
        let user = self
            .create_user(
                &operator,
                NewUserBody {
                    email: email.to_string(),
                    password: password.clone(),
                    roles: roles.to_vec(),
                    organization_id: Some(org.id.0),
                    display_name: None,
                },
                &ctx,
            )
            .await?;
        Ok(AddedUser {
            user,
            generated_password: generated.then_some(password),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(
            super::validate_email(" Alice@Example.ORG ").unwrap(),
            "alice@example.org"
        );
        assert!(super::validate_email("admin@localhost").is_ok());
        for bad in [
            "",
            "no-at-sign",
            "@example.org",
            "a b@example.org",
            "x@nodot",
        ] {
            assert!(super::validate_email(bad).is_err(), "{bad}");
        }
    }
}
