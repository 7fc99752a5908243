//! `clm init`: everything a fresh installation needs, created only where
//! absent so that a second run changes nothing — both schemas, the KEK and
//! audit MAC key in the token, a root and an intermediate CA whose keys are
//! generated in the HSM, a default profile, the first super admin and the
//! TLS certificate of the API listener.

use std::path::{Path, PathBuf};

use chrono::Utc;

use super::auth::{check_password_policy, hash_password};
use super::error::{ServiceError, ServiceResult};
use super::{Clm, Settings};
use crate::config::Config;
use crate::domain::model::{
    Actor, AuditEvent, Certificate, CertificateAuthority, CertificateRequest, KeyReference,
    Organization, Profile, RequestContext,
};
use crate::domain::{
    CaId, CaKind, CertificateId, CertificateStatus, ExtendedKeyUsage, KeyAlgorithm, KeyId,
    KeyPurpose, KeyStatus, ProfileId, ProfileRules, RequestId, RequestStatus, Role, San, Secret,
    UserId,
};
use crate::hsm::Hsm;
use crate::pki;
use crate::store::{CoreDb, NewUser, SecureDb, StoreError};

pub const ROOT_CA_NAME: &str = "clm-root";
pub const INTERMEDIATE_CA_NAME: &str = "clm-intermediate";
pub const DEFAULT_PROFILE_NAME: &str = "default";
const SYSTEM_ORG_SLUG: &str = "system";
/// The TLS certificate is replaced when it has less than this left.
const TLS_RENEW_BEFORE_DAYS: i64 = 30;

/// What `init` did; empty `actions` means nothing was missing.
#[derive(Debug, Default)]
pub struct InitReport {
    pub actions: Vec<String>,
    /// The generated password of a newly created bootstrap admin, to be
    /// shown once to the operator.
    pub admin_password: Option<Secret>,
    pub admin_email: Option<String>,
}

/// A CA ready to be stored: its record, its certificate, and its key.
pub(super) struct PreparedCa {
    pub ca: CertificateAuthority,
    pub cert: Certificate,
    pub key: std::sync::Arc<crate::hsm::HsmKey>,
}

impl Clm {
    /// Connects both databases, applies pending migrations and opens the
    /// token.
    pub async fn open(cfg: &Config) -> ServiceResult<Clm> {
        let core = CoreDb::connect(&cfg.core_database_url).await?;
        let secure = SecureDb::connect(&cfg.secure_database_url).await?;
        core.migrate().await?;
        secure.migrate().await?;
        let pin = cfg
            .pin()
            .map_err(|e| ServiceError::internal(e.to_string()))?
            .clone();
        let (module, label, pool) = (
            cfg.pkcs11_module.clone(),
            cfg.pkcs11_token_label.clone(),
            cfg.hsm_pool_size,
        );
        let hsm = tokio::task::spawn_blocking(move || Hsm::open(&module, &label, &pin, pool))
            .await
            .map_err(ServiceError::internal)??;
        Clm::new(core, secure, hsm, Settings::from(cfg)).await
    }

    /// Creates whatever is missing. Idempotent.
    pub async fn bootstrap(&self, cfg: &Config) -> ServiceResult<InitReport> {
        let ctx = RequestContext {
            request_id: Some(format!("init-{}", uuid::Uuid::new_v4())),
            ..Default::default()
        };
        let mut report = InitReport::default();
        // The audit key first: registering any key writes an audit entry,
        // which needs the audit key.
        self.ensure_secret_key(KeyPurpose::AuditMac, &mut report, &ctx)
            .await?;
        self.ensure_secret_key(KeyPurpose::Kek, &mut report, &ctx)
            .await?;
        let org = self.ensure_system_org(&mut report, &ctx).await?;
        let root = self
            .ensure_ca(
                ROOT_CA_NAME,
                "clm Root CA",
                KeyAlgorithm::EcdsaP384,
                7305,
                None,
                &mut report,
                &ctx,
            )
            .await?;
        let intermediate = self
            .ensure_ca(
                INTERMEDIATE_CA_NAME,
                "clm Intermediate CA",
                KeyAlgorithm::EcdsaP256,
                3652,
                Some(&root),
                &mut report,
                &ctx,
            )
            .await?;
        // A CA that fails its proof is refused (503 `ca_unavailable`) while
        // the rest of the service comes up; `clm hsm check` names it.
        for (id, _) in self.load_ca_keys().await? {
            report.actions.push(format!(
                "CA {id} cannot sign: its HSM key is missing or does not match; see `clm hsm check`"
            ));
        }
        let issued = self.ensure_ocsp_signers().await?;
        if issued > 0 {
            report
                .actions
                .push(format!("issued {issued} OCSP responder certificate(s)"));
        }
        let profile = self
            .ensure_default_profile(&intermediate, &mut report, &ctx)
            .await?;
        self.ensure_admin(cfg, &org, &mut report, &ctx).await?;
        if cfg.tls_enabled {
            self.ensure_tls_certificate(
                &cfg.tls_dir(),
                &org,
                &profile,
                &intermediate,
                &root,
                &mut report,
                &ctx,
            )
            .await?;
        }
        Ok(report)
    }

