//! The scenarios: what each worker sends, when, and to whom.
//!
//! All of them share the same shape: open and warm every connection first (so connecting is
//! never part of the measurement), release the workers together at one instant, and let each
//! worker append to its own [`Log`]. Bursts ([`burst`]) hand out a fixed list of attempts;
//! timed runs ([`timed`]) go on for a duration, optionally at a scheduled rate.

pub mod burst;
pub mod timed;

use crate::accounts::Prepared;
use crate::client::{Conn, Target};
use crate::outcome::Log;
use hyper::Method;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Connections opened at once while warming up: a burst of 10,000 SYNs would overflow the
/// server's accept backlog and turn into 1 s+ retransmits inside the measurement.
const CONNECT_PARALLELISM: usize = 256;

/// What the scenario needs to know about the run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The sale under load.
    pub sale_id: u64,
    /// Prefix of generated buyer ids (JSON-safe, URL-safe).
    pub user_prefix: String,
    /// The instant the workers start.
    pub release_at: Instant,
    /// Timed runs: request `i` is buyer `i mod pool` (`None`: buyer `i`).
    pub pool: Option<u64>,
    /// `--identity accounts`: the signed-in buyers, by buyer number.
    pub accounts: Option<Arc<Prepared>>,
}

impl Plan {
    /// The purchase path.
    pub fn orders_path(&self) -> String {
        format!("/api/sales/{}/orders", self.sale_id)
    }

    /// The status path.
    pub fn status_path(&self) -> String {
        format!("/api/sales/{}", self.sale_id)
    }

    /// The `n`-th generated buyer id.
    pub fn user(&self, n: u64) -> String {
        format!("{}-{n}", self.user_prefix)
    }

    /// The buyer number of request `i` of a timed run.
    pub fn buyer_of(&self, i: u64) -> u64 {
        match self.pool {
            Some(pool) => i % pool.max(1),
            None => i,
        }
    }

    /// The `Authorization` value buyer number `n` sends (`None` for guests).
    pub fn authorization(&self, n: u64) -> Option<&str> {
        self.accounts.as_ref().and_then(|a| a.authorization_of(n))
    }

    /// The purchase body of `user_id`: a signed-in buyer is named by their token alone.
    pub fn buy_body(&self, user_id: &str) -> bytes::Bytes {
        match self.accounts {
            Some(_) => bytes::Bytes::from_static(br#"{"quantity":1}"#),
            None => buy_body(user_id),
        }
    }
}

/// Builds a purchase body for one unit.
pub fn buy_body(user_id: &str) -> bytes::Bytes {
    // `Value`'s Display escapes the id (a `--user-prefix` may hold quotes); no `Value` map
    // is built per request.
    let id = serde_json::Value::from(user_id);
    format!(r#"{{"user_id":{id},"quantity":1}}"#).into()
}

/// Opens `count` keep-alive connections spread round-robin over `targets` and sends each one
/// `GET /healthz` so the server has accepted and served it. Returns the connections and how
/// many could not be warmed (they are kept and reopened on first use).
pub async fn open_connections(
    targets: &[Arc<Target>],
    count: usize,
    timeout: Duration,
) -> (Vec<Conn>, usize) {
    let mut conns = Vec::with_capacity(count);
    let mut failed = 0;
    let mut pending = JoinSet::new();
    let mut next = 0;
    while conns.len() + failed < count {
        while next < count && pending.len() < CONNECT_PARALLELISM {
            let target = Arc::clone(&targets[next % targets.len()]);
            pending.spawn(async move {
                let mut conn = Conn::new(target, timeout);
                let warmed = conn.send(Method::GET, "/healthz", None).await.is_ok();
                (conn, warmed)
            });
            next += 1;
        }
        match pending.join_next().await {
            Some(Ok((conn, warmed))) => {
                if !warmed {
                    failed += 1;
                }
                conns.push(conn);
            }
            Some(Err(_)) => failed += 1,
            None => break,
        }
    }
    (conns, failed)
}

/// Counts finished requests and prints a progress line to stderr every second while a run
/// lasts longer than that.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
}

impl Progress {
    /// Counts one finished request.
    pub fn tick(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests finished so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Starts the progress printer; it stops when the returned handle is aborted.
    pub fn spawn_printer(
        self: &Arc<Self>,
        start: Instant,
        expected: Option<u64>,
    ) -> tokio::task::JoinHandle<()> {
        let progress = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            let mut last = 0;
            loop {
                tick.tick().await;
                let done = progress.done();
                let of = expected.map(|e| format!("/{e}")).unwrap_or_default();
                eprintln!(
                    "[{:>5.1}s] {done}{of} requests, {} req/s",
                    start.elapsed().as_secs_f64(),
                    done - last
                );
                last = done;
            }
        })
    }
}

/// Waits for every worker and merges their logs.
pub async fn collect(mut workers: JoinSet<Log>) -> anyhow::Result<Log> {
    let mut all = Log::default();
    while let Some(log) = workers.join_next().await {
        all.merge(log?);
    }
    Ok(all)
}
