//! clm_secure on SQLite, a search for a common substring walks the list in
//! its order: the newest-first list indexes carry the subject, so a
//! `LIKE` over them is a read of one index range, without a row lookup per
//! certificate. Through the trigram index such a search first gathered all
//! of its matches (20,000 for a substring in 2 % of a million subjects)
//! and looked each up to sort them: 330–420 ms, against about 1 ms for the
//! walk. `store::certificate_list` picks between the two by the count of
//! matches. Wider entries cost a deep page nothing measurable (page 1,000
//! in 2 ms either way, `sqlite3`). PostgreSQL reads the subject from the
//! heap while it walks and is unchanged.

use migrations_core::sql::{index, replace_index};
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

const TABLE: &str = "certificates";

/// (name, narrow columns, name and columns with the subject).
const REPLACED: [(&str, &[&str], &str, &[&str]); 2] = [
    (
        "idx_certificates_list",
        &["is_ca", "created_at", "id"],
        "idx_certificates_list_subject",
        &["is_ca", "created_at", "id", "subject"],
    ),
    (
        "idx_certificates_org_list",
        &["organization_id", "is_ca", "created_at", "id"],
        "idx_certificates_org_list_subject",
        &["organization_id", "is_ca", "created_at", "id", "subject"],
    ),
];

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000004_search_scan"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            return Ok(());
        }
        for (narrow, _, wide, columns) in REPLACED {
            replace_index(manager, TABLE, narrow, index(wide, TABLE, columns)).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            return Ok(());
        }
        for (narrow, columns, wide, _) in REPLACED {
            replace_index(manager, TABLE, wide, index(narrow, TABLE, columns)).await?;
        }
        Ok(())
    }
}
