//! Tenants: the list (paged through the API, or searched by code or name), one tenant with its
//! subscription, invoices, usage and members, its lifecycle actions behind a confirmation, and an
//! invoice.

use super::*;

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
                        caption { (rows.len()) @if rows.len() == 1 { " tenant" } @else { " tenants" } " on this page" }
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
            let corrections = items(&console.api(Method::GET, "/v1/audit?aggregate_type=UsageCorrection&limit=20", scope, None).await?);
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
                    section aria-labelledby="corrections" {
                        h2 #corrections { "Usage corrections" }
                        @if corrections.is_empty() { p { "None." } } @else {
                            table #usage-corrections {
                                thead { tr { th scope="col" { "When" } th scope="col" { "Correction" } th scope="col" { "By" } } }
                                tbody { @for c in &corrections { tr { td { (text(&c["occurred_at"])) } td { (text(&c["summary"])) } td { (text(&c["actor"])) } } } }
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
pub(super) fn action(name: &str) -> Option<(&'static str, &'static str, &'static str)> {
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
