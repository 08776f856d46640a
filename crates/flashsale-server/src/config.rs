//! The service's one configuration: every setting is a flag and an environment variable
//! (shown by `--help`), with defaults in code so a bare `flashsale` runs. Tests build `Config`
//! values directly (port 0, no environment).

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgAction, Parser, ValueEnum};
use flashsale_store::StoreConfig;
use flashsale_store::redis_pg::{DEFAULT_KEY_PREFIX, DEFAULT_PG_SCHEMA, RedisPgConfig};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::http::client_ip::TrustedProxies;
pub use crate::http::identity::{IdentityMode, IdentitySettings};
pub use crate::http::limits::RateLimits;
pub use crate::tls::TlsSettings;

/// Which [`flashsale_store::SaleStore`] backend serves the sales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Single node, no external service: memory + SQLite in the data directory.
    Embedded,
    /// Scale-out: Redis (admission) + PostgreSQL (durable orders); needs `REDIS_URL` and
    /// `DATABASE_URL`.
    Redis,
}

/// The service's configuration.
#[derive(Clone, Parser)]
#[command(name = "flashsale", version, about = "A flash-sale service")]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of the embedded store's database.
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Bearer token for the admin API, at least 16 characters (a shorter or empty one stops the
    /// start); unset: generated once, kept in <data-dir>/admin-token (per run with --store redis).
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Secret the shop's payment system signs webhooks with (`Flashsale-Signature`, at least
    /// 16 bytes). Unset: no webhook, and the demo payment route is on instead.
    #[arg(long, env = "FLASHSALE_PAYMENT_WEBHOOK_SECRET", hide_env_values = true)]
    pub payment_webhook_secret: Option<String>,

    /// Create a demo sale (starts 30 s after start, lasts 10 min, 100 units) when no sale exists.
    #[arg(long, env = "FLASHSALE_DEMO_SALE", default_value = "on", value_parser = switch(),
        value_name = "ON|OFF", action = ArgAction::Set)]
    pub demo_sale: bool,

    /// Storage backend.
    #[arg(long, env = "FLASHSALE_STORE", value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,

    /// Redis URL for `--store redis`.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// PostgreSQL URL for `--store redis`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Prefix of every Redis key (`--store redis`): deployments sharing a Redis differ here.
    #[arg(long, env = "FLASHSALE_REDIS_PREFIX", default_value = DEFAULT_KEY_PREFIX)]
    pub redis_prefix: String,

    /// PostgreSQL schema of the tables (`--store redis`); created at start if missing.
    #[arg(long, env = "FLASHSALE_PG_SCHEMA", default_value = DEFAULT_PG_SCHEMA)]
    pub pg_schema: String,

    /// The scale-out store's timings and sizes (`--store redis`).
    #[command(flatten)]
    pub scale_out: ScaleOutTuning,

    /// Serve `/api/admin/*` only on this separate address (the public one then answers 404
    /// there). Unset: admin routes are on `--listen`.
    #[arg(long, env = "FLASHSALE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Serve `/healthz`, `/readyz` and `/metrics` on this separate address too, with its own
    /// connection budget, so probes get through when the public one is spent; `/metrics` then
    /// leaves the public address. Unset: all on `--listen`.
    #[arg(long, env = "FLASHSALE_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,

    /// Per-client and per-buyer rate limits (429 `rate_limited`).
    #[command(flatten)]
    pub rate_limits: RateLimits,

    /// Overload protection: in-flight and connection bounds, timeouts.
    #[command(flatten)]
    pub protection: Protection,

    /// Native TLS: certificate and key files (both listeners then serve HTTPS only).
    #[command(flatten)]
    pub tls: TlsSettings,

    /// How buyers are identified (`--identity`, the JWT key file, issuer, audience).
    #[command(flatten)]
    pub identity: IdentitySettings,
}

