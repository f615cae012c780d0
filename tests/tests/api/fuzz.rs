//! Hostile input at every operation of the OpenAPI document: random and malformed bodies,
//! headers, ids and query strings, huge and negative numbers, impossible dates, unicode.
//! Never a 5xx, every error in the contract's shape, and a refused request never writes.
//!
//! Deterministic: `FUZZ_SEED` picks the seed (printed on failure), `FUZZ_CASES` the number of
//! cases per operation (default 40).

use std::collections::BTreeMap;

use e2e::{spawn_app_with, ADMIN_TOKEN, WEBHOOK_SECRET};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Map, Value};

const STRINGS: &[&str] = &[
    "",
    " ",
    "starter",
    "enterprise",
    "room",
    "event",
    "sms",
    "api_calls",
    "storage_bytes",
    "monthly",
    "yearly",
    "owner",
    "readonly",
    "a@b.co",
    "not an email",
    "#ff00ff",
    "#zzzzzz",
    "https://example.com/logo.png",
    "javascript:alert(1)",
    "2027-02-30T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "2027-03-10T12:00:00+14:00",
    "yesterday",
    "-1",
    "1e309",
    "99999999999999999999999999999",
    "0.005",
    "-0.00",
    "NaN",
    "💥🔥",
    "\u{202e}evil",
    "zero\u{200b}width",
    "nul\u{0}byte",
    "line\nbreak",
    "ünïcødé-Ωmega",
    "'; DROP TABLE events; --",
    "{{7*7}}",
    "../../etc/passwd",
    "%00",
    "00000000-0000-0000-0000-000000000000",
];

fn hostile_string(rng: &mut StdRng) -> String {
    match rng.gen_range(0..10) {
        0 => "x".repeat(rng.gen_range(100..20_000)),
        1 => "💥".repeat(rng.gen_range(10..3_000)),
        2 => uuid::Uuid::now_v7().to_string(),
        3 => (0..rng.gen_range(1..40)).map(|_| char::from_u32(rng.gen_range(1..0x2FFFF)).unwrap_or('?')).collect(),
        _ => STRINGS[rng.gen_range(0..STRINGS.len())].to_owned(),
    }
}

fn hostile_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..16) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!(i64::MAX),
        3 => json!(i64::MIN),
        4 => json!(-rng.gen_range(1..1_000_000)),
        5 => json!(0),
        6 => json!(rng.gen_range(1..100)),
        7 => json!(1e308),
        8 => json!(-0.5),
        9 => json!(u64::MAX),
        10 if depth < 3 => Value::Array((0..rng.gen_range(0..5)).map(|_| hostile_value(rng, depth + 1)).collect()),
        11 if depth < 3 => Value::Object(
            (0..rng.gen_range(0..5)).map(|_| (hostile_string(rng).chars().take(20).collect(), hostile_value(rng, depth + 1))).collect(),
        ),
        _ => Value::String(hostile_string(rng)),
    }
}

/// A valid body for the operations that create things, so that one-field mutations of it get
/// past the first checks and reach the domain and the database.
fn valid_body(method: &str, path: &str, room: &str, rng: &mut StdRng) -> Option<Value> {
    let n: u32 = rng.gen();
    Some(match (method, path) {
        ("post", "/v1/tenants") => e2e::TestApp::tenant_body(&format!("fz-{n}")),
        ("post", "/v1/bookings") => json!({"resource_id": room, "starts_at": format!("2032-01-{:02}T{:02}:00:00Z", n % 28 + 1, n % 23),
            "ends_at": format!("2032-01-{:02}T{:02}:30:00Z", n % 28 + 1, n % 23), "seats": 1, "customer": {"name": "Fuzz", "email": "f@z.example"}}),
        ("post", "/v1/usage") => json!({"metric": "sms", "quantity": 1, "idempotency_key": format!("fz-{n}")}),
        ("post", "/v1/usage/batch") => json!({"records": [{"metric": "api_calls", "quantity": 2, "idempotency_key": format!("fzb-{n}")}]}),
        ("post", "/v1/resources") => json!({"name": format!("Room {n}"), "kind": "room", "capacity": 2}),
        ("post", "/v1/plans") => {
            json!({"code": "fuzzplan", "name": "Fuzz", "monthly_price": "9.00", "limits": {}, "features": [], "rate_limit_per_minute": 100})
        }
        ("post", "/v1/api-keys") => json!({"role": "member", "name": "fuzz"}),
        ("put", "/v1/tenant/branding") => json!({"primary_color": "#112233", "logo_url": "https://x.example/l.png"}),
        ("put", "/v1/subscription/addons") => json!({"extra_users": 1, "extra_storage_gb": 1}),
        ("post", "/v1/subscription/change-plan") => json!({"plan": "business", "billing_period": "monthly"}),
        ("put", "/v1/admin/clock") => json!({"now": "2030-01-01T00:00:00Z"}),
        _ => return None,
    })
}

