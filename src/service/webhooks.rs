//! Webhooks: each organisation may register endpoints that receive its
//! events (request created, approved, rejected, issued) as signed JSON.
//!
//! Every delivery carries `X-Clm-Timestamp` (Unix seconds) and
//! `X-Clm-Signature: sha256=<hex>` where the MAC is HMAC-SHA-256 over
//! `"<timestamp>.<body>"` under the endpoint's secret. The secret is never
//! stored: it is derived in the HSM (HMAC under the registered MAC key of
//! `"clm-webhook-secret:" ‖ webhook id`) and shown once when the endpoint is
//! created. Deliveries live in a queue table and are retried with
//! exponential backoff, surviving restarts.

use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};

use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal, rfc3339};
use crate::domain::model::{AuditEvent, RequestContext, Webhook, WebhookDelivery, WebhookEvent};
use crate::domain::{KeyPurpose, OrganizationId, Permission, Secret, new_row_id};
use crate::store::AttemptResult;

/// Attempts before a delivery is given up as failed.
const MAX_ATTEMPTS: i32 = 10;
/// Longest wait between two attempts.
const MAX_BACKOFF_SECONDS: i64 = 3600;
/// Events an endpoint may subscribe to.
pub const EVENTS: &[&str] = &[
    "request.created",
    "request.approved",
    "request.rejected",
    "request.issued",
    "request.failed",
    "certificate.revoked",
    "certificate.expiring",
];

/// Body of `POST /api/v1/webhooks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// `http://` or `https://`, at most 2000 characters.
    pub url: String,
    /// Events to receive (`request.created`, `request.approved`,
    /// `request.rejected`, `request.issued`, `request.failed`,
    /// `certificate.revoked`, `certificate.expiring`); empty or absent
    /// means all.
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: uuid::Uuid,
    pub url: String,
    pub events: Vec<String>,
    /// `active` or `disabled`.
    pub status: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&Webhook> for WebhookView {
    fn from(w: &Webhook) -> Self {
        Self {
            id: w.id,
            url: w.url.clone(),
            events: w.events.clone(),
            status: w.status.clone(),
            created_at: rfc3339(w.created_at),
        }
    }
}

/// A new endpoint with its signing secret (hex), shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    pub secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: uuid::Uuid,
    pub event: String,
    /// The JSON document the endpoint receives.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub status: String,
    pub attempts: i32,
    #[schema(format = DateTime)]
    pub next_attempt_at: String,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub delivered_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&WebhookDelivery> for DeliveryView {
    fn from(d: &WebhookDelivery) -> Self {
        Self {
            id: d.id,
            event: d.event.clone(),
            payload: d.payload.clone(),
            status: d.status.clone(),
            attempts: d.attempts,
            next_attempt_at: rfc3339(d.next_attempt_at),
            last_status_code: d.last_status_code,
            last_error: d.last_error.clone(),
            delivered_at: d.delivered_at.map(rfc3339),
            created_at: rfc3339(d.created_at),
        }
    }
}

/// `sha256=<hex HMAC-SHA-256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

impl Clm {
    async fn webhook_secret(&self, id: uuid::Uuid) -> ServiceResult<Secret> {
        // Derived from version 1 of the audit key, whatever is current:
        // rotating the audit key must not change the secrets receivers hold.
        let key = self
            .secure
            .list_keys()
            .await?
            .into_iter()
            .find(|k| k.purpose == KeyPurpose::AuditMac && k.version == 1)
            .ok_or_else(|| ServiceError::internal("no audit MAC key of version 1 registered"))?;
        let ckaid = hex::decode(&key.ckaid_hex).map_err(ServiceError::internal)?;
        let mac = self
            .hsm
            .hmac_sha256(&ckaid, format!("clm-webhook-secret:{id}").into_bytes())
            .await?;
        Ok(Secret::new(hex::encode(mac)))
    }

