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

pub mod endpoints;

/// Every public event type an endpoint may subscribe to.
pub const EVENT_TYPES: [&str; 19] = [
    "tenant.created",
    "tenant.suspended",
    "tenant.reactivated",
    "tenant.cancelled",
    "subscription.updated",
    "subscription.past_due",
    "subscription.suspended",
    "subscription.cancelled",
    "subscription.trial_will_end",
    "invoice.issued",
    "invoice.paid",
    "invoice.voided",
    "invoice.payment_reminder",
    "booking.confirmed",
    "booking.cancelled",
    "member.invited",
    "member.removed",
    "quota.threshold_reached",
    "*",
];

/// The public type of a log event, if it has one.
pub fn public_type(event_type: &str) -> Option<&'static str> {
    Some(match event_type {
        "TenantCreated" => "tenant.created",
        "TenantSuspended" => "tenant.suspended",
        "TenantReactivated" => "tenant.reactivated",
        "TenantCancelled" => "tenant.cancelled",
        "SubscriptionStarted"
        | "PlanChanged"
        | "PlanChangeScheduled"
        | "ScheduledPlanChangeDropped"
        | "CancellationScheduled"
        | "CancellationWithdrawn"
        | "AddonsChanged"
        | "SeatAdded"
        | "CouponApplied"
        | "CouponRemoved"
        | "NetTermsChanged"
        | "SubscriptionReactivated" => "subscription.updated",
        "PaymentFailed" => "subscription.past_due",
        "SubscriptionSuspended" => "subscription.suspended",
        "SubscriptionCancelled" => "subscription.cancelled",
        "InvoiceIssued" => "invoice.issued",
        "PaymentSucceeded" => "invoice.paid",
        "InvoiceVoided" => "invoice.voided",
        "PaymentReminder" => "invoice.payment_reminder",
        "BookingConfirmed" => "booking.confirmed",
        "BookingCancelled" => "booking.cancelled",
        "MemberInvited" => "member.invited",
        "MemberRemoved" => "member.removed",
        _ => return None,
    })
}

/// The log event types that have a public type (what the fan-out reads).
pub fn mapped_event_types() -> Vec<String> {
    [
        "TenantCreated",
        "TenantSuspended",
        "TenantReactivated",
        "TenantCancelled",
        "SubscriptionStarted",
        "PlanChanged",
        "PlanChangeScheduled",
        "ScheduledPlanChangeDropped",
        "CancellationScheduled",
        "CancellationWithdrawn",
        "AddonsChanged",
        "SeatAdded",
        "CouponApplied",
        "CouponRemoved",
        "NetTermsChanged",
        "SubscriptionReactivated",
        "PaymentFailed",
        "SubscriptionSuspended",
        "SubscriptionCancelled",
        "InvoiceIssued",
        "PaymentSucceeded",
        "InvoiceVoided",
        "PaymentReminder",
        "BookingConfirmed",
        "BookingCancelled",
        "MemberInvited",
        "MemberRemoved",
    ]
    .iter()
    .map(|t| (*t).to_owned())
    .collect()
}

/// Waits after failed attempts 1, 2, ..., 7; after the 8th attempt the delivery is `failed`.
pub const RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// How long every attempt at an endpoint may fail before it is disabled.
pub const DISABLE_AFTER: chrono::TimeDelta = chrono::TimeDelta::days(3);

/// Longest an attempt may take (a 2xx within it is success).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a response body read (the rest is dropped).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Attempts in flight at once (each to a different endpoint).
const IN_FLIGHT: usize = 32;
/// Positions fanned out per transaction.
const FAN_OUT_BATCH: i64 = 5_000;

/// The fan-out's checkpoint (the derived deliveries and quota alerts are ordered after it).
const FAN_OUT: Checkpoint = Checkpoint::fixed("webhooks");

/// The server's clock (the test clock when enabled).
pub type Now = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// `host:port` pairs that may be targets although they are not public (tests, internal
/// receivers): `SAAS_LEDGER_WEBHOOK_ALLOW_HOSTS`, comma-separated.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Vec<String>);

