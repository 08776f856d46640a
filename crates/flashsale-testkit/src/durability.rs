//! The durability cases: what every store keeps across a clean restart and across a crash
//! (docs/requirements.md NF-4, NF-6).
//!
//! - answer, then restart: every confirmed order, the stock left and the counters are there;
//! - a key replays its order after a restart, and is still refused with another body;
//! - a crash mid-batch: a process buying flat out is killed (`SIGKILL`) while orders are in
//!   flight; once the store is open again and has recovered (scale-out: the lease of the dead
//!   instance's reservations has run out), every order that was answered confirmed is there,
//!   its key replays it, and nothing is sold twice: the units on record are the units gone.
//!
//! A crash is a killed process ([`crate::crash_child`]), not a dropped store.

use crate::StoreUnderTest;
use crate::conformance::active;
use crate::crash_child::CrashChild;
use flashsale_core::{IdempotencyKey, Quantity, SaleId, UserId};
use flashsale_store::{Attempt, Order, PurchaseOutcome, SaleStore, StoreError};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One unit for `name`, with the idempotency key `key`.
fn keyed(sale: SaleId, name: &str, key: &str) -> Attempt {
    Attempt {
        sale_id: sale,
        user_id: UserId::parse(name).expect("a valid user id"),
        quantity: Quantity::ONE,
        idempotency_key: Some(IdempotencyKey::parse(key).expect("a valid key")),
    }
}

/// Shuts `store` down and drops it (it must be the last handle), then opens the same data.
pub(crate) async fn restart<S: StoreUnderTest>(
    sut: &S,
    store: Arc<dyn SaleStore>,
) -> Arc<dyn SaleStore> {
    store.shutdown().await;
    drop(store);
    sut.open().await
}

/// NF-4: 500 concurrent keyed buyers (so commits go in groups) take 300 units; after a clean
/// restart the sale, its stock left, its sold-out instant (the latest confirmed order's, as the
/// running store said), every confirmed order, a key's replay and the counters are what they
/// were.
pub async fn confirmed_orders_stock_keys_and_counters_survive_a_restart<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(300, 1)).await.unwrap();
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let attempt = keyed(sale.id, &format!("u{i}"), &format!("key-{i}"));
                (i, store.purchase(attempt).await.unwrap())
            })
        })
        .collect();
    let mut confirmed = Vec::new();
    for task in tasks {
        if let (i, PurchaseOutcome::Confirmed(order)) = task.await.unwrap() {
            confirmed.push((i, order));
        }
    }
    assert_eq!(confirmed.len(), 300);
    let before = store.summary(sale.id).await.unwrap().unwrap();
    // The sale sold out when its last unit was taken: the latest confirmed order's instant,
    // whichever commit group held it.
    let last_taken = confirmed.iter().map(|(_, o)| o.created_at).max();
    assert_eq!(before.status.sold_out_at, last_taken);

    let store = restart(&sut, store).await;
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.remaining, 0);
    assert_eq!(status.sold_out_at, before.status.sold_out_at);
    assert_eq!(*status.sale, *before.status.sale);
    for (_, order) in &confirmed {
        let orders = store
            .orders(sale.id, &order.user_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(orders, vec![order.clone()]);
    }
    let (i, first) = &confirmed[0];
    let replay = store
        .purchase(keyed(sale.id, &format!("u{i}"), &format!("key-{i}")))
        .await
        .unwrap();
    assert_eq!(replay, PurchaseOutcome::Confirmed(first.clone()));
    let after = store.summary(sale.id).await.unwrap().unwrap();
    assert_eq!(after.attempts, before.attempts);
    assert_eq!(after.rejections, before.rejections);
    assert_eq!(after.confirmed_orders, 300);
    assert_eq!(after.confirmed_units, 300);
    store.shutdown().await;
}

