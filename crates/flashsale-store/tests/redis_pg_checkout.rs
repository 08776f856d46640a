//! Checkout with holds in the scale-out store (issue 12): reservations, transitions racing
//! across instances, a death between PostgreSQL's commit and Redis's apply, a Redis rebuild
//! with live reservations, and expiry of a killed instance's reservations by the others (their
//! units offered to the waitlist once each).
//!
//! Every test has its own schema and key prefix. The payment window is at least 60 s and
//! PostgreSQL's clock cannot be injected, so the expiry test waits for real (once, ~61 s).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flashsale_core::{
    Canceller, OrderEvent, OrderStatus, PaymentRef, Price, Quantity, SaleId, Transition,
    TransitionError, UserId,
};
use flashsale_store::{
    Attempt, LedgerCause, Order, OrderEventOutcome, PurchaseOutcome, SaleStore, WaitlistJoin,
    WaitlistPlace,
};
use flashsale_testkit::StoreUnderTest;
use flashsale_testkit::crash_child::CrashChild;
use flashsale_testkit::stores::RedisPg;
use std::sync::Arc;
use std::time::Duration;
use support::{
    Cleanup, connect, eventually, hold_sale, isolated, moves_owed, quiet_reconcilers,
    redis_figures, sale_epoch,
};
use time::OffsetDateTime;
use uuid::Uuid;

/// The payment window of every sale here: the shortest, 60 s.
const WINDOW_SECS: i64 = 60;

fn price() -> Price {
    Price::parse(support::HOLD_PRICE_MINOR, "EUR").unwrap()
}

fn attempt(sale: SaleId, name: &str, quantity: u32) -> Attempt {
    Attempt {
        sale_id: sale,
        user_id: UserId::parse(name).unwrap(),
        quantity: Quantity::parse(i64::from(quantity), 10).unwrap(),
        idempotency_key: None,
    }
}

