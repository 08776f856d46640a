//! One sale's in-memory book: the critical section where attempts are decided.
//!
//! The lock is a plain (parking_lot) mutex held for a few hash-map operations and never across
//! an await or I/O: the store takes it to decide and reserve, releases it while the writer
//! makes the order durable, and takes it again to confirm or undo. Holding it across the disk
//! write would serialise every buyer behind one fsync; releasing it lets one fsync commit a
//! whole group of orders.

use crate::model::{Order, PurchaseOutcome, RejectionCounts, SaleStatus};
use flashsale_core::{Decision, IdempotencyKey, Quantity, Rejection, Sale, UserId, decide};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::watch;

/// What an idempotency key was first used for.
type Fingerprint = (UserId, Quantity);

/// The result a waiting duplicate receives: `None` while pending, `Some(None)` if the first
/// attempt failed (nothing taken), `Some(Some(outcome))` once decided.
pub(crate) type Settled = Option<Option<PurchaseOutcome>>;

enum KeyEntry {
    /// The first attempt with this key is being written; duplicates wait on the channel.
    Pending(Fingerprint, watch::Receiver<Settled>),
    /// The first attempt's outcome, replayed to every later use of the key.
    Done(Fingerprint, PurchaseOutcome),
}

#[derive(Default)]
struct Buyer {
    /// Units admitted, including those whose write is in flight: the limit counts them.
    held: u32,
    /// Committed orders only: nothing is shown before it is durable.
    orders: Vec<Order>,
}

#[derive(Default)]
struct Counters {
    attempts: u64,
    confirmed_orders: u64,
    confirmed_units: u64,
    rejections: RejectionCounts,
}

struct BookState {
    remaining: u32,
    sold_out_at: Option<OffsetDateTime>,
    buyers: HashMap<UserId, Buyer>,
    keys: HashMap<IdempotencyKey, KeyEntry>,
    counters: Counters,
}

/// What the critical section decided.
pub(crate) enum Step {
    /// Answer now (rejection, replay, conflict).
    Answer(PurchaseOutcome),
    /// A duplicate of an attempt still in flight: wait for its outcome.
    Wait(watch::Receiver<Settled>),
    /// Admitted: the caller must make `order` durable, then call `confirm` or `undo`.
    Reserved(Reservation),
}

/// An admitted order whose write is in flight.
pub(crate) struct Reservation {
    /// The order to write.
    pub order: Order,
    /// The idempotency key and the channel its duplicates wait on.
    pub key: Option<(IdempotencyKey, watch::Sender<Settled>)>,
    /// This order took the last unit.
    pub sold_out: bool,
}

/// Counters persisted by the writer so the summary survives a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PersistedCounters {
    pub attempts: u64,
    pub rejections: RejectionCounts,
}

/// One sale and its live state.
pub(crate) struct SaleBook {
    sale: Arc<Sale>,
    state: Mutex<BookState>,
}

impl SaleBook {
    /// A book for a sale with nothing sold yet.
    pub fn new(sale: Sale) -> Self {
        let remaining = sale.stock;
        Self {
            sale: Arc::new(sale),
            state: Mutex::new(BookState {
                remaining,
                sold_out_at: None,
                buyers: HashMap::new(),
                keys: HashMap::new(),
                counters: Counters::default(),
            }),
        }
    }

    /// The sale.
    pub fn sale(&self) -> &Arc<Sale> {
        &self.sale
    }

    /// Restores a committed order while rebuilding from disk.
    pub fn restore(&self, order: Order, key: Option<IdempotencyKey>) {
        let mut st = self.state.lock();
        st.remaining = st.remaining.saturating_sub(order.quantity);
        st.counters.confirmed_orders += 1;
        st.counters.confirmed_units += u64::from(order.quantity);
        if let Some(key) = key {
            let fp = (order.user_id.clone(), Quantity::from_stored(order.quantity));
            st.keys.insert(
                key,
                KeyEntry::Done(fp, PurchaseOutcome::Confirmed(order.clone())),
            );
        }
        let buyer = st.buyers.entry(order.user_id.clone()).or_default();
        buyer.held += order.quantity;
        buyer.orders.push(order);
    }

    /// Restores the sold-out instant and persisted counters while rebuilding from disk.
    pub fn restore_meta(&self, sold_out_at: Option<OffsetDateTime>, counters: PersistedCounters) {
        let mut st = self.state.lock();
        st.sold_out_at = sold_out_at;
        st.counters.attempts = counters.attempts;
        st.counters.rejections = counters.rejections;
    }

