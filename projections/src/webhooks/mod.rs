//! Outbound webhooks (contract: *Outbound webhooks*): the log's events, as public event types,
//! POSTed to the endpoints that platform operators and tenants register, signed as the
//! Standard Webhooks specification says.
//!
//! Two loops, run by one instance at a time (leader of `webhooks`):
//! - **fan-out**: follows the global log from its checkpoint (`webhooks` in
//!   `follower_checkpoints`, see [`crate::checkpoint`]) and, in the checkpoint's transaction, creates one delivery per event
//!   and matching enabled endpoint: each event is fanned out exactly once however the process
//!   dies. Without any enabled endpoint it moves the checkpoint to the head without reading
//!   events (endpoints are created under the head's lock, see [`create_endpoint_position`]).
//! - **dispatch**: sends each endpoint's oldest pending delivery once it is due (log order per
//!   endpoint; one attempt in flight per endpoint, endpoints side by side, so a slow or dead
//!   endpoint delays only itself). An attempt is recorded after its answer: a crash in between
//!   sends it again, with the same `webhook-id` (at least once).
//!
//! A failed attempt is retried after [`RETRY_SCHEDULE`] on the server's clock (the test clock
//! moves it), then the delivery is `failed`; an endpoint whose attempts have all failed for
//! [`DISABLE_AFTER`] is disabled. Targets are checked against SSRF on creation and again on
//! every attempt, after DNS resolution, and the connection goes to the address checked
//! ([`check_target`]); redirects are not followed.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use domain::sealing::SealingKey;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::checkpoint::Checkpoint;
use crate::leader;
use crate::log::StoredEvent;

mod attempts;
pub mod endpoints;
mod events;
mod quota;
mod secrets;
mod target;

pub use attempts::{record, send, Attempt, ATTEMPT_TIMEOUT, CONNECT_TIMEOUT, DISABLE_AFTER, MAX_RESPONSE_BYTES, RETRY_SCHEDULE};
pub use events::{body, event_id, mapped_event_types, public_type, EVENT_TYPES};
pub use quota::{quota_candidates, record_threshold, Threshold};
pub use secrets::{new_secret, signature, Sealer};
pub use target::{check_target, is_public, AllowList, Target};
/// Attempts in flight at once (each to a different endpoint).
const IN_FLIGHT: usize = 32;
/// Positions fanned out per transaction.
const FAN_OUT_BATCH: i64 = 5_000;

/// The fan-out's checkpoint (the derived deliveries and quota alerts are ordered after it).
const FAN_OUT: Checkpoint = Checkpoint::fixed("webhooks");

/// The server's clock (the test clock when enabled).
pub type Now = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The log head an endpoint created now starts after, read under the head's lock, so that
/// the fan-out, which skips to the head when no endpoint is enabled, cannot skip an event the
/// endpoint should get: call it in the endpoint's insert transaction.
pub async fn create_endpoint_position(tx: &mut sqlx::PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM event_log_head FOR UPDATE").fetch_one(tx).await
}

/// Opens the personal fields of a delivery's body (sealed as the log keeps them) right before
/// it is sent, so that the receiver gets them in the clear while the database keeps them
/// sealed: after a tenant's erasure they open no more. Given by the write side, which holds
/// the vault.
pub type Opener = Arc<dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> + Send + Sync>;

/// How sealed personal data begins (`commands::vault`).
const SEALED_PERSONAL_DATA: &str = "pii1:";

/// The fan-out and the dispatcher.
#[derive(Clone)]
pub struct Webhooks {
    pool: PgPool,
    now: Now,
    allow: AllowList,
    sealer: Sealer,
    opener: Option<Opener>,
    /// How often the loops look for work.
    pub poll: Duration,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").field("allow", &self.allow).finish_non_exhaustive()
    }
}

/// The events of a fan-out batch, column by column.
#[derive(Default)]
struct FanOutRows {
    positions: Vec<i64>,
    tenants: Vec<Option<Uuid>>,
    types: Vec<String>,
    ids: Vec<String>,
    bodies: Vec<String>,
}

/// A pending delivery due now, with its endpoint's target.
#[derive(Debug, sqlx::FromRow)]
struct Due {
    id: Uuid,
    endpoint_id: Uuid,
    event_id: String,
    body: String,
    next_attempt_at: Option<DateTime<Utc>>,
    url: String,
    secret_sealed: String,
}

