//! Both migrators against real SQLite and PostgreSQL databases: everything
//! is created, both coexist in one database with their own tracking tables,
//! the triggers hold, and `down` removes everything so that `up` works
//! again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::prelude::{ChronoDateTimeUtc, Json, Uuid};
use sea_orm_migration::sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbErr, Value};
use sea_orm_migration::sea_query::{Alias, Expr, Query};

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
];
const CORE_VIEWS: &[&str] = &[
    "active_users_with_roles",
    "pending_approvals",
    "certificate_summary",
];
const SECURE_TABLES: &[&str] = &[
    "encryption_keys",
    "certificate_authorities",
    "certificates",
    "private_keys",
    "certificate_requests",
    "certificate_revocations",
    "key_rotation_history",
    "secure_audit_log",
];
const SECURE_VIEWS: &[&str] = &["active_certificates", "expiring_certificates"];

async fn count(db: &DatabaseConnection, relation: &str) -> Result<i64, DbErr> {
    let row = db
        .query_one_raw(sea_orm_migration::sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {relation}"),
        ))
        .await?
        .unwrap();
    row.try_get::<i64>("", "n")
}

fn now() -> ChronoDateTimeUtc {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    ChronoDateTimeUtc::from_timestamp(secs, 0).unwrap()
}

async fn insert(
    db: &DatabaseConnection,
    table: &str,
    cols: Vec<(&str, Value)>,
) -> Result<(), DbErr> {
    let (names, values): (Vec<_>, Vec<_>) = cols.into_iter().unzip();
    let stmt = Query::insert()
        .into_table(Alias::new(table))
        .columns(names.into_iter().map(Alias::new))
        .values(values.into_iter().map(Expr::val))
        .map_err(|e| DbErr::Custom(e.to_string()))?
        .to_owned();
    db.execute(&stmt).await.map(|_| ())
}

async fn exec(db: &DatabaseConnection, sql: &str) -> Result<(), DbErr> {
    db.execute_unprepared(sql).await.map(|_| ())
}

