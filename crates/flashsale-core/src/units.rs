//! A sale's units by where they are (docs/requirements.md#9-checkout, CO-3): `available` to
//! buy, `held` by live reservations, `sold` for good.
//!
//! Invariant: `total = available + held + sold` after every operation, and no figure is ever
//! negative. The fields are private and each operation moves units between two figures or
//! refuses and changes nothing, so no sequence of calls can break it. A store keeps one
//! [`Units`] per sale (in its critical section, or as three Redis fields its script moves the
//! same way) and every status body reads all four figures from one value.
//!
//! Handing a released unit to the head of the waitlist is not an operation here: the unit stays
//! `held`, by a new reservation, so no figure changes.

use thiserror::Error;

/// A sale's units: `total = available + held + sold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Units {
    total: u32,
    available: u32,
    held: u32,
    sold: u32,
}

/// Why an operation on [`Units`] was refused; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum UnitsError {
    /// Fewer units are available than the operation takes.
    #[error("only {available} units are available")]
    NotEnoughAvailable {
        /// Units available.
        available: u32,
    },
    /// Fewer units are held than the operation moves.
    #[error("only {held} units are held")]
    NotEnoughHeld {
        /// Units held.
        held: u32,
    },
    /// Figures read back from a store do not add up to the total.
    #[error("available + held + sold does not equal the total")]
    Inconsistent,
}

impl Units {
    /// A new sale's units: all available.
    pub fn new(total: u32) -> Self {
        Self {
            total,
            available: total,
            held: 0,
            sold: 0,
        }
    }

    /// Figures read back from a store, checked against the invariant.
    pub fn from_parts(
        total: u32,
        available: u32,
        held: u32,
        sold: u32,
    ) -> Result<Self, UnitsError> {
        let sum = u64::from(available) + u64::from(held) + u64::from(sold);
        if sum != u64::from(total) {
            return Err(UnitsError::Inconsistent);
        }
        Ok(Self {
            total,
            available,
            held,
            sold,
        })
    }

    /// Units on sale (`stock_total`).
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Units anyone may reserve or buy now (`stock_available`, alias `stock_remaining`).
    pub fn available(&self) -> u32 {
        self.available
    }

    /// Units held by live reservations (`stock_held`).
    pub fn held(&self) -> u32 {
        self.held
    }

    /// Units paid for, or confirmed in instant mode (`stock_sold`).
    pub fn sold(&self) -> u32 {
        self.sold
    }

    /// Whether every unit is sold: the only way a hold-mode sale ends before its time.
    pub fn sold_out(&self) -> bool {
        self.sold == self.total
    }

    /// Units not sold (available or held): what [`crate::Sale::state`] takes as `remaining`
    /// in hold mode, so that a sale whose units are all held stays `active` (buyers may join
    /// the waitlist) and ends `sold_out` only once every unit is paid (FL-4, FL-5).
    pub fn unsold(&self) -> u32 {
        self.available + self.held
    }

    /// A reservation: `n` units from available to held.
    pub fn reserve(&mut self, n: u32) -> Result<(), UnitsError> {
        let available = self.take_available(n)?;
        self.available = available;
        self.held += n;
        Ok(())
    }

    /// A paid reservation: `n` units from held to sold.
    pub fn pay(&mut self, n: u32) -> Result<(), UnitsError> {
        let held = self.take_held(n)?;
        self.held = held;
        self.sold += n;
        Ok(())
    }

    /// An expired or cancelled reservation nobody on the waitlist takes: `n` units from held
    /// back to available.
    pub fn release(&mut self, n: u32) -> Result<(), UnitsError> {
        let held = self.take_held(n)?;
        self.held = held;
        self.available += n;
        Ok(())
    }

    /// An instant-mode purchase: `n` units from available straight to sold.
    pub fn sell(&mut self, n: u32) -> Result<(), UnitsError> {
        let available = self.take_available(n)?;
        self.available = available;
        self.sold += n;
        Ok(())
    }

    fn take_available(&self, n: u32) -> Result<u32, UnitsError> {
        self.available
            .checked_sub(n)
            .ok_or(UnitsError::NotEnoughAvailable {
                available: self.available,
            })
    }

