//! clm_core, first version: every table, index, constraint, trigger and
//! view, and the six system roles. docs/database-core.md says why each
//! exists.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    boolean, integer, json_binary, json_binary_null, text, text_null, text_uniq,
    timestamp_with_time_zone as ts, timestamp_with_time_zone_null as ts_null, uuid, uuid_null,
    uuid_uniq,
};
use sea_orm_migration::sea_orm::DatabaseBackend;
use sea_orm_migration::sea_orm::prelude::{Json, Uuid};

use crate::sql::{self, audit_table, created_at, fk, id, index, one_of, rule, unique, updated_at};

const PREFIX: &str = "clm_core";

/// Request statuses (API.md); a workflow instance mirrors its request.
const REQUEST_STATUSES: &[&str] = &[
    "pending_approval",
    "approved",
    "issued",
    "rejected",
    "cancelled",
    "expired",
    "failed",
];

const CERTIFICATE_STATUSES: &[&str] = &["valid", "revoked", "on_hold", "expired"];

fn tables() -> Vec<TableCreateStatement> {
    vec![
        Table::create()
            .table("organizations")
            .col(id())
            .col(text_uniq("name"))
            .col(text_uniq("slug"))
            .col(text("status"))
            .col(json_binary("settings"))
            .col(created_at())
            .col(updated_at())
            .col(ts_null("deleted_at"))
            .check(one_of("organizations", "status", &["active", "suspended"]))
            .to_owned(),
        Table::create()
            .table("users")
            .col(id())
            .col(uuid("organization_id"))
            .col(text_uniq("email"))
            .col(text_null("display_name"))
            .col(text("password_hash"))
            .col(text("status"))
            .col(integer("failed_login_count").default(0))
            .col(ts_null("locked_until"))
            .col(ts_null("last_login_at"))
            .col(ts_null("password_changed_at"))
            .col(created_at())
            .col(updated_at())
            .col(ts_null("deleted_at"))
            .foreign_key(&mut fk("users", "organization_id", "organizations"))
            .check(one_of("users", "status", &["active", "disabled", "locked"]))
            // Uniqueness of e-mail addresses is only meaningful if the
            // store cannot hold two spellings of one address.
            .check(rule("users", "email_lower", "email = lower(email)"))
            .check(rule(
                "users",
                "failed_login_count",
                "failed_login_count >= 0",
            ))
            .to_owned(),
        Table::create()
            .table("roles")
            .col(id())
            .col(text_uniq("name"))
            .col(text("description"))
            .col(json_binary("permissions"))
            .col(boolean("is_system").default(false))
            .col(created_at())
            .col(updated_at())
            .to_owned(),
        Table::create()
            .table("user_roles")
            .col(uuid("user_id"))
            .col(uuid("role_id"))
            .col(uuid_null("granted_by"))
            .col(created_at())
            .primary_key(Index::create().col("user_id").col("role_id"))
            .foreign_key(&mut fk("user_roles", "user_id", "users"))
            .foreign_key(&mut fk("user_roles", "role_id", "roles"))
            .to_owned(),
        Table::create()
            .table("user_organizations")
            .col(uuid("user_id"))
            .col(uuid("organization_id"))
            .col(created_at())
            .primary_key(Index::create().col("user_id").col("organization_id"))
            .foreign_key(&mut fk("user_organizations", "user_id", "users"))
            .foreign_key(&mut fk(
                "user_organizations",
                "organization_id",
                "organizations",
            ))
            .to_owned(),
        Table::create()
            .table("policies")
            .col(id())
            .col(uuid_null("organization_id"))
            .col(text("name"))
            .col(text("policy_type"))
            .col(uuid("ca_id"))
            .col(json_binary("key_algorithms"))
            .col(json_binary("allowed_dns_suffixes"))
            .col(boolean("allow_ip_sans").default(false))
            .col(integer("max_validity_days"))
            .col(json_binary("extended_key_usages"))
            .col(integer("required_approvals").default(0))
            .col(json_binary("approver_roles"))
            .col(boolean("allow_server_keygen").default(false))
            .col(boolean("allow_key_archival").default(false))
            .col(text("status"))
            .col(created_at())
            .col(updated_at())
            .col(ts_null("deleted_at"))
            .foreign_key(&mut fk("policies", "organization_id", "organizations"))
            .check(one_of(
                "policies",
                "policy_type",
                &["certificate_profile", "security"],
            ))
            .check(one_of("policies", "status", &["active", "disabled"]))
            .check(rule(
                "policies",
                "max_validity_days",
                "max_validity_days > 0",
            ))
            .check(rule(
                "policies",
                "required_approvals",
                "required_approvals BETWEEN 0 AND 5",
            ))
            .to_owned(),
        Table::create()
            .table("workflows")
            .col(id())
            .col(uuid_null("organization_id"))
            .col(uuid_null("policy_id"))
            .col(text("name"))
            .col(integer("required_approvals"))
            .col(json_binary("approver_roles"))
            .col(integer("timeout_hours").default(168))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk("workflows", "organization_id", "organizations"))
            .foreign_key(&mut fk("workflows", "policy_id", "policies"))
            .check(rule(
                "workflows",
                "required_approvals",
                "required_approvals BETWEEN 0 AND 5",
            ))
            .check(rule("workflows", "timeout_hours", "timeout_hours > 0"))
            .to_owned(),
        Table::create()
            .table("workflow_instances")
            .col(id())
            .col(uuid_null("workflow_id"))
            .col(uuid("organization_id"))
            // One approval process per request (a clm_secure id).
            .col(uuid_uniq("request_id"))
            .col(uuid("requester_id"))
            .col(text("status"))
            .col(integer("approvals_required"))
            .col(integer("approvals_count").default(0))
            .col(ts("expires_at"))
            .col(ts_null("completed_at"))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk("workflow_instances", "workflow_id", "workflows"))
            .foreign_key(&mut fk(
                "workflow_instances",
                "organization_id",
                "organizations",
            ))
            .foreign_key(&mut fk("workflow_instances", "requester_id", "users"))
            .check(one_of("workflow_instances", "status", REQUEST_STATUSES))
            .check(rule(
                "workflow_instances",
                "approvals_required",
                "approvals_required BETWEEN 0 AND 5",
            ))
            .check(rule(
                "workflow_instances",
                "approvals_count",
                "approvals_count >= 0",
            ))
            .to_owned(),
        Table::create()
            .table("workflow_steps")
            .col(id())
            .col(uuid("instance_id"))
            .col(uuid("actor_id"))
            .col(text("decision"))
            .col(text_null("comment"))
            .col(created_at())
            .foreign_key(&mut fk(
                "workflow_steps",
                "instance_id",
                "workflow_instances",
            ))
            .foreign_key(&mut fk("workflow_steps", "actor_id", "users"))
            .check(one_of("workflow_steps", "decision", &["approve", "reject"]))
            .to_owned(),
        Table::create()
            .table("notifications")
            .col(id())
            .col(uuid("organization_id"))
            .col(uuid("user_id"))
            .col(text("kind"))
            .col(text("title"))
            .col(text("body"))
            .col(json_binary("data"))
            .col(ts_null("read_at"))
            .col(created_at())
            .foreign_key(&mut fk("notifications", "organization_id", "organizations"))
            .foreign_key(&mut fk("notifications", "user_id", "users"))
            .to_owned(),
        audit_table("audit_log"),
        Table::create()
            .table("api_keys")
            .col(id())
            .col(uuid("organization_id"))
            .col(uuid("user_id"))
            .col(text("name"))
            .col(text_uniq("token_digest"))
            .col(text("token_prefix"))
            .col(json_binary("roles"))
            .col(ts_null("expires_at"))
            .col(ts_null("last_used_at"))
            .col(ts_null("revoked_at"))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk("api_keys", "organization_id", "organizations"))
            .foreign_key(&mut fk("api_keys", "user_id", "users"))
            .to_owned(),
        Table::create()
            .table("sessions")
            .col(id())
            .col(uuid("user_id"))
            .col(text_uniq("token_digest"))
            .col(ts("expires_at"))
            .col(ts("idle_expires_at"))
            .col(ts("last_seen_at"))
            .col(ts_null("revoked_at"))
            .col(text_null("source_ip"))
            .col(text_null("user_agent"))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk("sessions", "user_id", "users"))
            .to_owned(),
        Table::create()
            .table("certificate_metadata")
            .col(id())
            .col(uuid_null("organization_id"))
            .col(uuid("ca_id"))
            .col(uuid_null("profile_id"))
            .col(uuid_null("request_id"))
            .col(uuid_null("owner_id"))
            .col(text_null("common_name"))
            .col(json_binary("sans"))
            .col(text("serial_hex"))
            .col(ts("not_before"))
            .col(ts("not_after"))
            .col(text("status"))
            .col(json_binary_null("expiry_notices"))
            .col(created_at())
            .col(updated_at())
            .check(one_of(
                "certificate_metadata",
                "status",
                CERTIFICATE_STATUSES,
            ))
            .to_owned(),
    ]
}

