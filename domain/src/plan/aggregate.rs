//! The catalog's aggregate: one stream per plan code, one `PlanPublished` per version.
//! Publishing never changes a published version: subscriptions keep the terms they signed up
//! with until they change plan.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::Plan;
use crate::{Rejection, RejectionKind};

/// One plan code's published versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::PlanVersions))]
pub struct PlanVersions {
    /// The latest version, if any.
    pub latest: Option<Plan>,
}

/// Catalog commands.
#[derive(Debug, Clone)]
pub enum PlanCommand {
    /// Publish the next version (its `version` field is ignored and assigned here).
    Publish {
        /// The definition.
        plan: Plan,
        /// When.
        at: DateTime<Utc>,
    },
    /// Publish version 1 unless a version exists (seeding the default catalog, safely from
    /// several processes at once).
    Seed {
        /// The definition.
        plan: Plan,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Catalog events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PlanEvent {
    /// A plan version was published.
    PlanPublished {
        /// The plan, with its version.
        plan: Plan,
        /// When.
        published_at: DateTime<Utc>,
    },
}

impl DomainEvent for PlanEvent {
    fn event_type(&self) -> String {
        "PlanPublished".to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Catalog refusals (none today: any well-formed definition can be published).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the plan cannot be published")]
pub struct PlanError;

impl Rejection for PlanError {
    fn kind(&self) -> RejectionKind {
        RejectionKind::Conflict
    }
    fn code(&self) -> &str {
        "CONFLICT"
    }
}

impl Aggregate for PlanVersions {
    const TYPE: &'static str = "Plan";
    type Command = PlanCommand;
    type Event = PlanEvent;
    type Error = PlanError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let (mut plan, at) = match command {
            PlanCommand::Seed { .. } if self.latest.is_some() => return Ok(()),
            PlanCommand::Seed { plan, at } | PlanCommand::Publish { plan, at } => (plan, at),
        };
        plan.version = self.latest.as_ref().map_or(1, |p| p.version + 1);
        sink.write(PlanEvent::PlanPublished { plan, published_at: at }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let PlanEvent::PlanPublished { plan, .. } = event;
        self.latest = Some(plan);
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::plan::default_catalog;

    #[test]
    fn versions_count_up_and_seeding_happens_once() {
        let at = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
        let v1 = default_catalog().remove(0);
        let published = PlanEvent::PlanPublished { plan: v1.clone(), published_at: at };
        TestFramework::<PlanVersions>::with(())
            .given_no_previous_events()
            .when(PlanCommand::Seed { plan: v1.clone(), at })
            .then_expect_events(vec![published.clone()]);
        TestFramework::<PlanVersions>::with(())
            .given(vec![published.clone()])
            .when(PlanCommand::Seed { plan: v1.clone(), at })
            .then_expect_events(vec![]);
        let mut v2 = v1.clone();
        v2.version = 2;
        TestFramework::<PlanVersions>::with(())
            .given(vec![published])
            .when(PlanCommand::Publish { plan: v1, at })
            .then_expect_events(vec![PlanEvent::PlanPublished { plan: v2, published_at: at }]);
    }
}
