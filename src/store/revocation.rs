//! clm_secure's side of revocation: certificate status changes with their
//! `certificate_revocations` rows, the per-CA CRL with its monotonic number,
//! the delegated OCSP signers, and the expiry sweep.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sea_orm::sea_query::{Expr, ExprTrait, JoinType};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    RelationTrait, Set,
};
use uuid::Uuid;

use super::entity::secure::{
    ca_crl_parts, ca_crls, certificate_authorities, certificate_revocations, certificates,
    encryption_keys, ocsp_signers,
};
use super::{SecureDb, StoreError, StoreResult, audit, parse_one};
use crate::domain::model::{AuditEvent, CA_DISABLED, Certificate, KeyReference};
use crate::domain::{CaId, CertificateId, CertificateStatus, RevocationReason, UserId, new_row_id};

/// A stored CRL's DER is written and read in parts of this size: as one
/// value, a million-entry CRL (46 MB) was copied three times over by the
/// database drivers on its way in, and those copies were the server's peak
/// memory (docs/performance.md).
const CRL_PART: usize = 1 << 20;

/// A certificate's status change, and where a reader of changes stands:
/// changes are read in (`at`, `id`) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub id: CertificateId,
    pub ca: CaId,
    pub serial_hex: String,
    /// Its `updated_at`.
    pub at: DateTime<Utc>,
}

impl StatusChange {
    /// Where a reader stands that wants every change stamped at `at` or
    /// later.
    pub fn from(at: DateTime<Utc>) -> Self {
        Self {
            id: CertificateId(Uuid::nil()),
            ca: CaId(Uuid::nil()),
            serial_hex: String::new(),
            at,
        }
    }
}

/// One line of a CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedSerial {
    pub serial_hex: String,
    pub revoked_at: DateTime<Utc>,
    pub reason: RevocationReason,
}

/// What OCSP needs to know about one serial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialStatus {
    pub status: CertificateStatus,
    pub revoked_at: Option<DateTime<Utc>>,
    pub reason: Option<RevocationReason>,
}

/// A signed CRL as stored.
#[derive(Clone, Debug)]
pub struct StoredCrl {
    pub ca_id: CaId,
    pub crl_number: i64,
    pub this_update: DateTime<Utc>,
    pub next_update: DateTime<Utc>,
    pub entry_count: i64,
    pub der: Vec<u8>,
}

/// A revocation (or hold) to record.
pub struct Revocation {
    pub certificate: CertificateId,
    pub from: CertificateStatus,
    pub reason: RevocationReason,
    pub at: DateTime<Utc>,
    pub by: Option<UserId>,
}

