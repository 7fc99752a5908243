//! Login, bearer tokens and password hashing.
//!
//! Tokens are 256-bit random strings shown to the client once; only their
//! SHA-256 digest is stored, so a read of clm_core yields no usable token.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::Clm;
use super::error::{ServiceError, ServiceResult};
use super::principal::Principal;
use crate::domain::model::{Actor, AuditEvent, Outcome, RequestContext, Session, User};
use crate::domain::{Secret, SessionId};

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password accepted: hashing is deliberately slow, so bound it.
pub const MAX_PASSWORD_LEN: usize = 1024;

pub struct LoginOutcome {
    pub token: Secret,
    pub expires_at: DateTime<Utc>,
    pub user: User,
}

fn argon2() -> Argon2<'static> {
    // OWASP's argon2id baseline: 19 MiB, 2 iterations, 1 lane.
    match Params::new(19 * 1024, 2, 1, None) {
        Ok(params) => Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        Err(_) => Argon2::default(),
    }
}

pub fn hash_password(password: &Secret) -> ServiceResult<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(ServiceError::internal)?;
    argon2()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(ServiceError::internal)
}

/// Constant-time comparison is done by the argon2 crate.
pub fn verify_password(password: &Secret, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

pub fn check_password_policy(password: &Secret) -> ServiceResult<()> {
    let n = password.expose().chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(ServiceError::invalid(
            "weak_password",
            format!("the password must have at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    if n > MAX_PASSWORD_LEN {
        return Err(ServiceError::invalid(
            "weak_password",
            format!("the password must have at most {MAX_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

/// A fresh bearer token and its stored digest.
pub fn new_token(prefix: &str) -> (Secret, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = Secret::new(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)));
    let digest = token_digest(token.expose());
    (token, digest)
}

pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Clm {
    /// Checks e-mail and password. Unknown user and wrong password take the
    /// same path (a hash is verified either way) and give the same error.
    pub async fn login(
        &self,
        email: &str,
        password: &Secret,
        ctx: &RequestContext,
    ) -> ServiceResult<LoginOutcome> {
        let user = if email.len() <= 320 {
            self.core.find_user_by_email(email).await?
        } else {
            None
        };
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let pw = password.clone();
        let ok = tokio::task::spawn_blocking(move || verify_password(&pw, &hash))
            .await
            .map_err(ServiceError::internal)?;
        let user = match user {
            Some(u) if ok && u.is_active() => u,
            other => {
                let event = AuditEvent::new(
                    Actor {
                        id: other.as_ref().map(|u| u.id),
                        kind: "user",
                    },
                    "auth.login",
                    ctx,
                )
                .org(other.as_ref().map(|u| u.organization_id))
                .outcome(Outcome::Failure)
                .details(serde_json::json!({ "reason": if other.is_some() { "bad credentials or inactive" } else { "unknown user" } }));
                self.core.append_audit(&event).await?;
                return Err(ServiceError::Unauthenticated);
            }
        };
        let (token, digest) = new_token("clm_s_");
        let now = Utc::now();
        let session = Session {
            id: SessionId::new(),
            user_id: user.id,
            token_digest: digest,
            created_at: now,
            expires_at: now + Duration::minutes(self.settings.session_ttl_minutes),
        };
        let event = AuditEvent::new(
            Actor {
                id: Some(user.id),
                kind: "user",
            },
            "auth.login",
            ctx,
        )
        .org(Some(user.organization_id))
        .target("session", session.id);
        self.core.insert_session(&session, &event).await?;
        self.core.record_login(user.id, now).await?;
        Ok(LoginOutcome {
            token,
            expires_at: session.expires_at,
            user,
        })
    }

    /// Resolves a bearer token to its principal.
    pub async fn authenticate(&self, token: &str) -> ServiceResult<Principal> {
        if token.is_empty() || token.len() > 256 {
            return Err(ServiceError::Unauthenticated);
        }
        let digest = token_digest(token);
        let session = self
            .core
            .find_live_session(&digest, Utc::now())
            .await?
            .ok_or(ServiceError::Unauthenticated)?;
        let user = self
            .core
            .find_user(session.user_id)
            .await?
            .filter(User::is_active)
            .ok_or(ServiceError::Unauthenticated)?;
        Ok(Principal {
            user_id: user.id,
            organization_id: user.organization_id,
            email: user.email,
            roles: user.roles,
            session_id: Some(session.id),
        })
    }

    pub async fn logout(&self, principal: &Principal, ctx: &RequestContext) -> ServiceResult<()> {
        let Some(session) = principal.session_id else {
            return Err(ServiceError::invalid(
                "not_a_session",
                "this token is not a login session",
            ));
        };
        let event = AuditEvent::new(principal.actor(), "auth.logout", ctx)
            .org(Some(principal.organization_id))
            .target("session", session);
        self.core
            .revoke_session(session, &event)
            .await
            .map_err(|_| ServiceError::Unauthenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let pw = Secret::new("correct horse battery staple");
        let h = hash_password(&pw).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&pw, &h));
        assert!(!verify_password(&Secret::new("wrong password!!"), &h));
        assert!(!verify_password(&pw, "not a hash"));
    }

    #[test]
    fn tokens_are_random_and_stored_as_digests() {
        let (a, da) = new_token("clm_s_");
        let (b, _) = new_token("clm_s_");
        assert_ne!(a.expose(), b.expose());
        assert_eq!(da, token_digest(a.expose()));
        assert_eq!(da.len(), 64);
        assert!(!da.contains(a.expose()));
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(check_password_policy(&Secret::new("short")).is_err());
        assert!(check_password_policy(&Secret::new("long enough password")).is_ok());
    }
}