impl Webhooks {
    /// Webhooks from `pool`'s log on clock `now`.
    pub fn new(pool: PgPool, now: Now, allow: AllowList, sealer: Sealer) -> Self {
        Self { pool, now, allow, sealer, opener: None, poll: Duration::from_millis(200) }
    }

    /// Opens sealed personal fields with `opener` before each attempt.
    pub fn with_opener(mut self, opener: Opener) -> Self {
        self.opener = Some(opener);
        self
    }

    /// Fans out and dispatches while this instance leads `webhooks`, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        leader::lead(self.pool.clone(), "webhooks", shutdown, |lost| {
            let this = self.clone();
            async move {
                let in_flight = Arc::new(Mutex::new(HashSet::new()));
                let mut tasks = tokio::task::JoinSet::new();
                loop {
                    if let Err(e) = this.fan_out().await {
                        tracing::warn!(error = %e, "webhook fan-out failed; retrying");
                    }
                    if let Err(e) = this.dispatch(&in_flight, &mut tasks).await {
                        tracing::warn!(error = %e, "webhook dispatch failed; retrying");
                    }
                    while tasks.try_join_next().is_some() {}
                    tokio::select! {
                        () = lost.cancelled() => break,
                        () = tokio::time::sleep(this.poll) => {}
                    }
                }
                // Attempts in flight are dropped: not recorded, so sent again by the next leader.
                tasks.abort_all();
            }
        })
        .await;
    }

    /// Fans out the events after the checkpoint, a batch per transaction, until the head.
    pub async fn fan_out(&self) -> Result<(), sqlx::Error> {
        loop {
            let mut tx = self.pool.begin().await?;
            let after = FAN_OUT.read(&mut *tx).await?;
            let (head, endpoints): (i64, bool) = sqlx::query_as(
                "SELECT (SELECT position FROM event_log_head), EXISTS (SELECT 1 FROM webhook_endpoints WHERE status = 'enabled')",
            )
            .fetch_one(&mut *tx)
            .await?;
            if after >= head {
                return Ok(());
            }
            let upto = if endpoints {
                let events: Vec<StoredEvent> = sqlx::query_as(&format!(
                    "SELECT {} FROM events WHERE position > $1 AND position <= $2 AND event_type = ANY($3) ORDER BY position",
                    crate::log::COLUMNS
                ))
                .bind(after)
                .bind(after + FAN_OUT_BATCH)
                .bind(mapped_event_types())
                .fetch_all(&mut *tx)
                .await?;
                let mut rows = FanOutRows::default();
                for event in events.into_iter().map(StoredEvent::into_upcast) {
                    let Some(public) = public_type(&event.event_type) else { continue };
                    rows.positions.push(event.position);
                    rows.tenants.push(event.tenant_id);
                    rows.types.push(public.to_owned());
                    rows.ids.push(event_id(event.position));
                    rows.bodies.push(body(&event, public));
                }
                if !rows.positions.is_empty() {
                    sqlx::query(
                        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, position, body, status, next_attempt_at, created_at, updated_at)
                         SELECT gen_random_uuid(), w.id, e.event_id, e.public, e.position, e.body, 'pending', $6, $6, $6
                         FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::text[]) AS e(position, tenant_id, public, event_id, body)
                         JOIN webhook_endpoints w
                           ON w.status = 'enabled' AND e.position > w.created_after
                          AND (w.tenant_id IS NULL OR w.tenant_id = e.tenant_id)
                          AND ('*' = ANY (w.event_types) OR e.public = ANY (w.event_types))
                         ON CONFLICT (endpoint_id, event_id) DO NOTHING",
                    )
                    .bind(&rows.positions)
                    .bind(&rows.tenants)
                    .bind(&rows.types)
                    .bind(&rows.ids)
                    .bind(&rows.bodies)
                    .bind((self.now)())
                    .execute(&mut *tx)
                    .await?;
                }
                head.min(after + FAN_OUT_BATCH)
            } else {
                head
            };
            FAN_OUT.save(&mut *tx, upto).await?;
            tx.commit().await?;
        }
    }

    /// Deliveries of the types no single log event stands for, derived from the read models
    /// as of `now`: `subscription.trial_will_end` once a trial has 3 days or less to run (once
    /// per trial and endpoint: its `webhook-id` names the subscription and the trial's end).
    /// Ordered after the events fanned out so far.
    async fn derive(&self, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, position, body, status, next_attempt_at, created_at, updated_at)
             SELECT gen_random_uuid(), w.id, t.event_id, 'subscription.trial_will_end',
                    coalesce((SELECT position FROM follower_checkpoints WHERE name = 'webhooks'), 0),
                    json_build_object('id', t.event_id, 'type', 'subscription.trial_will_end',
                                      'created_at', to_char($1 AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                                      'tenant_id', t.tenant_id,
                                      'data', json_build_object('subscription_id', t.id, 'plan', t.plan, 'trial_ends_at', t.trial_ends_at))::text,
                    'pending', $1, $1, $1
             FROM (SELECT s.id, s.tenant_id, s.plan, s.trial_ends_at,
                          'evt_trial_' || s.id || '_' || extract(epoch FROM s.trial_ends_at)::bigint AS event_id
                   FROM rm.subscriptions s
                   WHERE s.status = 'trialing' AND s.trial_ends_at > $1 AND s.trial_ends_at <= $1 + interval '3 days'
                     -- Evaluated once: without such an endpoint, subscriptions are not even read.
                     AND EXISTS (SELECT 1 FROM webhook_endpoints
                                 WHERE status = 'enabled' AND ('*' = ANY (event_types) OR 'subscription.trial_will_end' = ANY (event_types)))) t
             JOIN webhook_endpoints w
               ON w.status = 'enabled' AND (w.tenant_id IS NULL OR w.tenant_id = t.tenant_id)
              AND ('*' = ANY (w.event_types) OR 'subscription.trial_will_end' = ANY (w.event_types))
             ON CONFLICT (endpoint_id, event_id) DO NOTHING",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Starts an attempt at each endpoint whose oldest pending delivery is due, and disables
    /// endpoints that have failed for [`DISABLE_AFTER`].
    async fn dispatch(&self, in_flight: &Arc<Mutex<HashSet<Uuid>>>, tasks: &mut tokio::task::JoinSet<()>) -> Result<(), sqlx::Error> {
        let now = (self.now)();
        sqlx::query(
            "UPDATE webhook_endpoints SET status = 'disabled', updated_at = $1
             WHERE status = 'enabled' AND failing_since <= $1 - $2",
        )
        .bind(now)
        .bind(DISABLE_AFTER)
        .execute(&self.pool)
        .await?;
        self.derive(now).await?;
        let heads: Vec<Due> = sqlx::query_as(
            "SELECT DISTINCT ON (d.endpoint_id) d.id, d.endpoint_id, d.event_id, d.body, d.next_attempt_at, w.url, w.secret_sealed
             FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.status = 'enabled'
             WHERE d.status = 'pending'
             ORDER BY d.endpoint_id, d.position, d.created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        for due in heads {
            if due.next_attempt_at.is_some_and(|at| at > now) || tasks.len() >= IN_FLIGHT {
                continue;
            }
            if !in_flight.lock().expect("not poisoned").insert(due.endpoint_id) {
                continue;
            }
            let (this, in_flight) = (self.clone(), in_flight.clone());
            tasks.spawn(async move {
                let endpoint = due.endpoint_id;
                let body = match &this.opener {
                    Some(open) if due.body.contains(SEALED_PERSONAL_DATA) => open(due.body.clone()).await,
                    _ => due.body.clone(),
                };
                let attempt = match this.sealer.open(endpoint, &due.secret_sealed) {
                    Some(secret) => send(&due.url, &secret, &due.event_id, &body, &this.allow).await,
                    None => Attempt {
                        status: None,
                        error: Some("the endpoint's secret cannot be opened with this server's sealing key".to_owned()),
                    },
                };
                if let Err(e) = record(&this.pool, due.id, endpoint, &attempt, (this.now)()).await {
                    tracing::warn!(error = %e, delivery = %due.id, "could not record a webhook attempt; it will be sent again");
                }
                in_flight.lock().expect("not poisoned").remove(&endpoint);
            });
        }
        Ok(())
    }
}
