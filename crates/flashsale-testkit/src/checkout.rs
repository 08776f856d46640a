//! Checkout in hold mode (SPEC 9, CO-1..CO-8): what every store answers when a purchase
//! reserves units that must be paid for within a window.
//!
//! The windows are real (60 s at least, CO-1) and the scale-out store decides with a clock a
//! test cannot move, so only [`a_reservation_expires_once_without_a_request`] waits for an
//! expiry; the rest use a long window and the events a buyer or the payment system sends.

use crate::StoreUnderTest;
use crate::conformance::{active, buy, rejection, user};
use crate::durability::restart;
use crate::ledger::{figures, replay, walk};
use flashsale_core::{
    Canceller, Checkout, CheckoutMode, Money, NewSale, OrderEvent, OrderStatus, PaymentRef,
    Rejection, SaleId, SaleState, Transition, TransitionError,
};
use flashsale_store::{
    Order, OrderEventOutcome, PurchaseOutcome, SaleStore, WaitlistJoin, WaitlistPlace,
};
use std::sync::Arc;
use std::time::Duration as StdDuration;
use uuid::Uuid;

/// Price of one unit in every hold sale here: 19.99 EUR.
const PRICE_MINOR: i64 = 1999;

/// An active hold-mode sale with a window of `window_secs`.
pub(crate) fn hold(stock: u32, limit: u32, window_secs: i64) -> NewSale {
    let checkout = Checkout::parse(
        Some("hold"),
        Some(window_secs),
        Some(PRICE_MINOR),
        Some("EUR"),
    )
    .unwrap();
    active(stock, limit).with_checkout(checkout)
}

/// The payment of exactly `units` units' total.
pub(crate) fn pay(units: u32, payment_ref: &str) -> OrderEvent {
    OrderEvent::Pay {
        amount: Money::parse(PRICE_MINOR * i64::from(units), "EUR").unwrap(),
        payment_ref: PaymentRef::parse(payment_ref).unwrap(),
    }
}

/// A cancel by whoever holds the order id (guest mode).
pub(crate) fn cancel() -> OrderEvent {
    OrderEvent::Cancel {
        by: Canceller::OrderIdHolder,
    }
}

/// Reserves `quantity` units for `name`, which must be admitted.
pub(crate) async fn reserve(
    store: &dyn SaleStore,
    sale: SaleId,
    name: &str,
    quantity: u32,
) -> Order {
    match buy(store, sale, name, quantity).await {
        PurchaseOutcome::Confirmed(order) => {
            assert_eq!(order.status, OrderStatus::Reserved, "{order:?}");
            order
        }
        other => panic!("expected a reservation for {name}, got {other:?}"),
    }
}

/// Sends `event` for `order`, which must exist: the decision and the order after it. An
/// `Unavailable` answer (a busy machine: no database connection free in time) changed nothing,
/// so, as a client would, it is sent again, a few times.
pub(crate) async fn send(
    store: &dyn SaleStore,
    order: Uuid,
    event: OrderEvent,
) -> (Result<Transition, TransitionError>, Order) {
    let mut tries = 0;
    let outcome = loop {
        match store.order_event(order, event.clone()).await {
            Err(flashsale_store::StoreError::Unavailable { .. }) if tries < 5 => {
                tries += 1;
                tokio::time::sleep(StdDuration::from_millis(100)).await;
            }
            other => break other.unwrap(),
        }
    };
    match outcome {
        OrderEventOutcome::Decided { result, order } => (result, order),
        OrderEventOutcome::NotFound => panic!("order {order} not found"),
    }
}

/// The order as the store reads it now.
pub(crate) async fn read(store: &dyn SaleStore, order: Uuid) -> Order {
    store.order(order).await.unwrap().expect("the order exists")
}

/// Checks that the ledger replays to the figures, and the figures add up to the stock.
pub(crate) async fn assert_figures(store: &dyn SaleStore, sale: SaleId, expected: (i64, i64, i64)) {
    let got = figures(store, sale).await;
    assert_eq!(got, expected, "(available, held, sold)");
    let stock = store.status(sale).await.unwrap().unwrap().sale.stock;
    assert_eq!(got.0 + got.1 + got.2, i64::from(stock), "CO-3");
    let entries = walk(store, sale, 1000).await;
    assert_eq!(
        replay(&entries),
        expected,
        "the ledger replays to the figures: {entries:#?}"
    );
}

