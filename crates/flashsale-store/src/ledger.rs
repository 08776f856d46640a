//! The stock ledger (SPEC 11, OP-9..OP-11): every change of a sale's available, held and sold
//! units, with its cause, order id and instant.
//!
//! A ledger is read from two sources, merged into one total order by [`LedgerKey`]:
//! - the sale's committed orders (each one IS the record of an `order` cause: it is written in
//!   the same transaction as the sold counter it moves, so the group commit writes nothing more
//!   per order);
//! - the `stock_ledger` table, for every other cause (`created`, `edit`, `cancel`, and the hold
//!   transitions `payment`, `expiry`, `release`), each row written in the same transaction as the
//!   change it records.
//!
//! Invariant: the sum of every entry's deltas is the sale's live figures (available =
//! remaining, held, sold = stock - remaining - held), once no purchase is in flight.

use crate::model::{Order, OrderKey};
use flashsale_core::{Sale, Transition, UnitsMove};
use std::iter::Peekable;
use time::OffsetDateTime;
use uuid::Uuid;

/// Why an entry moved units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LedgerCause {
    /// The sale was created: its stock appears as available.
    Created,
    /// An instant-mode order was committed: available down, sold up by its quantity.
    Order,
    /// An operator changed the stock: available moves by the difference.
    Edit,
    /// An operator cancelled the sale. It moves nothing: the units not sold stay where they
    /// are (unsellable, the sale having ended; live reservations may still be paid, SPEC 9).
    Cancel,
    /// A hold-mode order was committed (a purchase, or a waitlist offer): available down (an
    /// offer: the freed units it takes), held up by its quantity.
    Reserve,
    /// A reservation was paid: held down, sold up.
    Payment,
    /// A reservation expired: held down, available up (an offer then takes them again).
    Expiry,
    /// The buyer cancelled their reservation: held down, available up.
    Release,
}

impl LedgerCause {
    /// Every cause, in the order the docs list them.
    pub const ALL: [LedgerCause; 8] = [
        LedgerCause::Created,
        LedgerCause::Order,
        LedgerCause::Edit,
        LedgerCause::Cancel,
        LedgerCause::Reserve,
        LedgerCause::Payment,
        LedgerCause::Expiry,
        LedgerCause::Release,
    ];

    /// The stable name (JSON, CSV, the `stock_ledger.cause` column).
    pub fn code(self) -> &'static str {
        match self {
            LedgerCause::Created => "created",
            LedgerCause::Order => "order",
            LedgerCause::Edit => "edit",
            LedgerCause::Cancel => "cancel",
            LedgerCause::Reserve => "reserve",
            LedgerCause::Payment => "payment",
            LedgerCause::Expiry => "expiry",
            LedgerCause::Release => "release",
        }
    }

    /// The cause named `code`, if any.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The cause and `(available, held, sold)` deltas of an order's transition out of
    /// `reserved`, or `None` for a decision that moves no units. A store records it in the
    /// same atomic step as the new status.
    pub fn of_transition(transition: &Transition) -> Option<(LedgerCause, [i64; 3])> {
        let (cause, n) = match (transition, transition.units()) {
            (_, UnitsMove::None) => return None,
            (_, UnitsMove::Pay(n)) => (LedgerCause::Payment, n),
            (Transition::Expired(_), UnitsMove::Release(n)) => (LedgerCause::Expiry, n),
            (_, UnitsMove::Release(n)) => (LedgerCause::Release, n),
        };
        let n = i64::from(n);
        Some(match cause {
            LedgerCause::Payment => (cause, [0, -n, n]),
            _ => (cause, [n, -n, 0]),
        })
    }
}

/// Which source an entry comes from, and its id there. `Recorded` sorts before `Order`, so at
/// one instant a change (say the stock raised) comes before the orders admitted at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LedgerSource {
    /// A `stock_ledger` row, by its id.
    Recorded(i64),
    /// A committed order, by its id.
    Order(Uuid),
}

/// An entry's place in its sale's ledger: by instant, then source, then id. A keyset cursor:
/// an entry's key never changes, so a walk never meets an entry twice, and meets every entry
/// committed before it began exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LedgerKey {
    /// When the change was decided (an order: when its attempt was admitted).
    pub at: OffsetDateTime,
    /// Where the entry comes from.
    pub source: LedgerSource,
}

impl LedgerKey {
    /// The greatest order key strictly below every order after `self`, as an exclusive bound
    /// on a range of orders: the nil id sorts below every real (v7) order id.
    pub(crate) fn order_bound(self) -> OrderKey {
        OrderKey {
            created_at: self.at,
            order_id: match self.source {
                LedgerSource::Recorded(_) => Uuid::nil(),
                LedgerSource::Order(id) => id,
            },
        }
    }
}

/// One change of a sale's units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Its place in the ledger (its instant is `key.at`).
    pub key: LedgerKey,
    /// Why.
    pub cause: LedgerCause,
    /// The order it concerns, if any.
    pub order_id: Option<Uuid>,
    /// Change of the units anyone may still buy.
    pub available_delta: i64,
    /// Change of the units held by buyers who have not paid yet (0 in instant mode).
    pub held_delta: i64,
    /// Change of the units sold.
    pub sold_delta: i64,
    /// For an edit or a cancel: the `sale_changes` row recording it (its stock field, or its
    /// cancellation instant).
    pub sale_change_id: Option<i64>,
}

