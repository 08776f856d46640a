//! The invariants (T-8, T-9, NF-1, IM-1..IM-5, PR-5/PR-6), checked from the server's own
//! endpoints after the load: status, admin summary and per-buyer orders.
//!
//! Gathering ([`gather`]) and judging ([`evaluate`]) are separate so the judging is a pure
//! function with unit tests. The exact count `confirmed = min(stock, buyers x limit)` is only
//! asserted where the run makes it exact: on a sale the tool created, with every attempt
//! answered (a lost answer may hide a confirmation, a shed one took nothing but also gave
//! the buyer no decision).

use crate::api::{self, BuyerOrders, Summary};
use crate::client::{Conn, Target};
use crate::outcome::Confirmation;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// Connections used to read buyers' orders back.
const VERIFY_CONNECTIONS: usize = 32;

/// One invariant and whether it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The figures behind the verdict.
    pub detail: String,
}

impl Check {
    pub(crate) fn new(name: &str, passed: bool, detail: String) -> Self {
        Self {
            name: name.to_owned(),
            passed,
            detail,
        }
    }
}

/// What the per-buyer reads found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuyerFindings {
    /// Buyers whose orders were read.
    pub checked: usize,
    /// Confirmed buyers among them.
    pub confirmed_checked: usize,
    /// Confirmed buyers in all (the reads may be a sample of them).
    pub confirmed_total: usize,
    /// Buyers holding more units than the limit, with their units.
    pub over_limit: Vec<(String, u64)>,
    /// Confirmations whose order is not among the buyer's orders: (buyer, order id).
    pub missing: Vec<(String, String)>,
    /// Reads that failed.
    pub read_errors: Vec<String>,
}

/// Everything the judgement needs.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Units at creation.
    pub stock_total: u64,
    /// Units left, from the status endpoint.
    pub stock_remaining: u64,
    /// The sale's per-user limit.
    pub per_user_limit: u32,
    /// The admin summary, when a token was given.
    pub summary: Option<Summary>,
    /// Units the tool's buyers were told are confirmed.
    pub confirmed_seen: u64,
    /// Confirmed units per buyer, as the tool saw them.
    pub confirmed_per_buyer: BTreeMap<String, u64>,
    /// Whether the tool created the sale (nobody else buys in it).
    pub own_sale: bool,
    /// Requests without a contract answer (errors plus shed).
    pub not_decided: u64,
    /// Whether such requests fail the run.
    pub allow_errors: bool,
    /// Distinct buyers that attempted.
    pub buyers: u64,
    /// Units each buyer asked for in all (attempts x quantity).
    pub demand_each: u64,
    /// Units the buyers could take in all, each within the limit, when buyers asked for
    /// different amounts (a buyer pool); `None`: `buyers x min(demand_each, limit)`.
    pub wanted: Option<u64>,
    /// The per-buyer reads.
    pub buyers_read: BuyerFindings,
}

/// `min(stock, buyers x min(demand, limit))`: what must be confirmed when every attempt was
/// decided.
pub fn expected_confirmed(stock: u64, buyers: u64, demand_each: u64, limit: u32) -> u64 {
    stock.min(buyers.saturating_mul(demand_each.min(u64::from(limit))))
}