async fn scenario(db: &DatabaseConnection) {
    migrations_core::Migrator::up(db, None).await.unwrap();
    migrations_secure::Migrator::up(db, None).await.unwrap();
    // A second run finds nothing to do.
    migrations_core::Migrator::up(db, None).await.unwrap();
    migrations_secure::Migrator::up(db, None).await.unwrap();

    for rel in CORE_TABLES
        .iter()
        .chain(CORE_VIEWS)
        .chain(SECURE_TABLES)
        .chain(SECURE_VIEWS)
    {
        count(db, rel)
            .await
            .unwrap_or_else(|e| panic!("{rel} missing: {e}"));
    }
    assert_eq!(count(db, "seaql_migrations_core").await.unwrap(), 2);
    assert_eq!(count(db, "seaql_migrations_secure").await.unwrap(), 1);
    assert_eq!(count(db, "roles").await.unwrap(), 6);
    for role in [
        "super_admin",
        "org_admin",
        "ca_admin",
        "approver",
        "requester",
        "auditor",
    ] {
        assert_eq!(
            count(db, &format!("roles WHERE name = '{role}'"))
                .await
                .unwrap(),
            1,
            "{role}"
        );
    }

    // Audit rows are write-once.
    let audit_id = Uuid::new_v4();
    insert(
        db,
        "audit_log",
        vec![
            ("id", audit_id.into()),
            ("occurred_at", now().into()),
            ("actor_kind", "system".into()),
            ("action", "test".into()),
            ("outcome", "success".into()),
            ("details", Json::Object(Default::default()).into()),
        ],
    )
    .await
    .unwrap();
    assert!(
        exec(db, "UPDATE audit_log SET action = 'forged'")
            .await
            .is_err()
    );
    assert!(exec(db, "DELETE FROM audit_log").await.is_err());
    assert_eq!(
        count(db, "audit_log WHERE action = 'test'").await.unwrap(),
        1
    );

    // Key status follows its lifecycle; updated_at is maintained.
    let key_id = Uuid::new_v4();
    let long_ago = ChronoDateTimeUtc::from_timestamp(1_000_000_000, 0).unwrap();
    insert(
        db,
        "encryption_keys",
        vec![
            ("id", key_id.into()),
            ("label", "k".into()),
            ("ckaid_hex", "00ff".into()),
            ("pkcs11_uri", "pkcs11:object=k".into()),
            ("purpose", "ca_signing".into()),
            ("algorithm", "ecdsa-p256".into()),
            ("status", "pending".into()),
            ("created_at", long_ago.into()),
            ("updated_at", long_ago.into()),
        ],
    )
    .await
    .unwrap();
    assert!(
        exec(db, "UPDATE encryption_keys SET status = 'deprecated'")
            .await
            .is_err(),
        "pending → deprecated"
    );
    exec(db, "UPDATE encryption_keys SET status = 'active'")
        .await
        .unwrap();
    assert_eq!(
        count(db, "encryption_keys WHERE status = 'active'")
            .await
            .unwrap(),
        1
    );
    let touched = count(
        db,
        &format!("encryption_keys WHERE updated_at > {}", ts_literal(db)),
    )
    .await
    .unwrap();
    assert_eq!(touched, 1, "updated_at follows the update");
    exec(db, "UPDATE encryption_keys SET status = 'destroyed'")
        .await
        .unwrap();
    assert!(
        exec(db, "UPDATE encryption_keys SET status = 'active'")
            .await
            .is_err(),
        "destroyed is final"
    );

    // A revoked certificate never becomes valid again.
    let ca_id = Uuid::new_v4();
    let key2 = Uuid::new_v4();
    insert(
        db,
        "encryption_keys",
        vec![
            ("id", key2.into()),
            ("label", "ca".into()),
            ("ckaid_hex", "0a0b".into()),
            ("pkcs11_uri", "pkcs11:object=ca".into()),
            ("purpose", "ca_signing".into()),
            ("algorithm", "ecdsa-p256".into()),
            ("status", "active".into()),
            ("created_at", now().into()),
            ("updated_at", now().into()),
        ],
    )
    .await
    .unwrap();
    insert(
        db,
        "certificate_authorities",
        vec![
            ("id", ca_id.into()),
            ("name", "test-root".into()),
            ("kind", "root".into()),
            ("key_id", key2.into()),
            ("subject", "CN=test".into()),
            ("key_algorithm", "ecdsa-p256".into()),
            ("status", "active".into()),
            ("not_before", long_ago.into()),
            ("not_after", now().into()),
            ("created_at", now().into()),
            ("updated_at", now().into()),
        ],
    )
    .await
    .unwrap();
    let cert = |serial: &'static str| {
        vec![
            ("id", Uuid::new_v4().into()),
            ("ca_id", ca_id.into()),
            ("serial_hex", serial.into()),
            ("subject", "CN=leaf".into()),
            ("sans", Json::Array(vec![]).into()),
            ("key_algorithm", "ecdsa-p256".into()),
            ("not_before", long_ago.into()),
            ("not_after", now().into()),
            ("status", "valid".into()),
            ("is_ca", false.into()),
            ("certificate_der", vec![0x30u8, 0x00].into()),
            ("fingerprint_sha256", format!("fp-{serial}").into()),
            ("created_at", now().into()),
            ("updated_at", now().into()),
        ]
    };
    insert(db, "certificates", cert("4a01")).await.unwrap();
    assert!(
        insert(db, "certificates", cert("4a01")).await.is_err(),
        "serial unique per CA"
    );
    exec(
        db,
        &format!(
            "UPDATE certificates SET status = 'revoked', revoked_at = {} WHERE serial_hex = '4a01'",
            ts_literal(db)
        ),
    )
    .await
    .unwrap();
    assert!(
        exec(
            db,
            "UPDATE certificates SET status = 'valid', revoked_at = NULL"
        )
        .await
        .is_err()
    );
    assert_eq!(
        count(db, "certificates WHERE status = 'revoked'")
            .await
            .unwrap(),
        1
    );

    // Down removes everything (in reverse dependency order), up works again.
    migrations_secure::Migrator::down(db, None).await.unwrap();
    migrations_core::Migrator::down(db, None).await.unwrap();
    for rel in CORE_TABLES
        .iter()
        .chain(CORE_VIEWS)
        .chain(SECURE_TABLES)
        .chain(SECURE_VIEWS)
    {
        assert!(count(db, rel).await.is_err(), "{rel} survived down");
    }
    migrations_core::Migrator::up(db, None).await.unwrap();
    migrations_secure::Migrator::up(db, None).await.unwrap();
    assert_eq!(count(db, "roles").await.unwrap(), 6);
}

/// "Now minus a minute" as a literal comparable with stored timestamps.
fn ts_literal(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        sea_orm_migration::sea_orm::DatabaseBackend::Postgres => "(now() - interval '1 minute')",
        _ => "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-1 minute')",
    }
}

#[tokio::test]
async fn sqlite() {
    let dir = std::env::temp_dir().join(format!("clm-schema-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("both.db").display());
    let db = Database::connect(url).await.unwrap();
    db.execute_unprepared("PRAGMA foreign_keys = ON")
        .await
        .unwrap();
    scenario(&db).await;
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres() {
    let admin = match Database::connect("postgres://postgres@127.0.0.1:5432/postgres").await {
        Ok(db) => db,
        Err(e) => {
            assert!(
                std::env::var("CLM_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "PostgreSQL is required but unreachable: {e}"
            );
            eprintln!("note: PostgreSQL unreachable, skipped: {e}");
            return;
        }
    };
    let name = format!("clm_schema_{}", Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let db = Database::connect(format!("postgres://postgres@127.0.0.1:5432/{name}"))
        .await
        .unwrap();
    let outcome = tokio::spawn(async move {
        scenario(&db).await;
        db.close().await.unwrap();
    })
    .await;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    outcome.unwrap();
}
