//! `clm hsm check`: every key of the registry against the token — present,
//! and the object found by `CKA_ID` is the registered one: key pairs of the
//! registered algorithm whose public key is the registered one (and, for
//! CAs, proves by signing that it belongs to the CA certificate); secret
//! keys of the registered class and key type.

use super::Clm;
use super::error::ServiceResult;
use crate::domain::model::KeyReference;
use crate::domain::{KeyAlgorithm, KeyPurpose, KeyStatus};
use crate::hsm::{HsmError, SecretKind};

pub struct KeyCheck {
    pub label: String,
    pub purpose: String,
    pub ok: bool,
    pub detail: String,
}

impl Clm {
    /// One line per registered key that should exist in the token, plus one
    /// per CA whose key failed to prove it matches its certificate. Read
    /// only: the keys the server signs with are left as they are.
    pub async fn hsm_check(&self) -> ServiceResult<Vec<KeyCheck>> {
        let mut out = Vec::new();
        if let Err(e) = self.hsm.health_check().await {
            out.push(KeyCheck {
                label: self.settings.token_label.clone(),
                purpose: "token".into(),
                ok: false,
                detail: e.to_string(),
            });
            return Ok(out);
        }
        for key in self.secure.list_keys().await? {
            if key.status == KeyStatus::Destroyed {
                continue;
            }
            let (ok, detail) = match self.check_key(&key).await {
                Ok(()) => (true, format!("present and matching ({})", key.pkcs11_uri)),
                Err(why) => (false, format!("{why} ({})", key.pkcs11_uri)),
            };
            out.push(KeyCheck {
                label: key.label,
                purpose: key.purpose.as_str().to_string(),
                ok,
                detail,
            });
        }
        let (_, failed) = self.verify_ca_keys().await?;
        for (ca, why) in failed {
            out.push(KeyCheck {
                label: ca.to_string(),
                purpose: "ca_certificate_match".into(),
                ok: false,
                detail: why,
            });
        }
        Ok(out)
    }

    /// Whether the token object of `key` exists and is the registered one.
    async fn check_key(&self, key: &KeyReference) -> Result<(), String> {
        let id = hex::decode(&key.ckaid_hex).map_err(|_| "registered CKA_ID is not hex")?;
        let found = match key.purpose {
            KeyPurpose::CaSigning | KeyPurpose::OcspSigning => {
                let alg: KeyAlgorithm = key
                    .algorithm
                    .parse()
                    .map_err(|_| format!("registered algorithm {} is unknown", key.algorithm))?;
                self.hsm.find_key_pair(alg, &id).await.map(|pair| {
                    let spki = crate::domain::Signer::public_key_spki(&pair);
                    match &key.public_key_der {
                        Some(registered) if registered.as_slice() != spki => {
                            Err("the token's public key differs from the registered one"
                                .to_string())
                        }
                        _ => Ok(()),
                    }
                })
            }
            KeyPurpose::Kek | KeyPurpose::AuditMac => {
                let expected = if key.purpose == KeyPurpose::Kek {
                    SecretKind::Aes
                } else {
                    SecretKind::GenericSecret
                };
                self.hsm.secret_key_kind(&id).await.map(|kind| {
                    if kind == expected {
                        Ok(())
                    } else {
                        Err(format!(
                            "a {kind:?} key where a {expected:?} key is registered"
                        ))
                    }
                })
            }
        };
        match found {
            Ok(matches) => matches,
            Err(HsmError::KeyNotFound) => Err("missing from the token".into()),
            Err(HsmError::Encoding(why)) => Err(format!("not the registered kind of key: {why}")),
            Err(e) => Err(e.to_string()),
        }
    }
}
