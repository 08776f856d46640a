//! The operator's live view (OP-18, docs/requirements.md §10): `GET
//! /api/admin/sales/{id}/live` sends the sale's history, then each new sample, and ends after
//! the sample showing the sale ended; and `GET /admin` (OP-16) is served where the admin API is.
//!
//! Samplers tick on the real clock (once a second): the tests poll with generous deadlines and
//! never assert on how long anything took.

use crate::helpers::{ADMIN_TOKEN, TestApp, read, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Long enough for several samples on a loaded machine; a healthy run needs a few seconds.
const PATIENCE: Duration = Duration::from_secs(30);

/// One open live stream and what is left of its last chunk.
struct LiveStream {
    response: reqwest::Response,
    buffer: String,
}

impl LiveStream {
    /// The next message as (event, data); `None` once the server ended the stream.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let message: String = self.buffer.drain(..end + 2).collect();
                let event = message.lines().find_map(|l| l.strip_prefix("event: "));
                let data = message.lines().find_map(|l| l.strip_prefix("data: "));
                if let (Some(event), Some(data)) = (event, data) {
                    return Some((event.to_owned(), serde_json::from_str(data).unwrap()));
                }
                // A keep-alive comment.
                continue;
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("no message on the live stream")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `sample` event.
    async fn sample(&mut self) -> Value {
        let (event, data) = self.next().await.expect("the stream ended");
        assert_eq!(event, "sample", "{data}");
        data
    }
}

impl TestApp {
    async fn live(&self, sale: i64, token: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .get(self.url(&format!("/api/admin/sales/{sale}/live")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// Opens the live stream and reads its `history` event: (sale, samples).
    async fn watch(&self, sale: i64) -> (LiveStream, Value, Vec<Value>) {
        let response = self.live(sale, Some(ADMIN_TOKEN)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let mut stream = LiveStream {
            response,
            buffer: String::new(),
        };
        let (event, history) = stream.next().await.expect("a history event");
        assert_eq!(event, "history", "the first event is the history");
        let samples = history["samples"].as_array().unwrap().clone();
        (stream, history["sale"].clone(), samples)
    }

    async fn cancel_now(&self, sale: i64) {
        let response = self
            .client
            .post(self.url(&format!("/api/admin/sales/{sale}/cancel")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn op18_the_live_stream_is_401_without_the_token_and_404_for_an_unknown_sale() {
    let app = spawn_app().await;
    let sale = app.create_sale(5, 1).await;
    for token in [None, Some("wrong-token")] {
        let (status, body) = read(app.live(sale, token).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert_eq!(body["code"], "unauthorized");
    }
    for unknown in ["424242", "0", "x"] {
        let response = app
            .client
            .get(app.url(&format!("/api/admin/sales/{unknown}/live")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}: {body}");
        assert_eq!(body["code"], "sale_not_found");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op18_an_active_sale_is_sampled_unwatched_and_a_viewer_gets_its_history_then_new_samples() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 1).await;
    for user in ["a", "b"] {
        assert_eq!(app.buy(sale, user).await.0, StatusCode::CREATED);
    }

    // Nobody watches yet: the sale is sampled anyway because it is active, so the first viewer
    // sees the sale's past, including the two purchases.
    let deadline = Instant::now() + PATIENCE;
    let (mut stream, body, history) = loop {
        let (stream, body, history) = app.watch(sale).await;
        if history.iter().any(|s| s["sold"] == 2) {
            break (stream, body, history);
        }
        assert!(
            Instant::now() < deadline,
            "no sample with 2 sold: {history:?}"
        );
        drop(stream);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["sale_id"], sale);
    assert_eq!(body["state"], "active");
    let first = &history[0];
    for field in [
        "at",
        "state",
        "stock_total",
        "sold",
        "available",
        "attempts",
        "confirmed_orders",
        "confirmed_units",
        "rejections",
        "latency",
    ] {
        assert!(
            first.get(field).is_some(),
            "a sample has `{field}`: {first}"
        );
    }
    assert_eq!(first["stock_total"], 10);
    // No checkout yet: the waitlist length is absent, not a made-up 0.
    assert!(first.get("waitlist").is_none());
    // Samples are in order, and the counters only grow.
    for pair in history.windows(2) {
        assert!(pair[0]["at"].as_str() <= pair[1]["at"].as_str());
        assert!(pair[0]["attempts"].as_u64() <= pair[1]["attempts"].as_u64());
    }

    // New purchases (and a rejection) show up in the following samples.
    for user in ["c", "d", "e"] {
        assert_eq!(app.buy(sale, user).await.0, StatusCode::CREATED);
    }
    assert_eq!(app.buy(sale, "a").await.0, StatusCode::CONFLICT);
    let mut latency = history.iter().any(|s| s["latency"].is_object());
    let live = loop {
        let sample = stream.sample().await;
        latency |= sample["latency"].is_object();
        if sample["sold"] == 5 && sample["rejections"]["already_purchased"] == 1 {
            break sample;
        }
    };
    assert_eq!(live["available"], 5);
    assert_eq!(live["attempts"], 6);
    assert_eq!(live["confirmed_orders"], 5);
    assert!(
        latency,
        "purchases were answered, so some sample has their latency"
    );

    // A second viewer gets at least everything the first one saw, oldest first.
    let (second, _, again) = app.watch(sale).await;
    assert!(
        again.len() > history.len(),
        "{} <= {}",
        again.len(),
        history.len()
    );
    assert_eq!(again[0], history[0]);
    assert!(again.iter().any(|s| s == &live));
    drop(second);

    // The end: the sample showing it is the stream's last.
    app.cancel_now(sale).await;
    let last = loop {
        let sample = stream.sample().await;
        if sample["state"] == "ended" {
            break sample;
        }
    };
    assert_eq!(last["ended_reason"], "cancelled");
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the end"
    );

    // A viewer of an ended sale gets the whole history, ending with the end, and nothing more.
    let (mut after, body, history) = app.watch(sale).await;
    assert_eq!(body["ended_reason"], "cancelled");
    assert_eq!(history.last(), Some(&last));
    assert!(after.next().await.is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op18_an_upcoming_sale_is_sampled_while_watched_and_streams_end_on_shutdown() {
    let app = spawn_app().await;
    let sale = app.create_sale(3, 1).await;
    let (mut stream, body, _) = app.watch(sale).await;
    assert_eq!(body["state"], "upcoming");
    let sample = stream.sample().await;
    assert_eq!(
        (sample["state"].as_str(), sample["sold"].as_u64()),
        (Some("upcoming"), Some(0))
    );

    let stopping = tokio::spawn(app.stop());
    let ended = tokio::time::timeout(PATIENCE, async { while stream.next().await.is_some() {} });
    assert!(
        ended.await.is_ok(),
        "the live stream did not end on shutdown"
    );
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("shutdown waited on the open live stream")
        .unwrap();
}

#[tokio::test]
async fn op16_the_operator_page_is_served_where_the_admin_api_is_with_a_strict_policy() {
    let app =
        spawn_app_with(|config| config.admin_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let admin = app.admin_address.clone().expect("an admin address");
    let page = app
        .client
        .get(format!("{admin}/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "private, no-cache");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("script-src 'unsafe-inline'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("Admin token"));
    for foreign in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
        // The SVG namespace is a name, not a fetch.
        let found = html
            .match_indices(foreign)
            .any(|(i, _)| !html[i..].starts_with("http://www.w3.org/2000/svg"));
        assert!(!found, "the page refers to {foreign}");
    }

    // Not on the public listener, like the admin API.
    let (status, body) = read(app.get("/admin").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op18_scale_out_each_instance_samples_the_shared_figures_of_purchases_made_on_any() {
    use crate::scale_out::{Cleanup, TOKEN, spawn_instance};
    let name = flashsale_testkit::isolation::unique("live");
    let _cleanup = Cleanup::named(&name);
    let (a, stop_a) = spawn_instance(&name).await;
    let (b, stop_b) = spawn_instance(&name).await;
    let client = reqwest::Client::new();
    let now = time::OffsetDateTime::now_utc();
    let format = |at: time::OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let sale: Value = client
        .post(format!("{a}/api/admin/sales"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({
            "name": "Shared", "stock": 10,
            "starts_at": format(now - time::Duration::seconds(1)),
            "ends_at": format(now + time::Duration::hours(1)),
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sale = sale["sale_id"].as_i64().unwrap();
    for (i, base) in [&a, &a, &a, &b, &b].into_iter().enumerate() {
        let response = client
            .post(format!("{base}/api/sales/{sale}/orders"))
            .json(&serde_json::json!({ "user_id": format!("buyer-{i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    // Instance B's live view counts the purchases made on A too: the figures are the store's.
    let response = client
        .get(format!("{b}/api/admin/sales/{sale}/live"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = LiveStream {
        response,
        buffer: String::new(),
    };
    let (event, history) = stream.next().await.unwrap();
    assert_eq!(event, "history");
    let mut seen = history["samples"].as_array().unwrap().clone();
    while !seen
        .iter()
        .any(|s| s["sold"] == 5 && s["confirmed_orders"] == 5)
    {
        seen.push(stream.sample().await);
    }
    stop_a.cancel();
    stop_b.cancel();
}
