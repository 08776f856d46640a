//! The operator's page `/admin` (OP-16, OP-17, OP-19 in docs/requirements.md §10) in real
//! headless Chromium, on the system clock (the live view samples once a real second): a wrong
//! token, logging in, creating and editing a sale through the form, watching it go live and
//! sell under a load this test generates, cancelling it, downloading its orders, logging out;
//! and the page on a phone-sized screen driven by the keyboard. Screenshots land in
//! `target/screenshots/admin-*.png` (copied to docs/screenshots).

use super::harness::*;
use fantoccini::Locator;
use fantoccini::key::Key;
use flashsale_core::SystemClock;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;

/// Generous: samples arrive once a second, on two cores shared with Chromium.
const PATIENCE: Duration = Duration::from_secs(30);

/// What the operator's page shows, read in one go.
const VIEW: &str = r##"
    const $ = (id) => document.getElementById(id);
    const shown = (id) => !$(id).hidden;
    const num = (id) => { const t = $(id).textContent.replace(/,/g, ""); return /^\d+(\.\d+)?$/.test(t) ? Number(t) : null; };
    return {
      view: document.body.dataset.view,
      stored: sessionStorage.getItem("flashsale:admin-token"),
      login_error: shown("login-error") ? $("login-error").textContent : "",
      editor: shown("editor"),
      form_error: shown("form-error") ? $("form-error").textContent : "",
      stock_error: shown("stock-error") ? $("stock-error").textContent : "",
      stock_invalid: $("f-stock").getAttribute("aria-invalid"),
      live: shown("live"),
      name: $("live-name").textContent,
      badge: $("live-badge").textContent,
      list_badges: Array.from(document.querySelectorAll("#sales .badge")).map((b) => b.textContent),
      list_left: (document.querySelector("#sales .left") || {}).textContent || "",
      sold: num("stat-sold"), sold_of: $("stat-sold-of").textContent,
      available: num("stat-available"), attempts: num("stat-attempts"), orders: num("stat-orders"),
      already: $("rej-already_purchased") ? num("rej-already_purchased") : null,
      p50: num("stat-p50"), p99: num("stat-p99"),
      points: Number($("chart").dataset.points),
      line: ($("remaining-line") || { getAttribute: () => "" }).getAttribute("points") || "",
      bars: document.querySelectorAll("#chart .bar").length,
      waitlist_shown: shown("waitlist-stat"),
      confirm: shown("confirm-cancel"),
      summary: shown("summary") ? $("summary-list").textContent : "",
      conn: $("conn").textContent,
      focus: document.activeElement ? document.activeElement.id : "",
      overflow: document.documentElement.scrollWidth - window.innerWidth,
      csv: window.__csv === undefined ? null : window.__csv,
    };
"##;

/// Keeps the text of every Blob the page turns into a download link, so the test can read the
/// CSV the page fetched (with the token) and saved.
const CAPTURE_DOWNLOADS: &str = r#"
    window.__csv = null;
    const real = URL.createObjectURL.bind(URL);
    URL.createObjectURL = (blob) => { blob.text().then((t) => { window.__csv = t; }); return real(blob); };
"#;

impl Browser {
    async fn view(&self) -> Value {
        self.js(VIEW).await
    }