    /// Decides one attempt at `now` and reserves stock if admitted. Never blocks on I/O.
    pub fn admit(
        &self,
        user: &UserId,
        quantity: Quantity,
        key: Option<&IdempotencyKey>,
        now: OffsetDateTime,
    ) -> Step {
        let mut st = self.state.lock();
        if let Some(key) = key {
            match st.keys.get(key) {
                Some(KeyEntry::Done(fp, outcome)) => {
                    return Step::Answer(if fp.0 == *user && fp.1 == quantity {
                        outcome.clone()
                    } else {
                        PurchaseOutcome::IdempotencyKeyReused
                    });
                }
                Some(KeyEntry::Pending(fp, rx)) => {
                    return if fp.0 == *user && fp.1 == quantity {
                        Step::Wait(rx.clone())
                    } else {
                        Step::Answer(PurchaseOutcome::IdempotencyKeyReused)
                    };
                }
                None => {}
            }
        }
        st.counters.attempts += 1;
        let held = st.buyers.get(user).map_or(0, |b| b.held);
        match decide(&self.sale, now, st.remaining, held, quantity) {
            Decision::Reject(rejection) => {
                st.counters.rejections.count(rejection);
                let orders = match rejection {
                    Rejection::AlreadyPurchased | Rejection::LimitExceeded { .. } => st
                        .buyers
                        .get(user)
                        .map(|b| b.orders.clone())
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                let outcome = PurchaseOutcome::Rejected { rejection, orders };
                if let Some(key) = key {
                    let fp = (user.clone(), quantity);
                    st.keys
                        .insert(key.clone(), KeyEntry::Done(fp, outcome.clone()));
                }
                Step::Answer(outcome)
            }
            Decision::Admit => {
                let q = quantity.get();
                st.remaining -= q;
                if st.remaining == 0 {
                    st.sold_out_at = Some(now);
                }
                st.buyers.entry(user.clone()).or_default().held += q;
                let order = Order {
                    order_id: uuid::Uuid::now_v7(),
                    sale_id: self.sale.id,
                    user_id: user.clone(),
                    quantity: q,
                    created_at: now,
                };
                let key = key.map(|key| {
                    let (tx, rx) = watch::channel(None);
                    let fp = (user.clone(), quantity);
                    st.keys.insert(key.clone(), KeyEntry::Pending(fp, rx));
                    (key.clone(), tx)
                });
                Step::Reserved(Reservation {
                    order,
                    key,
                    sold_out: st.remaining == 0,
                })
            }
        }
    }

    /// The reserved order is durable: show it, and settle its key.
    pub fn confirm(&self, reservation: Reservation) -> PurchaseOutcome {
        let Reservation { order, key, .. } = reservation;
        let outcome = PurchaseOutcome::Confirmed(order.clone());
        let mut st = self.state.lock();
        st.counters.confirmed_orders += 1;
        st.counters.confirmed_units += u64::from(order.quantity);
        if let Some((key, tx)) = key {
            let fp = (order.user_id.clone(), Quantity::from_stored(order.quantity));
            st.keys.insert(key, KeyEntry::Done(fp, outcome.clone()));
            tx.send_replace(Some(Some(outcome.clone())));
        }
        if let Some(buyer) = st.buyers.get_mut(&order.user_id) {
            buyer.orders.push(order);
        }
        outcome
    }

    /// The reserved order could not be written: give the stock back, forget the key.
    pub fn undo(&self, reservation: Reservation) {
        let Reservation { order, key, .. } = reservation;
        let mut st = self.state.lock();
        st.remaining += order.quantity;
        st.sold_out_at = None;
        st.counters.rejections.unavailable += 1;
        if let Some(buyer) = st.buyers.get_mut(&order.user_id) {
            buyer.held -= order.quantity;
        }
        if let Some((key, tx)) = key {
            st.keys.remove(&key);
            tx.send_replace(Some(None));
        }
    }

    /// The live figures.
    pub fn status(&self) -> SaleStatus {
        let st = self.state.lock();
        SaleStatus {
            sale: Arc::clone(&self.sale),
            remaining: st.remaining,
            sold_out_at: st.sold_out_at,
        }
    }

    /// The buyer's committed orders.
    pub fn orders(&self, user: &UserId) -> Vec<Order> {
        let st = self.state.lock();
        st.buyers
            .get(user)
            .map(|b| b.orders.clone())
            .unwrap_or_default()
    }

    /// The operator's counters: (attempts, confirmed orders, confirmed units, rejections).
    pub fn counters(&self) -> (u64, u64, u64, RejectionCounts) {
        let st = self.state.lock();
        let c = &st.counters;
        (
            c.attempts,
            c.confirmed_orders,
            c.confirmed_units,
            c.rejections,
        )
    }

    /// The counters the writer persists.
    pub fn persisted_counters(&self) -> PersistedCounters {
        let st = self.state.lock();
        PersistedCounters {
            attempts: st.counters.attempts,
            rejections: st.counters.rejections,
        }
    }
}
