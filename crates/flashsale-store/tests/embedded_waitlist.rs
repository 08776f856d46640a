//! The waitlist in the embedded store beyond the shared suite (CO-9, CO-10): with an injected
//! `ManualClock`, an expiry offers its unit to the head of the list with a fresh window from
//! the clock, an offer's own expiry offers to the next, the list lapses at `ends_at`; the list
//! and an offer survive a restart and a `kill -9`; a release or a join whose write fails
//! changes nothing.

#![allow(clippy::unwrap_used)]

#[path = "support/embedded_hold.rs"]
mod embedded_hold;

use embedded_hold::*;
use flashsale_core::{
    Canceller, ManualClock, OrderEvent, OrderStatus, SaleId, Transition, TransitionError,
    WaitlistRefusal,
};
use flashsale_store::embedded::EXPIRY_INTERVAL;
use flashsale_store::{
    Order, OrderEventOutcome, SaleStore, StoreError, WaitlistJoin, WaitlistPlace,
};
use flashsale_testkit::crash_child::CrashChild;
use std::io::Write as _;
use std::sync::Arc;
use time::Duration;
use uuid::Uuid;

async fn cancel(
    store: &dyn SaleStore,
    order: Uuid,
) -> Result<Result<Transition, TransitionError>, StoreError> {
    let event = OrderEvent::Cancel {
        by: Canceller::OrderIdHolder,
    };
    match store.order_event(order, event).await? {
        OrderEventOutcome::Decided { result, .. } => Ok(result),
        OrderEventOutcome::NotFound => panic!("order {order} not found"),
    }
}

async fn join(store: &dyn SaleStore, sale: SaleId, name: &str) -> WaitlistJoin {
    store
        .waitlist_join(sale, user(name))
        .await
        .unwrap()
        .unwrap()
}

async fn place(store: &dyn SaleStore, sale: SaleId, name: &str) -> WaitlistPlace {
    store
        .waitlist_place(sale, &user(name))
        .await
        .unwrap()
        .unwrap()
}

async fn offered(store: &dyn SaleStore, sale: SaleId, name: &str) -> Order {
    match place(store, sale, name).await {
        WaitlistPlace::Offered(order) => order,
        other => panic!("{name} was not offered a unit: {other:?}"),
    }
}

