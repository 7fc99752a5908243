//! clm_secure's migrator on real SQLite and PostgreSQL databases, sharing
//! one database with clm_core's (each keeps its own tracking table): every
//! table and view is created, the key lifecycle, no-un-revoke and
//! write-once triggers hold, the constraints that make issuance accountable
//! hold, and each `down` removes exactly its own objects so that `up` works
//! again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../migrations_core/tests/support/mod.rs"]
mod support;

use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::prelude::{Json, Uuid};
use sea_orm_migration::sea_orm::{DatabaseBackend, DatabaseConnection, Value};
use support::*;

const CORE_TABLES: &[&str] = &[
    "organizations",
    "users",
    "roles",
    "user_roles",
    "user_organizations",
    "policies",
    "workflows",
    "workflow_instances",
    "workflow_steps",
    "notifications",
    "audit_log",
    "api_keys",
    "sessions",
    "certificate_metadata",
    "webhooks",
    "webhook_deliveries",
    "certificate_expiry_notices",
    "audit_seals",
    "audit_checkpoints",
    "audit_purge_permits",
];
const CORE_VIEWS: &[&str] = &[
    "active_users_with_roles",
    "pending_approvals",
    "certificate_summary",
];
const TABLES: &[&str] = &[
    "encryption_keys",
    "certificate_authorities",
    "certificates",
    "private_keys",
    "certificate_requests",
    "certificate_revocations",
    "key_rotation_history",
    "secure_audit_log",
    "ca_crls",
    "ca_crl_parts",
    "ocsp_signers",
    "key_recoveries",
    "secure_audit_seals",
    "secure_audit_checkpoints",
    "secure_audit_purge_permits",
];
const VIEWS: &[&str] = &["active_certificates", "expiring_certificates"];

const KEY_STATUSES: &[&str] = &[
    "pending",
    "active",
    "deprecated",
    "disabled",
    "compromised",
    "destroyed",
];

/// The key lifecycle as `domain::KeyStatus` defines it.
fn key_may_become(from: &str, to: &str) -> bool {
    from == to
        || matches!(
            (from, to),
            ("pending", "active" | "disabled")
                | ("active", "deprecated" | "disabled")
                | ("deprecated", "active" | "disabled")
                | ("disabled", "active")
        )
        || (from != "destroyed" && matches!(to, "compromised" | "destroyed"))
}

#[tokio::test]
async fn sqlite() {
    on_sqlite(scenario).await;
}

#[tokio::test]
async fn postgres() {
    on_postgres("clm_test_secure_schema", scenario).await;
}

async fn scenario(db: DatabaseConnection) {
    let db = &db;
    // Both migrators in one database, each with its own tracking table.
    migrations_core::Migrator::up(db, None).await.unwrap();
    migrations_secure::Migrator::up(db, None).await.unwrap();
    migrations_core::Migrator::up(db, None).await.unwrap();
    migrations_secure::Migrator::up(db, None).await.unwrap();
    assert_eq!(
        tracking_tables(db).await,
        ["seaql_migrations_core", "seaql_migrations_secure"]
    );
    assert_eq!(
        count(db, "seaql_migrations_core").await.unwrap(),
        migrations_core::Migrator::migrations().len() as i64
    );
    assert_eq!(
        count(db, "seaql_migrations_secure").await.unwrap(),
        migrations_secure::Migrator::migrations().len() as i64
    );
    for rel in CORE_TABLES
        .iter()
        .chain(CORE_VIEWS)
        .chain(TABLES)
        .chain(VIEWS)
    {
        count(db, rel)
            .await
            .unwrap_or_else(|e| panic!("{rel} missing: {e}"));
    }
    assert_eq!(count(db, "roles").await.unwrap(), 6);

    key_lifecycle(db).await;
    let key = key(db, "active").await;
    updated_at_is_maintained(db, key).await;
    let ca = certificate_authority(db, key).await;
    certificates(db, ca).await;
    requests(db, ca).await;
    audit_is_write_once(db, "secure_audit_log").await;

    // Down of clm_secure leaves clm_core — and the trigger functions it
    // shares the database with — untouched.
    migrations_secure::Migrator::down(db, None).await.unwrap();
    for rel in TABLES.iter().chain(VIEWS) {
        assert!(count(db, rel).await.is_err(), "{rel} survived down");
    }
    assert_eq!(count(db, "roles").await.unwrap(), 6);
    audit_is_write_once(db, "audit_log").await;
    exec(db, "UPDATE roles SET description = description")
        .await
        .unwrap();

    migrations_core::Migrator::down(db, None).await.unwrap();
    assert_eq!(leftovers(db).await, Vec::<String>::new(), "down left these");
    migrations_core::Migrator::up(db, None).await.unwrap();
    migrations_secure::Migrator::up(db, None).await.unwrap();
    assert_eq!(count(db, "roles").await.unwrap(), 6);
    count(db, "expiring_certificates").await.unwrap();
}

