//! Plain types shared by every room: newtype ids, status enums with their
//! allowed transitions, roles and permissions, key algorithms, profile rules
//! and the signing seam. This module depends on nothing else in the crate and
//! performs no I/O.

pub mod algorithm;
pub mod audit;
pub mod der;
pub mod ids;
pub mod model;
pub mod profile;
pub mod role;
pub mod secret;
pub mod signer;
pub mod status;

pub use algorithm::{ExtendedKeyUsage, KeyAlgorithm};
pub use ids::*;
pub use profile::{ApprovedCertificate, ProfileRules, ProfileViolation, RequestedCertificate, San};
pub use role::{Permission, Role};
pub use secret::Secret;
pub use signer::{SignError, Signer};
pub use status::{
    CaKind, CertificateStatus, KeyPurpose, KeyStatus, RecoveryStatus, RequestStatus,
    RevocationReason, RotationStatus, WorkflowKind,
};
