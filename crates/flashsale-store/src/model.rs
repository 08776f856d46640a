//! The values that cross the [`crate::SaleStore`] boundary.

use flashsale_core::{
    ChangeRefusal, IdempotencyKey, OrderStatus, Outcome, PaymentRef, Quantity, Rejection, Sale,
    SaleId, SaleState, Transition, TransitionError, UserId, WaitlistRefusal,
};
use serde::Serialize;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// One purchase attempt, parsed. The quantity is within the global maximum; the store checks
/// it against the sale's own per-user limit.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The sale.
    pub sale_id: SaleId,
    /// The buyer.
    pub user_id: UserId,
    /// Units asked for.
    pub quantity: Quantity,
    /// The client's `Idempotency-Key`, if any.
    pub idempotency_key: Option<IdempotencyKey>,
}

/// A durable order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    /// Time-ordered unique id (UUID v7).
    pub order_id: Uuid,
    /// The sale.
    pub sale_id: SaleId,
    /// The buyer.
    pub user_id: UserId,
    /// Units in this order.
    pub quantity: u32,
    /// When the attempt was admitted.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// `confirmed` (instant mode) or, in hold mode, `reserved`, `paid`, `expired` or
    /// `cancelled` (CO-4).
    #[serde(serialize_with = "status_name")]
    pub status: OrderStatus,
    /// Hold mode: the first instant at which the reservation is no longer payable (CO-5).
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// Hold mode, once paid: the payment system's reference of the payment that paid it.
    #[serde(
        serialize_with = "payment_ref_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub payment_ref: Option<PaymentRef>,
    /// Hold mode: the reservation was made by a waitlist offer (one unit freed by another
    /// buyer's reservation, given to the earliest waiter, CO-10), not by a purchase.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub offered: bool,
}

fn status_name<S: serde::Serializer>(status: &OrderStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.as_str())
}

fn payment_ref_str<S: serde::Serializer>(
    payment_ref: &Option<PaymentRef>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match payment_ref {
        Some(r) => s.serialize_some(r.as_str()),
        None => s.serialize_none(),
    }
}

/// What became of an event for an order ([`crate::SaleStore::order_event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEventOutcome {
    /// The event was decided at the store's one atomic point: `Ok` with the transition it made
    /// (or the no-change answer, a failed payment or a redelivery), `Err` with the answer of
    /// the loser, which changed nothing. `order` is the order as it is now (after the change).
    Decided {
        /// The decision.
        result: Result<Transition, TransitionError>,
        /// The order after it.
        order: Order,
    },
    /// There is no order with this id.
    NotFound,
}

/// Where an order sits in a sale's export order: by `created_at`, then `order_id`. A keyset
/// cursor: the page after a key starts at the next order in this order, so orders committed
/// meanwhile never shift a page (as an offset would).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    /// When the order's attempt was admitted.
    pub created_at: OffsetDateTime,
    /// The order's id (breaks ties between orders admitted at the same instant).
    pub order_id: Uuid,
}

impl Order {
    /// The order's place in its sale's export order.
    pub fn key(&self) -> OrderKey {
        OrderKey {
            created_at: self.created_at,
            order_id: self.order_id,
        }
    }
}

/// What became of an attempt. Replaying an idempotency key returns the first outcome again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurchaseOutcome {
    /// The order is durable: `confirmed` in instant mode, `reserved` (its units held until
    /// `expires_at`) in hold mode; its `status` says which (201 `confirmed` / `reserved`).
    Confirmed(Order),
    /// Nothing was taken (409). For `AlreadyPurchased` and `LimitExceeded`, `orders` carries
    /// the buyer's existing orders; otherwise it is empty.
    Rejected {
        /// Why.
        rejection: Rejection,
        /// The buyer's committed orders, where the rejection is about them.
        orders: Vec<Order>,
    },
    /// There is no such sale (404 `sale_not_found`).
    SaleNotFound,
    /// The quantity is above the sale's per-user limit (400 `invalid_request`).
    QuantityAboveLimit {
        /// The sale's per-user limit.
        limit: u32,
    },
    /// The idempotency key was first used with another user or quantity
    /// (422 `idempotency_key_reused`).
    IdempotencyKeyReused,
}

/// What became of an operator's change to a sale ([`crate::SaleStore::change_sale`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// The change is durable and every later decision sees it; the sale as it is now.
    Changed(SaleStatus),
    /// The rules refused it; nothing changed.
    Refused(ChangeRefusal),
    /// There is no such sale.
    SaleNotFound,
}

/// A sale with its live figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleStatus {
    /// The sale as created.
    pub sale: Arc<Sale>,
    /// Units available: not yet taken (`stock_remaining`, `stock_available`).
    pub remaining: u32,
    /// Units held by live reservations (hold mode; always 0 in instant mode). Sold units are
    /// `stock - remaining - held`, read at the same instant (CO-3).
    pub held: u32,
    /// Buyers on the waitlist now (`waitlist_length`, CO-9): 0 once the sale reaches
    /// `ends_at`, when the list lapses.
    pub waitlist: u32,
    /// When the last unit was taken, if it was.
    pub sold_out_at: Option<OffsetDateTime>,
}

impl SaleStatus {
    /// The state at `now`: from the unsold units, so a hold-mode sale with every unit held
    /// is still active.
    pub fn state(&self, now: OffsetDateTime) -> SaleState {
        self.sale.state(now, self.remaining + self.held)
    }

