//! How to reach and use Redis and PostgreSQL: [`RedisPgConfig`] and its defaults. A leaf.

use std::time::Duration;

/// The Redis key prefix when none is given (the server's `--redis-prefix` default too).
pub const DEFAULT_KEY_PREFIX: &str = "flashsale";
/// The PostgreSQL schema when none is given (the server's `--pg-schema` default too).
pub const DEFAULT_PG_SCHEMA: &str = "public";

/// How to reach and use Redis and PostgreSQL.
#[derive(Debug, Clone)]
pub struct RedisPgConfig {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    /// `postgres://user@host:port/db`.
    pub database_url: String,
    /// Prefix of every Redis key (isolates deployments and tests sharing one Redis).
    pub key_prefix: String,
    /// PostgreSQL schema holding the tables (created if missing; lowercase identifier).
    pub pg_schema: String,
    /// How long a reservation may stay unresolved before the reconciler resolves it.
    pub lease: Duration,
    /// Bound on each Redis call.
    pub redis_timeout: Duration,
    /// Bound on each PostgreSQL transaction (also the server-side statement timeout).
    pub pg_timeout: Duration,
    /// How often the status snapshot is refreshed (at most 250 ms).
    pub refresh_interval: Duration,
    /// How often expired reservations are looked for.
    pub reconcile_interval: Duration,
    /// PostgreSQL connections per instance.
    pub pg_pool_size: usize,
    /// Most orders committed in one transaction.
    pub max_batch: usize,
}

impl RedisPgConfig {
    /// Defaults for everything but the two URLs.
    pub fn new(redis_url: impl Into<String>, database_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            database_url: database_url.into(),
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            pg_schema: DEFAULT_PG_SCHEMA.into(),
            lease: Duration::from_secs(10),
            redis_timeout: Duration::from_millis(500),
            pg_timeout: Duration::from_secs(2),
            refresh_interval: Duration::from_millis(100),
            reconcile_interval: Duration::from_secs(1),
            pg_pool_size: 8,
            max_batch: 2048,
        }
    }
}
