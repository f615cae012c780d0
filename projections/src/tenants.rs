//! The `tenants` projection: tenant profiles and statuses (`rm.tenants`) and API keys
//! (`rm.api_keys`, looked up by hash on every authenticated request).

use async_trait::async_trait;
use domain::tenant::{SuspensionSource, TenantEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::log::StoredEvent;
use crate::runner::{Projection, ProjectionError};

pub mod reads;

/// A member's event on `members` (e-mail and name stay sealed).
async fn apply_member(conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
    use domain::member::MemberEvent;
    let member: MemberEvent = serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
    let id: Uuid =
        event.aggregate_id.parse().map_err(|_| ProjectionError::payload(event, serde::de::Error::custom("aggregate id is not a uuid")))?;
    match member {
        MemberEvent::MemberInvited { tenant_id, email, name, role, invited_at, .. } => {
            sqlx::query(&format!(
                "INSERT INTO {schema}.members (id, tenant_id, email, name, role, status, invited_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 'invited', $6, $6)"
            ))
            .bind(id)
            .bind(tenant_id)
            .bind(email.as_str().to_owned())
            .bind(name.map(|n| n.as_str().to_owned()))
            .bind(role.as_str())
            .bind(invited_at)
            .execute(conn)
            .await?
        }
        MemberEvent::MemberAccepted { accepted_at, .. } => {
            sqlx::query(&format!("UPDATE {schema}.members SET status = 'active', accepted_at = $2, updated_at = $2 WHERE id = $1"))
                .bind(id)
                .bind(accepted_at)
                .execute(conn)
                .await?
        }
        MemberEvent::MemberRoleChanged { role, at, .. } => {
            sqlx::query(&format!("UPDATE {schema}.members SET role = $2, updated_at = $3 WHERE id = $1"))
                .bind(id)
                .bind(role.as_str())
                .bind(at)
                .execute(conn)
                .await?
        }
        MemberEvent::MemberRemoved { removed_at, .. } => {
            sqlx::query(&format!("UPDATE {schema}.members SET status = 'removed', removed_at = $2, updated_at = $2 WHERE id = $1"))
                .bind(id)
                .bind(removed_at)
                .execute(conn)
                .await?
        }
    };
    Ok(())
}

/// A new tenant's row or a new key's, gathered for one multi-row insert.
#[derive(Default)]
struct Inserts {
    tenants: Vec<(Uuid, TenantEvent, i64)>,
    keys: Vec<(Uuid, TenantEvent)>,
}

impl Inserts {
    /// Takes `event` if it only inserts a row (a sign-up's `TenantCreated`, an `ApiKeyIssued`).
    fn take(&mut self, event: &StoredEvent) -> Result<bool, ProjectionError> {
        if event.aggregate_type != "Tenant" || !matches!(event.event_type.as_str(), "TenantCreated" | "ApiKeyIssued") {
            return Ok(false);
        }
        let tenant_event: TenantEvent = serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
        let tenant_id: Uuid = event
            .aggregate_id
            .parse()
            .map_err(|_| ProjectionError::payload(event, serde::de::Error::custom("aggregate id is not a uuid")))?;
        match tenant_event {
            TenantEvent::TenantCreated { .. } => self.tenants.push((tenant_id, tenant_event, event.sequence)),
            TenantEvent::ApiKeyIssued { .. } => self.keys.push((tenant_id, tenant_event)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Writes what was taken: one statement per table.
    async fn flush(&mut self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if !self.tenants.is_empty() {
            let mut columns = TenantColumns::default();
            for (id, event, version) in self.tenants.drain(..) {
                let TenantEvent::TenantCreated {
                    code,
                    name,
                    business_type,
                    timezone,
                    currency,
                    locale,
                    billing_email,
                    plan,
                    plan_version,
                    billing_period,
                    trial_days,
                    tax_rate,
                    subscription_id,
                    created_at,
                    ..
                } = event
                else {
                    unreachable!("only TenantCreated is taken as a tenant")
                };
                columns.id.push(id);
                columns.code.push(code.as_str().to_owned());
                columns.name.push(name.as_str().to_owned());
                columns.business_type.push(business_type.as_str().to_owned());
                columns.timezone.push(timezone.as_str().to_owned());
                columns.currency.push(currency.as_str().to_owned());
                columns.locale.push(locale.as_str().to_owned());
                columns.billing_email.push(billing_email.as_str().to_owned());
                columns.plan.push(plan.as_str().to_owned());
                columns.plan_version.push(plan_version as i32);
                columns.billing_period.push(billing_period.as_str().to_owned());
                columns.trial_days.push(trial_days as i32);
                columns.tax_rate.push(tax_rate.percent());
                columns.subscription_id.push(subscription_id);
                columns.created_at.push(created_at);
                columns.version.push(version);
            }
            sqlx::query(&format!(
                "INSERT INTO {schema}.tenants (id, code, name, business_type, timezone, currency, locale, billing_email, plan, plan_version,
                     billing_period, trial_days, tax_rate, subscription_id, status, created_at, updated_at, version)
                 SELECT id, code, name, business_type, timezone, currency, locale, billing_email, plan, plan_version,
                        billing_period, trial_days, tax_rate, subscription_id, 'active', created_at, created_at, version
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                             $10::int[], $11::text[], $12::int[], $13::numeric[], $14::uuid[], $15::timestamptz[], $16::bigint[])
                      AS u(id, code, name, business_type, timezone, currency, locale, billing_email, plan, plan_version,
                           billing_period, trial_days, tax_rate, subscription_id, created_at, version)"
            ))
            .bind(columns.id)
            .bind(columns.code)
            .bind(columns.name)
            .bind(columns.business_type)
            .bind(columns.timezone)
            .bind(columns.currency)
            .bind(columns.locale)
            .bind(columns.billing_email)
            .bind(columns.plan)
            .bind(columns.plan_version)
            .bind(columns.billing_period)
            .bind(columns.trial_days)
            .bind(columns.tax_rate)
            .bind(columns.subscription_id)
            .bind(columns.created_at)
            .bind(columns.version)
            .execute(&mut *conn)
            .await?;
        }
        if !self.keys.is_empty() {
            let (mut ids, mut tenants, mut names, mut roles, mut hashes, mut prefixes, mut issued) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (tenant_id, event) in self.keys.drain(..) {
                let TenantEvent::ApiKeyIssued { key_id, name, role, key_hash, key_prefix, issued_at } = event else {
                    unreachable!("only ApiKeyIssued is taken as a key")
                };
                ids.push(key_id);
                tenants.push(tenant_id);
                names.push(name.as_str().to_owned());
                roles.push(role.as_str().to_owned());
                hashes.push(key_hash);
                prefixes.push(key_prefix);
                issued.push(issued_at);
            }
            sqlx::query(&format!(
                "INSERT INTO {schema}.api_keys (id, tenant_id, name, role, key_hash, key_prefix, created_at)
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])"
            ))
            .bind(ids)
            .bind(tenants)
            .bind(names)
            .bind(roles)
            .bind(hashes)
            .bind(prefixes)
            .bind(issued)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// `tenants` columns for one multi-row insert.
#[derive(Default)]
struct TenantColumns {
    id: Vec<Uuid>,
    code: Vec<String>,
    name: Vec<String>,
    business_type: Vec<String>,
    timezone: Vec<String>,
    currency: Vec<String>,
    locale: Vec<String>,
    billing_email: Vec<String>,
    plan: Vec<String>,
    plan_version: Vec<i32>,
    billing_period: Vec<String>,
    trial_days: Vec<i32>,
    tax_rate: Vec<rust_decimal::Decimal>,
    subscription_id: Vec<Uuid>,
    created_at: Vec<chrono::DateTime<chrono::Utc>>,
    version: Vec<i64>,
}

/// Builds `tenants` and `api_keys`.
#[derive(Debug, Clone, Copy)]
pub struct TenantsProjection;

#[async_trait]
impl Projection for TenantsProjection {
    fn name(&self) -> &'static str {
        "tenants"
    }

    fn version(&self) -> i32 {
        // 2: members.
        2
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Tenant", "Member"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["tenants", "api_keys", "members"]
    }

    async fn create(&self, conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
        let ddl = format!(
            "CREATE TABLE {schema}.tenants (
                 id               uuid PRIMARY KEY,
                 code             text NOT NULL UNIQUE,
                 name             text NOT NULL,
                 business_type    text NOT NULL,
                 timezone         text NOT NULL,
                 currency         text NOT NULL,
                 locale           text NOT NULL,
                 billing_email    text NOT NULL,
                 plan             text NOT NULL,
                 plan_version     integer NOT NULL,
                 billing_period   text NOT NULL,
                 trial_days       integer NOT NULL,
                 tax_rate         numeric NOT NULL,
                 subscription_id  uuid NOT NULL,
                 status           text NOT NULL,
                 status_reason    text,
                 suspended_by     text,
                 primary_color    text,
                 secondary_color  text,
                 logo_url         text,
                 custom_domain    text,
                 created_at       timestamptz NOT NULL,
                 updated_at       timestamptz NOT NULL,
                 version          bigint NOT NULL
             );
             CREATE INDEX ON {schema}.tenants (created_at, id);
             CREATE TABLE {schema}.api_keys (
                 id          uuid PRIMARY KEY,
                 tenant_id   uuid NOT NULL,
                 name        text NOT NULL,
                 role        text NOT NULL,
                 key_hash    text NOT NULL UNIQUE,
                 key_prefix  text NOT NULL,
                 created_at  timestamptz NOT NULL,
                 revoked_at  timestamptz
             );
             CREATE INDEX ON {schema}.api_keys (tenant_id);
             CREATE TABLE {schema}.members (
                 id           uuid PRIMARY KEY,
                 tenant_id    uuid NOT NULL,
                 email        text NOT NULL,
                 name         text,
                 role         text NOT NULL,
                 status       text NOT NULL,
                 invited_at   timestamptz NOT NULL,
                 accepted_at  timestamptz,
                 removed_at   timestamptz,
                 updated_at   timestamptz NOT NULL
             );
             CREATE INDEX ON {schema}.members (tenant_id, invited_at, id);"
        );
        sqlx::Executor::execute(&mut *conn, ddl.as_str()).await?;
        Ok(())
    }

    /// Sign-ups and new keys (rows inserted, nothing updated) in one multi-row insert per table
    /// for each run of them; any other event is applied on its own, in order, after the rows
    /// gathered before it are written.
    async fn apply_batch(&self, conn: &mut PgConnection, schema: &str, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        let mut inserts = Inserts::default();
        for event in events {
            if !inserts.take(event)? {
                inserts.flush(conn, schema).await?;
                self.apply(conn, schema, event).await?;
            }
        }
        inserts.flush(conn, schema).await
    }

    async fn apply(&self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
        if event.aggregate_type == "Member" {
            return apply_member(conn, schema, event).await;
        }
        if event.aggregate_type != "Tenant" {
            return Ok(());
        }
        let tenant_event: TenantEvent = serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
        let tenant_id: Uuid = event
            .aggregate_id
            .parse()
            .map_err(|_| ProjectionError::payload(event, serde::de::Error::custom("aggregate id is not a uuid")))?;
        let at = event.occurred_at();
        let version = event.sequence;
        let set_status = |status: &str| {
            format!("UPDATE {schema}.tenants SET status = '{status}', status_reason = $2, updated_at = $3, version = $4, suspended_by = $5 WHERE id = $1")
        };
        match tenant_event {
            TenantEvent::TenantCreated {
                code,
                name,
                business_type,
                timezone,
                currency,
                locale,
                billing_email,
                plan,
                plan_version,
                billing_period,
                trial_days,
                tax_rate,
                subscription_id,
                created_at,
                ..
            } => {
                sqlx::query(&format!(
                    "INSERT INTO {schema}.tenants (id, code, name, business_type, timezone, currency, locale, billing_email, plan, plan_version,
                         billing_period, trial_days, tax_rate, subscription_id, status, created_at, updated_at, version)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'active', $15, $15, $16)"
                ))
                .bind(tenant_id)
                .bind(code.as_str())
                .bind(name.as_str())
                .bind(business_type.as_str())
                .bind(timezone.as_str())
                .bind(currency.as_str())
                .bind(locale.as_str())
                .bind(billing_email.as_str())
                .bind(plan.as_str())
                .bind(plan_version as i32)
                .bind(billing_period.as_str())
                .bind(trial_days as i32)
                .bind(tax_rate.percent())
                .bind(subscription_id)
                .bind(created_at)
                .bind(version)
                .execute(&mut *conn)
                .await?;
            }
            TenantEvent::BrandingUpdated { primary_color, secondary_color, logo_url, custom_domain, updated_at } => {
                sqlx::query(&format!(
                    "UPDATE {schema}.tenants SET primary_color = $2, secondary_color = $3, logo_url = $4, custom_domain = $5, updated_at = $6, version = $7 WHERE id = $1"
                ))
                .bind(tenant_id)
                .bind(primary_color.map(|c| c.into_inner()))
                .bind(secondary_color.map(|c| c.into_inner()))
                .bind(logo_url.map(|u| u.into_inner()))
                .bind(custom_domain.map(|d| d.into_inner()))
                .bind(updated_at)
                .bind(version)
                .execute(&mut *conn)
                .await?;
            }
            TenantEvent::TenantSuspended { reason, source, .. } => {
                let source = match source {
                    SuspensionSource::Admin => "admin",
                    SuspensionSource::Billing => "billing",
                };
                sqlx::query(&set_status("suspended"))
                    .bind(tenant_id)
                    .bind(reason)
                    .bind(at)
                    .bind(version)
                    .bind(source)
                    .execute(&mut *conn)
                    .await?;
            }
            TenantEvent::TenantReactivated { .. } => {
                sqlx::query(&set_status("active"))
                    .bind(tenant_id)
                    .bind(None::<String>)
                    .bind(at)
                    .bind(version)
                    .bind(None::<String>)
                    .execute(&mut *conn)
                    .await?;
            }
            TenantEvent::TenantCancelled { reason, .. } => {
                sqlx::query(&set_status("cancelled"))
                    .bind(tenant_id)
                    .bind(reason)
                    .bind(at)
                    .bind(version)
                    .bind(None::<String>)
                    .execute(&mut *conn)
                    .await?;
            }
            TenantEvent::TenantErased { .. } => {
                sqlx::query(&set_status("erased"))
                    .bind(tenant_id)
                    .bind("personal data erased")
                    .bind(at)
                    .bind(version)
                    .bind(None::<String>)
                    .execute(&mut *conn)
                    .await?;
            }
            TenantEvent::ApiKeyIssued { key_id, name, role, key_hash, key_prefix, issued_at } => {
                sqlx::query(&format!(
                    "INSERT INTO {schema}.api_keys (id, tenant_id, name, role, key_hash, key_prefix, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ))
                .bind(key_id)
                .bind(tenant_id)
                .bind(name.as_str())
                .bind(role.as_str())
                .bind(key_hash)
                .bind(key_prefix)
                .bind(issued_at)
                .execute(&mut *conn)
                .await?;
            }
            TenantEvent::ApiKeyRevoked { key_id, revoked_at } => {
                sqlx::query(&format!("UPDATE {schema}.api_keys SET revoked_at = $2 WHERE id = $1"))
                    .bind(key_id)
                    .bind(revoked_at)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }
}
