//! The sea-orm entities of `src/store/entity` against the schema the two
//! migrators create, on SQLite and PostgreSQL: every table has an entity,
//! and a model with every column filled in (optional ones too) is written
//! and read back unchanged — uuid, JSON, bytes, booleans, big integers and
//! timestamps with sub-second precision included. The entity sources are
//! compiled here by path, so that a schema change that breaks them fails
//! in this crate's tests rather than at run time of the server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../migrations_core/tests/support/mod.rs"]
mod support;

#[path = "../../src/store/entity/mod.rs"]
mod entity;

use std::collections::BTreeSet;

use sea_orm::entity::prelude::*;
use sea_orm::{ActiveModelTrait, DatabaseConnection, IntoActiveModel};
use sea_orm_migration::MigratorTrait;
use serde_json::json;
use support::*;

use entity::{core, secure};

#[tokio::test]
async fn sqlite() {
    on_sqlite(scenario).await;
}

#[tokio::test]
async fn postgres() {
    on_postgres("clm_test_entities", scenario).await;
}

/// Writes `model` through its entity, reads the table back and expects to
/// find it exactly as written.
macro_rules! round_trip {
    ($db:expr, $module:path, $model:expr) => {{
        use $module as m;
        let model: m::Model = $model;
        let stored = model
            .clone()
            .into_active_model()
            .reset_all()
            .insert($db)
            .await
            .unwrap_or_else(|e| panic!("insert into {}: {e}", m::Entity.table_name()));
        assert_eq!(
            stored,
            model,
            "{} as returned by insert",
            m::Entity.table_name()
        );
        let all = m::Entity::find()
            .all($db)
            .await
            .unwrap_or_else(|e| panic!("select from {}: {e}", m::Entity.table_name()));
        assert!(
            all.contains(&model),
            "{} read back differently: {all:?}",
            m::Entity.table_name()
        );
        m::Entity.table_name().to_string()
    }};
}

/// The seals, checkpoints and purge permits both audit logs have.
macro_rules! audit_chain_round_trips {
    ($db:expr, $t:expr, $covered:expr, $seals:path, $checkpoints:path, $permits:path) => {{
        use $checkpoints as c;
        use $permits as p;
        use $seals as s;
        $covered.insert(round_trip!(
            $db,
            $seals,
            s::Model {
                seal_no: 1,
                first_seq: 1,
                last_seq: 10,
                entry_count: 9,
                gaps: json!([4]),
                running_hash: vec![3; 32],
                prev_mac: vec![],
                key_version: 1,
                sealed_at: $t,
                mac: vec![4; 32],
            }
        ));
        $covered.insert(round_trip!(
            $db,
            $checkpoints,
            c::Model {
                purged_through_seal: 1,
                purged_through_seq: 10,
                seal_mac: vec![4; 32],
                key_version: 2,
                created_at: $t,
                mac: vec![5; 32],
            }
        ));
        $covered.insert(round_trip!(
            $db,
            $permits,
            p::Model {
                id: Uuid::new_v4(),
                table_name: "audit_log".into(),
                up_to: 10,
                created_at: $t,
            }
        ));
    }};
}

