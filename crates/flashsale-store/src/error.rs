//! Infrastructure failures. Business outcomes (sold out, limit reached) are not errors: they
//! are [`crate::PurchaseOutcome`] values.

use thiserror::Error;

/// A store could not do what was asked; in every case nothing was taken.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A dependency (disk, Redis, PostgreSQL) refused or is unreachable (HTTP 503 `unavailable`).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A dependency did not answer in time, so the outcome of a write is not known (HTTP 503
    /// `timeout`: the buyer checks their orders or retries with the same key). A store that
    /// knows nothing was taken answers `Unavailable` instead.
    #[error("store timed out: {0}")]
    Timeout(String),
    /// The store is shutting down (HTTP 503 `unavailable`).
    #[error("store is shutting down")]
    ShuttingDown,
    /// A bug or corrupt data (HTTP 500 `internal`), with its cause.
    #[error("store internal error: {0}")]
    Internal(String),
}
