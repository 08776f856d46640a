//! The conformance cases: what every [`SaleStore`](flashsale_store::SaleStore) answers, on
//! fresh data (docs/requirements.md sections 2-3).
//!
//! Windows are set relative to the real clock (a sale that started a second ago, one that starts
//! in an hour, one that ended an hour ago), because the scale-out backend decides with the
//! shared store's own clock, which a test cannot inject. Exact boundaries (exactly at the start,
//! exactly at the end) are tested in flashsale-core, where the clock is an input.

use crate::StoreUnderTest;
use flashsale_core::{
    IdempotencyKey, NewSale, NotActiveReason, Outcome, Quantity, Rejection, SaleId, SaleState,
    UserId,
};
use flashsale_store::{Attempt, PurchaseOutcome, SaleStore};
use std::collections::HashMap;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

pub(crate) fn new_sale(start_in: Duration, length: Duration, stock: u32, limit: u32) -> NewSale {
    let now = OffsetDateTime::now_utc();
    NewSale::parse(
        "Conformance widget",
        now + start_in,
        now + start_in + length,
        i64::from(stock),
        i64::from(limit),
    )
    .unwrap()
}

pub(crate) fn active(stock: u32, limit: u32) -> NewSale {
    new_sale(Duration::seconds(-1), Duration::hours(1), stock, limit)
}

pub(crate) fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

pub(crate) fn attempt(sale: SaleId, name: &str, quantity: u32) -> Attempt {
    Attempt {
        sale_id: sale,
        user_id: user(name),
        quantity: Quantity::parse(i64::from(quantity), 1000).unwrap(),
        idempotency_key: None,
    }
}

pub(crate) async fn buy(
    store: &dyn SaleStore,
    sale: SaleId,
    name: &str,
    quantity: u32,
) -> PurchaseOutcome {
    store.purchase(attempt(sale, name, quantity)).await.unwrap()
}

pub(crate) fn rejection(outcome: &PurchaseOutcome) -> Option<Rejection> {
    match outcome {
        PurchaseOutcome::Rejected { rejection, .. } => Some(*rejection),
        _ => None,
    }
}

/// IM-1: a new sale is active with its full stock, and is listed.
pub async fn new_sale_has_full_stock_and_is_listed<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(5, 1)).await.unwrap();
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.remaining, 5);
    assert_eq!(status.sale.name, "Conformance widget");
    assert_eq!(status.state(store.now()), SaleState::Active);
    assert!(status.sold_out_at.is_none());
    let all = store.statuses().await.unwrap();
    assert!(all.iter().any(|s| s.sale.id == sale.id));
}

/// PR-1, IM-2: a purchase is confirmed, takes one unit and is readable afterwards.
pub async fn confirmed_purchase_takes_one_unit_and_is_readable<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(5, 1)).await.unwrap();
    let outcome = buy(&*store, sale.id, "alice", 1).await;
    let PurchaseOutcome::Confirmed(order) = outcome else {
        panic!("expected confirmed, got {outcome:?}")
    };
    assert_eq!(order.user_id.as_str(), "alice");
    assert_eq!(order.quantity, 1);
    assert_eq!(order.sale_id, sale.id);
    assert_eq!(store.status(sale.id).await.unwrap().unwrap().remaining, 4);
    let orders = store
        .orders(sale.id, &user("alice"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(orders, vec![order]);
    assert!(
        store
            .orders(sale.id, &user("bob"))
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
}

/// PR-2, PR-5: a buyer at the limit is told so and shown the order they hold.
pub async fn buyer_at_the_limit_is_already_purchased_with_their_order<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(5, 1)).await.unwrap();
    let PurchaseOutcome::Confirmed(first) = buy(&*store, sale.id, "alice", 1).await else {
        panic!()
    };
    let again = buy(&*store, sale.id, "alice", 1).await;
    assert_eq!(
        again,
        PurchaseOutcome::Rejected {
            rejection: Rejection::AlreadyPurchased,
            orders: vec![first]
        }
    );
    assert_eq!(store.status(sale.id).await.unwrap().unwrap().remaining, 4);
}

