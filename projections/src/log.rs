//! The global event log: every event in position order, as projections, replay and
//! consumers read it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// One event as stored, with its global position.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StoredEvent {
    /// Global position: gap-free, strictly increasing in the order events became visible.
    pub position: i64,
    /// The tenant it belongs to (`None` for platform events).
    pub tenant_id: Option<Uuid>,
    /// `Tenant`, `Subscription`, ...
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// Position within the aggregate's stream (1, 2, ...).
    pub sequence: i64,
    /// `TenantCreated`, ...
    pub event_type: String,
    /// The payload's schema version.
    pub event_version: String,
    /// The event itself.
    pub payload: Value,
    /// Who, why, when (see `commands::CommandContext`).
    pub metadata: Value,
    /// When the database stored it.
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The event's `occurred_at` metadata (the command's clock), falling back to `recorded_at`.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.metadata
            .get("occurred_at")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map_or(self.recorded_at, |t| t.with_timezone(&Utc))
    }
}

impl StoredEvent {
    /// The event lifted to its current version by the domain's upcasters (see
    /// `domain::upcasting`); the stored row is never rewritten.
    pub fn upcast(&self) -> StoredEvent {
        self.clone().into_upcast()
    }

    /// [`Self::upcast`], consuming the event: an event that no upcaster applies to (nearly
    /// all) is handed back as it is, without copying its payload.
    pub fn into_upcast(self) -> StoredEvent {
        if !UPCASTERS.iter().any(|u| u.can_upcast(&self.event_type, &self.event_version)) {
            return self;
        }
        let StoredEvent {
            position,
            tenant_id,
            aggregate_type,
            aggregate_id,
            sequence,
            event_type,
            event_version,
            payload,
            metadata,
            recorded_at,
        } = self;
        let serialized = cqrs_es::persist::SerializedEvent::new(
            aggregate_id.clone(),
            sequence as usize,
            aggregate_type.clone(),
            event_type,
            event_version,
            payload,
            metadata,
        );
        let lifted = domain::upcasting::upcast(serialized, &UPCASTERS);
        StoredEvent {
            position,
            tenant_id,
            aggregate_type,
            aggregate_id,
            sequence,
            event_type: lifted.event_type,
            event_version: lifted.event_version,
            payload: lifted.payload,
            metadata: lifted.metadata,
            recorded_at,
        }
    }
}

static UPCASTERS: std::sync::LazyLock<Vec<Box<dyn cqrs_es::persist::EventUpcaster>>> =
    std::sync::LazyLock::new(domain::upcasting::upcasters);

/// The columns a [`StoredEvent`] is read from.
pub const COLUMNS: &str =
    "position, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at";

/// Reads the log.
#[derive(Debug, Clone)]
pub struct EventLog {
    pool: PgPool,
}

impl EventLog {
    /// A reader over `pool`'s `events` table.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Up to `limit` events after `after`, in order; only `tenant`'s when given.
    pub async fn read_after(&self, after: i64, limit: i64, tenant: Option<Uuid>) -> Result<Vec<StoredEvent>, sqlx::Error> {
        read_after(&self.pool, after, limit, tenant).await
    }

    /// The highest position assigned so far.
    pub async fn head(&self) -> Result<i64, sqlx::Error> {
        head(&self.pool).await
    }

    /// Aggregate `aggregate_type`/`aggregate_id` rebuilt from its events up to `until` (only
    /// if it is `tenant`'s, when given): see [`crate::replay`].
    pub async fn replay(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        until: crate::replay::Until,
        tenant: Option<Uuid>,
    ) -> Result<Option<crate::replay::Replayed>, crate::replay::ReplayError> {
        crate::replay::replay(&self.pool, aggregate_type, aggregate_id, until, tenant).await
    }

