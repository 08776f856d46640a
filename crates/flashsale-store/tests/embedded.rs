//! Durability of the embedded store (NF-4, NF-6 in docs/requirements.md): what was confirmed
//! survives a reopen, a failed disk write takes nothing, and the database refuses an oversell on
//! its own.

#![allow(clippy::unwrap_used)]

use flashsale_core::{IdempotencyKey, NewSale, Quantity, Rejection, SaleId, SystemClock, UserId};
use flashsale_store::embedded::{DB_FILE, EmbeddedStore};
use flashsale_store::{Attempt, PurchaseOutcome, SaleStore, StoreError};
use std::path::Path;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

fn open(dir: &Path) -> Arc<EmbeddedStore> {
    Arc::new(EmbeddedStore::open(dir, Arc::new(SystemClock)).unwrap())
}

fn active(stock: u32, limit: u32) -> NewSale {
    let now = OffsetDateTime::now_utc();
    NewSale::parse(
        "Durable widget",
        now - Duration::seconds(1),
        now + Duration::hours(1),
        i64::from(stock),
        i64::from(limit),
    )
    .unwrap()
}

fn attempt(sale: SaleId, name: &str, key: Option<&str>) -> Attempt {
    Attempt {
        sale_id: sale,
        user_id: UserId::parse(name).unwrap(),
        quantity: Quantity::ONE,
        idempotency_key: key.map(|k| IdempotencyKey::parse(k).unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirmed_orders_stock_keys_and_counters_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let sale = store.create_sale(active(300, 1)).await.unwrap();
    // 500 concurrent buyers, so the writer commits them in groups.
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let store = Arc::clone(&store);
            let key = format!("key-{i}");
            tokio::spawn(async move {
                store
                    .purchase(attempt(sale.id, &format!("u{i}"), Some(&key)))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut confirmed = Vec::new();
    for task in tasks {
        if let PurchaseOutcome::Confirmed(order) = task.await.unwrap() {
            confirmed.push(order);
        }
    }
    assert_eq!(confirmed.len(), 300);
    let before = store.summary(sale.id).await.unwrap().unwrap();
    store.shutdown().await;
    drop(store);

    let store = open(dir.path());
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.remaining, 0);
    assert_eq!(status.sold_out_at, before.status.sold_out_at);
    assert_eq!(*status.sale, *before.status.sale);
    for order in &confirmed {
        let orders = store
            .orders(sale.id, &order.user_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(orders, vec![order.clone()]);
    }
    // The idempotency key of a confirmed order still replays it after the restart.
    let first = &confirmed[0];
    let i: usize = first.user_id.as_str()[1..].parse().unwrap();
    let replay = store
        .purchase(attempt(
            sale.id,
            first.user_id.as_str(),
            Some(&format!("key-{i}")),
        ))
        .await
        .unwrap();
    assert_eq!(replay, PurchaseOutcome::Confirmed(first.clone()));
    let after = store.summary(sale.id).await.unwrap().unwrap();
    assert_eq!(after.attempts, before.attempts);
    assert_eq!(after.rejections, before.rejections);
    assert_eq!(after.confirmed_units, 300);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_disk_write_answers_unavailable_and_gives_the_stock_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let sale = store.create_sale(active(1, 1)).await.unwrap();
    // A real SQLite failure, injected from a second connection: inserts for this buyer abort.
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER fail_boom BEFORE INSERT ON orders WHEN NEW.user_id = 'boom'
         BEGIN SELECT RAISE(ABORT, 'injected write failure'); END;",
    )
    .unwrap();

    let failed = store.purchase(attempt(sale.id, "boom", Some("k"))).await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.remaining, 1, "the reserved unit is given back");
    assert!(status.sold_out_at.is_none());
    assert!(
        store
            .orders(sale.id, &UserId::parse("boom").unwrap())
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .summary(sale.id)
            .await
            .unwrap()
            .unwrap()
            .rejections
            .unavailable,
        1
    );

    // The 503 was not recorded against the key, and the unit is still for sale.
    conn.execute_batch("DROP TRIGGER fail_boom").unwrap();
    let retry = store
        .purchase(attempt(sale.id, "boom", Some("k")))
        .await
        .unwrap();
    assert!(matches!(retry, PurchaseOutcome::Confirmed(_)), "{retry:?}");
    let next = store
        .purchase(attempt(sale.id, "other", None))
        .await
        .unwrap();
    assert!(matches!(
        next,
        PurchaseOutcome::Rejected {
            rejection: Rejection::SoldOut,
            ..
        }
    ));
    store.shutdown().await;
}

#[tokio::test]
async fn purchases_after_shutdown_are_refused_and_take_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let sale = store.create_sale(active(3, 1)).await.unwrap();
    store.shutdown().await;
    let refused = store.purchase(attempt(sale.id, "late", None)).await;
    assert!(
        matches!(refused, Err(StoreError::ShuttingDown)),
        "{refused:?}"
    );
    assert_eq!(store.status(sale.id).await.unwrap().unwrap().remaining, 3);
    assert!(store.ready().await.is_err());
}

#[tokio::test]
async fn the_database_itself_refuses_to_record_more_than_the_stock() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let sale = store.create_sale(active(2, 1)).await.unwrap();
    store.shutdown().await;
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let oversell = conn.execute("UPDATE sales SET sold = 3 WHERE id = ?1", [sale.id.0]);
    assert!(oversell.is_err(), "CHECK (sold <= stock) must refuse");
    let ok = conn.execute("UPDATE sales SET sold = 2 WHERE id = ?1", [sale.id.0]);
    assert_eq!(ok.unwrap(), 1);
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let refused = EmbeddedStore::open(dir.path(), Arc::new(SystemClock));
    let Err(StoreError::Unavailable(message)) = refused else {
        panic!("a second store opened the same directory");
    };
    assert!(
        message.contains("in use by another flashsale process")
            && message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    first.shutdown().await;
    drop(first);
    let reopened = EmbeddedStore::open(dir.path(), Arc::new(SystemClock));
    assert!(reopened.is_ok(), "the lock outlived its store");
}