impl AllowList {
    /// Parses `a:1,b:2`.
    pub fn parse(list: &str) -> Self {
        Self(list.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect())
    }

    fn allows(&self, host_port: &str) -> bool {
        self.0.iter().any(|h| h == host_port)
    }
}

/// A checked target: where to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL.
    pub url: reqwest::Url,
    /// Its host name as written.
    pub host: String,
    /// The addresses it resolved to (all checked).
    pub addresses: Vec<SocketAddr>,
}

/// Whether `ip` is an address on the public internet (not loopback, private, link-local,
/// shared, documentation, multicast or otherwise special).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && v6.segments()[1] == 0x0db8))
        }
    }
}

/// Checks `url` as a webhook target: `https://`, or `http://` to an allow-listed `host:port`;
/// it must resolve, and to public addresses only unless its `host:port` is allow-listed. The
/// error is a sentence for the `url` field.
pub async fn check_target(url: &str, allow: &AllowList) -> Result<Target, String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "must be an absolute URL such as https://example.com/hooks".to_owned())?;
    if url.len() > 2048 {
        return Err("must be at most 2048 characters".to_owned());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".to_owned());
    }
    let host = parsed.host_str().ok_or_else(|| "must name a host".to_owned())?.to_owned();
    let port = parsed.port_or_known_default().ok_or_else(|| "must be https:// or http://".to_owned())?;
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let allowed = allow.allows(&format!("{}:{port}", host.to_ascii_lowercase()));
    match parsed.scheme() {
        "https" => {}
        "http" if allowed => {}
        "http" => {
            return Err(format!("must be https:// (http:// only to a host:port in SAAS_LEDGER_WEBHOOK_ALLOW_HOSTS; {host}:{port} is not)"))
        }
        _ => return Err("must be https:// or http://".to_owned()),
    }
    let addresses: Vec<SocketAddr> = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((bare.as_str(), port))).await {
        Ok(Ok(found)) => found.collect(),
        _ => return Err(format!("{host} does not resolve")),
    };
    if addresses.is_empty() {
        return Err(format!("{host} does not resolve"));
    }
    if !allowed {
        if let Some(private) = addresses.iter().find(|a| !is_public(a.ip())) {
            return Err(format!(
                "resolves to {}, a loopback, private or link-local address (allowed only for a host:port in SAAS_LEDGER_WEBHOOK_ALLOW_HOSTS)",
                private.ip()
            ));
        }
    }
    Ok(Target { url: parsed, host: bare, addresses })
}

/// Seals endpoint secrets with the server's key (see `domain::sealing`; the endpoint id as
/// associated data): the database holds only sealed secrets.
#[derive(Debug, Clone)]
pub struct Sealer {
    key: SealingKey,
}

const SEALED_PREFIX: &str = "wsk1:";

impl Sealer {
    /// A sealer with `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        Self { key: SealingKey::new(key) }
    }

    /// Seals `secret` for endpoint `id`.
    pub fn seal(&self, id: Uuid, secret: &str) -> String {
        self.key.seal_text(SEALED_PREFIX, rand::random(), id.as_bytes(), secret)
    }

    /// Opens what [`Self::seal`] sealed for endpoint `id` (`None`: another key, or not ours).
    pub fn open(&self, id: Uuid, sealed: &str) -> Option<String> {
        self.key.open_text(SEALED_PREFIX, id.as_bytes(), sealed)
    }
}

/// A new signing secret: `whsec_` + base64 of 24 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// `v1,<base64 HMAC-SHA256(secret bytes, "<id>.<timestamp>.<body>")>`.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// The body of `event`'s delivery: `{id, type, created_at, tenant_id, data}`.
pub fn body(event: &StoredEvent, public: &str) -> String {
    json!({
        "id": event_id(event.position),
        "type": public,
        "created_at": event.occurred_at().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "tenant_id": event.tenant_id,
        "data": data(event),
    })
    .to_string()
}

