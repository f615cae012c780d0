//! Tenants: sign-up (admin), listing and reading, the lifecycle (suspend, reactivate,
//! cancel) and branding.

mod views;

pub(crate) use views::{load, BrandingView, SignedUp, TenantView};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::tenants::SignUp;
use commands::vault::PersonalDataKey;
use commands::Actor;
use domain::plan::{BillingPeriod, PlanCode};
use domain::tenant::{Branding, SuspensionSource, TenantCommand, DEFAULT_TRIAL_DAYS};
use domain::values::{
    BusinessType, CurrencyCode, DisplayName, DomainName, Email, HexColor, HttpsUrl, Locale, TaxRate, TenantCode, TimeZoneName,
};
use projections::tenants::reads::{TenantFilter, TenantRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{page_limit, Page};
use crate::app::AppState;
use crate::auth::{Admin, Caller, TenantCaller};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, OptionalJson};

/// The tenant routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants", post(create).get(list))
        .route("/v1/tenants/{id}", get(read).patch(update))
        .route("/v1/tenants/{id}/suspend", post(suspend))
        .route("/v1/tenants/{id}/reactivate", post(reactivate))
        .route("/v1/tenants/{id}/cancel", post(cancel))
        .route("/v1/tenants/{id}/erase", post(erase))
        .route("/v1/tenant", get(read_own))
        .route("/v1/tenant/branding", put(update_branding))
}

/// `POST /v1/tenants`. `code`, `name`, `billing_email` and `plan` are required; the rest
/// default to `business_type: "other"`, `timezone: "UTC"`, `currency: "EUR"`, `locale: "en"`,
/// `billing_period: "monthly"`, `trial_days: 14`, `tax_rate: "0"`, `net_terms_days: 0`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    /// Unique: 3 to 50 characters of `a-z`, `0-9` and `-`.
    #[schema(pattern = "^[a-z0-9-]{3,50}$", example = "acme-clinic")]
    code: String,
    /// 1 to 200 characters, not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$",
        example = "Acme Clinic"
    )]
    name: String,
    /// 2 to 50 characters of `a-z`, `0-9`, `_` and `-` (default `other`).
    #[schema(pattern = "^[a-z0-9_-]{2,50}$", example = "clinic")]
    business_type: Option<String>,
    /// IANA time zone (default `UTC`).
    #[schema(example = "Europe/Zurich", pattern = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$")]
    timezone: Option<String>,
    /// An active ISO 4217 code (default `EUR`).
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    currency: Option<String>,
    /// BCP 47: a language, optionally a script and a region (default `en`).
    #[schema(example = "de-CH", pattern = "^[A-Za-z]{2,3}([-_][A-Za-z]{4})?([-_]([A-Za-z]{2}|[0-9]{3}))?$")]
    locale: Option<String>,
    /// Where invoices go.
    #[schema(
        max_length = 254,
        pattern = r"^[^\s@\u0000-\u001f\u007f]{1,64}@[^\s@.\u0000-\u001f\u007f]+(\.[^\s@.\u0000-\u001f\u007f]+)+$",
        example = "billing@acme.example"
    )]
    billing_email: String,
    /// A plan's code in the catalog.
    #[schema(example = "starter")]
    plan: String,
    /// `monthly` (default) or `yearly`.
    #[schema(pattern = "^(monthly|yearly)$")]
    billing_period: Option<String>,
    /// 0 to 30 (default 14).
    #[schema(minimum = 0, maximum = 30)]
    trial_days: Option<i64>,
    /// Percent, `"0"` to `"100"`, at most 4 decimals (default `"0"`).
    #[schema(value_type = Option<String>, pattern = r"^(100(\.0{1,4})?|[0-9]{1,2}(\.[0-9]{1,4})?)$", example = "8.1")]
    tax_rate: Option<Value>,
    /// Days after issue an invoice is due, 0 to 90 (default 0: due at issue).
    #[schema(minimum = 0, maximum = 90)]
    net_terms_days: Option<i64>,
}

/// Days after issue an invoice is due: 0 to 90.
fn net_terms(days: i64) -> Result<u32, ApiError> {
    u32::try_from(days).ok().filter(|d| *d <= domain::subscription::MAX_NET_TERMS_DAYS).ok_or_else(|| {
        ApiError::validation("net_terms_days", format!("must be between 0 and {}", domain::subscription::MAX_NET_TERMS_DAYS))
    })
}

