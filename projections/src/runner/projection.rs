//! What a projection is to the runner: its name, version and tables, how it applies events (one by
//! one, in batches, or a whole range in SQL), the indexes it defers, the analytics views it
//! declares, and the errors it reports; and one run of it as the status shows it.

use super::*;

/// A read model built from the log.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name (`tenants`); also the prefix of its schemas.
    fn name(&self) -> &'static str;
    /// Bump whenever the tables or the logic change: the new version is rebuilt beside the
    /// old one and swapped in when it has caught up.
    fn version(&self) -> i32;
    /// The tables it owns, each exposed as the view `rm.<table>`.
    fn tables(&self) -> &'static [&'static str];
    /// Creates its (empty) tables in `schema`.
    async fn create(&self, conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error>;
    /// Extra views the projection exposes in the `analytics` schema, as `(name, SELECT ...)`
    /// with `{schema}` standing for the live run's schema; swapped with its tables.
    fn analytics_views(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Whether the projection wants events exactly as stored rather than upcast to their
    /// current version (only the audit chain, which hashes what is stored).
    fn reads_stored_events(&self) -> bool {
        false
    }
    /// The aggregate types whose events it applies (`None`: every event). The others are
    /// not even read: the checkpoint moves over them.
    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        None
    }
    /// Applies one event to the tables in `schema`. Called in global order, exactly once per
    /// event, inside the transaction that also moves the checkpoint. Takes time from the
    /// event, never from a clock, so that a rebuild gives the same answer.
    async fn apply(&self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError>;
    /// Applies consecutive events, as [`Projection::apply`] would one by one. Projections with
    /// many writes per event override it with multi-row statements. If it fails, the runner
    /// rolls the batch back and applies the events one by one to find the failing one.
    async fn apply_batch(&self, conn: &mut PgConnection, schema: &str, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            self.apply(conn, schema, event).await?;
        }
        Ok(())
    }
    /// How many positions one batch of this projection covers at most, if not the runner's
    /// default (2,000; 5,000 for a projection of some aggregate types).
    fn batch_span(&self) -> Option<i64> {
        None
    }
    /// Indexes that reads need and applying does not (`CREATE [UNIQUE] INDEX IF NOT EXISTS ..`,
    /// `{schema}` standing for the run's schema). A run fills its tables without them and
    /// creates them once it has caught up, just before it is swapped in: a table loaded first
    /// and indexed after is indexed by one sort, not by one b-tree insert per row.
    fn deferred_indexes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Applies every event at positions `after < position <= upto` (of its aggregate types) in
    /// one go, in the batch's transaction on `conn`. By default the events are read here (only
    /// its aggregate types, upcast unless it reads stored events) and handed to
    /// [`Projection::apply_batch`]; a projection that reads the log better itself (in SQL, or
    /// only the columns it needs) overrides it, and may use `log` to read events outside the
    /// transaction (such as the next range, ahead of time). If it fails, the runner rolls the
    /// batch back and applies the events one by one ([`Projection::apply`]) to find the
    /// failing one.
    async fn apply_range(
        &self,
        conn: &mut PgConnection,
        schema: &str,
        after: i64,
        upto: i64,
        _log: &PgPool,
    ) -> Result<(), ProjectionError> {
        let events = log::read_range(&mut *conn, after, upto, self.aggregate_types()).await?;
        if events.is_empty() {
            // Nothing of its types in the range: only the checkpoint moves.
            return Ok(());
        }
        if self.reads_stored_events() {
            self.apply_batch(conn, schema, &events).await
        } else {
            let events: Vec<StoredEvent> = events.into_iter().map(StoredEvent::into_upcast).collect();
            self.apply_batch(conn, schema, &events).await
        }
    }
}

/// Why a projection could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The database refused a write.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The payload does not have the shape the projection expects.
    #[error("cannot read {event_type} payload: {source}")]
    Payload {
        /// The event type.
        event_type: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

impl ProjectionError {
    /// A payload decoding error for `event`.
    pub fn payload(event: &StoredEvent, source: serde_json::Error) -> Self {
        Self::Payload { event_type: event.event_type.clone(), source }
    }
}

/// One run of a projection, as the status endpoint shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = ProjectionRun)]
pub struct RunInfo {
    /// Projection name.
    pub name: String,
    /// Projection version the run builds.
    pub version: i32,
    /// Run number within the projection.
    pub generation: i32,
    /// `building` (catching up beside the live run), `live` (serving reads) or `retired`.
    #[schema(pattern = "^(building|live|retired)$")]
    pub status: String,
    /// The last position applied.
    pub position: i64,
    /// The log's head when asked.
    pub head: i64,
    /// `head - position`.
    pub lag: i64,
    /// Why the run is stuck, if it is.
    pub last_error: Option<String>,
    /// The position it is stuck at.
    pub last_error_position: Option<i64>,
    /// The instance (its `application_name`) that runs this projection now, if any.
    #[sqlx(default)]
    pub leader: Option<String>,
}
