//! A sale's waitlist as a pure structure (docs/requirements.md#9-checkout, CO-9, CO-10): who
//! waits, in which order, and who gets the next freed unit. The stores keep their own copy (a
//! table, a Redis list) and mirror these rules; this is the reference they are tested against.
//!
//! Invariants: a buyer is on the list at most once; positions are 1, 2, ... in join order;
//! offers go to the earliest joiner who is under the per-user limit (counting reserved and paid
//! units), one unit per offer, and never at or after `ends_at`. A buyer passed over because
//! they are at the limit is taken off the list: they could not have joined that way.
//!
//! Looking up a position walks the list (linear): fine for a reference and for the sizes a
//! flash sale's waitlist reaches in memory; a store answers it from an index (a rank).

use crate::checkout_outcome::CheckoutOutcome;
use crate::ids::UserId;
use crate::sale::Sale;
use crate::units::Units;
use std::collections::VecDeque;
use thiserror::Error;
use time::OffsetDateTime;

/// Why a buyer could not join, or is not on, the waitlist. Each names its [`CheckoutOutcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WaitlistRefusal {
    /// The sale has not started: units will be available at the start.
    #[error("the sale has not started")]
    NotStarted,
    /// The sale has reached `ends_at`: nothing more is offered.
    #[error("the sale has ended; its waitlist is closed")]
    Closed,
    /// Every unit is sold: nothing can free up.
    #[error("every unit is sold")]
    SoldOut,
    /// Units are available: reserve one instead.
    #[error("{available} units are available to reserve now")]
    UnitsAvailable {
        /// Units available.
        available: u32,
    },
    /// The buyer is on the list already.
    #[error("already on the waitlist at position {position}")]
    AlreadyWaitlisted {
        /// Their place (1 is next).
        position: usize,
    },
    /// The buyer's reserved and paid units reach the per-user limit.
    #[error("the buyer holds the per-user limit of {limit} units")]
    AtLimit {
        /// The sale's per-user limit.
        limit: u32,
    },
    /// The buyer is not on the list.
    #[error("not on the waitlist")]
    NotWaitlisted,
}

impl WaitlistRefusal {
    /// The answer this refusal gets.
    pub fn outcome(self) -> CheckoutOutcome {
        match self {
            WaitlistRefusal::NotStarted => CheckoutOutcome::SaleNotActive,
            WaitlistRefusal::Closed => CheckoutOutcome::WaitlistClosed,
            WaitlistRefusal::SoldOut => CheckoutOutcome::SoldOut,
            WaitlistRefusal::UnitsAvailable { .. } => CheckoutOutcome::UnitsAvailable,
            WaitlistRefusal::AlreadyWaitlisted { .. } => CheckoutOutcome::AlreadyWaitlisted,
            WaitlistRefusal::AtLimit { .. } => CheckoutOutcome::AlreadyPurchased,
            WaitlistRefusal::NotWaitlisted => CheckoutOutcome::NotWaitlisted,
        }
    }
}

/// The buyers waiting for a unit of one sale, in join order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waitlist {
    queue: VecDeque<UserId>,
}

impl Waitlist {
    /// An empty waitlist.
    pub fn new() -> Self {
        Self::default()
    }

    /// Buyers waiting (`waitlist_length`).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The buyer's place, 1 being the next offer, if they wait.
    pub fn position(&self, user: &UserId) -> Option<usize> {
        self.queue.iter().position(|u| u == user).map(|i| i + 1)
    }

