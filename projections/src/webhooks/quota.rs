//! Quota alerts: `quota.threshold_reached` deliveries when a tenant's usage reaches 80 % and 100 %
//! of a limit, once per threshold and period, and the tenants whose quotas may have moved since a
//! position.

use super::*;

/// A quota threshold a tenant reached (see [`record_threshold`]).
#[derive(Debug, Clone)]
pub struct Threshold {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The quota's metric as `GET /v1/quota` names it.
    pub metric: String,
    /// 80 or 100 (percent of the limit).
    pub threshold: u32,
    /// The limit.
    pub limit: u64,
    /// What is used.
    pub used: u64,
    /// The period (`None`: a quota that does not reset, such as seats).
    pub period: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Records `reached` unless it was recorded before for its tenant, metric, period and
/// threshold, and then creates its `quota.threshold_reached` deliveries, ordered after the
/// events fanned out so far. Returns whether it was new.
pub async fn record_threshold(pool: &PgPool, reached: &Threshold, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let period_start = reached.period.map_or(DateTime::<Utc>::UNIX_EPOCH, |p| p.0);
    let new = sqlx::query(
        "INSERT INTO webhook_quota_marks (tenant_id, metric, period_start, threshold, reached_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(reached.tenant_id)
    .bind(&reached.metric)
    .bind(period_start)
    .bind(reached.threshold as i32)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if new {
        let id = format!("evt_quota_{}_{}_{}_{}", reached.tenant_id.simple(), reached.metric, period_start.timestamp(), reached.threshold);
        let body = json!({
            "id": id,
            "type": "quota.threshold_reached",
            "created_at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "tenant_id": reached.tenant_id,
            "data": {
                "metric": reached.metric,
                "threshold": reached.threshold,
                "limit": reached.limit,
                "used": reached.used,
                "period_start": reached.period.map(|p| p.0),
                "period_end": reached.period.map(|p| p.1),
            },
        })
        .to_string();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, position, body, status, next_attempt_at, created_at, updated_at)
             SELECT gen_random_uuid(), w.id, $2, 'quota.threshold_reached',
                    coalesce((SELECT position FROM follower_checkpoints WHERE name = 'webhooks'), 0), $3, 'pending', $4, $4, $4
             FROM webhook_endpoints w
             WHERE w.status = 'enabled' AND (w.tenant_id IS NULL OR w.tenant_id = $1)
               AND ('*' = ANY (w.event_types) OR 'quota.threshold_reached' = ANY (w.event_types))
             ON CONFLICT (endpoint_id, event_id) DO NOTHING",
        )
        .bind(reached.tenant_id)
        .bind(&id)
        .bind(&body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(new)
}

/// The tenants whose quotas may have moved at positions `after < p <= upto` and who have an
/// enabled endpoint for `quota.threshold_reached` (their own or the platform's), and `upto`:
/// at most `window` positions, and no further than every read model the quotas are read from
/// (so that what is read covers them). Nobody listening: no tenants, up to the head.
pub async fn quota_candidates(pool: &PgPool, after: i64, window: i64) -> Result<(Vec<Uuid>, i64), sqlx::Error> {
    let (head, listening, platform): (i64, bool, bool) = sqlx::query_as(
        "SELECT least((SELECT position FROM event_log_head),
                      coalesce((SELECT min(position) FROM projection_runs WHERE status = 'live' AND name IN ('usage', 'billing')), 0)),
                EXISTS (SELECT 1 FROM webhook_endpoints WHERE status = 'enabled' AND ('*' = ANY (event_types) OR 'quota.threshold_reached' = ANY (event_types))),
                EXISTS (SELECT 1 FROM webhook_endpoints WHERE tenant_id IS NULL AND status = 'enabled' AND ('*' = ANY (event_types) OR 'quota.threshold_reached' = ANY (event_types)))",
    )
    .fetch_one(pool)
    .await?;
    if !listening {
        return Ok((Vec::new(), head.max(after)));
    }
    let upto = head.min(after + window);
    if upto <= after {
        return Ok((Vec::new(), after));
    }
    let tenants: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT e.tenant_id FROM events e
         WHERE e.position > $1 AND e.position <= $2 AND e.tenant_id IS NOT NULL
           AND ($3 OR EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.tenant_id = e.tenant_id AND w.status = 'enabled'
                              AND ('*' = ANY (w.event_types) OR 'quota.threshold_reached' = ANY (w.event_types))))",
    )
    .bind(after)
    .bind(upto)
    .bind(platform)
    .fetch_all(pool)
    .await?;
    Ok((tenants, upto))
}
