//! What a newcomer meets first (issue 17): a root that points to the docs, public plans for
//! pricing pages, and errors that say what was expected.

use e2e::spawn_app;
use reqwest::Method;

#[tokio::test]
async fn the_root_points_to_the_docs_and_plans_need_no_token() {
    let app = spawn_app().await;
    let root = app.send(app.request(Method::GET, "/", None)).await.expect(200).clone();
    assert_eq!((root["docs"].as_str(), root["openapi"].as_str()), (Some("/docs"), Some("/openapi.json")), "{root}");
    let docs = app.request(Method::GET, root["docs"].as_str().unwrap(), None).send().await.unwrap();
    assert_eq!(docs.status(), 200);

    let plans = app.send(app.request(Method::GET, "/v1/plans", None)).await.expect(200).clone();
    let codes: Vec<&str> = plans.as_array().unwrap().iter().filter_map(|p| p["code"].as_str()).collect();
    assert!(codes.contains(&"starter"), "{codes:?}");
    // Publishing one still takes the admin.
    app.send(app.request(Method::POST, "/v1/plans", None)).await.expect_error(401, "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_date_in_the_wrong_format_is_answered_with_the_format_and_an_example() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("dates-clinic").await;
    let room = app.create_resource(&tenant.key, "room", 3).await;
    let reply = app.book(&tenant.key, &room, "2027-01-05 10:00", "2027-01-05T11:00:00Z", 1).await;
    reply.expect_error(400, "VALIDATION_FAILED");
    let body = reply.body.clone();
    assert_eq!(body["error"]["details"]["field"], "starts_at", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("RFC 3339") && message.contains("2027-01-05T10:00:00Z"), "{message}");

    // The same in a query string, named once.
    let reply = app.get("/v1/usage?from=2027-01-05", &tenant.key).await;
    reply.expect_error(400, "VALIDATION_FAILED");
    let body = reply.body.clone();
    assert_eq!(body["error"]["details"]["field"], "from", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("RFC 3339"), "{body}");
    let reply = app.get("/v1/audit?tenant_id=x", &tenant.key).await;
    reply.expect_error(400, "VALIDATION_FAILED");
    let body = reply.body.clone();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("tenant_id: unknown field") && !message.contains("tenant_id: tenant_id"), "{message}");
}

