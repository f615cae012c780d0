//! The `bookings` projection: resources (`rm.resources`) and bookings (`rm.bookings`).

use async_trait::async_trait;
use domain::booking::BookingEvent;
use domain::resource::ResourceEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::log::StoredEvent;
use crate::runner::{Projection, ProjectionError};

pub mod reads;

/// Builds `resources` and `bookings`.
#[derive(Debug, Clone, Copy)]
pub struct BookingsProjection;

#[async_trait]
impl Projection for BookingsProjection {
    fn name(&self) -> &'static str {
        "bookings"
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Resource", "Booking"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["resources", "bookings"]
    }

    fn analytics_views(&self) -> Vec<(&'static str, String)> {
        vec![(
            "bookings_daily",
            "SELECT tenant_id, resource_id, resource_kind, date_trunc('day', starts_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day,
                    count(*) FILTER (WHERE status = 'confirmed') AS confirmed, count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
                    coalesce(sum(seats) FILTER (WHERE status = 'confirmed'), 0) AS seats
             FROM {schema}.bookings GROUP BY tenant_id, resource_id, resource_kind, 4"
                .to_owned(),
        )]
    }

    async fn create(&self, conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
        let ddl = format!(
            "CREATE TABLE {schema}.resources (
                 id         uuid PRIMARY KEY,
                 tenant_id  uuid NOT NULL,
                 name       text NOT NULL,
                 kind       text NOT NULL,
                 capacity   integer NOT NULL,
                 timezone   text NOT NULL,
                 created_at timestamptz NOT NULL
             );
             CREATE INDEX ON {schema}.resources (tenant_id, id);
             CREATE TABLE {schema}.bookings (
                 id             uuid PRIMARY KEY,
                 tenant_id      uuid NOT NULL,
                 resource_id    uuid NOT NULL,
                 resource_kind  text NOT NULL,
                 status         text NOT NULL,
                 starts_at      timestamptz NOT NULL,
                 ends_at        timestamptz NOT NULL,
                 seats          integer NOT NULL,
                 customer_name  text NOT NULL,
                 customer_email text NOT NULL,
                 cancel_reason  text,
                 created_at     timestamptz NOT NULL,
                 updated_at     timestamptz NOT NULL
             );
             CREATE INDEX ON {schema}.bookings (tenant_id, starts_at);
             CREATE INDEX ON {schema}.bookings (resource_id, starts_at);"
        );
        sqlx::Executor::execute(&mut *conn, ddl.as_str()).await?;
        Ok(())
    }

    /// Runs of confirmations (what a flood of bookings is) go in one multi-row INSERT; any
    /// other event is applied on its own, in order, after the confirmations before it.
    async fn apply_batch(&self, conn: &mut PgConnection, schema: &str, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        let mut confirmed = Confirmations::default();
        for event in events {
            if !confirmed.push(event)? {
                confirmed.insert(&mut *conn, schema).await?;
                self.apply(&mut *conn, schema, event).await?;
            }
        }
        confirmed.insert(&mut *conn, schema).await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
        let id = || {
            event
                .aggregate_id
                .parse::<Uuid>()
                .map_err(|_| ProjectionError::payload(event, serde::de::Error::custom("aggregate id is not a uuid")))
        };
        match event.aggregate_type.as_str() {
            "Resource" => {
                let ResourceEvent::ResourceCreated { tenant_id, name, kind, capacity, timezone, created_at, .. } =
                    serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
                sqlx::query(&format!("INSERT INTO {schema}.resources VALUES ($1, $2, $3, $4, $5, $6, $7)"))
                    .bind(id()?)
                    .bind(tenant_id)
                    .bind(name.as_str())
                    .bind(kind.as_str())
                    .bind(capacity as i32)
                    .bind(timezone.as_str())
                    .bind(created_at)
                    .execute(conn)
                    .await?;
            }
            "Booking" => match serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))? {
                BookingEvent::BookingConfirmed { .. } => {
                    let mut confirmed = Confirmations::default();
                    confirmed.push(event)?;
                    confirmed.insert(conn, schema).await?;
                }
                BookingEvent::BookingRescheduled { starts_at, ends_at, rescheduled_at, .. } => {
                    sqlx::query(&format!("UPDATE {schema}.bookings SET starts_at = $2, ends_at = $3, updated_at = $4 WHERE id = $1"))
                        .bind(id()?)
                        .bind(starts_at)
                        .bind(ends_at)
                        .bind(rescheduled_at)
                        .execute(conn)
                        .await?;
                }
                BookingEvent::BookingCancelled { reason, cancelled_at, .. } => {
                    sqlx::query(&format!(
                        "UPDATE {schema}.bookings SET status = 'cancelled', cancel_reason = $2, updated_at = $3 WHERE id = $1"
                    ))
                    .bind(id()?)
                    .bind(reason)
                    .bind(cancelled_at)
                    .execute(conn)
                    .await?;
                }
            },
            _ => {}
        }
        Ok(())
    }
}

