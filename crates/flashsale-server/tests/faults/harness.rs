//! What every fault test shares: the test's own PostgreSQL schema and Redis key prefix (dropped
//! however the test ends), the real `flashsale` binary started on the host or inside a
//! namespace and reaching the stores only through chaos proxies, buyers that record every
//! answer, and the checks of the answers against what PostgreSQL holds at quiet.

use crate::chaos::ChaosProxy;
use crate::netns::{Link, Netns};
use flashsale_testkit::isolation::{Cleanup, database_url, redis_url, unique};
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Semaphore;

/// The admin token of every instance (16+ characters, as the binary requires).
pub const TOKEN: &str = "faults-admin-token-16plus";

/// How long the reconciler may take to resolve every reservation once the faults are healed:
/// the 10 s lease, one 1 s reconciler round, and slack for a loaded 2-core machine.
pub const QUIET_BOUND: Duration = Duration::from_secs(20);

/// `scheme://user@` + `host:port` + `/rest` of a URL, so the host can be swapped for a proxy.
fn split_url(url: &str) -> (String, SocketAddr, String) {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let after = &url[scheme_end..];
    let path_at = after.find('/').unwrap_or(after.len());
    let authority = &after[..path_at];
    let host_at = authority.rfind('@').map_or(0, |i| i + 1);
    let host_port = &authority[host_at..];
    let addr = host_port
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("{host_port} in {url}: {e}"))
        .next()
        .unwrap_or_else(|| panic!("{host_port} resolves to nothing"));
    (
        url[..scheme_end + host_at].to_owned(),
        addr,
        after[path_at..].to_owned(),
    )
}

/// Milliseconds since the Unix epoch (the clock uuid v7 order ids carry).
pub fn unix_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The test's PostgreSQL schema and Redis prefix; dropped and deleted however the test ends.
pub struct Stores {
    /// Schema name and key prefix.
    pub name: String,
    /// When the test began (for the run time in its tally line).
    pub began: Instant,
    /// Holds the instances' logs (removed with it).
    pub logs: tempfile::TempDir,
    /// Drops the schema and deletes the keys (after `drop` has printed the logs).
    _cleanup: Cleanup,
}

impl Stores {
    /// A fresh name for `label`.
    pub fn new(label: &str) -> Self {
        let name = unique(&format!("faults_{}", label.replace('-', "_")));
        Self {
            _cleanup: Cleanup::named(&name),
            name,
            began: Instant::now(),
            logs: tempfile::TempDir::new().unwrap(),
        }
    }

    /// A PostgreSQL client on the test's schema (directly, not through any proxy).
    pub async fn pg(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// A Redis connection (directly).
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Stores {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_logs(&self.logs.path().to_path_buf());
        }
    }
}

/// The last lines of each instance log, printed when a test fails.
fn print_logs(dir: &PathBuf) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        eprintln!(
            "--- last lines of {} ---\n{}",
            entry.path().display(),
            tail.join("\n")
        );
    }
}

/// Where an instance runs.
#[derive(Clone, Copy)]
pub enum Site<'a> {
    /// On the host, the proxies on 127.0.0.1.
    Host,
    /// Inside the namespace, the proxies on its host-side addresses.
    Netns(&'a Netns),
}

impl Site<'_> {
    fn proxy_listen(&self, link: Link) -> SocketAddr {
        match self {
            Site::Host => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            Site::Netns(ns) => SocketAddr::new(IpAddr::V4(ns.store_address(link)), 0),
        }
    }

    /// An HTTP client for this site (bound to the namespace's client address when inside).
    pub fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            // Above the server's 10 s request timeout: its `503 timeout` comes first.
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(2));
        if let Site::Netns(ns) = self {
            builder = builder.local_address(IpAddr::V4(ns.client_address()));
        }
        builder.build().unwrap()
    }
}

/// One instance's two store links, each through its own chaos proxy.
pub struct Links {
    /// Instance to Redis.
    pub redis: ChaosProxy,
    /// Instance to PostgreSQL.
    pub pg: ChaosProxy,
}

