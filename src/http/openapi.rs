//! The OpenAPI 3.1 document of both listeners and the Swagger UI that shows
//! it, both served by the API listener.
//!
//! The document is generated from the route tables, not kept beside them:
//! [`Routes::add`] is the only way to register a route, it takes a handler
//! annotated with `#[utoipa::path]` and an actix method macro (anything
//! else does not compile), and it registers the route and records its
//! operation in one step. [`document`] runs `api_routes` (which includes the
//! public routes) to collect what it registers, then [`complete`] adds what
//! every operation of a kind can answer, so that annotations list only what
//! is particular to an endpoint. docs/api.md has the recipe.

use std::sync::{Arc, OnceLock};

use actix_web::dev::{HttpServiceFactory, ResourceDef};
use actix_web::http::header::{self, ContentType};
use actix_web::http::{Method, StatusCode};
use actix_web::{App, HttpRequest, HttpResponse, get, web};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem, Paths};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{HeaderBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa_actix_web::OpenApiFactory;

use super::problem::{ApiError, Problem};

/// The response header every answer carries (`middleware`).
const REQUEST_ID: &str = "X-Request-Id";

/// The route table of one listener, as `api_routes` and `public_routes`
/// fill it.
pub struct Routes<'a> {
    cfg: &'a mut web::ServiceConfig,
    paths: Paths,
    schemas: Vec<(String, RefOr<Schema>)>,
}

impl<'a> Routes<'a> {
    fn new(cfg: &'a mut web::ServiceConfig) -> Self {
        Self {
            cfg,
            paths: Paths::new(),
            schemas: Vec::new(),
        }
    }

    /// Registers `handler` at the method and path of its actix macro and
    /// records the operation its `#[utoipa::path]` describes.
    pub fn add<F: HttpServiceFactory + OpenApiFactory + 'static>(
        &mut self,
        handler: F,
    ) -> &mut Self {
        self.paths.merge(handler.paths());
        handler.schemas(&mut self.schemas);
        self.cfg.service(handler);
        self
    }
}

/// `App::configure` for a route table: its routes, and for any other
/// request a problem document — 405 with `Allow` for a known path, 404
/// otherwise.
pub fn configure(table: fn(&mut Routes)) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let mut routes = Routes::new(cfg);
        table(&mut routes);
        let known = Arc::new(allowed_methods(&routes.paths));
        routes.cfg.default_service(web::to(move |req: HttpRequest| {
            let known = Arc::clone(&known);
            async move { unrouted(&req, &known) }
        }));
    }
}

/// Each path template with the methods registered for it.
fn allowed_methods(paths: &Paths) -> Vec<(ResourceDef, String)> {
    paths
        .paths
        .iter()
        .map(|(path, item)| {
            let methods: Vec<String> = operations(item).map(|(m, _)| m.to_string()).collect();
            (ResourceDef::new(path.as_str()), methods.join(", "))
        })
        .collect()
}

fn unrouted(req: &HttpRequest, known: &[(ResourceDef, String)]) -> Result<HttpResponse, ApiError> {
    match known.iter().find(|(def, _)| def.is_match(req.path())) {
        Some((_, allow)) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed here; allowed: {allow}", req.method()),
        )
        .with_allow(allow.clone())),
        None => Err(ApiError::not_found("no such endpoint")),
    }
}

fn operations(item: &PathItem) -> impl Iterator<Item = (Method, &Operation)> {
    [
        (Method::GET, &item.get),
        (Method::PUT, &item.put),
        (Method::POST, &item.post),
        (Method::DELETE, &item.delete),
        (Method::PATCH, &item.patch),
        (Method::HEAD, &item.head),
        (Method::OPTIONS, &item.options),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// What the document says before the routes are collected.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "clm",
        description = "HSM-backed certificate lifecycle manager. JSON under `/api/v1` on the \
            API listener (HTTPS); `/ca`, `/crl`, `/ocsp`, `/healthz`, `/readyz` and `/metrics` \
            are anonymous and also served by the plain-HTTP listener. Callers authenticate with a \
            bearer token or, on the HTTPS listener, a client certificate issued by clm and bound \
            to them. Errors are `application/problem+json` with a stable `code`; every answer \
            carries `X-Request-Id`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    // Either one: a bearer token wins over a client certificate.
    security(("bearer" = []), ("mutualTLS" = [])),
    // Outcome is only named by a query parameter's `value_type`, which
    // utoipa does not collect.
    components(schemas(Problem, crate::domain::model::Outcome)),
    tags(
        (name = "auth", description = "Sessions and the caller"),
        (name = "organizations", description = "Tenants"),
        (name = "users"),
        (name = "api-keys", description = "Bearer tokens for automation"),
        (name = "cas", description = "Certificate authorities, keys in the HSM"),
        (name = "keys", description = "Key-encryption key rotation"),
        (name = "profiles", description = "What a CA issues, and after how many approvals"),
        (name = "certificate-requests", description = "Requests and their approval"),
        (name = "certificates"),
        (name = "key-recovery", description = "Archived private keys, after an approval"),
        (name = "notifications"),
        (name = "webhooks"),
        (name = "audit", description = "The tamper-evident audit logs"),
        (name = "relying-parties", description = "CA certificates, CRLs, OCSP: anonymous"),
        (name = "meta", description = "Health, metrics and this document"),
    ),
)]
struct Base;

