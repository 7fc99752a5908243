//! What authentication by client certificate reads on every request: the
//! certificate by its DER fingerprint and its issuers' state in clm_secure,
//! the binding to a principal in clm_core — each an indexed lookup — and
//! the CA certificates the TLS listener trusts.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};

use super::entity::core::client_certificate_bindings as bindings;
use super::entity::secure::{certificate_authorities, certificates};
use super::secure_db::certificate_from;
use super::{CoreDb, SecureDb, StoreError, StoreResult, audit};
use crate::domain::model::{AuditEvent, Certificate, ClientCertBinding};
use crate::domain::{ApiKeyId, CaId, CertificateId, OrganizationId, UserId};

/// One CA on the way from a certificate's issuer up to its root.
#[derive(Clone, Debug)]
pub struct IssuerState {
    pub ca_id: CaId,
    pub status: String,
    pub not_after: DateTime<Utc>,
}

/// Longer CA chains than this are treated as a corrupt lineage.
const MAX_CHAIN: usize = 16;

impl SecureDb {
    /// The certificate whose DER has this SHA-256 (lower-case hex).
    pub async fn find_certificate_by_fingerprint(
        &self,
        fingerprint_sha256: &str,
    ) -> StoreResult<Option<Certificate>> {
        certificates::Entity::find()
            .filter(certificates::Column::FingerprintSha256.eq(fingerprint_sha256))
            .one(&self.read)
            .await?
            .map(certificate_from)
            .transpose()
    }

    /// The issuing CA and every CA above it, issuer first.
    pub async fn issuer_chain(&self, ca: CaId) -> StoreResult<Vec<IssuerState>> {
        // The CA table is small; one read beats one query per level.
        let rows = certificate_authorities::Entity::find()
            .all(&self.read)
            .await?;
        let mut chain = Vec::new();
        let mut next = Some(ca.0);
        while let Some(id) = next {
            if chain.len() == MAX_CHAIN {
                return Err(StoreError::Corrupt(format!("CA {} has no root", ca.0)));
            }
            let row = rows
                .iter()
                .find(|r| r.id == id)
                .ok_or_else(|| StoreError::Corrupt(format!("missing CA {id}")))?;
            chain.push(IssuerState {
                ca_id: CaId(row.id),
                status: row.status.clone(),
                not_after: row.not_after,
            });
            next = row.parent_id;
        }
        Ok(chain)
    }

    /// The DER of every CA's own certificate, whatever the CA's status:
    /// the TLS listener accepts client certificates signed by any of them
    /// and leaves the CA's state to the per-request check.
    pub async fn ca_certificates(&self) -> StoreResult<Vec<Vec<u8>>> {
        let ids: Vec<uuid::Uuid> = certificate_authorities::Entity::find()
            .all(&self.read)
            .await?
            .into_iter()
            .filter_map(|r| r.certificate_id)
            .collect();
        Ok(certificates::Entity::find()
            .filter(certificates::Column::Id.is_in(ids))
            .all(&self.read)
            .await?
            .into_iter()
            .map(|c| c.certificate_der)
            .collect())
    }
}

impl CoreDb {
    /// Records a binding and its audit entry. A certificate already bound
    /// is a [`StoreError::Duplicate`].
    pub async fn insert_client_cert_binding(
        &self,
        b: &ClientCertBinding,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        bindings::ActiveModel {
            id: Set(b.id),
            certificate_id: Set(b.certificate_id.0),
            organization_id: Set(b.organization_id.0),
            user_id: Set(b.user_id.0),
            api_key_id: Set(b.api_key_id.map(|k| k.0)),
            last_used_at: Set(None),
            created_at: Set(b.created_at),
            updated_at: Set(b.created_at),
        }
        .insert(&txn)
        .await?;
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn find_client_cert_binding(
        &self,
        certificate: CertificateId,
    ) -> StoreResult<Option<ClientCertBinding>> {
        Ok(bindings::Entity::find()
            .filter(bindings::Column::CertificateId.eq(certificate.0))
            .one(&self.read)
            .await?
            .map(binding_from))
    }

    /// Removes the binding of `certificate`; none is [`StoreError::NotFound`].
    pub async fn delete_client_cert_binding(
        &self,
        certificate: CertificateId,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let res = bindings::Entity::delete_many()
            .filter(bindings::Column::CertificateId.eq(certificate.0))
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::NotFound);
        }
        audit::insert_core(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn touch_client_cert_binding(
        &self,
        id: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        bindings::Entity::update_many()
            .col_expr(bindings::Column::LastUsedAt, Expr::value(Some(now)))
            .filter(bindings::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

/// Ends every binding of `user` (inside the caller's transaction), with
/// its sessions and API keys.
pub(super) async fn delete_bindings_of<C: ConnectionTrait>(
    db: &C,
    user: UserId,
) -> StoreResult<()> {
    bindings::Entity::delete_many()
        .filter(bindings::Column::UserId.eq(user.0))
        .exec(db)
        .await?;
    Ok(())
}

fn binding_from(r: bindings::Model) -> ClientCertBinding {
    ClientCertBinding {
        id: r.id,
        certificate_id: CertificateId(r.certificate_id),
        organization_id: OrganizationId(r.organization_id),
        user_id: UserId(r.user_id),
        api_key_id: r.api_key_id.map(ApiKeyId),
        last_used_at: r.last_used_at,
        created_at: r.created_at,
    }
}
