//! The plan catalog: seeding the default catalog, publishing versions, reading the latest.

use domain::plan::{default_catalog, Plan, PlanCode, PlanCommand, PlanError, PlanVersions};

use crate::{AggregateStore, CommandContext, CommandError, Committed};

/// The catalog service.
pub struct Plans {
    store: AggregateStore<PlanVersions>,
}

impl Plans {
    /// Wraps the catalog's store.
    pub fn new(store: AggregateStore<PlanVersions>) -> Self {
        Self { store }
    }

    /// Publishes version 1 of every default plan that has no version yet.
    pub async fn seed_defaults(&self, context: &CommandContext) -> Result<(), CommandError<PlanError>> {
        for plan in default_catalog() {
            let code = plan.code.to_string();
            self.store.execute(&code, PlanCommand::Seed { plan, at: context.at }, context).await?;
        }
        Ok(())
    }

    /// Publishes the next version of `plan.code`.
    pub async fn publish(&self, plan: Plan, context: &CommandContext) -> Result<Committed<PlanVersions>, CommandError<PlanError>> {
        let code = plan.code.to_string();
        self.store.execute(&code, PlanCommand::Publish { plan, at: context.at }, context).await
    }

    /// The latest published version of `code`.
    pub async fn latest(&self, code: &PlanCode) -> Result<Option<Plan>, CommandError<PlanError>> {
        Ok(self.store.load(code.as_str()).await?.and_then(|(versions, _)| versions.latest))
    }
}