/// The scale-out store's tuning, one flag per [`RedisPgConfig`] field beyond the URLs, prefix
/// and schema. The defaults are read from [`RedisPgConfig::new`], so they are written once.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ScaleOutTuning {
    /// Milliseconds a reservation may stay unresolved before the reconciler resolves it: the
    /// units of an instance that died mid-purchase are held this long (`--store redis`).
    #[arg(long, env = "FLASHSALE_LEASE_MS", default_value_t = millis(redis_pg_defaults().lease),
        value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_ms: u64,

    /// Milliseconds each Redis call may take (`--store redis`).
    #[arg(long, env = "FLASHSALE_REDIS_TIMEOUT_MS",
        default_value_t = millis(redis_pg_defaults().redis_timeout),
        value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_timeout_ms: u64,

    /// Milliseconds each PostgreSQL transaction may take, also its server-side statement
    /// timeout (`--store redis`).
    #[arg(long, env = "FLASHSALE_PG_TIMEOUT_MS",
        default_value_t = millis(redis_pg_defaults().pg_timeout),
        value_parser = clap::value_parser!(u64).range(1..))]
    pub pg_timeout_ms: u64,

    /// Milliseconds between refreshes of the status snapshot from Redis; at most 250 is used
    /// (`--store redis`).
    #[arg(long, env = "FLASHSALE_REFRESH_INTERVAL_MS",
        default_value_t = millis(redis_pg_defaults().refresh_interval),
        value_parser = clap::value_parser!(u64).range(1..))]
    pub refresh_interval_ms: u64,

    /// Milliseconds between looks for expired reservations (`--store redis`).
    #[arg(long, env = "FLASHSALE_RECONCILE_INTERVAL_MS",
        default_value_t = millis(redis_pg_defaults().reconcile_interval),
        value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_interval_ms: u64,

    /// PostgreSQL connections per instance; at least 2 are used (`--store redis`).
    #[arg(long, env = "FLASHSALE_PG_POOL_SIZE", default_value_t = redis_pg_defaults().pg_pool_size,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub pg_pool_size: usize,

    /// Most orders committed in one PostgreSQL transaction (`--store redis`).
    #[arg(long, env = "FLASHSALE_MAX_BATCH", default_value_t = redis_pg_defaults().max_batch,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_batch: usize,
}

/// The scale-out store's own defaults (the URLs play no part in them).
fn redis_pg_defaults() -> RedisPgConfig {
    RedisPgConfig::new("", "")
}

/// Whole milliseconds of `d` (the flags' unit).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Default for ScaleOutTuning {
    fn default() -> Self {
        let defaults = redis_pg_defaults();
        Self {
            lease_ms: millis(defaults.lease),
            redis_timeout_ms: millis(defaults.redis_timeout),
            pg_timeout_ms: millis(defaults.pg_timeout),
            refresh_interval_ms: millis(defaults.refresh_interval),
            reconcile_interval_ms: millis(defaults.reconcile_interval),
            pg_pool_size: defaults.pg_pool_size,
            max_batch: defaults.max_batch,
        }
    }
}

impl ScaleOutTuning {
    /// `cfg` with these timings and sizes.
    fn apply(&self, mut cfg: RedisPgConfig) -> RedisPgConfig {
        cfg.lease = Duration::from_millis(self.lease_ms);
        cfg.redis_timeout = Duration::from_millis(self.redis_timeout_ms);
        cfg.pg_timeout = Duration::from_millis(self.pg_timeout_ms);
        cfg.refresh_interval = Duration::from_millis(self.refresh_interval_ms);
        cfg.reconcile_interval = Duration::from_millis(self.reconcile_interval_ms);
        cfg.pg_pool_size = self.pg_pool_size;
        cfg.max_batch = self.max_batch;
        cfg
    }
}

/// The values every on/off flag accepts, and shows in `--help`: `on`/`off`, or `true`/`false`
/// (older scripts use those).
pub fn switch() -> impl TypedValueParser<Value = bool> {
    PossibleValuesParser::new(["on", "off", "true", "false"]).map(|v| v == "on" || v == "true")
}

// The defaults of [`Protection`], written once: the flags show them in `--help` and
// `Protection::default()` (tests, embedding) uses the same values.
const DEFAULT_MAX_INFLIGHT_PURCHASES: usize = 16_384;
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 512;
const DEFAULT_MAX_STREAMS_PER_IP: usize = 256;
const DEFAULT_STREAM_LIFETIME_SECS: u64 = 300;
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// 2 MiB: a product photo for a page, not a print original.
const DEFAULT_MAX_IMAGE_BYTES: usize = 2 * 1024 * 1024;

