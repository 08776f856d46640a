//! Infrastructure failures. Business outcomes (sold out, limit reached) are not errors: they
//! are [`crate::PurchaseOutcome`] values.
//!
//! Each error says what the store was doing (`what`) and carries the failure underneath it
//! as its [`std::error::Error::source`], so whoever logs it (the HTTP layer, once per 5xx) can
//! print the whole chain with [`StoreError::report`]: "store unavailable: postgres commit
//! orders: db error: ERROR: ...". The kinds are few on purpose: each maps to one HTTP answer.

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use thiserror::Error;

/// The failure underneath a [`StoreError`]: a Redis, PostgreSQL, SQLite or I/O error, or one of
/// the store's own (a malformed script reply, a failed write).
pub type Cause = Box<dyn Error + Send + Sync + 'static>;

/// A store could not do what was asked; in every case but `Timeout` nothing was taken.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A dependency (disk, Redis, PostgreSQL) refused or is unreachable (HTTP 503 `unavailable`).
    #[error("store unavailable: {what}")]
    Unavailable {
        /// What the store was doing.
        what: Cow<'static, str>,
        /// The failure underneath, if there is one.
        #[source]
        source: Option<Cause>,
    },
    /// A dependency did not answer in time, so the outcome of a write is not known (HTTP 503
    /// `timeout`: the buyer checks their orders or retries with the same key). A store that
    /// knows nothing was taken answers `Unavailable` instead.
    #[error("store timed out: {what}")]
    Timeout {
        /// What the store was waiting for.
        what: Cow<'static, str>,
    },
    /// The store is shutting down (HTTP 503 `unavailable`).
    #[error("store is shutting down")]
    ShuttingDown,
    /// A bug or corrupt data (HTTP 500 `internal`), with its cause.
    #[error("store internal error: {what}")]
    Internal {
        /// What went wrong.
        what: Cow<'static, str>,
        /// The failure underneath, if there is one.
        #[source]
        source: Option<Cause>,
    },
}

impl StoreError {
    /// [`StoreError::Unavailable`] with no cause beneath it (the store itself refuses).
    pub fn unavailable(what: impl Into<Cow<'static, str>>) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: None,
        }
    }

    /// [`StoreError::Unavailable`] caused by `source`.
    pub fn unavailable_from(what: impl Into<Cow<'static, str>>, source: impl Into<Cause>) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// [`StoreError::Timeout`].
    pub fn timeout(what: impl Into<Cow<'static, str>>) -> Self {
        Self::Timeout { what: what.into() }
    }

    /// [`StoreError::Internal`] with no cause beneath it.
    pub fn internal(what: impl Into<Cow<'static, str>>) -> Self {
        Self::Internal {
            what: what.into(),
            source: None,
        }
    }

    /// [`StoreError::Internal`] caused by `source`.
    pub fn internal_from(what: impl Into<Cow<'static, str>>, source: impl Into<Cause>) -> Self {
        Self::Internal {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// The error and every cause beneath it on one line, `: `-separated (for logs).
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

/// A [`StoreError`] with its whole cause chain, for logging (see [`StoreError::report`]).
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(&'a StoreError);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            // Some errors (Redis's I/O errors) repeat their source's text in their own: say it
            // once.
            if !text.is_empty() && !line.ends_with(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = e.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn the_display_says_what_failed_and_the_report_reaches_the_root_cause() {
        let e = StoreError::unavailable_from(
            "postgres commit orders",
            io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"),
        );
        assert_eq!(e.to_string(), "store unavailable: postgres commit orders");
        assert_eq!(
            e.report().to_string(),
            "store unavailable: postgres commit orders: connection refused"
        );
        assert!(e.source().is_some());
    }

    #[test]
    fn an_error_without_a_cause_reports_itself_alone() {
        let e = StoreError::timeout("redis admission");
        assert_eq!(e.report().to_string(), "store timed out: redis admission");
        assert!(e.source().is_none());
        assert_eq!(
            StoreError::ShuttingDown.report().to_string(),
            "store is shutting down"
        );
    }

    #[test]
    fn a_cause_repeating_its_own_source_is_said_once() {
        #[derive(Debug, Error)]
        #[error("io: {0}")]
        struct Wrapper(#[source] io::Error);
        let e = StoreError::internal_from("loading", Wrapper(io::Error::other("disk gone")));
        assert_eq!(
            e.report().to_string(),
            "store internal error: loading: io: disk gone"
        );
    }
}