/// Certificates stored before m20261206_000002_certificate_search are in
/// SQLite's new search table after the upgrade, with those stored after
/// it; the table holds subjects, no longer serials.
#[tokio::test]
async fn sqlite_search_is_rebuilt_with_subjects_only() {
    on_sqlite(|db| async move {
        let db = &db;
        migrations_core::Migrator::up(db, None).await.unwrap();
        let upgrade = migrations_secure::Migrator::migrations()
            .iter()
            .position(|m| m.name() == "m20261206_000002_certificate_search")
            .unwrap();
        migrations_secure::Migrator::up(db, Some(upgrade as u32))
            .await
            .unwrap();
        let ca = certificate_authority(db, key(db, "active").await).await;
        let store = |serial: &'static str| {
            insert(
                db,
                "certificates",
                certificate(Uuid::new_v4(), ca, serial, 30, false),
            )
        };
        for serial in ["4b01", "4b02"] {
            store(serial).await.unwrap();
        }
        migrations_secure::Migrator::up(db, None).await.unwrap();
        store("4b03").await.unwrap();

        let found = |phrase: &'static str| async move {
            let sql = format!(
                "SELECT subject FROM certificate_search \
                 WHERE certificate_search MATCH '\"{phrase}\"' ORDER BY subject"
            );
            rows(db, &sql)
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get::<String>("", "subject").unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(found("cn=4b").await, ["CN=4b01", "CN=4b02", "CN=4b03"]);
        let columns: Vec<String> = rows(
            db,
            "SELECT name FROM pragma_table_info('certificate_search')",
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("", "name").unwrap())
        .collect();
        assert_eq!(columns, ["id", "subject"]);
    })
    .await;
}

async fn insert_key(db: &DatabaseConnection, status: &str) -> Uuid {
    let id = Uuid::new_v4();
    insert(
        db,
        "encryption_keys",
        vec![
            ("id", id.into()),
            ("label", "k".into()),
            ("ckaid_hex", id.simple().to_string().into()),
            ("pkcs11_uri", format!("pkcs11:id=%{}", id.simple()).into()),
            ("purpose", "ca_signing".into()),
            ("algorithm", "ecdsa-p256".into()),
            ("status", status.into()),
            ("public_key_der", vec![0x30u8, 0x59].into()),
            ("created_at", long_ago().into()),
            ("updated_at", long_ago().into()),
        ],
    )
    .await
    .unwrap();
    id
}

async fn key(db: &DatabaseConnection, status: &str) -> Uuid {
    insert_key(db, status).await
}

