//! Recording usage facts, one aggregate each (see `domain::usage`).

use domain::usage::{usage_id, RecordUsage, UsageError, UsageFact};

use crate::{AggregateStore, CommandContext, CommandError, Committed};

/// The usage command service.
pub struct Usage {
    store: AggregateStore<UsageFact>,
}

/// The outcome of recording one fact.
#[derive(Debug)]
pub struct Recorded {
    /// `true` if this key was recorded before (nothing was appended now).
    pub duplicate: bool,
    /// What was committed.
    pub committed: Committed<UsageFact>,
}

impl Usage {
    /// Wraps the usage store.
    pub fn new(store: AggregateStore<UsageFact>) -> Self {
        Self { store }
    }

    /// Records `fact` unless its idempotency key was recorded before.
    pub async fn record(&self, fact: RecordUsage, context: &CommandContext) -> Result<Recorded, CommandError<UsageError>> {
        let id = usage_id(fact.tenant_id, &fact.idempotency_key);
        let committed = self.store.execute_new(&id, fact, context).await?;
        Ok(Recorded { duplicate: committed.events.is_empty(), committed })
    }

    /// Records many facts with distinct idempotency keys in one append (see
    /// [`AggregateStore::execute_new_batch`]); each outcome in order.
    pub async fn record_batch(&self, facts: Vec<RecordUsage>, context: &CommandContext) -> Vec<Result<Recorded, CommandError<UsageError>>> {
        let commands = facts.into_iter().map(|fact| (usage_id(fact.tenant_id, &fact.idempotency_key), fact)).collect();
        self.store
            .execute_new_batch(commands, context)
            .await
            .into_iter()
            .map(|outcome| outcome.map(|committed| Recorded { duplicate: committed.events.is_empty(), committed }))
            .collect()
    }
}
