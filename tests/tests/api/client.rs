//! A client generated from the committed OpenAPI document (`openapi-python-client`, installed by
//! `.ci/run`) drives a real flow against the real server: if the generator cannot express part
//! of the document, or a generated model does not match an answer, this fails.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{spawn_app_with, ADMIN_TOKEN};

/// Finds the generator: on PATH, or as the module of the machine's Python.
fn generator() -> Command {
    if Command::new("openapi-python-client").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Command::new("openapi-python-client");
    }
    let mut python = Command::new("python3");
    python.args(["-m", "openapi_python_client"]);
    python
}

#[tokio::test]
async fn a_generated_python_client_signs_up_books_meters_bills_and_registers_a_webhook() {
    // A receiver for the webhook endpoint the flow registers.
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap().to_string();
    let sink = got.clone();
    let hooks = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, hooks).await });
    let allow = receiver.clone();
    let app = spawn_app_with(move |c| {
        c.test_clock = true;
        c.webhook_allow_hosts = projections::webhooks::AllowList::parse(&allow);
    })
    .await;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    let spec = root.join("../api/openapi.json");
    let work = std::env::temp_dir().join(format!("sl-client-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work).unwrap();
    let generated = generator()
        .args(["generate", "--meta", "none", "--overwrite", "--path"])
        .arg(&spec)
        .arg("--output-path")
        .arg(work.join("client"))
        .output()
        .expect("openapi-python-client runs (pip install openapi-python-client; .ci/run installs it)");
    assert!(
        generated.status.success(),
        "the generator failed on the committed document:\n{}\n{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );

    let (address, script, dir) = (app.address.clone(), root.join("client/flow.py"), work.clone());
    let hook_url = format!("http://{receiver}/hooks");
    let ran = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg(script).args([&address, ADMIN_TOKEN, &hook_url]).env("PYTHONPATH", &dir).output().expect("python3 runs")
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&work);
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success() && stdout.starts_with("ok: "), "the flow failed:\n{stdout}\n{}", String::from_utf8_lossy(&ran.stderr));

    // The endpoint it registered through the client got the booking.
    for _ in 0..200 {
        if got.lock().unwrap().iter().any(|b| b.contains("\"booking.confirmed\"")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the client's webhook endpoint never got its booking: {:?}", got.lock().unwrap());
}
