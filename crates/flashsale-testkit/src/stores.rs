//! The two stores of `flashsale-store` as [`StoreUnderTest`]s, each opened through
//! [`StoreConfig`], as the server opens them.

use crate::StoreUnderTest;
use crate::isolation::{Cleanup, database_url, isolated, redis_url};
use async_trait::async_trait;
use flashsale_core::SystemClock;
use flashsale_store::redis_pg::RedisPgConfig;
use flashsale_store::{SaleStore, StoreConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Opens `config`, failing the test loudly with what could not be opened.
async fn open(config: StoreConfig) -> Arc<dyn SaleStore> {
    let shown = format!("{config:?}");
    config
        .open(Arc::new(SystemClock))
        .await
        .unwrap_or_else(|e| panic!("cannot open {shown} (for Redis/PostgreSQL set TEST_REDIS_URL / TEST_DATABASE_URL): {e}"))
}

/// The embedded store in a temporary directory of its own; opened again, it reopens that
/// directory (the previous store must be dropped first: one process, one store per directory).
pub struct Embedded {
    dir: tempfile::TempDir,
}

#[async_trait]
impl StoreUnderTest for Embedded {
    async fn isolated() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    async fn open(&self) -> Arc<dyn SaleStore> {
        open(StoreConfig::Embedded {
            data_dir: self.dir.path().to_owned(),
        })
        .await
    }

    fn describe(&self) -> String {
        self.dir.path().display().to_string()
    }

    async fn open_described(description: &str) -> Arc<dyn SaleStore> {
        open(StoreConfig::Embedded {
            data_dir: PathBuf::from(description),
        })
        .await
    }
}

/// The scale-out store on the shared services, in a schema and key prefix of its own (dropped
/// afterwards); opened again, it is a new instance on the same schema and prefix.
pub struct RedisPg {
    cleanup: Cleanup,
}

impl RedisPg {
    /// This case's settings.
    pub fn config(&self) -> &RedisPgConfig {
        &self.cleanup.cfg
    }
}

/// A crashed instance's reservations wait out their lease before another instance may
/// release them: short, so a crash case does not wait the default 10 s.
const CRASH_LEASE: Duration = Duration::from_secs(1);

#[async_trait]
impl StoreUnderTest for RedisPg {
    async fn isolated() -> Self {
        let mut cfg = isolated(&redis_url(), &database_url());
        // Expired reservations (a crashed instance's) are found sooner.
        cfg.reconcile_interval = Duration::from_millis(250);
        Self {
            cleanup: Cleanup { cfg },
        }
    }

    async fn open(&self) -> Arc<dyn SaleStore> {
        open(StoreConfig::RedisPg(self.config().clone())).await
    }

    fn describe(&self) -> String {
        let cfg = self.config();
        [
            &cfg.redis_url,
            &cfg.database_url,
            &cfg.key_prefix,
            &cfg.pg_schema,
        ]
        .map(String::as_str)
        .join("\n")
    }

    async fn open_described(description: &str) -> Arc<dyn SaleStore> {
        let mut lines = description.lines();
        let mut field = || lines.next().expect("a described Redis/PostgreSQL store");
        let mut cfg = isolated(field(), field());
        cfg.key_prefix = field().to_owned();
        cfg.pg_schema = field().to_owned();
        cfg.lease = CRASH_LEASE;
        open(StoreConfig::RedisPg(cfg)).await
    }
}
