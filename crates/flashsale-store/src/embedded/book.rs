//! One sale's in-memory book: the critical section where attempts are decided.
//!
//! The lock is a plain (parking_lot) mutex held for a few hash-map operations and never across
//! an await or I/O: the store takes it to decide and reserve, releases it while the writer
//! makes the order durable, and takes it again to confirm or undo. Holding it across the disk
//! write would serialise every buyer behind one fsync; releasing it lets one fsync commit a
//! whole group of orders.
//!
//! Units are either `sold` (durable) or `pending` (reserved, write in flight). Admission counts
//! pending units as taken, so nothing is ever oversold; everything that is *reported* (stock
//! left, sold out, the buyer's orders) counts durable units only, so a failed write that gives
//! its units back never takes a report back: a sale is sold out only once its last units are
//! durable, and an ended sale never turns active again (FL-5). A refusal that a failed write
//! could make untrue (`sold_out` while the last units are pending, `already_purchased` while
//! the buyer's own order is pending) is not given: the attempt waits for those writes to settle
//! and is decided again.
//!
//! Hold mode (checkout, CO-3..CO-6): a durable reservation's units are `held`, not `sold`; a
//! transition of an order (pay, cancel, expire) is decided here at one instant of the clock
//! guard, and its order is *in transition* from that decision until the write is durable and
//! applied ([`SaleBook::finish_transition`]): later events for that order wait and are decided
//! against what it became, so racing events have exactly one winner, and a failed write leaves
//! the book exactly as it was (nothing moved before the write was durable). Live reservations
//! are also indexed by deadline, so the expiry timer reads only the due ones.
//!
//! Waitlist (CO-9, CO-10): the list ([`super::waitlist::List`]) is part of the book state, so a
//! join is decided against the same figures as purchases. A release (cancel or expiry) decides
//! its offers in the same critical section as the release itself and carries them in its
//! [`Decided`]: the waiters are taken off the list at once (no other release can offer to
//! them), the writer writes the offers in the release's transaction, and [`free_units`]
//! applies both once durable; a failed write puts the waiters back at their places.
//!
//! An operator's change (edit, cancel) is decided in the same critical section, with the same
//! clock guard, against `sold + pending`; from that decision until the change is durable and in
//! place ([`SaleBook::finish_change`]) the book is *changing*: attempts wait (as for writes in
//! flight) rather than being decided against a sale about to be replaced, so an edit racing a
//! purchase is before it or after it, never beside it.

use super::waitlist::{Claim, List, ListOp};
use crate::ledger::{LedgerCause, LedgerEntry, LedgerKey, merge};
use crate::model::{
    CheckoutCounts, Order, OrderKey, PurchaseOutcome, RejectionCounts, SaleStatus, WaitlistJoin,
    WaitlistLeave, WaitlistPlace,
};
use crate::sharded_map::ShardedMap;
use flashsale_core::{
    ChangeRefusal, CheckoutMode, Decision, IdempotencyKey, OrderEvent, OrderState, OrderStatus,
    Outcome, Quantity, QuantityAboveLimit, Rejection, Sale, SaleChange, SaleState, Transition,
    TransitionError, UserId, WaitlistRefusal, check_quantity, decide, decide_units,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

/// How long a key remembers a refusal while its sale is still open. Keys of confirmed orders
/// are kept as long as the order (on disk); refusals are kept in memory only.
pub const REFUSAL_RETENTION: time::Duration = time::Duration::minutes(10);
/// The most refusals one sale remembers by key; the oldest is forgotten first.
pub const MAX_REFUSED_KEYS: usize = 10_000;

/// What an idempotency key was first used for: a later use with anything else is refused.
struct Fingerprint {
    user: UserId,
    quantity: Quantity,
}

impl Fingerprint {
    fn new(user: &UserId, quantity: Quantity) -> Self {
        Self {
            user: user.clone(),
            quantity,
        }
    }
}

/// The first attempt with a key, as the duplicates waiting on it see it.
#[derive(Debug, Clone)]
pub(crate) enum FirstAttempt {
    /// Its order is still being written.
    InFlight,
    /// Its write failed: nothing was taken.
    Failed,
    /// Decided: every duplicate gets this answer.
    Answered(PurchaseOutcome),
}

enum KeyEntry {
    /// The first attempt with this key is being written; duplicates wait on the channel.
    Pending(Fingerprint, watch::Receiver<FirstAttempt>),
    /// A durable order, replayed to every later use of the key.
    Confirmed(Fingerprint, PurchaseOutcome),
    /// A refusal decided at the instant given, replayed until [`REFUSAL_RETENTION`] has passed
    /// or the sale has ended.
    Refused(Fingerprint, PurchaseOutcome, OffsetDateTime),
}

#[derive(Default)]
struct Buyer {
    /// Units admitted, including those whose write is in flight, less those of reservations
    /// expired or cancelled: the limit counts them (CO-4: reserved + paid).
    held: u32,
    /// Units of `held` whose write is in flight.
    pending: u32,
    /// Committed orders only (nothing is shown before it is durable), as keys into
    /// `BookState::orders`, which holds each order once.
    orders: Vec<OrderKey>,
    /// Dropped (which wakes every receiver) once `pending` is back to 0.
    settled: Option<watch::Sender<()>>,
}

#[derive(Default)]
struct Counters {
    confirmed_orders: u64,
    confirmed_units: u64,
    /// Orders admitted whose write is in flight.
    pending_orders: u64,
    rejections: RejectionCounts,
}

struct BookState {
    /// The sale as it is now (replaced whole by an operator's change).
    sale: Arc<Sale>,
    /// Set from the decision of an operator's change until it is in place; dropped (which
    /// wakes every attempt waiting on it) when it is.
    changing: Option<watch::Sender<()>>,
    /// Units in durable instant orders and paid reservations.
    sold: u32,
    /// Units in durable live reservations (hold mode).
    held: u32,
    /// Units reserved by orders whose write is in flight.
    pending: u32,
    /// Set once `sold` reaches the stock: the latest `created_at` of the sale's orders.
    sold_out_at: Option<OffsetDateTime>,
    /// The latest `created_at` among durable orders.
    last_sold_at: Option<OffsetDateTime>,
    /// The clock guard: no attempt is decided at an instant before this one.
    last_decided: OffsetDateTime,
    /// Sharded, like `keys`: each grows a little at a time under the lock ([`ShardedMap`]).
    buyers: ShardedMap<UserId, Buyer>,
    /// Every committed order in export order, so a page of the operator's export is a range
    /// read, not a sort of the whole sale. Changed only through [`put_order`].
    orders: BTreeMap<OrderKey, Order>,
    /// The hold-mode tallies of `orders` (all but `waitlist_joins`, which is the list's), kept
    /// by [`put_order`] so a summary reads them instead of walking every order under the lock.
    tallies: CheckoutCounts,
    /// The key of each committed order whose id does not name its admission instant (restored
    /// orders made before ids did, or before 1970); every other order is found by its id in
    /// `orders` alone (see [`order_id_at`]).
    stray_ids: HashMap<Uuid, OrderKey>,
    /// Orders whose transition is decided and being written; dropped (which wakes the events
    /// waiting on it) once it is applied or failed.
    transitions: HashMap<Uuid, watch::Sender<()>>,
    /// Live reservations by deadline, then id: the expiry timer reads the due ones only.
    expiries: BTreeSet<(OffsetDateTime, Uuid)>,
    /// The stock ledger's recorded entries (every cause but orders, which are `orders`),
    /// each added in the same critical section as the change it records.
    recorded: BTreeMap<LedgerKey, LedgerEntry>,
    /// Each idempotency key in use: its attempt in flight, or the answer it replays.
    keys: ShardedMap<IdempotencyKey, KeyEntry>,
    /// Refused keys in the order they were stored, for retention and the bound.
    refused: VecDeque<(IdempotencyKey, OffsetDateTime)>,
    /// Dropped (which wakes every receiver) when `pending` is back to 0 or units are given back.
    stock_settled: Option<watch::Sender<()>>,
    counters: Counters,
    /// The buyers waiting for a freed unit (hold mode).
    list: List,
}

/// What the critical section decided.
pub(crate) enum Step {
    /// Answer now (rejection, replay, conflict).
    Answer(PurchaseOutcome),
    /// A duplicate of an attempt still in flight: wait for its outcome.
    Wait(watch::Receiver<FirstAttempt>),
    /// The refusal depends on writes in flight: wait until the channel closes, then decide
    /// again.
    Retry(watch::Receiver<()>),
    /// Admitted: the caller must make `order` durable, then call `confirm` or `undo`.
    Reserved(Reservation),
}

/// What deciding an event for an order came to.
pub(crate) enum EventStep {
    /// No committed order of this sale has that id.
    NotFound,
    /// Answer now: a refusal, or a decision that changes nothing; the order as it is.
    Answer(Result<Transition, TransitionError>, Order),
    /// The order's previous transition is being written: wait until the channel closes, then
    /// decide again.
    Wait(watch::Receiver<()>),
    /// The stored order cannot be read as a core order state (an invariant broken on disk).
    Invalid(&'static str),
    /// A transition that changes the order: write it, then finish it.
    Decided(Decided),
}

/// A transition decided for an order, on its way to the disk.
#[derive(Debug, Clone)]
pub(crate) struct Decided {
    /// The core's decision.
    pub transition: Transition,
    /// The order as the transition leaves it.
    pub after: Order,
    /// The ledger's cause for it.
    pub cause: LedgerCause,
    /// Its `(available, held, sold)` deltas.
    pub deltas: [i64; 3],
    /// When it was decided.
    pub at: OffsetDateTime,
    /// A release's waitlist: each waiter it took off, with the reservation offered to them
    /// (written in the same transaction as the release, CO-10).
    pub claims: Vec<Claim>,
}

/// What deciding a join or a leave came to.
pub(crate) enum ListStep<A> {
    /// Answer now; nothing changed.
    Answer(A),
    /// The answer hangs on a write in flight: wait until the channel closes, then decide again.
    Retry(watch::Receiver<()>),
    /// Decided: write it, then [`SaleBook::finish_list`] (the writer or the syncer does).
    Write(ListWrite),
}

/// A join or a leave decided for one entry of a sale's waitlist, on its way to the disk.
#[derive(Debug, Clone)]
pub(crate) struct ListWrite {
    /// The sale.
    pub sale_id: flashsale_core::SaleId,
    /// The entry's join sequence.
    pub seq: u64,
    /// Who.
    pub user: UserId,
    /// Join or leave.
    pub op: ListOp,
    /// When it was decided.
    pub at: OffsetDateTime,
    /// A join's place, as answered once durable.
    pub position: usize,
}

/// What deciding an operator's change came to.
pub(crate) enum ChangeStep {
    /// Refused by the rules; nothing changed.
    Refused(ChangeRefusal),
    /// Another change is in flight: wait until the channel closes, then decide again.
    Busy(watch::Receiver<()>),
    /// Allowed: the book is changing until [`SaleBook::finish_change`]; `new` must be made
    /// durable first.
    Claimed {
        /// The sale before.
        old: Arc<Sale>,
        /// The sale after.
        new: Sale,
        /// The instant of the decision.
        at: OffsetDateTime,
    },
}

/// An admitted order whose write is in flight.
pub(crate) struct Reservation {
    /// The order to write.
    pub order: Order,
    /// The idempotency key, if the attempt had one, and the channel its duplicates wait on.
    pub key: Option<KeyClaim>,
}

/// An idempotency key held by an attempt in flight.
pub(crate) struct KeyClaim {
    /// The key.
    pub key: IdempotencyKey,
    /// Tells the duplicates waiting on the key how the attempt ended.
    pub duplicates: watch::Sender<FirstAttempt>,
}

/// A sale's operator counters (see [`SaleBook::counters`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BookCounters {
    /// Attempts decided: confirmed + rejections + in flight.
    pub attempts: u64,
    /// Durable orders.
    pub confirmed_orders: u64,
    /// Units in durable orders.
    pub confirmed_units: u64,
    /// Rejections by reason.
    pub rejections: RejectionCounts,
}

/// Counters persisted by the writer so the summary survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PersistedCounters {
    /// Attempts decided: always confirmed + rejections + in flight.
    pub attempts: u64,
    /// Rejections by reason.
    pub rejections: RejectionCounts,
    /// The clock guard's instant, so a restart cannot re-open an ended sale either.
    pub last_decided: OffsetDateTime,
}

