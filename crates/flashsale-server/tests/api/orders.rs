//! T-4/T-5/T-6: buying and "did I get one?": valid and invalid input, each rejection's
//! distinct body, idempotency (PR-1..PR-4, PR-5).

use crate::helpers::{TestApp, read, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post_raw(
    app: &TestApp,
    sale: i64,
    content_type: Option<&str>,
    body: String,
) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(app.url(&format!("/api/sales/{sale}/orders")))
        .body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    read(request.send().await.unwrap()).await
}

fn assert_invalid(status: StatusCode, body: &Value, case: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {body}");
    assert_eq!(body["code"], "invalid_request", "{case}: {body}");
    assert!(!body["message"].as_str().unwrap().is_empty(), "{case}");
}

#[tokio::test]
async fn pr1_a_confirmed_purchase_is_201_with_the_order_and_it_can_be_looked_up() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 1).await;
    let (status, body) = app.buy(sale, "  alice@example.com ").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["code"], "confirmed");
    assert!(body.get("message").is_none());
    let order = &body["order"];
    assert_eq!(order["sale_id"], sale);
    assert_eq!(
        order["user_id"], "alice@example.com",
        "user ids are trimmed"
    );
    assert_eq!(order["quantity"], 1);
    assert_eq!(order["created_at"], "2026-11-22T12:01:00Z");
    assert_eq!(order["order_id"].as_str().unwrap().len(), 36);

    let (status, found) = app.orders(sale, "%20alice@example.com%20").await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(
        found,
        json!({"sale_id": sale, "user_id": "alice@example.com", "orders": [order]})
    );
    assert_eq!(app.status(sale).await["stock_remaining"], 9);
}

#[tokio::test]
async fn order_lookup_answers_404_order_not_found_404_sale_not_found_and_400_for_a_blank_user() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 1).await;
    let (status, body) = app.orders(sale, "nobody").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("order_not_found"))
    );
    let (status, body) = app.orders(999, "nobody").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("sale_not_found"))
    );
    let (status, body) = app.orders(sale, "%20%20").await;
    assert_invalid(status, &body, "blank user id in path");
}

#[tokio::test]
async fn pr2_a_second_purchase_by_the_same_buyer_is_409_already_purchased_with_the_first_order() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 1).await;
    let (_, first) = app.buy(sale, "bob").await;
    let (status, body) = app.buy(sale, " bob").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "already_purchased");
    assert_eq!(body["order"], first["order"]);
    assert_eq!(body["orders"], json!([first["order"]]));
    assert_eq!(app.status(sale).await["stock_remaining"], 9);
}

