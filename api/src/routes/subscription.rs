//! The caller's subscription: reading it, changing plan, cancelling, resuming, add-ons.

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::plan::{BillingPeriod, PlanCode};
use domain::subscription::{Addons, PlanTerms, Subscription, SubscriptionCommand};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::invoices::InvoiceView;
use crate::amounts::Money;
use crate::app::AppState;
use crate::auth::{Manager, TenantCaller};
use crate::error::ApiError;
use crate::extract::{ApiJson, OptionalJson};

/// The subscription routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/subscription", get(read))
        .route("/v1/subscription/change-plan", post(change_plan))
        .route("/v1/subscription/cancel", post(cancel))
        .route("/v1/subscription/resume", post(resume))
        .route("/v1/subscription/addons", put(set_addons))
        .route("/v1/subscription/coupon", post(redeem_coupon).delete(remove_coupon))
}

/// A tenant's subscription.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = SubscriptionView)]
pub struct SubscriptionView {
    /// Its id.
    id: Uuid,
    /// Whose.
    tenant_id: Uuid,
    /// The plan's code.
    plan: Option<String>,
    /// The plan's version it is on.
    plan_version: Option<u32>,
    /// `monthly` or `yearly`.
    billing_period: Option<&'static str>,
    /// `trialing`, `active`, `past_due`, `suspended` or `cancelled`.
    #[schema(example = "active")]
    status: &'static str,
    /// When the trial ends (or ended).
    trial_ends_at: Option<DateTime<Utc>>,
    /// The current period.
    current_period_start: Option<DateTime<Utc>>,
    /// End of the current period.
    current_period_end: Option<DateTime<Utc>>,
    /// Whether it ends with the current period.
    cancel_at_period_end: bool,
    /// When it was cancelled.
    cancelled_at: Option<DateTime<Utc>>,
    /// Add-ons.
    addons: AddonsView,
    /// A change that takes effect at the period's end.
    pending_change: Option<PendingChange>,
    /// Account credit.
    credit_balance: Money,
    /// The coupon's discount, while it lasts.
    discount: Option<Discount>,
    /// Since when a payment is overdue.
    past_due_since: Option<DateTime<Utc>>,
    /// In a command's answer only: the invoice the command issued at once (an upgrade's
    /// prorated invoice), when it issued one.
    #[serde(skip_serializing_if = "Option::is_none")]
    invoice: Option<InvoiceView>,
}

/// A subscription's add-ons.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Addons)]
pub struct AddonsView {
    /// Seats beyond the plan's users.
    extra_users: u32,
    /// Storage beyond the plan's, in GB.
    extra_storage_gb: u32,
    /// Whether an invitation beyond the seats adds one.
    auto_add_seats: bool,
}

/// A plan change waiting for the period's end.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PendingChange {
    /// The plan.
    plan: String,
    /// Its version.
    plan_version: u32,
    /// `monthly` or `yearly`.
    billing_period: &'static str,
    /// When it applies.
    effective_at: DateTime<Utc>,
}

/// A redeemed coupon's discount.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Discount {
    /// The coupon's code.
    coupon: String,
    /// For people (`20 % off`).
    description: String,
    /// `once`, `repeating` or `forever`.
    #[schema(value_type = String, pattern = "^(once|repeating|forever)$")]
    duration: domain::coupon::CouponDuration,
    /// Invoices it still applies to (`null`: forever).
    invoices_left: Option<u32>,
    /// The start of the last period it discounts (`null`: forever).
    ends_at_period: Option<DateTime<Utc>>,
    /// When it was redeemed.
    applied_at: DateTime<Utc>,
}

