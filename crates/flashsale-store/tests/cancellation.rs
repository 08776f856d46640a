//! Cancellation (issue 11, item 4): a purchase future may be dropped at any point (a client
//! hanging up, a request timeout, an aborted task) and the store still owns the work it began.
//! Under load, hundreds of purchases are dropped at random points; then `shutdown` must drain
//! them, and the books must balance at once: confirmed units on record = stock taken, no
//! reservation left, every buyer within the limit, every confirmation heard still on record;
//! and the same after a reopen (embedded) or from a second instance (scale-out).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flashsale_core::{Quantity, SaleId, UserId};
use flashsale_store::embedded::EmbeddedStore;
use flashsale_store::{Attempt, PurchaseOutcome, SaleStore};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use support::{Cleanup, active, assert_invariants, connect, isolated};
use uuid::Uuid;

const STOCK: u32 = 300;
const LIMIT: u32 = 2;
const ATTEMPTS: usize = 800;
const BUYERS: usize = 400;
/// Liveness guard only: a purchase or a shutdown stuck behind a dropped purchase's half-done
/// work fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(30);

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    std::env::var("CANCEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64 | 1)
}

/// How the caller of one attempt behaves.
#[derive(Clone, Copy)]
enum Caller {
    /// Waits for the answer.
    Waits,
    /// Gives up after this many microseconds (`select!` against a timer).
    GivesUpAfter(u64),
    /// Its task is aborted after this many microseconds.
    AbortedAfter(u64),
}

/// What the run saw: the orders heard confirmed, and how many callers went away.
struct Heard {
    confirmed: Vec<Uuid>,
    answered: usize,
    dropped: usize,
}

/// Sends [`ATTEMPTS`] purchases at once from [`BUYERS`] buyers (1 or 2 units, some with an
/// idempotency key and some retried with it), dropping most of them at random points.
async fn attempts_dropped_at_random_points(
    store: &Arc<dyn SaleStore>,
    sale: SaleId,
    seed: u64,
) -> Heard {
    let mut rng = Rng(seed);
    let barrier = Arc::new(tokio::sync::Barrier::new(ATTEMPTS));
    let mut tasks = Vec::with_capacity(ATTEMPTS);
    for _ in 0..ATTEMPTS {
        let buyer = rng.below(BUYERS as u64);
        let key = match rng.below(4) {
            0 => Some(format!("k-{buyer}")),
            _ => None,
        };
        let attempt = Attempt {
            sale_id: sale,
            user_id: UserId::parse(&format!("buyer-{buyer}")).unwrap(),
            quantity: Quantity::parse(1 + (rng.below(2) as i64), 1000).unwrap(),
            idempotency_key: key.map(|k| flashsale_core::IdempotencyKey::parse(&k).unwrap()),
        };
        let caller = match rng.below(3) {
            0 => Caller::Waits,
            1 => Caller::GivesUpAfter(rng.below(4_000)),
            _ => Caller::AbortedAfter(rng.below(4_000)),
        };
        let store = Arc::clone(store);
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let purchase = async move {
                tokio::time::timeout(GUARD, store.purchase(attempt))
                    .await
                    .expect("a purchase never answered: stuck behind a dropped one")
            };
            match caller {
                Caller::Waits => Some(purchase.await),
                Caller::GivesUpAfter(us) => tokio::select! {
                    outcome = purchase => Some(outcome),
                    () = tokio::time::sleep(Duration::from_micros(us)) => None,
                },
                Caller::AbortedAfter(us) => {
                    let task = tokio::spawn(purchase);
                    let abort = task.abort_handle();
                    tokio::time::sleep(Duration::from_micros(us)).await;
                    abort.abort();
                    match task.await {
                        Ok(outcome) => Some(outcome),
                        Err(e) if e.is_cancelled() => None,
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    }
                }
            }
        }));
    }
    let mut heard = Heard {
        confirmed: Vec::new(),
        answered: 0,
        dropped: 0,
    };
    for task in tasks {
        match task.await.unwrap() {
            Some(outcome) => {
                heard.answered += 1;
                if let Ok(PurchaseOutcome::Confirmed(order)) = outcome {
                    heard.confirmed.push(order.order_id);
                }
            }
            None => heard.dropped += 1,
        }
    }
    // A replay by key hears its first confirmation again.
    heard.confirmed.sort_unstable();
    heard.confirmed.dedup();
    heard
}

/// Each buyer's units on record, and every order id on record, from the store's own orders.
async fn on_record(store: &dyn SaleStore, sale: SaleId) -> (BTreeMap<String, u32>, HashSet<Uuid>) {
    let mut units = BTreeMap::new();
    let mut ids = HashSet::new();
    for buyer in 0..BUYERS {
        let user = UserId::parse(&format!("buyer-{buyer}")).unwrap();
        let orders = store.orders(sale, &user).await.unwrap().unwrap();
        ids.extend(orders.iter().map(|o| o.order_id));
        let held: u32 = orders.iter().map(|o| o.quantity).sum();
        if held > 0 {
            units.insert(user.as_str().to_owned(), held);
        }
    }
    (units, ids)
}

