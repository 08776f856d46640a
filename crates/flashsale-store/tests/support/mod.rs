//! Shared helpers for the Redis + PostgreSQL tests: isolation (a schema and a key prefix per
//! test, dropped afterwards), private services for tests that stop or flush one, and the
//! invariant check every failure test ends with.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use flashsale_core::{IdempotencyKey, NewSale, Quantity, SaleId, UserId};
use flashsale_store::Attempt;
use flashsale_store::redis_pg::{RedisPgConfig, RedisPgStore};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A sale that started a second ago and ends in an hour.
pub fn active(stock: u32, limit: u32) -> NewSale {
    let now = time::OffsetDateTime::now_utc();
    NewSale::parse(
        "Test widget",
        now - time::Duration::seconds(1),
        now + time::Duration::hours(1),
        i64::from(stock),
        i64::from(limit),
    )
    .unwrap()
}

/// One unit for `name`, with an idempotency key if given.
pub fn attempt(sale: SaleId, name: &str, key: Option<&str>) -> Attempt {
    Attempt {
        sale_id: sale,
        user_id: UserId::parse(name).unwrap(),
        quantity: Quantity::ONE,
        idempotency_key: key.map(|k| IdempotencyKey::parse(k).unwrap()),
    }
}

/// The shared Redis (TEST_REDIS_URL, default the local one).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The shared PostgreSQL (TEST_DATABASE_URL, default the local one).
pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A name no other test (or test run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        Uuid::now_v7().simple().to_string()[8..16].to_owned()
    )
}

/// A configuration isolated by its own schema and key prefix, with test-friendly timings.
pub fn isolated(redis_url: &str, database_url: &str) -> RedisPgConfig {
    let name = unique("t");
    let mut cfg = RedisPgConfig::new(redis_url, database_url);
    cfg.key_prefix = name.clone();
    cfg.pg_schema = name;
    cfg.redis_timeout = Duration::from_millis(500);
    cfg.pg_timeout = Duration::from_secs(3);
    cfg
}

/// Drops a test's schema and Redis keys when dropped (on its own thread and runtime, since
/// `Drop` cannot await).
pub struct Cleanup {
    pub cfg: RedisPgConfig,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let cfg = self.cfg.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&cfg.database_url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!(
                            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                            cfg.pg_schema
                        ))
                        .await;
                }
                if let Ok(client) = redis::Client::open(cfg.redis_url.as_str())
                    && let Ok(mut con) = client.get_multiplexed_async_connection().await
                {
                    let pattern = format!("{{{}:*", cfg.key_prefix);
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(&pattern)
                        .query_async(&mut con)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> =
                            redis::cmd("DEL").arg(&keys).query_async(&mut con).await;
                    }
                }
            });
        })
        .join();
    }
}

/// Connects a store, failing loudly (never skipping) if the services are unreachable.
pub async fn connect(cfg: &RedisPgConfig) -> RedisPgStore {
    RedisPgStore::connect(cfg.clone()).await.unwrap_or_else(|e| {
        panic!(
            "cannot reach Redis at {} / PostgreSQL at {} (set TEST_REDIS_URL / TEST_DATABASE_URL): {e}",
            cfg.redis_url, cfg.database_url
        )
    })
}

/// A direct PostgreSQL client on the test's schema.
pub async fn pg(cfg: &RedisPgConfig) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&cfg.database_url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL reachable");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("SET search_path TO \"{}\"", cfg.pg_schema))
        .await
        .unwrap();
    client
}

/// A direct Redis connection.
pub async fn redis(cfg: &RedisPgConfig) -> redis::aio::MultiplexedConnection {
    redis::Client::open(cfg.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable")
}

/// The invariants every failure test ends with (issue 3, item 6):
/// orders in PostgreSQL <= stock and = `sales.sold`; nobody over the limit; every confirmed
/// order still present; and in Redis, remaining + sold + live reservations = stock.
pub async fn assert_invariants(cfg: &RedisPgConfig, sale: SaleId, confirmed: &[Uuid]) {
    let pg = pg(cfg).await;
    let row = pg
        .query_one(
            "SELECT stock, per_user_limit, sold FROM sales WHERE id = $1",
            &[&sale.0],
        )
        .await
        .unwrap();
    let (stock, limit, sold): (i32, i32, i32) = (row.get(0), row.get(1), row.get(2));
    let units: i64 = pg
        .query_one(
            "SELECT COALESCE(sum(quantity), 0)::int8 FROM orders WHERE sale_id = $1",
            &[&sale.0],
        )
        .await
        .unwrap()
        .get(0);
    assert!(units <= i64::from(stock), "oversold: {units} > {stock}");
    assert_eq!(
        units,
        i64::from(sold),
        "sales.sold disagrees with the orders"
    );
    let over: i64 = pg
        .query_one(
            "SELECT count(*) FROM (SELECT user_id FROM orders WHERE sale_id = $1
             GROUP BY user_id HAVING sum(quantity) > $2) x",
            &[&sale.0, &(limit as i64)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(over, 0, "a buyer holds more than the limit");
    let present: i64 = pg
        .query_one(
            "SELECT count(*) FROM orders WHERE order_id = ANY($1)",
            &[&confirmed.to_vec()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        present as usize,
        confirmed.len(),
        "a confirmed order is missing"
    );

    let mut con = redis(cfg).await;
    let tag = format!("{{{}:sale:{}}}", cfg.key_prefix, sale.0);
    let remaining: i64 = redis::cmd("HGET")
        .arg(format!("{tag}:meta"))
        .arg("remaining")
        .query_async(&mut con)
        .await
        .unwrap();
    let reservations: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{tag}:reservations"))
        .query_async(&mut con)
        .await
        .unwrap();
    let reserved: i64 = reservations
        .values()
        .map(|r| r.split('\n').nth(1).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(
        remaining + i64::from(sold) + reserved,
        i64::from(stock),
        "Redis remaining {remaining} + sold {sold} + reserved {reserved} != stock {stock}"
    );
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server (no persistence) this test may stop, flush or restart.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = free_port();
        let mut me = Self { port, child: None };
        me.restart();
        me
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, empty).
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (its data is gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private PostgreSQL cluster (trust auth, fsync off) this test may stop and start.
pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let root = is_root();
        if root {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
        }
        let status = run_pg(
            root,
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        assert!(status, "initdb failed");
        let me = Self {
            port: free_port(),
            dir,
            bin,
        };
        me.start_server();
        let url = format!("postgres://postgres@127.0.0.1:{}/postgres", me.port);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = std::thread::spawn({
                let url = url.clone();
                move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(async move {
                            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                                Ok((c, conn)) => {
                                    tokio::spawn(conn);
                                    c.batch_execute("CREATE DATABASE test").await.is_ok()
                                }
                                Err(_) => false,
                            }
                        })
                }
            })
            .join()
            .unwrap();
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "private postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/test", self.port)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_owned()
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").to_str().unwrap().to_owned();
        assert!(run_pg(
            is_root(),
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        ));
    }

    /// Stops the server (fast: in-flight transactions are aborted).
    pub fn stop_server(&self) {
        run_pg(
            is_root(),
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop_server();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run_pg(root: bool, program: &std::path::Path, args: &[&str]) -> bool {
    // initdb and postgres refuse to run as root: run them as the postgres user then.
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