impl SubscriptionView {
    /// Subscription `id` of tenant `tenant_id` as its state has it.
    pub fn of(id: Uuid, tenant_id: Uuid, s: &Subscription) -> Self {
        let plan = s.plan.as_ref();
        let period = s.current_period();
        Self {
            id,
            tenant_id,
            plan: plan.map(|p| p.code.as_str().to_owned()),
            plan_version: plan.map(|p| p.version),
            billing_period: s.billing_period.map(|p| p.as_str()),
            status: s.status.as_str(),
            trial_ends_at: s.trial_ends_at,
            current_period_start: period.map(|p| p.start),
            current_period_end: period.map(|p| p.end),
            cancel_at_period_end: s.cancel_at_period_end,
            cancelled_at: s.cancelled_at,
            addons: AddonsView {
                extra_users: s.addons.extra_users,
                extra_storage_gb: s.addons.extra_storage_gb,
                auto_add_seats: s.addons.auto_add_seats,
            },
            pending_change: s.pending_change.as_ref().map(|c| PendingChange {
                plan: c.plan.code.as_str().to_owned(),
                plan_version: c.plan.version,
                billing_period: c.billing_period.as_str(),
                effective_at: c.effective_at,
            }),
            credit_balance: s.credit_balance.into(),
            discount: s.discount.as_ref().map(|d| Discount {
                coupon: d.coupon.code.as_str().to_owned(),
                description: d.coupon.describe(),
                duration: d.coupon.duration,
                invoices_left: d.invoices_left,
                ends_at_period: s.discount_ends_at_period(),
                applied_at: d.applied_at,
            }),
            past_due_since: s.past_due_since,
            invoice: None,
        }
    }
}

async fn subscription_of(state: &AppState, tenant_id: Uuid) -> Result<(Uuid, Subscription), ApiError> {
    state.reads().billing().subscription_of(tenant_id).await?.ok_or_else(|| ApiError::not_found("subscription"))
}

/// `GET /v1/subscription`.
#[utoipa::path(
    get,
    path = "/v1/subscription",
    tag = "subscription",
    params(crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "{plan, plan_version, billing_period, status, trial_ends_at, current_period_start, current_period_end, cancel_at_period_end, addons}", body = SubscriptionView),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound
    ),
)]
async fn read(State(state): State<AppState>, caller: TenantCaller) -> Result<Json<SubscriptionView>, ApiError> {
    let (id, subscription) = subscription_of(&state, caller.tenant_id).await?;
    Ok(Json(SubscriptionView::of(id, caller.tenant_id, &subscription)))
}

/// Runs `command` on the caller's subscription (an owner or admin key's: see [`Manager`]),
/// waits for the read models and answers with the subscription, plus the invoice the command
/// issued, if any.
async fn run(
    state: AppState,
    caller: TenantCaller,
    command: impl FnOnce(chrono::DateTime<chrono::Utc>) -> SubscriptionCommand,
) -> Result<Json<SubscriptionView>, ApiError> {
    let (id, _) = subscription_of(&state, caller.tenant_id).await?;
    let context = state.context(Some(caller.tenant_id), caller.actor);
    let command = command(context.at);
    let app = state.clone();
    let committed = state
        .detach(async move {
            let committed = app.accounts().subscription_command(id, command, &context).await?;
            app.settle_all().await;
            Ok(committed)
        })
        .await?;
    let mut body = SubscriptionView::of(id, caller.tenant_id, &committed.state);
    let issued = committed.events.iter().find_map(|e| match &e.payload {
        domain::subscription::SubscriptionEvent::InvoiceIssued { invoice_id, .. } => Some(*invoice_id),
        _ => None,
    });
    if let Some(invoice_id) = issued {
        body.invoice = Some(super::invoices::load(&state, invoice_id).await?);
    }
    Ok(Json(body))
}

/// A coupon to redeem.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RedeemCoupon {
    /// The coupon's code.
    #[schema(example = "SPRING25")]
    code: String,
}

