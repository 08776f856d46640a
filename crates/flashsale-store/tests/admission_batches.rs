//! Group admission in the scale-out store (issue 15, item 2), on the real Redis and
//! PostgreSQL: concurrent attempts of one sale go to `admission.lua` in shared calls, and
//! every rule still holds for each attempt. That each attempt of a batch is decided exactly
//! as `decide` would in turn is checked at the script level by `admission_differential.rs`;
//! here the whole store: batches form, duplicates of one key share one order, nobody goes over
//! the limit, the books balance, and a failed call fails each of its attempts alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flashsale_core::{IdempotencyKey, Quantity, Rejection, UserId};
use flashsale_store::{Attempt, PurchaseOutcome, SaleStore, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::{Cleanup, active, assert_invariants, connect, eventually, isolated};
use tokio::sync::Barrier;

fn attempt(sale: flashsale_core::SaleId, user: &str, quantity: u32, key: Option<&str>) -> Attempt {
    Attempt {
        sale_id: sale,
        user_id: UserId::parse(user).unwrap(),
        quantity: Quantity::parse(i64::from(quantity), 10).unwrap(),
        idempotency_key: key.map(|k| IdempotencyKey::parse(k).unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_attempts_share_admission_calls_and_every_rule_still_holds() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = Arc::new(connect(&cfg).await);
    let sale = store.create_sale(active(60, 2)).await.unwrap();
    let before = store.admission_batches();

    // 100 buyers, each sending at once: one or two units plainly, then the same keyed attempt
    // twice (a client's retry racing its first try): 400 attempts for 60 units.
    let mut plan = Vec::new();
    for b in 0..100u32 {
        let user = format!("buyer-{b}");
        plan.push((user.clone(), 1 + b % 2, None));
        plan.push((user.clone(), 1, None));
        let key = format!("key-{b}");
        plan.push((user.clone(), 1, Some(key.clone())));
        plan.push((user, 1, Some(key)));
    }
    let barrier = Arc::new(Barrier::new(plan.len()));
    let mut tasks = Vec::new();
    for (user, quantity, key) in plan {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let a = attempt(sale.id, &user, quantity, key.as_deref());
            barrier.wait().await;
            (user, key, store.purchase(a).await)
        }));
    }
    let mut confirmed = Vec::new();
    let mut by_key: BTreeMap<String, Vec<PurchaseOutcome>> = BTreeMap::new();
    let mut units: BTreeMap<String, u32> = BTreeMap::new();
    for task in tasks {
        let (user, key, outcome) = task.await.unwrap();
        let outcome = outcome.unwrap_or_else(|e| panic!("{user}: {e}"));
        match &outcome {
            PurchaseOutcome::Confirmed(order) => {
                if !confirmed.contains(&order.order_id) {
                    confirmed.push(order.order_id);
                    *units.entry(user.clone()).or_default() += order.quantity;
                }
            }
            PurchaseOutcome::Rejected { rejection, .. } => assert!(
                matches!(
                    rejection,
                    Rejection::SoldOut
                        | Rejection::AlreadyPurchased
                        | Rejection::LimitExceeded { .. }
                        | Rejection::InsufficientStock { .. }
                ),
                "{user}: {rejection:?}"
            ),
            other => panic!("{user}: unexpected {other:?}"),
        }
        if let Some(key) = key {
            by_key.entry(key).or_default().push(outcome);
        }
    }

    // Both sends of a key got the one answer (the same order, or the same refusal).
    for (key, outcomes) in &by_key {
        assert_eq!(outcomes.len(), 2);
        assert_eq!(
            format!("{:?}", outcomes[0]),
            format!("{:?}", outcomes[1]),
            "{key}"
        );
    }
    assert!(units.values().all(|&u| u <= 2), "over the limit: {units:?}");
    assert!(units.values().sum::<u32>() <= 60, "oversold: {units:?}");
    assert_invariants(&cfg, sale.id, &confirmed).await;

    // Fewer calls than attempts: the attempts shared calls.
    let after = store.admission_batches();
    let (calls, attempts) = (after.calls - before.calls, after.attempts - before.attempts);
    eprintln!("{attempts} attempts in {calls} calls: {after:?}");
    assert!(
        attempts >= 400,
        "every attempt reached the script: {attempts}"
    );
    assert!(
        calls * 2 <= attempts,
        "{calls} calls for {attempts} attempts: no batching"
    );
    assert_eq!(after.at_most.last().copied(), Some(after.calls));
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_admission_call_fails_each_of_its_attempts_and_takes_nothing() {
    let mut redis_server = support::PrivateRedis::start();
    let cfg = isolated(&redis_server.url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = Arc::new(connect(&cfg).await);
    let sale = store.create_sale(active(100, 1)).await.unwrap();
    let first = match store
        .purchase(attempt(sale.id, "alice", 1, None))
        .await
        .unwrap()
    {
        PurchaseOutcome::Confirmed(order) => order.order_id,
        other => panic!("{other:?}"),
    };

    redis_server.stop();
    let before = store.admission_batches();
    let barrier = Arc::new(Barrier::new(50));
    let mut tasks = Vec::new();
    for b in 0..50 {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let a = attempt(sale.id, &format!("buyer-{b}"), 1, Some(&format!("k{b}")));
            barrier.wait().await;
            store.purchase(a).await
        }));
    }
    for task in tasks {
        let outcome = task.await.unwrap();
        assert!(
            matches!(&outcome, Err(StoreError::Unavailable { what, .. })
                if what.contains("nothing was taken")),
            "{outcome:?}"
        );
    }
    let after = store.admission_batches();
    assert!(
        after.calls - before.calls < after.attempts - before.attempts,
        "the failed attempts shared calls"
    );

    // Redis comes back empty: the sale is rebuilt from PostgreSQL; the failed attempts took
    // nothing, so the same keys now buy.
    redis_server.restart();
    assert!(
        eventually(Duration::from_secs(10), || async {
            store.ready().await.is_ok()
        })
        .await
    );
    let mut confirmed = vec![first];
    for b in 0..50 {
        let a = attempt(sale.id, &format!("buyer-{b}"), 1, Some(&format!("k{b}")));
        match store.purchase(a).await.unwrap() {
            PurchaseOutcome::Confirmed(order) => confirmed.push(order.order_id),
            other => panic!("buyer-{b} after Redis came back: {other:?}"),
        }
    }
    assert_invariants(&cfg, sale.id, &confirmed).await;
    store.shutdown().await;
}
