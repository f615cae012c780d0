//! Revenue recognition through HTTP with the test clock: the contract's worked examples (plans
//! priced as in them), a credit note and a void that never change an earlier month, closing in
//! order (409 out of order), catch-up of late usage into the first open month, reopen, the
//! journal balanced (JSON and CSV), and a rebuild that gives the same books.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::{TestApp, TestTenant, ADMIN_TOKEN};
use rust_decimal::Decimal;
use serde_json::{json, Value};

fn d(v: &Value) -> Decimal {
    v.as_str().unwrap_or_else(|| panic!("a decimal string: {v}")).parse().unwrap()
}

async fn plan(app: &TestApp, code: &str, monthly: &str, yearly: &str, charges: Value) {
    app.post(
        "/v1/plans",
        ADMIN_TOKEN,
        json!({"code": code, "name": code, "monthly_price": monthly, "yearly_price": yearly, "limits": {"users": 5},
               "rate_limit_per_minute": 500, "charges": charges}),
    )
    .await
    .expect(201);
}

async fn tenant(app: &TestApp, code: &str, plan: &str, period: &str) -> TestTenant {
    let mut body = TestApp::tenant_body(code);
    body["plan"] = json!(plan);
    body["billing_period"] = json!(period);
    body["trial_days"] = json!(0);
    body["tax_rate"] = json!("10");
    app.create_tenant_from(body).await
}

