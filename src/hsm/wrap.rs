//! End-entity private keys under the key-encryption key: a PKCS#8 key goes
//! into the token as a temporary session object and comes out wrapped with
//! `CKM_AES_KEY_WRAP_PAD` (the only wrapped form clm stores); a wrapped key
//! comes back either as plaintext PKCS#8 (for the one-time PKCS#12 of
//! server-side key generation and key recovery) or as a session-only,
//! sensitive key that can sign.
//!
//! The blob is the token's own format (SoftHSM: AES-KWP over PKCS#8), so it
//! is opaque here: the caller stores the algorithm next to it. Temporary
//! objects are destroyed in the same session operation that made them, and
//! plaintext buffers of this module are zeroed before they are freed.

use base64::Engine as _;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use ring::signature::{self, KeyPair as _};

use super::keys::{
    OID_EC_PUBLIC_KEY, OID_RSA_ENCRYPTION, algorithm_identifier, curve_oid, key_type,
    keygen_mechanism, read_spki,
};
use super::recovery::Op;
use super::{HandleCache, Hsm, HsmError, HsmKey, HsmResult, find_one, new_cka_id};
use crate::domain::der;
use crate::domain::{KeyAlgorithm, Secret, Signer};

const PEM_LABEL: &str = "PRIVATE KEY";
/// Signed and verified after an unwrap, to prove the key and the SPKI the
/// caller supplied belong together.
const PAIR_CHECK: &[u8] = b"clm: unwrapped key matches its public key";

fn bad_key() -> HsmError {
    // Deliberately vague: the input is private key material.
    HsmError::Encoding("not a PKCS#8 private key of the expected algorithm".into())
}

fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

fn wipe_attributes(attrs: &mut [Attribute]) {
    for a in attrs {
        match a {
            Attribute::Value(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v) => wipe(v),
            _ => {}
        }
    }
}

/// Reads one TLV with the expected tag: (content, rest).
fn expect_tlv(input: &[u8], tag: u8) -> HsmResult<(&[u8], &[u8])> {
    match der::read_tlv(input) {
        Some((t, content, rest)) if t == tag => Ok((content, rest)),
        _ => Err(bad_key()),
    }
}

/// Magnitude bytes of a non-negative DER INTEGER.
fn integer_magnitude(content: &[u8]) -> HsmResult<Vec<u8>> {
    if content.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(bad_key());
    }
    let skip = content.iter().take_while(|b| **b == 0).count();
    Ok(content[skip..].to_vec())
}

/// The private key material of a PKCS#8 `PrivateKeyInfo` as PKCS#11
/// attributes, after checking it is a key of `alg`.
fn pkcs8_to_attributes(alg: KeyAlgorithm, pkcs8: &[u8]) -> HsmResult<Vec<Attribute>> {
    let (body, rest) = expect_tlv(pkcs8, 0x30)?;
    if !rest.is_empty() {
        return Err(bad_key());
    }
    let (version, body) = expect_tlv(body, 0x02)?;
    if version != [0] && version != [1] {
        return Err(bad_key());
    }
    let (alg_id, body) = expect_tlv(body, 0x30)?;
    let (private_key, _) = expect_tlv(body, 0x04)?;
    let (oid, params) = expect_tlv(alg_id, 0x06)?;
    let mut attrs = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(key_type(alg)?),
    ];
    if let Some(curve) = curve_oid(alg) {
        let (named_curve, _) = expect_tlv(params, 0x06)?;
        if oid != OID_EC_PUBLIC_KEY || named_curve != curve {
            return Err(bad_key());
        }
        // ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING, ... }
        let (ec, _) = expect_tlv(private_key, 0x30)?;
        let (ec_version, ec) = expect_tlv(ec, 0x02)?;
        let (scalar, _) = expect_tlv(ec, 0x04)?;
        if ec_version != [1] {
            return Err(bad_key());
        }
        attrs.push(Attribute::EcParams(der::tlv(0x06, curve)));
        attrs.push(Attribute::Value(scalar.to_vec()));
    } else {
        if oid != OID_RSA_ENCRYPTION {
            return Err(bad_key());
        }
        // RSAPrivateKey ::= SEQUENCE { version 0, n, e, d, p, q, dp, dq, qinv }
        let (mut rsa, _) = expect_tlv(private_key, 0x30)?;
        let mut ints = Vec::with_capacity(9);
        for _ in 0..9 {
            let (content, rest) = expect_tlv(rsa, 0x02)?;
            ints.push(integer_magnitude(content)?);
            rsa = rest;
        }
        let mut ints = ints.into_iter();
        let mut next = || ints.next().ok_or_else(bad_key);
        if !next()?.is_empty() {
            return Err(bad_key());
        }
        let n = next()?;
        if Some(n.len() as u32 * 8) != alg.rsa_bits() {
            return Err(bad_key());
        }
        attrs.extend([
            Attribute::Modulus(n),
            Attribute::PublicExponent(next()?),
            Attribute::PrivateExponent(next()?),
            Attribute::Prime1(next()?),
            Attribute::Prime2(next()?),
            Attribute::Exponent1(next()?),
            Attribute::Exponent2(next()?),
            Attribute::Coefficient(next()?),
        ]);
    }
    Ok(attrs)
}

