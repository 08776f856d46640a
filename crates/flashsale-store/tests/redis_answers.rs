//! Every answer of the scale-out store is true (issue 10, findings 4, 5, 7 and 9), in-process:
//! a released reservation never makes a sold-out sale look open (FL-5); `already_purchased`
//! is not said while the buyer's own first attempt may still fail; a key pending on a dead
//! instance answers `timeout`, not "nothing was taken"; a Redis reply lost after the script
//! ran releases its reservation at once; the clock guard keeps an ended sale ended; refusals
//! are remembered within bounds; and status stops answering from a view Redis no longer
//! confirms. The same properties over real networks are in `flashsale-server/tests/faults`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flashsale_core::{EndReason, NotActiveReason, Rejection, SaleId, SaleState};
use flashsale_store::redis_pg::RedisPgStore;
use flashsale_store::{PurchaseOutcome, SaleStore, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Cleanup, active, assert_invariants, attempt, connect, eventually, isolated};
use time::OffsetDateTime;

fn rejection(outcome: &Result<PurchaseOutcome, StoreError>) -> Option<Rejection> {
    match outcome {
        Ok(PurchaseOutcome::Rejected { rejection, .. }) => Some(*rejection),
        _ => None,
    }
}

fn order_id(outcome: &Result<PurchaseOutcome, StoreError>) -> uuid::Uuid {
    match outcome {
        Ok(PurchaseOutcome::Confirmed(order)) => order.order_id,
        other => panic!("expected confirmed, got {other:?}"),
    }
}

/// Makes PostgreSQL take `secs` and then refuse every order matching `when` (a trigger
/// condition on `NEW`), so a purchase stays in flight that long and then fails.
async fn slow_failure(cfg: &flashsale_store::redis_pg::RedisPgConfig, when: &str, secs: f64) {
    support::pg(cfg)
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION slow_refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN PERFORM pg_sleep({secs}); RAISE EXCEPTION 'injected failure'; END $$;
             CREATE TRIGGER slow_refuse BEFORE INSERT ON orders FOR EACH ROW
                 WHEN ({when}) EXECUTE FUNCTION slow_refuse();"
        ))
        .await
        .unwrap();
}

fn meta_key(cfg: &flashsale_store::redis_pg::RedisPgConfig, sale: SaleId) -> String {
    format!("{{{}:sale:{}}}:meta", cfg.key_prefix, sale.0)
}

fn sale_key(cfg: &flashsale_store::redis_pg::RedisPgConfig, sale: SaleId, name: &str) -> String {
    format!("{{{}:sale:{}}}:{name}", cfg.key_prefix, sale.0)
}

async fn count(cfg: &flashsale_store::redis_pg::RedisPgConfig, cmd: &str, key: &str) -> i64 {
    redis::cmd(cmd)
        .arg(key)
        .query_async(&mut support::redis(cfg).await)
        .await
        .unwrap()
}

