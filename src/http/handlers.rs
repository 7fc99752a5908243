//! Handlers: parse, call one service method, shape the response. No SQL, no
//! PKCS#11, no authorisation decisions here.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, CacheControl, CacheDirective};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::extract::{Auth, Ctx, parse_id};
use super::problem::ApiError;
use crate::domain::{RequestStatus, Secret};
use crate::service::{
    CertificateQuery, Clm, Decision, NewApiKey, NewCa, NewOrganization, NewProfile, NewUserBody,
    NewWebhook, PasswordChange, RecoveryBody, RenewBody, RevokeBody, SubmitRequest, page_of,
};

type Result<T> = std::result::Result<T, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: String,
    password: Secret,
}

#[derive(Serialize)]
struct LoginResponse {
    token: String,
    expires_at: String,
    user: serde_json::Value,
}

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
        user: crate::service::user_json(&out.user),
    }))
}

pub async fn logout(clm: web::Data<Clm>, Auth(p): Auth, Ctx(ctx): Ctx) -> Result<HttpResponse> {
    clm.logout(&p, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn me(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.me(&p).await?))
}

pub async fn change_password(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<PasswordChange>,
) -> Result<HttpResponse> {
    clm.change_password(&p, body.into_inner(), &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn list_organizations(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_organizations(&p).await?))
}

pub async fn create_organization(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewOrganization>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.create_organization(&p, body.into_inner(), &ctx).await?))
}

pub async fn list_users(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_users(&p).await?))
}

pub async fn create_user(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewUserBody>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.create_user(&p, body.into_inner(), &ctx).await?))
}

pub async fn get_user(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.get_user(&p, parse_id(&id)?).await?))
}

pub async fn deactivate_user(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    clm.deactivate_user(&p, parse_id(&id)?, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn unlock_user(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    clm.unlock_user(&p, parse_id(&id)?, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn list_api_keys(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_api_keys(&p).await?))
}

pub async fn create_api_key(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewApiKey>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.create_api_key(&p, body.into_inner(), &ctx).await?))
}

pub async fn revoke_api_key(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    clm.revoke_api_key(&p, parse_id(&id)?, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn list_webhooks(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_webhooks(&p).await?))
}

pub async fn create_webhook(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewWebhook>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.create_webhook(&p, body.into_inner(), &ctx).await?))
}

pub async fn disable_webhook(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    clm.disable_webhook(&p, parse_id(&id)?, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn webhook_deliveries(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.webhook_deliveries(&p, parse_id(&id)?).await?))
}

pub async fn list_cas(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_cas(&p).await?))
}

pub async fn create_ca(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewCa>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.create_ca_for(&p, body.into_inner(), &ctx).await?))
}

pub async fn get_ca(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.get_ca(&p, parse_id(&id)?).await?))
}

pub async fn list_profiles(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_profiles(&p).await?))
}

pub async fn create_profile(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    body: web::Json<NewProfile>,
) -> Result<HttpResponse> {
    let profile = clm.create_profile(&p, body.into_inner(), &ctx).await?;
    Ok(HttpResponse::Created().json(profile))
}

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
                .filter(|s| !s.is_empty() && s.len() <= 128)
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

pub async fn renew_certificate(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    req: HttpRequest,
    id: web::Path<String>,
    body: Option<web::Json<RenewBody>>,
) -> Result<HttpResponse> {
    let idempotency_key = idempotency_key(&req)?;
    let body = body.map(web::Json::into_inner).unwrap_or_default();
    let (view, created) = clm
        .renew_certificate(&p, parse_id(&id)?, body, idempotency_key, &ctx)
        .await?;
    Ok(HttpResponse::build(created_or_ok(created)).json(view))
}

