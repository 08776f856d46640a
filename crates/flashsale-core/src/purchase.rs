//! The purchase rules (docs/requirements.md#3-stock-and-purchase-rules): one attempt, decided
//! against the sale, the instant of decision, the remaining stock and what the buyer already
//! holds.
//!
//! Stores call [`decide`] inside their atomic step (a critical section, or a Redis script that
//! mirrors it), so these rules are the single statement of what is admitted.

use crate::ids::Quantity;
use crate::outcome::Outcome;
use crate::sale::{EndReason, Sale, SaleState};
use time::OffsetDateTime;

/// Why an attempt was not admitted. Expected under load: a value, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The sale is upcoming or has ended by time (409 `sale_not_active`).
    NotActive(NotActiveReason),
    /// The sale was active but no stock is left (409 `sold_out`, IM-5).
    SoldOut,
    /// The buyer already holds the per-user limit (409 `already_purchased`).
    AlreadyPurchased,
    /// The buyer holds less than the limit, but not enough room for this quantity
    /// (409 `limit_exceeded`).
    LimitExceeded {
        /// Units the buyer may still take.
        allowed: u32,
    },
    /// Some stock is left, but less than the quantity asked for (409 `insufficient_stock`).
    InsufficientStock {
        /// Units left.
        remaining: u32,
    },
}

impl Rejection {
    /// The answer this rejection is given ([`Outcome`] holds its wire code and status).
    pub const fn outcome(self) -> Outcome {
        match self {
            Rejection::NotActive(_) => Outcome::SaleNotActive,
            Rejection::SoldOut => Outcome::SoldOut,
            Rejection::AlreadyPurchased => Outcome::AlreadyPurchased,
            Rejection::LimitExceeded { .. } => Outcome::LimitExceeded,
            Rejection::InsufficientStock { .. } => Outcome::InsufficientStock,
        }
    }

    /// The stable wire code of this rejection.
    pub const fn code(self) -> &'static str {
        self.outcome().code()
    }
}

/// Which side of the window an inactive sale is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotActiveReason {
    /// Before the start.
    Upcoming,
    /// At or after the end, with stock left.
    Ended,
}

impl NotActiveReason {
    /// The wire name (the sale's state).
    pub fn as_str(self) -> &'static str {
        match self {
            NotActiveReason::Upcoming => "upcoming",
            NotActiveReason::Ended => "ended",
        }
    }
}

/// An attempt asking for more units than the sale's per-user limit: the request itself is
/// wrong for this sale (400 `invalid_request`, the limit in the message), whatever the sale's
/// state. Not a [`Rejection`]: it is not counted, and nothing about the buyer is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantityAboveLimit {
    /// The sale's per-user limit.
    pub limit: u32,
}

/// The result of deciding one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Take `quantity` units from stock and record the order.
    Admit,
    /// Take nothing.
    Reject(Rejection),
    /// Take nothing: the quantity is above the sale's per-user limit (see [`check_quantity`]).
    QuantityAboveLimit(QuantityAboveLimit),
}

/// The first rule of [`decide`], on its own: the quantity asked for is at most the sale's
/// per-user limit.
///
/// Stores call it before anything else (before an idempotency key is looked up or the shared
/// store is asked), because the answer depends on the request and the sale alone; `decide`
/// applies it too, so the rules stay stated in one place.
pub fn check_quantity(sale: &Sale, quantity: Quantity) -> Result<(), QuantityAboveLimit> {
    if quantity.get() > sale.per_user_limit {
        return Err(QuantityAboveLimit {
            limit: sale.per_user_limit,
        });
    }
    Ok(())
}

/// Decides one attempt.
///
/// Order of checks: the quantity against the sale's per-user limit ([`check_quantity`]: a
/// request no state of the sale could admit), then the window and stock (the sale's state),
/// then the buyer's limit, then the quantity against what is left. State comes first so that every buyer sees the same answer
/// for a sale that is not active, whatever they hold; that is also what lets a scale-out
/// instance reject a sold-out or ended sale without asking the shared store.
pub fn decide(
    sale: &Sale,
    now: OffsetDateTime,
    remaining: u32,
    held: u32,
    quantity: Quantity,
) -> Decision {
    decide_units(sale, now, remaining, remaining, held, quantity)
}