impl Default for PersistedCounters {
    fn default() -> Self {
        Self {
            attempts: 0,
            rejections: RejectionCounts::default(),
            last_decided: OffsetDateTime::UNIX_EPOCH,
        }
    }
}

/// One sale and its live state.
pub(crate) struct SaleBook {
    state: Mutex<BookState>,
}

impl SaleBook {
    /// A book for a sale with nothing sold yet.
    pub fn new(sale: Sale) -> Self {
        Self {
            state: Mutex::new(BookState {
                sale: Arc::new(sale),
                changing: None,
                sold: 0,
                held: 0,
                pending: 0,
                sold_out_at: None,
                last_sold_at: None,
                last_decided: OffsetDateTime::UNIX_EPOCH,
                buyers: ShardedMap::new(),
                orders: BTreeMap::new(),
                tallies: CheckoutCounts::default(),
                stray_ids: HashMap::new(),
                transitions: HashMap::new(),
                expiries: BTreeSet::new(),
                recorded: BTreeMap::new(),
                keys: ShardedMap::new(),
                refused: VecDeque::new(),
                stock_settled: None,
                counters: Counters::default(),
                list: List::default(),
            }),
        }
    }

    /// The sale as it is now.
    pub fn sale(&self) -> Arc<Sale> {
        Arc::clone(&self.state.lock().sale)
    }

    /// Decides an operator's change at `now` (or the last decided instant, if the clock went
    /// back) against the units sold or in flight; if allowed, the book is changing from here
    /// until [`SaleBook::finish_change`].
    pub fn begin_change(&self, change: &SaleChange, now: OffsetDateTime) -> ChangeStep {
        let mut st = self.state.lock();
        if let Some(changing) = &st.changing {
            return ChangeStep::Busy(changing.subscribe());
        }
        let now = now.max(st.last_decided);
        st.last_decided = now;
        let taken = st.sold + st.held + st.pending;
        // In hold mode units only held still belong to the sale (it is not sold out while any
        // is held: buyers wait for them), so the sale's state is decided on the sold units;
        // the stock still may not go below every unit taken.
        let decided_on = match st.sale.checkout {
            CheckoutMode::Instant => taken,
            CheckoutMode::Hold { .. } => st.sold,
        };
        let applied =
            flashsale_core::change::apply(&st.sale, now, decided_on, change).and_then(|new| {
                if new.stock < taken {
                    Err(ChangeRefusal::Invalid(format!(
                        "stock must not be below the {taken} units already taken"
                    )))
                } else {
                    Ok(new)
                }
            });
        match applied {
            Err(refusal) => ChangeStep::Refused(refusal),
            Ok(new) => {
                st.changing = Some(watch::channel(()).0);
                ChangeStep::Claimed {
                    old: Arc::clone(&st.sale),
                    new,
                    at: now,
                }
            }
        }
    }

    /// Ends the change begun by [`SaleBook::begin_change`]: `Some(sale)` once it is durable
    /// (the book holds it from now on), `None` if it could not be made durable (nothing
    /// changed). Either way attempts waiting on it are decided again. The change's ledger
    /// entry, if it has one, goes in with it: no reader sees one without the other.
    pub fn finish_change(&self, new: Option<Sale>, entry: Option<LedgerEntry>) {
        let mut st = self.state.lock();
        if let Some(sale) = new {
            st.sale = Arc::new(sale);
            if let Some(entry) = entry {
                st.recorded.insert(entry.key, entry);
            }
        }
        drop(st.changing.take());
    }

