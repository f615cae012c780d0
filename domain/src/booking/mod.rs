//! The Booking aggregate: one booking of a room slot or of event seats.
//!
//! The booking checks what it can see alone (times in order and of a sane length, seats
//! within the resource's capacity, no change after cancellation). What depends on other
//! bookings (no overlapping room bookings, seats left on an event, the monthly quota) is
//! enforced by the event store when the events are appended, from the limits the events carry.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::resource::ResourceKind;
use crate::values::Sealed;
use crate::{Rejection, RejectionKind, ValidationError};

/// The shortest bookable slot.
pub const MIN_LENGTH_MINUTES: i64 = 5;
/// The longest room booking.
pub const MAX_ROOM_HOURS: i64 = 24;
/// The longest event booking.
pub const MAX_EVENT_DAYS: i64 = 31;

/// The booked resource, as the booking needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::BookedResource))]
pub struct BookedResource {
    /// Its id.
    pub id: Uuid,
    /// Room or event.
    pub kind: ResourceKind,
    /// Its capacity.
    pub capacity: u32,
}

/// Who booked: personal data, sealed with the tenant's key before it reaches the domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Customer))]
pub struct Customer {
    /// Name (sealed).
    pub name: Sealed,
    /// E-mail (sealed).
    pub email: Sealed,
}

/// Plan limits that apply to a booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BookingLimits {
    /// Bookings per calendar month (UTC); `None`: unlimited.
    pub bookings_per_month: Option<u64>,
    /// Seats per event; `None`: unlimited.
    pub tickets_per_event: Option<u64>,
}

/// The first instant of `at`'s calendar month (UTC): the quota period.
pub fn month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0).single().expect("the first of a month exists")
}