/// PR-6 across a restart: the key of a confirmed order returns that order, not a new one, and
/// the same key from another buyer is still refused; neither is a new attempt.
pub async fn a_key_replays_its_order_after_a_restart<S: StoreUnderTest>(sut: S) {
    let store = sut.open().await;
    let sale = store.create_sale(active(5, 2)).await.unwrap();
    let first = store
        .purchase(keyed(sale.id, "alice", "alice-1"))
        .await
        .unwrap();
    assert!(matches!(first, PurchaseOutcome::Confirmed(_)), "{first:?}");
    let before = store.summary(sale.id).await.unwrap().unwrap();

    let store = restart(&sut, store).await;
    let replay = store
        .purchase(keyed(sale.id, "alice", "alice-1"))
        .await
        .unwrap();
    assert_eq!(
        replay, first,
        "the key made a new decision after the restart"
    );
    let reused = store
        .purchase(keyed(sale.id, "bob", "alice-1"))
        .await
        .unwrap();
    assert_eq!(reused, PurchaseOutcome::IdempotencyKeyReused);
    let after = store.summary(sale.id).await.unwrap().unwrap();
    assert_eq!(
        after.attempts, before.attempts,
        "replays are not new attempts"
    );
    assert_eq!(after.status.remaining, 4);
    assert_eq!(
        store
            .orders(sale.id, &alice())
            .await
            .unwrap()
            .unwrap()
            .len(),
        1
    );
    store.shutdown().await;
}

fn alice() -> UserId {
    UserId::parse("alice").expect("a valid user id")
}

/// The crash case's sale: enough stock that the child is still buying when it is killed.
const CRASH_STOCK: u32 = 1_000;
/// Buyers working at once in the child; worker `w` and worker `w + CRASH_WORKERS / 2` send
/// the same buyers, so a buyer's attempts race (the limit is 1).
const CRASH_WORKERS: usize = 64;
/// Attempts per worker (the child is killed long before the last).
const CRASH_ROUNDS: usize = 40;
/// The child is killed once this many orders were answered confirmed.
const CRASH_AFTER: usize = 40;
/// The variable naming the crash case's directory to the child.
const CRASH_DIR: &str = "FLASHSALE_TESTKIT_CRASH_DIR";
/// How long the child may take to start buying, and the store to recover after the crash.
const CRASH_DEADLINE: Duration = Duration::from_secs(60);

/// The buyer of worker `w`'s round `n`.
fn crash_buyer(w: usize, n: usize) -> String {
    format!("w{}-{n}", w % (CRASH_WORKERS / 2))
}

/// The key of worker `w`'s round `n` (each attempt its own).
fn crash_key(w: usize, n: usize) -> String {
    format!("k{w}-{n}")
}

