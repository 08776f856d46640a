//! Checkout over HTTP (SPEC 9, CO-1..CO-11): creating a hold-mode sale, reserving, reading
//! and cancelling an order by id, paying through the demo route and the signed webhook, and
//! expiry by the store's timer as the manual clock passes the deadline.

use crate::helpers::{ADMIN_TOKEN, END, START, TestApp, read, rfc3339, spawn_app, spawn_app_with};
use flashsale_core::WebhookSecret;
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

/// The webhook secret of the apps that have one.
const SECRET: &str = "whsec-test-0123456789abcdef";

/// A hold-mode sale's creation body with a window of `window` seconds, 19.99 EUR a unit.
fn hold_body(stock: u32, limit: u32, window: i64) -> Value {
    json!({
        "name": "Held widget", "starts_at": rfc3339(START), "ends_at": rfc3339(END),
        "stock": stock, "per_user_limit": limit,
        "checkout_mode": "hold", "payment_window_secs": window,
        "price_minor": 1999, "currency": "EUR",
    })
}

/// Creates an active hold-mode sale; returns its id.
pub(crate) async fn hold_sale(app: &TestApp, stock: u32, limit: u32, window: i64) -> i64 {
    let (status, body) = read(
        app.post_sale(&hold_body(stock, limit, window), Some(ADMIN_TOKEN))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.clock.set(START);
    body["sale_id"].as_i64().unwrap()
}

/// Reserves one unit for `user`; returns the order.
pub(crate) async fn reserve(app: &TestApp, sale: i64, user: &str) -> Value {
    let (status, body) = app.buy(sale, user).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["code"], "reserved", "{body}");
    assert_eq!(body["order"]["status"], "reserved");
    body["order"].clone()
}

pub(crate) fn id_of(order: &Value) -> &str {
    order["order_id"].as_str().unwrap()
}

pub(crate) fn instant(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        value.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

/// (available, held, sold) as the status body tells them, checked to add up to the stock.
pub(crate) async fn units(app: &TestApp, sale: i64) -> (u64, u64, u64) {
    let body = app.status(sale).await;
    let figures = (
        body["stock_available"].as_u64().unwrap(),
        body["stock_held"].as_u64().unwrap(),
        body["stock_sold"].as_u64().unwrap(),
    );
    assert_eq!(
        figures.0 + figures.1 + figures.2,
        body["stock_total"].as_u64().unwrap(),
        "{body}"
    );
    assert_eq!(body["stock_remaining"], body["stock_available"]);
    figures
}

pub(crate) async fn get_order(app: &TestApp, id: &str) -> (StatusCode, Value) {
    read(app.get(&format!("/api/orders/{id}")).await).await
}

pub(crate) async fn cancel(app: &TestApp, id: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .delete(app.url(&format!("/api/orders/{id}")))
        .send()
        .await
        .unwrap();
    read(response).await
}

pub(crate) async fn demo_pay(app: &TestApp, id: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url(&format!("/api/orders/{id}/pay")))
        .send()
        .await
        .unwrap();
    read(response).await
}

/// Posts `body` to the webhook with the `Flashsale-Signature` header `signature`.
async fn webhook(app: &TestApp, body: &str, signature: Option<&str>) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(app.url("/api/payments/webhook"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("Flashsale-Signature", signature);
    }
    read(request.send().await.unwrap()).await
}

/// A payment event for `order`, as the payment system would send it.
fn payment(order: &str, status: &str, payment_ref: &str, amount_minor: i64) -> String {
    json!({
        "order_id": order, "status": status, "payment_ref": payment_ref,
        "amount_minor": amount_minor, "currency": "EUR",
    })
    .to_string()
}

/// Signs `body` at the app's clock (the server's) plus `skew` seconds.
fn sign(app: &TestApp, body: &str, skew: i64) -> String {
    let secret = WebhookSecret::new(SECRET.as_bytes()).unwrap();
    let t = flashsale_core::Clock::now(&*app.clock).unix_timestamp() + skew;
    secret.sign(t, body.as_bytes())
}

