//! KEK rotation. A new KEK version is generated in the token and becomes
//! active at once (keys archived from then on use it); every archived key
//! under the old KEK is rewrapped inside the token in batches, each batch
//! committed with its progress, so a rotation interrupted at any point
//! resumes where it stopped — at the next start of `clm serve`, by its job,
//! or by `clm keys rotate-kek`. The old KEK stays `deprecated` for the
//! rollback window, during which a rollback rewraps everything back; after
//! it the old KEK is destroyed in the token.

use chrono::{Duration, Utc};

use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal};
use crate::domain::model::{Actor, AuditEvent, KeyReference, KeyRotation, RequestContext};
use crate::domain::{KeyId, KeyPurpose, KeyStatus, Permission, RotationStatus};
use crate::store::StoreError;

impl Clm {
    /// `POST /api/v1/keys/kek/rotate`: starts a rotation and rewraps in the
    /// background. 409 while one runs.
    pub async fn rotate_kek_for(
        &self,
        p: &Principal,
        ctx: &RequestContext,
    ) -> ServiceResult<KeyRotation> {
        p.require(Permission::ManageCas)?;
        let rotation = self.start_kek_rotation(p.actor(), ctx).await?;
        self.continue_in_background();
        Ok(rotation)
    }

    /// `POST /api/v1/keys/kek/rollback`, inside the rollback window.
    pub async fn rollback_kek_for(
        &self,
        p: &Principal,
        ctx: &RequestContext,
    ) -> ServiceResult<KeyRotation> {
        p.require(Permission::ManageCas)?;
        let rotation = self.start_kek_rollback(p.actor(), ctx).await?;
        self.continue_in_background();
        Ok(rotation)
    }

    /// `GET /api/v1/keys/rotations`: the newest rotations with progress.
    pub async fn kek_rotations_for(&self, p: &Principal) -> ServiceResult<Vec<KeyRotation>> {
        p.require(Permission::ManageCas)?;
        Ok(self.secure.kek_rotations(50).await?)
    }

    /// The rotations, newest first (for `clm keys status`).
    pub async fn kek_rotation_history(&self) -> ServiceResult<Vec<KeyRotation>> {
        Ok(self.secure.kek_rotations(50).await?)
    }

    fn continue_in_background(&self) {
        let clm = self.clone();
        tokio::spawn(async move {
            let Some(_run) = super::shutdown::begin_job().await else {
                return;
            };
            // Under the job's lease, so that this task and the KEK
            // maintenance job of any instance do not rewrap side by side
            // (and a job run does not sit behind this one holding its
            // lease); if someone else holds it, they carry on.
            let rewrap = clm.continue_kek_rotation();
            if let Err(e) = clm
                .run_leased(
                    super::jobs::KEK_MAINTENANCE,
                    std::time::Duration::ZERO,
                    rewrap,
                )
                .await
            {
                tracing::error!(error = %e.log_message(), "KEK rotation stopped; it resumes with the next job run");
            }
        });
    }

    /// Generates the next KEK version and records the rotation.
    pub async fn start_kek_rotation(
        &self,
        actor: Actor,
        ctx: &RequestContext,
    ) -> ServiceResult<KeyRotation> {
        if self.secure.running_kek_rotation().await?.is_some() {
            return Err(running());
        }
        let old = self.active_kek().await?;
        let version = old.version + 1;
        let label = format!("clm-kek-v{version}");
        let handle = self.hsm.generate_kek(&label).await?;
        let new = KeyReference {
            id: KeyId::new(),
            pkcs11_uri: self.hsm.secret_key_uri(&handle),
            ckaid_hex: hex::encode(&handle.cka_id),
            label,
            purpose: KeyPurpose::Kek,
            algorithm: "aes-256".into(),
            status: KeyStatus::Active,
            version,
            public_key_der: None,
        };
        let event = AuditEvent::new(actor.clone(), "kek.rotation_started", ctx)
            .target("encryption_key", new.id)
            .details(serde_json::json!({
                "old_key_id": old.id,
                "old_version": old.version,
                "new_version": version,
            }));
        let started = self
            .secure
            .start_kek_rotation(&old, &new, actor.id, &event)
            .await;
        if started.is_err() {
            // Nothing refers to the key made here; leave no orphan behind.
            if let Err(d) = self.hsm.destroy_secret_key(&handle.cka_id).await {
                tracing::warn!(error = %d, "unused KEK left in the token");
            }
        }
        match started {
            Ok(r) => Ok(r),
            // Someone else started first.
            Err(StoreError::Duplicate(_) | StoreError::Conflict(_)) => Err(running()),
            Err(e) => Err(e.into()),
        }
    }