    /// The id of the tenant whose code is `code`, as the write side claimed it (in the log's
    /// own database, so a replay works before any read model is built).
    pub async fn tenant_by_code(&self, code: &str) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar("SELECT tenant_id FROM tenant_codes WHERE code = $1").bind(code).fetch_optional(&self.pool).await
    }

    /// The position of `tenant`'s last event, if it has any.
    pub async fn tenant_head(&self, tenant: Uuid) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT max(position) FROM events WHERE tenant_id = $1").bind(tenant).fetch_one(&self.pool).await
    }

    /// Up to `limit` of `tenant`'s events after `after`, in order, only those of one aggregate
    /// type and id when given (the replay of a tenant's history).
    pub async fn read_tenant(
        &self,
        tenant: Uuid,
        after: i64,
        aggregate: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM events WHERE tenant_id = $1 AND position > $2 AND ($3::text IS NULL OR aggregate_type = $3)
               AND ($4::text IS NULL OR aggregate_id = $4)
             ORDER BY position LIMIT $5"
        ))
        .bind(tenant)
        .bind(after)
        .bind(aggregate.map(|a| a.0))
        .bind(aggregate.map(|a| a.1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Up to `limit` events after `after` (only `tenant`'s when given) with their payload and
    /// metadata as the stored JSON text, streamed as read (the event feed writes them out
    /// without parsing them).
    pub fn feed(&self, after: i64, limit: i64, tenant: Option<Uuid>) -> futures::stream::BoxStream<'_, Result<RawEvent, sqlx::Error>> {
        sqlx::query_as::<_, RawEvent>(
            "SELECT position, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload::text AS payload, metadata::text AS metadata, recorded_at
             FROM events WHERE position > $1 AND ($3::uuid IS NULL OR tenant_id = $3) ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .bind(tenant)
        .fetch(&self.pool)
    }
}

/// An event exactly as stored: its payload and metadata as Postgres's text of the stored
/// `jsonb` (keys in `jsonb`'s own order), never upcast. The event feed writes it out without
/// parsing it ([`EventLog::feed`]); the audit chain hashes it (`crate::audit`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RawEvent {
    /// Global position.
    pub position: i64,
    /// The tenant it belongs to (`None` for platform events).
    pub tenant_id: Option<Uuid>,
    /// `Tenant`, `Subscription`, ...
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// Position within the aggregate's stream.
    pub sequence: i64,
    /// `TenantCreated`, ...
    pub event_type: String,
    /// The payload's schema version.
    pub event_version: String,
    /// The payload's JSON text.
    pub payload: String,
    /// The metadata's JSON text.
    pub metadata: String,
    /// When the database stored it.
    pub recorded_at: DateTime<Utc>,
    /// The event's digest when Postgres computed it (the audit's reads of a large payload):
    /// then `payload` holds only what a summary reads.
    #[sqlx(default)]
    pub digest: Option<String>,
}

/// [`EventLog::read_after`] on any connection (projectors read inside their transaction).
pub async fn read_after(db: impl PgExecutor<'_>, after: i64, limit: i64, tenant: Option<Uuid>) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM events WHERE position > $1 AND ($3::uuid IS NULL OR tenant_id = $3) ORDER BY position LIMIT $2");
    sqlx::query_as(&sql).bind(after).bind(limit).bind(tenant).fetch_all(db).await
}

/// The events at positions `after < position <= upto`, in order, only those of
/// `aggregate_types` if given. Positions are gap-free, so the range holds exactly
/// `upto - after` events when `upto` is at most the head.
///
/// The type test is written `(..) IS TRUE`, which no index can serve, so that the range is
/// always read through the position index: with stale statistics (a bulk append, autovacuum
/// off) the planner otherwise combined it with the primary key's `aggregate_type` prefix,
/// reading every event of the type ever appended to find a few thousand (seen: a bitmap of
/// all usage events, once per projector batch).
pub async fn read_range(
    db: impl PgExecutor<'_>,
    after: i64,
    upto: i64,
    aggregate_types: Option<&[&str]>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events WHERE position > $1 AND position <= $2 AND ($3::text[] IS NULL OR (aggregate_type = ANY($3)) IS TRUE) ORDER BY position"
    );
    sqlx::query_as(&sql).bind(after).bind(upto).bind(aggregate_types).fetch_all(db).await
}

/// [`EventLog::head`] on any connection.
pub async fn head(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM event_log_head").fetch_one(db).await
}