#[tokio::test]
async fn co1_a_hold_sale_is_created_with_its_window_and_shown_in_the_status() {
    let app = spawn_app().await;
    let sale = hold_sale(&app, 5, 2, 600).await;
    let body = app.status(sale).await;
    assert_eq!(body["checkout_mode"], "hold");
    assert_eq!(body["payment_window_secs"], 600);
    assert_eq!(body["price_minor"], 1999);
    assert_eq!(units(&app, sale).await, (5, 0, 0));

    let instant = app.create_sale(3, 1).await;
    let body = app.status(instant).await;
    assert_eq!(body["checkout_mode"], "instant");
    assert_eq!(body["payment_window_secs"], Value::Null);
}

#[tokio::test]
async fn co1_co2_each_bad_checkout_field_is_refused_with_its_own_message() {
    let app = spawn_app().await;
    let cases = [
        ("hold without a window", {
            let mut b = hold_body(5, 1, 600);
            b.as_object_mut().unwrap().remove("payment_window_secs");
            b
        }),
        ("a window too short", hold_body(5, 1, 59)),
        ("a window too long", hold_body(5, 1, 86_401)),
        ("hold without a price", {
            let mut b = hold_body(5, 1, 600);
            let o = b.as_object_mut().unwrap();
            o.remove("price_minor");
            o.remove("currency");
            b
        }),
        ("a window without hold", {
            let mut b = hold_body(5, 1, 600);
            b["checkout_mode"] = json!("instant");
            b
        }),
        ("an unknown mode", {
            let mut b = hold_body(5, 1, 600);
            b["checkout_mode"] = json!("layaway");
            b
        }),
    ];
    let mut messages = std::collections::HashSet::new();
    for (what, body) in cases {
        let (status, answer) = read(app.post_sale(&body, Some(ADMIN_TOKEN)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_eq!(answer["code"], "invalid_request", "{what}");
        messages.insert(answer["message"].as_str().unwrap().to_owned());
    }
    // One message per rule; both ends of the window's range are one rule.
    assert_eq!(messages.len(), 5, "one message per rule: {messages:?}");
}

#[tokio::test]
async fn co3_co4_a_reservation_is_readable_by_id_and_paid_through_the_demo_route() {
    let app = spawn_app().await;
    let sale = hold_sale(&app, 3, 1, 600).await;
    let order = reserve(&app, sale, "alice").await;
    assert_eq!(
        instant(&order["expires_at"]),
        instant(&order["created_at"]) + Duration::seconds(600)
    );
    assert_eq!(units(&app, sale).await, (2, 1, 0));
    let (status, read_back) = get_order(&app, id_of(&order)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read_back["order"], order);

    let (status, paid) = demo_pay(&app, id_of(&order)).await;
    assert_eq!(status, StatusCode::CREATED, "{paid}");
    assert_eq!(paid["code"], "paid");
    assert_eq!(paid["order"]["status"], "paid");
    let payment_ref = format!("demo-{}", id_of(&order));
    assert_eq!(paid["order"]["payment_ref"], payment_ref.as_str());
    assert_eq!(units(&app, sale).await, (2, 0, 1));
    // Paying twice is a redelivery of the same payment: the same answer, nothing moves.
    let (status, again) = demo_pay(&app, id_of(&order)).await;
    assert_eq!(
        (status, &again["code"]),
        (StatusCode::CREATED, &json!("paid"))
    );
    assert_eq!(units(&app, sale).await, (2, 0, 1));
    // A paid order is not cancelled.
    let (status, refused) = cancel(&app, id_of(&order)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["code"], "order_paid");
    assert_eq!(refused["order"]["status"], "paid");
}

#[tokio::test]
async fn co4_co6_a_cancel_frees_the_unit_once_and_later_events_say_so() {
    let app = spawn_app().await;
    let sale = hold_sale(&app, 1, 1, 600).await;
    let order = reserve(&app, sale, "alice").await;
    // Every unit held: active, nothing available, sold_out to the next buyer.
    assert_eq!(app.status(sale).await["state"], "active");
    let (status, body) = app.buy(sale, "bob").await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::CONFLICT, &json!("sold_out"))
    );

    let (status, cancelled) = cancel(&app, id_of(&order)).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["code"], "cancelled");
    assert_eq!(cancelled["order"]["status"], "cancelled");
    assert_eq!(units(&app, sale).await, (1, 0, 0));
    for (status, body) in [
        cancel(&app, id_of(&order)).await,
        demo_pay(&app, id_of(&order)).await,
    ] {
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["code"], "order_cancelled");
    }
    assert_eq!(units(&app, sale).await, (1, 0, 0));
    // The unit is bob's now.
    reserve(&app, sale, "bob").await;
}

