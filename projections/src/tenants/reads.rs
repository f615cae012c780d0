//! Reads of the `tenants` projection's tables: `rm.tenants`, `rm.api_keys` and `rm.members`.
//! Personal data (billing e-mail, members' e-mails and names) comes back sealed; the caller
//! opens it with the tenant's key.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::reads::ReadModels;

/// Reads of `rm.tenants`, `rm.api_keys` and `rm.members`.
#[derive(Debug, Clone, Copy)]
pub struct TenantReads<'a>(&'a PgPool);

impl ReadModels {
    /// Tenants, their API keys and their members.
    pub fn tenants(&self) -> TenantReads<'_> {
        TenantReads(self.pool())
    }
}

/// A tenant as the read model has it (with the payment terms of its subscription).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRow {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub business_type: String,
    pub timezone: String,
    pub currency: String,
    pub locale: String,
    /// Sealed with the tenant's key.
    pub billing_email: String,
    pub plan: String,
    pub plan_version: i32,
    pub billing_period: String,
    pub trial_days: i32,
    pub tax_rate: Decimal,
    pub subscription_id: Uuid,
    pub status: String,
    pub status_reason: Option<String>,
    pub primary_color: Option<String>,
    pub secondary_color: Option<String>,
    pub logo_url: Option<String>,
    pub custom_domain: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub net_terms_days: i32,
}

const TENANT_COLUMNS: &str = "id, code, name, business_type, timezone, currency, locale, billing_email, plan, plan_version, billing_period,
    trial_days, tax_rate, subscription_id, status, status_reason, primary_color, secondary_color, logo_url, custom_domain, created_at, updated_at,
    coalesce((SELECT (s.state->>'net_terms_days')::int FROM rm.subscriptions s WHERE s.id = subscription_id), 0) AS net_terms_days";

/// Which tenants a list shows.
#[derive(Debug, Clone, Default)]
pub struct TenantFilter {
    /// Only tenants in this status.
    pub status: Option<String>,
    /// Only the tenant with this code.
    pub code: Option<String>,
}

/// An active API key found by its hash, with what every request needs to know of its tenant.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyGrant {
    pub key_id: Uuid,
    pub tenant_id: Uuid,
    /// `owner`, `admin`, `member` or `readonly`.
    pub role: String,
    pub tenant_status: String,
    /// The plan's requests per minute, if it limits them.
    pub rate_limit_per_minute: Option<i32>,
}

/// A key as listed (no secret, ever; never its hash).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = KeyView)]
pub struct ApiKeyRow {
    /// Its id.
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// `owner`, `admin`, `member` or `readonly`.
    #[schema(pattern = "^(owner|admin|member|readonly)$")]
    pub role: String,
    /// The key's first characters, to tell keys apart.
    pub key_prefix: String,
    /// Issued.
    pub created_at: DateTime<Utc>,
    /// Revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A member (seat) as the read model has it; e-mail and name sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub role: String,
    pub status: String,
    pub invited_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub removed_at: Option<DateTime<Utc>>,
}

const MEMBER_COLUMNS: &str = "id, tenant_id, email, name, role, status, invited_at, accepted_at, removed_at";

