//! Shared helpers for the Redis + PostgreSQL tests: isolation (a schema and a key prefix per
//! test, dropped afterwards: `flashsale_testkit::isolation`, re-exported), private services
//! for tests that stop or flush one, the invariant check every failure test ends with, and
//! what the hold-mode tests (`redis_pg_checkout.rs`, `redis_pg_waitlist.rs`) read directly.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use flashsale_core::{
    Checkout, CheckoutMode, IdempotencyKey, NewSale, PaymentWindow, Price, Quantity, SaleId, UserId,
};
use flashsale_store::Attempt;
use flashsale_store::redis_pg::RedisPgConfig;
pub use flashsale_testkit::isolation::{Cleanup, connect, database_url, isolated, redis_url};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

/// The unit price of every hold-mode sale here, in euro cents.
pub const HOLD_PRICE_MINOR: i64 = 500;

/// An active hold-mode sale (see [`active`]) at [`HOLD_PRICE_MINOR`] with a payment window of
/// `window_secs`.
pub fn hold_sale(stock: u32, limit: u32, window_secs: i64) -> NewSale {
    let window = PaymentWindow::parse(window_secs).unwrap();
    active(stock, limit).with_checkout(
        Checkout::new(
            CheckoutMode::Hold {
                payment_window: window,
            },
            Some(Price::parse(HOLD_PRICE_MINOR, "EUR").unwrap()),
        )
        .unwrap(),
    )
}

/// Settings whose reconcilers run only when asked (`reconcile_now`) after their first round at
/// start, so a test decides when a move owed to Redis is applied.
pub fn quiet_reconcilers() -> RedisPgConfig {
    let mut cfg = isolated(&redis_url(), &database_url());
    cfg.reconcile_interval = Duration::from_secs(3600);
    cfg
}

/// Orders whose committed move is not yet applied to Redis.
pub async fn moves_owed(cfg: &RedisPgConfig) -> i64 {
    pg(cfg)
        .await
        .query_one(
            "SELECT count(*) FROM orders WHERE move_epoch IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The sale's epoch in PostgreSQL (a rebuild of its Redis state moves it on).
pub async fn sale_epoch(cfg: &RedisPgConfig, sale: SaleId) -> i64 {
    pg(cfg)
        .await
        .query_one("SELECT epoch FROM sales WHERE id = $1", &[&sale.0])
        .await
        .unwrap()
        .get(0)
}

/// Redis's own `remaining` and `onhold` of a sale, read directly.
pub async fn redis_figures(cfg: &RedisPgConfig, sale: SaleId) -> (i64, i64) {
    let mut con = redis(cfg).await;
    let meta = format!("{{{}:sale:{}}}:meta", cfg.key_prefix, sale.0);
    let (remaining, on_hold): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
        .arg(meta)
        .arg("remaining")
        .arg("onhold")
        .query_async(&mut con)
        .await
        .unwrap();
    (remaining.unwrap(), on_hold.unwrap_or(0))
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