/// `month → amount` of the invoice's line `line`.
async fn schedule(app: &TestApp, invoice_id: &str, line: usize) -> Vec<(String, String)> {
    let reply = app.get(&format!("/v1/admin/revenue/invoices/{invoice_id}"), ADMIN_TOKEN).await;
    let body = reply.expect(200);
    body["lines"][line]["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["month"].as_str().unwrap().to_owned(), m["amount"].as_str().unwrap().to_owned()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(m, a)| ((*m).to_owned(), (*a).to_owned())).collect()
}

/// The report's months by name, each checked against the deferred identity.
async fn report(app: &TestApp, query: &str) -> BTreeMap<String, Value> {
    let reply = app.get(&format!("/v1/admin/revenue?{query}"), ADMIN_TOKEN).await;
    let body = reply.expect(200).clone();
    let mut months = BTreeMap::new();
    let mut previous_closing: Option<Decimal> = None;
    for m in body["months"].as_array().unwrap() {
        let (opening, billed, recognized, closing) =
            (d(&m["deferred_opening"]), d(&m["billed"]), d(&m["recognized"]), d(&m["deferred_closing"]));
        assert_eq!(closing, opening + billed - recognized, "the deferred identity in {m}");
        if let Some(previous) = previous_closing {
            assert_eq!(opening, previous, "a month opens with what the last one closed with: {m}");
        }
        previous_closing = Some(closing);
        months.insert(m["month"].as_str().unwrap().to_owned(), m.clone());
    }
    let totals = &body["totals"];
    let sum = |field: &str| months.values().map(|m| d(&m[field])).sum::<Decimal>();
    assert_eq!(d(&totals["billed"]), sum("billed"));
    assert_eq!(d(&totals["recognized"]), sum("recognized"));
    months
}

/// Checks that the month's journal balances in all and per invoice; answers its lines.
async fn balanced_journal(app: &TestApp, month: &str) -> Vec<Value> {
    let reply = app.get(&format!("/v1/admin/revenue/journal?month={month}"), ADMIN_TOKEN).await;
    let body = reply.expect(200).clone();
    let lines = body["lines"].as_array().unwrap().clone();
    let mut per_invoice: BTreeMap<String, Decimal> = BTreeMap::new();
    for l in &lines {
        *per_invoice.entry(l["invoice_id"].as_str().unwrap().to_owned()).or_default() += d(&l["debit"]) - d(&l["credit"]);
        assert!(
            ["accounts_receivable", "deferred_revenue", "revenue", "tax_payable", "contra_revenue"]
                .contains(&l["account"].as_str().unwrap()),
            "{l}"
        );
    }
    assert!(per_invoice.values().all(Decimal::is_zero), "debits equal credits per invoice in {month}: {per_invoice:?}");
    assert_eq!(d(&body["total_debit"]), d(&body["total_credit"]));
    lines
}

#[tokio::test]
async fn the_contracts_examples_are_recognized_to_the_cent_through_http() {
    let app = e2e::spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    plan(&app, "yearly365", "31.00", "365.00", json!([])).await;
    let yearly = tenant(&app, "yearly-books", "yearly365", "yearly").await;
    app.set_clock("2027-01-15T00:00:00Z").await;
    plan(&app, "monthly31", "31.00", "310.00", json!([])).await;
    let monthly = tenant(&app, "monthly-books", "monthly31", "monthly").await;

    // 365.00 yearly from 2027-01-01: each month its days.
    let invoice = app.invoices(&yearly.key).await[0].clone();
    let year = schedule(&app, invoice["id"].as_str().unwrap(), 0).await;
    let days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let expected: Vec<(String, String)> = days.iter().enumerate().map(|(i, n)| (format!("2027-{:02}", i + 1), format!("{n}.00"))).collect();
    assert_eq!(year, expected);
    // 31.00 monthly from 2027-01-15: January 17.00, February 14.00.
    let invoice = app.invoices(&monthly.key).await[0].clone();
    assert_eq!(schedule(&app, invoice["id"].as_str().unwrap(), 0).await, pairs(&[("2027-01", "17.00"), ("2027-02", "14.00")]));

    // A 90.00 monthly plan from 2027-04-01 upgraded on 2027-04-21 to a 120.00 plan: April 100.00, May 120.00.
    app.set_clock("2027-04-01T00:00:00Z").await;
    plan(&app, "basic90", "90.00", "900.00", json!([])).await;
    plan(&app, "pro120", "120.00", "1200.00", json!([])).await;
    let upgraded = tenant(&app, "upgrade-books", "basic90", "monthly").await;
    app.set_clock("2027-04-21T00:00:00Z").await;
    app.post("/v1/subscription/change-plan", &upgraded.key, json!({"plan": "pro120"})).await.expect(200);
    app.set_clock("2027-05-01T00:00:00Z").await;
    let invoices = app.invoices(&upgraded.key).await;
    let upgrade = invoices.iter().find(|i| i["lines"].as_array().unwrap().iter().any(|l| l["kind"] == "proration")).unwrap();
    let amounts: Vec<&str> = upgrade["lines"].as_array().unwrap().iter().map(|l| l["amount"].as_str().unwrap()).collect();
    assert_eq!(amounts, ["-30.00", "40.00"]);
    assert_eq!(upgrade["lines"][0]["period_start"], "2027-04-21T00:00:00Z", "a line names its service period");
    let books = report(&app, "from=2027-04&to=2027-05&tenant=upgrade-books").await;
    assert_eq!(books["2027-04"]["recognized"], "100.00");
    assert_eq!(books["2027-05"]["recognized"], "120.00");
    assert_eq!(books["2027-04"]["billed"], "100.00", "90.00 and the upgrade's 10.00, tax never revenue");
    assert_eq!(books["2027-04"]["deferred_closing"], "0.00");

    // All tenants: each month's identity holds, the totals add up, and the journals balance.
    let all = report(&app, "from=2027-01&to=2027-12").await;
    assert_eq!(all["2027-01"]["recognized"], "48.00", "31.00 of the year and 17.00 of the monthly plan");
    for month in ["2027-01", "2027-02", "2027-04", "2027-05"] {
        assert!(!balanced_journal(&app, month).await.is_empty());
    }
    // Bad input: a clear 400 naming the field.
    app.get("/v1/admin/revenue?from=2027-13", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
    app.get("/v1/admin/revenue?from=2027-05&to=2027-01", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
    app.get("/v1/admin/revenue/journal", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
    app.get("/v1/admin/revenue/invoices/not-an-id", ADMIN_TOKEN).await.expect_error(404, "NOT_FOUND");
    app.get("/v1/admin/revenue", &monthly.key).await.expect_error(403, "FORBIDDEN");
}

async fn rebuild(app: &TestApp, name: &str) {
    let generation = |runs: &Value| runs.as_array().unwrap().iter().find(|r| r["name"] == name).map(|r| r["generation"].as_i64().unwrap());
    let before = generation(&app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).clone()).unwrap();
    app.post(&format!("/v1/admin/projections/{name}/rebuild"), ADMIN_TOKEN, json!({})).await.expect(202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).clone();
        if runs.as_array().unwrap().iter().any(|r| r["name"] == name && r["generation"].as_i64().unwrap() > before && r["status"] == "live")
        {
            return;
        }
        assert!(Instant::now() < deadline, "the rebuild did not finish: {runs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn credit_notes_voids_and_late_usage_never_change_a_closed_month_and_the_books_rebuild_the_same() {
    let app = e2e::spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-15T00:00:00Z").await;
    plan(&app, "metered31", "31.00", "310.00", json!([{"metric": "exports", "model": "per_unit", "unit_price": "1.00"}])).await;
    let t = tenant(&app, "closing-books", "metered31", "monthly").await;
    app.set_clock("2027-02-15T00:00:00Z").await;
    app.set_clock("2027-03-02T00:00:00Z").await;
    let invoices = app.invoices(&t.key).await;
    assert_eq!(invoices.len(), 2);
    let (first, second) = (invoices[0]["id"].as_str().unwrap().to_owned(), invoices[1]["id"].as_str().unwrap().to_owned());
    // Feb 15 → Mar 15: 14 of 28 days in February.
    assert_eq!(schedule(&app, &second, 0).await, pairs(&[("2027-02", "15.50"), ("2027-03", "15.50")]));

    // Close in order, once a month has ended.
    app.post("/v1/admin/revenue/close", ADMIN_TOKEN, json!({"month": "2027-02"})).await.expect_error(409, "CONFLICT");
    app.post("/v1/admin/revenue/close", ADMIN_TOKEN, json!({"month": "2027-03"})).await.expect_error(409, "CONFLICT");
    app.post("/v1/admin/revenue/close", ADMIN_TOKEN, json!({"month": "March"})).await.expect_error(400, "VALIDATION_FAILED");
    let closed = app.post("/v1/admin/revenue/close", ADMIN_TOKEN, json!({"month": "2027-01"})).await;
    assert_eq!(closed.expect(200)["closed_through"], "2027-01");
    app.post("/v1/admin/revenue/close", ADMIN_TOKEN, json!({"month": "2027-01"})).await.expect_error(409, "CONFLICT");
    app.post("/v1/admin/revenue/close", ADMIN_TOKEN, json!({"month": "2027-02"})).await.expect(200);
    let before = report(&app, "from=2027-01&to=2027-04").await;
    assert_eq!(before["2027-02"]["closed"], true);
    assert_eq!(before["2027-03"]["closed"], false);

    // A credit note of 10.00 on the second invoice in March: February never changes; what
    // February recognized of it (10.00 × 15.50 / 31.00 = 5.00) is reversed in March, the rest
    // (5.00) lowers March.
    app.post(&format!("/v1/invoices/{second}/credit-notes"), ADMIN_TOKEN, json!({"amount": "10.00", "reason": "Outage"})).await.expect(201);
    assert_eq!(schedule(&app, &second, 0).await, pairs(&[("2027-02", "15.50"), ("2027-03", "5.50")]));
    let after = report(&app, "from=2027-01&to=2027-04").await;
    assert_eq!(after["2027-01"], before["2027-01"]);
    assert_eq!(after["2027-02"], before["2027-02"]);
    assert_eq!(d(&after["2027-03"]["billed"]), d(&before["2027-03"]["billed"]) - Decimal::new(1000, 2));
    assert_eq!(d(&after["2027-03"]["recognized"]), d(&before["2027-03"]["recognized"]) - Decimal::new(1000, 2));
    let march = balanced_journal(&app, "2027-03").await;
    assert!(march.iter().any(|l| l["account"] == "contra_revenue" && l["debit"] == "5.00"), "{march:?}");

    // A void of the first invoice in March: all of it was recognized in January and February,
    // so all of it is reversed in March.
    app.post(&format!("/v1/invoices/{first}/void"), ADMIN_TOKEN, json!({})).await.expect(200);
    assert_eq!(schedule(&app, &first, 0).await, pairs(&[("2027-01", "17.00"), ("2027-02", "14.00"), ("2027-03", "-31.00")]));
    let voided = report(&app, "from=2027-01&to=2027-04").await;
    assert_eq!(voided["2027-02"], before["2027-02"]);
    assert_eq!(d(&voided["2027-03"]["recognized"]), d(&after["2027-03"]["recognized"]) - Decimal::new(3100, 2));

    // Usage of February reported late (on March 2) for the period Jan 15 → Feb 15, billed on the
    // March 15 invoice: consumed in February, a closed month, so booked in March.
    app.post(
        "/v1/usage",
        &t.key,
        json!({"metric": "exports", "quantity": 5, "idempotency_key": "late-exports", "occurred_at": "2027-02-10T00:00:00Z"}),
    )
    .await
    .expect(202);
    app.set_clock("2027-03-15T00:00:00Z").await;
    let third = app.invoices(&t.key).await[2].clone();
    let late = third["lines"].as_array().unwrap().iter().position(|l| l["kind"] == "usage").expect("a late usage line");
    assert_eq!(third["lines"][late]["amount"], "5.00");
    assert_eq!(schedule(&app, third["id"].as_str().unwrap(), late).await, pairs(&[("2027-03", "5.00")]));
    let caught_up = report(&app, "from=2027-01&to=2027-04").await;
    assert_eq!(caught_up["2027-02"], before["2027-02"], "a closed month never changes");

    // Reopen only the latest closed month, with a reason; then February can be closed again.
    app.post("/v1/admin/revenue/reopen", ADMIN_TOKEN, json!({"month": "2027-01", "reason": "x"})).await.expect_error(409, "CONFLICT");
    app.post("/v1/admin/revenue/reopen", ADMIN_TOKEN, json!({"month": "2027-02", "reason": " "}))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    let reopened = app.post("/v1/admin/revenue/reopen", ADMIN_TOKEN, json!({"month": "2027-02", "reason": "Late credit note"})).await;
    let reopened = reopened.expect(200);
    assert_eq!(reopened["closed_through"], "2027-01");
    assert_eq!(reopened["reason"], "Late credit note");
    assert_eq!(report(&app, "from=2027-02&to=2027-02").await["2027-02"]["closed"], false);
    let audit = app.get("/v1/audit?aggregate_type=Books&limit=100", ADMIN_TOKEN).await.expect(200).clone();
    let entries = audit["data"].as_array().unwrap().clone();
    assert!(
        entries.iter().any(|e| e["event_type"] == "MonthReopened" && e["summary"].as_str().unwrap().contains("Late credit note")),
        "the reopen is audited: {entries:?}"
    );
    app.post("/v1/admin/revenue/close", ADMIN_TOKEN, json!({"month": "2027-02"})).await.expect(200);
    // The books replay like any aggregate: after the second close, both months; after the reopen, January.
    for (version, closed) in [(2, json!(["2027-01", "2027-02"])), (3, json!(["2027-01"])), (4, json!(["2027-01", "2027-02"]))] {
        let replayed = app.get(&format!("/v1/aggregates/Books/revenue?version={version}"), ADMIN_TOKEN).await;
        assert_eq!(replayed.expect(200)["state"]["closed"], closed, "version {version}");
    }
    app.get("/v1/aggregates/Books/revenue", &t.key).await.expect_error(404, "NOT_FOUND");

    // The journal as CSV: the same lines.
    let csv = app
        .request(reqwest::Method::GET, "/v1/admin/revenue/journal?month=2027-03", Some(ADMIN_TOKEN))
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    let mut rows = text.lines();
    assert_eq!(rows.next(), Some("date,account,debit,credit,invoice_id,tenant_id,memo"));
    assert_eq!(rows.count(), balanced_journal(&app, "2027-03").await.len());

    // A rebuild gives the same books, to the cent, closed months included.
    let books = app.get("/v1/admin/revenue?from=2027-01&to=2027-05", ADMIN_TOKEN).await.expect(200).clone();
    let schedules = [schedule(&app, &first, 0).await, schedule(&app, &second, 0).await];
    rebuild(&app, "revenue").await;
    assert_eq!(app.get("/v1/admin/revenue?from=2027-01&to=2027-05", ADMIN_TOKEN).await.expect(200).clone(), books);
    assert_eq!([schedule(&app, &first, 0).await, schedule(&app, &second, 0).await], schedules);
}

/// Every invoice (admin: all tenants), oldest page first.
async fn all_invoices(app: &TestApp) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/invoices?limit=100&cursor={c}"),
            None => "/v1/invoices?limit=100".to_owned(),
        };
        let page = app.get(&path, ADMIN_TOKEN).await.expect(200).clone();
        all.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) if page["has_more"] == true => cursor = Some(next.to_owned()),
            _ => return all,
        }
    }
}