async fn key_lifecycle(db: &DatabaseConnection) {
    for from in KEY_STATUSES {
        for to in KEY_STATUSES {
            let id = insert_key(db, from).await;
            let sql = format!(
                "UPDATE encryption_keys SET status = '{to}' WHERE ckaid_hex = '{}'",
                id.simple()
            );
            let outcome = exec(db, &sql).await;
            assert_eq!(
                outcome.is_ok(),
                key_may_become(from, to),
                "key status {from} → {to}: {outcome:?}"
            );
        }
    }
    assert!(
        insert(
            db,
            "encryption_keys",
            vec![
                ("id", Uuid::new_v4().into()),
                ("label", "k".into()),
                ("ckaid_hex", "dup".into()),
                ("pkcs11_uri", "pkcs11:id=%00".into()),
                ("purpose", "coffee".into()),
                ("algorithm", "ecdsa-p256".into()),
                ("status", "active".into()),
                ("created_at", now().into()),
                ("updated_at", now().into()),
            ],
        )
        .await
        .is_err(),
        "key purpose is checked"
    );
}

async fn updated_at_is_maintained(db: &DatabaseConnection, key: Uuid) {
    assert_eq!(
        timestamp(db, "encryption_keys", "updated_at", key)
            .await
            .unwrap(),
        long_ago()
    );
    exec(
        db,
        &format!(
            "UPDATE encryption_keys SET status = 'deprecated' WHERE ckaid_hex = '{}'",
            key.simple()
        ),
    )
    .await
    .unwrap();
    let touched = timestamp(db, "encryption_keys", "updated_at", key)
        .await
        .unwrap();
    assert!(
        now().signed_duration_since(touched).num_seconds().abs() < 60,
        "updated_at not maintained: {touched}"
    );
    assert_eq!(
        count(
            db,
            &format!(
                "encryption_keys WHERE ckaid_hex = '{}' AND updated_at > {}",
                key.simple(),
                a_minute_ago(db)
            )
        )
        .await
        .unwrap(),
        1,
        "the touched timestamp compares with SQL's now"
    );
    if db.get_database_backend() == DatabaseBackend::Sqlite {
        let text = sqlite_text(db, "encryption_keys", "updated_at", key)
            .await
            .unwrap();
        assert!(
            text.ends_with("+00:00") && text.as_bytes()[10] == b'T',
            "{text}"
        );
    }
    exec(
        db,
        &format!(
            "UPDATE encryption_keys SET status = 'active' WHERE ckaid_hex = '{}'",
            key.simple()
        ),
    )
    .await
    .unwrap();
}

async fn certificate_authority(db: &DatabaseConnection, key: Uuid) -> Uuid {
    let ca = |id: Uuid, name: &str, kind: &str, parent: Option<Uuid>| {
        vec![
            ("id", id.into()),
            ("name", name.into()),
            ("kind", kind.into()),
            ("parent_id", parent.into()),
            ("key_id", key.into()),
            ("subject", format!("CN={name}").into()),
            ("key_algorithm", "ecdsa-p256".into()),
            ("status", "active".into()),
            ("not_before", long_ago().into()),
            ("not_after", days_from_now(3650).into()),
            ("created_at", now().into()),
            ("updated_at", now().into()),
        ]
    };
    let root = Uuid::new_v4();
    insert(
        db,
        "certificate_authorities",
        ca(root, "root", "root", None),
    )
    .await
    .unwrap();
    assert!(
        insert(
            db,
            "certificate_authorities",
            ca(Uuid::new_v4(), "orphan", "intermediate", None)
        )
        .await
        .is_err(),
        "an intermediate has a parent"
    );
    assert!(
        insert(
            db,
            "certificate_authorities",
            ca(
                Uuid::new_v4(),
                "stray",
                "intermediate",
                Some(Uuid::new_v4())
            )
        )
        .await
        .is_err(),
        "the parent exists"
    );
    insert(
        db,
        "certificate_authorities",
        ca(Uuid::new_v4(), "issuing", "intermediate", Some(root)),
    )
    .await
    .unwrap();
    // The CA's own certificate: stored after the CA, then linked.
    let cert = Uuid::new_v4();
    insert(
        db,
        "certificates",
        certificate(cert, root, "01", 3650, true),
    )
    .await
    .unwrap();
    refused(
        db,
        &format!(
            "UPDATE certificate_authorities SET certificate_id = {} WHERE name = 'root'",
            uuid_sql(db, Uuid::new_v4())
        ),
        "a CA's certificate exists",
    )
    .await;
    exec(
        db,
        &format!(
            "UPDATE certificate_authorities SET certificate_id = {} WHERE name = 'root'",
            uuid_sql(db, cert)
        ),
    )
    .await
    .unwrap();
    root
}

