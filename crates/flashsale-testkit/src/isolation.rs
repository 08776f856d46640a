//! Each test's own corner of the shared Redis and PostgreSQL: a unique name used as both the
//! key prefix and the schema, and a [`Cleanup`] that drops the schema and deletes the keys
//! however the test ends (a panic included). The services are `TEST_REDIS_URL` and
//! `TEST_DATABASE_URL`, defaulting to the local ones; an unreachable service fails the test
//! loudly, never skips it.

use flashsale_store::redis_pg::{RedisPgConfig, RedisPgStore};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// The shared Redis (`TEST_REDIS_URL`, default the local one).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The shared PostgreSQL (`TEST_DATABASE_URL`, default the local one).
pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A name no other test (or test run) uses: `label`, the process, a counter and random digits;
/// lowercase, so it is a valid schema name when `label` is.
pub fn unique(label: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{label}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        &Uuid::now_v7().simple().to_string()[8..16]
    )
}

/// The scale-out store's settings on these services, in a schema and key prefix called
/// `name`; defaults otherwise.
pub fn named(name: &str, redis_url: &str, database_url: &str) -> RedisPgConfig {
    let mut cfg = RedisPgConfig::new(redis_url, database_url);
    cfg.key_prefix = name.to_owned();
    cfg.pg_schema = name.to_owned();
    cfg
}

/// A configuration of its own (fresh schema and key prefix) with test-friendly timings.
pub fn isolated(redis_url: &str, database_url: &str) -> RedisPgConfig {
    let mut cfg = named(&unique("t"), redis_url, database_url);
    cfg.redis_timeout = Duration::from_millis(500);
    cfg.pg_timeout = Duration::from_secs(3);
    cfg
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

/// How often [`Cleanup`] tries to drop a schema before it gives up and says so.
const DROP_ATTEMPTS: u32 = 6;
/// How long one attempt waits for a lock: the store under test may still be running a
/// transaction on the schema's tables when its case ends.
const DROP_LOCK_TIMEOUT: &str = "2s";

/// Drops `schema` and everything in it, trying again while it fails. A store's background
/// task that is still writing when its case ends can hold a lock the drop needs, or deadlock
/// with it (PostgreSQL then aborts one of the two); one attempt whose error was ignored left
/// the schema behind.
async fn drop_schema(database_url: &str, schema: &str) {
    let sql = format!(
        "SET lock_timeout = '{DROP_LOCK_TIMEOUT}'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    );
    let mut last = None;
    for attempt in 1..=DROP_ATTEMPTS {
        match tokio_postgres::connect(database_url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                match client.batch_execute(&sql).await {
                    Ok(()) => return,
                    Err(e) => {
                        last = Some(
                            e.as_db_error()
                                .map_or_else(|| e.to_string(), |db| db.message().to_owned()),
                        );
                    }
                }
            }
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
    }
    eprintln!(
        "test cleanup: schema {schema} was not dropped after {DROP_ATTEMPTS} attempts: {}",
        last.unwrap_or_default()
    );
}

/// Drops the schema `cfg.pg_schema` and deletes the keys under `cfg.key_prefix` when dropped.
pub struct Cleanup {
    /// Whose schema and keys.
    pub cfg: RedisPgConfig,
}

impl Cleanup {
    /// Cleans up after the schema and prefix `name` on the shared services.
    pub fn named(name: &str) -> Self {
        Self {
            cfg: named(name, &redis_url(), &database_url()),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let cfg = self.cfg.clone();
        // A thread and runtime of its own: `Drop` cannot await, and the test's runtime may be
        // the one being dropped.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                drop_schema(&cfg.database_url, &cfg.pg_schema).await;
                if let Ok(client) = redis::Client::open(cfg.redis_url.as_str())
                    && let Ok(mut con) = client.get_multiplexed_async_connection().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{{{}:*", cfg.key_prefix))
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn client() -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
            .await
            .expect("the test PostgreSQL");
        tokio::spawn(conn);
        client
    }

    async fn schema_exists(client: &tokio_postgres::Client, name: &str) -> bool {
        client
            .query_one(
                "SELECT count(*) > 0 FROM pg_namespace WHERE nspname = $1",
                &[&name],
            )
            .await
            .expect("reading pg_namespace")
            .get(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_schema_is_dropped_even_when_a_store_still_writing_deadlocks_the_first_drop() {
        let name = unique("t");
        let admin = client().await;
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA \"{name}\"; CREATE TABLE \"{name}\".orders (id int)"
            ))
            .await
            .unwrap();
        // A store's transaction still open when its case ends: it holds a table the drop
        // must lock, then wants the schema the drop already holds. PostgreSQL breaks the
        // cycle by aborting the one that waited first: the drop (one attempt then left the
        // schema behind), unless the drop had not reached the table yet.
        let mut holder = client().await;
        let tx = holder.transaction().await.unwrap();
        tx.batch_execute(&format!(
            "LOCK TABLE \"{name}\".orders IN ACCESS SHARE MODE"
        ))
        .await
        .unwrap();
        let cleanup = Cleanup::named(&name);
        let dropping = tokio::task::spawn_blocking(move || drop(cleanup));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = tx
            .batch_execute(&format!("CREATE TABLE \"{name}\".more (id int)"))
            .await;
        tx.rollback().await.unwrap();
        dropping.await.unwrap();
        assert!(
            !schema_exists(&admin, &name).await,
            "the schema outlived its cleanup"
        );
    }
}
