//! Price simulations: every subscription's real history re-billed under a candidate catalog
//! (`domain::subscription::simulation`), summed as the invoices really issued against the
//! invoices the candidate issues, in a window.
//!
//! Reads only: the `Subscription` streams of the log (by primary key, a chunk of streams per
//! statement), the usage facts billing reads (`rm.usage_records`), and, for the limits, the
//! members and bookings read models. Everything is computed in memory, a chunk of
//! subscriptions at a time; nothing is written and no lock is taken that live traffic needs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use cqrs_es::persist::SerializedEvent;
use domain::billing::money::format;
use domain::plan::Plan;
use domain::subscription::simulation::{replay, CandidateCatalog, IssuedInvoice, RecordedEvent, Replayed, UsageFact};
use domain::subscription::SubscriptionEvent;
use futures::StreamExt;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

pub mod store;

/// Subscriptions read and re-billed per round.
const CHUNK: usize = 500;

/// How many refused commands a result lists (it counts them all).
const REFUSALS_LISTED: usize = 100;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulationInput {
    /// Invoices issued at or after this instant count.
    pub from: DateTime<Utc>,
    /// Invoices issued before this instant count.
    pub to: DateTime<Utc>,
    /// The candidate plans (each stands for every version of its code).
    pub plans: Vec<Plan>,
    /// Only these tenants (`None`: all).
    pub tenants: Option<Vec<Uuid>>,
}

/// Actual, simulated and their difference, as money strings.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema, PartialEq, Eq)]
#[schema(as = SimulationFigures)]
pub struct Figures {
    /// The sum of the subtotals of the invoices really issued.
    #[schema(pattern = r"^-?[0-9]+\.[0-9]{2}$", example = "29.00")]
    pub actual: String,
    /// The same sum under the candidate catalog.
    #[schema(pattern = r"^-?[0-9]+\.[0-9]{2}$", example = "29.00")]
    pub simulated: String,
    /// `simulated - actual`.
    #[schema(pattern = r"^-?[0-9]+\.[0-9]{2}$", example = "29.00")]
    pub difference: String,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    actual: Decimal,
    simulated: Decimal,
}

impl Sums {
    fn figures(self) -> Figures {
        Figures { actual: format(self.actual), simulated: format(self.simulated), difference: format(self.simulated - self.actual) }
    }
}

/// One month's figures (by the invoices' issue date, UTC).
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = SimulationMonth)]
pub struct MonthFigures {
    /// `YYYY-MM`.
    #[schema(pattern = r"^[0-9]{4}-[0-9]{2}$")]
    pub month: String,
    /// The figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// One plan's figures (the plan the subscription was on when the invoice was issued).
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = SimulationPlan)]
pub struct PlanFigures {
    /// The plan code.
    pub plan: String,
    /// The figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// One tenant's figures.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = SimulationTenant)]
pub struct TenantFigures {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Its code.
    pub code: String,
    /// The figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// Facts that really happened but that a candidate plan's lower limit would have refused.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = SimulationOverLimit)]
pub struct OverLimit {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Its code.
    pub code: String,
    /// The limit (`users`, `bookings_per_month`).
    pub metric: String,
    /// The candidate plan's limit (with the tenant's extra users, for `users`).
    pub limit: u64,
    /// What was really used (the most members at once; bookings created in the month).
    pub used: u64,
    /// The month, for monthly limits (`YYYY-MM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[0-9]{4}-[0-9]{2}$")]
    pub month: Option<String>,
}

/// A command of the real history that the simulated state refused (skipped).
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = SimulationRefusal)]
pub struct Refusal {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Why.
    pub reason: String,
}