/// A year of generated history (the demo, 200 tenants: sign-ups on every plan and period, trials, seats,
/// coupons, usage over the allowance and late, upgrades and downgrades, cancellations, credit
/// notes), plus voids: every month satisfies the deferred identity, every schedule sums to what
/// its invoice billed net of credit notes and voids, the journal balances per invoice and per
/// month, and a rebuild gives the same books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_generated_year_the_books_balance_and_every_schedule_sums_to_what_was_billed() {
    let start = chrono::Utc::now() - chrono::Duration::days(365);
    let app = e2e::spawn_app_with(move |c| {
        c.test_clock = true;
        c.test_clock_start = Some(start);
        c.billing_interval = Duration::from_secs(24 * 3600);
    })
    .await;
    let made =
        api::demo::run(&app.state, api::demo::DemoOptions { seed: 11, tenants: 200, webhook_url: None }).await.expect("the demo runs");
    assert!(made.credit_notes > 0 && made.plan_changes > 0 && made.cancellations > 0, "{made:?}");
    // Void some of the invoices still open.
    let open: Vec<String> =
        all_invoices(&app).await.iter().filter(|i| i["status"] == "open").map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    assert!(open.len() >= 5, "open invoices to void: {}", open.len());
    for id in open.iter().step_by(open.len() / 5) {
        app.post(&format!("/v1/invoices/{id}/void"), ADMIN_TOKEN, json!({})).await.expect(200);
    }

    let invoices = all_invoices(&app).await;
    assert!(invoices.len() >= 500, "a year of invoices: {}", invoices.len());
    let (mut billed, mut credited_notes) = (Decimal::ZERO, Decimal::ZERO);
    let mut kinds = std::collections::BTreeSet::new();
    for invoice in &invoices {
        let id = invoice["id"].as_str().unwrap();
        let subtotal = d(&invoice["subtotal"]);
        let notes: Decimal = invoice["credit_notes"].as_array().unwrap().iter().map(|n| d(&n["subtotal"])).sum();
        let net = if invoice["status"] == "void" { Decimal::ZERO } else { subtotal - notes };
        let schedule = app.get(&format!("/v1/admin/revenue/invoices/{id}"), ADMIN_TOKEN).await.expect(200).clone();
        let mut recognized = Decimal::ZERO;
        for line in schedule["lines"].as_array().unwrap() {
            kinds.insert(line["kind"].as_str().unwrap().to_owned());
            let months: Decimal = line["schedule"].as_array().unwrap().iter().map(|m| d(&m["amount"])).sum();
            assert_eq!(months, d(&line["amount"]) - d(&line["credited"]), "a line's months sum to it net of credits: {schedule}");
            recognized += months;
        }
        assert_eq!(recognized, net, "invoice {id}'s schedule sums to what it billed net of credit notes and voids: {schedule}");
        billed += subtotal;
        credited_notes += subtotal - net;
    }
    for kind in ["plan", "proration", "overage", "discount"] {
        assert!(kinds.contains(kind), "the history has {kind} lines: {kinds:?}");
    }

    // Every month: the identity (checked by `report`), the journal balanced; all billed is all
    // recognized once every schedule has elapsed.
    let first = chrono::Datelike::year(&start);
    let from = format!("{first}-{:02}", chrono::Datelike::month(&start));
    let books = report(&app, &format!("from={from}&to={}-12", first + 2)).await;
    let total_billed: Decimal = books.values().map(|m| d(&m["billed"])).sum();
    assert_eq!(total_billed, billed - credited_notes, "billed is the subtotals net of credit notes and voids");
    let last = books.values().last().unwrap();
    assert_eq!(d(&last["deferred_closing"]), Decimal::ZERO, "everything billed is recognized by the end: {last}");
    for month in books.keys().filter(|m| books[*m]["billed"] != "0.00" || books[*m]["recognized"] != "0.00") {
        balanced_journal(&app, month).await;
    }

    let before = app.get(&format!("/v1/admin/revenue?from={from}&to={}-12", first + 2), ADMIN_TOKEN).await.expect(200).clone();
    rebuild(&app, "revenue").await;
    let after = app.get(&format!("/v1/admin/revenue?from={from}&to={}-12", first + 2), ADMIN_TOKEN).await.expect(200).clone();
    assert_eq!(after, before, "a rebuild gives the same books");
}
