//! The OpenAPI 3.1 document, generated from the handlers' own annotations (`utoipa`), served
//! at `GET /openapi.json`, and `GET /docs`: Swagger UI on that document, served from the binary
//! (nothing fetched from the internet).

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi, ToSchema};

use crate::app::AppState;
use crate::routes;

/// The contract's error body: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `UPPER_SNAKE` code, fixed per kind of error.
    #[schema(example = "VALIDATION_FAILED")]
    pub code: String,
    /// A human sentence.
    pub message: String,
    /// Structured details: `field` for validation errors, `metric, limit, used` for quotas,
    /// `request_id` for internal errors, ...
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// A batch of usage records: `{"records": [...]}` (a bare array is accepted too), at most
/// 1,000; each record is judged on its own.
#[derive(Debug, ToSchema)]
pub struct UsageBatch {
    /// The records: `{metric, quantity, idempotency_key, occurred_at?}` each.
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 1000)]
    pub records: Vec<serde_json::Value>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The platform admin token, or a tenant API key (slk_...)"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "saas-ledger",
        description = "The commercial core of a multi-tenant SaaS platform: tenants, plans, subscriptions and invoices, \
bookings, metered usage and quotas, over an event-sourced log. Every error is `{\"error\": {code, message, details}}`; \
every response carries `X-Request-Id`; any POST may carry `Idempotency-Key`; tenant keys are rate limited per plan \
(429 `RATE_LIMITED` with `Retry-After`, `RateLimit-Limit` and `RateLimit-Remaining` on every answer). Money is a \
decimal string with two places, times are RFC 3339 UTC. Consistency: a command that appended events answers, once \
they are durable, with `Ledger-Position: <n>` (the log position of its last event); a read reflects every command \
of its tenant already answered, on any instance, and answers with the `Ledger-Position` it reflects; a read may \
send `Ledger-Position: <n>` to wait until the read models include position n (503 `STALE_READ` with \
`Retry-After: 1` after 5 s; 400 if it is not a whole number).",
    ),
    paths(crate::metrics::render, openapi_json),
    components(schemas(ErrorBody, ErrorDetail, UsageBatch)),
    modifiers(&Security),
    security(("bearer" = [])),
)]
struct Root;

/// The whole document (built once).
pub fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = Root::openapi();
        for part in parts() {
            doc.merge(part);
        }
        unique_operation_ids(&mut doc);
        header_errors(&mut doc);
        plain_summaries(&mut doc);
        named_pages(doc)
    })
}

/// Each route module's part of the document.
fn parts() -> Vec<Document> {
    vec![
        routes::health::Docs::openapi(),
        routes::tenants::Docs::openapi(),
        routes::export::Docs::openapi(),
        routes::api_keys::Docs::openapi(),
        routes::events::Docs::openapi(),
        routes::admin::Docs::openapi(),
        routes::plans::Docs::openapi(),
        routes::subscription::Docs::openapi(),
        routes::invoices::Docs::openapi(),
        routes::credits::Docs::openapi(),
        routes::coupons::Docs::openapi(),
        routes::members::Docs::openapi(),
        routes::metrics::Docs::openapi(),
        routes::usage::Docs::openapi(),
        routes::payments::Docs::openapi(),
        routes::webhook_endpoints::Docs::openapi(),
        routes::resources::Docs::openapi(),
        routes::bookings::Docs::openapi(),
        routes::quota::Docs::openapi(),
        routes::audit::Docs::openapi(),
        routes::aggregates::Docs::openapi(),
        routes::analytics::Docs::openapi(),
        routes::simulations::Docs::openapi(),
        routes::revenue::Docs::openapi(),
        routes::corrections::Docs::openapi(),
    ]
}

/// Schema names that two parts define differently: utoipa's merge keeps one of them silently
/// (two answer types both named `RevenueMonth` once made one route's schema the other's).
pub fn schema_name_clashes() -> Vec<String> {
    let mut seen: std::collections::BTreeMap<String, serde_json::Value> = std::collections::BTreeMap::new();
    let mut clashes = Vec::new();
    for part in std::iter::once(Root::openapi()).chain(parts()) {
        for (name, schema) in part.components.map(|c| c.schemas).unwrap_or_default() {
            let schema = serde_json::to_value(&schema).unwrap_or_default();
            match seen.get(&name) {
                Some(before) if *before != schema => clashes.push(name),
                Some(_) => {}
                None => {
                    seen.insert(name, schema);
                }
            }
        }
    }
    clashes
}

