//! The catalog: what the platform sells, as the `catalog` projection shows it: plans (each
//! plan's stream is its versions, `domain::plan::PlanVersions`: seeding the defaults,
//! publishing the next version, reading the latest) and coupons (one stream per code).

use domain::coupon::{Coupon, CouponCommand, CouponError, CouponTerms};
use domain::plan::{default_catalog, Plan, PlanCode, PlanCommand, PlanError, PlanVersions};

use crate::{AggregateStore, CommandContext, CommandError, Committed};

/// The catalog service.
pub struct Catalog {
    store: AggregateStore<PlanVersions>,
    coupons: AggregateStore<Coupon>,
}

impl Catalog {
    /// Wraps the catalog's stores.
    pub fn new(store: AggregateStore<PlanVersions>, coupons: AggregateStore<Coupon>) -> Self {
        Self { store, coupons }
    }

    /// Creates a coupon (one stream per code: a code is taken once).
    pub async fn create_coupon(
        &self,
        terms: CouponTerms,
        context: &CommandContext,
    ) -> Result<Committed<Coupon>, CommandError<CouponError>> {
        let code = terms.code.clone();
        self.coupons.execute_new(&code, CouponCommand::Create { terms, at: context.at }, context).await
    }

    /// Coupon `code`'s terms, if it exists.
    pub async fn coupon(&self, code: &str) -> Result<Option<CouponTerms>, CommandError<CouponError>> {
        Ok(self.coupons.load(code).await?.and_then(|(coupon, _)| coupon.terms))
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
