//! The registered endpoints (`webhook_endpoints`) and their delivery log
//! (`webhook_deliveries`), as the API manages and shows them. Endpoints are configuration,
//! not a projection of the log: they are written here directly, on the primary, in the same
//! transaction that reads the log head the endpoint starts after (see
//! [`super::create_endpoint_position`]).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// The endpoint store: registration, changes, removal, and the delivery log.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pool: PgPool,
}

/// A registered endpoint (never its secret, which only creation shows).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Endpoint)]
pub struct EndpointRow {
    /// Its id.
    pub id: Uuid,
    /// The tenant whose events it gets; `null`: a platform endpoint (every tenant's events).
    pub tenant_id: Option<Uuid>,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The public event types it gets (`*`: all).
    pub event_types: Vec<String>,
    /// For people.
    pub description: Option<String>,
    /// `enabled` or `disabled`.
    pub status: String,
    /// Since when every attempt has failed, if they have.
    pub failing_since: Option<DateTime<Utc>>,
    /// Registered.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// The signing secret (`whsec_...`): only in the answer that created the endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[sqlx(skip)]
    pub secret: Option<String>,
}

/// One event's delivery to one endpoint.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Delivery)]
pub struct DeliveryRow {
    /// Its id.
    pub id: Uuid,
    /// The `webhook-id` it is sent with (the same on every attempt).
    pub event_id: String,
    /// The public event type.
    pub event_type: String,
    /// Attempts made.
    pub attempts: i32,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// The HTTP status of the last attempt, if it got one.
    pub last_response_status: Option<i32>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When it is tried next, if it is.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the event was fanned out to the endpoint.
    pub created_at: DateTime<Utc>,
}

/// A new endpoint.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
    /// The signing secret, sealed with the server's key.
    pub secret_sealed: String,
    pub created_at: DateTime<Utc>,
}

/// A change of an endpoint: `None` keeps the field as it is.
#[derive(Debug, Clone, Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    /// `enabled` (which also forgets the failing streak) or `disabled`.
    pub status: Option<&'static str>,
}

/// What a manual retry sends again.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredDelivery {
    pub event_id: String,
    pub body: String,
    pub secret_sealed: String,
}

const ENDPOINT_COLUMNS: &str = "id, tenant_id, url, event_types, description, status, failing_since, created_at, updated_at";
const DELIVERY_COLUMNS: &str = "id, event_id, event_type, attempts, status, last_response_status, last_error, next_attempt_at, created_at";

impl Endpoints {
    /// The store on `pool` (the primary: endpoints are written here).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Registers `endpoint`; it gets the events appended after this moment.
    pub async fn create(&self, endpoint: NewEndpoint) -> Result<EndpointRow, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let after = super::create_endpoint_position(&mut tx).await?;
        let row = sqlx::query_as(&format!(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, event_types, description, status, secret_sealed, created_after, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 'enabled', $6, $7, $8, $8) RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(endpoint.id)
        .bind(endpoint.tenant_id)
        .bind(&endpoint.url)
        .bind(&endpoint.event_types)
        .bind(&endpoint.description)
        .bind(&endpoint.secret_sealed)
        .bind(after)
        .bind(endpoint.created_at)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Endpoint `id`.
    pub async fn find(&self, id: Uuid) -> Result<Option<EndpointRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1")).bind(id).fetch_optional(&self.pool).await
    }

    /// Up to `limit` of tenant `tenant_id`'s endpoints (the platform's when `None`) created
    /// after `after` (an instant and an id), oldest first.
    pub async fn list(
        &self,
        tenant_id: Option<Uuid>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<EndpointRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
             WHERE tenant_id IS NOT DISTINCT FROM $1 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
             ORDER BY created_at, id LIMIT $4"
        ))
        .bind(tenant_id)
        .bind(after.map(|c| c.0))
        .bind(after.map(|c| c.1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Up to 100 disabled endpoints, by URL (the console's overview): `(url, tenant_id)`.
    pub async fn disabled(&self) -> Result<Vec<(String, Option<Uuid>)>, sqlx::Error> {
        sqlx::query_as("SELECT url, tenant_id FROM webhook_endpoints WHERE status = 'disabled' ORDER BY url LIMIT 100")
            .fetch_all(&self.pool)
            .await
    }

    /// Applies `change` to endpoint `id` at `now`.
    pub async fn change(&self, id: Uuid, change: EndpointChange, now: DateTime<Utc>) -> Result<EndpointRow, sqlx::Error> {
        sqlx::query_as(&format!(
            "UPDATE webhook_endpoints SET url = coalesce($2, url), event_types = coalesce($3, event_types),
                    description = coalesce($4, description), status = coalesce($5, status),
                    failing_since = CASE WHEN $5 = 'enabled' THEN NULL ELSE failing_since END, updated_at = $6
             WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(id)
        .bind(&change.url)
        .bind(&change.event_types)
        .bind(&change.description)
        .bind(change.status)
        .bind(now)
        .fetch_one(&self.pool)
        .await
    }

    /// Deletes endpoint `id` with its deliveries.
    pub async fn delete(&self, id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1").bind(id).execute(&self.pool).await.map(|_| ())
    }

    /// Up to `limit` of endpoint `endpoint`'s deliveries (in `status`, if given) created before
    /// `before` (an instant and an id), newest first.
    pub async fn deliveries(
        &self,
        endpoint: Uuid,
        status: Option<&str>,
        before: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
             WHERE endpoint_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
             ORDER BY created_at DESC, id DESC LIMIT $5"
        ))
        .bind(endpoint)
        .bind(status)
        .bind(before.map(|c| c.0))
        .bind(before.map(|c| c.1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Delivery `id`.
    pub async fn delivery(&self, id: Uuid) -> Result<Option<DeliveryRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// What delivery `id` of endpoint `endpoint` sends: its event id, body and the endpoint's
    /// sealed secret.
    pub async fn stored_delivery(&self, endpoint: Uuid, id: Uuid) -> Result<Option<StoredDelivery>, sqlx::Error> {
        sqlx::query_as(
            "SELECT d.event_id, d.body, w.secret_sealed FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id
             WHERE d.id = $1 AND d.endpoint_id = $2",
        )
        .bind(id)
        .bind(endpoint)
        .fetch_optional(&self.pool)
        .await
    }

    /// Records a manual attempt of delivery `id` (see [`super::record`]).
    pub async fn record(&self, id: Uuid, endpoint: Uuid, attempt: &super::Attempt, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        super::record(&self.pool, id, endpoint, attempt, now).await
    }
}
