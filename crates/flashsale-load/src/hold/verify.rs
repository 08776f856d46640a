//! The hold scenario's invariants (issue 12 item 6, CO-3, CO-9, CO-10, CO-12), judged from what
//! the run saw and what the server says at the end. A pure function with unit tests, as
//! [`crate::verify`] is for the purchase scenarios.

use crate::verify::Check;
use serde::Serialize;
use std::collections::{BTreeSet, HashSet};

/// Units as one status body told them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    /// `stock_total`.
    pub total: u64,
    /// `stock_available`.
    pub available: u64,
    /// `stock_held`.
    pub held: u64,
    /// `stock_sold`.
    pub sold: u64,
    /// `waitlist_length`.
    pub waiting: u64,
}

impl Figures {
    /// Whether the units add up (CO-3).
    pub fn adds_up(&self) -> bool {
        self.available + self.held + self.sold == self.total
    }
}

/// The summary's checkout counters (`checkout` in the admin summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counters {
    /// Reservations made (purchases and offers).
    pub reserved: u64,
    /// Reservations paid.
    pub paid: u64,
    /// Reservations expired.
    pub expired: u64,
    /// Reservations cancelled.
    pub cancelled: u64,
    /// Waitlist joins.
    pub waitlist_joins: u64,
    /// Offers made.
    pub offers_made: u64,
    /// Offers paid.
    pub offers_taken: u64,
}

/// What became of one reservation the run held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Fate {
    /// The run paid it and was answered `paid`.
    Paid,
    /// The run released it and was answered `cancelled`.
    Cancelled,
    /// The run left it; the server says it expired.
    Expired,
    /// Anything else: the run could not settle it, or the server says otherwise.
    Unsettled,
}

/// One reservation: a holder's (won in the race) or an offer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The buyer.
    pub user: String,
    /// The order id.
    pub order_id: String,
    /// Its end.
    pub fate: Fate,
}

/// Everything the judgement needs.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The sale's stock.
    pub stock: u64,
    /// Reservations won in the race.
    pub holders: Vec<Reservation>,
    /// Waitlist joins answered 201: buyer and position.
    pub joins: Vec<(String, u64)>,
    /// Offers seen (each an order the server made for a waiter).
    pub offers: Vec<Reservation>,
    /// Buyers still waiting at the end with their position then.
    pub still_waiting: Vec<(String, u64)>,
    /// Status reads made during the run.
    pub status_reads: u64,
    /// Status reads whose units did not add up, as read.
    pub bad_reads: Vec<Figures>,
    /// The status at the end.
    pub last: Figures,
    /// The summary's counters at the end.
    pub counters: Counters,
    /// Buyers holding more reserved and paid units than the limit, with those units.
    pub over_limit: Vec<(String, u64)>,
    /// Requests not answered or answered with an unexpected code, as `what: answer`.
    pub errors: Vec<String>,
}

impl Observed {
    fn count(list: &[Reservation], fate: Fate) -> u64 {
        list.iter().filter(|r| r.fate == fate).count() as u64
    }

    /// Payments the run was answered `paid` for.
    pub fn paid(&self) -> u64 {
        Self::count(&self.holders, Fate::Paid) + Self::count(&self.offers, Fate::Paid)
    }

    /// Units the run saw freed: expired holds and released offers.
    pub fn released(&self) -> u64 {
        Self::count(&self.holders, Fate::Expired) + Self::count(&self.offers, Fate::Cancelled)
    }
}

