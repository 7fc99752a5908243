//! Entities of clm_core, one module per table.

pub mod api_keys;
pub mod audit_checkpoints;
pub mod audit_log;
pub mod audit_purge_permits;
pub mod audit_seals;
pub mod certificate_expiry_notices;
pub mod certificate_metadata;
pub mod client_certificate_bindings;
pub mod job_leases;
pub mod notifications;
pub mod organizations;
pub mod policies;
pub mod roles;
pub mod sessions;
pub mod user_organizations;
pub mod user_roles;
pub mod users;
pub mod webhook_deliveries;
pub mod webhooks;
pub mod workflow_instances;
pub mod workflow_steps;
pub mod workflows;
