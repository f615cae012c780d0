//! The console's pages and actions, one file per area. Each reads or acts through the API's
//! own routes ([`Console::api`]), so the console can do nothing a key could not; the few
//! platform-wide views the API has no route for (past-due tenants, disabled endpoints, usage
//! by month, tenant search, job leaders) read through the same read-side handle as the routes.

mod events;
mod operations;
mod overview;
mod revenue;
mod tenants;

pub use events::{aggregate, events};
pub use operations::{billing_run, operations, rebuild};
pub use overview::overview;
pub use revenue::{act_books, confirm_books, journal, journal_csv, revenue};
pub use tenants::{act, confirm, invoice, tenant, tenants};

use axum::extract::{Path, Query};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{Datelike, Utc};
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{charts, error_page, layout, Console};
use crate::error::ApiError;

/// A JSON value as text for a cell: strings bare, `null` as an en dash.
/// Yes and no for booleans; instants to the second in UTC (`2027-01-07 01:53:48 UTC`), which
/// fit their card where RFC 3339 with its fraction did not.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "–".to_owned(),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "no".to_owned(),
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(at) if s.contains('T') => at.with_timezone(&Utc).format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            _ => s.clone(),
        },
        other => other.to_string(),
    }
}

fn items(value: &Value) -> Vec<Value> {
    value.get("data").unwrap_or(value).as_array().cloned().unwrap_or_default()
}

fn page(title: &str, console: &Console, content: Markup) -> Response {
    layout(title, Some(console), content).into_response()
}

fn or_error(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| error_page(&e))
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
