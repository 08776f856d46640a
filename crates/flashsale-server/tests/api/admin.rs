//! T-4/T-5: the operator endpoints (token, validation, summary).

use crate::helpers::{ADMIN_TOKEN, END, START, read, rfc3339, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn valid() -> Value {
    json!({"name": "Widget", "starts_at": rfc3339(START), "ends_at": rfc3339(END), "stock": 10})
}

#[tokio::test]
async fn creating_a_sale_is_201_with_the_status_body_and_a_default_limit_of_one() {
    let app = spawn_app().await;
    let (status, body) = read(app.post_sale(&valid(), Some(ADMIN_TOKEN)).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "upcoming");
    assert_eq!(body["per_user_limit"], 1);
    assert_eq!(body["stock_total"], 10);
    assert_eq!(body["stock_remaining"], 10);
    let id = body["sale_id"].as_i64().unwrap();
    assert_eq!(app.status(id).await["name"], "Widget");
}

/// A retry of a creation whose answer was lost (same `Idempotency-Key`, same body) answers the
/// sale created the first time, not a second sale; the key with another body is 422.
#[tokio::test]
async fn creating_a_sale_again_with_the_same_key_answers_the_first_sale() {
    let app = spawn_app().await;
    let create = |body: Value| {
        app.client
            .post(app.url("/api/admin/sales"))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", "launch-2026-11-30")
            .json(&body)
            .send()
    };
    let (status, first) = read(create(valid()).await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = read(create(valid()).await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["sale_id"], first["sale_id"]);
    let mut other = valid();
    other["stock"] = json!(11);
    let (status, body) = read(create(other).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "idempotency_key_reused");
    // Ids are given in sequence: the next sale's id shows that the retries created nothing.
    let (_, next) = read(app.post_sale(&valid(), Some(ADMIN_TOKEN)).await).await;
    assert_eq!(
        next["sale_id"].as_i64(),
        first["sale_id"].as_i64().map(|id| id + 1),
        "one sale, whatever the retries"
    );
}

#[tokio::test]
async fn admin_endpoints_are_401_unauthorized_without_the_right_bearer_token() {
    let app = spawn_app().await;
    let id = app.create_sale(10, 1).await;
    for token in [
        None,
        Some("wrong"),
        Some(""),
        Some("test-admin-token-and-more"),
    ] {
        let (status, body) = read(app.post_sale(&valid(), token).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["code"], "unauthorized");
        let mut request = app
            .client
            .get(app.url(&format!("/api/admin/sales/{id}/summary")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, body) = read(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["code"], "unauthorized");
    }
    let basic = app
        .client
        .post(app.url("/api/admin/sales"))
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .json(&valid())
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn each_bad_sale_field_is_400_invalid_request() {
    let app = spawn_app().await;
    let with = |key: &str, value: Value| {
        let mut body = valid();
        body[key] = value;
        body
    };
    let without = |key: &str| {
        let mut body = valid();
        body.as_object_mut().unwrap().remove(key);
        body
    };
    let cases = [
        (
            "ends_at equal to starts_at",
            with("ends_at", json!(rfc3339(START))),
        ),
        (
            "ends_at before starts_at",
            with("ends_at", json!("2026-11-22T11:00:00Z")),
        ),
        ("stock 0", with("stock", json!(0))),
        ("negative stock", with("stock", json!(-3))),
        ("stock too large", with("stock", json!(1_000_000_001))),
        ("string stock", with("stock", json!("10"))),
        ("per_user_limit 0", with("per_user_limit", json!(0))),
        ("per_user_limit 1001", with("per_user_limit", json!(1001))),
        ("empty name", with("name", json!("  "))),
        ("long name", with("name", json!("n".repeat(201)))),
        ("bad starts_at", with("starts_at", json!("tomorrow"))),
        ("numeric ends_at", with("ends_at", json!(12))),
        ("missing name", without("name")),
        ("missing starts_at", without("starts_at")),
        ("missing ends_at", without("ends_at")),
        ("missing stock", without("stock")),
        ("not an object", json!([1, 2])),
    ];
    for (case, body) in cases {
        let (status, answer) = read(app.post_sale(&body, Some(ADMIN_TOKEN)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {answer}");
        assert_eq!(answer["code"], "invalid_request", "{case}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, body) = read(app.get("/api/sale").await).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("sale_not_found"))
    );
}

#[tokio::test]
async fn summary_counts_attempts_confirmations_and_rejections_by_reason() {
    let app = spawn_app().await;
    let id = app.create_sale(2, 1).await;
    app.buy(id, "early").await;
    app.clock.set(START);
    app.buy(id, "a").await;
    app.buy(id, "a").await;
    app.buy(id, "b").await;
    app.buy(id, "c").await;
    let summary = app.summary(id).await;
    assert_eq!(summary["attempts"], 5);
    assert_eq!(summary["confirmed_orders"], 2);
    assert_eq!(summary["confirmed_units"], 2);
    assert_eq!(summary["stock_total"], 2);
    assert_eq!(summary["stock_remaining"], 0);
    assert_eq!(summary["state"], "ended");
    assert_eq!(summary["ended_reason"], "sold_out");
    assert_eq!(summary["sold_out_at"], "2026-11-22T12:01:00Z");
    assert_eq!(
        summary["rejections"],
        json!({"sale_not_active": 1, "sold_out": 1, "already_purchased": 1,
               "limit_exceeded": 0, "insufficient_stock": 0, "unavailable": 0})
    );
    let response = app
        .client
        .get(app.url("/api/admin/sales/999/summary"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("sale_not_found"))
    );
}
