//! Checkout in the embedded store beyond the shared suite (CO-4..CO-6, SPEC 9 expire): with an
//! injected `ManualClock`, a reservation expires exactly once without a request, also across a
//! restart and a `kill -9`; pay, cancel and expire racing on one reservation have one winner;
//! a transition whose write fails changes nothing.

#![allow(clippy::unwrap_used)]

#[path = "support/embedded_hold.rs"]
mod embedded_hold;

use embedded_hold::*;
use flashsale_core::{
    Canceller, ManualClock, Money, OrderEvent, OrderStatus, PaymentRef, Quantity, SaleId,
    Transition, TransitionError, UserId,
};
use flashsale_store::embedded::{DB_FILE, EXPIRY_INTERVAL};
use flashsale_store::{
    Attempt, LedgerCause, Order, OrderEventOutcome, PurchaseOutcome, SaleStore, StoreError,
};
use flashsale_testkit::crash_child::CrashChild;
use std::io::Write as _;
use std::sync::Arc;
use time::Duration;
use uuid::Uuid;

fn pay(units: u32, payment_ref: &str) -> OrderEvent {
    OrderEvent::Pay {
        amount: Money::parse(PRICE_MINOR * i64::from(units), "EUR").unwrap(),
        payment_ref: PaymentRef::parse(payment_ref).unwrap(),
    }
}

fn cancel() -> OrderEvent {
    OrderEvent::Cancel {
        by: Canceller::OrderIdHolder,
    }
}

