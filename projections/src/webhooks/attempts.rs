//! One delivery attempt and what follows it: the POST with its timeouts and a bounded answer, then
//! success, a retry on the schedule, or `failed`; an endpoint whose attempts have all failed for
//! three days is disabled.

use super::*;

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

pub(super) fn describe(e: &reqwest::Error) -> String {
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
