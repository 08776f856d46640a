//! `admission.lua` checked against `flashsale_core::decide` (issue 11, item 2).
//!
//! The scale-out store decides in a Lua script written by hand; the rules are stated once, in
//! `decide`. Here proptest drives the same sequences of attempts through
//! - a model: `decide` plus a small book (free units, units reserved, each buyer's holding
//!   and reservations in flight, idempotency records) following the rules of the script's
//!   header and of docs/api.md (replays, `idempotency_key_reused`, `wait`), and
//! - the script itself (`src/redis_pg/admission.lua`, and `settle.lua` to confirm or release
//!   each admission), loaded from their files and run on the test Redis (`TEST_REDIS_URL`),
//!
//! and requires the same reply (status, code, argument, finality, replayed record) and the
//! same state (every field of `meta` the scripts keep, every holding, every reservation in
//! flight, every idempotency record, every remembered refusal) after every step.
//!
//! The clock: the script decides at `max(TIME, meta.clock_us)` (its clock guard). Setting
//! `clock_us` a day ahead of Redis's own clock therefore makes the script decide at exactly
//! that instant, so attempts land exactly at the start, a microsecond before the end, exactly
//! at the end, and so on. Instants only move forward, as the guard guarantees in production.
//!
//! Cases: 256 by default (about 2 s), `PROPTEST_CASES` to change it. Keys live under a prefix of this test's
//! own, deleted at the end, also on failure.

#![allow(clippy::unwrap_used)]

use flashsale_core::{
    Decision, NewSale, NotActiveReason, Quantity, Rejection, Sale, SaleId, SaleState,
    check_quantity, decide,
};
use flashsale_store::redis_pg::keys::{Keys, SaleKeys};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use redis::{Connection, Script};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// The sale's window, in microseconds of the virtual clock (added to a base a day ahead).
const START: i64 = 1_000_000;
const END: i64 = 2_000_000;
/// The instants attempts are decided at: before, at and after each boundary.
const INSTANTS: [i64; 9] = [
    START - 500_000,
    START - 1,
    START,
    START + 1,
    START + 400_000,
    END - 1,
    END,
    END + 1,
    END + 500_000,
];
/// As the store passes them (`scripts.rs`): a refusal is remembered 10 minutes, at most
/// 10,000 per sale. A case spans 1 s of the virtual clock and a few keys, so neither the
/// retention nor the bound is ever reached: the model leaves them out.
const LEASE_MS: u64 = 10_000;
const REFUSAL_RETENTION_MS: u64 = 600_000;
const MAX_REFUSED_KEYS: u64 = 10_000;

const BUYERS: u8 = 3;
const KEYS: u8 = 3;

/// What becomes of an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Committed at once (`settle.lua confirm`).
    Confirm,
    /// Its commit failed at once (`settle.lua release`): stock and holding come back.
    Release,
    /// Left in flight until a later `SettleAll`, so later attempts meet it (`wait`, `pending`).
    Hold,
}

/// One step of a scenario.
#[derive(Debug, Clone)]
enum Op {
    /// A purchase attempt.
    Attempt {
        buyer: u8,
        quantity: u32,
        key: Option<u8>,
        fate: Fate,
    },
    /// The attempt `back` attempts ago sent again (a client's retry: same buyer, quantity and
    /// key), with a fate of its own.
    Retry { back: usize, fate: Fate },
    /// Every admission still in flight is settled, confirmed or released.
    SettleAll { confirm: bool },
}

/// A sale and what happens to it, with the instant (index into `INSTANTS`) of each step.
#[derive(Debug, Clone)]
struct Scenario {
    stock: u32,
    limit: u32,
    steps: Vec<(usize, Op)>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1u32..=20, 1u32..=5).prop_flat_map(|(stock, limit)| {
        let fate = prop_oneof![
            5 => Just(Fate::Confirm),
            2 => Just(Fate::Release),
            2 => Just(Fate::Hold),
        ]
        .boxed();
        // Mostly within the limit; limit + 1 (400 before the script) now and then.
        let quantity = prop_oneof![4 => 1..=limit, 1 => Just(limit + 1)];
        let attempt = (
            0..BUYERS,
            quantity,
            proptest::option::of(0..KEYS),
            fate.clone(),
        )
            .prop_map(|(buyer, quantity, key, fate)| Op::Attempt {
                buyer,
                quantity,
                key,
                fate,
            });
        let op = prop_oneof![
            8 => attempt,
            3 => (1usize..=3, fate.clone()).prop_map(|(back, fate)| Op::Retry { back, fate }),
            1 => any::<bool>().prop_map(|confirm| Op::SettleAll { confirm }),
        ];
        // Each step moves the clock forward by 0, 1 or 2 of the instants (mostly 0: many
        // attempts at one instant), from a generated first instant.
        let advance = prop_oneof![16 => Just(0usize), 3 => Just(1), 1 => Just(2)];
        // Mostly from before the end, so most of a case is spent inside the window.
        let first = prop_oneof![3 => 0..5usize, 1 => 5..INSTANTS.len()];
        (first, proptest::collection::vec((advance, op), 1..=60)).prop_map(move |(first, ops)| {
            let mut at = first;
            let steps = ops
                .into_iter()
                .map(|(step, op)| {
                    at = (at + step).min(INSTANTS.len() - 1);
                    (at, op)
                })
                .collect();
            Scenario {
                stock,
                limit,
                steps,
            }
        })
    })
}

