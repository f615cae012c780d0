//! The `bookings` projection: resources (`rm.resources`) and bookings (`rm.bookings`).

use async_trait::async_trait;
use domain::booking::BookingEvent;
use domain::resource::ResourceEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::log::StoredEvent;
use crate::runner::{Projection, ProjectionError};

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
                    serde_json::from_value(event.payload.clone()).map_err(|e| ProjectionError::payload(event, e))?;
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
            "Booking" => match serde_json::from_value(event.payload.clone()).map_err(|e| ProjectionError::payload(event, e))? {
                BookingEvent::BookingConfirmed {
                    tenant_id,
                    resource_id,
                    resource_kind,
                    starts_at,
                    ends_at,
                    seats,
                    customer,
                    confirmed_at,
                    ..
                } => {
                    sqlx::query(&format!(
                        "INSERT INTO {schema}.bookings VALUES ($1, $2, $3, $4, 'confirmed', $5, $6, $7, $8, $9, NULL, $10, $10)"
                    ))
                    .bind(id()?)
                    .bind(tenant_id)
                    .bind(resource_id)
                    .bind(resource_kind.as_str())
                    .bind(starts_at)
                    .bind(ends_at)
                    .bind(seats as i32)
                    .bind(customer.name.as_str())
                    .bind(customer.email.as_str())
                    .bind(confirmed_at)
                    .execute(conn)
                    .await?;
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
