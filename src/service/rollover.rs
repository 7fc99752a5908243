//! CA rollover: a new key and certificate for an existing CA under the same
//! name. The new CA takes over the old one's name and profiles, so new
//! issuance uses the new key; the old CA is kept as `retired` with its key
//! loaded, so it goes on signing the CRL and OCSP answers for what it issued
//! (its certificates point at its own CRL URL and its key's CertIDs) until
//! they have expired. A root rollover also issues a link certificate — the
//! new key certified by the old root — so chains to the new root validate
//! for relying parties that still trust only the old one.

use chrono::Utc;
use serde::Serialize;

use super::cas::CaView;
use super::error::{ServiceError, ServiceResult};
use super::{Clm, Principal};
use crate::domain::model::{AuditEvent, Certificate, CertificateAuthority, RequestContext};
use crate::domain::{CaId, CaKind, CertificateId, CertificateStatus, Permission, Signer};
use crate::pki;
use crate::store::StoreError;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RolloverView {
    /// The CA as it is now: the new key and certificate, the old name.
    pub ca: CaView,
    /// The id the old key and certificate live on under, now `retired`.
    pub retired_ca_id: CaId,
    /// Root rollovers only: the new root key certified by the old root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_certificate_pem: Option<String>,
}

impl Clm {
    pub async fn rollover_ca(
        &self,
        p: &Principal,
        id: CaId,
        ctx: &RequestContext,
    ) -> ServiceResult<RolloverView> {
        p.require(Permission::ManageCas)?;
        let old = self
            .secure
            .find_ca(id)
            .await?
            .filter(|ca| p.can_see(ca.organization_id))
            .ok_or(ServiceError::NotFound("CA"))?;
        if !old.is_active() {
            return Err(ServiceError::conflict(
                "ca_inactive",
                "only an active CA can be rolled over",
            ));
        }
        // Only a root's old key signs anything here: the link certificate.
        // An intermediate whose key is lost is replaced all the same, its
        // parent certifying the new key.
        let old_key = match old.kind {
            CaKind::Root => Some(self.signing_key(old.id).await?),
            CaKind::Intermediate => None,
        };
        let old_der = old
            .certificate_der
            .clone()
            .ok_or_else(|| ServiceError::internal("CA without a certificate"))?;
        let common_name = pki::common_name(&old_der)?
            .ok_or_else(|| ServiceError::internal("CA certificate without a common name"))?;
        let validity_days = u32::try_from((old.not_after - old.not_before).num_days().max(1))
            .map_err(ServiceError::internal)?;
        let parent = match old.parent_id {
            Some(parent) => Some(self.current_ca(parent).await?),
            None => None,
        };
        let new = self
            .prepare_ca(
                &old.name,
                &common_name,
                old.key_algorithm,
                validity_days,
                parent.as_ref(),
                old.organization_id,
                ctx,
            )
            .await?;
        // Until the rollover is stored the new key is nobody's: if a step
        // fails, or a concurrent rollover wins, it leaves the token again.
        let linked = async {
            if new.ca.subject != old.subject {
                return Err(ServiceError::internal(
                    "the new CA certificate's subject differs from the old one's",
                ));
            }
            match &old_key {
                Some(old_key) => self
                    .link_certificate(
                        &old,
                        old_key,
                        &old_der,
                        &new.key,
                        &common_name,
                        validity_days,
                    )
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let link = match linked.await {
            Ok(link) => link,
            Err(e) => {
                self.discard_ca_key(&new.ca.key, ctx).await;
                return Err(e);
            }
        };
        let retired_name = old.retired_name();
        let event = AuditEvent::new(p.actor(), "ca.rolled_over", ctx)
            .org(old.organization_id)
            .target("ca", new.ca.id)
            .details(serde_json::json!({
                "retired_ca_id": old.id,
                "old_key_id": old.key.id,
                "new_key_id": new.ca.key.id,
                "serial": new.cert.serial_hex,
                "link_serial": link.as_ref().map(|l| l.serial_hex.clone()),
            }));
        let stored = self
            .secure
            .rollover_ca(
                old.id,
                &retired_name,
                &new.ca,
                &new.cert,
                link.as_ref(),
                &event,
            )
            .await;
        match stored {
            Ok(()) => {}
            Err(StoreError::Conflict(m)) => {
                self.discard_ca_key(&new.ca.key, ctx).await;
                return Err(ServiceError::conflict("ca_inactive", m));
            }
            // Whether it was stored is unknown (a commit whose answer was
            // lost): the key stays, where `clm hsm check` lists it.
            Err(e) => return Err(e.into()),
        }
        self.ca_keys
            .write()
            .await
            .insert(new.ca.id, new.key.clone());

        // What follows repairs itself or can be repeated; the rollover
        // itself is done.
        match self.core.repoint_profiles(old.id, new.ca.id, &event).await {
            Ok(n) => {
                tracing::info!(profiles = n, ca = %new.ca.id, "profiles now issue from the new CA key")
            }
            Err(e) => {
                tracing::error!(error = %e, "profiles still name the retired CA; repoint them")
            }
        }
        if let Err(e) = self.ensure_ocsp_signers().await {
            tracing::warn!(error = %e.log_message(), "OCSP responder for the new CA key not issued yet; the hourly job retries");
        }
        if let Err(e) = self.refresh_crl_after_change(new.ca.id).await {
            tracing::warn!(error = %e.log_message(), "first CRL of the new CA key not signed yet; the CRL job retries");
        }
        Ok(RolloverView {
            ca: self.get_ca(p, new.ca.id).await?,
            retired_ca_id: old.id,
            link_certificate_pem: link.map(|l| pki::to_pem("CERTIFICATE", &l.certificate_der)),
        })
    }

    /// The CA that signs in `id`'s place now: `id` itself while active;
    /// after `id`'s rollover, the CA that holds its name — the newest key
    /// however many rollovers there have been.
    async fn current_ca(&self, id: CaId) -> ServiceResult<CertificateAuthority> {
        let ca = self
            .secure
            .find_ca(id)
            .await?
            .ok_or_else(|| ServiceError::internal(format!("parent CA {id} is missing")))?;
        let current = match ca.name_before_retirement() {
            Some(name) => self.secure.find_ca_by_name(name).await?,
            None => Some(ca),
        };
        current.filter(|ca| ca.is_active()).ok_or_else(|| {
            ServiceError::conflict("ca_inactive", "the parent CA is no longer active")
        })
    }

    async fn link_certificate(
        &self,
        old: &CertificateAuthority,
        old_key: &std::sync::Arc<crate::hsm::HsmKey>,
        old_der: &[u8],
        new_key: &std::sync::Arc<crate::hsm::HsmKey>,
        common_name: &str,
        validity_days: u32,
    ) -> ServiceResult<Certificate> {
        let serial = pki::new_serial();
        let spki = new_key.public_key_spki().to_vec();
        let subject = pki::CaSubject {
            common_name: common_name.to_string(),
            organization: Some("clm".to_string()),
        };
        let (k, der_in, s, alg) = (
            old_key.clone(),
            old_der.to_vec(),
            serial.clone(),
            old.key_algorithm,
        );
        let der = crate::logging::spawn_blocking_in_span(move || {
            let issuer = pki::Issuer::new(k.as_ref(), &der_in)?;
            pki::prepare_link_certificate(&subject, &spki, alg, &issuer, validity_days, &s)?
                .sign(k.as_ref())
        })
        .await
        .map_err(ServiceError::internal)??;
        let info = pki::CertInfo::from_der(&der)?;
        Ok(Certificate {
            id: CertificateId::new(),
            organization_id: old.organization_id,
            ca_id: old.id,
            request_id: None,
            profile_id: None,
            owner_id: None,
            serial_hex: pki::serial_hex(&serial),
            subject: info.subject,
            sans: Vec::new(),
            key_algorithm: old.key_algorithm.as_str().to_string(),
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
        })
    }
}
