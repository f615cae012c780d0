//! The OpenAPI document and the docs page: complete, generated, and served offline.

use std::collections::BTreeSet;

use e2e::{spawn_app, ADMIN_TOKEN};
use reqwest::Method;

/// Every `(METHOD, path)` the server routes, read from the routers' source: each
/// `.route("<path>", get(..).post(..))` call in `api/src` (the routes' modules, the app's
/// middleware and the OpenAPI module).
fn routed() -> BTreeSet<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src");
    let mut files = vec![root.join("app/middleware.rs"), root.join("openapi.rs")];
    let mut dirs = vec![root.join("routes")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let mut routes = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".route(\"") {
            rest = &rest[at + 8..];
            let path_end = rest.find('"').unwrap();
            let path = &rest[..path_end];
            // The route call's argument list, up to its closing parenthesis.
            let mut depth = 1;
            let mut end = 0;
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let call = &rest[path_end..end];
            for method in ["get", "post", "put", "delete", "patch"] {
                let needle = format!("{method}(");
                if call
                    .match_indices(&needle)
                    .any(|(i, _)| i == 0 || !call.as_bytes()[i - 1].is_ascii_alphanumeric() && call.as_bytes()[i - 1] != b'_')
                {
                    routes.insert((method.to_uppercase(), path.to_owned()));
                }
            }
        }
    }
    routes
}

#[tokio::test]
async fn the_spec_lists_exactly_the_routed_operations_and_every_one_answers() {
    let app = spawn_app().await;
    let spec = app.request(Method::GET, "/openapi.json", None).send().await.unwrap();
    assert_eq!(spec.status(), 200);
    let spec: serde_json::Value = spec.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            // Every operation documents its success and its errors in the contract's shape.
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path} has no success response");
            // Public: the payment webhook (signed instead), the plan list (pricing pages) and the
            // metric catalog (what the plans' charges name).
            let public = path == "/v1/webhooks/payments"
                || (path == "/v1/plans" && method == "get")
                || (path.starts_with("/v1/metrics") && method == "get");
            if path.starts_with("/v1/") && !public {
                assert!(responses.contains_key("401"), "{method} {path} does not document 401");
                assert_eq!(responses["401"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody");
            }
            if method == "post" && path.starts_with("/v1/") && path != "/v1/webhooks/payments" {
                let params = op["parameters"].as_array().unwrap();
                assert!(params.iter().any(|p| p["name"] == "Idempotency-Key"), "{method} {path} does not document Idempotency-Key");
            }
        }
    }
    // Operation ids are unique (OpenAPI requires it; generated clients name functions after them).
    let mut ids = BTreeSet::new();
    for item in spec["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().expect("every operation has an id");
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        }
    }
    let routed = routed();
    assert!(routed.len() >= 50, "the source scan found only {} routes", routed.len());
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(undocumented.is_empty(), "routed but not in the spec: {undocumented:?}");
    let phantom: Vec<_> = documented.difference(&routed).collect();
    assert!(phantom.is_empty(), "in the spec but not routed: {phantom:?}");

    // Every documented operation is really served: none answers the router's "no such route".
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{name}", "tenants")
            .replace("{metric}", "sms")
            .replace("{aggregate_type}", "Tenant");
        let reply = app.send(app.request(Method::from_bytes(method.as_bytes()).unwrap(), &concrete, None)).await;
        let routerless = reply.status == 404 && reply.body["error"]["message"] == "no such route" || reply.status == 405;
        assert!(!routerless, "{method} {path} is documented but not routed: {} {}", reply.status, reply.body);
        // (The webhook answers 503 by contract when no secret is configured.)
        let expected_503 = path == "/v1/webhooks/payments" && reply.code() == "WEBHOOKS_DISABLED";
        assert!(reply.status.as_u16() < 500 || expected_503, "{method} {path} without a token: {} {}", reply.status, reply.body);
    }
    // Schemas the operations name exist.
    for schema in ["ErrorBody", "CreateTenant", "CreateBooking", "UsageBody", "TenantView", "BookingView"] {
        assert!(spec["components"]["schemas"][schema].is_object(), "no schema {schema}");
    }
}