    /// Rolls the newest completed rotation back while its window is open.
    pub async fn start_kek_rollback(
        &self,
        actor: Actor,
        ctx: &RequestContext,
    ) -> ServiceResult<KeyRotation> {
        if self.secure.running_kek_rotation().await?.is_some() {
            return Err(running());
        }
        let no_rollback = || {
            ServiceError::conflict(
                "no_rollback",
                "there is no completed KEK rotation inside its rollback window",
            )
        };
        let last = self
            .secure
            .kek_rotations(1)
            .await?
            .into_iter()
            .next()
            .filter(|r| r.status == RotationStatus::Completed)
            .ok_or_else(no_rollback)?;
        let old = match last.old_key_id {
            Some(id) => self.secure.find_key(id).await?,
            None => None,
        }
        .ok_or_else(no_rollback)?;
        if old.status != KeyStatus::Deprecated {
            return Err(no_rollback());
        }
        if let Some(until) = self.secure.rollback_deadline(old.id).await?
            && until <= Utc::now()
        {
            return Err(no_rollback());
        }
        let event = AuditEvent::new(actor.clone(), "kek.rollback_started", ctx)
            .target("encryption_key", old.id)
            .details(
                serde_json::json!({ "rotation_id": last.id, "restored_version": old.version }),
            );
        self.secure
            .start_kek_rollback(&last, actor.id, &event)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) | StoreError::Duplicate(_) => running(),
                other => other.into(),
            })
    }

    /// Drives the running rotation (if any) to its end. Safe to call from
    /// several processes at once: each key moves by compare-and-set, and
    /// only one caller can finish the rotation. Within one process the
    /// callers take turns.
    pub async fn continue_kek_rotation(&self) -> ServiceResult<Option<KeyRotation>> {
        let _turn = self.rewrapping.lock().await;
        let Some(rotation) = self.secure.running_kek_rotation().await? else {
            return Ok(None);
        };
        let (Some(old), Some(new)) = (
            match rotation.old_key_id {
                Some(id) => self.secure.find_key(id).await?,
                None => None,
            },
            self.secure.find_key(rotation.new_key_id).await?,
        ) else {
            return Err(ServiceError::internal("a rotation names a missing KEK"));
        };
        let old_id = hex::decode(&old.ckaid_hex).map_err(ServiceError::internal)?;
        let new_id = hex::decode(&new.ckaid_hex).map_err(ServiceError::internal)?;
        let ctx = RequestContext::default();
        let batch = self.settings.kek_rewrap_batch.max(1);
        loop {
            let rows = self.secure.keys_under(old.id, batch).await?;
            if rows.is_empty() {
                break;
            }
            let mut rewrapped = Vec::with_capacity(rows.len());
            for (id, wrapped, alg) in rows {
                let w = self
                    .hsm
                    .rewrap_private_key(&old_id, &new_id, wrapped, alg)
                    .await?;
                rewrapped.push((id, w));
            }
            let event = AuditEvent::new(Actor::SYSTEM, "kek.rewrap_batch", &ctx)
                .target("key_rotation", rotation.id)
                .details(serde_json::json!({ "keys": rewrapped.len(), "to_version": new.version }));
            self.secure
                .store_rewrapped(rotation.id, &old, &new, &rewrapped, &event)
                .await?;
            if self.settings.kek_rewrap_pause_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(
                    self.settings.kek_rewrap_pause_ms,
                ))
                .await;
            }
        }
        let until = Utc::now() + Duration::days(self.settings.kek_rollback_days);
        let event = AuditEvent::new(Actor::SYSTEM, "kek.rotation_completed", &ctx)
            .target("key_rotation", rotation.id)
            .details(serde_json::json!({
                "old_key_id": old.id,
                "new_key_id": new.id,
                "rollback_until": super::rfc3339(until),
            }));
        match self
            .secure
            .finish_kek_rotation(&rotation, until, &event)
            .await
        {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(self
            .secure
            .kek_rotations(50)
            .await?
            .into_iter()
            .find(|r| r.id == rotation.id))
    }

    /// The KEK job: resumes a running rotation, destroys KEKs whose
    /// rollback window has passed and nothing uses, and rotates on schedule
    /// (`CLM_KEK_ROTATION_DAYS`, 0 = only by hand). Returns actions taken.
    pub async fn kek_maintenance(&self) -> ServiceResult<usize> {
        let mut done = usize::from(self.continue_kek_rotation().await?.is_some());
        let ctx = RequestContext::default();
        for k in self.secure.kek_past_rollback(Utc::now()).await? {
            if !self.secure.keys_under(k.id, 1).await?.is_empty() {
                tracing::warn!(key = %k.id, "a retired KEK still protects keys; not destroyed");
                continue;
            }
            let cka_id = hex::decode(&k.ckaid_hex).map_err(ServiceError::internal)?;
            self.hsm.destroy_secret_key(&cka_id).await?;
            let event = AuditEvent::new(Actor::SYSTEM, "kek.destroyed", &ctx)
                .target("encryption_key", k.id)
                .details(serde_json::json!({ "version": k.version }));
            self.secure
                .move_key(k.id, k.status, KeyStatus::Destroyed, &event)
                .await?;
            done += 1;
        }
        if self.settings.kek_rotation_days > 0
            && let Some(since) = self.secure.active_since(KeyPurpose::Kek).await?
            && since + Duration::days(self.settings.kek_rotation_days) <= Utc::now()
        {
            match self.start_kek_rotation(Actor::SYSTEM, &ctx).await {
                Ok(_) => {
                    self.continue_kek_rotation().await?;
                    done += 1;
                }
                Err(ServiceError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Checks that every archived key unwraps under its KEK and matches its
    /// certificate. Returns (checked, failures with the reason).
    pub async fn verify_archived_keys(&self) -> ServiceResult<(usize, Vec<String>)> {
        let mut checked = 0;
        let mut failures = Vec::new();
        for (cert_id, key) in self.secure.all_archived_keys().await? {
            checked += 1;
            let result = async {
                let kek = self
                    .secure
                    .find_key(key.kek_id)
                    .await?
                    .ok_or_else(|| ServiceError::internal("missing KEK"))?;
                let cka_id = hex::decode(&kek.ckaid_hex).map_err(ServiceError::internal)?;
                let cert = self
                    .secure
                    .find_certificate(cert_id)
                    .await?
                    .ok_or_else(|| ServiceError::internal("missing certificate"))?;
                let spki = crate::pki::spki_of(&cert.certificate_der)?;
                // Export proves the key unwraps and matches the public key.
                self.hsm
                    .export_private_key(&cka_id, key.wrapped, key.key_algorithm, spki)
                    .await?;
                Ok::<(), ServiceError>(())
            }
            .await;
            if let Err(e) = result {
                failures.push(format!("{cert_id}: {}", e.log_message()));
            }
        }
        Ok((checked, failures))
    }

    async fn active_kek(&self) -> ServiceResult<KeyReference> {
        self.secure
            .find_active_key(KeyPurpose::Kek)
            .await?
            .ok_or_else(|| ServiceError::internal("no active KEK is registered"))
    }
}

fn running() -> ServiceError {
    ServiceError::conflict("rotation_running", "a KEK rotation is already running")
}

/// The system profile `clm bench keys-fill` issues through.
const BENCH_KEYGEN_PROFILE: &str = "bench-keygen";

impl Clm {
    /// `clm bench keys-fill`: `count` real server-generated keys (generated
    /// in the HSM, certified, archived wrapped under the active KEK) through
    /// the production path, `concurrency` at a time, as the bootstrap admin.
    pub async fn bench_keys_fill(
        &self,
        admin_email: &str,
        count: usize,
        concurrency: usize,
    ) -> ServiceResult<usize> {
        use futures_util::StreamExt as _;

        let p = self.principal_for_benchmark(admin_email).await?;
        let profile = match self
            .core
            .find_system_profile_by_name(BENCH_KEYGEN_PROFILE)
            .await?
        {
            Some(pr) => pr,
            None => {
                let default = self
                    .core
                    .find_system_profile_by_name(super::bootstrap::DEFAULT_PROFILE_NAME)
                    .await?
                    .ok_or(ServiceError::NotFound("profile"))?;
                let profile = crate::domain::model::Profile {
                    id: crate::domain::ProfileId::new(),
                    organization_id: None,
                    name: BENCH_KEYGEN_PROFILE.into(),
                    rules: crate::domain::ProfileRules {
                        allow_server_keygen: true,
                        allow_key_archival: true,
                        key_algorithms: vec![crate::domain::KeyAlgorithm::EcdsaP256],
                        ..default.rules.clone()
                    },
                    ..default
                };
                let event =
                    AuditEvent::new(p.actor(), "profile.created", &RequestContext::default())
                        .target("profile", profile.id);
                self.core.insert_profile(&profile, &event).await?;
                profile
            }
        };
        let results: Vec<ServiceResult<()>> = futures_util::stream::iter(0..count)
            .map(|i| {
                let (p, profile_id) = (p.clone(), profile.id);
                async move {
                    let body = super::SubmitRequest {
                        profile_id: profile_id.0,
                        csr_pem: None,
                        validity_days: Some(30),
                        subject: None,
                        sans: Some(vec![format!("k{i}-{}.bench.test", uuid::Uuid::new_v4())]),
                        key_algorithm: None,
                        passphrase: Some(crate::domain::Secret::new("bench passphrase")),
                    };
                    self.submit_request(&p, body, None, &RequestContext::default())
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(ServiceError::internal(format!(
                "{failed} of {count} keys failed, the first: {}",
                e.log_message()
            )));
        }
        Ok(count)
    }
}