impl CreateTenant {
    fn parse(self) -> Result<SignUp, ApiError> {
        let trial_days = match self.trial_days {
            None => DEFAULT_TRIAL_DAYS,
            Some(days) => u32::try_from(days).map_err(|_| ApiError::validation("trial_days", "must be between 0 and 30"))?,
        };
        let tax_rate = match self.tax_rate {
            None | Some(Value::Null) => TaxRate::default(),
            Some(Value::String(s)) => TaxRate::parse(&s)?,
            Some(Value::Number(n)) => TaxRate::parse(&n.to_string())?,
            Some(_) => return Err(ApiError::validation("tax_rate", "must be a percentage string such as \"8.1\"")),
        };
        Ok(SignUp {
            code: TenantCode::parse(&self.code)?,
            name: DisplayName::parse(&self.name, "name")?,
            business_type: BusinessType::parse(self.business_type.as_deref().unwrap_or("other"))?,
            timezone: TimeZoneName::parse(self.timezone.as_deref().unwrap_or("UTC"), "timezone")?,
            currency: CurrencyCode::parse(self.currency.as_deref().unwrap_or("EUR"))?,
            locale: Locale::parse(self.locale.as_deref().unwrap_or("en"))?,
            billing_email: Email::parse(&self.billing_email, "billing_email")?,
            plan: PlanCode::parse(&self.plan)?,
            billing_period: BillingPeriod::parse(self.billing_period.as_deref().unwrap_or("monthly"))?,
            trial_days,
            tax_rate,
            net_terms_days: self.net_terms_days.map(net_terms).transpose()?.unwrap_or(0),
        })
    }
}

#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    params(crate::openapi::IdempotencyHeader),
    request_body = CreateTenant,
    responses(
        (status = 201, description = "The tenant, its one-time owner API key and its subscription", body = SignedUp),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        (status = 409, description = "CONFLICT (details.field = code): the code is taken; IDEMPOTENCY_KEY_REUSED", body = crate::openapi::ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = crate::openapi::ErrorBody)
    ),
)]
async fn create(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<impl IntoResponse, ApiError> {
    let sign_up = body.parse()?;
    let plan = state
        .accounts()
        .catalog()
        .latest(&sign_up.plan)
        .await?
        .ok_or_else(|| ApiError::validation("plan", format!("no plan \"{}\" in the catalog", sign_up.plan)))?;
    let context = state.context(None, caller.actor());
    let app = state.clone();
    let created = state
        .detach(async move {
            let signed_up = app.accounts().sign_up(sign_up, &plan, &context).await?;
            let tenant = &signed_up.tenant.state;
            let id = tenant.id.expect("a created tenant has an id");
            let subscription_id = tenant.subscription_id.expect("a created tenant has a subscription");
            // The new key authenticates (`tenants`), and the tenant's first commands decide on
            // its subscription (`billing`: quota, booking limits) as soon as this answers; its
            // reads wait for every other read model by themselves.
            app.settle_for(&subscription_id.to_string(), &signed_up.subscription, &["tenants", "billing"]).await;
            Ok(SignedUp {
                id,
                code: tenant.code.clone().expect("a created tenant has a code"),
                api_key: signed_up.key.secret,
                api_key_id: signed_up.key.key_id,
                subscription_id,
                status: tenant.status.as_str().to_owned(),
            })
        })
        .await?;
    let location = format!("/v1/tenants/{}", created.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(created)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    cursor: Option<String>,
    #[param(pattern = "^(active|suspended|cancelled|erased)$")]
    status: Option<String>,
    /// Only the tenant with this code.
    code: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tenants: {data, has_more, next_cursor}", body = crate::routes::Page<TenantView>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn list(State(state): State<AppState>, _: Admin, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Json<Page<TenantView>>, ApiError> {
    let limit = page_limit(q.limit)?;
    let after: Option<Uuid> = q
        .cursor
        .as_deref()
        .map(|c| c.parse().map_err(|_| ApiError::validation("cursor", "is not a cursor from a previous page")))
        .transpose()?;
    if let Some(status) = q.status.as_deref() {
        if !["active", "suspended", "cancelled", "erased"].contains(&status) {
            return Err(ApiError::validation("status", "must be active, suspended, cancelled or erased"));
        }
    }
    let rows = state.reads().tenants().list(after, TenantFilter { status: q.status, code: q.code }, limit + 1).await?;
    let mut views = Vec::with_capacity(rows.len());
    for row in rows {
        let key = state.vault().key(row.id).await?;
        views.push(TenantView::open(row, &key));
    }
    Ok(Json(Page::from_rows(views, limit, |t| t.id.to_string())))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}",
    tag = "tenants",
    params(("id" = String, Path, description = "Tenant id, or its code (acme-clinic)")),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound
    ),
)]
async fn read(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<TenantView>, ApiError> {
    let id = state.resolve_tenant(&id).await?;
    if !caller.may_see(id) {
        return Err(ApiError::not_found("tenant"));
    }
    Ok(Json(load(&state, id).await?))
}

#[utoipa::path(
    get,
    path = "/v1/tenant",
    tag = "tenants",
    params(crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The caller's tenant", body = TenantView),
        crate::openapi::AuthErrors
    ),
)]
async fn read_own(State(state): State<AppState>, caller: TenantCaller) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(load(&state, caller.tenant_id).await?))
}