/// The subjectPublicKey bits of an SPKI, after checking its algorithm
/// identifier is the one of `alg`.
fn spki_public_key(alg: KeyAlgorithm, spki: &[u8]) -> HsmResult<Vec<u8>> {
    let wrong = || HsmError::Encoding(format!("public key is not a {alg} SPKI"));
    let (body, _) = der::read_tlv(spki)
        .filter(|(t, _, rest)| *t == 0x30 && rest.is_empty())
        .map(|(_, b, r)| (b, r))
        .ok_or_else(wrong)?;
    let alg_id = algorithm_identifier(alg)?;
    let rest = body.strip_prefix(alg_id.as_slice()).ok_or_else(wrong)?;
    match der::read_tlv(rest) {
        Some((0x03, [0, key @ ..], [])) => Ok(key.to_vec()),
        _ => Err(wrong()),
    }
}

fn left_pad(value: &[u8], len: usize) -> Vec<u8> {
    let skip = value.iter().take_while(|b| **b == 0).count();
    let value = &value[skip..];
    let mut out = vec![0u8; len.saturating_sub(value.len())];
    out.extend_from_slice(value);
    out
}

/// Reads the private key material of the non-sensitive object `key` and
/// encodes it as PKCS#8 DER; EC keys take their public point from `spki`
/// (the token does not keep it on the private object, and `ring` wants it).
fn read_pkcs8(
    s: &Session,
    key: ObjectHandle,
    alg: KeyAlgorithm,
    spki: &[u8],
) -> HsmResult<Vec<u8>> {
    let public = spki_public_key(alg, spki)?;
    let private_key = if let Some(field) = match alg {
        KeyAlgorithm::EcdsaP256 => Some(32),
        KeyAlgorithm::EcdsaP384 => Some(48),
        _ => None,
    } {
        let mut attrs = s.get_attributes(key, &[AttributeType::Value])?;
        let Some(Attribute::Value(scalar)) = attrs.first() else {
            return Err(HsmError::Encoding(
                "unwrapped EC key without CKA_VALUE".into(),
            ));
        };
        let mut scalar = left_pad(scalar, field);
        wipe_attributes(&mut attrs);
        let version = der::tlv(0x02, &[1]);
        let mut private = der::octet_string(&scalar);
        wipe(&mut scalar);
        let public = der::tlv(0xa1, &der::bit_string(&public));
        let ec = der::sequence(&[&version, &private, &public]);
        wipe(&mut private);
        ec
    } else {
        let wanted = [
            AttributeType::Modulus,
            AttributeType::PublicExponent,
            AttributeType::PrivateExponent,
            AttributeType::Prime1,
            AttributeType::Prime2,
            AttributeType::Exponent1,
            AttributeType::Exponent2,
            AttributeType::Coefficient,
        ];
        let mut attrs = s.get_attributes(key, &wanted)?;
        let mut parts: Vec<Vec<u8>> = vec![der::unsigned_integer(&[])];
        for (want, got) in wanted.iter().zip(attrs.iter()) {
            let value = match got {
                Attribute::Modulus(v)
                | Attribute::PublicExponent(v)
                | Attribute::PrivateExponent(v)
                | Attribute::Prime1(v)
                | Attribute::Prime2(v)
                | Attribute::Exponent1(v)
                | Attribute::Exponent2(v)
                | Attribute::Coefficient(v)
                    if got.attribute_type() == *want =>
                {
                    v
                }
                _ => {
                    wipe_attributes(&mut attrs);
                    parts.iter_mut().for_each(|p| wipe(p));
                    return Err(HsmError::Encoding("unwrapped RSA key is incomplete".into()));
                }
            };
            parts.push(der::unsigned_integer(value));
        }
        wipe_attributes(&mut attrs);
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let rsa = der::sequence(&refs);
        parts.iter_mut().for_each(|p| wipe(p));
        rsa
    };
    let mut private_key = private_key;
    let mut private = der::octet_string(&private_key);
    wipe(&mut private_key);
    let pkcs8 = der::sequence(&[&der::tlv(0x02, &[0]), &algorithm_identifier(alg)?, &private]);
    wipe(&mut private);
    Ok(pkcs8)
}

