//! The write path's consistency: commands answer on commit with `Ledger-Position`, reads wait
//! for their tenant's writes (on any instance) or for a position they name, concurrent
//! commands share appends without sharing refusals, and a server killed in the middle of a
//! flood loses no acknowledged fact and counts none twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use commands::appender::{Appended, Appender, NewEvent};
use e2e::{spawn_app, spawn_instance_of, ADMIN_TOKEN};
use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

fn position_of(reply: &e2e::Reply) -> i64 {
    reply.headers.get("ledger-position").expect("a Ledger-Position header").to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_answer_their_position_and_reads_wait_for_the_one_they_name() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("pos-clinic").await;

    let first = app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 3, "idempotency_key": "p-1"})).await;
    first.expect(202);
    let second = app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 4, "idempotency_key": "p-2"})).await;
    second.expect(202);
    assert!(position_of(&second) > position_of(&first), "later events have higher positions");
    let stored: i64 = sqlx::query_scalar("SELECT position FROM events WHERE aggregate_type = 'Usage' AND aggregate_id = $1")
        .bind(format!("{}:p-2", tenant.id))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(position_of(&second), stored, "the answer names its event's position in the log");
    // A duplicate appends nothing, so it names no position.
    let again = app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 4, "idempotency_key": "p-2"})).await;
    assert_eq!(again.expect(202)["duplicate"], true);
    assert!(again.headers.get("ledger-position").is_none());

    // The tenant's read reflects both at once, and says what it reflects.
    let quota = app.get("/v1/quota/api_calls", &tenant.key).await;
    assert_eq!(quota.expect(200)["used"], 7);
    assert!(position_of(&quota) >= position_of(&second));

    // A read may name a position (say, another tenant's command's) to wait for it.
    let other = app.create_tenant("pos-other").await;
    let theirs = app.post("/v1/usage", &other.key, json!({"metric": "api_calls", "quantity": 1, "idempotency_key": "o-1"})).await;
    let named = position_of(&theirs);
    let reply =
        app.send(app.request(Method::GET, "/v1/quota/api_calls", Some(&tenant.key)).header("Ledger-Position", named.to_string())).await;
    reply.expect(200);
    assert!(position_of(&reply) >= named);

    // A position the read models cannot reach in time: 503 STALE_READ after about 5 s.
    let started = Instant::now();
    let far = named + 1_000_000;
    let reply =
        app.send(app.request(Method::GET, "/v1/quota/api_calls", Some(&tenant.key)).header("Ledger-Position", far.to_string())).await;
    reply.expect_error(503, "STALE_READ");
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(started.elapsed() >= Duration::from_millis(4_900), "it waited the 5 s first");
    // Not a position at all: 400.
    let reply = app.send(app.request(Method::GET, "/v1/quota/api_calls", Some(&tenant.key)).header("Ledger-Position", "soon")).await;
    reply.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(reply.body["error"]["details"]["field"], "Ledger-Position");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_on_one_instance_reflect_commands_answered_by_another() {
    // `a` starts first and leads every projection; `b` follows the models from the database.
    let a = spawn_app().await;
    let b = spawn_instance_of(&a).await;
    let tenant = a.create_tenant("twin-reads").await;
    let room = b.create_resource(&tenant.key, "room", 1).await;
    for i in 0..10 {
        // Written on one instance, read at once on the other, both ways round.
        let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        writer
            .post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("twin-{i}")}))
            .await
            .expect(202);
        assert_eq!(reader.get("/v1/quota/api_calls", &tenant.key).await.expect(200)["used"], i + 1, "read after write {i}");
        let starts = format!("2031-01-{:02}T09:00:00Z", i + 1);
        let ends = format!("2031-01-{:02}T10:00:00Z", i + 1);
        let booking = writer.book(&tenant.key, &room, &starts, &ends, 1).await.expect(201).clone();
        let id = booking["id"].as_str().unwrap();
        assert_eq!(reader.get(&format!("/v1/bookings/{id}"), &tenant.key).await.expect(200)["status"], "confirmed");
        assert_eq!(booking["customer"], reader.get(&format!("/v1/bookings/{id}"), &tenant.key).await.body["customer"]);
    }
    // The admin's read without a tenant reflects everything answered before it.
    let events: Vec<Value> = a.all_events().await;
    let head = events.iter().filter_map(|e| e["position"].as_i64()).max().unwrap();
    let reply = b.get("/v1/admin/projections", ADMIN_TOKEN).await;
    reply.expect(200);
    assert!(position_of(&reply) >= head);

    // A key revoked on one instance is refused on the other as soon as DELETE has answered,
    // though the other had just used it (its lookup was cached).
    let spare = a.issue_key(&tenant.key, "member").await;
    b.get("/v1/quota/api_calls", &spare).await.expect(200);
    let keys = a.get("/v1/api-keys", &tenant.key).await.expect(200).clone();
    let spare_id = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| spare.starts_with(k["key_prefix"].as_str().unwrap_or("-")) && k["role"] == "member")
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .expect("the spare key is listed");
    a.delete(&format!("/v1/api-keys/{spare_id}"), &tenant.key).await.expect(200);
    b.get("/v1/quota/api_calls", &spare).await.expect_error(401, "UNAUTHENTICATED");
    // And a tenant suspended on one instance gets 402 on the other at once.
    a.post(&format!("/v1/tenants/{}/suspend", tenant.id), ADMIN_TOKEN, json!({"reason": "test"})).await.expect(200);
    b.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 1, "idempotency_key": "after-suspend"}))
        .await
        .expect_error(402, "TENANT_SUSPENDED");
}

