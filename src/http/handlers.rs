//! Handlers: parse, call one service method, shape the response. No SQL, no
//! PKCS#11, no authorisation decisions here.
//!
//! Each handler carries its route (the actix method macro) and its entry in
//! the OpenAPI document (`#[utoipa::path]`); `mod.rs` registers it with one
//! `Routes::add`, which does both (docs/api.md). Error responses are listed
//! by status and description only: `openapi.rs` gives them the problem
//! document and adds those that every operation of a kind can return.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, CacheControl, CacheDirective};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Auth, Ctx, OptionalJson, parse_id};
use super::openapi::Binary;
use super::problem::ApiError;
use crate::domain::model::{KeyRotation, Notification, Organization};
use crate::domain::{RequestStatus, Secret};
use crate::service::{
    ApiKeyView, CaView, CertificateQuery, CertificateSummary, CertificateView, Clm, CreatedApiKey,
    CreatedWebhook, Decision, DeliveryView, Listing, MeView, NewApiKey, NewCa, NewOrganization,
    NewProfile, NewUserBody, NewWebhook, PasswordChange, ProfileView, RecoveryBody, RecoveryView,
    RenewBody, RequestView, RevokeBody, RolloverView, SubmitRequest, UserView, WebhookView,
    page_of,
};

type Result<T> = std::result::Result<T, ApiError>;

/// The `{id}` of a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdPath {
    /// A UUID; anything else is a 400.
    #[param(value_type = uuid::Uuid)]
    id: String,
}

impl IdPath {
    pub fn get<T: From<uuid::Uuid>>(&self) -> Result<T> {
        parse_id(&self.id)
    }
}

/// Header of the POSTs that file requests: a retry with the same key
/// returns the first answer instead of filing again.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyKey {
    /// 1 to 128 visible ASCII characters.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 128,
        pattern = "^[!-~]+$"
    )]
    idempotency_key: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: String,
    password: Secret,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// The bearer token of the new session.
    token: String,
    #[schema(format = DateTime)]
    expires_at: String,
    user: UserView,
}

/// Signs in with e-mail and password and opens a session.
#[utoipa::path(
    tag = "auth",
    security(()),
    request_body = LoginBody,
    responses(
        (status = 200, description = "A new session", body = LoginResponse),
        (status = 401, description = "Unknown e-mail, wrong password, locked or inactive account"),
        (status = 429, description = "Too many attempts from this address"),
    ),
)]
#[post("/api/v1/auth/login")]
pub async fn login(
    clm: web::Data<Clm>,
    Ctx(ctx): Ctx,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse> {
    let body = body.into_inner();
    let out = clm.login(&body.email, &body.password, &ctx).await?;
    Ok(HttpResponse::Ok().json(LoginResponse {
        token: out.token.expose().to_string(),
        expires_at: crate::service::rfc3339(out.expires_at),
        user: UserView::from(&out.user),
    }))
}

/// Ends the session of the token used.
#[utoipa::path(tag = "auth", responses((status = 204, description = "Signed out")))]
#[post("/api/v1/auth/logout")]
pub async fn logout(clm: web::Data<Clm>, Auth(p): Auth, Ctx(ctx): Ctx) -> Result<HttpResponse> {
    clm.logout(&p, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller: user, roles and organisation.
#[utoipa::path(
    tag = "auth",
    responses((status = 200, description = "The caller", body = MeView))
)]
#[get("/api/v1/me")]
pub async fn me(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.me(&p).await?))
}

/// Changes the caller's password; every session and API key of the caller
/// ends, this one included.
#[utoipa::path(
    tag = "auth",
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed"),
        (status = 403, description = "The current password is wrong"),
    ),
)]
#[post("/api/v1/me/password")]
pub async fn change_password(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<PasswordChange>,
) -> Result<HttpResponse> {
    clm.change_password(&p, body.into_inner(), &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// All organisations (super admins only).
#[utoipa::path(
    tag = "organizations",
    responses(
        (status = 200, description = "Organisations", body = Vec<Organization>),
        (status = 403, description = "Not a super admin"),
    ),
)]
#[get("/api/v1/organizations")]
pub async fn list_organizations(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_organizations(&p).await?))
}

