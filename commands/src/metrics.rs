//! The billable-metric catalog (see `domain::usage::metrics`): defining a metric, and the
//! definitions the write side aggregates usage by, read from the log itself (a metric's stream
//! holds one event, looked up by primary key) so that a fact recorded, a renewal billed or a
//! quota answered right after a definition already knows it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use domain::usage::metrics::{BillableMetric, DefineMetric, MetricDefinition, MetricError, MetricEvent};
use domain::usage::BUILT_IN_METRICS;
use sqlx::PgPool;

use crate::{AggregateStore, CommandContext, CommandError, Committed};

/// Metric definitions by code, kept once read (a definition never changes).
#[derive(Debug)]
pub struct MetricDefinitions {
    pool: PgPool,
    known: RwLock<HashMap<String, MetricDefinition>>,
}

impl MetricDefinitions {
    /// Definitions read through `pool`.
    pub fn new(pool: PgPool) -> Arc<Self> {
        let known = MetricDefinition::built_ins().into_iter().map(|m| (m.code.to_string(), m)).collect();
        Arc::new(Self { pool, known: RwLock::new(known) })
    }

    /// The definitions of `codes` that exist (built-in or defined); a code without one is absent.
    pub async fn defined(&self, codes: &[&str]) -> Result<HashMap<String, MetricDefinition>, sqlx::Error> {
        let mut found = HashMap::with_capacity(codes.len());
        let mut missing: Vec<&str> = Vec::new();
        {
            let known = self.known.read().expect("not poisoned");
            for code in codes {
                match known.get(*code) {
                    Some(m) => {
                        found.insert((*code).to_owned(), m.clone());
                    }
                    None => missing.push(code),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let payloads: Vec<serde_json::Value> =
            sqlx::query_scalar("SELECT payload FROM events WHERE aggregate_type = 'Metric' AND aggregate_id = ANY($1) AND sequence = 1")
                .bind(&missing)
                .fetch_all(&self.pool)
                .await?;
        let mut known = self.known.write().expect("not poisoned");
        for payload in payloads {
            let MetricEvent::MetricDefined { metric, .. } =
                serde_json::from_value(payload).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            known.insert(metric.code.to_string(), metric.clone());
            found.insert(metric.code.to_string(), metric);
        }
        Ok(found)
    }

    /// The definition of each of `codes`: its own, or the implicit one (a `sum` of precision 0)
    /// of a metric a plan names without defining it.
    pub async fn resolve(&self, codes: &[&str]) -> Result<HashMap<String, MetricDefinition>, sqlx::Error> {
        let mut found = self.defined(codes).await?;
        for code in codes {
            found.entry((*code).to_owned()).or_insert_with(|| MetricDefinition::implicit(code));
        }
        Ok(found)
    }
}

/// The metric catalog's command service.
pub struct Metrics {
    store: AggregateStore<BillableMetric>,
}

impl Metrics {
    /// Wraps the catalog's store.
    pub fn new(store: AggregateStore<BillableMetric>) -> Self {
        Self { store }
    }

    /// Defines a metric: 409 if its code is built in or defined (of concurrent definitions of
    /// one code, one wins: the stream's first event).
    pub async fn define(
        &self,
        definition: MetricDefinition,
        context: &CommandContext,
    ) -> Result<Committed<BillableMetric>, CommandError<MetricError>> {
        let code = definition.code.to_string();
        if BUILT_IN_METRICS.contains(&code.as_str()) {
            return Err(CommandError::Domain(MetricError::Taken(code)));
        }
        match self.store.execute(&code, DefineMetric { definition, at: context.at }, context).await {
            Err(CommandError::Concurrency(_)) => Err(CommandError::Domain(MetricError::Taken(code))),
            outcome => outcome,
        }
    }
}
