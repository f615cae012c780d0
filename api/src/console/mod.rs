//! The operator console at `/console`: server-rendered HTML (maud), charts drawn on the server
//! as SVG (plotters), one embedded stylesheet; no JavaScript, no CDN.
//!
//! The console is a client of the API inside the process: every page reads, and every action
//! does, what the API's own route does, by sending the route an in-process request with the
//! signed-in caller (see [`Console::api`]). So a page shows exactly the read models the API
//! serves, and an action goes through the same command, the same authorization (a tenant
//! key's session editing a URL to another tenant gets the API's 404 or 403) and the same
//! read-your-writes wait.
//!
//! Sessions: sign-in with the admin token or a tenant owner/admin key (a form POST, never a
//! URL), an `HttpOnly`, `SameSite=Strict` cookie (`Secure` behind TLS) holding a random token
//! whose SHA-256 the `console_sessions` table keeps, with an expiry and a CSRF token that every
//! form carries. A tenant session keeps the key's hash, so revoking the key ends it.

mod charts;
mod pages;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup, DOCTYPE};
use rand::RngCore;
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tower::ServiceExt;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::console_sessions::{Session, Sessions};
use crate::error::ApiError;
use domain::tenant::ApiKeyRole;

/// The session cookie.
const SESSION_COOKIE: &str = "sl_console";
/// The sign-in form's CSRF cookie (double submit: there is no session yet).
const SIGN_IN_COOKIE: &str = "sl_console_signin";
/// How long a session lasts.
const SESSION_HOURS: i64 = 8;
/// The stylesheet, compiled in.
const CSS: &str = include_str!("console.css");

/// The console's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/console.css", get(css))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/overview", get(pages::overview))
        .route("/console/tenants", get(pages::tenants))
        .route("/console/tenants/{id}", get(pages::tenant))
        .route("/console/tenants/{id}/{action}", get(pages::confirm).post(pages::act))
        .route("/console/invoices/{id}", get(pages::invoice))
        .route("/console/revenue", get(pages::revenue))
        .route("/console/revenue/journal", get(pages::journal))
        .route("/console/revenue/journal.csv", get(pages::journal_csv))
        .route("/console/revenue/{action}", get(pages::confirm_books).post(pages::act_books))
        .route("/console/operations", get(pages::operations))
        .route("/console/operations/rebuild", post(pages::rebuild))
        .route("/console/operations/billing-run", post(pages::billing_run))
        .route("/console/events", get(pages::events))
        .route("/console/aggregates/{kind}/{id}", get(pages::aggregate))
}

/// A signed-in console user.
#[derive(Clone)]
pub struct Console {
    state: AppState,
    caller: Caller,
    csrf: String,
}

impl Console {
    /// The signed-in tenant, for a tenant key's session.
    fn tenant(&self) -> Option<Uuid> {
        match &self.caller {
            Caller::Tenant(key) => Some(key.tenant_id),
            Caller::Admin { .. } => None,
        }
    }

    fn is_admin(&self) -> bool {
        self.caller.is_admin()
    }

    /// Sends the API's own route `method path` (with a JSON body) as this caller (the admin acting
    /// for `tenant` on tenant routes), and reads its JSON answer, or its error.
    async fn api(&self, method: Method, path: &str, tenant: Option<Uuid>, body: Option<Value>) -> Result<Value, ApiError> {
        let text = self.api_text(method, path, tenant, body).await?;
        serde_json::from_str(&text).map_err(ApiError::internal)
    }

