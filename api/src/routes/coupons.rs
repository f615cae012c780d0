//! Coupons: the platform admin creates and reads them; tenants redeem them on their
//! subscription (`POST /v1/subscription/coupon`, in the subscription routes).

use std::str::FromStr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::coupon::{CouponDuration, CouponTerms, CouponValue};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{page_limit, Page, PageQuery};
use crate::amounts::Money;
use crate::app::AppState;
use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};

/// The coupon routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/coupons", post(create).get(list)).route("/v1/coupons/{code}", get(read))
}

/// A new coupon: exactly one of `percent_off` and `amount_off` (with `currency`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCoupon {
    /// Unique code customers type: 3 to 50 letters, digits, `-` or `_` (case-sensitive).
    #[schema(example = "SPRING25", pattern = r"^[A-Za-z0-9_-]{3,50}$")]
    code: String,
    /// Percentage off the invoice's other lines, more than 0 and at most 100 (a number or a
    /// decimal string, at most two decimals).
    #[schema(value_type = Option<f64>, example = 25, minimum = 0, maximum = 100)]
    percent_off: Option<Value>,
    /// Amount off each discounted invoice, a decimal string with at most two places; needs
    /// `currency`, and applies only to tenants billed in it.
    #[schema(value_type = Option<String>, example = "10.00")]
    amount_off: Option<Value>,
    /// ISO 4217 code of `amount_off` (`EUR`); not allowed with `percent_off`.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
    /// `once` (the next invoice), `repeating` (the next `duration_in_periods` invoices) or
    /// `forever`.
    #[schema(example = "repeating", pattern = "^(once|repeating|forever)$")]
    duration: String,
    /// For `repeating`: 1 to 120 invoices.
    #[schema(minimum = 1, maximum = 120)]
    duration_in_periods: Option<i64>,
    /// How many subscriptions may redeem it in all (at least 1; absent: no limit). Exact
    /// under any concurrency.
    #[schema(minimum = 1)]
    max_redemptions: Option<i64>,
    /// The last instant it can be redeemed (RFC 3339, in the future).
    redeem_by: Option<DateTime<Utc>>,
    /// The plan codes it applies to (absent or empty: every plan).
    plans: Option<Vec<String>>,
}

/// Whether `text` has the form of a coupon or plan code (letters, digits, `-`, `_`; 1 to 50):
/// anything else names nothing and is not sent to the database.
pub fn is_code(text: &str) -> bool {
    (1..=50).contains(&text.len()) && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A decimal from a JSON number or string.
fn decimal(value: &Value, field: &str) -> Result<Decimal, ApiError> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err(ApiError::validation(field, "must be a number or a decimal string")),
    };
    Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| ApiError::validation(field, "must be a number or a decimal string"))
}

/// A coupon.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CouponView {
    /// Its code.
    code: String,
    /// Percent off (one of `percent_off`, `amount_off`).
    #[schema(value_type = Option<f64>)]
    percent_off: Option<serde_json::Number>,
    /// Amount off, in `currency`.
    amount_off: Option<Money>,
    /// The currency of `amount_off`.
    currency: Option<String>,
    /// `once`, `repeating` or `forever`.
    #[schema(value_type = String, pattern = "^(once|repeating|forever)$")]
    duration: CouponDuration,
    /// Invoices it discounts when `repeating`.
    duration_in_periods: Option<u32>,
    /// How many tenants may redeem it.
    max_redemptions: Option<u32>,
    /// How many did.
    times_redeemed: i64,
    /// Redeemable until.
    redeem_by: Option<DateTime<Utc>>,
    /// The plans it applies to (empty: all).
    plans: Vec<String>,
    /// Whether it can be redeemed now.
    valid: bool,
    /// Created.
    created_at: Option<DateTime<Utc>>,
}

impl CouponView {
    /// The coupon with `terms`, redeemed `redeemed` times, as of `now`.
    pub fn of(terms: &CouponTerms, redeemed: i64, created_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        let (percent_off, amount_off, currency) = match &terms.value {
            CouponValue::PercentOff(p) => (serde_json::Number::from_str(&p.normalize().to_string()).ok(), None, None),
            CouponValue::AmountOff { amount, currency } => (None, Some(Money(*amount)), Some(currency.clone())),
        };
        let exhausted = terms.max_redemptions.is_some_and(|m| redeemed >= i64::from(m));
        let expired = terms.redeem_by.is_some_and(|by| now > by);
        Self {
            code: terms.code.clone(),
            percent_off,
            amount_off,
            currency,
            duration: terms.duration,
            duration_in_periods: terms.duration_in_periods,
            max_redemptions: terms.max_redemptions,
            times_redeemed: redeemed,
            redeem_by: terms.redeem_by,
            plans: terms.plans.clone(),
            valid: !exhausted && !expired,
            created_at,
        }
    }
}

