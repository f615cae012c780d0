//! The log: events in global order with filters, and an aggregate's state replayed as of an
//! instant.

use super::*;

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
