//! The plan catalog: the latest version of every plan, and publishing new versions (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use domain::billing::charges::Charge;
use domain::billing::money::parse_price;
use domain::plan::{Plan, PlanCode, PlanLimits, Prices};
use domain::values::{CurrencyCode, DisplayName};
use rust_decimal::Decimal;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::amounts::Money;
use crate::app::AppState;
use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::extract::ApiJson;

/// The catalog routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/plans", get(list).post(publish))
}

/// A plan (one version of it), money as two-decimal strings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    /// Its code.
    code: String,
    /// Its name.
    name: String,
    /// Its version.
    version: u32,
    /// The first currency's monthly price.
    monthly_price: Money,
    /// The first currency's yearly price.
    yearly_price: Money,
    /// The first currency (ISO 4217).
    currency: String,
    /// Prices by currency.
    prices: BTreeMap<String, PricesView>,
    /// Limits.
    limits: LimitsView,
    /// How the usage of metrics is priced (see the API guide's *Usage charges*).
    #[schema(value_type = Vec<Object>)]
    charges: Vec<Charge>,
    /// Features.
    features: Vec<String>,
    /// Requests a key may make per minute.
    rate_limit_per_minute: u32,
}

/// A plan's prices in one currency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Prices)]
pub struct PricesView {
    /// A month.
    monthly: Money,
    /// A year.
    yearly: Money,
}

/// A plan's limits; `null`: unlimited.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Limits)]
pub struct LimitsView {
    /// Seats.
    users: Option<u64>,
    /// Bookings a month.
    bookings_per_month: Option<u64>,
    /// Event resources.
    events: Option<u64>,
    /// Seats per event.
    tickets_per_event: Option<u64>,
    /// Storage, in MB.
    storage_mb: Option<u64>,
    /// API calls a month (beyond: overage).
    api_calls_per_month: Option<u64>,
}

impl From<&Plan> for PlanView {
    fn from(plan: &Plan) -> Self {
        let l = &plan.limits;
        Self {
            code: plan.code.as_str().to_owned(),
            name: plan.name.clone(),
            version: plan.version,
            monthly_price: plan.monthly_price.into(),
            yearly_price: plan.yearly_price.into(),
            currency: plan.currency.clone(),
            prices: plan
                .sold_in()
                .into_iter()
                .map(|(currency, p)| (currency, PricesView { monthly: p.monthly.into(), yearly: p.yearly.into() }))
                .collect(),
            limits: LimitsView {
                users: l.users,
                bookings_per_month: l.bookings_per_month,
                events: l.events,
                tickets_per_event: l.tickets_per_event,
                storage_mb: l.storage_mb,
                api_calls_per_month: l.api_calls_per_month,
            },
            charges: plan.charges.clone(),
            features: plan.features.clone(),
            rate_limit_per_minute: plan.rate_limit_per_minute,
        }
    }
}

/// `GET /v1/plans`: the latest version of each plan, cheapest first. Public (no token needed):
/// pricing pages show it.
#[utoipa::path(
    get,
    path = "/v1/plans",
    tag = "plans",
    responses(
        (status = 200, description = "[{code, name, version, monthly_price, yearly_price, currency, prices: {<currency>: {monthly, yearly}}, limits, features, rate_limit_per_minute}]; monthly_price, yearly_price and currency repeat the first currency's", body = Vec<PlanView>)
    ),
    security(()),
)]
async fn list(State(state): State<AppState>) -> Result<Json<Vec<PlanView>>, ApiError> {
    let plans = state.reads().catalog().latest_plans().await?;
    Ok(Json(plans.iter().map(PlanView::from).collect()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishPlan {
    /// `[a-z0-9-]{2,50}`; an existing code publishes its next version.
    #[schema(pattern = "^[a-z0-9-]{2,50}$", example = "starter")]
    code: String,
    /// 1 to 200 characters, not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$",
        example = "Starter"
    )]
    name: String,
    /// The price per month in `currency` (required unless `prices` is given).
    #[schema(pattern = r"^[0-9]{1,10}(\.[0-9]{1,2})?$", example = "29.00")]
    monthly_price: Option<String>,
    /// The price per year in `currency` (default: 10 × monthly).
    #[schema(pattern = r"^[0-9]{1,10}(\.[0-9]{1,2})?$", example = "29.00")]
    yearly_price: Option<String>,
    /// The currency of `monthly_price` (default EUR), and the plan's first currency.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    currency: Option<String>,
    /// Prices in further currencies: `{"USD": {"monthly": "29.00", "yearly": "290.00"}}`
    /// (`yearly` defaults to 10 × monthly). Tenants in other currencies cannot take the plan.
    #[schema(value_type = Option<Object>)]
    prices: Option<std::collections::BTreeMap<String, PriceBody>>,
    /// Usage charges: `[{metric, model: per_unit|package|graduated|volume, included, unit_price,
    /// package_size, package_price, tiers: [{up_to, unit_price, flat_fee}]}]`, billed in arrears
    /// as lines of kind `usage` (a charge on `api_calls` or `sms` replaces their built-in price).
    #[schema(value_type = Option<Vec<Object>>)]
    charges: Option<Vec<Value>>,
    limits: LimitsBody,
    /// Feature flags: at most 100 names of 1 to 64 characters.
    #[serde(default)]
    #[schema(max_items = 100)]
    features: Vec<String>,
    /// Requests per minute a tenant key may make, 1 to 1,000,000.
    #[schema(minimum = 1, maximum = 1000000)]
    rate_limit_per_minute: u32,
}

/// A plan's prices in one currency.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    #[schema(pattern = r"^[0-9]{1,10}(\.[0-9]{1,2})?$", example = "29.00")]
    monthly: String,
    #[schema(pattern = r"^[0-9]{1,10}(\.[0-9]{1,2})?$", example = "29.00")]
    yearly: Option<String>,
}