/// `body` with one field (top level or one level down) replaced by a hostile value.
fn mutate_one_field(rng: &mut StdRng, mut body: Value) -> Value {
    let keys: Vec<String> = body.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    if keys.is_empty() {
        return body;
    }
    let key = &keys[rng.gen_range(0..keys.len())];
    let nested: Vec<String> = body[key].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    if !nested.is_empty() && rng.gen_range(0..2) == 0 {
        let inner = nested[rng.gen_range(0..nested.len())].clone();
        body[key][inner] = hostile_value(rng, 1);
    } else {
        body[key] = hostile_value(rng, 1);
    }
    body
}

/// The property names of a request body schema (following one `$ref`).
fn body_fields(spec: &Value, op: &Value) -> Vec<String> {
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    let schema = match schema["$ref"].as_str() {
        Some(r) => &spec["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => schema,
    };
    schema["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default()
}

/// A body for an operation with `fields`: mostly an object of those fields with hostile
/// values (some dropped, some unknown added), sometimes not JSON at all.
fn hostile_body(rng: &mut StdRng, fields: &[String]) -> (Vec<u8>, &'static str) {
    let content_type = match rng.gen_range(0..20) {
        0 => "text/plain",
        1 => "application/x-www-form-urlencoded",
        2 => "application/json; charset=latin1",
        _ => "application/json",
    };
    let bytes = match rng.gen_range(0..20) {
        0 => b"{\"truncated\": ".to_vec(),
        1 => vec![0xff, 0xfe, 0x00, 0x7b],
        2 => "[".repeat(rng.gen_range(100..5_000)).into_bytes(),
        3 => hostile_value(rng, 0).to_string().into_bytes(),
        4 => vec![b'a'; 1024 * 1024 + 10],
        5 => b"{\"a\":1,\"a\":2}".to_vec(),
        _ => {
            let mut object = Map::new();
            for field in fields {
                if rng.gen_range(0..5) > 0 {
                    object.insert(field.clone(), hostile_value(rng, 0));
                }
            }
            if rng.gen_range(0..5) == 0 {
                object.insert(hostile_string(rng).chars().take(30).collect(), hostile_value(rng, 0));
            }
            Value::Object(object).to_string().into_bytes()
        }
    };
    (bytes, content_type)
}

fn hostile_path_segment(rng: &mut StdRng) -> String {
    let raw = match rng.gen_range(0..8) {
        0 => uuid::Uuid::now_v7().to_string(),
        1 => "not-a-uuid".to_owned(),
        2 => "a".repeat(rng.gen_range(100..3000)),
        3 => "%00".to_owned(),
        4 => "..%2F..%2Fetc".to_owned(),
        5 => "-1".to_owned(),
        _ => hostile_string(rng).chars().take(60).collect(),
    };
    // Percent-encode everything but unreserved characters, as a client library would.
    raw.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~%".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn hostile_query(rng: &mut StdRng, params: &[String]) -> String {
    let mut pairs = Vec::new();
    for name in params {
        if rng.gen_range(0..3) == 0 {
            let value = match rng.gen_range(0..4) {
                0 => hostile_value(rng, 2).to_string(),
                _ => hostile_string(rng).chars().take(200).collect(),
            };
            let encoded: String = value
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            pairs.push(format!("{name}={encoded}"));
        }
    }
    if rng.gen_range(0..6) == 0 {
        pairs.push("%ZZ=%ZZ&&==".to_owned());
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

async fn event_count(app: &e2e::TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&app.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_at_every_operation_never_gets_a_5xx_or_a_partial_write() {
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261122);
    let cases: usize = std::env::var("FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let app = spawn_app_with(|c| {
        c.webhook_secret = Some(WEBHOOK_SECRET.to_owned());
        c.test_clock = true;
    })
    .await;
    let tenant = app.create_tenant_on("fuzz-clinic", "enterprise").await;
    let room = app.create_resource(&tenant.key, "room", 3).await;
    let spec: Value = app.request(Method::GET, "/openapi.json", None).send().await.unwrap().json().await.unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tried: BTreeMap<String, usize> = BTreeMap::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();

    // A connection per request: a hostile exchange may end with the server closing its
    // connection (an answer given before a body was read), and a pooled connection closed that
    // way fails the next request's write ("broken pipe") before the server sees it.
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(std::time::Duration::from_secs(60)).build().unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let fields = body_fields(&spec, op);
            let query_params: Vec<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            let admin_route = path.starts_with("/v1/admin") || (path.starts_with("/v1/tenants") || path == "/v1/plans") && method != "get";
            for case in 0..cases {
                let mut concrete = path.clone();
                for placeholder in ["{id}", "{name}", "{metric}", "{aggregate_type}"] {
                    if concrete.contains(placeholder) {
                        let segment = match rng.gen_range(0..4) {
                            0 if placeholder == "{id}" => room.clone(),
                            0 if placeholder == "{id}" || placeholder == "{aggregate_type}" => "Tenant".to_owned(),
                            _ => hostile_path_segment(&mut rng),
                        };
                        concrete = concrete.replace(placeholder, &segment);
                    }
                }
                concrete.push_str(&hostile_query(&mut rng, &query_params));
                let token = match rng.gen_range(0..10) {
                    0 => None,
                    1 => Some("slk_garbage".to_owned()),
                    2 => Some(hostile_string(&mut rng).chars().filter(|c| c.is_ascii_graphic()).take(80).collect()),
                    _ if admin_route => Some(ADMIN_TOKEN.to_owned()),
                    _ => Some(tenant.key.clone()),
                };
                let mut request =
                    fresh.request(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(), format!("{}{concrete}", app.address));
                if let Some(token) = token.as_deref() {
                    request = request.bearer_auth(token);
                }
                if rng.gen_range(0..4) == 0 {
                    let value = match rng.gen_range(0..3) {
                        0 => tenant.id.to_string(),
                        1 => uuid::Uuid::now_v7().to_string(),
                        _ => "not-a-tenant".to_owned(),
                    };
                    request = request.header("X-Tenant-ID", value);
                }
                if method == "post" && rng.gen_range(0..3) == 0 {
                    let key: String = hostile_string(&mut rng).chars().filter(|c| c.is_ascii_graphic()).take(300).collect();
                    request = request.header("Idempotency-Key", if key.is_empty() { "k".to_owned() } else { key });
                }
                let mut oversized = false;
                let template = valid_body(method, path, &room, &mut rng);
                if let (Some(template), true) = (template, rng.gen_range(0..2) == 0) {
                    request = request.json(&mutate_one_field(&mut rng, template));
                } else if matches!(method.as_str(), "post" | "put") || rng.gen_range(0..10) == 0 {
                    let (body, content_type) = hostile_body(&mut rng, &fields);
                    oversized = body.len() > 1024 * 1024;
                    request = request.header("content-type", content_type).body(body);
                }
                if path == "/v1/webhooks/payments" && rng.gen_range(0..2) == 0 {
                    request = request.header("Payment-Signature", format!("t={},v1={}", rng.gen::<u32>(), "ab".repeat(32)));
                }
                let before = event_count(&app).await;
                let reply = match request.send().await {
                    Ok(response) => e2e::Reply::from(response).await,
                    // The server may answer 413 before reading an oversized body and close the
                    // connection while the client is still writing it.
                    Err(e) if oversized && e.is_request() => {
                        *statuses.entry(413).or_default() += 1;
                        assert_eq!(before, event_count(&app).await);
                        *tried.entry(format!("{} {path}", method.to_uppercase())).or_default() += 1;
                        continue;
                    }
                    Err(e) => panic!("seed {seed} case {case}: {method} {concrete}: no answer: {e}"),
                };
                let after = event_count(&app).await;
                *statuses.entry(reply.status.as_u16()).or_default() += 1;
                let context = format!("seed {seed} case {case}: {} {concrete} → {} {}", method.to_uppercase(), reply.status, reply.body);
                assert!(reply.status.as_u16() < 500, "5xx for hostile input ({context})");
                if reply.status.as_u16() >= 400 {
                    let error = &reply.body["error"];
                    assert!(
                        error["code"].as_str().is_some_and(|c| !c.is_empty() && c.chars().all(|c| c.is_ascii_uppercase() || c == '_')),
                        "not the contract's error shape ({context})"
                    );
                    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "no message ({context})");
                    assert!(error["details"].is_object(), "no details ({context})");
                    assert_eq!(before, after, "a refused request appended events ({context})");
                }
                *tried.entry(format!("{} {path}", method.to_uppercase())).or_default() += 1;
            }
        }
    }
    // Nothing the fuzzer got through broke the read side or the audit chain.
    let runs = app.get("/v1/admin/projections", ADMIN_TOKEN).await;
    for run in runs.expect(200).as_array().unwrap() {
        assert!(run["last_error"].is_null(), "a projection failed after fuzzing: {run}");
    }
    let verify = app.get("/v1/audit/verify", ADMIN_TOKEN).await;
    assert_eq!(verify.expect(200)["valid"], true);
    let total: usize = tried.values().sum();
    println!("fuzz seed {seed}: {total} cases over {} operations ({cases} each); statuses {statuses:?}", tried.len());
    assert!(tried.len() >= 50, "only {} operations fuzzed", tried.len());
}

/// Schemathesis (`st`, an independent schema-driven fuzzer; `.ci/run` installs it with pip)
/// against the served document, as the admin acting for a tenant: examples, boundary
/// coverage and random valid and invalid data for every operation. No 5xx, every status code
/// documented, every answer's content type and body as its schema says. (Valid data it
/// generates can still be refused for what a schema cannot say: `from` before `to`, a cursor
/// from a previous page, a date in the future, a URL that resolves; see the README.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_no_undocumented_status_and_no_answer_outside_its_schema() {
    let app = spawn_app_with(|c| c.webhook_secret = Some(WEBHOOK_SECRET.to_owned())).await;
    app.create_billed_tenant("st-clinic", "starter").await;
    let address = app.address.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("st")
            .args(["run", &format!("{address}/openapi.json")])
            .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}"), "-H", "X-Tenant-ID: st-clinic"])
            .args(["-n", "15", "--seed", "1", "--request-timeout", "20", "--exclude-path-regex", "^/v1/admin/clock"])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis's `st` (pip install schemathesis; .ci/run installs it)")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "schemathesis found failures:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
}