/// Operation ids are the handlers' names, which repeat across modules (`create`, `list`,
/// `read`); OpenAPI requires them unique (generated clients name their functions after them).
/// A repeated one gets the path's first segment after `/v1/`: `create_bookings`, `list_tenants`.
fn unique_operation_ids(doc: &mut Document) {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for item in doc.paths.paths.values() {
        for op in operations(item) {
            *seen.entry(op.operation_id.clone().unwrap_or_default()).or_default() += 1;
        }
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let resource = path.trim_start_matches("/v1/").split('/').next().unwrap_or_default().replace('-', "_");
        for op in operations_mut(item) {
            let id = op.operation_id.clone().unwrap_or_default();
            if seen.get(&id).is_some_and(|n| *n > 1) {
                op.operation_id = Some(format!("{id}_{resource}"));
            }
        }
    }
}

/// An operation's summary is its doc comment's first line, which names routes and fields in
/// Markdown code spans; Swagger UI shows summaries as plain text (backticks and all), so they
/// lose the backticks there (descriptions keep their Markdown).
fn plain_summaries(doc: &mut Document) {
    for item in doc.paths.paths.values_mut() {
        for op in operations_mut(item) {
            if let Some(summary) = op.summary.as_mut() {
                *summary = summary.replace('`', "");
            }
        }
    }
}

/// The names the pages of lists have always had in the document, and so in generated clients
/// (`InvoicePage`): utoipa names an instance of the generic [`crate::routes::Page`] after its
/// item (`Page_Invoice`). Pages not listed keep utoipa's name (as they always had).
const PAGE_NAMES: [(&str, &str); 7] = [
    ("Page_AuditEntry", "AuditPage"),
    ("Page_CouponView", "CouponPage"),
    ("Page_Delivery", "DeliveryPage"),
    ("Page_Endpoint", "EndpointPage"),
    ("Page_Invoice", "InvoicePage"),
    ("Page_ResourceView", "ResourcePage"),
    ("Page_SimulationSummary", "SimulationPage"),
];

/// Renames the pages in [`PAGE_NAMES`] and every reference to them, and lets the replayed
/// aggregate's state be any of the aggregates' states (see [`untagged_as_any_of`]).
fn named_pages(doc: Document) -> Document {
    let mut text = serde_json::to_string(&doc).expect("the document serialises");
    for (generated, name) in PAGE_NAMES {
        text = text
            .replace(&format!("\"{generated}\""), &format!("\"{name}\""))
            .replace(&format!("\"#/components/schemas/{generated}\""), &format!("\"#/components/schemas/{name}\""));
    }
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("the document reads back");
    untagged_as_any_of(&mut value, "AggregateState");
    serde_json::from_value(value).expect("the renamed document reads back")
}

/// utoipa writes an untagged enum as `oneOf`, which JSON Schema reads as "exactly one": the
/// aggregates' states overlap (few of their fields are required, so a tenant's state also
/// validates as another aggregate's), so a real answer would match several and be refused;
/// `anyOf` says what the answer is: one of these states, `aggregate_type` beside it naming it.
fn untagged_as_any_of(doc: &mut serde_json::Value, schema: &str) {
    if let Some(object) = doc["components"]["schemas"][schema].as_object_mut() {
        if let Some(variants) = object.remove("oneOf") {
            object.insert("anyOf".to_owned(), variants);
        }
    }
}

/// A POST that takes `Idempotency-Key` can answer 400 (a malformed key) and 409 (the key reused
/// with another request, or still in use). A route that takes `X-Tenant-ID` can answer 400 (the header is not an id or a code, or the
/// admin token named no tenant on a tenant route) and 404 (it names no tenant) whatever else it
/// does: every such operation documents both.
fn header_errors(doc: &mut Document) {
    use utoipa::openapi::{RefOr, ResponseBuilder};
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        for op in operations_mut(item) {
            if op.parameters.iter().flatten().any(|p| p.name == "Idempotency-Key") {
                let responses = &mut op.responses.responses;
                responses
                    .entry("400".to_owned())
                    .or_insert_with(|| error("VALIDATION_FAILED: a malformed Idempotency-Key, or a bad request"));
                responses.entry("409".to_owned()).or_insert_with(|| {
                    error("IDEMPOTENCY_KEY_REUSED (the key came with another request), IDEMPOTENCY_KEY_IN_USE, or the route's own conflict")
                });
            }
            let takes_header = op.parameters.iter().flatten().any(|p| p.name == "X-Tenant-ID");
            if !takes_header {
                continue;
            }
            let responses = &mut op.responses.responses;
            responses.entry("400".to_owned()).or_insert_with(|| {
                error("VALIDATION_FAILED: X-Tenant-ID is not a tenant id or code, or the admin token named no tenant on a tenant route")
            });
            responses.entry("404".to_owned()).or_insert_with(|| error("NOT_FOUND: X-Tenant-ID names no tenant"));
        }
    }
}

