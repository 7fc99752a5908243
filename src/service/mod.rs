//! Use cases: identity, CA bootstrap, profiles and issuance. This room owns
//! authorisation decisions (through [`Principal`]) and the order of writes
//! across the two databases (DESIGN.md decision 3). It sees the HSM only
//! through `hsm::Hsm` and `domain::Signer`, and SQL only through `store`.

mod api_keys;
mod audit;
mod audit_cursor;
pub mod auth;
mod bootstrap;
mod cas;
mod certificates;
mod client_cert;
mod crl;
pub mod error;
mod expiry;
mod hsm_check;
mod issuance;
mod jobs;
mod keygen;
mod keys;
mod ocsp;
mod ocsp_cache;
mod organizations;
mod principal;
mod profiles;
mod rate_limit;
mod reconcile;
mod recovery;
mod renewal;
mod revocation;
mod rollover;
pub mod shutdown;
mod telemetry;
mod users;
mod webhooks;
mod workflow;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::RwLock;

pub use api_keys::{ApiKeyView, CreatedApiKey, NewApiKey};
pub use audit::{
    AuditPage, AuditQuery, BadEntry, ExportCursor, ExportQuery, LogReport, Reason, SealOutcome,
    VerifyReport,
};
pub use bootstrap::{InitReport, migrate};
pub use cas::{CaView, NewCa};
pub use certificates::{CertificateQuery, CertificateSummary, CertificateView, page_of};
pub use client_cert::{BindingView, ConnectionAudit};
pub use crl::ServedCrl;
pub use error::{ServiceError, ServiceResult};
pub use expiry::{ExpiryReport, ExpirySchedule};
pub use issuance::{RequestView, SubjectBody, SubmitRequest};
pub use jobs::KEK_MAINTENANCE;
pub use ocsp::OcspAnswer;
pub use organizations::NewOrganization;
pub use principal::Principal;
pub use profiles::{NewProfile, ProfileView};
pub use reconcile::{
    DEFAULT_GRACE_SECONDS, Finding, ReconcileOptions, ReconcileReport, ReconcileSchedule,
};
pub use recovery::{RecoveryBody, RecoveryView};
pub use renewal::RenewBody;
pub use revocation::RevokeBody;
pub use rollover::RolloverView;
pub use telemetry::ISSUANCE_PHASES;
pub use users::{AddedUser, NewUserBody, PasswordChange};
pub use webhooks::{CreatedWebhook, DeliveryView, NewWebhook, WebhookView};
pub use workflow::{ApprovalView, Decision};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::config::Config;
use crate::domain::model::{Organization, User};
use crate::domain::{ApiKeyId, CaId, CertificateId, OrganizationId, Role, Secret, UserId};
use crate::hsm::{AuditKeyring, Hsm, HsmKey};
use crate::store::{CoreDb, SecureDb};

/// Settings the use cases need (a subset of [`Config`]).
#[derive(Clone, Debug)]
pub struct Settings {
    pub public_url: String,
    pub session_ttl_minutes: i64,
    pub session_idle_minutes: i64,
    pub login_max_failures: i64,
    pub login_lockout_seconds: i64,
    pub login_rate_per_minute: i64,
    /// Issuance requests per principal and minute (0 = no limit).
    pub issuance_rate_per_minute: u32,
    pub request_ttl_seconds: i64,
    pub job_interval_seconds: i64,
    pub job_lease_seconds: i64,
    pub webhook_retry_base_seconds: i64,
    pub crl_validity_seconds: i64,
    pub ocsp_validity_seconds: i64,
    pub ocsp_signer_days: i64,
    pub expiry_notice_days: Vec<u32>,
    pub kek_rollback_days: i64,
    pub kek_rotation_days: i64,
    pub kek_rewrap_batch: u64,
    pub kek_rewrap_pause_ms: u64,
    pub token_label: String,
}

