//! Command-line work that is worth testing on its own: `saas-ledger replay`.

use std::io::Write;

use chrono::{DateTime, Utc};
use projections::StoredEvent;
use sqlx::PgPool;

/// What `replay` prints.
#[derive(Debug, Clone)]
pub struct ReplayFilter {
    /// The tenant's code.
    pub tenant_code: String,
    /// Only events that occurred at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Only events that occurred before this instant.
    pub to: Option<DateTime<Utc>>,
    /// Only one aggregate, `TYPE:ID`.
    pub aggregate: Option<String>,
    /// Aligned columns with summaries instead of NDJSON.
    pub table: bool,
}

/// Boxed error for the CLI.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Writes a tenant's events in global order to `out`, 5,000 at a time.
pub async fn replay(pool: &PgPool, filter: &ReplayFilter, out: &mut impl Write) -> Result<(), CliError> {
    let tenant_id: uuid::Uuid = sqlx::query_scalar("SELECT tenant_id FROM tenant_codes WHERE code = $1")
        .bind(&filter.tenant_code)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| format!("no tenant with code {}", filter.tenant_code))?;
    let (aggregate_type, aggregate_id) = match filter.aggregate.as_deref().map(|a| a.split_once(':')) {
        None => (None, None),
        Some(Some((t, id))) => (Some(t.to_owned()), Some(id.to_owned())),
        Some(None) => return Err("--aggregate takes TYPE:ID".into()),
    };
    let mut after = 0i64;
    let mut header_written = false;
    loop {
        let events: Vec<StoredEvent> = sqlx::query_as(
            "SELECT position, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at
             FROM events WHERE tenant_id = $1 AND position > $2 AND ($3::text IS NULL OR aggregate_type = $3) AND ($4::text IS NULL OR aggregate_id = $4)
             ORDER BY position LIMIT 5000",
        )
        .bind(tenant_id)
        .bind(after)
        .bind(&aggregate_type)
        .bind(&aggregate_id)
        .fetch_all(pool)
        .await?;
        let Some(last) = events.last() else { return Ok(()) };
        after = last.position;
        let in_window =
            |e: &&StoredEvent| filter.from.is_none_or(|f| e.occurred_at() >= f) && filter.to.is_none_or(|t| e.occurred_at() < t);
        for event in events.iter().filter(in_window) {
            if filter.table {
                if !header_written {
                    writeln!(out, "{:>10}  {:<20}  {:<13} {:<38} {:<22} SUMMARY", "POSITION", "OCCURRED_AT", "AGGREGATE", "ID", "EVENT")?;
                    header_written = true;
                }
                writeln!(
                    out,
                    "{:>10}  {:<20}  {:<13} {:<38} {:<22} {}",
                    event.position,
                    event.occurred_at().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    fit(&event.aggregate_type, 13),
                    fit(&event.aggregate_id, 38),
                    fit(&event.event_type, 22),
                    projections::audit::summary(event)
                )?;
            } else {
                writeln!(out, "{}", serde_json::to_string(event)?)?;
            }
        }
    }
}

/// `text` in at most `width` characters: longer text keeps its start and ends in `…` (the
/// NDJSON format has every field whole).
fn fit(text: &str, width: usize) -> std::borrow::Cow<'_, str> {
    if text.chars().count() <= width {
        return std::borrow::Cow::Borrowed(text);
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    std::borrow::Cow::Owned(format!("{kept}…"))
}
