//! Replay: rebuilding an aggregate's state from its events, through the domain's own `apply`,
//! as it was at a version or an instant (audits, support, "what did we know then").

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::booking::Booking;
use domain::plan::PlanVersions;
use domain::resource::Resource;
use domain::subscription::Subscription;
use domain::tenant::Tenant;
use domain::usage::{UsageBatch, UsageFact};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::log::StoredEvent;

/// Where to stop replaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Everything.
    Now,
    /// Events up to and including this sequence number.
    Version(i64),
    /// Events that occurred at or before this instant.
    AsOf(DateTime<Utc>),
}

/// A replayed state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ReplayedAggregate)]
pub struct Replayed {
    /// The aggregate type.
    pub aggregate_type: String,
    /// Its id.
    pub aggregate_id: String,
    /// The last sequence applied (0: nothing yet).
    pub version: i64,
    /// When the last applied event occurred.
    pub last_event_at: Option<DateTime<Utc>>,
    /// The state, as the aggregate of `aggregate_type` serialises it.
    pub state: AggregateState,
}

/// A replayed aggregate's state: one of the aggregates' own states, serialised as the
/// aggregate serialises it (untagged: `aggregate_type` says which).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AggregateState {
    /// A tenant.
    Tenant(Tenant),
    /// A subscription.
    Subscription(Box<Subscription>),
    /// A plan's versions.
    Plan(PlanVersions),
    /// A usage fact recorded on its own.
    Usage(UsageFact),
    /// A batch of usage facts.
    UsageBatch(UsageBatch),
    /// A room or an event.
    Resource(Resource),
    /// A booking.
    Booking(Booking),
    /// The platform's books (`Books`/`revenue`): the months closed.
    Books(domain::books::Books),
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No such aggregate type.
    #[error("unknown aggregate type {0}")]
    UnknownType(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A stored event does not decode.
    #[error("event {position} does not decode: {source}")]
    Payload {
        /// Its position.
        position: i64,
        /// Why.
        source: serde_json::Error,
    },
}

/// The aggregate types that can be replayed.
pub const TYPES: [&str; 8] = ["Tenant", "Subscription", "Plan", "Usage", "UsageBatch", "Resource", "Booking", "Books"];

fn fold<A: Aggregate>(events: &[StoredEvent]) -> Result<A, ReplayError> {
    let mut state = A::default();
    for event in events.iter().map(StoredEvent::upcast) {
        let payload: A::Event =
            serde_json::from_value(event.payload).map_err(|source| ReplayError::Payload { position: event.position, source })?;
        state.apply(payload);
    }
    Ok(state)
}

/// Folds `events` (one aggregate's, in sequence order) with the aggregate of `aggregate_type`.
pub fn fold_events(aggregate_type: &str, events: &[StoredEvent]) -> Result<AggregateState, ReplayError> {
    Ok(match aggregate_type {
        "Tenant" => AggregateState::Tenant(fold(events)?),
        "Subscription" => AggregateState::Subscription(Box::new(fold(events)?)),
        "Plan" => AggregateState::Plan(fold(events)?),
        "Usage" => AggregateState::Usage(fold(events)?),
        "UsageBatch" => AggregateState::UsageBatch(fold(events)?),
        "Resource" => AggregateState::Resource(fold(events)?),
        "Booking" => AggregateState::Booking(fold(events)?),
        "Books" => AggregateState::Books(fold(events)?),
        other => return Err(ReplayError::UnknownType(other.to_owned())),
    })
}

/// Replays aggregate `aggregate_type`/`aggregate_id` until `until`; only `tenant`'s when given.
/// `None` if it has no (visible) events.
pub async fn replay(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    until: Until,
    tenant: Option<Uuid>,
) -> Result<Option<Replayed>, ReplayError> {
    if !TYPES.contains(&aggregate_type) {
        return Err(ReplayError::UnknownType(aggregate_type.to_owned()));
    }
    let events: Vec<StoredEvent> = sqlx::query_as(
        "SELECT coalesce(position, 0) AS position, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at
         FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND ($3::uuid IS NULL OR tenant_id = $3) ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    if events.is_empty() {
        return Ok(None);
    }
    let kept: Vec<StoredEvent> = events
        .into_iter()
        .take_while(|e| match until {
            Until::Now => true,
            Until::Version(v) => e.sequence <= v,
            Until::AsOf(at) => e.occurred_at() <= at,
        })
        .collect();
    Ok(Some(Replayed {
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        version: kept.last().map_or(0, |e| e.sequence),
        last_event_at: kept.last().map(StoredEvent::occurred_at),
        state: fold_events(aggregate_type, &kept)?,
    }))
}