    /// Units sold (paid, or confirmed in instant mode).
    pub fn sold(&self) -> u32 {
        self.sale.stock - self.remaining - self.held
    }
}

/// Rejections by reason, for the admin summary: one counter per [`Outcome`], of which only
/// the [`Outcome::COUNTED`] ones are ever non-zero (and stored, and shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectionCounts([u64; Outcome::COUNT]);

impl Default for RejectionCounts {
    fn default() -> Self {
        Self([0; Outcome::COUNT])
    }
}

impl RejectionCounts {
    /// Adds one to the counter of `rejection`.
    pub fn count(&mut self, rejection: Rejection) {
        self.record(rejection.outcome());
    }

    /// Adds one to the counter of `outcome`; outcomes that are not counted are ignored.
    pub fn record(&mut self, outcome: Outcome) {
        if outcome.counted() {
            self.0[outcome.index()] += 1;
        }
    }

    /// The count of `outcome` (0 for outcomes that are not counted).
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.0[outcome.index()]
    }

    /// Sets the count of `outcome` (as read back from storage); outcomes that are not counted
    /// are left at 0.
    pub fn set(&mut self, outcome: Outcome, n: u64) {
        if outcome.counted() {
            self.0[outcome.index()] = n;
        }
    }

    /// Adds every counter of `other`.
    pub fn add(&mut self, other: &RejectionCounts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }

    /// Each counted outcome with its count, in [`Outcome::COUNTED`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Outcome::COUNTED.into_iter().map(|o| (o, self.get(o)))
    }

    /// All rejections.
    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }
}

impl std::ops::Index<Outcome> for RejectionCounts {
    type Output = u64;

    fn index(&self, outcome: Outcome) -> &u64 {
        &self.0[outcome.index()]
    }
}

/// `{"sale_not_active": n, ...}`: one field per counted outcome, in [`Outcome::COUNTED`] order.
impl Serialize for RejectionCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(Outcome::COUNTED.len()))?;
        for (outcome, n) in self.iter() {
            map.serialize_entry(outcome.code(), &n)?;
        }
        map.end()
    }
}

/// An external service a store depends on, and whether it answered when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dependency {
    /// Its name (`redis`, `postgres`): the `dependency` label of `flashsale_dependency_up`.
    pub name: &'static str,
    /// Whether it answered.
    pub up: bool,
}

/// Upper bounds of the batch sizes counted in [`AdmissionBatches::at_most`].
pub const BATCH_SIZE_BOUNDS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// The admission calls a store made to its shared service since start (scale-out: runs of
/// `admission.lua`), each deciding a batch of attempts: how many calls, and how big.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionBatches {
    /// Calls made.
    pub calls: u64,
    /// Attempts they decided (`attempts / calls` is the mean batch size; its inverse the
    /// round trips per attempt).
    pub attempts: u64,
    /// Calls that decided at most `BATCH_SIZE_BOUNDS[i]` attempts (cumulative, as a
    /// histogram's buckets: the last one is `calls`).
    pub at_most: [u64; BATCH_SIZE_BOUNDS.len()],
}

/// The operator's view of a sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The sale and its live figures.
    pub status: SaleStatus,
    /// Attempts decided (admitted or rejected), replays excluded.
    pub attempts: u64,
    /// Orders committed.
    pub confirmed_orders: u64,
    /// Units committed (= stock - remaining once nothing is in flight).
    pub confirmed_units: u64,
    /// Rejections by reason.
    pub rejections: RejectionCounts,
    /// Hold mode: reservations and the waitlist (all 0 for an instant sale).
    pub checkout: CheckoutCounts,
}

/// A hold-mode sale's checkout counters for the summary (SPEC 9, CO-11), each counted from
/// the sale's durable orders and waitlist, so they survive restarts and agree on every
/// instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckoutCounts {
    /// Reservations made: by purchases and by waitlist offers.
    pub reserved: u64,
    /// Reservations paid.
    pub paid: u64,
    /// Reservations that expired unpaid.
    pub expired: u64,
    /// Reservations their buyer cancelled.
    pub cancelled: u64,
    /// Times a buyer joined the waitlist (a buyer who left and joined again counts twice).
    pub waitlist_joins: u64,
    /// Reservations made by waitlist offers (`offered: true`).
    pub offers_made: u64,
    /// Offered reservations that were paid.
    pub offers_taken: u64,
}

/// What became of a request to join a sale's waitlist ([`crate::SaleStore::waitlist_join`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitlistJoin {
    /// The buyer is on the list at `position` (1 is the next offer).
    Joined {
        /// Their place.
        position: u32,
    },
    /// The rules refused it ([`flashsale_core::Waitlist::join`]'s order of checks); nothing
    /// changed.
    Refused(WaitlistRefusal),
}

/// Where a buyer stands on a sale's waitlist ([`crate::SaleStore::waitlist_place`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitlistPlace {
    /// Waiting at `position` (1 is the next offer).
    Waiting {
        /// Their place.
        position: u32,
    },
    /// Not waiting any more: the latest reservation a waitlist offer gave this buyer in this
    /// sale, with its status now (reserved, paid, expired or cancelled).
    Offered(Order),
    /// Neither waiting nor ever offered a unit of this sale (or the list lapsed at `ends_at`).
    NotWaitlisted,
}

/// What became of a request to leave a sale's waitlist ([`crate::SaleStore::waitlist_leave`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitlistLeave {
    /// The buyer was waiting and is off the list; everyone behind moves up one place.
    Left,
    /// The buyer was not waiting; nothing changed.
    NotWaitlisted,
}