/// Bounds that keep the service answering quickly beyond capacity (NF-5).
#[derive(Debug, Clone, clap::Args)]
pub struct Protection {
    /// Purchases in flight beyond this are answered 503 `overloaded` at once, not queued.
    #[arg(
        long,
        env = "FLASHSALE_MAX_INFLIGHT_PURCHASES",
        default_value_t = DEFAULT_MAX_INFLIGHT_PURCHASES
    )]
    pub max_inflight_purchases: usize,

    /// Open connections beyond this wait in the kernel's accept queue. Default: the process's
    /// open-file limit (`ulimit -n`) less a tenth (at most 1,024) kept for the store, the
    /// listeners and the log; computed and logged at start.
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Open connections one client address may hold; more are answered 429 and closed.
    /// Connections from `--trusted-proxies` are not counted (each carries many clients).
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections_per_ip: usize,

    /// Open event streams one client address may hold; more are answered 429 (the page
    /// then polls).
    #[arg(long, env = "FLASHSALE_MAX_STREAMS_PER_IP", default_value_t = DEFAULT_MAX_STREAMS_PER_IP,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_streams_per_ip: usize,

    /// An event stream ends after this many seconds (give or take a tenth); the page
    /// reconnects.
    #[arg(long, env = "FLASHSALE_STREAM_LIFETIME_SECS", default_value_t = DEFAULT_STREAM_LIFETIME_SECS,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_lifetime_secs: u64,

    /// The largest product image an operator may upload, in bytes; larger uploads are 413
    /// `image_too_large`, refused without reading more than this.
    #[arg(long, env = "FLASHSALE_MAX_IMAGE_BYTES", default_value_t = DEFAULT_MAX_IMAGE_BYTES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64 * 1024 * 1024))]
    pub max_image_bytes: usize,

    /// A request whose answer is not ready within this many milliseconds gets 503 `timeout`.
    #[arg(long, env = "FLASHSALE_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,

    /// A client must send a request's headers within this many milliseconds of starting it
    /// (or of the connection becoming idle), else the connection is closed (slow clients).
    #[arg(
        long,
        env = "FLASHSALE_HEADER_READ_TIMEOUT_MS",
        default_value_t = DEFAULT_HEADER_READ_TIMEOUT_MS
    )]
    pub header_read_timeout_ms: u64,
}

impl Protection {
    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The header-read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// How long a request body may take to arrive: the header-read allowance, but always
    /// inside the request timeout, so a missing body is 408 `body_timeout` (nothing taken)
    /// rather than 503 `timeout` (outcome unknown).
    pub fn body_timeout(&self) -> Duration {
        self.header_read_timeout()
            .min(self.request_timeout() / 2)
            .max(Duration::from_millis(1))
    }

    /// An event stream's lifetime.
    pub fn stream_lifetime(&self) -> Duration {
        Duration::from_secs(self.stream_lifetime_secs)
    }

    /// `--max-connections`, or the default derived from the open-file limit.
    pub fn connection_budget(&self) -> ConnectionBudget {
        match self.max_connections {
            Some(n) => ConnectionBudget {
                max_connections: n.max(1),
                open_file_limit: None,
            },
            None => {
                let limit = open_file_limit();
                ConnectionBudget {
                    max_connections: budget_for_open_files(limit),
                    open_file_limit: Some(limit),
                }
            }
        }
    }
}

/// The connection bound in force and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// Open connections at most.
    pub max_connections: usize,
    /// The soft open-file limit it was derived from; `None` when `--max-connections` was set.
    pub open_file_limit: Option<u64>,
}

/// The soft `RLIMIT_NOFILE`; "unlimited" counts as a million.
fn open_file_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1_000_000)
}