/// Booking commands.
#[derive(Debug, Clone)]
pub enum BookingCommand {
    /// Confirm a new booking.
    Create {
        /// Its tenant.
        tenant_id: Uuid,
        /// The resource.
        resource: BookedResource,
        /// Start.
        starts_at: DateTime<Utc>,
        /// End.
        ends_at: DateTime<Utc>,
        /// Seats (people for a room).
        seats: u32,
        /// Who.
        customer: Customer,
        /// The plan's limits.
        limits: BookingLimits,
        /// When.
        at: DateTime<Utc>,
    },
    /// Move it.
    Reschedule {
        /// New start.
        starts_at: DateTime<Utc>,
        /// New end.
        ends_at: DateTime<Utc>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Cancel it.
    Cancel {
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Booking events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum BookingEvent {
    /// A booking was confirmed.
    BookingConfirmed {
        /// Its tenant.
        tenant_id: Uuid,
        /// The resource.
        resource_id: Uuid,
        /// Room or event.
        resource_kind: ResourceKind,
        /// Start.
        starts_at: DateTime<Utc>,
        /// End.
        ends_at: DateTime<Utc>,
        /// Seats.
        seats: u32,
        /// Who.
        customer: Customer,
        /// The seat limit the store enforces for events: min(capacity, tickets per event).
        capacity_limit: u64,
        /// The monthly bookings limit the store enforces (`None`: unlimited).
        quota_limit: Option<u64>,
        /// The quota month it counts against.
        quota_period_start: DateTime<Utc>,
        /// When.
        confirmed_at: DateTime<Utc>,
    },
    /// A booking moved.
    BookingRescheduled {
        /// Its tenant.
        tenant_id: Uuid,
        /// The resource.
        resource_id: Uuid,
        /// Room or event.
        resource_kind: ResourceKind,
        /// New start.
        starts_at: DateTime<Utc>,
        /// New end.
        ends_at: DateTime<Utc>,
        /// When.
        rescheduled_at: DateTime<Utc>,
    },
    /// A booking was cancelled; its slot or seats are free again.
    BookingCancelled {
        /// Its tenant.
        tenant_id: Uuid,
        /// The resource.
        resource_id: Uuid,
        /// Room or event.
        resource_kind: ResourceKind,
        /// Seats released.
        seats: u32,
        /// Why.
        reason: String,
        /// When.
        cancelled_at: DateTime<Utc>,
    },
}

impl DomainEvent for BookingEvent {
    fn event_type(&self) -> String {
        match self {
            Self::BookingConfirmed { .. } => "BookingConfirmed",
            Self::BookingRescheduled { .. } => "BookingRescheduled",
            Self::BookingCancelled { .. } => "BookingCancelled",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Booking refusals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookingError {
    /// Bad input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such booking.
    #[error("booking not found")]
    NotFound,
    /// No such resource (for this tenant).
    #[error("resource not found")]
    ResourceNotFound,
    /// Created twice.
    #[error("the booking exists already")]
    AlreadyExists,
    /// More seats than the resource has.
    #[error("{requested} seats requested but the resource holds {capacity}")]
    CapacityExceeded {
        /// Capacity.
        capacity: u64,
        /// Asked for.
        requested: u32,
    },
    /// The booking is cancelled.
    #[error("cannot {0} a cancelled booking")]
    Cancelled(&'static str),
}

impl Rejection for BookingError {
    fn kind(&self) -> RejectionKind {
        match self {
            Self::Invalid(_) => RejectionKind::Validation,
            Self::NotFound | Self::ResourceNotFound => RejectionKind::NotFound,
            Self::AlreadyExists | Self::CapacityExceeded { .. } | Self::Cancelled(_) => RejectionKind::Conflict,
        }
    }
    fn code(&self) -> &str {
        match self {
            Self::Invalid(_) => "VALIDATION_FAILED",
            Self::NotFound | Self::ResourceNotFound => "NOT_FOUND",
            Self::AlreadyExists => "CONFLICT",
            Self::CapacityExceeded { .. } => "CAPACITY_EXCEEDED",
            Self::Cancelled(_) => "INVALID_STATE_TRANSITION",
        }
    }
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut details = serde_json::Map::new();
        match self {
            Self::Invalid(e) => return e.details(),
            Self::CapacityExceeded { capacity, requested } => {
                details.insert("capacity".into(), (*capacity).into());
                details.insert("requested".into(), (*requested).into());
            }
            _ => {}
        }
        details
    }
}

/// Where a booking is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::BookingStatus))]
#[serde(rename_all = "lowercase")]
pub enum BookingStatus {
    /// Not created.
    #[default]
    New,
    /// Holds its slot or seats.
    Confirmed,
    /// Released.
    Cancelled,
}

/// A booking's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Booking))]
pub struct Booking {
    /// Status.
    pub status: BookingStatus,
    /// Its tenant.
    pub tenant_id: Option<Uuid>,
    /// The resource.
    pub resource_id: Option<Uuid>,
    /// Room or event.
    pub resource_kind: Option<ResourceKind>,
    /// Seats.
    pub seats: u32,
}

/// Checks that `[starts_at, ends_at)` is a sane slot for `kind` that has not ended by `at`.
pub fn check_times(kind: ResourceKind, starts_at: DateTime<Utc>, ends_at: DateTime<Utc>, at: DateTime<Utc>) -> Result<(), ValidationError> {
    if ends_at <= starts_at {
        return Err(ValidationError::new("ends_at", "must be after starts_at"));
    }
    let length = ends_at - starts_at;
    if length < Duration::minutes(MIN_LENGTH_MINUTES) {
        return Err(ValidationError::new("ends_at", format!("a booking lasts at least {MIN_LENGTH_MINUTES} minutes")));
    }
    let max = match kind {
        ResourceKind::Room => Duration::hours(MAX_ROOM_HOURS),
        ResourceKind::Event => Duration::days(MAX_EVENT_DAYS),
    };
    if length > max {
        return Err(ValidationError::new("ends_at", format!("a {} booking lasts at most {} hours", kind.as_str(), max.num_hours())));
    }
    if ends_at <= at {
        return Err(ValidationError::new("ends_at", "the slot is already over"));
    }
    Ok(())
}

impl Aggregate for Booking {
    const TYPE: &'static str = "Booking";
    type Command = BookingCommand;
    type Event = BookingEvent;
    type Error = BookingError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        match command {
            BookingCommand::Create { tenant_id, resource, starts_at, ends_at, seats, customer, limits, at } => {
                if self.status != BookingStatus::New {
                    return Err(BookingError::AlreadyExists);
                }
                check_times(resource.kind, starts_at, ends_at, at)?;
                if seats == 0 {
                    return Err(ValidationError::new("seats", "must be at least 1").into());
                }
                let capacity_limit = limits.tickets_per_event.map_or(u64::from(resource.capacity), |t| t.min(u64::from(resource.capacity)));
                let capacity = if resource.kind == ResourceKind::Event { capacity_limit } else { u64::from(resource.capacity) };
                if u64::from(seats) > capacity {
                    return Err(BookingError::CapacityExceeded { capacity, requested: seats });
                }
                let event = BookingEvent::BookingConfirmed {
                    tenant_id,
                    resource_id: resource.id,
                    resource_kind: resource.kind,
                    starts_at,
                    ends_at,
                    seats,
                    customer,
                    capacity_limit,
                    quota_limit: limits.bookings_per_month,
                    quota_period_start: month_start(at),
                    confirmed_at: at,
                };
                sink.write(event, self).await;
            }
            BookingCommand::Reschedule { starts_at, ends_at, at } => {
                self.require_confirmed("reschedule")?;
                let kind = self.resource_kind.expect("confirmed");
                check_times(kind, starts_at, ends_at, at)?;
                let event = BookingEvent::BookingRescheduled {
                    tenant_id: self.tenant_id.expect("confirmed"),
                    resource_id: self.resource_id.expect("confirmed"),
                    resource_kind: kind,
                    starts_at,
                    ends_at,
                    rescheduled_at: at,
                };
                sink.write(event, self).await;
            }
            BookingCommand::Cancel { reason, at } => {
                self.require_confirmed("cancel")?;
                let event = BookingEvent::BookingCancelled {
                    tenant_id: self.tenant_id.expect("confirmed"),
                    resource_id: self.resource_id.expect("confirmed"),
                    resource_kind: self.resource_kind.expect("confirmed"),
                    seats: self.seats,
                    reason,
                    cancelled_at: at,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            BookingEvent::BookingConfirmed { tenant_id, resource_id, resource_kind, seats, .. } => {
                self.status = BookingStatus::Confirmed;
                self.tenant_id = Some(tenant_id);
                self.resource_id = Some(resource_id);
                self.resource_kind = Some(resource_kind);
                self.seats = seats;
            }
            BookingEvent::BookingRescheduled { .. } => {}
            BookingEvent::BookingCancelled { .. } => self.status = BookingStatus::Cancelled,
        }
    }
}

impl Booking {
    fn require_confirmed(&self, action: &'static str) -> Result<(), BookingError> {
        match self.status {
            BookingStatus::New => Err(BookingError::NotFound),
            BookingStatus::Cancelled => Err(BookingError::Cancelled(action)),
            BookingStatus::Confirmed => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
