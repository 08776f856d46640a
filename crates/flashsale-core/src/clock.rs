//! The clock is an input: the domain never reads the time itself.
//!
//! The server injects a [`SystemClock`]; tests inject a [`ManualClock`] and move it to the exact
//! instants they care about instead of sleeping.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use time::OffsetDateTime;

/// A source of "now" in UTC.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> OffsetDateTime;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    // Nanoseconds since the Unix epoch; an atomic so reads never block the hot path under test.
    nanos: AtomicI64,
    // Serialises `advance` against `set` so concurrent moves never lose an update.
    moves: Mutex<()>,
}

impl ManualClock {
    /// A clock frozen at `at`.
    pub fn new(at: OffsetDateTime) -> Self {
        Self {
            nanos: AtomicI64::new(to_nanos(at)),
            moves: Mutex::new(()),
        }
    }

    /// Moves the clock to `at` (backwards too: tests of FL-5 need that).
    pub fn set(&self, at: OffsetDateTime) {
        let _guard = self.moves.lock().unwrap_or_else(|e| e.into_inner());
        self.nanos.store(to_nanos(at), Ordering::SeqCst);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: time::Duration) {
        let _guard = self.moves.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.nanos.load(Ordering::SeqCst) + by.whole_nanoseconds() as i64;
        self.nanos.store(next, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        let nanos = self.nanos.load(Ordering::SeqCst);
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

fn to_nanos(at: OffsetDateTime) -> i64 {
    // i64 nanoseconds cover 1677..2262, far wider than any sale.
    at.unix_timestamp_nanos() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(datetime!(2026-11-22 10:00 UTC));
        assert_eq!(clock.now(), datetime!(2026-11-22 10:00 UTC));
        clock.advance(time::Duration::milliseconds(1500));
        assert_eq!(clock.now(), datetime!(2026-11-22 10:00:01.5 UTC));
        clock.set(datetime!(2026-11-22 09:00 UTC));
        assert_eq!(clock.now(), datetime!(2026-11-22 09:00 UTC));
    }
}