    /// Adds a durable recorded ledger entry (a sale's creation, or one read back from disk).
    /// Read back after the orders: in hold mode a sale sells out at its last payment.
    pub fn record(&self, entry: Option<LedgerEntry>) {
        if let Some(entry) = entry {
            let mut st = self.state.lock();
            if entry.cause == LedgerCause::Payment {
                note_sold(&mut st, entry.at());
            }
            st.recorded.insert(entry.key, entry);
        }
    }

    /// Restores a committed order while rebuilding from disk.
    /// A hold-mode order comes back with its current status: its units are held (reserved),
    /// sold (paid) or free again (expired, cancelled), and its key replays the reservation as
    /// it was first answered.
    pub fn restore(&self, order: Order, key: Option<IdempotencyKey>) {
        let mut st = self.state.lock();
        let q = order.quantity;
        st.counters.confirmed_orders += 1;
        st.counters.confirmed_units += u64::from(q);
        st.last_decided = st.last_decided.max(order.created_at);
        let counts = match order.status {
            OrderStatus::Confirmed => {
                st.sold = st.sold.saturating_add(q);
                st.last_sold_at = st.last_sold_at.max(Some(order.created_at));
                if st.sold >= st.sale.stock {
                    // Derived from the orders, not from a flag: the same instant whichever
                    // order committed last.
                    st.sold_out_at = st.last_sold_at;
                }
                true
            }
            OrderStatus::Reserved => {
                st.held = st.held.saturating_add(q);
                if let Some(at) = order.expires_at {
                    st.expiries.insert((at, order.order_id));
                }
                true
            }
            // The sold-out instant is the last payment's, read back from the ledger.
            OrderStatus::Paid => {
                st.sold = st.sold.saturating_add(q);
                true
            }
            OrderStatus::Expired | OrderStatus::Cancelled => false,
        };
        if let Some(key) = key {
            let fp = Fingerprint::new(&order.user_id, Quantity::from_stored(q));
            let first = Order {
                status: if order.expires_at.is_some() {
                    OrderStatus::Reserved
                } else {
                    OrderStatus::Confirmed
                },
                payment_ref: None,
                ..order.clone()
            };
            st.keys.insert(
                key,
                KeyEntry::Confirmed(fp, PurchaseOutcome::Confirmed(first)),
            );
        }
        let buyer = st.buyers.get_or_default(&order.user_id);
        if counts {
            buyer.held += q;
        }
        buyer.orders.push(order.key());
        put_order(&mut st, order);
    }

    /// Restores the persisted counters and clock guard while rebuilding from disk.
    pub fn restore_meta(&self, counters: PersistedCounters) {
        let mut st = self.state.lock();
        st.counters.rejections = counters.rejections;
        st.last_decided = st.last_decided.max(counters.last_decided);
    }

    /// The latest instant this sale was decided at (the clock guard).
    pub fn last_decided(&self) -> OffsetDateTime {
        self.state.lock().last_decided
    }

    /// Decides one attempt at `now` (or at the last decided instant, if the clock went back)
    /// and reserves stock if admitted. Never blocks on I/O.
    pub fn admit(
        &self,
        user: &UserId,
        quantity: Quantity,
        key: Option<&IdempotencyKey>,
        now: OffsetDateTime,
    ) -> Step {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        // Core's first rule (`decide` states it too), checked before the key is looked up:
        // the answer depends on the request and the sale alone.
        if let Err(QuantityAboveLimit { limit }) = check_quantity(&st.sale, quantity) {
            return Step::Answer(PurchaseOutcome::QuantityAboveLimit { limit });
        }
        if let Some(changing) = &st.changing {
            // Decided after the operator's change, against the sale it makes.
            return Step::Retry(changing.subscribe());
        }
        // The clock guard: a wall clock stepped back must not re-open an ended sale.
        let now = now.max(st.last_decided);
        st.last_decided = now;
        let sale = Arc::clone(&st.sale);
        let ended = matches!(
            sale.state(now, sale.stock.saturating_sub(st.sold)),
            SaleState::Ended(_)
        );
        if ended && !st.refused.is_empty() {
            // Every later decision is the sale's final answer (FL-5): remembered refusals are
            // no longer needed, and forgetting them makes a replay the same before and after
            // a restart.
            for (key, _) in st.refused.drain(..) {
                if matches!(st.keys.get(&key), Some(KeyEntry::Refused(..))) {
                    st.keys.remove(&key);
                }
            }
        }
        if let Some(key) = key {
            let same = |fp: &Fingerprint| fp.user == *user && fp.quantity == quantity;
            match st.keys.get(key) {
                Some(KeyEntry::Confirmed(fp, outcome)) => {
                    return Step::Answer(if same(fp) {
                        outcome.clone()
                    } else {
                        PurchaseOutcome::IdempotencyKeyReused
                    });
                }
                Some(KeyEntry::Refused(fp, outcome, at)) if *at + REFUSAL_RETENTION > now => {
                    return Step::Answer(if same(fp) {
                        outcome.clone()
                    } else {
                        PurchaseOutcome::IdempotencyKeyReused
                    });
                }
                Some(KeyEntry::Pending(fp, rx)) => {
                    return if same(fp) {
                        Step::Wait(rx.clone())
                    } else {
                        Step::Answer(PurchaseOutcome::IdempotencyKeyReused)
                    };
                }
                Some(KeyEntry::Refused(..)) | None => {}
            }
        }
        let available = sale.stock.saturating_sub(st.sold + st.held + st.pending);
        let (bought, buyer_pending) = st.buyers.get(user).map_or((0, 0), |b| (b.held, b.pending));
        let decision = match sale.checkout {
            CheckoutMode::Instant => decide(&sale, now, available, bought, quantity),
            // Units only held still belong to the sale: it stays active while they are.
            CheckoutMode::Hold { .. } => decide_units(
                &sale,
                now,
                available,
                sale.stock.saturating_sub(st.sold),
                bought,
                quantity,
            ),
        };
        match decision {
            Decision::Reject(Rejection::SoldOut) if st.pending > 0 => Step::Retry(
                st.stock_settled
                    .get_or_insert_with(|| watch::channel(()).0)
                    .subscribe(),
            ),
            Decision::Reject(Rejection::AlreadyPurchased | Rejection::LimitExceeded { .. })
                if buyer_pending > 0 =>
            {
                let buyer = st.buyers.get_or_default(user);
                Step::Retry(
                    buyer
                        .settled
                        .get_or_insert_with(|| watch::channel(()).0)
                        .subscribe(),
                )
            }
            Decision::Reject(rejection) => {
                st.counters.rejections.count(rejection);
                let orders = match rejection {
                    Rejection::AlreadyPurchased | Rejection::LimitExceeded { .. } => {
                        buyer_orders(st, user)
                    }
                    _ => Vec::new(),
                };
                let outcome = PurchaseOutcome::Rejected { rejection, orders };
                match key {
                    // Once the sale has ended every answer is final and the same for every key:
                    // nothing to remember (the sold-out fast path stores nothing).
                    Some(key) if !ended => {
                        self.remember_refusal(st, key, user, quantity, &outcome, now)
                    }
                    Some(key) => {
                        st.keys.remove(key);
                    }
                    None => {}
                }
                Step::Answer(outcome)
            }
            // Checked at the top, before the key lookup, so not reached; answering it here
            // keeps the match whole (nothing counted, nothing remembered).
            Decision::QuantityAboveLimit(above) => {
                Step::Answer(PurchaseOutcome::QuantityAboveLimit { limit: above.limit })
            }
            Decision::Admit => {
                let q = quantity.get();
                st.pending += q;
                st.counters.pending_orders += 1;
                let buyer = st.buyers.get_or_default(user);
                buyer.held += q;
                buyer.pending += q;
                let (status, expires_at) = match sale.checkout.payment_window() {
                    None => (OrderStatus::Confirmed, None),
                    Some(window) => (OrderStatus::Reserved, Some(window.expires_at(now))),
                };
                let order = Order {
                    status,
                    expires_at,
                    payment_ref: None,
                    offered: false,
                    order_id: order_id_at(now),
                    sale_id: sale.id,
                    user_id: user.clone(),
                    quantity: q,
                    created_at: now,
                };
                let key = key.map(|key| {
                    let (duplicates, rx) = watch::channel(FirstAttempt::InFlight);
                    let fp = Fingerprint::new(user, quantity);
                    st.keys.insert(key.clone(), KeyEntry::Pending(fp, rx));
                    KeyClaim {
                        key: key.clone(),
                        duplicates,
                    }
                });
                Step::Reserved(Reservation { order, key })
            }
        }
    }

