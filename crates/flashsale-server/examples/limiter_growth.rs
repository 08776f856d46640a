//! How long one rate-limit check can stop a worker: the longest single check of the per-buyer
//! purchase limiter, with governor's default map (four shards per core) against the service's
//! ([`limits::keyed`], 256 shards), as `--keys` distinct buyers arrive (default 2,000,000),
//! then while the upkeep forgets them all (`retain_recent` and `shrink_to_fit`, as the
//! service's upkeep task calls them).
//!
//! `cargo run --release -p flashsale-server --example limiter_growth [-- --keys N]`
//!
//! Wall time on a shared machine: compare the two columns of one run, not runs with each other.

use flashsale_core::UserId;
use flashsale_server::http::limits::{self, RateLimits, SHARDS};
use flashsale_testkit::growth::{keys_arg, longest_by_band};
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

// The service's allocator: the upkeep frees from another thread what the checks allocated,
// and glibc's malloc made that contention, not the map's locks, the longest wait.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Key = (UserId, Option<IpAddr>);

fn buyer(n: u64) -> Key {
    let id = format!(
        "load-{:08x}-{n}",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
    );
    let ip = IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
    match UserId::parse(&id) {
        Ok(user) => (user, Some(ip)),
        Err(e) => panic!("{id} is not a buyer id: {e}"),
    }
}

/// The longest check of a new buyer while another thread runs the upkeep over a limiter whose
/// buckets have all refilled (so every one of them is dropped), and how long the upkeep took.
fn longest_check_during_upkeep(
    limiter: &DefaultKeyedRateLimiter<Key>,
    first_new: u64,
) -> (Duration, Duration) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let upkeep = scope.spawn(|| {
            let started = Instant::now();
            limiter.retain_recent();
            limiter.shrink_to_fit();
            done.store(true, Ordering::Release);
            started.elapsed()
        });
        let mut longest = Duration::ZERO;
        let mut n = first_new;
        while !done.load(Ordering::Acquire) {
            let key = buyer(n);
            n += 1;
            let started = Instant::now();
            let _ = limiter.check_key(&key);
            longest = longest.max(started.elapsed());
        }
        match upkeep.join() {
            Ok(took) => (longest, took),
            Err(_) => panic!("the upkeep thread panicked"),
        }
    })
}

fn main() {
    let keys = keys_arg("limiter_growth", 2_000_000);
    // The service's per-buyer default, and a little more than the time a drained bucket
    // takes to refill, after which the upkeep forgets it.
    let defaults = RateLimits::default();
    let (rate, burst) = (
        defaults.purchase_rate_per_user,
        defaults.purchase_burst_per_user,
    );
    let quota = limits::quota(rate, burst);
    let refilled = Duration::from_secs_f64(f64::from(burst) / f64::from(rate) + 0.1);

    let default: DefaultKeyedRateLimiter<Key> = RateLimiter::keyed(quota);
    let default_bands = longest_by_band(keys, buyer, |k| drop(default.check_key(&k)));
    std::thread::sleep(refilled);
    let default_upkeep = longest_check_during_upkeep(&default, keys);
    drop(default);

    let sharded: DefaultKeyedRateLimiter<Key> = limits::keyed(quota);
    let sharded_bands = longest_by_band(keys, buyer, |k| drop(sharded.check_key(&k)));
    std::thread::sleep(refilled);
    let sharded_upkeep = longest_check_during_upkeep(&sharded, keys);

    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    println!("buyers from       longest check: governor default   {SHARDS} shards");
    for ((band, default), (_, sharded)) in default_bands.iter().zip(&sharded_bands) {
        if *band >= 1024 {
            println!(
                "{band:>12}      {:>27.3} ms {:>9.3} ms",
                ms(default),
                ms(sharded)
            );
        }
    }
    println!(
        "during the upkeep (forgetting {keys}): {:>10.3} ms {:>9.3} ms",
        ms(&default_upkeep.0),
        ms(&sharded_upkeep.0)
    );
    println!(
        "the upkeep itself took:          {:>13.3} ms {:>9.3} ms",
        ms(&default_upkeep.1),
        ms(&sharded_upkeep.1)
    );
}
