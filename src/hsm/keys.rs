//! Key objects in the token: generation (CA key pairs, the AES key-encryption
//! key, the HMAC audit key), lookup by `CKA_ID`, signing and MACs.
//!
//! Every private or secret key is created `CKA_SENSITIVE=true`,
//! `CKA_EXTRACTABLE=false`; labels are informative only (they are not unique),
//! so keys are always found by `CKA_ID` and class.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use rand::RngCore;
use sha2::{Digest, Sha256, Sha384};

use super::{Hsm, HsmError, HsmResult};
use crate::domain::der;
use crate::domain::{KeyAlgorithm, SignError, Signer};

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// A private key in the token with its public half, usable as a [`Signer`].
#[derive(Clone)]
pub struct HsmKey {
    hsm: Hsm,
    algorithm: KeyAlgorithm,
    cka_id: Vec<u8>,
    label: String,
    spki: Vec<u8>,
    /// Object handles stay valid across sessions of one application; cached
    /// to spare a find per signature.
    handle: ObjectHandle,
}

/// A secret (AES or HMAC) key in the token.
#[derive(Clone, Debug)]
pub struct SecretKeyRef {
    pub cka_id: Vec<u8>,
    pub label: String,
}

/// Security attributes of a token object, as the token reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAttributes {
    pub sensitive: bool,
    pub extractable: bool,
    pub always_sensitive: bool,
    pub never_extractable: bool,
}

impl std::fmt::Debug for HsmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmKey")
            .field("algorithm", &self.algorithm)
            .field("label", &self.label)
            .field("cka_id", &hex::encode(&self.cka_id))
            .finish()
    }
}

fn new_cka_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    rand::rng().fill_bytes(&mut id);
    id
}

fn curve_oid(alg: KeyAlgorithm) -> Option<&'static [u8]> {
    match alg {
        KeyAlgorithm::EcdsaP256 => Some(OID_P256),
        KeyAlgorithm::EcdsaP384 => Some(OID_P384),
        _ => None,
    }
}

fn find_one(session: &Session, template: &[Attribute]) -> HsmResult<ObjectHandle> {
    session
        .find_objects(template)?
        .into_iter()
        .next()
        .ok_or(HsmError::KeyNotFound)
}

/// SubjectPublicKeyInfo of the public key object `public`.
fn read_spki(session: &Session, public: ObjectHandle, alg: KeyAlgorithm) -> HsmResult<Vec<u8>> {
    if let Some(curve) = curve_oid(alg) {
        let attrs = session.get_attributes(public, &[AttributeType::EcPoint])?;
        let Some(Attribute::EcPoint(raw)) = attrs.into_iter().next() else {
            return Err(HsmError::Encoding("no CKA_EC_POINT".into()));
        };
        // SoftHSM (like most tokens) returns the point wrapped in an OCTET STRING.
        let point = match der::read_tlv(&raw) {
            Some((0x04, inner, rest)) if rest.is_empty() && inner.first() == Some(&0x04) => {
                inner.to_vec()
            }
            _ => raw,
        };
        let alg_id = der::sequence(&[&der::tlv(0x06, OID_EC_PUBLIC_KEY), &der::tlv(0x06, curve)]);
        return Ok(der::sequence(&[&alg_id, &der::bit_string(&point)]));
    }
    let attrs = session.get_attributes(
        public,
        &[AttributeType::Modulus, AttributeType::PublicExponent],
    )?;
    let (mut n, mut e) = (None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            _ => {}
        }
    }
    let (Some(n), Some(e)) = (n, e) else {
        return Err(HsmError::Encoding(
            "RSA public key without modulus or exponent".into(),
        ));
    };
    let rsa_key = der::sequence(&[&der::unsigned_integer(&n), &der::unsigned_integer(&e)]);
    let alg_id = der::sequence(&[&der::tlv(0x06, OID_RSA_ENCRYPTION), &der::NULL]);
    Ok(der::sequence(&[&alg_id, &der::bit_string(&rsa_key)]))
}

/// Raw `r‖s` (what `CKM_ECDSA` returns) to DER `SEQUENCE { r, s }` (what
/// X.509 wants).
fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, SignError> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(SignError::Failed(format!(
            "ECDSA signature of odd length {}",
            raw.len()
        )));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Ok(der::sequence(&[
        &der::unsigned_integer(r),
        &der::unsigned_integer(s),
    ]))
}

