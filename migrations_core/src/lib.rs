//! Schema of clm_core: organisations, users and roles, sessions and API
//! keys, policies (certificate profiles), workflows and their steps,
//! notifications, certificate metadata, client certificate bindings, the
//! leases of background jobs and the application audit log. Its own
//! migrator with its own tracking table.
//! [`sql`] holds the DDL helpers both migrators share.

use sea_orm_migration::prelude::*;

pub mod audit_chain;
mod m20261122_000001_init;
mod m20261122_000002_webhooks;
mod m20261122_000010_renewal;
mod m20261122_000011_key_recovery;
mod m20261123_000001_audit_chain;
mod m20261124_000030_client_certificate_bindings;
mod m20261201_000001_job_leases;
pub mod sql;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_init::Migration),
            Box::new(m20261122_000002_webhooks::Migration),
            Box::new(m20261122_000010_renewal::Migration),
            Box::new(m20261122_000011_key_recovery::Migration),
            Box::new(m20261123_000001_audit_chain::Migration),
            Box::new(m20261124_000030_client_certificate_bindings::Migration),
            Box::new(m20261201_000001_job_leases::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_core".into_iden()
    }
}