/// A simulation's result.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SimulationResult {
    /// Over every tenant.
    pub totals: Figures,
    /// Per month of issue.
    pub by_month: Vec<MonthFigures>,
    /// Per plan.
    pub by_plan: Vec<PlanFigures>,
    /// Per tenant (tenants with an invoice in the window, real or simulated).
    pub by_tenant: Vec<TenantFigures>,
    /// Real facts beyond a candidate plan's limits.
    pub over_limit: Vec<OverLimit>,
    /// Subscriptions re-billed.
    pub subscriptions: usize,
    /// Invoices really issued in the window.
    pub invoices_actual: usize,
    /// Invoices the candidate catalog issues in the window.
    pub invoices_simulated: usize,
    /// How many real commands the simulated state refused.
    pub refused_commands: usize,
    /// The first of them.
    pub refused: Vec<Refusal>,
}

/// Why a simulation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    /// Reading the log or the read models failed.
    #[error("reading the history: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored event could not be read.
    #[error("event at position {position}: {message}")]
    Event {
        /// Where.
        position: i64,
        /// What.
        message: String,
    },
}

/// Runs a simulation, telling `progress` how many subscriptions of how many are done after
/// each chunk.
pub async fn simulate(
    pool: &PgPool,
    input: &SimulationInput,
    progress: &(dyn Fn(usize, usize) + Send + Sync),
) -> Result<SimulationResult, SimulationError> {
    // Usage is aggregated by the real catalog's metric definitions, as billing aggregates it.
    let definitions: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT payload FROM events WHERE aggregate_type = 'Metric' AND sequence = 1").fetch_all(pool).await?;
    let definitions = definitions.into_iter().filter_map(|payload| {
        serde_json::from_value::<domain::usage::metrics::MetricEvent>(payload).ok().map(|e| match e {
            domain::usage::metrics::MetricEvent::MetricDefined { metric, .. } => metric,
        })
    });
    let catalog = CandidateCatalog::new(input.plans.iter().cloned()).with_metrics(definitions);
    let ids: Vec<String> = match &input.tenants {
        None => {
            sqlx::query_scalar(
                "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = 'Subscription' AND position IS NOT NULL ORDER BY 1",
            )
            .fetch_all(pool)
            .await?
        }
        Some(tenants) => {
            sqlx::query_scalar(
                "SELECT DISTINCT aggregate_id FROM events
                 WHERE tenant_id = ANY($1) AND aggregate_type = 'Subscription' AND position IS NOT NULL ORDER BY 1",
            )
            .bind(tenants)
            .fetch_all(pool)
            .await?
        }
    };
    let total = ids.len();
    progress(0, total);
    let mut report = Report::new(input);
    let mut done = 0;
    for chunk in ids.chunks(CHUNK) {
        let streams = load_streams(pool, chunk).await?;
        let tenants: Vec<Uuid> = streams.keys().copied().collect();
        let mut metrics: BTreeSet<String> = ["api_calls", "sms"].into_iter().map(str::to_owned).collect();
        for plan in &input.plans {
            metrics.extend(plan.charges.iter().map(|c| c.metric.clone()));
        }
        for events in streams.values() {
            for recorded in events {
                if let SubscriptionEvent::SubscriptionStarted { plan, .. } | SubscriptionEvent::PlanChanged { plan, .. } = &recorded.event {
                    metrics.extend(plan.charges.iter().map(|c| c.metric.clone()));
                }
            }
        }
        let mut facts = load_facts(pool, &tenants, &metrics.into_iter().collect::<Vec<_>>()).await?;
        // Chunks are re-billed side by side (each subscription on its own).
        let replays: Vec<Replayed> = futures::stream::iter(streams)
            .map(|(tenant_id, events)| {
                let facts: Arc<[UsageFact]> = facts.remove(&tenant_id).unwrap_or_default().into();
                let catalog = &catalog;
                async move { replay(events, facts, catalog).await }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        report.over_limits(pool, &catalog, &replays).await?;
        for replayed in replays {
            report.add(replayed);
        }
        done += chunk.len();
        progress(done, total);
    }
    report.subscriptions = total;
    Ok(report.finish())
}

/// The subscription streams of `ids`, by tenant: each stream's events in order.
async fn load_streams(pool: &PgPool, ids: &[String]) -> Result<BTreeMap<Uuid, Vec<RecordedEvent>>, SimulationError> {
    type Row = (String, String, String, serde_json::Value, serde_json::Value, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT aggregate_id, event_type, event_version, payload, metadata, position FROM events
         WHERE aggregate_type = 'Subscription' AND aggregate_id = ANY($1) AND position IS NOT NULL
         ORDER BY aggregate_id, sequence",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let upcasters = domain::upcasting::upcasters();
    let mut streams: BTreeMap<String, Vec<RecordedEvent>> = BTreeMap::new();
    for (aggregate_id, event_type, event_version, payload, metadata, position) in rows {
        let serialized = SerializedEvent::new(
            aggregate_id.clone(),
            0,
            "Subscription".into(),
            event_type,
            event_version,
            payload,
            serde_json::Value::Null,
        );
        let lifted = domain::upcasting::upcast(serialized, &upcasters);
        let event: SubscriptionEvent =
            serde_json::from_value(lifted.payload).map_err(|e| SimulationError::Event { position, message: e.to_string() })?;
        let field = |name: &str| metadata.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let at = field("occurred_at").and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
        let command = field("command");
        streams.entry(aggregate_id).or_default().push(RecordedEvent { event, position, commit: metadata.to_string(), command, at });
    }
    // By tenant (a stream without its start is not a subscription yet).
    Ok(streams
        .into_values()
        .filter_map(|events| {
            let tenant = events.iter().find_map(|r| match &r.event {
                SubscriptionEvent::SubscriptionStarted { tenant_id, .. } => Some(*tenant_id),
                _ => None,
            })?;
            Some((tenant, events))
        })
        .collect())
}

/// A fact's corrections: from each position on, what it counts (`None`: void).
type Changes = Vec<(i64, Option<domain::subscription::simulation::Counted>)>;

/// The usage facts of `tenants` on `metrics`, by tenant, in log order (a batch's facts in
/// their order), each with its corrections, so that a replay sees every fact as the billing
/// meter saw it at each point of the log: a corrected fact as recorded until its first
/// correction, then as each correction left it (a void one not at all); a void fact has left
/// `usage_records` and is taken from its corrections.
async fn load_facts(pool: &PgPool, tenants: &[Uuid], metrics: &[String]) -> Result<HashMap<Uuid, Vec<UsageFact>>, sqlx::Error> {
    type Correction =
        (Uuid, String, String, DateTime<Utc>, Option<i64>, Option<i32>, String, Decimal, Decimal, Option<String>, Option<String>, i64);
    let corrections: Vec<Correction> = sqlx::query_as(
        "SELECT tenant_id, idempotency_key, metric, occurred_at, fact_position, fact_item, correction, previous_quantity, quantity,
                previous_value, value, position
         FROM rm.usage_corrections WHERE tenant_id = ANY($1) AND metric = ANY($2) ORDER BY position",
    )
    .bind(tenants)
    .bind(metrics)
    .fetch_all(pool)
    .await?;
    // Per corrected fact: as recorded (the first correction's previous state) and its changes.
    let mut corrected: HashMap<(Uuid, String), (Correction, Changes)> = HashMap::new();
    for c in &corrections {
        let (tenant, key, .., correction, _, quantity, _, value, position) = c;
        let entry = corrected.entry((*tenant, key.clone())).or_insert_with(|| (c.clone(), Vec::new()));
        entry.1.push((*position, (correction == "amend").then(|| (*quantity, value.clone()))));
    }
    let mut rows = sqlx::query_as::<_, (Uuid, String, Decimal, Option<String>, DateTime<Utc>, i64, i32, String)>(
        "SELECT tenant_id, metric, quantity, value, occurred_at, position, item, idempotency_key FROM rm.usage_records
         WHERE tenant_id = ANY($1) AND metric = ANY($2)
         ORDER BY position, item",
    )
    .bind(tenants)
    .bind(metrics)
    .fetch(pool);
    let mut facts: HashMap<Uuid, Vec<UsageFact>> = HashMap::new();
    while let Some(row) = rows.next().await {
        let (tenant_id, metric, quantity, value, occurred_at, position, item, key) = row?;
        let fact = match corrected.remove(&(tenant_id, key)) {
            // As recorded, then as corrected.
            Some((first, changes)) => {
                let (.., previous_quantity, _, previous_value, _, _) = first;
                UsageFact { metric, quantity: previous_quantity, value: previous_value, occurred_at, position, item, corrections: changes }
            }
            None => UsageFact { metric, quantity, value, occurred_at, position, item, corrections: Vec::new() },
        };
        facts.entry(tenant_id).or_default().push(fact);
    }
    drop(rows);
    // Void facts, no longer in `usage_records`.
    for ((tenant_id, _), (first, changes)) in corrected {
        let (_, _, metric, occurred_at, fact_position, fact_item, _, previous_quantity, _, previous_value, _, _) = first;
        if let Some(position) = fact_position {
            let fact = UsageFact {
                metric,
                quantity: previous_quantity,
                value: previous_value,
                occurred_at,
                position,
                item: fact_item.unwrap_or(1),
                corrections: changes,
            };
            facts.entry(tenant_id).or_default().push(fact);
        }
    }
    Ok(facts
        .into_iter()
        .map(|(tenant, mut list)| {
            list.sort_by_key(|f| (f.position, f.item));
            (tenant, list)
        })
        .collect())
}

/// The sums as they are gathered.
struct Report {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    totals: Sums,
    by_month: BTreeMap<String, Sums>,
    by_plan: BTreeMap<String, Sums>,
    by_tenant: BTreeMap<(String, Uuid), Sums>,
    over_limit: Vec<OverLimit>,
    subscriptions: usize,
    invoices_actual: usize,
    invoices_simulated: usize,
    refused_commands: usize,
    refused: Vec<Refusal>,
}

fn month_of(at: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", at.year(), at.month())
}

impl Report {
    fn new(input: &SimulationInput) -> Self {
        Self {
            from: input.from,
            to: input.to,
            totals: Sums::default(),
            by_month: BTreeMap::new(),
            by_plan: BTreeMap::new(),
            by_tenant: BTreeMap::new(),
            over_limit: Vec::new(),
            subscriptions: 0,
            invoices_actual: 0,
            invoices_simulated: 0,
            refused_commands: 0,
            refused: Vec::new(),
        }
    }

    fn add(&mut self, replayed: Replayed) {
        let Some(tenant_id) = replayed.tenant_id else { return };
        let (from, to) = (self.from, self.to);
        let in_window = |invoice: &&IssuedInvoice| invoice.issued_at >= from && invoice.issued_at < to;
        for (invoices, simulated) in [(&replayed.actual, false), (&replayed.simulated, true)] {
            for invoice in invoices.iter().filter(in_window) {
                let month = month_of(invoice.issued_at);
                for sums in [
                    &mut self.totals,
                    self.by_month.entry(month).or_default(),
                    self.by_plan.entry(invoice.plan.clone()).or_default(),
                    self.by_tenant.entry((replayed.tenant_code.clone(), tenant_id)).or_default(),
                ] {
                    if simulated {
                        sums.simulated += invoice.subtotal;
                    } else {
                        sums.actual += invoice.subtotal;
                    }
                }
                if simulated {
                    self.invoices_simulated += 1;
                } else {
                    self.invoices_actual += 1;
                }
            }
        }
        self.refused_commands += replayed.refused.len();
        for reason in replayed.refused {
            if self.refused.len() < REFUSALS_LISTED {
                self.refused.push(Refusal { tenant_id, reason });
            }
        }
    }

    /// The real facts of these tenants beyond their candidate plan's seat and booking limits.
    async fn over_limits(&mut self, pool: &PgPool, catalog: &CandidateCatalog, replays: &[Replayed]) -> Result<(), sqlx::Error> {
        // The candidate plan in effect at an instant, if the catalog names it.
        let plan_at = |replayed: &Replayed, at: DateTime<Utc>| {
            let code = replayed.plans.iter().rev().find(|(from, _)| *from <= at).or(replayed.plans.first()).map(|(_, c)| c.clone())?;
            catalog.plan(&code).cloned()
        };
        let limited: Vec<&Replayed> =
            replays.iter().filter(|r| r.tenant_id.is_some() && r.plans.iter().any(|(_, code)| catalog.plan(code).is_some())).collect();
        if limited.is_empty() {
            return Ok(());
        }
        let tenants: Vec<Uuid> = limited.iter().filter_map(|r| r.tenant_id).collect();
        let by_id: HashMap<Uuid, &Replayed> = limited.iter().map(|r| (r.tenant_id.expect("filtered"), *r)).collect();
        // Bookings created per calendar month.
        let months: Vec<(Uuid, DateTime<Utc>, i64)> = sqlx::query_as(
            "SELECT tenant_id, date_trunc('month', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', count(*)
             FROM rm.bookings WHERE tenant_id = ANY($1) AND created_at >= $2 AND created_at < $3
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(&tenants)
        .bind(self.from)
        .bind(self.to)
        .fetch_all(pool)
        .await?;
        for (tenant_id, month, used) in months {
            let replayed = by_id[&tenant_id];
            let month_end = month.checked_add_months(chrono::Months::new(1)).unwrap_or(month);
            let at = month_end.min(self.to) - chrono::Duration::microseconds(1);
            let Some(limit) = plan_at(replayed, at).and_then(|p| p.limits.bookings_per_month) else { continue };
            if used as u64 > limit {
                self.over_limit.push(OverLimit {
                    tenant_id,
                    code: replayed.tenant_code.clone(),
                    metric: "bookings_per_month".into(),
                    limit,
                    used: used as u64,
                    month: Some(month_of(month)),
                });
            }
        }
        // Seats: the most members at once in the window.
        let members: Vec<(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT tenant_id, invited_at, removed_at FROM rm.members
             WHERE tenant_id = ANY($1) AND invited_at < $3 AND (removed_at IS NULL OR removed_at > $2)",
        )
        .bind(&tenants)
        .bind(self.from)
        .bind(self.to)
        .fetch_all(pool)
        .await?;
        let mut spans: BTreeMap<Uuid, Vec<(DateTime<Utc>, i64)>> = BTreeMap::new();
        for (tenant_id, invited_at, removed_at) in members {
            let steps = spans.entry(tenant_id).or_default();
            steps.push((invited_at.max(self.from), 1));
            if let Some(removed_at) = removed_at {
                steps.push((removed_at, -1));
            }
        }
        for (tenant_id, mut steps) in spans {
            steps.sort();
            let (mut now, mut peak, mut peak_at) = (0i64, 0i64, self.from);
            for (at, step) in steps {
                now += step;
                if now > peak {
                    (peak, peak_at) = (now, at);
                }
            }
            let replayed = by_id[&tenant_id];
            let Some(users) = plan_at(replayed, peak_at).and_then(|p| p.limits.users) else { continue };
            let extra = replayed.extra_users.iter().rev().find(|(from, _)| *from <= peak_at).map_or(0, |(_, n)| *n);
            let limit = users + u64::from(extra);
            if peak as u64 > limit {
                self.over_limit.push(OverLimit {
                    tenant_id,
                    code: replayed.tenant_code.clone(),
                    metric: "users".into(),
                    limit,
                    used: peak as u64,
                    month: None,
                });
            }
        }
        Ok(())
    }

    fn finish(self) -> SimulationResult {
        SimulationResult {
            totals: self.totals.figures(),
            by_month: self.by_month.into_iter().map(|(month, s)| MonthFigures { month, figures: s.figures() }).collect(),
            by_plan: self.by_plan.into_iter().map(|(plan, s)| PlanFigures { plan, figures: s.figures() }).collect(),
            by_tenant: self
                .by_tenant
                .into_iter()
                .map(|((code, tenant_id), s)| TenantFigures { tenant_id, code, figures: s.figures() })
                .collect(),
            over_limit: self.over_limit,
            subscriptions: self.subscriptions,
            invoices_actual: self.invoices_actual,
            invoices_simulated: self.invoices_simulated,
            refused_commands: self.refused_commands,
            refused: self.refused,
        }
    }
}
