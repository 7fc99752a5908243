//! clm_secure, revocation services: the latest signed CRL of each CA, the
//! delegated OCSP signers, and renewal's "supersede the old certificate"
//! flag on requests. docs/database-secure.md says why each exists.

use migrations_core::sql::{self, created_at, fk, id, index, rule, updated_at};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, blob, boolean, timestamp_with_time_zone as ts, uuid};

/// One row per CA: the CRL relying parties are served. Older CRLs are
/// superseded by number and need not be kept; the revocations they
/// listed are all in certificate_revocations. (Its DER moved to
/// `ca_crl_parts` in m20261206_000001_crl_parts.)
pub(crate) fn ca_crls() -> TableCreateStatement {
    Table::create()
        .table("ca_crls")
        .col(ColumnDef::new("ca_id").uuid().not_null().primary_key())
        .col(big_integer("crl_number"))
        .col(ts("this_update"))
        .col(ts("next_update"))
        .col(big_integer("entry_count"))
        .col(blob("crl_der"))
        .col(created_at())
        .col(updated_at())
        .foreign_key(&mut fk("ca_crls", "ca_id", "certificate_authorities"))
        .check(rule("ca_crls", "crl_number", "crl_number >= 1"))
        .check(rule("ca_crls", "window", "this_update < next_update"))
        .to_owned()
}

fn tables() -> Vec<TableCreateStatement> {
    vec![
        ca_crls(),
        // A CA's delegated OCSP responder: a key in the token and the
        // certificate the CA issued for it. Renewal adds a row.
        Table::create()
            .table("ocsp_signers")
            .col(id())
            .col(uuid("ca_id"))
            .col(uuid("key_id"))
            .col(uuid("certificate_id"))
            .col(ts("not_after"))
            .col(created_at())
            .foreign_key(&mut fk("ocsp_signers", "ca_id", "certificate_authorities"))
            .foreign_key(&mut fk("ocsp_signers", "key_id", "encryption_keys"))
            .foreign_key(&mut fk("ocsp_signers", "certificate_id", "certificates"))
            .to_owned(),
    ]
}

fn indexes() -> Vec<IndexCreateStatement> {
    vec![
        index(
            "idx_ocsp_signers_ca",
            "ocsp_signers",
            &["ca_id", "not_after"],
        ),
        // OCSP caches learn about status changes by polling this.
        index("idx_certificates_updated", "certificates", &["updated_at"]),
    ]
}

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000010_revocation"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("certificate_requests")
                    .add_column(boolean("supersede_replaced").default(false))
                    .to_owned(),
            )
            .await?;
        sql::create(manager, tables(), indexes()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for i in [("idx_certificates_updated", "certificates")] {
            manager
                .drop_index(Index::drop().name(i.0).table(i.1).to_owned())
                .await?;
        }
        sql::drop_tables(manager, &["ocsp_signers", "ca_crls"]).await?;
        manager
            .alter_table(
                Table::alter()
                    .table("certificate_requests")
                    .drop_column("supersede_replaced")
                    .to_owned(),
            )
            .await
    }
}
