//! The checkpoints of the log followers that are not projections: the NATS relay (one per
//! stream, `<stream>`), the webhook fan-out (`webhooks`) and the quota alerts
//! (`webhooks:quota`). Each keeps the last position it has handled in `follower_checkpoints`;
//! a follower that writes its checkpoint in the transaction that does its work (the fan-out)
//! handles each event exactly once, one that writes it after (the relay, whose work is outside
//! Postgres) at least once. Projections keep theirs in `projection_runs` (see [`crate::runner`]).

use std::borrow::Cow;

use sqlx::PgExecutor;

/// One follower's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    name: Cow<'static, str>,
}

impl Checkpoint {
    /// The checkpoint named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: Cow::Owned(name.into()) }
    }

    /// The checkpoint with the fixed name `name` (for a `const`).
    pub const fn fixed(name: &'static str) -> Self {
        Self { name: Cow::Borrowed(name) }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last position handled (0: nothing yet).
    pub async fn read(&self, db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT coalesce((SELECT position FROM follower_checkpoints WHERE name = $1), 0)")
            .bind(self.name.as_ref())
            .fetch_one(db)
            .await
    }

    /// Everything up to `position` is handled.
    pub async fn save(&self, db: impl PgExecutor<'_>, position: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO follower_checkpoints (name, position, updated_at) VALUES ($1, $2, now())
             ON CONFLICT (name) DO UPDATE SET position = $2, updated_at = now()",
        )
        .bind(self.name.as_ref())
        .bind(position)
        .execute(db)
        .await
        .map(|_| ())
    }
}
