//! The event relay to NATS JetStream (127.0.0.1:4222): every event once, in order, across a
//! crash at the worst moment and a kill at a random one.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use e2e::spawn_app;
use futures::StreamExt;
use projections::relay::{Relay, RelayConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NATS_URL: &str = "nats://127.0.0.1:4222";

/// Fails the test with what is missing, not with an `unwrap` deep inside, when NATS is not
/// running.
async fn require_nats() {
    let connected = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(NATS_URL)).await;
    if !matches!(connected, Ok(Ok(_))) {
        panic!(
            "the relay tests need NATS with JetStream at {NATS_URL}: install it (Debian: `apt install nats-server`) \
             and start it with `nats-server -js` (.ci/run does both when it can)"
        );
    }
}

async fn head(app: &e2e::TestApp) -> i64 {
    app.state.projections().drain_and_head().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_way_publishes_every_event_exactly_once_in_order() {
    require_nats().await;
    let app = spawn_app().await;
    let tenant = app.create_tenant_on("relay-clinic", "enterprise").await;
    for batch in 0..8 {
        app.seed_usage(&tenant.id.to_string(), &format!("r-{batch}-"), 1000).await;
        let records: Vec<_> =
            (0..10).map(|i| json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("rb-{batch}-{i}")})).collect();
        app.post("/v1/usage/batch", &tenant.key, json!({ "records": records })).await.expect(202);
    }
    let total = head(&app).await;
    assert!(total > 8000, "{total}");

    // A stream of its own for this test.
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let config = RelayConfig {
        stream: format!("SL_TEST_{suffix}"),
        subject_prefix: format!("sl-test-{suffix}"),
        batch: 250,
        ..RelayConfig::new(NATS_URL)
    };

    // 1. It crashes after publishing 1,100 events: 1,000 are checkpointed, 100 are published but
    //    not yet checkpointed (the worst moment).
    let crashing = Relay::new(app.pool.clone(), RelayConfig { crash_after: Some(1100), ..config.clone() });
    let stop = CancellationToken::new();
    let error = crashing.follow(&stop).await.unwrap_err();
    assert!(error.to_string().contains("crashed on purpose"), "{error}");
    assert_eq!(crashing.checkpoint().await.unwrap(), 1000);

    // 2. Restarted, it is killed at a random moment (the task is aborted mid-flight).
    let relay = Relay::new(app.pool.clone(), config.clone());
    let task = tokio::spawn(relay.clone().run(CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(50 + rand::random::<u64>() % 200)).await;
    task.abort();
    let _ = task.await;
    let killed_at = relay.checkpoint().await.unwrap();
    assert!(killed_at < total, "the relay finished before it could be killed ({killed_at} of {total})");

    // More events arrive while no relay runs.
    app.post("/v1/usage", &tenant.key, json!({"metric": "sms", "quantity": 1, "idempotency_key": "late"})).await.expect(202);
    let total = head(&app).await;

    // 3. Restarted for good, it catches up.
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.clone().run(shutdown.clone()));
    for _ in 0..600 {
        if relay.checkpoint().await.unwrap() == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(relay.checkpoint().await.unwrap(), total);
    shutdown.cancel();
    task.await.unwrap();

    // A consumer reads every position exactly once, in order, with the subject naming tenant,
    // aggregate type and event type.
    let js = jetstream::new(async_nats::connect(NATS_URL).await.unwrap());
    let stream = js.get_stream(&config.stream).await.unwrap();
    let consumer = stream.create_consumer(consumer::pull::OrderedConfig::default()).await.unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut positions = Vec::new();
    while positions.len() < total as usize {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next()).await.expect("a message").unwrap().unwrap();
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let position = event["position"].as_i64().unwrap();
        let tenant_token = event["tenant_id"].as_str().unwrap_or("platform");
        assert_eq!(
            message.subject.as_str(),
            format!(
                "{}.{tenant_token}.{}.{}",
                config.subject_prefix,
                event["aggregate_type"].as_str().unwrap(),
                event["event_type"].as_str().unwrap()
            )
        );
        assert_eq!(message.headers.as_ref().unwrap().get(async_nats::header::NATS_MESSAGE_ID).unwrap().as_str(), position.to_string());
        positions.push(position);
    }
    assert_eq!(positions, (1..=total).collect::<Vec<_>>(), "every event once, in order");
    // And nothing more: the stream holds exactly the log.
    let info = js.get_stream(&config.stream).await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.state.messages, total as u64);
    js.delete_stream(&config.stream).await.unwrap();
}

#[tokio::test]
async fn a_server_configured_with_nats_relays_its_log() {
    require_nats().await;
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let config =
        RelayConfig { stream: format!("SL_SRV_{suffix}"), subject_prefix: format!("sl-srv-{suffix}"), ..RelayConfig::new(NATS_URL) };
    let relayed = config.clone();
    let app = e2e::spawn_app_with(move |c| c.relay = Some(relayed)).await;
    let tenant = app.create_tenant("relayed-clinic").await;
    let total = head(&app).await;
    let js = jetstream::new(async_nats::connect(NATS_URL).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stream = loop {
        if let Ok(mut stream) = js.get_stream(&config.stream).await {
            if stream.info().await.unwrap().state.messages == total as u64 {
                break stream;
            }
        }
        assert!(std::time::Instant::now() < deadline, "the server did not relay its {total} events");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let consumer = stream.create_consumer(consumer::pull::OrderedConfig::default()).await.unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut subjects = Vec::new();
    for _ in 0..total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next()).await.unwrap().unwrap().unwrap();
        subjects.push(message.subject.to_string());
    }
    assert!(subjects.contains(&format!("{}.{}.Tenant.TenantCreated", config.subject_prefix, tenant.id)), "{subjects:?}");
    assert!(subjects.iter().any(|s| s.starts_with(&format!("{}.platform.Plan.", config.subject_prefix))), "{subjects:?}");
    js.delete_stream(&config.stream).await.unwrap();
}
