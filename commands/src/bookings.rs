//! Resources and bookings. The limits a booking must respect come from the tenant's plan
//! (`quota::effective_limits`) and travel in the events; the event store enforces them
//! atomically when the events are appended (`migrations/0003_bookings_and_quotas.sql`).

use chrono::{DateTime, Utc};
use domain::booking::{BookedResource, Booking, BookingCommand, BookingError, BookingLimits, Customer};
use domain::resource::{Resource, ResourceCommand, ResourceError, ResourceKind};
use domain::values::{DisplayName, Email, TimeZoneName};
use sqlx::PgPool;
use uuid::Uuid;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::vault::{PersonalDataKey, Vault};
use crate::{quota, AggregateStore, CommandContext, CommandError, Committed};

/// What a booking needs to know besides the request, as the SQL function `booking_context`
/// reads it in one statement.
#[derive(sqlx::FromRow)]
struct ContextRow {
    /// The resource's kind (`room` or `event`).
    kind: String,
    /// The resource's capacity.
    capacity: i32,
    /// The subscription's plan limits.
    limits: Option<sqlx::types::Json<domain::plan::PlanLimits>>,
    /// The subscription's add-ons.
    addons: Option<sqlx::types::Json<domain::subscription::Addons>>,
    /// Whether the tenant has a row in `personal_data_keys` (made, or shredded).
    has_key_row: bool,
    /// The tenant's personal-data key, unless it was shredded.
    key: Option<Vec<u8>>,
    /// The version of the tenant's context stamp.
    version: i64,
    /// Whether the read models it came from reflect every change that stamp counts.
    settled: bool,
}

/// A booking's context, ready to decide on.
#[derive(Clone)]
struct BookingContext {
    kind: ResourceKind,
    capacity: u32,
    limits: BookingLimits,
    key: PersonalDataKey,
    /// The version of the tenant's context stamp it was read under.
    version: i64,
    /// When it was read.
    read_at: std::time::Instant,
}

/// The refusal of a booking decided on a context that changed before it was appended.
const CONTEXT_CHANGED: &str = "BOOKING_CONTEXT_CHANGED";

/// Times a booking is decided on a fresh context before the refusal is the answer.
const MAX_CONTEXT_ATTEMPTS: u32 = 5;

/// Contexts kept per tenant and resource (at most this many; emptied when full).
const KEPT_CONTEXTS: usize = 10_000;

/// How long a context is kept. The stamp decides whether one may be used; this bounds how long
/// a tenant's key stays in an instance's memory after the tenant was erased (its keys revoked,
/// no booking of it comes to find the stamp moved on).
const KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// The booking command service.
pub struct Bookings {
    pool: PgPool,
    vault: Vault,
    resources: AggregateStore<Resource>,
    bookings: AggregateStore<Booking>,
    /// Booking contexts by (tenant, resource). Each booking decided on a kept one states its
    /// stamp's version, and the append refuses it if the stamp has moved on (migration 0017),
    /// so a kept context is never used past a change: it saves a read per booking, nothing else.
    kept: Mutex<HashMap<(Uuid, Uuid), BookingContext>>,
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
        Self { pool, vault, resources, bookings, kept: Mutex::new(HashMap::new()) }
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
        let id = Uuid::now_v7();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A kept context first; after a refusal (the context changed meanwhile), a fresh one.
            let kept = if attempt == 1 { self.kept_context(tenant_id, request.resource_id) } else { None };
            let booking = match kept {
                Some(kept) => kept,
                None => self.read_context(tenant_id, request.resource_id).await?,
            };
            let internal = |e: crate::vault::VaultError| CommandError::Internal(e.to_string());
            let customer = Customer {
                name: booking.key.seal(request.customer.name.as_str()).map_err(internal)?,
                email: booking.key.seal(request.customer.email.as_str()).map_err(internal)?,
            };
            let command = BookingCommand::Create {
                tenant_id,
                resource: BookedResource { id: request.resource_id, kind: booking.kind, capacity: booking.capacity },
                starts_at: request.starts_at,
                ends_at: request.ends_at,
                seats: request.seats,
                customer,
                limits: booking.limits,
                at: context.at,
            };
            match self.bookings.execute_new_guarded(&id.to_string(), command, context, (tenant_id, booking.version)).await {
                Err(CommandError::Store(rejection)) if rejection.code == CONTEXT_CHANGED => {
                    self.forget(tenant_id);
                    if attempt >= MAX_CONTEXT_ATTEMPTS {
                        // The tenant's plan, resources or key kept changing under it: a conflict
                        // like any lost race, for the client to retry.
                        return Err(CommandError::Concurrency("Booking"));
                    }
                }
                result => return result.map(|committed| (id, committed)),
            }
        }
    }

    fn kept_context(&self, tenant_id: Uuid, resource_id: Uuid) -> Option<BookingContext> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        match kept.get(&(tenant_id, resource_id)) {
            Some(context) if context.read_at.elapsed() < KEPT_FOR => Some(context.clone()),
            Some(_) => {
                kept.retain(|_, context| context.read_at.elapsed() < KEPT_FOR);
                None
            }
            None => None,
        }
    }

    /// Forgets every kept context of `tenant_id`.
    fn forget(&self, tenant_id: Uuid) {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).retain(|(tenant, _), _| *tenant != tenant_id);
    }

    /// Reads the context of a booking of `resource_id` by `tenant_id` (one statement,
    /// `booking_context`), and keeps it if it may be kept: read with the read models reflecting
    /// every change its stamp counts, and with the tenant's key already made.
    async fn read_context(&self, tenant_id: Uuid, resource_id: Uuid) -> Result<BookingContext, CommandError<BookingError>> {
        let internal = |e: sqlx::Error| CommandError::Internal(e.to_string());
        let row: Option<ContextRow> =
            sqlx::query_as("SELECT kind, capacity, limits, addons, has_key_row, key, version, settled FROM booking_context($1, $2)")
                .bind(resource_id)
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(internal)?;
        // Another tenant's resource is, for this tenant, no resource at all.
        let ContextRow { kind, capacity, limits, addons, has_key_row, key, version, settled } =
            row.ok_or(CommandError::Domain(BookingError::ResourceNotFound))?;
        let kind = ResourceKind::parse(&kind).map_err(|e| CommandError::Internal(e.to_string()))?;
        let limits = quota::limits_from(limits.map(|l| l.0), addons.map(|a| a.0));
        let key = self
            .vault
            .key_for_writing_from(tenant_id, has_key_row.then_some(key))
            .await
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        let context = BookingContext {
            kind,
            capacity: capacity as u32,
            limits: BookingLimits { bookings_per_month: limits.bookings_per_month, tickets_per_event: limits.tickets_per_event },
            key,
            version,
            read_at: std::time::Instant::now(),
        };
        if settled && has_key_row {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() >= KEPT_CONTEXTS {
                kept.clear();
            }
            kept.insert((tenant_id, resource_id), context.clone());
        }
        Ok(context)
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
