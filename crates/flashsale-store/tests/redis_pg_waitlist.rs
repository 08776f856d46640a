//! The waitlist in the scale-out store (issue 12 item 4, CO-9..CO-11), where the conformance
//! suite cannot reach: two instances on one database, a Redis rebuild with offered
//! reservations, a failed transition write, and a release whose move (with its offers) is
//! committed but not applied to Redis. The SIGKILL case (expiries of a dead instance offered to
//! waiters) is `redis_pg_checkout.rs`'s one long test.
//!
//! Every test has its own schema and key prefix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flashsale_core::{Canceller, OrderEvent, OrderStatus, Quantity, SaleId, Transition, UserId};
use flashsale_store::redis_pg::{RedisPgConfig, RedisPgStore};
use flashsale_store::{
    Attempt, Order, OrderEventOutcome, PurchaseOutcome, SaleStore, WaitlistJoin, WaitlistPlace,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use support::{
    Cleanup, connect, hold_sale, isolated, moves_owed, quiet_reconcilers, redis_figures, sale_epoch,
};
use uuid::Uuid;

/// The payment window of every sale here: 10 minutes, so nothing expires unless a test says.
const WINDOW_SECS: i64 = 600;

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

async fn buy(store: &dyn SaleStore, sale: SaleId, name: &str) -> PurchaseOutcome {
    store
        .purchase(Attempt {
            sale_id: sale,
            user_id: user(name),
            quantity: Quantity::parse(1, 10).unwrap(),
            idempotency_key: None,
        })
        .await
        .unwrap()
}

async fn reserve(store: &dyn SaleStore, sale: SaleId, name: &str) -> Order {
    match buy(store, sale, name).await {
        PurchaseOutcome::Confirmed(order) => order,
        other => panic!("expected a reservation, got {other:?}"),
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

/// Cancels `order`, which must be live.
async fn cancel(store: &dyn SaleStore, order: Uuid) {
    let event = OrderEvent::Cancel {
        by: Canceller::OrderIdHolder,
    };
    match store.order_event(order, event).await.unwrap() {
        OrderEventOutcome::Decided {
            result: Ok(Transition::Cancelled(_)),
            ..
        } => {}
        other => panic!("not cancelled: {other:?}"),
    }
}

/// (available, held, sold) and the waitlist's length, as a status read reports them.
async fn figures(store: &dyn SaleStore, sale: SaleId) -> (u32, u32, u32, u32) {
    let status = store.status(sale).await.unwrap().unwrap();
    let sold = status.sold();
    assert_eq!(status.remaining + status.held + sold, status.sale.stock);
    (status.remaining, status.held, sold, status.waitlist)
}

/// Redis's own `remaining` and `onhold`, and its per-buyer holdings.
async fn redis_state(cfg: &RedisPgConfig, sale: SaleId) -> (i64, i64, BTreeMap<String, i64>) {
    let (remaining, on_hold) = redis_figures(cfg, sale).await;
    let held = format!("{{{}:sale:{}}}:held", cfg.key_prefix, sale.0);
    let holdings: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(held)
        .query_async(&mut support::redis(cfg).await)
        .await
        .unwrap();
    (remaining, on_hold, holdings.into_iter().collect())
}

fn holdings(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(u, n)| ((*u).to_owned(), *n)).collect()
}

/// Orders an offer made, by buyer.
async fn offers(cfg: &RedisPgConfig, sale: SaleId) -> BTreeMap<String, i64> {
    support::pg(cfg)
        .await
        .query(
            "SELECT user_id, count(*) FROM orders WHERE sale_id = $1 AND offered
             GROUP BY user_id",
            &[&sale.0],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn offered(place: WaitlistPlace) -> Order {
    match place {
        WaitlistPlace::Offered(order) => order,
        other => panic!("no offer: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_on_two_instances_take_one_order_and_releases_on_both_offer_each_unit_once() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let a = Arc::new(connect(&cfg).await);
    let b = Arc::new(connect(&cfg).await);
    let units = 8;
    let sale = a
        .create_sale(hold_sale(units, 1, WINDOW_SECS))
        .await
        .unwrap();
    let mut holds = Vec::new();
    for i in 0..units {
        let on = if i % 2 == 0 { &a } else { &b };
        holds.push(reserve(on.as_ref(), sale.id, &format!("holder-{i}")).await);
    }
    // 16 buyers join at once, alternately on each instance.
    let joins: Vec<_> = (0..16)
        .map(|i| {
            let on = Arc::clone(if i % 2 == 0 { &a } else { &b });
            tokio::spawn(async move {
                let name = format!("waiter-{i}");
                (join(on.as_ref(), sale.id, &name).await, name)
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
            "a place twice"
        );
    }
    assert_eq!(
        by_position.keys().copied().collect::<Vec<_>>(),
        (1..=16).collect::<Vec<_>>()
    );
    // Both instances read the same places and the same length.
    for (position, name) in &by_position {
        for on in [&a, &b] {
            assert_eq!(
                place(on.as_ref(), sale.id, name).await,
                WaitlistPlace::Waiting {
                    position: *position
                }
            );
        }
    }
    assert_eq!(figures(a.as_ref(), sale.id).await, (0, units, 0, 16));
    assert_eq!(figures(b.as_ref(), sale.id).await, (0, units, 0, 16));

    // Every holder cancels at once, half on each instance.
    let cancels: Vec<_> = holds
        .iter()
        .enumerate()
        .map(|(i, order)| {
            let on = Arc::clone(if i % 2 == 0 { &b } else { &a });
            let id = order.order_id;
            tokio::spawn(async move { cancel(on.as_ref(), id).await })
        })
        .collect();
    for task in cancels {
        task.await.unwrap();
    }
    let mut ids = std::collections::HashSet::new();
    for (position, name) in &by_position {
        let now = place(b.as_ref(), sale.id, name).await;
        if *position <= units {
            let order = offered(now);
            assert_eq!((order.quantity, order.status), (1, OrderStatus::Reserved));
            assert!(ids.insert(order.order_id), "one order per offer");
        } else {
            assert_eq!(
                now,
                WaitlistPlace::Waiting {
                    position: position - units
                }
            );
        }
    }
    let made = offers(&cfg, sale.id).await;
    assert_eq!(made.len(), units as usize);
    assert!(made.values().all(|n| *n == 1), "{made:?}");
    for on in [&a, &b] {
        assert_eq!(figures(on.as_ref(), sale.id).await, (0, units, 0, 8));
    }
    // Redis holds the offered units for their buyers; the audit agrees (no rebuild).
    assert_eq!(moves_owed(&cfg).await, 0, "every move applied at once");
    let (remaining, on_hold, held) = redis_state(&cfg, sale.id).await;
    assert_eq!((remaining, on_hold), (0, i64::from(units)));
    let expected: Vec<(String, i64)> = by_position
        .range(1..=units)
        .map(|(_, n)| (n.clone(), 1))
        .collect();
    assert_eq!(held, expected.into_iter().collect::<BTreeMap<_, _>>());
    let epoch = sale_epoch(&cfg, sale.id).await;
    a.reconcile_now().await.unwrap();
    b.reconcile_now().await.unwrap();
    assert_eq!(sale_epoch(&cfg, sale.id).await, epoch, "no rebuild needed");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_rebuild_counts_offered_reservations_as_held_and_in_allowances() {
    let cfg = quiet_reconcilers();
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store
        .create_sale(hold_sale(3, 1, WINDOW_SECS))
        .await
        .unwrap();
    let alice = reserve(&store, sale.id, "alice").await;
    let bob = reserve(&store, sale.id, "bob").await;
    let carol = reserve(&store, sale.id, "carol").await;
    for name in ["ann", "eve"] {
        assert!(matches!(
            join(&store, sale.id, name).await,
            WaitlistJoin::Joined { .. }
        ));
    }
    cancel(&store, alice.order_id).await;
    offered(place(&store, sale.id, "ann").await);
    assert_eq!(figures(&store, sale.id).await, (0, 3, 0, 1));

    // Redis loses the sale; the reconciler rebuilds it from PostgreSQL.
    let epoch = sale_epoch(&cfg, sale.id).await;
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
    for _ in 0..40 {
        store.reconcile_now().await.unwrap();
        if sale_epoch(&cfg, sale.id).await > epoch {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rebuilt = sale_epoch(&cfg, sale.id).await;
    assert!(rebuilt > epoch, "rebuilt");
    let (remaining, on_hold, held) = redis_state(&cfg, sale.id).await;
    assert_eq!((remaining, on_hold), (0, 3));
    assert_eq!(held, holdings(&[("ann", 1), ("bob", 1), ("carol", 1)]));
    assert_eq!(
        figures(&store, sale.id).await,
        (0, 3, 0, 1),
        "the list's length is restored too"
    );
    // The audit agrees with the rebuilt state.
    store.reconcile_now().await.unwrap();
    store.reconcile_now().await.unwrap();
    assert_eq!(sale_epoch(&cfg, sale.id).await, rebuilt);

    // The offers go on: bob's unit to eve; carol's back to available.
    cancel(&store, bob.order_id).await;
    offered(place(&store, sale.id, "eve").await);
    cancel(&store, carol.order_id).await;
    assert_eq!(figures(&store, sale.id).await, (1, 2, 0, 0));
    // Ann's offered unit counts in her allowance; a new buyer takes the free unit.
    assert!(
        !matches!(
            buy(&store, sale.id, "ann").await,
            PurchaseOutcome::Confirmed(_)
        ),
        "ann is at her limit"
    );
    reserve(&store, sale.id, "dave").await;
    assert_eq!(figures(&store, sale.id).await, (0, 3, 0, 0));
    store.reconcile_now().await.unwrap();
    assert_eq!(sale_epoch(&cfg, sale.id).await, rebuilt, "still agreed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_whose_write_fails_leaves_the_list_and_the_units_unchanged() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store
        .create_sale(hold_sale(1, 1, WINDOW_SECS))
        .await
        .unwrap();
    let order = reserve(&store, sale.id, "alice").await;
    assert_eq!(
        join(&store, sale.id, "ann").await,
        WaitlistJoin::Joined { position: 1 }
    );
    let pg = support::pg(&cfg).await;
    // The ledger row is the transaction's last write: refusing it rolls back the offer too.
    pg.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON stock_ledger
             FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .unwrap();
    let failed = store
        .order_event(
            order.order_id,
            OrderEvent::Cancel {
                by: Canceller::OrderIdHolder,
            },
        )
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(
        store.order(order.order_id).await.unwrap(),
        Some(order.clone())
    );
    assert_eq!(
        place(&store, sale.id, "ann").await,
        WaitlistPlace::Waiting { position: 1 }
    );
    assert_eq!(figures(&store, sale.id).await, (0, 1, 0, 1));
    assert_eq!(
        redis_state(&cfg, sale.id).await,
        (0, 1, holdings(&[("alice", 1)]))
    );
    assert!(offers(&cfg, sale.id).await.is_empty());
    assert_eq!(moves_owed(&cfg).await, 0);
    let ann: i64 = pg
        .query_one("SELECT count(*) FROM buyers WHERE user_id = 'ann'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ann, 0, "no allowance taken");

    pg.batch_execute("DROP TRIGGER refuse ON stock_ledger")
        .await
        .unwrap();
    cancel(&store, order.order_id).await;
    offered(place(&store, sale.id, "ann").await);
    assert_eq!(figures(&store, sale.id).await, (0, 1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owed_release_with_an_offer_is_applied_once_by_any_reconciler() {
    let cfg = quiet_reconcilers();
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let a: RedisPgStore = connect(&cfg).await;
    let b: RedisPgStore = connect(&cfg).await;
    let sale = a.create_sale(hold_sale(3, 2, WINDOW_SECS)).await.unwrap();
    // Alice holds two units: one goes to ann, the other back to available.
    let alice = a
        .purchase(Attempt {
            sale_id: sale.id,
            user_id: user("alice"),
            quantity: Quantity::parse(2, 10).unwrap(),
            idempotency_key: None,
        })
        .await
        .unwrap();
    let PurchaseOutcome::Confirmed(alice) = alice else {
        panic!("{alice:?}")
    };
    reserve(&a, sale.id, "bob").await;
    assert_eq!(
        join(&a, sale.id, "ann").await,
        WaitlistJoin::Joined { position: 1 }
    );

    // Instance a "dies" after the commit, before Redis hears of it.
    a.skip_redis_moves(true);
    cancel(&a, alice.order_id).await;
    assert_eq!(moves_owed(&cfg).await, 1);
    offered(place(&b, sale.id, "ann").await);
    assert_eq!(
        redis_state(&cfg, sale.id).await,
        (0, 3, holdings(&[("alice", 2), ("bob", 1)])),
        "not applied yet"
    );
    let epoch = sale_epoch(&cfg, sale.id).await;

    b.reconcile_now().await.unwrap();
    a.skip_redis_moves(false);
    a.reconcile_now().await.unwrap();
    b.reconcile_now().await.unwrap();
    assert_eq!(moves_owed(&cfg).await, 0);
    assert_eq!(
        redis_state(&cfg, sale.id).await,
        (1, 2, holdings(&[("ann", 1), ("bob", 1)]))
    );
    assert_eq!(figures(&b, sale.id).await, (1, 2, 0, 0));

    // Applied again (a death after Redis took it, before PostgreSQL heard): moves nothing.
    support::pg(&cfg)
        .await
        .execute(
            "UPDATE orders SET move_epoch = (SELECT epoch FROM sales WHERE id = $1)
             WHERE order_id = $2",
            &[&sale.id.0, &alice.order_id],
        )
        .await
        .unwrap();
    b.reconcile_now().await.unwrap();
    assert_eq!(moves_owed(&cfg).await, 0);
    assert_eq!(
        redis_state(&cfg, sale.id).await,
        (1, 2, holdings(&[("ann", 1), ("bob", 1)]))
    );
    assert_eq!(sale_epoch(&cfg, sale.id).await, epoch, "no rebuild needed");
    // Ann's offer, cancelled, goes back to available: nobody waits.
    let ann = offered(place(&a, sale.id, "ann").await);
    cancel(&a, ann.order_id).await;
    assert_eq!(figures(&a, sale.id).await, (2, 1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_sales_list_lapses_and_its_released_units_go_to_no_waiter() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store
        .create_sale(hold_sale(1, 1, WINDOW_SECS))
        .await
        .unwrap();
    let order = reserve(&store, sale.id, "alice").await;
    assert_eq!(
        join(&store, sale.id, "ann").await,
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
        place(&store, sale.id, "ann").await,
        WaitlistPlace::NotWaitlisted
    );
    assert_eq!(
        join(&store, sale.id, "bob").await,
        WaitlistJoin::Refused(flashsale_core::WaitlistRefusal::Closed)
    );
    assert_eq!(store.status(sale.id).await.unwrap().unwrap().waitlist, 0);
    if let OrderEventOutcome::Decided { result: Ok(_), .. } = store
        .order_event(
            order.order_id,
            OrderEvent::Cancel {
                by: Canceller::OrderIdHolder,
            },
        )
        .await
        .unwrap()
    {
        assert!(
            offers(&cfg, sale.id).await.is_empty(),
            "offered after the end"
        );
    }
    assert_eq!(
        place(&store, sale.id, "ann").await,
        WaitlistPlace::NotWaitlisted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_publish_of_the_length_is_made_good_by_the_reconciler() {
    let cfg = quiet_reconcilers();
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store
        .create_sale(hold_sale(1, 1, WINDOW_SECS))
        .await
        .unwrap();
    reserve(&store, sale.id, "alice").await;
    for name in ["ann", "bob"] {
        assert!(matches!(
            join(&store, sale.id, name).await,
            WaitlistJoin::Joined { .. }
        ));
    }
    assert_eq!(figures(&store, sale.id).await, (0, 1, 0, 2));
    // The instance died between a join's commit and its publish.
    let mut con = support::redis(&cfg).await;
    let _: () = redis::cmd("HDEL")
        .arg(format!("{{{}:sale:{}}}:meta", cfg.key_prefix, sale.id.0))
        .arg("waitlist")
        .arg("waitlist_rev")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(figures(&store, sale.id).await, (0, 1, 0, 0));
    store.reconcile_now().await.unwrap();
    assert_eq!(figures(&store, sale.id).await, (0, 1, 0, 2));
}
