//! clm_secure, first version: every table, index, constraint, trigger and
//! view. docs/database-secure.md says why each exists.

use migrations_core::sql::{
    self, audit_table, created_at, fk, id, index, one_of, rule, unique, updated_at,
};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, blob, blob_null, boolean, integer, json_binary, json_binary_null, text, text_null,
    text_uniq, timestamp_with_time_zone as ts, timestamp_with_time_zone_null as ts_null, uuid,
    uuid_null, uuid_uniq,
};
use sea_orm_migration::sea_orm::DatabaseBackend;

const PREFIX: &str = "clm_secure";

/// A CA names its own certificate, and every certificate names its CA: a
/// cycle PostgreSQL can only close once both tables exist.
const CA_CERTIFICATE_FK: &str = "fk_certificate_authorities_certificate_id";

fn tables(backend: DatabaseBackend) -> Vec<TableCreateStatement> {
    let mut ca = Table::create()
        .table("certificate_authorities")
        .col(id())
        .col(text_uniq("name"))
        .col(text("kind"))
        .col(uuid_null("parent_id"))
        .col(uuid_null("organization_id"))
        .col(uuid("key_id"))
        .col(uuid_null("certificate_id"))
        .col(text("subject"))
        .col(text("key_algorithm"))
        .col(text("status"))
        .col(big_integer("crl_number").default(0))
        .col(ts("not_before"))
        .col(ts("not_after"))
        .col(created_at())
        .col(updated_at())
        .foreign_key(&mut fk(
            "certificate_authorities",
            "parent_id",
            "certificate_authorities",
        ))
        .foreign_key(&mut fk(
            "certificate_authorities",
            "key_id",
            "encryption_keys",
        ))
        .check(one_of(
            "certificate_authorities",
            "kind",
            &["root", "intermediate"],
        ))
        .check(one_of(
            "certificate_authorities",
            "status",
            &["active", "retired", "disabled"],
        ))
        .check(rule(
            "certificate_authorities",
            "parent",
            "(kind = 'root') = (parent_id IS NULL)",
        ))
        .check(rule(
            "certificate_authorities",
            "crl_number",
            "crl_number >= 0",
        ))
        .to_owned();
    // SQLite accepts a reference to a table that does not exist yet, and
    // cannot add one later; PostgreSQL is the other way round.
    if backend != DatabaseBackend::Postgres {
        ca.foreign_key(&mut ca_certificate_fk());
    }

    vec![
        Table::create()
            .table("encryption_keys")
            .col(id())
            .col(text("label"))
            .col(text_uniq("ckaid_hex"))
            .col(text("pkcs11_uri"))
            .col(text("purpose"))
            .col(text("algorithm"))
            .col(text("status"))
            .col(integer("version").default(1))
            .col(uuid_null("parent_key_id"))
            .col(uuid_null("organization_id"))
            .col(blob_null("public_key_der"))
            .col(ts_null("activated_at"))
            .col(ts_null("deprecated_at"))
            .col(ts_null("destroyed_at"))
            .col(ts_null("rollback_expires_at"))
            .col(json_binary_null("metadata"))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk(
                "encryption_keys",
                "parent_key_id",
                "encryption_keys",
            ))
            .check(one_of(
                "encryption_keys",
                "purpose",
                &["ca_signing", "kek", "audit_mac", "ocsp_signing"],
            ))
            .check(one_of(
                "encryption_keys",
                "status",
                &[
                    "pending",
                    "active",
                    "deprecated",
                    "disabled",
                    "compromised",
                    "destroyed",
                ],
            ))
            .check(rule("encryption_keys", "version", "version >= 1"))
            .to_owned(),
        ca,
        Table::create()
            .table("certificates")
            .col(id())
            .col(uuid_null("organization_id"))
            .col(uuid("ca_id"))
            .col(uuid_null("request_id"))
            .col(uuid_null("profile_id"))
            .col(uuid_null("owner_id"))
            .col(text("serial_hex"))
            .col(text("subject"))
            .col(json_binary("sans"))
            .col(text("key_algorithm"))
            .col(ts("not_before"))
            .col(ts("not_after"))
            .col(text("status"))
            .col(boolean("is_ca").default(false))
            .col(blob("certificate_der"))
            .col(text_uniq("fingerprint_sha256"))
            .col(uuid_null("replaces_certificate_id"))
            .col(ts_null("revoked_at"))
            .col(text_null("revocation_reason"))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk("certificates", "ca_id", "certificate_authorities"))
            .foreign_key(&mut fk(
                "certificates",
                "replaces_certificate_id",
                "certificates",
            ))
            .check(one_of(
                "certificates",
                "status",
                &["valid", "revoked", "on_hold", "expired"],
            ))
            .check(rule("certificates", "validity", "not_before < not_after"))
            // A revoked certificate says when; a held one may or may not.
            .check(rule(
                "certificates",
                "revoked_at",
                "(status = 'revoked') = (revoked_at IS NOT NULL) OR status = 'on_hold'",
            ))
            .to_owned(),
        Table::create()
            .table("private_keys")
            .col(id())
            .col(uuid_uniq("certificate_id"))
            .col(uuid("organization_id"))
            .col(uuid("kek_id"))
            .col(integer("kek_version"))
            .col(text("wrap_mechanism"))
            .col(blob("wrapped_key"))
            .col(text("key_algorithm"))
            .col(text("status"))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk("private_keys", "certificate_id", "certificates"))
            .foreign_key(&mut fk("private_keys", "kek_id", "encryption_keys"))
            .check(one_of("private_keys", "status", &["archived", "destroyed"]))
            .to_owned(),
        Table::create()
            .table("certificate_requests")
            .col(id())
            .col(uuid("organization_id"))
            .col(uuid("profile_id"))
            .col(uuid("requester_id"))
            .col(uuid("ca_id"))
            .col(text("status"))
            .col(blob_null("csr_der"))
            .col(text("subject"))
            .col(json_binary("sans"))
            .col(text("key_algorithm"))
            .col(integer("validity_days"))
            .col(text_null("reserved_serial_hex"))
            .col(blob_null("tbs_der"))
            .col(uuid_null("certificate_id"))
            .col(uuid_null("replaces_certificate_id"))
            .col(text_null("failure_reason"))
            .col(text_null("idempotency_key"))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk(
                "certificate_requests",
                "ca_id",
                "certificate_authorities",
            ))
            .foreign_key(&mut fk(
                "certificate_requests",
                "certificate_id",
                "certificates",
            ))
            .foreign_key(&mut fk(
                "certificate_requests",
                "replaces_certificate_id",
                "certificates",
            ))
            .check(one_of(
                "certificate_requests",
                "status",
                &[
                    "pending_approval",
                    "approved",
                    "issued",
                    "rejected",
                    "cancelled",
                    "expired",
                    "failed",
                ],
            ))
            .check(rule(
                "certificate_requests",
                "validity_days",
                "validity_days > 0",
            ))
            .check(rule(
                "certificate_requests",
                "issued",
                "status <> 'issued' OR certificate_id IS NOT NULL",
            ))
            .to_owned(),
        Table::create()
            .table("certificate_revocations")
            .col(id())
            .col(uuid_uniq("certificate_id"))
            .col(uuid("ca_id"))
            .col(text("serial_hex"))
            .col(text("reason"))
            .col(ts("revoked_at"))
            .col(ts_null("invalidity_date"))
            .col(uuid_null("revoked_by"))
            .col(created_at())
            .foreign_key(&mut fk(
                "certificate_revocations",
                "certificate_id",
                "certificates",
            ))
            .foreign_key(&mut fk(
                "certificate_revocations",
                "ca_id",
                "certificate_authorities",
            ))
            // RFC 5280 CRLReason names; value 7 is unused by the RFC.
            .check(one_of(
                "certificate_revocations",
                "reason",
                &[
                    "unspecified",
                    "keyCompromise",
                    "cACompromise",
                    "affiliationChanged",
                    "superseded",
                    "cessationOfOperation",
                    "certificateHold",
                    "removeFromCRL",
                    "privilegeWithdrawn",
                    "aACompromise",
                ],
            ))
            .to_owned(),
        Table::create()
            .table("key_rotation_history")
            .col(id())
            .col(text("key_purpose"))
            .col(uuid_null("old_key_id"))
            .col(uuid("new_key_id"))
            .col(text("status"))
            .col(big_integer("total_count").default(0))
            .col(big_integer("rewrapped_count").default(0))
            .col(uuid_null("initiated_by"))
            .col(text_null("error"))
            .col(ts("started_at"))
            .col(ts_null("finished_at"))
            .col(created_at())
            .col(updated_at())
            .foreign_key(&mut fk(
                "key_rotation_history",
                "old_key_id",
                "encryption_keys",
            ))
            .foreign_key(&mut fk(
                "key_rotation_history",
                "new_key_id",
                "encryption_keys",
            ))
            .check(one_of(
                "key_rotation_history",
                "status",
                &["running", "completed", "failed", "rolled_back"],
            ))
            .check(rule(
                "key_rotation_history",
                "counts",
                "rewrapped_count >= 0 AND rewrapped_count <= total_count",
            ))
            .to_owned(),
        audit_table("secure_audit_log"),
    ]
}