/// The document, as `api_routes` registers the routes.
pub fn document() -> OpenApi {
    let mut collected = None;
    let _ = App::new().configure(|cfg| {
        let mut routes = Routes::new(cfg);
        super::api_routes(&mut routes);
        collected = Some((routes.paths, routes.schemas));
    });
    let (paths, schemas) = collected.unwrap_or_default();
    let mut doc = <Base as utoipa::OpenApi>::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.paths = paths;
    let components = doc.components.get_or_insert_with(Default::default);
    components.schemas.extend(schemas);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A session token from `POST /api/v1/auth/login`, or an API key",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "mutualTLS",
        SecurityScheme::MutualTls {
            description: Some(
                "On the HTTPS listener: a client certificate issued by clm (clientAuth) and bound \
                 with `POST /api/v1/certificates/{id}/binding` to its owner or one of their API \
                 keys"
                    .into(),
            ),
            deprecated: None,
            extensions: None,
        },
    );
    components.headers.insert(
        REQUEST_ID.into(),
        RefOr::T(
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some("^[A-Za-z0-9._:-]{1,64}$")),
                ))
                .description(Some(
                    "The request's id in the log and the audit trail: the client's \
                     `X-Request-Id` when it is 1 to 64 of `A-Z a-z 0-9 - _ . :`, otherwise a \
                     new UUID",
                ))
                .build(),
        ),
    );
    complete(&mut doc);
    doc
}

/// Adds to every operation the answers its kind implies, and gives every
/// error answer without a body the problem document:
/// - 400 with path, query or header parameters or a JSON body (the
///   extractors refuse what does not parse);
/// - 401 where a credential is required; 404 where an id is in the path;
/// - 413 and 415 with a JSON body; 500 and 503 everywhere but `meta`;
///
/// and gives every answer the `X-Request-Id` header.
fn complete(doc: &mut OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for op in operations_mut(item) {
            let (mut in_path, mut in_query) = (false, false);
            for p in op.parameters.iter_mut().flatten() {
                let RefOr::T(p) = p else { continue };
                match p.parameter_in {
                    ParameterIn::Path => in_path = true,
                    _ => in_query = true,
                }
                // An optional parameter is left out, never sent as null.
                if let Some(schema) = &mut p.schema {
                    not_null(schema);
                }
            }
            let json_body = match &op.request_body {
                Some(RefOr::T(b)) => b.content.contains_key("application/json"),
                _ => false,
            };
            let secured = op.security.is_none();
            let meta = op.tags.iter().flatten().any(|t| t == "meta");
            let implied = [
                (
                    "400",
                    "Invalid input; `code` says what",
                    in_path || in_query || json_body,
                ),
                (
                    "401",
                    "No valid bearer token or bound client certificate; `code` says which \
                     (`unauthenticated`, `client_certificate_revoked`, …)",
                    secured,
                ),
                (
                    "404",
                    "No such object (or one of another organisation)",
                    in_path,
                ),
                ("413", "The body is larger than 64 KiB", json_body),
                ("415", "The body is not `application/json`", json_body),
                (
                    "500",
                    "Internal error; the details are in the server log",
                    !meta,
                ),
                (
                    "503",
                    "The HSM is unavailable (`hsm_unavailable`: writes need it, reads go on) or \
                     a CA's key is missing from it (`ca_unavailable`)",
                    !meta,
                ),
            ];
            for (status, description, applies) in implied {
                if applies {
                    op.responses
                        .responses
                        .entry(status.into())
                        .or_insert_with(|| ResponseBuilder::new().description(description).into());
                }
            }
            for (status, response) in &mut op.responses.responses {
                if let RefOr::T(response) = response {
                    as_problem(status, response);
                    response.headers.insert(
                        REQUEST_ID.into(),
                        RefOr::Ref(Ref::new(format!("#/components/headers/{REQUEST_ID}"))),
                    );
                }
            }
        }
    }
}