#[tokio::test]
async fn the_docs_page_is_swagger_ui_served_from_the_binary_without_the_internet() {
    let app = spawn_app().await;
    let response = app.request(Method::GET, "/docs/", None).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    // Self-contained: every script and style is the server's own.
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//", "@import"] {
        assert!(!page.contains(external), "the page loads something from elsewhere: {external}");
    }
    for asset in ["swagger-ui-bundle.js", "swagger-ui.css", "swagger-initializer.js"] {
        let reply = app.request(Method::GET, &format!("/docs/{asset}"), None).send().await.unwrap();
        assert_eq!(reply.status(), 200, "{asset}");
        let text = reply.text().await.unwrap();
        assert!(text.len() > 100, "{asset} is served");
        if asset == "swagger-initializer.js" {
            assert!(text.contains("/openapi.json"), "the page reads the server's own document: {text}");
        }
    }
    // `/docs` itself leads there.
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let bare = client.get(format!("{}/docs", app.address)).send().await.unwrap();
    assert!(bare.status().is_redirection() || bare.status() == 200, "{}", bare.status());
}

/// In a real browser (Debian's `chromium`, headless; `.ci/run` installs it): the page renders
/// every operation of the document, with nothing but this server to load from.
#[tokio::test]
async fn the_docs_page_renders_every_operation_in_a_real_browser() {
    let app = spawn_app().await;
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| std::process::Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("a Chromium to render the docs page (Debian: apt install chromium; .ci/run installs it)");
    let profile = tempdir();
    let (address, dir) = (app.address.clone(), profile.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                // Nothing but this server: any other host fails to resolve.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                &format!("--user-data-dir={}", dir.display()),
                "--virtual-time-budget=15000",
                "--dump-dom",
                &format!("{address}/docs/"),
            ])
            .output()
            .expect("chromium runs")
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(dom.contains("opblock"), "Swagger UI rendered no operation; stderr: {}", String::from_utf8_lossy(&output.stderr));
    let spec: serde_json::Value = app.request(Method::GET, "/openapi.json", None).send().await.unwrap().json().await.unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let shown = format!("data-path=\"{path}\"");
            assert!(dom.contains(&shown), "{method} {path} is not rendered");
        }
    }
    assert!(dom.contains("saas-ledger"), "the document's title is shown");
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sl-chromium-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The document is committed (`api/openapi.json`) so that every change of the API shows up in
/// review; this fails when the served one differs. `UPDATE_OPENAPI=1 cargo test -p e2e --test api
/// openapi` rewrites the file from the server.
#[tokio::test]
async fn the_served_document_is_the_committed_one() {
    let app = spawn_app().await;
    let served: serde_json::Value = app.request(Method::GET, "/openapi.json", None).send().await.unwrap().json().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&served).unwrap() + "\n").unwrap();
        return;
    }
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("api/openapi.json is committed")).unwrap();
    assert!(
        committed == served,
        "the served OpenAPI document differs from api/openapi.json: run `UPDATE_OPENAPI=1 cargo test -p e2e --test api openapi` and commit the file"
    );
}

/// Where `value` breaks `schema`, a schema of the document `spec` (its `$ref`s resolved in it).
fn schema_errors(spec: &serde_json::Value, schema: &serde_json::Value, value: &serde_json::Value) -> Vec<String> {
    let mut root = serde_json::json!({"components": spec["components"].clone()});
    for (key, part) in schema.as_object().expect("a schema object") {
        root[key] = part.clone();
    }
    let validator = jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("not a schema: {e}\n{schema}"));
    validator.iter_errors(value).map(|e| format!("{e} (at {})", e.instance_path())).collect()
}

/// Checks `reply`'s body against the schema the served document gives for `method path` and
/// its status.
fn check_against_spec(spec: &serde_json::Value, method: &str, path: &str, reply: &e2e::Reply) {
    assert!(reply.status.is_success(), "{method} {path} failed: {} {}", reply.status, reply.body);
    let status = reply.status.as_u16().to_string();
    let schema = &spec["paths"][path][method]["responses"][&status]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} documents no JSON body for {status}: {}", reply.body);
    let errors = schema_errors(spec, schema, &reply.body);
    assert!(errors.is_empty(), "{method} {path} {status} answered outside its schema: {errors:#?}\n{}", reply.body);
}

