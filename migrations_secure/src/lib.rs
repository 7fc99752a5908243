//! Schema of clm_secure: the key registry (references to token objects,
//! never key bytes), certificate authorities, certificates, wrapped private
//! keys, requests, revocations, key rotation history and the security audit
//! log. Its own migrator with its own tracking table, so that clm_core's and
//! clm_secure's migrations never mix even in one database.

use sea_orm_migration::prelude::*;

mod m20261122_000001_init;
mod m20261122_000010_revocation;
mod m20261122_000011_key_recovery;
mod m20261122_000012_kek_rotation;
mod m20261123_000001_audit_chain;
mod m20261201_000001_certificate_list;
mod m20261206_000001_crl_parts;
mod m20261206_000002_certificate_search;
mod m20261206_000003_crl_index;
mod m20261206_000004_search_scan;
mod m20261206_000005_folded_subject;
mod m20261207_000001_status_changes;
mod m20261207_000002_approved_requests;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_init::Migration),
            Box::new(m20261122_000010_revocation::Migration),
            Box::new(m20261122_000011_key_recovery::Migration),
            Box::new(m20261122_000012_kek_rotation::Migration),
            Box::new(m20261123_000001_audit_chain::Migration),
            Box::new(m20261201_000001_certificate_list::Migration),
            Box::new(m20261206_000001_crl_parts::Migration),
            Box::new(m20261206_000002_certificate_search::Migration),
            Box::new(m20261206_000003_crl_index::Migration),
            Box::new(m20261206_000004_search_scan::Migration),
            Box::new(m20261206_000005_folded_subject::Migration),
            Box::new(m20261207_000001_status_changes::Migration),
            Box::new(m20261207_000002_approved_requests::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_secure".into_iden()
    }
}
