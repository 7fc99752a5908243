//! Rows of both audit logs from one [`AuditEvent`]. Each is inserted inside
//! the transaction of the change it records.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};
use uuid::Uuid;

use super::StoreResult;
use super::entity::{core::audit_log, secure::secure_audit_log};
use crate::domain::model::AuditEvent;

/// Both logs share their columns; one definition keeps them in step.
macro_rules! audit_row {
    ($table:ident, $e:expr) => {
        $table::ActiveModel {
            id: Set(Uuid::new_v4()),
            occurred_at: Set(Utc::now()),
            actor_id: Set($e.actor.id.map(Into::into)),
            actor_kind: Set($e.actor.kind.to_string()),
            organization_id: Set($e.organization_id.map(Into::into)),
            action: Set($e.action.to_string()),
            target_type: Set($e.target_type.map(str::to_string)),
            target_id: Set($e.target_id.clone()),
            outcome: Set($e.outcome.as_str().to_string()),
            request_id: Set($e.context.request_id.clone()),
            source_ip: Set($e.context.source_ip.clone()),
            user_agent: Set($e.context.user_agent.clone()),
            details: Set($e.details.clone()),
        }
    };
}

pub(crate) async fn insert_core<C: ConnectionTrait>(db: &C, e: &AuditEvent) -> StoreResult<()> {
    audit_row!(audit_log, e).insert(db).await?;
    Ok(())
}

pub(crate) async fn insert_secure<C: ConnectionTrait>(db: &C, e: &AuditEvent) -> StoreResult<()> {
    audit_row!(secure_audit_log, e).insert(db).await?;
    Ok(())
}
