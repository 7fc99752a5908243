//! clm_secure, the certificate list at scale: indexes that serve each way
//! the list is ordered and filtered (newest first, by organisation, CA or
//! status), and a substring index over subject and serial — FTS5 with the
//! trigram tokenizer on SQLite, pg_trgm on PostgreSQL — so that `q=` does
//! not read every certificate. docs/database-secure.md says which query
//! uses which.

use migrations_core::sql::{self, index};
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

/// Replaced by `idx_certificates_org_list`, which also orders ties.
const OLD_ORG_INDEX: &str = "idx_certificates_org_created";

/// Every listing is `is_ca = false ORDER BY created_at DESC, id DESC`
/// (`not_after, id` when it asks for what expires soon); each index ends in
/// that order, so a page is one index range read from its start and the
/// rows are looked up only for the page itself.
const LIST_INDEXES: [(&str, &[&str]); 5] = [
    ("idx_certificates_list", &["is_ca", "created_at", "id"]),
    (
        "idx_certificates_org_list",
        &["organization_id", "is_ca", "created_at", "id"],
    ),
    (
        "idx_certificates_ca_list",
        &["ca_id", "is_ca", "created_at", "id"],
    ),
    (
        "idx_certificates_status_list",
        &["status", "is_ca", "created_at", "id"],
    ),
    (
        "idx_certificates_expiry_list",
        &["is_ca", "not_after", "id"],
    ),
];

/// PostgreSQL's substring index on `column` of `certificates`.
pub(crate) fn trigram_index(name: &str, column: &str) -> String {
    // New entries wait in a GIN's pending list, which every search reads
    // through; the default 4 MB would cost tens of ms per search under
    // steady issuance.
    format!(
        "CREATE INDEX {name} ON certificates USING gin ({column} gin_trgm_ops) \
         WITH (gin_pending_list_limit = 256)"
    )
}

/// The substring index. On SQLite a separate FTS5 table keeps its own copy
/// of subject and serial keyed by the certificate id: an external-content
/// table would key on `certificates.rowid`, which VACUUM may renumber.
pub(crate) fn search(backend: DatabaseBackend) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![
            "CREATE EXTENSION IF NOT EXISTS pg_trgm".to_string(),
            trigram_index("idx_certificates_subject_trgm", "subject"),
            trigram_index("idx_certificates_serial_trgm", "serial_hex"),
        ],
        _ => vec![
            "CREATE VIRTUAL TABLE certificate_search USING fts5(\
             id UNINDEXED, subject, serial_hex, tokenize = 'trigram')"
                .to_string(),
            "INSERT INTO certificate_search (id, subject, serial_hex) \
             SELECT id, subject, serial_hex FROM certificates WHERE is_ca = false"
                .to_string(),
            "CREATE TRIGGER certificates_search_insert AFTER INSERT ON certificates \
             WHEN NEW.is_ca = false BEGIN \
             INSERT INTO certificate_search (id, subject, serial_hex) \
             VALUES (NEW.id, NEW.subject, NEW.serial_hex); END"
                .to_string(),
            "CREATE TRIGGER certificates_search_update AFTER UPDATE OF subject, serial_hex \
             ON certificates BEGIN \
             UPDATE certificate_search SET subject = NEW.subject, serial_hex = NEW.serial_hex \
             WHERE id = NEW.id; END"
                .to_string(),
            "CREATE TRIGGER certificates_search_delete AFTER DELETE ON certificates BEGIN \
             DELETE FROM certificate_search WHERE id = OLD.id; END"
                .to_string(),
        ],
    }
}

fn drop_search(backend: DatabaseBackend) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![
            "DROP INDEX IF EXISTS idx_certificates_subject_trgm".to_string(),
            "DROP INDEX IF EXISTS idx_certificates_serial_trgm".to_string(),
            // Only if this role made it: one created by a superuser
            // (scripts/postgres-roles.sql) is theirs to remove.
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm' \
             AND extowner = current_user::regrole) THEN DROP EXTENSION pg_trgm; END IF; END $$"
                .to_string(),
        ],
        _ => vec![
            "DROP TRIGGER IF EXISTS certificates_search_insert".to_string(),
            "DROP TRIGGER IF EXISTS certificates_search_update".to_string(),
            "DROP TRIGGER IF EXISTS certificates_search_delete".to_string(),
            "DROP TABLE IF EXISTS certificate_search".to_string(),
        ],
    }
}

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000001_certificate_list"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .drop_index(
                Index::drop()
                    .name(OLD_ORG_INDEX)
                    .table("certificates")
                    .to_owned(),
            )
            .await?;
        let indexes = LIST_INDEXES
            .iter()
            .map(|&(name, columns)| index(name, "certificates", columns))
            .collect();
        sql::create(manager, Vec::new(), indexes).await?;
        sql::run(manager, &search(backend)).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        sql::run(manager, &drop_search(backend)).await?;
        for (name, _) in LIST_INDEXES {
            manager
                .drop_index(Index::drop().name(name).table("certificates").to_owned())
                .await?;
        }
        manager
            .create_index(index(
                OLD_ORG_INDEX,
                "certificates",
                &["organization_id", "created_at"],
            ))
            .await
    }
}
