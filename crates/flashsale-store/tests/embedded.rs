//! Durability of the embedded store beyond the shared suite (NF-4, NF-6 in
//! docs/requirements.md; what every store keeps across a restart or a crash is in
//! `flashsale-testkit`, run by `conformance.rs`): a failed disk write takes nothing, the
//! database refuses an oversell on its own, the book is the same after random batch failures,
//! a reopen and `kill -9`, and one process at a time owns a directory.

#![allow(clippy::unwrap_used)]

use flashsale_core::{
    Clock, IdempotencyKey, ManualClock, NewSale, Outcome, Quantity, Rejection, SaleId, SaleState,
    SystemClock, UserId,
};
use flashsale_store::embedded::{
    DB_FILE, EmbeddedStore, MAX_REFUSED_KEYS, REFUSAL_RETENTION, WAL_RESTART_FRAMES,
};
use flashsale_store::{Attempt, PurchaseOutcome, SaleStore, StoreError, Summary};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
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
        matches!(failed, Err(StoreError::Unavailable { .. })),
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
        store.summary(sale.id).await.unwrap().unwrap().rejections[Outcome::Unavailable],
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

fn buy(sale: SaleId, name: &str, quantity: u32, key: Option<&str>) -> Attempt {
    Attempt {
        quantity: Quantity::parse(i64::from(quantity), 1000).unwrap(),
        ..attempt(sale, name, key)
    }
}

/// Polls a future once: a store call that has to wait shows it here, without any timing.
fn poll_once<F: Future + ?Sized>(fut: &mut Pin<Box<F>>) -> Poll<F::Output> {
    fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

/// Polls `check` until it holds, failing after 20 s.
async fn until<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A second connection holding SQLite's write lock: the writer's next commit waits (up to its
/// 2 s busy timeout) until `release`.
fn hold_write_lock(dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

fn release(conn: &rusqlite::Connection) {
    conn.execute_batch("ROLLBACK").unwrap();
}

async fn pending_attempts(store: &EmbeddedStore, sale: SaleId, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = store.summary(sale).await.unwrap().unwrap();
        if s.attempts == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "attempts never reached {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_click_waits_for_the_first_write_and_never_stores_an_untrue_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let sale = store.create_sale(active(5, 1)).await.unwrap();
    // The first click's write fails (its key only); the lock keeps it in flight meanwhile.
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER fail_first BEFORE INSERT ON orders WHEN NEW.idempotency_key = 'click-1'
         BEGIN SELECT RAISE(ABORT, 'injected write failure'); END;",
    )
    .unwrap();
    let lock = hold_write_lock(dir.path());
    let first = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            store
                .purchase(attempt(sale.id, "dc", Some("click-1")))
                .await
        }
    });
    pending_attempts(&store, sale.id, 1).await;
    // The second click (a fresh key, as the old page sent) while the first is in flight: no
    // `already_purchased` with no orders; it waits.
    let second_store = Arc::clone(&store);
    let mut second = Box::pin(async move {
        second_store
            .purchase(attempt(sale.id, "dc", Some("click-2")))
            .await
    });
    assert!(
        poll_once(&mut second).is_pending(),
        "the second click was answered while the first write was in flight"
    );
    release(&lock);
    let first = first.await.unwrap();
    assert!(
        matches!(first, Err(StoreError::Unavailable { .. })),
        "{first:?}"
    );
    // The first write failed: the second click is decided again and buys.
    let second = second.await.unwrap();
    let PurchaseOutcome::Confirmed(order) = second else {
        panic!("second click: {second:?}");
    };
    // Its key replays the order, not a refusal stored while the first was in flight.
    let replay = store
        .purchase(attempt(sale.id, "dc", Some("click-2")))
        .await
        .unwrap();
    assert_eq!(replay, PurchaseOutcome::Confirmed(order.clone()));

    // A double click whose first write succeeds: the second sees the order it refers to.
    let lock = hold_write_lock(dir.path());
    let third = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.purchase(attempt(sale.id, "dd", None)).await }
    });
    pending_attempts(&store, sale.id, 3).await;
    let fourth_store = Arc::clone(&store);
    let mut fourth =
        Box::pin(async move { fourth_store.purchase(attempt(sale.id, "dd", None)).await });
    assert!(poll_once(&mut fourth).is_pending());
    release(&lock);
    let PurchaseOutcome::Confirmed(third) = third.await.unwrap().unwrap() else {
        panic!("third click not confirmed");
    };
    assert_eq!(
        fourth.await.unwrap(),
        PurchaseOutcome::Rejected {
            rejection: Rejection::AlreadyPurchased,
            orders: vec![third]
        }
    );
    let s = store.summary(sale.id).await.unwrap().unwrap();
    assert_eq!(s.attempts, s.confirmed_orders + s.rejections.total());
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_is_sold_out_only_once_its_last_unit_is_durable_and_a_failed_write_never_reopens_it()
{
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let sale = store.create_sale(active(1, 1)).await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER fail_boom BEFORE INSERT ON orders WHEN NEW.user_id = 'boom'
         BEGIN SELECT RAISE(ABORT, 'injected write failure'); END;",
    )
    .unwrap();
    let lock = hold_write_lock(dir.path());
    let doomed = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.purchase(attempt(sale.id, "boom", None)).await }
    });
    pending_attempts(&store, sale.id, 1).await;
    // The last unit is only pending: the sale is not reported sold out...
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(
        status.remaining, 1,
        "pending units are not reported as sold"
    );
    assert_eq!(status.state(store.now()), SaleState::Active);
    assert!(status.sold_out_at.is_none());
    // ...and nobody is told `sold_out` while the write may still fail.
    let next_store = Arc::clone(&store);
    let mut next =
        Box::pin(async move { next_store.purchase(attempt(sale.id, "next", None)).await });
    assert!(poll_once(&mut next).is_pending());
    release(&lock);
    assert!(doomed.await.unwrap().is_err());
    // The unit was never reported taken, so giving it back changes no report; the waiting
    // buyer gets it.
    assert!(matches!(next.await.unwrap(), PurchaseOutcome::Confirmed(_)));
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.remaining, 0);
    assert!(status.sold_out_at.is_some());
    assert_eq!(
        status.state(store.now()),
        SaleState::Ended(flashsale_core::EndReason::SoldOut)
    );
    store.shutdown().await;
}

