//! Bulk certificates for the CRL and list stages: real certificates
//! (built by the issuance code, signed in the token by the CA's key) with
//! realistic names, serials and validity, stored in both databases the way
//! issuance stores them — but many thousand rows per transaction instead of
//! one API call each. They stand for certificates issued in the past, so
//! their timestamps are in the past too, and they are stored oldest first,
//! in the order issuance would have stored them: PostgreSQL's index-only
//! scans of the list consult the visibility map at each entry's heap page,
//! and a heap in random time order made each of them switch pages
//! (docs/performance.md, "The fill's order").

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::BenchResult;
use crate::domain::model::Certificate;
use crate::domain::{
    ApprovedCertificate, CaId, CertificateId, CertificateStatus, ExtendedKeyUsage, KeyAlgorithm,
    OrganizationId, ProfileId, RevocationReason, San, UserId, der,
};
use crate::hsm::HsmKey;
use crate::pki;
use crate::store::{CoreDb, SecureDb};

/// Certificates built and stored per round.
const CHUNK: usize = 10_000;

const REASONS: [RevocationReason; 5] = [
    RevocationReason::KeyCompromise,
    RevocationReason::Superseded,
    RevocationReason::CessationOfOperation,
    RevocationReason::AffiliationChanged,
    RevocationReason::Unspecified,
];

/// The status mix of filled certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Every one revoked (the CRL stage).
    Revoked,
    /// 93 % valid, 5 % expired, 2 % revoked (the list stage).
    Inventory,
}

impl Mix {
    /// How many of the first `of` certificates ran out long ago: the
    /// oldest 5 % of an inventory.
    fn expired(self, of: usize) -> usize {
        match self {
            Mix::Revoked => 0,
            Mix::Inventory => of / 20,
        }
    }
}

/// The CA certificates are filled for, with its key in the token.
pub struct FillCa {
    pub ca_id: CaId,
    pub ca_der: Vec<u8>,
    pub key: Arc<HsmKey>,
    pub organization: OrganizationId,
    pub profile: Option<ProfileId>,
    pub owner: Option<UserId>,
    pub public_url: String,
}

/// Index `i` of an inventory fill names `svc-{i}.team-{i % 50}.internal`;
/// of a revoked fill `rev-{i}.crl.internal`, so that searches of one never
/// find the other.
pub fn common_name(i: usize, mix: Mix) -> String {
    match mix {
        Mix::Inventory => format!("svc-{i}.{}.internal", team(i)),
        Mix::Revoked => format!("rev-{i}.crl.internal"),
    }
}

pub fn team(i: usize) -> String {
    format!("team-{:02}", i % 50)
}

/// Builds and stores certificates `from..from + count` of the `of` that
/// `ca`'s fills will reach (so that the times of successive fills follow
/// each other). Returns the serial (hex) of every hundredth, for queries.
pub async fn fill(
    secure: &SecureDb,
    core: &CoreDb,
    ca: &Arc<FillCa>,
    (from, count, of): (usize, usize, usize),
    mix: Mix,
) -> BenchResult<Vec<(usize, String)>> {
    // One subject key for all: its size is what matters here, and keys
    // are the client's business, not the CA's.
    let subject = rcgen::KeyPair::generate().map_err(|e| super::setup(e.to_string()))?;
    let spki = Arc::new(rcgen::PublicKeyData::subject_public_key_info(&subject));
    let now = Utc::now();
    let mut samples = Vec::new();
    let mut next = from;
    let end = from + count;
    while next < end {
        let take = CHUNK.min(end - next);
        // Built on every core: signing and encoding are the slow part.
        let threads = super::nproc().max(1);
        let per = take.div_ceil(threads);
        let mut jobs = Vec::new();
        for t in 0..threads {
            let lo = next + t * per;
            let hi = (lo + per).min(next + take);
            if lo >= hi {
                continue;
            }
            let (ca, spki) = (ca.clone(), spki.clone());
            jobs.push(tokio::task::spawn_blocking(move || {
                (lo..hi)
                    .map(|i| certificate(&ca, &spki, (i, of), now, mix))
                    .collect::<BenchResult<Vec<Certificate>>>()
            }));
        }
        let mut certs = Vec::with_capacity(take);
        for job in jobs {
            certs.extend(job.await.map_err(super::setup)??);
        }
        for (k, c) in certs.iter().enumerate() {
            if (next + k).is_multiple_of(100) {
                samples.push((next + k, c.serial_hex.clone()));
            }
        }
        secure.bench_insert_certificates(&certs, ca.owner).await?;
        core.bench_insert_certificate_metadata(&certs).await?;
        next += take;
    }
    Ok(samples)
}