/// [`decide`] for a sale whose unsold units are not all available: in hold mode (CO-3) units
/// held by live reservations are unsold but cannot be taken. The sale's state is read from
/// `unsold` (a sale with every unit held is still active, and ends sold out only once every
/// unit is sold); what may be taken is `available`, and nothing available is `sold_out`.
pub fn decide_units(
    sale: &Sale,
    now: OffsetDateTime,
    available: u32,
    unsold: u32,
    held: u32,
    quantity: Quantity,
) -> Decision {
    let remaining = available;
    if let Err(above) = check_quantity(sale, quantity) {
        return Decision::QuantityAboveLimit(above);
    }
    match sale.state(now, unsold) {
        SaleState::Upcoming => {
            return Decision::Reject(Rejection::NotActive(NotActiveReason::Upcoming));
        }
        SaleState::Ended(EndReason::Time | EndReason::Cancelled) => {
            return Decision::Reject(Rejection::NotActive(NotActiveReason::Ended));
        }
        SaleState::Ended(EndReason::SoldOut) => return Decision::Reject(Rejection::SoldOut),
        SaleState::Active => {}
    }
    let allowed = sale.per_user_limit.saturating_sub(held);
    if allowed == 0 {
        return Decision::Reject(Rejection::AlreadyPurchased);
    }
    let q = quantity.get();
    if q > allowed {
        return Decision::Reject(Rejection::LimitExceeded { allowed });
    }
    if remaining == 0 {
        // Every unsold unit is held by someone else's reservation (hold mode).
        return Decision::Reject(Rejection::SoldOut);
    }
    if q > remaining {
        return Decision::Reject(Rejection::InsufficientStock { remaining });
    }
    Decision::Admit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SaleId;
    use crate::sale::NewSale;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use time::Duration;
    use time::macros::datetime;

    const START: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);
    const END: OffsetDateTime = datetime!(2026-11-22 12:10 UTC);

    fn sale(stock: u32, limit: u32) -> Sale {
        NewSale::parse("Widget", START, END, i64::from(stock), i64::from(limit))
            .unwrap()
            .with_id(SaleId(1))
    }

    fn q(n: i64) -> Quantity {
        Quantity::parse(n, 1000).unwrap()
    }

    #[test]
    fn co3_with_every_unsold_unit_held_the_sale_is_active_and_answers_sold_out() {
        let s = sale(10, 2);
        let now = START;
        // 4 available, 6 held: admitted up to what is available.
        assert_eq!(decide_units(&s, now, 4, 10, 0, q(2)), Decision::Admit);
        assert_eq!(
            decide_units(&s, now, 1, 7, 0, q(2)),
            Decision::Reject(Rejection::InsufficientStock { remaining: 1 })
        );
        // Nothing available but units held: still active, sold out to this buyer.
        assert_eq!(
            decide_units(&s, now, 0, 6, 0, q(1)),
            Decision::Reject(Rejection::SoldOut)
        );
        assert_eq!(s.state(now, 6), crate::SaleState::Active);
        // The buyer's limit counts what they hold, before the stock.
        assert_eq!(
            decide_units(&s, now, 0, 6, 2, q(1)),
            Decision::Reject(Rejection::AlreadyPurchased)
        );
        // Every unit sold: ended sold out, as in instant mode.
        assert_eq!(
            decide_units(&s, now, 0, 0, 0, q(1)),
            decide(&s, now, 0, 0, q(1))
        );
    }

    #[test]
    fn t1_attempt_one_nanosecond_before_the_start_is_not_active_upcoming() {
        let d = decide(&sale(10, 1), START - Duration::nanoseconds(1), 10, 0, q(1));
        assert_eq!(
            d,
            Decision::Reject(Rejection::NotActive(NotActiveReason::Upcoming))
        );
    }

    #[test]
    fn t1_attempt_exactly_at_the_start_is_admitted() {
        assert_eq!(decide(&sale(10, 1), START, 10, 0, q(1)), Decision::Admit);
    }

    #[test]
    fn t1_attempt_one_nanosecond_before_the_end_is_admitted() {
        assert_eq!(
            decide(&sale(10, 1), END - Duration::nanoseconds(1), 10, 0, q(1)),
            Decision::Admit
        );
    }

    #[test]
    fn t1_attempt_exactly_at_the_end_is_not_active_ended() {
        let d = decide(&sale(10, 1), END, 10, 0, q(1));
        assert_eq!(
            d,
            Decision::Reject(Rejection::NotActive(NotActiveReason::Ended))
        );
    }

    #[test]
    fn t3_quantity_above_the_per_user_limit_is_refused_before_the_state() {
        let above = Decision::QuantityAboveLimit(QuantityAboveLimit { limit: 2 });
        let s = sale(10, 2);
        // Whatever the sale's state or the buyer's holding: the request is wrong for this sale.
        assert_eq!(decide(&s, START, 10, 0, q(3)), above);
        assert_eq!(decide(&s, START - Duration::seconds(1), 10, 0, q(3)), above);
        assert_eq!(decide(&s, END, 10, 0, q(3)), above);
        assert_eq!(decide(&s, START, 0, 0, q(3)), above);
        assert_eq!(decide(&s, START, 10, 2, q(3)), above);
        assert_eq!(
            check_quantity(&s, q(3)),
            Err(QuantityAboveLimit { limit: 2 })
        );
        assert_eq!(check_quantity(&s, q(2)), Ok(()));
        assert_eq!(decide(&s, START, 10, 0, q(2)), Decision::Admit);
    }

    #[test]
    fn t2_last_unit_is_admitted_and_the_next_attempt_is_sold_out() {
        let s = sale(10, 1);
        assert_eq!(decide(&s, START, 1, 0, q(1)), Decision::Admit);
        assert_eq!(
            decide(&s, START, 0, 0, q(1)),
            Decision::Reject(Rejection::SoldOut)
        );
    }

    #[test]
    fn t2_sold_out_is_reported_even_after_the_end() {
        assert_eq!(
            decide(&sale(10, 1), END, 0, 0, q(1)),
            Decision::Reject(Rejection::SoldOut)
        );
    }

    #[test]
    fn t2_quantity_above_the_remaining_stock_is_insufficient_stock() {
        let d = decide(&sale(10, 5), START, 2, 0, q(3));
        assert_eq!(
            d,
            Decision::Reject(Rejection::InsufficientStock { remaining: 2 })
        );
        assert_eq!(decide(&sale(10, 5), START, 3, 0, q(3)), Decision::Admit);
    }

    #[test]
    fn t3_buyer_at_the_limit_is_already_purchased() {
        assert_eq!(
            decide(&sale(10, 1), START, 9, 1, q(1)),
            Decision::Reject(Rejection::AlreadyPurchased)
        );
        assert_eq!(
            decide(&sale(10, 3), START, 7, 3, q(1)),
            Decision::Reject(Rejection::AlreadyPurchased)
        );
    }

    #[test]
    fn t3_limit_n_above_one_admits_up_to_n_units_in_several_attempts() {
        let s = sale(10, 3);
        assert_eq!(decide(&s, START, 10, 0, q(2)), Decision::Admit);
        assert_eq!(decide(&s, START, 8, 2, q(1)), Decision::Admit);
        assert_eq!(
            decide(&s, START, 7, 3, q(1)),
            Decision::Reject(Rejection::AlreadyPurchased)
        );
    }

    #[test]
    fn t3_quantity_beyond_what_the_buyer_may_still_take_is_limit_exceeded() {
        let d = decide(&sale(10, 3), START, 8, 2, q(2));
        assert_eq!(d, Decision::Reject(Rejection::LimitExceeded { allowed: 1 }));
    }

    #[test]
    fn rejection_codes_are_stable_and_distinct() {
        let codes = [
            Rejection::NotActive(NotActiveReason::Upcoming).code(),
            Rejection::SoldOut.code(),
            Rejection::AlreadyPurchased.code(),
            Rejection::LimitExceeded { allowed: 1 }.code(),
            Rejection::InsufficientStock { remaining: 1 }.code(),
        ];
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
        assert_eq!(codes[0], "sale_not_active");
        assert_eq!(codes[1], "sold_out");
        assert_eq!(codes[2], "already_purchased");
        assert_eq!(codes[3], "limit_exceeded");
        assert_eq!(codes[4], "insufficient_stock");
    }

    /// A deliberately naive model of the rules, written independently of `decide`: the sale
    /// admits an attempt when it is inside the window, the buyer would stay within the limit,
    /// and enough units are left.
    struct Model {
        stock: u32,
        limit: u32,
        sold: u32,
        held: HashMap<u8, u32>,
    }

    impl Model {
        fn admits(&self, t: OffsetDateTime, user: u8, qty: u32) -> bool {
            let in_window = START <= t && t < END;
            let held = self.held.get(&user).copied().unwrap_or(0);
            in_window && held + qty <= self.limit && self.sold + qty <= self.stock
        }
    }

    proptest! {
        /// Drives `decide` as a store would, with time only moving forward, and checks it
        /// against the model and the invariants IM-3, IM-4, PR-5 and FL-5.
        #[test]
        fn rules_match_the_reference_model(
            stock in 1u32..40,
            limit in 1u32..5,
            attempts in proptest::collection::vec((0i64..30, 0u8..12, 1u32..5), 1..300),
        ) {
            let s = sale(stock, limit);
            let mut model = Model { stock, limit, sold: 0, held: HashMap::new() };
            let mut remaining = stock;
            let mut held: HashMap<u8, u32> = HashMap::new();
            let mut t = START - Duration::seconds(30);
            let mut ended = false;
            for (step, user, qty) in attempts {
                t += Duration::seconds(step);
                let qty = qty.min(limit);
                let h = held.get(&user).copied().unwrap_or(0);
                let decision = decide(&s, t, remaining, h, Quantity::parse(i64::from(qty), limit).unwrap());
                prop_assert_eq!(decision == Decision::Admit, model.admits(t, user, qty));
                if decision == Decision::Admit {
                    remaining -= qty;
                    *held.entry(user).or_default() += qty;
                    model.sold += qty;
                    *model.held.entry(user).or_default() += qty;
                }
                let state = s.state(t, remaining);
                prop_assert!(!ended || matches!(state, SaleState::Ended(_)), "FL-5");
                ended |= matches!(state, SaleState::Ended(_));
                prop_assert_eq!(stock - remaining, model.sold);
                prop_assert!(held.values().all(|&h| h <= limit));
                if remaining == 0 {
                    prop_assert_eq!(decide(&s, t, 0, 0, Quantity::ONE), Decision::Reject(Rejection::SoldOut));
                }
            }
        }
    }
}