/// An admission's reply, as both sides give it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// 400 before the script is called (`check_quantity`).
    QuantityAboveLimit {
        limit: u32,
    },
    Admit {
        remaining: u32,
    },
    Reject {
        code: String,
        arg: u32,
        last: bool,
    },
    Wait,
    Reused,
    Pending,
    Replay {
        record: String,
    },
}

/// An idempotency record, in the script's encoding (`admission.lua` header).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Pending {
        user: String,
        q: u32,
        order: String,
    },
    Confirmed {
        user: String,
        q: u32,
        order: String,
        created_us: i64,
    },
    Refused {
        user: String,
        q: u32,
        code: String,
        arg: u32,
    },
}

impl Record {
    fn encode(&self) -> String {
        match self {
            Record::Pending { user, q, order } => format!("P\n{user}\n{q}\n{order}"),
            Record::Confirmed {
                user,
                q,
                order,
                created_us,
            } => format!("C\n{user}\n{q}\n{order}\n{created_us}"),
            Record::Refused { user, q, code, arg } => format!("R\n{user}\n{q}\n{code}\n{arg}"),
        }
    }

    fn fingerprint(&self) -> (&str, u32) {
        match self {
            Record::Pending { user, q, .. }
            | Record::Confirmed { user, q, .. }
            | Record::Refused { user, q, .. } => (user, *q),
        }
    }
}

/// A reservation in flight.
#[derive(Debug, Clone)]
struct Reservation {
    order: String,
    user: String,
    q: u32,
    key: Option<String>,
    created_us: i64,
}

/// The model: `decide` and the book around it.
struct Model {
    sale: Sale,
    /// Units not taken (the script's `remaining`).
    free: u32,
    /// Units of reservations in flight (the script's `reserved`).
    reserved: u32,
    /// Units last taken at this instant, while nothing is free (`sold_out_us`).
    sold_out_us: Option<i64>,
    /// Units held (committed + reserved) by buyer.
    held: BTreeMap<String, u32>,
    /// Units of each buyer's reservations in flight.
    reserving: BTreeMap<String, u32>,
    keys: BTreeMap<String, Record>,
    in_flight: Vec<Reservation>,
}

/// The virtual clock's origin: Redis's own clock plus a day, so `clock_us` stays ahead of it.
fn base_us(con: &mut Connection) -> i64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query(con).unwrap();
    s * 1_000_000 + us + 86_400_000_000
}

fn at(base: i64, t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(base + t) * 1000).unwrap()
}

fn code_of(rejection: Rejection) -> (&'static str, u32) {
    match rejection {
        Rejection::NotActive(NotActiveReason::Upcoming) => ("upcoming", 0),
        Rejection::NotActive(NotActiveReason::Ended) => ("ended", 0),
        Rejection::SoldOut => ("sold_out", 0),
        Rejection::AlreadyPurchased => ("already", 0),
        Rejection::LimitExceeded { allowed } => ("limit", allowed),
        Rejection::InsufficientStock { remaining } => ("insufficient", remaining),
    }
}

impl Model {
    fn new(sale: Sale) -> Self {
        Self {
            free: sale.stock,
            sale,
            reserved: 0,
            sold_out_us: None,
            held: BTreeMap::new(),
            reserving: BTreeMap::new(),
            keys: BTreeMap::new(),
            in_flight: Vec::new(),
        }
    }

