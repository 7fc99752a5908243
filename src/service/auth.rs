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
use crate::domain::model::{Actor, AuditEvent, Identity, Outcome, RequestContext, Session, User};
use crate::domain::{ApiKeyId, Role, Secret, SessionId};

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

/// Token prefixes tell sessions and API keys apart (and make leaked tokens
/// recognisable to secret scanners).
pub const SESSION_TOKEN_PREFIX: &str = "clm_s_";
pub const API_KEY_PREFIX: &str = "clm_k_";

/// Passwords long enough to pass the length rule but known to every
/// password-guessing list.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

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
    let lower = password.expose().to_lowercase();
    let mut chars = lower.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first)
        || COMMON_PASSWORDS
            .lines()
            .any(|common| common.trim() == lower)
    {
        return Err(ServiceError::invalid(
            "weak_password",
            "this password is on the list of commonly used passwords",
        ));
    }
    Ok(())
}

/// A random password for accounts created without one (shown once).
pub fn generate_password() -> Secret {
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(URL_SAFE_NO_PAD.encode(bytes))
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

/// Sessions are touched at most this often, to spare a write per request.
const TOUCH_EVERY_SECONDS: i64 = 60;

impl Clm {
    /// Checks e-mail and password. Unknown user, wrong password, locked or
    /// inactive account all take the same path (a hash is verified either
    /// way) and give the same error; the audit log records which it was.
    pub async fn login(
        &self,
        email: &str,
        password: &Secret,
        ctx: &RequestContext,
    ) -> ServiceResult<LoginOutcome> {
        if let Err(limited) = self
            .login_limiter
            .check(ctx.source_ip.as_deref().unwrap_or("unknown"))
        {
            let event = AuditEvent::new(Actor::ANONYMOUS, "auth.rate_limited", ctx)
                .outcome(Outcome::Denied);
            self.core.append_audit(&event).await?;
            return Err(limited);
        }
        // An address no user can have (stored addresses are validated) is
        // an unknown user, without asking the database: PostgreSQL cannot
        // even compare text holding NUL.
        let user = if email.len() <= 320 && !email.chars().any(char::is_control) {
            self.core.find_user_by_email(email).await?
        } else {
            None
        };
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let pw = password.clone();
        let password_ok = tokio::task::spawn_blocking(move || verify_password(&pw, &hash))
            .await
            .map_err(ServiceError::internal)?;
        let now = Utc::now();
        let refusal = match &user {
            None => Some("unknown user"),
            Some(u) if u.locked_until.is_some_and(|t| t > now) => Some("account locked"),
            Some(_) if !password_ok => Some("wrong password"),
            Some(u) if !u.is_active() => Some("account not active"),
            Some(_) => None,
        };
        if let Some(reason) = refusal {
            let actor = Actor {
                id: user.as_ref().map(|u| u.id),
                kind: "user",
            };
            let org = user.as_ref().map(|u| u.organization_id);
            let event = AuditEvent::new(actor.clone(), "auth.login", ctx)
                .org(org)
                .outcome(Outcome::Failure)
                .details(serde_json::json!({ "reason": reason }));
            self.core.append_audit(&event).await?;
            if let (Some(u), "wrong password") = (&user, reason) {
                let until = now + Duration::seconds(self.settings.login_lockout_seconds);
                let max = i32::try_from(self.settings.login_max_failures).unwrap_or(i32::MAX);
                if self.core.record_login_failure(u.id, max, until).await? {
                    let event = AuditEvent::new(actor, "auth.lockout", ctx)
                        .org(org)
                        .target("user", u.id)
                        .outcome(Outcome::Denied)
                        .details(serde_json::json!({ "locked_until": super::rfc3339(until) }));
                    self.core.append_audit(&event).await?;
                }
            }
            return Err(ServiceError::Unauthenticated);
        }
        let Some(user) = user else {
            return Err(ServiceError::Unauthenticated);
        };
        let (token, digest) = new_token(SESSION_TOKEN_PREFIX);
        let session = Session {
            id: SessionId::new(),
            user_id: user.id,
            token_digest: digest,
            created_at: now,
            expires_at: now + Duration::minutes(self.settings.session_ttl_minutes),
            idle_expires_at: now + Duration::minutes(self.settings.session_idle_minutes),
            last_seen_at: now,
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

    /// Resolves a bearer token — a session or an API key — to its principal.
    pub async fn authenticate(&self, token: &str) -> ServiceResult<Principal> {
        if token.is_empty() || token.len() > 256 {
            return Err(ServiceError::Unauthenticated);
        }
        let digest = token_digest(token);
        let now = Utc::now();
        if token.starts_with(API_KEY_PREFIX) {
            let key = self
                .core
                .find_live_api_key(&digest, now)
                .await?
                .filter(|k| k.user.active)
                .ok_or(ServiceError::Unauthenticated)?;
            if key
                .last_used_at
                .is_none_or(|t| (now - t).num_seconds() >= TOUCH_EVERY_SECONDS)
            {
                self.core.touch_api_key(key.id, now).await?;
            }
            return Ok(api_key_principal(key.id, &key.roles, key.user));
        }
        let session = self
            .core
            .find_live_session(&digest, now)
            .await?
            .filter(|s| s.user.active)
            .ok_or(ServiceError::Unauthenticated)?;
        if (now - session.last_seen_at).num_seconds() >= TOUCH_EVERY_SECONDS {
            let idle_until = (now + Duration::minutes(self.settings.session_idle_minutes))
                .min(session.expires_at);
            self.core.touch_session(session.id, now, idle_until).await?;
        }
        Ok(Principal::of(session.user, Some(session.id), None))
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

/// The principal of an API key: its owner, with the key's roles — never
/// more than the owner holds today.
pub(super) fn api_key_principal(key: ApiKeyId, key_roles: &[Role], user: Identity) -> Principal {
    let roles = key_roles
        .iter()
        .copied()
        .filter(|r| user.roles.contains(r))
        .collect();
    Principal::of(Identity { roles, ..user }, None, Some(key))
}

/// Login attempts per source address in a sliding minute, in memory: a
/// cheap first line against password spraying. Account lockout, which lives
/// in the database, is the line that holds across instances.
pub struct LoginLimiter {
    per_minute: usize,
    attempts: std::sync::Mutex<
        std::collections::HashMap<String, std::collections::VecDeque<std::time::Instant>>,
    >,
}

impl LoginLimiter {
    pub fn new(per_minute: i64) -> Self {
        Self {
            per_minute: usize::try_from(per_minute).unwrap_or(usize::MAX),
            attempts: Default::default(),
        }
    }

    fn check(&self, source: &str) -> ServiceResult<()> {
        let now = std::time::Instant::now();
        let window = std::time::Duration::from_secs(60);
        let mut map = self
            .attempts
            .lock()
            .map_err(|_| ServiceError::internal("login limiter poisoned"))?;
        // Forget quiet sources so the map cannot grow without bound.
        if map.len() > 10_000 {
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let q = map.entry(source.to_string()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.len() >= self.per_minute {
            let retry = q
                .front()
                .map(|t| window.saturating_sub(now.duration_since(*t)).as_secs() + 1)
                .unwrap_or(60);
            return Err(ServiceError::RateLimited {
                retry_after_secs: retry,
            });
        }
        q.push_back(now);
        Ok(())
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
        let (a, da) = new_token(SESSION_TOKEN_PREFIX);
        let (b, _) = new_token(SESSION_TOKEN_PREFIX);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(da, token_digest(a.expose()));
        assert_eq!(da.len(), 64);
        assert!(!da.contains(a.expose()));
    }

    #[test]
    fn weak_passwords_are_refused() {
        for weak in [
            "short",
            "password1234",
            "Password1234",
            "aaaaaaaaaaaaaaaa",
            "123456789012",
        ] {
            assert!(check_password_policy(&Secret::new(weak)).is_err(), "{weak}");
        }
        assert!(check_password_policy(&Secret::new("long enough password")).is_ok());
    }

    #[test]
    fn the_login_limiter_counts_per_source() {
        let limiter = LoginLimiter::new(3);
        for _ in 0..3 {
            limiter.check("10.0.0.1").unwrap();
        }
        assert!(matches!(
            limiter.check("10.0.0.1"),
            Err(ServiceError::RateLimited { .. })
        ));
        limiter.check("10.0.0.2").unwrap();
    }
}
