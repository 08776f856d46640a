//! Degraded links, through the chaos proxies only (no namespace needed): 200 ms added to every
//! Redis round trip, 5% of PostgreSQL COMMITs cut, and a Redis reply stalled past the 500 ms
//! client timeout then released. Every answer must be true at quiet.

use crate::chaos::{Cut, Direction, Trigger};
use crate::harness::{
    Answer, Instance, Links, Policy, Site, Stores, Traffic, crowd, report, unix_ms, violations,
    wait_quiet,
};
use std::time::{Duration, Instant};

/// One instance on the host behind its two proxies, a sale of `stock` units with a limit of
/// 2, and `concurrency` buyers at a time.
async fn setup(
    label: &str,
    stock: u32,
    concurrency: usize,
) -> (Stores, Links, Instance, i64, Traffic) {
    let stores = Stores::new(label);
    let links = Links::start(Site::Host).await;
    let instance = Instance::start(&stores, "a", Site::Host, &links).await;
    let sale = instance.create_sale(stock, 2).await;
    let traffic = Traffic::new(
        vec![(instance.base.clone(), instance.client.clone())],
        sale,
        concurrency,
        Policy {
            max_attempts: 4,
            backoff: Duration::from_millis(100),
        },
    );
    (stores, links, instance, sale, traffic)
}

/// Waits for quiet, replays every key, waits again, and checks every answer.
async fn settle_and_check(stores: &Stores, sale: i64, traffic: &Traffic) -> Vec<String> {
    let mut found = Vec::new();
    if let Err(e) = wait_quiet(stores, sale).await {
        found.push(e);
    }
    traffic.replay_keys().await;
    if let Err(e) = wait_quiet(stores, sale).await {
        found.push(e);
    }
    found.extend(violations(stores, sale, &traffic.records()).await);
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_with_200_ms_added_latency() {
    let _serial = crate::SERIAL.lock().await;
    let (stores, links, instance, sale, traffic) = setup("latency", 100, 32).await;
    // 100 ms each way: every Redis round trip takes 200 ms more, under the 500 ms timeout.
    links
        .redis
        .set_latency(Direction::Request, Duration::from_millis(100));
    links
        .redis
        .set_latency(Direction::Reply, Duration::from_millis(100));
    let started = Instant::now();
    traffic.run(crowd("latency", 300, 2, 1), "slow").await;
    let took = started.elapsed();
    let ready = instance.await_readiness(true, Duration::from_secs(2)).await;

    let records = traffic.records();
    let mut confirmed_ms: Vec<i64> = records
        .iter()
        .filter(|r| matches!(r.answer, Answer::Http { status: 201, .. }))
        .map(|r| r.answered_ms - r.sent_ms)
        .collect();
    confirmed_ms.sort_unstable();
    let p50 = confirmed_ms.get(confirmed_ms.len() / 2).copied();
    let mut found = settle_and_check(&stores, sale, &traffic).await;
    if let Err(e) = ready {
        found.push(format!("readiness under latency: {e}"));
    }
    // The fault really applied: a confirmation waits for at least one Redis round trip (the
    // admission), so at least 200 ms.
    if p50.is_none_or(|p| p < 200) {
        found.push(format!(
            "median confirmation {p50:?} ms: the latency did not apply"
        ));
    }
    // 300 buyers wanting 400 units: a slow Redis must still sell the whole stock.
    let units = confirmed_units(&stores, sale).await;
    if units != 100 {
        found.push(format!("sold {units} of 100 under latency"));
    }
    report(
        "latency-200ms",
        &stores,
        &traffic.records(),
        &found,
        &format!("| crowd served in {took:.1?}, median 201 in {p50:?} ms"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_percent_of_postgres_commits_cut() {
    let _serial = crate::SERIAL.lock().await;
    // 400 units and 8 buyers at a time: small commit groups, so many COMMITs (a few hundred)
    // and a 5% share that is more than one or two.
    let (stores, links, _instance, sale, traffic) = setup("pg_break", 400, 8).await;
    // Every 20th COMMIT: half cut before PostgreSQL sees it (rolled back), half right after
    // (committed, the reply lost): the ambiguous case the fence must resolve.
    links.pg.set_trigger(Some(Trigger {
        pattern: b"COMMIT",
        fraction: 0.05,
        cut: Some(Cut::Alternately),
        hook: None,
    }));
    traffic.run(crowd("pg-break", 600, 2, 1), "cuts").await;
    links.pg.set_trigger(None);
    let (commits, cuts) = (links.pg.matches(), links.pg.cuts());
    let mut found = settle_and_check(&stores, sale, &traffic).await;
    if cuts == 0 {
        found.push(format!(
            "no COMMIT was cut ({commits} seen): the fault did not apply"
        ));
    }
    report(
        "pg-commit-cut-5pct",
        &stores,
        &traffic.records(),
        &found,
        &format!("| {cuts} of {commits} COMMITs cut"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_reply_stalled_past_the_client_timeout_then_released() {
    let _serial = crate::SERIAL.lock().await;
    let (stores, links, instance, sale, traffic) = setup("stall", 100, 32).await;
    let buyers = crowd("stall", 300, 2, 1);
    traffic.run(buyers[..40].to_vec(), "before").await;

    links.redis.hold_replies();
    let stalled = Instant::now();
    let during = traffic.spawn(buyers[40..80].to_vec(), "stalled");
    let unready = instance
        .await_readiness(false, Duration::from_secs(3))
        .await;
    // Keep it stalled three times the 500 ms Redis timeout: replies held that long are past
    // every caller's deadline when they arrive.
    let held_for = Duration::from_millis(1500);
    tokio::time::sleep(held_for.saturating_sub(stalled.elapsed())).await;
    let held_chunks = links.redis.held_chunks();
    let released_ms = unix_ms();
    links.redis.release_replies();
    let ready = instance.await_readiness(true, Duration::from_secs(5)).await;
    during.await.unwrap();
    traffic.run(buyers[80..].to_vec(), "released").await;
    let first_confirmed = traffic.first_confirmed_after(released_ms);

    let mut found = settle_and_check(&stores, sale, &traffic).await;
    if held_chunks == 0 {
        found.push("no Redis reply was held: the stall did not apply".into());
    }
    if let Err(e) = &unready {
        found.push(format!("readiness during the stall: {e}"));
    }
    if let Err(e) = &ready {
        found.push(format!("readiness after the release: {e}"));
    }
    if first_confirmed.is_none_or(|ms| ms > 5_000) {
        found.push(format!(
            "no purchase confirmed within 5 s of the release (first: {first_confirmed:?} ms)"
        ));
    }
    report(
        "redis-stall-1.5s",
        &stores,
        &traffic.records(),
        &found,
        &format!(
            "| {held_chunks} reply chunks held, unready after {unready:.1?}, ready {ready:.1?} \
             after the release, first 201 {first_confirmed:?} ms after it"
        ),
    );
}

/// Units of the sale's orders in PostgreSQL.
async fn confirmed_units(stores: &Stores, sale: i64) -> i64 {
    let row = stores
        .pg()
        .await
        .query_one(
            &format!(
                "SELECT coalesce(sum(quantity), 0)::int8 FROM \"{}\".orders WHERE sale_id = $1",
                stores.name
            ),
            &[&sale],
        )
        .await
        .unwrap();
    row.get(0)
}
