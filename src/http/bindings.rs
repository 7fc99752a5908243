//! Handlers of client certificate bindings (mTLS): which principal a
//! certificate authenticates as. The rules are the service's.

use actix_web::{HttpResponse, web};

use super::extract::{Auth, Ctx, parse_id};
use super::problem::ApiError;
use crate::service::Clm;

type Result<T> = std::result::Result<T, ApiError>;

/// `POST /api/v1/certificates/{id}/binding`: 201 with the binding.
pub async fn bind(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let view = clm
        .bind_client_certificate(&p, parse_id(&id)?, &ctx)
        .await?;
    Ok(HttpResponse::Created().json(view))
}

/// `GET /api/v1/certificates/{id}/binding`.
pub async fn get(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(clm.client_certificate_binding(&p, parse_id(&id)?).await?))
}

/// `DELETE /api/v1/certificates/{id}/binding`: 204.
pub async fn unbind(
    clm: web::Data<Clm>,
    Auth(p): Auth,
    Ctx(ctx): Ctx,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    clm.unbind_client_certificate(&p, parse_id(&id)?, &ctx)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
