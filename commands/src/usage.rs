//! Recording usage facts: one aggregate each (see `domain::usage`), or one per batch.

use std::collections::{HashMap, HashSet};

use domain::usage::corrections::{Correct, CorrectionError, OriginalFact, UsageCorrections};
use domain::usage::{
    usage_id, BatchFact, RecordUsage, RecordUsageBatch, RecordedFact, UsageBatch, UsageBatchEvent, UsageError, UsageEvent, UsageFact,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{AggregateStore, CommandContext, CommandError, Committed};

/// The store's refusal of a fact whose key was recorded before by the other way in (a batch's
/// claim, or a fact's own stream): see migration 0016.
pub const USAGE_KEY_RECORDED: &str = "USAGE_KEY_RECORDED";

/// How often a batch is decided again after losing a race for one of its keys.
const BATCH_ATTEMPTS: usize = 5;

/// The usage command service.
pub struct Usage {
    store: AggregateStore<UsageFact>,
    batches: AggregateStore<UsageBatch>,
    corrections: Option<AggregateStore<UsageCorrections>>,
    definitions: std::sync::Arc<crate::metrics::MetricDefinitions>,
    pool: PgPool,
}

/// How often a correction is decided again after losing a race with another one of its fact.
const CORRECTION_ATTEMPTS: usize = 5;

/// The outcome of recording one fact.
#[derive(Debug)]
pub struct Recorded {
    /// `true` if this key was recorded before (nothing was appended now).
    pub duplicate: bool,
    /// What was committed.
    pub committed: Committed<UsageFact>,
}

/// The outcome of a batch.
#[derive(Debug)]
pub struct BatchRecorded {
    /// Each fact's outcome, in order: whether its key was recorded before, or why it was refused.
    pub outcomes: Vec<Result<bool, CommandError<UsageError>>>,
    /// The log position of the batch's event, if one was appended.
    pub position: Option<i64>,
}

impl Usage {
    /// Wraps the usage stores (facts on their own and batches) and the pool their keys are
    /// looked up in.
    pub fn new(store: AggregateStore<UsageFact>, batches: AggregateStore<UsageBatch>, pool: PgPool) -> Self {
        Self { store, batches, corrections: None, definitions: crate::metrics::MetricDefinitions::new(pool.clone()), pool }
    }

    /// With the process's metric definitions (shared with the billing meter and quota reads).
    pub fn with_definitions(mut self, definitions: std::sync::Arc<crate::metrics::MetricDefinitions>) -> Self {
        self.definitions = definitions;
        self
    }

    /// The metric definitions facts are recorded by.
    pub fn definitions(&self) -> &std::sync::Arc<crate::metrics::MetricDefinitions> {
        &self.definitions
    }

    /// With corrections (void, amend) kept in `store`.
    pub fn with_corrections(mut self, store: AggregateStore<UsageCorrections>) -> Self {
        self.corrections = Some(store);
        self
    }

    /// The fact `idempotency_key` of `tenant_id` with its corrections: `None` if no fact has
    /// that key.
    pub async fn fact(
        &self,
        tenant_id: Uuid,
        idempotency_key: &str,
    ) -> Result<Option<(RecordedFact, UsageCorrections)>, CommandError<CorrectionError>> {
        let id = usage_id(tenant_id, idempotency_key);
        let mut known = recorded_facts(&self.pool, &[id.as_str()]).await.map_err(|e| CommandError::Internal(e.to_string()))?;
        let Some(Some(fact)) = known.remove(&id) else { return Ok(None) };
        let corrections = match &self.corrections {
            Some(store) => store.load(&id).await?.map(|(state, _)| state).unwrap_or_default(),
            None => UsageCorrections::default(),
        };
        Ok(Some((fact, corrections)))
    }

    /// Voids (`quantity: None`) or amends (to `quantity`, or a `unique_count` fact to `value`) fact `idempotency_key` of `tenant_id`, for `reason`:
    /// 404 `NOT_FOUND` if no fact has that key; of concurrent corrections each decides on the
    /// one before it (a lost race is decided again).
    pub async fn correct(
        &self,
        tenant_id: Uuid,
        idempotency_key: &str,
        quantity: Option<rust_decimal::Decimal>,
        value: Option<String>,
        reason: String,
        context: &CommandContext,
    ) -> Result<Committed<UsageCorrections>, CommandError<CorrectionError>> {
        let store = self.corrections.as_ref().ok_or_else(|| CommandError::Internal("corrections are not wired".to_owned()))?;
        let id = usage_id(tenant_id, idempotency_key);
        let mut known = recorded_facts(&self.pool, &[id.as_str()]).await.map_err(|e| CommandError::Internal(e.to_string()))?;
        let Some(Some(fact)) = known.remove(&id) else { return Err(CommandError::Domain(CorrectionError::NotFound)) };
        let original = OriginalFact { tenant_id, idempotency_key: idempotency_key.to_owned(), fact };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let command = Correct {
                original: original.clone(),
                quantity,
                value: value.clone(),
                reason: reason.clone(),
                actor: context.actor.to_string(),
                at: context.at,
            };
            match store.execute(&id, command, context).await {
                Err(CommandError::Concurrency(_)) if attempt < CORRECTION_ATTEMPTS => continue,
                outcome => return outcome,
            }
        }
    }

    /// Records `fact` unless its idempotency key was recorded before (on its own or in a batch):
    /// sent again with the same fact it is a duplicate, with another fact
    /// [`UsageError::KeyReused`] (the fact's own stream decides that itself; a key a batch
    /// recorded is looked up in that batch).
    pub async fn record(&self, fact: RecordUsage, context: &CommandContext) -> Result<Recorded, CommandError<UsageError>> {
        let id = usage_id(fact.tenant_id, &fact.idempotency_key);
        let sent = fact.clone();
        match self.store.execute_new(&id, fact, context).await {
            Ok(committed) => Ok(Recorded { duplicate: committed.events.is_empty(), committed }),
            Err(CommandError::Store(refusal)) if refusal.code == USAGE_KEY_RECORDED => {
                let mut known = recorded_facts(&self.pool, &[id.as_str()]).await.map_err(|e| CommandError::Internal(e.to_string()))?;
                let recorded = known.remove(&id).flatten();
                if let Some(recorded) = recorded.filter(|recorded| !sent.repeats(recorded)) {
                    return Err(CommandError::Domain(UsageError::KeyReused { key: sent.idempotency_key, recorded }));
                }
                Ok(Recorded {
                    duplicate: true,
                    committed: Committed { state: UsageFact { recorded: true, fact: None }, events: Vec::new(), position: None },
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Records many facts of one tenant as one `UsageBatchRecorded` event: each fact is
    /// decided on its own ([`RecordUsage::decide`]: a refused one is that fact's answer alone;
    /// a key repeated within the batch is a duplicate of its first record, or
    /// [`UsageError::KeyReused`] if it states another fact), and the rest are appended together
    /// with their keys claimed. If the store refuses that because a key was recorded before
    /// (a retried batch, a race with another request), the keys' facts are looked up, those
    /// recorded before are answered as duplicates (or `KeyReused`, as above), and what is
    /// still new is appended. Each outcome in order.
    pub async fn record_batch(&self, facts: Vec<RecordUsage>, context: &CommandContext) -> BatchRecorded {
        let mut outcomes: Vec<Option<Result<bool, CommandError<UsageError>>>> = Vec::with_capacity(facts.len());
        let Some((tenant_id, at)) = facts.first().map(|f| (f.tenant_id, f.at)) else {
            return BatchRecorded { outcomes: Vec::new(), position: None };
        };
        // The index of each key's first record in the batch.
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(facts.len());
        // (index, fact, id) of the facts still to record.
        let mut pending: Vec<(usize, BatchFact, String)> = Vec::with_capacity(facts.len());
        for (index, fact) in facts.iter().enumerate() {
            if fact.tenant_id != tenant_id {
                outcomes.push(Some(Err(CommandError::Internal("a batch holds the facts of one tenant".to_owned()))));
                continue;
            }
            match fact.decide() {
                Ok(decided) => {
                    let id = usage_id(tenant_id, &fact.idempotency_key);
                    match seen.get(&id) {
                        None => {
                            seen.insert(id.clone(), index);
                            pending.push((index, decided, id));
                            outcomes.push(None);
                        }
                        Some(&first) => outcomes.push(Some(resent(fact, &recorded(&facts[first])))),
                    }
                }
                Err(e) => outcomes.push(Some(Err(CommandError::Domain(e)))),
            }
        }
        let mut position = None;
        for attempt in 1..=BATCH_ATTEMPTS {
            // Optimistic: the first attempt appends at once (the store refuses it if a key was
            // recorded before); only after a refusal are the keys looked up.
            if attempt > 1 {
                let ids: Vec<&str> = pending.iter().map(|(_, _, id)| id.as_str()).collect();
                let before = match recorded_facts(&self.pool, &ids).await {
                    Ok(before) => before,
                    Err(e) => {
                        for (index, _, _) in pending.drain(..) {
                            outcomes[index] = Some(Err(CommandError::Internal(e.to_string())));
                        }
                        break;
                    }
                };
                pending.retain(|(index, _, id)| match before.get(id) {
                    None => true,
                    Some(known) => {
                        outcomes[*index] = Some(match known {
                            Some(known) => resent(&facts[*index], known),
                            // Claimed before its batch was remembered (migration 0019).
                            None => Ok(true),
                        });
                        false
                    }
                });
            }
            if pending.is_empty() {
                break;
            }
            let claims: Vec<String> = pending.iter().map(|(_, _, id)| id.clone()).collect();
            let command = RecordUsageBatch { tenant_id, facts: pending.iter().map(|(_, fact, _)| fact.clone()).collect(), at };
            match self.batches.execute_new_claiming(&Uuid::now_v7().to_string(), command, context, &claims).await {
                Ok(committed) => {
                    position = committed.position;
                    for (index, _, _) in pending.drain(..) {
                        outcomes[index] = Some(Ok(false));
                    }
                    break;
                }
                Err(CommandError::Store(refusal)) if refusal.code == USAGE_KEY_RECORDED && attempt < BATCH_ATTEMPTS => {
                    tracing::debug!(attempt, "a usage batch lost a race for a key; looking its keys up again");
                }
                Err(e) => {
                    for (index, _, _) in pending.drain(..) {
                        outcomes[index] = Some(Err(copy(&e)));
                    }
                    break;
                }
            }
        }
        BatchRecorded { outcomes: outcomes.into_iter().map(|o| o.expect("every fact has an outcome")).collect(), position }
    }
}

/// The answer to `fact` sent again under a key that recorded `known`: a duplicate if it repeats
/// it, else [`UsageError::KeyReused`].
fn resent(fact: &RecordUsage, known: &RecordedFact) -> Result<bool, CommandError<UsageError>> {
    if fact.repeats(known) {
        Ok(true)
    } else {
        Err(CommandError::Domain(UsageError::KeyReused { key: fact.idempotency_key.clone(), recorded: known.clone() }))
    }
}

/// What `fact` records.
fn recorded(fact: &RecordUsage) -> RecordedFact {
    RecordedFact {
        metric: fact.metric.clone(),
        kind: fact.kind,
        quantity: fact.quantity,
        value: fact.value.clone(),
        occurred_at: fact.occurred_at,
    }
}

/// Which of `ids` were recorded before, each with its fact: a fact's own stream (its first
/// event), or a batch's claim (the fact in that batch's event; `None` for a key claimed before
/// batches were remembered). One primary-key probe per id (`LATERAL .. LIMIT 1` keeps the
/// planner from a join over the log), then one statement for the batches they name.
async fn recorded_facts(pool: &PgPool, ids: &[&str]) -> Result<HashMap<String, Option<RecordedFact>>, sqlx::Error> {
    let rows: Vec<(String, Option<String>, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT k.id, k.batch, NULL::jsonb FROM usage_keys k WHERE k.id = ANY($1)
         UNION ALL
         SELECT hit.aggregate_id, NULL, hit.payload FROM unnest($1::text[]) AS c(id)
         CROSS JOIN LATERAL (SELECT e.aggregate_id, e.payload FROM events e
                             WHERE e.aggregate_type = 'Usage' AND e.aggregate_id = c.id AND e.sequence = 1 LIMIT 1) AS hit",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let batches: Vec<String> = rows.iter().filter_map(|(_, batch, _)| batch.clone()).collect::<HashSet<_>>().into_iter().collect();
    let mut in_batches: HashMap<String, RecordedFact> = HashMap::new();
    if !batches.is_empty() {
        let payloads: Vec<serde_json::Value> = sqlx::query_scalar(
            "SELECT e.payload FROM events e WHERE e.aggregate_type = 'UsageBatch' AND e.aggregate_id = ANY($1) AND e.sequence = 1",
        )
        .bind(&batches)
        .fetch_all(pool)
        .await?;
        for payload in payloads {
            let UsageBatchEvent::UsageBatchRecorded { tenant_id, facts, .. } =
                serde_json::from_value(payload).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            for fact in facts {
                in_batches.insert(
                    usage_id(tenant_id, &fact.idempotency_key),
                    RecordedFact {
                        metric: fact.metric,
                        kind: fact.kind,
                        quantity: fact.quantity,
                        value: fact.value,
                        occurred_at: fact.occurred_at,
                    },
                );
            }
        }
    }
    let mut found = HashMap::with_capacity(rows.len());
    for (id, batch, payload) in rows {
        let fact = match (batch, payload) {
            (_, Some(payload)) => {
                let UsageEvent::UsageRecorded { metric, kind, quantity, value, occurred_at, .. } =
                    serde_json::from_value(payload).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                Some(RecordedFact { metric, kind, quantity, value, occurred_at })
            }
            (Some(_), None) => in_batches.get(&id).cloned(),
            (None, None) => None,
        };
        found.insert(id, fact);
    }
    Ok(found)
}

/// The same failure for each fact of a batch.
fn copy(e: &CommandError<UsageError>) -> CommandError<UsageError> {
    match e {
        CommandError::Domain(e) => CommandError::Domain(e.clone()),
        CommandError::Store(r) => CommandError::Store(r.clone()),
        CommandError::Concurrency(what) => CommandError::Concurrency(what),
        CommandError::Internal(message) => CommandError::Internal(message.clone()),
    }
}
