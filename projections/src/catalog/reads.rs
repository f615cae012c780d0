//! Reads of the `catalog` projection's tables: `rm.plans` (every published version) and
//! `rm.coupons` (with their redemption counts).

use chrono::{DateTime, Utc};
use domain::coupon::CouponTerms;
use domain::plan::Plan;
use sqlx::types::Json;
use sqlx::PgPool;

use crate::reads::ReadModels;

/// Reads of plans and coupons.
#[derive(Debug, Clone, Copy)]
pub struct CatalogReads<'a>(&'a PgPool);

impl ReadModels {
    /// Plans and coupons.
    pub fn catalog(&self) -> CatalogReads<'_> {
        CatalogReads(self.pool())
    }
}

/// A coupon with how often it was redeemed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CouponRow {
    pub terms: Json<CouponTerms>,
    pub redeemed: i64,
    pub created_at: DateTime<Utc>,
}

const COUPON_SELECT: &str = "SELECT c.terms, coalesce(r.redeemed, 0) AS redeemed, c.created_at
     FROM rm.coupons c LEFT JOIN coupon_redemptions r ON r.code = c.code";

/// A billable metric of the catalog (`None` for `defined_at`: a built-in).
#[derive(Debug, Clone)]
pub struct MetricRow {
    pub definition: domain::usage::metrics::MetricDefinition,
    pub defined_at: Option<DateTime<Utc>>,
}

impl CatalogReads<'_> {
    /// Every billable metric: the built-ins, then the defined ones, by code.
    pub async fn metrics(&self) -> Result<Vec<MetricRow>, sqlx::Error> {
        let rows: Vec<(Json<domain::usage::metrics::MetricDefinition>, DateTime<Utc>)> =
            sqlx::query_as("SELECT definition, defined_at FROM rm.metrics ORDER BY code").fetch_all(self.0).await?;
        let built_ins =
            domain::usage::metrics::MetricDefinition::built_ins().into_iter().map(|definition| MetricRow { definition, defined_at: None });
        Ok(built_ins.chain(rows.into_iter().map(|(d, at)| MetricRow { definition: d.0, defined_at: Some(at) })).collect())
    }

    /// Metric `code`, if the catalog has it.
    pub async fn metric(&self, code: &str) -> Result<Option<MetricRow>, sqlx::Error> {
        if let Some(definition) = domain::usage::metrics::MetricDefinition::built_ins().into_iter().find(|m| m.code.as_str() == code) {
            return Ok(Some(MetricRow { definition, defined_at: None }));
        }
        let row: Option<(Json<domain::usage::metrics::MetricDefinition>, DateTime<Utc>)> =
            sqlx::query_as("SELECT definition, defined_at FROM rm.metrics WHERE code = $1").bind(code).fetch_optional(self.0).await?;
        Ok(row.map(|(d, at)| MetricRow { definition: d.0, defined_at: Some(at) }))
    }

    /// The latest version of each plan, cheapest first.
    pub async fn latest_plans(&self) -> Result<Vec<Plan>, sqlx::Error> {
        let plans: Vec<Json<Plan>> = sqlx::query_scalar(
            "SELECT definition FROM (SELECT DISTINCT ON (code) * FROM rm.plans ORDER BY code, version DESC) p ORDER BY monthly_price, code",
        )
        .fetch_all(self.0)
        .await?;
        Ok(plans.into_iter().map(|p| p.0).collect())
    }

    /// Whether any version of plan `code` was published.
    pub async fn plan_exists(&self, code: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM rm.plans WHERE code = $1)").bind(code).fetch_one(self.0).await
    }

    /// Coupon `code`.
    pub async fn coupon(&self, code: &str) -> Result<Option<CouponRow>, sqlx::Error> {
        sqlx::query_as(&format!("{COUPON_SELECT} WHERE c.code = $1")).bind(code).fetch_optional(self.0).await
    }

    /// Up to `limit` coupons with codes after `after`, by code.
    pub async fn coupons(&self, after: Option<&str>, limit: i64) -> Result<Vec<CouponRow>, sqlx::Error> {
        sqlx::query_as(&format!("{COUPON_SELECT} WHERE ($1::text IS NULL OR c.code > $1) ORDER BY c.code LIMIT $2"))
            .bind(after)
            .bind(limit)
            .fetch_all(self.0)
            .await
    }
}