fn certificate(
    id: Uuid,
    ca: Uuid,
    serial: &str,
    days: i64,
    is_ca: bool,
) -> Vec<(&'static str, Value)> {
    vec![
        ("id", id.into()),
        ("ca_id", ca.into()),
        ("serial_hex", serial.into()),
        ("subject", format!("CN={serial}").into()),
        (
            "sans",
            Json::Array(vec![Json::String(format!("{serial}.example.com"))]).into(),
        ),
        ("key_algorithm", "ecdsa-p256".into()),
        ("not_before", long_ago().into()),
        ("not_after", days_from_now(days).into()),
        ("status", "valid".into()),
        ("is_ca", is_ca.into()),
        ("certificate_der", vec![0x30u8, 0x82, 0x01, 0x00].into()),
        ("fingerprint_sha256", format!("fp-{id}").into()),
        ("created_at", now().into()),
        ("updated_at", now().into()),
    ]
}

/// A UUID as an SQL literal of the column's stored form.
fn uuid_sql(db: &DatabaseConnection, id: Uuid) -> String {
    match db.get_database_backend() {
        DatabaseBackend::Postgres => format!("'{id}'::uuid"),
        _ => format!("X'{}'", id.simple()),
    }
}

async fn certificates(db: &DatabaseConnection, ca: Uuid) {
    let soon = Uuid::new_v4();
    insert(db, "certificates", certificate(soon, ca, "4a01", 10, false))
        .await
        .unwrap();
    insert(
        db,
        "certificates",
        certificate(Uuid::new_v4(), ca, "4a02", 60, false),
    )
    .await
    .unwrap();
    assert!(
        insert(
            db,
            "certificates",
            certificate(Uuid::new_v4(), ca, "4a01", 10, false)
        )
        .await
        .is_err(),
        "a serial is unique per CA"
    );
    assert!(
        insert(
            db,
            "certificates",
            certificate(Uuid::new_v4(), Uuid::new_v4(), "4a03", 10, false)
        )
        .await
        .is_err(),
        "the issuing CA exists"
    );
    let mut backwards = certificate(Uuid::new_v4(), ca, "4a04", 10, false);
    backwards[6] = ("not_before", days_from_now(20).into());
    assert!(
        insert(db, "certificates", backwards).await.is_err(),
        "not_before < not_after"
    );

    assert_eq!(count(db, "active_certificates").await.unwrap(), 2);
    assert_eq!(
        count(db, "expiring_certificates WHERE serial_hex = '4a01'")
            .await
            .unwrap(),
        1,
        "expires in 10 days"
    );
    assert_eq!(count(db, "expiring_certificates").await.unwrap(), 1);

    refused(
        db,
        "UPDATE certificates SET status = 'revoked' WHERE serial_hex = '4a01'",
        "a revocation has a time",
    )
    .await;
    exec(
        db,
        &format!(
            "UPDATE certificates SET status = 'revoked', revoked_at = {}, \
             revocation_reason = 'keyCompromise' WHERE serial_hex = '4a01'",
            a_minute_ago(db)
        ),
    )
    .await
    .unwrap();
    for to in ["valid", "on_hold", "expired"] {
        refused(
            db,
            &format!("UPDATE certificates SET status = '{to}', revoked_at = NULL WHERE serial_hex = '4a01'"),
            "un-revoke",
        )
        .await;
    }
    // Other columns of a revoked certificate may still change.
    exec(
        db,
        "UPDATE certificates SET revocation_reason = 'superseded' WHERE serial_hex = '4a01'",
    )
    .await
    .unwrap();
    assert_eq!(
        count(db, "certificates WHERE status = 'revoked'")
            .await
            .unwrap(),
        1
    );
    assert_eq!(count(db, "active_certificates").await.unwrap(), 1);

    let revocation = |reason: &str| {
        vec![
            ("id", Uuid::new_v4().into()),
            ("certificate_id", soon.into()),
            ("ca_id", ca.into()),
            ("serial_hex", "4a01".into()),
            ("reason", reason.into()),
            ("revoked_at", now().into()),
            ("created_at", now().into()),
        ]
    };
    assert!(
        insert(db, "certificate_revocations", revocation("becauseICan"))
            .await
            .is_err(),
        "RFC 5280 reasons only"
    );
    insert(db, "certificate_revocations", revocation("keyCompromise"))
        .await
        .unwrap();
    assert!(
        insert(db, "certificate_revocations", revocation("superseded"))
            .await
            .is_err(),
        "one revocation per certificate"
    );
}

