//! Open-loop traffic for the overload figures and the soak (issue 7): requests are *scheduled*
//! at a fixed rate, whatever the server does, and each latency is measured from its scheduled
//! start, so a slow server cannot hide its latency by slowing the client (coordinated
//! omission, as hatoo/oha's client avoids it).
//!
//! ```text
//! cargo run --release -p flashsale-server --example traffic -- \
//!     BASE_URL RATE_PER_SEC SECONDS SALE_IDS [purchase|mixed]
//! ```
//! `RATE_PER_SEC` may instead be `cN`: closed loop, N workers each sending its next request
//! as soon as its last is answered (the way wrk offers load), for comparing concurrency levels.
//! `SALE_IDS` is a comma-separated list. `purchase`: every request buys one unit for a fresh
//! buyer. `mixed`: 20% purchases, 60% status reads, 20% "did I get one?" reads, spread over the
//! sales. Prints offered and served rates, answers by status and percentiles of served answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// One answer: HTTP status (0 = no answer: connection error) and latency.
type Sample = (u16, Duration);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: traffic BASE_URL RATE_PER_SEC SECONDS SALE_IDS [purchase|mixed]");
        std::process::exit(2);
    }
    let base = args[1].trim_end_matches('/').to_owned();
    let secs: u64 = args[3].parse().expect("SECONDS is a number");
    if let Some(workers) = args[2].strip_prefix('c') {
        let workers: u64 = workers.parse().expect("cN: N is a number");
        return closed_loop(&base, workers, secs, &args[4]).await;
    }
    let rate: u64 = args[2].parse().expect("RATE_PER_SEC is a number");
    let sales: Vec<u64> = args[4]
        .split(',')
        .map(|s| s.parse().expect("SALE_IDS are numbers"))
        .collect();
    let mixed = args.get(5).is_some_and(|m| m == "mixed");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let run = format!("{:x}", std::process::id());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let scheduled = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let client = client.clone();
        let samples = Arc::clone(&samples);
        let sale = sales[(i as usize) % sales.len()];
        let request = match (mixed, i % 10) {
            (true, 0..=5) => client.get(format!("{base}/api/sales/{sale}")),
            (true, 6 | 7) => {
                client.get(format!("{base}/api/sales/{sale}/orders/u-{run}-{}", i / 2))
            }
            _ => client
                .post(format!("{base}/api/sales/{sale}/orders"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"user_id":"u-{run}-{i}"}}"#)),
        };
        tasks.spawn(async move {
            let status = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            samples.lock().await.push((status, scheduled.elapsed()));
        });
        // Reap finished tasks as we go so the set does not grow with the whole run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let samples = samples.lock().await;
    report(&samples, elapsed);
}

/// `workers` loops, each on its own connection, buying for fresh buyers in the first sale.
async fn closed_loop(base: &str, workers: u64, secs: u64, sales: &str) {
    let sale = sales.split(',').next().unwrap_or("1").to_owned();
    let run = format!("{:x}", std::process::id());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let url = format!("{base}/api/sales/{sale}/orders");
        let run = run.clone();
        tasks.spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("a client");
            let mut samples: Vec<Sample> = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let sent = Instant::now();
                let status = match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"user_id":"c-{run}-{w}-{i}"}}"#))
                    .send()
                    .await
                {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        status
                    }
                    Err(_) => 0,
                };
                samples.push((status, sent.elapsed()));
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(Ok(mut part)) = tasks.join_next().await {
        samples.append(&mut part);
    }
    report(&samples, started.elapsed().as_secs_f64());
}

fn report(samples: &[Sample], elapsed: f64) {
    let total = samples.len() as u64;
    let mut by_status: BTreeMap<u16, Vec<Duration>> = BTreeMap::new();
    for (status, latency) in samples.iter() {
        by_status.entry(*status).or_default().push(*latency);
    }
    let mut served: Vec<Duration> = by_status
        .iter()
        .filter(|(s, _)| (200..500).contains(*s) && **s != 429)
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    served.sort();
    println!(
        "attempted {:.0}/s ({} requests in {:.1} s), served {:.0}/s",
        total as f64 / elapsed,
        total,
        elapsed,
        served.len() as f64 / elapsed
    );
    for (status, latencies) in by_status.iter_mut() {
        latencies.sort();
        println!(
            "  {:>3}: {:>7} ({:>5.1}%)  p50 {}  p99 {}  max {}",
            if *status == 0 {
                "err".to_owned()
            } else {
                status.to_string()
            },
            latencies.len(),
            100.0 * latencies.len() as f64 / total as f64,
            ms(percentile(latencies, 50.0)),
            ms(percentile(latencies, 99.0)),
            ms(percentile(latencies, 100.0)),
        );
    }
    println!(
        "served (2xx-4xx but 429): p50 {}  p90 {}  p99 {}  max {}",
        ms(percentile(&served, 50.0)),
        ms(percentile(&served, 90.0)),
        ms(percentile(&served, 99.0)),
        ms(percentile(&served, 100.0)),
    );
}