async fn scenario(db: DatabaseConnection) {
    let db = &db;
    migrations_core::Migrator::up(db, None).await.unwrap();
    migrations_secure::Migrator::up(db, None).await.unwrap();

    // Sub-second, but within PostgreSQL's microsecond precision.
    let t = DateTimeUtc::from_timestamp(1_790_000_000, 123_456_000).unwrap();
    let later = DateTimeUtc::from_timestamp(1_890_000_000, 654_321_000).unwrap();
    let id = Uuid::new_v4;
    let (org, user, approver, role) = (id(), id(), id(), id());
    let (policy, workflow, instance, webhook) = (id(), id(), id(), id());
    let (key, kek, ca, cert, request, api_key) = (id(), id(), id(), id(), id(), id());
    let mut covered = BTreeSet::new();

    covered.insert(round_trip!(
        db,
        core::organizations,
        core::organizations::Model {
            id: org,
            name: "Example".into(),
            slug: "example".into(),
            status: "active".into(),
            settings: json!({"locale": "en"}),
            created_at: t,
            updated_at: t,
            deleted_at: Some(later),
        }
    ));
    for (uid, email) in [
        (user, "user@example.com"),
        (approver, "approver@example.com"),
    ] {
        covered.insert(round_trip!(
            db,
            core::users,
            core::users::Model {
                id: uid,
                organization_id: org,
                email: email.into(),
                display_name: Some("Ünïcödé".into()),
                password_hash: "$argon2id$v=19$…".into(),
                status: "active".into(),
                failed_login_count: 3,
                locked_until: Some(later),
                last_login_at: Some(t),
                password_changed_at: Some(t),
                created_at: t,
                updated_at: t,
                deleted_at: None,
            }
        ));
    }
    covered.insert(round_trip!(
        db,
        core::roles,
        core::roles::Model {
            id: role,
            name: "custom".into(),
            description: "a custom role".into(),
            permissions: json!(["cas:read"]),
            is_system: false,
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::user_roles,
        core::user_roles::Model {
            user_id: user,
            role_id: role,
            granted_by: Some(approver),
            created_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::user_organizations,
        core::user_organizations::Model {
            user_id: user,
            organization_id: org,
            created_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::policies,
        core::policies::Model {
            id: policy,
            organization_id: Some(org),
            name: "web".into(),
            policy_type: "certificate_profile".into(),
            ca_id: ca,
            key_algorithms: json!(["ecdsa-p256"]),
            allowed_dns_suffixes: json!([".example.com"]),
            allow_ip_sans: true,
            max_validity_days: 90,
            extended_key_usages: json!(["serverAuth"]),
            required_approvals: 2,
            approver_roles: json!(["approver"]),
            allow_server_keygen: true,
            allow_key_archival: true,
            allow_key_reuse: true,
            status: "active".into(),
            created_at: t,
            updated_at: t,
            deleted_at: None,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::workflows,
        core::workflows::Model {
            id: workflow,
            organization_id: Some(org),
            policy_id: Some(policy),
            name: "two approvers".into(),
            required_approvals: 2,
            approver_roles: json!(["approver"]),
            timeout_hours: 72,
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::workflow_instances,
        core::workflow_instances::Model {
            id: instance,
            workflow_id: Some(workflow),
            organization_id: org,
            request_id: request,
            requester_id: user,
            kind: "key_recovery".into(),
            status: "pending_approval".into(),
            approvals_required: 2,
            approvals_count: 1,
            expires_at: later,
            completed_at: Some(later),
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::workflow_steps,
        core::workflow_steps::Model {
            id: id(),
            instance_id: instance,
            actor_id: approver,
            decision: "approve".into(),
            comment: Some("looks right".into()),
            created_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::notifications,
        core::notifications::Model {
            id: id(),
            organization_id: org,
            user_id: approver,
            kind: "request_pending".into(),
            title: "A request waits".into(),
            body: "…".into(),
            data: json!({"request_id": request.to_string()}),
            read_at: Some(later),
            created_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::audit_log,
        core::audit_log::Model {
            id: id(),
            occurred_at: t,
            actor_id: Some(user),
            actor_kind: "user".into(),
            organization_id: Some(org),
            action: "login".into(),
            target_type: Some("user".into()),
            target_id: Some(user.to_string()),
            outcome: "success".into(),
            request_id: Some("req-1".into()),
            source_ip: Some("192.0.2.1".into()),
            user_agent: Some("test".into()),
            details: json!({"method": "password"}),
            seq: 1,
            entry_hash: Some(vec![1; 32]),
            mac: Some(vec![2; 32]),
            mac_key_version: Some(1),
        }
    ));
    covered.insert(round_trip!(
        db,
        core::api_keys,
        core::api_keys::Model {
            id: api_key,
            organization_id: org,
            user_id: user,
            name: "ci".into(),
            token_digest: "ab".repeat(32),
            token_prefix: "clm_ab".into(),
            roles: json!(["requester"]),
            expires_at: Some(later),
            last_used_at: Some(t),
            revoked_at: Some(later),
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::client_certificate_bindings,
        core::client_certificate_bindings::Model {
            id: id(),
            certificate_id: id(),
            organization_id: org,
            user_id: user,
            api_key_id: Some(api_key),
            last_used_at: Some(later),
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::job_leases,
        core::job_leases::Model {
            name: "CRL refresh".into(),
            holder: Some("host:4242:0a1b2c3d".into()),
            expires_at_ms: 1_795_000_000_123,
            last_started_ms: 1_794_999_999_001,
            last_holder: Some("host:4242:0a1b2c3d".into()),
            runs: i64::from(i32::MAX) + 7,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::sessions,
        core::sessions::Model {
            id: id(),
            user_id: user,
            token_digest: "cd".repeat(32),
            expires_at: later,
            idle_expires_at: later,
            last_seen_at: t,
            revoked_at: Some(later),
            source_ip: Some("2001:db8::1".into()),
            user_agent: Some("curl".into()),
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::certificate_metadata,
        core::certificate_metadata::Model {
            id: cert,
            organization_id: Some(org),
            ca_id: ca,
            profile_id: Some(policy),
            request_id: Some(request),
            owner_id: Some(user),
            common_name: Some("www.example.com".into()),
            sans: json!(["www.example.com"]),
            serial_hex: "7f3a".into(),
            not_before: t,
            not_after: later,
            status: "valid".into(),
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::certificate_expiry_notices,
        core::certificate_expiry_notices::Model {
            certificate_id: cert,
            days_before: 7,
            sent_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::webhooks,
        core::webhooks::Model {
            id: webhook,
            organization_id: org,
            url: "https://hooks.example.com/clm".into(),
            events: json!(["certificate.issued"]),
            status: "active".into(),
            created_by: Some(user),
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        core::webhook_deliveries,
        core::webhook_deliveries::Model {
            id: id(),
            webhook_id: webhook,
            organization_id: org,
            event: "certificate.issued".into(),
            payload: json!({"certificate_id": cert.to_string()}),
            status: "failed".into(),
            attempts: 4,
            next_attempt_at: later,
            last_status_code: Some(503),
            last_error: Some("unavailable".into()),
            delivered_at: Some(later),
            created_at: t,
            updated_at: t,
        }
    ));

    for (kid, purpose) in [(key, "ca_signing"), (kek, "kek")] {
        covered.insert(round_trip!(
            db,
            secure::encryption_keys,
            secure::encryption_keys::Model {
                id: kid,
                label: format!("clm-{purpose}"),
                ckaid_hex: kid.simple().to_string(),
                pkcs11_uri: format!("pkcs11:token=clm;id=%{}", kid.simple()),
                purpose: purpose.into(),
                algorithm: "ecdsa-p256".into(),
                status: "active".into(),
                version: 2,
                parent_key_id: None,
                organization_id: Some(org),
                public_key_der: Some(vec![0x30, 0x59, 0x00, 0xff]),
                activated_at: Some(t),
                deprecated_at: Some(later),
                destroyed_at: None,
                rollback_expires_at: Some(later),
                metadata: Some(json!({"slot": 0})),
                created_at: t,
                updated_at: t,
            }
        ));
    }
    covered.insert(round_trip!(
        db,
        secure::certificate_authorities,
        secure::certificate_authorities::Model {
            id: ca,
            name: "root".into(),
            kind: "root".into(),
            parent_id: None,
            organization_id: Some(org),
            key_id: key,
            certificate_id: None,
            subject: "CN=root".into(),
            key_algorithm: "ecdsa-p256".into(),
            status: "active".into(),
            // Beyond 32 bits: the column is a big integer on both backends.
            crl_number: 5_000_000_000,
            not_before: t,
            not_after: later,
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        secure::certificates,
        secure::certificates::Model {
            id: cert,
            organization_id: Some(org),
            ca_id: ca,
            request_id: Some(request),
            profile_id: Some(policy),
            owner_id: Some(user),
            serial_hex: "7f3a".into(),
            subject: "CN=www.example.com".into(),
            sans: json!(["www.example.com", "192.0.2.1"]),
            key_algorithm: "ecdsa-p256".into(),
            not_before: t,
            not_after: later,
            status: "on_hold".into(),
            is_ca: true,
            certificate_der: (0..=255).collect(),
            fingerprint_sha256: "ef".repeat(32),
            replaces_certificate_id: None,
            revoked_at: Some(later),
            revocation_reason: Some("certificateHold".into()),
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        secure::ca_crls,
        secure::ca_crls::Model {
            ca_id: ca,
            crl_number: 5_000_000_001,
            this_update: t,
            next_update: later,
            entry_count: 3,
            der_length: 2,
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        secure::ca_crl_parts,
        secure::ca_crl_parts::Model {
            ca_id: ca,
            part: 0,
            der: vec![0x30, 0x00],
        }
    ));
    covered.insert(round_trip!(
        db,
        secure::key_recoveries,
        secure::key_recoveries::Model {
            id: id(),
            certificate_id: cert,
            organization_id: org,
            requester_id: user,
            status: "approved".into(),
            completed_at: Some(later),
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        secure::ocsp_signers,
        secure::ocsp_signers::Model {
            id: id(),
            ca_id: ca,
            key_id: key,
            certificate_id: cert,
            not_after: later,
            created_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        secure::private_keys,
        secure::private_keys::Model {
            id: id(),
            certificate_id: cert,
            organization_id: org,
            kek_id: kek,
            kek_version: 2,
            wrap_mechanism: "CKM_AES_KEY_WRAP_PAD".into(),
            wrapped_key: vec![0u8; 40],
            key_algorithm: "ecdsa-p256".into(),
            status: "archived".into(),
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        secure::certificate_requests,
        secure::certificate_requests::Model {
            id: request,
            organization_id: org,
            profile_id: policy,
            requester_id: user,
            ca_id: ca,
            status: "issued".into(),
            csr_der: Some(vec![0x30, 0x82]),
            subject: "CN=www.example.com".into(),
            sans: json!(["www.example.com"]),
            key_algorithm: "ecdsa-p256".into(),
            validity_days: 90,
            reserved_serial_hex: Some("7f3a".into()),
            tbs_der: Some(vec![0x30, 0x81]),
            certificate_id: Some(cert),
            replaces_certificate_id: Some(cert),
            failure_reason: Some("none".into()),
            idempotency_key: Some("retry-1".into()),
            supersede_replaced: true,
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        secure::certificate_revocations,
        secure::certificate_revocations::Model {
            id: id(),
            certificate_id: cert,
            ca_id: ca,
            serial_hex: "7f3a".into(),
            reason: "certificateHold".into(),
            revoked_at: later,
            invalidity_date: Some(t),
            revoked_by: Some(approver),
            created_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        secure::key_rotation_history,
        secure::key_rotation_history::Model {
            id: id(),
            key_purpose: "kek".into(),
            old_key_id: Some(kek),
            new_key_id: key,
            status: "running".into(),
            total_count: 6_000_000_000,
            rewrapped_count: 5_000_000_000,
            initiated_by: Some(user),
            error: Some("interrupted".into()),
            started_at: t,
            finished_at: Some(later),
            created_at: t,
            updated_at: t,
        }
    ));
    covered.insert(round_trip!(
        db,
        secure::secure_audit_log,
        secure::secure_audit_log::Model {
            id: id(),
            occurred_at: t,
            actor_id: None,
            actor_kind: "system".into(),
            organization_id: None,
            action: "ca.create".into(),
            target_type: Some("ca".into()),
            target_id: Some(ca.to_string()),
            outcome: "success".into(),
            request_id: None,
            source_ip: None,
            user_agent: None,
            details: json!({"kind": "root"}),
            seq: 7,
            entry_hash: None,
            mac: None,
            mac_key_version: None,
        }
    ));
    audit_chain_round_trips!(
        db,
        t,
        covered,
        core::audit_seals,
        core::audit_checkpoints,
        core::audit_purge_permits
    );
    audit_chain_round_trips!(
        db,
        t,
        covered,
        secure::secure_audit_seals,
        secure::secure_audit_checkpoints,
        secure::secure_audit_purge_permits
    );

    // Every table of both schemas has an entity, and was exercised above —
    // but SQLite's FTS5 search index (`certificate_search` and its shadow
    // tables): triggers keep it, the store queries it in SQL, and
    // tests/certificate_list.rs searches through it.
    let tables: BTreeSet<String> = leftovers(db)
        .await
        .into_iter()
        .filter_map(|o| {
            o.strip_prefix("table ")
                .or_else(|| o.strip_prefix("BASE TABLE "))
                .map(str::to_string)
        })
        .filter(|t| !t.starts_with("certificate_search"))
        .collect();
    assert_eq!(covered, tables, "tables without an entity round trip");
}
