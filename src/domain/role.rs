//! The six system roles and what each may do. This table is the single source
//! of authorisation truth; `service` asks it, handlers never decide.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::algorithm::UnknownName;

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    SuperAdmin,
    OrgAdmin,
    CaAdmin,
    Approver,
    Requester,
    Auditor,
}

/// An action a principal may be allowed to perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    ManageOrganizations,
    ManageUsers,
    ManageCas,
    ManageProfiles,
    ViewCas,
    RequestCertificates,
    ApproveRequests,
    RevokeAnyCertificate,
    ReadAudit,
    /// Ask for an archived private key back (delivered after an approval).
    RecoverKeys,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::SuperAdmin,
        Role::OrgAdmin,
        Role::CaAdmin,
        Role::Approver,
        Role::Requester,
        Role::Auditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::SuperAdmin => "super_admin",
            Role::OrgAdmin => "org_admin",
            Role::CaAdmin => "ca_admin",
            Role::Approver => "approver",
            Role::Requester => "requester",
            Role::Auditor => "auditor",
        }
    }

    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::SuperAdmin => &[
                ManageOrganizations,
                ManageUsers,
                ManageCas,
                ManageProfiles,
                ViewCas,
                RequestCertificates,
                ApproveRequests,
                RevokeAnyCertificate,
                ReadAudit,
                RecoverKeys,
            ],
            Role::OrgAdmin => &[ManageUsers, ViewCas],
            Role::CaAdmin => &[
                ManageCas,
                ManageProfiles,
                ViewCas,
                RevokeAnyCertificate,
                RecoverKeys,
            ],
            Role::Approver => &[ViewCas, ApproveRequests],
            Role::Requester => &[ViewCas, RequestCertificates],
            Role::Auditor => &[ViewCas, ReadAudit],
        }
    }

    pub fn grants(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownName(s.chars().take(64).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn super_admin_may_do_everything_any_role_may() {
        for role in Role::ALL {
            for p in role.permissions() {
                assert!(Role::SuperAdmin.grants(*p), "{role} grants {p:?}");
            }
        }
    }

    #[test]
    fn requesters_cannot_approve_or_administer() {
        assert!(!Role::Requester.grants(Permission::ApproveRequests));
        assert!(!Role::Requester.grants(Permission::ManageCas));
        assert!(!Role::Approver.grants(Permission::RequestCertificates));
    }
}
