//! Which store serves the sales, chosen in one place: [`StoreConfig`] names a backend with all
//! of its settings and opens it. The server maps its flags onto it; tests and tools build one
//! directly. Adding a backend means a variant here, not a match in each caller.

use crate::embedded::EmbeddedStore;
use crate::redis_pg::{RedisPgConfig, RedisPgStore};
use crate::{SaleStore, StoreError};
use flashsale_core::Clock;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A backend and everything it needs to open.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// Single node, no external service: memory + SQLite in `data_dir` (it has no tuning of
    /// its own: its batch and flush bounds are fixed in `embedded/writer.rs`).
    Embedded {
        /// Directory of the database (created if missing; one process at a time).
        data_dir: PathBuf,
    },
    /// Scale-out: Redis (admission) + PostgreSQL (durable orders).
    RedisPg(RedisPgConfig),
}

impl StoreConfig {
    /// Opens the store: errors here (a locked directory, an unreachable service, a failed
    /// migration) come before any traffic. The embedded store decides with `clock`; the
    /// scale-out store with Redis's clock (one clock for every instance), so it ignores it.
    pub async fn open(self, clock: Arc<dyn Clock>) -> Result<Arc<dyn SaleStore>, StoreError> {
        match self {
            Self::Embedded { data_dir } => {
                // Opening reads the whole database: off the async workers.
                let store =
                    tokio::task::spawn_blocking(move || EmbeddedStore::open(&data_dir, clock))
                        .await
                        .map_err(|e| StoreError::internal_from("store open task failed", e))??;
                Ok(Arc::new(store))
            }
            Self::RedisPg(config) => Ok(Arc::new(RedisPgStore::connect(config).await?)),
        }
    }

    /// The directory on this machine the store keeps its files in, if it has one (the server
    /// keeps the generated admin token beside them; a shared store has none to keep it in).
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Self::Embedded { data_dir } => Some(data_dir),
            Self::RedisPg(_) => None,
        }
    }
}
