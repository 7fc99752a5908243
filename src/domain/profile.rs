//! Certificate profile rules and the check of a request against them.
//!
//! Like step-ca's templates, a profile is a list of validators applied to
//! what the requester asked for, plus one modifier (a server certificate's
//! CN is always repeated as a SAN). Certificates are built from the result,
//! never from extensions copied out of a CSR.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::algorithm::{ExtendedKeyUsage, KeyAlgorithm};
use super::role::Role;

/// The longest CN X.509 allows (ub-common-name).
pub const MAX_COMMON_NAME_LEN: usize = 64;
/// More SANs than this in one certificate is treated as abuse.
pub const MAX_SANS: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRules {
    pub key_algorithms: Vec<KeyAlgorithm>,
    /// `example.com` allows `example.com` and every name below it; `*`
    /// allows any DNS name. An empty list allows no DNS names.
    pub allowed_dns_suffixes: Vec<String>,
    pub allow_ip_sans: bool,
    pub max_validity_days: u32,
    pub extended_key_usages: Vec<ExtendedKeyUsage>,
    pub required_approvals: u8,
    pub allow_server_keygen: bool,
    /// Keys generated for the profile are kept wrapped under the KEK for
    /// later recovery; otherwise nothing is kept.
    pub allow_key_archival: bool,
    /// Renewal may certify the replaced certificate's key again, without a
    /// new CSR.
    pub allow_key_reuse: bool,
    /// Roles whose holders may approve requests against the profile.
    pub approver_roles: Vec<Role>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// Parses the API's plain-string form: an IP address or a DNS name.
    pub fn parse(s: &str) -> San {
        match s.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(s.to_ascii_lowercase()),
        }
    }
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(d) => f.write_str(d),
            San::Ip(ip) => ip.fmt(f),
        }
    }
}

/// What a requester asks for, after the CSR has been parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedCertificate {
    pub common_name: Option<String>,
    pub sans: Vec<San>,
    pub key_algorithm: KeyAlgorithm,
    pub validity_days: Option<u32>,
}

