//! Shared helpers of the embedded store's hold-mode tests (`embedded_checkout.rs`,
//! `embedded_waitlist.rs`): a store on an injected `ManualClock`, hold-mode sales starting a
//! minute before [`T0`], and the figures checked against the ledger's replay.

#![allow(dead_code, clippy::unwrap_used)]

use flashsale_core::{
    Checkout, Clock, ManualClock, NewSale, OrderStatus, Quantity, SaleId, UserId,
};
use flashsale_store::embedded::{EXPIRY_INTERVAL, EmbeddedStore};
use flashsale_store::{Attempt, LedgerCause, LedgerEntry, Order, PurchaseOutcome, SaleStore};
use std::path::Path;
use std::sync::Arc;
use time::{Duration, OffsetDateTime, macros::datetime};
use uuid::Uuid;

/// The instant every test starts at.
pub const T0: OffsetDateTime = datetime!(2026-11-30 12:00:00 UTC);
/// The payment window of every sale here (the minimum).
pub const WINDOW: Duration = Duration::seconds(60);
/// One unit's price, in cents.
pub const PRICE_MINOR: i64 = 1999;

/// Opens the store in `dir` on `clock`.
pub fn open(dir: &Path, clock: &Arc<ManualClock>) -> Arc<EmbeddedStore> {
    let clock: Arc<dyn Clock> = Arc::clone(clock) as _;
    Arc::new(EmbeddedStore::open(dir, clock).unwrap())
}

/// A hold-mode sale open from a minute before `T0` until `ends`.
pub fn hold_until(stock: u32, limit: u32, ends: OffsetDateTime) -> NewSale {
    let checkout = Checkout::parse(
        Some("hold"),
        Some(WINDOW.whole_seconds()),
        Some(PRICE_MINOR),
        Some("EUR"),
    )
    .unwrap();
    NewSale::parse(
        "Held widget",
        T0 - Duration::minutes(1),
        ends,
        i64::from(stock),
        i64::from(limit),
    )
    .unwrap()
    .with_checkout(checkout)
}

/// A hold-mode sale open from a minute before `T0` for a day.
pub fn hold(stock: u32, limit: u32) -> NewSale {
    hold_until(stock, limit, T0 + Duration::days(1))
}

/// The buyer named `name`.
pub fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

/// Reserves one unit for `name`, which must be admitted as a reservation.
pub async fn reserve(store: &dyn SaleStore, sale: SaleId, name: &str) -> Order {
    let attempt = Attempt {
        sale_id: sale,
        user_id: user(name),
        quantity: Quantity::ONE,
        idempotency_key: None,
    };
    match store.purchase(attempt).await.unwrap() {
        PurchaseOutcome::Confirmed(order) => {
            assert_eq!(order.status, OrderStatus::Reserved);
            order
        }
        other => panic!("{name}: {other:?}"),
    }
}

/// The order's status now.
pub async fn status_of(store: &dyn SaleStore, order: Uuid) -> OrderStatus {
    store.order(order).await.unwrap().unwrap().status
}

/// The whole ledger of `sale`, walked a page at a time.
pub async fn ledger(store: &dyn SaleStore, sale: SaleId) -> Vec<LedgerEntry> {
    let mut all: Vec<LedgerEntry> = Vec::new();
    loop {
        let after = all.last().map(|e| e.key);
        let page = store.ledger_page(sale, after, 7).await.unwrap().unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// `(available, held, sold)` as the status says, checked against the ledger's replay (which
/// never goes below zero on the way) and the stock.
pub async fn figures(store: &dyn SaleStore, sale: SaleId) -> (i64, i64, i64) {
    replayed_figures(store, sale, true).await
}

/// [`figures`] checking only the replay's end: entries of one instant are ordered by cause,
/// so a reservation released at the very instant it was made replays through -1 on the way.
pub async fn figures_summed(store: &dyn SaleStore, sale: SaleId) -> (i64, i64, i64) {
    replayed_figures(store, sale, false).await
}

async fn replayed_figures(
    store: &dyn SaleStore,
    sale: SaleId,
    on_the_way: bool,
) -> (i64, i64, i64) {
    let status = store.status(sale).await.unwrap().unwrap();
    let got = (
        i64::from(status.remaining),
        i64::from(status.held),
        i64::from(status.sold()),
    );
    assert_eq!(got.0 + got.1 + got.2, i64::from(status.sale.stock), "CO-3");
    let mut replayed = (0, 0, 0);
    for e in ledger(store, sale).await {
        replayed.0 += e.available_delta;
        replayed.1 += e.held_delta;
        replayed.2 += e.sold_delta;
        assert!(
            !on_the_way || (replayed.0 >= 0 && replayed.1 >= 0),
            "the replay went negative at {e:?}"
        );
    }
    assert_eq!(replayed, got, "the ledger replays to the figures");
    got
}

/// How many times the ledger records `order`'s expiry.
pub async fn expiries(store: &dyn SaleStore, sale: SaleId, order: Uuid) -> usize {
    ledger(store, sale)
        .await
        .iter()
        .filter(|e| e.cause == LedgerCause::Expiry && e.order_id == Some(order))
        .count()
}

/// Polls until every order in `orders` is no longer reserved (the timer has run), failing
/// after 20 s.
pub async fn until_settled(store: &dyn SaleStore, orders: &[Uuid]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for id in orders {
        while status_of(store, *id).await == OrderStatus::Reserved {
            assert!(
                std::time::Instant::now() < deadline,
                "order {id} never expired"
            );
            tokio::time::sleep(EXPIRY_INTERVAL / 2).await;
        }
    }
}

/// A second connection holding SQLite's write lock: the writer's next commit fails once its
/// 2 s busy timeout runs out.
pub fn hold_write_lock(dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join(flashsale_store::embedded::DB_FILE)).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}
