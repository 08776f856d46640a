//! The two services every part of the scale-out store talks to, each behind one handle that
//! bounds every call by its timeout and says what failed: [`Redis`] (one multiplexed
//! connection) and [`Postgres`] (a pool, plus whether PostgreSQL was just found unreachable).
//!
//! A leaf: it knows nothing of sales or orders, and every other module imports it.

use super::config::RedisPgConfig;
use crate::instants::unix_ms;
use crate::{Cause, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// How long purchases are refused up front after PostgreSQL was found unreachable.
const PG_DOWN_BACKOFF_MS: i64 = 1_000;

/// Redis: one multiplexed connection (every clone pipelines over one socket), each call
/// bounded by the Redis timeout.
pub(crate) struct Redis {
    con: ConnectionManager,
    timeout: Duration,
}

impl Redis {
    /// A connection to `cfg.redis_url`, made lazily (the first call connects).
    pub(crate) fn new(cfg: &RedisPgConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(cfg.redis_url.as_str())
            .map_err(|e| StoreError::unavailable_from("bad REDIS_URL", e))?;
        let redis_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.redis_timeout))
            .set_response_timeout(Some(cfg.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let con = ConnectionManager::new_lazy_with_config(client, redis_cfg)
            .map_err(|e| StoreError::unavailable_from("redis connection", e))?;
        Ok(Self {
            con,
            timeout: cfg.redis_timeout,
        })
    }

    /// A handle on the connection, for one call.
    pub(crate) fn con(&self) -> ConnectionManager {
        self.con.clone()
    }

    /// Runs one Redis call within the Redis timeout; `what` names it in the error.
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        bounded(self.timeout, "redis", what, call).await
    }

    /// `Ok` if Redis answers now.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let mut con = self.con();
        self.call("PING", redis::cmd("PING").query_async::<String>(&mut con))
            .await
            .map(drop)
    }
}

/// PostgreSQL: a pool whose connections use the store's schema and server-side timeouts, each
/// operation bounded by the PostgreSQL timeout.
pub(crate) struct Postgres {
    pool: Pool,
    timeout: Duration,
    /// Until when (Unix ms) purchases are refused before admission because PostgreSQL could
    /// not be reached: admitting them would only strand their stock until it is back.
    down_until_ms: AtomicI64,
}

impl Postgres {
    /// A pool for `cfg.database_url` (connections are made on demand).
    pub(crate) fn new(cfg: &RedisPgConfig) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config = cfg
            .database_url
            .parse()
            .map_err(|e| StoreError::unavailable_from("bad DATABASE_URL", e))?;
        let ms = cfg.pg_timeout.as_millis();
        pg.connect_timeout(cfg.pg_timeout);
        // Server-side bounds too: a statement or lock wait abandoned by a timed-out client
        // must not keep running (and holding locks) on the server.
        pg.options(format!(
            "-c search_path={} -c statement_timeout={ms} -c lock_timeout={ms} \
             -c idle_in_transaction_session_timeout={}",
            cfg.pg_schema,
            ms * 5
        ));
        let manager = Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pg_pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.pg_timeout))
            .create_timeout(Some(cfg.pg_timeout))
            .recycle_timeout(Some(cfg.pg_timeout))
            .build()
            .map_err(|e| StoreError::internal_from("cannot build the PostgreSQL pool", e))?;
        Ok(Self {
            pool,
            timeout: cfg.pg_timeout,
            down_until_ms: AtomicI64::new(0),
        })
    }

    /// The bound on each operation (a whole transaction included).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::unavailable_from("postgres connection", e))
    }

    /// Runs one operation within the PostgreSQL timeout; `what` names it in the error.
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        bounded(self.timeout, "postgres", what, call).await
    }

    /// `Ok` if PostgreSQL answers now.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        self.call("SELECT 1", client.simple_query("SELECT 1"))
            .await
            .map(drop)
    }

    /// PostgreSQL could not be reached: refuse purchases up front for a moment.
    pub(crate) fn unreachable(&self) {
        self.down_until_ms
            .store(unix_ms() + PG_DOWN_BACKOFF_MS, Ordering::Relaxed);
    }

    /// PostgreSQL answered: purchases may go ahead again.
    pub(crate) fn reachable(&self) {
        self.down_until_ms.store(0, Ordering::Relaxed);
    }

    /// Whether PostgreSQL was found unreachable a moment ago.
    pub(crate) fn recently_down(&self) -> bool {
        unix_ms() < self.down_until_ms.load(Ordering::Relaxed)
    }
}

/// Runs `call` within `timeout`: its failure is `Unavailable` with the cause beneath, running
/// out of time `Timeout`, each named "`service` `what`".
async fn bounded<T, E: Into<Cause>>(
    timeout: Duration,
    service: &str,
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(StoreError::unavailable_from(format!("{service} {what}"), e)),
        Err(_) => Err(StoreError::timeout(format!("{service} {what}"))),
    }
}