/// Judges the run.
pub fn evaluate(o: &Observed) -> Vec<Check> {
    let mut checks = Vec::new();
    let server_confirmed = o.summary.as_ref().map(|s| s.confirmed_units);

    checks.push(Check::new(
        "no oversell",
        o.stock_remaining <= o.stock_total && server_confirmed.is_none_or(|c| c <= o.stock_total),
        format!(
            "stock {}, remaining {}, confirmed per server {}",
            o.stock_total,
            o.stock_remaining,
            server_confirmed.map_or("unknown".into(), |c| c.to_string())
        ),
    ));

    match server_confirmed {
        Some(c) => checks.push(Check::new(
            "final stock = stock - confirmed",
            o.stock_total.checked_sub(c) == Some(o.stock_remaining),
            format!("{} - {c} = remaining {}", o.stock_total, o.stock_remaining),
        )),
        None if o.own_sale && o.not_decided == 0 => checks.push(Check::new(
            "final stock = stock - confirmed",
            o.stock_total.checked_sub(o.confirmed_seen) == Some(o.stock_remaining),
            format!(
                "{} - {} (seen) = remaining {}",
                o.stock_total, o.confirmed_seen, o.stock_remaining
            ),
        )),
        None => {}
    }

    if let Some(c) = server_confirmed {
        // The server may have confirmed attempts whose answers the tool lost; it can never
        // have confirmed fewer than the tool was told.
        let exact = o.own_sale && o.not_decided == 0;
        checks.push(Check::new(
            "server's count matches the answers",
            if exact {
                c == o.confirmed_seen
            } else {
                c >= o.confirmed_seen
            },
            format!(
                "server {c}, answers {}{}",
                o.confirmed_seen,
                if exact { "" } else { " (at most)" }
            ),
        ));
    }

    if o.own_sale && o.not_decided == 0 {
        let (want, how) = match o.wanted {
            Some(wanted) => (
                o.stock_total.min(wanted),
                format!(
                    "min({}, {wanted} wanted within limit {})",
                    o.stock_total, o.per_user_limit
                ),
            ),
            None => (
                expected_confirmed(o.stock_total, o.buyers, o.demand_each, o.per_user_limit),
                format!(
                    "min({}, {} x min({}, {}))",
                    o.stock_total, o.buyers, o.demand_each, o.per_user_limit
                ),
            ),
        };
        checks.push(Check::new(
            "confirmed = min(stock, buyers x limit)",
            o.confirmed_seen == want && server_confirmed.is_none_or(|c| c == want),
            format!("{how} = {want}; answers {}", o.confirmed_seen),
        ));
    }

    let limit = u64::from(o.per_user_limit);
    let over_in_answers: Vec<_> = o
        .confirmed_per_buyer
        .iter()
        .filter(|(_, u)| **u > limit)
        .collect();
    let b = &o.buyers_read;
    checks.push(Check::new(
        "nobody over the limit",
        over_in_answers.is_empty() && b.over_limit.is_empty(),
        format!(
            "limit {limit}; {} buyers over it in answers, {} of {} read back over it{}",
            over_in_answers.len(),
            b.over_limit.len(),
            b.checked,
            first(
                &b.over_limit
                    .iter()
                    .map(|(u, n)| format!("{u} holds {n}"))
                    .collect::<Vec<_>>()
            )
        ),
    ));

    checks.push(Check::new(
        "every confirmed order present",
        b.missing.is_empty() && b.read_errors.is_empty(),
        format!(
            "{} of {} confirmed buyers read back, {} missing, {} read errors{}{}",
            b.confirmed_checked,
            b.confirmed_total,
            b.missing.len(),
            b.read_errors.len(),
            first(
                &b.missing
                    .iter()
                    .map(|(u, id)| format!("{u} order {id}"))
                    .collect::<Vec<_>>()
            ),
            first(&b.read_errors)
        ),
    ));

    checks.push(Check::new(
        "every attempt answered (no errors, none shed)",
        o.not_decided == 0 || o.allow_errors,
        format!(
            "{} not decided{}",
            o.not_decided,
            if o.allow_errors { " (allowed)" } else { "" }
        ),
    ));
    checks
}

fn first(items: &[String]) -> String {
    items
        .first()
        .map(|s| format!("; first: {s}"))
        .unwrap_or_default()
}

/// Units `buyers` could take in all (one unit per listing of a buyer), each within `limit`.
pub fn wanted_within_limit(buyers: &[String], limit: u32) -> u64 {
    let mut asked: HashMap<&str, u64> = HashMap::new();
    for b in buyers {
        *asked.entry(b.as_str()).or_default() += 1;
    }
    asked.values().map(|n| (*n).min(u64::from(limit))).sum()
}