/// CO-1, CO-3, CO-4: a hold-mode sale keeps its mode; a purchase reserves units (available to
/// held) with a deadline one window after it was decided; the order is readable by its id;
/// all of it survives a restart.
pub async fn a_purchase_in_hold_mode_reserves_units_until_a_deadline<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(hold(5, 2, 600)).await.unwrap();
    let window = CheckoutMode::parse(Some("hold"), Some(600)).unwrap();
    assert_eq!(sale.checkout, window);
    assert_eq!(sale.product.price.unwrap().minor(), 1999);
    assert_figures(&*store, sale.id, (5, 0, 0)).await;

    let order = reserve(&*store, sale.id, "alice", 2).await;
    assert_eq!(
        order.expires_at,
        Some(order.created_at + time::Duration::seconds(600)),
        "expires_at is one window after the decision"
    );
    assert!(order.payment_ref.is_none());
    assert_eq!(read(&*store, order.order_id).await, order);
    assert_eq!(
        store
            .orders(sale.id, &user("alice"))
            .await
            .unwrap()
            .unwrap(),
        vec![order.clone()]
    );
    assert_figures(&*store, sale.id, (3, 2, 0)).await;

    let store = restart(&sut, store).await;
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.sale.checkout, window, "the mode survives a restart");
    assert_eq!(read(&*store, order.order_id).await, order);
    assert_figures(&*store, sale.id, (3, 2, 0)).await;
    // The limit counts the reservation after the restart too.
    assert_eq!(
        rejection(&buy(&*store, sale.id, "alice", 1).await),
        Some(Rejection::AlreadyPurchased)
    );
}

/// CO-4, CO-6, CO-7: a payment of exactly the total sells the held units; a failed payment
/// changes nothing; a redelivery is answered `paid` again; any other payment of a paid order,
/// a cancel of it, and a payment of the wrong amount or currency change nothing.
pub async fn a_payment_sells_the_held_units_once<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(hold(5, 3, 600)).await.unwrap();
    let order = reserve(&*store, sale.id, "alice", 2).await;

    let (result, after) = send(&*store, order.order_id, pay(1, "pay-short")).await;
    assert!(
        matches!(result, Err(TransitionError::AmountMismatch { .. })),
        "{result:?}"
    );
    assert_eq!(after, order, "a wrong amount changes nothing");
    let in_dollars = OrderEvent::Pay {
        amount: Money::parse(PRICE_MINOR * 2, "USD").unwrap(),
        payment_ref: PaymentRef::parse("pay-usd").unwrap(),
    };
    let (result, _) = send(&*store, order.order_id, in_dollars).await;
    assert!(matches!(
        result,
        Err(TransitionError::AmountMismatch { .. })
    ));
    let failed = OrderEvent::PaymentFailed {
        payment_ref: PaymentRef::parse("pay-declined").unwrap(),
    };
    let (result, after) = send(&*store, order.order_id, failed).await;
    assert_eq!(result, Ok(Transition::PaymentFailed));
    assert_eq!(after.status, OrderStatus::Reserved);
    assert_figures(&*store, sale.id, (3, 2, 0)).await;

    let (result, paid) = send(&*store, order.order_id, pay(2, "pay-1")).await;
    assert!(matches!(result, Ok(Transition::Paid(_))), "{result:?}");
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(
        paid.payment_ref.as_ref().map(PaymentRef::as_str),
        Some("pay-1")
    );
    assert_eq!(paid.expires_at, order.expires_at);
    assert_eq!(read(&*store, order.order_id).await, paid);
    assert_figures(&*store, sale.id, (3, 0, 2)).await;

    let (result, again) = send(&*store, order.order_id, pay(2, "pay-1")).await;
    assert_eq!(result, Ok(Transition::AlreadyPaid), "a redelivery");
    assert_eq!(again, paid);
    let (result, _) = send(&*store, order.order_id, pay(2, "pay-2")).await;
    assert_eq!(result, Err(TransitionError::OrderPaid), "another payment");
    let (result, _) = send(&*store, order.order_id, cancel()).await;
    assert_eq!(
        result,
        Err(TransitionError::OrderPaid),
        "a paid order is not cancelled"
    );
    let (result, _) = send(&*store, order.order_id, OrderEvent::Expire).await;
    assert_eq!(
        result,
        Err(TransitionError::OrderPaid),
        "a paid order does not expire"
    );
    assert_figures(&*store, sale.id, (3, 0, 2)).await;

    // Paid units count towards the limit, and are still paid after a restart.
    assert_eq!(
        rejection(&buy(&*store, sale.id, "alice", 2).await),
        Some(Rejection::LimitExceeded { allowed: 1 })
    );
    let store = restart(&sut, store).await;
    assert_eq!(read(&*store, order.order_id).await, paid);
    assert_figures(&*store, sale.id, (3, 0, 2)).await;
}

