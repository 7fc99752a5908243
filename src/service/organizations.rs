//! Organisations (tenants): created and listed by super admins only.

use serde::Deserialize;

use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal};
use crate::domain::Permission;
use crate::domain::model::{AuditEvent, Organization, RequestContext};
use crate::store::StoreError;

/// Body of `POST /api/v1/organizations`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrganization {
    pub name: String,
    /// Lower-case letters, digits and `-`; derived from the name if absent.
    pub slug: Option<String>,
}

fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').chars().take(63).collect()
}

impl Clm {
    pub async fn list_organizations(&self, p: &Principal) -> ServiceResult<Vec<Organization>> {
        p.require(Permission::ManageOrganizations)?;
        Ok(self.core.list_organizations().await?)
    }

    pub async fn create_organization(
        &self,
        p: &Principal,
        body: NewOrganization,
        ctx: &RequestContext,
    ) -> ServiceResult<Organization> {
        p.require(Permission::ManageOrganizations)?;
        let name = body.name.trim();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(ServiceError::invalid(
                "invalid_organization",
                "name must be 1 to 200 printable characters",
            ));
        }
        let slug = body.slug.unwrap_or_else(|| slugify(name));
        if slug.is_empty()
            || slug.len() > 63
            || !slug
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ServiceError::invalid(
                "invalid_organization",
                "slug must be 1 to 63 lower-case letters, digits or `-`",
            ));
        }
        let event = AuditEvent::new(p.actor(), "organization.created", ctx)
            .details(serde_json::json!({ "name": name, "slug": slug }));
        match self.core.insert_organization(name, &slug, &event).await {
            Ok(org) => Ok(org),
            Err(StoreError::Duplicate(_)) => Err(ServiceError::conflict(
                "duplicate_organization",
                "an organisation with this name or slug already exists",
            )),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs_are_url_safe() {
        assert_eq!(super::slugify("Acme Health, Inc."), "acme-health-inc");
        assert_eq!(super::slugify("  --x--  "), "x");
    }
}
