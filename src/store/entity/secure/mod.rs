//! Entities of clm_secure, one module per table.

pub mod ca_crl_parts;
pub mod ca_crls;
pub mod certificate_authorities;
pub mod certificate_requests;
pub mod certificate_revocations;
pub mod certificates;
pub mod encryption_keys;
pub mod key_recoveries;
pub mod key_rotation_history;
pub mod ocsp_signers;
pub mod private_keys;
pub mod secure_audit_checkpoints;
pub mod secure_audit_log;
pub mod secure_audit_purge_permits;
pub mod secure_audit_seals;