    /// The script's reply to one attempt at `now_us` (the quantity already checked).
    fn admit(
        &mut self,
        now: OffsetDateTime,
        now_us: i64,
        user: &str,
        quantity: Quantity,
        key: Option<&str>,
        order: &str,
    ) -> Reply {
        let q = quantity.get();
        // docs/api.md: once the sale has ended (sold out, nothing in flight; or by time), a
        // refused key is answered with the sale's final answer, the same for every key.
        let ended = matches!(
            self.sale.state(now, self.free + self.reserved),
            SaleState::Ended(_)
        );
        if ended {
            self.keys
                .retain(|_, r| !matches!(r, Record::Refused { .. }));
        }
        if let Some(key) = key
            && let Some(record) = self.keys.get(key)
        {
            if record.fingerprint() != (user, q) {
                return Reply::Reused;
            }
            if matches!(record, Record::Pending { .. }) {
                return Reply::Pending;
            }
            return Reply::Replay {
                record: record.encode(),
            };
        }
        let held = self.held.get(user).copied().unwrap_or(0);
        match decide(&self.sale, now, self.free, held, quantity) {
            Decision::Admit => {
                self.free -= q;
                self.reserved += q;
                if self.free == 0 {
                    self.sold_out_us = Some(now_us);
                }
                *self.held.entry(user.to_owned()).or_default() += q;
                *self.reserving.entry(user.to_owned()).or_default() += q;
                if let Some(key) = key {
                    self.keys.insert(
                        key.to_owned(),
                        Record::Pending {
                            user: user.to_owned(),
                            q,
                            order: order.to_owned(),
                        },
                    );
                }
                self.in_flight.push(Reservation {
                    order: order.to_owned(),
                    user: user.to_owned(),
                    q,
                    key: key.map(str::to_owned),
                    created_us: now_us,
                });
                Reply::Admit {
                    remaining: self.free,
                }
            }
            Decision::Reject(rejection) => {
                // A refusal that reservations in flight could make untrue waits for them: the
                // buyer's own for the limit, anyone's for the last unit (admission.lua header).
                let waits = match rejection {
                    Rejection::AlreadyPurchased | Rejection::LimitExceeded { .. } => {
                        self.reserving.get(user).copied().unwrap_or(0) > 0
                    }
                    Rejection::SoldOut => self.reserved > 0,
                    Rejection::InsufficientStock { .. } | Rejection::NotActive(_) => false,
                };
                if waits {
                    return Reply::Wait;
                }
                let last = matches!(
                    rejection,
                    Rejection::SoldOut | Rejection::NotActive(NotActiveReason::Ended)
                );
                let (code, arg) = code_of(rejection);
                if last {
                    // The sale's answer is final: nothing is remembered any more.
                    self.keys
                        .retain(|_, r| !matches!(r, Record::Refused { .. }));
                } else if let Some(key) = key {
                    self.keys.insert(
                        key.to_owned(),
                        Record::Refused {
                            user: user.to_owned(),
                            q,
                            code: code.to_owned(),
                            arg,
                        },
                    );
                }
                Reply::Reject {
                    code: code.to_owned(),
                    arg,
                    last,
                }
            }
            Decision::QuantityAboveLimit(_) => unreachable!("checked before the script"),
        }
    }

    /// Settles the reservations in flight (all of them, oldest first); returns
    /// `settle.lua`'s reply: settled, units not confirmed, `sold_out_us`.
    fn settle(&mut self, orders: &[String], confirm: bool) -> (u64, i64, String) {
        let mut settled = 0;
        for order in orders {
            let Some(i) = self.in_flight.iter().position(|r| &r.order == order) else {
                continue;
            };
            let r = self.in_flight.remove(i);
            settled += 1;
            self.reserved -= r.q;
            decrement(&mut self.reserving, &r.user, r.q);
            if confirm {
                if let Some(key) = &r.key {
                    self.keys.insert(
                        key.clone(),
                        Record::Confirmed {
                            user: r.user.clone(),
                            q: r.q,
                            order: r.order.clone(),
                            created_us: r.created_us,
                        },
                    );
                }
            } else {
                self.free += r.q;
                self.sold_out_us = None;
                decrement(&mut self.held, &r.user, r.q);
                if let Some(key) = &r.key
                    && matches!(self.keys.get(key), Some(Record::Pending { order, .. }) if *order == r.order)
                {
                    self.keys.remove(key);
                }
            }
        }
        let sold_out = self.sold_out_us.map(|t| t.to_string()).unwrap_or_default();
        (settled, i64::from(self.free + self.reserved), sold_out)
    }
}

fn decrement(map: &mut BTreeMap<String, u32>, user: &str, q: u32) {
    if let Some(n) = map.get_mut(user) {
        *n = n.saturating_sub(q);
        if *n == 0 {
            map.remove(user);
        }
    }
}

