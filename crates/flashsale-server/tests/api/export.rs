//! The orders export (SPEC 11, OP-8): `GET /api/admin/sales/{id}/orders` as JSON pages and as
//! CSV, over real HTTP against the embedded store and a scale-out instance. The memory of a
//! 100,000-order export is measured in `tests/export_memory.rs` (a binary of its own, for its
//! counting allocator).

use crate::helpers::{ADMIN_TOKEN, csv_lines, spawn_app};
use crate::scale_out::{Cleanup, TOKEN, spawn_instance};
use flashsale_testkit::isolation::unique;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

/// Buyer ids a spreadsheet would run as formulas, or that need CSV quoting.
const HOSTILE: &[&str] = &[
    "=HYPERLINK(\"http://evil.example\",\"click\")",
    "@sum(1)",
    "+1",
    "-2",
    "a,b",
];

/// One service under test: its address, admin token and client.
struct Api {
    base: String,
    token: &'static str,
    client: reqwest::Client,
}

impl Api {
    async fn buy(&self, sale: i64, user: &str) {
        let response = self
            .client
            .post(format!("{}/api/sales/{sale}/orders", self.base))
            .json(&json!({ "user_id": user }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "buying for {user}");
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    async fn page(&self, sale: i64, query: &str) -> (StatusCode, Value) {
        let response = self
            .get(
                &format!("/api/admin/sales/{sale}/orders{query}"),
                Some(self.token),
            )
            .await;
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Walks every JSON page, `limit` at a time; returns the orders and the page count.
    async fn walk(&self, sale: i64, limit: usize) -> (Vec<Value>, usize) {
        let mut orders = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let query = match &cursor {
                Some(c) => format!("?limit={limit}&cursor={c}"),
                None => format!("?limit={limit}"),
            };
            let (status, body) = self.page(sale, &query).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            pages += 1;
            let page = body["orders"].as_array().unwrap();
            assert!(page.len() <= limit);
            orders.extend(page.iter().cloned());
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return (orders, pages),
            }
        }
    }
}

/// Buys one unit for each of `users` (plus the hostile ids) in the active sale `sale`, then
/// checks every part of the export against what was bought.
async fn exercise(api: &Api, sale: i64, users: usize) {
    let mut bought: Vec<String> = (0..users).map(|i| format!("buyer-{i:03}")).collect();
    bought.extend(HOSTILE.iter().map(|s| (*s).to_owned()));
    for user in &bought {
        api.buy(sale, user).await;
    }

    // JSON pages: every order exactly once, by created_at then order_id, with its fields.
    let (orders, pages) = api.walk(sale, 10).await;
    assert_eq!(orders.len(), bought.len());
    assert_eq!(pages, bought.len().div_ceil(10));
    let ids: HashSet<&str> = orders
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), orders.len(), "an order on two pages");
    let users: HashSet<&str> = orders
        .iter()
        .map(|o| o["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, bought.iter().map(String::as_str).collect());
    let keys: Vec<(OffsetDateTime, &str)> = orders
        .iter()
        .map(|o| {
            assert_eq!(o["quantity"], 1);
            assert_eq!(o["sale_id"], sale);
            let at = OffsetDateTime::parse(o["created_at"].as_str().unwrap(), &Rfc3339).unwrap();
            (at, o["order_id"].as_str().unwrap())
        })
        .collect();
    assert!(keys.is_sorted(), "pages out of created_at, order_id order");
    let (status, first) = api.page(sale, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        first["orders"].as_array().unwrap().len(),
        bought.len().min(100),
        "the default page is 100"
    );

    // Bad input: each a 400 invalid_request naming the rule, before anything is read.
    for query in [
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?cursor=not-ours",
        "?cursor=b3JkZXI6MTpub3QtYS11dWlk",
        "?format=xlsx",
    ] {
        let (status, body) = api.page(sale, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["code"], "invalid_request", "{query}");
    }
    let (status, body) = api.page(987_654_321, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "sale_not_found");
    let (status, body) = api.page(987_654_321, "?format=csv").await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::NOT_FOUND, &json!("sale_not_found"))
    );
    for token in [None, Some("wrong-token")] {
        let response = api
            .get(&format!("/api/admin/sales/{sale}/orders"), token)
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    // CSV: a header, one row per order in the same order as the pages, formulas defused.
    for ask in ["?format=csv", "accept"] {
        let path = format!("/api/admin/sales/{sale}/orders");
        let request = api
            .client
            .get(format!("{}{path}", api.base))
            .bearer_auth(api.token);
        let lines = csv_lines(request, ask, sale, "orders").await;
        assert_eq!(lines[0], "order_id,user_id,quantity,created_at");
        assert_eq!(lines.len(), orders.len() + 1);
        for (line, order) in lines[1..].iter().zip(&orders) {
            let user = order["user_id"].as_str().unwrap();
            let cell = match user {
                "=HYPERLINK(\"http://evil.example\",\"click\")" => {
                    "\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"click\"\")\"".to_owned()
                }
                "@sum(1)" | "+1" | "-2" => format!("'{user}"),
                "a,b" => "\"a,b\"".to_owned(),
                plain => plain.to_owned(),
            };
            let expected = format!(
                "{},{cell},1,{}",
                order["order_id"].as_str().unwrap(),
                order["created_at"].as_str().unwrap()
            );
            assert_eq!(*line, expected);
        }
    }
}

#[tokio::test]
async fn the_embedded_store_exports_every_order_as_pages_and_as_a_defused_csv() {
    let app = spawn_app().await;
    let sale = app.active_sale(1_000, 1).await;
    let api = Api {
        base: app.address.clone(),
        token: ADMIN_TOKEN,
        client: app.client.clone(),
    };
    exercise(&api, sale, 42).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_out_exports_every_order_as_pages_and_as_a_defused_csv() {
    let name = unique("export");
    let _cleanup = Cleanup::named(&name);
    let (base, _stop) = spawn_instance(&name).await;
    let api = Api {
        base,
        token: TOKEN,
        client: reqwest::Client::new(),
    };
    let now = OffsetDateTime::now_utc();
    let response = api
        .client
        .post(format!("{}/api/admin/sales", api.base))
        .bearer_auth(TOKEN)
        .json(&json!({
            "name": "Export widget", "stock": 1_000, "per_user_limit": 1,
            "starts_at": (now - Duration::seconds(1)).format(&Rfc3339).unwrap(),
            "ends_at": (now + Duration::hours(1)).format(&Rfc3339).unwrap(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let sale = response.json::<Value>().await.unwrap()["sale_id"]
        .as_i64()
        .unwrap();
    exercise(&api, sale, 42).await;
}