impl SecureDb {
    /// `from → revoked` (or `→ on_hold` for a hold), compare-and-set, with
    /// its revocation row and audit entry in one transaction. A hold made
    /// final replaces the hold's row. A revoked CA certificate takes its
    /// CA out of service (`disabled`) in the same transaction, so no
    /// instance records an issuance under it once this commits
    /// ([`super::secure_db::require_issuing_cas`]).
    pub async fn revoke(&self, r: &Revocation, event: &AuditEvent) -> StoreResult<Certificate> {
        let to = if r.reason.is_hold() {
            CertificateStatus::OnHold
        } else {
            CertificateStatus::Revoked
        };
        let txn = super::begin_write(&self.db).await?;
        let res = certificates::Entity::update_many()
            .col_expr(certificates::Column::Status, Expr::value(to.as_str()))
            .col_expr(certificates::Column::RevokedAt, Expr::value(Some(r.at)))
            .col_expr(
                certificates::Column::RevocationReason,
                Expr::value(Some(r.reason.as_str())),
            )
            .col_expr(certificates::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(certificates::Column::Id.eq(r.certificate.0))
            .filter(certificates::Column::Status.eq(r.from.as_str()))
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::Conflict(format!(
                "certificate is no longer {}",
                r.from
            )));
        }
        let cert = certificates::Entity::find_by_id(r.certificate.0)
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        certificate_revocations::Entity::delete_many()
            .filter(certificate_revocations::Column::CertificateId.eq(r.certificate.0))
            .exec(&txn)
            .await?;
        certificate_revocations::ActiveModel {
            id: Set(new_row_id()),
            certificate_id: Set(cert.id),
            ca_id: Set(cert.ca_id),
            serial_hex: Set(cert.serial_hex.clone()),
            reason: Set(r.reason.as_str().to_string()),
            revoked_at: Set(r.at),
            invalidity_date: Set(None),
            revoked_by: Set(r.by.map(Into::into)),
            created_at: Set(Utc::now()),
        }
        .insert(&txn)
        .await?;
        let disables_ca = cert.is_ca && to == CertificateStatus::Revoked;
        if disables_ca {
            certificate_authorities::Entity::update_many()
                .col_expr(
                    certificate_authorities::Column::Status,
                    Expr::value(CA_DISABLED),
                )
                .col_expr(
                    certificate_authorities::Column::UpdatedAt,
                    Expr::value(Utc::now()),
                )
                .filter(certificate_authorities::Column::CertificateId.eq(cert.id))
                .exec(&txn)
                .await?;
        }
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        if disables_ca {
            self.issuing_cas.clear();
        }
        super::secure_db::certificate_from(cert)
    }

    /// `on_hold → valid`: the hold's revocation row goes with it.
    pub async fn release_hold(
        &self,
        id: CertificateId,
        event: &AuditEvent,
    ) -> StoreResult<Certificate> {
        let txn = super::begin_write(&self.db).await?;
        let res = certificates::Entity::update_many()
            .col_expr(
                certificates::Column::Status,
                Expr::value(CertificateStatus::Valid.as_str()),
            )
            .col_expr(
                certificates::Column::RevokedAt,
                Expr::value(None::<DateTime<Utc>>),
            )
            .col_expr(
                certificates::Column::RevocationReason,
                Expr::value(None::<String>),
            )
            .col_expr(certificates::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(certificates::Column::Id.eq(id.0))
            .filter(certificates::Column::Status.eq(CertificateStatus::OnHold.as_str()))
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::Conflict("certificate is not on hold".into()));
        }
        certificate_revocations::Entity::delete_many()
            .filter(certificate_revocations::Column::CertificateId.eq(id.0))
            .exec(&txn)
            .await?;
        let cert = certificates::Entity::find_by_id(id.0)
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound)?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        super::secure_db::certificate_from(cert)
    }

    /// Hands every revocation (and hold) of `ca` to `each` as its row
    /// arrives, so a CRL of a million entries is encoded while it is read
    /// instead of after a million rows have been collected.
    pub async fn each_revoked_serial<E: From<StoreError>>(
        &self,
        ca: CaId,
        mut each: impl FnMut(RevokedSerial) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rows = revoked_serials(ca)
            .into_tuple::<(String, DateTime<Utc>, String)>()
            .stream(&self.read)
            .await
            .map_err(StoreError::from)?;
        while let Some((serial_hex, revoked_at, reason)) =
            rows.try_next().await.map_err(StoreError::from)?
        {
            each(RevokedSerial {
                serial_hex,
                revoked_at,
                reason: parse_one(&reason)?,
            })?;
        }
        Ok(())
    }

    /// The status of the certificate `ca` issued with `serial_hex`, if any.
    pub async fn serial_status(
        &self,
        ca: CaId,
        serial_hex: &str,
    ) -> StoreResult<Option<SerialStatus>> {
        let row: Option<(String, Option<DateTime<Utc>>, Option<String>)> =
            certificates::Entity::find()
                .select_only()
                .column(certificates::Column::Status)
                .column(certificates::Column::RevokedAt)
                .column(certificates::Column::RevocationReason)
                .filter(certificates::Column::CaId.eq(ca.0))
                .filter(certificates::Column::SerialHex.eq(serial_hex))
                .into_tuple()
                .one(&self.read)
                .await?;
        row.map(|(status, revoked_at, reason)| {
            Ok(SerialStatus {
                status: parse_one(&status)?,
                revoked_at,
                reason: reason.as_deref().map(parse_one).transpose()?,
            })
        })
        .transpose()
    }

    /// Certificates whose status changed (revoked, held, released,
    /// expired) after `after` in (`updated_at`, id) order, at most `limit`:
    /// how caches elsewhere learn of another instance's revocations. A
    /// fresh issuance is not a change: its `updated_at` is its `created_at`
    /// until the row is updated (the partial index of migration
    /// m20261207_000001_status_changes holds exactly the others).
    pub async fn status_changes_after(
        &self,
        after: &StatusChange,
        limit: u64,
    ) -> StoreResult<Vec<StatusChange>> {
        let rows: Vec<(Uuid, Uuid, String, DateTime<Utc>)> = status_changes(after, limit)
            .into_tuple()
            .all(&self.read)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, ca, serial_hex, at)| StatusChange {
                id: CertificateId(id),
                ca: CaId(ca),
                serial_hex,
                at,
            })
            .collect())
    }

    /// The CRL number the next CRL of `ca` must carry.
    pub async fn next_crl_number(&self, ca: CaId) -> StoreResult<i64> {
        let current: Option<i64> = certificate_authorities::Entity::find_by_id(ca.0)
            .select_only()
            .column(certificate_authorities::Column::CrlNumber)
            .into_tuple()
            .one(&self.read)
            .await?;
        current.map(|n| n + 1).ok_or(StoreError::NotFound)
    }

    /// Stores a signed CRL if its number is still the next one (compare-and-
    /// set on the CA's counter, so numbers only grow even with several
    /// writers); otherwise [`StoreError::Conflict`] and nothing changes.
    pub async fn store_crl(&self, crl: &StoredCrl, event: &AuditEvent) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let res = certificate_authorities::Entity::update_many()
            .col_expr(
                certificate_authorities::Column::CrlNumber,
                Expr::value(crl.crl_number),
            )
            .filter(certificate_authorities::Column::Id.eq(crl.ca_id.0))
            .filter(certificate_authorities::Column::CrlNumber.eq(crl.crl_number - 1))
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::Conflict(
                "another CRL with this number was stored first".into(),
            ));
        }
        ca_crls::Entity::delete_by_id(crl.ca_id.0)
            .exec(&txn)
            .await?;
        let now = Utc::now();
        // The old CRL's parts went with its row (ON DELETE CASCADE).
        ca_crls::Entity::insert(ca_crls::ActiveModel {
            ca_id: Set(crl.ca_id.0),
            crl_number: Set(crl.crl_number),
            this_update: Set(crl.this_update),
            next_update: Set(crl.next_update),
            entry_count: Set(crl.entry_count),
            der_length: Set(i64::try_from(crl.der.len()).map_err(super::error::corrupt)?),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec_without_returning(&txn)
        .await?;
        for (part, der) in crl.der.chunks(CRL_PART).enumerate() {
            // Without RETURNING, which would read each part straight back.
            ca_crl_parts::Entity::insert(ca_crl_parts::ActiveModel {
                ca_id: Set(crl.ca_id.0),
                part: Set(i32::try_from(part).map_err(super::error::corrupt)?),
                der: Set(der.to_vec()),
            })
            .exec_without_returning(&txn)
            .await?;
        }
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// `ca`'s stored CRL, its parts put together. One statement (the CRL's
    /// row joined to its parts, streamed part by part), so the parts and
    /// the row are of the same CRL even while another is being stored.
    pub async fn latest_crl(&self, ca: CaId) -> StoreResult<Option<StoredCrl>> {
        let mut rows = ca_crl_parts::Entity::find()
            .select_only()
            .column(ca_crls::Column::CrlNumber)
            .column(ca_crls::Column::ThisUpdate)
            .column(ca_crls::Column::NextUpdate)
            .column(ca_crls::Column::EntryCount)
            .column(ca_crls::Column::DerLength)
            .column(ca_crl_parts::Column::Der)
            .join(JoinType::InnerJoin, ca_crl_parts::Relation::Crl.def())
            .filter(ca_crl_parts::Column::CaId.eq(ca.0))
            .order_by_asc(ca_crl_parts::Column::Part)
            .into_tuple::<(i64, DateTime<Utc>, DateTime<Utc>, i64, i64, Vec<u8>)>()
            .stream(&self.read)
            .await?;
        let mut crl: Option<(StoredCrl, usize)> = None;
        while let Some((number, this_update, next_update, entries, length, part)) =
            rows.try_next().await?
        {
            let (stored, _) = crl.get_or_insert_with(|| {
                let length = usize::try_from(length).unwrap_or(0);
                let stored = StoredCrl {
                    ca_id: ca,
                    crl_number: number,
                    this_update,
                    next_update,
                    entry_count: entries,
                    der: Vec::with_capacity(length),
                };
                (stored, length)
            });
            stored.der.extend_from_slice(&part);
        }
        match crl {
            Some((stored, length)) if stored.der.len() != length => {
                Err(super::error::corrupt(format!(
                    "CRL {} of CA {ca}: its parts do not add up to its length",
                    stored.crl_number
                )))
            }
            other => Ok(other.map(|(stored, _)| stored)),
        }
    }

    /// The number of `ca`'s stored CRL and when it was signed, without its
    /// bytes.
    pub async fn latest_crl_header(&self, ca: CaId) -> StoreResult<Option<(i64, DateTime<Utc>)>> {
        Ok(ca_crls::Entity::find_by_id(ca.0)
            .select_only()
            .column(ca_crls::Column::CrlNumber)
            .column(ca_crls::Column::ThisUpdate)
            .into_tuple()
            .one(&self.read)
            .await?)
    }

    /// The newest OCSP signer of `ca`: its key and its certificate.
    pub async fn ocsp_signer(&self, ca: CaId) -> StoreResult<Option<(KeyReference, Certificate)>> {
        let Some(row) = ocsp_signers::Entity::find()
            .filter(ocsp_signers::Column::CaId.eq(ca.0))
            .order_by_desc(ocsp_signers::Column::NotAfter)
            .one(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let key = encryption_keys::Entity::find_by_id(row.key_id)
            .one(&self.read)
            .await?
            .ok_or_else(|| StoreError::Corrupt("OCSP signer names a missing key".into()))?;
        let cert = certificates::Entity::find_by_id(row.certificate_id)
            .one(&self.read)
            .await?
            .ok_or_else(|| StoreError::Corrupt("OCSP signer names a missing certificate".into()))?;
        Ok(Some((
            super::secure_db::key_from(key)?,
            super::secure_db::certificate_from(cert)?,
        )))
    }

    /// Registers a new OCSP signer: its certificate and the link, one
    /// transaction. The key is registered beforehand (it may sign several
    /// certificates over time).
    pub async fn insert_ocsp_signer(
        &self,
        ca: CaId,
        key: &KeyReference,
        cert: &Certificate,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        super::secure_db::certificate_active_model(cert)
            .insert(&txn)
            .await?;
        ocsp_signers::ActiveModel {
            id: Set(new_row_id()),
            ca_id: Set(ca.0),
            key_id: Set(key.id.0),
            certificate_id: Set(cert.id.0),
            not_after: Set(cert.not_after),
            created_at: Set(Utc::now()),
        }
        .insert(&txn)
        .await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Certificates past their notAfter that still say `valid`, oldest
    /// first, at most `limit`. Held ones stay `on_hold`: they are on the CRL
    /// with the time of the hold, which the schema keeps only for holds and
    /// revocations.
    pub async fn overdue_certificates(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<Certificate>> {
        certificates::Entity::find()
            .filter(certificates::Column::NotAfter.lt(now))
            .filter(certificates::Column::Status.eq(CertificateStatus::Valid.as_str()))
            .order_by_asc(certificates::Column::NotAfter)
            .limit(limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(super::secure_db::certificate_from)
            .collect()
    }

    /// `valid → expired`, compare-and-set, audited.
    pub async fn mark_expired(&self, id: CertificateId, event: &AuditEvent) -> StoreResult<()> {
        let from = CertificateStatus::Valid;
        let txn = super::begin_write(&self.db).await?;
        let res = certificates::Entity::update_many()
            .col_expr(
                certificates::Column::Status,
                Expr::value(CertificateStatus::Expired.as_str()),
            )
            .col_expr(certificates::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(certificates::Column::Id.eq(id.0))
            .filter(certificates::Column::Status.eq(from.as_str()))
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::Conflict(format!(
                "certificate is no longer {from}"
            )));
        }
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// The lines of `ca`'s CRL: every column from `idx_revocations_crl`, so
/// that a million of them are read from the index alone.
fn revoked_serials(ca: CaId) -> sea_orm::Select<certificate_revocations::Entity> {
    certificate_revocations::Entity::find()
        .select_only()
        .column(certificate_revocations::Column::SerialHex)
        .column(certificate_revocations::Column::RevokedAt)
        .column(certificate_revocations::Column::Reason)
        .filter(certificate_revocations::Column::CaId.eq(ca.0))
}

/// The query of [`SecureDb::status_changes_after`]; its first condition is
/// the partial index's own, so that both backends use that index.
fn status_changes(after: &StatusChange, limit: u64) -> sea_orm::Select<certificates::Entity> {
    let col = |c: certificates::Column| Expr::col((certificates::Entity, c));
    let at = col(certificates::Column::UpdatedAt);
    certificates::Entity::find()
        .select_only()
        .column(certificates::Column::Id)
        .column(certificates::Column::CaId)
        .column(certificates::Column::SerialHex)
        .column(certificates::Column::UpdatedAt)
        .filter(at.clone().ne(col(certificates::Column::CreatedAt)))
        // The first bound alone makes an index range: the second, with its
        // OR, would otherwise be tested on every entry of the index.
        .filter(at.clone().gte(after.at))
        .filter(
            at.clone().gt(after.at).or(at
                .eq(after.at)
                .and(col(certificates::Column::Id).gt(after.id.0))),
        )
        .order_by_asc(certificates::Column::UpdatedAt)
        .order_by_asc(certificates::Column::Id)
        .limit(limit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sea_orm::QueryTrait;

    use super::*;

    #[tokio::test]
    async fn a_crl_is_read_from_the_covering_index_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::sqlite_secure_for_plans(dir.path()).await;
        let plan =
            crate::store::sqlite_plan(&db.read, &revoked_serials(CaId::new()).into_query()).await;
        assert_eq!(
            plan,
            ["SEARCH certificate_revocations USING COVERING INDEX idx_revocations_crl (ca_id=?)"]
        );
    }

    /// The OCSP poll reads the partial index of status changes, in its
    /// order: fresh issuances are neither in it nor read.
    #[tokio::test]
    async fn status_changes_are_read_from_their_partial_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::sqlite_secure_for_plans(dir.path()).await;
        let after = StatusChange::from(Utc::now());
        let plan =
            crate::store::sqlite_plan(&db.read, &status_changes(&after, 100).into_query()).await;
        assert_eq!(
            plan,
            ["SEARCH certificates USING INDEX idx_certificates_status_changed (updated_at>?)"],
            "{plan:?}"
        );
    }
}
