//! Subscription commands, and the usage meter the aggregate bills arrears with.

use std::collections::BTreeMap;
use std::sync::Arc;

use domain::billing::period::Period;
use domain::subscription::{
    BillableUsage, BoxFuture, Reading, Subscription, SubscriptionCommand, SubscriptionError, SubscriptionEvent, SubscriptionStatus,
    UsageMeter,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::Decided;
use crate::{AggregateStore, CommandContext, CommandError, Committed};

/// Reads a tenant's billable usage in a period from the usage read model (`rm.usage_records`,
/// one row per accepted usage fact). The billing run waits for the read models to catch up
/// before it runs, so the sums include every fact recorded before it.
#[derive(Debug, Clone)]
pub struct PgUsageMeter {
    pool: PgPool,
}

impl PgUsageMeter {
    /// A meter over `pool`.
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self { pool })
    }
}

impl UsageMeter for PgUsageMeter {
    fn billable_usage(&self, tenant_id: Uuid, period: Period) -> BoxFuture<'_, Result<BillableUsage, String>> {
        Box::pin(async move {
            let (api_calls, sms): (i64, i64) = sqlx::query_as(
                "SELECT coalesce(sum(quantity) FILTER (WHERE metric = 'api_calls'), 0)::bigint,
                        coalesce(sum(quantity) FILTER (WHERE metric = 'sms'), 0)::bigint
                 FROM rm.usage_records
                 WHERE tenant_id = $1 AND metric IN ('api_calls', 'sms') AND occurred_at >= $2 AND occurred_at < $3",
            )
            .bind(tenant_id)
            .bind(period.start)
            .bind(period.end)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
            Ok(BillableUsage { api_calls: api_calls.max(0) as u64, sms: sms.max(0) as u64 })
        })
    }

    fn metered(&self, tenant_id: Uuid, period: Period, metrics: Vec<String>) -> BoxFuture<'_, Result<BTreeMap<String, u64>, String>> {
        Box::pin(async move {
            // Counters summed; gauges at their latest value in the period.
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT metric, CASE WHEN bool_or(kind = 'gauge')
                                     THEN (array_agg(quantity ORDER BY occurred_at DESC, position DESC, item DESC))[1]
                                     ELSE sum(quantity) END::bigint
                 FROM rm.usage_records
                 WHERE tenant_id = $1 AND metric = ANY($2) AND occurred_at >= $3 AND occurred_at < $4
                 GROUP BY metric",
            )
            .bind(tenant_id)
            .bind(&metrics)
            .bind(period.start)
            .bind(period.end)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
            Ok(rows.into_iter().map(|(metric, quantity)| (metric, quantity.max(0) as u64)).collect())
        })
    }

    fn readings(&self, tenant_id: Uuid, periods: Vec<Period>, metrics: Vec<String>) -> BoxFuture<'_, Result<Vec<Reading>, String>> {
        Box::pin(async move {
            // One statement for every period: per period and metric the sum, and the latest value
            // where the metric is a gauge (as `metered` answers); the built-ins are their sums
            // (as `billable_usage` answers).
            let starts: Vec<_> = periods.iter().map(|p| p.start).collect();
            let ends: Vec<_> = periods.iter().map(|p| p.end).collect();
            let mut asked = metrics.clone();
            for builtin in ["api_calls", "sms"] {
                if !asked.iter().any(|m| m == builtin) {
                    asked.push(builtin.to_owned());
                }
            }
            let rows: Vec<(i64, String, i64, bool, i64)> = sqlx::query_as(
                "SELECT p.i, r.metric, sum(r.quantity)::bigint, bool_or(r.kind = 'gauge'),
                        (array_agg(r.quantity ORDER BY r.occurred_at DESC, r.position DESC, r.item DESC))[1]::bigint
                 FROM unnest($2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY AS p(s, e, i)
                 JOIN rm.usage_records r ON r.tenant_id = $1 AND r.metric = ANY($4) AND r.occurred_at >= p.s AND r.occurred_at < p.e
                 GROUP BY p.i, r.metric",
            )
            .bind(tenant_id)
            .bind(&starts)
            .bind(&ends)
            .bind(&asked)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
            let mut readings: Vec<Reading> =
                periods.into_iter().map(|period| Reading { period, usage: BillableUsage::default(), metered: BTreeMap::new() }).collect();
            for (i, metric, sum, gauge, latest) in rows {
                let reading = &mut readings[(i - 1) as usize];
                match metric.as_str() {
                    "api_calls" => reading.usage.api_calls = sum.max(0) as u64,
                    "sms" => reading.usage.sms = sum.max(0) as u64,
                    _ => {}
                }
                if metrics.contains(&metric) {
                    reading.metered.insert(metric, if gauge { latest } else { sum }.max(0) as u64);
                }
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