/// Creates an organisation (super admins only).
#[utoipa::path(
    tag = "organizations",
    request_body = NewOrganization,
    responses(
        (status = 201, description = "Created", body = Organization),
        (status = 403, description = "Not a super admin"),
        (status = 409, description = "The name or slug is taken"),
    ),
)]
#[post("/api/v1/organizations")]
pub async fn create_organization(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewOrganization>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.create_organization(&p, body.into_inner(), &ctx).await?))
}

/// Users of the caller's organisation (of all, for a super admin).
#[utoipa::path(
    tag = "users",
    responses(
        (status = 200, description = "Users", body = Vec<UserView>),
        (status = 403, description = "Not allowed to manage users"),
    ),
)]
#[get("/api/v1/users")]
pub async fn list_users(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_users(&p).await?))
}

/// Creates a user.
#[utoipa::path(
    tag = "users",
    request_body = NewUserBody,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 403, description = "Users of another organisation, or granting super_admin"),
        (status = 404, description = "No such organisation"),
        (status = 409, description = "The e-mail is taken"),
    ),
)]
#[post("/api/v1/users")]
pub async fn create_user(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewUserBody>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.create_user(&p, body.into_inner(), &ctx).await?))
}

/// One user.
#[utoipa::path(
    tag = "users",
    params(IdPath),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 403, description = "Not allowed to manage users"),
    ),
)]
#[get("/api/v1/users/{id}")]
pub async fn get_user(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.get_user(&p, id.get()?).await?))
}

/// Deactivates a user; their sessions and API keys end.
#[utoipa::path(
    tag = "users",
    params(IdPath),
    responses(
        (status = 204, description = "Deactivated"),
        (status = 403, description = "Not allowed to manage this user"),
        (status = 409, description = "Already deactivated, or the caller themselves"),
    ),
)]
#[post("/api/v1/users/{id}/deactivate")]
pub async fn deactivate_user(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    clm.deactivate_user(&p, id.get()?, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Lifts the lockout that failed logins caused.
#[utoipa::path(
    tag = "users",
    params(IdPath),
    responses(
        (status = 204, description = "Unlocked"),
        (status = 403, description = "Not allowed to manage users"),
    ),
)]
#[post("/api/v1/users/{id}/unlock")]
pub async fn unlock_user(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    clm.unlock_user(&p, id.get()?, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller's API keys.
#[utoipa::path(
    tag = "api-keys",
    responses((status = 200, description = "API keys", body = Vec<ApiKeyView>)),
)]
#[get("/api/v1/api-keys")]
pub async fn list_api_keys(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_api_keys(&p).await?))
}

/// Creates an API key; its token is in this answer only.
#[utoipa::path(
    tag = "api-keys",
    request_body = NewApiKey,
    responses(
        (status = 201, description = "Created", body = CreatedApiKey),
        (status = 403, description = "A role the caller does not have"),
    ),
)]
#[post("/api/v1/api-keys")]
pub async fn create_api_key(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewApiKey>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.create_api_key(&p, body.into_inner(), &ctx).await?))
}

/// Revokes one of the caller's API keys.
#[utoipa::path(
    tag = "api-keys",
    params(IdPath),
    responses(
        (status = 204, description = "Revoked"),
        (status = 409, description = "Already revoked"),
    ),
)]
#[delete("/api/v1/api-keys/{id}")]
pub async fn revoke_api_key(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    clm.revoke_api_key(&p, id.get()?, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The organisation's webhook endpoints.
#[utoipa::path(
    tag = "webhooks",
    responses(
        (status = 200, description = "Endpoints", body = Vec<WebhookView>),
        (status = 403, description = "Not allowed to manage the organisation"),
    ),
)]
#[get("/api/v1/webhooks")]
pub async fn list_webhooks(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_webhooks(&p).await?))
}

/// Registers a webhook endpoint; its signing secret is in this answer only.
#[utoipa::path(
    tag = "webhooks",
    request_body = NewWebhook,
    responses(
        (status = 201, description = "Registered", body = CreatedWebhook),
        (status = 403, description = "Not allowed to manage the organisation"),
    ),
)]
#[post("/api/v1/webhooks")]
pub async fn create_webhook(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewWebhook>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.create_webhook(&p, body.into_inner(), &ctx).await?))
}

