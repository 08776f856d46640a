//! The waitlist (SPEC 9, CO-9..CO-11): what every store answers when buyers wait for units
//! other buyers' reservations free, and how freed units are offered.
//!
//! Releases here are cancels (a buyer's event, at once); the offer of an expired unit is in
//! [`crate::checkout::a_reservation_expires_once_without_a_request`], which waits a real
//! window.

use crate::StoreUnderTest;
use crate::checkout::{assert_figures, cancel, hold, pay, read, reserve, send};
use crate::conformance::{buy, new_sale, rejection, user};
use crate::durability::restart;
use crate::ledger::raise;
use flashsale_core::{Checkout, OrderStatus, SaleId, Transition, WaitlistRefusal};
use flashsale_store::{Order, SaleStore, StoreError, WaitlistJoin, WaitlistLeave, WaitlistPlace};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;
use time::Duration;

/// Joins `name` to the waitlist of `sale`, which exists. `Unavailable` (no connection free in
/// time on a busy machine) changed nothing and is sent again, as a client would.
async fn join(store: &dyn SaleStore, sale: SaleId, name: &str) -> WaitlistJoin {
    let mut tries = 0;
    loop {
        match store.waitlist_join(sale, user(name)).await {
            Err(StoreError::Unavailable { .. }) if tries < 5 => {
                tries += 1;
                tokio::time::sleep(StdDuration::from_millis(100)).await;
            }
            other => return other.unwrap().expect("the sale exists"),
        }
    }
}

/// Where `name` stands on the waitlist of `sale`, which exists.
async fn place(store: &dyn SaleStore, sale: SaleId, name: &str) -> WaitlistPlace {
    store
        .waitlist_place(sale, &user(name))
        .await
        .unwrap()
        .expect("the sale exists")
}

/// The reservation an offer gave `name`, which must have been made.
async fn offered(store: &dyn SaleStore, sale: SaleId, name: &str) -> Order {
    match place(store, sale, name).await {
        WaitlistPlace::Offered(order) => order,
        other => panic!("{name} was not offered a unit: {other:?}"),
    }
}

/// Cancels the reservation `order`, which must be live.
async fn release(store: &dyn SaleStore, order: uuid::Uuid) {
    let (result, _) = send(store, order, cancel()).await;
    assert!(matches!(result, Ok(Transition::Cancelled(_))), "{result:?}");
}

/// Buyers on the list, as the status says.
async fn length(store: &dyn SaleStore, sale: SaleId) -> u32 {
    store.status(sale).await.unwrap().unwrap().waitlist
}