/// A reason for a lifecycle change (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Reason {
    /// Why (kept in the audit trail): not blank, no control characters.
    #[schema(max_length = 200, pattern = r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$")]
    reason: Option<String>,
}

impl Reason {
    fn or(self, default: &str) -> Result<String, ApiError> {
        Ok(DisplayName::parse(self.reason.as_deref().unwrap_or(default), "reason")?.into_inner())
    }
}

/// Runs a command on tenant `id` for `actor`, waits for the read model, and answers with the
/// tenant as it now is.
async fn execute(
    state: AppState,
    actor: Actor,
    id: Uuid,
    command: impl FnOnce(DateTime<Utc>) -> TenantCommand,
) -> Result<Json<TenantView>, ApiError> {
    let context = state.context(Some(id), actor);
    let command = command(context.at);
    let app = state.clone();
    state
        .detach(async move {
            let committed = app.tenants().execute(id, command, &context).await?;
            app.settle(&id.to_string(), &committed).await;
            Ok(())
        })
        .await?;
    Ok(Json(load(&state, id).await?))
}

/// What `PATCH /v1/tenants/{id}` may change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateTenant {
    /// Days after issue an invoice is due, 0 to 90: applies to the invoices issued from now on.
    #[schema(minimum = 0, maximum = 90)]
    net_terms_days: i64,
}

/// `PATCH /v1/tenants/{id}` (admin) `{net_terms_days}`: the payment terms of the invoices
/// issued from now on (`due_at` = `issued_at` + that many days). Answers the tenant.
#[utoipa::path(
    patch,
    path = "/v1/tenants/{id}",
    tag = "tenants",
    params(("id" = String, Path, description = "Tenant id, or its code (acme-clinic)")),
    request_body = UpdateTenant,
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::NotFound,
        crate::openapi::Forbidden,
        (status = 409, description = "INVALID_STATE_TRANSITION: the subscription is cancelled", body = crate::openapi::ErrorBody)
    ),
)]
async fn update(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateTenant>,
) -> Result<Json<TenantView>, ApiError> {
    let net_terms_days = net_terms(body.net_terms_days)?;
    let id = state.resolve_tenant(&id).await?;
    let subscription = state.reads().tenants().subscription_id(id).await?;
    let subscription = subscription.ok_or_else(|| ApiError::not_found("tenant"))?;
    let context = state.context(Some(id), caller.actor());
    let command = domain::subscription::SubscriptionCommand::SetNetTerms { net_terms_days, at: context.at };
    state.subscription_command(subscription, command, context).await?;
    Ok(Json(load(&state, id).await?))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/suspend",
    tag = "tenants",
    params(("id" = String, Path, description = "Tenant id, or its code (acme-clinic)"), crate::openapi::IdempotencyHeader),
    request_body = Option<Reason>,
    responses(
        (status = 200, description = "The suspended tenant", body = TenantView),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound,
        crate::openapi::Forbidden,
        (status = 409, description = "INVALID_STATE_TRANSITION", body = crate::openapi::ErrorBody)
    ),
)]
async fn suspend(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<Reason>,
) -> Result<Json<TenantView>, ApiError> {
    let reason = body.or("suspended by the platform admin")?;
    let id = state.resolve_tenant(&id).await?;
    execute(state, caller.actor(), id, |at| TenantCommand::Suspend { reason, source: SuspensionSource::Admin, at }).await
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/reactivate",
    tag = "tenants",
    params(("id" = String, Path, description = "Tenant id, or its code (acme-clinic)"), crate::openapi::IdempotencyHeader),
    request_body = Option<Reason>,
    responses(
        (status = 200, description = "The reactivated tenant", body = TenantView),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound,
        crate::openapi::Forbidden,
        (status = 409, description = "INVALID_STATE_TRANSITION", body = crate::openapi::ErrorBody)
    ),
)]
async fn reactivate(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(_reason): OptionalJson<Reason>,
) -> Result<Json<TenantView>, ApiError> {
    let id = state.resolve_tenant(&id).await?;
    execute(state, caller.actor(), id, |at| TenantCommand::Reactivate { source: SuspensionSource::Admin, at }).await
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/cancel",
    tag = "tenants",
    params(("id" = String, Path, description = "Tenant id, or its code (acme-clinic)"), crate::openapi::IdempotencyHeader),
    request_body = Option<Reason>,
    responses(
        (status = 200, description = "The cancelled tenant", body = TenantView),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound,
        crate::openapi::Forbidden,
        (status = 409, description = "INVALID_STATE_TRANSITION", body = crate::openapi::ErrorBody)
    ),
)]
async fn cancel(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<Reason>,
) -> Result<Json<TenantView>, ApiError> {
    let reason = body.or("cancelled by the platform admin")?;
    let id = state.resolve_tenant(&id).await?;
    execute(state, caller.actor(), id, |at| TenantCommand::Cancel { reason, at }).await
}