#[tokio::test]
async fn co4_unknown_and_malformed_order_ids_are_not_found() {
    let app = spawn_app().await;
    for id in [uuid::Uuid::now_v7().to_string(), "not-a-uuid".to_owned()] {
        for (status, body) in [
            get_order(&app, &id).await,
            cancel(&app, &id).await,
            demo_pay(&app, &id).await,
        ] {
            assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
            assert_eq!(body["code"], "order_not_found");
        }
    }
}

#[tokio::test]
async fn co6_instant_orders_are_confirmed_and_take_no_payment_or_cancel() {
    let app = spawn_app().await;
    let sale = app.active_sale(3, 1).await;
    let (status, body) = app.buy(sale, "alice").await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::CREATED, &json!("confirmed"))
    );
    assert_eq!(body["order"]["status"], "confirmed");
    assert!(body["order"].get("expires_at").is_none(), "{body}");
    let id = body["order"]["order_id"].as_str().unwrap();
    for (status, answer) in [cancel(&app, id).await, demo_pay(&app, id).await] {
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert_eq!(answer["code"], "order_confirmed");
    }
    assert_eq!(units(&app, sale).await, (2, 0, 1));
}

#[tokio::test]
async fn co5_a_reservation_expires_at_its_deadline_without_a_request() {
    let app = spawn_app().await;
    let sale = hold_sale(&app, 2, 1, 60).await;
    let order = reserve(&app, sale, "alice").await;
    app.advance(Duration::seconds(59));
    assert_eq!(
        get_order(&app, id_of(&order)).await.1["order"]["status"],
        "reserved"
    );
    app.advance(Duration::seconds(1));
    // At expires_at the reservation can only expire, whether or not the timer ran yet.
    let (status, late) = demo_pay(&app, id_of(&order)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{late}");
    assert_eq!(late["code"], "reservation_expired");
    // The timer runs on its own within its interval.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = get_order(&app, id_of(&order)).await;
        if body["order"]["status"] == "expired" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never expired: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(units(&app, sale).await, (2, 0, 0));
    let (status, body) = cancel(&app, id_of(&order)).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::CONFLICT, &json!("reservation_expired"))
    );
    // The allowance is back.
    reserve(&app, sale, "alice").await;
}