async fn length(store: &dyn SaleStore, sale: SaleId) -> u32 {
    store.status(sale).await.unwrap().unwrap().waitlist
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_offers_to_the_head_with_a_fresh_window_and_that_offers_expiry_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let sale = store.create_sale(hold(1, 1)).await.unwrap();
    let alice = reserve(&*store, sale.id, "alice").await;
    for (i, name) in ["ann", "bob"].into_iter().enumerate() {
        let position = u32::try_from(i + 1).unwrap();
        assert_eq!(
            join(&*store, sale.id, name).await,
            WaitlistJoin::Joined { position }
        );
    }

    let first = T0 + WINDOW + Duration::seconds(7);
    clock.set(first);
    until_settled(&*store, &[alice.order_id]).await;
    assert_eq!(
        status_of(&*store, alice.order_id).await,
        OrderStatus::Expired
    );
    let ann = offered(&*store, sale.id, "ann").await;
    assert!(ann.offered);
    assert_eq!((ann.quantity, ann.status), (1, OrderStatus::Reserved));
    assert_eq!(
        ann.created_at, first,
        "offered at the expiry's clock reading"
    );
    assert_eq!(ann.expires_at, Some(first + WINDOW), "a fresh window");
    assert_eq!(
        place(&*store, sale.id, "bob").await,
        WaitlistPlace::Waiting { position: 1 }
    );
    assert_eq!(length(&*store, sale.id).await, 1);
    assert_eq!(figures(&*store, sale.id).await, (0, 1, 0));

    // The offer's own expiry offers to the next waiter, through the same step.
    let second = first + WINDOW + Duration::seconds(3);
    clock.set(second);
    until_settled(&*store, &[ann.order_id]).await;
    assert_eq!(status_of(&*store, ann.order_id).await, OrderStatus::Expired);
    let bob = offered(&*store, sale.id, "bob").await;
    assert_eq!(bob.created_at, second);
    assert_eq!(bob.expires_at, Some(second + WINDOW));
    assert_eq!(length(&*store, sale.id).await, 0);
    assert_eq!(
        offered(&*store, sale.id, "ann").await.status,
        OrderStatus::Expired,
        "the offer as it is now"
    );
    assert_eq!(figures(&*store, sale.id).await, (0, 1, 0));

    // Nobody waits any more: bob's unit goes back to available.
    clock.set(second + WINDOW);
    until_settled(&*store, &[bob.order_id]).await;
    assert_eq!(figures(&*store, sale.id).await, (1, 0, 0));
    for id in [alice.order_id, ann.order_id, bob.order_id] {
        assert_eq!(expiries(&*store, sale.id, id).await, 1, "expired once");
    }
    let counts = store.summary(sale.id).await.unwrap().unwrap().checkout;
    assert_eq!(
        (
            counts.reserved,
            counts.expired,
            counts.offers_made,
            counts.waitlist_joins
        ),
        (3, 3, 2, 2),
        "{counts:?}"
    );
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_lapses_at_the_end_and_a_unit_freed_after_it_goes_back_to_available() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let ends = T0 + Duration::seconds(30);
    let sale = store.create_sale(hold_until(1, 1, ends)).await.unwrap();
    let alice = reserve(&*store, sale.id, "alice").await;
    assert_eq!(
        join(&*store, sale.id, "ann").await,
        WaitlistJoin::Joined { position: 1 }
    );
    clock.set(ends - Duration::microseconds(1));
    assert_eq!(length(&*store, sale.id).await, 1);

    clock.set(ends);
    assert_eq!(length(&*store, sale.id).await, 0);
    assert_eq!(
        place(&*store, sale.id, "ann").await,
        WaitlistPlace::NotWaitlisted
    );
    assert_eq!(
        join(&*store, sale.id, "bob").await,
        WaitlistJoin::Refused(WaitlistRefusal::Closed)
    );
    // The reservation taken before the end expires after it: its unit goes to no one.
    clock.set(T0 + WINDOW);
    until_settled(&*store, &[alice.order_id]).await;
    assert_eq!(
        place(&*store, sale.id, "ann").await,
        WaitlistPlace::NotWaitlisted
    );
    assert_eq!(figures(&*store, sale.id).await, (1, 0, 0));
    let counts = store.summary(sale.id).await.unwrap().unwrap().checkout;
    assert_eq!((counts.offers_made, counts.waitlist_joins), (0, 1));
    // Still lapsed after a restart.
    store.shutdown().await;
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(length(&*store, sale.id).await, 0);
    assert_eq!(figures(&*store, sale.id).await, (1, 0, 0));
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_and_an_offer_survive_a_restart_and_the_offer_still_expires_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let sale = store.create_sale(hold(1, 1)).await.unwrap();
    let alice = reserve(&*store, sale.id, "alice").await;
    for name in ["ann", "bob", "cy", "dee"] {
        assert!(matches!(
            join(&*store, sale.id, name).await,
            WaitlistJoin::Joined { .. }
        ));
    }
    assert_eq!(
        store
            .waitlist_leave(sale.id, &user("bob"))
            .await
            .unwrap()
            .unwrap(),
        flashsale_store::WaitlistLeave::Left
    );
    // A moment later (at one instant the ledger puts a recorded release before the orders).
    clock.set(T0 + Duration::seconds(1));
    assert!(matches!(
        cancel(&*store, alice.order_id).await.unwrap(),
        Ok(Transition::Cancelled(_))
    ));
    let ann = offered(&*store, sale.id, "ann").await;
    store.shutdown().await;
    drop(store);

    let store = open(dir.path(), &clock);
    assert_eq!(offered(&*store, sale.id, "ann").await, ann);
    assert_eq!(store.order(ann.order_id).await.unwrap().unwrap(), ann);
    assert_eq!(
        place(&*store, sale.id, "bob").await,
        WaitlistPlace::NotWaitlisted
    );
    assert_eq!(
        place(&*store, sale.id, "cy").await,
        WaitlistPlace::Waiting { position: 1 }
    );
    assert_eq!(
        place(&*store, sale.id, "dee").await,
        WaitlistPlace::Waiting { position: 2 }
    );
    assert_eq!(length(&*store, sale.id).await, 2);
    assert_eq!(figures(&*store, sale.id).await, (0, 1, 0));
    // Joins ever: the left row is history, not deleted; bob joins again at the end.
    assert_eq!(
        join(&*store, sale.id, "bob").await,
        WaitlistJoin::Joined { position: 3 }
    );
    let counts = store.summary(sale.id).await.unwrap().unwrap().checkout;
    assert_eq!((counts.waitlist_joins, counts.offers_made), (5, 1));

    clock.set(ann.expires_at.unwrap());
    until_settled(&*store, &[ann.order_id]).await;
    let cy = offered(&*store, sale.id, "cy").await;
    assert_eq!(cy.created_at, ann.expires_at.unwrap());
    assert_eq!(
        place(&*store, sale.id, "bob").await,
        WaitlistPlace::Waiting { position: 2 }
    );
    assert_eq!(figures(&*store, sale.id).await, (0, 1, 0));
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_or_a_join_whose_write_fails_leaves_the_list_and_the_units_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let sale = store.create_sale(hold(1, 1)).await.unwrap();
    let alice = reserve(&*store, sale.id, "alice").await;
    for name in ["ann", "bob"] {
        assert!(matches!(
            join(&*store, sale.id, name).await,
            WaitlistJoin::Joined { .. }
        ));
    }

    clock.set(T0 + Duration::seconds(1));
    let lock = hold_write_lock(dir.path());
    let failed = cancel(&*store, alice.order_id).await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable { .. })),
        "{failed:?}"
    );
    let joining = store.waitlist_join(sale.id, user("cy")).await;
    assert!(
        matches!(joining, Err(StoreError::Unavailable { .. })),
        "{joining:?}"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    assert_eq!(
        status_of(&*store, alice.order_id).await,
        OrderStatus::Reserved
    );
    assert_eq!(
        place(&*store, sale.id, "ann").await,
        WaitlistPlace::Waiting { position: 1 },
        "ann is back at her place"
    );
    assert_eq!(
        place(&*store, sale.id, "cy").await,
        WaitlistPlace::NotWaitlisted
    );
    assert_eq!(length(&*store, sale.id).await, 2);
    assert_eq!(figures(&*store, sale.id).await, (0, 1, 0));
    assert!(
        store
            .orders(sale.id, &user("ann"))
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );

    // Decided again, the release offers to ann once.
    assert!(matches!(
        cancel(&*store, alice.order_id).await.unwrap(),
        Ok(Transition::Cancelled(_))
    ));
    let ann = offered(&*store, sale.id, "ann").await;
    assert_eq!(
        store.orders(sale.id, &user("ann")).await.unwrap().unwrap(),
        vec![ann]
    );
    assert_eq!(
        place(&*store, sale.id, "bob").await,
        WaitlistPlace::Waiting { position: 1 }
    );
    assert_eq!(figures(&*store, sale.id).await, (0, 1, 0));
    let counts = store.summary(sale.id).await.unwrap().unwrap().checkout;
    assert_eq!((counts.waitlist_joins, counts.offers_made), (2, 1));
    store.shutdown().await;
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(length(&*store, sale.id).await, 1);
    assert_eq!(figures(&*store, sale.id).await, (0, 1, 0));
    store.shutdown().await;
}