    /// Stores a refusal under its key, forgetting expired ones and the oldest past the bound.
    fn remember_refusal(
        &self,
        st: &mut BookState,
        key: &IdempotencyKey,
        user: &UserId,
        quantity: Quantity,
        outcome: &PurchaseOutcome,
        now: OffsetDateTime,
    ) {
        while let Some((old, at)) = st.refused.front() {
            if st.refused.len() < MAX_REFUSED_KEYS && *at + REFUSAL_RETENTION > now {
                break;
            }
            // Only the entry this record was pushed for: the key may since have been refused
            // again (a newer record) or admitted.
            if matches!(st.keys.get(old), Some(KeyEntry::Refused(_, _, stored)) if stored == at) {
                st.keys.remove(old);
            }
            st.refused.pop_front();
        }
        let fp = Fingerprint::new(user, quantity);
        st.keys
            .insert(key.clone(), KeyEntry::Refused(fp, outcome.clone(), now));
        st.refused.push_back((key.clone(), now));
    }

    /// The reserved order is durable: show it, and settle its key.
    pub fn confirm(&self, reservation: Reservation) -> PurchaseOutcome {
        let Reservation { order, key } = reservation;
        let outcome = PurchaseOutcome::Confirmed(order.clone());
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let q = order.quantity;
        st.pending -= q;
        st.counters.pending_orders -= 1;
        st.counters.confirmed_orders += 1;
        st.counters.confirmed_units += u64::from(q);
        match order.expires_at {
            None => {
                st.sold += q;
                note_sold(st, order.created_at);
            }
            Some(at) => {
                st.held += q;
                st.expiries.insert((at, order.order_id));
            }
        }
        if st.pending == 0 {
            drop(st.stock_settled.take());
        }
        if let Some(KeyClaim { key, duplicates }) = key {
            let fp = Fingerprint::new(&order.user_id, Quantity::from_stored(q));
            st.keys
                .insert(key, KeyEntry::Confirmed(fp, outcome.clone()));
            duplicates.send_replace(FirstAttempt::Answered(outcome.clone()));
        }
        if let Some(buyer) = st.buyers.get_mut(&order.user_id) {
            buyer.pending -= q;
            buyer.orders.push(order.key());
            if buyer.pending == 0 {
                drop(buyer.settled.take());
            }
        }
        put_order(st, order);
        outcome
    }

    /// The reserved order could not be written: give the units back to admission (nothing
    /// reported ever counted them), forget the key, and wake attempts that waited on it.
    pub fn undo(&self, reservation: Reservation) {
        let Reservation { order, key } = reservation;
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let q = order.quantity;
        st.pending -= q;
        st.counters.pending_orders -= 1;
        st.counters.rejections.record(Outcome::Unavailable);
        drop(st.stock_settled.take());
        if let Some(buyer) = st.buyers.get_mut(&order.user_id) {
            buyer.held -= q;
            buyer.pending -= q;
            if buyer.pending == 0 {
                drop(buyer.settled.take());
            }
        }
        if let Some(KeyClaim { key, duplicates }) = key {
            st.keys.remove(&key);
            duplicates.send_replace(FirstAttempt::Failed);
        }
    }

    /// The committed order `id`, with its status as it is durable now.
    pub fn order(&self, id: Uuid) -> Option<Order> {
        let st = self.state.lock();
        order_of(&st.orders, &st.stray_ids, id).cloned()
    }

    /// Whether the committed order `id` belongs to this sale.
    pub fn holds(&self, id: Uuid) -> bool {
        let st = self.state.lock();
        order_of(&st.orders, &st.stray_ids, id).is_some()
    }

    /// Decides `event` for order `id` at `now` (or the last decided instant, if the clock
    /// went back) by the core's `transition`. A decision that changes the order puts it in
    /// transition: it must be written, then [`SaleBook::finish_transition`] called either way.
    pub fn decide_event(&self, id: Uuid, event: &OrderEvent, now: OffsetDateTime) -> EventStep {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let Some(order) = order_of(&st.orders, &st.stray_ids, id) else {
            return EventStep::NotFound;
        };
        if let Some(pending) = st.transitions.get(&id) {
            return EventStep::Wait(pending.subscribe());
        }
        let state = match state_of(&st.sale, order) {
            Ok(state) => state,
            Err(why) => return EventStep::Invalid(why),
        };
        let now = now.max(st.last_decided);
        st.last_decided = now;
        let order = order.clone();
        let transition = match flashsale_core::transition(&state, event, now) {
            Err(e) => return EventStep::Answer(Err(e), order),
            Ok(transition) => transition,
        };
        let (Some(new), Some((cause, deltas))) = (
            transition.new_state(),
            LedgerCause::of_transition(&transition),
        ) else {
            // A failed payment or a redelivery: nothing changes.
            return EventStep::Answer(Ok(transition), order);
        };
        let payment_ref = match new {
            OrderState::Paid { payment_ref, .. } => Some(payment_ref.clone()),
            _ => None,
        };
        let after = Order {
            status: new.status(),
            payment_ref,
            ..order
        };
        let claims = match transition.units() {
            flashsale_core::UnitsMove::Release(n) => {
                match plan_offers(st, &after.user_id, n, now) {
                    Ok(plan) => claim_offers(st, plan, now),
                    Err(wait) => return EventStep::Wait(wait),
                }
            }
            _ => Vec::new(),
        };
        st.transitions.insert(id, watch::channel(()).0);
        EventStep::Decided(Decided {
            transition,
            after,
            cause,
            deltas,
            at: now,
            claims,
        })
    }

    /// Ends the transition begun by [`SaleBook::decide_event`]: `Some(entry)` once it is
    /// durable (with its ledger entry), which applies it and returns the order as it is now;
    /// `None` if it could not be written, which changes nothing. Either way events waiting on
    /// the order are decided again.
    pub fn finish_transition(&self, decided: &Decided, entry: Option<LedgerEntry>) -> Order {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let id = decided.after.order_id;
        drop(st.transitions.remove(&id));
        let Some(entry) = entry else {
            // Nothing was written: every waiter taken off goes back at their place.
            for claim in &decided.claims {
                st.list.finish_claim(claim, false);
                if claim.offer.is_some() {
                    release_buyer(st, &claim.user, 1, true);
                }
            }
            return order_of(&st.orders, &st.stray_ids, id)
                .cloned()
                .unwrap_or_else(|| decided.after.clone());
        };
        let after = decided.after.clone();
        if let Some(at) = after.expires_at {
            st.expiries.remove(&(at, id));
        }
        match decided.transition.units() {
            flashsale_core::UnitsMove::None => {}
            flashsale_core::UnitsMove::Pay(n) => {
                st.held = st.held.saturating_sub(n);
                st.sold += n;
                note_sold(st, decided.at);
            }
            flashsale_core::UnitsMove::Release(n) => {
                if let Some(buyer) = st.buyers.get_mut(&after.user_id) {
                    buyer.held = buyer.held.saturating_sub(n);
                }
                free_units(st, n, &decided.claims);
            }
        }
        st.recorded.insert(entry.key, entry);
        put_order(st, after.clone());
        after
    }