fn booking_id(event: &StoredEvent) -> Result<Uuid, ProjectionError> {
    event.aggregate_id.parse::<Uuid>().map_err(|_| ProjectionError::payload(event, serde::de::Error::custom("aggregate id is not a uuid")))
}

/// Confirmed bookings waiting to be inserted, column by column.
#[derive(Default)]
struct Confirmations {
    id: Vec<Uuid>,
    tenant_id: Vec<Uuid>,
    resource_id: Vec<Uuid>,
    resource_kind: Vec<String>,
    starts_at: Vec<chrono::DateTime<chrono::Utc>>,
    ends_at: Vec<chrono::DateTime<chrono::Utc>>,
    seats: Vec<i32>,
    customer_name: Vec<String>,
    customer_email: Vec<String>,
    at: Vec<chrono::DateTime<chrono::Utc>>,
}

impl Confirmations {
    /// Takes `event` if it confirms a booking; `false` for any other event.
    fn push(&mut self, event: &StoredEvent) -> Result<bool, ProjectionError> {
        if event.aggregate_type != "Booking" || event.event_type != "BookingConfirmed" {
            return Ok(false);
        }
        let payload = serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
        let BookingEvent::BookingConfirmed {
            tenant_id, resource_id, resource_kind, starts_at, ends_at, seats, customer, confirmed_at, ..
        } = payload
        else {
            return Ok(false);
        };
        self.id.push(booking_id(event)?);
        self.tenant_id.push(tenant_id);
        self.resource_id.push(resource_id);
        self.resource_kind.push(resource_kind.as_str().to_owned());
        self.starts_at.push(starts_at);
        self.ends_at.push(ends_at);
        self.seats.push(seats as i32);
        self.customer_name.push(customer.name.as_str().to_owned());
        self.customer_email.push(customer.email.as_str().to_owned());
        self.at.push(confirmed_at);
        Ok(true)
    }

    /// Inserts what is waiting (one statement) and empties it.
    async fn insert(&mut self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.id.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(self);
        sqlx::query(&format!(
            "INSERT INTO {schema}.bookings
             SELECT id, tenant_id, resource_id, kind, 'confirmed', starts_at, ends_at, seats, name, email, NULL, at, at
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::int[], $8::text[],
                         $9::text[], $10::timestamptz[])
                  AS r(id, tenant_id, resource_id, kind, starts_at, ends_at, seats, name, email, at)"
        ))
        .bind(&rows.id)
        .bind(&rows.tenant_id)
        .bind(&rows.resource_id)
        .bind(&rows.resource_kind)
        .bind(&rows.starts_at)
        .bind(&rows.ends_at)
        .bind(&rows.seats)
        .bind(&rows.customer_name)
        .bind(&rows.customer_email)
        .bind(&rows.at)
        .execute(conn)
        .await?;
        Ok(())
    }
}