    fn take_held(&self, n: u32) -> Result<u32, UnitsError> {
        self.held
            .checked_sub(n)
            .ok_or(UnitsError::NotEnoughHeld { held: self.held })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn co3_a_new_sale_has_every_unit_available() {
        let units = Units::new(10);
        assert_eq!(
            (units.total(), units.available(), units.held(), units.sold()),
            (10, 10, 0, 0)
        );
        assert!(!units.sold_out());
    }

    #[test]
    fn co3_each_operation_moves_units_between_two_figures() {
        let mut units = Units::new(10);
        units.reserve(3).unwrap();
        assert_eq!((units.available(), units.held(), units.sold()), (7, 3, 0));
        units.pay(2).unwrap();
        assert_eq!((units.available(), units.held(), units.sold()), (7, 1, 2));
        units.release(1).unwrap();
        assert_eq!((units.available(), units.held(), units.sold()), (8, 0, 2));
        units.sell(8).unwrap();
        assert_eq!((units.available(), units.held(), units.sold()), (0, 0, 10));
        assert!(units.sold_out());
    }

    #[test]
    fn co3_taking_more_than_is_there_is_refused_and_changes_nothing() {
        let mut units = Units::new(2);
        units.reserve(1).unwrap();
        let before = units;
        assert_eq!(
            units.reserve(2),
            Err(UnitsError::NotEnoughAvailable { available: 1 })
        );
        assert_eq!(
            units.sell(2),
            Err(UnitsError::NotEnoughAvailable { available: 1 })
        );
        assert_eq!(units.pay(2), Err(UnitsError::NotEnoughHeld { held: 1 }));
        assert_eq!(units.release(2), Err(UnitsError::NotEnoughHeld { held: 1 }));
        assert_eq!(units, before);
    }

    #[test]
    fn co3_a_hold_mode_sale_with_every_unit_held_is_active_and_ends_only_when_all_are_paid() {
        use crate::ids::SaleId;
        use crate::sale::{EndReason, NewSale, SaleState};
        use time::macros::datetime;
        let start = datetime!(2026-11-30 12:00 UTC);
        let sale = NewSale::parse("Widget", start, datetime!(2026-11-30 13:00 UTC), 2, 1)
            .unwrap()
            .with_id(SaleId(1));
        let mut units = Units::new(2);
        units.reserve(2).unwrap();
        assert_eq!(units.available(), 0);
        assert_eq!(sale.state(start, units.unsold()), SaleState::Active);
        units.pay(1).unwrap();
        units.release(1).unwrap();
        units.reserve(1).unwrap();
        assert_eq!(sale.state(start, units.unsold()), SaleState::Active);
        units.pay(1).unwrap();
        assert_eq!(
            sale.state(start, units.unsold()),
            SaleState::Ended(EndReason::SoldOut)
        );
    }

    #[test]
    fn co3_figures_read_back_must_add_up() {
        assert_eq!(Units::from_parts(10, 5, 3, 2).unwrap().held(), 3);
        assert_eq!(
            Units::from_parts(10, 5, 3, 3),
            Err(UnitsError::Inconsistent)
        );
        assert_eq!(
            Units::from_parts(1, u32::MAX, 1, 1),
            Err(UnitsError::Inconsistent)
        );
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Reserve(u32),
        Pay(u32),
        Release(u32),
        Sell(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..6).prop_map(Op::Reserve),
            (0u32..6).prop_map(Op::Pay),
            (0u32..6).prop_map(Op::Release),
            (0u32..6).prop_map(Op::Sell),
        ]
    }

    proptest! {
        /// Any sequence of operations, refused ones included, keeps the invariant, and matches
        /// a model that counts each unit's place one by one.
        #[test]
        fn co3_total_is_always_available_plus_held_plus_sold(
            total in 0u32..20,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut units = Units::new(total);
            // The model: one place per unit. 0 available, 1 held, 2 sold.
            let mut places = vec![0u8; total as usize];
            for op in ops {
                let (n, from, to) = match op {
                    Op::Reserve(n) => (n, 0, 1),
                    Op::Pay(n) => (n, 1, 2),
                    Op::Release(n) => (n, 1, 0),
                    Op::Sell(n) => (n, 0, 2),
                };
                let result = match op {
                    Op::Reserve(n) => units.reserve(n),
                    Op::Pay(n) => units.pay(n),
                    Op::Release(n) => units.release(n),
                    Op::Sell(n) => units.sell(n),
                };
                let movable = places.iter().filter(|p| **p == from).count();
                prop_assert_eq!(result.is_ok(), movable >= n as usize, "{:?}", op);
                if result.is_ok() {
                    for place in places.iter_mut().filter(|p| **p == from).take(n as usize) {
                        *place = to;
                    }
                }
                let count = |at: u8| places.iter().filter(|p| **p == at).count() as u32;
                prop_assert_eq!(units.available() + units.held() + units.sold(), units.total());
                prop_assert_eq!(units.unsold(), count(0) + count(1));
                prop_assert_eq!(units.sold_out(), count(2) == total);
                prop_assert_eq!(
                    (units.available(), units.held(), units.sold()),
                    (count(0), count(1), count(2))
                );
                prop_assert_eq!(
                    Units::from_parts(units.total(), units.available(), units.held(), units.sold()),
                    Ok(units)
                );
            }
        }
    }
}