impl Links {
    /// Starts both proxies for an instance at `site`.
    pub async fn start(site: Site<'_>) -> Self {
        let (_, redis_up, _) = split_url(&redis_url());
        let (_, pg_up, _) = split_url(&database_url());
        Self {
            redis: ChaosProxy::start(site.proxy_listen(Link::Redis), redis_up)
                .await
                .unwrap(),
            pg: ChaosProxy::start(site.proxy_listen(Link::Postgres), pg_up)
                .await
                .unwrap(),
        }
    }

    fn urls(&self) -> (String, String) {
        let (scheme, _, rest) = split_url(&redis_url());
        let redis = format!("{scheme}{}{rest}", self.redis.addr());
        let (scheme, _, rest) = split_url(&database_url());
        let pg = format!("{scheme}{}{rest}", self.pg.addr());
        (redis, pg)
    }
}

/// The real `flashsale` binary, killed (SIGKILL) when dropped.
pub struct Instance {
    /// `http://address:port`, as the test's client reaches it.
    pub base: String,
    /// The client to use for it.
    pub client: reqwest::Client,
    command: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Instance {
    /// Starts an instance named `label` at `site` on `links`, and waits until it is ready.
    pub async fn start(stores: &Stores, label: &str, site: Site<'_>, links: &Links) -> Self {
        let (redis, pg) = links.urls();
        let (listen, base) = match site {
            Site::Host => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                (
                    format!("127.0.0.1:{port}"),
                    format!("http://127.0.0.1:{port}"),
                )
            }
            // The namespace is the instance's own: any fixed port is free there.
            Site::Netns(ns) => (
                "0.0.0.0:8080".to_owned(),
                format!("http://{}:8080", ns.instance_address()),
            ),
        };
        let bin = env!("CARGO_BIN_EXE_flashsale").to_owned();
        let mut command = match site {
            Site::Host => vec![bin],
            Site::Netns(ns) => vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                ns.name.clone(),
                bin,
            ],
        };
        let data_dir = stores.logs.path().join(format!("data-{label}"));
        command.extend(
            [
                "--store",
                "redis",
                "--redis-url",
                &redis,
                "--database-url",
                &pg,
                "--redis-prefix",
                &stores.name,
                "--pg-schema",
                &stores.name,
                "--listen",
                &listen,
                "--admin-token",
                TOKEN,
                "--rate-limit",
                "off",
                "--demo-sale",
                "off",
                "--data-dir",
                &data_dir.to_string_lossy(),
            ]
            .map(String::from),
        );
        let mut instance = Self {
            base,
            client: site.client(),
            command,
            log: stores.logs.path().join(format!("{label}.log")),
            child: None,
        };
        instance.spawn();
        instance.wait_ready(Duration::from_secs(30)).await;
        instance
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // `ip netns exec` execs the binary in its own process, so this pid is flashsale's.
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no flush, no settle, no goodbye.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again with the same command and waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill_9();
        self.spawn();
        self.wait_ready(Duration::from_secs(30)).await;
    }

    async fn wait_ready(&self, bound: Duration) {
        if let Err(e) = self.await_readiness(true, bound).await {
            panic!("instance {} never became ready: {e}", self.base);
        }
    }

    /// Polls `/readyz` until it answers 200 (`ready`) or 503 (`!ready`); the time it took.
    pub async fn await_readiness(&self, ready: bool, bound: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let want = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut last = String::new();
        while start.elapsed() < bound {
            match self
                .client
                .get(format!("{}/readyz", self.base))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(r) if r.status() == want => return Ok(start.elapsed()),
                Ok(r) => last = r.status().to_string(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "/readyz not {} within {bound:?} (last: {last})",
            want.as_u16()
        ))
    }

    /// Creates a sale open from a second ago for an hour; its id.
    pub async fn create_sale(&self, stock: u32, limit: u32) -> i64 {
        let now = OffsetDateTime::now_utc();
        let response = self
            .client
            .post(format!("{}/api/admin/sales", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({
                "name": "Fault sale",
                "starts_at": (now - time::Duration::seconds(1)).format(&Rfc3339).unwrap(),
                "ends_at": (now + time::Duration::hours(1)).format(&Rfc3339).unwrap(),
                "stock": stock, "per_user_limit": limit,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["sale_id"].as_i64().unwrap()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// What one attempt got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP answer: status, `code`, and the order id if the body named one.
    Http {
        /// HTTP status.
        status: u16,
        /// The body's `code`.
        code: String,
        /// `order.order_id`, when present.
        order_id: Option<String>,
    },
    /// No HTTP answer (connection refused or broken, client timeout): outcome unknown.
    Transport,
}

impl Answer {
    /// The tally's label: `201`, `409 sold_out`, `503 unavailable`, `transport`...
    pub fn category(&self) -> String {
        match self {
            Answer::Http { status: 201, .. } => "201".into(),
            Answer::Http { status, code, .. } => format!("{status} {code}"),
            Answer::Transport => "transport_error".into(),
        }
    }

    /// `503 unavailable` or `overloaded`: the answer says nothing was taken.
    pub fn says_nothing_taken(&self) -> bool {
        matches!(self, Answer::Http { status: 503, code, .. } if code == "unavailable" || code == "overloaded")
    }

    /// An answer that leaves the outcome open (`503 timeout`, no answer).
    pub fn is_unknown(&self) -> bool {
        matches!(self, Answer::Transport)
            || matches!(self, Answer::Http { status: 503, code, .. } if code == "timeout")
    }

    /// A decision (anything but a 503 or no answer): a key's replays must repeat it.
    pub fn is_decision(&self) -> bool {
        !self.is_unknown() && !self.says_nothing_taken()
    }
}

/// One attempt, as the client saw it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The buyer.
    pub user: String,
    /// Its `Idempotency-Key`, if any.
    pub key: Option<String>,
    /// Which target it went to.
    pub target: usize,
    /// The test's phase when it was sent.
    pub phase: &'static str,
    /// Unix ms just before sending.
    pub sent_ms: i64,
    /// Unix ms once the answer (or the failure) was in.
    pub answered_ms: i64,
    /// What came back.
    pub answer: Answer,
}

/// A buyer of the test's crowd.
#[derive(Debug, Clone)]
pub struct Buyer {
    /// Buyer id.
    pub user: String,
    /// Uses an `Idempotency-Key` and retries with the same key.
    pub keyed: bool,
    /// Units wanted, one per purchase.
    pub want: u32,
    /// After getting them, tries once more (to be told `already_purchased`).
    pub then_again: bool,
    /// The target of the first attempt; retries go to the next one.
    pub home: usize,
}

/// `n` buyers named `prefix-i`: every other one keyed, every third wanting `limit` units (else
/// one), every fourth trying once more once served, spread over `targets`.
pub fn crowd(prefix: &str, n: usize, limit: u32, targets: usize) -> Vec<Buyer> {
    (0..n)
        .map(|i| Buyer {
            user: format!("{prefix}-{i}"),
            keyed: i % 2 == 0,
            want: if i % 3 == 0 { limit } else { 1 },
            then_again: i % 4 == 1,
            home: i % targets,
        })
        .collect()
}

/// How a buyer retries.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Attempts per buyer at most.
    pub max_attempts: u32,
    /// Pause before a retry (a client's back-off, not a wait on a condition).
    pub backoff: Duration,
}

/// Sends buyers at the instances through a bounded number of concurrent clients and records
/// every answer.
#[derive(Clone)]
pub struct Traffic {
    targets: Arc<Vec<(String, reqwest::Client)>>,
    sale: i64,
    records: Arc<Mutex<Vec<Record>>>,
    slots: Arc<Semaphore>,
    policy: Policy,
}

impl Traffic {
    /// Traffic for `sale` over `targets` (base URL and client), `concurrency` buyers at a time.
    pub fn new(
        targets: Vec<(String, reqwest::Client)>,
        sale: i64,
        concurrency: usize,
        policy: Policy,
    ) -> Self {
        Self {
            targets: Arc::new(targets),
            sale,
            records: Arc::new(Mutex::new(Vec::new())),
            slots: Arc::new(Semaphore::new(concurrency)),
            policy,
        }
    }

    /// Every attempt so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().clone()
    }

    /// Runs `buyers` to the end (each bounded by the policy's attempts).
    pub async fn run(&self, buyers: Vec<Buyer>, phase: &'static str) {
        self.spawn(buyers, phase).await.unwrap();
    }

    /// Runs `buyers` in the background.
    pub fn spawn(&self, buyers: Vec<Buyer>, phase: &'static str) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for buyer in buyers {
                let this = this.clone();
                tasks.spawn(async move {
                    let _slot = this.slots.clone().acquire_owned().await.unwrap();
                    this.buyer(buyer, phase).await;
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        })
    }

    async fn buyer(&self, buyer: Buyer, phase: &'static str) {
        let fresh = || Some(uuid::Uuid::now_v7().to_string());
        let mut key = if buyer.keyed { fresh() } else { None };
        let (mut got, mut target) = (0, buyer.home);
        let mut again = buyer.then_again;
        for _ in 0..self.policy.max_attempts {
            let answer = self
                .attempt(target, &buyer.user, key.as_deref(), phase)
                .await;
            if matches!(answer, Answer::Http { status: 201, .. }) {
                got += 1;
                if got < buyer.want {
                    key = if buyer.keyed { fresh() } else { None };
                    continue;
                }
                if !again {
                    return;
                }
                again = false;
                key = if buyer.keyed { fresh() } else { None };
                continue;
            }
            if answer.is_decision() {
                return;
            }
            // Failed: retry on the next instance, keyed buyers with the same key (a replay of
            // the same purchase); others after a `503 unavailable` at once (nothing was taken),
            // and after an unknown outcome only once "did I get one?" says they lack units.
            target = (target + 1) % self.targets.len();
            if answer.is_unknown()
                && !buyer.keyed
                && let Some(held) = self.orders_held(target, &buyer.user).await
            {
                got = got.max(held);
                if got >= buyer.want {
                    return;
                }
            }
            tokio::time::sleep(self.policy.backoff).await;
        }
    }

    /// One purchase of one unit; recorded.
    pub async fn attempt(
        &self,
        target: usize,
        user: &str,
        key: Option<&str>,
        phase: &'static str,
    ) -> Answer {
        let (base, client) = &self.targets[target];
        let mut request = client
            .post(format!("{base}/api/sales/{}/orders", self.sale))
            .json(&json!({ "user_id": user, "quantity": 1 }));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let sent_ms = unix_ms();
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.json::<Value>().await {
                    Ok(body) => Answer::Http {
                        status,
                        code: body["code"].as_str().unwrap_or("").to_owned(),
                        order_id: body["order"]["order_id"].as_str().map(str::to_owned),
                    },
                    Err(_) => Answer::Transport,
                }
            }
            Err(_) => Answer::Transport,
        };
        self.records.lock().push(Record {
            user: user.to_owned(),
            key: key.map(str::to_owned),
            target,
            phase,
            sent_ms,
            answered_ms: unix_ms(),
            answer: answer.clone(),
        });
        answer
    }

    async fn orders_held(&self, target: usize, user: &str) -> Option<u32> {
        let (base, client) = &self.targets[target];
        let response = client
            .get(format!("{base}/api/sales/{}/orders/{user}", self.sale))
            .send()
            .await
            .ok()?;
        match response.status() {
            StatusCode::NOT_FOUND => Some(0),
            StatusCode::OK => {
                let body: Value = response.json().await.ok()?;
                Some(body["orders"].as_array()?.len() as u32)
            }
            _ => None,
        }
    }

    /// Replays every key once on every target (at quiet), recorded as phase `replay`.
    pub async fn replay_keys(&self) {
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        for r in self.records() {
            if let Some(key) = r.key {
                keys.insert(key, r.user);
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (key, user) in keys {
            let this = self.clone();
            tasks.spawn(async move {
                let _slot = this.slots.clone().acquire_owned().await.unwrap();
                for target in 0..this.targets.len() {
                    this.attempt(target, &user, Some(&key), "replay").await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    }

    /// The first attempt sent after `since_ms` that was confirmed, as ms after `since_ms`.
    pub fn first_confirmed_after(&self, since_ms: i64) -> Option<i64> {
        self.records()
            .iter()
            .filter(|r| {
                r.sent_ms >= since_ms && matches!(r.answer, Answer::Http { status: 201, .. })
            })
            .map(|r| r.answered_ms - since_ms)
            .min()
    }
}

/// Answers per category, e.g. `201=57 409 sold_out=120 503 unavailable=12`.
pub fn tally(records: &[Record]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in records {
        *counts.entry(r.answer.category()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The tally of every attempt but the replays at quiet, then per phase in order of first use.
pub fn tallies(records: &[Record]) -> String {
    let traffic: Vec<Record> = records
        .iter()
        .filter(|r| r.phase != "replay")
        .cloned()
        .collect();
    let mut phases: Vec<&str> = Vec::new();
    for r in records {
        if !phases.contains(&r.phase) {
            phases.push(r.phase);
        }
    }
    let per_phase: Vec<String> = phases
        .iter()
        .map(|p| {
            let part: Vec<Record> = records.iter().filter(|r| r.phase == *p).cloned().collect();
            format!("{p}: {}", tally(&part))
        })
        .collect();
    format!("{} [{}]", tally(&traffic), per_phase.join("; "))
}

/// An order on record in PostgreSQL.
#[derive(Debug, Clone)]
pub struct OrderRow {
    /// Order id (uuid v7: its first 48 bits are the instant the attempt began, in Unix ms).
    pub order_id: String,
    /// Buyer.
    pub user: String,
    /// Units.
    pub quantity: i32,
    /// The key it was bought with.
    pub key: Option<String>,
}

impl OrderRow {
    fn began_ms(&self) -> i64 {
        began_ms(&self.order_id)
    }
}

/// When the attempt that made order (or reservation) `id` began: a uuid v7's Unix ms.
fn began_ms(id: &str) -> i64 {
    uuid::Uuid::parse_str(id)
        .ok()
        .and_then(|u| u.get_timestamp())
        .map_or(0, |t| {
            let (s, n) = t.to_unix();
            s as i64 * 1000 + i64::from(n / 1_000_000)
        })
}

/// Waits until no reservation of `sale` is live in Redis and `remaining + sold = stock`
/// (every admitted attempt resolved by its instance or the reconciler), within [`QUIET_BOUND`].
pub async fn wait_quiet(stores: &Stores, sale: i64) -> Result<Duration, String> {
    let start = Instant::now();
    let pg = stores.pg().await;
    let mut redis = stores.redis().await;
    let tag = format!("{{{}:sale:{sale}}}", stores.name);
    let mut last = String::new();
    while start.elapsed() < QUIET_BOUND {
        let live: i64 = redis::cmd("ZCARD")
            .arg(format!("{tag}:leases"))
            .query_async(&mut redis)
            .await
            .unwrap_or(-1);
        let remaining: Option<i64> = redis::cmd("HGET")
            .arg(format!("{tag}:meta"))
            .arg("remaining")
            .query_async(&mut redis)
            .await
            .unwrap_or(None);
        let row = pg
            .query_one(
                &format!(
                    "SELECT sold::int8, stock::int8 FROM \"{}\".sales WHERE id = $1",
                    stores.name
                ),
                &[&sale],
            )
            .await
            .unwrap();
        let (sold, stock): (i64, i64) = (row.get(0), row.get(1));
        if live == 0 && remaining.is_some_and(|r| r + sold == stock) {
            return Ok(start.elapsed());
        }
        last = format!(
            "live reservations {live}, remaining {remaining:?}, sold {sold}, stock {stock}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("not quiet within {QUIET_BOUND:?}: {last}"))
}

/// Checks every answer against what PostgreSQL holds at quiet; the list of violations (each
/// with its evidence), empty when every answer was true and every invariant holds.
pub async fn violations(stores: &Stores, sale: i64, records: &[Record]) -> Vec<String> {
    let pg = stores.pg().await;
    let schema = &stores.name;
    let row = pg
        .query_one(
            &format!("SELECT sold, stock, per_user_limit FROM \"{schema}\".sales WHERE id = $1"),
            &[&sale],
        )
        .await
        .unwrap();
    let (sold, stock, limit): (i32, i32, i32) = (row.get(0), row.get(1), row.get(2));
    let orders: Vec<OrderRow> = pg
        .query(
            &format!(
                "SELECT order_id::text, user_id, quantity, idempotency_key
                 FROM \"{schema}\".orders WHERE sale_id = $1"
            ),
            &[&sale],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| OrderRow {
            order_id: r.get(0),
            user: r.get(1),
            quantity: r.get(2),
            key: r.get(3),
        })
        .collect();
    let mut out = Vec::new();

    // Stock and limit (IM-4, NF-7, NF-8).
    let units: i64 = orders.iter().map(|o| i64::from(o.quantity)).sum();
    if sold > stock || units != i64::from(sold) {
        out.push(format!(
            "stock: sales.sold {sold}, stock {stock}, units in orders {units}"
        ));
    }
    let mut by_user: HashMap<&str, Vec<&OrderRow>> = HashMap::new();
    for o in &orders {
        by_user.entry(o.user.as_str()).or_default().push(o);
    }
    for (user, held) in &by_user {
        let units: i32 = held.iter().map(|o| o.quantity).sum();
        if units > limit {
            out.push(format!("limit: {user} holds {units} > {limit}"));
        }
    }
    // `409 sold_out` says no unit is left, and an ended sale never reopens (FL-5): if units
    // are still unsold at quiet, every sold_out answer given before was untrue (the units were
    // held by reservations that later went back to stock).
    let told_sold_out: Vec<&Record> = records
        .iter()
        .filter(
            |r| matches!(&r.answer, Answer::Http { status: 409, code, .. } if code == "sold_out"),
        )
        .collect();
    if sold < stock && !told_sold_out.is_empty() {
        // Evidence: the reservations released (stock handed back) and when they began.
        let released: Vec<String> = pg
            .query(
                &format!(
                    "SELECT order_id::text FROM \"{schema}\".reservations
                     WHERE sale_id = $1 AND resolution = 'released'"
                ),
                &[&sale],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut began_in: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &released {
            let began = began_ms(id);
            let phase = records
                .iter()
                .filter(|r| r.sent_ms <= began && began <= r.answered_ms)
                .map(|r| r.phase)
                .next()
                .unwrap_or("no attempt in flight");
            *began_in.entry(phase).or_default() += 1;
        }
        out.push(format!(
            "evidence: {} reservations released by quiet, begun in phases {began_in:?}",
            released.len()
        ));
        let first = told_sold_out
            .iter()
            .map(|r| r.answered_ms)
            .min()
            .unwrap_or(0);
        out.push(format!(
            "untrue sold_out (FL-4, FL-5): {} answers (first at {first}, phases {:?}) yet at quiet only {sold} of {stock} units are sold",
            told_sold_out.len(),
            told_sold_out
                .iter()
                .map(|r| r.phase)
                .collect::<std::collections::BTreeSet<_>>()
        ));
    }
    let by_id: HashMap<&str, &OrderRow> = orders.iter().map(|o| (o.order_id.as_str(), o)).collect();
    let confirmed_ids: std::collections::HashSet<&str> = records
        .iter()
        .filter_map(|r| match &r.answer {
            Answer::Http {
                status: 201,
                order_id,
                ..
            } => order_id.as_deref(),
            _ => None,
        })
        .collect();

    for r in records {
        let held = by_user.get(r.user.as_str()).cloned().unwrap_or_default();
        match &r.answer {
            // `201 confirmed`: the order is in PostgreSQL, the buyer's.
            Answer::Http {
                status: 201,
                order_id,
                ..
            } => {
                let id = order_id.as_deref().unwrap_or("");
                if by_id.get(id).is_none_or(|o| o.user != r.user) {
                    out.push(format!(
                        "lost confirmation: {} got 201 order {id} (phase {}), not on record",
                        r.user, r.phase
                    ));
                }
            }
            // `409 already_purchased`: the buyer holds units.
            Answer::Http {
                status: 409, code, ..
            } if code == "already_purchased" && held.is_empty() => {
                out.push(format!(
                    "untrue already_purchased: {} (phase {}, key {:?}) has no order on record",
                    r.user, r.phase, r.key
                ));
            }
            // `503 unavailable`/`overloaded`: nothing was taken by this attempt, nor (keyed) by
            // the purchase its key names before it was answered.
            a if a.says_nothing_taken() => {
                for o in &held {
                    if confirmed_ids.contains(o.order_id.as_str()) && o.key.is_none() {
                        continue;
                    }
                    let began = o.began_ms();
                    let from_this = r.key.is_none() && began >= r.sent_ms && began <= r.answered_ms;
                    let from_its_key = r.key.is_some() && o.key == r.key && began <= r.answered_ms;
                    if from_this || from_its_key {
                        out.push(format!(
                            "untrue {}: {} (phase {}, key {:?}, to instance {}) answered at {} but order {} (begun {}) is on record",
                            a.category(), r.user, r.phase, r.key, r.target, r.answered_ms, o.order_id, began
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    // Replays: once a key is decided, every later decided answer is the same; and the key's
    // final answer agrees with the record (an order with the key <=> 201 with that order).
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        if let Some(k) = &r.key {
            by_key.entry(k.as_str()).or_default().push(r);
        }
    }
    for (key, attempts) in &by_key {
        let decided: Vec<&&Record> = attempts.iter().filter(|r| r.answer.is_decision()).collect();
        if let Some(first) = decided.first()
            && let Some(other) = decided.iter().find(|r| r.answer != first.answer)
        {
            out.push(format!(
                "replay differs: key {key} of {}: {:?} ({}) then {:?} ({})",
                first.user, first.answer, first.phase, other.answer, other.phase
            ));
        }
        let on_record = orders.iter().find(|o| o.key.as_deref() == Some(*key));
        for replay in attempts.iter().filter(|r| r.phase == "replay") {
            let agrees = match (on_record, &replay.answer) {
                (
                    Some(o),
                    Answer::Http {
                        status: 201,
                        order_id: Some(id),
                        ..
                    },
                ) => *id == o.order_id,
                (Some(_), _) => false,
                (None, Answer::Http { status: 201, .. }) => false,
                (None, _) => true,
            };
            if !agrees {
                out.push(format!(
                    "replay disagrees with the record: key {key} of {} (order on record: {:?}), replay to instance {} answered {:?}",
                    replay.user,
                    on_record.map(|o| &o.order_id),
                    replay.target,
                    replay.answer
                ));
            }
        }
    }
    out
}

/// Prints the tally line and panics with every violation, if any.
pub fn report(test: &str, stores: &Stores, records: &[Record], violations: &[String], extra: &str) {
    eprintln!(
        "{test}: {} {extra} | took {:.1?}",
        tallies(records),
        stores.began.elapsed()
    );
    for v in violations {
        eprintln!("{test}: VIOLATION {v}");
    }
    assert!(
        violations.is_empty(),
        "{test}: {} violation(s), first: {}",
        violations.len(),
        violations[0]
    );
}
