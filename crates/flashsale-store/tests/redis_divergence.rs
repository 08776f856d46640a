//! Redis diverging from PostgreSQL with `meta` still present (issue 10, findings 1, 2 and 3):
//! a partial loss (AOF `everysec`, a failover) or an old dataset with a stale epoch, the group
//! commit meeting an order Redis should not have admitted, and the rebuild's own guards.
//!
//! Tests that damage Redis data run on a private redis-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flashsale_core::{Rejection, SaleId};
use flashsale_store::redis_pg::RedisPgConfig;
use flashsale_store::{PurchaseOutcome, SaleStore, StoreError};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::{Cleanup, active, assert_invariants, attempt, connect, eventually, isolated};
use uuid::Uuid;

async fn buy(
    store: &dyn SaleStore,
    sale: SaleId,
    name: &str,
) -> Result<PurchaseOutcome, StoreError> {
    store.purchase(attempt(sale, name, None)).await
}

fn confirmed(outcome: &Result<PurchaseOutcome, StoreError>) -> Option<Uuid> {
    match outcome {
        Ok(PurchaseOutcome::Confirmed(order)) => Some(order.order_id),
        _ => None,
    }
}

fn tag(cfg: &RedisPgConfig, sale: SaleId) -> String {
    format!("{{{}:sale:{}}}", cfg.key_prefix, sale.0)
}

async fn pg_sold(cfg: &RedisPgConfig, sale: SaleId) -> i32 {
    support::pg(cfg)
        .await
        .query_one("SELECT sold FROM sales WHERE id = $1", &[&sale.0])
        .await
        .unwrap()
        .get(0)
}

/// Redis's `remaining` and the units of its live reservations.
async fn redis_stock(cfg: &RedisPgConfig, sale: SaleId) -> (i64, i64) {
    let mut con = support::redis(cfg).await;
    let t = tag(cfg, sale);
    let left: i64 = redis::cmd("HGET")
        .arg(format!("{t}:meta"))
        .arg("remaining")
        .query_async(&mut con)
        .await
        .unwrap_or(-1);
    let reservations: Vec<String> = redis::cmd("HVALS")
        .arg(format!("{t}:reservations"))
        .query_async(&mut con)
        .await
        .unwrap();
    let reserved = reservations
        .iter()
        .map(|r| r.split('\n').nth(1).unwrap().parse::<i64>().unwrap())
        .sum();
    (left, reserved)
}

async fn pg_epoch(cfg: &RedisPgConfig, sale: SaleId) -> i64 {
    support::pg(cfg)
        .await
        .query_one("SELECT epoch FROM sales WHERE id = $1", &[&sale.0])
        .await
        .unwrap()
        .get(0)
}

/// Finding 1 (i): buyers whose holding Redis lost are admitted again; PostgreSQL's CHECK
/// refuses them, and only them: every innocent order of the same groups commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_over_the_limit_fails_alone_and_the_innocent_orders_of_its_group_commit() {
    let redis_server = support::PrivateRedis::start();
    let mut cfg = isolated(&redis_server.url(), &support::database_url());
    // No repair during the herd: this test is about the group commit alone.
    cfg.reconcile_interval = Duration::from_secs(3600);
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = Arc::new(connect(&cfg).await);
    let sale = store.create_sale(active(100, 1)).await.unwrap();
    let mut early = Vec::new();
    for i in 0..20 {
        early.push(confirmed(&buy(&*store, sale.id, &format!("early-{i}")).await).unwrap());
    }
    // Redis forgets every early buyer's holding (meta stays).
    let mut con = support::redis(&cfg).await;
    let names: Vec<String> = (0..20).map(|i| format!("early-{i}")).collect();
    let _: i64 = redis::cmd("HDEL")
        .arg(format!("{}:held", tag(&cfg, sale.id)))
        .arg(&names)
        .query_async(&mut con)
        .await
        .unwrap();

    let barrier = Arc::new(tokio::sync::Barrier::new(80));
    let mut tasks = Vec::new();
    for i in 0..80 {
        // Interleaved: every fourth attempt is an early buyer trying again.
        let name = if i % 4 == 0 {
            format!("early-{}", i / 4)
        } else {
            format!("new-{i}")
        };
        let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (name.clone(), buy(&*store, sale.id, &name).await)
        }));
    }
    let mut innocent = Vec::new();
    for task in tasks {
        let (name, outcome) = task.await.unwrap();
        if name.starts_with("early-") {
            assert!(
                confirmed(&outcome).is_none(),
                "{name} bought twice: {outcome:?}"
            );
            assert!(
                matches!(outcome, Err(StoreError::Unavailable { .. })),
                "{name}: {outcome:?}"
            );
        } else {
            innocent.push(
                confirmed(&outcome).unwrap_or_else(|| {
                    panic!("innocent {name} failed with its group: {outcome:?}")
                }),
            );
        }
    }
    assert_eq!(innocent.len(), 60);
    assert_eq!(pg_sold(&cfg, sale.id).await, 80);
    early.extend(innocent);
    assert_invariants(&cfg, sale.id, &early).await;

    // The reconciler's audit sees the holdings disagree and rebuilds them from PostgreSQL.
    store.reconcile_now().await.unwrap();
    let again = buy(&*store, sale.id, "early-3").await.unwrap();
    assert!(
        matches!(again, PurchaseOutcome::Rejected { rejection: Rejection::AlreadyPurchased, ref orders } if orders.len() == 1),
        "{again:?}"
    );
    assert_invariants(&cfg, sale.id, &early).await;
    store.shutdown().await;
}