fn indexes() -> Vec<IndexCreateStatement> {
    vec![
        index("idx_users_org", "users", &["organization_id"]),
        unique(
            "uq_policies_org_name",
            "policies",
            &["organization_id", "name"],
        ),
        index("idx_policies_ca", "policies", &["ca_id"]),
        index(
            "idx_workflow_instances_org_status",
            "workflow_instances",
            &["organization_id", "status"],
        ),
        index(
            "idx_workflow_instances_status_expires",
            "workflow_instances",
            &["status", "expires_at"],
        ),
        // One vote per approver and request.
        unique(
            "uq_workflow_steps_actor",
            "workflow_steps",
            &["instance_id", "actor_id"],
        ),
        index(
            "idx_notifications_user",
            "notifications",
            &["user_id", "read_at", "created_at"],
        ),
        index("idx_audit_occurred", "audit_log", &["occurred_at"]),
        index(
            "idx_audit_org",
            "audit_log",
            &["organization_id", "occurred_at"],
        ),
        index("idx_audit_actor", "audit_log", &["actor_id", "occurred_at"]),
        index("idx_api_keys_user", "api_keys", &["user_id"]),
        index("idx_sessions_user", "sessions", &["user_id"]),
        index(
            "idx_certificate_metadata_org",
            "certificate_metadata",
            &["organization_id", "status", "not_after"],
        ),
        index(
            "idx_certificate_metadata_status_not_after",
            "certificate_metadata",
            &["status", "not_after"],
        ),
    ]
}