/// The scripts, loaded from their files as the store loads them.
struct Scripts {
    admission: Script,
    settle: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            admission: Script::new(include_str!("../src/redis_pg/admission.lua")),
            settle: Script::new(include_str!("../src/redis_pg/settle.lua")),
        }
    }
}

/// What Redis holds for a sale, in the model's terms.
#[derive(Debug, PartialEq, Eq)]
struct State {
    remaining: u32,
    reserved: u32,
    sold_out_us: Option<String>,
    held: BTreeMap<String, u32>,
    reserving: BTreeMap<String, u32>,
    reservations: BTreeMap<String, String>,
    leases: Vec<String>,
    idempotency: BTreeMap<String, String>,
    refused: Vec<String>,
}

impl State {
    fn of_model(m: &Model, epoch: &str) -> Self {
        let mut reservations = BTreeMap::new();
        for r in &m.in_flight {
            let key = r.key.clone().unwrap_or_default();
            reservations.insert(
                r.order.clone(),
                format!("{}\n{}\n{}\n{key}\n{epoch}", r.user, r.q, r.created_us),
            );
        }
        let mut leases: Vec<String> = m.in_flight.iter().map(|r| r.order.clone()).collect();
        leases.sort();
        let mut refused: Vec<String> = m
            .keys
            .iter()
            .filter(|(_, r)| matches!(r, Record::Refused { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        refused.sort();
        Self {
            remaining: m.free,
            reserved: m.reserved,
            sold_out_us: m.sold_out_us.map(|t| t.to_string()),
            held: m.held.clone(),
            reserving: m.reserving.clone(),
            reservations,
            leases,
            idempotency: m
                .keys
                .iter()
                .map(|(k, r)| (k.clone(), r.encode()))
                .collect(),
            refused,
        }
    }

    fn of_redis(con: &mut Connection, keys: &SaleKeys) -> Self {
        let (remaining, reserved, sold_out_us): (u32, u32, Option<String>) = redis::cmd("HMGET")
            .arg(&keys.meta)
            .arg("remaining")
            .arg("reserved")
            .arg("sold_out_us")
            .query(con)
            .unwrap();
        let hash = |con: &mut Connection, k: &str| -> BTreeMap<String, String> {
            redis::cmd("HGETALL").arg(k).query(con).unwrap()
        };
        let counts = |h: BTreeMap<String, String>| -> BTreeMap<String, u32> {
            h.into_iter()
                .map(|(k, v)| (k, v.parse().unwrap()))
                .collect()
        };
        let mut leases: Vec<String> = redis::cmd("ZRANGE")
            .arg(&keys.leases)
            .arg(0)
            .arg(-1)
            .query(con)
            .unwrap();
        leases.sort();
        let mut refused: Vec<String> = redis::cmd("ZRANGE")
            .arg(&keys.refused)
            .arg(0)
            .arg(-1)
            .query(con)
            .unwrap();
        refused.sort();
        Self {
            remaining,
            reserved,
            sold_out_us,
            held: counts(hash(con, &keys.held)),
            reserving: counts(hash(con, &keys.reserving)),
            reservations: hash(con, &keys.reservations),
            leases,
            idempotency: hash(con, &keys.idempotency),
            refused,
        }
    }
}

/// One attempt as the script takes it.
struct ScriptAttempt {
    user: String,
    q: u32,
    key: Option<String>,
    order: String,
}

/// Runs `admission.lua` once on a batch of attempts, as the store's admitter does after
/// `check_quantity`: one reply and decision instant per attempt.
fn script_admit(
    con: &mut Connection,
    scripts: &Scripts,
    keys: &SaleKeys,
    attempts: &[ScriptAttempt],
) -> Vec<(Reply, i64)> {
    let mut inv = scripts.admission.prepare_invoke();
    for k in keys.script_keys() {
        inv.key(k);
    }
    inv.arg(LEASE_MS)
        .arg(REFUSAL_RETENTION_MS)
        .arg(MAX_REFUSED_KEYS);
    for a in attempts {
        inv.arg(&a.user)
            .arg(a.q)
            .arg(a.key.as_deref().unwrap_or(""))
            .arg(&a.order);
    }
    let replies: Vec<Vec<String>> = inv.invoke(con).unwrap();
    assert_eq!(replies.len(), attempts.len(), "one reply per attempt");
    replies.iter().map(|r| parse_reply(r)).collect()
}

fn parse_reply(r: &[String]) -> (Reply, i64) {
    let now: i64 = r[1].parse().unwrap();
    let reply = match r[0].as_str() {
        "admit" => Reply::Admit {
            remaining: r[3].parse().unwrap(),
        },
        "reject" => Reply::Reject {
            code: r[2].clone(),
            arg: r[3].parse().unwrap(),
            last: r[4] == "1",
        },
        "wait" => Reply::Wait,
        "reused" => Reply::Reused,
        "pending" => Reply::Pending,
        "replay" => Reply::Replay {
            record: r[2].clone(),
        },
        other => panic!("unexpected admission reply {other:?}: {r:?}"),
    };
    (reply, now)
}

fn script_settle(
    con: &mut Connection,
    scripts: &Scripts,
    keys: &SaleKeys,
    orders: &[String],
    confirm: bool,
) -> (u64, i64, String) {
    let mut inv = scripts.settle.prepare_invoke();
    for k in keys.script_keys() {
        inv.key(k);
    }
    inv.arg(if confirm { "confirm" } else { "release" });
    for o in orders {
        inv.arg(o);
    }
    inv.invoke(con).unwrap()
}

/// An attempt of a scenario, its retry resolved, as both sides take it.
#[derive(Debug)]
struct StepAttempt {
    /// Its step's index in the scenario.
    n: usize,
    user: String,
    q: Quantity,
    key: Option<String>,
    order: String,
    fate: Fate,
}

/// What the harness runs at once.
enum Group {
    /// Attempts at one instant, decided in one script call.
    Attempts {
        instant: usize,
        attempts: Vec<StepAttempt>,
    },
    SettleAll {
        n: usize,
        confirm: bool,
    },
}

/// The scenario's steps, retries resolved (a retry of nothing yet is skipped), in groups: each
/// attempt alone, or (`batched`) every run of consecutive attempts at one instant together.
fn steps_of(sc: &Scenario, sale: i64, batched: bool) -> Vec<Group> {
    let mut groups = Vec::new();
    let mut sent: Vec<(u8, u32, Option<u8>)> = Vec::new();
    for (n, (instant, op)) in sc.steps.iter().enumerate() {
        let (buyer, quantity, key, fate) = match *op {
            Op::Attempt {
                buyer,
                quantity,
                key,
                fate,
            } => (buyer, quantity, key, fate),
            Op::Retry { back, fate } if back <= sent.len() => {
                let (buyer, quantity, key) = sent[sent.len() - back];
                (buyer, quantity, key, fate)
            }
            Op::Retry { .. } => continue,
            Op::SettleAll { confirm } => {
                groups.push(Group::SettleAll { n, confirm });
                continue;
            }
        };
        sent.push((buyer, quantity, key));
        let attempt = StepAttempt {
            n,
            user: format!("u{buyer}"),
            // The global bound lets limit + 1 through; the sale's limit is checked by
            // `check_quantity`, in the store as here, before the script.
            q: Quantity::parse(i64::from(quantity), 1000).unwrap(),
            key: key.map(|k| format!("k{k}")),
            order: Uuid::from_u128(((sale as u128) << 64) | n as u128).to_string(),
            fate,
        };
        match groups.last_mut() {
            Some(Group::Attempts {
                instant: last,
                attempts,
            }) if batched && last == instant => attempts.push(attempt),
            _ => groups.push(Group::Attempts {
                instant: *instant,
                attempts: vec![attempt],
            }),
        }
    }
    groups
}

/// Deletes every key under the test's prefix when dropped, also when a case fails.
struct Cleanup {
    url: String,
    keys: Keys,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(mut con) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        {
            let found: Vec<String> = redis::cmd("KEYS")
                .arg(self.keys.pattern())
                .query(&mut con)
                .unwrap_or_default();
            if !found.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&found).query(&mut con);
            }
        }
    }
}