/// CO-9: nobody joins while a unit is available; once every unit is held buyers join in order
/// and see their places; a buyer joins once and not at their limit; leaving moves everyone
/// behind up; every sale-less request is `None`; the list survives a restart; once every unit
/// is sold nobody joins.
pub async fn buyers_join_in_order_once_nothing_is_available<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    assert_eq!(
        store
            .waitlist_join(SaleId(999_999), user("ann"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .waitlist_place(SaleId(999_999), &user("ann"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .waitlist_leave(SaleId(999_999), &user("ann"))
            .await
            .unwrap(),
        None
    );

    let sale = store.create_sale(hold(2, 2, 600)).await.unwrap();
    assert_eq!(
        join(&*store, sale.id, "ann").await,
        WaitlistJoin::Refused(WaitlistRefusal::UnitsAvailable { available: 2 })
    );
    assert_eq!(
        place(&*store, sale.id, "ann").await,
        WaitlistPlace::NotWaitlisted
    );
    let held = reserve(&*store, sale.id, "holder", 2).await;

    for (i, name) in ["ann", "bob", "cy"].into_iter().enumerate() {
        let position = u32::try_from(i + 1).unwrap();
        assert_eq!(
            join(&*store, sale.id, name).await,
            WaitlistJoin::Joined { position }
        );
    }
    assert_eq!(
        join(&*store, sale.id, "ann").await,
        WaitlistJoin::Refused(WaitlistRefusal::AlreadyWaitlisted { position: 1 })
    );
    assert_eq!(
        join(&*store, sale.id, "holder").await,
        WaitlistJoin::Refused(WaitlistRefusal::AtLimit { limit: 2 }),
        "reserved units count toward the limit"
    );
    assert_eq!(
        place(&*store, sale.id, "cy").await,
        WaitlistPlace::Waiting { position: 3 }
    );
    assert_eq!(
        place(&*store, sale.id, "dan").await,
        WaitlistPlace::NotWaitlisted
    );
    assert_eq!(length(&*store, sale.id).await, 3);

    let leave = |name: &'static str| {
        let store = Arc::clone(&store);
        async move {
            store
                .waitlist_leave(sale.id, &user(name))
                .await
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(leave("bob").await, WaitlistLeave::Left);
    assert_eq!(leave("bob").await, WaitlistLeave::NotWaitlisted);
    assert_eq!(
        place(&*store, sale.id, "cy").await,
        WaitlistPlace::Waiting { position: 2 }
    );
    assert_eq!(length(&*store, sale.id).await, 2);
    assert_figures(&*store, sale.id, (0, 2, 0)).await;

    let store = restart(&sut, store).await;
    assert_eq!(
        place(&*store, sale.id, "ann").await,
        WaitlistPlace::Waiting { position: 1 }
    );
    assert_eq!(
        place(&*store, sale.id, "cy").await,
        WaitlistPlace::Waiting { position: 2 }
    );
    assert_eq!(length(&*store, sale.id).await, 2);
    // bob joins again, at the end.
    assert_eq!(
        join(&*store, sale.id, "bob").await,
        WaitlistJoin::Joined { position: 3 }
    );
    let summary = store.summary(sale.id).await.unwrap().unwrap();
    assert_eq!(summary.checkout.waitlist_joins, 4, "{summary:?}");

    let (result, _) = send(&*store, held.order_id, pay(2, "pay-all")).await;
    assert!(matches!(result, Ok(Transition::Paid(_))), "{result:?}");
    assert_eq!(
        join(&*store, sale.id, "eve").await,
        WaitlistJoin::Refused(WaitlistRefusal::SoldOut)
    );
}

/// CO-10, CO-11: a released unit goes to the earliest waiter as a new one-unit reservation
/// with a fresh window and `offered: true`, in the same step; units nobody waits for go back
/// to available; an offer is paid or released like any reservation; the summary counts it all
/// and it survives a restart.
pub async fn a_released_unit_is_offered_to_the_earliest_waiter<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(hold(3, 1, 600)).await.unwrap();
    let a = reserve(&*store, sale.id, "a", 1).await;
    let b = reserve(&*store, sale.id, "b", 1).await;
    let c = reserve(&*store, sale.id, "c", 1).await;
    for name in ["ann", "bob"] {
        assert!(matches!(
            join(&*store, sale.id, name).await,
            WaitlistJoin::Joined { .. }
        ));
    }

    let (result, _) = send(&*store, a.order_id, cancel()).await;
    assert!(matches!(result, Ok(Transition::Cancelled(_))), "{result:?}");
    let ann = offered(&*store, sale.id, "ann").await;
    assert!(ann.offered, "{ann:?}");
    assert_eq!(
        (ann.quantity, ann.status, ann.user_id.clone()),
        (1, OrderStatus::Reserved, user("ann"))
    );
    assert_eq!(
        ann.expires_at,
        Some(ann.created_at + Duration::seconds(600)),
        "a fresh window from the offer"
    );
    assert!(ann.created_at >= a.created_at);
    assert_eq!(read(&*store, ann.order_id).await, ann);
    assert_eq!(
        store.orders(sale.id, &user("ann")).await.unwrap().unwrap(),
        vec![ann.clone()]
    );
    assert_eq!(
        place(&*store, sale.id, "bob").await,
        WaitlistPlace::Waiting { position: 1 }
    );
    assert_eq!(length(&*store, sale.id).await, 1);
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(
        (status.remaining, status.held),
        (0, 3),
        "the unit stayed held"
    );
    assert_figures(&*store, sale.id, (0, 3, 0)).await;

    let (result, paid) = send(&*store, ann.order_id, pay(1, "pay-ann")).await;
    assert!(matches!(result, Ok(Transition::Paid(_))), "{result:?}");
    assert!(paid.offered);
    assert_eq!(
        offered(&*store, sale.id, "ann").await,
        paid,
        "the offer as it is now"
    );

    release(&*store, b.order_id).await;
    let bob = offered(&*store, sale.id, "bob").await;
    assert_eq!(length(&*store, sale.id).await, 0);
    assert_figures(&*store, sale.id, (0, 2, 1)).await;
    // Nobody waits: c's unit goes back to available, then bob's.
    release(&*store, c.order_id).await;
    assert_figures(&*store, sale.id, (1, 1, 1)).await;
    let (result, _) = send(&*store, bob.order_id, cancel()).await;
    assert!(matches!(result, Ok(Transition::Cancelled(_))), "{result:?}");
    assert_figures(&*store, sale.id, (2, 0, 1)).await;
    assert_eq!(
        place(&*store, sale.id, "bob").await,
        WaitlistPlace::Offered(read(&*store, bob.order_id).await)
    );

    let store = restart(&sut, store).await;
    assert_eq!(offered(&*store, sale.id, "ann").await, paid);
    assert_figures(&*store, sale.id, (2, 0, 1)).await;
    let counts = store.summary(sale.id).await.unwrap().unwrap().checkout;
    assert_eq!(
        (
            counts.reserved,
            counts.paid,
            counts.expired,
            counts.cancelled
        ),
        (5, 1, 0, 4),
        "{counts:?}"
    );
    assert_eq!(
        (
            counts.waitlist_joins,
            counts.offers_made,
            counts.offers_taken
        ),
        (2, 2, 1),
        "{counts:?}"
    );
}

/// CO-10: an offer passes over a waiter whose reserved and paid units reached the limit while
/// they waited (here by buying units an edit added), and takes them off the list.
pub async fn an_offer_passes_over_a_waiter_at_the_limit<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(hold(2, 2, 600)).await.unwrap();
    let x = reserve(&*store, sale.id, "x", 1).await;
    reserve(&*store, sale.id, "ann", 1).await;
    for name in ["ann", "bob"] {
        assert!(matches!(
            join(&*store, sale.id, name).await,
            WaitlistJoin::Joined { .. }
        ));
    }
    assert!(raise(&*store, sale.id, 1).await);
    // ann reaches her limit of 2 by the unit the edit added.
    reserve(&*store, sale.id, "ann", 1).await;
    release(&*store, x.order_id).await;
    assert_eq!(
        place(&*store, sale.id, "ann").await,
        WaitlistPlace::NotWaitlisted
    );
    let bob = offered(&*store, sale.id, "bob").await;
    assert_eq!(bob.quantity, 1);
    assert_eq!(length(&*store, sale.id).await, 0);
    assert_figures(&*store, sale.id, (0, 3, 0)).await;
}

/// SPEC 9: the list lapses at `ends_at`: nobody waits or joins after it, and a unit released
/// after it (a reservation taken before the end, cancelled after) goes to no one.
pub async fn the_waitlist_lapses_at_the_end<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let checkout = Checkout::parse(Some("hold"), Some(600), Some(1999), Some("EUR")).unwrap();
    let new = new_sale(Duration::seconds(-1), Duration::seconds(4), 1, 1).with_checkout(checkout);
    let sale = store.create_sale(new).await.unwrap();
    let held = reserve(&*store, sale.id, "holder", 1).await;
    assert_eq!(
        join(&*store, sale.id, "ann").await,
        WaitlistJoin::Joined { position: 1 }
    );
    let wait = (sale.ends_at - store.now()).unsigned_abs() + StdDuration::from_millis(500);
    tokio::time::sleep(wait).await;

    assert_eq!(
        place(&*store, sale.id, "ann").await,
        WaitlistPlace::NotWaitlisted
    );
    assert_eq!(length(&*store, sale.id).await, 0);
    assert_eq!(
        join(&*store, sale.id, "bob").await,
        WaitlistJoin::Refused(WaitlistRefusal::Closed)
    );
    let (result, _) = send(&*store, held.order_id, cancel()).await;
    assert!(matches!(result, Ok(Transition::Cancelled(_))), "{result:?}");
    assert_eq!(
        place(&*store, sale.id, "ann").await,
        WaitlistPlace::NotWaitlisted
    );
    assert_figures(&*store, sale.id, (1, 0, 0)).await;
    let counts = store.summary(sale.id).await.unwrap().unwrap().checkout;
    assert_eq!(counts.offers_made, 0, "{counts:?}");
}

/// CO-9, CO-10 under concurrency: 30 buyers joining at once get the places 1..=30 once each;
/// 20 reservations cancelled at once offer exactly one unit each to the first 20 in join order,
/// and the last 10 move up to places 1..=10 in the same order.
pub async fn racing_joins_and_releases_offer_each_unit_once_in_join_order<S: StoreUnderTest>(
    sut: S,
) {
    let store = sut.open().await;
    let units = 20u32;
    let sale = store.create_sale(hold(units, 1, 600)).await.unwrap();
    let mut holds = Vec::new();
    for i in 0..units {
        holds.push(reserve(&*store, sale.id, &format!("holder-{i}"), 1).await);
    }
    let joins: Vec<_> = (0..30)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let name = format!("waiter-{i}");
                (join(&*store, sale.id, &name).await, name)
            })
        })
        .collect();
    let mut by_position = BTreeMap::new();
    for task in joins {
        let (joined, name) = task.await.unwrap();
        let WaitlistJoin::Joined { position } = joined else {
            panic!("{name}: {joined:?}")
        };
        assert!(
            by_position.insert(position, name).is_none(),
            "a place given twice"
        );
    }
    assert_eq!(
        by_position.keys().copied().collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>()
    );

    let cancels: Vec<_> = holds
        .iter()
        .map(|order| {
            let store = Arc::clone(&store);
            let id = order.order_id;
            tokio::spawn(async move { send(&*store, id, cancel()).await })
        })
        .collect();
    for task in cancels {
        let (result, _) = task.await.unwrap();
        assert!(matches!(result, Ok(Transition::Cancelled(_))), "{result:?}");
    }
    let mut offer_ids = std::collections::HashSet::new();
    for (position, name) in &by_position {
        let now = place(&*store, sale.id, name).await;
        if *position <= 20 {
            let WaitlistPlace::Offered(order) = now else {
                panic!("place {position} ({name}) got no offer: {now:?}")
            };
            assert_eq!((order.quantity, order.status), (1, OrderStatus::Reserved));
            assert!(offer_ids.insert(order.order_id));
            assert_eq!(
                store
                    .orders(sale.id, &user(name))
                    .await
                    .unwrap()
                    .unwrap()
                    .len(),
                1,
                "one offer each"
            );
        } else {
            assert_eq!(
                now,
                WaitlistPlace::Waiting {
                    position: position - 20
                },
                "{name}"
            );
        }
    }
    assert_eq!(length(&*store, sale.id).await, 10);
    assert_figures(&*store, sale.id, (0, 20, 0)).await;
    let counts = store.summary(sale.id).await.unwrap().unwrap().checkout;
    assert_eq!(
        (counts.offers_made, counts.cancelled),
        (20, 20),
        "{counts:?}"
    );
    // Nothing went back to available: a purchase is still refused.
    assert!(rejection(&buy(&*store, sale.id, "late", 1).await).is_some());
}

