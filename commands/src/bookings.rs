//! Resources and bookings. The limits a booking must respect come from the tenant's plan
//! (`quota::effective_limits`) and travel in the events; the event store enforces them
//! atomically when the events are appended (`migrations/0003_bookings_and_quotas.sql`).

use chrono::{DateTime, Utc};
use domain::booking::{BookedResource, Booking, BookingCommand, BookingError, BookingLimits, Customer};
use domain::resource::{Resource, ResourceCommand, ResourceError, ResourceKind};
use domain::values::{DisplayName, Email, TimeZoneName};
use sqlx::PgPool;
use uuid::Uuid;

use crate::vault::Vault;
use crate::{quota, AggregateStore, CommandContext, CommandError, Committed};

/// What a booking needs to know besides the request: the resource's kind and capacity, the
/// subscription's plan limits and add-ons, whether the tenant has a personal-data key row, and
/// the key.
type BookingContext = (
    String,
    i32,
    Option<sqlx::types::Json<domain::plan::PlanLimits>>,
    Option<sqlx::types::Json<domain::subscription::Addons>>,
    bool,
    Option<Vec<u8>>,
);

/// The booking command service.
pub struct Bookings {
    pool: PgPool,
    vault: Vault,
    resources: AggregateStore<Resource>,
    bookings: AggregateStore<Booking>,
}

/// A validated booking request.
#[derive(Debug, Clone)]
pub struct NewBooking {
    /// The resource.
    pub resource_id: Uuid,
    /// Start.
    pub starts_at: DateTime<Utc>,
    /// End.
    pub ends_at: DateTime<Utc>,
    /// Seats.
    pub seats: u32,
    /// Who (in clear; sealed with the tenant's key before it is recorded).
    pub customer: CustomerDetails,
}

/// A booking customer's personal data, validated, in clear.
#[derive(Debug, Clone)]
pub struct CustomerDetails {
    /// Name.
    pub name: DisplayName,
    /// E-mail.
    pub email: Email,
}

impl Bookings {
    /// The service over the two stores.
    pub fn new(pool: PgPool, vault: Vault, resources: AggregateStore<Resource>, bookings: AggregateStore<Booking>) -> Self {
        Self { pool, vault, resources, bookings }
    }

    /// Creates a resource for `tenant_id` (event resources count against the plan's `events`).
    pub async fn create_resource(
        &self,
        tenant_id: Uuid,
        name: DisplayName,
        kind: ResourceKind,
        capacity: u32,
        timezone: TimeZoneName,
        context: &CommandContext,
    ) -> Result<(Uuid, Committed<Resource>), CommandError<ResourceError>> {
        let limits = quota::effective_limits(&self.pool, tenant_id).await.map_err(|e| CommandError::Internal(e.to_string()))?;
        let id = Uuid::now_v7();
        let command = ResourceCommand::Create { tenant_id, name, kind, capacity, timezone, events_limit: limits.events, at: context.at };
        let committed = self.resources.execute_new(&id.to_string(), command, context).await?;
        Ok((id, committed))
    }

    /// Books `request` for `tenant_id`; the resource must be the tenant's.
    pub async fn book(
        &self,
        tenant_id: Uuid,
        request: NewBooking,
        context: &CommandContext,
    ) -> Result<(Uuid, Committed<Booking>), CommandError<BookingError>> {
        let internal = |e: sqlx::Error| CommandError::Internal(e.to_string());
        // The resource, the plan's limits and the tenant's personal-data key in one read
        // (`booking_context`, `migrations/0012_generic_plans.sql`: planned once per connection).
        let resource: Option<BookingContext> =
            sqlx::query_as("SELECT kind, capacity, limits, addons, has_key_row, key FROM booking_context($1, $2)")
                .bind(request.resource_id)
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(internal)?;
        // Another tenant's resource is, for this tenant, no resource at all.
        let (kind, capacity, limits, addons, has_key_row, key) = resource.ok_or(CommandError::Domain(BookingError::ResourceNotFound))?;
        let kind = ResourceKind::parse(&kind).map_err(|e| CommandError::Internal(e.to_string()))?;
        let limits = quota::limits_from(limits.map(|l| l.0), addons.map(|a| a.0));
        let key = self
            .vault
            .key_for_writing_from(tenant_id, has_key_row.then_some(key))
            .await
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        let seal = |clear: &str| key.seal(clear).map_err(|e| CommandError::Internal(e.to_string()));
        let customer = Customer { name: seal(request.customer.name.as_str())?, email: seal(request.customer.email.as_str())? };
        let id = Uuid::now_v7();
        let command = BookingCommand::Create {
            tenant_id,
            resource: BookedResource { id: request.resource_id, kind, capacity: capacity as u32 },
            starts_at: request.starts_at,
            ends_at: request.ends_at,
            seats: request.seats,
            customer,
            limits: BookingLimits { bookings_per_month: limits.bookings_per_month, tickets_per_event: limits.tickets_per_event },
            at: context.at,
        };
        let committed = self.bookings.execute_new(&id.to_string(), command, context).await?;
        Ok((id, committed))
    }

    /// Runs a command on `tenant_id`'s booking `id` (another tenant's booking is not found).
    pub async fn execute(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        command: BookingCommand,
        context: &CommandContext,
    ) -> Result<Committed<Booking>, CommandError<BookingError>> {
        match self.bookings.load(&id.to_string()).await? {
            Some((booking, _)) if booking.tenant_id == Some(tenant_id) => {}
            _ => return Err(CommandError::Domain(BookingError::NotFound)),
        }
        self.bookings.execute(&id.to_string(), command, context).await
    }
}