fn ca_certificate_fk() -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(CA_CERTIFICATE_FK)
        .from("certificate_authorities", "certificate_id")
        .to("certificates", "id")
        .to_owned()
}

fn indexes() -> Vec<IndexCreateStatement> {
    vec![
        index(
            "idx_encryption_keys_purpose_status",
            "encryption_keys",
            &["purpose", "status", "version"],
        ),
        // A serial is never used twice by one CA (RFC 5280 4.1.2.2).
        unique(
            "uq_certificates_ca_serial",
            "certificates",
            &["ca_id", "serial_hex"],
        ),
        index(
            "idx_certificates_org_created",
            "certificates",
            &["organization_id", "created_at"],
        ),
        index(
            "idx_certificates_status_not_after",
            "certificates",
            &["status", "not_after"],
        ),
        index("idx_certificates_request", "certificates", &["request_id"]),
        index(
            "idx_private_keys_kek",
            "private_keys",
            &["kek_id", "kek_version"],
        ),
        // Serials are reserved before signing; the reservation is as
        // unique as the serial itself.
        unique(
            "uq_requests_ca_serial",
            "certificate_requests",
            &["ca_id", "reserved_serial_hex"],
        ),
        // A retried POST with the same Idempotency-Key finds the first
        // request instead of creating a second.
        unique(
            "uq_requests_idempotency",
            "certificate_requests",
            &["requester_id", "idempotency_key"],
        ),
        index(
            "idx_requests_org_status",
            "certificate_requests",
            &["organization_id", "status", "created_at"],
        ),
        index(
            "idx_revocations_ca",
            "certificate_revocations",
            &["ca_id", "revoked_at"],
        ),
        index(
            "idx_key_rotation_new_key",
            "key_rotation_history",
            &["new_key_id", "started_at"],
        ),
        index(
            "idx_secure_audit_occurred",
            "secure_audit_log",
            &["occurred_at"],
        ),
        index(
            "idx_secure_audit_org",
            "secure_audit_log",
            &["organization_id", "occurred_at"],
        ),
        index(
            "idx_secure_audit_target",
            "secure_audit_log",
            &["target_type", "target_id"],
        ),
    ]
}