impl From<&Config> for Settings {
    fn from(c: &Config) -> Self {
        Self {
            public_url: c.public_url.clone(),
            session_ttl_minutes: c.session_ttl_minutes,
            session_idle_minutes: c.session_idle_minutes,
            login_max_failures: c.login_max_failures,
            login_lockout_seconds: c.login_lockout_seconds,
            login_rate_per_minute: c.login_rate_per_minute,
            issuance_rate_per_minute: c.issuance_rate_per_minute,
            request_ttl_seconds: c.request_ttl_seconds,
            job_interval_seconds: c.job_interval_seconds,
            job_lease_seconds: c.job_lease_seconds,
            webhook_retry_base_seconds: c.webhook_retry_base_seconds,
            crl_validity_seconds: c.crl_validity_seconds,
            ocsp_validity_seconds: c.ocsp_validity_seconds,
            ocsp_signer_days: c.ocsp_signer_days,
            expiry_notice_days: c.expiry_notice_days.clone(),
            kek_rollback_days: c.kek_rollback_days,
            kek_rotation_days: c.kek_rotation_days,
            kek_rewrap_batch: c.kek_rewrap_batch.unsigned_abs(),
            kek_rewrap_pause_ms: c.kek_rewrap_pause_ms.unsigned_abs(),
            token_label: c.pkcs11_token_label.clone(),
        }
    }
}

/// The application: both databases, the token and the loaded CA keys.
#[derive(Clone)]
pub struct Clm {
    core: CoreDb,
    secure: SecureDb,
    hsm: Hsm,
    /// Audit MAC keys by version; both databases write their audit entries
    /// through it.
    audit_keys: AuditKeyring,
    settings: Settings,
    /// CA signing keys proven against their certificates at start-up.
    ca_keys: Arc<RwLock<HashMap<CaId, Arc<HsmKey>>>>,
    /// Verified for unknown e-mails so that they cost as much as wrong
    /// passwords.
    dummy_hash: String,
    login_limiter: Arc<auth::LoginLimiter>,
    issuance_limiter: Arc<rate_limit::RateLimiter>,
    crl_state: Arc<crl::CrlState>,
    ocsp: Arc<ocsp::OcspState>,
    /// Held while this process rewraps, so that the API's background task
    /// and the KEK job do not do the same HSM work twice.
    rewrapping: Arc<tokio::sync::Mutex<()>>,
    /// This process as holder of job leases (`jobs`).
    instance: Arc<str>,
}

impl Clm {
    pub async fn new(
        core: CoreDb,
        secure: SecureDb,
        hsm: Hsm,
        settings: Settings,
    ) -> ServiceResult<Self> {
        let dummy_hash = tokio::task::spawn_blocking(|| {
            auth::hash_password(&Secret::new("clm-timing-equaliser"))
        })
        .await
        .map_err(ServiceError::internal)??;
        let audit_keys = AuditKeyring::new(hsm.clone());
        let mac: Arc<dyn crate::domain::audit::AuditMac> = Arc::new(audit_keys.clone());
        let clm = Self {
            core: core.with_audit_mac(mac.clone()),
            secure: secure.with_audit_mac(mac),
            hsm,
            audit_keys,
            settings: settings.clone(),
            ca_keys: Arc::default(),
            dummy_hash,
            login_limiter: Arc::new(auth::LoginLimiter::new(settings.login_rate_per_minute)),
            issuance_limiter: Arc::new(rate_limit::RateLimiter::new(
                settings.issuance_rate_per_minute,
            )),
            crl_state: Arc::default(),
            ocsp: Arc::default(),
            rewrapping: Arc::default(),
            instance: jobs::instance_id().into(),
        };
        clm.load_audit_keys().await?;
        Ok(clm)
    }

    pub fn hsm(&self) -> &Hsm {
        &self.hsm
    }

