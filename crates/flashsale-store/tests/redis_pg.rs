//! Failure injection and scale-out tests of the Redis + PostgreSQL store (issue 3, item 6).
//!
//! Each test isolates itself (own schema, own key prefix); tests that stop or flush a service
//! start their own private redis-server or PostgreSQL on another port. Every failure test ends
//! with [`support::assert_invariants`]: orders in PostgreSQL <= stock, nobody over the limit,
//! every confirmed order present, and Redis remaining + sold + live reservations = stock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flashsale_core::{IdempotencyKey, Outcome, Quantity, Rejection, Sale, SaleId, UserId};
use flashsale_store::redis_pg::RedisPgStore;
use flashsale_store::{Attempt, PurchaseOutcome, SaleStore, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Cleanup, active, assert_invariants, connect, eventually, isolated};
use uuid::Uuid;

fn attempt(sale: SaleId, name: &str) -> Attempt {
    Attempt {
        sale_id: sale,
        user_id: UserId::parse(name).unwrap(),
        quantity: Quantity::ONE,
        idempotency_key: None,
    }
}

async fn buy(
    store: &dyn SaleStore,
    sale: SaleId,
    name: &str,
) -> Result<PurchaseOutcome, StoreError> {
    store.purchase(attempt(sale, name)).await
}

fn order_id(outcome: &PurchaseOutcome) -> Uuid {
    match outcome {
        PurchaseOutcome::Confirmed(order) => order.order_id,
        other => panic!("expected confirmed, got {other:?}"),
    }
}

async fn remaining(store: &RedisPgStore, sale: SaleId) -> u32 {
    // Read Redis through a fresh refresh of the status, not a stale snapshot.
    tokio::time::sleep(Duration::from_millis(250)).await;
    store.status(sale).await.unwrap().unwrap().remaining
}

async fn reservations(cfg: &flashsale_store::redis_pg::RedisPgConfig, sale: SaleId) -> usize {
    let mut con = support::redis(cfg).await;
    let key = format!("{{{}:sale:{}}}:reservations", cfg.key_prefix, sale.0);
    redis::cmd("HLEN")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap()
}

