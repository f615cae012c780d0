//! One module per resource, each with its own `router()`; [`router`] merges them.

pub mod admin;
pub mod aggregates;
pub mod analytics;
pub mod api_keys;
pub mod audit;
pub mod bookings;
pub mod corrections;
pub mod coupons;
pub mod credits;
pub mod events;
pub mod export;
pub mod health;
pub mod invoices;
pub mod members;
pub mod metrics;
pub mod payments;
pub mod plans;
pub mod quota;
pub mod resources;
pub mod revenue;
pub mod simulations;
pub mod subscription;
pub mod tenants;
pub mod usage;
pub mod webhook_endpoints;

use axum::Router;
use serde::Serialize;

use crate::app::AppState;

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(tenants::router())
        .merge(api_keys::router())
        .merge(events::router())
        .merge(export::router())
        .merge(admin::router())
        .merge(plans::router())
        .merge(subscription::router())
        .merge(invoices::router())
        .merge(credits::router())
        .merge(coupons::router())
        .merge(members::router())
        .merge(metrics::router())
        .merge(usage::router())
        .merge(payments::router())
        .merge(webhook_endpoints::router())
        .merge(resources::router())
        .merge(bookings::router())
        .merge(quota::router())
        .merge(audit::router())
        .merge(aggregates::router())
        .merge(analytics::router())
        .merge(simulations::router())
        .merge(revenue::router())
        .merge(corrections::router())
        .merge(crate::openapi::router())
        .merge(crate::console::router())
        .with_state(state)
}

/// A page of a list: `{data, has_more, next_cursor}`. Pass `next_cursor` back as `cursor` to
/// get the next page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// Whether more items follow.
    pub has_more: bool,
    /// The cursor of the next page, when there is one.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Cuts `rows` (fetched with `limit + 1`) to `limit` and derives the cursor from the last
    /// item kept.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Self {
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = if has_more { rows.last().map(cursor_of) } else { None };
        Self { data: rows, has_more, next_cursor }
    }
}

/// The query of a list that takes nothing but a page: `?limit&cursor`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Checks a page size: 1 to 100, default 20.
pub fn page_limit(limit: Option<i64>) -> Result<i64, crate::ApiError> {
    match limit {
        None => Ok(20),
        Some(l) if (1..=100).contains(&l) => Ok(l),
        Some(_) => Err(crate::ApiError::validation("limit", "must be between 1 and 100")),
    }
}

/// A cursor for lists ordered by a time and then an id: `<RFC 3339, Z>_<uuid>` (no `+`, so it
/// survives being pasted into a query string unencoded).
pub fn time_cursor(at: chrono::DateTime<chrono::Utc>, id: uuid::Uuid) -> String {
    format!("{}_{id}", at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// Reads a [`time_cursor`] from a previous page (400 if it is not one).
pub fn parse_time_cursor(raw: Option<&str>) -> Result<Option<(chrono::DateTime<chrono::Utc>, uuid::Uuid)>, crate::ApiError> {
    raw.map(|c| {
        c.split_once('_')
            .and_then(|(t, id)| Some((chrono::DateTime::parse_from_rfc3339(t).ok()?.with_timezone(&chrono::Utc), id.parse().ok()?)))
            .ok_or_else(|| crate::ApiError::validation("cursor", "is not a cursor from a previous page"))
    })
    .transpose()
}
