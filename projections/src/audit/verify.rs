//! Verification: the chains walked up to the audit projection's checkpoint, each entry compared
//! with the event stored at its position and with its predecessor, so an edited or deleted event
//! and an edited or deleted entry are named by position.

use super::*;

/// What verifying the audit chains found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Verification {
    /// Whether every entry matches its event and its predecessor.
    pub valid: bool,
    /// Entries checked.
    pub checked: u64,
    /// The first position where an entry or its event does not match.
    pub first_bad_position: Option<i64>,
}

/// Walks the chains (one tenant's, or every tenant's) up to the audit projection's checkpoint,
/// comparing each entry with the event stored at its position and with its predecessor.
pub async fn verify(pool: &PgPool, tenant: Option<Uuid>) -> Result<Verification, sqlx::Error> {
    let checkpoint: i64 =
        sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM projection_runs WHERE name = 'audit' AND status = 'live'")
            .fetch_one(pool)
            .await?;
    let platform = Some(PLATFORM);
    let events = read_raw(pool, 0, checkpoint, tenant.map(|t| (Some(t) != platform).then_some(t))).await?;
    let entries: Vec<AuditEntry> = sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM rm.audit_entries WHERE position <= $1 AND ($2::uuid IS NULL OR tenant_id = $2) ORDER BY position"
    ))
    .bind(checkpoint)
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let mut heads: std::collections::HashMap<Uuid, String> = std::collections::HashMap::new();
    let (mut events, mut entries) = (events.into_iter().peekable(), entries.into_iter().peekable());
    let mut checked = 0;
    loop {
        let bad = match (events.peek(), entries.peek()) {
            (None, None) => return Ok(Verification { valid: true, checked, first_bad_position: None }),
            // An event without its entry (entry deleted) or an entry without its event (event deleted).
            (Some(ev), Some(en)) if ev.position != en.position => Some(ev.position.min(en.position)),
            (Some(ev), None) => Some(ev.position),
            (None, Some(en)) => Some(en.position),
            (Some(ev), Some(en)) => {
                let prev = heads.get(&en.tenant_id).cloned().unwrap_or_else(|| GENESIS.to_owned());
                let expected = entry(ev, prev);
                checked += 1;
                (expected != *en).then_some(en.position)
            }
        };
        if let Some(position) = bad {
            return Ok(Verification { valid: false, checked, first_bad_position: Some(position) });
        }
        let en = entries.next().expect("peeked");
        events.next();
        heads.insert(en.tenant_id, en.hash);
    }
}
