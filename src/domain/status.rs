//! Lifecycle states and the transitions the service may make. The databases
//! back the most important rules up with triggers (nothing leaves `revoked`,
//! key status follows its lifecycle); these functions are what the service
//! checks before it issues a compare-and-set update.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::algorithm::UnknownName;

// `$text:tt`, not `:literal`: a `literal` fragment reaches derives wrapped
// in an invisible group, which utoipa's derive does not read as a rename.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:tt),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(UnknownName(other.chars().take(64).collect())),
                }
            }
        }
    };
}

named_enum!(
    /// Where a certificate request stands.
    RequestStatus {
        PendingApproval => "pending_approval",
        Approved => "approved",
        Issued => "issued",
        Rejected => "rejected",
        Cancelled => "cancelled",
        Expired => "expired",
        Failed => "failed",
    }
);

impl RequestStatus {
    /// Whether the request may move from `self` to `next`.
    pub fn can_become(self, next: RequestStatus) -> bool {
        use RequestStatus::*;
        matches!(
            (self, next),
            (PendingApproval, Approved | Rejected | Cancelled | Expired)
                | (Approved, Issued | Failed)
                | (Failed, Approved)
        )
    }
}

named_enum!(
    /// Where an issued certificate stands.
    CertificateStatus {
        Valid => "valid",
        Revoked => "revoked",
        OnHold => "on_hold",
        Expired => "expired",
    }
);

impl CertificateStatus {
    /// Revocation is final: nothing leaves `revoked`. A hold may be released
    /// or made final.
    pub fn can_become(self, next: CertificateStatus) -> bool {
        use CertificateStatus::*;
        matches!(
            (self, next),
            (Valid, Revoked | OnHold | Expired) | (OnHold, Valid | Revoked | Expired)
        )
    }
}

named_enum!(
    /// Lifecycle of an entry of the key registry (`encryption_keys`).
    KeyStatus {
        Pending => "pending",
        Active => "active",
        Deprecated => "deprecated",
        Disabled => "disabled",
        Compromised => "compromised",
        Destroyed => "destroyed",
    }
);

impl KeyStatus {
    pub fn can_become(self, next: KeyStatus) -> bool {
        use KeyStatus::*;
        match (self, next) {
            (Destroyed, _) => false,
            (_, Compromised | Destroyed) => true,
            (Pending, Active | Disabled) => true,
            (Active, Deprecated | Disabled) => true,
            (Deprecated, Active | Disabled) => true,
            (Disabled, Active) => true,
            _ => false,
        }
    }
}

named_enum!(
    /// What a registered token object is used for.
    KeyPurpose {
        CaSigning => "ca_signing",
        Kek => "kek",
        AuditMac => "audit_mac",
        OcspSigning => "ocsp_signing",
    }
);

named_enum!(
    /// Whether a CA is self-signed or signed by another CA of clm.
    CaKind {
        Root => "root",
        Intermediate => "intermediate",
    }
);

named_enum!(
    /// Where a key rotation (rewrapping under a new KEK) stands.
    RotationStatus {
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        RolledBack => "rolled_back",
    }
);

named_enum!(
    /// What a workflow decides: a certificate request or a key recovery.
    WorkflowKind {
        CertificateRequest => "certificate_request",
        KeyRecovery => "key_recovery",
    }
);

named_enum!(
    /// Where a request to recover an archived private key stands.
    RecoveryStatus {
        PendingApproval => "pending_approval",
        Approved => "approved",
        Completed => "completed",
        Rejected => "rejected",
        Expired => "expired",
    }
);

named_enum!(
    /// RFC 5280 CRLReason, by the camelCase names the API and the schema use.
    RevocationReason {
        Unspecified => "unspecified",
        KeyCompromise => "keyCompromise",
        CaCompromise => "cACompromise",
        AffiliationChanged => "affiliationChanged",
        Superseded => "superseded",
        CessationOfOperation => "cessationOfOperation",
        CertificateHold => "certificateHold",
        PrivilegeWithdrawn => "privilegeWithdrawn",
    }
);

impl RevocationReason {
    /// The CRLReason code (RFC 5280 section 5.3.1); 7 is unused there.
    pub fn code(self) -> u8 {
        use RevocationReason::*;
        match self {
            Unspecified => 0,
            KeyCompromise => 1,
            CaCompromise => 2,
            AffiliationChanged => 3,
            Superseded => 4,
            CessationOfOperation => 5,
            CertificateHold => 6,
            PrivilegeWithdrawn => 9,
        }
    }

    /// A hold is the one revocation that may be lifted.
    pub fn is_hold(self) -> bool {
        self == RevocationReason::CertificateHold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_reasons_round_trip_with_rfc5280_codes() {
        for r in RevocationReason::ALL {
            assert_eq!(r.as_str().parse::<RevocationReason>().unwrap(), *r);
        }
        assert_eq!(RevocationReason::PrivilegeWithdrawn.code(), 9);
        assert_eq!(RevocationReason::CaCompromise.as_str(), "cACompromise");
        assert!("removeFromCRL".parse::<RevocationReason>().is_err());
    }

    #[test]
    fn revoked_is_final() {
        for s in CertificateStatus::ALL {
            assert!(!CertificateStatus::Revoked.can_become(*s));
        }
        assert!(CertificateStatus::OnHold.can_become(CertificateStatus::Valid));
        assert!(CertificateStatus::Valid.can_become(CertificateStatus::Revoked));
    }

    #[test]
    fn destroyed_keys_stay_destroyed() {
        for s in KeyStatus::ALL {
            assert!(!KeyStatus::Destroyed.can_become(*s));
        }
        assert!(KeyStatus::Pending.can_become(KeyStatus::Active));
        assert!(!KeyStatus::Pending.can_become(KeyStatus::Deprecated));
    }

    #[test]
    fn request_transitions() {
        use RequestStatus::*;
        assert!(PendingApproval.can_become(Approved));
        assert!(Approved.can_become(Issued));
        assert!(!Issued.can_become(Approved));
        assert!(!Rejected.can_become(Approved));
        assert_eq!(
            "pending_approval".parse::<RequestStatus>().unwrap(),
            PendingApproval
        );
        assert!("bogus".parse::<RequestStatus>().is_err());
    }
}