/// One Redis, one prefix, one sale id per case.
struct Harness {
    con: RefCell<Connection>,
    scripts: Scripts,
    keys: Keys,
    next_sale: Cell<i64>,
    tally: RefCell<BTreeMap<String, u64>>,
    _cleanup: Cleanup,
}

impl Harness {
    fn new() -> Self {
        let url =
            std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let con = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("cannot reach Redis at {url} (set TEST_REDIS_URL): {e}"));
        // Whole: the tests of this file start in the same millisecond.
        let prefix = format!("diff_{}", Uuid::now_v7().simple());
        Self {
            con: RefCell::new(con),
            scripts: Scripts::new(),
            keys: Keys::new(&prefix),
            next_sale: Cell::new(1),
            tally: RefCell::default(),
            _cleanup: Cleanup {
                url,
                keys: Keys::new(&prefix),
            },
        }
    }

    /// Runs one scenario through both sides, comparing after every step (`batched`: after
    /// every batch of attempts at one instant, sent to the script in one call). Returns the
    /// script's replies (`None` for a settle step).
    fn run(&self, sc: &Scenario, batched: bool) -> Result<Vec<Option<Reply>>, TestCaseError> {
        let con = &mut *self.con.borrow_mut();
        let id = self.next_sale.get();
        self.next_sale.set(id + 1);
        let keys = self.keys.sale(SaleId(id));
        let base = base_us(con);
        let sale = NewSale::parse(
            "Widget",
            at(base, START),
            at(base, END),
            i64::from(sc.stock),
            i64::from(sc.limit),
        )
        .unwrap()
        .with_id(SaleId(id));
        let epoch = "1";
        // The sale as `rebuild.lua` leaves it (`keys.rs`), the clock at the first instant.
        let _: () = redis::cmd("HSET")
            .arg(&keys.meta)
            .arg(&[
                ("stock", sc.stock.to_string()),
                ("limit", sc.limit.to_string()),
                ("starts_us", (base + START).to_string()),
                ("ends_us", (base + END).to_string()),
                ("remaining", sc.stock.to_string()),
                ("reserved", "0".to_owned()),
                ("epoch", epoch.to_owned()),
                ("clock_us", (base + INSTANTS[0]).to_string()),
            ])
            .query(con)
            .unwrap();
        let mut model = Model::new(sale.clone());
        let mut replies = Vec::new();
        for group in steps_of(sc, id, batched) {
            let Group::Attempts { instant, attempts } = group else {
                let Group::SettleAll { n, confirm } = group else {
                    unreachable!("two kinds of group")
                };
                replies.push(None);
                let orders: Vec<String> = model.in_flight.iter().map(|r| r.order.clone()).collect();
                if !orders.is_empty() {
                    let got = script_settle(con, &self.scripts, &keys, &orders, confirm);
                    let expected = model.settle(&orders, confirm);
                    prop_assert_eq!(got, expected, "step {}: settle all", n);
                }
                prop_assert_eq!(
                    State::of_redis(con, &keys),
                    State::of_model(&model, epoch),
                    "state after step {}: settle all",
                    n
                );
                continue;
            };
            let now_us = base + INSTANTS[instant];
            let _: () = redis::cmd("HSET")
                .arg(&keys.meta)
                .arg("clock_us")
                .arg(now_us)
                .query(con)
                .unwrap();
            // The script's side: every attempt of the group that passes `check_quantity` (as
            // in the store, the others never reach the script) in one call.
            let to_script: Vec<ScriptAttempt> = attempts
                .iter()
                .filter(|a| check_quantity(&sale, a.q).is_ok())
                .map(|a| ScriptAttempt {
                    user: a.user.clone(),
                    q: a.q.get(),
                    key: a.key.clone(),
                    order: a.order.clone(),
                })
                .collect();
            let mut from_script = if to_script.is_empty() {
                Vec::new()
            } else {
                script_admit(con, &self.scripts, &keys, &to_script)
            }
            .into_iter();
            // The model's side: each attempt in turn, as if alone.
            let mut admitted = Vec::new();
            for a in &attempts {
                let (expected, got) = if let Err(e) = check_quantity(&sale, a.q) {
                    let r = Reply::QuantityAboveLimit { limit: e.limit };
                    (r.clone(), r)
                } else {
                    let (got, decided_us) = from_script.next().unwrap();
                    prop_assert_eq!(decided_us, now_us, "step {}: the script's clock", a.n);
                    let expected = model.admit(
                        at(base, INSTANTS[instant]),
                        now_us,
                        &a.user,
                        a.q,
                        a.key.as_deref(),
                        &a.order,
                    );
                    (expected, got)
                };
                prop_assert_eq!(&got, &expected, "step {}: {:?}", a.n, a);
                self.seen(&got);
                replies.push(Some(got.clone()));
                if matches!(got, Reply::Admit { .. }) && a.fate != Fate::Hold {
                    admitted.push(a);
                }
            }
            // Then each admission's commit, in order, as the group commit settles them.
            for a in admitted {
                let confirm = a.fate == Fate::Confirm;
                let orders = [a.order.clone()];
                let got = script_settle(con, &self.scripts, &keys, &orders, confirm);
                let expected = model.settle(&orders, confirm);
                prop_assert_eq!(got, expected, "step {}: settle {:?}", a.n, a.fate);
            }
            prop_assert_eq!(
                State::of_redis(con, &keys),
                State::of_model(&model, epoch),
                "state after steps {:?}",
                attempts.iter().map(|a| a.n).collect::<Vec<_>>()
            );
        }
        // At quiet: every admission confirmed; stock taken = units held.
        let orders: Vec<String> = model.in_flight.iter().map(|r| r.order.clone()).collect();
        if !orders.is_empty() {
            let got = script_settle(con, &self.scripts, &keys, &orders, true);
            prop_assert_eq!(got, model.settle(&orders, true), "final settle");
        }
        let state = State::of_redis(con, &keys);
        prop_assert_eq!(&state, &State::of_model(&model, epoch), "state at quiet");
        prop_assert_eq!(
            sc.stock - state.remaining,
            state.held.values().sum::<u32>(),
            "taken = held at quiet"
        );
        prop_assert!(state.held.values().all(|&h| h <= sc.limit), "PR-5");
        Ok(replies)
    }

    /// Tallies the kinds of reply seen, so a run shows it reached every branch.
    fn seen(&self, reply: &Reply) {
        let kind = match reply {
            Reply::QuantityAboveLimit { .. } => "quantity_above_limit".to_owned(),
            Reply::Admit { .. } => "admit".to_owned(),
            Reply::Reject { code, .. } => format!("reject {code}"),
            Reply::Wait => "wait".to_owned(),
            Reply::Reused => "reused".to_owned(),
            Reply::Pending => "pending".to_owned(),
            Reply::Replay { record } => format!("replay {}", &record[..1]),
        };
        *self.tally.borrow_mut().entry(kind).or_default() += 1;
    }
}

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        // Failures are kept as named regression tests below, not as seed files.
        failure_persistence: None,
        ..Config::default()
    }
}

