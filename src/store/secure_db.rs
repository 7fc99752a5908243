//! clm_secure: the key registry (references to token objects only), CAs,
//! certificate requests with their reserved serials, issued certificates and
//! the security audit log. This database is the source of truth for what was
//! signed.

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, JoinType,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use super::entity::secure::{
    certificate_authorities, certificate_requests, certificates, encryption_keys,
};
use super::{Page, StoreError, StoreResult, audit, json_strings, parse_one, strings_from_json};
use crate::domain::model::{
    AuditEvent, CA_ACTIVE, Certificate, CertificateAuthority, CertificateRequest, KeyReference,
};
use crate::domain::{
    CaId, CertificateId, CertificateStatus, KeyId, KeyPurpose, KeyStatus, OrganizationId,
    ProfileId, RequestId, RequestStatus, San, Secret, UserId,
};

/// Handle on clm_secure.
#[derive(Clone, Debug)]
pub struct SecureDb {
    /// Writes, and reads that must see this handle's own transaction.
    pub(super) db: DatabaseConnection,
    /// Plain reads (see [`super::Connections`]).
    pub(super) read: DatabaseConnection,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) issuance: super::batched::Writer<super::batched::IssuanceWrite>,
    /// CAs as issuance sees them (`store::cache`).
    pub(super) issuing_cas: super::cache::Recent<CaId, Option<CertificateAuthority>>,
    /// MACs audit entries; empty until [`SecureDb::with_audit_mac`].
    pub(super) audit: audit::AuditSigner,
}

impl SecureDb {
    pub async fn connect(url: &Secret) -> StoreResult<Self> {
        let c = super::connect(url).await?;
        Ok(Self {
            db: c.write,
            read: c.read,
            runtime: c.runtime,
            issuance: Default::default(),
            issuing_cas: Default::default(),
            audit: audit::AuditSigner::default(),
        })
    }

    /// This handle, writing audit entries MACed by `mac`. Without it every
    /// audited change fails rather than store an entry without a MAC.
    pub fn with_audit_mac(self, mac: std::sync::Arc<dyn crate::domain::audit::AuditMac>) -> Self {
        Self {
            audit: audit::AuditSigner::new(mac),
            issuance: Default::default(),
            ..self
        }
    }

    /// Checkpoints this database's SQLite log if readers kept it from
    /// starting over (`store::wal`).
    pub async fn checkpoint_long_log(&self) -> StoreResult<Option<super::LogCheckpoint>> {
        super::wal::checkpoint_if_long(&self.db).await
    }

    /// Seals, checkpoints and entries of this database's audit log.
    pub fn audit_store(&self) -> audit::AuditStore {
        audit::AuditStore {
            db: self.db.clone(),
            read: self.read.clone(),
            log: crate::domain::audit::AuditLog::Secure,
        }
    }

    pub fn audit_signer(&self) -> &audit::AuditSigner {
        &self.audit
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        super::migrate::<migrations_secure::Migrator>(&self.db).await
    }

    pub async fn ping(&self) -> StoreResult<()> {
        super::ping(&self.db).await
    }

    pub async fn append_audit(&self, event: &AuditEvent) -> StoreResult<()> {
        audit::append(
            &self.db,
            crate::domain::audit::AuditLog::Secure,
            &self.audit,
            event,
        )
        .await
    }

    // ---- key registry ----------------------------------------------------