/// Holds the sale's row lock in PostgreSQL, so commits for it wait, until dropped/committed.
async fn lock_sale_row(
    cfg: &flashsale_store::redis_pg::RedisPgConfig,
    sale: &Sale,
) -> tokio_postgres::Client {
    let pg = support::pg(cfg).await;
    pg.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM sales WHERE id = {} FOR UPDATE",
        sale.id.0
    ))
    .await
    .unwrap();
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_postgres_write_answers_unavailable_and_restores_the_stock() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(3, 1)).await.unwrap();
    let first = order_id(&buy(&store, sale.id, "alice").await.unwrap());

    // Arrange: every order insert now fails inside PostgreSQL.
    let pg = support::pg(&cfg).await;
    pg.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .unwrap();

    let outcome = buy(&store, sale.id, "bob").await;
    assert!(
        matches!(outcome, Err(StoreError::Unavailable { .. })),
        "{outcome:?}"
    );
    assert_eq!(remaining(&store, sale.id).await, 2, "bob's unit went back");
    assert_eq!(reservations(&cfg, sale.id).await, 0);
    let summary = store.summary(sale.id).await.unwrap().unwrap();
    assert_eq!(summary.rejections[Outcome::Unavailable], 1);

    // Recovery: the failure is gone, bob may buy (503s are not recorded).
    pg.batch_execute("DROP TRIGGER refuse ON orders")
        .await
        .unwrap();
    let second = order_id(&buy(&store, sale.id, "bob").await.unwrap());
    assert_invariants(&cfg, sale.id, &[first, second]).await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_write_timing_out_answers_unavailable_quickly_and_restores_the_stock() {
    let mut cfg = isolated(&support::redis_url(), &support::database_url());
    cfg.pg_timeout = Duration::from_millis(800);
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(3, 1)).await.unwrap();

    let lock = lock_sale_row(&cfg, &sale).await;
    let started = Instant::now();
    let outcome = buy(&store, sale.id, "bob").await;
    let took = started.elapsed();
    assert!(
        matches!(
            outcome,
            Err(StoreError::Unavailable { .. } | StoreError::Timeout { .. })
        ),
        "{outcome:?}"
    );
    assert!(took < Duration::from_secs(3), "503 took {took:?}");
    lock.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(remaining(&store, sale.id).await, 3);

    let ok = order_id(&buy(&store, sale.id, "bob").await.unwrap());
    assert_invariants(&cfg, sale.id, &[ok]).await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_commit_cannot_land_after_the_reconciler_released_its_reservation() {
    let mut cfg = isolated(&support::redis_url(), &support::database_url());
    cfg.lease = Duration::from_millis(300);
    cfg.reconcile_interval = Duration::from_millis(100);
    cfg.pg_timeout = Duration::from_secs(5);
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = Arc::new(connect(&cfg).await);
    let sale = store.create_sale(active(1, 1)).await.unwrap();

    // The commit is held up past the lease; the reconciler fences the reservation as released.
    let lock = lock_sale_row(&cfg, &sale).await;
    let buying = tokio::spawn({
        let store = Arc::clone(&store);
        async move { buy(&*store, sale.id, "late").await }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            reservations(&cfg, sale.id).await == 1
        })
        .await,
        "not admitted"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            reservations(&cfg, sale.id).await == 0
        })
        .await,
        "the reconciler did not release the expired reservation"
    );
    lock.batch_execute("COMMIT").await.unwrap();

    // The late commit lost the fence: nothing written, the buyer told nothing was taken.
    let outcome = buying.await.unwrap();
    assert!(
        matches!(outcome, Err(StoreError::Unavailable { .. })),
        "{outcome:?}"
    );
    let pg = support::pg(&cfg).await;
    let orders: i64 = pg
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 0);
    assert_eq!(remaining(&store, sale.id).await, 1);
    let again = order_id(&buy(&*store, sale.id, "late").await.unwrap());
    assert_invariants(&cfg, sale.id, &[again]).await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_of_an_instance_that_died_before_committing_are_released() {
    let mut cfg = isolated(&support::redis_url(), &support::database_url());
    cfg.lease = Duration::from_millis(300);
    cfg.reconcile_interval = Duration::from_millis(100);
    cfg.pg_timeout = Duration::from_secs(5);
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let survivor = connect(&cfg).await;
    let sale = survivor.create_sale(active(5, 1)).await.unwrap();
    let lock = lock_sale_row(&cfg, &sale).await;

    // Instance A runs on its own runtime, admits 3 buyers, and dies before committing.
    let mut cfg_a = cfg.clone();
    cfg_a.reconcile_interval = Duration::from_secs(3600);
    let doomed = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let a = Arc::new(rt.block_on(RedisPgStore::connect(cfg_a)).unwrap());
        for name in ["x", "y", "z"] {
            let a = Arc::clone(&a);
            rt.spawn(async move { buy(&*a, sale.id, name).await });
        }
        rt
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            reservations(&cfg, sale.id).await == 3
        })
        .await,
        "instance A did not admit"
    );
    tokio::task::spawn_blocking(move || doomed.shutdown_background())
        .await
        .unwrap();
    drop(lock);

    // The survivor's reconciler finds the expired reservations uncommitted and releases them.
    assert!(
        eventually(Duration::from_secs(10), || async {
            reservations(&cfg, sale.id).await == 0
        })
        .await,
        "the reservations of the dead instance were not resolved"
    );
    assert_eq!(remaining(&survivor, sale.id).await, 5);
    let mut confirmed = Vec::new();
    for name in ["x", "y", "z"] {
        confirmed.push(order_id(&buy(&survivor, sale.id, name).await.unwrap()));
    }
    assert_invariants(&cfg, sale.id, &confirmed).await;
    survivor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_committed_by_an_instance_that_died_before_confirming_is_kept() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(5, 1)).await.unwrap();
    let order = match buy(&store, sale.id, "alice").await.unwrap() {
        PurchaseOutcome::Confirmed(order) => order,
        other => panic!("{other:?}"),
    };

    // Put Redis back in the state an instance dying right after its commit leaves: the
    // reservation still live (lease expired), though PostgreSQL has the order.
    let mut con = support::redis(&cfg).await;
    let tag = format!("{{{}:sale:{}}}", cfg.key_prefix, sale.id.0);
    let epoch: String = redis::cmd("HGET")
        .arg(format!("{tag}:meta"))
        .arg("epoch")
        .query_async(&mut con)
        .await
        .unwrap();
    let record = format!(
        "alice\n1\n{}\n\n{epoch}",
        order.created_at.unix_timestamp_nanos() / 1000
    );
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(format!("{tag}:reservations"))
        .arg(order.order_id.to_string())
        .arg(record)
        .ignore()
        .cmd("ZADD")
        .arg(format!("{tag}:leases"))
        .arg(0)
        .arg(order.order_id.to_string())
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();

    assert_eq!(store.reconcile_now().await.unwrap(), 1);
    assert_eq!(reservations(&cfg, sale.id).await, 0);
    assert_eq!(
        remaining(&store, sale.id).await,
        4,
        "a committed unit must stay taken"
    );
    assert_invariants(&cfg, sale.id, &[order.order_id]).await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_losing_its_data_is_rebuilt_from_postgres_and_buyers_stay_bought() {
    let redis_server = support::PrivateRedis::start();
    let cfg = isolated(&redis_server.url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(10, 1)).await.unwrap();
    let keyed = Attempt {
        idempotency_key: Some(IdempotencyKey::parse("alice-1").unwrap()),
        ..attempt(sale.id, "alice")
    };
    let alice = store.purchase(keyed.clone()).await.unwrap();
    let bob = order_id(&buy(&store, sale.id, "bob").await.unwrap());

    let mut con = support::redis(&cfg).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();

    // Buyers stay bought; the key still replays; the stock left is what PostgreSQL says.
    let again = buy(&store, sale.id, "bob").await.unwrap();
    assert!(
        matches!(again, PurchaseOutcome::Rejected { rejection: Rejection::AlreadyPurchased, ref orders } if orders.len() == 1),
        "{again:?}"
    );
    assert_eq!(store.purchase(keyed).await.unwrap(), alice);
    let carol = order_id(&buy(&store, sale.id, "carol").await.unwrap());
    assert_eq!(remaining(&store, sale.id).await, 7);
    assert_invariants(&cfg, sale.id, &[order_id(&alice), bob, carol]).await;
    store.shutdown().await;
}

