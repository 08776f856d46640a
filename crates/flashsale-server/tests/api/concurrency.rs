//! NF-1, NF-7/NF-8, PR-5/PR-6, IM-4: 1,000 distinct buyers and 50 buyers sending 20 concurrent
//! duplicates each race for 100 units over real HTTP.

use crate::helpers::spawn_app;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nf1_two_thousand_racing_requests_sell_exactly_the_stock_and_nobody_twice() {
    let app = Arc::new(spawn_app().await);
    let sale = app.active_sale(100, 1).await;

    // (user, idempotency key) for every request: 1,000 distinct buyers, then 50 buyers with
    // 20 duplicates each (half of them reuse one key, half send none).
    let mut requests: Vec<(String, Option<String>)> =
        (0..1000).map(|i| (format!("buyer-{i}"), None)).collect();
    for d in 0..50 {
        for _ in 0..20 {
            let key = (d % 2 == 0).then(|| format!("dup-key-{d}"));
            requests.push((format!("dup-{d}"), key));
        }
    }
    let barrier = Arc::new(Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(user, key)| {
            let (app, barrier) = (Arc::clone(&app), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let response = app
                    .buy_with(sale, &json!({ "user_id": user }), key.as_deref())
                    .await;
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                (user, status, body)
            })
        })
        .collect();

    let mut orders_by_user: HashMap<String, HashSet<String>> = HashMap::new();
    let mut codes: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        let (user, status, body) = task.await.unwrap();
        let code = body["code"].as_str().unwrap().to_owned();
        match status {
            StatusCode::CREATED => {
                let order = body["order"]["order_id"].as_str().unwrap().to_owned();
                orders_by_user.entry(user).or_default().insert(order);
            }
            StatusCode::CONFLICT => {
                assert!(
                    ["sold_out", "already_purchased"].contains(&code.as_str()),
                    "{body}"
                )
            }
            other => panic!("unexpected {other}: {body}"),
        }
        *codes.entry(code).or_default() += 1;
    }

    let distinct_orders: usize = orders_by_user.values().map(HashSet::len).sum();
    assert_eq!(
        distinct_orders, 100,
        "IM-4: exactly the stock is sold ({codes:?})"
    );
    assert!(
        orders_by_user.values().all(|orders| orders.len() == 1),
        "PR-5: nobody holds two orders"
    );
    let status = app.status(sale).await;
    assert_eq!(status["stock_remaining"], 0);
    assert_eq!(status["state"], "ended");
    assert_eq!(status["ended_reason"], "sold_out");
    let summary = app.summary(sale).await;
    assert_eq!(summary["confirmed_orders"], 100);
    assert_eq!(summary["confirmed_units"], 100);
    for (user, orders) in &orders_by_user {
        let (status, found) = app.orders(sale, user).await;
        assert_eq!(status, StatusCode::OK);
        let ids: HashSet<String> = found["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(&ids, orders, "{user}");
    }
}
