//! The event relay: follows the global log from its own checkpoint and publishes every event,
//! once and in order, to NATS JetStream, so that analytics consumers scale apart from the API.
//!
//! Subjects are `<prefix>.<tenant id | platform>.<aggregate_type>.<event_type>`; the payload is
//! the event as `GET /v1/events` shows it; the header `Nats-Msg-Id` is the global position, so
//! JetStream drops a re-publication (the stream's duplicate window is an hour). Each event's
//! acknowledgement is awaited before the next is sent, so the stream holds events in log
//! order even when a publish fails half-way; the checkpoint moves after each acknowledged
//! batch. A crash between a publish and its checkpoint re-publishes at most one batch on
//! restart, and JetStream de-duplicates it. One instance at a time relays (leader of
//! `relay:<stream>`).

use std::time::Duration;

use async_nats::jetstream::{self, context::Publish};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoint;
use crate::leader;
use crate::log::{self, StoredEvent};

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// NATS server URL (`nats://127.0.0.1:4222`).
    pub url: String,
    /// JetStream stream name (created if missing).
    pub stream: String,
    /// First subject token (`saas-ledger`).
    pub subject_prefix: String,
    /// Events per checkpoint.
    pub batch: i64,
    /// Test hook: stop with an error after publishing this many events, before their checkpoint
    /// (a crash at the worst moment).
    pub crash_after: Option<u64>,
}

impl RelayConfig {
    /// The defaults for `url`: stream `SAAS_LEDGER`, subjects `saas-ledger.>`.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            stream: "SAAS_LEDGER".to_owned(),
            subject_prefix: "saas-ledger".to_owned(),
            batch: 500,
            crash_after: None,
        }
    }
}

/// Why a relay round stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// NATS or JetStream.
    #[error("nats: {0}")]
    Nats(String),
    /// The test hook fired.
    #[error("crashed on purpose after {0} events")]
    Crashed(u64),
}

fn nats(e: impl std::fmt::Display) -> RelayError {
    RelayError::Nats(e.to_string())
}

/// The subject of `event`.
pub fn subject(prefix: &str, event: &StoredEvent) -> String {
    let token = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect::<String>();
    let tenant = event.tenant_id.map_or_else(|| "platform".to_owned(), |t| t.to_string());
    format!("{prefix}.{tenant}.{}.{}", token(&event.aggregate_type), token(&event.event_type))
}

/// The relay.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: PgPool,
    config: RelayConfig,
}

impl Relay {
    /// A relay from `pool`'s log to `config`'s stream.
    pub fn new(pool: PgPool, config: RelayConfig) -> Self {
        Self { pool, config }
    }

    /// The position up to which everything was published and acknowledged.
    pub async fn checkpoint(&self) -> Result<i64, sqlx::Error> {
        Checkpoint::new(&self.config.stream).read(&self.pool).await
    }

    /// Relays while this instance leads, until `shutdown`; a failed round is retried.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = format!("relay:{}", self.config.stream);
        leader::lead(self.pool.clone(), &name, shutdown, |lost| {
            let relay = self.clone();
            async move {
                let mut failures = 0u32;
                loop {
                    match relay.follow(&lost).await {
                        Ok(()) => return,
                        Err(e) => {
                            failures += 1;
                            tracing::error!(error = %e, failures, "event relay stopped; retrying");
                        }
                    }
                    tokio::select! {
                        () = lost.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(250 * u64::from(failures.min(40)))) => {}
                    }
                }
            }
        })
        .await;
    }

    /// Connects and publishes until `stop` (then `Ok`) or a failure.
    pub async fn follow(&self, stop: &CancellationToken) -> Result<(), RelayError> {
        let client = async_nats::connect(&self.config.url).await.map_err(nats)?;
        let js = jetstream::new(client);
        js.get_or_create_stream(jetstream::stream::Config {
            name: self.config.stream.clone(),
            subjects: vec![format!("{}.>", self.config.subject_prefix)],
            duplicate_window: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .map_err(nats)?;
        let mut published = 0u64;
        loop {
            let after = self.checkpoint().await?;
            let events = log::read_after(&self.pool, after, self.config.batch, None).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            };
            for event in &events {
                let payload = serde_json::to_vec(event).map_err(nats)?;
                let ack = js
                    .send_publish(
                        subject(&self.config.subject_prefix, event),
                        Publish::build().message_id(event.position.to_string()).payload(payload.into()),
                    )
                    .await
                    .map_err(nats)?;
                ack.await.map_err(nats)?;
                published += 1;
                if self.config.crash_after == Some(published) {
                    return Err(RelayError::Crashed(published));
                }
            }
            Checkpoint::new(&self.config.stream).save(&self.pool, last).await?;
            if stop.is_cancelled() {
                return Ok(());
            }
        }
    }
}
