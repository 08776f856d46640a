//! The buyer's page (FE-1..FE-7, docs/requirements.md#5-the-web-page) in real headless Chromium.
//!
//! Each test starts the real service in-process on port 0, most with a [`ManualClock`] (so the
//! start and end instants are moved to, never slept towards; one runs on the system clock),
//! starts `chromedriver` on a free port and drives Debian's Chromium through it with
//! fantoccini. A second client (reqwest) plays the rest of the crowd. Screenshots of every
//! state land in `target/screenshots/`.
//!
//! Chromium and chromedriver are required: when they are missing the tests fail with the
//! command that installs them (`apt-get install -y chromium chromium-driver`); they never skip.
//! `CHROMIUM` and `CHROMEDRIVER` override the default paths (`/usr/bin/...`).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use fantoccini::Locator;
use flashsale_core::{Clock, ManualClock, SystemClock};
use flashsale_server::config::{IdentityMode, IdentitySettings};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[path = "browser/admin.rs"]
mod admin;
#[path = "browser/harness.rs"]
mod harness;

use harness::*;

/// FE-7: every change must reach the page within this.
const LIVE: Duration = Duration::from_secs(2);

/// Wraps `fetch` so the test can count the page's purchase requests, record their
/// `Idempotency-Key`s, hold them back (not sent until released) to look at the pending state or
/// let the world change first, or lose the next answer on its way back (`__loseAnswer`).
const INSTRUMENT_FETCH: &str = r#"
    if (!window.__posts) {
      window.__posts = 0; window.__hold = false; window.__held = []; window.__keys = [];
      window.__loseAnswer = false;
      const real = window.fetch.bind(window);
      window.fetch = (url, init) => {
        if (!init || init.method !== "POST") return real(url, init);
        window.__posts++;
        window.__keys.push((init.headers || {})["idempotency-key"] || null);
        if (window.__loseAnswer) {
          window.__loseAnswer = false;
          return real(url, init).then(() => { throw new TypeError("connection lost"); });
        }
        if (!window.__hold) return real(url, init);
        return new Promise((ok, fail) => window.__held.push(() => real(url, init).then(ok, fail)));
      };
      window.__release = () => { window.__hold = false; window.__held.splice(0).forEach((go) => go()); };
    }
"#;

/// What the page shows, read in one go.
const SNAPSHOT: &str = r#"
    const $ = (id) => document.getElementById(id);
    const r = $("result");
    return {
      state: document.body.dataset.state,
      ended_reason: document.body.dataset.endedReason || "",
      label: $("state").textContent,
      countdown: $("countdown").textContent,
      remaining: $("stock-remaining").textContent,
      bar: $("stock-bar").value,
      ended: $("ended").hidden ? "" : $("ended").textContent,
      buy_disabled: $("buy").disabled,
      buy_busy: $("buy").getAttribute("aria-busy"),
      buy_text: $("buy").textContent,
      result_class: r.className,
      result: r.textContent,
      field_error: $("user-id-error").hidden ? "" : $("user-id-error").textContent,
      invalid: $("user-id").getAttribute("aria-invalid"),
      focus: document.activeElement ? document.activeElement.id : "",
      conn: $("conn").textContent,
      posts: window.__posts || 0,
      keys: window.__keys || [],
      marker: window.__marker || null,
    };
"#;

impl Browser {
    async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap();
        self.js(INSTRUMENT_FETCH).await;
    }

    async fn snapshot(&self) -> Value {
        self.js(SNAPSHOT).await
    }

    /// Polls the page until `ready` holds for its snapshot, or fails naming `what`.
    async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let snap = self.snapshot().await;
            if ready(&snap) {
                return snap;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("failed-{}", what.replace(' ', "-")))
                    .await;
                panic!("page did not reach `{what}` within {within:?}; it shows {snap:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn type_id(&self, id: &str) {
        let input = self.client.find(Locator::Id("user-id")).await.unwrap();
        input.clear().await.unwrap();
        // `clear` fires no input event; the page re-reads the field on `input`.
        self.js("document.getElementById('user-id').dispatchEvent(new Event('input'))")
            .await;
        if !id.is_empty() {
            input.send_keys(id).await.unwrap();
        }
    }
}

/// "00:01:29" -> 89 seconds.
fn seconds(countdown: &str) -> i64 {
    countdown
        .split(':')
        .map(|p| {
            p.trim()
                .parse::<i64>()
                .unwrap_or_else(|_| panic!("countdown {countdown:?}"))
        })
        .fold(0, |acc, p| acc * 60 + p)
}

