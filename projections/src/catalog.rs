//! The `catalog` projection: every published plan version (`rm.plans`) and every coupon
//! (`rm.coupons`; how many times each was redeemed is counted by the write side, in
//! `coupon_redemptions`, atomically with each redemption).

use async_trait::async_trait;
use domain::plan::PlanEvent;
use sqlx::PgConnection;

use crate::log::StoredEvent;
use crate::runner::{Projection, ProjectionError};

pub mod reads;

/// Builds `plans`.
#[derive(Debug, Clone, Copy)]
pub struct CatalogProjection;

#[async_trait]
impl Projection for CatalogProjection {
    fn name(&self) -> &'static str {
        "catalog"
    }

    fn version(&self) -> i32 {
        // 2: coupons. 3: billable metrics.
        3
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Plan", "Coupon", "Metric"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["plans", "coupons", "metrics"]
    }

    async fn create(&self, conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
        let ddl = format!(
            "CREATE TABLE {schema}.plans (
                 code                  text NOT NULL,
                 version               integer NOT NULL,
                 name                  text NOT NULL,
                 monthly_price         numeric NOT NULL,
                 yearly_price          numeric NOT NULL,
                 currency              text NOT NULL,
                 limits                jsonb NOT NULL,
                 features              jsonb NOT NULL,
                 rate_limit_per_minute integer NOT NULL,
                 definition            jsonb NOT NULL,
                 published_at          timestamptz NOT NULL,
                 PRIMARY KEY (code, version)
             );
             CREATE TABLE {schema}.coupons (
                 code        text PRIMARY KEY,
                 terms       jsonb NOT NULL,
                 created_at  timestamptz NOT NULL
             );
             CREATE TABLE {schema}.metrics (
                 code        text PRIMARY KEY,
                 definition  jsonb NOT NULL,
                 defined_at  timestamptz NOT NULL
             )"
        );
        sqlx::Executor::execute(&mut *conn, ddl.as_str()).await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
        if event.aggregate_type == "Coupon" {
            let domain::coupon::CouponEvent::CouponCreated { terms, created_at } =
                serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
            sqlx::query(&format!("INSERT INTO {schema}.coupons (code, terms, created_at) VALUES ($1, $2, $3)"))
                .bind(&terms.code)
                .bind(sqlx::types::Json(&terms))
                .bind(created_at)
                .execute(conn)
                .await?;
            return Ok(());
        }
        if event.aggregate_type == "Metric" {
            let domain::usage::metrics::MetricEvent::MetricDefined { metric, defined_at } =
                serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
            sqlx::query(&format!("INSERT INTO {schema}.metrics (code, definition, defined_at) VALUES ($1, $2, $3)"))
                .bind(metric.code.as_str())
                .bind(sqlx::types::Json(&metric))
                .bind(defined_at)
                .execute(conn)
                .await?;
            return Ok(());
        }
        if event.aggregate_type != "Plan" {
            return Ok(());
        }
        let PlanEvent::PlanPublished { plan, published_at } =
            serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
        let json = |v: &dyn erased::Json| v.to_json();
        sqlx::query(&format!(
            "INSERT INTO {schema}.plans (code, version, name, monthly_price, yearly_price, currency, limits, features, rate_limit_per_minute, definition, published_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(plan.code.as_str())
        .bind(plan.version as i32)
        .bind(&plan.name)
        .bind(plan.monthly_price)
        .bind(plan.yearly_price)
        .bind(&plan.currency)
        .bind(json(&plan.limits))
        .bind(json(&plan.features))
        .bind(plan.rate_limit_per_minute as i32)
        .bind(json(&plan))
        .bind(published_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}

mod erased {
    /// Serialises anything serialisable to a JSON value (for jsonb columns).
    pub trait Json {
        fn to_json(&self) -> serde_json::Value;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}