#[tokio::test]
async fn buying_over_the_per_user_limit_is_409_limit_exceeded_with_the_units_still_allowed() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 3).await;
    let (status, _) = read(
        app.buy_with(sale, &json!({"user_id": "carol", "quantity": 2}), None)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = read(
        app.buy_with(sale, &json!({"user_id": "carol", "quantity": 2}), None)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "limit_exceeded");
    assert_eq!(body["allowed"], 1);
    assert_eq!(body["orders"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn asking_for_more_than_is_left_is_409_insufficient_stock_with_what_remains() {
    let app = spawn_app().await;
    let sale = app.active_sale(2, 3).await;
    let (status, body) = read(
        app.buy_with(sale, &json!({"user_id": "dan", "quantity": 3}), None)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "insufficient_stock");
    assert_eq!(body["stock_remaining"], 2);
}

#[tokio::test]
async fn pr3_buying_when_nothing_is_left_is_409_sold_out() {
    let app = spawn_app().await;
    let sale = app.active_sale(1, 1).await;
    assert_eq!(app.buy(sale, "first").await.0, StatusCode::CREATED);
    let (status, body) = app.buy(sale, "second").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        json!({"code": "sold_out", "message": "the sale is sold out"})
    );
}

#[tokio::test]
async fn pr4_buying_outside_the_window_is_409_sale_not_active_naming_the_state() {
    let app = spawn_app().await;
    let sale = app.create_sale(5, 1).await;
    let (status, body) = app.buy(sale, "early").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "sale_not_active");
    assert_eq!(body["state"], "upcoming");
    app.clock.set(crate::helpers::END);
    let (_, body) = app.buy(sale, "late").await;
    assert_eq!(body["code"], "sale_not_active");
    assert_eq!(body["state"], "ended");
}

#[tokio::test]
async fn buying_in_an_unknown_sale_is_404_sale_not_found() {
    let app = spawn_app().await;
    for sale in ["999", "0", "abc"] {
        let response = app
            .client
            .post(app.url(&format!("/api/sales/{sale}/orders")))
            .json(&json!({"user_id": "x"}))
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{sale}");
        assert_eq!(body["code"], "sale_not_found");
    }
}

#[tokio::test]
async fn each_bad_purchase_field_is_400_invalid_request_and_takes_nothing() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 2).await;
    let long = "a".repeat(255);
    let cases: Vec<(&str, String)> = vec![
        ("missing user_id", r#"{"quantity": 1}"#.into()),
        ("empty user_id", r#"{"user_id": ""}"#.into()),
        ("whitespace user_id", r#"{"user_id": "  \t "}"#.into()),
        ("255-char user_id", format!(r#"{{"user_id": "{long}"}}"#)),
        (
            "control char in user_id",
            r#"{"user_id": "a\u0000b"}"#.into(),
        ),
        ("numeric user_id", r#"{"user_id": 42}"#.into()),
        ("null user_id", r#"{"user_id": null}"#.into()),
        ("quantity 0", r#"{"user_id": "u", "quantity": 0}"#.into()),
        (
            "negative quantity",
            r#"{"user_id": "u", "quantity": -1}"#.into(),
        ),
        (
            "quantity above the sale limit",
            r#"{"user_id": "u", "quantity": 3}"#.into(),
        ),
        (
            "quantity above every limit",
            r#"{"user_id": "u", "quantity": 100000}"#.into(),
        ),
        (
            "string quantity",
            r#"{"user_id": "u", "quantity": "1"}"#.into(),
        ),
        (
            "fractional quantity",
            r#"{"user_id": "u", "quantity": 1.5}"#.into(),
        ),
        (
            "huge quantity",
            r#"{"user_id": "u", "quantity": 1e400}"#.into(),
        ),
        ("malformed JSON", r#"{"user_id": "u""#.into()),
        ("empty body", String::new()),
        ("array body", r#"["u"]"#.into()),
    ];
    for (case, body) in cases {
        let (status, body) = post_raw(&app, sale, Some("application/json"), body).await;
        assert_invalid(status, &body, case);
    }
    let (status, body) = read(
        app.buy_with(sale, &json!({"user_id": "u"}), Some("has space"))
            .await,
    )
    .await;
    assert_invalid(status, &body, "bad Idempotency-Key");
    let (status, body) = read(
        app.buy_with(sale, &json!({"user_id": "u"}), Some(&"k".repeat(256)))
            .await,
    )
    .await;
    assert_invalid(status, &body, "long Idempotency-Key");
    assert_eq!(app.status(sale).await["stock_remaining"], 10);
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_415_unsupported_media_type() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 1).await;
    let body = r#"{"user_id": "u"}"#.to_owned();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, json) = post_raw(&app, sale, ct, body.clone()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_eq!(json["code"], "unsupported_media_type");
    }
    let (status, _) = post_raw(&app, sale, Some("application/json; charset=utf-8"), body).await;
    assert_eq!(status, StatusCode::CREATED, "parameters are allowed");
}

#[tokio::test]
async fn a_body_over_4_kib_is_413_payload_too_large() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 1).await;
    let body = format!(r#"{{"user_id": "u", "pad": "{}"}}"#, "x".repeat(5000));
    let (status, json) = post_raw(&app, sale, Some("application/json"), body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["code"], "payload_too_large");
    // Also when the length is not declared up front (chunked).
    let pad = "x".repeat(5000);
    let chunk = format!(r#"{{"user_id": "u", "pad": "{pad}"}}"#);
    let request = format!(
        "POST /api/sales/{sale}/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let answer = crate::helpers::raw_http(&app, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
}

#[tokio::test]
async fn a_chunked_body_in_several_chunks_with_trailers_is_read_whole() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 1).await;
    // Two chunks and a trailer section: the body is only complete at the last chunk, which a
    // reader that stops at the first chunk (or at the declared length) would get wrong.
    let (head, tail) = (r#"{"user_id": "chun"#, r#"ked", "quantity": 1}"#);
    let request = format!(
        "POST /api/sales/{sale}/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {:x}\r\n{head}\r\n{:x}\r\n{tail}\r\n0\r\nx-checksum: 1\r\n\r\n",
        head.len(),
        tail.len()
    );
    let answer = crate::helpers::raw_http(&app, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains(r#""user_id":"chunked""#), "{answer}");
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_replays_the_same_order_without_taking_stock_twice() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 2).await;
    let body = json!({"user_id": "erin", "quantity": 1});
    let (s1, first) = read(app.buy_with(sale, &body, Some("key-1")).await).await;
    let (s2, second) = read(app.buy_with(sale, &body, Some("key-1")).await).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first, second);
    assert_eq!(app.status(sale).await["stock_remaining"], 9);
    let (_, found) = app.orders(sale, "erin").await;
    assert_eq!(found["orders"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn reusing_an_idempotency_key_with_another_body_is_422_idempotency_key_reused() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 2).await;
    let (status, _) = read(
        app.buy_with(sale, &json!({"user_id": "fay"}), Some("key-2"))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    for other in [
        json!({"user_id": "gus"}),
        json!({"user_id": "fay", "quantity": 2}),
    ] {
        let (status, body) = read(app.buy_with(sale, &other, Some("key-2")).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{other}");
        assert_eq!(body["code"], "idempotency_key_reused");
    }
}

#[tokio::test]
async fn a_bad_quantity_is_explained_with_the_sales_own_limit() {
    let app = spawn_app().await;
    let one = app.active_sale(10, 1).await;
    let three = app.active_sale(10, 3).await;
    for (sale, quantity, limit) in [
        (one, 0, 1),
        (one, -1, 1),
        (one, 2, 1),
        (one, 100_000, 1),
        (three, 0, 3),
        (three, 4, 3),
        (three, 100_000, 3),
    ] {
        let body = format!(r#"{{"user_id": "u", "quantity": {quantity}}}"#);
        let (status, body) = post_raw(&app, sale, Some("application/json"), body).await;
        assert_invalid(status, &body, "bad quantity");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("between 1 and {limit}")),
            "quantity {quantity} on a limit-{limit} sale: {message}"
        );
    }
    let (status, body) = post_raw(
        &app,
        999_999,
        Some("application/json"),
        r#"{"user_id": "u", "quantity": 0}"#.into(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("sale_not_found"))
    );
}