#[tokio::test]
async fn a_wall_clock_stepped_back_never_reopens_an_ended_sale_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = OffsetDateTime::now_utc() - Duration::hours(1);
    let end = start + Duration::minutes(10);
    let clock = Arc::new(ManualClock::new(start + Duration::minutes(1)));
    let store = Arc::new(EmbeddedStore::open(dir.path(), clock.clone()).unwrap());
    let sale = store
        .create_sale(NewSale::parse("Clocked", start, end, 10, 1).unwrap())
        .await
        .unwrap();
    assert!(matches!(
        store
            .purchase(attempt(sale.id, "early", None))
            .await
            .unwrap(),
        PurchaseOutcome::Confirmed(_)
    ));
    clock.set(end);
    let ended = store
        .purchase(attempt(sale.id, "late", None))
        .await
        .unwrap();
    let not_active = |o: &PurchaseOutcome| {
        matches!(
            o,
            PurchaseOutcome::Rejected {
                rejection: Rejection::NotActive(flashsale_core::NotActiveReason::Ended),
                ..
            }
        )
    };
    assert!(not_active(&ended), "{ended:?}");
    // The wall clock steps back into the window.
    clock.set(end - Duration::minutes(5));
    let again = store
        .purchase(attempt(sale.id, "late", None))
        .await
        .unwrap();
    assert!(not_active(&again), "an ended sale re-opened: {again:?}");
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert!(store.now() >= end, "the store's instant went back");
    assert!(matches!(status.state(store.now()), SaleState::Ended(_)));
    store.shutdown().await;
    drop(store);

    // Restarted on a clock that is still behind: the guard was kept on disk.
    let store = Arc::new(EmbeddedStore::open(dir.path(), clock.clone()).unwrap());
    assert!(clock.now() < end);
    let after = store
        .purchase(attempt(sale.id, "late2", None))
        .await
        .unwrap();
    assert!(not_active(&after), "re-opened after a restart: {after:?}");
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert!(matches!(status.state(store.now()), SaleState::Ended(_)));
    store.shutdown().await;
}

