//! T-4: sale status endpoints.

use crate::helpers::{ADMIN_TOKEN, END, START, read, rfc3339, spawn_app};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn featured_sale_is_404_sale_not_found_when_there_is_no_sale() {
    let app = spawn_app().await;
    let (status, body) = read(app.get("/api/sale").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "sale_not_found");
}

#[tokio::test]
async fn sale_status_has_every_field_of_the_contract_with_server_time_from_the_store_clock() {
    let app = spawn_app().await;
    let id = app.create_sale(10, 2).await;
    let body = app.status(id).await;
    assert_eq!(
        body,
        json!({
            "sale_id": id, "name": "Widget", "state": "upcoming", "ended_reason": null,
            "starts_at": rfc3339(START), "ends_at": rfc3339(END),
            "stock_total": 10, "stock_remaining": 10, "per_user_limit": 2,
            "sold_out_at": null, "server_time": "2026-11-22T12:00:00Z",
            // The product (OP-12): none given, so none shown.
            "description": null, "price_minor": null, "currency": null, "image_url": null,
            // Checkout (CO-1, CO-3): an instant sale, its units at one instant.
            "stock_available": 10, "stock_held": 0, "stock_sold": 0,
            "checkout_mode": "instant", "payment_window_secs": null,
            // The waitlist (CO-9): nobody waits.
            "waitlist_length": 0,
        })
    );
}

#[tokio::test]
async fn featured_sale_is_the_active_one_else_the_next_upcoming() {
    let app = spawn_app().await;
    let first = app.create_sale(5, 1).await;
    let later = json!({
        "name": "Later", "starts_at": "2026-11-22T13:00:00Z", "ends_at": "2026-11-22T14:00:00Z",
        "stock": 5,
    });
    let (status, _) = read(app.post_sale(&later, Some(ADMIN_TOKEN)).await).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, body) = read(app.get("/api/sale").await).await;
    assert_eq!(body["sale_id"], first, "the next upcoming");
    app.clock.set(START);
    let (_, body) = read(app.get("/api/sale").await).await;
    assert_eq!(body["sale_id"], first);
    assert_eq!(body["state"], "active");
}

#[tokio::test]
async fn unknown_or_malformed_sale_ids_are_404_sale_not_found() {
    let app = spawn_app().await;
    for path in [
        "/api/sales/999",
        "/api/sales/0",
        "/api/sales/-1",
        "/api/sales/abc",
        "/api/sales/99999999999999999999999",
    ] {
        let response = app.get(path).await;
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{path}"
        );
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["code"], "sale_not_found", "{path}");
    }
}