/// CO-4, CO-6, CO-7, CO-8: the buyer's cancel frees the units and their allowance; later
/// events are answered `order_cancelled`; another verified buyer's cancel is not found.
pub async fn a_cancel_frees_the_units_and_the_allowance<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(hold(4, 2, 600)).await.unwrap();
    let order = reserve(&*store, sale.id, "alice", 2).await;
    assert_eq!(
        rejection(&buy(&*store, sale.id, "alice", 1).await),
        Some(Rejection::AlreadyPurchased)
    );

    let by_bob = OrderEvent::Cancel {
        by: Canceller::Buyer(user("bob")),
    };
    let (result, after) = send(&*store, order.order_id, by_bob).await;
    assert_eq!(result, Err(TransitionError::NotOwner));
    assert_eq!(
        after.status,
        OrderStatus::Reserved,
        "another buyer changes nothing"
    );

    let by_alice = OrderEvent::Cancel {
        by: Canceller::Buyer(user("alice")),
    };
    let (result, cancelled) = send(&*store, order.order_id, by_alice).await;
    assert!(matches!(result, Ok(Transition::Cancelled(_))), "{result:?}");
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(read(&*store, order.order_id).await, cancelled);
    assert_figures(&*store, sale.id, (4, 0, 0)).await;

    for event in [cancel(), pay(2, "pay-late"), OrderEvent::Expire] {
        let (result, after) = send(&*store, order.order_id, event).await;
        assert_eq!(result, Err(TransitionError::OrderCancelled));
        assert_eq!(after, cancelled);
    }
    assert_figures(&*store, sale.id, (4, 0, 0)).await;

    // The allowance is back: alice reserves again, up to her limit.
    let second = reserve(&*store, sale.id, "alice", 2).await;
    assert_ne!(second.order_id, order.order_id);
    assert_figures(&*store, sale.id, (2, 2, 0)).await;
    let store = restart(&sut, store).await;
    assert_eq!(read(&*store, order.order_id).await, cancelled);
    assert_figures(&*store, sale.id, (2, 2, 0)).await;
}

/// CO-3, SPEC 9 lifecycle: with every unit held the sale is active with nothing available
/// (`sold_out` to a buyer); once every unit is paid it has ended sold out.
pub async fn every_unit_held_is_active_and_every_unit_paid_is_sold_out<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(hold(2, 2, 600)).await.unwrap();
    let order = reserve(&*store, sale.id, "alice", 2).await;
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.state(store.now()), SaleState::Active);
    assert_eq!((status.remaining, status.held), (0, 2));
    assert_eq!(
        rejection(&buy(&*store, sale.id, "bob", 1).await),
        Some(Rejection::SoldOut)
    );
    let (result, _) = send(&*store, order.order_id, pay(2, "pay-all")).await;
    assert!(matches!(result, Ok(Transition::Paid(_))));
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(
        status.state(store.now()),
        SaleState::Ended(flashsale_core::EndReason::SoldOut)
    );
    assert_figures(&*store, sale.id, (0, 0, 2)).await;
}

/// CO-4, CO-6: instant-mode orders are `confirmed` and take no event; an unknown order is not
/// found.
pub async fn instant_orders_are_confirmed_and_take_no_event<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(3, 1)).await.unwrap();
    assert_eq!(sale.checkout, CheckoutMode::Instant);
    let PurchaseOutcome::Confirmed(order) = buy(&*store, sale.id, "alice", 1).await else {
        panic!("an instant purchase is confirmed")
    };
    assert_eq!(order.status, OrderStatus::Confirmed);
    assert_eq!(order.expires_at, None);
    assert_eq!(read(&*store, order.order_id).await, order);
    for event in [pay(1, "p"), cancel(), OrderEvent::Expire] {
        let (result, after) = send(&*store, order.order_id, event).await;
        assert_eq!(result, Err(TransitionError::OrderConfirmed));
        assert_eq!(after, order);
    }
    let unknown = Uuid::now_v7();
    assert_eq!(store.order(unknown).await.unwrap(), None);
    assert_eq!(
        store.order_event(unknown, pay(1, "p")).await.unwrap(),
        OrderEventOutcome::NotFound
    );
    assert_figures(&*store, sale.id, (2, 0, 1)).await;
}

