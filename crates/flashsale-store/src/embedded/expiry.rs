//! The expiry timer (CO-5, SPEC 9 expire): a thread that, every [`EXPIRY_INTERVAL`], expires
//! the reservations whose deadline has passed on the store's deciding clock, without any
//! request.
//!
//! It decides nothing of its own: each due reservation goes through the same step as a buyer's
//! or the payment system's event ([`SaleBook::decide_event`] with `OrderEvent::Expire`, then
//! the writer's group commit), so an expiry racing a payment or a cancel has one winner. Why it
//! cannot expire a reservation twice: the book decides at most one transition per order at a
//! time (the order is *in transition* until its write is durable and applied, and
//! [`SaleBook::due`] skips it meanwhile); once applied the order is no longer `reserved`, so
//! `transition` refuses a second expiry and moves nothing; and the write itself only updates a
//! row still `reserved`. After a crash the database says which reservations were expired: the
//! rest are read back `reserved`, and the first tick after open expires those already due.
//!
//! An expiry frees its units through that same step, so its unit is offered to the waitlist in
//! the expiry's own transaction (see `book`); if the list's head is still being written, the
//! expiry is left for a later tick.
//!
//! It does not wait for the writes it sends (the syncer applies them), so a slow disk cannot
//! hold up the next tick; a failed write leaves the reservation due, and a later tick tries
//! again.

use super::book::{EventStep, SaleBook};
use super::writer::{TransitionWrite, Write};
use flashsale_core::{Clock, OrderEvent, SaleId};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use time::OffsetDateTime;

/// How often the timer looks for due reservations: the most an expiry lags its deadline, plus
/// the group commit.
pub const EXPIRY_INTERVAL: Duration = Duration::from_millis(100);

/// The most reservations of one sale the timer sends in one tick, so a burst of deadlines is
/// spread over ticks rather than queued as one enormous group.
const EXPIRY_BATCH: usize = 1024;

/// The store's deciding clock behind its guard: never an instant before one it returned.
pub(crate) struct GuardedClock {
    clock: Arc<dyn Clock>,
    /// The latest instant returned, in nanoseconds since the epoch.
    high_water: AtomicI64,
}

impl GuardedClock {
    /// `clock`, never read before `floor`.
    pub(crate) fn new(clock: Arc<dyn Clock>, floor: OffsetDateTime) -> Self {
        Self {
            clock,
            high_water: AtomicI64::new(nanos(floor)),
        }
    }

    /// Now, or the latest instant already returned if the clock went back.
    pub(crate) fn now(&self) -> OffsetDateTime {
        let at = self.clock.now();
        let now = nanos(at);
        let seen = self.high_water.fetch_max(now, Ordering::AcqRel);
        // Usually the clock moved forward: its own reading is the answer, and rebuilding it
        // from nanoseconds (a calendar computation, on every purchase) is not needed.
        if seen <= now && at.offset().is_utc() {
            return at;
        }
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(seen.max(now)))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Now at the stored precision (microseconds): what every decision is taken at, so that an
    /// instant read back after a restart is the one decided.
    pub(crate) fn decision_instant(&self) -> OffsetDateTime {
        flashsale_core::sale::truncate_to_micros(self.now())
    }
}

/// Nanoseconds since the epoch (i64 covers 1677..2262, far wider than any sale).
fn nanos(at: OffsetDateTime) -> i64 {
    at.unix_timestamp_nanos() as i64
}

/// Starts the timer thread; it ends when `stop` is dropped (or sent to), or the writer is gone.
pub(crate) fn spawn(
    clock: Arc<GuardedClock>,
    books: Arc<RwLock<BTreeMap<SaleId, Arc<SaleBook>>>>,
    writes: mpsc::Sender<Write>,
    stop: mpsc::Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flashsale-expiry".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(EXPIRY_INTERVAL) {
                if !tick(&clock, &books, &writes) {
                    return;
                }
            }
        })
}

/// Sends every due reservation's expiry to the writer; `false` once the writer is gone.
fn tick(
    clock: &GuardedClock,
    books: &RwLock<BTreeMap<SaleId, Arc<SaleBook>>>,
    writes: &mpsc::Sender<Write>,
) -> bool {
    let now = clock.decision_instant();
    let books: Vec<Arc<SaleBook>> = books.read().values().cloned().collect();
    for book in books {
        for id in book.due(now, EXPIRY_BATCH) {
            // Anything but a decided expiry (paid or cancelled meanwhile, in transition) is
            // left alone: it is no longer due, or a later tick sees it again.
            let EventStep::Decided(decided) = book.decide_event(id, &OrderEvent::Expire, now)
            else {
                continue;
            };
            let write = Write::Transition(TransitionWrite {
                book: Arc::clone(&book),
                decided,
                reply: None,
            });
            if let Err(mpsc::SendError(write)) = writes.send(write) {
                if let Write::Transition(write) = write {
                    write.abandon();
                }
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_core::ManualClock;
    use time::macros::datetime;

    #[test]
    fn the_guarded_clock_follows_its_clock_forward_but_never_back_nor_below_its_floor() {
        let manual = Arc::new(ManualClock::new(datetime!(2026-01-01 10:00 UTC)));
        let guarded = GuardedClock::new(manual.clone(), datetime!(2026-01-01 9:00 UTC));
        assert_eq!(guarded.now(), datetime!(2026-01-01 10:00 UTC));
        manual.advance(time::Duration::nanoseconds(5_000_000_123));
        assert_eq!(guarded.now(), datetime!(2026-01-01 10:00:05.000000123 UTC));
        manual.set(datetime!(2026-01-01 9:59 UTC));
        assert_eq!(
            guarded.now(),
            datetime!(2026-01-01 10:00:05.000000123 UTC),
            "a clock stepped back reads as the latest instant already returned"
        );
        let floored = GuardedClock::new(manual, datetime!(2026-01-01 11:00 UTC));
        assert_eq!(floored.now(), datetime!(2026-01-01 11:00 UTC));
    }

    /// A clock that reads a fixed instant at whatever offset it was given.
    struct Fixed(OffsetDateTime);

    impl Clock for Fixed {
        fn now(&self) -> OffsetDateTime {
            self.0
        }
    }

    #[test]
    fn a_reading_at_another_offset_is_answered_in_utc() {
        let at = datetime!(2026-01-01 12:00 +02:00);
        let guarded = GuardedClock::new(Arc::new(Fixed(at)), datetime!(2025-01-01 0:00 UTC));
        let now = guarded.now();
        assert_eq!(now, at);
        assert!(now.offset().is_utc(), "{now}");
    }
}