fn operations(item: &utoipa::openapi::PathItem) -> impl Iterator<Item = &utoipa::openapi::path::Operation> {
    [&item.get, &item.put, &item.post, &item.delete, &item.options, &item.head, &item.patch, &item.trace].into_iter().flatten()
}

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.options, &mut item.head, &mut item.patch, &mut item.trace]
        .into_iter()
        .flatten()
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
async fn openapi_json() -> Response {
    Json(document()).into_response()
}

/// `/openapi.json`, and `/docs`: Swagger UI (its assets are compiled into the binary, so the
/// page works without the internet), reading `/openapi.json`. Swagger UI rather than a page of
/// our own: it renders every schema, tries requests out with a token, and is what most of the
/// API's users already know; vendored by `utoipa-swagger-ui`, it stays in step with `utoipa`.
pub fn router() -> Router<AppState> {
    let ui = utoipa_swagger_ui::SwaggerUi::new("/docs").config(
        utoipa_swagger_ui::Config::from("/openapi.json")
            .try_it_out_enabled(true)
            .persist_authorization(false)
            .display_request_duration(true),
    );
    Router::new().route("/openapi.json", get(openapi_json)).merge(ui)
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header, names("X-Tenant-ID"))]
#[allow(dead_code)]
pub struct TenantHeader(
    /// The tenant's id or code (acme-clinic): the admin token acts for it (and must name one on
    /// tenant routes); a tenant key naming another tenant gets 403; an unknown one is 404.
    #[param(pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[a-z0-9-]{3,50})$")]
    Option<String>,
);

/// `Idempotency-Key`, on every POST.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header, names("Idempotency-Key"))]
#[allow(dead_code)]
pub struct IdempotencyHeader(
    /// Retry-safe key (1-255 visible ASCII): a retry with the same key and body replays the first response.
    #[param(pattern = r"^[!-~]{1,255}$", min_length = 1, max_length = 255)]
    Option<String>,
);

/// The errors of any authenticated route.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum AuthErrors {
    /// UNAUTHENTICATED: missing, unknown or revoked token.
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// RATE_LIMITED: the key's plan allows no more requests this minute (see Retry-After).
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// UNAVAILABLE (with Retry-After): the database cannot answer now (a failover under way);
    /// STALE_READ (with Retry-After): the read models have not reached the Ledger-Position sent;
    /// TIMEOUT.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The errors of any tenant command (a write on behalf of a tenant).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum CommandErrors {
    /// VALIDATION_FAILED (details.field names the field), MALFORMED_JSON.
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// UNAUTHENTICATED: missing, unknown or revoked token.
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// TENANT_SUSPENDED: commands are refused until the open invoice is paid.
    #[response(status = 402)]
    Suspended(ErrorBody),
    /// FORBIDDEN (readonly key, wrong role), TENANT_CANCELLED (cancelled or erased tenant).
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// IDEMPOTENCY_KEY_REUSED, IDEMPOTENCY_KEY_IN_USE, CONCURRENT_MODIFICATION, INVALID_STATE_TRANSITION and the route's own conflicts.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// PAYLOAD_TOO_LARGE.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// UNSUPPORTED_MEDIA_TYPE: send application/json.
    #[response(status = 415)]
    MediaType(ErrorBody),
    /// RATE_LIMITED: the key's plan allows no more requests this minute (see Retry-After).
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// UNAVAILABLE (with Retry-After): the database cannot take writes now (a failover under
    /// way); the command may or may not have been recorded: retry it with the same key.
    /// TIMEOUT: the request took too long.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// 404 on a route whose path names something.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum NotFound {
    /// NOT_FOUND: no such resource for this caller.
    #[response(status = 404)]
    NotFound(ErrorBody),
}

/// 403 on a route that takes a role (or the admin).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Forbidden {
    /// FORBIDDEN: the caller's role may not do this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// 400 on a route that validates its query, path or body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Invalid {
    /// VALIDATION_FAILED (details.field names the field), MALFORMED_JSON.
    #[response(status = 400)]
    Invalid(ErrorBody),
}
