//! The values that cross the [`crate::SaleStore`] boundary.

use flashsale_core::{IdempotencyKey, Quantity, Rejection, Sale, SaleId, SaleState, UserId};
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
}

/// What became of an attempt. Replaying an idempotency key returns the first outcome again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurchaseOutcome {
    /// The order is durable (201 `confirmed`).
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

/// A sale with its live figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleStatus {
    /// The sale as created.
    pub sale: Arc<Sale>,
    /// Units not yet taken.
    pub remaining: u32,
    /// When the last unit was taken, if it was.
    pub sold_out_at: Option<OffsetDateTime>,
}

impl SaleStatus {
    /// The state at `now`.
    pub fn state(&self, now: OffsetDateTime) -> SaleState {
        self.sale.state(now, self.remaining)
    }
}

/// Rejections by reason, for the admin summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RejectionCounts {
    /// `sale_not_active` answers.
    pub sale_not_active: u64,
    /// `sold_out` answers.
    pub sold_out: u64,
    /// `already_purchased` answers.
    pub already_purchased: u64,
    /// `limit_exceeded` answers.
    pub limit_exceeded: u64,
    /// `insufficient_stock` answers.
    pub insufficient_stock: u64,
    /// `unavailable` answers (a write failed; nothing was taken).
    pub unavailable: u64,
}

impl RejectionCounts {
    /// Adds one to the counter of `rejection`.
    pub fn count(&mut self, rejection: Rejection) {
        match rejection {
            Rejection::NotActive(_) => self.sale_not_active += 1,
            Rejection::SoldOut => self.sold_out += 1,
            Rejection::AlreadyPurchased => self.already_purchased += 1,
            Rejection::LimitExceeded { .. } => self.limit_exceeded += 1,
            Rejection::InsufficientStock { .. } => self.insufficient_stock += 1,
        }
    }

    /// All rejections.
    pub fn total(&self) -> u64 {
        self.sale_not_active
            + self.sold_out
            + self.already_purchased
            + self.limit_exceeded
            + self.insufficient_stock
            + self.unavailable
    }
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
}