pub async fn revoke_certificate(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
    body: web::Json<RevokeBody>,
) -> Result<HttpResponse> {
    let view = clm
        .revoke_certificate(&p, parse_id(&id)?, body.into_inner(), &ctx)
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// 202 while the recovery waits for approval, 200 with the PKCS#12 once.
pub async fn recover_private_key(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
    body: web::Json<RecoveryBody>,
) -> Result<HttpResponse> {
    let (view, delivered) = clm
        .recover_private_key(&p, parse_id(&id)?, body.into_inner(), &ctx)
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

/// `approve` or `reject` a key recovery.
pub async fn decide_key_recovery(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (id, decision) = path.into_inner();
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(ApiError::not_found("no such endpoint")),
    };
    let view = clm
        .decide_key_recovery(&p, parse_id(&id)?, approve, &ctx)
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

pub async fn rollover_ca(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(clm.rollover_ca(&p, parse_id(&id)?, &ctx).await?))
}

pub async fn rotate_kek(clm: web::Data<Clm>, Auth(p): Auth, Ctx(ctx): Ctx) -> Result<HttpResponse> {
    Ok(HttpResponse::Accepted().json(clm.rotate_kek_for(&p, &ctx).await?))
}

pub async fn rollback_kek(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Accepted().json(clm.rollback_kek_for(&p, &ctx).await?))
}

pub async fn kek_rotations(clm: web::Data<Clm>, Auth(p): Auth) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.kek_rotations_for(&p).await?))
}

pub async fn release_hold(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.release_hold(&p, parse_id(&id)?, &ctx).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestQuery {
    status: Option<RequestStatus>,
    page: Option<u64>,
    per_page: Option<u64>,
}

pub async fn list_requests(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    q: web::Query<RequestQuery>,
) -> Result<HttpResponse> {
    let page = page_of(q.page, q.per_page)?;
    Ok(HttpResponse::Ok().json(clm.list_requests(&p, q.status, page).await?))
}

pub async fn list_certificates(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    q: web::Query<CertificateQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.list_certificates(&p, q.into_inner()).await?))
}

pub async fn approve_request(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
    body: Option<web::Json<Decision>>,
) -> Result<HttpResponse> {
    let body = body.map(web::Json::into_inner).unwrap_or_default();
    Ok(HttpResponse::Ok().json(clm.approve_request(&p, parse_id(&id)?, body, &ctx).await?))
}

pub async fn reject_request(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
    body: web::Json<Decision>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(
        clm.reject_request(&p, parse_id(&id)?, body.into_inner(), &ctx)
            .await?,
    ))
}

pub async fn cancel_request(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.cancel_request(&p, parse_id(&id)?, &ctx).await?))
}

pub async fn retry_request(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.retry_request(&p, parse_id(&id)?, &ctx).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationQuery {
    #[serde(default)]
    unread: bool,
}

pub async fn list_notifications(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    q: web::Query<NotificationQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.notifications(&p, q.unread).await?))
}

pub async fn read_notification(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    clm.mark_notification_read(&p, parse_id(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn get_request(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.get_request(&p, parse_id(&id)?).await?))
}

pub async fn get_certificate(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.get_certificate(&p, parse_id(&id)?).await?))
}

/// AIA caIssuers target: the CA certificate, DER, for anyone.
pub async fn ca_certificate_der(
    clm: web::Data<Clm>,
    file: web::Path<String>,
) -> Result<HttpResponse> {
    let id = file
        .strip_suffix(".der")
        .ok_or_else(|| ApiError::not_found("CA certificate not found"))?;
    let der = clm.ca_certificate_der(parse_id(id)?).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/pkix-cert"))
        .insert_header(CacheControl(vec![
            CacheDirective::Public,
            CacheDirective::MaxAge(3600),
        ]))
        .body(der))
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(clm: web::Data<Clm>) -> HttpResponse {
    let checks = clm.readiness().await;
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(()) => serde_json::json!({ "status": "ok" }),
                Err(reason) => serde_json::json!({ "status": "unavailable", "reason": reason }),
            };
            (name.to_string(), v)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(serde_json::json!({ "ready": ready, "checks": body }))
}

pub async fn not_found() -> Result<HttpResponse> {
    Err(ApiError::not_found("no such endpoint"))
}
