//! The stock ledger (SPEC 11, OP-9..OP-11): `GET /api/admin/sales/{id}/ledger` as JSON pages and
//! as CSV, over real HTTP against the embedded store. The stores' own contract (every cause,
//! paging while purchases go on, replay after a herd, both stores) is in
//! `flashsale-testkit/src/ledger.rs`.

use crate::helpers::{ADMIN_TOKEN, TestApp, csv_lines, read, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use time::Duration;

impl TestApp {
    /// The ledger at `query` (status and body).
    async fn ledger(&self, sale: i64, query: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(&format!("/api/admin/sales/{sale}/ledger{query}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// Every entry, `limit` at a time, checking each page against its cursors.
    async fn walk_ledger(&self, sale: i64, limit: usize) -> Vec<Value> {
        let mut entries: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = match &cursor {
                Some(c) => format!("?limit={limit}&cursor={c}"),
                None => format!("?limit={limit}"),
            };
            let (status, body) = self.ledger(sale, &query).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let page = body["entries"].as_array().unwrap();
            assert!(page.len() <= limit);
            entries.extend(page.iter().cloned());
            match body["next_cursor"].as_str() {
                Some(next) => {
                    assert_eq!(page.len(), limit, "a short page with a next page");
                    assert_eq!(Some(next), page.last().unwrap()["cursor"].as_str());
                    cursor = Some(next.to_owned());
                }
                None => return entries,
            }
        }
    }

    /// Sends an admin request with a JSON body; asserts 200.
    async fn operate(&self, method: reqwest::Method, path: &str, body: Value) {
        let response = self
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
}

/// The (available, held, sold) deltas of an entry.
fn deltas(entry: &Value) -> (i64, i64, i64) {
    let n = |f: &str| entry[f].as_i64().unwrap();
    (n("available_delta"), n("held_delta"), n("sold_delta"))
}

#[tokio::test]
async fn op9_op10_op11_the_ledger_lists_creation_orders_an_edit_and_a_cancel_with_their_cause() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 1).await;
    for user in ["ana", "ben", "cleo"] {
        assert_eq!(app.buy(sale, user).await.0, StatusCode::CREATED);
    }
    // Each step a second apart: at one instant, changes sort before orders.
    app.advance(Duration::seconds(1));
    let path = format!("/api/admin/sales/{sale}");
    app.operate(reqwest::Method::PATCH, &path, json!({"stock": 15}))
        .await;
    app.advance(Duration::seconds(1));
    let (_, order) = app.buy(sale, "dan").await;
    app.advance(Duration::seconds(1));
    app.operate(reqwest::Method::POST, &format!("{path}/cancel"), json!({}))
        .await;

    let entries = app.walk_ledger(sale, 2).await;
    let causes: Vec<&str> = entries
        .iter()
        .map(|e| e["cause"].as_str().unwrap())
        .collect();
    assert_eq!(
        causes,
        [
            "created", "order", "order", "order", "edit", "order", "cancel"
        ]
    );
    assert_eq!(deltas(&entries[0]), (10, 0, 0));
    assert_eq!(deltas(&entries[4]), (5, 0, 0));
    assert_eq!(deltas(&entries[6]), (0, 0, 0));
    for order in [1, 2, 3, 5] {
        assert_eq!(deltas(&entries[order]), (-1, 0, 1));
        assert!(entries[order]["sale_change_id"].is_null());
    }
    assert_eq!(entries[5]["order_id"], order["order"]["order_id"]);
    assert!(entries[4]["sale_change_id"].is_i64());
    assert!(entries[6]["sale_change_id"].is_i64());
    assert!(entries[0]["order_id"].is_null() && entries[4]["order_id"].is_null());
    let cursors: HashSet<&str> = entries
        .iter()
        .map(|e| e["cursor"].as_str().unwrap())
        .collect();
    assert_eq!(cursors.len(), entries.len(), "each entry its own cursor");

    // OP-11: replaying the deltas gives the figures the status shows.
    let sum = entries
        .iter()
        .map(deltas)
        .fold((0, 0, 0), |a, d| (a.0 + d.0, a.1 + d.1, a.2 + d.2));
    let status = app.status(sale).await;
    assert_eq!(sum, (status["stock_remaining"].as_i64().unwrap(), 0, 4));

    // A page from an entry's cursor starts with the next entry.
    let (status, page) = app
        .ledger(
            sale,
            &format!("?cursor={}", entries[3]["cursor"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["entries"].as_array().unwrap(), &entries[4..]);
    assert!(page["next_cursor"].is_null());
}

#[tokio::test]
async fn op9_the_ledger_route_refuses_bad_input_each_with_a_clear_4xx() {
    let app = spawn_app().await;
    let sale = app.active_sale(5, 1).await;
    let orders_cursor = "b3JkZXI6MTowMTkwYTBiMC0wMDAwLTcwMDAtODAwMC0wMDAwMDAwMDAwMDA";
    for query in [
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?cursor=not-ours",
        &format!("?cursor={orders_cursor}"),
        "?format=xlsx",
    ] {
        let (status, body) = app.ledger(sale, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["code"], "invalid_request", "{query}");
    }
    for query in ["", "?format=csv"] {
        let (status, body) = app.ledger(987_654_321, query).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::NOT_FOUND, &json!("sale_not_found")),
            "{query}"
        );
    }
    for token in [None, Some("wrong-token")] {
        let mut request = app
            .client
            .get(app.url(&format!("/api/admin/sales/{sale}/ledger")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let (status, body) = app.ledger(sale, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["entries"].as_array().unwrap().len(), 1, "the creation");
}

#[tokio::test]
async fn op9_the_ledger_as_csv_has_one_row_per_entry_in_ledger_order() {
    let app = spawn_app().await;
    let sale = app.active_sale(50, 1).await;
    for i in 0..12 {
        assert_eq!(
            app.buy(sale, &format!("buyer-{i}")).await.0,
            StatusCode::CREATED
        );
    }
    app.operate(
        reqwest::Method::PATCH,
        &format!("/api/admin/sales/{sale}"),
        json!({"stock": 60}),
    )
    .await;
    let entries = app.walk_ledger(sale, 1000).await;
    assert_eq!(entries.len(), 14);

    for ask in ["format", "accept"] {
        let request = app
            .client
            .get(app.url(&format!("/api/admin/sales/{sale}/ledger")))
            .bearer_auth(ADMIN_TOKEN);
        let lines = csv_lines(request, ask, sale, "ledger").await;
        assert_eq!(
            lines[0],
            "at,cause,order_id,available_delta,held_delta,sold_delta,sale_change_id"
        );
        assert_eq!(lines.len(), entries.len() + 1);
        for (line, entry) in lines[1..].iter().zip(&entries) {
            let text = |f: &str| entry[f].as_str().unwrap_or("").to_owned();
            let number = |f: &str| entry[f].as_i64().map_or(String::new(), |n| n.to_string());
            let expected = [
                text("at"),
                text("cause"),
                text("order_id"),
                number("available_delta"),
                number("held_delta"),
                number("sold_delta"),
                number("sale_change_id"),
            ]
            .join(",");
            assert_eq!(*line, expected);
        }
    }
}