/// `POST /v1/subscription/coupon` `{code}` (owner or admin key; the admin with `X-Tenant-ID`):
/// redeems a coupon. Its discount is one `discount` line before tax on each invoice issued while
/// it lasts (`once`: the next invoice; `repeating`: the next n; `forever`), never more than the
/// other lines. Answers the subscription with `discount: {coupon, description, duration,
/// invoices_left, ends_at_period, applied_at}`. Refused with 409 `COUPON_NOT_APPLICABLE`
/// (`details.reason`) when the code is unknown, the coupon is not for the plan or the tenant's
/// currency, past its `redeem_by`, exhausted (never more than `max_redemptions`, under any
/// concurrency), or a coupon is already active.
#[utoipa::path(
    post,
    path = "/v1/subscription/coupon",
    tag = "subscription",
    params(crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = RedeemCoupon,
    responses(
        (status = 200, description = "The subscription with its discount", body = SubscriptionView),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        crate::openapi::NotFound,
        (status = 409, description = "COUPON_NOT_APPLICABLE", body = crate::openapi::ErrorBody)
    ),
)]
async fn redeem_coupon(
    State(state): State<AppState>,
    Manager(caller): Manager,
    ApiJson(body): ApiJson<RedeemCoupon>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let code = body.code.trim();
    if code.is_empty() {
        return Err(ApiError::validation("code", "must be a coupon code"));
    }
    // A code of another form names no coupon.
    let coupon = if super::coupons::is_code(code) { state.accounts().catalog().coupon(code).await.map_err(ApiError::from)? } else { None };
    let Some(coupon) = coupon else {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "COUPON_NOT_APPLICABLE",
            format!("there is no coupon {}", code.escape_debug()),
        )
        .with("reason", "unknown")
        .with("coupon", code));
    };
    run(state, caller, move |at| SubscriptionCommand::ApplyCoupon { coupon, at }).await
}

/// `DELETE /v1/subscription/coupon`: the active coupon no longer applies from the next invoice
/// on (a redemption is not given back). Answers the subscription; no active coupon: 409
/// `CONFLICT`.
#[utoipa::path(
    delete,
    path = "/v1/subscription/coupon",
    tag = "subscription",
    params(crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The subscription, without discount", body = SubscriptionView),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        crate::openapi::NotFound,
        (status = 409, description = "CONFLICT: no coupon is active", body = crate::openapi::ErrorBody)
    ),
)]
async fn remove_coupon(State(state): State<AppState>, Manager(caller): Manager) -> Result<Json<SubscriptionView>, ApiError> {
    run(state, caller, |at| SubscriptionCommand::RemoveCoupon { at }).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangePlan {
    /// A plan's code in the catalog.
    #[schema(example = "professional")]
    plan: String,
    /// `monthly` or `yearly` (default: the current one).
    #[schema(pattern = "^(monthly|yearly)$")]
    billing_period: Option<String>,
    /// Apply a downgrade now (its unused difference becomes credit) instead of at the period end.
    #[serde(default)]
    immediately: bool,
}

/// `POST /v1/subscription/change-plan`: an upgrade applies now with a prorated invoice; a
/// downgrade waits for the period end unless `immediately` (its unused difference becomes
/// account credit); a new billing period restarts the periods now.
#[utoipa::path(
    post,
    path = "/v1/subscription/change-plan",
    tag = "subscription",
    params(crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = ChangePlan,
    responses(
        (status = 200, description = "The subscription after the change", body = SubscriptionView),
        crate::openapi::CommandErrors
    ),
)]
async fn change_plan(
    State(state): State<AppState>,
    Manager(caller): Manager,
    ApiJson(body): ApiJson<ChangePlan>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let code = PlanCode::parse(&body.plan)?;
    let billing_period = body.billing_period.as_deref().map(BillingPeriod::parse).transpose()?;
    let plan = state
        .accounts()
        .catalog()
        .latest(&code)
        .await?
        .ok_or_else(|| ApiError::validation("plan", format!("no plan \"{code}\" in the catalog")))?;
    let currency = state.reads().tenants().currency(caller.tenant_id).await?;
    let currency = currency.ok_or_else(|| ApiError::not_found("tenant"))?;
    let terms = PlanTerms::in_currency(&plan, &currency)?;
    run(state, caller, move |at| SubscriptionCommand::ChangePlan { plan: terms, billing_period, immediately: body.immediately, at }).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CancelSubscription)]