/// Checks that `body`, a request the server accepts, is valid under the document's request
/// schema for `method path` (the schemas say no more than the server checks).
fn check_request(spec: &serde_json::Value, method: &str, path: &str, body: &serde_json::Value) {
    let schema = &spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} documents no request body");
    let errors = schema_errors(spec, schema, body);
    assert!(errors.is_empty(), "{method} {path}: an accepted request is outside its schema: {errors:#?}\n{body}");
}

/// Requests the server accepts are valid under their schemas, and a few it refuses are not.
#[tokio::test]
async fn accepted_requests_are_valid_under_their_schemas_and_refused_ones_are_not() {
    let app = spawn_app().await;
    let spec: serde_json::Value = app.request(Method::GET, "/openapi.json", None).send().await.unwrap().json().await.unwrap();
    let tenant = e2e::TestApp::tenant_body("schema-clinic");
    check_request(&spec, "post", "/v1/tenants", &tenant);
    let created = app.create_tenant_raw(tenant).await;
    let key = created.expect(201)["api_key"].as_str().unwrap().to_owned();
    let resource = serde_json::json!({"name": "  Zürich Ärzte 医院  ", "kind": "event", "capacity": 40});
    check_request(&spec, "post", "/v1/resources", &resource);
    let room = app.post("/v1/resources", &key, resource).await.expect(201)["id"].as_str().unwrap().to_owned();
    let booking = serde_json::json!({"resource_id": room, "starts_at": "2031-02-03T09:00:00Z", "ends_at": "2031-02-03T10:00:00Z", "seats": 2,
        "customer": {"name": "Ada Lovelace", "email": "ada.lovelace+test@example.co.uk"}});
    check_request(&spec, "post", "/v1/bookings", &booking);
    app.post("/v1/bookings", &key, booking).await.expect(201);
    let usage = serde_json::json!({"metric": "storage_bytes", "quantity": 1_000_000_000_000_000_i64, "idempotency_key": "k~!{}[]"});
    check_request(&spec, "post", "/v1/usage", &usage);
    app.post("/v1/usage", &key, usage).await.expect(202);

    let key_body = serde_json::json!({"role": "readonly", "name": "dashboards"});
    check_request(&spec, "post", "/v1/api-keys", &key_body);
    app.post("/v1/api-keys", &key, key_body).await.expect(201);
    let addons = serde_json::json!({"extra_users": 10_000, "extra_storage_gb": 0});
    check_request(&spec, "put", "/v1/subscription/addons", &addons);
    app.put("/v1/subscription/addons", &key, addons).await.expect(200);
    let change = serde_json::json!({"plan": "professional", "billing_period": "yearly"});
    check_request(&spec, "post", "/v1/subscription/change-plan", &change);
    app.post("/v1/subscription/change-plan", &key, change).await.expect(200);

    // Bodies the server refuses, refused by the schemas as well.
    for (path, body) in [
        ("/v1/api-keys", serde_json::json!({"role": "superuser"})),
        ("/v1/members", serde_json::json!({"email": "a@b.example", "role": "boss"})),
        ("/v1/subscription/change-plan", serde_json::json!({"plan": "business", "billing_period": "weekly"})),
        ("/v1/usage", serde_json::json!({"metric": "Api Calls", "quantity": 1, "idempotency_key": "a"})),
        ("/v1/usage", serde_json::json!({"metric": "api_calls", "quantity": -1, "idempotency_key": "a"})),
        ("/v1/usage", serde_json::json!({"metric": "api_calls", "quantity": 1, "idempotency_key": "has space"})),
        ("/v1/resources", serde_json::json!({"name": "   ", "kind": "room", "capacity": 1})),
        ("/v1/resources", serde_json::json!({"name": "Hall", "kind": "stadium", "capacity": 1})),
        ("/v1/resources", serde_json::json!({"name": "Hall", "kind": "room", "capacity": 0})),
    ] {
        let reply = app.post(path, &key, body.clone()).await;
        assert_eq!(reply.status, 400, "{path} {body}: {}", reply.body);
        let caught = std::panic::catch_unwind(|| check_request(&spec, "post", path, &body));
        assert!(caught.is_err(), "the schema of {path} lets through what the server refuses: {body}");
    }
}

