//! The records the service works with, independent of how `store` keeps
//! them. Cross-database references are plain ids.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::algorithm::KeyAlgorithm;
use super::ids::*;
use super::profile::{ProfileRules, San};
use super::role::Role;
use super::status::{
    CaKind, CertificateStatus, KeyPurpose, KeyStatus, RecoveryStatus, RequestStatus,
    RotationStatus, WorkflowKind,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Organization {
    pub id: OrganizationId,
    pub name: String,
    pub slug: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// A user as the service sees it. The password hash is only read by the
/// login path and never serialised.
#[derive(Clone, Debug)]
pub struct User {
    pub id: UserId,
    pub locked_until: Option<DateTime<Utc>>,
    pub failed_login_count: i32,
    pub organization_id: OrganizationId,
    pub email: String,
    pub display_name: Option<String>,
    pub status: String,
    pub roles: Vec<Role>,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

/// The one user status that may authenticate.
pub const USER_ACTIVE: &str = "active";

impl User {
    pub fn is_active(&self) -> bool {
        self.status == USER_ACTIVE
    }
}

/// Who a live credential (a session, an API key) belongs to, as
/// authentication needs it: what a principal carries and whether the
/// account may act, nothing else of the user.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user_id: UserId,
    pub organization_id: OrganizationId,
    pub email: String,
    /// The user's status is [`USER_ACTIVE`].
    pub active: bool,
    pub roles: Vec<Role>,
}

impl From<User> for Identity {
    fn from(u: User) -> Self {
        Identity {
            active: u.is_active(),
            user_id: u.id,
            organization_id: u.organization_id,
            email: u.email,
            roles: u.roles,
        }
    }
}

/// A login session; the token itself is never stored, only its digest.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub token_digest: String,
    pub created_at: DateTime<Utc>,
    /// Absolute end.
    pub expires_at: DateTime<Utc>,
    /// End if unused; pushed forward as the session is used.
    pub idle_expires_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// An API key: a bearer token for automation, limited to a subset of its
/// creator's roles. Only the token's digest is stored.
#[derive(Clone, Debug, Serialize)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub organization_id: OrganizationId,
    pub user_id: UserId,
    pub name: String,
    #[serde(skip)]
    pub token_digest: String,
    /// The first characters of the token, to recognise it in a list.
    pub token_prefix: String,
    pub roles: Vec<Role>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Which principal a client certificate authenticates as: its owner, or
/// one API key of its owner (then with that key's roles and lifetime).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertBinding {
    pub id: uuid::Uuid,
    pub certificate_id: CertificateId,
    pub organization_id: OrganizationId,
    pub user_id: UserId,
    pub api_key_id: Option<ApiKeyId>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A token object registered in `encryption_keys`: a reference, never bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReference {
    pub id: KeyId,
    pub label: String,
    pub ckaid_hex: String,
    pub pkcs11_uri: String,
    pub purpose: KeyPurpose,
    pub algorithm: String,
    pub status: KeyStatus,
    pub version: i32,
    pub public_key_der: Option<Vec<u8>>,
}

/// One KEK rotation (clm_secure `key_rotation_history`): every archived
/// key moves from `old_key_id` to `new_key_id`, or back on a rollback.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct KeyRotation {
    pub id: uuid::Uuid,
    pub old_key_id: Option<KeyId>,
    pub new_key_id: KeyId,
    pub status: RotationStatus,
    pub total_count: i64,
    pub rewrapped_count: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A request to recover an archived private key (clm_secure
/// `key_recoveries`).
#[derive(Clone, Debug)]
pub struct KeyRecovery {
    pub id: uuid::Uuid,
    pub certificate_id: CertificateId,
    pub organization_id: OrganizationId,
    pub requester_id: UserId,
    pub status: RecoveryStatus,
    pub created_at: DateTime<Utc>,
}

/// A private key clm generated, wrapped under a KEK (never in plain form).
#[derive(Clone, Debug)]
pub struct WrappedKey {
    pub certificate_id: CertificateId,
    pub organization_id: OrganizationId,
    /// Registry id and version of the KEK it is wrapped under.
    pub kek_id: KeyId,
    pub kek_version: i32,
    pub wrapped: Vec<u8>,
    pub key_algorithm: KeyAlgorithm,
}

#[derive(Clone, Debug)]
pub struct CertificateAuthority {
    pub id: CaId,
    pub name: String,
    pub kind: CaKind,
    pub parent_id: Option<CaId>,
    pub organization_id: Option<OrganizationId>,
    pub key: KeyReference,
    pub key_algorithm: KeyAlgorithm,
    pub subject: String,
    pub status: String,
    pub certificate_id: Option<CertificateId>,
    pub certificate_der: Option<Vec<u8>>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// The one CA status under which a CA issues.
pub const CA_ACTIVE: &str = "active";
/// A CA whose certificate was revoked: it issues nothing more.
pub const CA_DISABLED: &str = "disabled";

/// Between a retired CA's old name and its id in the name it keeps.
const RETIRED_MARK: &str = ".retired-";

impl CertificateAuthority {
    pub fn is_active(&self) -> bool {
        self.status == CA_ACTIVE
    }

    /// The name a CA is kept under once a rollover retires it: its
    /// successor takes the plain name, and the CA's id keeps two
    /// rollovers of one name apart however quickly they follow.
    pub fn retired_name(&self) -> String {
        format!("{}{RETIRED_MARK}{}", self.name, self.id)
    }

    /// For a retired CA, the name it had: the name its successor holds.
    pub fn name_before_retirement(&self) -> Option<&str> {
        if self.status != "retired" {
            return None;
        }
        self.name.rsplit_once(RETIRED_MARK).map(|(name, _)| name)
    }
}

#[derive(Clone, Debug)]
pub struct Profile {
    pub id: ProfileId,
    pub organization_id: Option<OrganizationId>,
    pub name: String,
    pub ca_id: CaId,
    pub rules: ProfileRules,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct CertificateRequest {
    pub id: RequestId,
    pub organization_id: OrganizationId,
    pub profile_id: ProfileId,
    pub requester_id: UserId,
    pub ca_id: CaId,
    pub status: RequestStatus,
    pub csr_der: Option<Vec<u8>>,
    pub subject: String,
    pub sans: Vec<San>,
    pub key_algorithm: KeyAlgorithm,
    pub validity_days: u32,
    pub reserved_serial_hex: Option<String>,
    pub certificate_id: Option<CertificateId>,
    pub failure_reason: Option<String>,
    pub idempotency_key: Option<String>,
    /// A renewal names the certificate it replaces.
    pub replaces_certificate_id: Option<CertificateId>,
    /// Revoke the replaced certificate as `superseded` once this one is issued.
    pub supersede_replaced: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct Certificate {
    pub id: CertificateId,
    pub organization_id: Option<OrganizationId>,
    pub ca_id: CaId,
    pub request_id: Option<RequestId>,
    pub profile_id: Option<ProfileId>,
    pub owner_id: Option<UserId>,
    pub serial_hex: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub key_algorithm: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub status: CertificateStatus,
    pub is_ca: bool,
    pub certificate_der: Vec<u8>,
    pub fingerprint_sha256: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revocation_reason: Option<String>,
    pub replaces_certificate_id: Option<CertificateId>,
    pub created_at: DateTime<Utc>,
}

/// A certificate as a listing shows it: no DER, no revocation details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateBrief {
    pub id: CertificateId,
    pub serial_hex: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub status: CertificateStatus,
    pub ca_id: CaId,
    pub profile_id: Option<ProfileId>,
}

/// Who did something, for the audit logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Actor {
    pub id: Option<UserId>,
    /// `user`, `api_key`, `system` or `anonymous`.
    pub kind: &'static str,
}

impl Actor {
    pub const SYSTEM: Actor = Actor {
        id: None,
        kind: "system",
    };
    pub const ANONYMOUS: Actor = Actor {
        id: None,
        kind: "anonymous",
    };
}

/// Where a request came from; carried into audit entries.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    pub request_id: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// One entry for either audit log. `details` must never hold secrets.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    pub actor: Actor,
    pub organization_id: Option<OrganizationId>,
    pub action: &'static str,
    pub target_type: Option<&'static str>,
    pub target_id: Option<String>,
    pub outcome: Outcome,
    pub context: RequestContext,
    pub details: serde_json::Value,
}

impl AuditEvent {
    pub fn new(actor: Actor, action: &'static str, context: &RequestContext) -> Self {
        Self {
            actor,
            organization_id: None,
            action,
            target_type: None,
            target_id: None,
            outcome: Outcome::Success,
            context: context.clone(),
            details: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn org(mut self, org: Option<OrganizationId>) -> Self {
        self.organization_id = org;
        self
    }

    pub fn target(mut self, kind: &'static str, id: impl ToString) -> Self {
        self.target_type = Some(kind);
        self.target_id = Some(id.to_string());
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// The approval process of one request (clm_core `workflow_instances`).
#[derive(Clone, Debug)]
pub struct WorkflowInstance {
    pub id: uuid::Uuid,
    pub kind: WorkflowKind,
    /// The certificate request, or for a key recovery the recovery's id.
    pub request_id: RequestId,
    pub organization_id: OrganizationId,
    pub requester_id: UserId,
    pub status: RequestStatus,
    pub approvals_required: u8,
    pub approvals_count: u8,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// One decision of an approver.
#[derive(Clone, Debug, Serialize)]
pub struct WorkflowStep {
    pub actor_id: UserId,
    pub decision: String,
    pub comment: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A message to one user.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Notification {
    pub id: uuid::Uuid,
    pub organization_id: OrganizationId,
    pub user_id: UserId,
    pub kind: String,
    pub title: String,
    pub body: String,
    pub data: serde_json::Value,
    pub read_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl Notification {
    pub fn new(
        org: OrganizationId,
        user: UserId,
        kind: &str,
        title: String,
        body: String,
        data: serde_json::Value,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4(),
            organization_id: org,
            user_id: user,
            kind: kind.to_string(),
            title,
            body,
            data,
            read_at: None,
            created_at: Utc::now(),
        }
    }
}

/// An organisation's webhook endpoint. Its signing secret is never stored.
#[derive(Clone, Debug, Serialize)]
pub struct Webhook {
    pub id: uuid::Uuid,
    pub organization_id: OrganizationId,
    pub url: String,
    /// Subscribed event names; empty means all.
    pub events: Vec<String>,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// One event for an organisation's webhooks, before it is queued for each
/// that subscribes to it.
#[derive(Clone, Debug)]
pub struct WebhookEvent {
    pub organization_id: OrganizationId,
    /// Its name, e.g. `request.issued`.
    pub event: &'static str,
    /// The body every subscriber receives.
    pub payload: serde_json::Value,
}

/// One event on its way to one webhook.
#[derive(Clone, Debug, Serialize)]
pub struct WebhookDelivery {
    pub id: uuid::Uuid,
    pub webhook_id: uuid::Uuid,
    pub event: String,
    pub payload: serde_json::Value,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str, status: &str) -> CertificateAuthority {
        CertificateAuthority {
            id: CaId::new(),
            name: name.to_string(),
            kind: CaKind::Root,
            parent_id: None,
            organization_id: None,
            key: KeyReference {
                id: KeyId::new(),
                label: "k".into(),
                pkcs11_uri: "pkcs11:".into(),
                ckaid_hex: String::new(),
                purpose: KeyPurpose::CaSigning,
                algorithm: "ecdsa-p256".into(),
                status: KeyStatus::Active,
                version: 1,
                public_key_der: None,
            },
            key_algorithm: KeyAlgorithm::EcdsaP256,
            subject: "CN=x".into(),
            status: status.to_string(),
            certificate_id: None,
            certificate_der: None,
            not_before: Utc::now(),
            not_after: Utc::now(),
        }
    }

    #[test]
    fn a_retired_name_leads_back_to_the_successor_name() {
        // A name may itself contain the mark; the last one counts.
        for name in ["clm-root", "a.retired-b"] {
            let active = ca(name, "active");
            assert_eq!(active.name_before_retirement(), None);
            let retired = ca(&active.retired_name(), "retired");
            assert!(retired.name.ends_with(&active.id.to_string()));
            assert_eq!(retired.name_before_retirement(), Some(name));
            // The successor, retired in its turn, keeps a name of its own.
            let again = ca(&ca(name, "active").retired_name(), "retired");
            assert_ne!(again.name, retired.name);
        }
        // The time-stamped names of earlier releases lead back as well.
        let earlier = ca("clm-root.retired-20261206114017", "retired");
        assert_eq!(earlier.name_before_retirement(), Some("clm-root"));
    }
}