    pub async fn insert_key(
        &self,
        k: &KeyReference,
        org: Option<OrganizationId>,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let now = Utc::now();
        encryption_keys::ActiveModel {
            id: Set(k.id.0),
            label: Set(k.label.clone()),
            ckaid_hex: Set(k.ckaid_hex.clone()),
            pkcs11_uri: Set(k.pkcs11_uri.clone()),
            purpose: Set(k.purpose.as_str().to_string()),
            algorithm: Set(k.algorithm.clone()),
            status: Set(k.status.as_str().to_string()),
            version: Set(k.version),
            organization_id: Set(org.map(Into::into)),
            public_key_der: Set(k.public_key_der.clone()),
            activated_at: Set((k.status == KeyStatus::Active).then_some(now)),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Replaces the active key `old` by `new` (registered with `old` as its
    /// parent): `old` moves `active → deprecated` (compare-and-set) and stays
    /// registered, so what it protected can still be checked — one audited
    /// transaction.
    pub async fn rotate_key(
        &self,
        old: KeyId,
        new: &KeyReference,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let now = Utc::now();
        let res = encryption_keys::Entity::update_many()
            .col_expr(
                encryption_keys::Column::Status,
                Expr::value(KeyStatus::Deprecated.as_str()),
            )
            .col_expr(
                encryption_keys::Column::DeprecatedAt,
                Expr::value(Some(now)),
            )
            .filter(encryption_keys::Column::Id.eq(old.0))
            .filter(encryption_keys::Column::Status.eq(KeyStatus::Active.as_str()))
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::Conflict("key is no longer active".into()));
        }
        encryption_keys::ActiveModel {
            id: Set(new.id.0),
            label: Set(new.label.clone()),
            ckaid_hex: Set(new.ckaid_hex.clone()),
            pkcs11_uri: Set(new.pkcs11_uri.clone()),
            purpose: Set(new.purpose.as_str().to_string()),
            algorithm: Set(new.algorithm.clone()),
            status: Set(new.status.as_str().to_string()),
            version: Set(new.version),
            parent_key_id: Set(Some(old.0)),
            public_key_der: Set(new.public_key_der.clone()),
            activated_at: Set((new.status == KeyStatus::Active).then_some(now)),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// The newest active key registered for `purpose`.
    pub async fn find_active_key(&self, purpose: KeyPurpose) -> StoreResult<Option<KeyReference>> {
        encryption_keys::Entity::find()
            .filter(encryption_keys::Column::Purpose.eq(purpose.as_str()))
            .filter(encryption_keys::Column::Status.eq(KeyStatus::Active.as_str()))
            .order_by_desc(encryption_keys::Column::Version)
            .one(&self.read)
            .await?
            .map(key_from)
            .transpose()
    }

    pub async fn find_key(&self, id: KeyId) -> StoreResult<Option<KeyReference>> {
        encryption_keys::Entity::find_by_id(id.0)
            .one(&self.read)
            .await?
            .map(key_from)
            .transpose()
    }

    pub async fn list_keys(&self) -> StoreResult<Vec<KeyReference>> {
        encryption_keys::Entity::find()
            .order_by_asc(encryption_keys::Column::CreatedAt)
            .all(&self.read)
            .await?
            .into_iter()
            .map(key_from)
            .collect()
    }

    // ---- certificate authorities ----------------------------------------

    /// Stores a CA and its certificate together: the CA row first (the
    /// certificate names it as issuer for a root), then the certificate, then
    /// the link between them — one transaction.
    pub async fn insert_ca(
        &self,
        ca: &CertificateAuthority,
        cert: &Certificate,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        insert_ca_rows(&txn, ca, cert).await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        self.issuing_cas.clear();
        Ok(())
    }

    /// A CA rollover in one transaction: the old CA row is retired under
    /// `retired_name` (compare-and-set on its being active), the new CA and
    /// its certificate are stored, and for a root the link certificate
    /// (issued by the old CA) with them.
    pub async fn rollover_ca(
        &self,
        old: CaId,
        retired_name: &str,
        new_ca: &CertificateAuthority,
        new_cert: &Certificate,
        link: Option<&Certificate>,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        let res = certificate_authorities::Entity::update_many()
            .col_expr(
                certificate_authorities::Column::Status,
                Expr::value("retired"),
            )
            .col_expr(
                certificate_authorities::Column::Name,
                Expr::value(retired_name),
            )
            .col_expr(
                certificate_authorities::Column::UpdatedAt,
                Expr::value(Utc::now()),
            )
            .filter(certificate_authorities::Column::Id.eq(old.0))
            .filter(certificate_authorities::Column::Status.eq(CA_ACTIVE))
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::Conflict("the CA is no longer active".into()));
        }
        insert_ca_rows(&txn, new_ca, new_cert).await?;
        if let Some(link) = link {
            certificate_active_model(link).insert(&txn).await?;
        }
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        self.issuing_cas.clear();
        Ok(())
    }

    pub async fn list_cas(&self) -> StoreResult<Vec<CertificateAuthority>> {
        let rows = certificate_authorities::Entity::find()
            .order_by_asc(certificate_authorities::Column::CreatedAt)
            .all(&self.read)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.ca_from(r).await?);
        }
        Ok(out)
    }

    /// [`SecureDb::find_ca`] for the issuance path: a copy at most a second
    /// old, and none older than this process's last change to any CA.
    pub async fn find_issuing_ca(&self, id: CaId) -> StoreResult<Option<CertificateAuthority>> {
        self.issuing_cas.get_or_read(id, || self.find_ca(id)).await
    }

    pub async fn find_ca(&self, id: CaId) -> StoreResult<Option<CertificateAuthority>> {
        match certificate_authorities::Entity::find_by_id(id.0)
            .one(&self.read)
            .await?
        {
            Some(r) => Ok(Some(self.ca_from(r).await?)),
            None => Ok(None),
        }
    }

    pub async fn find_ca_by_name(&self, name: &str) -> StoreResult<Option<CertificateAuthority>> {
        let row = certificate_authorities::Entity::find()
            .filter(certificate_authorities::Column::Name.eq(name))
            .one(&self.read)
            .await?;
        match row {
            Some(r) => Ok(Some(self.ca_from(r).await?)),
            None => Ok(None),
        }
    }

    async fn ca_from(
        &self,
        r: certificate_authorities::Model,
    ) -> StoreResult<CertificateAuthority> {
        let key = encryption_keys::Entity::find_by_id(r.key_id)
            .one(&self.read)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("CA {} names a missing key", r.id)))?;
        let certificate_der = match r.certificate_id {
            Some(cid) => certificates::Entity::find_by_id(cid)
                .one(&self.read)
                .await?
                .map(|c| c.certificate_der),
            None => None,
        };
        Ok(CertificateAuthority {
            id: CaId(r.id),
            name: r.name,
            kind: parse_one(&r.kind)?,
            parent_id: r.parent_id.map(CaId),
            organization_id: r.organization_id.map(OrganizationId),
            key: key_from(key)?,
            key_algorithm: parse_one(&r.key_algorithm)?,
            subject: r.subject,
            status: r.status,
            certificate_id: r.certificate_id.map(CertificateId),
            certificate_der,
            not_before: r.not_before,
            not_after: r.not_after,
        })
    }

    // ---- requests and issuance ------------------------------------------

    /// Stores a new request (pending approval, or approved with its
    /// reserved serial: the intent of decision 3, step 1) with its audit
    /// entry. Concurrent calls share transactions (`store::batched`).
    pub async fn insert_request(
        &self,
        r: &CertificateRequest,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        self.issuance_writes()
            .submit(super::batched::IssuanceWrite::Intent {
                request: r.clone(),
                event: event.clone(),
            })
            .await
    }

    /// Stores the signed certificate, moves its request `approved → issued`
    /// (compare-and-set) and audits — one transaction (decision 3, step 3),
    /// shared with concurrent calls.
    pub async fn complete_issuance(
        &self,
        request: RequestId,
        cert: &Certificate,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        self.issuance_writes()
            .submit(super::batched::IssuanceWrite::Issued {
                request,
                cert: cert.clone(),
                event: event.clone(),
            })
            .await
    }

    /// [`SecureDb::insert_request`] in a transaction of its own.
    pub(super) async fn insert_request_alone(
        &self,
        r: &CertificateRequest,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        require_issuing_cas(&txn, [r.ca_id]).await?;
        request_active_model(r).insert(&txn).await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// [`SecureDb::complete_issuance`] in a transaction of its own.
    pub(super) async fn complete_issuance_alone(
        &self,
        request: RequestId,
        cert: &Certificate,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        require_issuing_cas(&txn, [cert.ca_id]).await?;
        certificate_active_model(cert).insert(&txn).await?;
        move_request(
            &txn,
            request,
            RequestStatus::Approved,
            RequestStatus::Issued,
            vec![(
                certificate_requests::Column::CertificateId,
                Expr::value(Some(cert.id.0)),
            )],
        )
        .await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Moves a request `from → approved`, with the CA that will sign it,
    /// and reserves its serial in the same compare-and-set: of concurrent
    /// callers exactly one wins. The reason of an earlier failure (this is
    /// a retry) goes: it no longer describes the request.
    pub async fn approve_request(
        &self,
        request: RequestId,
        from: RequestStatus,
        ca: CaId,
        serial_hex: &str,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let also = vec![
            (
                certificate_requests::Column::ReservedSerialHex,
                Expr::value(Some(serial_hex.to_string())),
            ),
            (certificate_requests::Column::CaId, Expr::value(ca.0)),
            (
                certificate_requests::Column::FailureReason,
                Expr::value(None::<String>),
            ),
        ];
        self.transition(
            request,
            from,
            RequestStatus::Approved,
            also,
            Some(ca),
            event,
        )
        .await
    }

    /// Compare-and-set of a request's status, audited.
    pub async fn move_request(
        &self,
        request: RequestId,
        from: RequestStatus,
        to: RequestStatus,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        self.transition(request, from, to, Vec::new(), None, event)
            .await
    }

    /// `from → failed` with the reason, audited.
    pub async fn fail_request(
        &self,
        request: RequestId,
        from: RequestStatus,
        reason: &str,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let why = vec![(
            certificate_requests::Column::FailureReason,
            Expr::value(Some(reason.to_string())),
        )];
        self.transition(request, from, RequestStatus::Failed, why, None, event)
            .await
    }

    /// One audited compare-and-set of a request, in its own transaction;
    /// with `signer`, only while that CA issues.
    async fn transition(
        &self,
        request: RequestId,
        from: RequestStatus,
        to: RequestStatus,
        also: Vec<(certificate_requests::Column, Expr)>,
        signer: Option<CaId>,
        event: &AuditEvent,
    ) -> StoreResult<()> {
        let txn = super::begin_write(&self.db).await?;
        require_issuing_cas(&txn, signer).await?;
        move_request(&txn, request, from, to, also).await?;
        audit::insert_secure(&txn, &self.audit, event).await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn find_request(&self, id: RequestId) -> StoreResult<Option<CertificateRequest>> {
        certificate_requests::Entity::find_by_id(id.0)
            .one(&self.read)
            .await?
            .map(request_from)
            .transpose()
    }

    pub async fn find_request_by_idempotency_key(
        &self,
        requester: UserId,
        key: &str,
    ) -> StoreResult<Option<CertificateRequest>> {
        certificate_requests::Entity::find()
            .filter(certificate_requests::Column::RequesterId.eq(requester.0))
            .filter(certificate_requests::Column::IdempotencyKey.eq(key))
            .one(&self.read)
            .await?
            .map(request_from)
            .transpose()
    }

    /// A page of requests, newest first, with the total matching count.
    pub async fn list_requests(
        &self,
        scope: Option<OrganizationId>,
        status: Option<RequestStatus>,
        page: Page,
    ) -> StoreResult<(Vec<CertificateRequest>, u64)> {
        let mut q = certificate_requests::Entity::find();
        if let Some(org) = scope {
            q = q.filter(certificate_requests::Column::OrganizationId.eq(org.0));
        }
        if let Some(status) = status {
            q = q.filter(certificate_requests::Column::Status.eq(status.as_str()));
        }
        let total = q.clone().count(&self.read).await?;
        let rows = q
            .order_by_desc(certificate_requests::Column::CreatedAt)
            .order_by_desc(certificate_requests::Column::Id)
            .offset(page.offset())
            .limit(page.per_page)
            .all(&self.read)
            .await?;
        Ok((
            rows.into_iter()
                .map(request_from)
                .collect::<StoreResult<_>>()?,
            total,
        ))
    }

    pub async fn find_certificate(&self, id: CertificateId) -> StoreResult<Option<Certificate>> {
        certificates::Entity::find_by_id(id.0)
            .one(&self.read)
            .await?
            .map(certificate_from)
            .transpose()
    }
}

/// The CA row, its certificate and the link between them (for a root the
/// certificate names the CA as issuer, so the CA row comes first).
async fn insert_ca_rows<C: ConnectionTrait>(
    txn: &C,
    ca: &CertificateAuthority,
    cert: &Certificate,
) -> StoreResult<()> {
    let now = Utc::now();
    certificate_authorities::ActiveModel {
        id: Set(ca.id.0),
        name: Set(ca.name.clone()),
        kind: Set(ca.kind.as_str().to_string()),
        parent_id: Set(ca.parent_id.map(Into::into)),
        organization_id: Set(ca.organization_id.map(Into::into)),
        key_id: Set(ca.key.id.0),
        certificate_id: Set(None),
        subject: Set(ca.subject.clone()),
        key_algorithm: Set(ca.key_algorithm.as_str().to_string()),
        status: Set(ca.status.clone()),
        crl_number: Set(0),
        not_before: Set(ca.not_before),
        not_after: Set(ca.not_after),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(txn)
    .await?;
    certificate_active_model(cert).insert(txn).await?;
    certificate_authorities::Entity::update_many()
        .col_expr(
            certificate_authorities::Column::CertificateId,
            Expr::value(Some(cert.id.0)),
        )
        .filter(certificate_authorities::Column::Id.eq(ca.id.0))
        .exec(txn)
        .await?;
    Ok(())
}

/// Refuses, inside the caller's transaction, to record an issuance (an
/// intent or a certificate) under a CA that is not issuing: one that is not
/// `active` (retired, disabled) or whose own certificate is not `valid`
/// (revoked, on hold, expired). The CA rows and their certificates' rows
/// are share-locked until commit on PostgreSQL, so a concurrent revocation
/// or hold either waits for this transaction or is seen committed by it;
/// SQLite's single writer gives the same order. The issuing-CA cache
/// cannot give this: another instance's change reaches it only after a
/// second.
pub(super) async fn require_issuing_cas<C: ConnectionTrait>(
    db: &C,
    cas: impl IntoIterator<Item = CaId>,
) -> StoreResult<()> {
    let wanted: std::collections::BTreeSet<uuid::Uuid> = cas.into_iter().map(|c| c.0).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let own_certificate = certificate_authorities::Entity::belongs_to(certificates::Entity)
        .from(certificate_authorities::Column::CertificateId)
        .to(certificates::Column::Id)
        .into();
    let issuing: Vec<uuid::Uuid> = certificate_authorities::Entity::find()
        .select_only()
        .column(certificate_authorities::Column::Id)
        .join(JoinType::InnerJoin, own_certificate)
        .filter(certificate_authorities::Column::Id.is_in(wanted.iter().copied()))
        .filter(certificate_authorities::Column::Status.eq(CA_ACTIVE))
        .filter(certificates::Column::Status.eq(CertificateStatus::Valid.as_str()))
        .lock_shared()
        .into_tuple()
        .all(db)
        .await?;
    match wanted.into_iter().find(|id| !issuing.contains(id)) {
        Some(inactive) => Err(StoreError::CaInactive(CaId(inactive))),
        None => Ok(()),
    }
}

/// Compare-and-set of a request's status (and the columns in `also`): zero rows
/// means somebody else moved it first, a [`StoreError::Conflict`].
async fn move_request<C: ConnectionTrait>(
    db: &C,
    id: RequestId,
    from: RequestStatus,
    to: RequestStatus,
    also: Vec<(certificate_requests::Column, Expr)>,
) -> StoreResult<()> {
    // `updated_at` set here: left alone, the touch trigger (SQLite) sets it
    // with a second UPDATE of the row.
    let mut update = certificate_requests::Entity::update_many()
        .col_expr(
            certificate_requests::Column::Status,
            Expr::value(to.as_str()),
        )
        .col_expr(
            certificate_requests::Column::UpdatedAt,
            Expr::value(Utc::now()),
        );
    for (column, value) in also {
        update = update.col_expr(column, value);
    }
    let res = update
        .filter(certificate_requests::Column::Id.eq(id.0))
        .filter(certificate_requests::Column::Status.eq(from.as_str()))
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Err(StoreError::Conflict(format!("request is no longer {from}")));
    }
    Ok(())
}

pub(super) fn request_active_model(r: &CertificateRequest) -> certificate_requests::ActiveModel {
    certificate_requests::ActiveModel {
        id: Set(r.id.0),
        organization_id: Set(r.organization_id.0),
        profile_id: Set(r.profile_id.0),
        requester_id: Set(r.requester_id.0),
        ca_id: Set(r.ca_id.0),
        status: Set(r.status.as_str().to_string()),
        csr_der: Set(r.csr_der.clone()),
        subject: Set(r.subject.clone()),
        sans: Set(json_strings(&r.sans)),
        key_algorithm: Set(r.key_algorithm.as_str().to_string()),
        validity_days: Set(r.validity_days as i32),
        reserved_serial_hex: Set(r.reserved_serial_hex.clone()),
        certificate_id: Set(None),
        failure_reason: Set(None),
        idempotency_key: Set(r.idempotency_key.clone()),
        replaces_certificate_id: Set(r.replaces_certificate_id.map(Into::into)),
        supersede_replaced: Set(r.supersede_replaced),
        created_at: Set(r.created_at),
        updated_at: Set(r.created_at),
        ..Default::default()
    }
}

pub(super) fn certificate_active_model(c: &Certificate) -> certificates::ActiveModel {
    certificates::ActiveModel {
        id: Set(c.id.0),
        organization_id: Set(c.organization_id.map(Into::into)),
        ca_id: Set(c.ca_id.0),
        request_id: Set(c.request_id.map(Into::into)),
        profile_id: Set(c.profile_id.map(Into::into)),
        owner_id: Set(c.owner_id.map(Into::into)),
        serial_hex: Set(c.serial_hex.clone()),
        subject: Set(c.subject.clone()),
        sans: Set(json_strings(&c.sans)),
        key_algorithm: Set(c.key_algorithm.clone()),
        not_before: Set(c.not_before),
        not_after: Set(c.not_after),
        status: Set(c.status.as_str().to_string()),
        is_ca: Set(c.is_ca),
        certificate_der: Set(c.certificate_der.clone()),
        fingerprint_sha256: Set(c.fingerprint_sha256.clone()),
        replaces_certificate_id: Set(c.replaces_certificate_id.map(Into::into)),
        revoked_at: Set(c.revoked_at),
        revocation_reason: Set(c.revocation_reason.clone()),
        created_at: Set(c.created_at),
        updated_at: Set(c.created_at),
    }
}

pub(super) fn key_from(r: encryption_keys::Model) -> StoreResult<KeyReference> {
    Ok(KeyReference {
        id: KeyId(r.id),
        label: r.label,
        ckaid_hex: r.ckaid_hex,
        pkcs11_uri: r.pkcs11_uri,
        purpose: parse_one(&r.purpose)?,
        algorithm: r.algorithm,
        status: parse_one(&r.status)?,
        version: r.version,
        public_key_der: r.public_key_der,
    })
}

pub(super) fn request_from(r: certificate_requests::Model) -> StoreResult<CertificateRequest> {
    Ok(CertificateRequest {
        id: RequestId(r.id),
        organization_id: OrganizationId(r.organization_id),
        profile_id: ProfileId(r.profile_id),
        requester_id: UserId(r.requester_id),
        ca_id: CaId(r.ca_id),
        status: parse_one(&r.status)?,
        csr_der: r.csr_der,
        subject: r.subject,
        sans: strings_from_json(&r.sans)?
            .iter()
            .map(|s| San::parse(s))
            .collect(),
        key_algorithm: parse_one(&r.key_algorithm)?,
        validity_days: u32::try_from(r.validity_days).map_err(super::error::corrupt)?,
        reserved_serial_hex: r.reserved_serial_hex,
        certificate_id: r.certificate_id.map(CertificateId),
        failure_reason: r.failure_reason,
        idempotency_key: r.idempotency_key,
        replaces_certificate_id: r.replaces_certificate_id.map(CertificateId),
        supersede_replaced: r.supersede_replaced,
        created_at: r.created_at,
    })
}

pub(super) fn certificate_from(r: certificates::Model) -> StoreResult<Certificate> {
    Ok(Certificate {
        id: CertificateId(r.id),
        organization_id: r.organization_id.map(OrganizationId),
        ca_id: CaId(r.ca_id),
        request_id: r.request_id.map(RequestId),
        profile_id: r.profile_id.map(ProfileId),
        owner_id: r.owner_id.map(UserId),
        serial_hex: r.serial_hex,
        subject: r.subject,
        sans: strings_from_json(&r.sans)?,
        key_algorithm: r.key_algorithm,
        not_before: r.not_before,
        not_after: r.not_after,
        status: parse_one(&r.status)?,
        is_ca: r.is_ca,
        certificate_der: r.certificate_der,
        fingerprint_sha256: r.fingerprint_sha256,
        revoked_at: r.revoked_at,
        revocation_reason: r.revocation_reason,
        replaces_certificate_id: r.replaces_certificate_id.map(CertificateId),
        created_at: r.created_at,
    })
}