/// T-3: with a limit of 3, a buyer takes 2 then 1, then is refused; 2 more is limit_exceeded.
pub async fn per_user_limit_above_one_is_enforced_across_attempts<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(10, 3)).await.unwrap();
    assert!(matches!(
        buy(&*store, sale.id, "alice", 2).await,
        PurchaseOutcome::Confirmed(_)
    ));
    let over = buy(&*store, sale.id, "alice", 2).await;
    assert_eq!(
        rejection(&over),
        Some(Rejection::LimitExceeded { allowed: 1 })
    );
    assert!(matches!(
        buy(&*store, sale.id, "alice", 1).await,
        PurchaseOutcome::Confirmed(_)
    ));
    let done = buy(&*store, sale.id, "alice", 1).await;
    assert_eq!(rejection(&done), Some(Rejection::AlreadyPurchased));
    let held: u32 = store
        .orders(sale.id, &user("alice"))
        .await
        .unwrap()
        .unwrap()
        .iter()
        .map(|o| o.quantity)
        .sum();
    assert_eq!(held, 3);
    assert_eq!(store.status(sale.id).await.unwrap().unwrap().remaining, 7);
}

/// A quantity above the sale's own limit is refused as invalid, and takes nothing.
pub async fn quantity_above_the_sales_limit_is_refused<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(10, 2)).await.unwrap();
    assert_eq!(
        buy(&*store, sale.id, "alice", 3).await,
        PurchaseOutcome::QuantityAboveLimit { limit: 2 }
    );
    assert_eq!(store.status(sale.id).await.unwrap().unwrap().remaining, 10);
}

/// IM-3..IM-5, FL-4: the last unit sells, then everybody gets sold_out and the sale is ended.
pub async fn last_unit_sells_then_every_attempt_is_sold_out<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(2, 1)).await.unwrap();
    assert!(matches!(
        buy(&*store, sale.id, "a", 1).await,
        PurchaseOutcome::Confirmed(_)
    ));
    assert!(matches!(
        buy(&*store, sale.id, "b", 1).await,
        PurchaseOutcome::Confirmed(_)
    ));
    for name in ["c", "d", "a"] {
        assert_eq!(
            rejection(&buy(&*store, sale.id, name, 1).await),
            Some(Rejection::SoldOut),
            "{name}"
        );
    }
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.remaining, 0);
    assert_eq!(
        status.state(store.now()),
        SaleState::Ended(flashsale_core::EndReason::SoldOut)
    );
    assert!(status.sold_out_at.is_some());
}

/// T-2: asking for more than is left is refused without taking anything.
pub async fn quantity_above_the_remaining_stock_is_insufficient_stock<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(3, 5)).await.unwrap();
    assert!(matches!(
        buy(&*store, sale.id, "a", 2).await,
        PurchaseOutcome::Confirmed(_)
    ));
    let outcome = buy(&*store, sale.id, "b", 2).await;
    assert_eq!(
        rejection(&outcome),
        Some(Rejection::InsufficientStock { remaining: 1 })
    );
    assert_eq!(store.status(sale.id).await.unwrap().unwrap().remaining, 1);
}

/// FL-1, FL-3: outside the window, attempts are not active, and say which side they are on.
pub async fn attempts_outside_the_window_are_not_active<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let upcoming = store
        .create_sale(new_sale(Duration::hours(1), Duration::hours(1), 5, 1))
        .await
        .unwrap();
    let ended = store
        .create_sale(new_sale(Duration::hours(-2), Duration::hours(1), 5, 1))
        .await
        .unwrap();
    assert_eq!(
        rejection(&buy(&*store, upcoming.id, "a", 1).await),
        Some(Rejection::NotActive(NotActiveReason::Upcoming))
    );
    assert_eq!(
        rejection(&buy(&*store, ended.id, "a", 1).await),
        Some(Rejection::NotActive(NotActiveReason::Ended))
    );
    assert_eq!(
        store.status(upcoming.id).await.unwrap().unwrap().remaining,
        5
    );
    assert_eq!(store.status(ended.id).await.unwrap().unwrap().remaining, 5);
}

/// An unknown sale is reported as such everywhere.
pub async fn unknown_sale_is_not_found_everywhere<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let missing = SaleId(987_654_321);
    assert_eq!(
        buy(&*store, missing, "a", 1).await,
        PurchaseOutcome::SaleNotFound
    );
    assert!(store.status(missing).await.unwrap().is_none());
    assert!(store.orders(missing, &user("a")).await.unwrap().is_none());
    assert!(store.summary(missing).await.unwrap().is_none());
}