const VIEWS: &[(&str, &str)] = &[
    (
        "active_users_with_roles",
        "SELECT u.id AS user_id, u.organization_id, u.email, r.name AS role \
         FROM users u JOIN user_roles ur ON ur.user_id = u.id JOIN roles r ON r.id = ur.role_id \
         WHERE u.status = 'active' AND u.deleted_at IS NULL",
    ),
    (
        "pending_approvals",
        "SELECT id, organization_id, request_id, requester_id, approvals_required, \
         approvals_count, expires_at \
         FROM workflow_instances WHERE status = 'pending_approval'",
    ),
    (
        "certificate_summary",
        "SELECT organization_id, status, COUNT(*) AS certificates, MIN(not_after) AS next_expiry \
         FROM certificate_metadata GROUP BY organization_id, status",
    ),
];

/// Tables whose rows change and so carry a maintained `updated_at`.
const TOUCHED: &[&str] = &[
    "organizations",
    "users",
    "roles",
    "policies",
    "workflows",
    "workflow_instances",
    "api_keys",
    "sessions",
    "certificate_metadata",
];

/// Dependants before what they reference.
const DROP_ORDER: &[&str] = &[
    "certificate_metadata",
    "sessions",
    "api_keys",
    "audit_log",
    "notifications",
    "workflow_steps",
    "workflow_instances",
    "workflows",
    "policies",
    "user_organizations",
    "user_roles",
    "roles",
    "users",
    "organizations",
];

/// The six system roles (API.md) and what each may do; the authoritative
/// matrix is `domain::role`, this copy is for operators reading the table.
const ROLES: &[(&str, &str, &[&str])] = &[
    (
        "super_admin",
        "Everything, across all organisations",
        &["*"],
    ),
    (
        "org_admin",
        "Manages the users of its own organisation",
        &["users:manage", "cas:read"],
    ),
    (
        "ca_admin",
        "Manages CAs and certificate profiles; revokes any certificate",
        &[
            "cas:manage",
            "profiles:manage",
            "cas:read",
            "certificates:revoke",
        ],
    ),
    (
        "approver",
        "Approves or rejects certificate requests",
        &["requests:approve", "cas:read"],
    ),
    (
        "requester",
        "Requests, renews and revokes own certificates",
        &["requests:create", "cas:read"],
    ),
    (
        "auditor",
        "Reads and verifies the audit trails",
        &["audit:read", "cas:read"],
    ),
];

/// Fixed ids for the system roles, so that every installation agrees on
/// them (`00000000-0000-4000-8000-00000000000N`).
pub fn system_role_id(n: usize) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | (n as u128 + 1))
}

async fn seed_roles(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    // Bound values, not SQL literals: the driver then stores ids and
    // timestamps exactly as sea-orm will later read them.
    let now = chrono::Utc::now();
    let mut insert = Query::insert();
    insert.into_table("roles").columns([
        "id",
        "name",
        "description",
        "permissions",
        "is_system",
        "created_at",
        "updated_at",
    ]);
    for (n, (name, description, permissions)) in ROLES.iter().enumerate() {
        let permissions = Json::Array(
            permissions
                .iter()
                .map(|p| Json::String((*p).to_string()))
                .collect(),
        );
        insert
            .values([
                system_role_id(n).into(),
                (*name).into(),
                (*description).into(),
                permissions.into(),
                true.into(),
                now.into(),
                now.into(),
            ])
            .map_err(|e| DbErr::Migration(e.to_string()))?;
    }
    manager.exec_stmt(insert).await
}

fn triggers(backend: DatabaseBackend) -> Vec<String> {
    let mut all = Vec::new();
    if backend == DatabaseBackend::Postgres {
        all.extend(sql::pg_functions(PREFIX));
    }
    for table in TOUCHED {
        all.extend(sql::touch_trigger(PREFIX, table, backend));
    }
    all.extend(sql::write_once_trigger(PREFIX, "audit_log", backend));
    all.extend(sql::no_unrevoke_trigger(
        PREFIX,
        "certificate_metadata",
        backend,
    ));
    all
}

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000001_init"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        sql::create(manager, tables(), indexes()).await?;
        seed_roles(manager).await?;
        sql::run(manager, &triggers(backend)).await?;
        let views: Vec<String> = VIEWS
            .iter()
            .map(|(name, body)| format!("CREATE VIEW {name} AS {body}"))
            .collect();
        sql::run(manager, &views).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let views: Vec<&str> = VIEWS.iter().rev().map(|(name, _)| *name).collect();
        sql::drop_views(manager, &views).await?;
        sql::drop_tables(manager, DROP_ORDER).await?;
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            sql::run(manager, &sql::drop_pg_functions(PREFIX)).await?;
        }
        Ok(())
    }
}
