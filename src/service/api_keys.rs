//! API keys: bearer tokens for automation, limited to a subset of their
//! creator's roles, shown once and stored as a digest.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use super::auth::{API_KEY_PREFIX, new_token};
use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal, rfc3339};
use crate::domain::model::{ApiKey, AuditEvent, RequestContext};
use crate::domain::{ApiKeyId, Role};
use crate::store::StoreError;

/// Longest lifetime of an API key.
const MAX_LIFETIME_DAYS: i64 = 366;

/// Body of `POST /api/v1/api-keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    pub name: String,
    pub roles: Vec<Role>,
    pub expires_at: Option<DateTime<Utc>>,
}

fn key_json(k: &ApiKey) -> serde_json::Value {
    serde_json::json!({
        "id": k.id,
        "name": k.name,
        "token_prefix": k.token_prefix,
        "roles": k.roles,
        "expires_at": k.expires_at.map(rfc3339),
        "last_used_at": k.last_used_at.map(rfc3339),
        "revoked_at": k.revoked_at.map(rfc3339),
        "created_at": rfc3339(k.created_at),
    })
}

impl Clm {
    /// Creates a key; the response carries the token this once.
    pub async fn create_api_key(
        &self,
        p: &Principal,
        body: NewApiKey,
        ctx: &RequestContext,
    ) -> ServiceResult<serde_json::Value> {
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
        let mut out = key_json(&key);
        out["token"] = serde_json::Value::String(token.expose().to_string());
        Ok(out)
    }

    pub async fn list_api_keys(&self, p: &Principal) -> ServiceResult<Vec<serde_json::Value>> {
        Ok(self
            .core
            .list_api_keys(p.user_id)
            .await?
            .iter()
            .map(key_json)
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
