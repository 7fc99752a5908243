//! clm_core approval workflows and notifications. Every decision is one
//! transaction: the step (unique per approver and request), the
//! compare-and-set of the instance's counters and status, the audit entry.
//! Counting happens in the database, so when many approvers decide at once
//! exactly the required number of approvals succeed and exactly one of them
//! completes the workflow.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use uuid::Uuid;

use super::entity::core::{
    notifications, roles, user_roles, users, workflow_instances, workflow_steps,
};
use super::{CoreDb, StoreError, StoreResult, audit, parse_one};
use crate::domain::model::{AuditEvent, Notification, WorkflowInstance, WorkflowStep};
use crate::domain::{OrganizationId, RequestId, RequestStatus, Role, UserId, new_row_id};

/// What an approval did to its workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Approval {
    pub approvals_count: u8,
    /// This approval was the last one required.
    pub completed: bool,
}

pub(super) async fn insert_notifications<C: ConnectionTrait>(
    db: &C,
    items: &[Notification],
) -> StoreResult<()> {
    for n in items {
        notifications::ActiveModel {
            id: Set(n.id),
            organization_id: Set(n.organization_id.0),
            user_id: Set(n.user_id.0),
            kind: Set(n.kind.clone()),
            title: Set(n.title.clone()),
            body: Set(n.body.clone()),
            data: Set(n.data.clone()),
            read_at: Set(None),
            created_at: Set(n.created_at),
        }
        .insert(db)
        .await?;
    }
    Ok(())
}

async fn insert_step<C: ConnectionTrait>(
    db: &C,
    instance: Uuid,
    actor: UserId,
    decision: &str,
    comment: Option<&str>,
) -> StoreResult<()> {
    workflow_steps::ActiveModel {
        id: Set(new_row_id()),
        instance_id: Set(instance),
        actor_id: Set(actor.0),
        decision: Set(decision.to_string()),
        comment: Set(comment.map(str::to_string)),
        created_at: Set(Utc::now()),
    }
    .insert(db)
    .await
    .map_err(|e| match StoreError::from(e) {
        StoreError::Duplicate(_) => {
            StoreError::Conflict("this approver has already decided".into())
        }
        other => other,
    })?;
    Ok(())
}

fn instance_from(r: workflow_instances::Model) -> StoreResult<WorkflowInstance> {
    Ok(WorkflowInstance {
        id: r.id,
        kind: parse_one(&r.kind)?,
        request_id: RequestId(r.request_id),
        organization_id: OrganizationId(r.organization_id),
        requester_id: UserId(r.requester_id),
        status: parse_one(&r.status)?,
        approvals_required: u8::try_from(r.approvals_required).map_err(super::error::corrupt)?,
        approvals_count: u8::try_from(r.approvals_count).map_err(super::error::corrupt)?,
        expires_at: r.expires_at,
        created_at: r.created_at,
    })
}