impl Hsm {
    /// Generates a key pair in the token: private half sensitive and never
    /// extractable, both halves sharing a fresh random `CKA_ID`.
    pub fn generate_key_pair_blocking(&self, alg: KeyAlgorithm, label: &str) -> HsmResult<HsmKey> {
        let id = new_cka_id();
        let label_bytes = label.as_bytes().to_vec();
        let private_template = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Id(id.clone()),
            Attribute::Label(label_bytes.clone()),
        ];
        let mut public_template = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Id(id.clone()),
            Attribute::Label(label_bytes),
        ];
        let mechanism = if let Some(curve) = curve_oid(alg) {
            public_template.push(Attribute::EcParams(der::tlv(0x06, curve)));
            Mechanism::EccKeyPairGen
        } else if let Some(bits) = alg.rsa_bits() {
            public_template.push(Attribute::ModulusBits(u64::from(bits).into()));
            public_template.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        } else {
            return Err(HsmError::UnsupportedAlgorithm(alg.to_string()));
        };
        let (spki, handle) = self
            .with_session(|s| {
                let (public, private) =
                    s.generate_key_pair(&mechanism, &public_template, &private_template)?;
                Ok((public, private))
            })
            .and_then(|(public, private)| {
                let spki = self.with_session_h(|s| read_spki(s, public, alg))?;
                Ok((spki, private))
            })?;
        Ok(HsmKey {
            hsm: self.clone(),
            algorithm: alg,
            cka_id: id,
            label: label.to_string(),
            spki,
            handle,
        })
    }

    /// Runs an operation whose errors are already [`HsmError`]s on a pooled
    /// session (no retry: used for follow-up reads).
    fn with_session_h<T>(&self, op: impl FnOnce(&Session) -> HsmResult<T>) -> HsmResult<T> {
        let mut op = Some(op);
        let mut out = None;
        self.with_session(|s| {
            if let Some(f) = op.take() {
                out = Some(f(s));
            }
            Ok(())
        })?;
        out.unwrap_or(Err(HsmError::Pkcs11("operation not run".into())))
    }

    /// Loads a key pair by `CKA_ID`.
    pub fn find_key_pair_blocking(&self, alg: KeyAlgorithm, cka_id: &[u8]) -> HsmResult<HsmKey> {
        let (private, spki, label) = self.with_session_h(|s| {
            let private = find_one(
                s,
                &[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Id(cka_id.to_vec()),
                ],
            )?;
            let public = find_one(
                s,
                &[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Id(cka_id.to_vec()),
                ],
            )?;
            let key_type =
                s.get_attributes(private, &[AttributeType::KeyType, AttributeType::Label])?;
            let mut label = String::new();
            for a in key_type {
                match a {
                    Attribute::KeyType(kt) => {
                        let expected = if alg.rsa_bits().is_some() {
                            KeyType::RSA
                        } else {
                            KeyType::EC
                        };
                        if kt != expected {
                            return Err(HsmError::Encoding(format!(
                                "key type {kt} does not match {alg}"
                            )));
                        }
                    }
                    Attribute::Label(l) => label = String::from_utf8_lossy(&l).to_string(),
                    _ => {}
                }
            }
            Ok((private, read_spki(s, public, alg)?, label))
        })?;
        Ok(HsmKey {
            hsm: self.clone(),
            algorithm: alg,
            cka_id: cka_id.to_vec(),
            label,
            spki,
            handle: private,
        })
    }

    fn generate_secret_blocking(
        &self,
        label: &str,
        mechanism: Mechanism,
        extra: &[Attribute],
    ) -> HsmResult<SecretKeyRef> {
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
        template.extend_from_slice(extra);
        self.with_session(|s| s.generate_key(&mechanism, &template))?;
        Ok(SecretKeyRef {
            cka_id: id,
            label: label.to_string(),
        })
    }

    /// AES-256 key-encryption key: wraps and unwraps, nothing else.
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
            ],
        )
    }

    /// 256-bit generic secret for HMAC-SHA-256 over audit entries.
    pub fn generate_mac_key_blocking(&self, label: &str) -> HsmResult<SecretKeyRef> {
        self.generate_secret_blocking(
            label,
            Mechanism::GenericSecretKeyGen,
            &[
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Sign(true),
                Attribute::Verify(true),
            ],
        )
    }

    /// HMAC-SHA-256 of `data` under the secret key with `cka_id`.
    pub fn hmac_sha256_blocking(&self, cka_id: &[u8], data: &[u8]) -> HsmResult<[u8; 32]> {
        let mac = self.with_session_h(|s| {
            let key = find_one(
                s,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::Id(cka_id.to_vec()),
                ],
            )?;
            Ok(s.sign(&Mechanism::Sha256Hmac, key, data)?)
        })?;
        mac.try_into()
            .map_err(|_| HsmError::Encoding("HMAC of unexpected length".into()))
    }

    /// Whether any object with this `CKA_ID` exists in the token.
    pub fn key_exists_blocking(&self, cka_id: &[u8]) -> HsmResult<bool> {
        self.with_session(|s| s.find_objects(&[Attribute::Id(cka_id.to_vec())]))
            .map(|found| !found.is_empty())
    }

    /// Security attributes of the private or secret key with `cka_id`.
    pub fn key_attributes_blocking(&self, cka_id: &[u8]) -> HsmResult<KeyAttributes> {
        self.with_session_h(|s| {
            let key = find_one(
                s,
                &[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Id(cka_id.to_vec()),
                ],
            )
            .or_else(|_| {
                find_one(
                    s,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::Id(cka_id.to_vec()),
                    ],
                )
            })?;
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

    pub async fn generate_key_pair(&self, alg: KeyAlgorithm, label: &str) -> HsmResult<HsmKey> {
        let label = label.to_string();
        self.run(move |h| h.generate_key_pair_blocking(alg, &label))
            .await
    }

    pub async fn find_key_pair(&self, alg: KeyAlgorithm, cka_id: &[u8]) -> HsmResult<HsmKey> {
        let id = cka_id.to_vec();
        self.run(move |h| h.find_key_pair_blocking(alg, &id)).await
    }

    pub async fn generate_kek(&self, label: &str) -> HsmResult<SecretKeyRef> {
        let label = label.to_string();
        self.run(move |h| h.generate_kek_blocking(&label)).await
    }

    pub async fn generate_mac_key(&self, label: &str) -> HsmResult<SecretKeyRef> {
        let label = label.to_string();
        self.run(move |h| h.generate_mac_key_blocking(&label)).await
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

impl HsmKey {
    pub fn cka_id(&self) -> &[u8] {
        &self.cka_id
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    fn sign_blocking(&self, message: &[u8]) -> HsmResult<Vec<u8>> {
        let handle = self.handle;
        let id = self.cka_id.clone();
        let alg = self.algorithm;
        let (mechanism, input): (Mechanism, Vec<u8>) = match alg {
            // SoftHSM has no CKM_ECDSA_SHA256: hash here, sign the digest.
            KeyAlgorithm::EcdsaP256 => (Mechanism::Ecdsa, Sha256::digest(message).to_vec()),
            KeyAlgorithm::EcdsaP384 => (Mechanism::Ecdsa, Sha384::digest(message).to_vec()),
            a if a.rsa_bits().is_some() => (Mechanism::Sha256RsaPkcs, message.to_vec()),
            other => return Err(HsmError::UnsupportedAlgorithm(other.to_string())),
        };
        self.hsm
            .with_session_h(|s| match s.sign(&mechanism, handle, &input) {
                Ok(sig) => Ok(sig),
                // The cached handle went stale (token re-initialised): find again.
                Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::KeyHandleInvalid
                    | cryptoki::error::RvError::ObjectHandleInvalid,
                    _,
                )) => {
                    let key = find_one(
                        s,
                        &[
                            Attribute::Class(ObjectClass::PRIVATE_KEY),
                            Attribute::Id(id.clone()),
                        ],
                    )?;
                    Ok(s.sign(&mechanism, key, &input)?)
                }
                Err(e) => Err(e.into()),
            })
    }
}

impl Signer for HsmKey {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn public_key_spki(&self) -> &[u8] {
        &self.spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let raw = self.sign_blocking(message).map_err(|e| match e {
            HsmError::Unavailable(m) => SignError::Unavailable(m),
            other => SignError::Failed(other.to_string()),
        })?;
        match self.algorithm {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => ecdsa_raw_to_der(&raw),
            _ => Ok(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{self, UnparsedPublicKey};
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;

    use super::super::testing::fixture;
    use super::*;

    fn verify(key: &HsmKey, msg: &[u8], sig: &[u8]) {
        let (_, spki) = SubjectPublicKeyInfo::from_der(key.public_key_spki()).unwrap();
        let alg: &dyn signature::VerificationAlgorithm = match key.algorithm() {
            KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
            KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
            _ => &signature::RSA_PKCS1_2048_8192_SHA256,
        };
        UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
            .verify(msg, sig)
            .expect("signature verifies with the exported public key");
    }

    #[test]
    fn every_ca_algorithm_generates_signs_and_verifies() {
        let hsm = &fixture().hsm;
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa3072,
            KeyAlgorithm::Rsa4096,
        ] {
            let key = hsm
                .generate_key_pair_blocking(alg, &format!("test-{alg}"))
                .unwrap();
            let msg = b"to be signed";
            let sig = key.sign(msg).unwrap();
            verify(&key, msg, &sig);

            let attrs = hsm.key_attributes_blocking(key.cka_id()).unwrap();
            assert!(
                attrs.sensitive && !attrs.extractable && attrs.never_extractable,
                "{alg}: {attrs:?}"
            );

            let again = hsm.find_key_pair_blocking(alg, key.cka_id()).unwrap();
            assert_eq!(again.public_key_spki(), key.public_key_spki());
            verify(&again, b"other", &again.sign(b"other").unwrap());
        }
        assert!(matches!(
            hsm.generate_key_pair_blocking(KeyAlgorithm::Ed25519, "x"),
            Err(HsmError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn unknown_ids_are_not_found() {
        let hsm = &fixture().hsm;
        assert!(!hsm.key_exists_blocking(&[0xde, 0xad]).unwrap());
        assert!(matches!(
            hsm.find_key_pair_blocking(KeyAlgorithm::EcdsaP256, &[0xde, 0xad]),
            Err(HsmError::KeyNotFound)
        ));
    }

    #[test]
    fn hmac_keys_are_deterministic_and_distinct() {
        let hsm = &fixture().hsm;
        let a = hsm.generate_mac_key_blocking("mac-a").unwrap();
        let b = hsm.generate_mac_key_blocking("mac-b").unwrap();
        let m1 = hsm.hmac_sha256_blocking(&a.cka_id, b"entry").unwrap();
        assert_eq!(m1, hsm.hmac_sha256_blocking(&a.cka_id, b"entry").unwrap());
        assert_ne!(m1, hsm.hmac_sha256_blocking(&b.cka_id, b"entry").unwrap());
        assert_ne!(m1, hsm.hmac_sha256_blocking(&a.cka_id, b"entrY").unwrap());
        let attrs = hsm.key_attributes_blocking(&a.cka_id).unwrap();
        assert!(attrs.sensitive && !attrs.extractable);
    }

    #[test]
    fn kek_is_sensitive_and_registered_by_id() {
        let hsm = &fixture().hsm;
        let kek = hsm.generate_kek_blocking("kek-test").unwrap();
        assert!(hsm.key_exists_blocking(&kek.cka_id).unwrap());
        let attrs = hsm.key_attributes_blocking(&kek.cka_id).unwrap();
        assert!(attrs.sensitive && !attrs.extractable && attrs.never_extractable);
        let uri = hsm.pkcs11_uri("kek-test", &kek.cka_id);
        assert!(
            uri.starts_with("pkcs11:token=clm;object=kek-test;id=%"),
            "{uri}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_signing_through_the_pool() {
        let hsm = fixture().hsm.clone();
        let key = hsm
            .generate_key_pair(KeyAlgorithm::EcdsaP256, "pool")
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..16u8 {
            let key = key.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                let msg = [i; 32];
                let sig = key.sign(&msg).unwrap();
                verify(&key, &msg, &sig);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        hsm.health_check().await.unwrap();
    }

    #[test]
    fn an_unknown_token_is_named() {
        let f = fixture();
        let missing = Hsm::open(
            std::path::Path::new("/usr/lib/softhsm/libsofthsm2.so"),
            "no-such-token",
            &crate::domain::Secret::new(f.pin.clone()),
            1,
        );
        assert!(matches!(missing, Err(HsmError::TokenNotFound(t)) if t == "no-such-token"));
    }

    #[test]
    fn ecdsa_signatures_are_der() {
        let raw = [[0x80u8; 32], [0x01u8; 32]].concat();
        let der_sig = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(der_sig[0], 0x30);
        assert_eq!(&der_sig[2..5], &[0x02, 0x21, 0x00]);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
    }
}
