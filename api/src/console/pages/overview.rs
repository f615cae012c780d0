//! The overview: the platform's revenue, churn and usage over time, and what needs a look now
//! (failing projections, suspended and past-due tenants, disabled webhook endpoints).

use super::*;

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