/// Disables a webhook endpoint.
#[utoipa::path(
    tag = "webhooks",
    params(IdPath),
    responses(
        (status = 204, description = "Disabled"),
        (status = 403, description = "Not allowed to manage the organisation"),
    ),
)]
#[delete("/api/v1/webhooks/{id}")]
pub async fn disable_webhook(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    clm.disable_webhook(&p, id.get()?, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Deliveries to one endpoint, newest first.
#[utoipa::path(
    tag = "webhooks",
    params(IdPath),
    responses(
        (status = 200, description = "Deliveries", body = Vec<DeliveryView>),
        (status = 403, description = "Not allowed to manage the organisation"),
    ),
)]
#[get("/api/v1/webhooks/{id}/deliveries")]
pub async fn webhook_deliveries(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.webhook_deliveries(&p, id.get()?).await?))
}

/// The CAs the caller can see.
#[utoipa::path(
    tag = "cas",
    responses((status = 200, description = "CAs", body = Vec<CaView>))
)]
#[get("/api/v1/cas")]
pub async fn list_cas(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_cas(&p).await?))
}

/// Creates a root or intermediate CA; its key is generated in the HSM.
#[utoipa::path(
    tag = "cas",
    request_body = NewCa,
    responses(
        (status = 201, description = "Created", body = CaView),
        (status = 403, description = "Not a CA administrator"),
        (status = 404, description = "No such parent CA"),
        (status = 409, description = "The name is taken, or the parent cannot issue"),
    ),
)]
#[post("/api/v1/cas")]
pub async fn create_ca(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewCa>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.create_ca_for(&p, body.into_inner(), &ctx).await?))
}

/// One CA with its certificate and chain.
#[utoipa::path(
    tag = "cas",
    params(IdPath),
    responses((status = 200, description = "The CA", body = CaView)),
)]
#[get("/api/v1/cas/{id}")]
pub async fn get_ca(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.get_ca(&p, id.get()?).await?))
}

/// The certificate profiles the caller can see.
#[utoipa::path(
    tag = "profiles",
    responses((status = 200, description = "Profiles", body = Vec<ProfileView>)),
)]
#[get("/api/v1/profiles")]
pub async fn list_profiles(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_profiles(&p).await?))
}

/// Creates a certificate profile.
#[utoipa::path(
    tag = "profiles",
    request_body = NewProfile,
    responses(
        (status = 201, description = "Created", body = ProfileView),
        (status = 403, description = "Not allowed to manage profiles"),
        (status = 404, description = "No such CA"),
        (status = 409, description = "The name is taken, or the CA cannot issue"),
    ),
)]
#[post("/api/v1/profiles")]
pub async fn create_profile(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewProfile>,
) -> Result<HttpResponse> {
    let profile = clm.create_profile(&p, body.into_inner(), &ctx).await?;
    Ok(HttpResponse::Created().json(profile))
}

/// Files a certificate request: a CSR, or names for a key clm generates.
#[utoipa::path(
    tag = "certificate-requests",
    params(IdempotencyKey),
    request_body = SubmitRequest,
    responses(
        (status = 201, description = "Filed: `pending_approval`, or `issued` (with `pkcs12` for a key generated by clm)", body = RequestView),
        (status = 200, description = "The earlier request with the same Idempotency-Key", body = RequestView),
        (status = 403, description = "Not allowed to request certificates"),
        (status = 404, description = "No such profile"),
        (status = 409, description = "The profile's CA cannot issue now"),
        (status = 429, description = "Beyond the issuance rate of this user or API key"),
    ),
)]
#[post("/api/v1/certificate-requests")]
pub async fn submit_request(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    req: HttpRequest,
    body: web::Json<SubmitRequest>,
) -> Result<HttpResponse> {
    let idempotency_key = idempotency_key(&req)?;
    let (view, created) = clm
        .submit_request(&p, body.into_inner(), idempotency_key, &ctx)
        .await?;
    Ok(HttpResponse::build(created_or_ok(created)).json(view))
}

/// 201 for a request made now, 200 for the replay of an earlier one.
fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>> {
    match req.headers().get("idempotency-key") {
        Some(v) => Ok(Some(
            v.to_str()
                .ok()
                .filter(|s| {
                    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
                })
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 128 visible ASCII characters",
                    )
                })?
                .to_string(),
        )),
        None => Ok(None),
    }
}

