//! clm_core webhooks and their persistent delivery queue. A delivery is
//! claimed by a compare-and-set on its `next_attempt_at`, so that of several
//! instances exactly one sends it.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use uuid::Uuid;

use super::entity::core::{webhook_deliveries, webhooks};
use super::{CoreDb, StoreResult, audit, json_strings, strings_from_json};
use crate::domain::model::{AuditEvent, Webhook, WebhookDelivery, WebhookEvent};
use crate::domain::{OrganizationId, new_row_id};

fn webhook_from(r: webhooks::Model) -> StoreResult<Webhook> {
    Ok(Webhook {
        id: r.id,
        organization_id: OrganizationId(r.organization_id),
        url: r.url,
        events: strings_from_json(&r.events)?,
        status: r.status,
        created_at: r.created_at,
    })
}

fn delivery_from(r: webhook_deliveries::Model) -> WebhookDelivery {
    WebhookDelivery {
        id: r.id,
        webhook_id: r.webhook_id,
        event: r.event,
        payload: r.payload,
        status: r.status,
        attempts: r.attempts,
        next_attempt_at: r.next_attempt_at,
        last_status_code: r.last_status_code,
        last_error: r.last_error,
        delivered_at: r.delivered_at,
        created_at: r.created_at,
    }
}

/// Deliveries per INSERT: 13 parameters each stay far below the backends'
/// limits on one statement's parameters.
const DELIVERIES_PER_INSERT: usize = 500;