/// Findings 1 and 2, the partial-loss test of the issue: mid-herd, Redis gains phantom stock,
/// forgets one buyer's holding and one confirmed idempotency key; another sale's Redis epoch is
/// set one below PostgreSQL's. Nobody is oversold or over the limit, the first sale converges
/// to 409 `sold_out` with remaining 0, the key replays again, and the stale sale sells again,
/// each within a generous deadline (the time taken is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_redis_loss_mid_herd_converges_to_sold_out_and_a_stale_epoch_recovers() {
    const DEADLINE: Duration = Duration::from_secs(30);
    let redis_server = support::PrivateRedis::start();
    let cfg = isolated(&redis_server.url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = Arc::new(connect(&cfg).await);
    let sale = store.create_sale(active(60, 1)).await.unwrap();
    let stale = store.create_sale(active(10, 1)).await.unwrap();
    let keyed = attempt(sale.id, "early-5", Some("key-early-5"));
    let mut kept = Vec::new();
    for i in 0..20 {
        let outcome = if i == 5 {
            store.purchase(keyed.clone()).await
        } else {
            buy(&*store, sale.id, &format!("early-{i}")).await
        };
        kept.push(confirmed(&outcome).unwrap());
    }
    let keyed_order = kept[5];
    let mut stale_kept = Vec::new();
    for i in 0..2 {
        stale_kept.push(confirmed(&buy(&*store, stale.id, &format!("s-{i}")).await).unwrap());
    }

    // The herd: 8 buyers at a time, fresh names, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                outcomes.push(buy(&*store, sale.id, &format!("herd-{w}-{n}")).await);
                n += 1;
                tokio::task::yield_now().await;
            }
            outcomes
        }));
    }
    assert!(
        eventually(DEADLINE, || async { pg_sold(&cfg, sale.id).await >= 30 }).await,
        "the herd did not get going"
    );

    // Mid-herd damage, meta left in place.
    let mut con = support::redis(&cfg).await;
    let t = tag(&cfg, sale.id);
    let damaged = Instant::now();
    let _: () = redis::pipe()
        .cmd("HINCRBY")
        .arg(format!("{t}:meta"))
        .arg("remaining")
        .arg(5)
        .ignore()
        .cmd("HDEL")
        .arg(format!("{t}:meta"))
        .arg("sold_out_us")
        .ignore()
        .cmd("HDEL")
        .arg(format!("{t}:held"))
        .arg("early-3")
        .ignore()
        .cmd("HDEL")
        .arg(format!("{t}:idempotency"))
        .arg("key-early-5")
        .ignore()
        .cmd("HSET")
        .arg(format!("{}:meta", tag(&cfg, stale.id)))
        .arg("epoch")
        .arg(pg_epoch(&cfg, stale.id).await - 1)
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();

    // The buyer Redis forgot keeps trying; PostgreSQL never lets them buy twice.
    let mut probes = 0;
    let converged = eventually(DEADLINE, || {
        probes += 1;
        let (store, cfg) = (Arc::clone(&store), cfg.clone());
        let name = format!("probe-{probes}");
        async move {
            let again = buy(&*store, sale.id, "early-3").await;
            assert!(
                confirmed(&again).is_none(),
                "early-3 bought twice: {again:?}"
            );
            let probe = buy(&*store, sale.id, &name).await;
            let status = store.status(sale.id).await.unwrap().unwrap();
            // Phantom stock in flight also answers sold_out for a moment: converged means
            // Redis itself holds nothing more to sell, reserved or not.
            let (left, reserved) = redis_stock(&cfg, sale.id).await;
            matches!(
                probe,
                Ok(PurchaseOutcome::Rejected {
                    rejection: Rejection::SoldOut,
                    ..
                })
            ) && status.remaining == 0
                && left == 0
                && reserved == 0
                && pg_sold(&cfg, sale.id).await == 60
        }
    })
    .await;
    let sold_out_after = damaged.elapsed();
    assert!(
        converged,
        "still not sold out {DEADLINE:?} after the partial loss"
    );
    for i in 0..20 {
        let probe = buy(&*store, sale.id, &format!("after-{i}")).await;
        assert!(
            matches!(
                probe,
                Ok(PurchaseOutcome::Rejected {
                    rejection: Rejection::SoldOut,
                    ..
                })
            ),
            "{probe:?}"
        );
    }
    println!("partial loss: 409 sold_out and remaining 0 after {sold_out_after:?}");

    let mut n = 0;
    let recovered = eventually(DEADLINE, || {
        n += 1;
        let store = Arc::clone(&store);
        async move { confirmed(&buy(&*store, stale.id, &format!("s-late-{n}")).await).is_some() }
    })
    .await;
    let stale_after = damaged.elapsed();
    assert!(
        recovered,
        "the stale-epoch sale still refuses every order after {DEADLINE:?}"
    );
    println!("stale epoch: selling again after {stale_after:?}");

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        kept.extend(w.await.unwrap().iter().filter_map(confirmed));
    }
    // The forgotten key replays its confirmation again.
    match store.purchase(keyed).await.unwrap() {
        PurchaseOutcome::Confirmed(order) => assert_eq!(order.order_id, keyed_order),
        other => panic!("key-early-5 does not replay: {other:?}"),
    }
    assert_invariants(&cfg, sale.id, &kept).await;
    assert_invariants(&cfg, stale.id, &stale_kept).await;
    store.shutdown().await;
}

