//! `clm hsm check`: every key of the registry against the token.

use super::Clm;
use super::error::ServiceResult;
use crate::domain::KeyStatus;

pub struct KeyCheck {
    pub label: String,
    pub purpose: String,
    pub ok: bool,
    pub detail: String,
}

impl Clm {
    /// One line per registered key that should exist in the token, plus one
    /// per CA whose key failed to prove it matches its certificate.
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
            let (ok, detail) = match hex::decode(&key.ckaid_hex) {
                Err(_) => (false, "registered CKA_ID is not hex".to_string()),
                Ok(id) => match self.hsm.key_exists(&id).await {
                    Ok(true) => (true, format!("present ({})", key.pkcs11_uri)),
                    Ok(false) => (
                        false,
                        format!("missing from the token ({})", key.pkcs11_uri),
                    ),
                    Err(e) => (false, e.to_string()),
                },
            };
            out.push(KeyCheck {
                label: key.label,
                purpose: key.purpose.as_str().to_string(),
                ok,
                detail,
            });
        }
        for (ca, why) in self.load_ca_keys().await? {
            out.push(KeyCheck {
                label: ca.to_string(),
                purpose: "ca_certificate_match".into(),
                ok: false,
                detail: why,
            });
        }
        Ok(out)
    }
}