    /// Like [`Self::api`], the answer as text (NDJSON for the event log).
    async fn api_text(&self, method: Method, path: &str, tenant: Option<Uuid>, body: Option<Value>) -> Result<String, ApiError> {
        let caller = match (&self.caller, tenant) {
            (Caller::Admin { .. }, Some(id)) => Caller::Admin { acting_for: Some(id) },
            (caller, _) => caller.clone(),
        };
        let mut request = Request::builder().method(method).uri(path);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let mut request = request.body(body).map_err(ApiError::internal)?;
        request.extensions_mut().insert(caller);
        let response = crate::app::middleware::router(self.state.clone()).oneshot(request).await.map_err(ApiError::internal)?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024).await.map_err(ApiError::internal)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.is_success() {
            return Ok(text);
        }
        let error: Value = serde_json::from_str(&text).unwrap_or_default();
        let code = error["error"]["code"].as_str().unwrap_or("ERROR");
        let message = error["error"]["message"].as_str().unwrap_or("the request failed");
        Err(ApiError::new(status, code, message))
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Whether the request came over TLS (directly, or through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"))
        .expect("a valid cookie")
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl FromRequestParts<AppState> for Console {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let to_sign_in = || Redirect::to("/console/sign-in").into_response();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else { return Err(to_sign_in()) };
        let session = Sessions(state.pool()).find(&commands::api_keys::hash(token)).await.map_err(|e| error_page(&ApiError::from(e)))?;
        let Some(Session { admin, key_sha256: key_hash, csrf }) = session else { return Err(to_sign_in()) };
        let caller = if admin {
            Caller::Admin { acting_for: None }
        } else {
            let key = state.key_by_hash(key_hash.as_deref().unwrap_or_default()).await.map_err(|e| error_page(&e))?;
            match key {
                Some(key) if matches!(key.role, ApiKeyRole::Owner | ApiKeyRole::Admin) && key.tenant_status != "erased" => {
                    Caller::Tenant(key)
                }
                // Revoked (or no longer an owner/admin key): the session ends.
                _ => return Err(to_sign_in()),
            }
        };
        Ok(Self { state: state.clone(), caller, csrf })
    }
}

/// A form's CSRF token, checked against the session's.
#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

impl Console {
    /// A 403 page unless `token` is this session's CSRF token.
    fn csrf_refusal(&self, token: &str) -> Option<Response> {
        (token.is_empty() || !same(token, &self.csrf))
            .then(|| error_page(&ApiError::forbidden("the form's CSRF token is missing or wrong; reload the page and try again")))
    }
}

/// The page around a page's content: skip link, navigation, sign-out.
fn layout(title: &str, console: Option<&Console>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · saas-ledger console" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "saas-ledger" }
                    @if let Some(console) = console {
                        nav aria-label="Console" {
                            ul {
                                @if console.is_admin() {
                                    li { a href="/console/overview" { "Overview" } }
                                    li { a href="/console/tenants" { "Tenants" } }
                                    li { a href="/console/revenue" { "Revenue" } }
                                    li { a href="/console/operations" { "Operations" } }
                                } @else if let Some(id) = console.tenant() {
                                    li { a href={ "/console/tenants/" (id) } { "My tenant" } }
                                }
                                li { a href="/console/events" { "Event log" } }
                            }
                        }
                        form.sign-out method="post" action="/console/sign-out" {
                            input type="hidden" name="csrf" value=(console.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// An error as a page, with the API's status, code and message.
fn error_page(error: &ApiError) -> Response {
    let title = match error.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::CONFLICT => "Not possible now",
        s if s.is_client_error() => "Refused",
        _ => "Something went wrong",
    };
    let body = layout(
        title,
        None,
        html! {
            p.error role="alert" { (error.message) " (" code { (error.code) } ")" }
            p { a href="/console" { "Back to the console" } }
        },
    );
    (error.status, body).into_response()
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], CSS).into_response()
}

async fn home(console: Console) -> Redirect {
    match console.tenant() {
        Some(id) => Redirect::to(&format!("/console/tenants/{id}")),
        None => Redirect::to("/console/overview"),
    }
}

async fn sign_in_page(headers: HeaderMap) -> Response {
    sign_in_form(&headers, None)
}

fn sign_in_form(headers: &HeaderMap, problem: Option<&str>) -> Response {
    let token = random_token();
    let page = layout(
        "Sign in",
        None,
        html! {
            p { "Sign in with the platform admin token, or with a tenant's owner or admin API key (you then see that tenant only)." }
            @if let Some(problem) = problem {
                p.error role="alert" { (problem) }
            }
            form.card method="post" action="/console/sign-in" {
                input type="hidden" name="csrf" value=(token);
                label for="token" { "Admin token or API key" }
                input #token type="password" name="token" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    );
    let status = if problem.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    let mut response = (status, page).into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie(SIGN_IN_COOKIE, &token, 600, over_tls(headers)));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Debug, Deserialize)]
struct SignIn {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

async fn sign_in(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<SignIn>) -> Response {
    let expected = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    if form.csrf.is_empty() || expected.is_empty() || !same(&form.csrf, expected) {
        return error_page(&ApiError::forbidden("the sign-in form's CSRF token is missing or wrong; reload the page and try again"));
    }
    let token = form.token.trim();
    let (admin, key_hash) = match state.is_admin(token).await {
        Err(e) => return error_page(&e),
        Ok(true) => (true, None),
        Ok(false) => {
            let hash = commands::api_keys::hash(token);
            match state.key_by_hash(&hash).await {
                Err(e) => return error_page(&e),
                Ok(Some(key)) if matches!(key.role, ApiKeyRole::Owner | ApiKeyRole::Admin) && key.tenant_status != "erased" => {
                    (false, Some(hash))
                }
                Ok(Some(_)) => return sign_in_form(&headers, Some("Only owner and admin keys may use the console.")),
                Ok(None) => return sign_in_form(&headers, Some("That is neither the admin token nor an active API key.")),
            }
        }
    };
    let session = random_token();
    let saved =
        Sessions(state.pool()).open(&commands::api_keys::hash(&session), admin, key_hash, &random_token(), SESSION_HOURS as i32).await;
    if let Err(e) = saved {
        return error_page(&ApiError::from(e));
    }
    let mut response = Redirect::to("/console").into_response();
    let tls = over_tls(&headers);
    response.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &session, SESSION_HOURS * 3600, tls));
    response.headers_mut().append(header::SET_COOKIE, set_cookie(SIGN_IN_COOKIE, "", 0, tls));
    response
}

async fn sign_out(console: Console, headers: HeaderMap, Form(form): Form<CsrfOnly>) -> Response {
    if let Some(refused) = console.csrf_refusal(&form.csrf) {
        return refused;
    }
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        let _ = Sessions(console.state.pool()).close(&commands::api_keys::hash(token)).await;
    }
    let mut response = Redirect::to("/console/sign-in").into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0, over_tls(&headers)));
    response
}
