//! The stock ledger (SPEC 11, OP-9..OP-11): what every store's [`SaleStore::ledger_page`]
//! answers, walked from the first page to an empty one.

use crate::StoreUnderTest;
use crate::conformance::{active, buy};
use crate::durability::restart;
use flashsale_core::{ChangeRefusal, SaleChange, SaleEdit, SaleId};
use flashsale_store::{
    ChangeOutcome, LedgerCause, LedgerEntry, LedgerKey, PurchaseOutcome, SaleStore,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// Walks every page of the sale's ledger, `limit` at a time, checking that keys only rise.
pub(crate) async fn walk(store: &dyn SaleStore, sale: SaleId, limit: usize) -> Vec<LedgerEntry> {
    let mut all: Vec<LedgerEntry> = Vec::new();
    let mut after: Option<LedgerKey> = None;
    loop {
        let page = store
            .ledger_page(sale, after, limit)
            .await
            .unwrap()
            .unwrap();
        assert!(page.len() <= limit, "a page longer than its limit");
        for entry in &page {
            assert!(
                after.is_none_or(|a| a < entry.key),
                "entries out of ledger order: {entry:?} after {after:?}"
            );
            after = Some(entry.key);
        }
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// The sum of every entry's (available, held, sold) deltas.
pub(crate) fn replay(entries: &[LedgerEntry]) -> (i64, i64, i64) {
    entries.iter().fold((0, 0, 0), |(a, h, s), e| {
        (a + e.available_delta, h + e.held_delta, s + e.sold_delta)
    })
}

/// The sale's figures as its status tells them: (available, held, sold).
pub(crate) async fn figures(store: &dyn SaleStore, sale: SaleId) -> (i64, i64, i64) {
    let status = store.status(sale).await.unwrap().unwrap();
    (
        i64::from(status.remaining),
        i64::from(status.held),
        i64::from(status.sold()),
    )
}

/// Raises the sale's stock by `by`: whether it was accepted (a sale that sold out meanwhile
/// has ended for good, and refuses it).
pub(crate) async fn raise(store: &dyn SaleStore, sale: SaleId, by: u32) -> bool {
    let stock = store.status(sale).await.unwrap().unwrap().sale.stock;
    let edit = SaleEdit {
        stock: Some(i64::from(stock + by)),
        ..SaleEdit::default()
    };
    match store
        .change_sale(sale, SaleChange::Edit(edit))
        .await
        .unwrap()
    {
        ChangeOutcome::Changed(_) => true,
        ChangeOutcome::Refused(ChangeRefusal::Ended(_)) => false,
        other => panic!("raising the stock was not accepted: {other:?}"),
    }
}

/// Each order id that appears in `entries`, with how many times.
fn order_ids(entries: &[LedgerEntry]) -> HashMap<Uuid, usize> {
    let mut seen = HashMap::new();
    for entry in entries {
        assert_eq!(
            entry.order_id.is_some(),
            entry.cause == LedgerCause::Order,
            "{entry:?}"
        );
        if let Some(id) = entry.order_id {
            *seen.entry(id).or_default() += 1;
        }
    }
    seen
}

/// OP-9, OP-10: the ledger has one entry for the creation (the stock appears as available),
/// one per order (available down, sold up), one for an edit raising the stock (referring to
/// its `sale_changes` record), one for a cancel (moving nothing); a walk over the pages meets
/// every entry committed before it exactly once while other buyers keep buying, and the same
/// ledger is read back after a restart.
pub async fn ledger_records_each_cause_once_while_purchases_continue<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(100, 3)).await.unwrap();
    let mut confirmed = Vec::new();
    for i in 0..30 {
        match buy(&*store, sale.id, &format!("early-{}", i % 12), 1).await {
            PurchaseOutcome::Confirmed(order) => confirmed.push(order),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert!(raise(&*store, sale.id, 50).await);
    let before = walk(&*store, sale.id, 1_000).await;

    let during: Vec<_> = (0..60)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { buy(&*store, sale.id, &format!("late-{i}"), 1).await })
        })
        .collect();
    let walked = walk(&*store, sale.id, 7).await;
    for task in during {
        match task.await.unwrap() {
            PurchaseOutcome::Confirmed(order) => confirmed.push(order),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    let walked_keys: HashSet<LedgerKey> = walked.iter().map(|e| e.key).collect();
    assert_eq!(walked_keys.len(), walked.len(), "an entry on two pages");
    for entry in &before {
        assert!(
            walked.contains(entry),
            "an entry committed before the walk was skipped: {entry:?}"
        );
    }

    match store
        .change_sale(sale.id, SaleChange::Cancel)
        .await
        .unwrap()
    {
        ChangeOutcome::Changed(_) => {}
        other => panic!("the cancel was not accepted: {other:?}"),
    }
    let ledger = walk(&*store, sale.id, 100).await;
    assert_eq!(ledger.len(), 1 + confirmed.len() + 2);
    let created = &ledger[0];
    assert_eq!(created.cause, LedgerCause::Created);
    assert_eq!(
        (
            created.available_delta,
            created.held_delta,
            created.sold_delta
        ),
        (100, 0, 0)
    );
    assert_eq!(created.sale_change_id, None);
    let of = |cause| ledger.iter().filter(move |e| e.cause == cause);
    let edits: Vec<_> = of(LedgerCause::Edit).collect();
    assert_eq!(edits.len(), 1);
    assert_eq!(
        (
            edits[0].available_delta,
            edits[0].held_delta,
            edits[0].sold_delta
        ),
        (50, 0, 0)
    );
    assert!(edits[0].sale_change_id.is_some());
    let cancels: Vec<_> = of(LedgerCause::Cancel).collect();
    assert_eq!(cancels.len(), 1);
    assert_eq!(
        (
            cancels[0].available_delta,
            cancels[0].held_delta,
            cancels[0].sold_delta
        ),
        (0, 0, 0)
    );
    assert!(cancels[0].sale_change_id.is_some());
    assert_ne!(cancels[0].sale_change_id, edits[0].sale_change_id);
    assert_eq!(ledger.last(), Some(cancels[0]), "the cancel came last");
    for order in &confirmed {
        let entry = ledger
            .iter()
            .find(|e| e.order_id == Some(order.order_id))
            .unwrap_or_else(|| panic!("order {} has no entry", order.order_id));
        assert_eq!(entry.at(), order.created_at);
        let q = i64::from(order.quantity);
        assert_eq!(
            (entry.available_delta, entry.held_delta, entry.sold_delta),
            (-q, 0, q)
        );
    }
    assert_eq!(replay(&ledger), figures(&*store, sale.id).await);

    let store = restart(&sut, store).await;
    assert_eq!(walk(&*store, sale.id, 1_000).await, ledger);
    assert!(
        store
            .ledger_page(SaleId(987_654_321), None, 10)
            .await
            .unwrap()
            .is_none(),
        "an unknown sale has no ledger"
    );
}

/// OP-11: under herds of concurrent buyers, each racing an edit that raises the stock, then a
/// last herd asking for more than is left, replaying the ledger gives exactly the sale's final
/// available, held and sold units, and every confirmed order is in it exactly once.
pub async fn ledger_replays_to_the_final_figures_after_a_concurrent_herd<S: StoreUnderTest>(
    sut: S,
) {
    let store = sut.open().await;
    let sale = store.create_sale(active(1_000, 2)).await.unwrap();
    let herd = |wave: u32, size: u32| -> Vec<_> {
        (0..size)
            .map(|i| {
                let store = Arc::clone(&store);
                let name = format!("herd-{wave}-{i}");
                tokio::spawn(async move { buy(&*store, sale.id, &name, 1 + i % 2).await })
            })
            .collect()
    };
    // Each racing herd asks for at most 225 units: the stock cannot run out under a raise.
    let mut buyers = Vec::new();
    for wave in 0..3 {
        buyers.extend(herd(wave, 150));
        assert!(raise(&*store, sale.id, 10).await);
    }
    // Then 450 more units asked for than the at least 355 left: the sale sells out.
    buyers.extend(herd(3, 300));
    let mut confirmed = Vec::new();
    for task in buyers {
        if let PurchaseOutcome::Confirmed(order) = task.await.unwrap() {
            confirmed.push(order.order_id);
        }
    }

    let ledger = walk(&*store, sale.id, 64).await;
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.sale.stock, 1_030, "three raises of 10");
    assert_eq!(status.remaining, 0, "the last herd sold the sale out");
    assert_eq!(replay(&ledger), figures(&*store, sale.id).await);
    assert_eq!(replay(&ledger), (0, 0, 1_030));
    let edits = ledger.iter().filter(|e| e.cause == LedgerCause::Edit);
    assert_eq!(edits.count(), 3);
    let seen = order_ids(&ledger);
    assert_eq!(
        seen.len(),
        confirmed.len(),
        "an entry for no confirmed order"
    );
    for id in &confirmed {
        assert_eq!(seen.get(id), Some(&1), "order {id} not exactly once");
    }
}
