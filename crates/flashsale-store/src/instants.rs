//! Instants as the stores write them down: microseconds since the Unix epoch (what the
//! scale-out scripts store, Redis's `TIME` gives, and the account tables keep), and local Unix
//! milliseconds (for the short waits the scale-out store measures). A leaf.

use time::OffsetDateTime;

/// An instant from microseconds since the epoch.
pub(crate) fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Microseconds since the epoch.
pub(crate) fn to_micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// Local wall-clock time in Unix milliseconds.
pub(crate) fn unix_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