/// Issue 10 finding 7: 50,000 fresh keys on a sold-out sale add no key, and refusals on an open
/// sale are remembered for a bounded time and number. Prints the resident memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_bounded_under_50_000_fresh_keys() {
    let dir = tempfile::tempdir().unwrap();
    let start = OffsetDateTime::now_utc() - Duration::minutes(1);
    let clock = Arc::new(ManualClock::new(start + Duration::seconds(1)));
    let store = Arc::new(EmbeddedStore::open(dir.path(), clock.clone()).unwrap());
    let sold_out = store
        .create_sale(NewSale::parse("Gone", start, start + Duration::hours(1), 3, 1).unwrap())
        .await
        .unwrap();
    for i in 0..3 {
        let k = format!("buy-{i}");
        let got = store
            .purchase(attempt(sold_out.id, &format!("b{i}"), Some(&k)))
            .await
            .unwrap();
        assert!(matches!(got, PurchaseOutcome::Confirmed(_)));
    }
    let rss_before = rss_kib();
    for i in 0..50_000 {
        let k = format!("fresh-{i:06}-{}", "x".repeat(200));
        let got = store
            .purchase(attempt(sold_out.id, &format!("f{i}"), Some(&k)))
            .await
            .unwrap();
        assert!(matches!(
            got,
            PurchaseOutcome::Rejected {
                rejection: Rejection::SoldOut,
                ..
            }
        ));
    }
    let keys = store.idempotency_keys(sold_out.id).unwrap();
    println!(
        "sold-out sale, 50,000 fresh 213-byte keys: {keys} keys held (the 3 confirmed); RSS {} -> {} KiB",
        rss_before,
        rss_kib()
    );
    assert_eq!(
        keys, 3,
        "refusals on a sold-out sale are final: none is stored"
    );

    // An open sale: every attempt is refused (`already_purchased`), each with a fresh key.
    let open_sale = store
        .create_sale(NewSale::parse("Open", start, start + Duration::hours(1), 10, 1).unwrap())
        .await
        .unwrap();
    assert!(matches!(
        store
            .purchase(attempt(open_sale.id, "holder", None))
            .await
            .unwrap(),
        PurchaseOutcome::Confirmed(_)
    ));
    let rss_before = rss_kib();
    for i in 0..50_000 {
        let k = format!("again-{i:06}");
        store
            .purchase(attempt(open_sale.id, "holder", Some(&k)))
            .await
            .unwrap();
    }
    let keys = store.idempotency_keys(open_sale.id).unwrap();
    println!(
        "open sale, 50,000 fresh keys all refused: {keys} keys held (bound {MAX_REFUSED_KEYS}); RSS {} -> {} KiB",
        rss_before,
        rss_kib()
    );
    assert!(keys <= MAX_REFUSED_KEYS, "{keys} keys held");
    // The newest refusal replays identically and is not a new attempt...
    let attempts = store.summary(open_sale.id).await.unwrap().unwrap().attempts;
    let last = attempt(open_sale.id, "holder", Some("again-049999"));
    let first = store.purchase(last.clone()).await.unwrap();
    assert_eq!(store.purchase(last.clone()).await.unwrap(), first);
    assert_eq!(
        store.summary(open_sale.id).await.unwrap().unwrap().attempts,
        attempts
    );
    // ...until the retention has passed; then one more refusal forgets every expired one.
    clock.advance(REFUSAL_RETENTION + Duration::seconds(1));
    store
        .purchase(attempt(open_sale.id, "holder", Some("late")))
        .await
        .unwrap();
    assert_eq!(store.idempotency_keys(open_sale.id).unwrap(), 1);
    store.shutdown().await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_sale_whose_caller_goes_away_after_the_commit_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lock = hold_write_lock(dir.path());
    let creating = Arc::clone(&store);
    let mut create = Box::pin(async move { creating.create_sale(active(4, 1)).await });
    // The write is sent, then the caller hangs up before the commit answers.
    assert!(poll_once(&mut create).is_pending());
    drop(create);
    release(&lock);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = store.statuses().await.unwrap().into_iter().next() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the created sale never answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(status.remaining, 4);
    let id = status.sale.id;
    assert!(matches!(
        store.purchase(attempt(id, "buyer", None)).await.unwrap(),
        PurchaseOutcome::Confirmed(_)
    ));
    store.shutdown().await;
}