/// `PUT /v1/tenant/branding`: replaces the branding; absent or null fields are cleared.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BrandingBody {
    /// `#RRGGBB`.
    #[schema(pattern = "^#[0-9A-Fa-f]{6}$", example = "#1A2B3C")]
    primary_color: Option<String>,
    /// `#RRGGBB`.
    #[schema(pattern = "^#[0-9A-Fa-f]{6}$", example = "#FFFFFF")]
    secondary_color: Option<String>,
    /// An `https://` URL.
    #[schema(pattern = r"^https://[^\s]+$")]
    logo_url: Option<String>,
    custom_domain: Option<String>,
}

impl BrandingBody {
    fn parse(self) -> Result<Branding, ApiError> {
        Ok(Branding {
            primary_color: self.primary_color.map(|c| HexColor::parse(&c, "primary_color")).transpose()?,
            secondary_color: self.secondary_color.map(|c| HexColor::parse(&c, "secondary_color")).transpose()?,
            logo_url: self.logo_url.map(|u| HttpsUrl::parse(&u, "logo_url")).transpose()?,
            custom_domain: self.custom_domain.map(|d| DomainName::parse(&d, "custom_domain")).transpose()?,
        })
    }
}

#[utoipa::path(
    put,
    path = "/v1/tenant/branding",
    tag = "tenants",
    params(crate::openapi::TenantHeader),
    request_body = BrandingBody,
    responses(
        (status = 200, description = "The tenant with its new branding", body = TenantView),
        crate::openapi::CommandErrors
    ),
)]
async fn update_branding(
    State(state): State<AppState>,
    caller: TenantCaller,
    ApiJson(body): ApiJson<BrandingBody>,
) -> Result<Json<TenantView>, ApiError> {
    caller.require_manager()?;
    let branding = body.parse()?;
    execute(state, caller.actor, caller.tenant_id, |at| TenantCommand::UpdateBranding { branding, at }).await
}

/// `POST /v1/tenants/{id}/erase` (admin): GDPR erasure by crypto-shredding. The tenant's
/// personal-data key is destroyed, so its billing e-mail and its customers' names and e-mails
/// become unreadable in events, read models, replay and exports alike; its subscription ends
/// at once and the tenant becomes `erased` (commands get 403 `TENANT_CANCELLED`). The log stays
/// append-only and `GET /v1/audit/verify` stays valid. Repeating it answers the same.
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/erase",
    tag = "gdpr",
    params(("id" = String, Path, description = "Tenant id, or its code (acme-clinic)"), crate::openapi::IdempotencyHeader),
    responses(
        (status = 200, description = "The erased tenant (status erased, personal fields null)", body = TenantView),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound,
        crate::openapi::Forbidden
    ),
)]
async fn erase(State(state): State<AppState>, _: Admin, caller: Caller, Path(id): Path<String>) -> Result<Json<TenantView>, ApiError> {
    let id = state.resolve_tenant(&id).await?;
    let context = state.context(Some(id), caller.actor());
    let app = state.clone();
    state
        .detach(async move {
            let committed = app.accounts().erase(id, &context).await?;
            crate::idempotency::forget_tenant(app.pool(), id).await?;
            app.settle(&id.to_string(), &committed).await;
            app.settle_all().await;
            Ok(())
        })
        .await?;
    Ok(Json(load(&state, id).await?))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create, list, read, update, suspend, reactivate, cancel, erase, read_own, update_branding),
    components(schemas(UpdateTenant, SignedUp, BrandingView))
)]
pub struct Docs;
