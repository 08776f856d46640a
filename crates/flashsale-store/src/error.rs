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
use std::sync::Arc;
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

    /// This error once for each of `n` callers whose shared call failed (a batch): the same
    /// kind and words for each, the cause beneath shared, so every report reads the same.
    pub(crate) fn for_each_of(self, n: usize) -> Vec<StoreError> {
        let shared = |source: Option<Cause>| source.map(|s| SharedCause(Arc::new(s)));
        let copy = |source: &Option<SharedCause>| -> Option<Cause> {
            source.clone().map(|s| Box::new(s) as Cause)
        };
        match self {
            Self::Unavailable { what, source } => {
                let source = shared(source);
                (0..n)
                    .map(|_| Self::Unavailable {
                        what: what.clone(),
                        source: copy(&source),
                    })
                    .collect()
            }
            Self::Internal { what, source } => {
                let source = shared(source);
                (0..n)
                    .map(|_| Self::Internal {
                        what: what.clone(),
                        source: copy(&source),
                    })
                    .collect()
            }
            Self::Timeout { what } => (0..n).map(|_| Self::timeout(what.clone())).collect(),
            Self::ShuttingDown => (0..n).map(|_| Self::ShuttingDown).collect(),
        }
    }

    /// The error and every cause beneath it on one line, `: `-separated (for logs).
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

/// One cause shared by the errors of every caller of a failed batch: it reads as the cause
/// itself (its text, then its own source).
#[derive(Debug, Clone)]
struct SharedCause(Arc<Cause>);

impl fmt::Display for SharedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for SharedCause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
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
    fn each_caller_of_a_failed_batch_gets_the_same_error() {
        #[derive(Debug, Error)]
        #[error("io: {0}")]
        struct Wrapper(#[source] io::Error);
        let e = StoreError::unavailable_from(
            "redis admission",
            Wrapper(io::Error::other("connection reset")),
        );
        let want = e.report().to_string();
        let each = e.for_each_of(3);
        assert_eq!(each.len(), 3);
        for e in &each {
            assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
            assert_eq!(e.report().to_string(), want);
        }
        assert_eq!(
            want,
            "store unavailable: redis admission: io: connection reset"
        );
        let timeouts = StoreError::timeout("redis admission").for_each_of(2);
        assert!(
            timeouts
                .iter()
                .all(|e| e.to_string() == "store timed out: redis admission")
        );
        let internal = StoreError::internal("unexpected reply").for_each_of(1);
        assert!(matches!(internal[..], [StoreError::Internal { .. }]));
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