/// FL-5: the last unit is reserved, its commit fails and the unit goes back. Status never
/// showed the sale sold out meanwhile (only confirmed units count), a buyer arriving meanwhile
/// is not told `sold_out` but waits and gets the unit, and once it is confirmed the sale stays
/// sold out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_released_reservation_never_makes_a_sold_out_sale_look_open() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = Arc::new(connect(&cfg).await);
    let sale = store.create_sale(active(1, 1)).await.unwrap();
    slow_failure(&cfg, "NEW.user_id = 'doomed'", 0.6).await;

    let doomed = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.purchase(attempt(sale.id, "doomed", None)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Arrives while the last unit is reserved: not told `sold_out`, since that unit comes back.
    let lucky = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.purchase(attempt(sale.id, "lucky", None)).await })
    };
    let mut seen = Vec::new();
    while !doomed.is_finished() {
        let status = store.status(sale.id).await.unwrap().unwrap();
        seen.push((status.remaining, status.state(store.now())));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let doomed = doomed.await.unwrap();
    assert!(
        matches!(doomed, Err(StoreError::Unavailable { .. })),
        "{doomed:?}"
    );
    assert!(
        seen.len() > 20,
        "status was read while the unit was in flight"
    );
    assert!(
        seen.iter()
            .all(|(remaining, state)| *remaining == 1 && *state == SaleState::Active),
        "a unit that was never confirmed showed as sold: {seen:?}"
    );

    let lucky = order_id(&lucky.await.unwrap());
    for _ in 0..30 {
        let status = store.status(sale.id).await.unwrap().unwrap();
        assert_eq!(status.remaining, 0);
        assert_eq!(
            status.state(store.now()),
            SaleState::Ended(EndReason::SoldOut)
        );
        assert!(status.sold_out_at.is_some());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_invariants(&cfg, sale.id, &[lucky]).await;
    store.shutdown().await;
}

/// Finding 4: a double click while the first attempt is being committed. If the first fails,
/// the second must not have been told `already_purchased` (with no order to show): it waits
/// for the first one's outcome and is decided after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn already_purchased_is_not_said_while_the_buyers_first_attempt_may_still_fail() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = Arc::new(connect(&cfg).await);
    let sale = store.create_sale(active(5, 1)).await.unwrap();
    slow_failure(&cfg, "NEW.idempotency_key = 'first-click'", 0.6).await;

    let first = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .purchase(attempt(sale.id, "alice", Some("first-click")))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = store.purchase(attempt(sale.id, "alice", None)).await;
    let first = first.await.unwrap();
    assert!(
        matches!(first, Err(StoreError::Unavailable { .. })),
        "{first:?}"
    );
    let second_id = order_id(&second);
    // And now the limit holds, with the order to show.
    match store.purchase(attempt(sale.id, "alice", None)).await {
        Ok(PurchaseOutcome::Rejected {
            rejection: Rejection::AlreadyPurchased,
            orders,
        }) => assert_eq!(orders.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_invariants(&cfg, sale.id, &[second_id]).await;
    store.shutdown().await;
}

/// Finding 4a: the first attempt with a key is pending on an instance that died (its record
/// says pending, nobody will settle it until the lease). A retry with the key is told the
/// outcome is unknown (`timeout`: retry with the same key), never "nothing was taken".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_pending_on_a_dead_instance_answers_timeout_not_unavailable() {
    let mut cfg = isolated(&support::redis_url(), &support::database_url());
    cfg.pg_timeout = Duration::from_millis(400);
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(5, 2)).await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(sale_key(&cfg, sale.id, "idempotency"))
        .arg("dead-click")
        .arg(format!("P\nalice\n1\n{}", uuid::Uuid::now_v7()))
        .query_async(&mut support::redis(&cfg).await)
        .await
        .unwrap();
    let started = Instant::now();
    let retry = store
        .purchase(attempt(sale.id, "alice", Some("dead-click")))
        .await;
    assert!(
        matches!(retry, Err(StoreError::Timeout { .. })),
        "{retry:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    store.shutdown().await;
}

/// Finding 4c: Redis ran the admission but its reply came too late (here: writes paused on a
/// private Redis for longer than the Redis timeout). The buyer is told nothing was taken, and
/// that is true: the reservation is released, not held for a lease, and the buyer's retry is
/// never told `already_purchased`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_admission_reply_releases_its_reservation() {
    let redis_server = support::PrivateRedis::start();
    let mut cfg = isolated(&redis_server.url(), &support::database_url());
    cfg.redis_timeout = Duration::from_millis(300);
    cfg.lease = Duration::from_secs(30);
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(5, 1)).await.unwrap();

    let mut admin = support::redis(&cfg).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(700)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let late = store.purchase(attempt(sale.id, "bob", None)).await;
    assert!(
        matches!(late, Err(StoreError::Unavailable { .. })),
        "{late:?}"
    );

    // Within a few seconds (not the 30 s lease) bob buys; no answer on the way says he holds
    // the limit: he holds nothing.
    let deadline = Instant::now() + Duration::from_secs(5);
    let bob = loop {
        let outcome = store.purchase(attempt(sale.id, "bob", None)).await;
        assert_ne!(
            rejection(&outcome),
            Some(Rejection::AlreadyPurchased),
            "bob was told he holds the limit; he has no order"
        );
        if let Ok(PurchaseOutcome::Confirmed(order)) = outcome {
            break order.order_id;
        }
        assert!(Instant::now() < deadline, "bob could not buy: {outcome:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_invariants(&cfg, sale.id, &[bob]).await;
    store.shutdown().await;
}

/// Finding 9: the decision clock of a sale never goes back. Redis's clock stepping back (or a
/// failover to a host whose clock is behind) is simulated by a guard ahead of it: a sale that
/// was decided ended stays ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ended_sale_stays_ended_when_the_clock_steps_back() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(5, 1)).await.unwrap();
    let first = order_id(&store.purchase(attempt(sale.id, "early", None)).await);
    // As if an attempt had been decided a second after the end, and the clock then went back
    // to now (an hour before the end).
    let after_end = (sale.ends_at + time::Duration::seconds(1)).unix_timestamp_nanos() / 1_000;
    let _: () = redis::cmd("HSET")
        .arg(meta_key(&cfg, sale.id))
        .arg("clock_us")
        .arg(after_end.to_string())
        .query_async(&mut support::redis(&cfg).await)
        .await
        .unwrap();
    let late = store.purchase(attempt(sale.id, "late", None)).await;
    assert_eq!(
        rejection(&late),
        Some(Rejection::NotActive(NotActiveReason::Ended)),
        "{late:?}"
    );
    assert_invariants(&cfg, sale.id, &[first]).await;
    store.shutdown().await;
}