/// CO-6: a payment and a cancel racing on each of many reservations have exactly one winner
/// each, the loser is told what won, and the units move once.
pub async fn racing_payments_and_cancels_have_one_winner<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let buyers = 40u32;
    let sale = store.create_sale(hold(buyers, 1, 600)).await.unwrap();
    let mut orders = Vec::new();
    for i in 0..buyers {
        orders.push(reserve(&*store, sale.id, &format!("racer-{i}"), 1).await);
    }
    let tasks: Vec<_> = orders
        .iter()
        .map(|order| {
            let store = Arc::clone(&store);
            let id = order.order_id;
            tokio::spawn(async move {
                let payment = {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move { send(&*store, id, pay(1, "race")).await })
                };
                let cancelled = send(&*store, id, cancel()).await;
                (payment.await.unwrap(), cancelled)
            })
        })
        .collect();
    let (mut paid, mut cancelled) = (0i64, 0i64);
    for task in tasks {
        let ((pay_result, _), (cancel_result, _)) = task.await.unwrap();
        match (pay_result, cancel_result) {
            (Ok(Transition::Paid(_)), Err(TransitionError::OrderPaid)) => paid += 1,
            (Err(TransitionError::OrderCancelled), Ok(Transition::Cancelled(_))) => cancelled += 1,
            other => panic!("not exactly one winner: {other:?}"),
        }
    }
    for order in &orders {
        let now = read(&*store, order.order_id).await;
        assert!(matches!(
            now.status,
            OrderStatus::Paid | OrderStatus::Cancelled
        ));
    }
    assert_eq!(paid + cancelled, i64::from(buyers));
    assert_figures(&*store, sale.id, (cancelled, 0, paid)).await;
}

/// CO-5, CO-10, SPEC 9 expire: a reservation nobody pays expires at its deadline without any
/// request, exactly once: its unit goes to the waiter as a new reservation with a fresh window
/// from the expiry, the buyer's allowance comes back, and every later event is
/// `reservation_expired`.
pub async fn a_reservation_expires_once_without_a_request<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(hold(1, 1, 60)).await.unwrap();
    let order = reserve(&*store, sale.id, "alice", 1).await;
    let (result, _) = send(&*store, order.order_id, OrderEvent::Expire).await;
    assert!(
        matches!(result, Err(TransitionError::ReservationLive { .. })),
        "an expiry asked for early is refused: {result:?}"
    );
    assert_figures(&*store, sale.id, (0, 1, 0)).await;
    let joined = store.waitlist_join(sale.id, user("ann")).await.unwrap();
    assert_eq!(joined, Some(WaitlistJoin::Joined { position: 1 }));

    // The window is 60 s; the timer gets another 30 s to run.
    let deadline = std::time::Instant::now() + StdDuration::from_secs(90);
    let expired = loop {
        let now = read(&*store, order.order_id).await;
        if now.status != OrderStatus::Reserved {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never expired: {now:?}"
        );
        tokio::time::sleep(StdDuration::from_millis(250)).await;
    };
    assert_eq!(expired.status, OrderStatus::Expired);
    let Some(WaitlistPlace::Offered(offer)) =
        store.waitlist_place(sale.id, &user("ann")).await.unwrap()
    else {
        panic!("the expired unit was not offered to the waiter")
    };
    assert!(offer.offered);
    assert_eq!(offer.status, OrderStatus::Reserved);
    let expires_at = order.expires_at.unwrap();
    assert!(
        offer.created_at >= expires_at,
        "offered at the expiry: {offer:?}"
    );
    assert_eq!(
        offer.expires_at,
        Some(offer.created_at + time::Duration::seconds(60))
    );
    assert_figures(&*store, sale.id, (0, 1, 0)).await;
    for event in [OrderEvent::Expire, pay(1, "pay-late"), cancel()] {
        let (result, after) = send(&*store, order.order_id, event).await;
        assert!(
            matches!(result, Err(TransitionError::ReservationExpired { .. })),
            "{result:?}"
        );
        assert_eq!(after, expired);
    }
    let entries = walk(&*store, sale.id, 1000).await;
    let expiries = entries
        .iter()
        .filter(|e| e.cause == flashsale_store::LedgerCause::Expiry)
        .count();
    assert_eq!(expiries, 1, "expired once: {entries:#?}");
    let counts = store.summary(sale.id).await.unwrap().unwrap().checkout;
    assert_eq!(
        (counts.reserved, counts.expired, counts.offers_made),
        (2, 1, 1),
        "{counts:?}"
    );
    // The allowance is back: alice may wait for a unit again.
    let joined = store.waitlist_join(sale.id, user("alice")).await.unwrap();
    assert_eq!(joined, Some(WaitlistJoin::Joined { position: 1 }));
}
