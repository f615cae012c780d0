//! Revenue: the platform's books month by month (billed, recognized, deferred), the deferred
//! revenue waterfall, and closing and reopening months through confirmed forms.

use super::*;

#[derive(Debug, Deserialize)]
pub struct RevenueQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

/// A decimal string as a number for a chart (display only: the table shows the exact amounts).
fn number(value: &Value) -> f64 {
    value.as_str().and_then(|s| s.parse().ok()).unwrap_or(0.0)
}

/// `GET /console/revenue?from&to` (admin): the month table, the waterfall, the close and reopen links.
pub async fn revenue(console: Console, Query(q): Query<RevenueQuery>) -> Response {
    or_error(
        async {
            if !console.is_admin() {
                return Err(ApiError::forbidden("the books are the platform admin's"));
            }
            let mut query = Vec::new();
            for (name, value) in [("from", &q.from), ("to", &q.to)] {
                if let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                    query.push(format!("{name}={}", encode(v)));
                }
            }
            let report = console.api(Method::GET, &format!("/v1/admin/revenue?{}", query.join("&")), None, None).await?;
            let months = report["months"].as_array().cloned().unwrap_or_default();
            let labels: Vec<String> = months.iter().map(|m| text(&m["month"])).collect();
            let column = |field: &str| months.iter().map(|m| number(&m[field])).collect::<Vec<f64>>();
            let chart = charts::waterfall(
                "Deferred revenue: billed in, recognized out",
                &labels,
                &column("deferred_opening"),
                &column("billed"),
                &column("recognized"),
            );
            let closed_through = report["closed_through"].as_str().map(str::to_owned);
            // The month that can be closed next: after the latest closed one, else the first shown.
            let next_to_close = match &closed_through {
                Some(last) => domain::billing::revenue_recognition::Month::parse(last, "month").ok().map(|m| m.next().to_string()),
                None => labels.first().cloned(),
            };
            let this_month = domain::billing::revenue_recognition::Month::of(console.state.now()).to_string();
            let totals = &report["totals"];
            Ok(page(
                "Revenue",
                &console,
                html! {
                    form.card method="get" action="/console/revenue" {
                        label for="from" { "From (YYYY-MM)" }
                        input #from type="text" name="from" value=(q.from.clone().unwrap_or_default()) placeholder="2027-01";
                        label for="to" { "To (YYYY-MM)" }
                        input #to type="text" name="to" value=(q.to.clone().unwrap_or_default()) placeholder="2027-12";
                        button type="submit" { "Show" }
                    }
                    p #closed-through {
                        @match &closed_through {
                            Some(m) => { "Closed through " strong { (m) } "." }
                            None => { "No month is closed." }
                        }
                        @if let Some(m) = next_to_close.as_ref().filter(|m| **m < this_month) {
                            " " a #close-link href={ "/console/revenue/close?month=" (m) } { "Close " (m) "…" }
                        }
                        @if let Some(m) = &closed_through {
                            " " a #reopen-link href={ "/console/revenue/reopen?month=" (m) } { "Reopen " (m) "…" }
                        }
                    }
                    figure { (PreEscaped(chart)) }
                    table #revenue-months {
                        caption { "Billed, recognized and deferred revenue per month (UTC); tax is never revenue" }
                        thead { tr {
                            th scope="col" { "Month" } th scope="col" class="num" { "Billed" } th scope="col" class="num" { "Recognized" }
                            th scope="col" class="num" { "Deferred at start" } th scope="col" class="num" { "Deferred at end" } th scope="col" { "Closed" }
                        } }
                        tbody {
                            @for m in &months {
                                tr {
                                    th scope="row" { (text(&m["month"])) }
                                    td.num { (text(&m["billed"])) }
                                    td.num { (text(&m["recognized"])) }
                                    td.num { (text(&m["deferred_opening"])) }
                                    td.num { (text(&m["deferred_closing"])) }
                                    td { (text(&m["closed"])) }
                                }
                            }
                        }
                        tfoot { tr {
                            th scope="row" { "Total" }
                            td.num { (text(&totals["billed"])) }
                            td.num { (text(&totals["recognized"])) }
                            td.num { (text(&totals["deferred_opening"])) }
                            td.num { (text(&totals["deferred_closing"])) }
                            td {}
                        } }
                    }
                    @if !labels.is_empty() {
                        form.card method="get" action="/console/revenue/journal" {
                            label for="journal-month" { "Journal of the month" }
                            select #journal-month name="month" {
                                @for m in labels.iter().rev() { option value=(m) selected[Some(m) == labels.iter().rev().find(|l| **l <= this_month)] { (m) } }
                            }
                            button type="submit" { "Show journal" }
                        }
                    }
                },
            ))
        }
        .await,
    )
}