/// Judges every invariant.
pub fn evaluate(o: &Observed) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(Check::new(
        "every request answered as expected",
        o.errors.is_empty(),
        format!("{} errors{}", o.errors.len(), sample(&o.errors)),
    ));
    checks.push(Check::new(
        "available + held + sold = stock at every status read",
        o.status_reads > 0 && o.bad_reads.is_empty() && o.last.adds_up(),
        format!(
            "{} reads, {} did not add up{}",
            o.status_reads,
            o.bad_reads.len(),
            o.bad_reads
                .first()
                .map(|f| format!(" (first: {f:?})"))
                .unwrap_or_default()
        ),
    ));
    checks.push(Check::new(
        "sold = paid orders <= stock",
        o.last.sold == o.paid() && o.last.sold <= o.stock,
        format!("sold {}, paid {}, stock {}", o.last.sold, o.paid(), o.stock),
    ));
    let unsettled =
        Observed::count(&o.holders, Fate::Unsettled) + Observed::count(&o.offers, Fate::Unsettled);
    checks.push(Check::new(
        "every reservation ended paid, cancelled or expired; nothing held",
        unsettled == 0 && o.last.held == 0,
        format!(
            "{unsettled} unsettled, {} units held at the end",
            o.last.held
        ),
    ));
    checks.push(Check::new(
        "each released unit offered to the waitlist or returned to stock",
        o.released() == o.offers.len() as u64 + o.last.available,
        format!(
            "{} released, {} offered, {} available at the end",
            o.released(),
            o.offers.len(),
            o.last.available
        ),
    ));
    let orders: HashSet<&str> = o.offers.iter().map(|r| r.order_id.as_str()).collect();
    let users: HashSet<&str> = o.offers.iter().map(|r| r.user.as_str()).collect();
    let waiters: HashSet<&str> = o.joins.iter().map(|(u, _)| u.as_str()).collect();
    let strangers = o
        .offers
        .iter()
        .filter(|r| !waiters.contains(r.user.as_str()))
        .count();
    checks.push(Check::new(
        "no unit offered twice, every offer to a waiter",
        orders.len() == o.offers.len() && users.len() == o.offers.len() && strangers == 0,
        format!(
            "{} offers, {} distinct orders, {} distinct buyers, {strangers} to buyers who never joined",
            o.offers.len(),
            orders.len(),
            users.len()
        ),
    ));
    checks.push(join_order(o));
    checks.push(Check::new(
        "nobody over their limit",
        o.over_limit.is_empty(),
        format!(
            "{} over{}",
            o.over_limit.len(),
            sample(
                &o.over_limit
                    .iter()
                    .map(|(u, n)| format!("{u}: {n}"))
                    .collect::<Vec<_>>()
            )
        ),
    ));
    let expected = Counters {
        reserved: (o.holders.len() + o.offers.len()) as u64,
        paid: o.paid(),
        expired: Observed::count(&o.holders, Fate::Expired),
        cancelled: Observed::count(&o.offers, Fate::Cancelled),
        waitlist_joins: o.joins.len() as u64,
        offers_made: o.offers.len() as u64,
        offers_taken: Observed::count(&o.offers, Fate::Paid),
    };
    checks.push(Check::new(
        "the summary's checkout counters are what the run did",
        o.counters == expected,
        format!("summary {:?}, run {expected:?}", o.counters),
    ));
    checks
}

/// Offers in join order: the buyers offered a unit are exactly the first joiners (positions
/// 1..=k as they joined), and those still waiting keep their join order, numbered 1.. again.
fn join_order(o: &Observed) -> Check {
    let joined: Vec<u64> = o.joins.iter().map(|(_, p)| *p).collect();
    let distinct: BTreeSet<u64> = joined.iter().copied().collect();
    let positions_ok =
        distinct.len() == joined.len() && distinct.iter().copied().eq(1..=joined.len() as u64);
    let position_of = |user: &str| o.joins.iter().find(|(u, _)| u == user).map(|(_, p)| *p);
    let offered: BTreeSet<u64> = o
        .offers
        .iter()
        .filter_map(|r| position_of(&r.user))
        .collect();
    let prefix = offered.iter().copied().eq(1..=offered.len() as u64);
    let mut waiting: Vec<(u64, u64)> = o
        .still_waiting
        .iter()
        .filter_map(|(u, now)| position_of(u).map(|joined| (joined, *now)))
        .collect();
    waiting.sort_unstable();
    let renumbered = waiting
        .iter()
        .enumerate()
        .all(|(i, (_, now))| *now == i as u64 + 1);
    let after = waiting
        .first()
        .is_none_or(|(first, _)| offered.last().is_none_or(|last| last < first));
    Check::new(
        "offers in join order",
        positions_ok && prefix && renumbered && after,
        format!(
            "{} joined (places 1..={} once each: {positions_ok}), {} offered (the first joiners: {prefix}), {} still waiting (in order, after the offered: {})",
            joined.len(),
            joined.len(),
            offered.len(),
            waiting.len(),
            renumbered && after
        ),
    )
}