#[tokio::test]
async fn co11_the_webhook_believes_only_a_fresh_valid_signature_and_pays_once() {
    let app = spawn_app_with(|c| c.payment_webhook_secret = Some(SECRET.to_owned())).await;
    let sale = hold_sale(&app, 3, 1, 600).await;
    let order = reserve(&app, sale, "alice").await;
    let id = id_of(&order);
    let body = payment(id, "succeeded", "pay_123", 1999);

    let other = WebhookSecret::new(b"another-secret-0123456789").unwrap();
    let now = flashsale_core::Clock::now(&*app.clock).unix_timestamp();
    let refusals = [
        (None, "signature_missing"),
        (Some("v1=abc".to_owned()), "signature_malformed"),
        (Some(other.sign(now, body.as_bytes())), "signature_mismatch"),
        (Some(sign(&app, &body, -301)), "signature_stale"),
        (Some(sign(&app, &body, 301)), "signature_stale"),
        (
            Some(sign(&app, &payment(id, "succeeded", "pay_123", 1), 0)),
            "signature_mismatch",
        ),
    ];
    for (signature, code) in refusals {
        let (status, answer) = webhook(&app, &body, signature.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{code}: {answer}");
        assert_eq!(answer["code"], code);
    }
    assert_eq!(
        units(&app, sale).await,
        (2, 1, 0),
        "no refusal changed anything"
    );

    // A wrong amount is authentic but not the order's total.
    let short = payment(id, "succeeded", "pay_short", 1000);
    let (status, answer) = webhook(&app, &short, Some(&sign(&app, &short, 0))).await;
    assert_eq!(
        (status, &answer["code"]),
        (StatusCode::CONFLICT, &json!("amount_mismatch"))
    );
    assert_eq!(answer["order"]["status"], "reserved");
    // A failed payment leaves it payable.
    let failed = payment(id, "failed", "pay_declined", 1999);
    let (status, answer) = webhook(&app, &failed, Some(&sign(&app, &failed, 0))).await;
    assert_eq!(
        (status, &answer["code"]),
        (StatusCode::OK, &json!("payment_failed"))
    );
    assert_eq!(units(&app, sale).await, (2, 1, 0));

    let signature = sign(&app, &body, 0);
    let (status, answer) = webhook(&app, &body, Some(&signature)).await;
    assert_eq!(
        (status, &answer["code"]),
        (StatusCode::CREATED, &json!("paid")),
        "{answer}"
    );
    assert_eq!(answer["order"]["payment_ref"], "pay_123");
    // A replay within the tolerance is answered as the first delivery.
    let (status, replay) = webhook(&app, &body, Some(&signature)).await;
    assert_eq!(
        (status, &replay["code"]),
        (StatusCode::CREATED, &json!("paid"))
    );
    // Another payment of a paid order is refused (the shop refunds it).
    let second = payment(id, "succeeded", "pay_456", 1999);
    let (status, answer) = webhook(&app, &second, Some(&sign(&app, &second, 0))).await;
    assert_eq!(
        (status, &answer["code"]),
        (StatusCode::CONFLICT, &json!("order_paid"))
    );
    assert_eq!(units(&app, sale).await, (2, 0, 1));

    // Authentic but unusable bodies.
    let unknown = payment(&uuid::Uuid::now_v7().to_string(), "succeeded", "p", 1999);
    let (status, answer) = webhook(&app, &unknown, Some(&sign(&app, &unknown, 0))).await;
    assert_eq!(
        (status, &answer["code"]),
        (StatusCode::NOT_FOUND, &json!("order_not_found"))
    );
    for bad in [
        payment("not-a-uuid", "succeeded", "p", 1999),
        payment(id, "refunded", "p", 1999),
        payment(id, "succeeded", "", 1999),
        json!({"order_id": id}).to_string(),
    ] {
        let (status, answer) = webhook(&app, &bad, Some(&sign(&app, &bad, 0))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        assert_eq!(answer["code"], "invalid_request");
    }
    // With a secret, the demo route is off.
    let (status, answer) = demo_pay(&app, id).await;
    assert_eq!(
        (status, &answer["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
}

#[tokio::test]
async fn co11_without_a_secret_there_is_no_webhook() {
    let app = spawn_app().await;
    let sale = hold_sale(&app, 1, 1, 600).await;
    let order = reserve(&app, sale, "alice").await;
    let body = payment(id_of(&order), "succeeded", "pay_1", 1999);
    let signature = WebhookSecret::new(SECRET.as_bytes()).unwrap().sign(
        flashsale_core::Clock::now(&*app.clock).unix_timestamp(),
        body.as_bytes(),
    );
    let (status, answer) = webhook(&app, &body, Some(&signature)).await;
    assert_eq!(
        (status, &answer["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
    assert_eq!(units(&app, sale).await, (0, 1, 0));
}

#[tokio::test]
async fn co_a_hold_sale_and_its_orders_survive_a_restart() {
    let app = spawn_app().await;
    let sale = hold_sale(&app, 3, 1, 600).await;
    let paid = reserve(&app, sale, "alice").await;
    let held = reserve(&app, sale, "bob").await;
    assert_eq!(demo_pay(&app, id_of(&paid)).await.0, StatusCode::CREATED);
    let app = app.restart().await;
    assert_eq!(app.status(sale).await["checkout_mode"], "hold");
    assert_eq!(units(&app, sale).await, (1, 1, 1));
    assert_eq!(
        get_order(&app, id_of(&paid)).await.1["order"]["status"],
        "paid"
    );
    assert_eq!(
        get_order(&app, id_of(&held)).await.1["order"]["status"],
        "reserved"
    );
    let (status, body) = app.buy(sale, "bob").await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::CONFLICT, &json!("already_purchased"))
    );
}
