//! Certificate profiles: which CA signs, which keys and names are allowed,
//! how long certificates live and how many approvals they need.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal, rfc3339};
use crate::domain::Role;
use crate::domain::model::{AuditEvent, Profile, RequestContext};
use crate::domain::profile::is_valid_dns_name;
use crate::domain::{
    CaId, ExtendedKeyUsage, KeyAlgorithm, OrganizationId, Permission, ProfileId, ProfileRules,
};

/// Most approvals a profile may require.
pub const MAX_APPROVALS: u8 = 5;
/// Longest validity a profile may allow (about ten years).
pub const MAX_PROFILE_VALIDITY_DAYS: u32 = 3653;

/// Body of `POST /api/v1/profiles`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProfile {
    pub name: String,
    pub ca_id: Uuid,
    pub key_algorithms: Vec<KeyAlgorithm>,
    #[serde(default)]
    pub allowed_dns_suffixes: Vec<String>,
    #[serde(default)]
    pub allow_ip_sans: bool,
    pub max_validity_days: u32,
    pub extended_key_usages: Vec<ExtendedKeyUsage>,
    #[serde(default)]
    pub required_approvals: u8,
    #[serde(default)]
    pub allow_server_keygen: bool,
    /// Keep server-generated keys, wrapped, for recovery (default true).
    #[serde(default = "yes")]
    pub allow_key_archival: bool,
    /// Renewal may certify the same key again without a new CSR.
    #[serde(default)]
    pub allow_key_reuse: bool,
    /// Roles whose holders may approve; default `["approver"]`.
    #[serde(default = "default_approver_roles")]
    pub approver_roles: Vec<Role>,
}

fn yes() -> bool {
    true
}

fn default_approver_roles() -> Vec<Role> {
    vec![Role::Approver]
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProfileView {
    pub id: ProfileId,
    pub name: String,
    pub ca_id: CaId,
    pub organization_id: Option<OrganizationId>,
    pub key_algorithms: Vec<KeyAlgorithm>,
    pub allowed_dns_suffixes: Vec<String>,
    pub allow_ip_sans: bool,
    pub max_validity_days: u32,
    pub extended_key_usages: Vec<ExtendedKeyUsage>,
    pub required_approvals: u8,
    pub allow_server_keygen: bool,
    pub allow_key_archival: bool,
    pub allow_key_reuse: bool,
    pub approver_roles: Vec<Role>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&Profile> for ProfileView {
    fn from(p: &Profile) -> Self {
        Self {
            id: p.id,
            name: p.name.clone(),
            ca_id: p.ca_id,
            organization_id: p.organization_id,
            key_algorithms: p.rules.key_algorithms.clone(),
            allowed_dns_suffixes: p.rules.allowed_dns_suffixes.clone(),
            allow_ip_sans: p.rules.allow_ip_sans,
            max_validity_days: p.rules.max_validity_days,
            extended_key_usages: p.rules.extended_key_usages.clone(),
            required_approvals: p.rules.required_approvals,
            allow_server_keygen: p.rules.allow_server_keygen,
            allow_key_archival: p.rules.allow_key_archival,
            allow_key_reuse: p.rules.allow_key_reuse,
            approver_roles: p.rules.approver_roles.clone(),
            created_at: rfc3339(p.created_at),
        }
    }
}

impl Clm {
    pub async fn list_profiles(&self, p: &Principal) -> ServiceResult<Vec<ProfileView>> {
        Ok(self
            .core
            .list_profiles(p.scope())
            .await?
            .iter()
            .map(ProfileView::from)
            .collect())
    }

    pub async fn create_profile(
        &self,
        p: &Principal,
        body: NewProfile,
        ctx: &RequestContext,
    ) -> ServiceResult<ProfileView> {
        p.require(Permission::ManageProfiles)?;
        let ca = self
            .secure
            .find_ca(CaId(body.ca_id))
            .await?
            .filter(|ca| p.can_see(ca.organization_id))
            .ok_or(ServiceError::NotFound("CA"))?;
        let profile = Profile {
            id: ProfileId::new(),
            organization_id: Some(p.organization_id),
            name: body.name.trim().to_string(),
            ca_id: ca.id,
            rules: ProfileRules {
                key_algorithms: dedup(body.key_algorithms),
                allowed_dns_suffixes: body
                    .allowed_dns_suffixes
                    .iter()
                    .map(|s| s.trim().to_ascii_lowercase())
                    .collect(),
                allow_ip_sans: body.allow_ip_sans,
                max_validity_days: body.max_validity_days,
                extended_key_usages: dedup(body.extended_key_usages),
                required_approvals: body.required_approvals,
                allow_server_keygen: body.allow_server_keygen,
                allow_key_archival: body.allow_key_archival,
                allow_key_reuse: body.allow_key_reuse,
                approver_roles: dedup(body.approver_roles),
            },
            created_at: Utc::now(),
        };
        validate(&profile)?;
        let event = AuditEvent::new(p.actor(), "profile.created", ctx)
            .org(Some(p.organization_id))
            .target("profile", profile.id)
            .details(serde_json::json!({ "name": profile.name, "ca_id": ca.id }));
        match self.core.insert_profile(&profile, &event).await {
            Ok(()) => Ok(ProfileView::from(&profile)),
            Err(crate::store::StoreError::Duplicate(_)) => Err(ServiceError::conflict(
                "duplicate_profile",
                "a profile with this name already exists in your organisation",
            )),
            Err(e) => Err(e.into()),
        }
    }
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn validate(p: &Profile) -> ServiceResult<()> {
    let bad = |m: String| Err(ServiceError::invalid("invalid_profile", m));
    if p.name.is_empty() || p.name.chars().count() > 100 || p.name.chars().any(char::is_control) {
        return bad("name must be 1 to 100 printable characters".into());
    }
    let r = &p.rules;
    if r.key_algorithms.is_empty() {
        return bad("key_algorithms must name at least one algorithm".into());
    }
    if r.extended_key_usages.is_empty() {
        return bad("extended_key_usages must name at least one usage".into());
    }
    if r.max_validity_days == 0 || r.max_validity_days > MAX_PROFILE_VALIDITY_DAYS {
        return bad(format!(
            "max_validity_days must be between 1 and {MAX_PROFILE_VALIDITY_DAYS}"
        ));
    }
    if r.required_approvals > MAX_APPROVALS {
        return bad(format!(
            "required_approvals must be between 0 and {MAX_APPROVALS}"
        ));
    }
    if r.required_approvals > 0 && r.approver_roles.is_empty() {
        return bad(
            "approver_roles must name at least one role when approvals are required".into(),
        );
    }
    if r.allowed_dns_suffixes.len() > 100 {
        return bad("at most 100 allowed_dns_suffixes".into());
    }
    for s in &r.allowed_dns_suffixes {
        let body = s.trim_start_matches("*.").trim_start_matches('.');
        if s != "*" && !is_valid_dns_name(body) {
            return bad(format!(
                "`{}` is not a DNS suffix",
                s.chars().take(80).collect::<String>()
            ));
        }
    }
    Ok(())
}