/// Connections that fit in `limit` descriptors: a tenth (32 to 1,024) is kept for the store's
/// files, the listeners, the log and outgoing connections, so accepting never runs the
/// process out of descriptors (which fails the store's writes, not just the accept).
pub fn budget_for_open_files(limit: u64) -> usize {
    let headroom = (limit / 10).clamp(32, 1_024);
    usize::try_from(limit.saturating_sub(headroom))
        .unwrap_or(usize::MAX)
        .max(16)
}

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Refuses an admin token too short to resist guessing (an empty one used to switch the
/// admin API off silently; a one-character one was accepted).
pub fn check_admin_token(token: &str) -> Result<(), String> {
    let chars = token.trim().chars().count();
    if chars < MIN_ADMIN_TOKEN_CHARS {
        return Err(format!(
            "the admin token (FLASHSALE_ADMIN_TOKEN / --admin-token) must be at least \
             {MIN_ADMIN_TOKEN_CHARS} characters, got {chars}; unset it to have one generated"
        ));
    }
    Ok(())
}

impl Default for Protection {
    fn default() -> Self {
        Self {
            max_inflight_purchases: DEFAULT_MAX_INFLIGHT_PURCHASES,
            max_connections: None,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_streams_per_ip: DEFAULT_MAX_STREAMS_PER_IP,
            stream_lifetime_secs: DEFAULT_STREAM_LIFETIME_SECS,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
        }
    }
}

impl Config {
    /// Defaults for tests and embedding: the given address and data directory, no demo sale,
    /// the embedded store, a fixed admin token, and rate limits off (the tests send thousands
    /// of buyers from 127.0.0.1; the limiter has its own tests).
    pub fn for_tests(listen: SocketAddr, data_dir: PathBuf, admin_token: &str) -> Self {
        Self {
            listen,
            data_dir,
            admin_token: Some(admin_token.to_owned()),
            payment_webhook_secret: None,
            demo_sale: false,
            store: StoreKind::Embedded,
            redis_url: None,
            database_url: None,
            redis_prefix: DEFAULT_KEY_PREFIX.into(),
            pg_schema: DEFAULT_PG_SCHEMA.into(),
            scale_out: ScaleOutTuning::default(),
            admin_listen: None,
            ops_listen: None,
            rate_limits: RateLimits::disabled(),
            protection: Protection::default(),
            tls: TlsSettings::default(),
            identity: IdentitySettings::default(),
        }
    }

    /// The store these flags choose, with all its settings (the one place `--store` is read).
    /// `Err` names the missing setting the chosen store needs.
    pub fn store_config(&self) -> Result<StoreConfig, &'static str> {
        match self.store {
            StoreKind::Embedded => Ok(StoreConfig::Embedded {
                data_dir: self.data_dir.clone(),
            }),
            StoreKind::Redis => {
                let redis_url = self
                    .redis_url
                    .clone()
                    .ok_or("--store redis needs REDIS_URL (--redis-url)")?;
                let database_url = self
                    .database_url
                    .clone()
                    .ok_or("--store redis needs DATABASE_URL (--database-url)")?;
                let mut cfg = RedisPgConfig::new(redis_url, database_url);
                cfg.key_prefix = self.redis_prefix.clone();
                cfg.pg_schema = self.pg_schema.clone();
                Ok(StoreConfig::RedisPg(self.scale_out.apply(cfg)))
            }
        }
    }
}

/// Secrets (the admin token and the URLs, which may carry passwords) never reach the log. The
/// admin token is left out: start-up logs where it came from (given, loaded or generated) once
/// it is known.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn redacted(value: &Option<String>) -> &'static str {
            match value {
                Some(_) => "<redacted>",
                None => "<unset>",
            }
        }
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("payment_webhook", &redacted(&self.payment_webhook_secret))
            .field("demo_sale", &self.demo_sale)
            .field("store", &self.store)
            .field("redis_url", &redacted(&self.redis_url))
            .field("database_url", &redacted(&self.database_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("pg_schema", &self.pg_schema)
            .field("scale_out", &self.scale_out)
            .field("admin_listen", &self.admin_listen)
            .field("ops_listen", &self.ops_listen)
            .field("rate_limits", &self.rate_limits)
            .field("protection", &self.protection)
            .field("tls", &self.tls)
            .field("identity", &self.identity)
            .finish()
    }
}