/// What the profile allows to be issued: the input to certificate building.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovedCertificate {
    pub common_name: Option<String>,
    pub sans: Vec<San>,
    pub key_algorithm: KeyAlgorithm,
    pub validity_days: u32,
    pub extended_key_usages: Vec<ExtendedKeyUsage>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProfileViolation {
    #[error("key algorithm {0} is not allowed by this profile")]
    KeyAlgorithmNotAllowed(KeyAlgorithm),
    #[error("the DNS name `{0}` is not allowed by this profile")]
    DnsNameNotAllowed(String),
    #[error("`{0}` is not a valid DNS name")]
    InvalidDnsName(String),
    #[error("IP address SANs are not allowed by this profile")]
    IpSanNotAllowed,
    #[error("the common name is invalid: {0}")]
    InvalidCommonName(&'static str),
    #[error("the request names no subject: give a common name or a SAN")]
    NoNames,
    #[error("too many SANs (at most {MAX_SANS})")]
    TooManySans,
    #[error("requested validity of {requested} days exceeds the profile maximum of {max}")]
    ValidityTooLong { requested: u32, max: u32 },
    #[error("validity must be at least one day")]
    ValidityTooShort,
}

impl ProfileRules {
    /// Validates `req` and returns exactly what may be issued.
    pub fn check(
        &self,
        req: &RequestedCertificate,
    ) -> Result<ApprovedCertificate, ProfileViolation> {
        if !self.key_algorithms.contains(&req.key_algorithm) {
            return Err(ProfileViolation::KeyAlgorithmNotAllowed(req.key_algorithm));
        }
        let validity_days = req.validity_days.unwrap_or(self.max_validity_days);
        if validity_days == 0 {
            return Err(ProfileViolation::ValidityTooShort);
        }
        if validity_days > self.max_validity_days {
            return Err(ProfileViolation::ValidityTooLong {
                requested: validity_days,
                max: self.max_validity_days,
            });
        }

        let mut sans: Vec<San> = Vec::with_capacity(req.sans.len() + 1);
        for san in &req.sans {
            let san = normalise(san);
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let common_name = match &req.common_name {
            Some(cn) => Some(self.check_common_name(cn, &mut sans)?),
            None => None,
        };
        if common_name.is_none() && sans.is_empty() {
            return Err(ProfileViolation::NoNames);
        }
        if sans.len() > MAX_SANS {
            return Err(ProfileViolation::TooManySans);
        }
        for san in &sans {
            self.check_san(san)?;
        }

        Ok(ApprovedCertificate {
            common_name,
            sans,
            key_algorithm: req.key_algorithm,
            validity_days,
            extended_key_usages: self.extended_key_usages.clone(),
        })
    }

    fn is_server_profile(&self) -> bool {
        self.extended_key_usages
            .contains(&ExtendedKeyUsage::ServerAuth)
    }

    fn check_common_name(&self, cn: &str, sans: &mut Vec<San>) -> Result<String, ProfileViolation> {
        if cn.is_empty() {
            return Err(ProfileViolation::InvalidCommonName("it is empty"));
        }
        if cn.chars().count() > MAX_COMMON_NAME_LEN {
            return Err(ProfileViolation::InvalidCommonName(
                "it is longer than 64 characters",
            ));
        }
        if cn.chars().any(char::is_control) {
            return Err(ProfileViolation::InvalidCommonName(
                "it contains control characters",
            ));
        }
        // A TLS client only looks at SANs, so a server certificate's CN must
        // name something the profile allows and is repeated as a SAN.
        if self.is_server_profile() {
            let san = normalise(&San::parse(cn));
            if !sans.contains(&san) {
                sans.insert(0, san);
            }
        }
        Ok(cn.to_string())
    }

    fn check_san(&self, san: &San) -> Result<(), ProfileViolation> {
        match san {
            San::Ip(_) if self.allow_ip_sans => Ok(()),
            San::Ip(_) => Err(ProfileViolation::IpSanNotAllowed),
            San::Dns(name) => {
                if !is_valid_dns_name(name) {
                    return Err(ProfileViolation::InvalidDnsName(truncate(name)));
                }
                if self
                    .allowed_dns_suffixes
                    .iter()
                    .any(|s| suffix_allows(s, name))
                {
                    Ok(())
                } else {
                    Err(ProfileViolation::DnsNameNotAllowed(truncate(name)))
                }
            }
        }
    }
}

fn normalise(san: &San) -> San {
    match san {
        San::Dns(d) => San::Dns(d.trim_end_matches('.').to_ascii_lowercase()),
        San::Ip(ip) => San::Ip(*ip),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn suffix_allows(suffix: &str, name: &str) -> bool {
    let suffix = suffix
        .trim_start_matches("*.")
        .trim_start_matches('.')
        .to_ascii_lowercase();
    if suffix == "*" {
        return true;
    }
    // `*.example.com` is below `example.com`, so it is judged by the name
    // after the wildcard label.
    let name = name.strip_prefix("*.").unwrap_or(name);
    name == suffix || name.ends_with(&format!(".{suffix}"))
}

/// RFC 1035 preferred name syntax (LDH labels), optionally with one leading
/// `*.` wildcard label.
pub fn is_valid_dns_name(name: &str) -> bool {
    let body = name.strip_prefix("*.").unwrap_or(name);
    if body.is_empty() || body.len() > 253 {
        return false;
    }
    body.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ProfileRules {
        ProfileRules {
            key_algorithms: vec![KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048],
            allowed_dns_suffixes: vec!["example.com".into()],
            allow_ip_sans: false,
            max_validity_days: 90,
            extended_key_usages: vec![ExtendedKeyUsage::ServerAuth],
            required_approvals: 0,
            allow_server_keygen: false,
            allow_key_archival: false,
            allow_key_reuse: false,
            approver_roles: vec![Role::Approver],
        }
    }

    fn req(cn: Option<&str>, sans: &[&str]) -> RequestedCertificate {
        RequestedCertificate {
            common_name: cn.map(str::to_string),
            sans: sans.iter().map(|s| San::parse(s)).collect(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity_days: None,
        }
    }

    #[test]
    fn server_cn_becomes_a_san_and_validity_defaults_to_max() {
        let ok = rules()
            .check(&req(Some("www.example.com"), &["api.example.com"]))
            .unwrap();
        assert_eq!(
            ok.sans,
            vec![
                San::Dns("www.example.com".into()),
                San::Dns("api.example.com".into())
            ]
        );
        assert_eq!(ok.validity_days, 90);
    }

    #[test]
    fn names_outside_the_suffix_are_refused() {
        for bad in ["example.org", "evilexample.com", "example.com.evil.net"] {
            assert_eq!(
                rules().check(&req(None, &[bad])),
                Err(ProfileViolation::DnsNameNotAllowed(bad.into())),
                "{bad}"
            );
        }
        assert!(
            rules()
                .check(&req(None, &["example.com", "a.b.example.com"]))
                .is_ok()
        );
        assert!(rules().check(&req(None, &["*.example.com"])).is_ok());
    }

    #[test]
    fn ip_sans_follow_the_profile() {
        assert_eq!(
            rules().check(&req(None, &["10.0.0.1"])),
            Err(ProfileViolation::IpSanNotAllowed)
        );
        let mut r = rules();
        r.allow_ip_sans = true;
        assert!(r.check(&req(None, &["10.0.0.1"])).is_ok());
    }

    #[test]
    fn validity_and_algorithm_limits() {
        let mut q = req(Some("a.example.com"), &[]);
        q.validity_days = Some(91);
        assert_eq!(
            rules().check(&q),
            Err(ProfileViolation::ValidityTooLong {
                requested: 91,
                max: 90
            })
        );
        q.validity_days = Some(30);
        q.key_algorithm = KeyAlgorithm::EcdsaP384;
        assert_eq!(
            rules().check(&q),
            Err(ProfileViolation::KeyAlgorithmNotAllowed(
                KeyAlgorithm::EcdsaP384
            ))
        );
    }

    #[test]
    fn malformed_names_are_refused() {
        assert_eq!(
            rules().check(&req(None, &[])),
            Err(ProfileViolation::NoNames)
        );
        assert!(matches!(
            rules().check(&req(None, &["bad_name.example.com"])),
            Err(ProfileViolation::InvalidDnsName(_))
        ));
        let long = "a".repeat(65);
        assert!(matches!(
            rules().check(&req(Some(&long), &[])),
            Err(ProfileViolation::InvalidCommonName(_))
        ));
    }
}
