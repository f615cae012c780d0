//! Batched writes (issue 7): projections apply a batch of events with multi-row statements,
//! and the usage batch endpoint appends its facts in one transaction. Both must give exactly
//! what the one-at-a-time paths give.

use std::collections::HashMap;

use e2e::{spawn_app_with, TestApp};
use futures::future::join_all;
use serde_json::{json, Value};

/// Every row of `table` in `schema`, in a stable order.
async fn rows(app: &TestApp, schema: &str, table: &str) -> Value {
    sqlx::query_scalar(&format!("SELECT coalesce(jsonb_agg(t ORDER BY t::text), '[]') FROM {schema}.{table} t"))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_projection_applies_a_batch_exactly_as_it_applies_events_one_by_one() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-05-20T12:00:00Z").await;
    let clinic = app.create_tenant_on("batch-clinic", "professional").await;
    let school = app.create_tenant_on("batch-school", "starter").await;
    let room = app.create_resource(&clinic.key, "room", 1).await;
    app.book(&clinic.key, &room, "2027-05-21T09:00:00Z", "2027-05-21T10:00:00Z", 1).await.expect(201);
    // Counters and gauges over several hours, out of order, with ties on `occurred_at` (the
    // later fact must win a gauge's bucket) and repeats inside a batch.
    for (tenant, salt) in [(&clinic, 0), (&school, 7)] {
        let records: Vec<Value> = (0..240)
            .map(|i| {
                // The last ten repeat earlier facts exactly (a repeat with another fact is refused).
                let i = i % 230;
                let hour = (i * 7 + salt) % 5;
                let minute = (i * 13) % 3; // many facts share an instant
                let metric = if i % 3 == 0 { "storage_bytes" } else { "api_calls" };
                json!({"metric": metric, "quantity": (i * 37 + salt) % 1000 + 1, "idempotency_key": format!("k-{i}"),
                       "occurred_at": format!("2027-05-20T{:02}:{minute:02}:00Z", 6 + hour)})
            })
            .collect();
        let reply = app.post("/v1/usage/batch", &tenant.key, json!({ "records": records })).await;
        assert_eq!(reply.expect(202)["accepted"], 240, "{:?}", reply.body);
        app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 5, "idempotency_key": "single"})).await.expect(202);
    }
    // The live models were built batch by batch; fold the same log again one event at a time.
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head").fetch_one(&app.pool).await.unwrap();
    let events = projections::log::read_after(&app.pool, 0, head, None).await.unwrap();
    assert_eq!(events.len() as i64, head);
    for projection in projections::all() {
        let schema = format!("check_{}", projection.name());
        let mut conn = app.pool.acquire().await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut *conn).await.unwrap();
        projection.create(&mut conn, &schema).await.unwrap();
        for event in &events {
            let event = if projection.reads_stored_events() { event.clone() } else { event.upcast() };
            projection.apply(&mut conn, &schema, &event).await.unwrap();
        }
        for table in projection.tables() {
            let live = rows(&app, "rm", table).await;
            assert_eq!(live, rows(&app, &schema, table).await, "{}.{table}: batched vs one by one", projection.name());
        }
    }
    // The comparison covered buckets folded from many facts, gauges among them.
    let folded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm.usage_hourly WHERE facts > 10 AND kind = 'gauge'").fetch_one(&app.pool).await.unwrap();
    assert!(folded >= 4, "{folded}");
    let verify = app.get("/v1/audit/verify", &clinic.key).await;
    assert_eq!(verify.expect(200)["valid"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_racing_single_records_with_the_same_keys_records_each_fact_once() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-05-20T12:00:00Z").await;
    let tenant = app.create_tenant_on("batch-race", "professional").await;
    let fact = |k: usize| json!({"metric": "api_calls", "quantity": k + 1, "idempotency_key": format!("race-{k}"), "occurred_at": "2027-05-20T12:00:00Z"});
    for round in 0..3 {
        let keys: Vec<usize> = (round * 100..round * 100 + 100).collect();
        let batch = app.post("/v1/usage/batch", &tenant.key, json!({"records": keys.iter().map(|&k| fact(k)).collect::<Vec<_>>()}));
        let singles = join_all(keys.iter().step_by(3).map(|&k| app.post("/v1/usage", &tenant.key, fact(k))));
        let (batch, singles) = tokio::join!(batch, singles);
        let batch = batch.expect(202).clone();
        assert_eq!(batch["accepted"], 100, "{batch}");
        // Every key is recorded by exactly one of the two.
        let mut firsts: HashMap<usize, u32> = HashMap::new();
        for (i, result) in batch["results"].as_array().unwrap().iter().enumerate() {
            if result["duplicate"] == false {
                *firsts.entry(keys[i]).or_default() += 1;
            }
        }
        for (reply, &k) in singles.iter().zip(keys.iter().step_by(3)) {
            if reply.expect(202)["duplicate"] == false {
                *firsts.entry(k).or_default() += 1;
            }
        }
        assert_eq!(firsts.len(), 100, "every key recorded (round {round})");
        assert!(firsts.values().all(|&n| n == 1), "no key recorded twice (round {round}): {firsts:?}");
    }
    // The log holds each fact once: on its own, or in one of the batches' events.
    let facts: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(CASE WHEN aggregate_type = 'Usage' THEN 1 ELSE jsonb_array_length(payload->'facts') END), 0)::bigint
         FROM events WHERE aggregate_type IN ('Usage', 'UsageBatch')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(facts, 300);
    let expected: u64 = (1..=300).sum();
    assert_eq!(app.get("/v1/quota/api_calls", &tenant.key).await.expect(200)["used"].as_u64(), Some(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_is_readable_at_once_while_a_flood_of_usage_runs_beside_it() {
    // Projections that read only some aggregate types skip rounds of others' events without a
    // transaction; a write of their own types must still be in their model when answered.
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-05-20T12:00:00Z").await;
    let tenant = app.create_tenant_on("batch-ryw", "enterprise").await;
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    // The flood has a key of its own: rate limits are per key, and it may outrun its own.
    let flood_key = app.issue_key(&tenant.key, "member").await;
    let floods: Vec<_> = (0..6)
        .map(|f| {
            let (client, address, key, flooding) = (app.client.clone(), app.address.clone(), flood_key.clone(), flooding.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("flood-{f}-{n}")});
                    let reply = client.post(format!("{address}/v1/usage")).bearer_auth(&key).json(&body).send().await.unwrap();
                    // The flood may outrun the plan's rate limit (5,000 a minute): a refused
                    // fact is not recorded, and the flood slows down.
                    if reply.status() == 429 {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                    assert_eq!(reply.status(), 202);
                    n += 1;
                }
                n
            })
        })
        .collect();
    for i in 0..25 {
        let room = app.create_resource(&tenant.key, "room", 1).await;
        app.get(&format!("/v1/resources/{room}"), &tenant.key).await.expect(200);
        let starts = format!("2027-06-{:02}T09:00:00Z", i + 1);
        let ends = format!("2027-06-{:02}T10:00:00Z", i + 1);
        let booking = app.book(&tenant.key, &room, &starts, &ends, 1).await.expect(201).clone();
        let id = booking["id"].as_str().unwrap();
        assert_eq!(app.get(&format!("/v1/bookings/{id}"), &tenant.key).await.expect(200)["status"], "confirmed");
        let color = format!("#{:06X}", 0x102030 + i);
        app.put("/v1/tenant/branding", &tenant.key, json!({"primary_color": color})).await.expect(200);
        assert_eq!(app.get("/v1/tenant", &tenant.key).await.expect(200)["branding"]["primary_color"], color.as_str());
        let plan = json!({"code": format!("ryw-{i}"), "name": "RYW", "monthly_price": "1.00", "limits": {}, "features": [], "rate_limit_per_minute": 60});
        app.post("/v1/plans", e2e::ADMIN_TOKEN, plan).await.expect(201);
        let plans = app.get("/v1/plans", e2e::ADMIN_TOKEN).await.expect(200).clone();
        assert!(plans.to_string().contains(&format!("ryw-{i}")), "plan ryw-{i} is listed at once");
    }
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for flood in floods {
        sent += flood.await.unwrap();
    }
    assert!(sent > 50, "the flood ran beside the checks ({sent} facts)");
    let quota = app.get("/v1/quota/api_calls", &tenant.key).await.expect(200).clone();
    assert_eq!(quota["used"].as_u64(), Some(sent as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_event_and_a_key_counts_once_whichever_way_it_comes_in() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-05-20T12:00:00Z").await;
    let tenant = app.create_tenant_on("batch-one-event", "professional").await;
    let fact = |key: &str, quantity: u64| json!({"metric": "api_calls", "quantity": quantity, "idempotency_key": key});
    app.post("/v1/usage", &tenant.key, fact("alone", 1)).await.expect(202);

    // A key recorded on its own, two new ones, a repeat within the batch and a refused record.
    let bad = json!({"metric": "api_calls", "quantity": -1, "idempotency_key": "bad"});
    let body = json!({"records": [fact("alone", 1), fact("first", 10), fact("second", 100), fact("first", 10), bad]});
    let reply = app.post("/v1/usage/batch", &tenant.key, body.clone()).await;
    let answer = reply.expect(202).clone();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["duplicates"].as_u64(), answer["refused"].as_u64()),
        (Some(4), Some(2), Some(1)),
        "{answer}"
    );
    let duplicate: Vec<Value> = answer["results"].as_array().unwrap().iter().map(|r| r["duplicate"].clone()).collect();
    assert_eq!(duplicate, vec![json!(true), json!(false), json!(false), json!(true), Value::Null]);
    assert_eq!(answer["results"][4]["error"]["details"]["field"], "quantity");
    let position: i64 = reply.headers.get("ledger-position").expect("Ledger-Position").to_str().unwrap().parse().unwrap();

    // One event holds the two new facts, in order, at the position the answer named.
    let batches: Vec<(i64, String, Value)> =
        sqlx::query_as("SELECT position, aggregate_id, payload FROM events WHERE aggregate_type = 'UsageBatch'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(batches.len(), 1);
    let (at, id, payload) = &batches[0];
    assert_eq!(*at, position);
    let keys: Vec<&str> = payload["facts"].as_array().unwrap().iter().map(|f| f["idempotency_key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["first", "second"]);

    // A key the batch recorded is a duplicate on its own, and the same batch again records nothing.
    assert_eq!(app.post("/v1/usage", &tenant.key, fact("second", 100)).await.expect(202)["duplicate"], true);
    let again = app.post("/v1/usage/batch", &tenant.key, body).await.expect(202).clone();
    assert_eq!(again["duplicates"], 4, "{again}");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type IN ('Usage', 'UsageBatch')")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 2, "the fact on its own and the one batch");

    // Read models, quota, audit and replay see the batch's facts.
    assert_eq!(app.get("/v1/quota/api_calls", &tenant.key).await.expect(200)["used"], 111);
    let series = app.get("/v1/usage?metric=api_calls&from=2027-05-20T00:00:00Z&to=2027-05-21T00:00:00Z", &tenant.key).await;
    assert_eq!(series.expect(200)["buckets"][0]["facts"], 3);
    let audit = app.get("/v1/audit?aggregate_type=UsageBatch", &tenant.key).await.expect(200).clone();
    let summaries: Vec<&str> = audit["data"].as_array().unwrap().iter().filter_map(|e| e["summary"].as_str()).collect();
    assert!(summaries.contains(&"2 usage facts recorded in a batch: 2 api_calls"), "{summaries:?}");
    assert_eq!(app.get("/v1/audit/verify", &tenant.key).await.expect(200)["valid"], true);
    let replayed = app.get(&format!("/v1/aggregates/UsageBatch/{id}"), &tenant.key).await.expect(200).clone();
    assert_eq!(replayed["state"]["facts"], 2, "{replayed}");
}