/// A fresh random admin token: 32 hex digits.
///
/// No RNG crate is needed: each `RandomState` holds SipHash keys seeded from the operating
/// system's randomness, so hashing a counter (and the random part of a UUID v7) under four of
/// them yields unpredictable bits.
pub fn generate_admin_token() -> String {
    let salt = uuid::Uuid::now_v7().as_u128();
    (0u8..2)
        .map(|i| format!("{:016x}", RandomState::new().hash_one((i, salt))))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};
    use std::path::Path;

    #[test]
    fn every_flag_names_its_environment_variable_in_help() {
        let help = Config::command().render_long_help().to_string();
        for env in [
            "FLASHSALE_LISTEN",
            "FLASHSALE_DATA_DIR",
            "FLASHSALE_ADMIN_TOKEN",
            "FLASHSALE_DEMO_SALE",
            "FLASHSALE_STORE",
            "REDIS_URL",
            "DATABASE_URL",
            "FLASHSALE_REDIS_PREFIX",
            "FLASHSALE_PG_SCHEMA",
            "FLASHSALE_ADMIN_LISTEN",
            "FLASHSALE_RATE_LIMIT",
            "FLASHSALE_TRUSTED_PROXIES",
            "FLASHSALE_MAX_INFLIGHT_PURCHASES",
            "FLASHSALE_MAX_CONNECTIONS",
            "FLASHSALE_MAX_CONNECTIONS_PER_IP",
            "FLASHSALE_MAX_STREAMS_PER_IP",
            "FLASHSALE_STREAM_LIFETIME_SECS",
            "FLASHSALE_OPS_LISTEN",
            "FLASHSALE_PURCHASE_SHARE_PER_IP",
            "FLASHSALE_REQUEST_TIMEOUT_MS",
            "FLASHSALE_HEADER_READ_TIMEOUT_MS",
            "FLASHSALE_TLS_CERT",
            "FLASHSALE_TLS_KEY",
            "FLASHSALE_LEASE_MS",
            "FLASHSALE_REDIS_TIMEOUT_MS",
            "FLASHSALE_PG_TIMEOUT_MS",
            "FLASHSALE_REFRESH_INTERVAL_MS",
            "FLASHSALE_RECONCILE_INTERVAL_MS",
            "FLASHSALE_PG_POOL_SIZE",
            "FLASHSALE_MAX_BATCH",
            "FLASHSALE_IDENTITY",
            "FLASHSALE_JWT_JWKS_FILE",
            "FLASHSALE_JWT_PUBLIC_KEY_FILE",
            "FLASHSALE_JWT_ISSUER",
            "FLASHSALE_JWT_AUDIENCE",
        ] {
            assert!(help.contains(env), "{env} missing from --help");
        }
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let mut config =
            Config::for_tests("127.0.0.1:0".parse().unwrap(), PathBuf::from("d"), "s3cret");
        config.database_url = Some("postgres://u:pw@h/db".into());
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("pw@"),
            "{shown}"
        );
    }

    #[test]
    fn rate_limits_are_on_by_default_and_can_be_switched_off() {
        // Read the declared default rather than parse: CI may set FLASHSALE_RATE_LIMIT.
        let command = Config::command();
        let flag = command
            .get_arguments()
            .find(|a| a.get_long() == Some("rate-limit"))
            .unwrap();
        assert_eq!(flag.get_default_values(), ["on"]);
        assert!(RateLimits::default().enabled);
        let off = Config::try_parse_from(["flashsale", "--rate-limit", "off"]).unwrap();
        assert!(!off.rate_limits.enabled);
    }

    #[test]
    fn both_switches_accept_and_show_the_same_spellings() {
        let help = Config::command().render_long_help().to_string();
        for flag in ["--demo-sale", "--rate-limit"] {
            let shown = help
                .split("\n      --")
                .find(|entry| entry.starts_with(&flag[2..]))
                .unwrap();
            assert!(
                shown.starts_with(&format!("{} <ON|OFF>", &flag[2..]))
                    && shown.contains("[default: on]")
                    && shown.contains("[possible values: on, off, true, false]"),
                "{flag}: {shown}"
            );
        }
        for (spelling, on) in [
            ("on", true),
            ("true", true),
            ("off", false),
            ("false", false),
        ] {
            let config = Config::try_parse_from([
                "flashsale",
                "--demo-sale",
                spelling,
                "--rate-limit",
                spelling,
            ])
            .unwrap();
            assert_eq!((config.demo_sale, config.rate_limits.enabled), (on, on));
        }
        assert!(Config::try_parse_from(["flashsale", "--demo-sale", "yes"]).is_err());
    }

    #[test]
    fn the_flags_defaults_are_the_code_defaults() {
        // Environment ignored: CI may set FLASHSALE_* variables.
        let command = Config::command().mut_args(|arg| arg.env(None::<&str>));
        let parsed = Config::from_arg_matches(&command.get_matches_from(["flashsale"])).unwrap();
        assert_eq!(
            format!("{:?}", parsed.protection),
            format!("{:?}", Protection::default())
        );
        assert_eq!(
            format!("{:?}", parsed.rate_limits),
            format!("{:?}", RateLimits::default())
        );
        let for_tests = Config::for_tests(parsed.listen, parsed.data_dir.clone(), "t");
        assert_eq!(
            (&parsed.redis_prefix, &parsed.pg_schema),
            (&for_tests.redis_prefix, &for_tests.pg_schema)
        );
        let store = RedisPgConfig::new("r", "d");
        assert_eq!(
            (&parsed.redis_prefix, &parsed.pg_schema),
            (&store.key_prefix, &store.pg_schema)
        );
        assert_eq!(parsed.scale_out, ScaleOutTuning::default());
        assert_eq!(for_tests.scale_out, ScaleOutTuning::default());
        assert_eq!(
            format!("{:?}", parsed.identity),
            format!("{:?}", IdentitySettings::default())
        );
        assert_eq!(parsed.identity.mode, IdentityMode::Guest);
        // Mapped onto the store, the default flags are the store's own defaults.
        let mut redis = parsed;
        redis.store = StoreKind::Redis;
        redis.redis_url = Some("r".into());
        redis.database_url = Some("d".into());
        let Ok(StoreConfig::RedisPg(mapped)) = redis.store_config() else {
            panic!("--store redis did not map onto RedisPg");
        };
        assert_eq!(format!("{mapped:?}"), format!("{store:?}"));
    }

    #[test]
    fn every_scale_out_tuning_flag_reaches_the_store() {
        let config = Config::try_parse_from([
            "flashsale",
            "--store",
            "redis",
            "--redis-url",
            "redis://r",
            "--database-url",
            "postgres://d",
            "--redis-prefix",
            "p",
            "--pg-schema",
            "s",
            "--lease-ms",
            "1001",
            "--redis-timeout-ms",
            "1002",
            "--pg-timeout-ms",
            "1003",
            "--refresh-interval-ms",
            "1004",
            "--reconcile-interval-ms",
            "1005",
            "--pg-pool-size",
            "6",
            "--max-batch",
            "7",
        ])
        .unwrap();
        let Ok(StoreConfig::RedisPg(cfg)) = config.store_config() else {
            panic!("--store redis did not map onto RedisPg");
        };
        let ms = Duration::from_millis;
        assert_eq!(
            (cfg.redis_url.as_str(), cfg.database_url.as_str()),
            ("redis://r", "postgres://d")
        );
        assert_eq!(
            (cfg.key_prefix.as_str(), cfg.pg_schema.as_str()),
            ("p", "s")
        );
        assert_eq!(
            (
                cfg.lease,
                cfg.redis_timeout,
                cfg.pg_timeout,
                cfg.refresh_interval,
                cfg.reconcile_interval
            ),
            (ms(1001), ms(1002), ms(1003), ms(1004), ms(1005))
        );
        assert_eq!((cfg.pg_pool_size, cfg.max_batch), (6, 7));
        assert!(Config::try_parse_from(["flashsale", "--max-batch", "0"]).is_err());
    }

    #[test]
    fn the_scale_out_store_names_the_setting_it_lacks() {
        let mut config = Config::for_tests("127.0.0.1:0".parse().unwrap(), PathBuf::from("d"), "t");
        assert!(matches!(
            config.store_config(),
            Ok(StoreConfig::Embedded { data_dir }) if data_dir == Path::new("d")
        ));
        config.store = StoreKind::Redis;
        assert!(config.store_config().unwrap_err().contains("REDIS_URL"));
        config.redis_url = Some("redis://r".into());
        assert!(config.store_config().unwrap_err().contains("DATABASE_URL"));
    }

    #[test]
    fn the_identity_flags_parse_and_the_two_key_sources_exclude_each_other() {
        let config = Config::try_parse_from([
            "flashsale",
            "--identity",
            "jwt",
            "--jwt-jwks-file",
            "keys.json",
            "--jwt-issuer",
            "https://shop.example",
            "--jwt-audience",
            "flashsale",
        ])
        .unwrap();
        let identity = &config.identity;
        assert_eq!(identity.mode, IdentityMode::Jwt);
        assert_eq!(identity.jwt_jwks_file, Some(PathBuf::from("keys.json")));
        assert_eq!(identity.jwt_issuer.as_deref(), Some("https://shop.example"));
        assert_eq!(identity.jwt_audience.as_deref(), Some("flashsale"));
        let pem = Config::try_parse_from(["flashsale", "--jwt-public-key-file", "k.pem"]).unwrap();
        assert_eq!(
            pem.identity.jwt_public_key_file,
            Some(PathBuf::from("k.pem"))
        );
        let both = Config::try_parse_from([
            "flashsale",
            "--jwt-jwks-file",
            "keys.json",
            "--jwt-public-key-file",
            "k.pem",
        ])
        .unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(Config::try_parse_from(["flashsale", "--identity", "nobody"]).is_err());
    }

    #[test]
    fn the_accounts_flags_parse_and_the_session_key_is_never_shown() {
        let config = Config::try_parse_from([
            "flashsale",
            "--identity",
            "accounts",
            "--session-key",
            "0123456789abcdef0123456789abcdef-secret",
            "--session-ttl",
            "3600",
            "--max-concurrent-hashes",
            "3",
        ])
        .unwrap();
        let identity = &config.identity;
        assert_eq!(identity.mode, IdentityMode::Accounts);
        assert_eq!(identity.session_ttl_secs, 3600);
        assert_eq!(identity.max_concurrent_hashes, 3);
        assert!(!format!("{config:?}").contains("secret"));
        let defaults = Config::try_parse_from(["flashsale", "--identity", "accounts"]).unwrap();
        assert_eq!(defaults.identity.session_ttl_secs, 24 * 60 * 60);
        assert!(Config::try_parse_from(["flashsale", "--session-ttl", "0"]).is_err());
    }

    #[test]
    fn tls_cert_and_key_go_together() {
        let both =
            Config::try_parse_from(["flashsale", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
                .unwrap();
        assert_eq!(both.tls.tls_cert, Some(PathBuf::from("c.pem")));
        for lone in [["--tls-cert", "c.pem"], ["--tls-key", "k.pem"]] {
            let error = Config::try_parse_from(["flashsale", lone[0], lone[1]]).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::MissingRequiredArgument
            );
        }
    }

    #[test]
    fn generated_tokens_are_long_and_distinct() {
        let (a, b) = (generate_admin_token(), generate_admin_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(check_admin_token(&a).is_ok());
    }

    #[test]
    fn empty_and_short_admin_tokens_are_refused() {
        for weak in ["", " ", "x", "fifteen-chars-x", "   padded-short   "] {
            let err = check_admin_token(weak).unwrap_err();
            assert!(err.contains("at least 16"), "{err}");
        }
        assert!(check_admin_token("sixteen-chars-ok").is_ok());
    }

    #[test]
    fn the_default_connection_budget_leaves_descriptors_for_the_rest() {
        assert_eq!(budget_for_open_files(20_000), 18_976);
        assert_eq!(budget_for_open_files(1_024), 922);
        assert_eq!(budget_for_open_files(1_048_576), 1_047_552);
        assert_eq!(budget_for_open_files(40), 16);
        // Derived from this process's own limit when the flag is absent.
        let derived = Protection::default().connection_budget();
        assert!(derived.open_file_limit.is_some());
        let set = Protection {
            max_connections: Some(7),
            ..Protection::default()
        };
        assert_eq!(set.connection_budget().max_connections, 7);
    }
}
