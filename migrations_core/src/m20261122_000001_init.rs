//! clm_core, first version: every table, index, constraint, trigger and
//! view, and the six system roles. See docs/database-core.md.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::sql::{self, render, statements};

const PREFIX: &str = "clm_core";

const TABLES: &str = r#"
CREATE TABLE organizations (
    id {uuid} PRIMARY KEY,
    name text NOT NULL UNIQUE,
    slug text NOT NULL UNIQUE,
    status text NOT NULL CHECK (status IN ('active','suspended')),
    settings {json} NOT NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    deleted_at {ts} NULL
);
CREATE TABLE users (
    id {uuid} PRIMARY KEY,
    organization_id {uuid} NOT NULL REFERENCES organizations(id),
    email text NOT NULL UNIQUE CHECK (email = lower(email)),
    display_name text NULL,
    password_hash text NOT NULL,
    status text NOT NULL CHECK (status IN ('active','disabled','locked')),
    failed_login_count integer NOT NULL DEFAULT 0,
    locked_until {ts} NULL,
    last_login_at {ts} NULL,
    password_changed_at {ts} NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    deleted_at {ts} NULL
);
CREATE INDEX idx_users_org ON users (organization_id);
CREATE TABLE roles (
    id {uuid} PRIMARY KEY,
    name text NOT NULL UNIQUE,
    description text NOT NULL,
    permissions {json} NOT NULL,
    is_system {bool} NOT NULL DEFAULT false,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE TABLE user_roles (
    user_id {uuid} NOT NULL REFERENCES users(id),
    role_id {uuid} NOT NULL REFERENCES roles(id),
    granted_by {uuid} NULL,
    created_at {ts} NOT NULL,
    PRIMARY KEY (user_id, role_id)
);
CREATE TABLE user_organizations (
    user_id {uuid} NOT NULL REFERENCES users(id),
    organization_id {uuid} NOT NULL REFERENCES organizations(id),
    created_at {ts} NOT NULL,
    PRIMARY KEY (user_id, organization_id)
);
CREATE TABLE policies (
    id {uuid} PRIMARY KEY,
    organization_id {uuid} NULL REFERENCES organizations(id),
    name text NOT NULL,
    policy_type text NOT NULL CHECK (policy_type IN ('certificate_profile','security')),
    ca_id {uuid} NOT NULL,
    key_algorithms {json} NOT NULL,
    allowed_dns_suffixes {json} NOT NULL,
    allow_ip_sans {bool} NOT NULL DEFAULT false,
    max_validity_days integer NOT NULL CHECK (max_validity_days > 0),
    extended_key_usages {json} NOT NULL,
    required_approvals integer NOT NULL DEFAULT 0 CHECK (required_approvals BETWEEN 0 AND 5),
    approver_roles {json} NOT NULL,
    allow_server_keygen {bool} NOT NULL DEFAULT false,
    allow_key_archival {bool} NOT NULL DEFAULT false,
    status text NOT NULL CHECK (status IN ('active','disabled')),
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    deleted_at {ts} NULL
);
CREATE UNIQUE INDEX uq_policies_org_name ON policies (organization_id, name);
CREATE TABLE workflows (
    id {uuid} PRIMARY KEY,
    organization_id {uuid} NULL REFERENCES organizations(id),
    policy_id {uuid} NULL REFERENCES policies(id),
    name text NOT NULL,
    required_approvals integer NOT NULL CHECK (required_approvals BETWEEN 0 AND 5),
    approver_roles {json} NOT NULL,
    timeout_hours integer NOT NULL DEFAULT 168 CHECK (timeout_hours > 0),
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE TABLE workflow_instances (
    id {uuid} PRIMARY KEY,
    workflow_id {uuid} NULL REFERENCES workflows(id),
    organization_id {uuid} NOT NULL REFERENCES organizations(id),
    request_id {uuid} NOT NULL UNIQUE,
    requester_id {uuid} NOT NULL REFERENCES users(id),
    status text NOT NULL CHECK (status IN ('pending_approval','approved','issued','rejected','cancelled','expired','failed')),
    approvals_required integer NOT NULL CHECK (approvals_required BETWEEN 0 AND 5),
    approvals_count integer NOT NULL DEFAULT 0,
    expires_at {ts} NOT NULL,
    completed_at {ts} NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE INDEX idx_workflow_instances_org_status ON workflow_instances (organization_id, status);
CREATE TABLE workflow_steps (
    id {uuid} PRIMARY KEY,
    instance_id {uuid} NOT NULL REFERENCES workflow_instances(id),
    actor_id {uuid} NOT NULL REFERENCES users(id),
    decision text NOT NULL CHECK (decision IN ('approve','reject')),
    comment text NULL,
    created_at {ts} NOT NULL
);
CREATE UNIQUE INDEX uq_workflow_steps_actor ON workflow_steps (instance_id, actor_id);
CREATE TABLE notifications (
    id {uuid} PRIMARY KEY,
    organization_id {uuid} NOT NULL REFERENCES organizations(id),
    user_id {uuid} NOT NULL REFERENCES users(id),
    kind text NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    data {json} NOT NULL,
    read_at {ts} NULL,
    created_at {ts} NOT NULL
);
CREATE INDEX idx_notifications_user ON notifications (user_id, read_at, created_at);
CREATE TABLE audit_log (
    id {uuid} PRIMARY KEY,
    occurred_at {ts} NOT NULL,
    actor_id {uuid} NULL,
    actor_kind text NOT NULL,
    organization_id {uuid} NULL,
    action text NOT NULL,
    target_type text NULL,
    target_id text NULL,
    outcome text NOT NULL CHECK (outcome IN ('success','failure','denied')),
    request_id text NULL,
    source_ip text NULL,
    user_agent text NULL,
    details {json} NOT NULL
);
CREATE INDEX idx_audit_occurred ON audit_log (occurred_at);
CREATE INDEX idx_audit_org ON audit_log (organization_id, occurred_at);
CREATE INDEX idx_audit_actor ON audit_log (actor_id, occurred_at);
CREATE TABLE api_keys (
    id {uuid} PRIMARY KEY,
    organization_id {uuid} NOT NULL REFERENCES organizations(id),
    user_id {uuid} NOT NULL REFERENCES users(id),
    name text NOT NULL,
    token_digest text NOT NULL UNIQUE,
    token_prefix text NOT NULL,
    roles {json} NOT NULL,
    expires_at {ts} NULL,
    last_used_at {ts} NULL,
    revoked_at {ts} NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE INDEX idx_api_keys_user ON api_keys (user_id);
CREATE TABLE sessions (
    id {uuid} PRIMARY KEY,
    user_id {uuid} NOT NULL REFERENCES users(id),
    token_digest text NOT NULL UNIQUE,
    expires_at {ts} NOT NULL,
    idle_expires_at {ts} NOT NULL,
    last_seen_at {ts} NOT NULL,
    revoked_at {ts} NULL,
    source_ip text NULL,
    user_agent text NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE INDEX idx_sessions_user ON sessions (user_id);
CREATE TABLE certificate_metadata (
    id {uuid} PRIMARY KEY,
    organization_id {uuid} NULL,
    ca_id {uuid} NOT NULL,
    profile_id {uuid} NULL,
    request_id {uuid} NULL,
    owner_id {uuid} NULL,
    common_name text NULL,
    sans {json} NOT NULL,
    serial_hex text NOT NULL,
    not_before {ts} NOT NULL,
    not_after {ts} NOT NULL,
    status text NOT NULL CHECK (status IN ('valid','revoked','on_hold','expired')),
    expiry_notices {json} NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE INDEX idx_certificate_metadata_org ON certificate_metadata (organization_id, status, not_after);
CREATE VIEW active_users_with_roles AS
    SELECT u.id AS user_id, u.organization_id, u.email, r.name AS role
    FROM users u JOIN user_roles ur ON ur.user_id = u.id JOIN roles r ON r.id = ur.role_id
    WHERE u.status = 'active' AND u.deleted_at IS NULL;
CREATE VIEW pending_approvals AS
    SELECT id, organization_id, request_id, requester_id, approvals_required, approvals_count, expires_at
    FROM workflow_instances WHERE status = 'pending_approval';
CREATE VIEW certificate_summary AS
    SELECT organization_id, status, COUNT(*) AS certificates, MIN(not_after) AS next_expiry
    FROM certificate_metadata GROUP BY organization_id, status;
"#;

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

/// The six system roles and what each may do (mirrors domain::role).
const ROLES: &[(&str, &str, &str)] = &[
    (
        "super_admin",
        "Everything, across all organisations",
        r#"["*"]"#,
    ),
    (
        "org_admin",
        "Manages the users of its own organisation",
        r#"["users:manage","cas:read"]"#,
    ),
    (
        "ca_admin",
        "Manages CAs and certificate profiles; revokes any certificate",
        r#"["cas:manage","profiles:manage","cas:read","certificates:revoke"]"#,
    ),
    (
        "approver",
        "Approves or rejects certificate requests",
        r#"["requests:approve","cas:read"]"#,
    ),
    (
        "requester",
        "Requests, renews and revokes own certificates",
        r#"["requests:create","cas:read"]"#,
    ),
    (
        "auditor",
        "Reads and verifies the audit trails",
        r#"["audit:read","cas:read"]"#,
    ),
];

/// Deterministic ids for the system roles, so every installation agrees.
fn role_id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{:012x}", n + 1)
}

fn seed_roles(backend: DatabaseBackend) -> Vec<String> {
    ROLES
        .iter()
        .enumerate()
        .map(|(i, (name, description, permissions))| {
            let (id, now, yes) = match backend {
                DatabaseBackend::Postgres => (format!("'{}'::uuid", role_id(i)), "now()".to_string(), "true"),
                _ => (
                    format!("X'{}'", role_id(i).replace('-', "")),
                    "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')".to_string(),
                    "1",
                ),
            };
            format!(
                "INSERT INTO roles (id, name, description, permissions, is_system, created_at, updated_at) \
                 VALUES ({id}, '{name}', '{description}', '{permissions}', {yes}, {now}, {now})"
            )
        })
        .collect()
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
        let mut all = statements(&render(TABLES, backend));
        all.extend(seed_roles(backend));
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
        sql::run(manager, &all).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let mut all: Vec<String> = [
            "certificate_summary",
            "pending_approvals",
            "active_users_with_roles",
        ]
        .iter()
        .map(|v| format!("DROP VIEW IF EXISTS {v}"))
        .collect();
        all.extend(
            DROP_ORDER
                .iter()
                .map(|t| format!("DROP TABLE IF EXISTS {t}")),
        );
        if backend == DatabaseBackend::Postgres {
            all.extend(sql::drop_pg_functions(PREFIX));
        }
        sql::run(manager, &all).await
    }
}
