//! Projectors apply every event exactly once, whatever happens to the process: a projector
//! killed in the middle of a batch resumes from its last committed checkpoint, and a model
//! rebuilt from scratch equals the one that was maintained live.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use e2e::{spawn_app, ADMIN_TOKEN};
use projections::{Projection, ProjectionError, Projections, Sequencer, StoredEvent};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;

/// Counts events per aggregate: any event lost or applied twice shows as a wrong count.
struct Counting {
    stall_at: Option<usize>,
    applied: AtomicUsize,
    stalled: Notify,
}

#[async_trait]
impl Projection for Counting {
    fn name(&self) -> &'static str {
        "event_counts"
    }
    fn version(&self) -> i32 {
        1
    }
    fn tables(&self) -> &'static [&'static str] {
        &["event_counts"]
    }
    async fn create(&self, conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
        let ddl = format!(
            "CREATE TABLE {schema}.event_counts (aggregate_id text PRIMARY KEY, events bigint NOT NULL, last_sequence bigint NOT NULL)"
        );
        sqlx::query(&ddl).execute(conn).await?;
        Ok(())
    }
    async fn apply(&self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
        let n = self.applied.fetch_add(1, Ordering::SeqCst) + 1;
        if Some(n) == self.stall_at {
            // "Crash" here: the task is aborted while this batch's transaction is open.
            self.stalled.notify_one();
            std::future::pending::<()>().await;
        }
        sqlx::query(&format!(
            "INSERT INTO {schema}.event_counts VALUES ($1, 1, $2)
             ON CONFLICT (aggregate_id) DO UPDATE SET events = event_counts.events + 1, last_sequence = EXCLUDED.last_sequence"
        ))
        .bind(&event.aggregate_id)
        .bind(event.sequence)
        .execute(conn)
        .await?;
        Ok(())
    }
}

fn counting(stall_at: Option<usize>) -> Arc<Counting> {
    Arc::new(Counting { stall_at, applied: AtomicUsize::new(0), stalled: Notify::new() })
}

async fn wait_until_sequenced(pool: &PgPool, total: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head").fetch_one(pool).await.unwrap();
        if head == total {
            return;
        }
        assert!(Instant::now() < deadline, "the sequencer did not number {total} events (head {head})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_batch_resumes_without_losing_or_repeating_an_event() {
    let app = spawn_app().await;
    // 4,800 events over 40 aggregates, plus a real tenant's (batches hold 2,000 positions).
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'Probe', 'p' || (g % 40), g / 40 + 1, 'Probed', '1.0', '{}', '{}' FROM generate_series(0, 4799) g",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    app.create_tenant("crash-test").await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&app.pool).await.unwrap();
    wait_until_sequenced(&app.pool, total).await;

    // First process: stalls on the 2,700th event, i.e. in its second batch of 2,000, and is killed.
    let crashing = counting(Some(2700));
    let first = Projections::new(app.pool.clone(), Sequencer::new(app.pool.clone()), vec![crashing.clone() as Arc<dyn Projection>]);
    let task = tokio::spawn(async move { first.prepare().await });
    tokio::time::timeout(Duration::from_secs(30), crashing.stalled.notified()).await.expect("the projector reached event 2,700");
    task.abort();
    let _ = task.await;

    // Only the first, committed batch survived: checkpoint and model agree.
    let checkpoint: i64 =
        sqlx::query_scalar("SELECT position FROM projection_runs WHERE name = 'event_counts'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(checkpoint, 2000);
    let counted: i64 =
        sqlx::query_scalar("SELECT sum(events)::bigint FROM rm_event_counts_g1.event_counts").fetch_one(&app.pool).await.unwrap();
    assert_eq!(counted, 2000);

    // Second process: resumes at 2,000 and finishes.
    let second = Projections::new(app.pool.clone(), Sequencer::new(app.pool.clone()), vec![counting(None) as Arc<dyn Projection>]);
    second.prepare().await.unwrap();

    let mismatches: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT aggregate_id, count(*) AS events, max(sequence) AS last_sequence FROM events GROUP BY aggregate_id
             EXCEPT SELECT aggregate_id, events, last_sequence FROM rm.event_counts
         ) missing",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(mismatches, 0, "the model differs from a fresh count of the log");
    let counted: i64 = sqlx::query_scalar("SELECT sum(events)::bigint FROM rm.event_counts").fetch_one(&app.pool).await.unwrap();
    assert_eq!(counted, total);
}

async fn tenants_model(app: &e2e::TestApp) -> Value {
    let tenants: Value =
        sqlx::query_scalar("SELECT coalesce(json_agg(t ORDER BY id), '[]') FROM rm.tenants t").fetch_one(&app.pool).await.unwrap();
    let keys: Value =
        sqlx::query_scalar("SELECT coalesce(json_agg(k ORDER BY id), '[]') FROM rm.api_keys k").fetch_one(&app.pool).await.unwrap();
    json!({"tenants": tenants, "api_keys": keys})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_tenants_model_equals_the_live_one() {
    let app = spawn_app().await;
    for i in 0..6 {
        let tenant = app.create_tenant(&format!("rebuild-{i}")).await;
        app.issue_key(&tenant.key, "member").await;
        if i % 2 == 0 {
            app.post(&format!("/v1/tenants/{}/suspend", tenant.id), ADMIN_TOKEN, json!({"reason": "test"})).await.expect(200);
        }
        if i % 3 == 0 {
            app.put("/v1/tenant/branding", &tenant.key, json!({"primary_color": "#ABCDEF"})).await;
        }
    }
    let before = tenants_model(&app).await;
    let started = app.post("/v1/admin/projections/tenants/rebuild", ADMIN_TOKEN, json!({})).await;
    assert_eq!(started.expect(202)["rebuilding"][0]["generation"], 2);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = app.get("/v1/admin/projections", ADMIN_TOKEN).await;
        let runs = status.expect(200).as_array().unwrap().clone();
        if runs.iter().any(|r| r["name"] == "tenants" && r["generation"] == 2 && r["status"] == "live") {
            assert_eq!(runs.iter().filter(|r| r["name"] == "tenants").count(), 1, "the old run is still listed: {runs:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the rebuild did not finish: {runs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tenants_model(&app).await, before);
    app.post("/v1/admin/projections/nope/rebuild", ADMIN_TOKEN, json!({})).await.expect_error(404, "NOT_FOUND");
}