fn sample(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [first, ..] => format!(" (first: {first})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(user: &str, id: &str, fate: Fate) -> Reservation {
        Reservation {
            user: user.to_owned(),
            order_id: id.to_owned(),
            fate,
        }
    }

    /// 2 units: h0 pays, h1 expires; w1 is offered h1's unit and releases it, w2 is offered
    /// it again and pays; w3 still waits (now first). Sold out, nothing available.
    fn good() -> Observed {
        Observed {
            stock: 2,
            holders: vec![
                reservation("h0", "o0", Fate::Paid),
                reservation("h1", "o1", Fate::Expired),
            ],
            joins: vec![("w1".into(), 1), ("w2".into(), 2), ("w3".into(), 3)],
            offers: vec![
                reservation("w1", "o2", Fate::Cancelled),
                reservation("w2", "o3", Fate::Paid),
            ],
            still_waiting: vec![("w3".into(), 1)],
            status_reads: 10,
            bad_reads: vec![],
            last: Figures {
                total: 2,
                available: 0,
                held: 0,
                sold: 2,
                waiting: 1,
            },
            counters: Counters {
                reserved: 4,
                paid: 2,
                expired: 1,
                cancelled: 1,
                waitlist_joins: 3,
                offers_made: 2,
                offers_taken: 1,
            },
            over_limit: vec![],
            errors: vec![],
        }
    }

    fn failed(o: &Observed) -> Vec<String> {
        evaluate(o)
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_clean_run_passes_every_check() {
        assert_eq!(failed(&good()), Vec::<String>::new());
    }

    #[test]
    fn a_status_read_that_does_not_add_up_fails() {
        let mut o = good();
        o.bad_reads.push(Figures {
            total: 2,
            available: 1,
            held: 1,
            sold: 1,
            waiting: 0,
        });
        assert_eq!(
            failed(&o),
            ["available + held + sold = stock at every status read"]
        );
    }

    #[test]
    fn a_unit_sold_without_a_payment_fails() {
        let mut o = good();
        o.offers[1].fate = Fate::Unsettled;
        let names = failed(&o);
        assert!(
            names.contains(&"sold = paid orders <= stock".to_owned()),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("every reservation ended"))
        );
    }

    #[test]
    fn a_unit_offered_twice_or_to_a_stranger_fails() {
        let mut o = good();
        o.offers[1].order_id = "o2".into();
        assert!(failed(&o).contains(&"no unit offered twice, every offer to a waiter".to_owned()));
        let mut o = good();
        o.offers[1].user = "mallory".into();
        assert!(failed(&o).contains(&"no unit offered twice, every offer to a waiter".to_owned()));
    }

    #[test]
    fn an_offer_out_of_join_order_fails() {
        let mut o = good();
        // w3 got w2's offer: w2 (joined earlier) still waits.
        o.offers[1].user = "w3".into();
        o.still_waiting = vec![("w2".into(), 1)];
        assert!(failed(&o).contains(&"offers in join order".to_owned()));
        let mut o = good();
        o.joins[2].1 = 2;
        assert!(failed(&o).contains(&"offers in join order".to_owned()));
    }

    #[test]
    fn a_released_unit_lost_fails() {
        let mut o = good();
        // w2's offer never came: the unit went nowhere, yet sold says 2.
        o.offers.pop();
        o.still_waiting = vec![("w2".into(), 1), ("w3".into(), 2)];
        assert!(failed(&o).contains(
            &"each released unit offered to the waitlist or returned to stock".to_owned()
        ));
    }

    #[test]
    fn a_summary_that_disagrees_or_a_buyer_over_the_limit_fails() {
        let mut o = good();
        o.counters.offers_made = 3;
        assert_eq!(
            failed(&o),
            ["the summary's checkout counters are what the run did"]
        );
        let mut o = good();
        o.over_limit.push(("w2".into(), 2));
        assert_eq!(failed(&o), ["nobody over their limit"]);
    }
}
