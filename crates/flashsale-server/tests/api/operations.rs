//! T-4: probes, metrics, the OpenAPI document, the page, and the JSON fallbacks.

use crate::helpers::{read, spawn_app};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn healthz_and_readyz_answer_ok_and_ready() {
    let app = spawn_app().await;
    assert_eq!(
        read(app.get("/healthz").await).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        read(app.get("/readyz").await).await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_purchases_per_outcome() {
    let app = spawn_app().await;
    let sale = app.active_sale(1, 1).await;
    app.buy(sale, "a").await;
    app.buy(sale, "b").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for needle in [
        r#"flashsale_purchases_total{code="confirmed"} 1"#,
        r#"flashsale_purchases_total{code="sold_out"} 1"#,
        r#"http_requests_total{route="/api/sales/{sale_id}/orders",status="201"} 1"#,
        r#"http_requests_total{route="/api/sales/{sale_id}/orders",status="409"} 1"#,
        r#"http_request_duration_seconds_bucket{route="/api/sales/{sale_id}/orders",le="0.005"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn metrics_show_only_series_that_happened() {
    let app = spawn_app().await;
    let sale = app.active_sale(1, 1).await;
    app.buy(sale, "a").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    for line in &samples {
        let is_counter = line.starts_with("http_requests_total")
            || line.starts_with("flashsale_purchases_total");
        assert!(
            !(is_counter && line.ends_with(" 0")),
            "zero series {line} in\n{text}"
        );
    }
    for never in [
        r#"route="/api/admin/sales/{sale_id}/summary""#,
        r#"status="415""#,
        r#"code="internal""#,
    ] {
        assert!(
            !text.contains(never),
            "{never} never happened but is in\n{text}"
        );
    }
}

#[tokio::test]
async fn the_favicon_is_served_and_linked_from_the_page() {
    let app = spawn_app().await;
    let response = app.get("/favicon.ico").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    assert!(response.text().await.unwrap().starts_with("<svg"));
    let page = app.get("/").await.text().await.unwrap();
    let head = &page[..page.find("</head>").unwrap()];
    assert!(
        head.contains(r#"<link rel="icon" href="/favicon.ico""#),
        "{head}"
    );
}

#[tokio::test]
async fn openapi_document_describes_every_route() {
    let app = spawn_app().await;
    let (status, doc) = read(app.get("/api/openapi.json").await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/",
        "/api/sale",
        "/api/sales/{sale_id}",
        "/api/sales/{sale_id}/orders",
        "/api/sales/{sale_id}/orders/{user_id}",
        "/api/sales/{sale_id}/events",
        "/api/admin/sales",
        "/api/admin/sales/{sale_id}/summary",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
        "/favicon.ico",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
}

#[tokio::test]
async fn the_web_page_is_served_as_html() {
    let app = spawn_app().await;
    let response = app.get("/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(response.text().await.unwrap().contains("<html"));
}

#[tokio::test]
async fn unknown_routes_are_404_not_found_and_wrong_methods_405_in_json() {
    let app = spawn_app().await;
    let (status, body) = read(app.get("/nope").await).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let response = app
        .client
        .delete(app.url("/api/sale"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let (status, body) = read(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    let (status, body) = read(app.get("/api/sales/1/orders").await).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert!(response.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn a_bare_start_seeds_one_demo_sale_starting_in_30_seconds_and_a_restart_adds_none() {
    use flashsale_core::ManualClock;
    use flashsale_server::{Application, Config};
    use std::sync::Arc;
    let dir = tempfile::TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(crate::helpers::T0));
    for _ in 0..2 {
        let mut config = Config::for_tests(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().into(),
            "operations-admin-token",
        );
        config.demo_sale = true;
        let app = Application::build(config, clock.clone()).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let stop = app.shutdown_token();
        let server = tokio::spawn(app.run_until_stopped());
        let (status, sale) = read(reqwest::get(format!("{base}/api/sale")).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(sale["sale_id"], 1, "exactly one demo sale");
        assert_eq!(sale["starts_at"], "2026-11-22T12:00:30Z");
        assert_eq!(sale["ends_at"], "2026-11-22T12:10:30Z");
        assert_eq!(sale["stock_total"], 100);
        assert_eq!(sale["per_user_limit"], 1);
        let (status, _) = read(reqwest::get(format!("{base}/api/sales/2")).await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn starting_with_the_redis_store_without_its_urls_fails_fast_naming_the_variable() {
    use flashsale_core::SystemClock;
    use flashsale_server::{Application, Config, StoreKind};
    use std::sync::Arc;
    let dir = tempfile::TempDir::new().unwrap();
    let mut config = Config::for_tests(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().into(),
        "operations-admin-token",
    );
    config.store = StoreKind::Redis;
    let Err(error) = Application::build(config.clone(), Arc::new(SystemClock)).await else {
        panic!("started without REDIS_URL");
    };
    assert!(error.to_string().contains("REDIS_URL"), "{error}");
    config.redis_url = Some("redis://127.0.0.1:6379".into());
    let Err(error) = Application::build(config, Arc::new(SystemClock)).await else {
        panic!("started without DATABASE_URL");
    };
    assert!(error.to_string().contains("DATABASE_URL"), "{error}");
}
