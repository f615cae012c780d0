//! Operations: the projections with their lag and errors, which instance leads each singleton job,
//! rebuilds and billing runs started by hand.

use super::*;

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