    /// Up to `limit` live reservations whose deadline is at or before `now` and that are not in
    /// transition already: the ones the expiry timer expires.
    pub fn due(&self, now: OffsetDateTime, limit: usize) -> Vec<Uuid> {
        let st = self.state.lock();
        st.expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter(|(_, id)| !st.transitions.contains_key(id))
            .take(limit)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Decides `user`'s join at `now` (or the last decided instant) by the order of checks of
    /// `flashsale_core::Waitlist::join`, against the figures purchases are decided on. A
    /// refusal that a write in flight could make untrue (no unit available while purchases are
    /// pending, the buyer's own entry or offer in flight) waits for it instead.
    pub fn decide_join(&self, user: &UserId, now: OffsetDateTime) -> ListStep<WaitlistJoin> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if let Some(changing) = &st.changing {
            return ListStep::Retry(changing.subscribe());
        }
        let now = now.max(st.last_decided);
        st.last_decided = now;
        let sale = Arc::clone(&st.sale);
        let refuse = |r| ListStep::Answer(WaitlistJoin::Refused(r));
        if now < sale.starts_at {
            return refuse(WaitlistRefusal::NotStarted);
        }
        if !sale.waitlist_open(now) {
            return refuse(WaitlistRefusal::Closed);
        }
        let available = sale.stock.saturating_sub(st.sold + st.held + st.pending);
        if available == 0 && st.pending > 0 {
            // A pending purchase may fail and give its units back: decide once it settles.
            return ListStep::Retry(
                st.stock_settled
                    .get_or_insert_with(|| watch::channel(()).0)
                    .subscribe(),
            );
        }
        if st.sold >= sale.stock {
            return refuse(WaitlistRefusal::SoldOut);
        }
        if available > 0 {
            return refuse(WaitlistRefusal::UnitsAvailable { available });
        }
        if let Some((seq, waiter)) = st.list.entry(user) {
            if waiter.pending == Some(ListOp::Leave) {
                return ListStep::Retry(st.list.settled());
            }
            let position = st.list.position(seq);
            return refuse(WaitlistRefusal::AlreadyWaitlisted { position });
        }
        if st.list.is_claimed(user) {
            return ListStep::Retry(st.list.settled());
        }
        let holding = st.buyers.get(user).map_or(0, |b| b.held);
        if holding >= sale.per_user_limit {
            return refuse(WaitlistRefusal::AtLimit {
                limit: sale.per_user_limit,
            });
        }
        let seq = st.list.begin_join(user.clone(), now);
        ListStep::Write(ListWrite {
            sale_id: sale.id,
            seq,
            user: user.clone(),
            op: ListOp::Join,
            at: now,
            position: st.list.position(seq),
        })
    }

    /// Decides `user`'s leave at `now`: `NotWaitlisted` if they do not wait (or the list has
    /// lapsed), otherwise their entry is leaving until its write ends.
    pub fn decide_leave(&self, user: &UserId, now: OffsetDateTime) -> ListStep<WaitlistLeave> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let now = now.max(st.last_decided);
        st.last_decided = now;
        if !st.sale.waitlist_open(now) {
            return ListStep::Answer(WaitlistLeave::NotWaitlisted);
        }
        let Some((seq, waiter)) = st.list.entry(user) else {
            if st.list.is_claimed(user) {
                return ListStep::Retry(st.list.settled());
            }
            return ListStep::Answer(WaitlistLeave::NotWaitlisted);
        };
        if waiter.pending.is_some() {
            return ListStep::Retry(st.list.settled());
        }
        st.list.begin_leave(seq);
        ListStep::Write(ListWrite {
            sale_id: st.sale.id,
            seq,
            user: user.clone(),
            op: ListOp::Leave,
            at: now,
            position: 0,
        })
    }

    /// Ends a join or leave begun by [`SaleBook::decide_join`] / [`SaleBook::decide_leave`]:
    /// applied if durable, undone otherwise (a failed write changes nothing).
    pub fn finish_list(&self, write: &ListWrite, durable: bool) {
        self.state.lock().list.finish(write.seq, write.op, durable);
    }

    /// Restores a durable waitlist row while rebuilding from disk (rows in join order).
    pub fn restore_waiter(&self, seq: u64, user: UserId, joined_at: OffsetDateTime, waiting: bool) {
        self.state
            .lock()
            .list
            .restore(seq, user, joined_at, waiting);
    }

    /// Where `user` stands at `now`: waiting (before `ends_at`), else their latest offered
    /// reservation as it is now, else neither.
    pub fn place(&self, user: &UserId, now: OffsetDateTime) -> WaitlistPlace {
        let st = self.state.lock();
        if st.sale.waitlist_open(now)
            && let Some((seq, _)) = st.list.entry(user)
        {
            let position = u32::try_from(st.list.position(seq)).unwrap_or(u32::MAX);
            return WaitlistPlace::Waiting { position };
        }
        st.buyers
            .get(user)
            .and_then(|b| {
                b.orders
                    .iter()
                    .rev()
                    .filter_map(|key| st.orders.get(key))
                    .find(|o| o.offered)
                    .cloned()
            })
            .map_or(WaitlistPlace::NotWaitlisted, WaitlistPlace::Offered)
    }

    /// The checkout counters of the durable orders and join rows, as kept by `put_order`.
    pub fn checkout_counts(&self) -> CheckoutCounts {
        let st = self.state.lock();
        CheckoutCounts {
            waitlist_joins: st.list.joins(),
            ..st.tallies
        }
    }

    /// The latest admission among the sale's durable sold orders (restored or confirmed).
    pub fn last_sold_at(&self) -> Option<OffsetDateTime> {
        self.state.lock().last_sold_at
    }

    /// The live figures: durable units only.
    /// `now` only says whether the waitlist has lapsed (`ends_at`).
    pub fn status(&self, now: OffsetDateTime) -> SaleStatus {
        let st = self.state.lock();
        let waitlist = if st.sale.waitlist_open(now) {
            u32::try_from(st.list.len()).unwrap_or(u32::MAX)
        } else {
            0
        };
        SaleStatus {
            held: st.held,
            waitlist,
            sale: Arc::clone(&st.sale),
            remaining: st.sale.stock.saturating_sub(st.sold + st.held),
            sold_out_at: st.sold_out_at,
        }
    }

    /// The buyer's committed orders.
    pub fn orders(&self, user: &UserId) -> Vec<Order> {
        buyer_orders(&self.state.lock(), user)
    }

    /// Up to `limit` committed orders after `after`, in export order.
    pub fn order_page(&self, after: Option<OrderKey>, limit: usize) -> Vec<Order> {
        let st = self.state.lock();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        st.orders
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(_, order)| order.clone())
            .collect()
    }

    /// Up to `limit` entries of the sale's stock ledger after `after`: the recorded entries
    /// merged with the committed orders, in ledger order.
    pub fn ledger_page(&self, after: Option<LedgerKey>, limit: usize) -> Vec<LedgerEntry> {
        let st = self.state.lock();
        let (recorded_from, orders_from) = match after {
            None => (Bound::Unbounded, Bound::Unbounded),
            Some(key) => (Bound::Excluded(key), Bound::Excluded(key.order_bound())),
        };
        merge(
            st.recorded
                .range((recorded_from, Bound::Unbounded))
                .map(|(_, entry)| entry.clone()),
            st.orders
                .range((orders_from, Bound::Unbounded))
                .map(|(_, order)| LedgerEntry::of_order(order)),
            limit,
        )
    }

    /// The operator's counters. Attempts are derived, so `attempts = confirmed + rejections +
    /// in flight` always holds, also after a crash lost the last unflushed rejection counts.
    pub fn counters(&self) -> BookCounters {
        let st = self.state.lock();
        let c = &st.counters;
        BookCounters {
            attempts: c.confirmed_orders + c.rejections.total() + c.pending_orders,
            confirmed_orders: c.confirmed_orders,
            confirmed_units: c.confirmed_units,
            rejections: c.rejections,
        }
    }

    /// How many idempotency keys this sale holds in memory (confirmed, pending and refused).
    pub fn key_count(&self) -> usize {
        self.state.lock().keys.len()
    }

    /// The counters the writer persists.
    pub fn persisted_counters(&self) -> PersistedCounters {
        let BookCounters {
            attempts,
            rejections,
            ..
        } = self.counters();
        PersistedCounters {
            attempts,
            rejections,
            last_decided: self.last_decided(),
        }
    }
}