/// Stores `deliveries` through `db` (a transaction or the connection).
pub(super) async fn insert_deliveries<C: ConnectionTrait>(
    db: &C,
    deliveries: Vec<webhook_deliveries::ActiveModel>,
) -> StoreResult<()> {
    let mut rows = deliveries.into_iter().peekable();
    while rows.peek().is_some() {
        webhook_deliveries::Entity::insert_many(rows.by_ref().take(DELIVERIES_PER_INSERT))
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// The outcome of one delivery attempt.
pub enum AttemptResult {
    Delivered {
        status_code: i32,
    },
    /// Try again at `retry_at`, or give up when `None`.
    Failed {
        status_code: Option<i32>,
        error: String,
        retry_at: Option<DateTime<Utc>>,
    },
}

impl CoreDb {
    pub async fn insert_webhook(
        &self,
        w: &Webhook,
        created_by: Uuid,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        webhooks::ActiveModel {
            id: Set(w.id),
            organization_id: Set(w.organization_id.0),
            url: Set(w.url.clone()),
            events: Set(json_strings(&w.events)),
            status: Set(w.status.clone()),
            created_by: Set(Some(created_by)),
            created_at: Set(w.created_at),
            updated_at: Set(w.created_at),
        }
        .insert(&txn)
        .await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        self.webhooks.clear();
        Ok(())
    }

    pub async fn list_webhooks(&self, scope: Option<OrganizationId>) -> StoreResult<Vec<Webhook>> {
        let mut q = webhooks::Entity::find();
        if let Some(org) = scope {
            q = q.filter(webhooks::Column::OrganizationId.eq(org.0));
        }
        q.order_by_asc(webhooks::Column::CreatedAt)
            .all(&self.read)
            .await?
            .into_iter()
            .map(webhook_from)
            .collect()
    }

    pub async fn find_webhook(&self, id: Uuid) -> StoreResult<Option<Webhook>> {
        webhooks::Entity::find_by_id(id)
            .one(&self.read)
            .await?
            .map(webhook_from)
            .transpose()
    }

    pub async fn disable_webhook(&self, id: Uuid, event: &AuditEvent) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        webhooks::Entity::update_many()
            .col_expr(webhooks::Column::Status, Expr::value("disabled"))
            .filter(webhooks::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        self.webhooks.clear();
        Ok(())
    }

    /// Queues `e` for every active webhook of its organisation subscribed
    /// to it. Returns how many deliveries were queued.
    pub async fn enqueue_webhook_event(&self, e: &WebhookEvent) -> StoreResult<usize> {
        let deliveries = self.deliveries_of([e]).await?;
        let n = deliveries.len();
        insert_deliveries(&self.db, deliveries).await?;
        Ok(n)
    }

    /// One pending delivery of each event to each webhook subscribed to it
    /// (the payload is copied only into deliveries that exist).
    pub(super) async fn deliveries_of<'e>(
        &self,
        events: impl IntoIterator<Item = &'e WebhookEvent>,
    ) -> StoreResult<Vec<webhook_deliveries::ActiveModel>> {
        let now = Utc::now();
        let mut deliveries = Vec::new();
        for e in events {
            let org = e.organization_id;
            let read = || {
                webhooks::Entity::find()
                    .filter(webhooks::Column::OrganizationId.eq(org.0))
                    .filter(webhooks::Column::Status.eq("active"))
                    .all(&self.read)
            };
            for hook in self.webhooks.get_or_read(org, read).await? {
                let events = strings_from_json(&hook.events)?;
                if !events.is_empty() && !events.iter().any(|name| name == e.event) {
                    continue;
                }
                deliveries.push(webhook_deliveries::ActiveModel {
                    id: Set(new_row_id()),
                    webhook_id: Set(hook.id),
                    organization_id: Set(org.0),
                    event: Set(e.event.to_string()),
                    payload: Set(e.payload.clone()),
                    status: Set("pending".into()),
                    attempts: Set(0),
                    next_attempt_at: Set(now),
                    last_status_code: Set(None),
                    last_error: Set(None),
                    delivered_at: Set(None),
                    created_at: Set(now),
                    updated_at: Set(now),
                });
            }
        }
        Ok(deliveries)
    }

    /// Pending deliveries that are due, with their endpoint URL.
    pub async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<(WebhookDelivery, String)>> {
        let rows = webhook_deliveries::Entity::find()
            .filter(webhook_deliveries::Column::Status.eq("pending"))
            .filter(webhook_deliveries::Column::NextAttemptAt.lte(now))
            .order_by_asc(webhook_deliveries::Column::NextAttemptAt)
            .limit(limit)
            .all(&self.read)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if let Some(hook) = webhooks::Entity::find_by_id(r.webhook_id)
                .one(&self.read)
                .await?
                && hook.status == "active"
            {
                out.push((delivery_from(r), hook.url));
            }
        }
        Ok(out)
    }

    /// Takes a delivery for one attempt: moves its `next_attempt_at` from
    /// the value seen to `lease_until`. `false`: another instance has it.
    pub async fn claim_delivery(
        &self,
        d: &WebhookDelivery,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let res = webhook_deliveries::Entity::update_many()
            .col_expr(
                webhook_deliveries::Column::NextAttemptAt,
                Expr::value(lease_until),
            )
            .filter(webhook_deliveries::Column::Id.eq(d.id))
            .filter(webhook_deliveries::Column::Status.eq("pending"))
            .filter(webhook_deliveries::Column::NextAttemptAt.eq(d.next_attempt_at))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected == 1)
    }

    pub async fn record_attempt(&self, id: Uuid, result: AttemptResult) -> StoreResult<()> {
        let now = Utc::now();
        let mut update = webhook_deliveries::Entity::update_many()
            .col_expr(
                webhook_deliveries::Column::Attempts,
                Expr::col(webhook_deliveries::Column::Attempts).add(1),
            )
            .filter(webhook_deliveries::Column::Id.eq(id));
        update = match result {
            AttemptResult::Delivered { status_code } => update
                .col_expr(webhook_deliveries::Column::Status, Expr::value("delivered"))
                .col_expr(
                    webhook_deliveries::Column::LastStatusCode,
                    Expr::value(Some(status_code)),
                )
                .col_expr(
                    webhook_deliveries::Column::LastError,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(
                    webhook_deliveries::Column::DeliveredAt,
                    Expr::value(Some(now)),
                ),
            AttemptResult::Failed {
                status_code,
                error,
                retry_at,
            } => {
                let u = update
                    .col_expr(
                        webhook_deliveries::Column::LastStatusCode,
                        Expr::value(status_code),
                    )
                    .col_expr(
                        webhook_deliveries::Column::LastError,
                        Expr::value(Some(error)),
                    );
                match retry_at {
                    Some(at) => {
                        u.col_expr(webhook_deliveries::Column::NextAttemptAt, Expr::value(at))
                    }
                    None => u.col_expr(webhook_deliveries::Column::Status, Expr::value("failed")),
                }
            }
        };
        update.exec(&self.db).await?;
        Ok(())
    }

    pub async fn list_deliveries(&self, webhook: Uuid) -> StoreResult<Vec<WebhookDelivery>> {
        Ok(webhook_deliveries::Entity::find()
            .filter(webhook_deliveries::Column::WebhookId.eq(webhook))
            .order_by_desc(webhook_deliveries::Column::CreatedAt)
            .limit(200)
            .all(&self.read)
            .await?
            .into_iter()
            .map(delivery_from)
            .collect())
    }
}