/// `ring` re-derives the public key from the private one: this proves the
/// PKCS#8 is whole and belongs to the caller's public key.
fn check_pkcs8(alg: KeyAlgorithm, pkcs8: &[u8], public: &[u8]) -> HsmResult<()> {
    let mismatch = || HsmError::Encoding("unwrapped key does not match its public key".into());
    let derived = match alg {
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
            let signing = if alg == KeyAlgorithm::EcdsaP256 {
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING
            } else {
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING
            };
            let rng = ring::rand::SystemRandom::new();
            signature::EcdsaKeyPair::from_pkcs8(signing, pkcs8, &rng)
                .map_err(|_| mismatch())?
                .public_key()
                .as_ref()
                .to_vec()
        }
        _ => signature::RsaKeyPair::from_pkcs8(pkcs8)
            .map_err(|_| mismatch())?
            .public_key()
            .as_ref()
            .to_vec(),
    };
    if derived == public {
        Ok(())
    } else {
        Err(mismatch())
    }
}

fn to_pem(der_bytes: &[u8]) -> Secret {
    let b64 = Secret::new(base64::engine::general_purpose::STANDARD.encode(der_bytes));
    let mut pem = String::with_capacity(b64.expose().len() * 65 / 64 + 64);
    pem.push_str("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.expose().as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Secret::new(pem)
}

/// The unwrap template shared by both unwrap flavours.
fn unwrap_template(
    alg: KeyAlgorithm,
    exportable: bool,
    id: Vec<u8>,
    label: &str,
) -> HsmResult<Vec<Attribute>> {
    Ok(vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(key_type(alg)?),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(!exportable),
        Attribute::Extractable(exportable),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Id(id),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
}

impl Hsm {
    /// Server-side key generation: a key pair of `alg` is generated in the
    /// token as session objects, the private half (sensitive, extractable
    /// only by wrapping) leaves wrapped under the KEK with `kek_id`, and both
    /// objects are destroyed. Returns (wrapped key, SPKI).
    pub fn generate_wrapped_key_pair_blocking(
        &self,
        kek_id: &[u8],
        alg: KeyAlgorithm,
    ) -> HsmResult<(Vec<u8>, Vec<u8>)> {
        let (mechanism, public_extra) = keygen_mechanism(alg)?;
        self.with_session(Op::Generate, |s| {
            let kek = find_one(s, ObjectClass::SECRET_KEY, kek_id)?;
            let id = new_cka_id();
            let private_template = [
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Id(id.clone()),
            ];
            let mut public_template = vec![
                Attribute::Token(false),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
                Attribute::Id(id),
            ];
            public_template.extend(public_extra.iter().cloned());
            let (public, private) =
                s.generate_key_pair(&mechanism, &public_template, &private_template)?;
            let result = read_spki(s, public, alg).and_then(|spki| {
                let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, private)?;
                Ok((wrapped, spki))
            });
            let destroyed = s
                .destroy_object(private)
                .and_then(|()| s.destroy_object(public));
            let result = result?;
            destroyed?;
            Ok(result)
        })
    }

    pub async fn generate_wrapped_key_pair(
        &self,
        kek_id: &[u8],
        alg: KeyAlgorithm,
    ) -> HsmResult<(Vec<u8>, Vec<u8>)> {
        let id = kek_id.to_vec();
        self.run(move |h| h.generate_wrapped_key_pair_blocking(&id, alg))
            .await
    }

    /// KEK rotation: unwraps `wrapped` under the old KEK into a temporary
    /// session object (sensitive, extractable only by wrapping), wraps it
    /// under the new KEK and destroys it — the key never exists in plain
    /// form outside the token.
    pub fn rewrap_private_key_blocking(
        &self,
        old_kek_id: &[u8],
        new_kek_id: &[u8],
        wrapped: &[u8],
        alg: KeyAlgorithm,
    ) -> HsmResult<Vec<u8>> {
        let mut template = unwrap_template(alg, true, new_cka_id(), "clm-rewrap")?;
        for a in &mut template {
            if let Attribute::Sensitive(v) = a {
                *v = true;
            }
        }
        self.with_session(Op::Wrap, |s| {
            let old = find_one(s, ObjectClass::SECRET_KEY, old_kek_id)?;
            let new = find_one(s, ObjectClass::SECRET_KEY, new_kek_id)?;
            let key = s.unwrap_key(&Mechanism::AesKeyWrapPad, old, wrapped, &template)?;
            let rewrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, new, key);
            let destroyed = s.destroy_object(key);
            let rewrapped = rewrapped?;
            destroyed?;
            Ok(rewrapped)
        })
    }

    pub async fn rewrap_private_key(
        &self,
        old_kek_id: &[u8],
        new_kek_id: &[u8],
        wrapped: Vec<u8>,
        alg: KeyAlgorithm,
    ) -> HsmResult<Vec<u8>> {
        let (old, new) = (old_kek_id.to_vec(), new_kek_id.to_vec());
        self.run(move |h| h.rewrap_private_key_blocking(&old, &new, &wrapped, alg))
            .await
    }

    /// Wraps a PKCS#8 private key of `alg` (PEM, `PRIVATE KEY`) under the KEK
    /// with `kek_id`. The key passes through the token as a temporary
    /// session object that is destroyed before this returns.
    pub fn wrap_private_key_blocking(
        &self,
        kek_id: &[u8],
        alg: KeyAlgorithm,
        pkcs8_pem: &Secret,
    ) -> HsmResult<Vec<u8>> {
        let parsed = pem::parse(pkcs8_pem.expose()).map_err(|_| bad_key())?;
        let tag_ok = parsed.tag() == PEM_LABEL;
        let mut pkcs8 = parsed.into_contents();
        if !tag_ok {
            wipe(&mut pkcs8);
            return Err(bad_key());
        }
        let material = pkcs8_to_attributes(alg, &pkcs8);
        wipe(&mut pkcs8);
        let mut template = material?;
        template.extend([
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::Sign(false),
            Attribute::Id(new_cka_id()),
        ]);
        let result = self.with_session(Op::Wrap, |s| {
            let kek = find_one(s, ObjectClass::SECRET_KEY, kek_id)?;
            let key = s.create_object(&template)?;
            let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, key);
            let destroyed = s.destroy_object(key);
            let wrapped = wrapped?;
            destroyed?;
            Ok(wrapped)
        });
        wipe_attributes(&mut template);
        result
    }

    /// Unwraps a key made by [`Hsm::wrap_private_key_blocking`] back into
    /// plaintext PKCS#8 PEM. `spki` is the key's public half (from its
    /// certificate): EC encodings need the point, and the result is checked
    /// against it.
    pub fn export_private_key_blocking(
        &self,
        kek_id: &[u8],
        wrapped: &[u8],
        alg: KeyAlgorithm,
        spki: &[u8],
    ) -> HsmResult<Secret> {
        let public = spki_public_key(alg, spki)?;
        let template = unwrap_template(alg, true, new_cka_id(), "clm-export")?;
        let mut pkcs8 = self.with_session(Op::Unwrap, |s| {
            let kek = find_one(s, ObjectClass::SECRET_KEY, kek_id)?;
            let key = s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, wrapped, &template)?;
            let pkcs8 = read_pkcs8(s, key, alg, spki);
            let destroyed = s.destroy_object(key);
            let pkcs8 = pkcs8?;
            destroyed?;
            Ok(pkcs8)
        })?;
        let checked = check_pkcs8(alg, &pkcs8, &public);
        let pem = checked.map(|()| to_pem(&pkcs8));
        wipe(&mut pkcs8);
        pem
    }

    /// Unwraps a key made by [`Hsm::wrap_private_key_blocking`] into a
    /// session object that can sign but is sensitive and not extractable.
    ///
    /// The object lives as long as the pooled session that made it (it is
    /// gone after session recovery or when the `Hsm` drops); release it with
    /// [`Hsm::destroy_session_key_blocking`] when done. `spki` becomes the
    /// key's public half and is proven to match by a test signature.
    pub fn unwrap_private_key_blocking(
        &self,
        kek_id: &[u8],
        wrapped: &[u8],
        alg: KeyAlgorithm,
        spki: &[u8],
        label: &str,
    ) -> HsmResult<HsmKey> {
        let public = spki_public_key(alg, spki)?;
        let (cka_id, handle) = self.with_session(Op::Unwrap, |s| {
            let id = new_cka_id();
            let kek = find_one(s, ObjectClass::SECRET_KEY, kek_id)?;
            let template = unwrap_template(alg, false, id.clone(), label)?;
            let key = s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, wrapped, &template)?;
            Ok((id, HandleCache::found(s.generation, key)))
        })?;
        let key = HsmKey {
            hsm: self.clone(),
            algorithm: alg,
            cka_id,
            label: label.to_string(),
            spki: spki.to_vec(),
            handle: std::sync::Arc::new(handle),
            missing: std::sync::Arc::default(),
        };
        let verifier: &dyn signature::VerificationAlgorithm = match alg {
            KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
            KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
            _ => &signature::RSA_PKCS1_2048_8192_SHA256,
        };
        let proven = key
            .sign(PAIR_CHECK)
            .map_err(|e| HsmError::Pkcs11(e.to_string()))
            .and_then(|sig| {
                signature::UnparsedPublicKey::new(verifier, &public)
                    .verify(PAIR_CHECK, &sig)
                    .map_err(|_| {
                        HsmError::Encoding("unwrapped key does not match its public key".into())
                    })
            });
        match proven {
            Ok(()) => Ok(key),
            Err(e) => {
                // Best effort: the object dies with its session anyway.
                let _ = self.destroy_session_key_blocking(key);
                Err(e)
            }
        }
    }

    /// Destroys a key made by [`Hsm::unwrap_private_key_blocking`]. Token
    /// objects (CA keys) are refused.
    pub fn destroy_session_key_blocking(&self, key: HsmKey) -> HsmResult<()> {
        self.with_session(Op::Destroy, |s| {
            // Of an older module generation the object is gone already.
            let Some(handle) = key.handle.get(s.generation) else {
                return Ok(());
            };
            let on_token = s.get_attributes(handle, &[AttributeType::Token])?;
            if !matches!(on_token.first(), Some(Attribute::Token(false))) {
                return Err(HsmError::Pkcs11(
                    "refusing to destroy a token object through destroy_session_key".into(),
                ));
            }
            Ok(s.destroy_object(handle)?)
        })
    }

    pub async fn wrap_private_key(
        &self,
        kek_id: &[u8],
        alg: KeyAlgorithm,
        pkcs8_pem: Secret,
    ) -> HsmResult<Vec<u8>> {
        let id = kek_id.to_vec();
        self.run(move |h| h.wrap_private_key_blocking(&id, alg, &pkcs8_pem))
            .await
    }

    pub async fn export_private_key(
        &self,
        kek_id: &[u8],
        wrapped: Vec<u8>,
        alg: KeyAlgorithm,
        spki: Vec<u8>,
    ) -> HsmResult<Secret> {
        let id = kek_id.to_vec();
        self.run(move |h| h.export_private_key_blocking(&id, &wrapped, alg, &spki))
            .await
    }

    pub async fn unwrap_private_key(
        &self,
        kek_id: &[u8],
        wrapped: Vec<u8>,
        alg: KeyAlgorithm,
        spki: Vec<u8>,
        label: &str,
    ) -> HsmResult<HsmKey> {
        let (id, label) = (kek_id.to_vec(), label.to_string());
        self.run(move |h| h.unwrap_private_key_blocking(&id, &wrapped, alg, &spki, &label))
            .await
    }

    pub async fn destroy_session_key(&self, key: HsmKey) -> HsmResult<()> {
        self.run(move |h| h.destroy_session_key_blocking(key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::tests::verify;
    use super::super::testing::fixture;
    use super::*;

    /// A software key as server-side key generation makes it, with its SPKI.
    fn software_key(alg: KeyAlgorithm) -> (Secret, Vec<u8>) {
        let rc_alg = match alg {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => unreachable!("rcgen with ring generates EC keys only"),
        };
        let key = rcgen::KeyPair::generate_for(rc_alg).unwrap();
        (
            Secret::new(key.serialize_pem()),
            rcgen::PublicKeyData::subject_public_key_info(&key),
        )
    }

    /// An RSA key from openssl (rcgen's ring backend cannot generate RSA).
    fn openssl_rsa(bits: u32) -> (Secret, Vec<u8>) {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
            .arg(format!("rsa_keygen_bits:{bits}"))
            .output()
            .expect("run openssl");
        assert!(out.status.success());
        let pem = String::from_utf8(out.stdout).unwrap();
        let key = rcgen::KeyPair::from_pem(&pem).unwrap();
        (
            Secret::new(pem),
            rcgen::PublicKeyData::subject_public_key_info(&key),
        )
    }

    #[test]
    fn rewrapped_keys_open_under_the_new_kek_only() {
        let hsm = &fixture().hsm;
        let old = hsm.generate_kek_blocking("rewrap-old").unwrap();
        let new = hsm.generate_kek_blocking("rewrap-new").unwrap();
        let alg = KeyAlgorithm::EcdsaP256;
        let (wrapped, spki) = hsm
            .generate_wrapped_key_pair_blocking(&old.cka_id, alg)
            .unwrap();
        let rewrapped = hsm
            .rewrap_private_key_blocking(&old.cka_id, &new.cka_id, &wrapped, alg)
            .unwrap();
        assert_ne!(rewrapped, wrapped);
        let a = hsm
            .export_private_key_blocking(&old.cka_id, &wrapped, alg, &spki)
            .unwrap();
        let b = hsm
            .export_private_key_blocking(&new.cka_id, &rewrapped, alg, &spki)
            .unwrap();
        assert_eq!(a.expose(), b.expose(), "the same key");
        assert!(
            hsm.export_private_key_blocking(&old.cka_id, &rewrapped, alg, &spki)
                .is_err()
        );
    }

    #[test]
    fn keys_generated_in_the_token_leave_only_wrapped() {
        let hsm = &fixture().hsm;
        let kek = hsm.generate_kek_blocking("keygen-test-kek").unwrap();
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
            let (wrapped, spki) = hsm
                .generate_wrapped_key_pair_blocking(&kek.cka_id, alg)
                .unwrap();
            let exported = hsm
                .export_private_key_blocking(&kek.cka_id, &wrapped, alg, &spki)
                .unwrap();
            let back = rcgen::KeyPair::from_pem(exported.expose()).unwrap();
            assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&back), spki);
            let der = pem::parse(exported.expose()).unwrap().into_contents();
            assert!(
                !wrapped.windows(16).any(|w| der.windows(16).any(|p| p == w)),
                "{alg}: the blob must not contain the plaintext"
            );
        }
        assert!(
            hsm.generate_wrapped_key_pair_blocking(b"no such kek", KeyAlgorithm::EcdsaP256)
                .is_err()
        );
    }

    #[test]
    fn wrapped_keys_come_back_whole_and_can_sign() {
        let hsm = &fixture().hsm;
        let kek = hsm.generate_kek_blocking("wrap-test-kek").unwrap();
        let other_kek = hsm.generate_kek_blocking("wrap-test-other").unwrap();
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
        ] {
            let (pem, spki) = match alg.rsa_bits() {
                Some(bits) => openssl_rsa(bits),
                None => software_key(alg),
            };
            let wrapped = hsm
                .wrap_private_key_blocking(&kek.cka_id, alg, &pem)
                .unwrap();
            assert!(wrapped.len() > 32);
            assert!(
                !wrapped
                    .windows(16)
                    .any(|w| pem.expose().as_bytes().windows(16).any(|p| p == w)),
                "{alg}: blob must not contain the plaintext"
            );

            // Export: the same key, usable by software.
            let exported = hsm
                .export_private_key_blocking(&kek.cka_id, &wrapped, alg, &spki)
                .unwrap();
            let back = rcgen::KeyPair::from_pem(exported.expose()).unwrap();
            assert_eq!(
                rcgen::PublicKeyData::subject_public_key_info(&back),
                spki,
                "{alg}"
            );

            // Unwrap for signing: sensitive session key that verifies.
            let key = hsm
                .unwrap_private_key_blocking(&kek.cka_id, &wrapped, alg, &spki, "unwrapped")
                .unwrap();
            let sig = key.sign(b"by the unwrapped key").unwrap();
            verify(alg, &spki, b"by the unwrapped key", &sig);
            let attrs = hsm.key_attributes_blocking(key.cka_id()).unwrap();
            assert!(attrs.sensitive && !attrs.extractable, "{alg}: {attrs:?}");
            let id = key.cka_id().to_vec();
            hsm.destroy_session_key_blocking(key).unwrap();
            assert!(!hsm.key_exists_blocking(&id).unwrap());

            // The wrong KEK, a wrong public key or a damaged blob fail.
            assert!(
                hsm.export_private_key_blocking(&other_kek.cka_id, &wrapped, alg, &spki)
                    .is_err()
            );
            let mut damaged = wrapped.clone();
            damaged[10] ^= 1;
            assert!(
                hsm.export_private_key_blocking(&kek.cka_id, &damaged, alg, &spki)
                    .is_err()
            );
            let (_, stranger) = match alg.rsa_bits() {
                Some(bits) => openssl_rsa(bits),
                None => software_key(alg),
            };
            assert!(matches!(
                hsm.export_private_key_blocking(&kek.cka_id, &wrapped, alg, &stranger),
                Err(HsmError::Encoding(_))
            ));
            assert!(matches!(
                hsm.unwrap_private_key_blocking(&kek.cka_id, &wrapped, alg, &stranger, "x"),
                Err(HsmError::Encoding(_))
            ));
        }
    }

    #[test]
    fn keys_of_the_wrong_shape_are_refused_without_echo() {
        let hsm = &fixture().hsm;
        let kek = hsm.generate_kek_blocking("wrap-shape-kek").unwrap();
        let (pem, _) = software_key(KeyAlgorithm::EcdsaP256);
        for (alg, input) in [
            (KeyAlgorithm::EcdsaP384, pem.clone()),
            (KeyAlgorithm::Rsa2048, pem.clone()),
            (KeyAlgorithm::EcdsaP256, Secret::new("not pem")),
        ] {
            let err = hsm
                .wrap_private_key_blocking(&kek.cka_id, alg, &input)
                .unwrap_err();
            assert!(matches!(err, HsmError::Encoding(_)), "{err:?}");
            assert!(!err.to_string().contains("BEGIN"), "{err}");
        }
        // A CA key (a token object) cannot be destroyed as a session key.
        let ca = hsm
            .generate_key_pair_blocking(KeyAlgorithm::EcdsaP256, "not-a-session-key")
            .unwrap();
        let id = ca.cka_id().to_vec();
        assert!(hsm.destroy_session_key_blocking(ca).is_err());
        assert!(hsm.key_exists_blocking(&id).unwrap());
    }
}