/// Names the kill -9 child's directory (the store's and its report).
const CHILD_DIR: &str = "FLASHSALE_TEST_WAITLIST_CHILD_DIR";
/// Reservations the child takes (the whole stock).
const CHILD_RESERVATIONS: usize = 3;
/// Buyers who join the list in the child, in this order.
const CHILD_WAITERS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_each_due_reservation_expires_once_and_its_unit_is_offered_once_in_join_order()
{
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let sale = store
        .create_sale(hold(CHILD_RESERVATIONS as u32, 1))
        .await
        .unwrap();
    store.shutdown().await;
    drop(store);
    std::fs::write(dir.path().join("sale"), sale.id.0.to_string()).unwrap();

    let mut child = CrashChild::spawn("waitlist_child", CHILD_DIR, dir.path());
    let lines = child
        .wait_until_done(std::time::Duration::from_secs(60))
        .await;
    child.kill(); // SIGKILL: no shutdown
    let due: Vec<Uuid> = lines.iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(due.len(), CHILD_RESERVATIONS);

    let reopened = T0 + WINDOW + Duration::minutes(5);
    clock.set(reopened);
    let store = open(dir.path(), &clock);
    until_settled(&*store, &due).await;
    let mut offers = Vec::new();
    for id in &due {
        assert_eq!(status_of(&*store, *id).await, OrderStatus::Expired);
        assert_eq!(expiries(&*store, sale.id, *id).await, 1, "expired once");
    }
    for i in 0..CHILD_RESERVATIONS {
        let name = format!("waiter-{i}");
        let offer = offered(&*store, sale.id, &name).await;
        assert_eq!(offer.created_at, reopened);
        assert_eq!(
            store
                .orders(sale.id, &user(&name))
                .await
                .unwrap()
                .unwrap()
                .len(),
            1,
            "offered once"
        );
        offers.push(offer.order_id);
    }
    for i in CHILD_RESERVATIONS..CHILD_WAITERS {
        assert_eq!(
            place(&*store, sale.id, &format!("waiter-{i}")).await,
            WaitlistPlace::Waiting {
                position: u32::try_from(i - CHILD_RESERVATIONS + 1).unwrap()
            }
        );
    }
    let held = CHILD_RESERVATIONS as i64;
    assert_eq!(figures(&*store, sale.id).await, (0, held, 0));

    // Once more after a restart: nothing expires or is offered again.
    store.shutdown().await;
    drop(store);
    let store = open(dir.path(), &clock);
    tokio::time::sleep(EXPIRY_INTERVAL * 3).await;
    let counts = store.summary(sale.id).await.unwrap().unwrap().checkout;
    assert_eq!(
        (counts.expired, counts.offers_made, counts.waitlist_joins),
        (held as u64, held as u64, CHILD_WAITERS as u64),
        "{counts:?}"
    );
    for id in offers {
        assert_eq!(status_of(&*store, id).await, OrderStatus::Reserved);
    }
    assert_eq!(
        length(&*store, sale.id).await,
        (CHILD_WAITERS - CHILD_RESERVATIONS) as u32
    );
    assert_eq!(figures(&*store, sale.id).await, (0, held, 0));
    store.shutdown().await;
}

/// The child of the kill -9 case (run only by it): reserves the whole stock, then buyers join
/// the list one after another; reports the reservations once every join is answered, and waits
/// to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the kill -9 waitlist case"]
async fn waitlist_child() {
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
    let mut lines = String::new();
    for i in 0..CHILD_RESERVATIONS {
        let order = reserve(&*store, sale, &format!("holder-{i}")).await;
        lines.push_str(&format!("{}\n", order.order_id));
    }
    for i in 0..CHILD_WAITERS {
        let joined = join(&*store, sale, &format!("waiter-{i}")).await;
        assert_eq!(
            joined,
            WaitlistJoin::Joined {
                position: u32::try_from(i + 1).unwrap()
            }
        );
    }
    lines.push_str("done\n");
    report.write_all(lines.as_bytes()).unwrap();
    std::future::pending::<()>().await;
}
