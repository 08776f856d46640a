//! `sustained`, `status` and `mixed`: every connection sends requests for a fixed duration.
//!
//! Request `i` of the run goes to buyer `i` (each purchase a distinct buyer), or to buyer
//! `i mod N` with a buyer pool (`--buyer-pool`, and always with `--identity accounts`). With a rate, it
//! is scheduled at `release + i / rate` and its latency counts from that instant, so a server
//! that stalls cannot hide the requests it delayed (the coordinated-omission trap oha avoids);
//! without one, the run is closed loop and latency counts from the send.

use super::{Plan, Progress, collect};
use crate::client::Conn;
use crate::outcome::{Log, Op};
use hyper::Method;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What each request is.
#[derive(Debug, Clone, Copy)]
pub enum Mix {
    /// Purchases only, each by a new buyer.
    Buy,
    /// Status reads only.
    Status,
    /// Status reads with this share (0..=1), purchases otherwise.
    Mixed(f64),
}

impl Mix {
    /// The operation of request `i`; spreads the share evenly over the sequence.
    pub fn op(self, i: u64) -> Op {
        match self {
            Mix::Buy => Op::Buy,
            Mix::Status => Op::Status,
            Mix::Mixed(share) => {
                let per_mille = (share.clamp(0.0, 1.0) * 1000.0).round() as u64;
                if (i.wrapping_mul(7919) % 1000) < per_mille {
                    Op::Status
                } else {
                    Op::Buy
                }
            }
        }
    }
}

/// Runs for `duration` from the plan's release over `conns`, at `rate` requests/s in total if
/// given. Returns the merged log and the measured wall time.
pub async fn run(
    plan: &Plan,
    conns: Vec<Conn>,
    mix: Mix,
    duration: Duration,
    rate: Option<f64>,
) -> anyhow::Result<(Log, Duration)> {
    let next = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress::default());
    let plan = Arc::new(plan.clone());
    let orders: Arc<str> = plan.orders_path().into();
    let status: Arc<str> = plan.status_path().into();
    let release_at = plan.release_at;
    let end = release_at + duration;
    let interval = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut workers = JoinSet::new();
    for mut conn in conns {
        let (next, progress, plan, orders, status) = (
            Arc::clone(&next),
            Arc::clone(&progress),
            Arc::clone(&plan),
            Arc::clone(&orders),
            Arc::clone(&status),
        );
        workers.spawn(async move {
            let mut log = Log::default();
            tokio::time::sleep_until(release_at).await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let start = match interval {
                    Some(every) => {
                        let at = release_at + every.mul_f64(i as f64);
                        if at >= end {
                            break;
                        }
                        tokio::time::sleep_until(at).await;
                        at
                    }
                    None => {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        now
                    }
                };
                match mix.op(i) {
                    Op::Buy => {
                        let buyer = plan.buyer_of(i);
                        let user = plan.user(buyer);
                        let result = conn
                            .send_as(
                                Method::POST,
                                &orders,
                                Some(plan.buy_body(&user)),
                                plan.authorization(buyer),
                            )
                            .await;
                        log.record(Op::Buy, &user, result, start.elapsed());
                    }
                    Op::Status => {
                        let result = conn.send(Method::GET, &status, None).await;
                        log.record(Op::Status, "", result, start.elapsed());
                    }
                }
                progress.tick();
            }
            log
        });
    }
    let printer = progress.spawn_printer(release_at, None);
    let log = collect(workers).await;
    printer.abort();
    // Requests in flight at the end are waited for, so the wall time can exceed `duration`.
    let took = release_at.elapsed();
    Ok((log?, took))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_share_is_respected_over_a_thousand_requests() {
        let reads = (0..1000)
            .filter(|i| Mix::Mixed(0.9).op(*i) == Op::Status)
            .count();
        assert_eq!(reads, 900);
        assert!((0..100).all(|i| Mix::Buy.op(i) == Op::Buy));
    }

    #[test]
    fn a_pool_cycles_through_its_buyers() {
        let mut plan = Plan {
            sale_id: 1,
            user_prefix: "t".into(),
            release_at: Instant::now(),
            pool: Some(3),
            accounts: None,
        };
        let buyers: Vec<_> = (0..7).map(|i| plan.buyer_of(i)).collect();
        assert_eq!(buyers, [0, 1, 2, 0, 1, 2, 0]);
        plan.pool = None;
        assert_eq!(plan.buyer_of(7), 7);
    }
}