    /// Adds `user`, who holds `holding` reserved and paid units, at the end of the list, at
    /// `now`, and returns their place.
    ///
    /// Order of checks: the window (not started, closed), then the units (sold out, units
    /// available), then the buyer (already waiting, at the limit): the same answer for every
    /// buyer while the sale is in a state where nobody may join.
    pub fn join(
        &mut self,
        user: UserId,
        sale: &Sale,
        units: &Units,
        holding: u32,
        now: OffsetDateTime,
    ) -> Result<usize, WaitlistRefusal> {
        if now < sale.starts_at {
            return Err(WaitlistRefusal::NotStarted);
        }
        if !sale.waitlist_open(now) {
            return Err(WaitlistRefusal::Closed);
        }
        if units.sold_out() {
            return Err(WaitlistRefusal::SoldOut);
        }
        if units.available() > 0 {
            return Err(WaitlistRefusal::UnitsAvailable {
                available: units.available(),
            });
        }
        if let Some(position) = self.position(&user) {
            return Err(WaitlistRefusal::AlreadyWaitlisted { position });
        }
        if holding >= sale.per_user_limit {
            return Err(WaitlistRefusal::AtLimit {
                limit: sale.per_user_limit,
            });
        }
        self.queue.push_back(user);
        Ok(self.queue.len())
    }

    /// Takes `user` off the list.
    pub fn leave(&mut self, user: &UserId) -> Result<(), WaitlistRefusal> {
        let index = self.position(user).ok_or(WaitlistRefusal::NotWaitlisted)?;
        self.queue.remove(index - 1);
        Ok(())
    }

    /// Who gets one freed unit at `now`: the earliest joiner whose reserved and paid units
    /// (`holding`) leave room for one more, taken off the list (the store gives them a
    /// reservation with a fresh window). Buyers at the limit met on the way are taken off too.
    /// `None` when nobody can take it, or at or after `ends_at`: the unit goes back to
    /// available (after the end, to no one).
    pub fn next_offer(
        &mut self,
        sale: &Sale,
        now: OffsetDateTime,
        mut holding: impl FnMut(&UserId) -> u32,
    ) -> Option<UserId> {
        if !sale.waitlist_open(now) {
            return None;
        }
        while let Some(user) = self.queue.pop_front() {
            if holding(&user) < sale.per_user_limit {
                return Some(user);
            }
        }
        None
    }
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

    const START: OffsetDateTime = datetime!(2026-11-30 12:00 UTC);
    const END: OffsetDateTime = datetime!(2026-11-30 13:00 UTC);
    const DURING: OffsetDateTime = datetime!(2026-11-30 12:30 UTC);

