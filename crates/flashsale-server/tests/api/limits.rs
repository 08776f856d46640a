//! NF-5/NF-10: the rate limiter over real HTTP, with limits on (the other tests run with them
//! off, since they send thousands of buyers from 127.0.0.1). Each test sends far more requests
//! than the burst, so a refill during a slow run cannot hide the refusals.

use crate::helpers::{TestApp, read, spawn_app_with};
use flashsale_server::config::RateLimits;
use reqwest::StatusCode;
use serde_json::{Value, json};

const ATTEMPTS: usize = 40;

async fn limited(configure: impl FnOnce(&mut RateLimits)) -> TestApp {
    spawn_app_with(|config| {
        let mut limits = RateLimits {
            // Generous everywhere but where a test narrows it.
            purchase_burst_per_ip: 10_000,
            purchase_burst_per_user: 10_000,
            read_burst_per_ip: 10_000,
            ..RateLimits::default()
        };
        configure(&mut limits);
        config.rate_limits = limits;
    })
    .await
}

/// Asserts a 429 answer is the documented one.
fn assert_rate_limited(status: StatusCode, retry_after: Option<&str>, body: &Value) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert!(body["message"].is_string(), "{body}");
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(secs >= 1);
}

async fn buy_as(
    app: &TestApp,
    sale: i64,
    user: &str,
    forwarded_for: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = app
        .client
        .post(app.url(&format!("/api/sales/{sale}/orders")))
        .json(&json!({ "user_id": user }));
    if let Some(xff) = forwarded_for {
        request = request.header("x-forwarded-for", xff);
    }
    let response = request.send().await.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = read(response).await;
    (status, retry_after, body)
}

#[tokio::test]
async fn one_buyer_hammering_the_buy_button_gets_429_rate_limited_with_retry_after() {
    let app = limited(|l| {
        l.purchase_rate_per_user = 1;
        l.purchase_burst_per_user = 3;
    })
    .await;
    let sale = app.active_sale(100, 1).await;
    let mut refused = 0;
    for _ in 0..ATTEMPTS {
        let (status, retry_after, body) = buy_as(&app, sale, "script", None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_rate_limited(status, retry_after.as_deref(), &body);
            refused += 1;
        } else {
            assert!(
                status == StatusCode::CREATED || body["code"] == "already_purchased",
                "{body}"
            );
        }
    }
    assert!(refused > 0, "no attempt was rate limited");
    // Another buyer from the same address is not affected.
    let (status, body) = app.buy(sale, "alice").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Refused attempts took nothing: the stock taken is the two confirmed units.
    assert_eq!(app.status(sale).await["stock_remaining"], 98);
}

#[tokio::test]
async fn one_address_buying_as_many_buyers_gets_429_and_nothing_refused_is_sold() {
    let app = limited(|l| {
        l.purchase_rate_per_ip = 1;
        l.purchase_burst_per_ip = 5;
    })
    .await;
    let sale = app.active_sale(1_000, 1).await;
    let mut confirmed = 0;
    let mut refused = 0;
    for i in 0..ATTEMPTS {
        let (status, retry_after, body) = buy_as(&app, sale, &format!("bot-{i}"), None).await;
        match status {
            StatusCode::CREATED => confirmed += 1,
            _ => {
                assert_rate_limited(status, retry_after.as_deref(), &body);
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no attempt was rate limited");
    let remaining = app.status(sale).await["stock_remaining"].as_i64().unwrap();
    assert_eq!(1_000 - remaining, confirmed);
    assert_eq!(app.summary(sale).await["confirmed_units"], confirmed);
}

#[tokio::test]
async fn reads_have_their_own_bucket_and_health_checks_are_never_limited() {
    let app = limited(|l| {
        l.read_rate_per_ip = 1;
        l.read_burst_per_ip = 3;
        l.purchase_burst_per_ip = 5;
    })
    .await;
    let sale = app.active_sale(10, 1).await;
    let mut refused = 0;
    for _ in 0..ATTEMPTS {
        let response = app.get(&format!("/api/sales/{sale}")).await;
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let (status, body) = read(response).await;
        if status != StatusCode::OK {
            assert_rate_limited(status, retry_after.as_deref(), &body);
            refused += 1;
        }
    }
    assert!(refused > 0, "no read was rate limited");
    // Reads being exhausted does not stop a purchase...
    let (status, body) = app.buy(sale, "alice").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // ...and load balancers still see the service (`/metrics` counts as a read: it is public
    // unless `--ops-listen` moves it; see abuse.rs).
    for path in ["/healthz", "/readyz"] {
        for _ in 0..ATTEMPTS {
            assert_eq!(app.get(path).await.status(), StatusCode::OK, "{path}");
        }
    }
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_keys_each_client_separately() {
    let app = limited(|l| {
        l.trusted_proxies = "127.0.0.1".parse().unwrap();
        l.purchase_rate_per_ip = 1;
        l.purchase_burst_per_ip = 2;
    })
    .await;
    let sale = app.active_sale(1_000, 1).await;
    let mut refused = 0;
    for i in 0..ATTEMPTS {
        let (status, _, _) = buy_as(&app, sale, &format!("a-{i}"), Some("198.51.100.1")).await;
        refused += usize::from(status == StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(refused > 0, "the forwarded client was not limited");
    // A different client behind the same proxy has a full bucket.
    let (status, _, body) = buy_as(&app, sale, "b", Some("198.51.100.2")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = limited(|l| {
        l.purchase_rate_per_ip = 1;
        l.purchase_burst_per_ip = 2;
    })
    .await;
    let sale = app.active_sale(1_000, 1).await;
    let mut refused = 0;
    for i in 0..ATTEMPTS {
        // A script inventing a new address per request still shares 127.0.0.1's bucket.
        let forged = format!("203.0.113.{i}");
        let (status, _, _) = buy_as(&app, sale, &format!("c-{i}"), Some(&forged)).await;
        refused += usize::from(status == StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(refused > 0, "forged X-Forwarded-For escaped the limit");
}
