//! The operator console in a real browser: headless Debian Chromium driven through
//! `chromedriver` (WebDriver, `fantoccini`). Screenshots of each page are written to
//! `target/console-screenshots/` for a reviewer to look at.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::{spawn_app_with, TestApp, ADMIN_TOKEN};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

struct Browser {
    client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn browser() -> Browser {
    // Two crypto providers are linked (through different crates): say which one rustls uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian: apt install chromium-driver; .ci/run installs it)");
    let caps = json!({"goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1800"]}});
    let caps = caps.as_object().unwrap().clone();
    let mut last = None;
    for _ in 0..100 {
        match ClientBuilder::rustls().expect("a TLS config").capabilities(caps.clone()).connect(&format!("http://127.0.0.1:{port}")).await {
            Ok(client) => return Browser { client, driver },
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start: {last:?}");
}

async fn shot(browser: &Browser, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = browser.client.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The text of the element `css` names, once the page has it (a submitted form or the
/// operations page's refresh may still be loading).
async fn text_of(browser: &Browser, css: &str) -> String {
    for _ in 0..50 {
        if let Ok(element) = browser.client.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css}: not on the page: {}", browser.client.source().await.unwrap_or_default())
}

/// Waits (up to 10 s) for the page titled `title`: a click's navigation may still be on its way.
async fn until_title(browser: &Browser, title: &str) {
    for _ in 0..100 {
        if let Ok(h1) = browser.client.find(Locator::Css("main h1")).await {
            if h1.text().await.ok().as_deref() == Some(title) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no page titled {title:?}: {}", browser.client.source().await.unwrap_or_default())
}

async fn sign_in(browser: &Browser, app: &TestApp, token: &str) {
    browser.client.goto(&format!("{}/console", app.address)).await.unwrap();
    assert!(browser.client.current_url().await.unwrap().path().ends_with("/console/sign-in"), "not signed in: the sign-in page");
    browser.client.find(Locator::Css("#token")).await.unwrap().send_keys(token).await.unwrap();
    browser.client.find(Locator::Css("form.card button[type=submit]")).await.unwrap().click().await.unwrap();
}

async fn session_cookie(browser: &Browser) -> String {
    let cookies = browser.client.get_all_cookies().await.unwrap();
    let cookie = cookies.iter().find(|c| c.name() == "sl_console").expect("the session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site().map(|s| format!("{s:?}")).as_deref(), Some("Strict"));
    format!("sl_console={}", cookie.value())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_suspends_a_tenant_opens_an_invoice_and_rebuilds_a_projection_in_a_real_browser() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-01T09:00:00Z").await;
    let tenant = app.create_billed_tenant("console-clinic", "starter").await;
    app.create_billed_tenant("console-school", "professional").await;
    app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 4200, "idempotency_key": "c-1"})).await.expect(202);
    app.set_clock("2027-02-01T09:00:00Z").await;
    app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 900, "idempotency_key": "c-2"})).await.expect(202);
    app.post("/v1/usage/c-2/void", &tenant.key, json!({"reason": "Load test traffic"})).await.expect(200);
    let browser = browser().await;

    sign_in(&browser, &app, ADMIN_TOKEN).await;
    until_title(&browser, "Overview").await;
    assert!(browser.client.current_url().await.unwrap().path().ends_with("/console/overview"));
    let overview = browser.client.source().await.unwrap();
    assert!(overview.contains("<svg") && overview.contains("MRR"), "charts drawn on the server");
    assert!(overview.contains("Platform usage by month"), "the usage trend");
    assert!(!overview.contains(ADMIN_TOKEN), "the token is never put in a page");
    shot(&browser, "01-overview").await;

    // Tenants: search, open one.
    // Search by name (the sign-up names them "Tenant <code>"), then by status.
    browser.client.goto(&format!("{}/console/tenants?q=Tenant+console-cl", app.address)).await.unwrap();
    let found = text_of(&browser, "main table").await;
    assert!(found.contains("console-clinic") && !found.contains("console-school"), "{found}");
    assert!(found.contains("1 tenant on this page"), "one tenant, in the singular: {found}");
    shot(&browser, "02-tenants").await;
    browser.client.find(Locator::LinkText("console-clinic")).await.unwrap().click().await.unwrap();
    until_title(&browser, "Tenant console-clinic").await;
    assert_eq!(text_of(&browser, "#tenant-status").await, "active");
    assert!(text_of(&browser, "#audit-verification").await.starts_with("Chain verified"));
    let corrections = text_of(&browser, "#usage-corrections").await;
    assert!(corrections.contains("usage fact c-2 voided: Load test traffic"), "the tenant page lists corrections: {corrections}");
    shot(&browser, "03-tenant").await;

    // Suspend through the form, with its confirmation step.
    browser.client.find(Locator::LinkText("Suspend…")).await.unwrap().click().await.unwrap();
    until_title(&browser, "Suspend console-clinic?").await;
    shot(&browser, "04-confirm-suspend").await;
    browser.client.find(Locator::Css("#reason")).await.unwrap().send_keys("Unpaid since January").await.unwrap();
    browser.client.find(Locator::Css("form.card button[type=submit]")).await.unwrap().click().await.unwrap();
    until_title(&browser, "Tenant console-clinic").await;
    assert_eq!(text_of(&browser, "#tenant-status").await, "suspended");
    assert_eq!(
        app.get(&format!("/v1/tenants/{}", tenant.id), ADMIN_TOKEN).await.expect(200)["status"],
        "suspended",
        "through the API's command"
    );
    let audit = app.get("/v1/audit?limit=100", &tenant.key).await.expect(200).clone();
    assert!(audit["data"].as_array().unwrap().iter().any(|e| e["event_type"] == "TenantSuspended" && e["actor"] == "admin"));

    // A form posted without its CSRF token is refused, with the session cookie or not.
    let cookie = session_cookie(&browser).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let forged = client
        .post(format!("{}/console/tenants/{}/reactivate", app.address, tenant.id))
        .header("Cookie", &cookie)
        .form(&[("reason", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let wrong = client
        .post(format!("{}/console/tenants/{}/reactivate", app.address, tenant.id))
        .header("Cookie", &cookie)
        .form(&[("csrf", "0".repeat(64))])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    assert_eq!(app.get(&format!("/v1/tenants/{}", tenant.id), ADMIN_TOKEN).await.expect(200)["status"], "suspended");

    // An invoice opens as a printable page.
    browser.client.find(Locator::Css("#invoices + table tbody a")).await.unwrap().click().await.unwrap();
    let number = text_of(&browser, "#invoice-number").await;
    assert!(number.starts_with("CONSOLE-CLINIC-"), "{number}");
    shot(&browser, "05-invoice").await;

    // A rebuild from the operations page, followed until it is live.
    browser.client.goto(&format!("{}/console/operations", app.address)).await.unwrap();
    let jobs = text_of(&browser, "#jobs + table").await;
    assert!(jobs.lines().any(|l| l.starts_with("billing-loop") && !l.contains("nobody")), "the billing loop has a leader: {jobs}");
    browser.client.find(Locator::Css("#projection option[value=usage]")).await.unwrap().click().await.unwrap();
    browser.client.find(Locator::Css("form[action='/console/operations/rebuild'] button")).await.unwrap().click().await.unwrap();
    until_title(&browser, "Operations").await;
    let mut finished = false;
    for _ in 0..120 {
        let table = text_of(&browser, "#projection-runs").await;
        let generations: Vec<&str> = table.lines().filter(|l| l.starts_with("usage")).collect();
        if !table.contains("building") && generations.iter().any(|l| l.contains(" 2 ")) {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = browser.client.refresh().await;
    }
    assert!(finished, "the rebuild went live: {}", text_of(&browser, "#projection-runs").await);
    shot(&browser, "06-operations").await;

    browser.client.goto(&format!("{}/console/events?tenant=console-clinic", app.address)).await.unwrap();
    assert!(browser.client.source().await.unwrap().contains("TenantSuspended"));
    shot(&browser, "07-events").await;

    // Sign out: the session is gone.
    browser.client.find(Locator::Css("form.sign-out button")).await.unwrap().click().await.unwrap();
    until_title(&browser, "Sign in").await;
    let url = browser.client.current_url().await.unwrap();
    assert!(url.path().ends_with("/console/sign-in"), "{url}: {}", browser.client.source().await.unwrap());
    let after = client.get(format!("{}/console/overview", app.address)).header("Cookie", &cookie).send().await.unwrap();
    assert_eq!(after.status(), 303, "signed out: back to the sign-in page");
    browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_sees_its_own_tenant_only_even_by_editing_urls() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    let mine = app.create_billed_tenant("console-mine", "starter").await;
    let theirs = app.create_billed_tenant("console-theirs", "starter").await;
    let member = app.issue_key(&mine.key, "member").await;
    let browser = browser().await;

    // A member key may not sign in; a wrong token neither.
    sign_in(&browser, &app, &member).await;
    assert!(text_of(&browser, "p.error").await.contains("Only owner and admin keys"));
    sign_in(&browser, &app, "slk_nonsense").await;
    assert!(text_of(&browser, "p.error").await.contains("neither the admin token nor an active API key"));

    sign_in(&browser, &app, &mine.key).await;
    until_title(&browser, "Tenant console-mine").await;
    assert!(browser.client.current_url().await.unwrap().path().ends_with(&format!("/console/tenants/{}", mine.id)));
    assert_eq!(text_of(&browser, "#tenant-status").await, "active");
    assert!(browser.client.find(Locator::LinkText("Suspend…")).await.is_err(), "no admin actions for a tenant");
    shot(&browser, "08-tenant-own").await;

    for path in [
        format!("/console/tenants/{}", theirs.id),
        "/console/tenants/console-theirs".to_owned(),
        format!("/console/tenants/{}/suspend", theirs.id),
    ] {
        browser.client.goto(&format!("{}{path}", app.address)).await.unwrap();
        let page = browser.client.source().await.unwrap();
        assert!(page.contains("Not found") && !page.contains("console-theirs"), "{path}: {page}");
    }
    for path in ["/console/tenants", "/console/operations"] {
        browser.client.goto(&format!("{}{path}", app.address)).await.unwrap();
        assert!(browser.client.source().await.unwrap().contains("Not allowed"), "{path}");
    }
    shot(&browser, "09-tenant-refused").await;

    // Acting with a valid CSRF token still meets the API's authorization: admin only.
    browser.client.goto(&format!("{}/console/tenants/{}", app.address, mine.id)).await.unwrap();
    let csrf = browser.client.find(Locator::Css("form.sign-out input[name=csrf]")).await.unwrap().attr("value").await.unwrap().unwrap();
    let cookie = session_cookie(&browser).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for target in [mine.id, theirs.id] {
        let reply = client
            .post(format!("{}/console/tenants/{target}/suspend", app.address))
            .header("Cookie", &cookie)
            .form(&[("csrf", csrf.as_str()), ("reason", "mine now")])
            .send()
            .await
            .unwrap();
        assert!([403, 404].contains(&reply.status().as_u16()), "{target}: {}", reply.status());
    }
    for tenant in [&mine, &theirs] {
        assert_eq!(app.get(&format!("/v1/tenants/{}", tenant.id), ADMIN_TOKEN).await.expect(200)["status"], "active");
    }
    // Another tenant's events are not in its log.
    browser.client.goto(&format!("{}/console/events", app.address)).await.unwrap();
    let log = browser.client.source().await.unwrap();
    assert!(log.contains(&mine.id.to_string()) && !log.contains(&theirs.id.to_string()));

    // Revoking the key ends its session.
    let manager = app.issue_key(&mine.key, "admin").await;
    let keys = app.get("/v1/api-keys", &manager).await.expect(200).clone();
    let listed = keys.get("data").unwrap_or(&keys).as_array().unwrap().clone();
    let owner_key = listed.iter().find(|k| k["role"] == "owner").unwrap()["id"].as_str().unwrap().to_owned();
    app.delete(&format!("/v1/api-keys/{owner_key}"), &manager).await.expect(200);
    let after = client.get(format!("{}/console/tenants/{}", app.address, mine.id)).header("Cookie", &cookie).send().await.unwrap();
    assert_eq!(after.status(), 303);
    browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reads_the_books_and_closes_and_reopens_a_month_in_a_real_browser() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-15T00:00:00Z").await;
    app.create_billed_tenant("books-clinic", "starter").await;
    app.set_clock("2027-03-02T00:00:00Z").await;
    let browser = browser().await;
    sign_in(&browser, &app, ADMIN_TOKEN).await;
    until_title(&browser, "Overview").await;
    browser.client.find(Locator::LinkText("Revenue")).await.unwrap().click().await.unwrap();
    until_title(&browser, "Revenue").await;
    let table = text_of(&browser, "#revenue-months").await;
    // 29.00 from January 15 (17 of 31 days in January), renewed on February 15.
    assert!(table.lines().any(|l| l.starts_with("2027-01") && l.contains("29.00") && l.contains("15.90")), "{table}");
    assert!(browser.client.source().await.unwrap().contains("Deferred revenue: billed in, recognized out"), "the waterfall is drawn");
    assert!(text_of(&browser, "#closed-through").await.starts_with("No month is closed. Close 2027-01"));
    shot(&browser, "08-revenue").await;

    // Close January through its confirmation step.
    browser.client.find(Locator::Css("#close-link")).await.unwrap().click().await.unwrap();
    until_title(&browser, "Close 2027-01?").await;
    browser.client.find(Locator::Css("form.card button[type=submit]")).await.unwrap().click().await.unwrap();
    until_title(&browser, "Revenue").await;
    assert!(text_of(&browser, "#closed-through").await.starts_with("Closed through 2027-01."));
    assert_eq!(app.get("/v1/admin/revenue?from=2027-01&to=2027-01", ADMIN_TOKEN).await.expect(200)["months"][0]["closed"], true);

    // Reopen it with a reason, kept in the audit trail.
    browser.client.find(Locator::Css("#reopen-link")).await.unwrap().click().await.unwrap();
    until_title(&browser, "Reopen 2027-01?").await;
    browser.client.find(Locator::Css("#reason")).await.unwrap().send_keys("Late credit note").await.unwrap();
    browser.client.find(Locator::Css("form.card button[type=submit]")).await.unwrap().click().await.unwrap();
    until_title(&browser, "Revenue").await;
    assert!(text_of(&browser, "#closed-through").await.starts_with("No month is closed."));
    let audit = app.get("/v1/audit?aggregate_type=Books&limit=10", ADMIN_TOKEN).await.expect(200).clone();
    let reopened =
        audit["data"].as_array().unwrap().iter().find(|e| e["event_type"] == "MonthReopened").cloned().expect("the reopen audited");
    assert_eq!(reopened["actor"], "admin");
    assert!(reopened["summary"].as_str().unwrap().contains("Late credit note"));

    // The month's journal as a page, and its CSV for the accountant.
    browser.client.find(Locator::Css("#journal-month option[value='2027-01']")).await.unwrap().click().await.unwrap();
    browser.client.find(Locator::Css("form[action='/console/revenue/journal'] button")).await.unwrap().click().await.unwrap();
    until_title(&browser, "Journal 2027-01").await;
    let journal = text_of(&browser, "#journal-lines").await;
    assert!(journal.contains("accounts_receivable") && journal.contains("deferred_revenue") && journal.contains("revenue"), "{journal}");
    let cookie = session_cookie(&browser).await;
    let csv = reqwest::Client::new()
        .get(format!("{}/console/revenue/journal.csv?month=2027-01", app.address))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    assert!(csv.starts_with("date,account,debit,credit,invoice_id,tenant_id,memo\r\n") && csv.contains("accounts_receivable"), "{csv}");
    shot(&browser, "09-journal").await;
    browser.client.clone().close().await.unwrap();
}

/// `saas-ledger demo` fills the console (issue 35): after a demo year the overview charts a
/// year of months. Its screenshot is `target/console-screenshots/demo-overview.png` (the one in
/// `docs/` was taken so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_year_fills_the_overview() {
    let start = chrono::Utc::now() - chrono::Duration::days(365);
    let app = spawn_app_with(move |c| {
        c.test_clock = true;
        c.test_clock_start = Some(start);
        c.billing_interval = Duration::from_secs(24 * 3600);
    })
    .await;
    api::demo::run(&app.state, api::demo::DemoOptions { seed: 7, tenants: 40, webhook_url: None }).await.expect("the demo runs");
    let browser = browser().await;
    sign_in(&browser, &app, ADMIN_TOKEN).await;
    until_title(&browser, "Overview").await;
    let overview = browser.client.source().await.unwrap();
    let months: std::collections::BTreeSet<String> = (0..12)
        .map(|m| (start + chrono::Duration::days(m * 365 / 12 + 15)).format("%Y-%m").to_string())
        .filter(|m| overview.contains(m.as_str()))
        .collect();
    // The axes label every other month: the labels span the year.
    let (first, last) = (months.first().expect("month labels").clone(), months.last().unwrap().clone());
    let span = |m: &str| m[..4].parse::<i32>().unwrap() * 12 + m[5..].parse::<i32>().unwrap();
    assert!(months.len() >= 5 && span(&last) - span(&first) >= 9, "a year of months charted: {months:?}");
    shot(&browser, "demo-overview").await;
}