/// Finding 7: refusals are remembered by key only while a later decision could differ, for a
/// bounded time and number. A sold-out sale stores nothing for 50,000 fresh keys; an open one
/// keeps at most 10,000 refusals, the oldest forgotten first, and forgets one older than the
/// retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_by_key_are_bounded() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = Arc::new(connect(&cfg).await);
    let sold_out = store.create_sale(active(1, 1)).await.unwrap();
    let open = store.create_sale(active(5, 1)).await.unwrap();
    order_id(&store.purchase(attempt(sold_out.id, "x", None)).await);
    order_id(&store.purchase(attempt(open.id, "a", None)).await);

    let flood = |sale: SaleId, n: usize, tag: &'static str| {
        let store = Arc::clone(&store);
        async move {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut workers = Vec::new();
            for _ in 0..32 {
                let (store, next) = (Arc::clone(&store), Arc::clone(&next));
                workers.push(tokio::spawn(async move {
                    let mut refused = 0;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            return refused;
                        }
                        let key = format!("{tag}-{i}");
                        let outcome = store.purchase(attempt(sale, "a", Some(&key))).await;
                        refused += usize::from(rejection(&outcome).is_some());
                    }
                }));
            }
            let mut refused = 0;
            for w in workers {
                refused += w.await.unwrap();
            }
            refused
        }
    };
    let memory = || async {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut support::redis(&cfg).await)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap()
    };

    let before = memory().await;
    let started = Instant::now();
    assert_eq!(flood(sold_out.id, 50_000, "gone").await, 50_000);
    let after = memory().await;
    println!(
        "50,000 fresh keys on a sold-out sale: {:?}, Redis used_memory {before} -> {after} \
         ({:+.1} MiB, shared Redis)",
        started.elapsed(),
        (after - before) as f64 / 1_048_576.0
    );
    assert_eq!(
        count(&cfg, "HLEN", &sale_key(&cfg, sold_out.id, "idempotency")).await,
        0,
        "a final refusal is decided again, not stored"
    );

    // An old refusal (older than the retention), then a flood past the bound.
    let eleven_minutes_ago = OffsetDateTime::now_utc().unix_timestamp() * 1_000 - 660_000;
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(sale_key(&cfg, open.id, "idempotency"))
        .arg("ancient")
        .arg("R\na\n1\nalready\n0")
        .ignore()
        .cmd("ZADD")
        .arg(sale_key(&cfg, open.id, "refused"))
        .arg(eleven_minutes_ago)
        .arg("ancient")
        .ignore()
        .query_async(&mut support::redis(&cfg).await)
        .await
        .unwrap();
    assert_eq!(flood(open.id, 10_050, "open").await, 10_050);
    let records = count(&cfg, "HLEN", &sale_key(&cfg, open.id, "idempotency")).await;
    let refused = count(&cfg, "ZCARD", &sale_key(&cfg, open.id, "refused")).await;
    assert_eq!(records, 10_000, "at most 10,000 refusals per sale");
    assert_eq!(refused, records);
    let ancient: bool = redis::cmd("HEXISTS")
        .arg(sale_key(&cfg, open.id, "idempotency"))
        .arg("ancient")
        .query_async(&mut support::redis(&cfg).await)
        .await
        .unwrap();
    assert!(!ancient, "a refusal older than the retention is forgotten");
    // The newest ones replay; the oldest were forgotten (decided again: the same refusal).
    for key in ["open-10049", "open-0"] {
        let again = store.purchase(attempt(open.id, "a", Some(key))).await;
        assert_eq!(
            rejection(&again),
            Some(Rejection::AlreadyPurchased),
            "{key}"
        );
    }
    store.shutdown().await;
}

/// Finding 5: while Redis cannot be read, status answers from the last view only for a short
/// while; then a sale that could still change is refused (503), not shown as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_is_not_answered_from_an_old_view() {
    let mut redis_server = support::PrivateRedis::start();
    let cfg = isolated(&redis_server.url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store: RedisPgStore = connect(&cfg).await;
    let open = store.create_sale(active(10, 1)).await.unwrap();
    let over = store.create_sale(active(1, 1)).await.unwrap();
    order_id(&store.purchase(attempt(over.id, "x", None)).await);
    assert!(
        eventually(Duration::from_secs(2), || async {
            store.status(over.id).await.unwrap().unwrap().remaining == 0
        })
        .await
    );

    redis_server.stop();
    assert_eq!(store.status(open.id).await.unwrap().unwrap().remaining, 10);
    assert!(
        eventually(Duration::from_secs(5), || async {
            matches!(
                store.status(open.id).await,
                Err(StoreError::Unavailable { .. })
            )
        })
        .await,
        "status kept answering from a view Redis no longer confirms"
    );
    // A sold-out sale is over: nothing can change it, so it still answers.
    assert_eq!(store.status(over.id).await.unwrap().unwrap().remaining, 0);

    redis_server.restart();
    assert!(
        eventually(Duration::from_secs(10), || async {
            store.status(open.id).await.is_ok()
        })
        .await
    );
    store.shutdown().await;
}
