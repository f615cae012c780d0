//! The console's pages and actions. Each reads or acts through the API's own routes
//! ([`Console::api`]).

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
fn text(value: &Value) -> String {
    match value {
        Value::Null => "–".to_owned(),
        Value::String(s) => s.clone(),
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

/// `GET /console/overview` (admin): revenue and tenant charts by month, MRR by plan, the usage
/// trend, and what is failing now.
pub async fn overview(console: Console) -> Response {
    or_error(
        async {
            let months = items(&console.api(Method::GET, "/v1/admin/analytics/revenue", None, None).await?);
            let recent: Vec<&Value> = months.iter().rev().take(24).rev().collect();
            let labels: Vec<String> = recent.iter().map(|m| text(&m["month"])).collect();
            let money = |key: &str| recent.iter().map(|m| text(&m[key]).parse::<f64>().unwrap_or(0.0)).collect::<Vec<f64>>();
            let count = |key: &str| recent.iter().map(|m| m[key].as_f64().unwrap_or(0.0)).collect::<Vec<f64>>();
            let mrr_chart = charts::lines("MRR and ARR / 12 by month", &labels, &[("MRR", money("mrr")), ("ARR / 12", money("arr").iter().map(|a| a / 12.0).collect())]);
            let tenant_chart = charts::bars(
                "Tenants by month",
                &labels,
                &[("active", count("active_tenants")), ("new", count("new_tenants")), ("churned", count("churned_tenants"))],
            );
            let churn_chart = charts::lines("Churn rate by month (%)", &labels, &[("churn rate", count("churn_rate").iter().map(|r| r * 100.0).collect())]);
            let latest = months.last().cloned().unwrap_or(Value::Null);
            let projections = items(&console.api(Method::GET, "/v1/admin/projections", None, None).await?);
            let failing: Vec<&Value> =
                projections.iter().filter(|p| !p["last_error"].is_null() || p["lag"].as_i64().unwrap_or(0) > 1000).collect();
            let suspended = items(&console.api(Method::GET, "/v1/tenants?status=suspended&limit=100", None, None).await?);
            // The platform-wide views the API has no route for read the same read models.
            let reads = console.state.reads();
            let past_due: Vec<(Uuid, String, Option<chrono::DateTime<Utc>>)> =
                reads.billing().past_due().await?.into_iter().map(|r| (r.tenant_id, r.code, r.current_period_end)).collect();
            let disabled = console.state.endpoints().disabled().await?;
            let usage = reads.usage().platform_monthly().await.unwrap_or_default();
            let mut usage_months: Vec<String> = usage.iter().map(|(_, b, _)| b.format("%Y-%m").to_string()).collect();
            usage_months.dedup();
            let mut metrics: Vec<String> = usage.iter().map(|(m, _, _)| m.clone()).collect();
            metrics.sort();
            metrics.dedup();
            let usage_series: Vec<(&str, Vec<f64>)> = metrics
                .iter()
                .take(4)
                .map(|metric| {
                    let values = usage_months
                        .iter()
                        .map(|month| {
                            usage.iter().filter(|(m, b, _)| m == metric && b.format("%Y-%m").to_string() == *month).map(|(_, _, v)| *v).sum()
                        })
                        .collect();
                    (metric.as_str(), values)
                })
                .collect();
            let usage_chart = charts::bars("Platform usage by month (counters, all tenants)", &usage_months, &usage_series);
            Ok(page(
                "Overview",
                &console,
                html! {
                    section aria-labelledby="kpis" {
                        h2 #kpis { "This month" }
                        @if latest.is_null() {
                            p { "No revenue yet." }
                        } @else {
                            dl.kpis {
                                div { dt { "Month" } dd { (text(&latest["month"])) } }
                                div { dt { "MRR" } dd { (text(&latest["mrr"])) } }
                                div { dt { "ARR" } dd { (text(&latest["arr"])) } }
                                div { dt { "Active tenants" } dd { (text(&latest["active_tenants"])) } }
                                div { dt { "New" } dd { (text(&latest["new_tenants"])) } }
                                div { dt { "Churned" } dd { (text(&latest["churned_tenants"])) } }
                            }
                        }
                    }
                    section aria-labelledby="charts" {
                        h2 #charts { "Revenue and tenants" }
                        figure { (PreEscaped(mrr_chart)) figcaption { "MRR and ARR/12 per month (from the revenue read model)" } }
                        figure { (PreEscaped(tenant_chart)) figcaption { "Active, new and churned tenants per month" } }
                        figure { (PreEscaped(churn_chart)) figcaption { "Churn rate per month" } }
                        @if !usage_months.is_empty() {
                            figure { (PreEscaped(usage_chart)) figcaption { "Usage of the platform per month (from the usage read model)" } }
                        }
                    }
                    section aria-labelledby="by-plan" {
                        h2 #by-plan { "MRR by plan, " (text(&latest["month"])) }
                        table {
                            thead { tr { th scope="col" { "Plan" } th scope="col" class="num" { "MRR" } } }
                            tbody {
                                @if let Some(plans) = latest["by_plan"].as_object() {
                                    @for (plan, mrr) in plans {
                                        tr { th scope="row" { (plan) } td.num { (text(mrr)) } }
                                    }
                                }
                            }
                        }
                    }
                    section aria-labelledby="failing" {
                        h2 #failing { "Failing now" }
                        ul {
                            @if failing.is_empty() && suspended.is_empty() && disabled.is_empty() && past_due.is_empty() { li { "Nothing: every projection is current, no subscription is past due, no tenant is suspended, no webhook endpoint is disabled." } }
                            @for p in &failing {
                                li { "Projection " strong { (text(&p["name"])) } ": lag " (text(&p["lag"])) ", " (text(&p["last_error"])) " — " a href="/console/operations" { "operations" } }
                            }
                            @for t in &suspended {
                                li { "Suspended: " a href={ "/console/tenants/" (text(&t["id"])) } { (text(&t["code"])) } " — " (text(&t["status_reason"])) }
                            }
                            @for (id, code, _) in &past_due {
                                li { "Past due: " a href={ "/console/tenants/" (id) } { (code) } }
                            }
                            @for (url, tenant) in &disabled {
                                li { "Webhook endpoint disabled: " (url) @if let Some(t) = tenant { " (tenant " a href={ "/console/tenants/" (t) } { (t) } ")" } @else { " (the platform's)" } }
                            }
                        }
                    }
                },
            ))
        }
        .await,
    )
}

#[derive(Debug, Deserialize, Default)]
pub struct TenantsQuery {
    q: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
}

/// `GET /console/tenants` (admin): search by code or name, filter by status, paged.
pub async fn tenants(console: Console, Query(query): Query<TenantsQuery>) -> Response {
    or_error(
        async {
            if !console.is_admin() {
                return Err(ApiError::forbidden("the tenant list is the platform admin's"));
            }
            let q = query.q.clone().unwrap_or_default().trim().to_owned();
            let status = query.status.clone().unwrap_or_default();
            let mut path = "/v1/tenants?limit=50".to_owned();
            if !status.is_empty() {
                path.push_str(&format!("&status={}", encode(&status)));
            }
            if let Some(cursor) = query.cursor.as_deref().filter(|c| !c.is_empty()) {
                path.push_str(&format!("&cursor={}", encode(cursor)));
            }
            // Without a search: the API's list, paged. With one: the tenants read model, by code or
            // name (the API lists by exact code only).
            let (rows, next) = if q.is_empty() {
                let listed = console.api(Method::GET, &path, None, None).await?;
                (items(&listed), listed["next_cursor"].as_str().map(str::to_owned))
            } else {
                let found = console.state.reads().tenants().search(&q, &status).await?;
                let rows = found
                    .into_iter()
                    .map(|t| json!({"id": t.id, "code": t.code, "name": t.name, "plan": t.plan, "status": t.status, "created_at": t.created_at}))
                    .collect();
                (rows, None)
            };
            Ok(page(
                "Tenants",
                &console,
                html! {
                    form.filters method="get" action="/console/tenants" role="search" {
                        label for="q" { "Code or name" }
                        input #q type="search" name="q" value=(q);
                        label for="status" { "Status" }
                        select #status name="status" {
                            @for s in ["", "active", "suspended", "cancelled", "erased"] {
                                option value=(s) selected[s == status] { @if s.is_empty() { "any" } @else { (s) } }
                            }
                        }
                        button type="submit" { "Search" }
                    }
                    table {
                        caption { (rows.len()) " tenants on this page" }
                        thead { tr { th scope="col" { "Code" } th scope="col" { "Name" } th scope="col" { "Plan" } th scope="col" { "Status" } th scope="col" { "Created" } } }
                        tbody {
                            @for t in &rows {
                                tr {
                                    th scope="row" { a href={ "/console/tenants/" (text(&t["id"])) } { (text(&t["code"])) } }
                                    td { (text(&t["name"])) }
                                    td { (text(&t["plan"])) }
                                    td { span class={ "status " (text(&t["status"])) } { (text(&t["status"])) } }
                                    td { (text(&t["created_at"])) }
                                }
                            }
                        }
                    }
                    @if let Some(next) = next {
                        p { a href={ "/console/tenants?q=" (encode(&q)) "&status=" (encode(&status)) "&cursor=" (encode(&next)) } { "Next page" } }
                    }
                },
            ))
        }
        .await,
    )
}

/// `GET /console/tenants/{id}`: status and actions, subscription, invoices, usage against quota,
/// bookings of the month, API keys, the audit trail with its verification.
pub async fn tenant(console: Console, Path(id): Path<String>) -> Response {
    or_error(
        async {
            let tenant = console.api(Method::GET, &format!("/v1/tenants/{}", encode(&id)), None, None).await?;
            let tenant_id: Uuid = text(&tenant["id"]).parse().map_err(ApiError::internal)?;
            let scope = Some(tenant_id);
            let subscription = console.api(Method::GET, "/v1/subscription", scope, None).await.unwrap_or(Value::Null);
            let invoices = items(&console.api(Method::GET, "/v1/invoices?limit=24", scope, None).await?);
            let quotas = items(&console.api(Method::GET, "/v1/quota", scope, None).await?);
            let now = console.state.now();
            let month = format!("{:04}-{:02}-01T00:00:00Z", now.year(), now.month());
            let bookings = items(&console.api(Method::GET, &format!("/v1/bookings?from={}&limit=50", encode(&month)), scope, None).await?);
            let keys = items(&console.api(Method::GET, "/v1/api-keys", scope, None).await?);
            let audit = items(&console.api(Method::GET, "/v1/audit?limit=20", scope, None).await?);
            let verified = console.api(Method::GET, "/v1/audit/verify", scope, None).await?;
            let status = text(&tenant["status"]);
            let code = text(&tenant["code"]);
            Ok(page(
                &format!("Tenant {code}"),
                &console,
                html! {
                    section aria-labelledby="status" {
                        h2 #status { "Status" }
                        p { "Status: " strong #tenant-status class={ "status " (status) } { (status) } @if !tenant["status_reason"].is_null() { " — " (text(&tenant["status_reason"])) } }
                        dl.facts {
                            div { dt { "Name" } dd { (text(&tenant["name"])) } }
                            div { dt { "Currency" } dd { (text(&tenant["currency"])) } }
                            div { dt { "Created" } dd { (text(&tenant["created_at"])) } }
                        }
                        @if console.is_admin() {
                            div.actions {
                                @if status == "active" { a.button href={ "/console/tenants/" (tenant_id) "/suspend" } { "Suspend…" } }
                                @if status == "suspended" { a.button href={ "/console/tenants/" (tenant_id) "/reactivate" } { "Reactivate…" } }
                                @if status == "active" || status == "suspended" { a.button.danger href={ "/console/tenants/" (tenant_id) "/cancel" } { "Cancel…" } }
                            }
                        }
                    }
                    section aria-labelledby="subscription" {
                        h2 #subscription { "Subscription" }
                        @if subscription.is_null() { p { "No subscription." } } @else {
                            dl.facts {
                                div { dt { "Plan" } dd { (text(&subscription["plan"])) " v" (text(&subscription["plan_version"])) ", " (text(&subscription["billing_period"])) } }
                                div { dt { "Status" } dd { (text(&subscription["status"])) } }
                                div { dt { "Period" } dd { (text(&subscription["current_period_start"])) " – " (text(&subscription["current_period_end"])) } }
                                div { dt { "Trial ends" } dd { (text(&subscription["trial_ends_at"])) } }
                                div { dt { "Pending change" } dd { @if subscription["pending_change"].is_null() { "none" } @else { (text(&subscription["pending_change"]["plan"])) " at " (text(&subscription["pending_change"]["effective_at"])) } } }
                                div { dt { "Cancels at period end" } dd { (text(&subscription["cancel_at_period_end"])) } }
                                div { dt { "Add-ons" } dd { (text(&subscription["addons"]["extra_users"])) " extra users, " (text(&subscription["addons"]["extra_storage_gb"])) " GB extra storage" } }
                            }
                        }
                    }
                    section aria-labelledby="invoices" {
                        h2 #invoices { "Invoices" }
                        table {
                            thead { tr { th scope="col" { "Number" } th scope="col" { "Issued" } th scope="col" { "Status" } th scope="col" class="num" { "Total" } th scope="col" class="num" { "Due" } } }
                            tbody {
                                @for i in &invoices {
                                    tr {
                                        th scope="row" { a href={ "/console/invoices/" (text(&i["id"])) } { (text(&i["number"])) } }
                                        td { (text(&i["issued_at"])) }
                                        td { (text(&i["status"])) }
                                        td.num { (text(&i["total"])) " " (text(&i["currency"])) }
                                        td.num { (text(&i["amount_due"])) }
                                    }
                                }
                            }
                        }
                    }
                    section aria-labelledby="usage" {
                        h2 #usage { "Usage against quota" }
                        table {
                            thead { tr { th scope="col" { "Metric" } th scope="col" { "Used" } th scope="col" { "Limit" } th scope="col" { "Share" } } }
                            tbody {
                                @for q in &quotas {
                                    @let used = q["used"].as_f64().unwrap_or(0.0);
                                    @let limit = q["limit"].as_f64();
                                    tr {
                                        th scope="row" { (text(&q["metric"])) }
                                        td.num { (text(&q["used"])) }
                                        td.num { @if let Some(l) = limit { (l) } @else { "unlimited" } }
                                        td {
                                            @if let Some(l) = limit.filter(|l| *l > 0.0) {
                                                meter min="0" max=(l) value=(used.min(l)) aria-label={ (text(&q["metric"])) " used" } { (used) " of " (l) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    section aria-labelledby="bookings" {
                        h2 #bookings { "Bookings this month" }
                        @if bookings.is_empty() { p { "None." } } @else {
                            table {
                                thead { tr { th scope="col" { "Starts" } th scope="col" { "Ends" } th scope="col" { "Status" } th scope="col" { "Seats" } } }
                                tbody { @for b in &bookings { tr { td { (text(&b["starts_at"])) } td { (text(&b["ends_at"])) } td { (text(&b["status"])) } td.num { (text(&b["seats"])) } } } }
                            }
                        }
                    }
                    section aria-labelledby="keys" {
                        h2 #keys { "API keys" }
                        table {
                            thead { tr { th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Prefix" } th scope="col" { "Created" } th scope="col" { "Revoked" } } }
                            tbody { @for k in &keys { tr { th scope="row" { (text(&k["name"])) } td { (text(&k["role"])) } td { code { (text(&k["key_prefix"])) "…" } } td { (text(&k["created_at"])) } td { (text(&k["revoked_at"])) } } } }
                        }
                    }
                    section aria-labelledby="audit" {
                        h2 #audit { "Audit trail" }
                        p #audit-verification {
                            @if verified["valid"] == true { "Chain verified: " (text(&verified["checked"])) " entries, every hash matches." }
                            @else { strong.error { "Chain broken at position " (text(&verified["first_bad_position"])) } }
                        }
                        table {
                            thead { tr { th scope="col" { "Position" } th scope="col" { "When" } th scope="col" { "Actor" } th scope="col" { "Event" } th scope="col" { "Summary" } } }
                            tbody { @for a in &audit { tr { td.num { (text(&a["position"])) } td { (text(&a["occurred_at"])) } td { (text(&a["actor"])) } td { (text(&a["event_type"])) } td { (text(&a["summary"])) } } } }
                        }
                        p { a href={ "/console/events?tenant=" (tenant_id) } { "The tenant's event log" } }
                    }
                },
            ))
        }
        .await,
    )
}

/// The actions on a tenant, with their API route and wording.
fn action(name: &str) -> Option<(&'static str, &'static str, &'static str)> {
    match name {
        "suspend" => Some(("suspend", "Suspend", "Its commands are refused (402) until it is reactivated.")),
        "reactivate" => Some(("reactivate", "Reactivate", "Its commands are accepted again.")),
        "cancel" => Some(("cancel", "Cancel", "Final: its commands are refused for good and its subscription ends.")),
        _ => None,
    }
}

/// `GET /console/tenants/{id}/{action}`: the confirmation step.
pub async fn confirm(console: Console, Path((id, name)): Path<(String, String)>) -> Response {
    or_error(
        async {
            let (route, verb, consequence) = action(&name).ok_or_else(|| ApiError::not_found("action"))?;
            let tenant = console.api(Method::GET, &format!("/v1/tenants/{}", encode(&id)), None, None).await?;
            let code = text(&tenant["code"]);
            Ok(page(
                &format!("{verb} {code}?"),
                &console,
                html! {
                    p { (consequence) }
                    form.card method="post" action={ "/console/tenants/" (text(&tenant["id"])) "/" (route) } {
                        input type="hidden" name="csrf" value=(console.csrf);
                        @if route != "reactivate" {
                            label for="reason" { "Reason (kept in the audit trail)" }
                            input #reason type="text" name="reason" maxlength="500";
                        }
                        button type="submit" class={ @if route == "cancel" { "danger" } } { (verb) " " (code) }
                        " "
                        a href={ "/console/tenants/" (text(&tenant["id"])) } { "Back" }
                    }
                },
            ))
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// `POST /console/tenants/{id}/{action}`: the API's `POST /v1/tenants/{id}/{action}`.
pub async fn act(console: Console, Path((id, name)): Path<(String, String)>, Form(form): Form<ActionForm>) -> Response {
    if let Some(refused) = console.csrf_refusal(&form.csrf) {
        return refused;
    }
    or_error(
        async {
            let (route, _, _) = action(&name).ok_or_else(|| ApiError::not_found("action"))?;
            let reason = form.reason.trim();
            let body = if reason.is_empty() || route == "reactivate" { json!({}) } else { json!({ "reason": reason }) };
            let done = console.api(Method::POST, &format!("/v1/tenants/{}/{route}", encode(&id)), None, Some(body)).await?;
            Ok(Redirect::to(&format!("/console/tenants/{}", text(&done["id"]))).into_response())
        }
        .await,
    )
}

/// `GET /console/invoices/{id}`: a printable invoice.
pub async fn invoice(console: Console, Path(id): Path<String>) -> Response {
    or_error(
        async {
            let invoice = console.api(Method::GET, &format!("/v1/invoices/{}", encode(&id)), None, None).await?;
            let lines = invoice["lines"].as_array().cloned().unwrap_or_default();
            Ok(page(
                &format!("Invoice {}", text(&invoice["number"])),
                &console,
                html! {
                    article.invoice {
                        dl.facts {
                            div { dt { "Number" } dd #invoice-number { (text(&invoice["number"])) } }
                            div { dt { "Status" } dd { (text(&invoice["status"])) } }
                            div { dt { "Period" } dd { (text(&invoice["period_start"])) " – " (text(&invoice["period_end"])) } }
                            div { dt { "Issued" } dd { (text(&invoice["issued_at"])) } }
                            div { dt { "Due" } dd { (text(&invoice["due_at"])) } }
                            div { dt { "Paid" } dd { (text(&invoice["paid_at"])) } }
                        }
                        table {
                            thead { tr { th scope="col" { "Kind" } th scope="col" { "Description" } th scope="col" class="num" { "Quantity" } th scope="col" class="num" { "Unit price" } th scope="col" class="num" { "Amount" } } }
                            tbody {
                                @for l in &lines {
                                    tr { td { (text(&l["kind"])) } td { (text(&l["description"])) } td.num { (text(&l["quantity"])) } td.num { (text(&l["unit_price"])) } td.num { (text(&l["amount"])) } }
                                }
                            }
                            tfoot {
                                tr { th scope="row" colspan="4" { "Subtotal" } td.num { (text(&invoice["subtotal"])) } }
                                tr { th scope="row" colspan="4" { "Tax" } td.num { (text(&invoice["tax"])) } }
                                tr { th scope="row" colspan="4" { "Total (" (text(&invoice["currency"])) ")" } td.num #invoice-total { (text(&invoice["total"])) } }
                                tr { th scope="row" colspan="4" { "Credit applied" } td.num { (text(&invoice["credit_applied"])) } }
                                tr { th scope="row" colspan="4" { "Amount due" } td.num { (text(&invoice["amount_due"])) } }
                            }
                        }
                        p.no-print { a href={ "/console/tenants/" (text(&invoice["tenant_id"])) } { "Back to the tenant" } }
                    }
                },
            ))
        }
        .await,
    )
}

/// `GET /console/operations` (admin): projections with rebuild (refreshing while one builds),
/// the log head, leaders, and the billing run.
pub async fn operations(console: Console) -> Response {
    or_error(
        async {
            if !console.is_admin() {
                return Err(ApiError::forbidden("operations are the platform admin's"));
            }
            let runs = items(&console.api(Method::GET, "/v1/admin/projections", None, None).await?);
            let building = runs.iter().any(|r| r["status"] == "building");
            let head = runs.iter().filter_map(|r| r["head"].as_i64()).max().unwrap_or(0);
            let mut names: Vec<String> = runs.iter().map(|r| text(&r["name"])).collect();
            names.dedup();
            // Which instance (its sessions' application_name) holds each singleton job's lock.
            let mut jobs = vec!["billing-loop".to_owned(), "webhooks".to_owned(), "webhooks:quota".to_owned()];
            if let Some(relay) = &console.state.config().relay {
                jobs.push(format!("relay:{}", relay.stream));
            }
            let mut leaders = Vec::new();
            for job in &jobs {
                let holder = projections::leader::holder_since(console.state.pool(), job).await?;
                leaders.push((job.clone(), holder));
            }
            let mut response = page(
                "Operations",
                &console,
                html! {
                    @if building { p.notice role="status" { "A rebuild is running; this page refreshes every 2 seconds until it is live." } }
                    p { "Log head: position " strong #log-head { (head) } }
                    section aria-labelledby="projections" {
                        h2 #projections { "Projections" }
                        table #projection-runs {
                            thead { tr { th scope="col" { "Name" } th scope="col" { "Version" } th scope="col" { "Generation" } th scope="col" { "Status" } th scope="col" class="num" { "Position" } th scope="col" class="num" { "Lag" } th scope="col" { "Leader" } th scope="col" { "Last error" } } }
                            tbody {
                                @for r in &runs {
                                    tr {
                                        th scope="row" { (text(&r["name"])) }
                                        td.num { (text(&r["version"])) }
                                        td.num { (text(&r["generation"])) }
                                        td { span class={ "status " (text(&r["status"])) } { (text(&r["status"])) } }
                                        td.num { (text(&r["position"])) }
                                        td.num { (text(&r["lag"])) }
                                        td { (text(&r["leader"])) }
                                        td { (text(&r["last_error"])) }
                                    }
                                }
                            }
                        }
                        form.card method="post" action="/console/operations/rebuild" {
                            input type="hidden" name="csrf" value=(console.csrf);
                            label for="projection" { "Rebuild projection" }
                            select #projection name="name" {
                                option value="all" { "all" }
                                @for n in &names { option value=(n) { (n) } }
                            }
                            button type="submit" { "Rebuild" }
                        }
                    }
                    section aria-labelledby="jobs" {
                        h2 #jobs { "Jobs and their leaders" }
                        table {
                            thead { tr { th scope="col" { "Job" } th scope="col" { "Led by instance" } th scope="col" { "Since" } } }
                            tbody {
                                @for (job, holder) in &leaders {
                                    tr {
                                        th scope="row" { (job) }
                                        @if let Some((instance, since)) = holder {
                                            td { (instance) } td { @if let Some(s) = since { (s.to_rfc3339()) } }
                                        } @else { td { "nobody (waiting for an instance)" } td {} }
                                    }
                                }
                            }
                        }
                    }
                    section aria-labelledby="billing" {
                        h2 #billing { "Billing run" }
                        form.card method="post" action="/console/operations/billing-run" {
                            input type="hidden" name="csrf" value=(console.csrf);
                            label for="as_of" { "As of (RFC 3339, empty: now)" }
                            input #as_of type="text" name="as_of" placeholder="2027-01-01T00:00:00Z";
                            button type="submit" { "Run billing" }
                        }
                    }
                },
            );
            if building {
                response.headers_mut().insert("refresh", axum::http::HeaderValue::from_static("2"));
            }
            Ok(response)
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
pub struct RebuildForm {
    #[serde(default)]
    csrf: String,
    name: String,
}

/// `POST /console/operations/rebuild`: the API's rebuild.
pub async fn rebuild(console: Console, Form(form): Form<RebuildForm>) -> Response {
    if let Some(refused) = console.csrf_refusal(&form.csrf) {
        return refused;
    }
    or_error(
        async {
            console.api(Method::POST, &format!("/v1/admin/projections/{}/rebuild", encode(&form.name)), None, None).await?;
            Ok(Redirect::to("/console/operations").into_response())
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
pub struct BillingForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    as_of: String,
}

/// `POST /console/operations/billing-run`: the API's billing run, then its report.
pub async fn billing_run(console: Console, Form(form): Form<BillingForm>) -> Response {
    if let Some(refused) = console.csrf_refusal(&form.csrf) {
        return refused;
    }
    or_error(
        async {
            let as_of = form.as_of.trim();
            let body = if as_of.is_empty() { json!({}) } else { json!({ "as_of": as_of }) };
            let report = console.api(Method::POST, "/v1/admin/billing/run", None, Some(body)).await?;
            Ok(page(
                "Billing run",
                &console,
                html! {
                    p role="status" { "The billing run finished." }
                    pre { (serde_json::to_string_pretty(&report).unwrap_or_default()) }
                    p { a href="/console/operations" { "Back to operations" } }
                },
            ))
        }
        .await,
    )
}

#[derive(Debug, Deserialize, Default)]
pub struct EventsQuery {
    after: Option<i64>,
    tenant: Option<String>,
    aggregate_type: Option<String>,
    event_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// `GET /console/events`: the ordered log (the admin's, or the tenant's own), filtered by tenant,
/// aggregate type, event type and time, 50 to a page, with each event's payload and metadata.
pub async fn events(console: Console, Query(query): Query<EventsQuery>) -> Response {
    or_error(
        async {
            let after = query.after.unwrap_or(0).max(0);
            let tenant = match query.tenant.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                Some(t) if console.is_admin() => {
                    let found = console.api(Method::GET, &format!("/v1/tenants/{}", encode(t)), None, None).await?;
                    Some(text(&found["id"]).parse::<Uuid>().map_err(ApiError::internal)?)
                }
                _ => None,
            };
            let want = |q: &Option<String>| q.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
            let (aggregate_type, event_type, from, to) = (want(&query.aggregate_type), want(&query.event_type), want(&query.from), want(&query.to));
            // Read pages of the log until 50 events pass the filters (or 20 pages were read).
            let mut shown: Vec<Value> = Vec::new();
            let mut cursor = after;
            let mut more = true;
            for _ in 0..20 {
                let text_page = console.api_text(Method::GET, &format!("/v1/events?after={cursor}&limit=1000"), tenant, None).await?;
                let page: Vec<Value> = text_page.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
                more = page.len() == 1000;
                for event in page {
                    cursor = event["position"].as_i64().unwrap_or(cursor);
                    let recorded = text(&event["recorded_at"]);
                    let keep = aggregate_type.as_ref().is_none_or(|t| event["aggregate_type"] == t.as_str())
                        && event_type.as_ref().is_none_or(|t| event["event_type"] == t.as_str())
                        && from.as_ref().is_none_or(|f| recorded.as_str() >= f.as_str())
                        && to.as_ref().is_none_or(|t| recorded.as_str() < t.as_str());
                    if keep {
                        shown.push(event);
                        if shown.len() == 50 {
                            break;
                        }
                    }
                }
                if shown.len() == 50 || !more {
                    break;
                }
            }
            let next = (shown.len() == 50 || more).then_some(cursor);
            let keep_query = |name: &str, value: &Option<String>| value.as_ref().map(|v| format!("&{name}={}", encode(v))).unwrap_or_default();
            let filters = format!(
                "{}{}{}{}{}",
                keep_query("tenant", &query.tenant),
                keep_query("aggregate_type", &aggregate_type),
                keep_query("event_type", &event_type),
                keep_query("from", &from),
                keep_query("to", &to)
            );
            Ok(page(
                "Event log",
                &console,
                html! {
                    form.filters method="get" action="/console/events" {
                        @if console.is_admin() {
                            label for="tenant" { "Tenant (code or id)" }
                            input #tenant type="text" name="tenant" value=(query.tenant.clone().unwrap_or_default());
                        }
                        label for="aggregate_type" { "Aggregate type" }
                        input #aggregate_type type="text" name="aggregate_type" value=(aggregate_type.clone().unwrap_or_default());
                        label for="event_type" { "Event type" }
                        input #event_type type="text" name="event_type" value=(event_type.clone().unwrap_or_default());
                        label for="from" { "Recorded from" }
                        input #from type="text" name="from" placeholder="2027-01-01T00:00:00Z" value=(from.clone().unwrap_or_default());
                        label for="to" { "before" }
                        input #to type="text" name="to" placeholder="2027-02-01T00:00:00Z" value=(to.clone().unwrap_or_default());
                        button type="submit" { "Filter" }
                    }
                    table {
                        thead { tr { th scope="col" { "Position" } th scope="col" { "Recorded" } th scope="col" { "Aggregate" } th scope="col" { "Event" } th scope="col" { "Payload and metadata" } } }
                        tbody {
                            @for e in &shown {
                                tr {
                                    td.num { (text(&e["position"])) }
                                    td { (text(&e["recorded_at"])) }
                                    td { a href={ "/console/aggregates/" (text(&e["aggregate_type"])) "/" (encode(&text(&e["aggregate_id"]))) "?as_of=" (encode(&text(&e["recorded_at"]))) } { (text(&e["aggregate_type"])) " " (text(&e["aggregate_id"])) " #" (text(&e["sequence"])) } }
                                    td { (text(&e["event_type"])) }
                                    td { details { summary { "Show" } pre { (serde_json::to_string_pretty(&json!({"payload": e["payload"], "metadata": e["metadata"]})).unwrap_or_default()) } } }
                                }
                            }
                        }
                    }
                    @if let Some(next) = next {
                        p { a href={ "/console/events?after=" (next) (filters) } { "Next page" } }
                    }
                },
            ))
        }
        .await,
    )
}

#[derive(Debug, Deserialize, Default)]
pub struct AsOfQuery {
    as_of: Option<String>,
}

/// `GET /console/aggregates/{type}/{id}?as_of=`: an aggregate's state at a chosen time (the API's
/// replay).
pub async fn aggregate(console: Console, Path((kind, id)): Path<(String, String)>, Query(query): Query<AsOfQuery>) -> Response {
    or_error(
        async {
            let as_of = query.as_of.clone().unwrap_or_else(|| console.state.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            let state = console
                .api(Method::GET, &format!("/v1/aggregates/{}/{}?as_of={}", encode(&kind), encode(&id), encode(&as_of)), None, None)
                .await?;
            Ok(page(
                &format!("{kind} {id}"),
                &console,
                html! {
                    form.filters method="get" {
                        label for="as_of" { "As of" }
                        input #as_of type="text" name="as_of" value=(as_of);
                        button type="submit" { "Show" }
                    }
                    pre { (serde_json::to_string_pretty(&state).unwrap_or_default()) }
                },
            ))
        }
        .await,
    )
}
