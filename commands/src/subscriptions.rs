//! Subscription commands, and the usage meter the aggregate bills arrears with.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use domain::billing::period::Period;
use domain::subscription::{
    BillableUsage, BoxFuture, Reading, Subscription, SubscriptionCommand, SubscriptionError, SubscriptionEvent, SubscriptionStatus,
    UsageMeter,
};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::metrics::MetricDefinitions;

use crate::store::Decided;
use crate::{AggregateStore, CommandContext, CommandError, Committed};

/// Reads a tenant's billable usage in a period from the usage read model (`rm.usage_records`,
/// one row per accepted usage fact), each metric aggregated by its definition (see
/// [`MetricDefinitions`]) and rounded once. The billing run waits for the read models to catch
/// up before it runs, so the figures include every fact recorded before it.
#[derive(Debug, Clone)]
pub struct PgUsageMeter {
    pool: PgPool,
    definitions: Arc<MetricDefinitions>,
}

impl PgUsageMeter {
    /// A meter over `pool`.
    pub fn new(pool: PgPool) -> Arc<Self> {
        Self::with_definitions(pool.clone(), MetricDefinitions::new(pool))
    }

    /// A meter over `pool` aggregating by `definitions` (the process's, shared).
    pub fn with_definitions(pool: PgPool, definitions: Arc<MetricDefinitions>) -> Arc<Self> {
        Arc::new(Self { pool, definitions })
    }

    /// Each metric's figure from its parts (see [`MetricDefinition::figure_of`]).
    async fn figures(&self, rows: Vec<(i64, String, Parts)>) -> Result<Vec<(i64, String, Decimal)>, String> {
        let codes: Vec<&str> = rows.iter().map(|(_, m, _)| m.as_str()).collect::<HashSet<_>>().into_iter().collect();
        // `resolve` answers every code asked (an undefined one with its implicit definition).
        let definitions = self.definitions.resolve(&codes).await.map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .map(|(i, metric, (sum, max, last, distinct))| {
                let figure = definitions[&metric].figure_of(sum, max, last, distinct);
                (i, metric, figure)
            })
            .collect())
    }
}

/// A metric's parts in a period: the sum, the largest, the latest and the distinct values.
type Parts = (Decimal, Option<Decimal>, Option<Decimal>, i64);

/// A period's index, a metric and its parts, as a statement answers them.
type PartsRow = (i64, String, Decimal, Option<Decimal>, Option<Decimal>, i64);

/// The parts of each metric and period (`p.i`) as one statement's columns.
const PARTS: &str = "sum(r.quantity), max(r.quantity),
                     (array_agg(r.quantity ORDER BY r.occurred_at DESC, r.position DESC, r.item DESC))[1],
                     count(DISTINCT r.value) FILTER (WHERE r.value IS NOT NULL)";

/// A whole count (the built-ins' sums, precision 0, halves up).
fn whole(d: Decimal) -> u64 {
    d.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero).to_u64().unwrap_or(0)
}

impl UsageMeter for PgUsageMeter {
    fn billable_usage(&self, tenant_id: Uuid, period: Period) -> BoxFuture<'_, Result<BillableUsage, String>> {
        Box::pin(async move {
            let (api_calls, sms): (Decimal, Decimal) = sqlx::query_as(
                "SELECT coalesce(sum(quantity) FILTER (WHERE metric = 'api_calls'), 0),
                        coalesce(sum(quantity) FILTER (WHERE metric = 'sms'), 0)
                 FROM rm.usage_records
                 WHERE tenant_id = $1 AND metric IN ('api_calls', 'sms') AND occurred_at >= $2 AND occurred_at < $3",
            )
            .bind(tenant_id)
            .bind(period.start)
            .bind(period.end)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
            Ok(BillableUsage { api_calls: whole(api_calls), sms: whole(sms) })
        })
    }

    fn metered(&self, tenant_id: Uuid, period: Period, metrics: Vec<String>) -> BoxFuture<'_, Result<BTreeMap<String, Decimal>, String>> {
        Box::pin(async move {
            let rows: Vec<PartsRow> = sqlx::query_as(&format!(
                "SELECT 1::bigint, r.metric, {PARTS}
                 FROM rm.usage_records r
                 WHERE r.tenant_id = $1 AND r.metric = ANY($2) AND r.occurred_at >= $3 AND r.occurred_at < $4
                 GROUP BY r.metric"
            ))
            .bind(tenant_id)
            .bind(&metrics)
            .bind(period.start)
            .bind(period.end)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
            let rows = rows.into_iter().map(|(i, m, sum, max, last, distinct)| (i, m, (sum, max, last, distinct))).collect();
            Ok(self.figures(rows).await?.into_iter().map(|(_, metric, figure)| (metric, figure)).collect())
        })
    }

    fn readings(&self, tenant_id: Uuid, periods: Vec<Period>, metrics: Vec<String>) -> BoxFuture<'_, Result<Vec<Reading>, String>> {
        Box::pin(async move {
            // One statement for every period: per period and metric the parts its definition's
            // figure is made of (as `metered` answers); the built-ins are their sums (as
            // `billable_usage` answers).
            let starts: Vec<_> = periods.iter().map(|p| p.start).collect();
            let ends: Vec<_> = periods.iter().map(|p| p.end).collect();
            let mut asked = metrics.clone();
            for builtin in ["api_calls", "sms"] {
                if !asked.iter().any(|m| m == builtin) {
                    asked.push(builtin.to_owned());
                }
            }
            let rows: Vec<PartsRow> = sqlx::query_as(&format!(
                "SELECT p.i, r.metric, {PARTS}
                 FROM unnest($2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY AS p(s, e, i)
                 JOIN rm.usage_records r ON r.tenant_id = $1 AND r.metric = ANY($4) AND r.occurred_at >= p.s AND r.occurred_at < p.e
                 GROUP BY p.i, r.metric"
            ))
            .bind(tenant_id)
            .bind(&starts)
            .bind(&ends)
            .bind(&asked)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
            let mut readings: Vec<Reading> =
                periods.into_iter().map(|period| Reading { period, usage: BillableUsage::default(), metered: BTreeMap::new() }).collect();
            let mut parts = Vec::new();
            for (i, metric, sum, max, last, distinct) in rows {
                let reading = &mut readings[(i - 1) as usize];
                match metric.as_str() {
                    "api_calls" => reading.usage.api_calls = whole(sum),
                    "sms" => reading.usage.sms = whole(sum),
                    _ => {}
                }
                if metrics.contains(&metric) {
                    parts.push((i, metric, (sum, max, last, distinct)));
                }
            }
            for (i, metric, figure) in self.figures(parts).await? {
                readings[(i - 1) as usize].metered.insert(metric, figure);
            }
            Ok(readings)
        })
    }
}