impl CoreDb {
    /// Opens the workflow of a pending request and tells the approvers.
    pub async fn create_workflow(
        &self,
        w: &WorkflowInstance,
        notify: &[Notification],
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        workflow_instances::ActiveModel {
            id: Set(w.id),
            workflow_id: Set(None),
            organization_id: Set(w.organization_id.0),
            request_id: Set(w.request_id.0),
            requester_id: Set(w.requester_id.0),
            kind: Set(w.kind.as_str().to_string()),
            status: Set(w.status.as_str().to_string()),
            approvals_required: Set(i32::from(w.approvals_required)),
            approvals_count: Set(0),
            expires_at: Set(w.expires_at),
            completed_at: Set(None),
            created_at: Set(w.created_at),
            updated_at: Set(w.created_at),
        }
        .insert(&txn)
        .await?;
        insert_notifications(&txn, notify).await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn find_workflow(&self, request: RequestId) -> StoreResult<Option<WorkflowInstance>> {
        workflow_instances::Entity::find()
            .filter(workflow_instances::Column::RequestId.eq(request.0))
            .one(&self.read)
            .await?
            .map(instance_from)
            .transpose()
    }

    pub async fn workflow_steps(&self, instance: Uuid) -> StoreResult<Vec<WorkflowStep>> {
        Ok(workflow_steps::Entity::find()
            .filter(workflow_steps::Column::InstanceId.eq(instance))
            .order_by_asc(workflow_steps::Column::CreatedAt)
            .all(&self.read)
            .await?
            .into_iter()
            .map(|s| WorkflowStep {
                actor_id: UserId(s.actor_id),
                decision: s.decision,
                comment: s.comment,
                created_at: s.created_at,
            })
            .collect())
    }

    /// Records one approval. A second vote of the same approver, or a vote
    /// after the workflow left `pending_approval` or reached its count, is a
    /// conflict and leaves nothing behind.
    pub async fn approve(
        &self,
        instance: Uuid,
        actor: UserId,
        comment: Option<&str>,
        event: &AuditEvent,
    ) -> StoreResult<Approval> {
        let txn = super::begin_write(&self.db).await?;
        insert_step(&txn, instance, actor, "approve", comment).await?;
        let counted = workflow_instances::Entity::update_many()
            .col_expr(
                workflow_instances::Column::ApprovalsCount,
                Expr::col(workflow_instances::Column::ApprovalsCount).add(1),
            )
            .filter(workflow_instances::Column::Id.eq(instance))
            .filter(workflow_instances::Column::Status.eq(RequestStatus::PendingApproval.as_str()))
            .filter(
                Expr::col(workflow_instances::Column::ApprovalsCount)
                    .lt(Expr::col(workflow_instances::Column::ApprovalsRequired)),
            )
            .exec(&txn)
            .await?;
        if counted.rows_affected == 0 {
            return Err(StoreError::Conflict(
                "the request is no longer pending approval".into(),
            ));
        }
        let completed = workflow_instances::Entity::update_many()
            .col_expr(
                workflow_instances::Column::Status,
                Expr::value(RequestStatus::Approved.as_str()),
            )
            .col_expr(
                workflow_instances::Column::CompletedAt,
                Expr::value(Some(Utc::now())),
            )
            .filter(workflow_instances::Column::Id.eq(instance))
            .filter(
                Expr::col(workflow_instances::Column::ApprovalsCount)
                    .gte(Expr::col(workflow_instances::Column::ApprovalsRequired)),
            )
            .exec(&txn)
            .await?
            .rows_affected
            > 0;
        let count = workflow_instances::Entity::find_by_id(instance)
            .select_only()
            .column(workflow_instances::Column::ApprovalsCount)
            .into_tuple::<i32>()
            .one(&txn)
            .await?
            .unwrap_or_default();
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(Approval {
            approvals_count: u8::try_from(count).map_err(super::error::corrupt)?,
            completed,
        })
    }

    /// Records a rejection, which ends the workflow.
    pub async fn reject(
        &self,
        instance: Uuid,
        actor: UserId,
        reason: &str,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        insert_step(&txn, instance, actor, "reject", Some(reason)).await?;
        move_workflow(
            &txn,
            instance,
            RequestStatus::PendingApproval,
            RequestStatus::Rejected,
        )
        .await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Compare-and-set of a workflow's status, with notices and audit.
    pub async fn move_workflow(
        &self,
        instance: Uuid,
        from: RequestStatus,
        to: RequestStatus,
        notify: &[Notification],
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        move_workflow(&txn, instance, from, to).await?;
        insert_notifications(&txn, notify).await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Pending workflows whose time is up.
    pub async fn overdue_workflows(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<WorkflowInstance>> {
        workflow_instances::Entity::find()
            .filter(workflow_instances::Column::Status.eq(RequestStatus::PendingApproval.as_str()))
            .filter(workflow_instances::Column::ExpiresAt.lte(now))
            .limit(limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(instance_from)
            .collect()
    }

    /// Active users of `org` holding `role`.
    pub async fn users_with_role(
        &self,
        org: OrganizationId,
        role: Role,
    ) -> StoreResult<Vec<UserId>> {
        let Some(role_row) = roles::Entity::find()
            .filter(roles::Column::Name.eq(role.as_str()))
            .one(&self.read)
            .await?
        else {
            return Ok(Vec::new());
        };
        let holders: Vec<Uuid> = user_roles::Entity::find()
            .filter(user_roles::Column::RoleId.eq(role_row.id))
            .select_only()
            .column(user_roles::Column::UserId)
            .into_tuple()
            .all(&self.read)
            .await?;
        Ok(users::Entity::find()
            .filter(users::Column::Id.is_in(holders))
            .filter(users::Column::OrganizationId.eq(org.0))
            .filter(users::Column::Status.eq("active"))
            .filter(users::Column::DeletedAt.is_null())
            .all(&self.read)
            .await?
            .into_iter()
            .map(|u| UserId(u.id))
            .collect())
    }

    pub async fn notify(&self, items: &[Notification]) -> StoreResult<()> {
        insert_notifications(&self.db, items).await
    }

    pub async fn list_notifications(
        &self,
        user: UserId,
        unread_only: bool,
    ) -> StoreResult<Vec<Notification>> {
        let mut q = notifications::Entity::find().filter(notifications::Column::UserId.eq(user.0));
        if unread_only {
            q = q.filter(notifications::Column::ReadAt.is_null());
        }
        Ok(q.order_by_desc(notifications::Column::CreatedAt)
            .limit(500)
            .all(&self.read)
            .await?
            .into_iter()
            .map(|n| Notification {
                id: n.id,
                organization_id: OrganizationId(n.organization_id),
                user_id: UserId(n.user_id),
                kind: n.kind,
                title: n.title,
                body: n.body,
                data: n.data,
                read_at: n.read_at,
                created_at: n.created_at,
            })
            .collect())
    }

    /// Marks one of `user`'s notifications read; another user's is not found.
    pub async fn mark_notification_read(&self, user: UserId, id: Uuid) -> StoreResult<()> {
        let res = notifications::Entity::update_many()
            .col_expr(notifications::Column::ReadAt, Expr::value(Some(Utc::now())))
            .filter(notifications::Column::Id.eq(id))
            .filter(notifications::Column::UserId.eq(user.0))
            .filter(notifications::Column::ReadAt.is_null())
            .exec(&self.db)
            .await?;
        if res.rows_affected == 0
            && notifications::Entity::find_by_id(id)
                .filter(notifications::Column::UserId.eq(user.0))
                .one(&self.read)
                .await?
                .is_none()
        {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

async fn move_workflow<C: ConnectionTrait>(
    db: &C,
    instance: Uuid,
    from: RequestStatus,
    to: RequestStatus,
) -> StoreResult<()> {
    let res = workflow_instances::Entity::update_many()
        .col_expr(workflow_instances::Column::Status, Expr::value(to.as_str()))
        .col_expr(
            workflow_instances::Column::CompletedAt,
            Expr::value(Some(Utc::now())),
        )
        .filter(workflow_instances::Column::Id.eq(instance))
        .filter(workflow_instances::Column::Status.eq(from.as_str()))
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Err(StoreError::Conflict(format!(
            "the workflow is no longer {from}"
        )));
    }
    Ok(())
}
