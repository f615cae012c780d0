//! Reads of the `bookings` projection's tables: `rm.resources` (rooms and events) and
//! `rm.bookings` (customers' names and e-mails sealed with the tenant's key).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::reads::ReadModels;

/// Reads of resources and bookings.
#[derive(Debug, Clone, Copy)]
pub struct BookingReads<'a>(&'a PgPool);

impl ReadModels {
    /// Resources and bookings.
    pub fn bookings(&self) -> BookingReads<'_> {
        BookingReads(self.pool())
    }
}

/// A room or an event.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = ResourceView)]
pub struct ResourceRow {
    /// Its id.
    pub id: Uuid,
    /// Whose.
    pub tenant_id: Uuid,
    /// Its name.
    pub name: String,
    /// `room` or `event`.
    #[schema(pattern = "^(room|event)$")]
    pub kind: String,
    /// People a booking may hold (a room), or seats (an event).
    #[schema(minimum = 1)]
    pub capacity: i32,
    /// IANA time zone.
    #[schema(example = "Europe/Zurich")]
    pub timezone: String,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// A booking as the read model has it; the customer's name and e-mail sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BookingRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub resource_id: Uuid,
    pub resource_kind: String,
    pub status: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub seats: i32,
    pub customer_name: String,
    pub customer_email: String,
    pub cancel_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Which bookings a list shows.
#[derive(Debug, Clone, Default)]
pub struct BookingFilter {
    /// Of this resource only.
    pub resource_id: Option<Uuid>,
    /// Ending after.
    pub from: Option<DateTime<Utc>>,
    /// Starting before.
    pub to: Option<DateTime<Utc>>,
    /// `confirmed` or `cancelled`.
    pub status: Option<String>,
}

const BOOKING_COLUMNS: &str = "id, tenant_id, resource_id, resource_kind, status, starts_at, ends_at, seats, customer_name, customer_email, cancel_reason, created_at, updated_at";

impl BookingReads<'_> {
    /// Resource `id` of tenant `tenant_id`.
    pub async fn resource(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<ResourceRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, tenant_id, name, kind, capacity, timezone, created_at FROM rm.resources WHERE id = $1 AND tenant_id = $2",
        )
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(self.0)
        .await
    }

    /// Up to `limit` of tenant `tenant_id`'s resources (of `kind`, if given) with ids after
    /// `after`, in id order.
    pub async fn resources(
        &self,
        tenant_id: Uuid,
        kind: Option<&str>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<ResourceRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, tenant_id, name, kind, capacity, timezone, created_at FROM rm.resources
             WHERE tenant_id = $1 AND ($2::text IS NULL OR kind = $2) AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
        )
        .bind(tenant_id)
        .bind(kind)
        .bind(after)
        .bind(limit)
        .fetch_all(self.0)
        .await
    }

    /// Booking `id` of tenant `tenant_id`.
    pub async fn booking(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<BookingRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {BOOKING_COLUMNS} FROM rm.bookings WHERE id = $1 AND tenant_id = $2"))
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(self.0)
            .await
    }

    /// Up to `limit` of tenant `tenant_id`'s bookings starting after `after` (an instant and
    /// an id), in that order.
    pub async fn list(
        &self,
        tenant_id: Uuid,
        filter: BookingFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<BookingRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {BOOKING_COLUMNS} FROM rm.bookings
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR resource_id = $2) AND ($3::timestamptz IS NULL OR ends_at > $3)
               AND ($4::timestamptz IS NULL OR starts_at < $4) AND ($5::text IS NULL OR status = $5)
               AND ($6::timestamptz IS NULL OR (starts_at, id) > ($6, $7))
             ORDER BY starts_at, id LIMIT $8"
        ))
        .bind(tenant_id)
        .bind(filter.resource_id)
        .bind(filter.from)
        .bind(filter.to)
        .bind(filter.status)
        .bind(after.map(|c| c.0))
        .bind(after.map(|c| c.1))
        .bind(limit)
        .fetch_all(self.0)
        .await
    }

    /// Every booking of tenant `tenant_id`'s with its sealed customer: `(id, name, e-mail)`,
    /// in the export's order (start, id).
    pub async fn customers(&self, tenant_id: Uuid) -> Result<Vec<(Uuid, String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT id, customer_name, customer_email FROM rm.bookings WHERE tenant_id = $1 ORDER BY starts_at, id")
            .bind(tenant_id)
            .fetch_all(self.0)
            .await
    }
}
