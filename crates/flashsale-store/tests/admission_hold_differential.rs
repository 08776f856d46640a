//! `admission.lua` for hold-mode sales checked against `flashsale_core::decide_units`.
//!
//! The script restates the hold rules (the sale's state from the unsold units, `remaining +
//! onhold`; what may be taken from `remaining`; the buyer's reserved + paid units against the
//! limit). Every combination of a small sale's figures (free units, units on hold, the buyer's
//! holding, the quantity) at instants before, at, inside and after the window is decided by
//! both, and the code, argument and finality must agree. Nothing is in flight here: the waits
//! for in-flight commits are `admission_differential.rs`'s subject.
//!
//! The clock: the script decides at `max(TIME, meta.clock_us)`, so `clock_us` a day ahead of
//! Redis's clock makes it decide at exactly that instant.

#![allow(clippy::unwrap_used)]

use flashsale_core::{
    Decision, NewSale, NotActiveReason, Quantity, Rejection, SaleId, SaleState, decide_units,
};
use flashsale_store::redis_pg::keys::Keys;
use redis::Script;
use time::OffsetDateTime;
use uuid::Uuid;

const START: i64 = 1_000_000;
const END: i64 = 2_000_000;
const INSTANTS: [i64; 6] = [START - 1, START, START + 1, END - 1, END, END + 1];
const STOCK: u32 = 3;
const LIMIT: u32 = 2;

fn at(base: i64, t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(base + t) * 1000).unwrap()
}

/// The script's answer as (code, argument, final), "admit" for an admission.
fn expected(decision: Decision, state: SaleState) -> (String, u32, bool) {
    let final_ = matches!(state, SaleState::Ended(_));
    match decision {
        Decision::Admit => ("admit".into(), 0, false),
        Decision::QuantityAboveLimit(_) => unreachable!("quantities stay within the limit"),
        Decision::Reject(r) => {
            let (code, arg) = match r {
                Rejection::NotActive(NotActiveReason::Upcoming) => ("upcoming", 0),
                Rejection::NotActive(NotActiveReason::Ended) => ("ended", 0),
                Rejection::SoldOut => ("sold_out", 0),
                Rejection::AlreadyPurchased => ("already", 0),
                Rejection::LimitExceeded { allowed } => ("limit", allowed),
                Rejection::InsufficientStock { remaining } => ("insufficient", remaining),
            };
            (code.into(), arg, final_ && code != "upcoming")
        }
    }
}

#[test]
fn admission_lua_decides_hold_sales_as_decide_units() {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .expect("Redis reachable (TEST_REDIS_URL)");
    let prefix = format!("holddiff_{}", Uuid::now_v7().simple());
    let keys = Keys::new(&prefix);
    let script = Script::new(include_str!("../src/redis_pg/admission.lua"));
    let (s, us): (i64, i64) = redis::cmd("TIME").query(&mut con).unwrap();
    let base = s * 1_000_000 + us + 86_400_000_000;
    let sale = NewSale::parse(
        "Widget",
        at(base, START),
        at(base, END),
        i64::from(STOCK),
        i64::from(LIMIT),
    )
    .unwrap()
    .with_id(SaleId(1));
    let mut cases = 0;
    let mut disagreements = Vec::new();
    for (n, instant) in INSTANTS.into_iter().enumerate() {
        for remaining in 0..=STOCK {
            for on_hold in 0..=STOCK - remaining {
                for bought in 0..=LIMIT {
                    for q in 1..=LIMIT {
                        cases += 1;
                        // A sale of its own per case: the instant may only move forward.
                        let id = SaleId((n as i64 + 1) * 10_000 + i64::from(cases));
                        let k = keys.sale(id);
                        let _: () = redis::cmd("HSET")
                            .arg(&k.meta)
                            .arg(&[
                                ("stock", STOCK.to_string()),
                                ("limit", LIMIT.to_string()),
                                ("starts_us", (base + START).to_string()),
                                ("ends_us", (base + END).to_string()),
                                ("remaining", remaining.to_string()),
                                ("reserved", "0".to_owned()),
                                ("epoch", "1".to_owned()),
                                ("clock_us", (base + instant).to_string()),
                                ("hold", "1".to_owned()),
                                ("onhold", on_hold.to_string()),
                            ])
                            .query(&mut con)
                            .unwrap();
                        if bought > 0 {
                            let _: () = redis::cmd("HSET")
                                .arg(&k.held)
                                .arg("buyer")
                                .arg(bought)
                                .query(&mut con)
                                .unwrap();
                        }
                        let mut inv = script.prepare_invoke();
                        for key in k.script_keys() {
                            inv.key(key);
                        }
                        inv.arg(10_000).arg(600_000).arg(10_000);
                        inv.arg("buyer")
                            .arg(q)
                            .arg("")
                            .arg(Uuid::now_v7().to_string());
                        let replies: Vec<Vec<String>> = inv.invoke(&mut con).unwrap();
                        let reply = &replies[0];
                        let got = match reply[0].as_str() {
                            "admit" => ("admit".to_owned(), 0, false),
                            "reject" => {
                                (reply[2].clone(), reply[3].parse().unwrap(), reply[4] == "1")
                            }
                            other => panic!("unexpected reply {other:?}: {reply:?}"),
                        };
                        let now = at(base, instant);
                        let unsold = remaining + on_hold;
                        let decision = decide_units(
                            &sale,
                            now,
                            remaining,
                            unsold,
                            bought,
                            Quantity::parse(i64::from(q), LIMIT).unwrap(),
                        );
                        let want = expected(decision, sale.state(now, unsold));
                        if got != want {
                            disagreements.push(format!(
                                "t={instant} remaining={remaining} onhold={on_hold} \
                                 bought={bought} q={q}: lua {got:?}, core {want:?}"
                            ));
                        }
                    }
                }
            }
        }
    }
    let all: Vec<String> = redis::cmd("KEYS")
        .arg(keys.pattern())
        .query(&mut con)
        .unwrap();
    if !all.is_empty() {
        let _: () = redis::cmd("DEL").arg(&all).query(&mut con).unwrap();
    }
    assert!(cases > 100);
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