/// NF-6: a process buying flat out is killed mid-batch; the store opened again has every
/// order answered confirmed (and its key replays it), and the units on record are exactly
/// the units gone: none sold twice, none lost, nobody over the limit. `child_test` is the
/// full name of the test that runs [`crash_child`] for this store.
pub async fn confirmed_orders_survive_a_crash_mid_batch<S: StoreUnderTest>(
    sut: S,
    child_test: &str,
) {
    let store = sut.open().await;
    let sale = store.create_sale(active(CRASH_STOCK, 1)).await.unwrap();
    store.shutdown().await;
    drop(store);

    // The child serves the same data and reports every confirmation as it hears it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("input"),
        format!("{}\n{}", sale.id.0, sut.describe()),
    )
    .unwrap();
    let test_name = child_test
        .split_once("::")
        .map_or(child_test, |(_, rest)| rest);
    let mut child = CrashChild::spawn(test_name, CRASH_DIR, dir.path());
    let report = child.report();
    child
        .wait_for(CRASH_DEADLINE, |text| text.lines().count() >= CRASH_AFTER)
        .await;
    child.kill(); // SIGKILL, mid-batch
    let heard = heard_confirmed(&report);
    assert!(heard.len() >= CRASH_AFTER);

    let store = sut.open().await;
    // Recovered once the units gone are the units on record (scale-out: the dead instance's
    // reservations are released or kept once their lease has run out).
    let deadline = Instant::now() + CRASH_DEADLINE;
    let summary = loop {
        let summary = store.summary(sale.id).await.unwrap().unwrap();
        if u64::from(summary.status.remaining) + summary.confirmed_units == u64::from(CRASH_STOCK) {
            break summary;
        }
        assert!(
            Instant::now() < deadline,
            "never balanced after the crash: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Every buyer the child may have sent: their orders on record are the confirmed units.
    let mut units = 0u64;
    let mut orders = 0u64;
    for w in 0..CRASH_WORKERS / 2 {
        for n in 0..CRASH_ROUNDS {
            let user = UserId::parse(&crash_buyer(w, n)).unwrap();
            let held = store.orders(sale.id, &user).await.unwrap().unwrap();
            let held_units: u32 = held.iter().map(|o| o.quantity).sum();
            assert!(held_units <= 1, "{user:?} holds {held_units} > the limit 1");
            units += u64::from(held_units);
            orders += held.len() as u64;
        }
    }
    assert_eq!(
        units, summary.confirmed_units,
        "units on record != confirmed"
    );
    assert_eq!(orders, summary.confirmed_orders);
    // Every order answered confirmed is there, and its key replays it.
    for (key, order) in &heard {
        let held = store
            .orders(sale.id, &order.user_id)
            .await
            .unwrap()
            .unwrap();
        assert!(held.contains(order), "confirmed order {key} is missing");
        let replay = store
            .purchase(keyed(sale.id, order.user_id.as_str(), key))
            .await
            .unwrap();
        assert_eq!(replay, PurchaseOutcome::Confirmed(order.clone()), "{key}");
    }
    let after = store.summary(sale.id).await.unwrap().unwrap();
    assert_eq!(after.confirmed_units, summary.confirmed_units);
    println!(
        "killed after {} confirmations heard; {} units on record of {CRASH_STOCK}",
        heard.len(),
        summary.confirmed_units
    );
    store.shutdown().await;
}

/// The confirmations the child reported, by key: whole lines only (the kill may cut the last).
fn heard_confirmed(report: &Path) -> BTreeMap<String, Order> {
    let text = std::fs::read_to_string(report).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .map(|line| {
            let mut f = line.trim_end().split('\t');
            let mut next = || f.next().expect("a whole report line");
            let key = next().to_owned();
            let user = UserId::parse(next()).unwrap();
            let order_id = next().parse().unwrap();
            let sale_id = SaleId(next().parse().unwrap());
            let quantity = next().parse().unwrap();
            let nanos: i128 = next().parse().unwrap();
            let created_at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
            let order = Order {
                order_id,
                sale_id,
                user_id: user,
                quantity,
                created_at,
                status: flashsale_core::OrderStatus::Confirmed,
                expires_at: None,
                payment_ref: None,
                offered: false,
            };
            (key, order)
        })
        .collect()
}

/// The crash case's child: when run by [`confirmed_orders_survive_a_crash_mid_batch`] (with
/// its directory in the environment), opens the store it names and buys flat out, appending
/// each confirmation to the report as it is heard, until it is killed; otherwise returns.
pub async fn crash_child<S: StoreUnderTest>() {
    let Ok(dir) = std::env::var(CRASH_DIR) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let input = std::fs::read_to_string(dir.join("input")).unwrap();
    let (sale, description) = input.split_once('\n').unwrap();
    let sale = SaleId(sale.parse().unwrap());
    let store = S::open_described(description).await;
    let report = Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("report"))
            .unwrap(),
    ));
    let workers: Vec<_> = (0..CRASH_WORKERS)
        .map(|w| {
            let store = Arc::clone(&store);
            let report = Arc::clone(&report);
            tokio::spawn(async move {
                for n in 0..CRASH_ROUNDS {
                    let key = crash_key(w, n);
                    let attempt = keyed(sale, &crash_buyer(w, n), &key);
                    match store.purchase(attempt).await {
                        Ok(PurchaseOutcome::Confirmed(o)) => {
                            let line = format!(
                                "{key}\t{}\t{}\t{}\t{}\t{}\n",
                                o.user_id.as_str(),
                                o.order_id,
                                o.sale_id.0,
                                o.quantity,
                                o.created_at.unix_timestamp_nanos()
                            );
                            // One write per line, so a kill cuts at most the last one.
                            let mut file = report.lock().unwrap();
                            file.write_all(line.as_bytes()).unwrap();
                        }
                        Ok(_)
                        | Err(StoreError::Unavailable { .. } | StoreError::Timeout { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    // Bought everything before the kill came: wait for it (the parent then fails the case).
    std::future::pending::<()>().await;
}