/// `GET /console/revenue/journal?month=` (admin): the month's double-entry journal, with its CSV.
pub async fn journal(console: Console, Query(q): Query<MonthQuery>) -> Response {
    or_error(
        async {
            if !console.is_admin() {
                return Err(ApiError::forbidden("the books are the platform admin's"));
            }
            let journal = console.api(Method::GET, &format!("/v1/admin/revenue/journal?month={}", encode(q.month.trim())), None, None).await?;
            let month = text(&journal["month"]);
            let lines = journal["lines"].as_array().cloned().unwrap_or_default();
            Ok(page(
                &format!("Journal {month}"),
                &console,
                html! {
                    p { a #journal-csv href={ "/console/revenue/journal.csv?month=" (month) } download { "Download as CSV" } " · " a href="/console/revenue" { "Back to revenue" } }
                    table #journal-lines {
                        caption { "Debits equal credits for every invoice and for the month" }
                        thead { tr {
                            th scope="col" { "Date" } th scope="col" { "Account" } th scope="col" class="num" { "Debit" } th scope="col" class="num" { "Credit" }
                            th scope="col" { "Invoice" } th scope="col" { "Memo" }
                        } }
                        tbody {
                            @for l in &lines {
                                tr {
                                    td { (text(&l["date"])) } td { (text(&l["account"])) } td.num { (text(&l["debit"])) } td.num { (text(&l["credit"])) }
                                    td { a href={ "/console/invoices/" (text(&l["invoice_id"])) } { (text(&l["invoice_id"])) } } td { (text(&l["memo"])) }
                                }
                            }
                        }
                        tfoot { tr {
                            th scope="row" colspan="2" { "Total" } td.num { (text(&journal["total_debit"])) } td.num { (text(&journal["total_credit"])) } td {} td {}
                        } }
                    }
                },
            ))
        }
        .await,
    )
}

/// `GET /console/revenue/journal.csv?month=` (admin): the journal as the API's CSV.
pub async fn journal_csv(console: Console, Query(q): Query<MonthQuery>) -> Response {
    or_error(
        async {
            if !console.is_admin() {
                return Err(ApiError::forbidden("the books are the platform admin's"));
            }
            let journal =
                console.api(Method::GET, &format!("/v1/admin/revenue/journal?month={}", encode(q.month.trim())), None, None).await?;
            let month = text(&journal["month"]);
            let mut body = String::from("date,account,debit,credit,invoice_id,tenant_id,memo\r\n");
            for l in journal["lines"].as_array().cloned().unwrap_or_default() {
                let field = |name: &str| l[name].as_str().map(str::to_owned).unwrap_or_default();
                body.push_str(&format!(
                    "{},{},{},{},{},{},{}\r\n",
                    field("date"),
                    field("account"),
                    field("debit"),
                    field("credit"),
                    field("invoice_id"),
                    field("tenant_id"),
                    crate::routes::revenue::csv_field(&field("memo"))
                ));
            }
            let disposition = format!("attachment; filename=\"journal-{month}.csv\"");
            Ok((
                axum::http::StatusCode::OK,
                [
                    (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (axum::http::header::CONTENT_DISPOSITION, disposition),
                ],
                body,
            )
                .into_response())
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
pub struct MonthQuery {
    #[serde(default)]
    month: String,
}

/// `GET /console/revenue/{close|reopen}?month=`: the confirmation step.
pub async fn confirm_books(console: Console, Path(action): Path<String>, Query(q): Query<MonthQuery>) -> Response {
    or_error(
        async {
            if !console.is_admin() {
                return Err(ApiError::forbidden("the books are the platform admin's"));
            }
            let month = domain::billing::revenue_recognition::Month::parse(q.month.trim(), "month")
                .map_err(|e| ApiError::validation(&e.field, e.message))?
                .to_string();
            let (verb, consequence) = match action.as_str() {
                "close" => {
                    ("Close", "Its figures will never change again: anything that would change them is booked in the first open month.")
                }
                "reopen" => ("Reopen", "Its figures can change again until it is closed anew. The reason is kept in the audit trail."),
                _ => return Err(ApiError::not_found("action")),
            };
            Ok(page(
                &format!("{verb} {month}?"),
                &console,
                html! {
                    p { (consequence) }
                    form.card method="post" action={ "/console/revenue/" (action) } {
                        input type="hidden" name="csrf" value=(console.csrf);
                        input type="hidden" name="month" value=(month);
                        @if action == "reopen" {
                            label for="reason" { "Reason (kept in the audit trail)" }
                            input #reason type="text" name="reason" maxlength="500" required;
                        }
                        button type="submit" { (verb) " " (month) }
                        " "
                        a href="/console/revenue" { "Back" }
                    }
                },
            ))
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
pub struct BooksForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    month: String,
    #[serde(default)]
    reason: String,
}

/// `POST /console/revenue/{close|reopen}`: the API's close or reopen, then the books.
pub async fn act_books(console: Console, Path(action): Path<String>, Form(form): Form<BooksForm>) -> Response {
    if let Some(refused) = console.csrf_refusal(&form.csrf) {
        return refused;
    }
    or_error(
        async {
            let body = match action.as_str() {
                "close" => json!({ "month": form.month.trim() }),
                "reopen" => json!({ "month": form.month.trim(), "reason": form.reason }),
                _ => return Err(ApiError::not_found("action")),
            };
            console.api(Method::POST, &format!("/v1/admin/revenue/{action}"), None, Some(body)).await?;
            Ok(Redirect::to("/console/revenue").into_response())
        }
        .await,
    )
}
