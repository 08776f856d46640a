//! Instants as the scale-out store writes them down: microseconds since the Unix epoch (what
//! the scripts store and Redis's `TIME` gives), and local Unix milliseconds (for the short
//! waits measured here). A leaf.

use time::OffsetDateTime;

/// An instant from microseconds since the epoch.
pub(crate) fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Microseconds since the epoch.
pub(crate) fn to_micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

/// Local wall-clock time in Unix milliseconds.
pub(crate) fn unix_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