fn probe(id: &str, sequence: i64) -> NewEvent {
    NewEvent {
        aggregate_type: "Probe",
        aggregate_id: id.to_owned(),
        sequence,
        event_type: "Probed".to_owned(),
        event_version: "1.0".to_owned(),
        payload: serde_json::value::to_raw_value(&json!({})).unwrap(),
        metadata: serde_json::value::to_raw_value(&json!({})).unwrap(),
        claims: Vec::new(),
        guard: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_append_answers_each_command_on_its_own() {
    let app = spawn_app().await;
    let appender = Appender::start(app.pool.clone(), 1, std::sync::Arc::new(|_| {}));
    assert!(matches!(appender.append(vec![probe("taken", 1)]).await.unwrap(), Appended::At(_)));
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head").fetch_one(&app.pool).await.unwrap();
    // One call, four commands: a new stream, one that lost its race, a two-event command, and
    // a second command on the first one's stream at the same sequence.
    let answers = appender
        .append_many(vec![
            vec![probe("fresh", 1)],
            vec![probe("taken", 1)],
            vec![probe("pair", 1), probe("pair", 2)],
            vec![probe("fresh", 1)],
        ])
        .await
        .unwrap();
    assert_eq!(answers, vec![Appended::At(head + 1), Appended::Conflict, Appended::At(head + 3), Appended::Conflict]);
    let stored: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT aggregate_id, sequence, position FROM events WHERE position > $1 ORDER BY position")
            .bind(head)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, vec![("fresh".into(), 1, head + 1), ("pair".into(), 1, head + 2), ("pair".into(), 2, head + 3)]);
    let new_head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head").fetch_one(&app.pool).await.unwrap();
    assert_eq!(new_head, head + 3, "the head covers exactly what was written, without gaps");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM events_unsequenced").fetch_one(&app.pool).await.unwrap();
    assert_eq!(queued, 0, "numbered events are not queued for the sequencer");

    // Claims of usage keys (a usage batch's): a command claiming a key another one in the same
    // call claimed first, or a key that is a fact's own stream, is refused alone, with nothing of
    // it written; its neighbours are written.
    let claiming = |id: &str, keys: &[&str]| NewEvent { claims: keys.iter().map(|k| (*k).to_owned()).collect(), ..probe(id, 1) };
    let fact_on_its_own = |id: &str| {
        NewEvent {
        aggregate_type: "Usage",
        payload: serde_json::value::to_raw_value(&json!({"type": "UsageRecorded", "tenant_id": uuid::Uuid::nil(), "metric": "api_calls",
            "kind": "counter", "quantity": 0, "idempotency_key": id, "occurred_at": "2031-01-01T00:00:00Z", "recorded_at": "2031-01-01T00:00:00Z"}))
        .unwrap(),
        ..probe(id, 1)
    }
    };
    let single = fact_on_its_own("t:alone");
    assert!(matches!(appender.append(vec![single]).await.unwrap(), Appended::At(_)));
    let head = new_head + 1;
    let answers = appender
        .append_many(vec![
            vec![claiming("batch-1", &["t:a", "t:b"])],
            vec![claiming("batch-2", &["t:c", "t:b"])],
            vec![probe("plain", 1)],
            vec![claiming("batch-3", &["t:alone"])],
            vec![claiming("batch-4", &["t:d"])],
        ])
        .await
        .unwrap();
    let refused = |answer: &Appended| matches!(answer, Appended::Refused { state, detail: Some(detail), .. } if state == "SL409" && detail.contains("USAGE_KEY_RECORDED"));
    assert_eq!(answers[0], Appended::At(head + 1));
    assert!(refused(&answers[1]), "{:?}", answers[1]);
    assert_eq!(answers[2], Appended::At(head + 2));
    assert!(refused(&answers[3]), "{:?}", answers[3]);
    assert_eq!(answers[4], Appended::At(head + 3));
    let claimed: Vec<String> = sqlx::query_scalar("SELECT id FROM usage_keys ORDER BY id").fetch_all(&app.pool).await.unwrap();
    assert_eq!(claimed, ["t:a", "t:b", "t:d"]);
    let written: Vec<String> = sqlx::query_scalar("SELECT aggregate_id FROM events WHERE position > $1 ORDER BY position")
        .bind(head)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(written, ["batch-1", "plain", "batch-4"]);
    // And a fact on its own whose key a batch claimed is refused the same way.
    assert!(refused(&appender.append(vec![fact_on_its_own("t:a")]).await.unwrap()));

    // Guards (a booking decided on a kept context): a command stating a stamp that has moved
    // on is refused alone, with nothing of it written; one stating the current stamp, or none,
    // is written beside it.
    let (moved, still) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    sqlx::query("INSERT INTO booking_context_stamps (tenant_id, version, position) VALUES ($1, 3, 0), ($2, 7, 0)")
        .bind(moved)
        .bind(still)
        .execute(&app.pool)
        .await
        .unwrap();
    let guarded = |id: &str, tenant: uuid::Uuid, version: i64| NewEvent { guard: Some((tenant, version)), ..probe(id, 1) };
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head").fetch_one(&app.pool).await.unwrap();
    let answers = appender
        .append_many(vec![
            vec![guarded("stale", moved, 2)],
            vec![guarded("current", still, 7)],
            vec![probe("unguarded", 1)],
            vec![guarded("never-stamped", uuid::Uuid::now_v7(), 0)],
            vec![guarded("stale-too", still, 6)],
        ])
        .await
        .unwrap();
    let changed = |answer: &Appended| matches!(answer, Appended::Refused { state, detail: Some(detail), .. } if state == "SL409" && detail.contains("BOOKING_CONTEXT_CHANGED"));
    assert!(changed(&answers[0]), "{:?}", answers[0]);
    assert_eq!(answers[1..4], [Appended::At(head + 1), Appended::At(head + 2), Appended::At(head + 3)]);
    assert!(changed(&answers[4]), "{:?}", answers[4]);
    let written: Vec<String> = sqlx::query_scalar("SELECT aggregate_id FROM events WHERE position > $1 ORDER BY position")
        .bind(head)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(written, ["current", "unguarded", "never-stamped"]);

    // Through the API: concurrent bookings of one slot and of free slots, and concurrent
    // retries of one usage key beside new keys, share appends; each gets its own answer.
    let tenant = app.create_tenant_on("coalesce", "business").await;
    let contested = app.create_resource(&tenant.key, "room", 1).await;
    let mut rooms = Vec::new();
    for _ in 0..4 {
        rooms.push(app.create_resource(&tenant.key, "room", 1).await);
    }
    let before = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap().text().await.unwrap();
    let bookings = (0..40).map(|i| {
        let (room, day) = if i % 2 == 0 { (contested.clone(), 1) } else { (rooms[i % 4].clone(), 2 + i / 2) };
        let app = &app;
        let key = tenant.key.clone();
        async move { app.book(&key, &room, &format!("2031-03-{day:02}T09:00:00Z"), &format!("2031-03-{day:02}T10:00:00Z"), 1).await }
    });
    let usage = (0..40).map(|i| {
        let key = if i % 2 == 0 { "same".to_owned() } else { format!("own-{i}") };
        let app = &app;
        let token = tenant.key.clone();
        async move { app.post("/v1/usage", &token, json!({"metric": "api_calls", "quantity": 1, "idempotency_key": key})).await }
    });
    let (bookings, usage) = futures::join!(join_all(bookings), join_all(usage));
    let contested_wins = bookings.iter().step_by(2).filter(|r| r.status == 201).count();
    assert_eq!(contested_wins, 1, "one booking of the contested slot");
    for reply in bookings.iter().step_by(2).filter(|r| r.status != 201) {
        reply.expect_error(409, "BOOKING_OVERLAP");
    }
    for reply in bookings.iter().skip(1).step_by(2) {
        reply.expect(201);
    }
    let duplicates = usage.iter().filter(|r| r.expect(202)["duplicate"] == true).count();
    assert_eq!(duplicates, 19, "one of the 20 retries of one key records it");
    let used = app.get("/v1/quota/api_calls", &tenant.key).await.expect(200)["used"].clone();
    assert_eq!(used, 21);
    let confirmed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Booking' AND event_type = 'BookingConfirmed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(confirmed, 21);
    // Appends were shared: some flush wrote more than one command.
    let after = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap().text().await.unwrap();
    let metric = |text: &str, name: &str| -> f64 {
        text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok()).sum()
    };
    let commands = metric(&after, "saas_ledger_append_flush_commands_sum") - metric(&before, "saas_ledger_append_flush_commands_sum");
    let flushes = metric(&after, "saas_ledger_append_flush_commands_count") - metric(&before, "saas_ledger_append_flush_commands_count");
    assert!(flushes > 0.0 && commands > flushes, "{commands} commands in {flushes} flushes");
}