    /// Readiness: both databases answer and the token is logged in. The
    /// error texts are for anyone who asks (`/readyz` is public): they say
    /// which dependency and why in general terms; causes go to the log.
    /// The HSM check goes through the circuit breaker: while it is open
    /// this answers at once, and when a retry is due it is the probe that
    /// recovers the token.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let db = |r: Result<(), crate::store::StoreError>, name: &str| {
            r.map_err(|e| {
                tracing::warn!(check = name, error = %e, "readiness check failed");
                "the database does not answer".to_string()
            })
        };
        let core = db(self.core.ping().await, "clm_core");
        let secure = db(self.secure.ping().await, "clm_secure");
        let hsm = match self.hsm.health_check().await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(check = "hsm", error = %e, "readiness check failed");
                Err(match self.hsm.unavailable() {
                    Some(down) => format!(
                        "{}; next recovery attempt in {}s",
                        down.reason,
                        down.retry_after.as_secs().max(1)
                    ),
                    None => "the token does not answer; recovering".to_string(),
                })
            }
        };
        vec![("clm_core", core), ("clm_secure", secure), ("hsm", hsm)]
    }
}

/// A page of a list as the API returns it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub page: u64,
    pub per_page: u64,
    /// Matches in all pages; a lower bound when `total_exact` is false.
    pub total: u64,
    /// False when counting stopped early: the certificate list counts at
    /// most 10,000 matches past the start of the page asked for, 1,000 for
    /// a search (`q=`).
    pub total_exact: bool,
}

impl<T> Listing<T> {
    pub fn new(items: Vec<T>, page: crate::store::Page, total: u64) -> Self {
        Self::counted(
            items,
            page,
            crate::store::Total {
                count: total,
                exact: true,
            },
        )
    }

    pub fn counted(items: Vec<T>, page: crate::store::Page, total: crate::store::Total) -> Self {
        Self {
            items,
            page: page.page,
            per_page: page.per_page,
            total: total.count,
            total_exact: total.exact,
        }
    }
}

/// Timestamps in the API: RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: UserId,
    pub email: String,
    pub display_name: Option<String>,
    pub organization_id: OrganizationId,
    pub roles: Vec<Role>,
    #[schema(example = "active")]
    /// `active`, `disabled` or `locked`.
    pub status: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id,
            email: u.email.clone(),
            display_name: u.display_name.clone(),
            organization_id: u.organization_id,
            roles: u.roles.clone(),
            status: u.status.clone(),
            created_at: rfc3339(u.created_at),
        }
    }
}

/// `GET /api/v1/me`: the user, their organisation and how this call
/// authenticated.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct MeView {
    #[serde(flatten)]
    pub user: UserView,
    pub organization: Option<Organization>,
    pub authentication: Authentication,
}

/// How a call authenticated and the roles it acts with (an API key's may be
/// fewer than the user's).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Authentication {
    pub method: AuthMethod,
    pub roles: Vec<Role>,
    /// The API key used, directly or through the client certificate bound
    /// to it.
    pub api_key_id: Option<ApiKeyId>,
    /// The client certificate presented, when that is how the call
    /// authenticated.
    pub certificate_id: Option<CertificateId>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    Session,
    ApiKey,
    ClientCertificate,
}

impl Authentication {
    fn of(p: &Principal) -> Self {
        let method = if p.client_certificate_id.is_some() {
            AuthMethod::ClientCertificate
        } else if p.api_key_id.is_some() {
            AuthMethod::ApiKey
        } else {
            AuthMethod::Session
        };
        Self {
            method,
            roles: p.roles.clone(),
            api_key_id: p.api_key_id,
            certificate_id: p.client_certificate_id,
        }
    }
}

impl Clm {
    /// `GET /api/v1/me`: the principal, its roles and organisation.
    pub async fn me(&self, p: &Principal) -> ServiceResult<MeView> {
        let user = self
            .core
            .find_user(p.user_id)
            .await?
            .ok_or(ServiceError::Unauthenticated)?;
        let organization = self.core.find_organization(p.organization_id).await?;
        Ok(MeView {
            user: UserView::from(&user),
            organization,
            authentication: Authentication::of(p),
        })
    }
}
