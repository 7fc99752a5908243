//! Secret keys in the token: the AES-256 key-encryption key (KEK) and the
//! HMAC key that binds audit entries; MACs; existence and attribute checks
//! for `clm hsm check`.
//!
//! Like private keys, secret keys are `CKA_SENSITIVE=true`,
//! `CKA_EXTRACTABLE=false`, found by `CKA_ID` and class, and each is
//! allowed exactly the operations its purpose needs.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};

use super::recovery::Op;
use super::{Hsm, HsmError, HsmResult, find_one, new_cka_id};

/// A secret (AES or HMAC) key in the token, named by its `CKA_ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretKeyRef {
    pub cka_id: Vec<u8>,
    pub label: String,
}

/// The kind of a secret key in the token, for `clm hsm check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// `CKK_AES`: the KEK.
    Aes,
    /// `CKK_GENERIC_SECRET`: HMAC keys (audit).
    GenericSecret,
    Other,
}

/// Security attributes of a token key, as the token reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAttributes {
    pub sensitive: bool,
    pub extractable: bool,
    pub always_sensitive: bool,
    pub never_extractable: bool,
}

impl Hsm {
    fn generate_secret_blocking(
        &self,
        label: &str,
        mechanism: Mechanism,
        usage: &[Attribute],
    ) -> HsmResult<SecretKeyRef> {
        let cka_id = self.with_session(Op::Generate, |s| {
            let id = new_cka_id();
            let mut template = vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::ValueLen(32u64.into()),
                Attribute::Id(id.clone()),
                Attribute::Label(label.as_bytes().to_vec()),
            ];
            template.extend_from_slice(usage);
            s.generate_key(&mechanism, &template)?;
            Ok(id)
        })?;
        Ok(SecretKeyRef {
            cka_id,
            label: label.to_string(),
        })
    }

    /// AES-256 key-encryption key: wraps and unwraps, nothing else (no
    /// encrypt/decrypt, so it cannot be used as an oracle on raw data).
    pub fn generate_kek_blocking(&self, label: &str) -> HsmResult<SecretKeyRef> {
        self.generate_secret_blocking(
            label,
            Mechanism::AesKeyGen,
            &[
                Attribute::KeyType(KeyType::AES),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Sign(false),
                Attribute::Derive(false),
            ],
        )
    }

    /// 256-bit generic secret for HMAC-SHA-256 (audit entries, derived
    /// webhook secrets).
    pub fn generate_mac_key_blocking(&self, label: &str) -> HsmResult<SecretKeyRef> {
        self.generate_secret_blocking(
            label,
            Mechanism::GenericSecretKeyGen,
            &[
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Sign(true),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
            ],
        )
    }

    /// The secret key with `cka_id`.
    pub fn find_secret_key_blocking(&self, cka_id: &[u8]) -> HsmResult<SecretKeyRef> {
        let label = self.with_session(Op::Find, |s| {
            let key = find_one(s, ObjectClass::SECRET_KEY, cka_id)?;
            let attrs = s.get_attributes(key, &[AttributeType::Label])?;
            Ok(match attrs.into_iter().next() {
                Some(Attribute::Label(l)) => String::from_utf8_lossy(&l).into_owned(),
                _ => String::new(),
            })
        })?;
        Ok(SecretKeyRef {
            cka_id: cka_id.to_vec(),
            label,
        })
    }

    /// The key type of the secret key with `cka_id`.
    pub fn secret_key_kind_blocking(&self, cka_id: &[u8]) -> HsmResult<SecretKind> {
        self.with_session(Op::Find, |s| {
            let key = find_one(s, ObjectClass::SECRET_KEY, cka_id)?;
            let attrs = s.get_attributes(key, &[AttributeType::KeyType])?;
            Ok(match attrs.first() {
                Some(Attribute::KeyType(t)) if *t == KeyType::AES => SecretKind::Aes,
                Some(Attribute::KeyType(t)) if *t == KeyType::GENERIC_SECRET => {
                    SecretKind::GenericSecret
                }
                _ => SecretKind::Other,
            })
        })
    }

    pub async fn secret_key_kind(&self, cka_id: &[u8]) -> HsmResult<SecretKind> {
        let id = cka_id.to_vec();
        self.run(move |h| h.secret_key_kind_blocking(&id)).await
    }

    /// HMAC-SHA-256 of `data` under the secret key with `cka_id`.
    pub fn hmac_sha256_blocking(&self, cka_id: &[u8], data: &[u8]) -> HsmResult<[u8; 32]> {
        let mac = self.with_session(Op::Mac, |s| {
            let key = find_one(s, ObjectClass::SECRET_KEY, cka_id)?;
            Ok(s.sign(&Mechanism::Sha256Hmac, key, data)?)
        })?;
        mac.try_into()
            .map_err(|_| HsmError::Encoding("HMAC of unexpected length".into()))
    }

    /// Destroys the secret key with `cka_id` (a retired KEK after its
    /// rollback window).
    pub fn destroy_secret_key_blocking(&self, cka_id: &[u8]) -> HsmResult<()> {
        self.with_session(Op::Destroy, |s| {
            let key = find_one(s, ObjectClass::SECRET_KEY, cka_id)?;
            Ok(s.destroy_object(key)?)
        })
    }

    pub async fn destroy_secret_key(&self, cka_id: &[u8]) -> HsmResult<()> {
        let id = cka_id.to_vec();
        self.run(move |h| h.destroy_secret_key_blocking(&id)).await
    }

    /// Whether a private or secret key with this `CKA_ID` exists in the token.
    pub fn key_exists_blocking(&self, cka_id: &[u8]) -> HsmResult<bool> {
        match self.with_session(Op::Find, |s| find_key(s, cka_id)) {
            Ok(_) => Ok(true),
            Err(HsmError::KeyNotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Security attributes of the private or secret key with `cka_id`.
    pub fn key_attributes_blocking(&self, cka_id: &[u8]) -> HsmResult<KeyAttributes> {
        self.with_session(Op::Find, |s| {
            let key = find_key(s, cka_id)?;
            let mut out = KeyAttributes {
                sensitive: false,
                extractable: true,
                always_sensitive: false,
                never_extractable: false,
            };
            let attrs = s.get_attributes(
                key,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                ],
            )?;
            for a in attrs {
                match a {
                    Attribute::Sensitive(v) => out.sensitive = v,
                    Attribute::Extractable(v) => out.extractable = v,
                    Attribute::AlwaysSensitive(v) => out.always_sensitive = v,
                    Attribute::NeverExtractable(v) => out.never_extractable = v,
                    _ => {}
                }
            }
            Ok(out)
        })
    }

    /// RFC 7512 URI of a secret key.
    pub fn secret_key_uri(&self, key: &SecretKeyRef) -> String {
        super::pkcs11_uri(
            self.token_label(),
            &key.label,
            &key.cka_id,
            Some("secret-key"),
        )
    }

    pub async fn generate_kek(&self, label: &str) -> HsmResult<SecretKeyRef> {
        let label = label.to_string();
        self.run(move |h| h.generate_kek_blocking(&label)).await
    }

    pub async fn generate_mac_key(&self, label: &str) -> HsmResult<SecretKeyRef> {
        let label = label.to_string();
        self.run(move |h| h.generate_mac_key_blocking(&label)).await
    }

    pub async fn find_secret_key(&self, cka_id: &[u8]) -> HsmResult<SecretKeyRef> {
        let id = cka_id.to_vec();
        self.run(move |h| h.find_secret_key_blocking(&id)).await
    }

    pub async fn hmac_sha256(&self, cka_id: &[u8], data: Vec<u8>) -> HsmResult<[u8; 32]> {
        let id = cka_id.to_vec();
        self.run(move |h| h.hmac_sha256_blocking(&id, &data)).await
    }

    pub async fn key_exists(&self, cka_id: &[u8]) -> HsmResult<bool> {
        let id = cka_id.to_vec();
        self.run(move |h| h.key_exists_blocking(&id)).await
    }

    pub async fn key_attributes(&self, cka_id: &[u8]) -> HsmResult<KeyAttributes> {
        let id = cka_id.to_vec();
        self.run(move |h| h.key_attributes_blocking(&id)).await
    }
}

/// The private key, else the secret key, with `cka_id`.
fn find_key(
    s: &cryptoki::session::Session,
    cka_id: &[u8],
) -> HsmResult<cryptoki::object::ObjectHandle> {
    match find_one(s, ObjectClass::PRIVATE_KEY, cka_id) {
        Err(HsmError::KeyNotFound) => find_one(s, ObjectClass::SECRET_KEY, cka_id),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::fixture;
    use super::*;

    #[test]
    fn hmac_is_deterministic_per_key_and_input() {
        let hsm = &fixture().hsm;
        let a = hsm.generate_mac_key_blocking("mac-a").unwrap();
        let b = hsm.generate_mac_key_blocking("mac-a").unwrap();
        assert_ne!(a.cka_id, b.cka_id, "same label, distinct ids");
        let m1 = hsm.hmac_sha256_blocking(&a.cka_id, b"entry").unwrap();
        assert_eq!(m1, hsm.hmac_sha256_blocking(&a.cka_id, b"entry").unwrap());
        assert_ne!(m1, hsm.hmac_sha256_blocking(&b.cka_id, b"entry").unwrap());
        assert_ne!(m1, hsm.hmac_sha256_blocking(&a.cka_id, b"entrY").unwrap());
        let attrs = hsm.key_attributes_blocking(&a.cka_id).unwrap();
        assert!(attrs.sensitive && !attrs.extractable && attrs.never_extractable);
        assert_eq!(hsm.find_secret_key_blocking(&a.cka_id).unwrap(), a);
        assert!(matches!(
            hsm.hmac_sha256_blocking(&[0xde, 0xad], b"entry"),
            Err(HsmError::KeyNotFound)
        ));
    }

    #[test]
    fn kek_is_sensitive_and_found_by_id() {
        let hsm = &fixture().hsm;
        let kek = hsm.generate_kek_blocking("kek-test").unwrap();
        assert!(hsm.key_exists_blocking(&kek.cka_id).unwrap());
        assert_eq!(
            hsm.secret_key_kind_blocking(&kek.cka_id).unwrap(),
            SecretKind::Aes
        );
        let mac = hsm.generate_mac_key_blocking("mac-kind").unwrap();
        assert_eq!(
            hsm.secret_key_kind_blocking(&mac.cka_id).unwrap(),
            SecretKind::GenericSecret
        );
        assert_eq!(hsm.find_secret_key_blocking(&kek.cka_id).unwrap(), kek);
        let attrs = hsm.key_attributes_blocking(&kek.cka_id).unwrap();
        assert!(attrs.sensitive && !attrs.extractable && attrs.never_extractable);
        // The KEK is not a MAC key.
        assert!(hsm.hmac_sha256_blocking(&kek.cka_id, b"x").is_err());
        let uri = hsm.secret_key_uri(&kek);
        assert!(
            uri.starts_with("pkcs11:token=clm;object=kek-test;id=%")
                && uri.ends_with(";type=secret-key"),
            "{uri}"
        );
    }
}