struct Cancel {
    at_period_end: Option<bool>,
}

impl Default for Cancel {
    fn default() -> Self {
        Self { at_period_end: Some(true) }
    }
}

/// `POST /v1/subscription/cancel {at_period_end}` (default `true`: at period end).
#[utoipa::path(
    post,
    path = "/v1/subscription/cancel",
    tag = "subscription",
    params(crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = Option<Cancel>,
    responses(
        (status = 200, description = "The subscription after the cancellation", body = SubscriptionView),
        crate::openapi::CommandErrors
    ),
)]
async fn cancel(
    State(state): State<AppState>,
    Manager(caller): Manager,
    OptionalJson(body): OptionalJson<Cancel>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let at_period_end = body.at_period_end.unwrap_or(true);
    run(state, caller, move |at| SubscriptionCommand::Cancel { at_period_end, at }).await
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Empty {}

/// `POST /v1/subscription/resume`: withdraws a pending cancellation.
#[utoipa::path(
    post,
    path = "/v1/subscription/resume",
    tag = "subscription",
    params(crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    responses(
        (status = 200, description = "The subscription, its pending cancellation withdrawn", body = SubscriptionView),
        crate::openapi::CommandErrors
    ),
)]
async fn resume(
    State(state): State<AppState>,
    Manager(caller): Manager,
    OptionalJson(_empty): OptionalJson<Empty>,
) -> Result<Json<SubscriptionView>, ApiError> {
    run(state, caller, |at| SubscriptionCommand::Resume { at }).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddonsBody {
    /// Users beyond the plan's (0 to 10000).
    #[schema(minimum = 0, maximum = 10_000)]
    extra_users: Option<u32>,
    /// Storage beyond the plan's, in GB (0 to 1000000).
    #[schema(minimum = 0, maximum = 1_000_000)]
    extra_storage_gb: Option<u32>,
    /// Whether an invitation beyond the seats adds a seat (extra_users + 1, the rest of the
    /// period prorated on the next invoice) instead of being refused with 429.
    auto_add_seats: Option<bool>,
}

/// `PUT /v1/subscription/addons {extra_users, extra_storage_gb, auto_add_seats}`: billed in
/// advance from the next period on (absent fields are 0, or false).
#[utoipa::path(
    put,
    path = "/v1/subscription/addons",
    tag = "subscription",
    params(crate::openapi::TenantHeader),
    request_body = AddonsBody,
    responses(
        (status = 200, description = "The subscription with its new add-ons", body = SubscriptionView),
        crate::openapi::CommandErrors
    ),
)]
async fn set_addons(
    State(state): State<AppState>,
    Manager(caller): Manager,
    ApiJson(body): ApiJson<AddonsBody>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let addons = Addons {
        extra_users: body.extra_users.unwrap_or(0),
        extra_storage_gb: body.extra_storage_gb.unwrap_or(0),
        auto_add_seats: body.auto_add_seats.unwrap_or(false),
    };
    if addons.extra_users > 10_000 {
        return Err(ApiError::validation("extra_users", "must be at most 10000"));
    }
    if addons.extra_storage_gb > 1_000_000 {
        return Err(ApiError::validation("extra_storage_gb", "must be at most 1000000"));
    }
    run(state, caller, move |at| SubscriptionCommand::SetAddons { addons, at }).await
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(read, change_plan, cancel, resume, set_addons, redeem_coupon, remove_coupon), components(schemas(RedeemCoupon)))]
pub struct Docs;