/// The typed answers, as a client meets them, hold to their schemas.
#[tokio::test]
async fn answers_hold_to_the_schemas_the_document_gives_them() {
    let app = e2e::spawn_app_with(|c| {
        c.test_clock = true;
        c.webhook_secret = Some(e2e::WEBHOOK_SECRET.to_owned());
    })
    .await;
    let spec: serde_json::Value = app.request(Method::GET, "/openapi.json", None).send().await.unwrap().json().await.unwrap();
    let mut body = e2e::TestApp::tenant_body("typed-clinic");
    body["trial_days"] = serde_json::json!(0);
    let signed_up = app.create_tenant_raw(body).await;
    check_against_spec(&spec, "post", "/v1/tenants", &signed_up);
    let key = signed_up.body["api_key"].as_str().unwrap().to_owned();
    let other = app.create_tenant_on("typed-school", "starter").await;

    let usage = app.post("/v1/usage", &key, serde_json::json!({"metric": "api_calls", "quantity": 3, "idempotency_key": "typed-1"})).await;
    check_against_spec(&spec, "post", "/v1/usage", &usage);
    check_against_spec(&spec, "get", "/v1/quota", &app.get("/v1/quota", &key).await);
    check_against_spec(&spec, "get", "/v1/quota/{metric}", &app.get("/v1/quota/api_calls", &key).await);
    check_against_spec(&spec, "get", "/v1/quota/{metric}", &app.get("/v1/quota/bookings", &key).await);

    let invoices = app.get("/v1/invoices", &key).await;
    check_against_spec(&spec, "get", "/v1/invoices", &invoices);
    let invoice = invoices.body["data"][0]["id"].as_str().expect("the first invoice").to_owned();
    check_against_spec(&spec, "get", "/v1/invoices/{id}", &app.get(&format!("/v1/invoices/{invoice}"), &key).await);
    let paid = app.post(&format!("/v1/invoices/{invoice}/pay"), ADMIN_TOKEN, serde_json::json!({"method": "bank_transfer"})).await;
    check_against_spec(&spec, "post", "/v1/invoices/{id}/pay", &paid);
    let others = app.get("/v1/invoices", &other.key).await.body["data"][0]["id"].as_str().unwrap().to_owned();
    let voided = app.post(&format!("/v1/invoices/{others}/void"), ADMIN_TOKEN, serde_json::json!({})).await;
    check_against_spec(&spec, "post", "/v1/invoices/{id}/void", &voided);

    let created = app.post("/v1/resources", &key, serde_json::json!({"name": "Room 1", "kind": "room", "capacity": 2})).await;
    check_against_spec(&spec, "post", "/v1/resources", &created);
    let room = created.body["id"].as_str().unwrap().to_owned();
    check_against_spec(&spec, "get", "/v1/resources", &app.get("/v1/resources", &key).await);
    check_against_spec(&spec, "get", "/v1/resources/{id}", &app.get(&format!("/v1/resources/{room}"), &key).await);
    let records = serde_json::json!({"records": [
        {"metric": "api_calls", "quantity": 1, "idempotency_key": "typed-b1"},
        {"metric": "api_calls", "quantity": 3, "idempotency_key": "typed-1"},
        {"metric": "nonsense metric", "quantity": 1, "idempotency_key": "typed-b2"},
        {"metric": "api_calls", "quantity": 4, "idempotency_key": "typed-1"}
    ]});
    let batch = app.post("/v1/usage/batch", &key, records).await;
    check_against_spec(&spec, "post", "/v1/usage/batch", &batch);
    assert_eq!((batch.body["accepted"].as_i64(), batch.body["refused"].as_i64()), (Some(2), Some(2)), "{}", batch.body);
    let booking = app.book(&key, &room, "2031-02-03T09:00:00Z", "2031-02-03T10:00:00Z", 1).await;
    check_against_spec(&spec, "post", "/v1/bookings", &booking);

    let endpoint = app
        .post(
            "/v1/webhook-endpoints",
            ADMIN_TOKEN,
            serde_json::json!({"url": "https://93.184.215.14/hooks", "event_types": ["member.removed"]}),
        )
        .await;
    check_against_spec(&spec, "post", "/v1/webhook-endpoints", &endpoint);
    let id = endpoint.body["id"].as_str().unwrap().to_owned();
    check_against_spec(&spec, "get", "/v1/webhook-endpoints", &app.get("/v1/webhook-endpoints", ADMIN_TOKEN).await);
    check_against_spec(&spec, "get", "/v1/webhook-endpoints/{id}", &app.get(&format!("/v1/webhook-endpoints/{id}"), ADMIN_TOKEN).await);
    check_against_spec(
        &spec,
        "get",
        "/v1/webhook-endpoints/{id}/deliveries",
        &app.get(&format!("/v1/webhook-endpoints/{id}/deliveries"), ADMIN_TOKEN).await,
    );
    check_against_spec(
        &spec,
        "delete",
        "/v1/webhook-endpoints/{id}",
        &app.delete(&format!("/v1/webhook-endpoints/{id}"), ADMIN_TOKEN).await,
    );

    // Credit, credit notes and the audit trail.
    let grant = app
        .post(&format!("/v1/tenants/{}/credits", other.id), ADMIN_TOKEN, serde_json::json!({"amount": "12.50", "reason": "goodwill"}))
        .await;
    check_against_spec(&spec, "post", "/v1/tenants/{id}/credits", &grant);
    check_against_spec(&spec, "get", "/v1/credits", &app.get("/v1/credits", &other.key).await);
    let note = app
        .post(&format!("/v1/invoices/{invoice}/credit-notes"), ADMIN_TOKEN, serde_json::json!({"amount": "1.00", "reason": "typo"}))
        .await;
    check_against_spec(&spec, "post", "/v1/invoices/{id}/credit-notes", &note);
    check_against_spec(&spec, "get", "/v1/invoices/{id}", &app.get(&format!("/v1/invoices/{invoice}"), &key).await);
    check_against_spec(&spec, "get", "/v1/audit", &app.get("/v1/audit", &key).await);
    check_against_spec(&spec, "get", "/v1/audit", &app.get("/v1/audit", ADMIN_TOKEN).await);
    check_against_spec(&spec, "get", "/v1/audit/verify", &app.get("/v1/audit/verify", &key).await);

    // A price simulation, running and done, and the list.
    let starter = serde_json::json!({"code": "starter", "name": "Starter", "monthly_price": "39.00", "limits": {"users": 1}, "rate_limit_per_minute": 200});
    let started = app
        .post(
            "/v1/admin/simulations",
            ADMIN_TOKEN,
            serde_json::json!({"from": "2020-01-01T00:00:00Z", "to": "2040-01-01T00:00:00Z", "plans": [starter]}),
        )
        .await;
    check_against_spec(&spec, "post", "/v1/admin/simulations", &started);
    let path = format!("/v1/admin/simulations/{}", started.body["id"].as_str().unwrap());
    let mut simulation = app.get(&path, ADMIN_TOKEN).await;
    for _ in 0..200 {
        if simulation.body["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        simulation = app.get(&path, ADMIN_TOKEN).await;
    }
    assert_eq!(simulation.body["status"], "done", "{}", simulation.body);
    check_against_spec(&spec, "get", "/v1/admin/simulations/{id}", &simulation);
    check_against_spec(&spec, "get", "/v1/admin/simulations", &app.get("/v1/admin/simulations", ADMIN_TOKEN).await);

    // Every aggregate's replayed state (one of the aggregates' own schemas), and the export.
    let tenant_id = signed_up.body["id"].as_str().unwrap().to_owned();
    let subscription_id = signed_up.body["subscription_id"].as_str().unwrap().to_owned();
    let booking_id = booking.body["id"].as_str().unwrap().to_owned();
    for (kind, id) in [
        ("Tenant", tenant_id.clone()),
        ("Subscription", subscription_id),
        ("Plan", "starter".to_owned()),
        ("Resource", room.clone()),
        ("Booking", booking_id),
        ("Usage", format!("{tenant_id}:typed-1")),
    ] {
        let replayed = app.get(&format!("/v1/aggregates/{kind}/{id}"), ADMIN_TOKEN).await;
        assert_eq!(replayed.status, 200, "{kind} {id}: {}", replayed.body);
        check_against_spec(&spec, "get", "/v1/aggregates/{aggregate_type}/{id}", &replayed);
    }
    check_against_spec(&spec, "get", "/v1/tenant/export", &app.get("/v1/tenant/export", &key).await);

    // Usage over time, analytics, health.
    check_against_spec(&spec, "get", "/v1/usage", &app.get("/v1/usage?granularity=hour", &key).await);
    check_against_spec(&spec, "get", "/v1/analytics/usage", &app.get("/v1/analytics/usage?granularity=month", &key).await);
    check_against_spec(&spec, "get", "/v1/admin/analytics/revenue", &app.get("/v1/admin/analytics/revenue", ADMIN_TOKEN).await);
    check_against_spec(&spec, "get", "/healthz", &app.get("/healthz", ADMIN_TOKEN).await);
    check_against_spec(&spec, "get", "/readyz", &app.get("/readyz", ADMIN_TOKEN).await);

    // Lists and keys.
    check_against_spec(&spec, "get", "/v1/tenants", &app.get("/v1/tenants", ADMIN_TOKEN).await);
    check_against_spec(&spec, "get", "/v1/bookings", &app.get("/v1/bookings", &key).await);
    let invited = app.post("/v1/members", &key, serde_json::json!({"email": "ada@typed.example", "role": "member"})).await;
    assert_eq!(invited.status, 201, "{}", invited.body);
    check_against_spec(&spec, "get", "/v1/members", &app.get("/v1/members", &key).await);
    let issued = app.post("/v1/api-keys", &key, serde_json::json!({"role": "readonly"})).await;
    check_against_spec(&spec, "post", "/v1/api-keys", &issued);
    check_against_spec(&spec, "get", "/v1/api-keys", &app.get("/v1/api-keys", &key).await);
    let revoked = app.delete(&format!("/v1/api-keys/{}", issued.body["id"].as_str().unwrap()), &key).await;
    check_against_spec(&spec, "delete", "/v1/api-keys/{id}", &revoked);

    // The subscription through its commands.
    check_against_spec(&spec, "get", "/v1/subscription", &app.get("/v1/subscription", &key).await);
    let coupon = serde_json::json!({"code": "TYPED10", "percent_off": 10, "duration": "repeating", "duration_in_periods": 2});
    check_against_spec(&spec, "post", "/v1/coupons", &app.post("/v1/coupons", ADMIN_TOKEN, coupon).await);
    let amount = serde_json::json!({"code": "TYPED5", "amount_off": "5.00", "currency": "EUR", "duration": "once", "max_redemptions": 3, "plans": ["starter"]});
    check_against_spec(&spec, "post", "/v1/coupons", &app.post("/v1/coupons", ADMIN_TOKEN, amount).await);
    check_against_spec(&spec, "get", "/v1/coupons", &app.get("/v1/coupons", ADMIN_TOKEN).await);
    check_against_spec(&spec, "get", "/v1/coupons/{code}", &app.get("/v1/coupons/TYPED5", ADMIN_TOKEN).await);
    check_against_spec(&spec, "get", "/v1/plans", &app.get("/v1/plans", ADMIN_TOKEN).await);
    let plan = serde_json::json!({"code": "typed-plan", "name": "Typed", "prices": {"EUR": {"monthly": "9.00"}, "USD": {"monthly": "10.00"}},
        "limits": {"users": 2}, "features": ["x"], "rate_limit_per_minute": 100});
    check_against_spec(&spec, "post", "/v1/plans", &app.post("/v1/plans", ADMIN_TOKEN, plan).await);
    let redeemed = app.post("/v1/subscription/coupon", &key, serde_json::json!({"code": "TYPED10"})).await;
    check_against_spec(&spec, "post", "/v1/subscription/coupon", &redeemed);
    assert!(redeemed.body["discount"].is_object(), "{}", redeemed.body);
    check_against_spec(&spec, "delete", "/v1/subscription/coupon", &app.delete("/v1/subscription/coupon", &key).await);
    let upgraded = app.post("/v1/subscription/change-plan", &key, serde_json::json!({"plan": "professional"})).await;
    check_against_spec(&spec, "post", "/v1/subscription/change-plan", &upgraded);
    assert!(upgraded.body["invoice"].is_object(), "an upgrade issues a prorated invoice: {}", upgraded.body);
    let downgrade = app.post("/v1/subscription/change-plan", &key, serde_json::json!({"plan": "starter"})).await;
    check_against_spec(&spec, "post", "/v1/subscription/change-plan", &downgrade);
    let addons = serde_json::json!({"extra_users": 1, "extra_storage_gb": 0});
    check_against_spec(&spec, "put", "/v1/subscription/addons", &app.put("/v1/subscription/addons", &key, addons).await);
    let cancelled = app.post("/v1/subscription/cancel", &key, serde_json::json!({"at_period_end": true})).await;
    check_against_spec(&spec, "post", "/v1/subscription/cancel", &cancelled);
    check_against_spec(&spec, "post", "/v1/subscription/resume", &app.post("/v1/subscription/resume", &key, serde_json::json!({})).await);

    // The upcoming invoice, the payment provider's notification, operations.
    check_against_spec(&spec, "get", "/v1/invoices/upcoming", &app.get("/v1/invoices/upcoming", &key).await);
    let open = app.get("/v1/invoices?status=open", &key).await.body["data"][0].clone();
    let paid_by_provider = app
        .payment_webhook(serde_json::json!({"id": "evt_typed", "type": "payment.succeeded", "invoice_id": open["id"], "amount": open["amount_due"], "currency": open["currency"]}))
        .await;
    check_against_spec(&spec, "post", "/v1/webhooks/payments", &paid_by_provider);
    check_against_spec(&spec, "get", "/", &app.get("/", ADMIN_TOKEN).await);
    check_against_spec(&spec, "get", "/v1/admin/projections", &app.get("/v1/admin/projections", ADMIN_TOKEN).await);
    check_against_spec(&spec, "get", "/v1/admin/clock", &app.get("/v1/admin/clock", ADMIN_TOKEN).await);
    let now = app.get("/v1/admin/clock", ADMIN_TOKEN).await.body["now"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let later = (now + chrono::Duration::days(1)).to_rfc3339();
    check_against_spec(&spec, "put", "/v1/admin/clock", &app.put("/v1/admin/clock", ADMIN_TOKEN, serde_json::json!({"now": later})).await);
    check_against_spec(
        &spec,
        "post",
        "/v1/admin/billing/run",
        &app.post("/v1/admin/billing/run", ADMIN_TOKEN, serde_json::json!({})).await,
    );
    let rebuild = app.post("/v1/admin/projections/tenants/rebuild", ADMIN_TOKEN, serde_json::json!({})).await;
    check_against_spec(&spec, "post", "/v1/admin/projections/{name}/rebuild", &rebuild);

    // And the checker can fail: an answer that breaks its schema is caught.
    let mut broken = usage.clone();
    broken.body["duplicate"] = serde_json::json!("no");
    let caught = std::panic::catch_unwind(|| check_against_spec(&spec, "post", "/v1/usage", &broken));
    assert!(caught.is_err(), "a wrong type passed the check");
}

/// Swagger UI shows an operation's summary as plain text: no Markdown code spans in them
/// (descriptions keep theirs).
#[tokio::test]
async fn summaries_are_plain_text_for_swagger_ui() {
    let app = spawn_app().await;
    let spec: serde_json::Value = app.request(Method::GET, "/openapi.json", None).send().await.unwrap().json().await.unwrap();
    let mut summaries = 0;
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            if let Some(summary) = operation["summary"].as_str() {
                summaries += 1;
                assert!(!summary.contains('`'), "{method} {path}: {summary}");
            }
        }
    }
    assert!(summaries > 40, "only {summaries} operations have a summary");
}

/// Two answer or body types under one schema name would leave one of them described as the
/// other (utoipa's merge keeps one silently); every name is defined once or identically.
#[test]
fn no_two_schemas_share_a_name() {
    let clashes = api::openapi::schema_name_clashes();
    assert!(clashes.is_empty(), "schema names defined differently by two route modules: {clashes:?}");
}
