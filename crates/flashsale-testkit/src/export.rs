//! The operator's export of a sale's orders (SPEC 11, OP-8): what every store's
//! [`SaleStore::order_page`] answers, walked from the first page to an empty one.

use crate::StoreUnderTest;
use crate::conformance::{active, buy};
use crate::durability::restart;
use flashsale_core::SaleId;
use flashsale_store::{Order, OrderKey, PurchaseOutcome, SaleStore};
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

/// Walks every page of the sale's orders, `limit` at a time, checking that keys only rise.
async fn walk(store: &dyn SaleStore, sale: SaleId, limit: usize) -> (Vec<Order>, usize) {
    let mut all: Vec<Order> = Vec::new();
    let mut after: Option<OrderKey> = None;
    let mut pages = 0;
    loop {
        let page = store.order_page(sale, after, limit).await.unwrap().unwrap();
        pages += 1;
        assert!(page.len() <= limit, "a page longer than its limit");
        for order in &page {
            assert!(
                after.is_none_or(|a| a < order.key()),
                "orders out of export order: {order:?} after {after:?}"
            );
            assert_eq!(order.sale_id, sale);
            after = Some(order.key());
        }
        if page.is_empty() {
            return (all, pages);
        }
        all.extend(page);
    }
}

/// OP-8: a walk over the pages meets every order committed before it exactly once, in export
/// order, while other buyers keep buying between the pages; orders committed during the walk
/// are met at most once, and a walk after the purchases (and after a restart) meets exactly
/// the confirmed orders.
pub async fn orders_are_paged_once_each_while_purchases_continue<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(1_000, 3)).await.unwrap();
    let mut before = Vec::new();
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let store = Arc::clone(&store);
            // Up to 3 orders per buyer, so a buyer's orders are not one per page.
            tokio::spawn(
                async move { buy(&*store, sale.id, &format!("early-{}", i % 40), 1).await },
            )
        })
        .collect();
    for task in tasks {
        match task.await.unwrap() {
            PurchaseOutcome::Confirmed(order) => before.push(order),
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    let during: Vec<_> = (0..150)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { buy(&*store, sale.id, &format!("late-{i}"), 1).await })
        })
        .collect();
    let (walked, _) = walk(&*store, sale.id, 7).await;
    let mut confirmed = before.clone();
    for task in during {
        match task.await.unwrap() {
            PurchaseOutcome::Confirmed(order) => confirmed.push(order),
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    let walked_ids: Vec<Uuid> = walked.iter().map(|o| o.order_id).collect();
    let unique: HashSet<Uuid> = walked_ids.iter().copied().collect();
    assert_eq!(unique.len(), walked_ids.len(), "an order on two pages");
    for order in &before {
        let found = walked.iter().find(|o| o.order_id == order.order_id);
        assert_eq!(
            found,
            Some(order),
            "an order committed before the walk was skipped"
        );
    }
    let confirmed_ids: HashSet<Uuid> = confirmed.iter().map(|o| o.order_id).collect();
    assert!(
        unique.is_subset(&confirmed_ids),
        "a page showed an order never confirmed"
    );

    let (after_purchases, pages) = walk(&*store, sale.id, 100).await;
    assert_eq!(after_purchases.len(), confirmed.len());
    assert_eq!(pages, 4, "270 orders in pages of 100, then the empty page");
    let mut expected = confirmed.clone();
    expected.sort_by_key(Order::key);
    assert_eq!(after_purchases, expected);

    let store = restart(&sut, store).await;
    let (after_restart, _) = walk(&*store, sale.id, 1_000).await;
    let ids = |orders: &[Order]| orders.iter().map(|o| o.order_id).collect::<Vec<_>>();
    assert_eq!(ids(&after_restart), ids(&expected));
    assert!(
        store
            .order_page(SaleId(987_654_321), None, 10)
            .await
            .unwrap()
            .is_none(),
        "an unknown sale has no pages"
    );
}
