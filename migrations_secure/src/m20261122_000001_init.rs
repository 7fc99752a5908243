//! clm_secure, first version: every table, index, constraint, trigger and
//! view. See docs/database-secure.md for why each exists.

use migrations_core::sql::{self, render, statements};
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

const PREFIX: &str = "clm_secure";

const TABLES: &str = r#"
CREATE TABLE encryption_keys (
    id {uuid} PRIMARY KEY,
    label text NOT NULL,
    ckaid_hex text NOT NULL UNIQUE,
    pkcs11_uri text NOT NULL,
    purpose text NOT NULL CHECK (purpose IN ('ca_signing','kek','audit_mac','ocsp_signing')),
    algorithm text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending','active','deprecated','disabled','compromised','destroyed')),
    version integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    parent_key_id {uuid} NULL REFERENCES encryption_keys(id),
    organization_id {uuid} NULL,
    public_key_der {bytes} NULL,
    activated_at {ts} NULL,
    deprecated_at {ts} NULL,
    destroyed_at {ts} NULL,
    rollback_expires_at {ts} NULL,
    metadata {json} NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE INDEX idx_encryption_keys_purpose_status ON encryption_keys (purpose, status, version);
CREATE TABLE certificate_authorities (
    id {uuid} PRIMARY KEY,
    name text NOT NULL UNIQUE,
    kind text NOT NULL CHECK (kind IN ('root','intermediate')),
    parent_id {uuid} NULL REFERENCES certificate_authorities(id),
    organization_id {uuid} NULL,
    key_id {uuid} NOT NULL REFERENCES encryption_keys(id),
    certificate_id {uuid} NULL,
    subject text NOT NULL,
    key_algorithm text NOT NULL,
    status text NOT NULL CHECK (status IN ('active','retired','disabled')),
    crl_number {bigint} NOT NULL DEFAULT 0,
    not_before {ts} NOT NULL,
    not_after {ts} NOT NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    CHECK ((kind = 'root') = (parent_id IS NULL))
);
CREATE TABLE certificates (
    id {uuid} PRIMARY KEY,
    organization_id {uuid} NULL,
    ca_id {uuid} NOT NULL REFERENCES certificate_authorities(id),
    request_id {uuid} NULL,
    profile_id {uuid} NULL,
    owner_id {uuid} NULL,
    serial_hex text NOT NULL,
    subject text NOT NULL,
    sans {json} NOT NULL,
    key_algorithm text NOT NULL,
    not_before {ts} NOT NULL,
    not_after {ts} NOT NULL,
    status text NOT NULL CHECK (status IN ('valid','revoked','on_hold','expired')),
    is_ca {bool} NOT NULL DEFAULT false,
    certificate_der {bytes} NOT NULL,
    fingerprint_sha256 text NOT NULL UNIQUE,
    replaces_certificate_id {uuid} NULL REFERENCES certificates(id),
    revoked_at {ts} NULL,
    revocation_reason text NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    CHECK (not_before < not_after),
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL) OR status = 'on_hold')
);
CREATE UNIQUE INDEX uq_certificates_ca_serial ON certificates (ca_id, serial_hex);
CREATE INDEX idx_certificates_org_created ON certificates (organization_id, created_at);
CREATE INDEX idx_certificates_status_not_after ON certificates (status, not_after);
CREATE INDEX idx_certificates_request ON certificates (request_id);
CREATE TABLE private_keys (
    id {uuid} PRIMARY KEY,
    certificate_id {uuid} NOT NULL UNIQUE REFERENCES certificates(id),
    organization_id {uuid} NOT NULL,
    kek_id {uuid} NOT NULL REFERENCES encryption_keys(id),
    kek_version integer NOT NULL,
    wrap_mechanism text NOT NULL,
    wrapped_key {bytes} NOT NULL,
    key_algorithm text NOT NULL,
    status text NOT NULL CHECK (status IN ('archived','destroyed')),
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE INDEX idx_private_keys_kek ON private_keys (kek_id, kek_version);
CREATE TABLE certificate_requests (
    id {uuid} PRIMARY KEY,
    organization_id {uuid} NOT NULL,
    profile_id {uuid} NOT NULL,
    requester_id {uuid} NOT NULL,
    ca_id {uuid} NOT NULL REFERENCES certificate_authorities(id),
    status text NOT NULL CHECK (status IN ('pending_approval','approved','issued','rejected','cancelled','expired','failed')),
    csr_der {bytes} NULL,
    subject text NOT NULL,
    sans {json} NOT NULL,
    key_algorithm text NOT NULL,
    validity_days integer NOT NULL CHECK (validity_days > 0),
    reserved_serial_hex text NULL,
    tbs_der {bytes} NULL,
    certificate_id {uuid} NULL REFERENCES certificates(id),
    replaces_certificate_id {uuid} NULL,
    failure_reason text NULL,
    idempotency_key text NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    CHECK (status <> 'issued' OR certificate_id IS NOT NULL)
);
CREATE UNIQUE INDEX uq_requests_ca_serial ON certificate_requests (ca_id, reserved_serial_hex);
CREATE UNIQUE INDEX uq_requests_idempotency ON certificate_requests (requester_id, idempotency_key);
CREATE INDEX idx_requests_org_status ON certificate_requests (organization_id, status, created_at);
CREATE TABLE certificate_revocations (
    id {uuid} PRIMARY KEY,
    certificate_id {uuid} NOT NULL UNIQUE REFERENCES certificates(id),
    ca_id {uuid} NOT NULL REFERENCES certificate_authorities(id),
    serial_hex text NOT NULL,
    reason text NOT NULL CHECK (reason IN ('unspecified','keyCompromise','cACompromise','affiliationChanged','superseded','cessationOfOperation','certificateHold','removeFromCRL','privilegeWithdrawn','aACompromise')),
    revoked_at {ts} NOT NULL,
    invalidity_date {ts} NULL,
    revoked_by {uuid} NULL,
    created_at {ts} NOT NULL
);
CREATE INDEX idx_revocations_ca ON certificate_revocations (ca_id, revoked_at);
CREATE TABLE key_rotation_history (
    id {uuid} PRIMARY KEY,
    key_purpose text NOT NULL,
    old_key_id {uuid} NULL REFERENCES encryption_keys(id),
    new_key_id {uuid} NOT NULL REFERENCES encryption_keys(id),
    status text NOT NULL CHECK (status IN ('running','completed','failed','rolled_back')),
    total_count {bigint} NOT NULL DEFAULT 0,
    rewrapped_count {bigint} NOT NULL DEFAULT 0,
    initiated_by {uuid} NULL,
    error text NULL,
    started_at {ts} NOT NULL,
    finished_at {ts} NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE TABLE secure_audit_log (
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
CREATE INDEX idx_secure_audit_occurred ON secure_audit_log (occurred_at);
CREATE INDEX idx_secure_audit_org ON secure_audit_log (organization_id, occurred_at);
CREATE INDEX idx_secure_audit_target ON secure_audit_log (target_type, target_id);
CREATE VIEW active_certificates AS
    SELECT id, organization_id, ca_id, serial_hex, subject, not_before, not_after
    FROM certificates WHERE status = 'valid' AND is_ca = false;
"#;

/// Allowed `encryption_keys.status` transitions (domain::KeyStatus).
const KEY_TRANSITION_OK: &str = "OLD.status = NEW.status \
    OR (OLD.status = 'pending' AND NEW.status IN ('active','disabled')) \
    OR (OLD.status = 'active' AND NEW.status IN ('deprecated','disabled')) \
    OR (OLD.status = 'deprecated' AND NEW.status IN ('active','disabled')) \
    OR (OLD.status = 'disabled' AND NEW.status = 'active') \
    OR (OLD.status <> 'destroyed' AND NEW.status IN ('compromised','destroyed'))";

const TOUCHED: &[&str] = &[
    "encryption_keys",
    "certificate_authorities",
    "certificates",
    "private_keys",
    "certificate_requests",
    "key_rotation_history",
];

const DROP_ORDER: &[&str] = &[
    "secure_audit_log",
    "key_rotation_history",
    "certificate_revocations",
    "certificate_requests",
    "private_keys",
    "certificates",
    "certificate_authorities",
    "encryption_keys",
];

fn expiring_view(backend: DatabaseBackend) -> String {
    let soon = match backend {
        DatabaseBackend::Postgres => "now() + interval '30 days'".to_string(),
        _ => "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '+30 days')".to_string(),
    };
    format!(
        "CREATE VIEW expiring_certificates AS SELECT id, organization_id, ca_id, serial_hex, subject, not_after \
         FROM certificates WHERE status = 'valid' AND is_ca = false AND not_after <= {soon}"
    )
}

fn key_status_trigger(backend: DatabaseBackend) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![
            format!(
                "CREATE OR REPLACE FUNCTION {PREFIX}_key_status() RETURNS trigger AS $$ BEGIN \
                 IF NOT ({KEY_TRANSITION_OK}) THEN \
                 RAISE EXCEPTION 'key status may not change from % to %', OLD.status, NEW.status; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql"
            ),
            format!(
                "CREATE TRIGGER encryption_keys_status BEFORE UPDATE OF status ON encryption_keys \
                 FOR EACH ROW EXECUTE FUNCTION {PREFIX}_key_status()"
            ),
        ],
        _ => vec![format!(
            "CREATE TRIGGER encryption_keys_status BEFORE UPDATE OF status ON encryption_keys \
             WHEN NOT ({KEY_TRANSITION_OK}) \
             BEGIN SELECT RAISE(ABORT, 'key status transition not allowed'); END"
        )],
    }
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
        all.push(expiring_view(backend));
        if backend == DatabaseBackend::Postgres {
            all.extend(sql::pg_functions(PREFIX));
        }
        for table in TOUCHED {
            all.extend(sql::touch_trigger(PREFIX, table, backend));
        }
        all.extend(sql::write_once_trigger(PREFIX, "secure_audit_log", backend));
        all.extend(sql::no_unrevoke_trigger(PREFIX, "certificates", backend));
        all.extend(key_status_trigger(backend));
        sql::run(manager, &all).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let mut all = vec![
            "DROP VIEW IF EXISTS expiring_certificates".to_string(),
            "DROP VIEW IF EXISTS active_certificates".to_string(),
        ];
        all.extend(
            DROP_ORDER
                .iter()
                .map(|t| format!("DROP TABLE IF EXISTS {t}")),
        );
        if backend == DatabaseBackend::Postgres {
            all.extend(sql::drop_pg_functions(PREFIX));
            all.push(format!("DROP FUNCTION IF EXISTS {PREFIX}_key_status()"));
        }
        sql::run(manager, &all).await
    }
}