/// The subscription command service.
pub struct Subscriptions {
    store: AggregateStore<Subscription>,
}

impl Subscriptions {
    /// Wraps the Subscription aggregate's store.
    pub fn new(store: AggregateStore<Subscription>) -> Self {
        Self { store }
    }

    /// Runs a command on subscription `id`.
    pub async fn execute(
        &self,
        id: Uuid,
        command: SubscriptionCommand,
        context: &CommandContext,
    ) -> Result<Committed<Subscription>, CommandError<SubscriptionError>> {
        let context = CommandContext { command: Some(command.name()), ..context.clone() };
        self.store.execute(&id.to_string(), command, &context).await
    }

    /// [`Self::execute`] on a subscription believed new (a sign-up's, its id just made): no
    /// load first; if the stream exists after all, the store decides again on its real state.
    pub async fn execute_new(
        &self,
        id: Uuid,
        command: SubscriptionCommand,
        context: &CommandContext,
    ) -> Result<Committed<Subscription>, CommandError<SubscriptionError>> {
        let context = CommandContext { command: Some(command.name()), ..context.clone() };
        self.store.execute_new(&id.to_string(), command, &context).await
    }

    /// Decides `command` on the new subscription `id` without appending it (a sign-up appends
    /// it together with its tenant's first events).
    pub async fn decide_new(
        &self,
        id: Uuid,
        command: SubscriptionCommand,
        context: &CommandContext,
    ) -> Result<Option<Decided<Subscription>>, CommandError<SubscriptionError>> {
        let context = CommandContext { command: Some(command.name()), ..context.clone() };
        self.store.decide_new(&id.to_string(), command, &context).await
    }

    /// The Subscription aggregate's store.
    pub fn store(&self) -> &AggregateStore<Subscription> {
        &self.store
    }

    /// The subscription's current state.
    pub async fn load(&self, id: Uuid) -> Result<Option<Subscription>, CommandError<SubscriptionError>> {
        Ok(self.store.load(&id.to_string()).await?.map(|(state, _)| state))
    }

    /// The invoice the next period start (or trial end) would issue if nothing changed: the
    /// billing run's own decision, taken on the current state up to that instant and not
    /// appended (usage so far, late usage, a pending change, credit, tax). `None` when nothing
    /// more will be invoiced (cancelled, or ending at the period end with nothing to bill).
    pub async fn upcoming_invoice(&self, id: Uuid) -> Result<Option<SubscriptionEvent>, CommandError<SubscriptionError>> {
        let Some(state) = self.load(id).await? else { return Ok(None) };
        let next = match state.status {
            SubscriptionStatus::Trialing => state.trial_ends_at,
            SubscriptionStatus::Active | SubscriptionStatus::PastDue | SubscriptionStatus::Suspended => {
                state.current_period().map(|p| p.end)
            }
            SubscriptionStatus::New | SubscriptionStatus::Cancelled => None,
        };
        let Some(as_of) = next else { return Ok(None) };
        let Some((_, events)) = self.store.dry_run(&id.to_string(), SubscriptionCommand::AdvanceTo { as_of }).await? else {
            return Ok(None);
        };
        Ok(events.into_iter().find(|e| matches!(e, SubscriptionEvent::InvoiceIssued { .. })))
    }
}
