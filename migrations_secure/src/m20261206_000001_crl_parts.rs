//! clm_secure, stored CRLs in parts: `ca_crls` keeps a CRL's number,
//! window, entry count and length; its DER lives in `ca_crl_parts`, in
//! pieces of at most 1 MiB. Written or read as one value, a million-entry
//! CRL (46 MB) was copied three times over by the database drivers, and
//! those copies set the server's peak memory (docs/performance.md).
//! Existing CRLs move into a single part.

use migrations_core::sql;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, blob, integer};

const PARTS: &str = "ca_crl_parts";

fn parts_table() -> TableCreateStatement {
    Table::create()
        .table(PARTS)
        .col(ColumnDef::new("ca_id").uuid().not_null())
        .col(integer("part"))
        .col(blob("der"))
        .primary_key(Index::create().col("ca_id").col("part"))
        // A CRL's parts go with it: replacing the row of `ca_crls`
        // replaces them.
        .foreign_key(
            ForeignKey::create()
                .name("fk_ca_crl_parts_ca_id")
                .from(PARTS, "ca_id")
                .to("ca_crls", "ca_id")
                .on_delete(ForeignKeyAction::Cascade),
        )
        .check(sql::rule(PARTS, "part", "part >= 0"))
        .to_owned()
}

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000001_crl_parts"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_table(parts_table()).await?;
        manager
            .alter_table(
                Table::alter()
                    .table("ca_crls")
                    .add_column(big_integer("der_length").default(0))
                    .to_owned(),
            )
            .await?;
        sql::run(
            manager,
            &[
                format!(
                    "INSERT INTO {PARTS} (ca_id, part, der) SELECT ca_id, 0, crl_der FROM ca_crls"
                ),
                "UPDATE ca_crls SET der_length = length(crl_der)".to_string(),
            ],
        )
        .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("ca_crls")
                    .drop_column("crl_der")
                    .to_owned(),
            )
            .await
    }

    /// The stored CRLs are forgotten, not reassembled: the next request
    /// for a CA's CRL signs a fresh one, numbered after the last (the
    /// number lives in `certificate_authorities`).
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        sql::drop_tables(manager, &[PARTS, "ca_crls"]).await?;
        manager
            .create_table(super::m20261122_000010_revocation::ca_crls())
            .await
    }
}
