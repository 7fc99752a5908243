//! Who is calling and what they may do. Every authorisation decision of the
//! service goes through [`Principal::require`] and [`Principal::can_see`], so
//! the rules live in one place (and in `domain::role`'s table).

use serde::Serialize;

use super::error::{ServiceError, ServiceResult};
use crate::domain::model::{Actor, Identity};
use crate::domain::{ApiKeyId, CertificateId, OrganizationId, Permission, Role, SessionId, UserId};

#[derive(Clone, Debug, Serialize)]
pub struct Principal {
    pub user_id: UserId,
    pub organization_id: OrganizationId,
    pub email: String,
    pub roles: Vec<Role>,
    #[serde(skip)]
    pub session_id: Option<SessionId>,
    /// Set when the caller authenticated with an API key, or with a client
    /// certificate bound to one.
    pub api_key_id: Option<ApiKeyId>,
    /// Set when the caller authenticated with a client certificate.
    pub client_certificate_id: Option<CertificateId>,
}

impl Principal {
    /// The principal of `who`, as a session, an API key or neither (a
    /// client certificate alone) authenticated it.
    pub fn of(who: Identity, session_id: Option<SessionId>, api_key_id: Option<ApiKeyId>) -> Self {
        Principal {
            user_id: who.user_id,
            organization_id: who.organization_id,
            email: who.email,
            roles: who.roles,
            session_id,
            api_key_id,
            client_certificate_id: None,
        }
    }

    pub fn has(&self, permission: Permission) -> bool {
        self.roles.iter().any(|r| r.grants(permission))
    }

    pub fn require(&self, permission: Permission) -> ServiceResult<()> {
        if self.has(permission) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(
                "your roles do not allow this action",
            ))
        }
    }

    /// Whether an object owned by `owner` (None = system-wide) is visible.
    /// Objects of other organisations are reported as not found, never as
    /// forbidden (DESIGN.md decision 7).
    pub fn can_see(&self, owner: Option<OrganizationId>) -> bool {
        match owner {
            None => true,
            Some(org) => self.scope().is_none_or(|mine| mine == org),
        }
    }

    /// The organisation lists are restricted to; `None` for a super admin,
    /// who sees every organisation.
    pub fn scope(&self) -> Option<OrganizationId> {
        (!self.roles.contains(&Role::SuperAdmin)).then_some(self.organization_id)
    }

    pub fn actor(&self) -> Actor {
        Actor {
            id: Some(self.user_id),
            kind: if self.api_key_id.is_some() {
                "api_key"
            } else {
                "user"
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(roles: &[Role]) -> Principal {
        Principal {
            user_id: UserId::new(),
            organization_id: OrganizationId::new(),
            email: "a@b.c".into(),
            roles: roles.to_vec(),
            session_id: None,
            api_key_id: None,
            client_certificate_id: None,
        }
    }

    #[test]
    fn permissions_come_from_roles() {
        assert!(
            p(&[Role::Requester])
                .require(Permission::RequestCertificates)
                .is_ok()
        );
        assert!(matches!(
            p(&[Role::Requester]).require(Permission::ManageCas),
            Err(ServiceError::Forbidden(_))
        ));
        assert!(p(&[Role::Auditor, Role::CaAdmin]).has(Permission::ManageProfiles));
    }

    #[test]
    fn other_organisations_are_invisible() {
        let me = p(&[Role::OrgAdmin]);
        assert!(me.can_see(None));
        assert!(me.can_see(Some(me.organization_id)));
        assert!(!me.can_see(Some(OrganizationId::new())));
        assert!(p(&[Role::SuperAdmin]).can_see(Some(OrganizationId::new())));
    }
}
