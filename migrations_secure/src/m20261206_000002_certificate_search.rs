//! clm_secure, `q=` searches subjects by substring and serials by their
//! beginning. A serial is hex: its trigrams come from 4,096 possible ones,
//! and with time-ordered serials the first few are shared by every recent
//! certificate, so a trigram index over serials reads long posting lists
//! for every search (a whole-serial search took 17–32 ms with a million
//! certificates). A serial is now found through a plain index on
//! `serial_hex`, and the trigram indexes hold subjects only.

use migrations_core::sql::{self, index};
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::m20261201_000001_certificate_list as previous;

const SERIAL_INDEX: &str = "idx_certificates_serial";

fn sqlite_search() -> Vec<String> {
    vec![
        "CREATE VIRTUAL TABLE certificate_search USING fts5(\
         id UNINDEXED, subject, tokenize = 'trigram')"
            .to_string(),
        // In the order issuance stores them, as the triggers would have.
        "INSERT INTO certificate_search (id, subject) \
         SELECT id, subject FROM certificates WHERE is_ca = false ORDER BY created_at, id"
            .to_string(),
        "CREATE TRIGGER certificates_search_insert AFTER INSERT ON certificates \
         WHEN NEW.is_ca = false BEGIN \
         INSERT INTO certificate_search (id, subject) VALUES (NEW.id, NEW.subject); END"
            .to_string(),
        "CREATE TRIGGER certificates_search_update AFTER UPDATE OF subject \
         ON certificates BEGIN \
         UPDATE certificate_search SET subject = NEW.subject WHERE id = NEW.id; END"
            .to_string(),
        "CREATE TRIGGER certificates_search_delete AFTER DELETE ON certificates BEGIN \
         DELETE FROM certificate_search WHERE id = OLD.id; END"
            .to_string(),
    ]
}

const SQLITE_DROP: [&str; 4] = [
    "DROP TRIGGER IF EXISTS certificates_search_insert",
    "DROP TRIGGER IF EXISTS certificates_search_update",
    "DROP TRIGGER IF EXISTS certificates_search_delete",
    "DROP TABLE IF EXISTS certificate_search",
];

const PG_SERIAL_TRGM: &str = "CREATE INDEX idx_certificates_serial_trgm ON certificates \
     USING gin (serial_hex gin_trgm_ops) WITH (gin_pending_list_limit = 256)";

fn strings(statements: &[&str]) -> Vec<String> {
    statements.iter().map(|&s| String::from(s)).collect()
}

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000002_certificate_search"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(index(SERIAL_INDEX, "certificates", &["serial_hex"]))
            .await?;
        let search = match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                strings(&["DROP INDEX IF EXISTS idx_certificates_serial_trgm"])
            }
            _ => [strings(&SQLITE_DROP), sqlite_search()].concat(),
        };
        sql::run(manager, &search).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let search = match manager.get_database_backend() {
            DatabaseBackend::Postgres => strings(&[PG_SERIAL_TRGM]),
            // The previous search table, subjects and serials.
            backend => [strings(&SQLITE_DROP), previous::search(backend)].concat(),
        };
        sql::run(manager, &search).await?;
        manager
            .drop_index(
                Index::drop()
                    .name(SERIAL_INDEX)
                    .table("certificates")
                    .to_owned(),
            )
            .await
    }
}