/// The run did what it is for: some purchases were confirmed after their caller went away.
fn assert_some_finished_unheard(heard: &Heard, on_record: &HashSet<Uuid>) {
    assert!(
        on_record.len() > heard.confirmed.len(),
        "no purchase was confirmed after its caller went away ({} dropped): the test proves \
         nothing",
        heard.dropped
    );
}

/// Confirmed units on record = stock taken, and nobody over the limit.
async fn assert_books_balance(store: &dyn SaleStore, sale: SaleId, what: &str) -> u64 {
    let summary = store.summary(sale).await.unwrap().unwrap();
    let taken = u64::from(STOCK - summary.status.remaining);
    assert_eq!(
        summary.confirmed_units, taken,
        "{what}: confirmed units on record != stock taken ({summary:?})"
    );
    let (units, _) = on_record(store, sale).await;
    assert_eq!(
        units.values().map(|&u| u64::from(u)).sum::<u64>(),
        taken,
        "{what}: the buyers' orders do not add up to the stock taken"
    );
    if let Some((buyer, held)) = units.iter().find(|(_, held)| **held > LIMIT) {
        panic!("{what}: {buyer} holds {held} > {LIMIT}");
    }
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_purchases_dropped_at_random_points_are_drained_by_shutdown_and_balance() {
    let seed = seed();
    println!("CANCEL_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SaleStore> =
        Arc::new(EmbeddedStore::open(dir.path(), Arc::new(flashsale_core::SystemClock)).unwrap());
    let sale = store.create_sale(active(STOCK, LIMIT)).await.unwrap().id;

    // SQLite's write lock, held by another connection for the first 50 ms of the herd (the
    // writer's busy timeout is 2 s): the first admitted purchases wait for their commit, so
    // callers giving up on their short timers leave purchases in flight for certain. Without
    // it a fast disk commits before most timers fire, and some runs dropped nothing mid-work.
    let db =
        rusqlite::Connection::open(dir.path().join(flashsale_store::embedded::DB_FILE)).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let unlock = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        db.execute_batch("ROLLBACK").unwrap();
    });
    let heard = attempts_dropped_at_random_points(&store, sale, seed).await;
    unlock.join().unwrap();
    tokio::time::timeout(GUARD, store.shutdown())
        .await
        .expect("shutdown never drained");

    println!(
        "{} answered ({} confirmed), {} dropped",
        heard.answered,
        heard.confirmed.len(),
        heard.dropped
    );
    // No polling: once shutdown has returned nothing may still be in flight.
    let taken = assert_books_balance(store.as_ref(), sale, "after shutdown").await;
    assert!(taken > 0, "nothing was sold");
    let (before, ids) = on_record(store.as_ref(), sale).await;
    assert_some_finished_unheard(&heard, &ids);
    for order_id in &heard.confirmed {
        assert!(
            ids.contains(order_id),
            "confirmed order {order_id} is not on record"
        );
    }
    drop(store);

    let store = EmbeddedStore::open(dir.path(), Arc::new(flashsale_core::SystemClock)).unwrap();
    let after_taken = assert_books_balance(&store, sale, "after a reopen").await;
    assert_eq!(after_taken, taken, "the reopen changed the stock taken");
    assert_eq!(on_record(&store, sale).await, (before, ids));
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_out_purchases_dropped_at_random_points_are_drained_by_shutdown_and_balance() {
    let seed = seed();
    println!("CANCEL_SEED={seed}");
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store: Arc<dyn SaleStore> = Arc::new(connect(&cfg).await);
    let sale = store.create_sale(active(STOCK, LIMIT)).await.unwrap().id;

    // The sale's row locked in PostgreSQL for the first 50 ms of the herd (group commits take
    // it first): the first admitted purchases wait for their commit, so callers giving up on
    // their short timers leave purchases in flight for certain.
    let pg = support::pg(&cfg).await;
    pg.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM sales WHERE id = {} FOR UPDATE",
        sale.0
    ))
    .await
    .unwrap();
    let unlock = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        pg.batch_execute("ROLLBACK").await.unwrap();
    });
    let heard = attempts_dropped_at_random_points(&store, sale, seed).await;
    unlock.await.unwrap();
    tokio::time::timeout(GUARD, store.shutdown())
        .await
        .expect("shutdown never drained");

    println!(
        "{} answered ({} confirmed), {} dropped",
        heard.answered,
        heard.confirmed.len(),
        heard.dropped
    );
    // No polling and no reconciler: once shutdown has returned, every reservation is settled
    // (remaining + sold = stock in Redis, none left), and PostgreSQL holds every confirmation
    // heard, nobody over the limit.
    let mut con = support::redis(&cfg).await;
    let live: usize = redis::cmd("HLEN")
        .arg(format!(
            "{{{}:sale:{}}}:reservations",
            cfg.key_prefix, sale.0
        ))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(live, 0, "reservations left after shutdown");
    assert_invariants(&cfg, sale, &heard.confirmed).await;
    drop(store);

    // A second instance sees the same books (counters flushed by the shutdown).
    let store = connect(&cfg).await;
    let taken = assert_books_balance(&store, sale, "from a second instance").await;
    assert!(taken > 0, "nothing was sold");
    assert_some_finished_unheard(&heard, &on_record(&store, sale).await.1);
    store.shutdown().await;
}
