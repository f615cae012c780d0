//! The one handle through which everything outside the projectors reads the read side.
//!
//! Routes, the console, the CLI and the background jobs never hold a pool of their own for
//! read models: they ask [`ReadModels`], whose accessors live next to the projector that owns
//! the tables they read (`tenants::reads`, `billing::reads`, …). Because every read of the
//! read side passes through this one type, where those reads are served from (the primary
//! today; a replica that has replayed far enough, later) is decided in one place.

use sqlx::PgPool;

/// The read side's handle: cheap to clone, one per process.
#[derive(Debug, Clone)]
pub struct ReadModels {
    pool: PgPool,
}

impl ReadModels {
    /// Reads served from `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool the reads run on (for the accessor modules of this crate).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Every row a tenant owns in one read model table, as JSON objects without the columns
    /// `hidden`, in `order` (the tenant export: GDPR access and portability).
    pub async fn tenant_rows(&self, table: ExportTable, tenant_id: uuid::Uuid) -> Result<Vec<serde_json::Value>, sqlx::Error> {
        let (name, order, hidden) = table.shape();
        let hide: String = hidden.iter().map(|c| format!(" - '{c}'")).collect();
        sqlx::query_scalar(&format!("SELECT to_jsonb(x){hide} FROM rm.{name} x WHERE tenant_id = $1 ORDER BY {order}"))
            .bind(tenant_id)
            .fetch_all(&self.pool)
            .await
    }
}

/// The read-model tables a tenant export dumps whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportTable {
    /// `rm.subscriptions`.
    Subscriptions,
    /// `rm.api_keys` (without the key hashes).
    ApiKeys,
    /// `rm.resources`.
    Resources,
    /// `rm.bookings` (without the sealed customer fields).
    Bookings,
    /// `rm.credit_notes`.
    CreditNotes,
    /// `rm.usage_records`.
    UsageRecords,
    /// `rm.invoices`.
    Invoices,
    /// `rm.audit_entries`.
    AuditEntries,
}

impl ExportTable {
    /// The table, its order and the columns left out.
    fn shape(self) -> (&'static str, &'static str, &'static [&'static str]) {
        match self {
            Self::Subscriptions => ("subscriptions", "id", &[]),
            Self::ApiKeys => ("api_keys", "created_at, id", &["key_hash"]),
            Self::Resources => ("resources", "created_at, id", &[]),
            Self::Bookings => ("bookings", "starts_at, id", &["customer_name", "customer_email"]),
            Self::CreditNotes => ("credit_notes", "created_at, id", &[]),
            Self::UsageRecords => ("usage_records", "occurred_at, idempotency_key", &[]),
            Self::Invoices => ("invoices", "issued_at, id", &[]),
            Self::AuditEntries => ("audit_entries", "position", &[]),
        }
    }
}
