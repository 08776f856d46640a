//! `herd` and `duplicates`: a fixed list of purchase attempts, every connection already open,
//! all released at the same instant (the sale's start, or at once for an active sale).
//!
//! Latency is measured from the release instant, not from when a worker got round to the
//! attempt: every buyer pressed "Buy" at the release, so time spent waiting for a free
//! connection on the client is part of what the buyer sees (no coordinated omission).

use super::{Plan, Progress, collect};
use crate::client::Conn;
use crate::outcome::{Log, Op};
use bytes::Bytes;
use hyper::Method;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// One purchase attempt to make.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The buyer.
    pub user_id: String,
    /// The request body, built before the release.
    pub body: Bytes,
    /// The buyer's `Authorization` value (`--identity accounts`).
    pub auth: Option<Arc<str>>,
}

/// The attempts of a burst: `buyers` distinct buyers, `each` attempts apiece, a buyer's
/// attempts adjacent so that they are taken by different connections at the same moment.
pub fn attempts(plan: &Plan, buyers: u64, each: u64) -> Vec<Attempt> {
    let mut out = Vec::with_capacity(usize::try_from(buyers.saturating_mul(each)).unwrap_or(0));
    for b in 0..buyers {
        let user_id = plan.user(b);
        let body = plan.buy_body(&user_id);
        let auth: Option<Arc<str>> = plan.authorization(b).map(Arc::from);
        for _ in 0..each {
            out.push(Attempt {
                user_id: user_id.clone(),
                body: body.clone(),
                auth: auth.clone(),
            });
        }
    }
    out
}

/// Runs the burst over `conns`; returns the merged log and the time from the release to the
/// last answer.
pub async fn run(
    plan: &Plan,
    conns: Vec<Conn>,
    attempts: Arc<Vec<Attempt>>,
) -> anyhow::Result<(Log, std::time::Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(conns.len()));
    let progress = Arc::new(Progress::default());
    let path: Arc<str> = plan.orders_path().into();
    let release_at = plan.release_at;
    let mut workers = JoinSet::new();
    for mut conn in conns {
        let (next, barrier, progress, attempts, path) = (
            Arc::clone(&next),
            Arc::clone(&barrier),
            Arc::clone(&progress),
            Arc::clone(&attempts),
            Arc::clone(&path),
        );
        workers.spawn(async move {
            let mut log = Log::default();
            barrier.wait().await;
            tokio::time::sleep_until(release_at).await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(attempt) = attempts.get(i) else {
                    break;
                };
                let result = conn
                    .send_as(
                        Method::POST,
                        &path,
                        Some(attempt.body.clone()),
                        attempt.auth.as_deref(),
                    )
                    .await;
                log.record(Op::Buy, &attempt.user_id, result, release_at.elapsed());
                progress.tick();
            }
            log
        });
    }
    let printer =
        progress.spawn_printer(release_at.max(Instant::now()), Some(attempts.len() as u64));
    let log = collect(workers).await;
    printer.abort();
    let took = release_at.elapsed();
    Ok((log?, took))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buyers_attempts_are_adjacent_and_share_one_body() {
        let plan = Plan {
            sale_id: 1,
            user_prefix: "t".into(),
            release_at: Instant::now(),
            pool: None,
            accounts: None,
        };
        let list = attempts(&plan, 2, 3);
        let users: Vec<_> = list.iter().map(|a| a.user_id.as_str()).collect();
        assert_eq!(users, ["t-0", "t-0", "t-0", "t-1", "t-1", "t-1"]);
        assert_eq!(&list[0].body[..], br#"{"user_id":"t-0","quantity":1}"#);
    }

    #[test]
    fn signed_in_buyers_send_their_token_and_no_user_id() {
        let prepared = crate::accounts::Prepared {
            authorization: vec!["Bearer zero".into(), "Bearer one".into()],
            ..Default::default()
        };
        let plan = Plan {
            sale_id: 1,
            user_prefix: "t".into(),
            release_at: Instant::now(),
            pool: None,
            accounts: Some(Arc::new(prepared)),
        };
        let list = attempts(&plan, 2, 2);
        let auth: Vec<_> = list.iter().map(|a| a.auth.as_deref()).collect();
        assert_eq!(
            auth,
            [
                Some("Bearer zero"),
                Some("Bearer zero"),
                Some("Bearer one"),
                Some("Bearer one")
            ]
        );
        assert_eq!(&list[0].body[..], br#"{"quantity":1}"#);
        assert_eq!(list[2].user_id, "t-1");
    }
}
