//! clm_core's migrator on real SQLite and PostgreSQL databases: every table
//! and view is created, the system roles are seeded, the triggers and
//! constraints hold, timestamps written by the triggers read back through
//! sea-orm, and `down` leaves nothing behind so that `up` works again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::prelude::{ChronoDateTimeUtc, Json, Uuid};
use sea_orm_migration::sea_orm::{DatabaseBackend, DatabaseConnection};
use support::*;

const TABLES: &[&str] = &[
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
    "client_certificate_bindings",
];
const VIEWS: &[&str] = &[
    "active_users_with_roles",
    "pending_approvals",
    "certificate_summary",
];
const ROLES: &[&str] = &[
    "super_admin",
    "org_admin",
    "ca_admin",
    "approver",
    "requester",
    "auditor",
];

#[tokio::test]
async fn sqlite() {
    on_sqlite(scenario).await;
}

#[tokio::test]
async fn postgres() {
    on_postgres("clm_test_core_schema", scenario).await;
}

async fn scenario(db: DatabaseConnection) {
    let db = &db;
    migrations_core::Migrator::up(db, None).await.unwrap();
    // A second run finds nothing to do.
    migrations_core::Migrator::up(db, None).await.unwrap();

    for rel in TABLES.iter().chain(VIEWS) {
        count(db, rel)
            .await
            .unwrap_or_else(|e| panic!("{rel} missing: {e}"));
    }
    assert_eq!(tracking_tables(db).await, ["seaql_migrations_core"]);
    assert_eq!(
        count(db, "seaql_migrations_core").await.unwrap(),
        migrations_core::Migrator::migrations().len() as i64
    );

    seeded_roles(db).await;
    let org = organization(db).await;
    updated_at_is_maintained(db, org).await;
    constraints_hold(db, org).await;
    audit_is_write_once(db).await;
    metadata_stays_revoked(db).await;
    views_read(db).await;

    migrations_core::Migrator::down(db, None).await.unwrap();
    assert_eq!(leftovers(db).await, Vec::<String>::new(), "down left these");
    migrations_core::Migrator::up(db, None).await.unwrap();
    assert_eq!(count(db, "roles").await.unwrap(), 6);
    assert!(!leftovers(db).await.is_empty());
}

async fn seeded_roles(db: &DatabaseConnection) {
    assert_eq!(count(db, "roles").await.unwrap(), 6);
    for (n, name) in ROLES.iter().enumerate() {
        let r = row(
            db,
            &format!(
                "SELECT id, description, permissions, is_system FROM roles WHERE name = '{name}'"
            ),
        )
        .await
        .unwrap();
        // Fixed ids, so every installation agrees on them.
        assert_eq!(
            r.try_get::<Uuid>("", "id").unwrap(),
            system_role(n),
            "{name}"
        );
        assert!(!r.try_get::<String>("", "description").unwrap().is_empty());
        let permissions = r.try_get::<Json>("", "permissions").unwrap();
        let permissions = permissions.as_array().expect("a JSON array");
        assert!(!permissions.is_empty() && permissions.iter().all(Json::is_string));
        assert!(r.try_get::<bool>("", "is_system").unwrap(), "{name}");
    }
    let created = row(db, "SELECT created_at FROM roles LIMIT 1")
        .await
        .unwrap();
    created
        .try_get::<ChronoDateTimeUtc>("", "created_at")
        .expect("seeded timestamps read back as DateTimeUtc");
}

async fn organization(db: &DatabaseConnection) -> Uuid {
    let id = Uuid::new_v4();
    insert(
        db,
        "organizations",
        vec![
            ("id", id.into()),
            ("name", format!("org-{id}").into()),
            ("slug", format!("org-{}", id.simple()).into()),
            ("status", "active".into()),
            ("settings", Json::Object(Default::default()).into()),
            ("created_at", long_ago().into()),
            ("updated_at", long_ago().into()),
        ],
    )
    .await
    .unwrap();
    id
}

async fn updated_at_is_maintained(db: &DatabaseConnection, org: Uuid) {
    exec(
        db,
        "UPDATE organizations SET status = 'suspended' WHERE status = 'active'",
    )
    .await
    .unwrap();
    // The trigger's value reads back through sea-orm as a DateTimeUtc …
    let touched = timestamp(db, "organizations", "updated_at", org)
        .await
        .unwrap();
    let age = now().signed_duration_since(touched).num_seconds().abs();
    assert!(age < 60, "updated_at not maintained: {touched}");
    // … and on SQLite is text of the shape sqlx writes, so that the two
    // compare correctly as text.
    if db.get_database_backend() == DatabaseBackend::Sqlite {
        let text = sqlite_text(db, "organizations", "updated_at", org)
            .await
            .unwrap();
        assert!(
            text.len() == "2026-01-01T00:00:00.000+00:00".len()
                && text.as_bytes()[10] == b'T'
                && text.ends_with("+00:00")
                && chrono::DateTime::parse_from_rfc3339(&text).is_ok(),
            "trigger wrote {text}"
        );
        let written = sqlite_text(db, "roles", "created_at", system_role(0))
            .await
            .unwrap();
        assert!(
            written.as_bytes()[10] == b'T' && written.ends_with("+00:00"),
            "sqlx wrote {written}"
        );
    }
    // A writer that sets updated_at itself keeps its value.
    exec(
        db,
        &format!(
            "UPDATE organizations SET status = 'active', updated_at = created_at WHERE slug = 'org-{}'",
            org.simple()
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        timestamp(db, "organizations", "updated_at", org)
            .await
            .unwrap(),
        long_ago()
    );
}

fn system_role(n: usize) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | (n as u128 + 1))
}