/// The sold-out instant is the one Redis decided (the last unit's admission, the latest
/// confirmed order's `created_at`): PostgreSQL records it whichever commit group finished the
/// stock, a rebuild after Redis lost its data writes it back, and a second instance reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sold_out_instant_is_redis_s_in_postgres_after_a_rebuild_and_on_every_instance() {
    let redis_server = support::PrivateRedis::start();
    let cfg = isolated(&redis_server.url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = Arc::new(connect(&cfg).await);
    let sale = store.create_sale(active(300, 1)).await.unwrap();
    // 500 concurrent buyers, so the last units commit in different, overlapping groups.
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { buy(&*store, sale.id, &format!("u{i}")).await.unwrap() })
        })
        .collect();
    let mut last_taken = None;
    for task in tasks {
        if let PurchaseOutcome::Confirmed(order) = task.await.unwrap() {
            last_taken = last_taken.max(Some(order.created_at));
        }
    }
    let running = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(running.remaining, 0);
    assert_eq!(running.sold_out_at, last_taken);
    let pg = support::pg(&cfg).await;
    let recorded: Option<time::OffsetDateTime> = pg
        .query_one("SELECT sold_out_at FROM sales WHERE id = $1", &[&sale.id.0])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, last_taken, "PostgreSQL's instant is not Redis's");

    let mut con = support::redis(&cfg).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    let meta = format!("{{{}:sale:{}}}:meta", cfg.key_prefix, sale.id.0);
    let expected = last_taken.map(|t| (t.unix_timestamp_nanos() / 1000) as i64);
    let rebuilt = eventually(Duration::from_secs(10), || {
        let (mut con, meta, store) = (con.clone(), meta.clone(), Arc::clone(&store));
        async move {
            let _ = store.reconcile_now().await;
            let us: Option<i64> = redis::cmd("HGET")
                .arg(&meta)
                .arg("sold_out_us")
                .query_async(&mut con)
                .await
                .unwrap();
            us.is_some()
        }
    })
    .await;
    assert!(rebuilt, "the sale was not rebuilt");
    let us: Option<i64> = redis::cmd("HGET")
        .arg(&meta)
        .arg("sold_out_us")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(us, expected, "the rebuild wrote another instant back");
    assert_eq!(
        store.status(sale.id).await.unwrap().unwrap().sold_out_at,
        last_taken
    );

    let other = connect(&cfg).await;
    assert_eq!(
        other.status(sale.id).await.unwrap().unwrap().sold_out_at,
        last_taken
    );
    other.shutdown().await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_unreachable_fails_ready_and_purchases_fast_then_recovers_by_itself() {
    let mut redis_server = support::PrivateRedis::start();
    let cfg = isolated(&redis_server.url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(10, 1)).await.unwrap();
    let alice = order_id(&buy(&store, sale.id, "alice").await.unwrap());

    redis_server.stop();
    assert!(store.ready().await.is_err());
    let started = Instant::now();
    assert!(buy(&store, sale.id, "bob").await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.remaining, 9, "status answers from the last snapshot");

    // Redis comes back empty (no persistence): the store rebuilds the sale and carries on.
    redis_server.restart();
    assert!(
        eventually(Duration::from_secs(10), || async {
            store.ready().await.is_ok()
        })
        .await
    );
    let bob = buy(&store, sale.id, "bob").await;
    let bob = order_id(&bob.unwrap_or_else(|e| panic!("after Redis came back: {e}")));
    assert!(matches!(
        buy(&store, sale.id, "alice").await.unwrap(),
        PurchaseOutcome::Rejected {
            rejection: Rejection::AlreadyPurchased,
            ..
        }
    ));
    assert_invariants(&cfg, sale.id, &[alice, bob]).await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unreachable_fails_ready_and_purchases_fast_then_recovers_by_itself() {
    let postgres = support::PrivatePostgres::start();
    let mut cfg = isolated(&support::redis_url(), &postgres.url());
    cfg.pg_timeout = Duration::from_millis(800);
    cfg.lease = Duration::from_millis(500);
    cfg.reconcile_interval = Duration::from_millis(200);
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(10, 1)).await.unwrap();
    let keyed = Attempt {
        idempotency_key: Some(IdempotencyKey::parse("alice-1").unwrap()),
        ..attempt(sale.id, "alice")
    };
    let alice = order_id(&store.purchase(keyed.clone()).await.unwrap());

    postgres.stop_server();
    assert!(store.ready().await.is_err());
    let started = Instant::now();
    assert!(buy(&store, sale.id, "bob").await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // Refused up front for a moment: "nothing was taken" is true of carol, but alice's key
    // has an order on record (she retries after losing the first answer), so hers is unknown.
    let carol = buy(&store, sale.id, "carol").await;
    assert!(
        matches!(carol, Err(StoreError::Unavailable { .. })),
        "{carol:?}"
    );
    let retry = store.purchase(keyed.clone()).await;
    assert!(
        matches!(retry, Err(StoreError::Timeout { .. })),
        "{retry:?}"
    );
    assert!(
        store.status(sale.id).await.unwrap().is_some(),
        "status answers from the snapshot"
    );

    postgres.start_server();
    assert!(
        eventually(Duration::from_secs(15), || async {
            store.ready().await.is_ok()
        })
        .await
    );
    // bob's reservation (left unresolved while PostgreSQL was down) is released, and he can buy.
    assert!(
        eventually(Duration::from_secs(10), || async {
            reservations(&cfg, sale.id).await == 0
        })
        .await
    );
    let bob = buy(&store, sale.id, "bob").await;
    let bob = order_id(&bob.unwrap_or_else(|e| panic!("after PostgreSQL came back: {e}")));
    assert_eq!(remaining(&store, sale.id).await, 8);
    assert_invariants(&cfg, sale.id, &[alice, bob]).await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_sell_exactly_100_units_to_3000_buyers() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Arc::new(connect(&cfg).await));
    }
    let sale = instances[0].create_sale(active(100, 1)).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(3000));
    let mut tasks = Vec::new();
    for i in 0..3000 {
        let store = Arc::clone(&instances[i % 3]);
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            buy(&*store, sale.id, &format!("buyer-{i}")).await
        }));
    }
    let mut confirmed = Vec::new();
    let mut sold_out = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(PurchaseOutcome::Confirmed(order)) => confirmed.push(order.order_id),
            Ok(PurchaseOutcome::Rejected {
                rejection: Rejection::SoldOut,
                ..
            }) => sold_out += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(confirmed.len(), 100);
    assert_eq!(sold_out, 2900);
    for store in &instances {
        assert_eq!(remaining(store, sale.id).await, 0);
    }
    assert_invariants(&cfg, sale.id, &confirmed).await;
    for store in &instances {
        store.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_buyers_concurrent_attempts_across_instances_never_exceed_the_limit() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Arc::new(connect(&cfg).await));
    }
    let sale = instances[0].create_sale(active(1000, 3)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..120 {
        let store = Arc::clone(&instances[i % 3]);
        tasks.push(tokio::spawn(async move {
            buy(&*store, sale.id, &format!("buyer-{}", i % 20)).await
        }));
    }
    let mut confirmed = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(PurchaseOutcome::Confirmed(order)) => confirmed.push(order.order_id),
            Ok(PurchaseOutcome::Rejected {
                rejection: Rejection::AlreadyPurchased,
                ..
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        confirmed.len(),
        60,
        "each of the 20 buyers gets exactly their 3 units"
    );
    assert_invariants(&cfg, sale.id, &confirmed).await;
    for store in &instances {
        store.shutdown().await;
    }
}

/// Store-level throughput (no HTTP): 256 concurrent buyers, distinct ids, large stock, spread
/// over one then two instances. Prints purchases/s; run with `--ignored --nocapture` (ideally
/// `--release`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, not a check"]
async fn purchase_throughput_with_256_concurrent_buyers() {
    for instances in [1usize, 2] {
        let cfg = isolated(&support::redis_url(), &support::database_url());
        let _cleanup = Cleanup { cfg: cfg.clone() };
        let mut stores = Vec::new();
        for _ in 0..instances {
            stores.push(Arc::new(connect(&cfg).await));
        }
        let sale = stores[0].create_sale(active(1_000_000, 1)).await.unwrap();
        let per_worker = 80;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..256usize {
            let store = Arc::clone(&stores[w % instances]);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_worker);
                for i in 0..per_worker {
                    let t = Instant::now();
                    let outcome = buy(&*store, sale.id, &format!("u{w}-{i}")).await.unwrap();
                    assert!(matches!(outcome, PurchaseOutcome::Confirmed(_)));
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let took = started.elapsed();
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        println!(
            "instances={instances} confirmed={} in {took:?}: {:.0} purchases/s, p50 {:?} p99 {:?}",
            lat.len(),
            lat.len() as f64 / took.as_secs_f64(),
            pct(0.5),
            pct(0.99)
        );
        for s in &stores {
            s.shutdown().await;
        }
    }
}

/// Migration 0013: an idempotency key stays unique within its sale, while keyless orders (most
/// of them) get no index entry for it: the partial index replaced the table constraint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_stay_unique_per_sale_and_keyless_orders_are_not_indexed_for_them() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(10, 5)).await.unwrap();
    let pg = support::pg(&cfg).await;
    let insert = "INSERT INTO orders (order_id, sale_id, user_id, quantity, created_at,
                                      idempotency_key)
                  VALUES ($1, $2, 'direct', 1, now(), $3)";
    let key = Some("k-1");
    pg.execute(insert, &[&Uuid::now_v7(), &sale.id.0, &key])
        .await
        .unwrap();
    let duplicate = pg
        .execute(insert, &[&Uuid::now_v7(), &sale.id.0, &key])
        .await
        .unwrap_err();
    assert_eq!(
        duplicate.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
        "{duplicate}"
    );
    for _ in 0..2 {
        pg.execute(insert, &[&Uuid::now_v7(), &sale.id.0, &None::<&str>])
            .await
            .unwrap();
    }
    let constraints: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_constraint
             WHERE conrelid = 'orders'::regclass AND contype = 'u'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        constraints, 0,
        "no table constraint indexes every order's key"
    );
    let definition: String = pg
        .query_one(
            "SELECT indexdef FROM pg_indexes
             WHERE schemaname = current_schema() AND indexname = 'orders_idempotency_key'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        definition.contains("UNIQUE") && definition.contains("WHERE (idempotency_key IS NOT NULL)"),
        "{definition}"
    );
    store.shutdown().await;
}