    async fn ensure_secret_key(
        &self,
        purpose: KeyPurpose,
        report: &mut InitReport,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        if let Some(existing) = self.secure.find_active_key(purpose).await? {
            let ckaid = hex::decode(&existing.ckaid_hex).map_err(ServiceError::internal)?;
            if !self.hsm.key_exists(&ckaid).await? {
                return Err(ServiceError::internal(format!(
                    "the registered {purpose} key {} is missing from the token",
                    existing.id
                )));
            }
            return Ok(());
        }
        let label = format!("clm-{}-v1", purpose.as_str().replace('_', "-"));
        let handle = match purpose {
            KeyPurpose::Kek => self.hsm.generate_kek(&label).await?,
            _ => self.hsm.generate_mac_key(&label).await?,
        };
        let key = KeyReference {
            id: KeyId::new(),
            pkcs11_uri: self.hsm.pkcs11_uri(&label, &handle.cka_id),
            ckaid_hex: hex::encode(&handle.cka_id),
            label,
            purpose,
            algorithm: match purpose {
                KeyPurpose::Kek => "aes-256".into(),
                _ => "hmac-sha256".into(),
            },
            status: KeyStatus::Active,
            version: 1,
            public_key_der: None,
        };
        if purpose == KeyPurpose::AuditMac {
            // Its own registration is the first entry it MACs.
            self.audit_keys.install(1, handle.cka_id.clone(), true)?;
        }
        let event = AuditEvent::new(Actor::SYSTEM, "key.generated", ctx)
            .target("encryption_key", key.id)
            .details(serde_json::json!({ "purpose": purpose, "label": key.label, "version": 1 }));
        self.secure.insert_key(&key, None, &event).await?;
        report
            .actions
            .push(format!("generated {purpose} key in the token"));
        Ok(())
    }

    async fn ensure_system_org(
        &self,
        report: &mut InitReport,
        ctx: &RequestContext,
    ) -> ServiceResult<Organization> {
        if let Some(org) = self.core.find_organization_by_slug(SYSTEM_ORG_SLUG).await? {
            return Ok(org);
        }
        let event = AuditEvent::new(Actor::SYSTEM, "organization.created", ctx);
        let org = self
            .core
            .insert_organization("System", SYSTEM_ORG_SLUG, &event)
            .await?;
        report
            .actions
            .push("created the system organisation".into());
        Ok(org)
    }

    #[allow(clippy::too_many_arguments)]
    async fn ensure_ca(
        &self,
        name: &str,
        common_name: &str,
        algorithm: KeyAlgorithm,
        validity_days: u32,
        parent: Option<&CertificateAuthority>,
        report: &mut InitReport,
        ctx: &RequestContext,
    ) -> ServiceResult<CertificateAuthority> {
        if let Some(ca) = self.secure.find_ca_by_name(name).await? {
            return Ok(ca);
        }
        let ca = self
            .create_ca(
                name,
                common_name,
                algorithm,
                validity_days,
                parent,
                None,
                ctx,
            )
            .await?;
        report
            .actions
            .push(format!("created CA {name} with its key in the HSM"));
        Ok(ca)
    }