/// The event's payload, with the aggregate it belongs to and its log position.
fn data(event: &StoredEvent) -> Value {
    let mut data = match &event.payload {
        Value::Object(map) => map.clone(),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("value".to_owned(), other.clone());
            map
        }
    };
    data.remove("type");
    data.insert("event_type".to_owned(), json!(event.event_type));
    data.insert("aggregate_type".to_owned(), json!(event.aggregate_type));
    data.insert("aggregate_id".to_owned(), json!(event.aggregate_id));
    data.insert("position".to_owned(), json!(event.position));
    Value::Object(data)
}

/// The `webhook-id` of the event at `position`.
pub fn event_id(position: i64) -> String {
    format!("evt_{position}")
}

/// The log head an endpoint created now starts after, read under the head's lock, so that
/// the fan-out, which skips to the head when no endpoint is enabled, cannot skip an event the
/// endpoint should get: call it in the endpoint's insert transaction.
pub async fn create_endpoint_position(tx: &mut sqlx::PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM event_log_head FOR UPDATE").fetch_one(tx).await
}

/// What one attempt ended with.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The response status, if one came.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl Attempt {
    /// A 2xx.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Sends `body` to `url` signed with `secret` as event `event_id`, checking the target first.
pub async fn send(url: &str, secret: &str, event_id: &str, body: &str, allow: &AllowList) -> Attempt {
    let target = match check_target(url, allow).await {
        Ok(target) => target,
        Err(e) => return Attempt { status: None, error: Some(format!("target refused: the url {e}")) },
    };
    let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let Some(signature) = signature(secret, event_id, timestamp, body) else {
        return Attempt { status: None, error: Some("the endpoint's secret cannot sign".to_owned()) };
    };
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(ATTEMPT_TIMEOUT)
        .resolve_to_addrs(&target.host, &target.addresses)
        .user_agent(concat!("saas-ledger-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => return Attempt { status: None, error: Some(format!("client: {e}")) },
    };
    let sent = client
        .post(target.url)
        .header("content-type", "application/json")
        .header("webhook-id", event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_owned())
        .send()
        .await;
    match sent {
        Err(e) => Attempt { status: None, error: Some(if e.is_timeout() { "timed out".to_owned() } else { describe(&e) }) },
        Ok(mut response) => {
            let status = response.status();
            // Read at most MAX_RESPONSE_BYTES of the answer (within the attempt's time).
            let mut read = 0usize;
            while read < MAX_RESPONSE_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => read += chunk.len(),
                    _ => break,
                }
            }
            let error = (!status.is_success()).then(|| format!("answered {}", status.as_u16()));
            Attempt { status: Some(status.as_u16()), error }
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text.chars().take(500).collect()
}

/// Records `attempt` at delivery `id` of endpoint `endpoint` made at `now`: success, a retry
/// per the schedule, or `failed`; and the endpoint's failing streak.
pub async fn record(pool: &PgPool, id: Uuid, endpoint: Uuid, attempt: &Attempt, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let attempts: i32 = sqlx::query_scalar("SELECT attempts + 1 FROM webhook_deliveries WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or(1);
    let (status, next) = if attempt.succeeded() {
        ("succeeded", None)
    } else {
        match RETRY_SCHEDULE.get(attempts as usize - 1) {
            Some(wait) => ("pending", Some(now + chrono::TimeDelta::from_std(*wait).expect("a short wait"))),
            None => ("failed", None),
        }
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET attempts = $2, status = $3, next_attempt_at = $4, last_response_status = $5,
                last_error = $6, updated_at = $7
         WHERE id = $1",
    )
    .bind(id)
    .bind(attempts)
    .bind(status)
    .bind(next)
    .bind(attempt.status.map(i32::from))
    .bind(&attempt.error)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if attempt.succeeded() {
        sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
            .bind(endpoint)
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, $2),
                    status = CASE WHEN coalesce(failing_since, $2) <= $2 - $3 THEN 'disabled' ELSE status END,
                    updated_at = CASE WHEN coalesce(failing_since, $2) <= $2 - $3 THEN $2 ELSE updated_at END
             WHERE id = $1",
        )
        .bind(endpoint)
        .bind(now)
        .bind(DISABLE_AFTER)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// A quota threshold a tenant reached (see [`record_threshold`]).
#[derive(Debug, Clone)]
pub struct Threshold {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The quota's metric as `GET /v1/quota` names it.
    pub metric: String,
    /// 80 or 100 (percent of the limit).
    pub threshold: u32,
    /// The limit.
    pub limit: u64,
    /// What is used.
    pub used: u64,
    /// The period (`None`: a quota that does not reset, such as seats).
    pub period: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Records `reached` unless it was recorded before for its tenant, metric, period and
/// threshold, and then creates its `quota.threshold_reached` deliveries, ordered after the
/// events fanned out so far. Returns whether it was new.
pub async fn record_threshold(pool: &PgPool, reached: &Threshold, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let period_start = reached.period.map_or(DateTime::<Utc>::UNIX_EPOCH, |p| p.0);
    let new = sqlx::query(
        "INSERT INTO webhook_quota_marks (tenant_id, metric, period_start, threshold, reached_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(reached.tenant_id)
    .bind(&reached.metric)
    .bind(period_start)
    .bind(reached.threshold as i32)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if new {
        let id = format!("evt_quota_{}_{}_{}_{}", reached.tenant_id.simple(), reached.metric, period_start.timestamp(), reached.threshold);
        let body = json!({
            "id": id,
            "type": "quota.threshold_reached",
            "created_at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "tenant_id": reached.tenant_id,
            "data": {
                "metric": reached.metric,
                "threshold": reached.threshold,
                "limit": reached.limit,
                "used": reached.used,
                "period_start": reached.period.map(|p| p.0),
                "period_end": reached.period.map(|p| p.1),
            },
        })
        .to_string();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, position, body, status, next_attempt_at, created_at, updated_at)
             SELECT gen_random_uuid(), w.id, $2, 'quota.threshold_reached',
                    coalesce((SELECT position FROM follower_checkpoints WHERE name = 'webhooks'), 0), $3, 'pending', $4, $4, $4
             FROM webhook_endpoints w
             WHERE w.status = 'enabled' AND (w.tenant_id IS NULL OR w.tenant_id = $1)
               AND ('*' = ANY (w.event_types) OR 'quota.threshold_reached' = ANY (w.event_types))
             ON CONFLICT (endpoint_id, event_id) DO NOTHING",
        )
        .bind(reached.tenant_id)
        .bind(&id)
        .bind(&body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(new)
}

/// The tenants whose quotas may have moved at positions `after < p <= upto` and who have an
/// enabled endpoint for `quota.threshold_reached` (their own or the platform's), and `upto`:
/// at most `window` positions, and no further than every read model the quotas are read from
/// (so that what is read covers them). Nobody listening: no tenants, up to the head.
pub async fn quota_candidates(pool: &PgPool, after: i64, window: i64) -> Result<(Vec<Uuid>, i64), sqlx::Error> {
    let (head, listening, platform): (i64, bool, bool) = sqlx::query_as(
        "SELECT least((SELECT position FROM event_log_head),
                      coalesce((SELECT min(position) FROM projection_runs WHERE status = 'live' AND name IN ('usage', 'billing')), 0)),
                EXISTS (SELECT 1 FROM webhook_endpoints WHERE status = 'enabled' AND ('*' = ANY (event_types) OR 'quota.threshold_reached' = ANY (event_types))),
                EXISTS (SELECT 1 FROM webhook_endpoints WHERE tenant_id IS NULL AND status = 'enabled' AND ('*' = ANY (event_types) OR 'quota.threshold_reached' = ANY (event_types)))",
    )
    .fetch_one(pool)
    .await?;
    if !listening {
        return Ok((Vec::new(), head.max(after)));
    }
    let upto = head.min(after + window);
    if upto <= after {
        return Ok((Vec::new(), after));
    }
    let tenants: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT e.tenant_id FROM events e
         WHERE e.position > $1 AND e.position <= $2 AND e.tenant_id IS NOT NULL
           AND ($3 OR EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.tenant_id = e.tenant_id AND w.status = 'enabled'
                              AND ('*' = ANY (w.event_types) OR 'quota.threshold_reached' = ANY (w.event_types))))",
    )
    .bind(after)
    .bind(upto)
    .bind(platform)
    .fetch_all(pool)
    .await?;
    Ok((tenants, upto))
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