async fn send(
    store: &dyn SaleStore,
    order: Uuid,
    event: OrderEvent,
) -> Result<(Result<Transition, TransitionError>, Order), StoreError> {
    match store.order_event(order, event).await? {
        OrderEventOutcome::Decided { result, order } => Ok((result, order)),
        OrderEventOutcome::NotFound => panic!("order {order} not found"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_expires_once_at_its_deadline_on_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let sale = store.create_sale(hold(3, 1)).await.unwrap();
    let order = reserve(&*store, sale.id, "alice").await;
    assert_eq!(order.expires_at, Some(T0 + WINDOW));

    // One microsecond before the deadline the reservation is live: the timer leaves it alone.
    clock.set(T0 + WINDOW - Duration::microseconds(1));
    tokio::time::sleep(EXPIRY_INTERVAL * 3).await;
    assert_eq!(
        status_of(&*store, order.order_id).await,
        OrderStatus::Reserved
    );
    assert_eq!(figures_summed(&*store, sale.id).await, (2, 1, 0));

    clock.set(T0 + WINDOW);
    until_settled(&*store, &[order.order_id]).await;
    let expired = store.order(order.order_id).await.unwrap().unwrap();
    assert_eq!(expired.status, OrderStatus::Expired);
    assert_eq!(figures_summed(&*store, sale.id).await, (3, 0, 0));
    let (result, _) = send(&*store, order.order_id, OrderEvent::Expire)
        .await
        .unwrap();
    assert!(matches!(
        result,
        Err(TransitionError::ReservationExpired { .. })
    ));
    assert_eq!(expiries(&*store, sale.id, order.order_id).await, 1);
    // The allowance is back.
    reserve(&*store, sale.id, "alice").await;
    assert_eq!(figures_summed(&*store, sale.id).await, (2, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_due_while_the_store_was_down_expires_once_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let sale = store.create_sale(hold(4, 2)).await.unwrap();
    let due = reserve(&*store, sale.id, "alice").await;
    let paid = reserve(&*store, sale.id, "bob").await;
    send(&*store, paid.order_id, pay(1, "pay-bob"))
        .await
        .unwrap()
        .0
        .unwrap();
    store.shutdown().await;
    drop(store);

    clock.set(T0 + WINDOW + Duration::hours(1));
    let store = open(dir.path(), &clock);
    until_settled(&*store, &[due.order_id]).await;
    assert_eq!(status_of(&*store, due.order_id).await, OrderStatus::Expired);
    assert_eq!(status_of(&*store, paid.order_id).await, OrderStatus::Paid);
    assert_eq!(figures_summed(&*store, sale.id).await, (3, 0, 1));
    store.shutdown().await;
    drop(store);

    // Opened again, nothing is due: the expiry stays one entry.
    let store = open(dir.path(), &clock);
    tokio::time::sleep(EXPIRY_INTERVAL * 3).await;
    assert_eq!(expiries(&*store, sale.id, due.order_id).await, 1);
    assert_eq!(figures_summed(&*store, sale.id).await, (3, 0, 1));
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_cancel_and_expire_racing_while_the_deadline_passes_have_one_winner_each() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let buyers = 60u32;
    let sale = store.create_sale(hold(buyers, 1)).await.unwrap();
    let mut orders = Vec::new();
    for i in 0..buyers {
        orders.push(reserve(&*store, sale.id, &format!("racer-{i}")).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(orders.len() * 3 + 1));
    let mut tasks = Vec::new();
    for order in &orders {
        for event in [pay(1, "race"), cancel(), OrderEvent::Expire] {
            let (store, barrier, id) = (Arc::clone(&store), Arc::clone(&barrier), order.order_id);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                send(&*store, id, event).await.unwrap().0
            }));
        }
    }
    // The deadline passes while the events race, and the timer joins in.
    barrier.wait().await;
    clock.set(T0 + WINDOW);
    let mut wins = 0;
    for task in tasks {
        if task.await.unwrap().is_ok() {
            wins += 1;
        }
    }
    until_settled(
        &*store,
        &orders.iter().map(|o| o.order_id).collect::<Vec<_>>(),
    )
    .await;
    let entries = ledger(&*store, sale.id).await;
    let (mut paid, mut freed) = (0i64, 0i64);
    for order in &orders {
        let moves: Vec<_> = entries
            .iter()
            .filter(|e| e.order_id == Some(order.order_id) && e.cause != LedgerCause::Reserve)
            .collect();
        assert_eq!(moves.len(), 1, "one transition per order: {moves:?}");
        let status = status_of(&*store, order.order_id).await;
        match (status, moves[0].cause) {
            (OrderStatus::Paid, LedgerCause::Payment) => paid += 1,
            (OrderStatus::Cancelled, LedgerCause::Release)
            | (OrderStatus::Expired, LedgerCause::Expiry) => freed += 1,
            other => panic!("status and ledger disagree: {other:?}"),
        }
    }
    // Each order's winner is one of the events above, or the timer's expiry.
    assert!(
        wins <= orders.len(),
        "{wins} winners for {} orders",
        orders.len()
    );
    assert_eq!(figures_summed(&*store, sale.id).await, (freed, 0, paid));
    store.shutdown().await;
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(figures_summed(&*store, sale.id).await, (freed, 0, paid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_whose_write_fails_changes_nothing_and_a_later_event_decides_again() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let sale = store.create_sale(hold(2, 1)).await.unwrap();
    let order = reserve(&*store, sale.id, "alice").await;

    let lock = hold_write_lock(dir.path());
    // A cancel sent while the payment waits for its write is decided after it, against what
    // the order is once the payment's write has failed: still reserved.
    let paying = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { send(&*store, order.order_id, pay(1, "pay-1")).await })
    };
    let cancelling = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            send(&*store, order.order_id, cancel()).await
        })
    };
    let failed = paying.await.unwrap();
    assert!(
        matches!(failed, Err(StoreError::Unavailable { .. })),
        "{failed:?}"
    );
    conn_rollback(&lock);
    assert_eq!(
        figures_summed(&*store, sale.id).await.1,
        1,
        "the payment moved nothing"
    );
    let (result, after) = cancelling.await.unwrap().unwrap();
    assert!(matches!(result, Ok(Transition::Cancelled(_))), "{result:?}");
    assert_eq!(after.status, OrderStatus::Cancelled);
    assert_eq!(after.payment_ref, None);
    assert_eq!(figures_summed(&*store, sale.id).await, (2, 0, 0));

    // An expiry whose write fails is tried again by the timer, and happens once.
    let second = reserve(&*store, sale.id, "bob").await;
    let lock = hold_write_lock(dir.path());
    clock.set(T0 + WINDOW + Duration::seconds(1));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        status_of(&*store, second.order_id).await,
        OrderStatus::Reserved
    );
    conn_rollback(&lock);
    until_settled(&*store, &[second.order_id]).await;
    assert_eq!(
        status_of(&*store, second.order_id).await,
        OrderStatus::Expired
    );
    assert_eq!(expiries(&*store, sale.id, second.order_id).await, 1);
    assert_eq!(figures_summed(&*store, sale.id).await, (2, 0, 0));
    store.shutdown().await;
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(figures_summed(&*store, sale.id).await, (2, 0, 0));
}