#[test]
fn admission_lua_agrees_with_decide() {
    let harness = Harness::new();
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(config());
    let result = runner.run(&scenario(), |sc| harness.run(&sc, false).map(drop));
    eprintln!(
        "{} cases in {:.2?}; replies seen: {:?}",
        runner.config().cases,
        started.elapsed(),
        harness.tally.borrow()
    );
    if let Err(e) = result {
        panic!("admission.lua and decide disagree: {e}");
    }
}

/// The finding of this test (issue 11), shrunk: a key refused before the start replayed
/// `upcoming` after the sale had sold out or ended by time, and the same key with another body
/// was told `idempotency_key_reused`; docs/api.md says that once the sale has ended a refused
/// key gets the sale's final answer, the same for every key (as the embedded store does).
#[test]
fn a_refused_key_gets_the_final_answer_once_the_sale_has_ended() {
    let h = Harness::new();
    let attempt = |buyer, quantity, key| {
        Some(Op::Attempt {
            buyer,
            quantity,
            key: Some(key),
            fate: Fate::Confirm,
        })
    };
    let plain = |buyer, quantity| {
        Some(Op::Attempt {
            buyer,
            quantity,
            key: None,
            fate: Fate::Confirm,
        })
    };
    let reject = |code: &str| {
        Some(Reply::Reject {
            code: code.to_owned(),
            arg: 0,
            last: code != "upcoming",
        })
    };
    let scenario = |stock, limit, steps: Vec<(usize, Option<Op>)>| Scenario {
        stock,
        limit,
        steps: steps.into_iter().map(|(t, op)| (t, op.unwrap())).collect(),
    };

    // Sold out (the case proptest shrank to).
    let sold_out = scenario(
        3,
        3,
        vec![
            (0, attempt(0, 1, 2)), // before the start: `upcoming`, remembered under k2
            (2, plain(0, 2)),
            (2, plain(0, 1)), // the last unit
            (2, attempt(0, 1, 2)),
            (2, attempt(1, 1, 2)),
        ],
    );
    let replies = h.run(&sold_out, false).unwrap();
    assert_eq!(replies[0], reject("upcoming"));
    assert_eq!(replies[3], reject("sold_out"), "not the `upcoming` replay");
    assert_eq!(
        replies[4],
        reject("sold_out"),
        "not `idempotency_key_reused`"
    );

    // Ended by time, exactly at the end.
    let by_time = scenario(
        5,
        1,
        vec![
            (1, attempt(0, 1, 0)),
            (6, attempt(0, 1, 0)),
            (6, attempt(1, 1, 0)),
        ],
    );
    let replies = h.run(&by_time, false).unwrap();
    assert_eq!(replies[0], reject("upcoming"));
    assert_eq!(replies[1], reject("ended"));
    assert_eq!(replies[2], reject("ended"));
}