/// `POST /v1/coupons` (admin): creates a coupon. 201 the coupon; a code in use: 409 `CONFLICT`
/// (`details.field = "code"`).
#[utoipa::path(
    post,
    path = "/v1/coupons",
    tag = "coupons",
    params(crate::openapi::IdempotencyHeader),
    request_body = CreateCoupon,
    responses(
        (status = 201, description = "The coupon: {code, percent_off, amount_off, currency, duration, duration_in_periods, max_redemptions, times_redeemed, redeem_by, plans, valid, created_at}", body = CouponView),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        (status = 409, description = "CONFLICT: the code is taken", body = crate::openapi::ErrorBody)
    ),
)]
async fn create(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    ApiJson(body): ApiJson<CreateCoupon>,
) -> Result<(StatusCode, Json<CouponView>), ApiError> {
    let value = match (&body.percent_off, &body.amount_off) {
        (Some(p), None) => {
            if body.currency.is_some() {
                return Err(ApiError::validation("currency", "only an amount_off coupon has a currency"));
            }
            CouponValue::PercentOff(decimal(p, "percent_off")?)
        }
        (None, Some(a)) => {
            let currency =
                body.currency.clone().ok_or_else(|| ApiError::validation("currency", "an amount_off coupon needs its currency"))?;
            CouponValue::AmountOff { amount: decimal(a, "amount_off")?, currency }
        }
        _ => return Err(ApiError::validation("percent_off", "give exactly one of percent_off and amount_off")),
    };
    let duration = match body.duration.as_str() {
        "once" => CouponDuration::Once,
        "repeating" => CouponDuration::Repeating,
        "forever" => CouponDuration::Forever,
        _ => return Err(ApiError::validation("duration", "must be once, repeating or forever")),
    };
    let count = |v: Option<i64>, field: &str| -> Result<Option<u32>, ApiError> {
        v.map(|n| u32::try_from(n).map_err(|_| ApiError::validation(field, "must be a positive whole number"))).transpose()
    };
    let plans = body.plans.unwrap_or_default();
    for plan in &plans {
        if !is_code(plan) {
            return Err(ApiError::validation("plans", format!("there is no plan \"{}\"", plan.escape_debug())));
        }
        let known = state.reads().catalog().plan_exists(plan).await?;
        if !known {
            return Err(ApiError::validation("plans", format!("there is no plan \"{plan}\"")));
        }
    }
    let terms = CouponTerms {
        code: body.code,
        value,
        duration,
        duration_in_periods: count(body.duration_in_periods, "duration_in_periods")?,
        max_redemptions: count(body.max_redemptions, "max_redemptions")?,
        redeem_by: body.redeem_by,
        plans,
    };
    let context = state.context(None, caller.actor());
    let app = state.clone();
    let committed = state
        .detach(async move {
            let committed = app.accounts().catalog().create_coupon(terms, &context).await?;
            app.settle_all().await;
            Ok(committed)
        })
        .await?;
    let terms = committed.state.terms.as_ref().ok_or_else(|| ApiError::internal("the coupon was not created"))?;
    Ok((StatusCode::CREATED, Json(CouponView::of(terms, 0, committed.state.created_at, state.now()))))
}

/// `GET /v1/coupons` (admin): every coupon, by code.
#[utoipa::path(
    get,
    path = "/v1/coupons",
    tag = "coupons",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of coupons: {data, has_more, next_cursor}", body = Page<CouponView>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn list(State(state): State<AppState>, _: Admin, ApiQuery(q): ApiQuery<PageQuery>) -> Result<Json<Page<CouponView>>, ApiError> {
    let limit = page_limit(q.limit)?;
    if q.cursor.as_deref().is_some_and(|c| !is_code(c)) {
        return Err(ApiError::validation("cursor", "is not a cursor from a previous page"));
    }
    let rows = state.reads().catalog().coupons(q.cursor.as_deref(), limit + 1).await?;
    let page = Page::from_rows(rows, limit, |r| r.terms.code.clone());
    let now = state.now();
    Ok(Json(Page {
        data: page.data.iter().map(|r| CouponView::of(&r.terms, r.redeemed, Some(r.created_at), now)).collect(),
        has_more: page.has_more,
        next_cursor: page.next_cursor,
    }))
}

/// `GET /v1/coupons/{code}` (admin).
#[utoipa::path(
    get,
    path = "/v1/coupons/{code}",
    tag = "coupons",
    params(("code" = String, Path, description = "The coupon's code")),
    responses(
        (status = 200, description = "The coupon", body = CouponView),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        crate::openapi::NotFound
    ),
)]
async fn read(State(state): State<AppState>, _: Admin, Path(code): Path<String>) -> Result<Json<CouponView>, ApiError> {
    if !is_code(&code) {
        return Err(ApiError::not_found("coupon"));
    }
    let row = state.reads().catalog().coupon(&code).await?;
    let row = row.ok_or_else(|| ApiError::not_found("coupon"))?;
    Ok(Json(CouponView::of(&row.terms, row.redeemed, Some(row.created_at), state.now())))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, read), components(schemas(CreateCoupon)))]
pub struct Docs;