/// A new order id for an order admitted at `at` (a decision instant, whole microseconds): a
/// UUID v7 whose time is `at`'s millisecond and whose 12 `rand_a` bits are `at`'s microsecond
/// within it (RFC 9562's extra clock precision), the 62 `rand_b` bits random. The id thus names
/// the order's whole key, so the book finds an order by its id in the map by key it keeps for
/// the export, without an index of ids: a hash index took an insert (a cache miss at a random
/// slot) and some 60 bytes on every purchase.
fn order_id_at(at: OffsetDateTime) -> Uuid {
    let Ok(secs) = u64::try_from(at.unix_timestamp()) else {
        // Before 1970: no v7 time; the order is a stray (see `put_order`).
        return Uuid::now_v7();
    };
    // Without a context the 12 + 62 bits after the millisecond are random; the 12 then carry
    // the microsecond.
    let random = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        secs,
        at.nanosecond(),
    ));
    let within = u128::from(at.microsecond() % 1_000);
    Uuid::from_u128((random.as_u128() & !(0xFFF << 64)) | (within << 64))
}

/// The admission instant an id made by [`order_id_at`] names; `None` for an id that cannot
/// be one (another version, or a sub-millisecond field past 999).
fn admitted_at(id: Uuid) -> Option<OffsetDateTime> {
    let v = id.as_u128();
    let within = (v >> 64) & 0xFFF;
    if id.get_version_num() != 7 || within >= 1_000 {
        return None;
    }
    let micros = i128::try_from((v >> 80) * 1_000 + within).ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(micros * 1_000).ok()
}

/// The committed order `id` among a book's `orders`, if there: under the key its id names,
/// else under a stray's key (the fields, not the state, so the rest of it stays free to change).
fn order_of<'a>(
    orders: &'a BTreeMap<OrderKey, Order>,
    stray_ids: &HashMap<Uuid, OrderKey>,
    id: Uuid,
) -> Option<&'a Order> {
    let named = admitted_at(id).and_then(|created_at| {
        orders.get(&OrderKey {
            created_at,
            order_id: id,
        })
    });
    named.or_else(|| stray_ids.get(&id).and_then(|key| orders.get(key)))
}

/// Puts `order` in the book, new or in place of its earlier state, and moves the checkout
/// tallies from what the earlier state counted to what this one counts. An order whose id does
/// not name its admission instant is also kept in `stray_ids`.
fn put_order(st: &mut BookState, order: Order) {
    let key = order.key();
    if admitted_at(order.order_id) != Some(order.created_at) {
        st.stray_ids.insert(order.order_id, key);
    }
    tally(&mut st.tallies, &order, true);
    if let Some(before) = st.orders.insert(key, order) {
        tally(&mut st.tallies, &before, false);
    }
}

/// Adds (or takes away) what one order counts in the checkout tallies: a reservation (an order
/// with a deadline), its ending, and whether an offer made it.
fn tally(c: &mut CheckoutCounts, order: &Order, add: bool) {
    if order.expires_at.is_none() {
        return;
    }
    let paid = order.status == OrderStatus::Paid;
    let tallies = [
        (&mut c.reserved, true),
        (&mut c.paid, paid),
        (&mut c.expired, order.status == OrderStatus::Expired),
        (&mut c.cancelled, order.status == OrderStatus::Cancelled),
        (&mut c.offers_made, order.offered),
        (&mut c.offers_taken, order.offered && paid),
    ];
    for (count, applies) in tallies {
        if applies {
            *count = if add { *count + 1 } else { *count - 1 };
        }
    }
}

/// Units were sold at `at` (an instant order committed, a reservation paid): the sale is sold
/// out at the latest such instant once every unit is sold.
fn note_sold(st: &mut BookState, at: OffsetDateTime) {
    st.last_sold_at = st.last_sold_at.max(Some(at));
    if st.sold >= st.sale.stock {
        st.sold_out_at = st.last_sold_at;
    }
}

/// Frees `n` held units of the sale (an expiry or a release), now durable with its offers:
/// the one place where freed units go. Each offer (decided with the release, see
/// [`plan_offers`], and written in its transaction) keeps one unit held as its own new
/// reservation; the rest go back to available, and attempts waiting on units are decided again.
fn free_units(st: &mut BookState, n: u32, claims: &[Claim]) {
    let mut offered = 0;
    for claim in claims {
        st.list.finish_claim(claim, true);
        let Some(order) = &claim.offer else {
            continue;
        };
        offered += order.quantity;
        st.counters.confirmed_orders += 1;
        st.counters.confirmed_units += u64::from(order.quantity);
        if let Some(at) = order.expires_at {
            st.expiries.insert((at, order.order_id));
        }
        release_buyer(st, &order.user_id, order.quantity, false);
        if let Some(buyer) = st.buyers.get_mut(&order.user_id) {
            buyer.orders.push(order.key());
        }
        put_order(st, order.clone());
    }
    st.held = st.held.saturating_sub(n.saturating_sub(offered));
    if offered < n {
        drop(st.stock_settled.take());
    }
}

/// Ends the in-flight count of `q` offered units for `user`: they are theirs now, or (`undo`)
/// they never were.
fn release_buyer(st: &mut BookState, user: &UserId, q: u32, undo: bool) {
    if let Some(buyer) = st.buyers.get_mut(user) {
        buyer.pending = buyer.pending.saturating_sub(q);
        if undo {
            buyer.held = buyer.held.saturating_sub(q);
        }
        if buyer.pending == 0 {
            drop(buyer.settled.take());
        }
    }
}

/// Who gets the `n` units a release by `releaser` frees at `now` (CO-10, mirroring
/// `Waitlist::next_offer`): the earliest waiters whose reserved and paid units (the
/// releaser's counted without the units being freed) are under the limit, one unit each;
/// those met at the limit on the way are passed over. Returns `(seq, offered)` in join
/// order, or a channel to wait on if the walk reaches an entry whose own write is in flight
/// (it can be neither skipped nor offered before it is settled). Nothing at or after
/// `ends_at`, nor in instant mode.
fn plan_offers(
    st: &mut BookState,
    releaser: &UserId,
    n: u32,
    now: OffsetDateTime,
) -> Result<Vec<(u64, bool)>, watch::Receiver<()>> {
    let sale = &st.sale;
    if !sale.waitlist_open(now) || sale.checkout.payment_window().is_none() {
        return Ok(Vec::new());
    }
    let mut plan = Vec::new();
    let mut offers = 0;
    let mut blocked = false;
    for (seq, waiter) in st.list.iter() {
        if offers == n {
            break;
        }
        if waiter.pending.is_some() {
            blocked = true;
            break;
        }
        let mut holding = st.buyers.get(&waiter.user).map_or(0, |b| b.held);
        if waiter.user == *releaser {
            holding = holding.saturating_sub(n);
        }
        let offer = holding < sale.per_user_limit;
        offers += u32::from(offer);
        plan.push((seq, offer));
    }
    if blocked {
        return Err(st.list.settled());
    }
    Ok(plan)
}

/// Takes the planned waiters off the list and makes each offer's reservation: one unit, a
/// fresh window from `now`, `offered`, counted toward its buyer's limit while in flight.
fn claim_offers(st: &mut BookState, plan: Vec<(u64, bool)>, now: OffsetDateTime) -> Vec<Claim> {
    let window = st.sale.checkout.payment_window();
    let sale_id = st.sale.id;
    let mut claims = Vec::with_capacity(plan.len());
    for (seq, offer) in plan {
        let Some(waiter) = st.list.claim(seq) else {
            continue;
        };
        let offer = match (offer, window) {
            (true, Some(window)) => {
                let buyer = st.buyers.get_or_default(&waiter.user);
                buyer.held += 1;
                buyer.pending += 1;
                Some(Order {
                    status: OrderStatus::Reserved,
                    expires_at: Some(window.expires_at(now)),
                    payment_ref: None,
                    offered: true,
                    order_id: order_id_at(now),
                    sale_id,
                    user_id: waiter.user.clone(),
                    quantity: 1,
                    created_at: now,
                })
            }
            _ => None,
        };
        claims.push(Claim {
            seq,
            user: waiter.user,
            joined_at: waiter.joined_at,
            offer,
        });
    }
    claims
}