impl TenantReads<'_> {
    /// Tenant `id`.
    pub async fn find(&self, id: Uuid) -> Result<Option<TenantRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {TENANT_COLUMNS} FROM rm.tenants WHERE id = $1")).bind(id).fetch_optional(self.0).await
    }

    /// Up to `limit` tenants with ids after `after`, in id order.
    pub async fn list(&self, after: Option<Uuid>, filter: TenantFilter, limit: i64) -> Result<Vec<TenantRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {TENANT_COLUMNS} FROM rm.tenants
             WHERE ($1::uuid IS NULL OR id > $1) AND ($2::text IS NULL OR status = $2) AND ($4::text IS NULL OR code = $4)
             ORDER BY id LIMIT $3"
        ))
        .bind(after)
        .bind(filter.status)
        .bind(limit)
        .bind(filter.code)
        .fetch_all(self.0)
        .await
    }

    /// Tenant `id`'s status (`active`, `suspended`, `cancelled`, `erased`), or `None`.
    pub async fn status(&self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT status FROM rm.tenants WHERE id = $1").bind(id).fetch_optional(self.0).await
    }

    /// The id of the tenant with this code.
    pub async fn id_by_code(&self, code: &str) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM rm.tenants WHERE code = $1").bind(code).fetch_optional(self.0).await
    }

    /// The id of the tenant with this code or this id (written as text).
    pub async fn id_by_reference(&self, reference: &str) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM rm.tenants WHERE code = $1 OR id::text = $1").bind(reference).fetch_optional(self.0).await
    }

    /// Tenant `id`'s subscription (`None` also for a tenant without one).
    pub async fn subscription_id(&self, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
        let id: Option<Option<Uuid>> =
            sqlx::query_scalar("SELECT subscription_id FROM rm.tenants WHERE id = $1").bind(id).fetch_optional(self.0).await?;
        Ok(id.flatten())
    }

    /// Tenant `id`'s currency.
    pub async fn currency(&self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT currency FROM rm.tenants WHERE id = $1").bind(id).fetch_optional(self.0).await
    }

    /// Tenant `id`'s IANA time zone.
    pub async fn timezone(&self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT timezone FROM rm.tenants WHERE id = $1").bind(id).fetch_optional(self.0).await
    }

    /// The active (not revoked) key with this SHA-256, with its tenant's status and plan's
    /// rate limit.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyGrant>, sqlx::Error> {
        sqlx::query_as(
            "SELECT k.id AS key_id, k.tenant_id, k.role, t.status AS tenant_status, p.rate_limit_per_minute
             FROM rm.api_keys k JOIN rm.tenants t ON t.id = k.tenant_id
             LEFT JOIN rm.subscriptions s ON s.tenant_id = k.tenant_id
             LEFT JOIN rm.plans p ON p.code = s.plan AND p.version = s.plan_version
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(self.0)
        .await
    }

    /// API key `id`.
    pub async fn api_key(&self, id: Uuid) -> Result<Option<ApiKeyRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, name, role, key_prefix, created_at, revoked_at FROM rm.api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(self.0)
            .await
    }

    /// Every key of tenant `tenant_id`, revoked ones included, in id order.
    pub async fn api_keys(&self, tenant_id: Uuid) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, name, role, key_prefix, created_at, revoked_at FROM rm.api_keys WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant_id)
            .fetch_all(self.0)
            .await
    }

    /// Member `id` of tenant `tenant_id`.
    pub async fn member(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<MemberRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {MEMBER_COLUMNS} FROM rm.members WHERE id = $1 AND tenant_id = $2"))
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(self.0)
            .await
    }

    /// Up to `limit` of tenant `tenant_id`'s members (in `status`, if given) invited after
    /// `after` (an instant and an id), in that order.
    pub async fn members(
        &self,
        tenant_id: Uuid,
        status: Option<String>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<MemberRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {MEMBER_COLUMNS} FROM rm.members
             WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::timestamptz IS NULL OR (invited_at, id) > ($3, $4))
             ORDER BY invited_at, id LIMIT $5"
        ))
        .bind(tenant_id)
        .bind(status)
        .bind(after.map(|c| c.0))
        .bind(after.map(|c| c.1))
        .bind(limit)
        .fetch_all(self.0)
        .await
    }

    /// Every member of tenant `tenant_id`, removed ones included, in invitation order.
    pub async fn all_members(&self, tenant_id: Uuid) -> Result<Vec<MemberRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {MEMBER_COLUMNS} FROM rm.members WHERE tenant_id = $1 ORDER BY invited_at, id"))
            .bind(tenant_id)
            .fetch_all(self.0)
            .await
    }

    /// Up to 100 tenants (in `status`, unless empty) whose code or name contains `text`
    /// (case-insensitive), by code: `(id, code, name, plan, status, created_at)`.
    pub async fn search(&self, text: &str, status: &str) -> Result<Vec<TenantMatch>, sqlx::Error> {
        let pattern = format!("%{}%", text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        sqlx::query_as(
            "SELECT id, code, name, plan, status, created_at FROM rm.tenants
             WHERE (code ILIKE $1 OR name ILIKE $1) AND ($2 = '' OR status = $2) ORDER BY code LIMIT 100",
        )
        .bind(&pattern)
        .bind(status)
        .fetch_all(self.0)
        .await
    }
}

/// A tenant a search found.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantMatch {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub plan: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}