/// splitmix64: reproducible spread of times and statuses per index.
fn spread(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// When certificate `i` of `of` was issued, for how many days, and its
/// status. Times grow with `i`: the expired ones first (issued 490 to 400
/// days ago for 90 days), then the rest over the last 360 days for 397
/// days, so none is due for an expiry notice.
fn issued(
    (i, of): (usize, usize),
    h: u64,
    now: DateTime<Utc>,
    mix: Mix,
) -> (DateTime<Utc>, u32, CertificateStatus) {
    // `done` of `n` evenly over `span` days ending `end` days ago.
    let at = |done: usize, n: usize, span: i64, end: i64| {
        let span = Duration::days(span).num_seconds();
        let back = span - span * done as i64 / n.max(1) as i64;
        now - Duration::days(end) - Duration::seconds(back)
    };
    let expired = mix.expired(of);
    if i < expired {
        return (at(i, expired, 90, 400), 90, CertificateStatus::Expired);
    }
    let status = match mix {
        Mix::Revoked => CertificateStatus::Revoked,
        // 2 % of the whole inventory.
        Mix::Inventory if h % 95 < 2 => CertificateStatus::Revoked,
        Mix::Inventory => CertificateStatus::Valid,
    };
    (at(i - expired, of - expired, 360, 0), 397, status)
}

fn certificate(
    ca: &FillCa,
    spki: &[u8],
    (i, of): (usize, usize),
    now: DateTime<Utc>,
    mix: Mix,
) -> BenchResult<Certificate> {
    let h = spread(i);
    let (not_before, validity_days, status) = issued((i, of), h, now, mix);
    let cn = common_name(i, mix);
    let approved = ApprovedCertificate {
        common_name: Some(cn.clone()),
        sans: vec![San::Dns(format!("api.{cn}")), San::Dns(cn)],
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity_days,
        extended_key_usages: vec![ExtendedKeyUsage::ServerAuth, ExtendedKeyUsage::ClientAuth],
    };
    let serial = pki::new_serial();
    let urls = pki::PublicUrls::new(&ca.public_url, ca.ca_id);
    let issuer = pki::Issuer::new(ca.key.as_ref(), &ca.ca_der)?;
    let tbs = pki::prepare_leaf(&approved, spki, &issuer, &serial, not_before, &urls)?;
    // Signed by the CA's key in the token like every certificate, but not
    // verified once more: these are not handed to anyone.
    let signature =
        crate::domain::Signer::sign(ca.key.as_ref(), tbs.tbs_der()).map_err(pki::PkiError::from)?;
    let certificate_der = der::sequence(&[
        tbs.tbs_der(),
        tbs.signature_algorithm(),
        &der::bit_string(&signature),
    ]);
    let info = pki::CertInfo::from_der(&certificate_der)?;
    let revoked_at = (status == CertificateStatus::Revoked).then(|| {
        let lived = (now - not_before).num_minutes().max(1);
        not_before + Duration::minutes((h >> 40) as i64 % lived)
    });
    Ok(Certificate {
        // Issued before the benchmark, as its id says: the jobs that read
        // new certificates by id (reconciliation, expiry notices) leave it
        // alone, as they would a certificate of that day.
        id: CertificateId(crate::domain::row_id_at(info.not_before)),
        organization_id: Some(ca.organization),
        ca_id: ca.ca_id,
        request_id: None,
        profile_id: ca.profile,
        owner_id: ca.owner,
        serial_hex: pki::serial_hex(&serial),
        subject: info.subject,
        sans: approved.sans.iter().map(San::to_string).collect(),
        key_algorithm: KeyAlgorithm::EcdsaP256.as_str().to_string(),
        not_before: info.not_before,
        not_after: info.not_after,
        status,
        is_ca: false,
        certificate_der,
        fingerprint_sha256: info.fingerprint_sha256,
        revoked_at,
        revocation_reason: revoked_at.map(|_| REASONS[(h % 5) as usize].as_str().to_string()),
        replaces_certificate_id: None,
        created_at: info.not_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_are_issued_oldest_first_with_the_inventorys_mix() {
        let now = Utc::now();
        let of = 10_000;
        let times: Vec<_> = (0..of)
            .map(|i| issued((i, of), spread(i), now, Mix::Inventory))
            .collect();
        assert!(
            times.windows(2).all(|w| w[0].0 < w[1].0),
            "issue times must grow with the index, as issuance stores them"
        );
        let share = |s: CertificateStatus| {
            times.iter().filter(|t| t.2 == s).count() as f64 / of as f64 * 100.0
        };
        assert!((share(CertificateStatus::Expired) - 5.0).abs() < 0.01);
        assert!((share(CertificateStatus::Revoked) - 2.0).abs() < 0.5);
        for (not_before, days, status) in &times {
            let not_after = *not_before + Duration::days(i64::from(*days));
            match status {
                CertificateStatus::Expired => assert!(not_after < now - Duration::days(300)),
                // None due for an expiry notice.
                _ => assert!(not_after > now + Duration::days(36) && *not_before < now),
            }
        }
    }

    #[test]
    fn successive_fills_of_one_ca_follow_each_other() {
        let now = Utc::now();
        let of = 1_000;
        let at = |i| issued((i, of), spread(i), now, Mix::Revoked);
        // The first fill ends at 100, the next begins there.
        assert!(at(99).0 < at(100).0);
        assert!((0..of).all(|i| at(i).2 == CertificateStatus::Revoked));
        assert!(at(of - 1).0 > now - Duration::days(1));
        assert!(at(0).0 < now - Duration::days(359));
    }
}
