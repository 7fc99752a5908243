//! clm_secure on PostgreSQL, a search for a common substring counts its
//! matches by walking the list in its order, as SQLite does since
//! m20261206_000004_search_scan. `ILIKE` lowers the subject again for every
//! row it tests (0.6 µs each; a 2 % substring is 1,001 matches in 50,000
//! rows), and the pg_trgm bitmap costs 23–36 ms for such a term, whose
//! trigrams are mostly in every subject. So the subject is stored lowered,
//! once, in a generated column that the trigram index and the two
//! newest-first list indexes carry: a case-sensitive `LIKE` over it is
//! `ILIKE` over the subject, and the walk reads one index range (8 ms
//! against 23–36 ms for the count, docs/performance.md). SQLite is
//! unchanged.

use migrations_core::sql;
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::m20261201_000001_certificate_list::trigram_index;

/// (index replaced, its columns, index with the lowered subject).
const LISTS: [(&str, &str, &str); 2] = [
    (
        "idx_certificates_list",
        "is_ca, created_at, id",
        "idx_certificates_list_subject",
    ),
    (
        "idx_certificates_org_list",
        "organization_id, is_ca, created_at, id",
        "idx_certificates_org_list_subject",
    ),
];

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000005_folded_subject"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        let mut statements = vec![
            "ALTER TABLE certificates ADD COLUMN subject_folded text \
             GENERATED ALWAYS AS (lower(subject)) STORED"
                .to_string(),
            trigram_index("idx_certificates_subject_folded_trgm", "subject_folded"),
            "DROP INDEX idx_certificates_subject_trgm".to_string(),
        ];
        for (narrow, columns, wide) in LISTS {
            statements.push(format!(
                "CREATE INDEX {wide} ON certificates ({columns}) INCLUDE (subject_folded)"
            ));
            statements.push(format!("DROP INDEX {narrow}"));
        }
        sql::run(manager, &statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        let mut statements = Vec::new();
        for (narrow, columns, wide) in LISTS {
            statements.push(format!("CREATE INDEX {narrow} ON certificates ({columns})"));
            statements.push(format!("DROP INDEX {wide}"));
        }
        statements.extend([
            trigram_index("idx_certificates_subject_trgm", "subject"),
            // Dropping the column drops its trigram index.
            "ALTER TABLE certificates DROP COLUMN subject_folded".to_string(),
        ]);
        sql::run(manager, &statements).await
    }
}
