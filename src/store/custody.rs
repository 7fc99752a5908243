//! Wrapped private keys of server-side key generation (`private_keys`):
//! stored and read back only in their wrapped form.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set, TransactionTrait};
use uuid::Uuid;

use super::entity::secure::private_keys;
use super::{SecureDb, StoreResult, audit, parse_one};
use crate::domain::model::{AuditEvent, WrappedKey};
use crate::domain::{CertificateId, KeyId, OrganizationId};

/// The only wrap mechanism clm uses (RFC 5649 AES key wrap with padding).
pub const WRAP_MECHANISM: &str = "CKM_AES_KEY_WRAP_PAD";

impl SecureDb {
    /// Archives a wrapped key with its audit entry, one transaction.
    pub async fn insert_private_key(&self, k: &WrappedKey, event: &AuditEvent) -> StoreResult<()> {
        let txn = self.db.begin().await?;
        let now = Utc::now();
        private_keys::ActiveModel {
            id: Set(Uuid::new_v4()),
            certificate_id: Set(k.certificate_id.0),
            organization_id: Set(k.organization_id.0),
            kek_id: Set(k.kek_id.0),
            kek_version: Set(k.kek_version),
            wrap_mechanism: Set(WRAP_MECHANISM.to_string()),
            wrapped_key: Set(k.wrapped.clone()),
            key_algorithm: Set(k.key_algorithm.as_str().to_string()),
            status: Set("archived".to_string()),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await?;
        audit::insert_secure(&txn, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// The archived key of a certificate, if one was kept.
    pub async fn archived_key(
        &self,
        certificate: CertificateId,
    ) -> StoreResult<Option<WrappedKey>> {
        private_keys::Entity::find()
            .filter(private_keys::Column::CertificateId.eq(certificate.0))
            .filter(private_keys::Column::Status.eq("archived"))
            .one(&self.db)
            .await?
            .map(|r| {
                Ok(WrappedKey {
                    certificate_id: CertificateId(r.certificate_id),
                    organization_id: OrganizationId(r.organization_id),
                    kek_id: KeyId(r.kek_id),
                    kek_version: r.kek_version,
                    wrapped: r.wrapped_key,
                    key_algorithm: parse_one(&r.key_algorithm)?,
                })
            })
            .transpose()
    }
}