/// Group admission (issue 15): every run of attempts at one instant goes to the script in one
/// call, and each reply must still be the one `decide` gives that attempt in turn, with the
/// same state after each batch.
#[test]
fn batched_admission_lua_agrees_with_decide_attempt_by_attempt() {
    let harness = Harness::new();
    let mut runner = TestRunner::new(config());
    let result = runner.run(&scenario(), |sc| harness.run(&sc, true).map(drop));
    let tally = harness.tally.borrow();
    eprintln!("replies seen in batches: {tally:?}");
    if let Err(e) = result {
        panic!("a batch of admission.lua and decide disagree: {e}");
    }
    for kind in [
        "admit",
        "wait",
        "pending",
        "reused",
        "replay C",
        "reject sold_out",
    ] {
        assert!(
            tally.contains_key(kind),
            "no {kind} reply in any batch: {tally:?}"
        );
    }
}

/// One batch holding the same key three times and the same buyer past the limit: the first
/// use of the key is admitted, its duplicate is told it is pending, the key with another buyer
/// is reused, and the buyer's next attempt waits for their own reservation.
#[test]
fn a_batch_decides_duplicate_keys_and_limits_in_arrival_order() {
    let h = Harness::new();
    let attempt = |buyer, quantity, key| Op::Attempt {
        buyer,
        quantity,
        key,
        fate: Fate::Hold,
    };
    let sc = Scenario {
        stock: 5,
        limit: 2,
        steps: vec![
            (2, attempt(0, 1, Some(0))),
            (2, attempt(0, 1, Some(0))),
            (2, attempt(1, 1, Some(0))),
            (2, attempt(0, 1, None)),
            (2, attempt(0, 1, None)),
            (2, attempt(1, 2, Some(1))),
            (2, attempt(2, 2, None)),
            (2, attempt(2, 1, None)),
        ],
    };
    let replies = h.run(&sc, true).unwrap();
    let admit = |remaining| Some(Reply::Admit { remaining });
    assert_eq!(
        replies,
        vec![
            admit(4),
            Some(Reply::Pending),
            Some(Reply::Reused),
            admit(3),
            Some(Reply::Wait),
            admit(1),
            Some(Reply::Reject {
                code: "insufficient".into(),
                arg: 1,
                last: false
            }),
            admit(0),
        ]
    );
}