    /// Polls the page until `ready` holds, or fails naming `what` (with a screenshot).
    async fn wait_view(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let view = self.view().await;
            if ready(&view) {
                return view;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("failed-admin-{}", what.replace(' ', "-")))
                    .await;
                panic!("the operator's page did not reach `{what}`; it shows {view:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replaces the value of input `id` by typing `text`.
    async fn fill(&self, id: &str, text: &str) {
        let input = self.client.find(Locator::Id(id)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.replace_nanosecond(0).unwrap().format(&Rfc3339).unwrap()
}

/// `n` buyers at once, outside the browser; returns how many were confirmed.
async fn herd(app: &TestApp, sale: u64, from: usize, n: usize) -> usize {
    let buyers: Vec<String> = (from..from + n)
        .map(|i| format!("buyer-{i}@example.com"))
        .collect();
    futures_util::future::join_all(buyers.iter().map(|buyer| app.buy(sale, buyer)))
        .await
        .iter()
        .filter(|answer| answer["code"] == "confirmed")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op16_op17_op19_the_operator_logs_in_creates_watches_a_sale_sell_cancels_and_downloads() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_on(Arc::new(SystemClock), None).await;
    let browser = open_browser(1280, 1100).await;
    browser
        .client
        .goto(&format!("{}/admin", app.base))
        .await
        .unwrap();
    browser.js(CAPTURE_DOWNLOADS).await;
    let view = browser.view().await;
    assert_eq!(view["view"], "login");
    assert_eq!(view["focus"], "token", "the token field has the focus");
    browser.screenshot("admin-01-login").await;

    // OP-16: a wrong token is refused with a clear message, and nothing is kept.
    browser.fill("token", "not-the-admin-token").await;
    browser.click("log-in").await;
    let view = browser
        .wait_view("wrong token message", |v| v["login_error"] != "")
        .await;
    assert!(
        s(&view, "login_error").contains("Wrong admin token"),
        "{view:#}"
    );
    assert_eq!(view["stored"], Value::Null, "a refused token is not stored");
    assert_eq!(view["view"], "login");
    browser.screenshot("admin-02-wrong-token").await;

    browser.fill("token", TOKEN).await;
    browser.click("log-in").await;
    let view = browser.wait_view("logged in", |v| v["view"] == "app").await;
    assert_eq!(
        view["stored"], TOKEN,
        "kept in sessionStorage, for this tab"
    );

    // OP-17: create through the form; the API's validation message lands on its field.
    browser.click("new-sale").await;
    let now = app.clock.now();
    let starts = now + time::Duration::seconds(4);
    browser.fill("f-name", "Launch socks").await;
    browser.fill("f-starts_at", &rfc3339(starts)).await;
    browser
        .fill("f-ends_at", &rfc3339(now + time::Duration::minutes(10)))
        .await;
    browser.fill("f-stock", "0").await;
    browser.fill("f-per_user_limit", "1").await;
    // OP-12, OP-14: the product through the same form; the image goes up once the sale exists.
    browser
        .fill("f-description", "Warm wool socks, one size")
        .await;
    browser.fill("f-price_minor", "1299").await;
    browser.fill("f-currency", "EUR").await;
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/product.png");
    browser
        .client
        .find(Locator::Id("f-image"))
        .await
        .unwrap()
        .send_keys(image.to_str().unwrap())
        .await
        .unwrap();
    browser.click("save").await;
    let view = browser
        .wait_view("stock error", |v| v["stock_error"] != "")
        .await;
    assert!(
        s(&view, "stock_error").starts_with("stock must be"),
        "{view:#}"
    );
    assert_eq!(view["stock_invalid"], "true");
    assert_eq!(view["focus"], "f-stock", "the field in error has the focus");
    assert!(view["editor"].as_bool().unwrap());
    browser.screenshot("admin-03-validation-error").await;

    browser.fill("f-stock", "40").await;
    browser.click("save").await;
    let view = browser
        .wait_view("created", |v| {
            v["live"] == true && v["name"] == "Launch socks"
        })
        .await;
    assert!(!view["editor"].as_bool().unwrap());
    assert_eq!(view["badge"], "upcoming");
    assert_eq!(view["list_badges"][0], "upcoming");
    let sale = app
        .http
        .get(format!("{}/api/admin/sales?limit=1", app.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["sales"][0]["sale_id"]
        .as_u64()
        .unwrap();
    let product = app
        .http
        .get(format!("{}/api/sales/{sale}", app.base))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(product["description"], "Warm wool socks, one size");
    assert_eq!(product["price_minor"], 1299);
    assert_eq!(product["currency"], "EUR");
    let image_url = product["image_url"].as_str().expect("the uploaded image");
    let served = app
        .http
        .get(format!("{}{image_url}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(
        served.bytes().await.unwrap().as_ref(),
        std::fs::read(&image).unwrap().as_slice(),
        "the page uploaded the file's bytes"
    );

    // The edit form: raising the stock (allowed before and after the start).
    browser.click("edit").await;
    browser.fill("f-stock", "50").await;
    browser.click("save").await;
    browser
        .wait_view("edited", |v| {
            v["editor"] == false && v["sold_of"] == "of 50"
        })
        .await;

    // OP-19: it goes live on its own, then sells under a herd in waves; counters and chart move.
    let view = browser
        .wait_view("active", |v| v["badge"] == "active")
        .await;
    assert_eq!(view["list_badges"][0], "active");
    assert_eq!(
        view["waitlist_shown"], false,
        "no waitlist figure without checkout"
    );
    let mut sold = 0;
    let mut before = view;
    for wave in 0..3 {
        sold += herd(&app, sale, wave * 10, 10).await;
        let points = before["points"].as_u64().unwrap();
        let after = browser
            .wait_view("counters move", |v| {
                v["sold"] == sold && v["points"].as_u64().unwrap() > points
            })
            .await;
        assert!(after["attempts"].as_u64() > before["attempts"].as_u64());
        assert_eq!(after["orders"], sold);
        assert_eq!(after["available"], 50 - sold as u64);
        before = after;
    }
    assert_eq!(sold, 30);
    // A buyer trying again: a rejection by reason.
    assert_eq!(
        app.buy(sale, "buyer-0@example.com").await["code"],
        "already_purchased"
    );
    let view = browser
        .wait_view("rejection counted", |v| v["already"] == 1)
        .await;
    assert!(view["p50"].as_f64().unwrap() > 0.0, "{view:#}");
    assert!(view["p99"].as_f64().unwrap() >= view["p50"].as_f64().unwrap());
    assert!(
        view["bars"].as_u64().unwrap() >= 1,
        "sold-per-second bars drawn"
    );
    let line_points = s(&view, "line").split(' ').count();
    assert_eq!(line_points as u64, view["points"].as_u64().unwrap());
    assert!(
        s(&view, "list_left").starts_with(&format!("{} of 50", 50 - sold)),
        "the list follows the stock: {view:#}"
    );
    browser.js("window.scrollTo(0, 0)").await;
    browser.screenshot("admin-04-live").await;

    // OP-17: the orders CSV, fetched with the token and saved through a Blob link.
    browser.click("csv-orders").await;
    let view = browser
        .wait_view("csv downloaded", |v| v["csv"].is_string())
        .await;
    let csv = s(&view, "csv");
    let mut rows = csv.lines();
    assert_eq!(rows.next(), Some("order_id,user_id,quantity,created_at"));
    assert_eq!(rows.count(), 30, "{csv}");
    assert!(csv.contains("buyer-7@example.com"));

    // OP-9, OP-17: the stock ledger's CSV the same way: created with 40, raised by 10, then
    // one entry per order; replaying the deltas gives what is left.
    browser.js("window.__csv = null").await;
    browser.click("csv-ledger").await;
    let view = browser
        .wait_view("ledger csv downloaded", |v| v["csv"].is_string())
        .await;
    let csv = s(&view, "csv");
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some("at,cause,order_id,available_delta,held_delta,sold_delta,sale_change_id")
    );
    let entries: Vec<Vec<&str>> = rows.map(|row| row.split(',').collect()).collect();
    assert_eq!(entries[0][1], "created", "{csv}");
    assert_eq!(
        entries.iter().filter(|e| e[1] == "order").count(),
        30,
        "{csv}"
    );
    let available: i64 = entries.iter().map(|e| e[3].parse::<i64>().unwrap()).sum();
    assert_eq!(available, 50 - 30, "{csv}");

    // OP-17: cancel, with a confirm step; the badge and the summary follow.
    browser.click("cancel-sale").await;
    let view = browser.wait_view("confirm", |v| v["confirm"] == true).await;
    assert_eq!(
        view["focus"], "confirm-cancel-no",
        "the safe choice has the focus"
    );
    assert_eq!(
        view["badge"], "active",
        "nothing is cancelled before the confirmation"
    );
    browser.screenshot("admin-05-confirm-cancel").await;
    browser.click("confirm-cancel-yes").await;
    let view = browser
        .wait_view("cancelled with summary", |v| {
            v["badge"] == "ended · cancelled" && v["summary"] != ""
        })
        .await;
    assert_eq!(view["list_badges"][0], "ended · cancelled");
    assert!(s(&view, "summary").contains("cancelled"), "{view:#}");
    assert!(s(&view, "summary").contains("30 of 50"), "{view:#}");
    browser
        .js("document.getElementById('summary').scrollIntoView({block: 'end'})")
        .await;
    browser.screenshot("admin-06-cancelled-summary").await;

    // Log out: the token is gone from the tab.
    browser.click("log-out").await;
    let view = browser
        .wait_view("logged out", |v| v["view"] == "login")
        .await;
    assert_eq!(view["stored"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op19_the_operator_page_works_on_a_phone_sized_screen_with_the_keyboard() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_on(Arc::new(SystemClock), None).await;
    let now = app.clock.now();
    let created = app
        .http
        .post(format!("{}/api/admin/sales", app.base))
        .bearer_auth(TOKEN)
        .json(&json!({
            "name": "Phone check", "stock": 20,
            "starts_at": rfc3339(now - time::Duration::seconds(1)),
            "ends_at": rfc3339(now + time::Duration::minutes(10)),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let sale = created.json::<Value>().await.unwrap()["sale_id"]
        .as_u64()
        .unwrap();
    herd(&app, sale, 0, 5).await;

    let browser = open_browser(390, 844).await;
    browser
        .client
        .goto(&format!("{}/admin", app.base))
        .await
        .unwrap();
    // The keyboard alone: the token field has the focus, Enter submits.
    let token = browser.client.active_element().await.unwrap();
    token
        .send_keys(&format!("{TOKEN}{}", char::from(Key::Enter)))
        .await
        .unwrap();
    browser
        .wait_view("the list", |v| {
            v["view"] == "app" && v["list_badges"][0] == "active"
        })
        .await;
    // The sale in the list is a button: Enter opens it.
    let item = browser
        .client
        .find(Locator::Css("#sales .sale-item"))
        .await
        .unwrap();
    item.send_keys(&char::from(Key::Enter).to_string())
        .await
        .unwrap();
    let view = browser
        .wait_view("live on a phone", |v| {
            v["sold"] == 5 && v["points"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(
        view["focus"], "live-name",
        "the opened sale's heading has the focus"
    );
    // More buyers while the phone watches: the figures follow there too.
    herd(&app, sale, 5, 5).await;
    let view = browser
        .wait_view("selling on a phone", |v| {
            v["sold"] == 10 && v["p50"].is_number()
        })
        .await;
    assert!(
        view["overflow"].as_i64().unwrap() <= 0,
        "nothing is wider than the screen: {view:#}"
    );
    browser.screenshot("admin-07-phone-live-top").await;
    browser
        .js("document.getElementById('chart').scrollIntoView({block: 'center'})")
        .await;
    browser.screenshot("admin-08-phone-live-chart").await;
}
