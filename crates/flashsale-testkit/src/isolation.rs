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