/// SPEC 9, CO-9: an operator's cancel of the sale closes the list at once, as `ends_at` would:
/// nobody waits or joins, and a reservation released afterwards goes to no waiter.
pub async fn a_cancelled_sales_waitlist_lapses<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(hold(1, 1, 600)).await.unwrap();
    let held = reserve(&*store, sale.id, "holder", 1).await;
    assert_eq!(
        join(&*store, sale.id, "ann").await,
        WaitlistJoin::Joined { position: 1 }
    );
    let cancelled = store
        .change_sale(sale.id, flashsale_core::SaleChange::Cancel)
        .await
        .unwrap();
    assert!(
        matches!(cancelled, flashsale_store::ChangeOutcome::Changed(_)),
        "{cancelled:?}"
    );
    assert_eq!(
        place(&*store, sale.id, "ann").await,
        WaitlistPlace::NotWaitlisted
    );
    assert_eq!(length(&*store, sale.id).await, 0);
    assert_eq!(
        join(&*store, sale.id, "bob").await,
        WaitlistJoin::Refused(WaitlistRefusal::Closed)
    );
    release(&*store, held.order_id).await;
    assert_eq!(
        place(&*store, sale.id, "ann").await,
        WaitlistPlace::NotWaitlisted
    );
    assert_figures(&*store, sale.id, (1, 0, 0)).await;
}
