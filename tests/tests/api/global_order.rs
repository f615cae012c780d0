//! The global order under concurrent writers: a reader that follows `GET /v1/events` by
//! position never skips an event, even though writers commit out of order, roll back, and one
//! transaction stays open the whole time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::{spawn_app, ADMIN_TOKEN};
use rand::Rng;
use reqwest::Method;
use serde_json::Value;
use sqlx::PgPool;

const WRITERS: usize = 16;
const TRANSACTIONS_PER_WRITER: usize = 30;

/// Appends events for aggregate `Probe/<id>` in transactions that wait a random while before
/// committing (so later inserts often commit first) and sometimes roll back. Returns the
/// committed (aggregate_id, sequence) pairs.
async fn writer(pool: PgPool, id: String) -> Vec<(String, i64)> {
    let mut committed = Vec::new();
    let mut sequence = 0i64;
    for _ in 0..TRANSACTIONS_PER_WRITER {
        let (count, pause, roll_back) = {
            let mut rng = rand::thread_rng();
            (rng.gen_range(1..=3), rng.gen_range(0..8), rng.gen_bool(0.15))
        };
        let mut tx = pool.begin().await.unwrap();
        for i in 1..=count {
            sqlx::query("INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) VALUES ('Probe', $1, $2, 'Probed', '1.0', '{}', '{}')")
                .bind(&id)
                .bind(sequence + i)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if roll_back {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            committed.extend((1..=count).map(|i| (id.clone(), sequence + i)));
            sequence += count;
        }
    }
    committed
}

/// Reads every event after `after` that is there now, over HTTP.
async fn read_from(app: &e2e::TestApp, after: i64) -> Vec<Value> {
    let path = format!("/v1/events?after={after}&limit=500");
    let text = app.request(Method::GET, &path, Some(ADMIN_TOKEN)).send().await.unwrap().text().await.unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Follows the log by position until it has seen `target` events (once the target is known).
async fn follow(app: &e2e::TestApp, seen: &mut Vec<Value>, target: &Mutex<Option<usize>>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if target.lock().unwrap().is_some_and(|t| seen.len() >= t) {
            return;
        }
        let page = read_from(app, seen.last().map_or(0, |e| e["position"].as_i64().unwrap())).await;
        if page.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_following_positions_never_skips_an_event() {
    let app = spawn_app().await;
    // What the application appended at start-up (the seeded catalog) is part of the log too.
    let mut seen = read_from(&app, 0).await;
    let mut committed: BTreeSet<(String, i64)> =
        seen.iter().map(|e| (e["aggregate_id"].as_str().unwrap().to_owned(), e["sequence"].as_i64().unwrap())).collect();

    // A transaction that stays open while everything else happens: it must hold up nobody.
    let mut long = app.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) VALUES ('Probe', 'long', 1, 'Probed', '1.0', '{}', '{}')")
        .execute(&mut *long)
        .await
        .unwrap();

    let writers: Vec<_> = (0..WRITERS).map(|i| tokio::spawn(writer(app.pool.clone(), format!("w{i}")))).collect();
    let target = Mutex::new(None);
    let control = async {
        for w in writers {
            committed.extend(w.await.unwrap());
        }
        *target.lock().unwrap() = Some(committed.len());
    };
    tokio::join!(follow(&app, &mut seen, &target), control);
    assert_eq!(seen.len(), committed.len(), "an open transaction held the reader up, or events were lost");

    long.commit().await.unwrap();
    committed.insert(("long".to_owned(), 1));
    *target.lock().unwrap() = Some(committed.len());
    follow(&app, &mut seen, &target).await;

    // Positions are 1..=N with no gap and no repeat: nothing was skipped or seen twice.
    let positions: Vec<i64> = seen.iter().map(|e| e["position"].as_i64().unwrap()).collect();
    assert_eq!(positions, (1..=committed.len() as i64).collect::<Vec<_>>());
    // Exactly the committed events were delivered: none rolled back, none missing.
    let delivered: BTreeSet<(String, i64)> =
        seen.iter().map(|e| (e["aggregate_id"].as_str().unwrap().to_owned(), e["sequence"].as_i64().unwrap())).collect();
    assert_eq!(delivered, committed);
    // Each aggregate's events arrive in their own order.
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for event in &seen {
        let id = event["aggregate_id"].as_str().unwrap().to_owned();
        let sequence = event["sequence"].as_i64().unwrap();
        let previous = last.insert(id.clone(), sequence).unwrap_or(0);
        assert_eq!(sequence, previous + 1, "{id} out of order");
    }
    assert!(read_from(&app, committed.len() as i64).await.is_empty());
}
