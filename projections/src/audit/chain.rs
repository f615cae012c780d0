//! The hash chain: what an entry holds, the digest of the stored event it covers (its type, ids,
//! sequence, version, and payload and metadata as Postgres prints the stored jsonb), and the
//! entry's own hash over its content and its predecessor's.

use super::summary::{text, Meta};
use super::*;
pub use crate::log::RawEvent;

/// The chain's start: the `prev_hash` of a tenant's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chain key of platform events (no tenant).
pub const PLATFORM: Uuid = Uuid::nil();

/// An event as the audit reads it. A payload stored larger than 4,096 bytes (`pg_column_size`; a
/// usage batch of 1,000 facts is ~200 KB of text) does not leave Postgres: its digest is
/// computed there, byte for byte as [`event_digest`] computes it (the same parts, each followed
/// by a zero byte, the payload and metadata as `jsonb`'s text), and `payload` carries what
/// [`summary_of`] reads (the scalars and objects, arrays emptied, a batch's facts as their
/// metrics). So a range of batches costs the server a few hundred bytes each, not their payloads,
/// and both ways give the same entry.
pub(super) const RAW_COLUMNS: &str = "position, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
     CASE WHEN pg_column_size(payload) > 4096 THEN
         (SELECT jsonb_object_agg(k, CASE WHEN k = 'facts' AND jsonb_typeof(v) = 'array'
                                           THEN (SELECT coalesce(jsonb_agg(jsonb_build_object('metric', f -> 'metric')), '[]') FROM jsonb_array_elements(v) AS f)
                                           WHEN jsonb_typeof(v) = 'array' THEN '[]'::jsonb ELSE v END)
          FROM jsonb_each(payload) AS x(k, v))::text
     ELSE payload::text END AS payload,
     metadata::text AS metadata, recorded_at,
     CASE WHEN pg_column_size(payload) > 4096 THEN
         encode(sha256(convert_to(aggregate_type, 'UTF8') || '\\x00'::bytea || convert_to(aggregate_id, 'UTF8') || '\\x00'::bytea
                       || convert_to(sequence::text, 'UTF8') || '\\x00'::bytea || convert_to(event_type, 'UTF8') || '\\x00'::bytea
                       || convert_to(event_version, 'UTF8') || '\\x00'::bytea || convert_to(payload::text, 'UTF8') || '\\x00'::bytea
                       || convert_to(metadata::text, 'UTF8') || '\\x00'::bytea), 'hex')
     END AS digest";

/// The events at positions `after < position <= upto`, as stored, in order; only `tenant`'s
/// (`Some(None)`: only platform events) when given.
pub async fn read_raw(
    db: impl sqlx::PgExecutor<'_>,
    after: i64,
    upto: i64,
    tenant: Option<Option<Uuid>>,
) -> Result<Vec<RawEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RAW_COLUMNS} FROM events
         WHERE position > $1 AND position <= $2 AND (NOT $3 OR tenant_id IS NOT DISTINCT FROM $4::uuid)
         ORDER BY position"
    ))
    .bind(after)
    .bind(upto)
    .bind(tenant.is_some())
    .bind(tenant.flatten())
    .fetch_all(db)
    .await
}

/// SHA-256 of everything stored about an event (`jsonb`'s text is canonical: however the
/// event was written, the same stored value reads back as the same text).
pub fn event_digest(e: &RawEvent) -> String {
    if let Some(digest) = &e.digest {
        return digest.clone();
    }
    let mut hasher = Sha256::new();
    for part in [&e.aggregate_type, &e.aggregate_id, &e.sequence.to_string(), &e.event_type, &e.event_version, &e.payload, &e.metadata] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    lower_hex(&hasher.finalize())
}

/// An audit entry: one event, chained to the previous entry of its tenant (its content, as
/// hashed).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    /// The event's log position.
    pub position: i64,
    /// The tenant (the nil UUID for platform events).
    pub tenant_id: Uuid,
    /// When it happened (the command's clock).
    pub occurred_at: DateTime<Utc>,
    /// Who: `admin`, `api_key:<id>`, `system:<job>`, ...
    pub actor: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The event type.
    pub event_type: String,
    /// One line for people.
    pub summary: String,
    /// The request that started it.
    pub correlation_id: String,
    /// What directly caused it.
    pub causation_id: String,
    /// SHA-256 (hex) of the stored event.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub event_digest: String,
    /// The previous entry's hash (of the same tenant).
    pub prev_hash: String,
    /// SHA-256 (hex) over this entry and `prev_hash`.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry must have.
    pub fn expected_hash(&self) -> String {
        let mut hasher = Sha256::new();
        let (position, tenant_id) = (self.position.to_string(), self.tenant_id.to_string());
        let occurred_at = self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        for field in [
            &position,
            &tenant_id,
            &occurred_at,
            &self.actor,
            &self.aggregate_type,
            &self.aggregate_id,
            &self.event_type,
            &self.summary,
            &self.correlation_id,
            &self.causation_id,
            &self.event_digest,
            &self.prev_hash,
        ] {
            hasher.update(field.as_bytes());
            hasher.update([0u8]);
        }
        lower_hex(&hasher.finalize())
    }
}

/// Lower-case hex of `bytes`.
pub(super) fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    text
}

/// The entry for `e`, chained after `prev_hash`.
pub fn entry(e: &RawEvent, prev_hash: String) -> AuditEntry {
    let meta: Meta<'_> = serde_json::from_str(&e.metadata).unwrap_or_default();
    let occurred_at = text(meta.occurred_at);
    let mut entry = AuditEntry {
        position: e.position,
        tenant_id: e.tenant_id.unwrap_or(PLATFORM),
        occurred_at: DateTime::parse_from_rfc3339(&occurred_at).map_or(e.recorded_at, |t| t.with_timezone(&Utc)),
        actor: text(meta.actor),
        aggregate_type: e.aggregate_type.clone(),
        aggregate_id: e.aggregate_id.clone(),
        event_type: e.event_type.clone(),
        summary: summary_of(&e.event_type, &e.aggregate_type, &e.aggregate_id, &e.payload),
        correlation_id: text(meta.correlation_id),
        causation_id: text(meta.causation_id),
        event_digest: event_digest(e),
        prev_hash,
        hash: String::new(),
    };
    entry.hash = entry.expected_hash();
    entry
}