/// Files a request for the names of a certificate (the body is optional).
#[utoipa::path(
    tag = "certificates",
    params(IdPath, IdempotencyKey),
    request_body(content = Option<RenewBody>, description = "Without a CSR the profile must allow key reuse"),
    responses(
        (status = 201, description = "Filed", body = RequestView),
        (status = 200, description = "The earlier request with the same Idempotency-Key", body = RequestView),
        (status = 403, description = "Not allowed to request certificates"),
        (status = 409, description = "The certificate cannot be renewed"),
        (status = 429, description = "Beyond the issuance rate of this user or API key"),
    ),
)]
#[post("/api/v1/certificates/{id}/renew")]
pub async fn renew_certificate(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    req: HttpRequest,
    id: web::Path<IdPath>,
    OptionalJson(body): OptionalJson<RenewBody>,
) -> Result<HttpResponse> {
    let idempotency_key = idempotency_key(&req)?;
    let (view, created) = clm
        .renew_certificate(&p, id.get()?, body, idempotency_key, &ctx)
        .await?;
    Ok(HttpResponse::build(created_or_ok(created)).json(view))
}

/// Revokes a certificate, or places it on hold (`certificateHold`).
#[utoipa::path(
    tag = "certificates",
    params(IdPath),
    request_body = RevokeBody,
    responses(
        (status = 200, description = "Revoked or on hold", body = CertificateView),
        (status = 409, description = "Already revoked, or not revocable with this reason"),
    ),
)]
#[post("/api/v1/certificates/{id}/revoke")]
pub async fn revoke_certificate(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
    body: web::Json<RevokeBody>,
) -> Result<HttpResponse> {
    let view = clm
        .revoke_certificate(&p, id.get()?, body.into_inner(), &ctx)
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Asks for an archived private key back: 202 while the recovery waits for
/// approval, then 200 with the PKCS#12, once.
#[utoipa::path(
    tag = "key-recovery",
    params(IdPath),
    request_body = RecoveryBody,
    responses(
        (status = 200, description = "The key as PKCS#12 under the passphrase", body = RecoveryView,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 202, description = "Waiting for approval", body = RecoveryView,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 403, description = "Not allowed to recover keys"),
        (status = 409, description = "No archived key, or the recovery was rejected"),
    ),
)]
#[post("/api/v1/certificates/{id}/private-key")]
pub async fn recover_private_key(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
    body: web::Json<RecoveryBody>,
) -> Result<HttpResponse> {
    let (view, delivered) = clm
        .recover_private_key(&p, id.get()?, body.into_inner(), &ctx)
        .await?;
    let status = if delivered {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(HttpResponse::build(status)
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .json(view))
}

/// Approves a key recovery (not one's own).
#[utoipa::path(
    tag = "key-recovery",
    params(IdPath),
    responses(
        (status = 200, description = "Approved", body = RecoveryView),
        (status = 403, description = "Not an approver, or the requester"),
        (status = 409, description = "Already decided"),
    ),
)]
#[post("/api/v1/key-recoveries/{id}/approve")]
pub async fn approve_key_recovery(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    let view = clm.decide_key_recovery(&p, id.get()?, true, &ctx).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Rejects a key recovery.
#[utoipa::path(
    tag = "key-recovery",
    params(IdPath),
    responses(
        (status = 200, description = "Rejected", body = RecoveryView),
        (status = 403, description = "Not an approver, or the requester"),
        (status = 409, description = "Already decided"),
    ),
)]
#[post("/api/v1/key-recoveries/{id}/reject")]
pub async fn reject_key_recovery(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    let view = clm.decide_key_recovery(&p, id.get()?, false, &ctx).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Rolls a CA over to a new key and certificate under the same name.
#[utoipa::path(
    tag = "cas",
    params(IdPath),
    responses(
        (status = 201, description = "Rolled over; the old key lives on as a retired CA", body = RolloverView),
        (status = 403, description = "Not a CA administrator"),
        (status = 409, description = "The CA is not active"),
    ),
)]
#[post("/api/v1/cas/{id}/rollover")]
pub async fn rollover_ca(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.rollover_ca(&p, id.get()?, &ctx).await?))
}

