//! Handlers of client certificate bindings (mTLS): which principal a
//! certificate authenticates as. The rules are the service's.

use actix_web::{HttpResponse, delete, get, post, web};

use super::extract::{Auth, Ctx};
use super::handlers::IdPath;
use super::problem::ApiError;
use crate::service::{BindingView, Clm};

type Result<T> = std::result::Result<T, ApiError>;

/// Binds a client certificate to its owner (with a login session) or to
/// the API key of the call, so that it authenticates API calls over mTLS.
#[utoipa::path(
    operation_id = "bind_client_certificate",
    tag = "certificates",
    params(IdPath),
    responses(
        (status = 201, description = "Bound", body = BindingView),
        (status = 403, description = "Not the certificate's owner, or called with a client certificate"),
        (status = 409, description = "Already bound, or revoked, on hold, expired or from a CA out of service"),
    ),
)]
#[post("/api/v1/certificates/{id}/binding")]
pub async fn bind(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    let view = clm.bind_client_certificate(&p, id.get()?, &ctx).await?;
    Ok(HttpResponse::Created().json(view))
}

/// The binding of a client certificate.
#[utoipa::path(
    operation_id = "client_certificate_binding",
    tag = "certificates",
    params(IdPath),
    responses((status = 200, description = "The binding", body = BindingView)),
)]
#[get("/api/v1/certificates/{id}/binding")]
pub async fn get(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.client_certificate_binding(&p, id.get()?).await?))
}

/// Removes the binding of a client certificate: it no longer authenticates.
#[utoipa::path(
    operation_id = "unbind_client_certificate",
    tag = "certificates",
    params(IdPath),
    responses((status = 204, description = "Unbound")),
)]
#[delete("/api/v1/certificates/{id}/binding")]
pub async fn unbind(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<IdPath>,
) -> Result<HttpResponse> {
    clm.unbind_client_certificate(&p, id.get()?, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}