/// `T | null` → `T`.
fn not_null(schema: &mut RefOr<Schema>) {
    use utoipa::openapi::schema::SchemaType;
    let RefOr::T(s) = schema else { return };
    match s {
        Schema::Object(o) => {
            if let SchemaType::Array(types) = &o.schema_type {
                let types: Vec<Type> = types
                    .iter()
                    .filter(|t| **t != Type::Null)
                    .cloned()
                    .collect();
                o.schema_type = match types.as_slice() {
                    [one] => SchemaType::Type(one.clone()),
                    _ => SchemaType::Array(types),
                };
            }
        }
        Schema::OneOf(one_of) => {
            let is_null = |s: &RefOr<Schema>| {
                matches!(s, RefOr::T(Schema::Object(o))
                    if o.schema_type == utoipa::openapi::schema::SchemaType::Type(Type::Null))
            };
            let rest: Vec<RefOr<Schema>> = one_of
                .items
                .iter()
                .filter(|s| !is_null(s))
                .cloned()
                .collect();
            if let [only] = rest.as_slice() {
                *schema = only.clone();
            }
        }
        _ => {}
    }
}

fn as_problem(status: &str, response: &mut utoipa::openapi::Response) {
    if status < "400" || !response.content.is_empty() {
        return;
    }
    let problem = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Problem")))
        .build();
    response
        .content
        .insert("application/problem+json".into(), RefOr::T(problem));
    let header = |description: &str| {
        let schema = ObjectBuilder::new().schema_type(Type::String).build();
        RefOr::T(
            HeaderBuilder::new()
                .schema(Some(schema))
                .description(Some(description))
                .build(),
        )
    };
    match status {
        "401" => {
            response
                .headers
                .insert("WWW-Authenticate".into(), header("`Bearer`"));
        }
        "429" | "503" => {
            response
                .headers
                .insert("Retry-After".into(), header("Seconds to wait"));
        }
        _ => {}
    }
}

/// A body of bytes (DER and the like), not JSON.
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// This document: OpenAPI 3.1, generated from the code.
#[utoipa::path(
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI document", body = serde_json::Value)),
)]
#[get("/api/v1/openapi.json")]
pub async fn openapi_json() -> Result<HttpResponse, ApiError> {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    match JSON.get_or_init(|| serde_json::to_string(&document()).map_err(|e| e.to_string())) {
        Ok(json) => Ok(HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(json.clone())),
        Err(e) => {
            Err(crate::service::ServiceError::internal(format!("OpenAPI document: {e}")).into())
        }
    }
}

/// Swagger UI, at `/api/docs/`.
#[utoipa::path(
    tag = "meta",
    security(()),
    responses((status = 308, description = "To `/api/docs/`", headers(("Location" = String)))),
)]
#[get("/api/docs")]
pub async fn docs_redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/api/docs/"))
        .finish()
}

/// Swagger UI for this document (its assets are part of the binary).
#[utoipa::path(
    tag = "meta",
    security(()),
    responses((status = 200, description = "The page", content_type = "text/html", body = String)),
)]
#[get("/api/docs/")]
pub async fn docs_index() -> Result<HttpResponse, ApiError> {
    docs_file("index.html")
}

/// A file of Swagger UI.
#[utoipa::path(
    tag = "meta",
    security(()),
    params(("file" = String, Path, description = "e.g. `swagger-ui.css`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/html"), (String = "text/css"), (String = "text/javascript"), (Binary = "image/png"),
        )),
        (status = 404, description = "No such file"),
    ),
)]
#[get("/api/docs/{file}")]
pub async fn docs_asset(file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    docs_file(&file)
}