/// Finding 3: a sale with many buyers is rebuilt in bounded steps, each within a short Redis
/// timeout (the whole rebuild in one call never finished under it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_with_100000_buyers_is_rebuilt_in_bounded_steps() {
    let redis_server = support::PrivateRedis::start();
    let mut cfg = isolated(&redis_server.url(), &support::database_url());
    cfg.redis_timeout = Duration::from_millis(50);
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(200_000, 1)).await.unwrap();
    let pg = support::pg(&cfg).await;
    pg.batch_execute(&format!(
        "INSERT INTO orders (order_id, sale_id, user_id, quantity, created_at, idempotency_key)
         SELECT gen_random_uuid(), {id}, 'u-' || i, 1, now(), 'k-' || i
         FROM generate_series(1, 100000) i;
         INSERT INTO buyers (sale_id, user_id, held, per_user_limit)
         SELECT {id}, 'u-' || i, 1, 1 FROM generate_series(1, 100000) i;
         UPDATE sales SET sold = 100000 WHERE id = {id};",
        id = sale.id.0
    ))
    .await
    .unwrap();
    let mut con = support::redis(&cfg).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();

    let started = Instant::now();
    let mut outcome = buy(&store, sale.id, "newcomer").await;
    while confirmed(&outcome).is_none() && started.elapsed() < Duration::from_secs(30) {
        outcome = buy(&store, sale.id, "newcomer").await;
    }
    let order = confirmed(&outcome).unwrap_or_else(|| panic!("never rebuilt: {outcome:?}"));
    println!(
        "100,000 buyers rebuilt and a purchase confirmed after {:?}",
        started.elapsed()
    );
    let again = buy(&store, sale.id, "u-77").await.unwrap();
    assert!(
        matches!(
            again,
            PurchaseOutcome::Rejected {
                rejection: Rejection::AlreadyPurchased,
                ..
            }
        ),
        "{again:?}"
    );
    let held: i64 = redis::cmd("HLEN")
        .arg(format!("{}:held", tag(&cfg, sale.id)))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(held, 100_001);
    // What the audit script costs Redis (it blocks Redis while it runs): the full pass over
    // 200,001 records, and the bounded one the reconciler runs on a sale this size.
    let audit = redis::Script::new(include_str!("../src/redis_pg/audit.lua"));
    let t = tag(&cfg, sale.id);
    for full_max in [1_000_000, 5_000] {
        let (audit, t, url) = (audit.clone(), t.clone(), cfg.redis_url.clone());
        // A blocking connection: no client-side response timeout on the long full pass.
        let (elapsed, held) = tokio::task::spawn_blocking(move || {
            let mut sync = redis::Client::open(url).unwrap().get_connection().unwrap();
            let started = Instant::now();
            let reply: Vec<String> = audit
                .key(format!("{t}:meta"))
                .key(format!("{t}:held"))
                .key(format!("{t}:reservations"))
                .key(format!("{t}:idempotency"))
                .key(format!("{t}:reserving"))
                .arg(full_max)
                .invoke(&mut sync)
                .unwrap();
            (started.elapsed(), reply[5].clone())
        })
        .await
        .unwrap();
        println!(
            "audit.lua with at most {full_max} records summed: {elapsed:?} (held sum {held:?})"
        );
        assert_eq!(held, if full_max > 200_001 { "100001" } else { "" });
    }
    let epoch = pg_epoch(&cfg, sale.id).await;
    store.reconcile_now().await.unwrap();
    assert_eq!(
        pg_epoch(&cfg, sale.id).await,
        epoch,
        "a healthy sale was rebuilt"
    );
    assert_invariants(&cfg, sale.id, &[order]).await;
    store.shutdown().await;
}