async fn requests(db: &DatabaseConnection, ca: Uuid) {
    let requester = Uuid::new_v4();
    let request = |serial: Option<&str>, key: Option<&str>, status: &str| {
        vec![
            ("id", Uuid::new_v4().into()),
            ("organization_id", Uuid::new_v4().into()),
            ("profile_id", Uuid::new_v4().into()),
            ("requester_id", requester.into()),
            ("ca_id", ca.into()),
            ("status", status.into()),
            ("csr_der", Some(vec![0x30u8, 0x00]).into()),
            ("subject", "CN=x".into()),
            ("sans", Json::Array(vec![]).into()),
            ("key_algorithm", "ecdsa-p256".into()),
            ("validity_days", 30.into()),
            ("reserved_serial_hex", serial.map(str::to_string).into()),
            ("idempotency_key", key.map(str::to_string).into()),
            ("created_at", now().into()),
            ("updated_at", now().into()),
        ]
    };
    insert(
        db,
        "certificate_requests",
        request(Some("7f01"), Some("k1"), "approved"),
    )
    .await
    .unwrap();
    assert!(
        insert(
            db,
            "certificate_requests",
            request(Some("7f01"), None, "approved")
        )
        .await
        .is_err(),
        "a reserved serial is unique per CA"
    );
    assert!(
        insert(
            db,
            "certificate_requests",
            request(None, Some("k1"), "pending_approval")
        )
        .await
        .is_err(),
        "an idempotency key is unique per requester"
    );
    // Many requests without a serial or key yet.
    for _ in 0..2 {
        insert(
            db,
            "certificate_requests",
            request(None, None, "pending_approval"),
        )
        .await
        .unwrap();
    }
    assert!(
        insert(db, "certificate_requests", request(None, None, "issued"))
            .await
            .is_err(),
        "an issued request names its certificate"
    );
    assert!(
        insert(db, "certificate_requests", request(None, None, "lost"))
            .await
            .is_err(),
        "request status is checked"
    );
}

async fn audit_is_write_once(db: &DatabaseConnection, table: &str) {
    insert(
        db,
        table,
        vec![
            ("id", Uuid::new_v4().into()),
            ("occurred_at", now().into()),
            ("actor_kind", "system".into()),
            ("action", "test".into()),
            ("outcome", "success".into()),
            ("details", Json::Object(Default::default()).into()),
        ],
    )
    .await
    .unwrap();
    refused(
        db,
        &format!("UPDATE {table} SET action = 'forged'"),
        "audit update",
    )
    .await;
    refused(db, &format!("DELETE FROM {table}"), "audit delete").await;
    assert_eq!(
        count(db, &format!("{table} WHERE action = 'test'"))
            .await
            .unwrap(),
        1
    );
}
