//! Reads of the `audit` projection's table `rm.audit_entries`: pages of a trail, and the
//! verification of its hash chains against the log.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{AuditEntry, Verification, ENTRY_COLUMNS};
use crate::reads::ReadModels;

/// Reads of the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct AuditReads<'a>(&'a PgPool);

impl ReadModels {
    /// The audit trail.
    pub fn audit(&self) -> AuditReads<'_> {
        AuditReads(self.pool())
    }
}

/// Which entries a page of the trail shows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// One tenant's chain only.
    pub tenant_id: Option<Uuid>,
    /// Occurred at or after.
    pub from: Option<DateTime<Utc>>,
    /// Occurred before.
    pub to: Option<DateTime<Utc>>,
    /// Of this actor (`admin`, `api_key:<id>`, ...).
    pub actor: Option<String>,
    /// Of this aggregate type.
    pub aggregate_type: Option<String>,
}

impl AuditReads<'_> {
    /// Up to `limit` entries after position `after`, in log order.
    pub async fn page(&self, filter: AuditFilter, after: i64, limit: i64) -> Result<Vec<AuditEntry>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ENTRY_COLUMNS} FROM rm.audit_entries
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::timestamptz IS NULL OR occurred_at >= $2) AND ($3::timestamptz IS NULL OR occurred_at < $3)
               AND ($4::text IS NULL OR actor = $4) AND ($5::text IS NULL OR aggregate_type = $5) AND position > $6
             ORDER BY position LIMIT $7"
        ))
        .bind(filter.tenant_id)
        .bind(filter.from)
        .bind(filter.to)
        .bind(filter.actor)
        .bind(filter.aggregate_type)
        .bind(after)
        .bind(limit)
        .fetch_all(self.0)
        .await
    }

    /// Walks the chains (one tenant's, or every tenant's) up to the audit projection's
    /// checkpoint (see [`super::verify`]).
    pub async fn verify(&self, tenant: Option<Uuid>) -> Result<Verification, sqlx::Error> {
        super::verify(self.0, tenant).await
    }
}