/// Starts a KEK rotation; archived keys are rewrapped in the background.
#[utoipa::path(
    tag = "keys",
    responses(
        (status = 202, description = "Started", body = KeyRotation),
        (status = 403, description = "Not a CA administrator"),
        (status = 409, description = "A rotation is running"),
    ),
)]
#[post("/api/v1/keys/kek/rotate")]
pub async fn rotate_kek(clm: web::Data<Clm>, Auth(p): Auth, Ctx(ctx): Ctx) -> Result<HttpResponse> {
    Ok(HttpResponse::Accepted().json(clm.rotate_kek_for(&p, &ctx).await?))
}

/// Rolls the last KEK rotation back, inside the rollback window.
#[utoipa::path(
    tag = "keys",
    responses(
        (status = 202, description = "Started", body = KeyRotation),
        (status = 403, description = "Not a CA administrator"),
        (status = 409, description = "Nothing to roll back, a rotation is running, or the window has passed"),
    ),
)]
#[post("/api/v1/keys/kek/rollback")]
pub async fn rollback_kek(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Accepted().json(clm.rollback_kek_for(&p, &ctx).await?))
}

/// The newest KEK rotations with their progress.
#[utoipa::path(
    tag = "keys",
    responses(
        (status = 200, description = "Rotations, newest first", body = Vec<KeyRotation>),
        (status = 403, description = "Not a CA administrator"),
    ),
)]
#[get("/api/v1/keys/rotations")]
pub async fn kek_rotations(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.kek_rotations_for(&p).await?))
}

/// Releases a hold: the certificate is valid again.
#[utoipa::path(
    tag = "certificates",
    params(IdPath),
    responses(
        (status = 200, description = "Valid again", body = CertificateView),
        (status = 403, description = "Not allowed to revoke any certificate"),
        (status = 409, description = "Not on hold"),
    ),
)]
#[post("/api/v1/certificates/{id}/release-hold")]
pub async fn release_hold(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.release_hold(&p, id.get()?, &ctx).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RequestQuery {
    status: Option<RequestStatus>,
    /// 1 to 1000000, default 1.
    #[param(minimum = 1, maximum = 1_000_000)]
    page: Option<u64>,
    /// 1 to 1000, default 50.
    #[param(minimum = 1, maximum = 1000)]
    per_page: Option<u64>,
}

/// Certificate requests the caller can see, newest first.
#[utoipa::path(
    tag = "certificate-requests",
    params(RequestQuery),
    responses((status = 200, description = "A page of requests", body = Listing<RequestView>)),
)]
#[get("/api/v1/certificate-requests")]
pub async fn list_requests(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    q: web::Query<RequestQuery>,
) -> Result<HttpResponse> {
    let page = page_of(q.page, q.per_page)?;
    Ok(HttpResponse::Ok().json(clm.list_requests(&p, q.status, page).await?))
}

/// Certificates the caller can see, filtered.
#[utoipa::path(
    tag = "certificates",
    params(CertificateQuery),
    responses((status = 200, description = "A page of certificates", body = Listing<CertificateSummary>)),
)]
#[get("/api/v1/certificates")]
pub async fn list_certificates(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    q: web::Query<CertificateQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_certificates(&p, q.into_inner()).await?))
}

/// Approves a request (not one's own); the last approval issues.
#[utoipa::path(
    tag = "certificate-requests",
    params(IdPath),
    request_body(content = Option<Decision>, description = "Optional: a `comment`"),
    responses(
        (status = 200, description = "Approved, and issued if this was the last approval", body = RequestView),
        (status = 403, description = "Not an approver of the profile, or the requester"),
        (status = 409, description = "Not pending, or this approver has decided; or, as the last approval, the profile's CA is not issuing (`ca_inactive`: the request is now `failed`)"),
    ),
)]
#[post("/api/v1/certificate-requests/{id}/approve")]
pub async fn approve_request(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
    OptionalJson(body): OptionalJson<Decision>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.approve_request(&p, id.get()?, body, &ctx).await?))
}

/// Rejects a request; `reason` is required.
#[utoipa::path(
    tag = "certificate-requests",
    params(IdPath),
    request_body = Decision,
    responses(
        (status = 200, description = "Rejected", body = RequestView),
        (status = 403, description = "Not an approver of the profile, or the requester"),
        (status = 409, description = "Not pending, or this approver has decided"),
    ),
)]
#[post("/api/v1/certificate-requests/{id}/reject")]
pub async fn reject_request(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
    body: web::Json<Decision>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(
        clm.reject_request(&p, id.get()?, body.into_inner(), &ctx)
            .await?,
    ))
}