    /// Generates the key in the token, registers it, has the certificate
    /// signed (by itself or the parent) and stores the CA.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn create_ca(
        &self,
        name: &str,
        common_name: &str,
        algorithm: KeyAlgorithm,
        validity_days: u32,
        parent: Option<&CertificateAuthority>,
        organization_id: Option<crate::domain::OrganizationId>,
        ctx: &RequestContext,
    ) -> ServiceResult<CertificateAuthority> {
        let new = self
            .prepare_ca(
                name,
                common_name,
                algorithm,
                validity_days,
                parent,
                organization_id,
                ctx,
            )
            .await?;
        let event = AuditEvent::new(Actor::SYSTEM, "ca.created", ctx)
            .org(organization_id)
            .target("ca", new.ca.id)
            .details(serde_json::json!({
                "name": new.ca.name,
                "kind": new.ca.kind,
                "parent_id": new.ca.parent_id,
                "serial": new.cert.serial_hex,
                "key_id": new.ca.key.id,
            }));
        match self.secure.insert_ca(&new.ca, &new.cert, &event).await {
            Ok(()) => {}
            // A concurrent creation took the name: the key is nobody's.
            Err(StoreError::Duplicate(_) | StoreError::Conflict(_)) => {
                self.discard_ca_key(&new.ca.key, ctx).await;
                return Err(ServiceError::conflict(
                    "duplicate_ca",
                    "a CA with this name already exists",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        // The certificate was just signed for this very key: usable at once.
        self.ca_keys.write().await.insert(new.ca.id, new.key);
        Ok(new.ca)
    }

    /// A new CA's key (generated in the token and registered) and its
    /// certificate, signed by itself or by `parent`'s current key; nothing
    /// of the CA is stored yet. A caller that does not store it hands the
    /// key to [`Clm::discard_ca_key`].
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn prepare_ca(
        &self,
        name: &str,
        common_name: &str,
        algorithm: KeyAlgorithm,
        validity_days: u32,
        parent: Option<&CertificateAuthority>,
        organization_id: Option<crate::domain::OrganizationId>,
        ctx: &RequestContext,
    ) -> ServiceResult<PreparedCa> {
        // The parent must be able to sign before a key is made for it.
        let parent_signer = match parent {
            Some(parent) => Some((
                self.signing_key(parent.id).await?,
                parent
                    .certificate_der
                    .clone()
                    .ok_or_else(|| ServiceError::internal("parent CA has no certificate"))?,
            )),
            None => None,
        };
        let id = CaId::new();
        let label = format!("clm-ca-{id}");
        let key = std::sync::Arc::new(self.hsm.generate_key_pair(algorithm, &label).await?);
        let key_ref = KeyReference {
            id: KeyId::new(),
            pkcs11_uri: self.hsm.pkcs11_uri(&label, key.cka_id()),
            ckaid_hex: hex::encode(key.cka_id()),
            label,
            purpose: KeyPurpose::CaSigning,
            algorithm: algorithm.as_str().to_string(),
            status: KeyStatus::Active,
            version: 1,
            public_key_der: Some(crate::domain::Signer::public_key_spki(key.as_ref()).to_vec()),
        };
        let event = AuditEvent::new(Actor::SYSTEM, "key.generated", ctx)
            .target("encryption_key", key_ref.id)
            .details(serde_json::json!({ "purpose": KeyPurpose::CaSigning, "algorithm": algorithm, "ca_id": id }));
        if let Err(e) = self.secure.insert_key(&key_ref, None, &event).await {
            if let Err(gone) = self.hsm.destroy_key_pair(key.cka_id()).await {
                tracing::error!(label = %key_ref.label, error = %gone, "an unregistered CA key is left in the token");
            }
            return Err(e.into());
        }

        let serial = pki::new_serial();
        let subject = pki::CaSubject {
            common_name: common_name.to_string(),
            organization: Some("clm".to_string()),
        };
        let urls = parent.map(|p| pki::PublicUrls::new(&self.settings.public_url, p.id));
        let k = key.clone();
        let spki = crate::domain::Signer::public_key_spki(key.as_ref()).to_vec();
        let s = serial.clone();
        let signed = tokio::task::spawn_blocking(move || match parent_signer {
            Some((parent_key, parent_der)) => {
                let issuer = pki::Issuer::new(parent_key.as_ref(), &parent_der)?;
                pki::build_intermediate_ca(
                    &subject,
                    &spki,
                    algorithm,
                    &issuer,
                    validity_days,
                    &s,
                    urls.as_ref(),
                )
            }
            None => pki::build_root_ca(k.as_ref(), &subject, validity_days, &s),
        })
        .await
        .map_err(ServiceError::internal)
        .and_then(|built| built.map_err(ServiceError::from));
        let der = match signed {
            Ok(der) => der,
            Err(e) => {
                self.discard_ca_key(&key_ref, ctx).await;
                return Err(e);
            }
        };
        let info = pki::CertInfo::from_der(&der)?;
        let ca = CertificateAuthority {
            id,
            name: name.to_string(),
            kind: if parent.is_some() {
                CaKind::Intermediate
            } else {
                CaKind::Root
            },
            parent_id: parent.map(|p| p.id),
            organization_id,
            key: key_ref,
            key_algorithm: algorithm,
            subject: info.subject.clone(),
            status: "active".into(),
            certificate_id: Some(CertificateId::new()),
            certificate_der: Some(der.clone()),
            not_before: info.not_before,
            not_after: info.not_after,
        };
        let cert = Certificate {
            id: ca.certificate_id.unwrap_or_default(),
            organization_id,
            ca_id: parent.map(|p| p.id).unwrap_or(id),
            request_id: None,
            profile_id: None,
            owner_id: None,
            serial_hex: pki::serial_hex(&serial),
            subject: info.subject,
            sans: Vec::new(),
            key_algorithm: algorithm.as_str().to_string(),
            not_before: info.not_before,
            not_after: info.not_after,
            status: CertificateStatus::Valid,
            is_ca: true,
            certificate_der: der,
            fingerprint_sha256: info.fingerprint_sha256,
            revoked_at: None,
            revocation_reason: None,
            replaces_certificate_id: None,
            created_at: Utc::now(),
        };
        Ok(PreparedCa { ca, cert, key })
    }

    /// Undoes [`Clm::prepare_ca`]'s key for a CA that is not stored (its
    /// certificate could not be signed, or a concurrent creation or rollover
    /// won): the key leaves the token and the registry marks it destroyed,
    /// so no unused CA key lingers. The caller reports its own error; a
    /// failure here is logged.
    pub(super) async fn discard_ca_key(&self, key: &KeyReference, ctx: &RequestContext) {
        let discarded = async {
            let cka_id = hex::decode(&key.ckaid_hex).map_err(ServiceError::internal)?;
            self.hsm.destroy_key_pair(&cka_id).await?;
            let event = AuditEvent::new(Actor::SYSTEM, "key.destroyed", ctx)
                .target("encryption_key", key.id)
                .details(serde_json::json!({
                    "purpose": key.purpose,
                    "reason": "the CA it was generated for was not created",
                }));
            self.secure
                .move_key(key.id, key.status, KeyStatus::Destroyed, &event)
                .await?;
            ServiceResult::Ok(())
        };
        if let Err(e) = discarded.await {
            tracing::error!(key = %key.id, label = %key.label, error = %e.log_message(), "an unused CA key is left in the token");
        }
    }

    async fn ensure_default_profile(
        &self,
        ca: &CertificateAuthority,
        report: &mut InitReport,
        ctx: &RequestContext,
    ) -> ServiceResult<Profile> {
        if let Some(p) = self
            .core
            .find_system_profile_by_name(DEFAULT_PROFILE_NAME)
            .await?
        {
            return Ok(p);
        }
        let profile = Profile {
            id: ProfileId::new(),
            organization_id: None,
            name: DEFAULT_PROFILE_NAME.into(),
            ca_id: ca.id,
            rules: ProfileRules {
                key_algorithms: vec![
                    KeyAlgorithm::EcdsaP256,
                    KeyAlgorithm::EcdsaP384,
                    KeyAlgorithm::Rsa2048,
                    KeyAlgorithm::Rsa3072,
                    KeyAlgorithm::Rsa4096,
                ],
                // Names that can never be public: a fresh installation must
                // not be able to certify somebody else's domain.
                allowed_dns_suffixes: vec!["localhost".into(), "internal".into(), "test".into()],
                allow_ip_sans: true,
                max_validity_days: 397,
                extended_key_usages: vec![
                    ExtendedKeyUsage::ServerAuth,
                    ExtendedKeyUsage::ClientAuth,
                ],
                required_approvals: 0,
                allow_server_keygen: false,
                allow_key_archival: false,
                allow_key_reuse: false,
                approver_roles: vec![Role::Approver],
            },
            created_at: Utc::now(),
        };
        let event = AuditEvent::new(Actor::SYSTEM, "profile.created", ctx)
            .target("profile", profile.id)
            .details(serde_json::json!({ "name": profile.name, "ca_id": ca.id }));
        self.core.insert_profile(&profile, &event).await?;
        report
            .actions
            .push(format!("created the `{DEFAULT_PROFILE_NAME}` profile"));
        Ok(profile)
    }

    async fn ensure_admin(
        &self,
        cfg: &Config,
        org: &Organization,
        report: &mut InitReport,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        if self.core.any_user_with_role(Role::SuperAdmin).await? {
            return Ok(());
        }
        let (password, generated) = match &cfg.bootstrap_admin_password {
            Some(pw) => (pw.clone(), false),
            None => (super::auth::generate_password(), true),
        };
        check_password_policy(&password)?;
        let pw = password.clone();
        let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
            .await
            .map_err(ServiceError::internal)??;
        let event = AuditEvent::new(Actor::SYSTEM, "user.created", ctx);
        self.core
            .insert_user(
                NewUser {
                    organization_id: org.id,
                    email: &cfg.bootstrap_admin_email,
                    display_name: Some("Bootstrap administrator"),
                    password_hash: &hash,
                    roles: &[Role::SuperAdmin],
                    granted_by: None,
                },
                &event,
            )
            .await?;
        report
            .actions
            .push(format!("created super admin {}", cfg.bootstrap_admin_email));
        report.admin_email = Some(cfg.bootstrap_admin_email.clone());
        if generated {
            report.admin_password = Some(password);
        }
        Ok(())
    }

    /// Issues the API listener's certificate (localhost, 127.0.0.1, ::1)
    /// from the intermediate, through the normal issuance path so that it is
    /// accounted for like any other certificate. Its key is a software key
    /// in the data directory, as for any TLS server.
    #[allow(clippy::too_many_arguments)]
    async fn ensure_tls_certificate(
        &self,
        dir: &Path,
        org: &Organization,
        profile: &Profile,
        ca: &CertificateAuthority,
        root: &CertificateAuthority,
        report: &mut InitReport,
        ctx: &RequestContext,
    ) -> ServiceResult<()> {
        let cert_path = dir.join("server.crt");
        let key_path = dir.join("server.key");
        if let Ok(pem_text) = std::fs::read_to_string(&cert_path)
            && key_path.exists()
            && let Ok(info) = pki::CertInfo::from_pem(&pem_text)
            && info.not_after - Utc::now() > chrono::Duration::days(TLS_RENEW_BEFORE_DAYS)
        {
            return Ok(());
        }
        let tls_key = pki::TlsKey::generate()?;
        let approved = crate::domain::ApprovedCertificate {
            common_name: Some("localhost".into()),
            sans: vec![
                San::Dns("localhost".into()),
                San::Ip(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
                San::Ip(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
            ],
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity_days: 397,
            extended_key_usages: vec![ExtendedKeyUsage::ServerAuth],
        };
        let mut request = CertificateRequest {
            id: RequestId::new(),
            organization_id: org.id,
            profile_id: profile.id,
            requester_id: UserId(uuid::Uuid::nil()),
            ca_id: ca.id,
            status: RequestStatus::Approved,
            csr_der: None,
            subject: "localhost".into(),
            sans: approved.sans.clone(),
            key_algorithm: approved.key_algorithm,
            validity_days: approved.validity_days,
            reserved_serial_hex: None,
            certificate_id: None,
            failure_reason: None,
            idempotency_key: None,
            replaces_certificate_id: None,
            supersede_replaced: false,
            created_at: Utc::now(),
        };
        let key = self.signing_key(ca.id).await?;
        let cert = self
            .issue(
                &mut request,
                &approved,
                tls_key.spki_der(),
                ca,
                key,
                Actor::SYSTEM,
                super::issuance::Reservation::New,
                ctx,
            )
            .await?;
        let mut chain = pki::to_pem("CERTIFICATE", &cert.certificate_der);
        chain.push_str(&self.chain_pem(ca.id).await?);
        let root_pem = root
            .certificate_der
            .as_deref()
            .map(|d| pki::to_pem("CERTIFICATE", d))
            .unwrap_or_default();
        write_tls_files(dir, &chain, tls_key.private_key_pem(), &root_pem)
            .map_err(ServiceError::internal)?;
        report.actions.push(format!(
            "issued the API's TLS certificate into {}",
            dir.display()
        ));
        Ok(())
    }
}

fn write_tls_files(
    dir: &Path,
    chain: &str,
    key_pem: &Secret,
    root_pem: &str,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join("server.key.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(key_pem.expose().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("server.key"))?;
    std::fs::write(dir.join("server.crt"), chain)?;
    std::fs::write(dir.join("ca.pem"), root_pem)?;
    Ok(())
}

/// `clm migrate`: both schemas up to date, nothing else touched.
pub async fn migrate(cfg: &Config) -> ServiceResult<()> {
    CoreDb::connect(&cfg.core_database_url)
        .await?
        .migrate()
        .await?;
    SecureDb::connect(&cfg.secure_database_url)
        .await?
        .migrate()
        .await?;
    Ok(())
}
