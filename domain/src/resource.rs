//! Resources: rooms (booked by time slot, no overlaps) and events (seats sold up to a
//! capacity). Event resources count against the plan's `events` limit, enforced by the event
//! store when `ResourceCreated` is appended (the limit travels in the event).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{DisplayName, TimeZoneName};
use crate::{Rejection, RejectionKind, ValidationError};

/// What a resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::ResourceKind))]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// Booked by time slot; two confirmed bookings never overlap.
    Room,
    /// Seats are sold up to the capacity.
    Event,
}

impl ResourceKind {
    /// Parses `room` or `event`.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        match input {
            "room" => Ok(Self::Room),
            "event" => Ok(Self::Event),
            _ => Err(ValidationError::new("kind", "must be \"room\" or \"event\"")),
        }
    }

    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Room => "room",
            Self::Event => "event",
        }
    }
}

/// The largest capacity a resource may have.
pub const MAX_CAPACITY: u32 = 1_000_000;

/// Checks a capacity: 1 to [`MAX_CAPACITY`].
pub fn parse_capacity(capacity: i64) -> Result<u32, ValidationError> {
    u32::try_from(capacity)
        .ok()
        .filter(|c| (1..=MAX_CAPACITY).contains(c))
        .ok_or_else(|| ValidationError::new("capacity", format!("must be between 1 and {MAX_CAPACITY}")))
}

/// A resource's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Resource))]
pub struct Resource {
    /// Whether it exists.
    pub created: bool,
}

/// Resource commands.
#[derive(Debug, Clone)]
pub enum ResourceCommand {
    /// Create it.
    Create {
        /// Its tenant.
        tenant_id: Uuid,
        /// Name.
        name: DisplayName,
        /// Room or event.
        kind: ResourceKind,
        /// People (rooms) or seats (events).
        capacity: u32,
        /// Local time zone.
        timezone: TimeZoneName,
        /// The plan's limit on event resources (`None`: unlimited).
        events_limit: Option<u64>,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Resource events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ResourceEvent {
    /// A resource was created.
    ResourceCreated {
        /// Its tenant.
        tenant_id: Uuid,
        /// Name.
        name: DisplayName,
        /// Room or event.
        kind: ResourceKind,
        /// Capacity.
        capacity: u32,
        /// Time zone.
        timezone: TimeZoneName,
        /// The `events` limit in force (checked by the store for events).
        events_limit: Option<u64>,
        /// When.
        created_at: DateTime<Utc>,
    },
}

impl DomainEvent for ResourceEvent {
    fn event_type(&self) -> String {
        "ResourceCreated".to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Resource refusals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// Created twice.
    #[error("the resource exists already")]
    AlreadyExists,
}

impl Rejection for ResourceError {
    fn kind(&self) -> RejectionKind {
        RejectionKind::Conflict
    }
    fn code(&self) -> &str {
        "CONFLICT"
    }
}

impl Aggregate for Resource {
    const TYPE: &'static str = "Resource";
    type Command = ResourceCommand;
    type Event = ResourceEvent;
    type Error = ResourceError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        if self.created {
            return Err(ResourceError::AlreadyExists);
        }
        let ResourceCommand::Create { tenant_id, name, kind, capacity, timezone, events_limit, at } = command;
        sink.write(ResourceEvent::ResourceCreated { tenant_id, name, kind, capacity, timezone, events_limit, created_at: at }, self).await;
        Ok(())
    }

    fn apply(&mut self, _: Self::Event) {
        self.created = true;
    }
}