    fn sale(limit: u32) -> Sale {
        NewSale::parse("Widget", START, END, 4, i64::from(limit))
            .unwrap()
            .with_id(SaleId(1))
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    /// Four units, all reserved: nothing available, nothing sold.
    fn all_held() -> Units {
        Units::from_parts(4, 0, 4, 0).unwrap()
    }

    #[test]
    fn co9_buyers_join_in_order_and_see_their_positions() {
        let mut list = Waitlist::new();
        for (i, name) in ["ann", "bob", "cy"].into_iter().enumerate() {
            let position = list.join(user(name), &sale(1), &all_held(), 0, DURING);
            assert_eq!(position, Ok(i + 1));
        }
        assert_eq!(list.len(), 3);
        assert_eq!(list.position(&user("bob")), Some(2));
        assert_eq!(list.position(&user("dee")), None);
    }

    #[test]
    fn co9_joining_while_units_are_available_is_refused() {
        let mut list = Waitlist::new();
        let units = Units::from_parts(4, 1, 3, 0).unwrap();
        let refusal = list
            .join(user("ann"), &sale(1), &units, 0, DURING)
            .unwrap_err();
        assert_eq!(refusal, WaitlistRefusal::UnitsAvailable { available: 1 });
        assert_eq!(refusal.outcome().code(), "units_available");
        assert!(list.is_empty());
    }

    #[test]
    fn co9_joining_twice_is_refused_with_the_place_held() {
        let mut list = Waitlist::new();
        list.join(user("ann"), &sale(1), &all_held(), 0, DURING)
            .unwrap();
        list.join(user("bob"), &sale(1), &all_held(), 0, DURING)
            .unwrap();
        let refusal = list
            .join(user("ann"), &sale(1), &all_held(), 0, DURING)
            .unwrap_err();
        assert_eq!(refusal, WaitlistRefusal::AlreadyWaitlisted { position: 1 });
        assert_eq!(refusal.outcome().code(), "already_waitlisted");
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn co9_a_buyer_at_the_limit_cannot_join() {
        let mut list = Waitlist::new();
        let refusal = list
            .join(user("ann"), &sale(2), &all_held(), 2, DURING)
            .unwrap_err();
        assert_eq!(refusal, WaitlistRefusal::AtLimit { limit: 2 });
        assert_eq!(refusal.outcome().code(), "already_purchased");
        // One below the limit may wait for one more.
        assert_eq!(
            list.join(user("ann"), &sale(2), &all_held(), 1, DURING),
            Ok(1)
        );
    }

    #[test]
    fn co9_nobody_joins_before_the_start_at_or_after_the_end_or_once_all_is_sold() {
        let mut list = Waitlist::new();
        let s = sale(1);
        let cases = [
            (
                all_held(),
                START - Duration::nanoseconds(1),
                WaitlistRefusal::NotStarted,
                "sale_not_active",
            ),
            (all_held(), END, WaitlistRefusal::Closed, "waitlist_closed"),
            (
                Units::from_parts(4, 0, 0, 4).unwrap(),
                DURING,
                WaitlistRefusal::SoldOut,
                "sold_out",
            ),
        ];
        for (units, now, refusal, code) in cases {
            assert_eq!(list.join(user("ann"), &s, &units, 0, now), Err(refusal));
            assert_eq!(refusal.outcome().code(), code);
        }
        assert!(list.is_empty());
        // Exactly at the start, with every unit held, joining is open.
        assert_eq!(list.join(user("ann"), &s, &all_held(), 0, START), Ok(1));
        // One nanosecond before the end too.
        let just_before = END - Duration::nanoseconds(1);
        assert_eq!(
            list.join(user("bob"), &s, &all_held(), 0, just_before),
            Ok(2)
        );
    }

    #[test]
    fn co9_a_cancelled_sale_takes_no_join_and_offers_nothing() {
        let mut list = Waitlist::new();
        let mut s = sale(1);
        assert_eq!(list.join(user("ann"), &s, &all_held(), 0, DURING), Ok(1));
        s.cancelled_at = Some(DURING);
        assert_eq!(
            list.join(user("bob"), &s, &all_held(), 0, DURING),
            Err(WaitlistRefusal::Closed)
        );
        assert_eq!(list.next_offer(&s, DURING, |_| 0), None);
    }

    #[test]
    fn co9_leaving_moves_everyone_behind_up_one_place() {
        let mut list = Waitlist::new();
        for name in ["ann", "bob", "cy"] {
            list.join(user(name), &sale(1), &all_held(), 0, DURING)
                .unwrap();
        }
        assert_eq!(list.leave(&user("ann")), Ok(()));
        assert_eq!(list.position(&user("bob")), Some(1));
        assert_eq!(list.position(&user("cy")), Some(2));
        let refusal = list.leave(&user("ann")).unwrap_err();
        assert_eq!(refusal, WaitlistRefusal::NotWaitlisted);
        assert_eq!(refusal.outcome().code(), "not_waitlisted");
    }

    #[test]
    fn co10_offers_go_in_join_order_one_per_freed_unit() {
        let mut list = Waitlist::new();
        for name in ["ann", "bob"] {
            list.join(user(name), &sale(1), &all_held(), 0, DURING)
                .unwrap();
        }
        assert_eq!(list.next_offer(&sale(1), DURING, |_| 0), Some(user("ann")));
        assert_eq!(list.next_offer(&sale(1), DURING, |_| 0), Some(user("bob")));
        assert_eq!(list.next_offer(&sale(1), DURING, |_| 0), None);
    }

    #[test]
    fn co10_a_buyer_who_reached_the_limit_meanwhile_is_passed_over_and_removed() {
        let mut list = Waitlist::new();
        for name in ["ann", "bob"] {
            list.join(user(name), &sale(1), &all_held(), 0, DURING)
                .unwrap();
        }
        // Ann bought a unit that was released to available while she waited.
        let holding = |u: &UserId| u32::from(u.as_str() == "ann");
        assert_eq!(
            list.next_offer(&sale(1), DURING, holding),
            Some(user("bob"))
        );
        assert!(list.is_empty());
    }

    #[test]
    fn co10_nothing_is_offered_at_or_after_the_end() {
        let mut list = Waitlist::new();
        list.join(user("ann"), &sale(1), &all_held(), 0, DURING)
            .unwrap();
        assert_eq!(list.next_offer(&sale(1), END, |_| 0), None);
        assert_eq!(list.len(), 1, "the list is closed, not consumed");
        assert_eq!(
            list.next_offer(&sale(1), END - Duration::nanoseconds(1), |_| 0),
            Some(user("ann"))
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(u8),
        Leave(u8),
        Offer,
        /// A buyer's holding changes (a reservation of theirs expired, or they bought).
        Hold(u8, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..8).prop_map(Op::Join),
            1 => (0u8..8).prop_map(Op::Leave),
            3 => Just(Op::Offer),
            1 => ((0u8..8), 0u32..3).prop_map(|(u, h)| Op::Hold(u, h)),
        ]
    }

    proptest! {
        /// Against a plain vector model: joins keep order and uniqueness, offers go to the
        /// earliest joiner under the limit, nobody is offered twice while not rejoining, and
        /// nobody is ever offered a unit that would take them over the limit.
        #[test]
        fn co10_offers_follow_join_order_and_respect_the_limit(
            limit in 1u32..3,
            ops in proptest::collection::vec(op(), 0..120),
        ) {
            let s = sale(limit);
            let mut list = Waitlist::new();
            let mut model: Vec<u8> = Vec::new();
            let mut holding: HashMap<u8, u32> = HashMap::new();
            let name = |u: u8| user(&format!("buyer{u}"));
            for op in ops {
                match op {
                    Op::Join(u) => {
                        let h = holding.get(&u).copied().unwrap_or(0);
                        let joined = list.join(name(u), &s, &all_held(), h, DURING);
                        let may = !model.contains(&u) && h < limit;
                        prop_assert_eq!(joined.is_ok(), may);
                        if may {
                            model.push(u);
                            prop_assert_eq!(joined, Ok(model.len()));
                        }
                    }
                    Op::Leave(u) => {
                        let left = list.leave(&name(u));
                        prop_assert_eq!(left.is_ok(), model.contains(&u));
                        model.retain(|m| *m != u);
                    }
                    Op::Offer => {
                        let offer = list.next_offer(&s, DURING, |id| {
                            let u: u8 = id.as_str()[5..].parse().unwrap();
                            holding.get(&u).copied().unwrap_or(0)
                        });
                        let expected = loop {
                            if model.is_empty() {
                                break None;
                            }
                            let u = model.remove(0);
                            if holding.get(&u).copied().unwrap_or(0) < limit {
                                break Some(u);
                            }
                        };
                        prop_assert_eq!(offer, expected.map(name));
                        if let Some(u) = expected {
                            let h = holding.entry(u).or_default();
                            *h += 1;
                            prop_assert!(*h <= limit);
                        }
                    }
                    Op::Hold(u, h) => {
                        holding.insert(u, h.min(limit));
                    }
                }
                prop_assert_eq!(list.len(), model.len());
                for (i, u) in model.iter().enumerate() {
                    prop_assert_eq!(list.position(&name(*u)), Some(i + 1));
                }
            }
        }
    }
}
