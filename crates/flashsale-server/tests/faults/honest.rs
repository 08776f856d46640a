//! The honest-answers test: two instances (A inside a namespace when the machine allows, else
//! on the host; B on the host), each behind its own proxies. Faults are injected in turn on A's
//! links while buyers attempt first on A and retry every failed attempt on the other instance
//! (keyed buyers with the same key):
//! 1. A killed (`kill -9`) between the PostgreSQL commit and the Redis settle (Redis replies
//!    held from the first COMMIT on, then the kill);
//! 2. a failing settle: A's Redis connections broken and refused for 300 ms right after
//!    COMMITs pass its PostgreSQL proxy;
//! 3. Redis response timeouts after the script ran: replies held 700 ms (past the 500 ms
//!    timeout), then released, three times;
//! 4. PostgreSQL connections cut during COMMIT (before or after it reaches the server), then
//!    the same with the PostgreSQL link refused for 300 ms so the fence query fails too.
//!
//! Every answer is recorded and checked at quiet ([`crate::harness::violations`]).

use crate::chaos::{Admit, Chaos, Cut, Trigger};
use crate::harness::{
    Instance, Links, Policy, Site, Stores, Traffic, crowd, report, violations, wait_quiet,
};
use crate::netns::{self, Netns};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Polls `condition` every 10 ms for at most `bound`; whether it became true.
async fn poll(bound: Duration, condition: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < bound {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// A hook that breaks every connection of `proxy` and refuses new ones for `for_`.
fn outage(proxy: Chaos, for_: Duration) -> Arc<dyn Fn() + Send + Sync> {
    Arc::new(move || {
        let proxy = proxy.clone();
        // In a task of its own, so the chunk that fired the hook is forwarded first (the
        // COMMIT reaches the server; only what follows it fails).
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            proxy.set_admit(Admit::Refuse);
            proxy.break_all();
            tokio::time::sleep(for_).await;
            proxy.set_admit(Admit::Forward);
        });
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn honest_answers_under_injected_faults() {
    let _serial = crate::SERIAL.lock().await;
    let ns = match netns::available().and_then(|()| Netns::create("hon")) {
        Ok(ns) => Some(ns),
        Err(why) => {
            eprintln!(
                "SKIPPED (part): honest-answers: no namespace ({why}); instance A runs on the \
                 host, through its proxies only"
            );
            None
        }
    };
    let site_a = ns.as_ref().map_or(Site::Host, Site::Netns);
    let stores = Stores::new("honest");
    let links_a = Links::start(site_a).await;
    let links_b = Links::start(Site::Host).await;
    let mut a = Instance::start(&stores, "a", site_a, &links_a).await;
    let b = Instance::start(&stores, "b", Site::Host, &links_b).await;
    // Limit 1: a buyer told `already_purchased` must hold the one unit; stock enough to last
    // through the injections, then a last crowd sells it out.
    let sale = a.create_sale(200, 1).await;
    let traffic = Traffic::new(
        vec![
            (a.base.clone(), a.client.clone()),
            (b.base.clone(), b.client.clone()),
        ],
        sale,
        16,
        Policy {
            max_attempts: 6,
            backoff: Duration::from_millis(50),
        },
    );
    // Every first attempt goes to A, where the faults are.
    let buyers = crowd("honest", 330, 1, 1);
    let mut next = 0;
    let mut take = |n: usize| {
        let part = buyers[next..next + n].to_vec();
        next += n;
        part
    };
    let (ra, pa) = (links_a.redis.chaos(), links_a.pg.chaos());
    let mut notes = Vec::new();

    traffic.run(take(30), "warm").await;

    // 1. Death between commit and settle.
    let held_before = ra.held_chunks();
    let hold = ra.clone();
    pa.set_trigger(Some(Trigger {
        pattern: b"COMMIT",
        fraction: 1.0,
        cut: None,
        hook: Some(Arc::new(move || hold.hold_replies())),
    }));
    let run = traffic.spawn(take(40), "kill");
    let held = poll(Duration::from_secs(10), || ra.held_chunks() > held_before).await;
    a.kill_9();
    pa.set_trigger(None);
    ra.release_replies();
    notes.push(format!("kill: reply held before the kill {held}"));
    run.await.unwrap();
    a.restart().await;

    // 2. A failing settle.
    let acted = pa.acted();
    pa.set_trigger(Some(Trigger {
        pattern: b"COMMIT",
        fraction: 0.5,
        cut: None,
        hook: Some(outage(ra.clone(), Duration::from_millis(300))),
    }));
    traffic.run(take(40), "settle_fails").await;
    pa.set_trigger(None);
    ra.set_admit(Admit::Forward);
    notes.push(format!("settle: {} Redis outages", pa.acted() - acted));

    // 3. Redis response timeouts after the script ran.
    let run = traffic.spawn(take(40), "redis_timeout");
    let mut stalls = 0;
    for _ in 0..3 {
        let before = ra.held_chunks();
        ra.hold_replies();
        if poll(Duration::from_secs(3), || ra.held_chunks() > before).await {
            stalls += 1;
        }
        // The stall itself: 700 ms, past the 500 ms Redis timeout.
        tokio::time::sleep(Duration::from_millis(700)).await;
        ra.release_replies();
        // The schedule: 300 ms of normal service between stalls.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    run.await.unwrap();
    notes.push(format!("timeout: {stalls} stalls with a reply held"));

    // 4. PostgreSQL cut during COMMIT; then with the fence query failing too.
    let cuts = pa.cuts();
    pa.set_trigger(Some(Trigger {
        pattern: b"COMMIT",
        fraction: 0.3,
        cut: Some(Cut::Alternately),
        hook: None,
    }));
    traffic.run(take(30), "commit_cut").await;
    pa.set_trigger(Some(Trigger {
        pattern: b"COMMIT",
        fraction: 0.3,
        cut: Some(Cut::AfterForwarding),
        hook: Some(outage(pa.clone(), Duration::from_millis(300))),
    }));
    traffic.run(take(30), "commit_cut_fence_down").await;
    pa.set_trigger(None);
    pa.set_admit(Admit::Forward);
    notes.push(format!("commit cuts: {}", pa.cuts() - cuts));

    // Then no fault: the rest sells out.
    traffic.run(take(120), "after").await;

    let mut found = Vec::new();
    if let Err(e) = wait_quiet(&stores, sale).await {
        found.push(e);
    }
    traffic.replay_keys().await;
    if let Err(e) = wait_quiet(&stores, sale).await {
        found.push(e);
    }
    let records = traffic.records();
    found.extend(violations(&stores, sale, &records).await);
    if !held {
        found.push("kill: no Redis reply was held after a COMMIT: the fault did not apply".into());
    }
    drop(b);
    report(
        "honest-answers",
        &stores,
        &records,
        &found,
        &format!("| {}", notes.join(", ")),
    );
}