/// Confirmed units per buyer from the answers.
pub fn per_buyer(confirmations: &[Confirmation]) -> BTreeMap<String, u64> {
    let mut map = BTreeMap::new();
    for c in confirmations {
        *map.entry(c.user_id.clone()).or_insert(0) += u64::from(c.quantity);
    }
    map
}

/// Picks up to `max` items spread evenly over `items`.
pub fn spread<T: Clone>(items: &[T], max: usize) -> Vec<T> {
    if items.len() <= max {
        return items.to_vec();
    }
    if max == 0 {
        return Vec::new();
    }
    (0..max)
        .map(|k| items[k * items.len() / max].clone())
        .collect()
}

/// Where and how the buyers' orders are read back.
pub struct ReadBack<'a> {
    /// The servers (readers spread over them).
    pub targets: &'a [Arc<Target>],
    /// Each read's timeout.
    pub timeout: Duration,
    /// The sale.
    pub sale_id: u64,
    /// Its per-user limit (a buyer holding more is a finding).
    pub limit: u32,
    /// With `--identity accounts`: each buyer's token, so they read `orders/me`.
    pub auth: Option<Arc<HashMap<String, Arc<str>>>>,
}

/// Reads back the orders of the confirmed buyers (up to `max`, else a spread sample) and of
/// `others` (buyers with no confirmation), and compares them with the confirmations.
pub async fn gather(
    read: ReadBack<'_>,
    confirmations: &[Confirmation],
    others: Vec<String>,
    max: usize,
) -> BuyerFindings {
    let ReadBack {
        targets,
        timeout,
        sale_id,
        limit,
        auth,
    } = read;
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in confirmations {
        expected
            .entry(c.user_id.clone())
            .or_default()
            .insert(c.order_id.clone());
    }
    let confirmed: Vec<String> = expected.keys().cloned().collect();
    let mut findings = BuyerFindings {
        confirmed_total: confirmed.len(),
        ..Default::default()
    };
    let chosen = spread(&confirmed, max);
    findings.confirmed_checked = chosen.len();
    let mut queue: Vec<(String, BTreeSet<String>)> = chosen
        .into_iter()
        .map(|u| {
            let ids = expected.remove(&u).unwrap_or_default();
            (u, ids)
        })
        .collect();
    queue.extend(others.into_iter().map(|u| (u, BTreeSet::new())));
    findings.checked = queue.len();

    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let mut readers = JoinSet::new();
    for k in 0..VERIFY_CONNECTIONS.min(findings.checked.max(1)) {
        let queue = Arc::clone(&queue);
        let auth = auth.clone();
        let mut conn = Conn::new(Arc::clone(&targets[k % targets.len()]), timeout);
        readers.spawn(async move {
            let mut part = BuyerFindings::default();
            loop {
                let Some((user, ids)) = queue.lock().await.pop() else {
                    break;
                };
                let token = match &auth {
                    Some(map) => match map.get(&user) {
                        Some(token) => Some(Arc::clone(token)),
                        None => {
                            part.read_errors.push(format!("no token for {user}"));
                            continue;
                        }
                    },
                    None => None,
                };
                match api::buyer_orders(&mut conn, sale_id, &user, token.as_deref()).await {
                    Ok(BuyerOrders::Found(orders)) => {
                        let units: u64 = orders.iter().map(|o| u64::from(o.quantity)).sum();
                        if units > u64::from(limit) {
                            part.over_limit.push((user.clone(), units));
                        }
                        let held: BTreeSet<String> = orders
                            .iter()
                            .map(|o| crate::outcome::id_text(&o.order_id))
                            .collect();
                        for id in ids.difference(&held) {
                            part.missing.push((user.clone(), id.clone()));
                        }
                    }
                    Ok(BuyerOrders::None) => {
                        for id in ids {
                            part.missing.push((user.clone(), id));
                        }
                    }
                    Err(e) => part.read_errors.push(format!("{e:#}")),
                }
            }
            part
        });
    }
    while let Some(part) = readers.join_next().await {
        match part {
            Ok(part) => {
                findings.over_limit.extend(part.over_limit);
                findings.missing.extend(part.missing);
                findings.read_errors.extend(part.read_errors);
            }
            Err(e) => findings
                .read_errors
                .push(format!("reader task failed: {e}")),
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn herd(confirmed: u64) -> Observed {
        Observed {
            stock_total: 100,
            stock_remaining: 100 - confirmed,
            per_user_limit: 1,
            summary: Some(Summary {
                attempts: 1000,
                confirmed_orders: confirmed,
                confirmed_units: confirmed,
                stock_remaining: 100 - confirmed,
                rejections: BTreeMap::new(),
            }),
            confirmed_seen: confirmed,
            own_sale: true,
            buyers: 1000,
            demand_each: 1,
            ..Default::default()
        }
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn a_clean_sold_out_herd_passes_every_check() {
        assert!(failed(&evaluate(&herd(100))).is_empty());
    }

    #[test]
    fn selling_less_than_the_stock_to_enough_buyers_fails_the_exact_count() {
        assert_eq!(
            failed(&evaluate(&herd(99))),
            ["confirmed = min(stock, buyers x limit)"]
        );
    }

    #[test]
    fn a_buyer_over_the_limit_fails() {
        let mut o = herd(100);
        o.confirmed_per_buyer.insert("u".into(), 2);
        assert_eq!(failed(&evaluate(&o)), ["nobody over the limit"]);
    }

    #[test]
    fn a_missing_order_fails() {
        let mut o = herd(100);
        o.buyers_read.missing.push(("u".into(), "id".into()));
        assert_eq!(failed(&evaluate(&o)), ["every confirmed order present"]);
    }

    #[test]
    fn stock_that_does_not_add_up_fails() {
        let mut o = herd(100);
        o.stock_remaining = 1;
        let checks = evaluate(&o);
        let f = failed(&checks);
        assert!(f.contains(&"final stock = stock - confirmed"), "{f:?}");
    }

    #[test]
    fn lost_answers_relax_the_exact_count_but_fail_unless_allowed() {
        let mut o = herd(100);
        o.confirmed_seen = 98;
        o.not_decided = 2;
        assert_eq!(
            failed(&evaluate(&o)),
            ["every attempt answered (no errors, none shed)"]
        );
        o.allow_errors = true;
        assert!(failed(&evaluate(&o)).is_empty());
    }

    #[test]
    fn expected_confirmed_is_capped_by_stock_and_by_limit() {
        assert_eq!(expected_confirmed(100, 1000, 1, 1), 100);
        assert_eq!(expected_confirmed(100, 10, 5, 2), 20);
        assert_eq!(expected_confirmed(100, 10, 1, 3), 10);
    }

    #[test]
    fn a_pool_is_judged_by_what_its_buyers_could_take() {
        let pool: Vec<String> = ["a", "b", "a", "a", "c"].map(String::from).to_vec();
        assert_eq!(wanted_within_limit(&pool, 2), 4);
        assert_eq!(wanted_within_limit(&pool, 1000), 5);
        let mut o = herd(100);
        o.stock_total = 1000;
        o.stock_remaining = 1000 - 100;
        o.wanted = Some(100);
        assert!(failed(&evaluate(&o)).is_empty());
        o.wanted = Some(101);
        assert_eq!(
            failed(&evaluate(&o)),
            ["confirmed = min(stock, buyers x limit)"]
        );
    }

    #[test]
    fn spread_picks_evenly_and_keeps_short_lists() {
        assert_eq!(spread(&[1, 2, 3], 5), [1, 2, 3]);
        assert_eq!(spread(&(0..10).collect::<Vec<_>>(), 5), [0, 2, 4, 6, 8]);
    }
}