/// Allowed `encryption_keys.status` transitions (`domain::KeyStatus`):
/// pending→active|disabled, active→deprecated|disabled,
/// deprecated→active|disabled, disabled→active, anything but destroyed →
/// compromised|destroyed; destroyed is final.
const KEY_TRANSITION_OK: &str = "OLD.status = NEW.status \
    OR (OLD.status = 'pending' AND NEW.status IN ('active','disabled')) \
    OR (OLD.status = 'active' AND NEW.status IN ('deprecated','disabled')) \
    OR (OLD.status = 'deprecated' AND NEW.status IN ('active','disabled')) \
    OR (OLD.status = 'disabled' AND NEW.status = 'active') \
    OR (OLD.status <> 'destroyed' AND NEW.status IN ('compromised','destroyed'))";

/// Tables whose rows change and so carry a maintained `updated_at`.
const TOUCHED: &[&str] = &[
    "encryption_keys",
    "certificate_authorities",
    "certificates",
    "private_keys",
    "certificate_requests",
    "key_rotation_history",
];

/// Dependants before what they reference (the CA ↔ certificate cycle is
/// opened first, see `down`).
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

fn views(backend: DatabaseBackend) -> Vec<String> {
    let soon = match backend {
        DatabaseBackend::Postgres => "now() + interval '30 days'".to_string(),
        _ => "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '+30 days')".to_string(),
    };
    vec![
        "CREATE VIEW active_certificates AS \
         SELECT id, organization_id, ca_id, serial_hex, subject, not_before, not_after \
         FROM certificates WHERE status = 'valid' AND is_ca = false"
            .to_string(),
        format!(
            "CREATE VIEW expiring_certificates AS \
             SELECT id, organization_id, ca_id, serial_hex, subject, not_after \
             FROM certificates WHERE status = 'valid' AND is_ca = false AND not_after <= {soon}"
        ),
    ]
}