async fn reserve(store: &dyn SaleStore, sale: SaleId, name: &str, quantity: u32) -> Order {
    match store.purchase(attempt(sale, name, quantity)).await.unwrap() {
        PurchaseOutcome::Confirmed(order) => order,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn pay(units: u32, reference: &str) -> OrderEvent {
    OrderEvent::Pay {
        amount: price().total(units).unwrap(),
        payment_ref: PaymentRef::parse(reference).unwrap(),
    }
}

fn cancel() -> OrderEvent {
    OrderEvent::Cancel {
        by: Canceller::OrderIdHolder,
    }
}

/// The decision and the order after it.
async fn event(
    store: &dyn SaleStore,
    id: Uuid,
    event: OrderEvent,
) -> (Result<Transition, TransitionError>, Order) {
    match store.order_event(id, event).await.unwrap() {
        OrderEventOutcome::Decided { result, order } => (result, order),
        OrderEventOutcome::NotFound => panic!("order {id} not found"),
    }
}

/// (available, held, sold) as a status read reports them; checks they add up to the stock.
async fn figures(store: &dyn SaleStore, sale: SaleId) -> (u32, u32, u32) {
    let status = store.status(sale).await.unwrap().unwrap();
    let sold = status.sold();
    assert_eq!(
        status.remaining + status.held + sold,
        status.sale.stock,
        "{status:?}"
    );
    (status.remaining, status.held, sold)
}

/// The ledger's entries of `cause` for `order`.
async fn ledger_entries(
    store: &dyn SaleStore,
    sale: SaleId,
    order: Uuid,
    cause: LedgerCause,
) -> usize {
    let page = store
        .ledger_page(sale, None, 10_000)
        .await
        .unwrap()
        .unwrap();
    page.iter()
        .filter(|e| e.order_id == Some(order) && e.cause == cause)
        .count()
}

/// Replays the whole ledger: (available, held, sold).
async fn replayed(store: &dyn SaleStore, sale: SaleId) -> (i64, i64, i64) {
    let page = store
        .ledger_page(sale, None, 10_000)
        .await
        .unwrap()
        .unwrap();
    page.iter().fold((0, 0, 0), |(a, h, s), e| {
        (a + e.available_delta, h + e.held_delta, s + e.sold_delta)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_purchase_reserves_until_paid_and_the_ledger_replays_to_the_figures() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store
        .create_sale(hold_sale(5, 2, WINDOW_SECS))
        .await
        .unwrap();
    assert_eq!(
        store.status(sale.id).await.unwrap().unwrap().sale.checkout,
        sale.checkout,
        "the mode reads back"
    );

    let order = reserve(&store, sale.id, "alice", 2).await;
    assert_eq!(order.status, OrderStatus::Reserved);
    assert_eq!(
        order.expires_at,
        Some(order.created_at + time::Duration::seconds(60))
    );
    assert_eq!(
        store.order(order.order_id).await.unwrap(),
        Some(order.clone())
    );
    assert_eq!(figures(&store, sale.id).await, (3, 2, 0));

    // The limit counts reserved units.
    let refused = store.purchase(attempt(sale.id, "alice", 1)).await.unwrap();
    assert!(
        matches!(refused, PurchaseOutcome::Rejected { .. }),
        "{refused:?}"
    );

    let (result, paid) = event(&store, order.order_id, pay(2, "pay-1")).await;
    assert!(matches!(result, Ok(Transition::Paid(_))), "{result:?}");
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(
        paid.payment_ref.as_ref().map(PaymentRef::as_str),
        Some("pay-1")
    );
    assert_eq!(figures(&store, sale.id).await, (3, 0, 2));
    // A redelivery is answered paid again and moves nothing; a cancel loses.
    let (again, _) = event(&store, order.order_id, pay(2, "pay-1")).await;
    assert_eq!(again, Ok(Transition::AlreadyPaid));
    let (late, _) = event(&store, order.order_id, cancel()).await;
    assert_eq!(late, Err(TransitionError::OrderPaid));
    assert_eq!(figures(&store, sale.id).await, (3, 0, 2));
    assert_eq!(
        store.order(order.order_id).await.unwrap().unwrap().status,
        OrderStatus::Paid
    );

    let bob = reserve(&store, sale.id, "bob", 1).await;
    assert_eq!(figures(&store, sale.id).await, (2, 1, 2));
    let (a, h, s) = replayed(&store, sale.id).await;
    assert_eq!((a, h, s), (2, 1, 2), "the ledger replays to the figures");
    assert_eq!(
        ledger_entries(&store, sale.id, bob.order_id, LedgerCause::Reserve).await,
        1
    );
    assert_eq!(
        store.order(Uuid::now_v7()).await.unwrap(),
        None,
        "no such order"
    );
    assert_eq!(
        store.order_event(Uuid::now_v7(), cancel()).await.unwrap(),
        OrderEventOutcome::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_reservation_gives_units_and_the_allowance_back() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store
        .create_sale(hold_sale(2, 2, WINDOW_SECS))
        .await
        .unwrap();
    let first = reserve(&store, sale.id, "alice", 2).await;
    // Every unit is held: the sale is still active, and says sold out (not final).
    let refused = store.purchase(attempt(sale.id, "bob", 1)).await.unwrap();
    assert!(
        matches!(
            refused,
            PurchaseOutcome::Rejected {
                rejection: flashsale_core::Rejection::SoldOut,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(figures(&store, sale.id).await, (0, 2, 0));

    let (result, order) = event(&store, first.order_id, cancel()).await;
    assert!(matches!(result, Ok(Transition::Cancelled(_))), "{result:?}");
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert_eq!(figures(&store, sale.id).await, (2, 0, 0));
    assert_eq!(
        ledger_entries(&store, sale.id, first.order_id, LedgerCause::Release).await,
        1
    );
    // Alice may reserve her two units again, and bob after her finds none.
    let again = reserve(&store, sale.id, "alice", 2).await;
    assert_eq!(again.status, OrderStatus::Reserved);
    assert_eq!(replayed(&store, sale.id).await, (0, 2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_pay_and_cancel_on_two_instances_have_exactly_one_winner_each() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let a = Arc::new(connect(&cfg).await);
    let b = Arc::new(connect(&cfg).await);
    const N: u32 = 24;
    let sale = a.create_sale(hold_sale(N, 1, WINDOW_SECS)).await.unwrap();
    let mut orders = Vec::new();
    for i in 0..N {
        orders.push(reserve(a.as_ref(), sale.id, &format!("buyer{i}"), 1).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(2 * N as usize));
    let mut tasks = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        for (store, ev) in [
            (Arc::clone(&a), pay(1, &format!("pay-{i}"))),
            (Arc::clone(&b), cancel()),
        ] {
            let barrier = Arc::clone(&barrier);
            let id = order.order_id;
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                event(store.as_ref(), id, ev).await
            }));
        }
    }
    let mut paid = 0;
    let mut cancelled = 0;
    for pair in tasks.chunks_mut(2) {
        let (first, _) = (&mut pair[0]).await.unwrap();
        let (second, _) = (&mut pair[1]).await.unwrap();
        match (first, second) {
            (Ok(Transition::Paid(_)), Err(TransitionError::OrderPaid)) => paid += 1,
            (Err(TransitionError::OrderCancelled), Ok(Transition::Cancelled(_))) => cancelled += 1,
            other => panic!("not exactly one winner: {other:?}"),
        }
    }
    assert_eq!(paid + cancelled, N);
    for store in [&a, &b] {
        assert_eq!(figures(store.as_ref(), sale.id).await, (cancelled, 0, paid));
    }
    assert_eq!(
        replayed(a.as_ref(), sale.id).await,
        (i64::from(cancelled), 0, i64::from(paid))
    );
    assert_eq!(
        redis_figures(&cfg, sale.id).await,
        (i64::from(cancelled), 0)
    );
    assert_eq!(moves_owed(&cfg).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_committed_but_not_applied_is_applied_once_by_any_reconciler() {
    let cfg = quiet_reconcilers();
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let a = connect(&cfg).await;
    let b = connect(&cfg).await;
    let sale = a.create_sale(hold_sale(4, 2, WINDOW_SECS)).await.unwrap();
    let paid = reserve(&a, sale.id, "alice", 2).await;
    let cancelled = reserve(&a, sale.id, "bob", 1).await;

    // Instance a "dies" after each commit, before Redis hears of it.
    a.skip_redis_moves(true);
    let (result, _) = event(&a, paid.order_id, pay(2, "p")).await;
    assert!(result.is_ok(), "{result:?}");
    let (result, _) = event(&a, cancelled.order_id, cancel()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(moves_owed(&cfg).await, 2);
    assert_eq!(
        redis_figures(&cfg, sale.id).await,
        (1, 3),
        "not applied yet"
    );
    // PostgreSQL already answers with the new statuses.
    assert_eq!(
        b.order(cancelled.order_id).await.unwrap().unwrap().status,
        OrderStatus::Cancelled
    );

    // Every instance's reconciler tries; each move lands once.
    b.reconcile_now().await.unwrap();
    a.skip_redis_moves(false);
    a.reconcile_now().await.unwrap();
    b.reconcile_now().await.unwrap();
    assert_eq!(moves_owed(&cfg).await, 0);
    assert_eq!(redis_figures(&cfg, sale.id).await, (2, 0));
    assert_eq!(figures(&b, sale.id).await, (2, 0, 2));

    // A death after Redis took the moves but before PostgreSQL heard so: applied again by a
    // reconciler, they move nothing (and the audit finds nothing to rebuild: the epoch stays).
    let epoch = sale_epoch(&cfg, sale.id).await;
    support::pg(&cfg)
        .await
        .execute(
            "UPDATE orders SET move_epoch = (SELECT epoch FROM sales WHERE id = $1)
             WHERE order_id = ANY($2)",
            &[&sale.id.0, &vec![paid.order_id, cancelled.order_id]],
        )
        .await
        .unwrap();
    assert_eq!(moves_owed(&cfg).await, 2);
    b.reconcile_now().await.unwrap();
    assert_eq!(moves_owed(&cfg).await, 0);
    assert_eq!(redis_figures(&cfg, sale.id).await, (2, 0));
    assert_eq!(
        sale_epoch(&cfg, sale.id).await,
        epoch,
        "no rebuild was needed"
    );
    // Bob's allowance is back in Redis too: he may take both units left.
    let again = reserve(&b, sale.id, "bob", 2).await;
    assert_eq!(again.status, OrderStatus::Reserved);
    assert_eq!(figures(&a, sale.id).await, (0, 2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_rebuild_keeps_live_reservations_and_applies_no_move_twice() {
    let cfg = quiet_reconcilers();
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store
        .create_sale(hold_sale(6, 3, WINDOW_SECS))
        .await
        .unwrap();
    let live = reserve(&store, sale.id, "alice", 2).await;
    let paid = reserve(&store, sale.id, "bob", 1).await;
    let released = reserve(&store, sale.id, "carol", 3).await;
    assert!(event(&store, paid.order_id, pay(1, "p")).await.0.is_ok());
    // Carol's release is committed but not applied when Redis loses the sale.
    store.skip_redis_moves(true);
    assert!(event(&store, released.order_id, cancel()).await.0.is_ok());
    store.skip_redis_moves(false);
    let mut con = support::redis(&cfg).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{}:sale:{}}}:*", cfg.key_prefix, sale.id.0))
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut con)
        .await
        .unwrap();

    // The reconciler rebuilds the lost sale and settles the owed move within a few of its
    // rounds (the audit paces itself; back-to-back rounds may both come before the rebuild):
    // run rounds until nothing is owed, for at most 10 s, as the interval would.
    for _ in 0..40 {
        store.reconcile_now().await.unwrap();
        if moves_owed(&cfg).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(moves_owed(&cfg).await, 0);
    assert_eq!(redis_figures(&cfg, sale.id).await, (3, 2));
    assert_eq!(figures(&store, sale.id).await, (3, 2, 1));
    // The live reservation is still payable, and moves its units once.
    assert!(event(&store, live.order_id, pay(2, "q")).await.0.is_ok());
    assert_eq!(figures(&store, sale.id).await, (3, 0, 3));
    // Carol's allowance came back with the rebuild.
    assert_eq!(
        reserve(&store, sale.id, "carol", 3).await.status,
        OrderStatus::Reserved
    );
    assert_eq!(figures(&store, sale.id).await, (0, 3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn units_on_hold_redis_got_wrong_are_restored_by_the_audit_and_right_ones_left_alone() {
    let cfg = quiet_reconcilers();
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store
        .create_sale(hold_sale(5, 2, WINDOW_SECS))
        .await
        .unwrap();
    let paid = reserve(&store, sale.id, "alice", 2).await;
    reserve(&store, sale.id, "bob", 1).await;
    assert!(event(&store, paid.order_id, pay(2, "p")).await.0.is_ok());
    let epoch = sale_epoch(&cfg, sale.id).await;
    store.reconcile_now().await.unwrap();
    assert_eq!(
        sale_epoch(&cfg, sale.id).await,
        epoch,
        "a healthy sale is left alone"
    );

    // A partial loss: Redis forgets the hold (the sale would look sold out sooner).
    let mut con = support::redis(&cfg).await;
    let _: () = redis::cmd("HSET")
        .arg(format!("{{{}:sale:{}}}:meta", cfg.key_prefix, sale.id.0))
        .arg("onhold")
        .arg(0)
        .query_async(&mut con)
        .await
        .unwrap();
    store.reconcile_now().await.unwrap();
    assert!(sale_epoch(&cfg, sale.id).await > epoch, "rebuilt");
    assert_eq!(redis_figures(&cfg, sale.id).await, (2, 1));
    assert_eq!(figures(&store, sale.id).await, (2, 1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_payment_is_the_sold_out_instant_on_every_instance_and_in_postgres() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store
        .create_sale(hold_sale(3, 2, WINDOW_SECS))
        .await
        .unwrap();
    let first = reserve(&store, sale.id, "alice", 2).await;
    let last = reserve(&store, sale.id, "bob", 1).await;
    assert!(event(&store, last.order_id, pay(1, "p1")).await.0.is_ok());
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.sold_out_at, None, "units are still held");
    assert!(event(&store, first.order_id, pay(2, "p2")).await.0.is_ok());
    let paid_at: OffsetDateTime = support::pg(&cfg)
        .await
        .query_one("SELECT sold_out_at FROM sales WHERE id = $1", &[&sale.id.0])
        .await
        .unwrap()
        .get(0);
    let at = eventually(Duration::from_secs(5), || async {
        store.status(sale.id).await.unwrap().unwrap().sold_out_at == Some(paid_at)
    })
    .await;
    assert!(at, "this instance's sold-out instant is the last payment's");
    let other = connect(&cfg).await;
    let status = other.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.sold_out_at, Some(paid_at), "a new instance's too");
    assert_eq!(figures(&other, sale.id).await, (0, 0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transition_whose_write_fails_changes_nothing() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store
        .create_sale(hold_sale(3, 1, WINDOW_SECS))
        .await
        .unwrap();
    let order = reserve(&store, sale.id, "alice", 1).await;
    let pg = support::pg(&cfg).await;
    // The ledger row is the transaction's last write: refusing it rolls back the rest.
    pg.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON stock_ledger
             FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .unwrap();

    let failed = store.order_event(order.order_id, pay(1, "p")).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(
        store.order(order.order_id).await.unwrap(),
        Some(order.clone())
    );
    assert_eq!(figures(&store, sale.id).await, (2, 1, 0));
    assert_eq!(redis_figures(&cfg, sale.id).await, (2, 1));
    assert_eq!(moves_owed(&cfg).await, 0);
    let held: i32 = pg
        .query_one("SELECT held FROM buyers WHERE user_id = 'alice'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 1);

    pg.batch_execute("DROP TRIGGER refuse ON stock_ledger")
        .await
        .unwrap();
    assert!(event(&store, order.order_id, pay(1, "p")).await.0.is_ok());
    assert_eq!(figures(&store, sale.id).await, (2, 0, 1));
}

/// Where the expiry case tells its child what to do (unset: the child does nothing).
const EXPIRY_DIR: &str = "FLASHSALE_HOLD_EXPIRY_CHILD";
/// Reservations the child takes before it is killed.
const CHILD_RESERVATIONS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instances_reservations_expire_exactly_once_on_the_others() {
    let sut = RedisPg::isolated().await;
    let store = sut.open().await;
    let sale = store
        .create_sale(hold_sale(4, 1, WINDOW_SECS))
        .await
        .unwrap();
    store.shutdown().await;
    drop(store);

    // A child process reserves through its own instance, reports, and is killed.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("input"),
        format!("{}\n{}", sale.id.0, sut.describe()),
    )
    .unwrap();
    let mut child = CrashChild::spawn("hold_expiry_child", EXPIRY_DIR, dir.path());
    let reserved: Vec<Uuid> = child
        .wait_until_done(Duration::from_secs(60))
        .await
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    child.kill(); // SIGKILL
    assert_eq!(reserved.len(), CHILD_RESERVATIONS as usize);

    // Two live instances, each with its own expiry timer, and one reservation of their own.
    let a = sut.open().await;
    let b = sut.open().await;
    let own = reserve(a.as_ref(), sale.id, "parent", 1).await;
    assert_eq!(figures(a.as_ref(), sale.id).await, (0, 4, 0));
    // Two buyers wait, one on each instance: two of the four expiring units are theirs.
    for (on, name) in [(&a, "waiter-a"), (&b, "waiter-b")] {
        let joined = on.waitlist_join(sale.id, user(name)).await.unwrap();
        assert!(
            matches!(joined, Some(WaitlistJoin::Joined { .. })),
            "{joined:?}"
        );
    }
    let all: Vec<Uuid> = reserved.iter().copied().chain([own.order_id]).collect();
    let expired = eventually(Duration::from_secs(90), || {
        let (a, all) = (Arc::clone(&a), all.clone());
        async move {
            for id in all {
                if a.order(id).await.unwrap().unwrap().status != OrderStatus::Expired {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(expired, "the reservations never expired");
    // Both timers have had their go at every order: each expired once, units freed once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for id in &all {
        assert_eq!(
            ledger_entries(a.as_ref(), sale.id, *id, LedgerCause::Expiry).await,
            1,
            "{id}"
        );
    }
    // Each waiter was offered one unit, once; the other two went back to available.
    let offers: Vec<(String, i64)> = support::pg(sut.config())
        .await
        .query(
            "SELECT user_id, count(*) FROM orders WHERE offered GROUP BY user_id ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        offers,
        vec![("waiter-a".to_owned(), 1), ("waiter-b".to_owned(), 1)]
    );
    for name in ["waiter-a", "waiter-b"] {
        let place = b.waitlist_place(sale.id, &user(name)).await.unwrap();
        assert!(
            matches!(&place, Some(WaitlistPlace::Offered(o)) if o.status == OrderStatus::Reserved),
            "{place:?}"
        );
    }
    for store in [&a, &b] {
        assert_eq!(figures(store.as_ref(), sale.id).await, (2, 2, 0));
    }
    assert_eq!(replayed(a.as_ref(), sale.id).await, (2, 2, 0));
    // An expiry sent again moves nothing.
    let again = a
        .order_event(own.order_id, OrderEvent::Expire)
        .await
        .unwrap();
    assert!(
        matches!(
            again,
            OrderEventOutcome::Decided {
                result: Err(TransitionError::ReservationExpired { .. }),
                ..
            }
        ),
        "{again:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// The expiry case's child (run by it, with its directory in the environment): reserves
/// [`CHILD_RESERVATIONS`] units through an instance of its own, reports their ids, and waits
/// to be killed; otherwise does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_killed_instances_reservations_expire_exactly_once_on_the_others"]
async fn hold_expiry_child() {
    let Ok(dir) = std::env::var(EXPIRY_DIR) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let input = std::fs::read_to_string(dir.join("input")).unwrap();
    let (sale, description) = input.split_once('\n').unwrap();
    let sale = SaleId(sale.parse().unwrap());
    let store = RedisPg::open_described(description).await;
    let mut lines = String::new();
    for i in 0..CHILD_RESERVATIONS {
        let order = reserve(store.as_ref(), sale, &format!("child{i}"), 1).await;
        lines.push_str(&format!("{}\n", order.order_id));
    }
    lines.push_str("done\n");
    std::fs::write(dir.join("report"), lines).unwrap();
    std::future::pending::<()>().await;
}