    pub async fn create_webhook(
        &self,
        p: &Principal,
        body: NewWebhook,
        ctx: &RequestContext,
    ) -> ServiceResult<CreatedWebhook> {
        p.require(Permission::ManageUsers)?;
        let url = body.url.trim();
        // The URL parser would percent-encode control characters; the URL
        // stored is the one given, so they are refused.
        if url.len() > 2000
            || !(url.starts_with("https://") || url.starts_with("http://"))
            || url.chars().any(char::is_control)
            || reqwest::Url::parse(url).is_err()
        {
            return Err(ServiceError::invalid(
                "invalid_webhook",
                "url must be an http:// or https:// URL of at most 2000 printable characters",
            ));
        }
        if let Some(bad) = body.events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            return Err(ServiceError::invalid(
                "invalid_webhook",
                format!(
                    "unknown event `{}`; known: {}",
                    bad.chars().take(64).collect::<String>(),
                    EVENTS.join(", ")
                ),
            ));
        }
        let hook = Webhook {
            id: new_row_id(),
            organization_id: p.organization_id,
            url: url.to_string(),
            events: body.events,
            status: "active".into(),
            created_at: Utc::now(),
        };
        let event = AuditEvent::new(p.actor(), "webhook.created", ctx)
            .org(Some(p.organization_id))
            .target("webhook", hook.id)
            .details(serde_json::json!({ "url": hook.url, "events": hook.events }));
        self.core.insert_webhook(&hook, p.user_id.0, &event).await?;
        Ok(CreatedWebhook {
            webhook: WebhookView::from(&hook),
            secret: self.webhook_secret(hook.id).await?.expose().to_string(),
        })
    }

    pub async fn list_webhooks(&self, p: &Principal) -> ServiceResult<Vec<WebhookView>> {
        p.require(Permission::ManageUsers)?;
        Ok(self
            .core
            .list_webhooks(p.scope())
            .await?
            .iter()
            .map(WebhookView::from)
            .collect())
    }

    async fn own_webhook(&self, p: &Principal, id: uuid::Uuid) -> ServiceResult<Webhook> {
        p.require(Permission::ManageUsers)?;
        self.core
            .find_webhook(id)
            .await?
            .filter(|w| p.can_see(Some(w.organization_id)))
            .ok_or(ServiceError::NotFound("webhook"))
    }

    pub async fn webhook_deliveries(
        &self,
        p: &Principal,
        id: uuid::Uuid,
    ) -> ServiceResult<Vec<DeliveryView>> {
        let hook = self.own_webhook(p, id).await?;
        Ok(self
            .core
            .list_deliveries(hook.id)
            .await?
            .iter()
            .map(DeliveryView::from)
            .collect())
    }

    pub async fn disable_webhook(
        &self,
        p: &Principal,
        id: uuid::Uuid,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        let hook = self.own_webhook(p, id).await?;
        let event = AuditEvent::new(p.actor(), "webhook.disabled", ctx)
            .org(Some(hook.organization_id))
            .target("webhook", hook.id);
        Ok(self.core.disable_webhook(hook.id, &event).await?)
    }

    /// Queues an event for the organisation's endpoints. Failure to queue
    /// is logged, never turned into a failure of the action it reports.
    pub(super) async fn emit(
        &self,
        org: OrganizationId,
        event: &'static str,
        data: serde_json::Value,
    ) {
        if let Err(e) = self
            .core
            .enqueue_webhook_event(&webhook_event(org, event, data))
            .await
        {
            tracing::warn!(event, error = %e, "webhook event not queued");
        }
    }

    /// Background job: sends due deliveries once each. Returns how many
    /// were delivered.
    pub async fn deliver_webhooks(&self, client: &reqwest::Client) -> ServiceResult<usize> {
        let now = Utc::now();
        let mut delivered = 0;
        for (d, url) in self.core.due_deliveries(now, 50).await? {
            // The lease keeps other instances off while this one sends.
            if !self
                .core
                .claim_delivery(&d, now + Duration::seconds(60))
                .await?
            {
                continue;
            }
            let body = serde_json::to_vec(&d.payload).map_err(ServiceError::internal)?;
            let timestamp = Utc::now().timestamp();
            let secret = self.webhook_secret(d.webhook_id).await?;
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-clm-event", &d.event)
                .header("x-clm-delivery", d.id.to_string())
                .header("x-clm-timestamp", timestamp.to_string())
                .header(
                    "x-clm-signature",
                    signature(secret.expose().as_bytes(), timestamp, &body),
                )
                .body(body)
                .send()
                .await;
            let attempts = d.attempts + 1;
            let retry_at = (attempts < MAX_ATTEMPTS).then(|| {
                let wait = (self.settings.webhook_retry_base_seconds << attempts.min(20))
                    .min(MAX_BACKOFF_SECONDS);
                Utc::now() + Duration::seconds(wait)
            });
            let result = match sent {
                Ok(r) if r.status().is_success() => {
                    delivered += 1;
                    AttemptResult::Delivered {
                        status_code: i32::from(r.status().as_u16()),
                    }
                }
                Ok(r) => AttemptResult::Failed {
                    status_code: Some(i32::from(r.status().as_u16())),
                    error: format!("endpoint answered {}", r.status()),
                    retry_at,
                },
                Err(e) => AttemptResult::Failed {
                    status_code: None,
                    error: if e.is_connect() {
                        "connection failed".into()
                    } else if e.is_timeout() {
                        "timed out".into()
                    } else {
                        "request failed".into()
                    },
                    retry_at,
                },
            };
            self.core.record_attempt(d.id, result).await?;
        }
        Ok(delivered)
    }
}

/// `event` of `org` as its subscribers receive it: `data` in an envelope
/// with the event's own id and time.
pub(super) fn webhook_event(
    org: OrganizationId,
    event: &'static str,
    data: serde_json::Value,
) -> WebhookEvent {
    WebhookEvent {
        organization_id: org,
        event,
        payload: serde_json::json!({
            "id": uuid::Uuid::new_v4(),
            "type": event,
            "organization_id": org,
            "occurred_at": rfc3339(Utc::now()),
            "data": data,
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signatures_cover_timestamp_and_body() {
        let a = super::signature(b"k", 1, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
        assert_ne!(a, super::signature(b"k", 2, b"{}"));
        assert_ne!(a, super::signature(b"k", 1, b"{ }"));
        assert_ne!(a, super::signature(b"j", 1, b"{}"));
    }
}