/// Cancels one's own pending request.
#[utoipa::path(
    tag = "certificate-requests",
    params(IdPath),
    responses(
        (status = 200, description = "Cancelled", body = RequestView),
        (status = 403, description = "Not the requester"),
        (status = 409, description = "Not pending"),
    ),
)]
#[post("/api/v1/certificate-requests/{id}/cancel")]
pub async fn cancel_request(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.cancel_request(&p, id.get()?, &ctx).await?))
}

/// Retries the issuance of a `failed` request.
#[utoipa::path(
    tag = "certificate-requests",
    params(IdPath),
    responses(
        (status = 200, description = "Issued, or failed again", body = RequestView),
        (status = 403, description = "Not allowed to decide the request"),
        (status = 409, description = "Not failed, or the profile's CA is not issuing (`ca_inactive`)"),
    ),
)]
#[post("/api/v1/certificate-requests/{id}/retry")]
pub async fn retry_request(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.retry_request(&p, id.get()?, &ctx).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// Only those not read yet.
    #[serde(default)]
    unread: bool,
}

/// The caller's notifications, newest first.
#[utoipa::path(
    tag = "notifications",
    params(NotificationQuery),
    responses((status = 200, description = "Notifications", body = Vec<Notification>)),
)]
#[get("/api/v1/notifications")]
pub async fn list_notifications(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    q: web::Query<NotificationQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.notifications(&p, q.unread).await?))
}

/// Marks one of the caller's notifications read.
#[utoipa::path(
    tag = "notifications",
    params(IdPath),
    responses((status = 204, description = "Marked read")),
)]
#[post("/api/v1/notifications/{id}/read")]
pub async fn read_notification(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    clm.mark_notification_read(&p, id.get()?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// One certificate request with its approvals.
#[utoipa::path(
    tag = "certificate-requests",
    params(IdPath),
    responses((status = 200, description = "The request", body = RequestView)),
)]
#[get("/api/v1/certificate-requests/{id}")]
pub async fn get_request(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.get_request(&p, id.get()?).await?))
}

/// One certificate with its PEM and chain.
#[utoipa::path(
    tag = "certificates",
    params(IdPath),
    responses((status = 200, description = "The certificate", body = CertificateView)),
)]
#[get("/api/v1/certificates/{id}")]
pub async fn get_certificate(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.get_certificate(&p, id.get()?).await?))
}

/// The CA certificate, DER (the AIA caIssuers target), for anyone.
#[utoipa::path(
    tag = "relying-parties",
    params(IdPath),
    security(()),
    responses(
        (status = 200, description = "The certificate", content_type = "application/pkix-cert", body = Binary,
            headers(("Cache-Control" = String))),
    ),
)]
#[get("/ca/{id}.der")]
pub async fn ca_certificate_der(
    clm: web::Data<Clm>,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    let der = clm.ca_certificate_der(id.get()?).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/pkix-cert"))
        .insert_header(CacheControl(vec![
            CacheDirective::Public,
            CacheDirective::MaxAge(3600),
        ]))
        .body(der))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`; `unavailable` for a failed readiness check.
    #[schema(example = "ok")]
    status: &'static str,
    /// Why a readiness check failed (for the HSM: the trouble and when
    /// recovery is next tried).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Health {
    fn ok() -> Self {
        Self {
            status: "ok",
            reason: None,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    ready: bool,
    /// By dependency: `clm_core`, `clm_secure` and `hsm`.
    checks: std::collections::BTreeMap<&'static str, Health>,
}

/// Liveness: the process serves.
#[utoipa::path(
    tag = "meta",
    security(()),
    responses((status = 200, description = "Alive", body = Health)),
)]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health::ok())
}

/// Readiness: both databases answer and the token is logged in.
#[utoipa::path(
    tag = "meta",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency is unavailable", body = Readiness, content_type = "application/json"),
    ),
)]
#[get("/readyz")]
pub async fn readyz(clm: web::Data<Clm>) -> HttpResponse {
    let checks = clm.readiness().await;
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let checks = checks
        .into_iter()
        .map(|(name, r)| {
            let health = match r {
                Ok(()) => Health::ok(),
                Err(reason) => Health {
                    status: "unavailable",
                    reason: Some(reason),
                },
            };
            (name, health)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(Readiness { ready, checks })
}