/// A script call that fails half-way (Redis keeps what a script wrote before its error) is
/// undone by releasing every order id of the batch, as the store does for each attempt of a
/// failed call: the sale is as it was before the batch.
#[test]
fn a_batch_that_fails_half_way_is_undone_by_releasing_every_order_id() {
    let h = Harness::new();
    let con = &mut *h.con.borrow_mut();
    let keys = h.keys.sale(SaleId(1_000));
    let base = base_us(con);
    let _: () = redis::cmd("HSET")
        .arg(&keys.meta)
        .arg(&[
            ("stock", "5".to_owned()),
            ("limit", "2".to_owned()),
            ("starts_us", (base + START).to_string()),
            ("ends_us", (base + END).to_string()),
            ("remaining", "5".to_owned()),
            ("reserved", "0".to_owned()),
            ("epoch", "1".to_owned()),
            ("clock_us", (base + START + 1).to_string()),
        ])
        .query(con)
        .unwrap();
    let before = State::of_redis(con, &keys);
    let orders: Vec<String> = (0..4).map(|_| Uuid::now_v7().to_string()).collect();
    let mut inv = h.scripts.admission.prepare_invoke();
    for k in keys.script_keys() {
        inv.key(k);
    }
    inv.arg(LEASE_MS)
        .arg(REFUSAL_RETENTION_MS)
        .arg(MAX_REFUSED_KEYS);
    // The third attempt's quantity is not a number: the script fails there, after two
    // admissions (one under a key) were written.
    for (i, (user, q, key)) in [
        ("u0", "1", "k0"),
        ("u1", "2", ""),
        ("u2", "x", ""),
        ("u3", "1", ""),
    ]
    .into_iter()
    .enumerate()
    {
        inv.arg(user).arg(q).arg(key).arg(&orders[i]);
    }
    let failed: redis::RedisResult<Vec<Vec<String>>> = inv.invoke(con);
    assert!(failed.is_err(), "the script ran to its end: {failed:?}");
    let half_way = State::of_redis(con, &keys);
    assert_eq!(
        half_way.reserved, 3,
        "the two admissions before the error stay"
    );
    let (settled, unconfirmed, _) = script_settle(con, &h.scripts, &keys, &orders, false);
    assert_eq!((settled, unconfirmed), (2, 5));
    assert_eq!(State::of_redis(con, &keys), before);
}