/// Everything a buyer or operator can observe of one sale.
#[derive(Debug, Clone, PartialEq)]
struct Book {
    remaining: u32,
    sold_out_at: Option<OffsetDateTime>,
    orders: Vec<(String, Vec<flashsale_store::Order>)>,
    held: Vec<(String, u32)>,
    confirmed_orders: u64,
    confirmed_units: u64,
    replays: Vec<(String, String)>,
}

type Used = Vec<(String, Option<String>, u32)>;

async fn book_of(
    store: &EmbeddedStore,
    sale: SaleId,
    buyers: &[String],
    used: &Used,
) -> (Book, Summary) {
    let status = store.status(sale).await.unwrap().unwrap();
    let summary = store.summary(sale).await.unwrap().unwrap();
    assert_eq!(
        summary.attempts,
        summary.confirmed_orders + summary.rejections.total(),
        "attempts != confirmed + rejections"
    );
    let mut orders = Vec::new();
    let mut held = Vec::new();
    for b in buyers {
        let o = store
            .orders(sale, &UserId::parse(b).unwrap())
            .await
            .unwrap()
            .unwrap();
        held.push((b.clone(), o.iter().map(|o| o.quantity).sum()));
        orders.push((b.clone(), o));
    }
    let mut replays = Vec::new();
    for (user, key, q) in used {
        if let Some(k) = key {
            let got = store.purchase(buy(sale, user, *q, Some(k))).await.unwrap();
            replays.push((k.clone(), format!("{got:?}")));
        }
    }
    let book = Book {
        remaining: status.remaining,
        sold_out_at: status.sold_out_at,
        orders,
        held,
        confirmed_orders: summary.confirmed_orders,
        confirmed_units: summary.confirmed_units,
        replays,
    };
    (book, summary)
}

const CHILD_DIR: &str = "FLASHSALE_TEST_CHILD_DIR";

/// The body of the child process of the reopen-equivalence test (run only by that test): opens
/// the store, takes the book after a few more attempts, writes it, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by reopen_equivalence_under_random_batch_failures"]
async fn child_store_process() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let input: (i64, Vec<String>, Used) =
        serde_json_like::from(&std::fs::read_to_string(dir.join("input")).unwrap());
    let (sale, buyers, used) = (SaleId(input.0), input.1, input.2);
    let store = open(&dir);
    // More attempts on the sold-out sale, with fresh keys: rejections the kill must not lose.
    for i in 0..25 {
        let k = format!("child-{i}");
        store
            .purchase(attempt(sale, &format!("c{i}"), Some(&k)))
            .await
            .unwrap();
    }
    let (book, _) = book_of(&store, sale, &buyers, &used).await;
    let summary = store.summary(sale).await.unwrap().unwrap();
    // Wait (by polling the disk) until the counters are persisted, then report and be killed.
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    let want = summary.rejections.total() as i64;
    until("counters on disk", || {
        conn.query_row(
            "SELECT sale_not_active + sold_out + already_purchased + limit_exceeded
                    + insufficient_stock + unavailable FROM sale_counters WHERE sale_id = ?1",
            [sale.0],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n == want)
    })
    .await;
    let report = format!(
        "{book:?}\n{}\n{}\n",
        summary.attempts,
        summary.rejections.total()
    );
    std::fs::write(dir.join("report.tmp"), report).unwrap();
    std::fs::rename(dir.join("report.tmp"), dir.join("report")).unwrap();
    std::future::pending::<()>().await;
}

/// A tiny, dependency-free encoding of the child's input.
mod serde_json_like {
    use super::Used;