/// Finding 3: every step of the rebuild checks the lock's token, and the epoch is checked
/// before anything is deleted, so a rebuilder whose lock expired, or one with an older epoch,
/// neither releases another's lock nor wipes what a faster rebuilder restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_step_without_the_lock_or_with_an_older_epoch_changes_nothing() {
    let cfg = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let script = redis::Script::new(include_str!("../src/redis_pg/rebuild.lua"));
    let t = tag(&cfg, SaleId(1));
    let (lock, meta, held) = (
        format!("{t}:rebuild"),
        format!("{t}:meta"),
        format!("{t}:held"),
    );
    let others = [
        format!("{t}:leases"),
        format!("{t}:reservations"),
        format!("{t}:idempotency"),
        format!("{t}:refused"),
        format!("{t}:reserving"),
    ];
    let mut con = support::redis(&cfg).await;
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(&lock)
        .arg("mine")
        .ignore()
        .cmd("HSET")
        .arg(&meta)
        .arg("epoch")
        .arg(7)
        .arg("remaining")
        .arg(3)
        .ignore()
        .cmd("HSET")
        .arg(&held)
        .arg("alice")
        .arg(1)
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();
    let run = |token: &str, step: &str, epoch: Option<i64>| {
        let mut inv = script.key(&lock);
        inv.key(&meta)
            .key(&held)
            .key(&others[0])
            .key(&others[1])
            .key(&others[2])
            .key(&others[3])
            .key(&others[4]);
        inv.arg(token).arg(10_000).arg(step);
        if let Some(epoch) = epoch {
            inv.arg(epoch);
        }
        let mut con = con.clone();
        async move { inv.invoke_async::<String>(&mut con).await.unwrap() }
    };
    let state = || {
        let (lock, held) = (lock.clone(), held.clone());
        let mut con = con.clone();
        async move {
            let lock: Option<String> = redis::cmd("GET")
                .arg(&lock)
                .query_async(&mut con)
                .await
                .unwrap();
            let held: i64 = redis::cmd("HLEN")
                .arg(&held)
                .query_async(&mut con)
                .await
                .unwrap();
            (lock, held)
        }
    };

    assert_eq!(run("theirs", "begin", Some(9)).await, "lost");
    assert_eq!(run("theirs", "unlock", None).await, "lost");
    assert_eq!(
        state().await,
        (Some("mine".into()), 1),
        "a foreign token changed something"
    );
    assert_eq!(run("mine", "begin", Some(7)).await, "newer");
    assert_eq!(
        state().await,
        (Some("mine".into()), 1),
        "an older epoch deleted the state"
    );
    assert_eq!(run("mine", "begin", Some(8)).await, "ok");
    assert_eq!(state().await, (Some("mine".into()), 0));
    assert_eq!(run("mine", "unlock", None).await, "ok");
    assert_eq!(state().await, (None, 0));
}