/// The core's view of a stored order (CO-4): its owner, units, total at the sale's price,
/// deadline and payment.
fn state_of(sale: &Sale, order: &Order) -> Result<OrderState, &'static str> {
    let owner = order.user_id.clone();
    if order.status == OrderStatus::Confirmed {
        return Ok(OrderState::Confirmed { owner });
    }
    let price = sale
        .product
        .price
        .ok_or("a hold-mode order's sale has no price")?;
    let reservation = flashsale_core::Reservation {
        owner,
        units: order.quantity,
        total: price
            .total(order.quantity)
            .ok_or("a hold-mode order's total is out of range")?,
        expires_at: order
            .expires_at
            .ok_or("a hold-mode order has no deadline")?,
    };
    Ok(match order.status {
        OrderStatus::Confirmed | OrderStatus::Reserved => OrderState::Reserved(reservation),
        OrderStatus::Paid => OrderState::Paid {
            reservation,
            payment_ref: order
                .payment_ref
                .clone()
                .ok_or("a paid order has no payment reference")?,
        },
        OrderStatus::Expired => OrderState::Expired(reservation),
        OrderStatus::Cancelled => OrderState::Cancelled(reservation),
    })
}

/// The buyer's committed orders, in the order they were committed.
fn buyer_orders(st: &BookState, user: &UserId) -> Vec<Order> {
    st.buyers.get(user).map_or_else(Vec::new, |b| {
        b.orders
            .iter()
            .filter_map(|key| st.orders.get(key).cloned())
            .collect()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flashsale_core::{Canceller, Checkout, Money, NewSale, PaymentRef, SaleId};
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-11-30 12:00:00 UTC);

    /// A hold-mode sale's book with one reservation of 2 units by alice, and that order.
    fn book_with_reservation() -> (SaleBook, Order) {
        let checkout = Checkout::parse(Some("hold"), Some(60), Some(500), Some("EUR")).unwrap();
        let sale = NewSale::parse("s", T0, T0 + time::Duration::days(1), 5, 2)
            .unwrap()
            .with_checkout(checkout)
            .with_id(SaleId(1));
        let book = SaleBook::new(sale);
        let user = UserId::parse("alice").unwrap();
        let Step::Reserved(reservation) = book.admit(&user, Quantity::from_stored(2), None, T0)
        else {
            panic!("admitted")
        };
        let PurchaseOutcome::Confirmed(order) = book.confirm(reservation) else {
            panic!("confirmed")
        };
        (book, order)
    }

    fn pay() -> OrderEvent {
        OrderEvent::Pay {
            amount: Money::parse(1000, "EUR").unwrap(),
            payment_ref: PaymentRef::parse("p").unwrap(),
        }
    }

    fn cancel() -> OrderEvent {
        OrderEvent::Cancel {
            by: Canceller::OrderIdHolder,
        }
    }

    fn entry(decided: &Decided) -> LedgerEntry {
        let [available_delta, held_delta, sold_delta] = decided.deltas;
        LedgerEntry {
            key: LedgerKey {
                at: decided.at,
                source: crate::ledger::LedgerSource::Recorded(1),
            },
            cause: decided.cause,
            order_id: Some(decided.after.order_id),
            available_delta,
            held_delta,
            sold_delta,
            sale_change_id: None,
        }
    }

    /// The checkout counts by walking every order (what `checkout_counts` did before the
    /// tallies): the reference the kept tallies must equal.
    fn scanned_counts(book: &SaleBook) -> CheckoutCounts {
        let st = book.state.lock();
        let mut c = CheckoutCounts {
            waitlist_joins: st.list.joins(),
            ..CheckoutCounts::default()
        };
        for order in st.orders.values().filter(|o| o.expires_at.is_some()) {
            let paid = order.status == OrderStatus::Paid;
            c.reserved += 1;
            c.paid += u64::from(paid);
            c.expired += u64::from(order.status == OrderStatus::Expired);
            c.cancelled += u64::from(order.status == OrderStatus::Cancelled);
            c.offers_made += u64::from(order.offered);
            c.offers_taken += u64::from(order.offered && paid);
        }
        c
    }

    #[test]
    fn an_order_is_found_by_its_id_whether_or_not_the_id_names_its_admission() {
        let (book, admitted) = book_with_reservation();
        assert_eq!(admitted_at(admitted.order_id), Some(admitted.created_at));
        assert_eq!(admitted.order_id.get_version_num(), 7);
        let odd = T0 + time::Duration::microseconds(1_234_567);
        assert_eq!(
            admitted_at(order_id_at(odd)),
            Some(odd),
            "every microsecond kept"
        );
        assert_ne!(order_id_at(odd), order_id_at(odd), "the rest is random");
        // Restored orders from before: an id of another instant, and a v4 id.
        let other_ms = Order {
            order_id: order_id_at(T0 - time::Duration::seconds(5)),
            user_id: UserId::parse("bob").unwrap(),
            ..admitted.clone()
        };
        let v4 = Order {
            order_id: Uuid::from_u128(0x0123_4567_89ab_4def_8123_4567_89ab_cdef),
            user_id: UserId::parse("carol").unwrap(),
            ..admitted.clone()
        };
        for order in [&other_ms, &v4] {
            book.restore(order.clone(), None);
        }
        for order in [&admitted, &other_ms, &v4] {
            assert_eq!(book.order(order.order_id).as_ref(), Some(order));
            assert!(book.holds(order.order_id));
        }
        assert_eq!(
            book.state.lock().stray_ids.len(),
            2,
            "only the strays are indexed"
        );
        let unknown = order_id_at(admitted.created_at);
        assert_eq!(book.order(unknown), None);
        assert!(!book.holds(unknown));
        let EventStep::Decided(paying) = book.decide_event(v4.order_id, &pay(), T0) else {
            panic!("a stray's event is decided")
        };
        let after = book.finish_transition(&paying, Some(entry(&paying)));
        assert_eq!(book.order(v4.order_id), Some(after));
    }

    #[test]
    fn the_checkout_tallies_follow_each_order_through_pay_cancel_expire_and_a_failed_write() {
        let (book, order) = book_with_reservation();
        let counts = |b: &SaleBook| {
            let c = b.checkout_counts();
            assert_eq!(c, scanned_counts(b));
            (c.reserved, c.paid, c.cancelled, c.expired)
        };
        assert_eq!(counts(&book), (1, 0, 0, 0));
        let EventStep::Decided(paying) = book.decide_event(order.order_id, &pay(), T0) else {
            panic!("decided")
        };
        book.finish_transition(&paying, None);
        assert_eq!(counts(&book), (1, 0, 0, 0), "a failed write counts nothing");
        let EventStep::Decided(paying) = book.decide_event(order.order_id, &pay(), T0) else {
            panic!("decided")
        };
        book.finish_transition(&paying, Some(entry(&paying)));
        assert_eq!(counts(&book), (1, 1, 0, 0));
        // Two more reservations: one cancelled, one expired.
        for (name, event) in [("bob", cancel()), ("carol", OrderEvent::Expire)] {
            let user = UserId::parse(name).unwrap();
            let Step::Reserved(r) = book.admit(&user, Quantity::from_stored(1), None, T0) else {
                panic!("admitted")
            };
            let PurchaseOutcome::Confirmed(o) = book.confirm(r) else {
                panic!("confirmed")
            };
            // A cancel before the deadline, the expiry at it.
            let at = match event {
                OrderEvent::Expire => o.expires_at.unwrap(),
                _ => T0,
            };
            let EventStep::Decided(d) = book.decide_event(o.order_id, &event, at) else {
                panic!("decided")
            };
            book.finish_transition(&d, Some(entry(&d)));
        }
        assert_eq!(counts(&book), (3, 1, 1, 1));
    }

    fn figures(book: &SaleBook) -> (u32, u32) {
        let status = book.status(T0);
        (status.remaining, status.held)
    }

    #[test]
    fn an_event_for_an_order_in_transition_waits_and_a_failed_write_changes_nothing() {
        let (book, order) = book_with_reservation();
        assert_eq!(figures(&book), (3, 2));
        let EventStep::Decided(paying) = book.decide_event(order.order_id, &pay(), T0) else {
            panic!("a payment of the total is decided")
        };
        // Not decided against the old state while the payment's write is in flight.
        let EventStep::Wait(waiting) = book.decide_event(order.order_id, &cancel(), T0) else {
            panic!("the cancel waits")
        };
        assert!(book.due(T0 + time::Duration::hours(1), 10).is_empty());
        let after = book.finish_transition(&paying, None);
        assert_eq!(after, order, "a failed write changes nothing");
        assert_eq!(book.order(order.order_id), Some(order.clone()));
        assert_eq!(figures(&book), (3, 2));
        assert!(waiting.has_changed().is_err(), "the waiting event is woken");
        let EventStep::Decided(cancelling) = book.decide_event(order.order_id, &cancel(), T0)
        else {
            panic!("decided again against the reservation")
        };
        let after = book.finish_transition(&cancelling, Some(entry(&cancelling)));
        assert_eq!(after.status, OrderStatus::Cancelled);
        assert_eq!(figures(&book), (5, 0));
        assert!(book.due(T0 + time::Duration::hours(1), 10).is_empty());
        let EventStep::Answer(result, _) = book.decide_event(order.order_id, &pay(), T0) else {
            panic!("answered")
        };
        assert_eq!(result, Err(TransitionError::OrderCancelled));
    }

    #[test]
    fn a_reservation_is_due_from_its_deadline_and_pays_held_units_into_sold() {
        let (book, order) = book_with_reservation();
        let deadline = order.expires_at.unwrap();
        assert!(
            book.due(deadline - time::Duration::microseconds(1), 10)
                .is_empty()
        );
        assert_eq!(book.due(deadline, 10), vec![order.order_id]);
        let EventStep::Decided(paying) = book.decide_event(order.order_id, &pay(), T0) else {
            panic!("decided")
        };
        let after = book.finish_transition(&paying, Some(entry(&paying)));
        assert_eq!(after.status, OrderStatus::Paid);
        assert_eq!(figures(&book), (3, 0));
        assert_eq!(book.status(T0).sold(), 2);
        assert!(book.due(deadline, 10).is_empty(), "a paid order is not due");
    }

    #[derive(Debug, Clone)]
    enum ListOpCase {
        Reserve(u8),
        Join(u8),
        Leave(u8),
        /// Cancel a live reservation (by index); `true`: its write fails.
        Release(usize, bool),
        /// Raise the stock by one (units available while buyers wait: one may reach the
        /// limit while waiting).
        Raise,
    }

    fn list_op() -> impl proptest::strategy::Strategy<Value = ListOpCase> {
        use proptest::prelude::*;
        prop_oneof![
            2 => (0u8..6).prop_map(ListOpCase::Reserve),
            4 => (0u8..6).prop_map(ListOpCase::Join),
            1 => (0u8..6).prop_map(ListOpCase::Leave),
            3 => (0usize..8, proptest::bool::weighted(0.2))
                .prop_map(|(i, fail)| ListOpCase::Release(i, fail)),
            1 => Just(ListOpCase::Raise),
        ]
    }

    proptest::proptest! {
        /// The book's waitlist restates `flashsale_core::Waitlist` (join's order of checks,
        /// positions, `next_offer` on each release): run both on the same operations and
        /// compare every answer, every offer and every place; a release whose write fails
        /// changes neither.
        #[test]
        fn the_books_waitlist_answers_as_the_core_reference(
            limit in 1u32..3,
            ops in proptest::collection::vec(list_op(), 0..80),
        ) {
            use flashsale_core::{Units, Waitlist};
            use std::collections::HashMap;
            let checkout = Checkout::parse(Some("hold"), Some(60), Some(500), Some("EUR")).unwrap();
            let sale = NewSale::parse("s", T0, T0 + time::Duration::days(1), 3, i64::from(limit))
                .unwrap()
                .with_checkout(checkout)
                .with_id(SaleId(1));
            let book = SaleBook::new(sale.clone());
            let mut sale = sale;
            let mut model = Waitlist::new();
            let mut holding: HashMap<UserId, u32> = HashMap::new();
            let mut live: Vec<(Uuid, UserId)> = Vec::new();
            let name = |u: u8| UserId::parse(&format!("b{u}")).unwrap();
            for op in ops {
                match op {
                    ListOpCase::Reserve(u) => {
                        if let Step::Reserved(r) = book.admit(&name(u), Quantity::from_stored(1), None, T0) {
                            let PurchaseOutcome::Confirmed(order) = book.confirm(r) else {
                                panic!("confirmed")
                            };
                            *holding.entry(name(u)).or_default() += 1;
                            live.push((order.order_id, name(u)));
                        }
                    }
                    ListOpCase::Join(u) => {
                        let status = book.status(T0);
                        let units = Units::from_parts(
                            status.sale.stock,
                            status.remaining,
                            status.held,
                            status.sold(),
                        )
                        .unwrap();
                        let h = holding.get(&name(u)).copied().unwrap_or(0);
                        let expected = model.join(name(u), &sale, &units, h, T0);
                        let got = match book.decide_join(&name(u), T0) {
                            ListStep::Write(w) => {
                                book.finish_list(&w, true);
                                Ok(w.position)
                            }
                            ListStep::Answer(WaitlistJoin::Refused(r)) => Err(r),
                            ListStep::Answer(other) => panic!("{other:?}"),
                            ListStep::Retry(_) => panic!("nothing is in flight"),
                        };
                        proptest::prop_assert_eq!(got, expected);
                    }
                    ListOpCase::Leave(u) => {
                        let expected = model.leave(&name(u)).is_ok();
                        let got = match book.decide_leave(&name(u), T0) {
                            ListStep::Write(w) => {
                                book.finish_list(&w, true);
                                true
                            }
                            ListStep::Answer(_) => false,
                            ListStep::Retry(_) => panic!("nothing is in flight"),
                        };
                        proptest::prop_assert_eq!(got, expected);
                    }
                    ListOpCase::Raise => {
                        let edit = flashsale_core::SaleEdit {
                            stock: Some(i64::from(sale.stock + 1)),
                            ..flashsale_core::SaleEdit::default()
                        };
                        let ChangeStep::Claimed { new, .. } =
                            book.begin_change(&SaleChange::Edit(edit), T0)
                        else {
                            panic!("a raise is allowed")
                        };
                        sale = new.clone();
                        book.finish_change(Some(new), None);
                    }
                    ListOpCase::Release(i, fail) => {
                        if live.is_empty() {
                            continue;
                        }
                        let (id, owner) = live[i % live.len()].clone();
                        let EventStep::Decided(d) = book.decide_event(id, &cancel(), T0) else {
                            panic!("a live reservation is cancelled")
                        };
                        let offered: Vec<UserId> = d
                            .claims
                            .iter()
                            .filter_map(|c| c.offer.as_ref().map(|o| o.user_id.clone()))
                            .collect();
                        if fail {
                            book.finish_transition(&d, None);
                            // The reference is untouched; the book must be as before.
                        } else {
                            book.finish_transition(&d, Some(entry(&d)));
                            live.retain(|(l, _)| *l != id);
                            *holding.get_mut(&owner).unwrap() -= 1;
                            let next = model.next_offer(&sale, T0, |u| {
                                holding.get(u).copied().unwrap_or(0)
                            });
                            proptest::prop_assert_eq!(offered.first(), next.as_ref());
                            for c in &d.claims {
                                if let Some(o) = &c.offer {
                                    *holding.entry(o.user_id.clone()).or_default() += 1;
                                    live.push((o.order_id, o.user_id.clone()));
                                }
                            }
                        }
                    }
                }
                for u in 0..6u8 {
                    let got = match book.place(&name(u), T0) {
                        WaitlistPlace::Waiting { position } => Some(position as usize),
                        _ => None,
                    };
                    proptest::prop_assert_eq!(got, model.position(&name(u)));
                }
                proptest::prop_assert_eq!(book.status(T0).waitlist as usize, model.len());
                proptest::prop_assert_eq!(book.checkout_counts(), scanned_counts(&book));
            }
        }
    }
}