fn key_status_trigger(backend: DatabaseBackend) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![
            format!(
                "CREATE OR REPLACE FUNCTION {PREFIX}_key_status() RETURNS trigger AS $$ BEGIN \
                 IF NOT ({KEY_TRANSITION_OK}) THEN \
                 RAISE EXCEPTION 'key status may not change from % to %', OLD.status, NEW.status; \
                 END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
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

fn triggers(backend: DatabaseBackend) -> Vec<String> {
    let mut all = Vec::new();
    if backend == DatabaseBackend::Postgres {
        all.extend(sql::pg_functions(PREFIX));
    }
    for table in TOUCHED {
        all.extend(sql::touch_trigger(PREFIX, table, backend));
    }
    all.extend(sql::write_once_trigger(PREFIX, "secure_audit_log", backend));
    all.extend(sql::no_unrevoke_trigger(PREFIX, "certificates", backend));
    all.extend(key_status_trigger(backend));
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
        sql::create(manager, tables(backend), indexes()).await?;
        if backend == DatabaseBackend::Postgres {
            manager.create_foreign_key(ca_certificate_fk()).await?;
        }
        sql::run(manager, &triggers(backend)).await?;
        sql::run(manager, &views(backend)).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        sql::drop_views(manager, &["expiring_certificates", "active_certificates"]).await?;
        if backend == DatabaseBackend::Postgres {
            manager
                .drop_foreign_key(
                    ForeignKey::drop()
                        .name(CA_CERTIFICATE_FK)
                        .table("certificate_authorities")
                        .to_owned(),
                )
                .await?;
        } else if manager.has_table("certificate_authorities").await? {
            // With foreign keys on, SQLite's DROP TABLE deletes the rows
            // first and refuses while a CA still points at its certificate.
            sql::run(
                manager,
                &["UPDATE certificate_authorities SET certificate_id = NULL".to_string()],
            )
            .await?;
        }
        sql::drop_tables(manager, DROP_ORDER).await?;
        if backend == DatabaseBackend::Postgres {
            let mut functions = sql::drop_pg_functions(PREFIX);
            functions.push(format!("DROP FUNCTION IF EXISTS {PREFIX}_key_status()"));
            sql::run(manager, &functions).await?;
        }
        Ok(())
    }
}