/// The same idempotency key with the same body replays the first outcome; with another body
/// it is refused; neither makes a second decision.
pub async fn idempotency_key_replays_the_first_outcome<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(5, 1)).await.unwrap();
    let with_key = |name: &str, key: &str| Attempt {
        idempotency_key: Some(IdempotencyKey::parse(key).unwrap()),
        ..attempt(sale.id, name, 1)
    };
    let first = store.purchase(with_key("alice", "k-1")).await.unwrap();
    assert!(matches!(first, PurchaseOutcome::Confirmed(_)));
    let replay = store.purchase(with_key("alice", "k-1")).await.unwrap();
    assert_eq!(replay, first);
    let reused = store.purchase(with_key("bob", "k-1")).await.unwrap();
    assert_eq!(reused, PurchaseOutcome::IdempotencyKeyReused);
    // A rejection is replayed too.
    let rejected = store.purchase(with_key("alice", "k-2")).await.unwrap();
    assert_eq!(rejection(&rejected), Some(Rejection::AlreadyPurchased));
    assert_eq!(
        store.purchase(with_key("alice", "k-2")).await.unwrap(),
        rejected
    );
    assert_eq!(store.status(sale.id).await.unwrap().unwrap().remaining, 4);
    let summary = store.summary(sale.id).await.unwrap().unwrap();
    assert_eq!(summary.attempts, 2, "replays are not new attempts");
}

/// NF-7, PR-6: many buyers and many concurrent duplicates race for a few units: exactly the
/// stock is sold, nobody holds more than the limit, and the summary agrees.
pub async fn racing_buyers_and_duplicates_never_oversell<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let stock = 25;
    let sale = store.create_sale(active(stock, 1)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        // 150 distinct buyers once each, then 10 buyers sending 5 concurrent attempts each.
        let name = if i < 150 {
            format!("buyer-{i}")
        } else {
            format!("dup-{}", i % 10)
        };
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            (name.clone(), buy(&*store, sale.id, &name, 1).await)
        }));
    }
    let mut confirmed: HashMap<String, u32> = HashMap::new();
    for task in tasks {
        let (name, outcome) = task.await.unwrap();
        match outcome {
            PurchaseOutcome::Confirmed(order) => {
                *confirmed.entry(name).or_default() += order.quantity
            }
            PurchaseOutcome::Rejected {
                rejection: Rejection::SoldOut | Rejection::AlreadyPurchased,
                ..
            } => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(confirmed.values().sum::<u32>(), stock);
    assert!(
        confirmed.values().all(|&n| n == 1),
        "a buyer got more than the limit"
    );
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.remaining, 0);
    for name in confirmed.keys() {
        assert_eq!(
            store
                .orders(sale.id, &user(name))
                .await
                .unwrap()
                .unwrap()
                .len(),
            1
        );
    }
    let summary = store.summary(sale.id).await.unwrap().unwrap();
    assert_eq!(summary.confirmed_units, u64::from(stock));
    assert_eq!(summary.confirmed_orders, u64::from(stock));
    assert_eq!(summary.attempts, 200);
    assert_eq!(
        summary.attempts,
        summary.confirmed_orders + summary.rejections.total()
    );
}

/// The summary counts attempts and rejections by reason.
pub async fn summary_counts_attempts_and_rejections_by_reason<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(1, 1)).await.unwrap();
    buy(&*store, sale.id, "a", 1).await;
    buy(&*store, sale.id, "a", 1).await;
    buy(&*store, sale.id, "b", 1).await;
    let s = store.summary(sale.id).await.unwrap().unwrap();
    assert_eq!(s.attempts, 3);
    assert_eq!(s.confirmed_orders, 1);
    assert_eq!(s.confirmed_units, 1);
    // Once the last unit is gone the sale is ended (sold out): state is checked first, so
    // alice's second attempt is sold_out too.
    assert_eq!(s.rejections[Outcome::SoldOut], 2);
    assert_eq!(s.status.remaining, 0);
}

/// A sale created with an admin's key, then again with the same key (a retry after a lost
/// answer), is one sale: the second call returns the first sale and adds nothing.
pub async fn creating_a_sale_again_with_its_key_returns_the_same_sale<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let key = flashsale_core::IdempotencyKey::parse("create-widget-1").unwrap();
    let request = active(5, 1);
    let keyed = request.clone().with_creation_key(key.clone());
    let first = store.create_sale(keyed.clone()).await.unwrap();
    let again = store.create_sale(keyed).await.unwrap();
    assert_eq!(again.id, first.id);
    assert!(request.describes(&again));
    let other = store.create_sale(request).await.unwrap();
    assert_ne!(other.id, first.id, "no key: a new sale every time");
    assert_eq!(store.statuses().await.unwrap().len(), 2);
    // The same key with another request gives back the first sale; the caller sees that it
    // does not describe the new request (the HTTP layer answers 422).
    let different = active(7, 2);
    let reused = store
        .create_sale(different.clone().with_creation_key(key))
        .await
        .unwrap();
    assert_eq!(reused.id, first.id);
    assert!(!different.describes(&reused));
}