async fn constraints_hold(db: &DatabaseConnection, org: Uuid) {
    refused(
        db,
        "UPDATE organizations SET status = 'gone'",
        "organisation status",
    )
    .await;
    let user = |email: &str, org: Uuid| {
        vec![
            ("id", Uuid::new_v4().into()),
            ("organization_id", org.into()),
            ("email", email.into()),
            ("password_hash", "$argon2id$…".into()),
            ("status", "active".into()),
            ("created_at", now().into()),
            ("updated_at", now().into()),
        ]
    };
    insert(db, "users", user("a@example.com", org))
        .await
        .unwrap();
    assert!(
        insert(db, "users", user("a@example.com", org))
            .await
            .is_err(),
        "e-mail unique"
    );
    assert!(
        insert(db, "users", user("B@example.com", org))
            .await
            .is_err(),
        "e-mail stored lower-case"
    );
    assert!(
        insert(db, "users", user("c@example.com", Uuid::new_v4()))
            .await
            .is_err(),
        "users.organization_id references organizations"
    );
    let policy = |name: &str, approvals: i32| {
        vec![
            ("id", Uuid::new_v4().into()),
            ("organization_id", org.into()),
            ("name", name.into()),
            ("policy_type", "certificate_profile".into()),
            ("ca_id", Uuid::new_v4().into()),
            ("key_algorithms", Json::Array(vec![]).into()),
            ("allowed_dns_suffixes", Json::Array(vec![]).into()),
            ("max_validity_days", 90.into()),
            ("extended_key_usages", Json::Array(vec![]).into()),
            ("required_approvals", approvals.into()),
            ("approver_roles", Json::Array(vec![]).into()),
            ("status", "active".into()),
            ("created_at", now().into()),
            ("updated_at", now().into()),
        ]
    };
    insert(db, "policies", policy("web", 2)).await.unwrap();
    assert!(
        insert(db, "policies", policy("web", 0)).await.is_err(),
        "profile names unique per organisation"
    );
    assert!(
        insert(db, "policies", policy("many", 6)).await.is_err(),
        "at most five approvals"
    );
}

async fn audit_is_write_once(db: &DatabaseConnection) {
    insert(
        db,
        "audit_log",
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
    refused(db, "UPDATE audit_log SET action = 'forged'", "audit update").await;
    refused(db, "DELETE FROM audit_log", "audit delete").await;
    assert_eq!(
        count(db, "audit_log WHERE action = 'test'").await.unwrap(),
        1
    );
}

async fn metadata_stays_revoked(db: &DatabaseConnection) {
    let id = Uuid::new_v4();
    insert(
        db,
        "certificate_metadata",
        vec![
            ("id", id.into()),
            ("ca_id", Uuid::new_v4().into()),
            ("sans", Json::Array(vec![]).into()),
            ("serial_hex", "4a01".into()),
            ("not_before", long_ago().into()),
            ("not_after", days_from_now(10).into()),
            ("status", "valid".into()),
            ("created_at", now().into()),
            ("updated_at", now().into()),
        ],
    )
    .await
    .unwrap();
    // Hold and release are ordinary transitions …
    exec(db, "UPDATE certificate_metadata SET status = 'on_hold'")
        .await
        .unwrap();
    exec(db, "UPDATE certificate_metadata SET status = 'valid'")
        .await
        .unwrap();
    exec(db, "UPDATE certificate_metadata SET status = 'revoked'")
        .await
        .unwrap();
    // … revocation is final.
    for to in ["valid", "on_hold", "expired"] {
        refused(
            db,
            &format!("UPDATE certificate_metadata SET status = '{to}'"),
            "un-revoke",
        )
        .await;
    }
    exec(
        db,
        "UPDATE certificate_metadata SET common_name = 'still revoked'",
    )
    .await
    .unwrap();
    assert_eq!(
        count(db, "certificate_metadata WHERE status = 'revoked'")
            .await
            .unwrap(),
        1
    );
    let _ = timestamp(db, "certificate_metadata", "not_after", id)
        .await
        .unwrap();
}

async fn views_read(db: &DatabaseConnection) {
    assert_eq!(count(db, "active_users_with_roles").await.unwrap(), 0);
    assert_eq!(count(db, "pending_approvals").await.unwrap(), 0);
    assert_eq!(
        count(db, "certificate_summary WHERE status = 'revoked'")
            .await
            .unwrap(),
        1
    );
}