/// Finding 8: one sale whose reconciliation fails (here its leases key has the wrong type) no
/// longer starves the sales after it: their expired reservations are still released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_that_fails_to_reconcile_does_not_starve_the_others() {
    let redis_server = support::PrivateRedis::start();
    let mut cfg = isolated(&redis_server.url(), &support::database_url());
    cfg.reconcile_interval = Duration::from_secs(3600);
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let broken = store.create_sale(active(10, 1)).await.unwrap();
    let healthy = store.create_sale(active(10, 1)).await.unwrap();
    assert!(
        broken.id < healthy.id,
        "the broken sale must come first in the round"
    );
    let mut con = support::redis(&cfg).await;
    let (b, h) = (tag(&cfg, broken.id), tag(&cfg, healthy.id));
    // A reservation whose instance died: stock and holding taken, lease long expired.
    let order = Uuid::now_v7();
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(format!("{b}:leases"))
        .arg("not a sorted set")
        .ignore()
        .cmd("HINCRBY")
        .arg(format!("{h}:meta"))
        .arg("remaining")
        .arg(-1)
        .ignore()
        .cmd("HINCRBY")
        .arg(format!("{h}:held"))
        .arg("ghost")
        .arg(1)
        .ignore()
        .cmd("ZADD")
        .arg(format!("{h}:leases"))
        .arg(0)
        .arg(order.to_string())
        .ignore()
        .cmd("HSET")
        .arg(format!("{h}:reservations"))
        .arg(order.to_string())
        .arg("ghost\n1\n1\n\n2")
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();

    assert!(
        store.reconcile_now().await.is_err(),
        "the broken sale's error is reported"
    );
    let (left, reserved) = redis_stock(&cfg, healthy.id).await;
    assert_eq!((left, reserved), (10, 0), "the healthy sale was starved");
    assert_invariants(&cfg, healthy.id, &[]).await;
    store.shutdown().await;
}

/// A TCP proxy to PostgreSQL that, while `cut` is set, drops any reply acknowledging an
/// `INSERT` (its `CommandComplete`, sent once the statement committed) and closes that
/// connection: the write landed, its client never hears so (an ambiguous write).
struct CutProxy {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl CutProxy {
    async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cut);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let flag = Arc::clone(&flag);
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let acknowledges_insert = buf[..n].windows(9).any(|w| w == b"INSERT 0 ");
                        if (flag.load(Ordering::SeqCst) && acknowledges_insert)
                            || cw.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                    // Dropping both halves closes the client's side.
                });
            }
        });
        Self { port, cut }
    }
}