#[tokio::test]
async fn every_metric_is_on_metrics_from_the_start_with_its_help() {
    let app = spawn_app().await;
    let text = app.request(Method::GET, "/metrics", None).send().await.unwrap().text().await.unwrap();
    for help in [
        "# HELP saas_ledger_rate_limited_total ",
        "# HELP saas_ledger_commands_total ",
        "# HELP saas_ledger_events_appended_total ",
        "# HELP saas_ledger_append_flush_seconds ",
        "# HELP saas_ledger_projection_batch_seconds ",
        "# HELP saas_ledger_audit_chained_ahead_events_total ",
        "# HELP process_resident_memory_bytes ",
        "# HELP process_cpu_seconds_total ",
    ] {
        assert!(text.contains(help), "no `{help}` in\n{text}");
    }
    // Counters are there before their first increment (the recorder is shared by the tests of
    // this process, so the value may not be zero here; a fresh server shows 0).
    assert!(text.lines().any(|l| l.starts_with("saas_ledger_rate_limited_total ")), "{text}");
    assert!(text.contains(r#"saas_ledger_commands_total{aggregate="Booking",outcome="conflict"}"#), "{text}");
    assert!(text.contains(r#"saas_ledger_projection_batch_seconds_count{projection="audit"}"#), "{text}");
    // The process's own metrics, read at the scrape.
    let resident: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("process_resident_memory_bytes");
    assert!(resident > 1_000_000.0, "{resident}");
}

/// A wrong port fails at once with its cause, not after a pool's 10 s wait as "pool timed out".
#[tokio::test]
async fn a_wrong_database_address_fails_fast_with_its_cause() {
    let started = std::time::Instant::now();
    let error = commands::db::connect("postgres://postgres@127.0.0.1:1/nowhere", 1).await.unwrap_err().to_string();
    assert!(started.elapsed() < std::time::Duration::from_secs(6), "took {:?}", started.elapsed());
    assert!(error.to_lowercase().contains("refused"), "{error}");
}

/// Without `SAAS_LEDGER_ADMIN_TOKEN`, the first start generates the admin token and stores its
/// hash: restarts and other instances honour it, and a rotation ends it on every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_admin_token_survives_restarts_and_a_rotation_ends_it_everywhere() {
    use std::time::Duration;
    let app = spawn_app().await;
    let url = format!("{}/{}", e2e::server_url(), app.db_name);
    let start = |url: String| async move {
        let mut config = api::Config::for_database(&url);
        config.admin_token = None;
        config.auth_cache = Duration::from_millis(100);
        config.db_max_connections = 4;
        let application = api::Application::build(config).await.expect("an instance starts");
        let generated = application.generated_admin_token().map(str::to_owned);
        let address = format!("http://{}", application.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(application.run_until(async move {
            let _ = stopped.await;
        }));
        (address, generated, stop, task)
    };
    let client = reqwest::Client::new();
    let status = |base: String, token: String| {
        let client = client.clone();
        async move { client.get(format!("{base}/v1/tenants")).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };

    let (first, generated, stop, task) = start(url.clone()).await;
    let token = generated.expect("the first start generates the token");
    assert!(token.starts_with("sla_") && token.len() == 68, "{token}");
    assert_eq!(status(first.clone(), token.clone()).await, 200);
    // Restarted: nothing new is generated, the same token works.
    let _ = stop.send(());
    let _ = task.await;
    let (second, again, _stop_second, _second_task) = start(url.clone()).await;
    assert_eq!(again, None);
    assert_eq!(status(second.clone(), token.clone()).await, 200);
    let (third, _, _stop_third, _third_task) = start(url.clone()).await;
    assert_eq!(status(third.clone(), token.clone()).await, 200);

    // Rotated (what `saas-ledger admin-token rotate` runs): the old token ends on both instances.
    let rotated = api::admin_token::rotate(&app.pool).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    for base in [&second, &third] {
        assert_eq!(status(base.clone(), token.clone()).await, 401, "the old token still works on {base}");
        assert_eq!(status(base.clone(), rotated.clone()).await, 200);
    }
    // A configured token (SAAS_LEDGER_ADMIN_TOKEN) is not the stored one's business.
    assert_eq!(status(app.address.clone(), e2e::ADMIN_TOKEN.to_owned()).await, 200);
}

/// Every instant the server makes has one precision, the microsecond, whether an answer reads
/// it from an aggregate's state (the subscription) or from a read model (invoices), and the
/// test clock keeps to it when moved to an instant with nanoseconds.
#[tokio::test]
async fn instants_are_answered_to_the_microsecond_everywhere() {
    let app = e2e::spawn_app_with(|c| c.test_clock = true).await;
    let tenant = app.create_tenant_on("precise-clinic", "starter").await;
    let moved = app.put("/v1/admin/clock", e2e::ADMIN_TOKEN, serde_json::json!({"now": "2031-05-06T07:08:09.123456789Z"})).await;
    assert_eq!(moved.expect(200)["now"], "2031-05-06T07:08:09.123456Z");
    let answers = [app.get("/v1/subscription", &tenant.key).await, app.get("/v1/invoices", &tenant.key).await];
    let mut instants = Vec::new();
    fn collect(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.contains('T') => out.push(s.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            serde_json::Value::Object(fields) => fields.values().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    for answer in &answers {
        collect(answer.expect(200), &mut instants);
    }
    assert!(instants.len() >= 6, "the subscription and the invoice carry instants: {instants:?}");
    for at in &instants {
        let fraction = at.split('.').nth(1).map_or(0, |f| f.trim_end_matches('Z').len());
        assert!(fraction <= 6, "{at} has more than microseconds");
    }
}

/// The README's tour, run as written: its shell blocks are this test's input (so they cannot
/// drift from what the server does), run one command at a time with `bash` and `curl` against a
/// server with the test clock, the admin token for `<admin token>` and the sign-up's key for
/// `slk_...`. Each answer the README announces with a status (`… and 201`) must come with
/// that status, and the clock step must renew the subscription on whatever date it runs.
#[tokio::test]
async fn the_readme_tour_runs_as_written() {
    let app = e2e::spawn_app_with(|c| c.test_clock = true).await;
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let tour = readme.split("## A five-minute tour").nth(1).expect("the README has its tour").split("\n## ").next().unwrap();
    // The commands (continuation lines joined) and what the README says each answers.
    let mut steps: Vec<(String, Option<String>)> = Vec::new();
    for block in tour.split("```sh\n").skip(1).map(|b| b.split("```").next().unwrap()) {
        let mut command = String::new();
        for line in block.lines() {
            if let Some(expected) = line.trim_start().strip_prefix("# →") {
                if let Some(last) = steps.last_mut() {
                    last.1.get_or_insert_with(String::new).push_str(expected);
                }
                continue;
            }
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            command.push_str(line.trim_end_matches('\\'));
            command.push(' ');
            if !line.ends_with('\\') {
                steps.push((std::mem::take(&mut command), None));
            }
        }
    }
    assert!(steps.len() >= 7, "the tour has its commands: {steps:?}");
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut key_from: Option<String> = None;
    let mut outputs = Vec::new();
    for (command, expected) in &steps {
        let command = command.replace("localhost:8080", &host);
        if command.starts_with("export T=") {
            env.push(("T".to_owned(), e2e::ADMIN_TOKEN.to_owned()));
            continue;
        }
        if command.starts_with("export K=") {
            let signed_up = key_from.clone().expect("the sign-up answered before the key is used");
            let body: serde_json::Value = serde_json::from_str(signed_up.lines().next().unwrap()).unwrap();
            env.push(("K".to_owned(), body["api_key"].as_str().unwrap().to_owned()));
            continue;
        }
        let script = format!(
            "set -euo pipefail\n{}\n{command}",
            env.iter().map(|(k, v)| format!("export {k}='{v}'")).collect::<Vec<_>>().join("\n")
        );
        let output = bash(script.clone()).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{command}\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        if let Some(status) = expected.as_deref().and_then(|e| e.trim().rsplit_once(" and ")).map(|(_, s)| s.trim()) {
            assert_eq!(stdout.trim_end().lines().last(), Some(status), "{command}\n{stdout}");
        }
        if command.contains("/v1/tenants") {
            key_from = Some(stdout.clone());
        }
        if command.starts_with("END=") {
            // An assignment: keep it for the commands after it.
            let value = bash(format!("{script}\necho \"$END\"")).await;
            env.push(("END".to_owned(), String::from_utf8_lossy(&value.stdout).trim().to_owned()));
        }
        outputs.push((command, stdout));
    }
    let moved = outputs.iter().find(|(c, _)| c.contains("/v1/admin/clock")).expect("the tour moves the clock");
    let answer: serde_json::Value = serde_json::from_str(moved.1.trim()).unwrap();
    assert_eq!(answer["billing"]["invoices_issued"], 1, "the renewal's invoice, on any date: {answer}");
    let quota = outputs.iter().find(|(c, _)| c.contains("/v1/quota/api_calls")).expect("the tour reads a quota");
    assert!(quota.1.contains("\"used\":1200"), "{}", quota.1);
}

/// Runs `script` with bash, off the test's runtime (the server under test runs on it).
async fn bash(script: String) -> std::process::Output {
    tokio::task::spawn_blocking(move || std::process::Command::new("bash").arg("-c").arg(script).output().expect("bash runs"))
        .await
        .expect("the shell returns")
}

/// `saas-ledger demo` (issue 35): a year of history through the real routes, on a test clock
/// started a year ago, that the analytics show month by month; one seed makes one history; a
/// database with tenants is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_fills_a_year_the_same_way_for_one_seed_and_refuses_a_used_database() {
    // A receiver for the demo's webhook endpoints: counts what it is sent.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let counter = received.clone();
    let router = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(axum::http::StatusCode::NO_CONTENT)
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });

    let start = chrono::Utc::now() - chrono::Duration::days(365);
    let allow = receiver.to_string();
    let config = move |c: &mut api::Config| {
        c.test_clock = true;
        c.test_clock_start = Some(start);
        c.billing_interval = std::time::Duration::from_secs(24 * 3600);
        c.webhook_allow_hosts = projections::webhooks::AllowList::parse(&allow);
    };
    let options = api::demo::DemoOptions { seed: 11, tenants: 12, webhook_url: Some(format!("http://{receiver}/hooks")) };
    let app = e2e::spawn_app_with(config.clone()).await;
    let report = api::demo::run(&app.state, options.clone()).await.expect("the demo runs");
    assert_eq!(report.tenants, 12, "{report:?}");
    assert_eq!(report.webhook_endpoints, 1 + 2, "the platform's and every tenth tenant's: {report:?}");
    let endpoints = app.get("/v1/webhook-endpoints", e2e::ADMIN_TOKEN).await;
    assert_eq!(endpoints.expect(200)["data"].as_array().map(Vec::len), Some(1), "the platform's own: {}", endpoints.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while received.load(std::sync::atomic::Ordering::SeqCst) < 20 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(received.load(std::sync::atomic::Ordering::SeqCst) >= 20, "the endpoints are delivered to");
    assert!(report.invoices_issued >= 40 && report.invoices_paid >= 40 && report.usage_facts >= 100, "{report:?}");
    assert!(report.credit_notes >= 1 && report.bookings >= 1, "credit notes and bookings too: {report:?}");
    let revenue = app.get("/v1/admin/analytics/revenue", e2e::ADMIN_TOKEN).await;
    let paying_months =
        revenue.expect(200).as_array().unwrap().iter().filter(|m| m["mrr"].as_str().is_some_and(|mrr| mrr != "0.00")).count();
    assert!(paying_months >= 11, "a year of revenue to chart: {}", revenue.body);
    let again = api::demo::run(&app.state, options.clone()).await.expect_err("a database with tenants is refused");
    assert_eq!(again.status, 409);

    let twin = e2e::spawn_app_with(config).await;
    assert_eq!(api::demo::run(&twin.state, options).await.unwrap(), report, "the same seed, the same history");
    let codes = |app: &e2e::TestApp| {
        let app_address = app.address.clone();
        async move {
            let client = reqwest::Client::new();
            let page: serde_json::Value = client
                .get(format!("{app_address}/v1/tenants?limit=100"))
                .bearer_auth(e2e::ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let mut codes: Vec<String> = page["data"].as_array().unwrap().iter().map(|t| t["code"].as_str().unwrap().to_owned()).collect();
            codes.sort();
            codes
        }
    };
    assert_eq!(codes(&app).await, codes(&twin).await);
}