impl LedgerEntry {
    /// The instant of the change.
    pub fn at(&self) -> OffsetDateTime {
        self.key.at
    }

    /// The entry a committed order is.
    pub fn of_order(order: &Order) -> Self {
        let q = i64::from(order.quantity);
        // A hold-mode order (it has a deadline) was a reservation when it was committed; what
        // became of it since is an entry of its own.
        let (cause, held, sold) = match order.expires_at {
            Some(_) => (LedgerCause::Reserve, q, 0),
            None => (LedgerCause::Order, 0, q),
        };
        Self {
            key: LedgerKey {
                at: order.created_at,
                source: LedgerSource::Order(order.order_id),
            },
            cause,
            order_id: Some(order.order_id),
            available_delta: -q,
            held_delta: held,
            sold_delta: sold,
            sale_change_id: None,
        }
    }
}

/// What the `stock_ledger` records of an operator's change from `old` to `new`: its cause and
/// available delta, and the `sale_changes` field its row refers to; `None` for a change that
/// moves no units and is no cancellation (a new name, start, end or limit).
pub(crate) fn change_entry(old: &Sale, new: &Sale) -> Option<(LedgerCause, i64, &'static str)> {
    if old.cancelled_at.is_none() && new.cancelled_at.is_some() {
        return Some((LedgerCause::Cancel, 0, "cancelled_at"));
    }
    let delta = i64::from(new.stock) - i64::from(old.stock);
    (delta != 0).then_some((LedgerCause::Edit, delta, "stock"))
}

/// The first `limit` entries of two sources each already in key order, in key order.
pub(crate) fn merge(
    recorded: impl Iterator<Item = LedgerEntry>,
    orders: impl Iterator<Item = LedgerEntry>,
    limit: usize,
) -> Vec<LedgerEntry> {
    let mut a: Peekable<_> = recorded.peekable();
    let mut b: Peekable<_> = orders.peekable();
    let mut page = Vec::with_capacity(limit.min(1024));
    while page.len() < limit {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.key <= y.key => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, _) => b.next(),
        };
        match next {
            Some(entry) => page.push(entry),
            None => break,
        }
    }
    page
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flashsale_core::{SaleId, UserId};

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_764_000_000 + s).unwrap()
    }

    fn recorded(s: i64, id: i64) -> LedgerEntry {
        LedgerEntry {
            key: LedgerKey {
                at: at(s),
                source: LedgerSource::Recorded(id),
            },
            cause: LedgerCause::Edit,
            order_id: None,
            available_delta: 1,
            held_delta: 0,
            sold_delta: 0,
            sale_change_id: Some(id),
        }
    }

    fn order(s: i64) -> LedgerEntry {
        LedgerEntry::of_order(&Order {
            order_id: Uuid::now_v7(),
            sale_id: SaleId(1),
            user_id: UserId::parse("u").unwrap(),
            quantity: 2,
            created_at: at(s),
            status: flashsale_core::OrderStatus::Confirmed,
            expires_at: None,
            payment_ref: None,
            offered: false,
        })
    }

    #[test]
    fn causes_round_trip_through_their_codes() {
        for cause in LedgerCause::ALL {
            assert_eq!(LedgerCause::parse(cause.code()), Some(cause));
        }
        assert_eq!(LedgerCause::parse("reserved"), None);
        assert_eq!(LedgerCause::parse("Order"), None);
    }

    #[test]
    fn at_one_instant_a_recorded_change_comes_before_the_orders() {
        let o = order(5);
        let r = recorded(5, 99);
        assert!(r.key < o.key);
        assert_eq!(
            o.key.order_bound(),
            OrderKey {
                created_at: at(5),
                order_id: o.order_id.unwrap()
            }
        );
        assert_eq!(r.key.order_bound().order_id, Uuid::nil());
    }

    #[test]
    fn merge_interleaves_both_sources_in_key_order_up_to_the_limit() {
        let recorded_entries = vec![recorded(0, 1), recorded(3, 2), recorded(3, 3)];
        let orders = vec![order(1), order(3), order(4)];
        let all = merge(
            recorded_entries.clone().into_iter(),
            orders.clone().into_iter(),
            100,
        );
        assert_eq!(all.len(), 6);
        assert!(all.windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(all[1], orders[0]);
        assert_eq!(all[2], recorded_entries[1]);
        let two = merge(recorded_entries.into_iter(), orders.into_iter(), 2);
        assert_eq!(two.len(), 2);
    }

    #[test]
    fn only_stock_moves_and_cancellations_are_recorded() {
        let sale = Sale {
            id: SaleId(1),
            name: "s".into(),
            starts_at: at(0),
            ends_at: at(100),
            stock: 10,
            per_user_limit: 1,
            cancelled_at: None,
            product: flashsale_core::Product::default(),
            checkout: flashsale_core::CheckoutMode::Instant,
        };
        let raised = Sale {
            stock: 14,
            ..sale.clone()
        };
        let renamed = Sale {
            name: "t".into(),
            ..sale.clone()
        };
        let cancelled = Sale {
            cancelled_at: Some(at(5)),
            ..sale.clone()
        };
        assert_eq!(
            change_entry(&sale, &raised),
            Some((LedgerCause::Edit, 4, "stock"))
        );
        assert_eq!(change_entry(&sale, &renamed), None);
        assert_eq!(
            change_entry(&sale, &cancelled),
            Some((LedgerCause::Cancel, 0, "cancelled_at"))
        );
    }
}