/// Finding 8: a counter flush that landed although its answer was lost is not added again
/// when retried (nor counted twice by the summary meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_counter_flush_whose_answer_was_lost_is_not_counted_twice() {
    let direct = isolated(&support::redis_url(), &support::database_url());
    let _cleanup = Cleanup {
        cfg: direct.clone(),
    };
    let upstream: u16 = tokio_postgres::Config::from_str(&direct.database_url)
        .unwrap()
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432);
    let proxy = CutProxy::start(upstream).await;
    let mut cfg = direct.clone();
    let mut url = url_with_port(&direct.database_url, proxy.port);
    std::mem::swap(&mut cfg.database_url, &mut url);
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(10, 1)).await.unwrap();
    for i in 0..5 {
        assert!(confirmed(&buy(&store, sale.id, &format!("b-{i}")).await).is_some());
    }
    let pg = support::pg(&direct).await;
    let attempts = || {
        let pg = &pg;
        async move {
            pg.query_opt(
                "SELECT attempts FROM sale_counters WHERE sale_id = $1",
                &[&sale.id.0],
            )
            .await
            .unwrap()
            .map_or(0, |r| r.get::<_, i64>(0))
        }
    };
    // The next flush lands, and its answer is lost.
    proxy.cut.store(true, Ordering::SeqCst);
    let landed = eventually(Duration::from_secs(10), || async { attempts().await == 5 }).await;
    proxy.cut.store(false, Ordering::SeqCst);
    assert!(landed, "the counters were never flushed");

    let summary = store.summary(sale.id).await.unwrap().unwrap();
    assert_eq!(
        summary.attempts, 5,
        "the summary counts the lost flush twice"
    );
    store.shutdown().await;
    assert_eq!(attempts().await, 5, "the retried flush was added twice");
}

fn url_with_port(url: &str, port: u16) -> String {
    let config = tokio_postgres::Config::from_str(url).unwrap();
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}@127.0.0.1:{port}/{db}")
}

/// The audit must never take a healthy sale for a diverged one: a herd on two instances, with
/// every reconciler auditing every 20 ms while commits are in flight, triggers no rebuild
/// (the epoch never moves) and no buyer gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auditing_during_a_herd_never_rebuilds_a_healthy_sale() {
    let mut cfg = isolated(&support::redis_url(), &support::database_url());
    cfg.reconcile_interval = Duration::from_millis(20);
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let a = Arc::new(connect(&cfg).await);
    let b = Arc::new(connect(&cfg).await);
    let sale = a.create_sale(active(300, 1)).await.unwrap();
    let epoch = pg_epoch(&cfg, sale.id).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(600));
    let mut tasks = Vec::new();
    for i in 0..600 {
        let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut outcomes = Vec::new();
            // Each buyer also tries again later: the herd lasts several audit rounds.
            for _ in 0..3 {
                outcomes.push(buy(&*store, sale.id, &format!("buyer-{i}")).await);
                tokio::task::yield_now().await;
            }
            outcomes
        }));
    }
    let mut kept = Vec::new();
    for task in tasks {
        for outcome in task.await.unwrap() {
            match outcome {
                Ok(PurchaseOutcome::Confirmed(order)) => kept.push(order.order_id),
                Ok(PurchaseOutcome::Rejected { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(kept.len(), 300);
    a.reconcile_now().await.unwrap();
    assert_eq!(
        pg_epoch(&cfg, sale.id).await,
        epoch,
        "a healthy sale was rebuilt"
    );
    assert_invariants(&cfg, sale.id, &kept).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Finding 1 (iii): a reservation whose record Redis lost while its stock stayed taken (so no
/// lease will ever bring it back) is released by the audit's rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_of_a_reservation_lost_from_redis_is_released() {
    let redis_server = support::PrivateRedis::start();
    let mut cfg = isolated(&redis_server.url(), &support::database_url());
    cfg.reconcile_interval = Duration::from_secs(3600);
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = connect(&cfg).await;
    let sale = store.create_sale(active(5, 1)).await.unwrap();
    let kept = confirmed(&buy(&store, sale.id, "alice").await).unwrap();
    let mut con = support::redis(&cfg).await;
    let t = tag(&cfg, sale.id);
    let _: () = redis::pipe()
        .cmd("HINCRBY")
        .arg(format!("{t}:meta"))
        .arg("remaining")
        .arg(-1)
        .ignore()
        .cmd("HINCRBY")
        .arg(format!("{t}:held"))
        .arg("ghost")
        .arg(1)
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(redis_stock(&cfg, sale.id).await, (3, 0));

    store.reconcile_now().await.unwrap();
    assert_eq!(
        redis_stock(&cfg, sale.id).await,
        (4, 0),
        "the lost reservation's stock is still taken"
    );
    assert!(confirmed(&buy(&store, sale.id, "ghost").await).is_some());
    assert_invariants(&cfg, sale.id, &[kept]).await;
    store.shutdown().await;
}
