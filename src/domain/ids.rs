//! Newtype ids: a `CaId` can never be passed where a `CertificateId` is
//! expected, even though both are UUIDs in the databases.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The primary key of a new row: a UUIDv7 — the millisecond, a counter
/// that keeps one millisecond's ids in order (reseeded at random each
/// millisecond) and 32 random bits. Time-ordered, so a table's id
/// index, and every index that ends in one, grows at its right edge, so a
/// transaction of many inserts dirties a few pages instead of one page per
/// row at random — on SQLite half the issuance writer's time went to
/// writing and checkpointing such pages (docs/performance.md). Ids are
/// never secrets (access is decided by organisation, not by knowing an id);
/// the millisecond they carry is the row's `created_at` anyway.
pub fn new_row_id() -> Uuid {
    Uuid::now_v7()
}

/// The id a row created at `at` would have had: for rows that stand for
/// the past (the benchmark's fills, tests' copies), which the jobs that
/// read new rows by id ([`last_row_id_before`]) must not take for new.
pub fn row_id_at(at: chrono::DateTime<chrono::Utc>) -> Uuid {
    let secs = u64::try_from(at.timestamp()).unwrap_or(0);
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        secs,
        at.timestamp_subsec_nanos(),
    ))
}

/// The greatest id [`new_row_id`] can have returned before `at`: every
/// id greater is of a row created at `at` or later (by a clock that agreed
/// with the caller's), so `id > last_row_id_before(t)` is a range of the
/// primary key.
pub fn last_row_id_before(at: chrono::DateTime<chrono::Utc>) -> Uuid {
    // UUIDv7 keeps the Unix millisecond in its first 48 bits.
    let ms = u128::try_from(at.timestamp_millis()).unwrap_or(0);
    Uuid::from_u128((ms.min((1 << 48) - 1) << 80).saturating_sub(1))
}

macro_rules! id_type {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {$(
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = uuid::Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id ([`new_row_id`]).
            pub fn new() -> Self {
                Self(new_row_id())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    )*};
}

id_type!(
    /// A tenant (clm_core `organizations`).
    OrganizationId,
    /// A person or service account (clm_core `users`).
    UserId,
    /// A login session (clm_core `sessions`).
    SessionId,
    /// An API key (clm_core `api_keys`).
    ApiKeyId,
    /// A certificate authority (clm_secure `certificate_authorities`).
    CaId,
    /// An issued certificate (clm_secure `certificates`).
    CertificateId,
    /// A certificate request (clm_secure `certificate_requests`).
    RequestId,
    /// A certificate profile (clm_core `policies`).
    ProfileId,
    /// An entry of the key registry (clm_secure `encryption_keys`).
    KeyId,
    /// An entry of either audit log.
    AuditEntryId,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings_and_json() {
        let id = CaId::new();
        let parsed: CaId = id.to_string().parse().unwrap();
        assert_eq!(id, parsed);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert!("not-a-uuid".parse::<CaId>().is_err());
    }

    #[test]
    fn rows_created_since_a_moment_sort_after_the_last_id_before_it() {
        let before = new_row_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let at = chrono::Utc::now();
        let bound = last_row_id_before(at);
        let after: Vec<Uuid> = (0..1_000).map(|_| new_row_id()).collect();
        assert!(before <= bound, "{before} was created before {at}");
        assert!(after.iter().all(|id| *id > bound));
        let epoch = chrono::DateTime::UNIX_EPOCH;
        let an_hour_ago = at - chrono::Duration::hours(1);
        let then = row_id_at(an_hour_ago);
        assert!(then > last_row_id_before(an_hour_ago));
        assert!(then <= last_row_id_before(an_hour_ago + chrono::Duration::milliseconds(1)));
        assert!(then < bound, "a row of an hour ago is not new");
        assert_eq!(
            last_row_id_before(epoch - chrono::Duration::days(1)),
            Uuid::nil()
        );
    }
}