fn docs_file(name: &str) -> Result<HttpResponse, ApiError> {
    let config = utoipa_swagger_ui::Config::new(["/api/v1/openapi.json"])
        // The default would show a badge fetched from validator.swagger.io.
        .validator_url("none")
        .persist_authorization(true);
    match utoipa_swagger_ui::serve(name, Arc::new(config)) {
        Ok(Some(file)) => Ok(HttpResponse::Ok()
            .content_type(file.content_type)
            .body(file.bytes.into_owned())),
        Ok(None) => Err(ApiError::not_found("no such file")),
        Err(e) => Err(crate::service::ServiceError::internal(format!("Swagger UI: {e}")).into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use actix_web::http::StatusCode;
    use actix_web::{App, test as atest};
    use serde_json::Value;

    fn document() -> Value {
        serde_json::to_value(super::document()).unwrap()
    }

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 100, "{}", all.len());
        for r in all {
            let pointer = r.strip_prefix('#').unwrap();
            assert!(pointer.starts_with("/components/"), "{r}");
            assert!(doc.pointer(pointer).is_some(), "{r} dangles");
        }
    }

    #[test]
    fn every_operation_says_what_it_answers() {
        let doc = document();
        let mut count = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                count += 1;
                let at = format!("{method} {path}");
                assert!(op["operationId"].is_string(), "{at}: operationId");
                assert!(op["summary"].is_string(), "{at}: a doc comment");
                assert!(op["tags"][0].is_string(), "{at}: a tag");
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses
                        .keys()
                        .any(|s| s.starts_with('2') || s.starts_with('3')),
                    "{at}: no success answer"
                );
                for (status, r) in responses {
                    assert_eq!(
                        r["headers"]["X-Request-Id"]["$ref"], "#/components/headers/X-Request-Id",
                        "{at} {status}"
                    );
                    if status.as_str() >= "400" {
                        let content = r["content"].as_object();
                        let types: Vec<&String> =
                            content.into_iter().flat_map(|c| c.keys()).collect();
                        assert!(!types.is_empty(), "{at} {status}: no body");
                        assert!(
                            types.iter().all(|t| [
                                "application/problem+json",
                                "application/ocsp-response",
                                "application/json"
                            ]
                            .contains(&t.as_str())),
                            "{at} {status}: {types:?}"
                        );
                    }
                }
                let secured = op.get("security").is_none();
                if secured {
                    assert!(
                        responses["401"]["headers"]["WWW-Authenticate"].is_object(),
                        "{at}: 401"
                    );
                }
                let params = op["parameters"].as_array().cloned().unwrap_or_default();
                for p in &params {
                    if p["in"] == "path" {
                        assert!(path.contains(&format!("{{{}}}", p["name"].as_str().unwrap())));
                        assert!(
                            responses.contains_key("400") && responses.contains_key("404"),
                            "{at}"
                        );
                    }
                }
                let in_path = path.matches('{').count();
                let declared = params.iter().filter(|p| p["in"] == "path").count();
                assert_eq!(
                    in_path, declared,
                    "{at}: path parameters declared once each"
                );
            }
        }
        assert!(count >= 55, "{count} operations");
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["mutualTLS"]["type"], "mutualTLS");
        assert_eq!(
            doc["security"],
            serde_json::json!([{ "bearer": [] }, { "mutualTLS": [] }]),
            "either credential will do"
        );
    }

    /// Routes are added only through `Routes::add`, so that none is missing
    /// from the document.
    #[test]
    fn routes_are_registered_only_through_routes_add() {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut files: Vec<_> = std::fs::read_dir(format!("{src}/http"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.push(format!("{src}/main.rs").into());
        for file in files {
            if file.ends_with("openapi.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            // Unit tests build their own apps.
            let text = text.split("#[cfg(test)]").next().unwrap();
            for needle in [
                ".route(",
                "web::resource(",
                "web::scope(",
                ".service(",
                "Resource::new(",
            ] {
                assert!(
                    !text.contains(needle),
                    "{} registers a route with `{needle}`: use `Routes::add` (docs/api.md)",
                    file.display()
                );
            }
        }
    }

    #[actix_web::test]
    async fn unrouted_requests_get_problem_documents() {
        let app =
            atest::init_service(App::new().configure(super::configure(crate::http::public_routes)))
                .await;
        let res =
            atest::call_service(&app, atest::TestRequest::put().uri("/healthz").to_request()).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers().get("allow").unwrap(), "GET");
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
        let res = atest::call_service(
            &app,
            atest::TestRequest::delete().uri("/crl/x.crl").to_request(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        let res = atest::call_service(
            &app,
            atest::TestRequest::get().uri("/crl/x.pem").to_request(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let body: Value = atest::read_body_json(res).await;
        assert_eq!(body["code"], "not_found");
        // The API's routes are not the public listener's.
        let res = atest::call_service(
            &app,
            atest::TestRequest::put().uri("/api/v1/me").to_request(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
}
