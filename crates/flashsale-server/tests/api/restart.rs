//! Durability across a graceful restart: orders, stock and the summary survive.

use crate::helpers::spawn_app;
use reqwest::StatusCode;

#[tokio::test]
async fn orders_and_stock_survive_a_graceful_restart_on_the_same_data_dir() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 1).await;
    let (_, confirmed) = app.buy(sale, "alice").await;
    app.buy(sale, "bob").await;
    app.buy(sale, "bob").await;

    let app = app.restart().await;

    let status = app.status(sale).await;
    assert_eq!(status["stock_remaining"], 8);
    let (code, found) = app.orders(sale, "alice").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(found["orders"][0], confirmed["order"]);
    let (code, body) = app.buy(sale, "alice").await;
    assert_eq!(code, StatusCode::CONFLICT, "PR-2 holds after a restart");
    assert_eq!(body["code"], "already_purchased");
    let summary = app.summary(sale).await;
    assert_eq!(summary["confirmed_orders"], 2);
    assert_eq!(summary["rejections"]["already_purchased"], 2);
}