fn conn_rollback(conn: &rusqlite::Connection) {
    conn.execute_batch("ROLLBACK").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_data_directory_opens_with_its_sales_instant_and_its_orders_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let mut instant = hold(3, 1);
    instant.checkout = flashsale_core::CheckoutMode::Instant;
    let sale = store.create_sale(instant).await.unwrap();
    let attempt = Attempt {
        sale_id: sale.id,
        user_id: UserId::parse("old").unwrap(),
        quantity: Quantity::ONE,
        idempotency_key: None,
    };
    let PurchaseOutcome::Confirmed(order) = store.purchase(attempt).await.unwrap() else {
        panic!("an instant purchase is confirmed")
    };
    store.shutdown().await;
    drop(store);
    // As a directory from before checkout: none of its columns.
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(
        "ALTER TABLE orders DROP COLUMN status;
         ALTER TABLE orders DROP COLUMN expires_at_us;
         ALTER TABLE orders DROP COLUMN payment_ref;
         ALTER TABLE sales DROP COLUMN checkout;
         ALTER TABLE sales DROP COLUMN payment_window_secs;
         ALTER TABLE sales DROP COLUMN held;",
    )
    .unwrap();
    drop(conn);
    let store = open(dir.path(), &clock);
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.sale.checkout, flashsale_core::CheckoutMode::Instant);
    assert_eq!(store.order(order.order_id).await.unwrap(), Some(order));
    assert_eq!(figures_summed(&*store, sale.id).await, (2, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_replays_the_reservation_as_first_answered_after_payment_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let sale = store.create_sale(hold(3, 1)).await.unwrap();
    let keyed = Attempt {
        sale_id: sale.id,
        user_id: UserId::parse("alice").unwrap(),
        quantity: Quantity::ONE,
        idempotency_key: Some(flashsale_core::IdempotencyKey::parse("k-1").unwrap()),
    };
    let first = store.purchase(keyed.clone()).await.unwrap();
    let PurchaseOutcome::Confirmed(order) = &first else {
        panic!("reserved: {first:?}")
    };
    send(&*store, order.order_id, pay(1, "pay-1"))
        .await
        .unwrap()
        .0
        .unwrap();
    assert_eq!(store.purchase(keyed.clone()).await.unwrap(), first);
    store.shutdown().await;
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(store.purchase(keyed).await.unwrap(), first);
    assert_eq!(status_of(&*store, order.order_id).await, OrderStatus::Paid);
    assert_eq!(figures_summed(&*store, sale.id).await, (2, 0, 1));
}

/// Names the kill -9 child's directory (the store's and its report).
const CHILD_DIR: &str = "FLASHSALE_TEST_CHECKOUT_CHILD_DIR";
/// Reservations the child takes; it pays the first.
const CHILD_RESERVATIONS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_of_a_killed_process_expire_once_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let sale = store.create_sale(hold(10, 1)).await.unwrap();
    store.shutdown().await;
    drop(store);
    std::fs::write(dir.path().join("sale"), sale.id.0.to_string()).unwrap();

    let mut child = CrashChild::spawn("checkout_child", CHILD_DIR, dir.path());
    let lines = child
        .wait_until_done(std::time::Duration::from_secs(60))
        .await;
    child.kill(); // SIGKILL: no shutdown, the writer's last words unsaid
    let ids: Vec<Uuid> = lines.iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids.len(), CHILD_RESERVATIONS);

    clock.set(T0 + WINDOW + Duration::minutes(5));
    let store = open(dir.path(), &clock);
    let (paid, due) = ids.split_first().unwrap();
    until_settled(&*store, due).await;
    assert_eq!(status_of(&*store, *paid).await, OrderStatus::Paid);
    for id in due {
        assert_eq!(status_of(&*store, *id).await, OrderStatus::Expired);
        assert_eq!(expiries(&*store, sale.id, *id).await, 1, "expired once");
    }
    let freed = (CHILD_RESERVATIONS - 1) as i64;
    assert_eq!(figures_summed(&*store, sale.id).await, (10 - 1, 0, 1));
    // Once more after a restart: nothing expires again, the units came back once.
    store.shutdown().await;
    drop(store);
    let store = open(dir.path(), &clock);
    tokio::time::sleep(EXPIRY_INTERVAL * 3).await;
    let entries = ledger(&*store, sale.id).await;
    let expired = entries
        .iter()
        .filter(|e| e.cause == LedgerCause::Expiry)
        .count() as i64;
    assert_eq!(expired, freed);
    assert_eq!(figures_summed(&*store, sale.id).await, (9, 0, 1));
    store.shutdown().await;
}

/// The child of the kill -9 case (run only by it): reserves, pays the first reservation,
/// reports each order id once its answer is heard, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by reservations_of_a_killed_process_expire_once_after_reopen"]
async fn checkout_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let sale = SaleId(
        std::fs::read_to_string(dir.join("sale"))
            .unwrap()
            .parse()
            .unwrap(),
    );
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&dir, &clock);
    let mut report = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("report"))
        .unwrap();
    for i in 0..CHILD_RESERVATIONS {
        let order = reserve(&*store, sale, &format!("child-{i}")).await;
        if i == 0 {
            send(&*store, order.order_id, pay(1, "pay-child"))
                .await
                .unwrap()
                .0
                .unwrap();
        }
        report
            .write_all(format!("{}\n", order.order_id).as_bytes())
            .unwrap();
    }
    report.write_all(b"done\n").unwrap();
    std::future::pending::<()>().await;
}
