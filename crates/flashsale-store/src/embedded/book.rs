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
//! An operator's change (edit, cancel) is decided in the same critical section, with the same
//! clock guard, against `sold + pending`; from that decision until the change is durable and in
//! place ([`SaleBook::finish_change`]) the book is *changing*: attempts wait (as for writes in
//! flight) rather than being decided against a sale about to be replaced, so an edit racing a
//! purchase is before it or after it, never beside it.

use crate::ledger::{LedgerEntry, LedgerKey, merge};
use crate::model::{Order, OrderKey, PurchaseOutcome, RejectionCounts, SaleStatus};
use flashsale_core::{
    ChangeRefusal, Decision, IdempotencyKey, Outcome, Quantity, QuantityAboveLimit, Rejection,
    Sale, SaleChange, SaleState, UserId, check_quantity, decide,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::watch;

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
    /// Units admitted, including those whose write is in flight: the limit counts them.
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
    /// Units in durable orders.
    sold: u32,
    /// Units reserved by orders whose write is in flight.
    pending: u32,
    /// Set once `sold` reaches the stock: the latest `created_at` of the sale's orders.
    sold_out_at: Option<OffsetDateTime>,
    /// The latest `created_at` among durable orders.
    last_sold_at: Option<OffsetDateTime>,
    /// The clock guard: no attempt is decided at an instant before this one.
    last_decided: OffsetDateTime,
    buyers: HashMap<UserId, Buyer>,
    /// Every committed order in export order, so a page of the operator's export is a range
    /// read, not a sort of the whole sale.
    orders: BTreeMap<OrderKey, Order>,
    /// The stock ledger's recorded entries (every cause but orders, which are `orders`),
    /// each added in the same critical section as the change it records.
    recorded: BTreeMap<LedgerKey, LedgerEntry>,
    keys: HashMap<IdempotencyKey, KeyEntry>,
    /// Refused keys in the order they were stored, for retention and the bound.
    refused: VecDeque<(IdempotencyKey, OffsetDateTime)>,
    /// Dropped (which wakes every receiver) when `pending` is back to 0 or units are given back.
    stock_settled: Option<watch::Sender<()>>,
    counters: Counters,
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
                pending: 0,
                sold_out_at: None,
                last_sold_at: None,
                last_decided: OffsetDateTime::UNIX_EPOCH,
                buyers: HashMap::new(),
                orders: BTreeMap::new(),
                recorded: BTreeMap::new(),
                keys: HashMap::new(),
                refused: VecDeque::new(),
                stock_settled: None,
                counters: Counters::default(),
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
        match flashsale_core::change::apply(&st.sale, now, st.sold + st.pending, change) {
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
    pub fn record(&self, entry: Option<LedgerEntry>) {
        if let Some(entry) = entry {
            self.state.lock().recorded.insert(entry.key, entry);
        }
    }

    /// Restores a committed order while rebuilding from disk.
    pub fn restore(&self, order: Order, key: Option<IdempotencyKey>) {
        let mut st = self.state.lock();
        st.sold = st.sold.saturating_add(order.quantity);
        st.counters.confirmed_orders += 1;
        st.counters.confirmed_units += u64::from(order.quantity);
        st.last_sold_at = st.last_sold_at.max(Some(order.created_at));
        st.last_decided = st.last_decided.max(order.created_at);
        if let Some(key) = key {
            let fp = Fingerprint::new(&order.user_id, Quantity::from_stored(order.quantity));
            st.keys.insert(
                key,
                KeyEntry::Confirmed(fp, PurchaseOutcome::Confirmed(order.clone())),
            );
        }
        let buyer = st.buyers.entry(order.user_id.clone()).or_default();
        buyer.held += order.quantity;
        buyer.orders.push(order.key());
        st.orders.insert(order.key(), order);
        if st.sold >= st.sale.stock {
            // Derived from the orders, not from a flag: the same instant whichever order
            // committed last.
            st.sold_out_at = st.last_sold_at;
        }
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
        let available = sale.stock.saturating_sub(st.sold + st.pending);
        let (held, buyer_pending) = st.buyers.get(user).map_or((0, 0), |b| (b.held, b.pending));
        match decide(&sale, now, available, held, quantity) {
            Decision::Reject(Rejection::SoldOut) if st.pending > 0 => Step::Retry(
                st.stock_settled
                    .get_or_insert_with(|| watch::channel(()).0)
                    .subscribe(),
            ),
            Decision::Reject(Rejection::AlreadyPurchased | Rejection::LimitExceeded { .. })
                if buyer_pending > 0 =>
            {
                let buyer = st.buyers.entry(user.clone()).or_default();
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
                let buyer = st.buyers.entry(user.clone()).or_default();
                buyer.held += q;
                buyer.pending += q;
                let order = Order {
                    status: flashsale_core::OrderStatus::Confirmed,
                    expires_at: None,
                    payment_ref: None,
                    order_id: uuid::Uuid::now_v7(),
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
        st.sold += q;
        st.counters.pending_orders -= 1;
        st.counters.confirmed_orders += 1;
        st.counters.confirmed_units += u64::from(q);
        st.last_sold_at = st.last_sold_at.max(Some(order.created_at));
        if st.sold == st.sale.stock {
            st.sold_out_at = st.last_sold_at;
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
        st.orders.insert(order.key(), order);
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

    /// The live figures: durable units only.
    pub fn status(&self) -> SaleStatus {
        let st = self.state.lock();
        SaleStatus {
            held: 0,
            sale: Arc::clone(&st.sale),
            remaining: st.sale.stock.saturating_sub(st.sold),
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

/// The buyer's committed orders, in the order they were committed.
fn buyer_orders(st: &BookState, user: &UserId) -> Vec<Order> {
    st.buyers.get(user).map_or_else(Vec::new, |b| {
        b.orders
            .iter()
            .filter_map(|key| st.orders.get(key).cloned())
            .collect()
    })
}
