//! The OpenAPI 3.1 document, generated from the handlers' own annotations (`utoipa`), served
//! at `GET /openapi.json`, and `GET /docs`, a self-contained HTML page rendered from the same
//! document by the server (no scripts, no fonts, nothing fetched from the internet).

use std::fmt::Write;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr};
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
#[derive(Debug, ToSchema)]
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
    #[schema(value_type = Vec<Object>)]
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
    paths(crate::metrics::render, openapi_json, docs_page),
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
        for part in [
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
            routes::usage::Docs::openapi(),
            routes::webhooks::Docs::openapi(),
            routes::webhook_endpoints::Docs::openapi(),
            routes::resources::Docs::openapi(),
            routes::bookings::Docs::openapi(),
            routes::quota::Docs::openapi(),
            routes::audit::Docs::openapi(),
            routes::aggregates::Docs::openapi(),
            routes::analytics::Docs::openapi(),
        ] {
            doc.merge(part);
        }
        doc
    })
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
async fn openapi_json() -> Response {
    Json(document()).into_response()
}

/// `GET /docs`: the document as a page for a person.
#[utoipa::path(get, path = "/docs", tag = "operations", security(()),
    responses((status = 200, description = "HTML", body = String, content_type = "text/html")))]
async fn docs_page() -> Response {
    static PAGE: OnceLock<String> = OnceLock::new();
    let page = PAGE.get_or_init(|| render_page(document()));
    ([(header::CACHE_CONTROL, "no-cache")], Html(page.clone())).into_response()
}

/// `/openapi.json` and `/docs`.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json)).route("/docs", get(docs_page))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn schema_text(schema: &RefOr<utoipa::openapi::schema::Schema>) -> String {
    match schema {
        RefOr::Ref(r) => r.ref_location.rsplit('/').next().unwrap_or_default().to_owned(),
        RefOr::T(s) => serde_json::to_string(s).unwrap_or_default(),
    }
}

/// Renders the document as one HTML page: a table of contents by tag, then every operation
/// with its parameters, body and responses, then every schema.
fn render_page(doc: &Document) -> String {
    let json = serde_json::to_value(doc).unwrap_or_default();
    let mut ops: Vec<(String, String, String, serde_json::Value)> = Vec::new();
    if let Some(paths) = json["paths"].as_object() {
        for (path, item) in paths {
            for (method, op) in item.as_object().into_iter().flatten() {
                let tag = op["tags"][0].as_str().unwrap_or("other").to_owned();
                ops.push((tag, path.clone(), method.to_uppercase(), op.clone()));
            }
        }
    }
    ops.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>saas-ledger API</title>\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>\
body{font:15px/1.5 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}\
code,pre{font-family:ui-monospace,monospace;font-size:13px}pre{background:#f6f6f6;padding:.6rem;overflow:auto}\
.op{border-top:1px solid #ddd;padding:.6rem 0}.m{display:inline-block;min-width:4.5rem;font-weight:700}\
.get{color:#0a6}.post{color:#06c}.put{color:#a60}.delete{color:#c22}table{border-collapse:collapse}\
td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}nav a{margin-right:.8rem}\
</style></head><body>",
    );
    let _ = write!(
        out,
        "<h1>{}</h1><p>{}</p><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a></p><nav>",
        esc(json["info"]["title"].as_str().unwrap_or_default()),
        esc(json["info"]["description"].as_str().unwrap_or_default())
    );
    let mut tags: Vec<&str> = ops.iter().map(|o| o.0.as_str()).collect();
    tags.dedup();
    for tag in &tags {
        let _ = write!(out, "<a href=\"#{0}\">{0}</a>", esc(tag));
    }
    out.push_str("</nav>");
    let mut current = "";
    for (tag, path, method, op) in &ops {
        if tag != current {
            let _ = write!(out, "<h2 id=\"{0}\">{0}</h2>", esc(tag));
            current = tag;
        }
        let _ = write!(
            out,
            "<div class=\"op\"><span class=\"m {}\">{method}</span> <code>{}</code><p>{}</p>",
            method.to_lowercase(),
            esc(path),
            esc(op["description"].as_str().or(op["summary"].as_str()).unwrap_or_default())
        );
        if op["security"].as_array().is_some_and(|s| s.iter().all(|x| x.as_object().is_some_and(|o| o.is_empty()))) {
            out.push_str("<p><em>No authentication.</em></p>");
        }
        if let Some(params) = op["parameters"].as_array() {
            out.push_str("<table><tr><th>parameter</th><th>in</th><th>required</th><th>description</th></tr>");
            for p in params {
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(p["name"].as_str().unwrap_or_default()),
                    esc(p["in"].as_str().unwrap_or_default()),
                    p["required"].as_bool().unwrap_or(false),
                    esc(p["description"].as_str().unwrap_or_default())
                );
            }
            out.push_str("</table>");
        }
        if let Some(body) = op["requestBody"]["content"].as_object() {
            for (media, content) in body {
                let _ = write!(out, "<p>Body (<code>{}</code>): <code>{}</code></p>", esc(media), esc(&ref_or_inline(&content["schema"])));
            }
        }
        out.push_str("<table><tr><th>status</th><th>meaning</th></tr>");
        for (status, response) in op["responses"].as_object().into_iter().flatten() {
            let _ = write!(out, "<tr><td>{}</td><td>{}</td></tr>", esc(status), esc(response["description"].as_str().unwrap_or_default()));
        }
        out.push_str("</table></div>");
    }
    out.push_str("<h2 id=\"schemas\">Schemas</h2>");
    if let Some(components) = doc.components.as_ref() {
        for (name, schema) in &components.schemas {
            let pretty = serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&schema_text(schema)).unwrap_or_default())
                .unwrap_or_default();
            let _ = write!(out, "<h3 id=\"schema-{0}\">{0}</h3><pre>{1}</pre>", esc(name), esc(&pretty));
        }
    }
    out.push_str("</body></html>");
    out
}

fn ref_or_inline(schema: &serde_json::Value) -> String {
    match schema["$ref"].as_str() {
        Some(r) => r.rsplit('/').next().unwrap_or_default().to_owned(),
        None => schema.to_string(),
    }
}

/// `X-Tenant-ID`, on tenant routes.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header, names("X-Tenant-ID"))]
#[allow(dead_code)]
pub struct TenantHeader(
    /// The tenant's id or code (acme-clinic): the admin token acts for it; a tenant key naming
    /// another tenant gets 403; an unknown one is 404.
    Option<String>,
);

/// `Idempotency-Key`, on every POST.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header, names("Idempotency-Key"))]
#[allow(dead_code)]
pub struct IdempotencyHeader(
    /// Retry-safe key (1-255 visible ASCII): a retry with the same key and body replays the first response.
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