    pub fn to(sale: i64, buyers: &[String], used: &Used) -> String {
        let mut s = format!("{sale}\n{}\n", buyers.join(","));
        for (u, k, q) in used {
            s.push_str(&format!("{u}\t{}\t{q}\n", k.as_deref().unwrap_or("")));
        }
        s
    }

    pub fn from(s: &str) -> (i64, Vec<String>, Used) {
        let mut lines = s.lines();
        let sale = lines.next().unwrap().parse().unwrap();
        let buyers = lines
            .next()
            .unwrap()
            .split(',')
            .map(str::to_owned)
            .collect();
        let used = lines
            .map(|l| {
                let mut f = l.split('\t');
                let u = f.next().unwrap().to_owned();
                let k = f.next().unwrap();
                let q = f.next().unwrap().parse().unwrap();
                (u, (!k.is_empty()).then(|| k.to_owned()), q)
            })
            .collect();
        (sale, buyers, used)
    }
}

/// Issue 10: under random injected batch failures the book is the same after a clean
/// shutdown, after a reopen, and after `kill -9`; the sale never goes from ended to active.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopen_equivalence_under_random_batch_failures() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let sale = store.create_sale(active(60, 2)).await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    // About one order in five aborts its whole group.
    conn.execute_batch(
        "CREATE TRIGGER chaos BEFORE INSERT ON orders WHEN abs(random()) % 5 = 0
         BEGIN SELECT RAISE(ABORT, 'injected batch failure'); END;",
    )
    .unwrap();
    // FL-5 watcher: once ended, never active again.
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = tokio::spawn({
        let store = Arc::clone(&store);
        let watching = Arc::clone(&watching);
        async move {
            let mut ended = false;
            let mut looks = 0u64;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let s = store.status(sale.id).await.unwrap().unwrap();
                let state = s.state(store.now());
                assert!(!(ended && state == SaleState::Active), "ended -> active");
                ended |= matches!(state, SaleState::Ended(_));
                looks += 1;
                tokio::task::yield_now().await;
            }
            looks
        }
    });
    // 120 buyers, quantities 1-2, some keyed; each retries `unavailable` with the same key.
    let buyers: Vec<String> = (0..120).map(|i| format!("buyer-{i}")).collect();
    let mut used: Used = Vec::new();
    let mut tasks = Vec::new();
    for (i, b) in buyers.iter().enumerate() {
        for click in 0..2 {
            let q = 1 + ((i + click) % 2) as u32;
            let key = (i % 3 != 0).then(|| format!("k-{i}-{click}"));
            used.push((b.clone(), key.clone(), q));
            let store = Arc::clone(&store);
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    match store.purchase(buy(sale.id, &b, q, key.as_deref())).await {
                        Ok(outcome) => return outcome,
                        Err(StoreError::Unavailable { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(watcher.await.unwrap() > 0);
    conn.execute_batch("DROP TRIGGER chaos").unwrap();
    let (before, summary) = book_of(&store, sale.id, &buyers, &used).await;
    assert_eq!(before.remaining, 0, "120 buyers x 2 clicks sell 60 units");
    assert!(before.sold_out_at.is_some());
    assert!(
        summary.rejections[Outcome::Unavailable] > 0,
        "no batch failure was injected"
    );
    assert!(before.held.iter().all(|(_, h)| *h <= 2));
    assert_eq!(before.confirmed_units, 60);
    println!(
        "{} attempts, {} confirmed, {} unavailable (injected)",
        summary.attempts,
        summary.confirmed_orders,
        summary.rejections[Outcome::Unavailable]
    );
    store.shutdown().await;
    drop(store);

    // Reopen after a clean shutdown.
    let store = open(dir.path());
    let (after, reopened) = book_of(&store, sale.id, &buyers, &used).await;
    assert_eq!(after, before);
    assert_eq!(reopened.confirmed_orders, summary.confirmed_orders);
    drop(store);

    // kill -9 of a process serving the same directory, after it decided more attempts.
    std::fs::write(
        dir.path().join("input"),
        serde_json_like::to(sale.id.0, &buyers, &used),
    )
    .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_store_process", "--ignored", "--nocapture"])
        .env(CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let report = dir.path().join("report");
    until("the child's report", || {
        report.exists() || child.try_wait().unwrap().is_some()
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let report = std::fs::read_to_string(&report).expect("the child reported its book");
    let mut lines = report.lines();
    let child_book = lines.next().unwrap().to_owned();
    let child_attempts: u64 = lines.next().unwrap().parse().unwrap();
    assert_eq!(
        child_book,
        format!("{after:?}"),
        "the child saw another book"
    );
    let store = open(dir.path());
    let (killed, summary) = book_of(&store, sale.id, &buyers, &used).await;
    assert_eq!(killed, before);
    assert_eq!(summary.attempts, child_attempts, "attempts after kill -9");
    store.shutdown().await;
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_is_refused_until_the_first_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let refused = EmbeddedStore::open(dir.path(), Arc::new(SystemClock));
    let Err(StoreError::Unavailable { what: message, .. }) = refused else {
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

#[tokio::test]
async fn a_shut_down_store_frees_its_directory_even_while_a_handle_lives() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let lingering = Arc::clone(&first);
    first.shutdown().await;
    // A handle kept by a task still finishing must not block the restart.
    let reopened = EmbeddedStore::open(dir.path(), Arc::new(SystemClock));
    assert!(
        reopened.is_ok(),
        "a shut-down store kept the directory locked"
    );
    drop(lingering);
}

/// The sale's row records its sold-out instant: the latest admission among its orders, whichever
/// group committed it (200 buyers at once commit in several groups, in any order). The writer
/// works it out from what it has committed, without reading the orders back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sold_out_instant_on_disk_is_the_latest_admission_whichever_group_committed_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let other = store.create_sale(active(50, 1)).await.unwrap();
    for i in 0..50 {
        store
            .purchase(attempt(other.id, &format!("early-{i}"), None))
            .await
            .unwrap();
    }
    let sale = store.create_sale(active(200, 1)).await.unwrap();
    let buys = (0..200).map(|i| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .purchase(attempt(sale.id, &format!("b-{i}"), None))
                .await
        })
    });
    for buy in buys {
        assert!(matches!(
            buy.await.unwrap().unwrap(),
            PurchaseOutcome::Confirmed(_)
        ));
    }
    let shown = store.status(sale.id).await.unwrap().unwrap().sold_out_at;
    store.shutdown().await;
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let (recorded, latest): (Option<i64>, i64) = conn
        .query_row(
            "SELECT s.sold_out_at_us, (SELECT max(created_at_us) FROM orders WHERE sale_id = s.id)
             FROM sales s WHERE s.id = ?1",
            [sale.id.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(recorded, Some(latest));
    let shown = shown.expect("sold out");
    assert_eq!(
        i64::try_from(shown.unix_timestamp_nanos() / 1_000).unwrap(),
        latest
    );
}

/// Under a load that never pauses, the background checkpointer never catches up with the
/// writer, so only the writer's own checkpoint starts the WAL over: without it the WAL grew by
/// about 1 KiB per purchase for as long as the load lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_stays_bounded_under_a_load_that_never_pauses() {
    const BUYERS: usize = 64;
    const EACH: usize = 700;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let sale = store
        .create_sale(active((BUYERS * EACH) as u32, 1))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..BUYERS)
        .map(|b| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..EACH {
                    let got = store.purchase(attempt(sale.id, &format!("w{b}-{i}"), None));
                    assert!(matches!(got.await, Ok(PurchaseOutcome::Confirmed(_))));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let wal = std::fs::metadata(dir.path().join(format!("{DB_FILE}-wal")))
        .unwrap()
        .len();
    // A frame is a 4 KiB page and its 24-byte header; the WAL may run past the mark by the
    // groups committed while a checkpoint was busy, never by the whole load.
    let bound = 2 * u64::try_from(WAL_RESTART_FRAMES).unwrap() * (4096 + 24);
    assert!(
        wal <= bound,
        "the WAL is {wal} bytes after {} purchases; bound {bound}",
        BUYERS * EACH
    );
    let status = store.status(sale.id).await.unwrap().unwrap();
    assert_eq!(status.remaining, 0, "every purchase is durable and counted");
    store.shutdown().await;
}