/// Limits; absent or `null` means unlimited.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    users: Option<u64>,
    bookings_per_month: Option<u64>,
    events: Option<u64>,
    tickets_per_event: Option<u64>,
    storage_mb: Option<u64>,
    api_calls_per_month: Option<u64>,
}

/// `POST /v1/plans` (admin): publishes a new plan, or the next version of an existing one.
/// Existing subscribers keep the version they signed up on.
#[utoipa::path(
    post,
    path = "/v1/plans",
    tag = "plans",
    params(crate::openapi::IdempotencyHeader),
    request_body = PublishPlan,
    responses(
        (status = 201, description = "The published plan version", body = PlanView),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn publish(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    ApiJson(body): ApiJson<PublishPlan>,
) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    let plan = plan_from_body(body)?;
    let context = state.context(None, caller.actor());
    let app = state.clone();
    let published = state
        .detach(async move {
            let code = plan.code.to_string();
            let committed = app.accounts().catalog().publish(plan, &context).await?;
            app.settle(&code, &committed).await;
            Ok(committed.state.latest.expect("just published"))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(PlanView::from(&published))))
}

/// A plan from a `POST /v1/plans` body (version 0: the catalog numbers it), checked as the
/// catalog checks it. Simulations take their candidate plans in the same shape.
pub(crate) fn plan_from_body(body: PublishPlan) -> Result<Plan, ApiError> {
    let mut prices = std::collections::BTreeMap::new();
    for (currency, price) in body.prices.unwrap_or_default() {
        let code = CurrencyCode::parse(&currency).map_err(|e| e.at(format!("prices.{currency}")))?.into_inner();
        let monthly = parse_price(&price.monthly, &format!("prices.{currency}.monthly"))?;
        let yearly = match price.yearly {
            Some(yearly) => parse_price(&yearly, &format!("prices.{currency}.yearly"))?,
            None => monthly * Decimal::TEN,
        };
        prices.insert(code, Prices { monthly, yearly });
    }
    // The first currency: `currency` with `monthly_price`, or else EUR or the first of `prices`.
    let currency = match (&body.currency, &body.monthly_price) {
        (Some(currency), _) => CurrencyCode::parse(currency)?.into_inner(),
        (None, Some(_)) => "EUR".to_owned(),
        (None, None) => {
            if prices.contains_key("EUR") {
                "EUR".to_owned()
            } else {
                prices.keys().next().cloned().ok_or_else(|| ApiError::validation("monthly_price", "is required (or prices)"))?
            }
        }
    };
    if let Some(monthly) = &body.monthly_price {
        let monthly = parse_price(monthly, "monthly_price")?;
        let yearly = match &body.yearly_price {
            Some(price) => parse_price(price, "yearly_price")?,
            None => monthly * Decimal::TEN,
        };
        if prices.get(&currency).is_some_and(|p| *p != Prices { monthly, yearly }) {
            return Err(ApiError::validation("prices", format!("disagree with monthly_price/yearly_price for {currency}")));
        }
        prices.insert(currency.clone(), Prices { monthly, yearly });
    } else if body.yearly_price.is_some() {
        return Err(ApiError::validation("yearly_price", "needs monthly_price"));
    }
    let Some(&Prices { monthly: monthly_price, yearly: yearly_price }) = prices.get(&currency) else {
        return Err(ApiError::validation("currency", format!("has no price: give monthly_price or prices.{currency}")));
    };
    if !(1..=1_000_000).contains(&body.rate_limit_per_minute) {
        return Err(ApiError::validation("rate_limit_per_minute", "must be between 1 and 1000000"));
    }
    if body.features.len() > 100 || body.features.iter().any(|f| f.is_empty() || f.len() > 64) {
        return Err(ApiError::validation("features", "must be at most 100 names of 1 to 64 characters"));
    }
    let mut charges: Vec<Charge> = Vec::new();
    for (i, charge) in body.charges.unwrap_or_default().into_iter().enumerate() {
        let field = format!("charges[{i}]");
        let charge: Charge = serde_json::from_value(charge).map_err(|e| ApiError::validation(&field, e.to_string()))?;
        domain::usage::MetricName::parse(&charge.metric).map_err(|e| e.at(format!("{field}.metric")))?;
        charge.validate(&field)?;
        if charges.iter().any(|c| c.metric == charge.metric) {
            return Err(ApiError::validation(&format!("{field}.metric"), "has a charge already"));
        }
        charges.push(charge);
    }
    let l = body.limits;
    Ok(Plan {
        code: PlanCode::parse(&body.code)?,
        name: DisplayName::parse(&body.name, "name")?.into_inner(),
        version: 0,
        monthly_price,
        yearly_price,
        currency,
        prices,
        limits: PlanLimits {
            users: l.users,
            bookings_per_month: l.bookings_per_month,
            events: l.events,
            tickets_per_event: l.tickets_per_event,
            storage_mb: l.storage_mb,
            api_calls_per_month: l.api_calls_per_month,
        },
        charges,
        features: body.features,
        rate_limit_per_minute: body.rate_limit_per_minute,
    })
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, publish))]
pub struct Docs;