// ---------------------------------------------------------------------------------------------
// FE-1..FE-7
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_counts_down_from_the_server_clock_then_turns_active_without_reload() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sale = app.create_sale("Countdown keyboard", 90, 600, 10).await;
    let browser = open_browser(1280, 900).await;

    // FE-1: upcoming, counting down the 90 s the server says (the machine's clock is years off).
    browser.open(&app.page(sale)).await;
    let first = browser
        .wait_for("upcoming", LIVE, |p| p["state"] == "upcoming")
        .await;
    let left = seconds(&s(&first, "countdown"));
    assert!(
        (80..=90).contains(&left),
        "countdown shows {left} s: {first:#}"
    );
    assert_eq!(s(&first, "label"), "Coming soon");
    // FE-3: nothing to buy yet.
    assert_eq!(first["buy_disabled"], true);
    // It ticks by itself, although the server clock stands still.
    browser
        .wait_for("the countdown ticking", Duration::from_millis(2500), |p| {
            p["countdown"] != first["countdown"]
        })
        .await;
    browser.screenshot("01-upcoming-countdown").await;

    // FE-7: the start instant reaches the open page within 2 s, with no reload.
    browser.js("window.__marker = 'same page'").await;
    app.set_clock(90);
    let active = browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;
    assert_eq!(active["marker"], "same page", "the page reloaded");
    assert_eq!(s(&active, "label"), "On sale now");
    assert_eq!(s(&active, "remaining"), "10");
    assert_eq!(active["buy_disabled"], false);
    browser.screenshot("02-active").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_real_clock_the_page_turns_active_at_the_start_instant() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_on(Arc::new(SystemClock), None).await;
    let sale = app.create_sale("Real clock", 4, 600, 10).await;
    let starts_at: Value = app
        .http
        .get(format!("{}/api/sales/{sale}", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let starts_at =
        OffsetDateTime::parse(starts_at["starts_at"].as_str().unwrap(), &Rfc3339).unwrap();
    let browser = open_browser(1280, 900).await;
    browser.open(&app.page(sale)).await;
    let first = browser
        .wait_for("upcoming", LIVE, |p| p["state"] == "upcoming")
        .await;
    assert!(
        (1..=4).contains(&seconds(&s(&first, "countdown"))),
        "{first:#}"
    );
    browser.js("window.__marker = 'same page'").await;

    // The countdown runs out and the page turns active by itself, close to the instant.
    let active = browser
        .wait_for("active", Duration::from_secs(8), |p| p["state"] == "active")
        .await;
    let late = OffsetDateTime::now_utc() - starts_at;
    assert!(
        late < time::Duration::seconds(2),
        "active {late} after the start"
    );
    assert_eq!(active["marker"], "same page", "the page reloaded");
    assert_eq!(active["buy_disabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_on_the_page_follows_purchases_by_other_buyers_within_two_seconds() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sale = app.create_sale("Live stock", 0, 600, 5).await;
    let browser = open_browser(1280, 900).await;

    // Pushed over the event stream (FE-2, FE-7) ...
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("live with 5 left", LIVE, |p| {
            p["remaining"] == "5" && p["conn"] == "Live"
        })
        .await;
    for (n, user) in ["crowd-1", "crowd-2"].into_iter().enumerate() {
        assert_eq!(app.buy(sale, user).await["code"], "confirmed");
        let left = (4 - n).to_string();
        let snap = browser
            .wait_for(&format!("{left} left"), LIVE, |p| {
                p["remaining"] == left.as_str()
            })
            .await;
        assert_eq!(snap["bar"].as_f64(), Some((4 - n) as f64));
    }
    browser.screenshot("03-active-stock-follows").await;

    // ... and by polling when the stream is not available.
    browser.open(&format!("{}&live=poll", app.page(sale))).await;
    browser
        .wait_for("polling with 3 left", LIVE, |p| p["remaining"] == "3")
        .await;
    assert_eq!(app.buy(sale, "crowd-3").await["code"], "confirmed");
    let snap = browser
        .wait_for("2 left by polling", LIVE, |p| p["remaining"] == "2")
        .await;
    assert_eq!(s(&snap, "conn"), "Updating every second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_blank_id_is_refused_on_the_page_and_sends_no_request() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sale = app.create_sale("Validation", 0, 600, 5).await;
    let browser = open_browser(1280, 900).await;
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;

    for blank in ["", "    "] {
        browser.type_id(blank).await;
        browser.click("buy").await;
        let snap = browser
            .wait_for("the inline message", LIVE, |p| p["field_error"] != "")
            .await;
        assert!(
            s(&snap, "field_error").contains("enter your buyer id"),
            "{snap:#}"
        );
        assert_eq!(snap["invalid"], "true");
        assert_eq!(snap["focus"], "user-id", "focus goes back to the field");
        assert_eq!(snap["posts"], 0, "the page sent a purchase for {blank:?}");
    }
    browser.screenshot("04-empty-id-refused").await;
    assert_eq!(app.attempts(sale).await, 0, "the server saw an attempt");

    // Typing an id clears the message.
    browser.type_id("someone").await;
    let snap = browser.snapshot().await;
    assert_eq!(snap["field_error"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buy_now_is_disabled_while_not_active_and_while_a_request_is_in_flight() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sale = app.create_sale("One click", 30, 600, 5).await;
    let browser = open_browser(1280, 900).await;
    browser.open(&app.page(sale)).await;
    browser.type_id("patient@example.com").await;
    let snap = browser
        .wait_for("upcoming", LIVE, |p| p["state"] == "upcoming")
        .await;
    assert_eq!(snap["buy_disabled"], true, "enabled before the start");

    app.set_clock(30);
    browser
        .wait_for("enabled once active", LIVE, |p| p["buy_disabled"] == false)
        .await;

    // FE-3: hold the request back; the button shows the pending state and refuses more.
    browser.js("window.__hold = true").await;
    browser.click("buy").await;
    let pending = browser
        .wait_for("pending", LIVE, |p| p["buy_busy"] == "true")
        .await;
    assert_eq!(pending["buy_disabled"], true);
    assert_eq!(s(&pending, "buy_text"), "Buying…");
    assert_eq!(s(&pending, "result_class"), "result result-pending");
    browser.screenshot("05-pending").await;
    // Even a submit that bypasses the disabled button is ignored while one is in flight.
    browser
        .js("const f = document.getElementById('buy-form'); f.requestSubmit(); f.requestSubmit();")
        .await;
    assert_eq!(browser.snapshot().await["posts"], 1);

    browser.js("window.__release()").await;
    let done = browser
        .wait_for("confirmed", LIVE, |p| {
            p["result_class"] == "result result-confirmed"
        })
        .await;
    assert_eq!(done["posts"], 1);
    assert_eq!(
        app.attempts(sale).await,
        1,
        "exactly one attempt reached the server"
    );

    // Ended: disabled again.
    app.set_clock(630);
    let ended = browser
        .wait_for("ended", LIVE, |p| p["state"] == "ended")
        .await;
    assert_eq!(ended["buy_disabled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_purchase_outcome_renders_its_own_message() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sale = app.create_sale("Outcomes", 0, 600, 3).await;
    let browser = open_browser(1280, 900).await;
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;
    let mut seen = Vec::new();

    // confirmed, with the order id the server recorded.
    browser.type_id("alice@example.com").await;
    browser.click("buy").await;
    let confirmed = browser
        .wait_for("confirmed", LIVE, |p| {
            p["result_class"] == "result result-confirmed"
        })
        .await;
    let order_id = s(
        &app.orders_of(sale, "alice@example.com").await["orders"][0],
        "order_id",
    );
    assert!(s(&confirmed, "result").contains(&order_id), "{confirmed:#}");
    // FE-2: the pushed stock follows the purchase (and the screenshot shows both agreeing).
    browser
        .wait_for("stock after the purchase", LIVE, |p| p["remaining"] == "2")
        .await;
    browser.screenshot("06-confirmed").await;
    seen.push(confirmed);

    // FE-6: the page does not offer to buy again for that id, even after a reload.
    let again = browser.snapshot().await;
    assert_eq!(
        (again["buy_disabled"].clone(), s(&again, "buy_text")),
        (json!(true), "Already yours".into())
    );
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;
    browser.type_id("alice@example.com").await;
    let reloaded = browser.snapshot().await;
    assert_eq!(
        reloaded["buy_disabled"], true,
        "offered to buy again: {reloaded:#}"
    );

    // already_purchased: bob bought elsewhere (another device), then tries here.
    assert_eq!(app.buy(sale, "bob").await["code"], "confirmed");
    browser.type_id("bob").await;
    browser.click("buy").await;
    let already = browser
        .wait_for("already purchased", LIVE, |p| {
            p["result_class"] == "result result-already-purchased"
        })
        .await;
    browser.screenshot("07-already-purchased").await;
    seen.push(already);

    // sold_out: carol presses Buy Now while one unit is left, dave gets it first.
    browser.type_id("carol").await;
    browser.js("window.__hold = true").await;
    browser.click("buy").await;
    browser
        .wait_for("pending", LIVE, |p| p["buy_busy"] == "true")
        .await;
    assert_eq!(app.buy(sale, "dave").await["code"], "confirmed");
    browser.js("window.__release()").await;
    let sold_out = browser
        .wait_for("sold out", LIVE, |p| {
            p["result_class"] == "result result-sold-out" && p["state"] == "ended"
        })
        .await;
    browser.screenshot("08-sold-out").await;
    seen.push(sold_out);

    // sale_not_active: erin presses Buy Now just as time runs out on another sale.
    let late = app.create_sale("Last minute", 0, 600, 5).await;
    browser.open(&app.page(late)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;
    browser.type_id("erin").await;
    browser.js("window.__hold = true").await;
    browser.click("buy").await;
    browser
        .wait_for("pending", LIVE, |p| p["buy_busy"] == "true")
        .await;
    app.set_clock(600);
    browser.js("window.__release()").await;
    let not_active = browser
        .wait_for("sale not active", LIVE, |p| {
            p["result_class"] == "result result-sale-not-active"
        })
        .await;
    browser.screenshot("09-sale-not-active").await;
    seen.push(not_active);

    // FE-4: four different classes, four different messages.
    for (i, a) in seen.iter().enumerate() {
        for b in &seen[i + 1..] {
            assert_ne!(a["result_class"], b["result_class"]);
            assert_ne!(a["result"], b["result"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_sale_says_whether_it_sold_out_or_ran_out_of_time() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sold = app.create_sale("Sells out", 0, 600, 1).await;
    let timed = app.create_sale("Runs out of time", 0, 300, 1).await;
    let browser = open_browser(1280, 900).await;

    browser.open(&app.page(sold)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;
    assert_eq!(app.buy(sold, "fast").await["code"], "confirmed");
    let snap = browser
        .wait_for("ended by sold out", LIVE, |p| p["state"] == "ended")
        .await;
    assert_eq!(snap["ended_reason"], "sold_out");
    assert_eq!(s(&snap, "label"), "Sold out");
    assert!(s(&snap, "ended").contains("have been sold"), "{snap:#}");
    browser.screenshot("10-ended-sold-out").await;

    browser.open(&app.page(timed)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;
    app.set_clock(300);
    let snap = browser
        .wait_for("ended by time", LIVE, |p| p["state"] == "ended")
        .await;
    assert_eq!(snap["ended_reason"], "time");
    assert_eq!(s(&snap, "label"), "Sale over");
    assert!(s(&snap, "ended").contains("Time is up"), "{snap:#}");
    assert_eq!(snap["buy_disabled"], true);
    browser.screenshot("11-ended-time-up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_render_their_own_messages() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sale = app.create_sale("Errors", 0, 600, 5).await;
    let browser = open_browser(1280, 900).await;
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;

    // The server sheds and limits only under real overload; these answers are stood in for
    // by the browser's fetch, with the exact bodies of docs/api.md.
    let cases = [
        (
            "429",
            r#"new Response('{"code":"rate_limited","message":"slow down"}', {status: 429, headers: {"retry-after": "2"}})"#,
            "result result-rate-limited",
            "12-rate-limited",
        ),
        (
            "503",
            r#"new Response('{"code":"overloaded","message":"busy"}', {status: 503, headers: {"retry-after": "1"}})"#,
            "result result-unavailable",
            "13-unavailable",
        ),
        (
            "network",
            "Promise.reject(new TypeError('Failed to fetch'))",
            "result result-network-error",
            "14-network-error",
        ),
        (
            "limit",
            r#"new Response('{"code":"limit_exceeded","message":"limit","allowed":0,"orders":[]}', {status: 409})"#,
            "result result-limit-exceeded",
            "15-limit-exceeded",
        ),
    ];
    let mut texts = Vec::new();
    for (what, answer, class, shot) in cases {
        browser
            .js(&format!(
                "const real = window.fetch; window.fetch = (u, i) => {{ \
                   if (i && i.method === 'POST') {{ window.fetch = real; return Promise.resolve().then(() => {answer}); }} \
                   return real(u, i); }};"
            ))
            .await;
        browser.type_id(&format!("user-{what}")).await;
        browser.click("buy").await;
        let snap = browser
            .wait_for(what, LIVE, |p| p["result_class"] == class)
            .await;
        texts.push(s(&snap, "result"));
        browser.screenshot(shot).await;
        if matches!(what, "429" | "503") {
            // Told to come back later: the button rests for `Retry-After`, then returns.
            assert_eq!(snap["buy_disabled"], true, "{snap:#}");
            assert!(s(&snap, "buy_text").starts_with("Wait "), "{snap:#}");
            browser
                .wait_for(
                    "the button back after Retry-After",
                    Duration::from_secs(4),
                    |p| p["buy_disabled"] == false,
                )
                .await;
        } else {
            assert_eq!(
                snap["buy_disabled"], false,
                "a failed attempt may be retried"
            );
        }
    }
    assert!(texts[0].contains("wait 2 s"), "{texts:?}");
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 4, "messages must differ: {texts:?}");
    assert_eq!(app.attempts(sale).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_on_a_phone_sized_screen_with_the_keyboard_alone() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sale = app.create_sale("Phone", 0, 600, 5).await;
    let browser = open_browser(360, 740).await;
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;
    browser.screenshot("16-phone-active").await;

    let width = browser
        .js("return [window.innerWidth, document.documentElement.scrollWidth]")
        .await;
    assert_eq!(width[0], 360, "viewport {width}");
    assert!(
        width[1].as_u64().unwrap() <= 360,
        "horizontal scroll: {width}"
    );

    // Keyboard only: type the id, Tab reaches Buy Now, Enter buys.
    let input = browser.client.find(Locator::Id("user-id")).await.unwrap();
    input.send_keys("thumbs@example.com").await.unwrap();
    input.send_keys("\u{E004}").await.unwrap(); // Tab
    assert_eq!(browser.snapshot().await["focus"], "buy");
    browser
        .client
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E007}") // Enter
        .await
        .unwrap();
    // The answer and the pushed stock arrive independently: wait for both.
    browser
        .wait_for("confirmed, 4 left", LIVE, |p| {
            p["result_class"] == "result result-confirmed" && p["remaining"] == "4"
        })
        .await;
    browser.screenshot("17-phone-confirmed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_falls_back_to_polling_and_goes_live_again_after_the_server_returns() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut app = spawn_app().await;
    let sale = app.create_sale("Restart", 0, 600, 5).await;
    let browser = open_browser(1280, 900).await;
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("live", LIVE, |p| {
            p["conn"] == "Live" && p["remaining"] == "5"
        })
        .await;

    // The stream breaks (the service goes away): the page says so and keeps trying.
    app.stop().await;
    let offline = browser
        .wait_for("offline", Duration::from_secs(5), |p| {
            p["conn"] == "Connection lost, retrying…"
        })
        .await;
    assert_eq!(
        offline["state"], "active",
        "the last known state stays on screen"
    );
    browser.screenshot("18-connection-lost").await;

    // Back on the same port: the page picks up changes by itself, without a reload.
    browser.js("window.__marker = 'same page'").await;
    app.start().await;
    assert_eq!(app.buy(sale, "after-restart").await["code"], "confirmed");
    browser
        .wait_for("4 left after the restart", Duration::from_secs(5), |p| {
            p["remaining"] == "4"
        })
        .await;
    // The stream is reopened with backoff (at most 15 s between tries).
    let live = browser
        .wait_for("live again", Duration::from_secs(20), |p| {
            p["conn"] == "Live"
        })
        .await;
    assert_eq!(live["marker"], "same page");
    assert_eq!(app.buy(sale, "on-the-stream").await["code"], "confirmed");
    browser
        .wait_for("3 left over the stream", LIVE, |p| p["remaining"] == "3")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_gzipped_with_a_strong_etag_and_revalidates_with_304() {
    let app = spawn_app().await;
    let page = |encoding: &'static str| {
        app.http
            .get(format!("{}/", app.base))
            .header("accept-encoding", encoding)
    };

    let zipped = page("gzip, br").send().await.unwrap();
    assert_eq!(zipped.status(), 200);
    let h = zipped.headers().clone();
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        h["cache-control"],
        "public, max-age=60, stale-while-revalidate=300"
    );
    assert_eq!(h["vary"], "accept-encoding");
    let tag = h["etag"].to_str().unwrap().to_owned();
    assert!(tag.starts_with('"'), "a strong tag: {tag}");
    let gz_len = zipped.bytes().await.unwrap().len();

    let plain = page("identity").send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert_ne!(plain.headers()["etag"], tag.as_str());
    let html = plain.text().await.unwrap();
    assert!(
        html.len() < 48 * 1024 && gz_len < html.len() / 2,
        "{} / {gz_len}",
        html.len()
    );

    let again = page("gzip")
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], tag.as_str());
    assert!(again.bytes().await.unwrap().is_empty());
}

/// Issue 10: the page sends one `Idempotency-Key` per intended purchase. A retry after the
/// answer was lost reuses it, so the server replays the order instead of deciding again; the
/// next purchase (another buyer id) gets a fresh key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_the_same_purchase_reuses_its_idempotency_key() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sale = app.create_sale("One key per purchase", 0, 600, 5).await;
    let browser = open_browser(1280, 900).await;
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;
    browser.type_id("retry@example.com").await;
    // The order is confirmed on the server but the answer never reaches the page.
    browser.js("window.__loseAnswer = true").await;
    browser.click("buy").await;
    browser
        .wait_for("the lost answer", LIVE, |p| {
            p["result_class"] == "result result-network-error" && p["buy_disabled"] == false
        })
        .await;
    // The buyer presses Buy Now again: the same purchase, so the same key, and the server
    // replays the confirmed order (no second decision).
    browser.click("buy").await;
    let done = browser
        .wait_for("confirmed by the replay", LIVE, |p| {
            p["result_class"] == "result result-confirmed"
        })
        .await;
    let keys = done["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "{done:#}");
    assert!(keys[0].is_string(), "no key sent: {done:#}");
    assert_eq!(keys[0], keys[1], "the retry sent another key");
    assert_eq!(app.attempts(sale).await, 1, "the retry was decided again");
    let order_id = s(
        &app.orders_of(sale, "retry@example.com").await["orders"][0],
        "order_id",
    );
    assert!(s(&done, "result").contains(&order_id), "{done:#}");

    // Another buyer id is another purchase: a fresh key.
    browser.type_id("second@example.com").await;
    browser.click("buy").await;
    let second = browser
        .wait_for("second confirmed", LIVE, |p| {
            p["result_class"] == "result result-confirmed" && p["posts"] == 3
        })
        .await;
    let keys = second["keys"].as_array().unwrap();
    assert_ne!(keys[2], keys[1], "a new purchase reused the last key");
}

/// What the page says about who is signed in (jwt mode), and whether the id field shows.
const IDENTITY: &str = r#"
    const $ = (id) => document.getElementById(id);
    return {
      identity: document.body.dataset.identity,
      guest_field_hidden: $("guest-id").hidden,
      signed_in: $("signed-in").hidden ? "" : $("signed-in").textContent,
      hash: location.hash,
      kept: sessionStorage.getItem("flashsale:token") !== null,
    };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_jwt_mode_the_page_buys_with_the_shops_token_and_without_one_says_so() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // The shop's identity provider: a P-256 key, its public half in a JWKS file.
    let keys = tempfile::tempdir().unwrap();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    };
    let jwks = json!({ "keys": [{ "kty": "EC", "crv": "P-256", "kid": "shop-1",
        "x": b64(&point[1..33]), "y": b64(&point[33..]) }] });
    let jwks_path = keys.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("shop-1".into());
    let claims = json!({ "sub": "Shopper@Example.com", "exp": T0.unix_timestamp() + 3600 });
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &claims, &signing).unwrap();

    let manual = Arc::new(ManualClock::new(T0));
    let identity = IdentitySettings {
        mode: IdentityMode::Jwt,
        jwt_jwks_file: Some(jwks_path),
        ..IdentitySettings::default()
    };
    let app = spawn_app_identified(
        Arc::clone(&manual) as Arc<dyn Clock>,
        Some(manual),
        identity,
    )
    .await;
    let sale = app.create_sale("Members only", 0, 600, 5).await;
    let browser = open_browser(1280, 900).await;

    // Without a token: no id field, a clear message, and Buy Now disabled.
    browser.open(&app.page(sale)).await;
    let snap = browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;
    let who = browser.js(IDENTITY).await;
    assert_eq!(who["identity"], "jwt");
    assert_eq!(who["guest_field_hidden"], true, "{who:#}");
    assert!(s(&who, "signed_in").contains("not signed in"), "{who:#}");
    assert_eq!(snap["buy_disabled"], true, "{snap:#}");
    assert_eq!(snap["buy_text"], "Sign in to buy");
    browser.screenshot("19-jwt-signed-out").await;
    browser.click("buy").await;
    assert_eq!(browser.snapshot().await["posts"], 0);

    // The shop's login redirects here with the token in the fragment.
    browser
        .open(&format!("{}#token={token}", app.page(sale)))
        .await;
    browser
        .wait_for("active and buyable", LIVE, |p| {
            p["state"] == "active" && p["buy_disabled"] == false
        })
        .await;
    let who = browser.js(IDENTITY).await;
    assert_eq!(
        who["hash"], "",
        "the token stayed in the address bar: {who:#}"
    );
    assert_eq!(who["kept"], true);
    assert!(
        s(&who, "signed_in").contains("Signed in as shopper@example.com"),
        "{who:#}"
    );
    browser.click("buy").await;
    let done = browser
        .wait_for("confirmed", LIVE, |p| {
            p["result_class"] == "result result-confirmed"
        })
        .await;
    assert!(
        s(&done, "result").contains("shopper@example.com"),
        "{done:#}"
    );
    browser.screenshot("20-jwt-confirmed").await;
    assert_eq!(app.attempts(sale).await, 1);

    // "Did I get one?" asks for the caller's own orders with the token.
    browser.click("check").await;
    let checked = browser
        .wait_for("checked", LIVE, |p| {
            p["result_class"] == "result result-check-yes"
        })
        .await;
    assert!(
        s(&checked, "result").contains("shopper@example.com"),
        "{checked:#}"
    );

    // A reload in the same tab keeps the sign-in (sessionStorage), without the fragment.
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;
    let who = browser.js(IDENTITY).await;
    assert!(
        s(&who, "signed_in").contains("shopper@example.com"),
        "{who:#}"
    );
}

/// What the page shows of its account (accounts mode).
const ACCOUNT: &str = r#"
    const $ = (id) => document.getElementById(id);
    return {
      identity: document.body.dataset.identity,
      guest_field_hidden: $("guest-id").hidden,
      form_hidden: $("account-form").hidden,
      log_out_hidden: $("log-out").hidden,
      error: $("account-error").hidden ? "" : $("account-error").textContent,
      signed_in: $("signed-in").hidden ? "" : $("signed-in").textContent,
      kept: JSON.parse(sessionStorage.getItem("flashsale:account")) !== null,
    };
"#;

impl Browser {
    /// Types `text` into the input `id` (emptied first).
    async fn type_into(&self, id: &str, text: &str) {
        let input = self.client.find(Locator::Id(id)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Polls the account view until `ready` holds, or fails naming `what`.
    async fn wait_for_account(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LIVE;
        loop {
            let account = self.js(ACCOUNT).await;
            if ready(&account) {
                return account;
            }
            assert!(
                Instant::now() < deadline,
                "the account view did not reach `{what}`: {account:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_accounts_mode_the_page_signs_up_logs_in_buys_shows_the_order_and_logs_out() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let manual = Arc::new(ManualClock::new(T0));
    let identity = IdentitySettings {
        mode: IdentityMode::Accounts,
        ..IdentitySettings::default()
    };
    let app = spawn_app_identified(
        Arc::clone(&manual) as Arc<dyn Clock>,
        Some(manual),
        identity,
    )
    .await;
    let sale = app.create_sale("Members only", 0, 600, 5).await;
    let browser = open_browser(1280, 900).await;

    // Signed out: the account form, no id field, and Buy Now disabled.
    browser.open(&app.page(sale)).await;
    let snap = browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;
    let account = browser.js(ACCOUNT).await;
    assert_eq!(account["identity"], "accounts");
    assert_eq!(account["guest_field_hidden"], true, "{account:#}");
    assert_eq!(account["form_hidden"], false, "{account:#}");
    assert_eq!(account["log_out_hidden"], true, "{account:#}");
    assert_eq!(snap["buy_disabled"], true, "{snap:#}");
    browser.screenshot("21-accounts-signed-out").await;

    // Sign up (which logs in too).
    browser.type_into("email", "Buyer@Example.com").await;
    browser
        .type_into("password", "a long enough password")
        .await;
    browser.click("sign-up").await;
    let account = browser
        .wait_for_account("signed in", |a| a["form_hidden"] == true)
        .await;
    assert!(
        s(&account, "signed_in").contains("Signed in as buyer@example.com"),
        "{account:#}"
    );
    assert_eq!(account["log_out_hidden"], false, "{account:#}");
    assert_eq!(account["kept"], true);
    browser
        .wait_for("buyable", LIVE, |p| p["buy_disabled"] == false)
        .await;

    browser.click("buy").await;
    let done = browser
        .wait_for("confirmed", LIVE, |p| {
            p["result_class"] == "result result-confirmed"
        })
        .await;
    assert!(s(&done, "result").contains("buyer@example.com"), "{done:#}");
    browser.screenshot("22-accounts-confirmed").await;
    assert_eq!(app.attempts(sale).await, 1);

    browser.click("check").await;
    browser
        .wait_for("checked", LIVE, |p| {
            p["result_class"] == "result result-check-yes"
        })
        .await;

    // Log out: the form is back, the tab forgets the session, buying is off.
    browser.click("log-out").await;
    let account = browser
        .wait_for_account("signed out", |a| a["form_hidden"] == false)
        .await;
    assert_eq!(account["kept"], false, "{account:#}");
    assert!(s(&account, "signed_in").contains("Log in"), "{account:#}");
    let snap = browser.snapshot().await;
    assert_eq!(snap["buy_disabled"], true, "{snap:#}");

    // A wrong password says so; the right one logs in again and the order is still there.
    browser.type_into("email", "buyer@example.com").await;
    browser.type_into("password", "not the password").await;
    browser.click("log-in").await;
    let account = browser
        .wait_for_account("refused", |a| !s(a, "error").is_empty())
        .await;
    assert!(s(&account, "error").contains("wrong"), "{account:#}");
    browser
        .type_into("password", "a long enough password")
        .await;
    browser.click("log-in").await;
    browser
        .wait_for_account("signed in again", |a| a["form_hidden"] == true)
        .await;
    browser.click("check").await;
    browser
        .wait_for("checked again", LIVE, |p| {
            p["result_class"] == "result result-check-yes"
        })
        .await;
}

// ---------------------------------------------------------------------------------------------
// The product (OP-15: image, name, description and price above the sale)
// ---------------------------------------------------------------------------------------------

/// The product part of the page, as a buyer sees it.
const PRODUCT: &str = r#"
    const $ = (id) => document.getElementById(id);
    const img = $("product-image"), fig = $("product-figure"), h1 = $("sale-name");
    const box = fig.getBoundingClientRect();
    return {
      state: document.body.dataset.state,
      name: h1.textContent,
      figure_shown: !fig.hidden && box.height > 0,
      figure_top: box.top, figure_width: box.width, figure_height: box.height,
      name_top: h1.getBoundingClientRect().top,
      img_src: img.getAttribute("src"),
      img_loaded: img.complete && img.naturalWidth > 0,
      img_natural: [img.naturalWidth, img.naturalHeight],
      alt: img.alt,
      description: $("description").hidden ? null : $("description").textContent,
      description_elements: $("description").children.length,
      price: $("price").hidden ? null : $("price").textContent,
      broken_images: [...document.images].filter((i) => i.getAttribute("src") && !(i.complete && i.naturalWidth > 0)).length,
      scripts_ran: window.__xss || 0,
    };
"#;

impl TestApp {
    /// Creates an upcoming sale with a product description and price.
    async fn create_product_sale(&self, name: &str, product: Value) -> u64 {
        let starts = self.clock.now() + time::Duration::seconds(300);
        let mut body = json!({
            "name": name, "stock": 25, "per_user_limit": 1,
            "starts_at": starts.format(&Rfc3339).unwrap(),
            "ends_at": (starts + time::Duration::seconds(600)).format(&Rfc3339).unwrap(),
        });
        for (k, v) in product.as_object().unwrap() {
            body[k] = v.clone();
        }
        let response = self
            .http
            .post(format!("{}/api/admin/sales", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "creating a sale");
        response.json::<Value>().await.unwrap()["sale_id"]
            .as_u64()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op15_the_page_shows_the_product_image_name_description_and_price_above_the_sale() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sale = app
        .create_product_sale(
            "Walnut lounge chair",
            json!({
                "description": "Solid walnut, hand-oiled.\nShips in 3 days.",
                "price_minor": 12_900, "currency": "EUR",
            }),
        )
        .await;
    let png = include_bytes!("fixtures/product.png");
    let response = app
        .http
        .put(format!("{}/api/admin/sales/{sale}/image", app.base))
        .bearer_auth(TOKEN)
        .body(&png[..])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "uploading the image");
    let browser = open_browser(1280, 1000).await;
    browser.open(&app.page(sale)).await;
    let mut shown = Value::Null;
    let deadline = Instant::now() + LIVE;
    while Instant::now() < deadline {
        shown = browser.js(PRODUCT).await;
        if shown["img_loaded"] == true && shown["price"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shown["img_loaded"], true, "{shown:#}");
    assert_eq!(shown["img_natural"], json!([160, 120]), "{shown:#}");
    assert_eq!(shown["alt"], "Walnut lounge chair");
    assert!(
        shown["img_src"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/api/sales/{sale}/image?v="))
    );
    // Above the sale, in a box of fixed proportions (4:3), so nothing moves as it loads.
    assert!(
        shown["figure_top"].as_f64().unwrap() < shown["name_top"].as_f64().unwrap(),
        "{shown:#}"
    );
    let (w, h) = (
        shown["figure_width"].as_f64().unwrap(),
        shown["figure_height"].as_f64().unwrap(),
    );
    assert!((h - w * 3.0 / 4.0).abs() < 1.0, "{w}x{h}");
    assert_eq!(
        shown["description"],
        "Solid walnut, hand-oiled.\nShips in 3 days."
    );
    // Minor units in the currency's exponent: 12900 cents are 129.00 euros.
    let price = s(&shown, "price");
    assert!(price.contains("129.00") && price.contains('€'), "{price}");
    assert_eq!(shown["broken_images"], 0);
    browser.screenshot("21-product").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op15_without_an_image_nothing_is_broken_and_a_description_with_markup_is_shown_as_text() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let hostile =
        "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\"><b>bold</b>";
    let sale = app
        .create_product_sale(
            "Plain tee",
            json!({"description": hostile, "price_minor": 1500, "currency": "JPY"}),
        )
        .await;
    let browser = open_browser(1280, 900).await;
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("upcoming", LIVE, |p| p["state"] == "upcoming")
        .await;
    let shown = browser.js(PRODUCT).await;
    assert_eq!(shown["name"], "Plain tee");
    assert_eq!(shown["description"], hostile, "shown as the text it is");
    assert_eq!(shown["description_elements"], 0, "no markup was made of it");
    assert_eq!(shown["scripts_ran"], 0);
    assert_eq!(shown["figure_shown"], false, "{shown:#}");
    assert_eq!(shown["img_src"], Value::Null);
    assert_eq!(shown["broken_images"], 0);
    // JPY has no minor unit: 1500 is 1,500 yen, not 15.
    let price = s(&shown, "price");
    assert!(
        price.contains("1,500") && !price.contains("15.00"),
        "{price}"
    );
    browser.screenshot("22-product-no-image").await;
}

// ---------------------------------------------------------------------------------------------
// Checkout in hold mode (SPEC 9, CO-3..CO-5)
// ---------------------------------------------------------------------------------------------

/// What the page shows of a reservation.
const RESERVATION: &str = r#"
    const $ = (id) => document.getElementById(id);
    return {
      result_class: $("result").className,
      result: $("result").textContent,
      shown: !$("reservation").hidden,
      countdown: $("reservation-countdown").textContent,
      pay_shown: !$("pay").hidden,
      held: $("held").hidden ? "" : $("held").textContent,
      remaining: $("stock-remaining").textContent,
      join_shown: !$("join-waitlist").hidden,
      waiting_shown: !$("waitlist").hidden,
      position: $("waitlist-position").textContent,
    };
"#;

impl TestApp {
    /// Creates a hold-mode sale of `stock` units (19.99 EUR) with a `window`-second payment
    /// window, starting 60 s after the service's now.
    async fn create_hold_sale(&self, stock: u32, window: u32) -> u64 {
        let starts = self.clock.now() + time::Duration::seconds(60);
        let response = self
            .http
            .post(format!("{}/api/admin/sales", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({
                "name": "Held lamp", "stock": stock, "per_user_limit": 1,
                "starts_at": starts.format(&Rfc3339).unwrap(),
                "ends_at": (starts + time::Duration::seconds(3600)).format(&Rfc3339).unwrap(),
                "checkout_mode": "hold", "payment_window_secs": window,
                "price_minor": 1999, "currency": "EUR",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "creating a hold sale");
        response.json::<Value>().await.unwrap()["sale_id"]
            .as_u64()
            .unwrap()
    }
}

impl Browser {
    /// Polls the reservation view until `ready` holds, or fails naming `what`.
    async fn wait_for_reservation(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let shown = self.js(RESERVATION).await;
            if ready(&shown) {
                return shown;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("failed-{}", what.replace(' ', "-")))
                    .await;
                panic!("page did not reach `{what}`; it shows {shown:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co5_a_reservation_counts_down_and_is_paid_released_or_expires_on_the_page() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sale = app.create_hold_sale(2, 120).await;
    app.set_clock(60);
    let browser = open_browser(1280, 1000).await;
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;

    // Reserve: a countdown from the window, on the server's clock.
    browser.type_id("alice").await;
    browser.click("buy").await;
    let reserved = browser
        .wait_for_reservation("reserved", |r| {
            r["result_class"] == "result result-reserved"
        })
        .await;
    assert_eq!(reserved["shown"], true, "{reserved:#}");
    let left = seconds(&s(&reserved, "countdown"));
    assert!((118..=120).contains(&left), "{reserved:#}");
    browser
        .wait_for_reservation("held shown", |r| s(r, "held").contains("1 reserved"))
        .await;
    browser.screenshot("23-reserved").await;

    // Pay (demo mode): paid, the unit sold.
    browser.click("pay").await;
    let paid = browser
        .wait_for_reservation("paid", |r| r["result_class"] == "result result-paid")
        .await;
    assert_eq!(paid["shown"], false, "{paid:#}");
    let order = &app.orders_of(sale, "alice").await["orders"][0];
    assert_eq!(order["status"], "paid");
    assert!(s(&paid, "result").contains(&s(order, "order_id")));
    browser.screenshot("24-paid").await;

    // Release: bob reserves the last unit, then lets it go.
    browser.type_id("bob").await;
    browser.click("buy").await;
    browser
        .wait_for_reservation("bob reserved", |r| {
            r["result_class"] == "result result-reserved"
        })
        .await;
    browser.click("release").await;
    browser
        .wait_for_reservation("released", |r| {
            r["result_class"] == "result result-released"
        })
        .await;
    assert_eq!(
        app.orders_of(sale, "bob").await["orders"][0]["status"],
        "cancelled"
    );
    browser
        .wait_for("the unit back on sale", LIVE, |p| p["remaining"] == "1")
        .await;

    // Expire: carol reserves and does not pay; the server's clock passes the deadline.
    browser.type_id("carol").await;
    browser.click("buy").await;
    browser
        .wait_for_reservation("carol reserved", |r| {
            r["result_class"] == "result result-reserved"
        })
        .await;
    app.set_clock(60 + 121);
    let expired = browser
        .wait_for_reservation("expired", |r| r["result_class"] == "result result-expired")
        .await;
    assert_eq!(expired["shown"], false);
    assert_eq!(
        app.orders_of(sale, "carol").await["orders"][0]["status"],
        "expired"
    );
    browser.screenshot("25-expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co9_co10_a_buyer_joins_the_waitlist_on_the_page_and_the_offer_shows_without_a_reload() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let sale = app.create_hold_sale(1, 120).await;
    app.set_clock(60);
    let holder = app.buy(sale, "holder").await;
    assert_eq!(holder["code"], "reserved", "{holder}");
    let browser = open_browser(1280, 1000).await;
    browser.open(&app.page(sale)).await;
    browser
        .wait_for("active", LIVE, |p| p["state"] == "active")
        .await;

    // Every unit is reserved: a purchase is told to join the waitlist, and can.
    browser.type_id("ann").await;
    browser.click("buy").await;
    let told = browser
        .wait_for_reservation("told to wait", |r| {
            s(r, "result").contains("join the waitlist") && r["join_shown"] == true
        })
        .await;
    assert_eq!(told["shown"], false, "{told:#}");
    browser.click("join-waitlist").await;
    let waiting = browser
        .wait_for_reservation("waiting", |r| {
            r["waiting_shown"] == true && s(r, "position") == "#1"
        })
        .await;
    assert_eq!(waiting["join_shown"], false, "{waiting:#}");
    browser
        .wait_for_reservation("the list on the status", |r| {
            s(r, "held").contains("1 on the waitlist")
        })
        .await;
    browser.screenshot("26-waitlisted").await;

    // The holder does not pay: at the deadline the unit is offered to ann, and the page shows
    // her reservation on its own.
    app.set_clock(60 + 121);
    let offered = browser
        .wait_for_reservation("offered", |r| {
            r["shown"] == true && s(r, "result").contains("came free")
        })
        .await;
    assert_eq!(offered["waiting_shown"], false, "{offered:#}");
    assert_eq!(offered["join_shown"], false, "{offered:#}");
    let order = &app.orders_of(sale, "ann").await["orders"][0];
    assert_eq!(
        (&order["status"], &order["offered"]),
        (&json!("reserved"), &json!(true))
    );
    browser.screenshot("27-offered").await;
    browser.click("pay").await;
    browser
        .wait_for_reservation("paid", |r| r["result_class"] == "result result-paid")
        .await;
    assert_eq!(
        app.orders_of(sale, "ann").await["orders"][0]["status"],
        "paid"
    );
}
