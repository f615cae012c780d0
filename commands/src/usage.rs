//! Recording usage facts: one aggregate each (see `domain::usage`), or one per batch.

use std::collections::HashSet;

use domain::usage::{usage_id, BatchFact, RecordUsage, RecordUsageBatch, UsageBatch, UsageError, UsageFact};
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
    pool: PgPool,
}

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
        Self { store, batches, pool }
    }

    /// Records `fact` unless its idempotency key was recorded before (on its own or in a batch).
    pub async fn record(&self, fact: RecordUsage, context: &CommandContext) -> Result<Recorded, CommandError<UsageError>> {
        let id = usage_id(fact.tenant_id, &fact.idempotency_key);
        match self.store.execute_new(&id, fact, context).await {
            Ok(committed) => Ok(Recorded { duplicate: committed.events.is_empty(), committed }),
            Err(CommandError::Store(refusal)) if refusal.code == USAGE_KEY_RECORDED => Ok(Recorded {
                duplicate: true,
                committed: Committed { state: UsageFact { recorded: true, fact: None }, events: Vec::new(), position: None },
            }),
            Err(e) => Err(e),
        }
    }

    /// Records many facts of one tenant as one `UsageBatchRecorded` event: each fact is
    /// decided on its own ([`RecordUsage::decide`]: a refused one is that fact's answer alone;
    /// repeats of a key within the batch are duplicates), and the rest are appended together
    /// with their keys claimed. If the store refuses that because a key was recorded before
    /// (a retried batch, a race with another request), the keys are looked up in one statement,
    /// those recorded before are answered as duplicates, and what is still new is appended.
    /// Each outcome in order.
    pub async fn record_batch(&self, facts: Vec<RecordUsage>, context: &CommandContext) -> BatchRecorded {
        let mut outcomes: Vec<Option<Result<bool, CommandError<UsageError>>>> = Vec::with_capacity(facts.len());
        let Some((tenant_id, at)) = facts.first().map(|f| (f.tenant_id, f.at)) else {
            return BatchRecorded { outcomes: Vec::new(), position: None };
        };
        let mut seen = HashSet::with_capacity(facts.len());
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
                    if seen.insert(id.clone()) {
                        pending.push((index, decided, id));
                        outcomes.push(None);
                    } else {
                        outcomes.push(Some(Ok(true)));
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
                let before = match recorded_before(&self.pool, &ids).await {
                    Ok(before) => before,
                    Err(e) => {
                        for (index, _, _) in pending.drain(..) {
                            outcomes[index] = Some(Err(CommandError::Internal(e.to_string())));
                        }
                        break;
                    }
                };
                pending.retain(|(index, _, id)| {
                    let new = !before.contains(id);
                    if !new {
                        outcomes[*index] = Some(Ok(true));
                    }
                    new
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

/// Which of `ids` were recorded before: claimed by a batch, or a fact's own stream (one
/// primary-key probe each; `LATERAL .. LIMIT 1` keeps the planner from a join over the log).
async fn recorded_before(pool: &PgPool, ids: &[&str]) -> Result<HashSet<String>, sqlx::Error> {
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT k.id FROM usage_keys k WHERE k.id = ANY($1)
         UNION ALL
         SELECT hit.aggregate_id FROM unnest($1::text[]) AS c(id)
         CROSS JOIN LATERAL (SELECT e.aggregate_id FROM events e
                             WHERE e.aggregate_type = 'Usage' AND e.aggregate_id = c.id AND e.sequence = 1 LIMIT 1) AS hit",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(found.into_iter().collect())
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
