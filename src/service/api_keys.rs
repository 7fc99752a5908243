//! API keys: bearer tokens for automation, limited to a subset of their
//! creator's roles, shown once and stored as a digest.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::auth::{API_KEY_PREFIX, new_token};
use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal, rfc3339};
use crate::domain::model::{ApiKey, AuditEvent, RequestContext};
use crate::domain::{ApiKeyId, Role};
use crate::store::StoreError;

/// Longest lifetime of an API key.
const MAX_LIFETIME_DAYS: i64 = 366;

/// Body of `POST /api/v1/api-keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// 1 to 100 printable characters.
    pub name: String,
    /// A non-empty subset of the creator's roles.
    pub roles: Vec<Role>,
    /// In the future, at most 366 days ahead; no expiry if absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key as lists show it (never the token).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    pub id: ApiKeyId,
    pub name: String,
    /// The token's first characters, to recognise it.
    pub token_prefix: String,
    pub roles: Vec<Role>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&ApiKey> for ApiKeyView {
    fn from(k: &ApiKey) -> Self {
        Self {
            id: k.id,
            name: k.name.clone(),
            token_prefix: k.token_prefix.clone(),
            roles: k.roles.clone(),
            expires_at: k.expires_at.map(rfc3339),
            last_used_at: k.last_used_at.map(rfc3339),
            revoked_at: k.revoked_at.map(rfc3339),
            created_at: rfc3339(k.created_at),
        }
    }
}

/// A new API key with its token, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKeyView,
    pub token: String,
}

impl Clm {
    /// Creates a key; the response carries the token this once.
    pub async fn create_api_key(
        &self,
        p: &Principal,
        body: NewApiKey,
        ctx: &RequestContext,
    ) -> ServiceResult<CreatedApiKey> {
        let name = body.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(ServiceError::invalid(
                "invalid_api_key",
                "name must be 1 to 100 printable characters",
            ));
        }
        if body.roles.is_empty() {
            return Err(ServiceError::invalid(
                "invalid_api_key",
                "roles must name at least one role",
            ));
        }
        if let Some(extra) = body.roles.iter().find(|r| !p.roles.contains(r)) {
            tracing::info!(user = %p.user_id, role = %extra, "API key asked for a role its creator lacks");
            return Err(ServiceError::Forbidden(
                "an API key cannot have roles its creator does not have",
            ));
        }
        let now = Utc::now();
        if let Some(exp) = body.expires_at
            && (exp <= now || exp > now + Duration::days(MAX_LIFETIME_DAYS))
        {
            return Err(ServiceError::invalid(
                "invalid_api_key",
                format!("expires_at must be in the future and within {MAX_LIFETIME_DAYS} days"),
            ));
        }
        let (token, digest) = new_token(API_KEY_PREFIX);
        let mut roles = body.roles;
        roles.sort();
        roles.dedup();
        let key = ApiKey {
            id: ApiKeyId::new(),
            organization_id: p.organization_id,
            user_id: p.user_id,
            name: name.to_string(),
            token_digest: digest,
            token_prefix: token
                .expose()
                .chars()
                .take(API_KEY_PREFIX.len() + 6)
                .collect(),
            roles,
            expires_at: body.expires_at,
            last_used_at: None,
            revoked_at: None,
            created_at: now,
        };
        let event = AuditEvent::new(p.actor(), "api_key.created", ctx)
            .org(Some(p.organization_id))
            .target("api_key", key.id)
            .details(serde_json::json!({ "name": key.name, "roles": key.roles }));
        self.core.insert_api_key(&key, &event).await?;
        Ok(CreatedApiKey {
            key: ApiKeyView::from(&key),
            token: token.expose().to_string(),
        })
    }

    pub async fn list_api_keys(&self, p: &Principal) -> ServiceResult<Vec<ApiKeyView>> {
        Ok(self
            .core
            .list_api_keys(p.user_id)
            .await?
            .iter()
            .map(ApiKeyView::from)
            .collect())
    }

    /// Revokes one of the caller's keys (a super admin may revoke any).
    pub async fn revoke_api_key(
        &self,
        p: &Principal,
        id: ApiKeyId,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        let key = self
            .core
            .find_api_key(id)
            .await?
            .filter(|k| {
                k.user_id == p.user_id
                    || (p.scope().is_none() && p.can_see(Some(k.organization_id)))
            })
            .ok_or(ServiceError::NotFound("API key"))?;
        let event = AuditEvent::new(p.actor(), "api_key.revoked", ctx)
            .org(Some(key.organization_id))
            .target("api_key", key.id);
        self.core
            .revoke_api_key(key.id, &event)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    ServiceError::conflict("already_revoked", "the API key is already revoked")
                }
                other => other.into(),
            })
    }
}