/// The stream ids (`<tenant>:<key>`) of every usage fact in the log: on its own, or in a batch.
async fn logged_facts(pool: &sqlx::PgPool, prefix: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE aggregate_type = 'Usage'
         UNION ALL
         SELECT $1 || (f ->> 'idempotency_key') FROM events, jsonb_array_elements(payload -> 'facts') AS f WHERE aggregate_type = 'UsageBatch'",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_mid_flood_loses_no_acknowledged_fact_and_counts_none_twice() {
    let db_name = format!("sl_test_{}", uuid::Uuid::new_v4().simple());
    let database_url = format!("{}/{db_name}", e2e::server_url());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let server = crate::instances::start(&database_url, &client).await;
    let url = server.url.clone();
    // A plan whose rate limit stays out of the flood's way.
    let plan = json!({"code": "flood", "name": "Flood", "monthly_price": "1.00", "limits": {}, "features": [], "rate_limit_per_minute": 1_000_000});
    let reply = client.post(format!("{url}/v1/plans")).bearer_auth(ADMIN_TOKEN).json(&plan).send().await.unwrap();
    assert_eq!(reply.status(), 201);
    let mut body = e2e::TestApp::tenant_body("killed-mid-flood");
    body["plan"] = json!("flood");
    let tenant: Value =
        client.post(format!("{url}/v1/tenants")).bearer_auth(ADMIN_TOKEN).json(&body).send().await.unwrap().json().await.unwrap();
    let key = tenant["api_key"].as_str().unwrap().to_owned();

    // 16 clients record usage as fast as they can; the server is killed (SIGKILL) mid-way.
    let flood = |client_id: usize, url: String, key: String, client: reqwest::Client| async move {
        let (mut sent, mut acknowledged) = (Vec::new(), Vec::new());
        for n in 0.. {
            let idempotency_key = format!("f-{client_id}-{n}");
            sent.push(idempotency_key.clone());
            let reply = client
                .post(format!("{url}/v1/usage"))
                .bearer_auth(&key)
                .json(&json!({"metric": "api_calls", "quantity": 1, "idempotency_key": idempotency_key}))
                .send()
                .await;
            match reply {
                Ok(r) if r.status() == 202 => acknowledged.push(idempotency_key),
                Ok(r) => panic!("unexpected answer {}", r.status()),
                Err(_) => break,
            }
        }
        (sent, acknowledged)
    };
    // Four more send batches of 20 facts (one event each), so that the kill may land mid-batch too.
    let batches = |client_id: usize, url: String, key: String, client: reqwest::Client| async move {
        let (mut sent, mut acknowledged) = (Vec::new(), Vec::new());
        for n in 0.. {
            let keys: Vec<String> = (0..20).map(|i| format!("b-{client_id}-{n}-{i}")).collect();
            sent.push(keys.clone());
            let records: Vec<Value> = keys.iter().map(|k| json!({"metric": "api_calls", "quantity": 1, "idempotency_key": k})).collect();
            let reply = client.post(format!("{url}/v1/usage/batch")).bearer_auth(&key).json(&json!({ "records": records })).send().await;
            match reply {
                Ok(r) if r.status() == 202 => acknowledged.extend(keys),
                Ok(r) => panic!("unexpected answer {}", r.status()),
                Err(_) => break,
            }
        }
        (sent, acknowledged)
    };
    let clients: Vec<_> = (0..16).map(|c| tokio::spawn(flood(c, url.clone(), key.clone(), client.clone()))).collect();
    let batch_clients: Vec<_> = (0..4).map(|c| tokio::spawn(batches(c, url.clone(), key.clone(), client.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (mut sent, mut acknowledged) = (BTreeSet::new(), BTreeSet::new());
    for c in clients {
        let (s, a) = c.await.unwrap();
        sent.extend(s);
        acknowledged.extend(a);
    }
    let mut sent_batches = Vec::new();
    for c in batch_clients {
        let (s, a) = c.await.unwrap();
        sent.extend(s.iter().flatten().cloned());
        sent_batches.extend(s);
        acknowledged.extend(a);
    }
    assert!(acknowledged.len() > 50, "the flood ran before the kill ({} acknowledged)", acknowledged.len());
    assert!(acknowledged.iter().any(|k| k.starts_with("b-")), "batches were acknowledged before the kill");
    drop(server);

    // Every acknowledged fact is in the log, exactly once: on its own or in a batch's event.
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&database_url).await.unwrap();
    let prefix = format!("{}:", tenant["id"].as_str().unwrap());
    let stored: Vec<String> = logged_facts(&pool, &prefix).await;
    let stored: BTreeSet<String> = stored.iter().map(|id| id.strip_prefix(&prefix).unwrap().to_owned()).collect();
    assert!(acknowledged.is_subset(&stored), "an acknowledged fact was lost");
    assert!(stored.is_subset(&sent));

    // A restarted server; the clients retry everything they sent (facts on their own, then the
    // batches): what was stored is a duplicate, the rest is recorded now; the quota counts each
    // fact once.
    let server = crate::instances::start(&database_url, &client).await;
    let retries = sent.iter().filter(|k| !k.starts_with("b-")).map(|k| {
        let (client, url, key) = (client.clone(), server.url.clone(), key.clone());
        async move {
            let reply = client
                .post(format!("{url}/v1/usage"))
                .bearer_auth(&key)
                .json(&json!({"metric": "api_calls", "quantity": 1, "idempotency_key": k}))
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 202);
            (k.clone(), reply.json::<Value>().await.unwrap()["duplicate"] == true)
        }
    });
    for (k, duplicate) in join_all(retries).await {
        assert_eq!(duplicate, stored.contains(&k), "{k}: a duplicate exactly when it was stored before");
    }
    // The batches are retried as the batches they were.
    for keys in &sent_batches {
        let records: Vec<Value> = keys.iter().map(|k| json!({"metric": "api_calls", "quantity": 1, "idempotency_key": k})).collect();
        let reply = client
            .post(format!("{}/v1/usage/batch", server.url))
            .bearer_auth(&key)
            .json(&json!({ "records": records }))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 202);
        let answer: Value = reply.json().await.unwrap();
        for (k, result) in keys.iter().zip(answer["results"].as_array().unwrap()) {
            assert_eq!(result["duplicate"] == true, stored.contains(k), "{k}: a duplicate exactly when it was stored before");
        }
    }
    let quota: Value =
        client.get(format!("{}/v1/quota/api_calls", server.url)).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert_eq!(quota["used"], sent.len(), "every fact counted once");
    assert_eq!(logged_facts(&pool, &prefix).await.len(), sent.len());
    drop(server);
    pool.close().await;
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&format!("{}/postgres", e2e::server_url())).await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).execute(&admin).await;
}
