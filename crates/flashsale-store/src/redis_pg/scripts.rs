//! The Redis scripts (each `.lua` file opens with its KEYS, ARGV and returns) and the parsing
//! of their replies. Scripts are loaded once at start and called by SHA (`EVALSHA`, falling
//! back to loading on `NOSCRIPT`, e.g. after Redis restarted).
//!
//! Each script's reply is parsed here, once, into a named type ([`AdmissionReply`],
//! [`Settled`], [`AuditReply`], [`StepReply`], the expired order ids): a reply that does not
//! have the shape its script's header promises is a [`StoreError::Internal`] (a bug or a
//! foreign script under our name), never a panic and never mistaken for Redis being down.

use super::connections::Redis;
use super::fence::Resolution;
use super::keys::SaleKeys;
use crate::StoreError;
use crate::instants::from_micros;
use flashsale_core::{NotActiveReason, Rejection};
use redis::{FromRedisValue, Script, Value};
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// The loaded scripts, and the connection they run on.
pub(crate) struct Scripts {
    redis: Arc<Redis>,
    admission: Script,
    settle: Script,
    expired: Script,
    rebuild: Script,
    audit: Script,
    change: Script,
    transition: Script,
}

/// What `change.lua`'s `freeze` step found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Freeze {
    /// The sale's Redis state is gone: rebuild it, then retry.
    Missing,
    /// Another change holds the sale: retry shortly.
    Busy,
    /// Admissions wait from `now_us` until `apply` or `thaw`.
    Frozen {
        /// Redis's clock at the freeze (microseconds): the change is decided at this instant.
        now_us: i64,
        /// The sale's stock in Redis.
        stock: i64,
        /// Free units.
        remaining: i64,
        /// Units of live reservations.
        reserved: i64,
        /// Units on hold, waiting for payment (hold mode).
        on_hold: i64,
    },
}

/// The sale's values a change writes into Redis (`change.lua`'s `apply`).
pub(crate) struct Applied<'a> {
    pub sale: &'a flashsale_core::Sale,
    pub revision: i64,
}

/// What `admission.lua` decided.
#[derive(Debug)]
pub(crate) enum Admission {
    /// The sale's Redis state is gone; rebuild it and retry.
    Missing,
    /// Stock taken and a reservation recorded under `epoch`.
    Admitted {
        epoch: i64,
        created_at: OffsetDateTime,
    },
    /// Not admitted (`replay`: the outcome of an earlier attempt with the same key; `last`:
    /// no later decision can differ, the sale is over for everyone).
    Rejected {
        rejection: Rejection,
        replay: bool,
        last: bool,
    },
    /// The buyer's own reservations are still in flight and decide this attempt: retry.
    Wait,
    /// The idempotency key was first used with another user or quantity.
    Reused,
    /// The key's first attempt is still being committed.
    Pending,
    /// The key's first attempt was confirmed.
    ReplayConfirmed {
        order_id: Uuid,
        created_at: OffsetDateTime,
    },
}

/// The reply of `admission.lua`: its decision, and Redis's clock when it decided.
#[derive(Debug)]
pub(crate) struct AdmissionReply {
    /// What the script decided.
    pub admission: Admission,
    /// Redis's clock at the decision (microseconds), if the reply carried a readable one.
    pub clock_us: Option<i64>,
}

/// The reply of `settle.lua`: the sale's figures after settling.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Settled {
    /// The sale's units not yet confirmed (`None`: the sale's Redis state is gone).
    pub unconfirmed: Option<u32>,
    /// When the sale's last unit was taken, if it was.
    pub sold_out_at: Option<OffsetDateTime>,
}

/// The reply of `audit.lua`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuditReply {
    /// The sale's Redis state is gone.
    Missing,
    /// What Redis holds of the sale.
    Holds(RedisHoldings),
}

/// What Redis holds of a sale, read in one atomic step by `audit.lua`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RedisHoldings {
    /// Redis's clock at the read (microseconds).
    pub now_us: i64,
    /// The sale's epoch in Redis.
    pub epoch: i64,
    /// The sale's stock.
    pub stock: i64,
    /// Free units.
    pub remaining: i64,
    /// Sum of the buyers' holdings (`None`: too many to sum in one script).
    pub held: Option<i64>,
    /// Confirmed idempotency records (`None`: too many to count in one script).
    pub confirmed_keys: Option<i64>,
    /// Units of live reservations.
    pub reserved: i64,
    /// Meta's `reserved` counter, which must equal `reserved`.
    pub reserved_counter: i64,
    /// Sum of the per-buyer reserved units (`None`: too many to sum in one script).
    pub reserving: Option<i64>,
    /// The operator's change (revision) Redis last took.
    pub revision: i64,
    /// Whether a change's freeze lease is live (the change may still be on its way).
    pub frozen: bool,
    /// Units of committed hold reservations waiting for payment (`onhold`; 0: instant).
    pub on_hold: i64,
    /// The order id of every live reservation.
    pub reserved_ids: Vec<Uuid>,
}

/// One step of `rebuild.lua` (see its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Checks the epoch, then deletes the sale's state.
    Begin,
    /// Writes field/value pairs into one hash.
    Fill,
    /// Writes `meta` back, last.
    Restore,
    /// Deletes the lock.
    Unlock,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Begin => "begin",
            Step::Fill => "fill",
            Step::Restore => "restore",
            Step::Unlock => "unlock",
        }
    }
}

/// The rebuild lock a step of `rebuild.lua` runs under.
pub(crate) struct RebuildLock<'a> {
    /// The lock's key.
    pub key: &'a str,
    /// This instance's token in it.
    pub token: &'a str,
    /// How long the lock lasts after each step.
    pub ms: u64,
}

/// One order's committed unit move, for `transition.lua`.
pub(crate) struct MoveToApply<'a> {
    /// The order.
    pub order_id: Uuid,
    /// The sale's epoch the transition committed under.
    pub epoch: i64,
    /// `true`: held -> sold; `false`: held -> available.
    pub pay: bool,
    /// The buyer.
    pub user: &'a str,
    /// Units moved.
    pub units: u32,
    /// When the transition was decided (microseconds, PostgreSQL's clock).
    pub at_us: i64,
    /// A release: the waiters offered a unit each of the released ones (they stay held).
    pub offered: &'a [String],
}

/// What `transition.lua` did with a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MoveApplied {
    /// Applied now.
    Applied,
    /// Applied before, or already reflected by a rebuild: nothing left to do.
    Done,
    /// Redis's state is missing or behind the commit (a rebuild is on its way): ask again.
    Later,
}

/// The reply of one step of `rebuild.lua`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepReply {
    /// Done.
    Done,
    /// The lock is not ours (it expired, another instance took over): stop.
    Lost,
    /// `begin` only: Redis already holds this epoch or a newer one.
    Newer,
}

impl Scripts {
    /// The scripts, to run on `redis`.
    pub(crate) fn new(redis: Arc<Redis>) -> Self {
        Self {
            redis,
            admission: Script::new(include_str!("admission.lua")),
            settle: Script::new(include_str!("settle.lua")),
            expired: Script::new(include_str!("expired.lua")),
            rebuild: Script::new(include_str!("rebuild.lua")),
            audit: Script::new(include_str!("audit.lua")),
            change: Script::new(include_str!("change.lua")),
            transition: Script::new(include_str!("transition.lua")),
        }
    }

    /// Loads every script so the first purchases need no `NOSCRIPT` round trip.
    pub(crate) async fn load(&self) -> Result<(), StoreError> {
        for script in [
            &self.admission,
            &self.settle,
            &self.expired,
            &self.rebuild,
            &self.audit,
            &self.change,
            &self.transition,
        ] {
            let mut con = self.redis.con();
            self.redis
                .call("SCRIPT LOAD", script.load_async(&mut con))
                .await?;
        }
        Ok(())
    }

    /// Runs `admission.lua` once on a batch of attempts of one sale, decided in the order
    /// given; one reply per attempt, in that order. A failed call is `Unavailable` or
    /// `Timeout` (the script may have run, in part or in full); a malformed reply is
    /// `Internal`.
    pub(crate) async fn admission(
        &self,
        keys: &SaleKeys,
        lease_ms: u64,
        attempts: &[AdmissionArgs<'_>],
    ) -> Result<Vec<AdmissionReply>, StoreError> {
        let mut inv = self.admission.prepare_invoke();
        for key in keys.script_keys() {
            inv.key(key);
        }
        inv.arg(lease_ms)
            .arg(REFUSAL_RETENTION_MS)
            .arg(MAX_REFUSED_KEYS);
        for attempt in attempts {
            inv.arg(attempt.user)
                .arg(attempt.quantity)
                .arg(attempt.idempotency_key)
                .arg(attempt.order_id.to_string());
        }
        let replies: Vec<Value> = shape("admission", self.invoke("admission", &inv).await?)?;
        if replies.len() != attempts.len() {
            return Err(malformed(
                "admission",
                format!("{} replies to {} attempts", replies.len(), attempts.len()),
            ));
        }
        replies.into_iter().map(AdmissionReply::parse).collect()
    }

    /// Runs `settle.lua` on reservations of one sale resolved `how`.
    pub(crate) async fn settle(
        &self,
        keys: &SaleKeys,
        how: Resolution,
        order_ids: &[Uuid],
    ) -> Result<Settled, StoreError> {
        let mut inv = self.settle.prepare_invoke();
        for key in keys.script_keys() {
            inv.key(key);
        }
        inv.arg(match how {
            Resolution::Committed => "confirm",
            Resolution::Released => "release",
        });
        for id in order_ids {
            inv.arg(id.to_string());
        }
        Settled::parse(self.invoke("settle", &inv).await?)
    }

    /// Runs `transition.lua`: applies one order's committed unit move to Redis, at most once.
    pub(crate) async fn apply_move(
        &self,
        keys: &SaleKeys,
        applied: &MoveToApply<'_>,
    ) -> Result<MoveApplied, StoreError> {
        let mut inv = self.transition.key(&keys.meta);
        inv.key(&keys.held)
            .key(&keys.applied)
            .arg(applied.order_id.to_string())
            .arg(applied.epoch)
            .arg(if applied.pay { "pay" } else { "release" })
            .arg(applied.user)
            .arg(applied.units)
            .arg(applied.at_us);
        for user in applied.offered {
            inv.arg(user);
        }
        let reply: String = shape("transition", self.invoke("transition", &inv).await?)?;
        match reply.as_str() {
            "applied" => Ok(MoveApplied::Applied),
            "done" => Ok(MoveApplied::Done),
            "later" => Ok(MoveApplied::Later),
            other => Err(malformed("transition", format!("unknown reply {other:?}"))),
        }
    }

    /// Runs `expired.lua`: the order ids of up to `max` reservations whose lease ran out.
    pub(crate) async fn expired(
        &self,
        keys: &SaleKeys,
        max: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut inv = self.expired.key(&keys.leases);
        inv.key(&keys.reservations).arg(max);
        parse_expired(self.invoke("expired", &inv).await?)
    }

    /// Runs one step of `rebuild.lua` under `lock`; `keys` follow the lock's key.
    pub(crate) async fn rebuild(
        &self,
        lock: &RebuildLock<'_>,
        step: Step,
        keys: &[&str],
        args: &[String],
    ) -> Result<StepReply, StoreError> {
        let mut inv = self.rebuild.key(lock.key);
        for key in keys {
            inv.key(*key);
        }
        inv.arg(lock.token).arg(lock.ms).arg(step.name());
        for arg in args {
            inv.arg(arg);
        }
        StepReply::parse(self.invoke("rebuild", &inv).await?)
    }

    /// Runs `audit.lua`: what Redis holds of a sale (see its header); holdings and keys are
    /// summed only if there are at most `full_max` of them.
    pub(crate) async fn audit(
        &self,
        keys: &SaleKeys,
        full_max: usize,
    ) -> Result<AuditReply, StoreError> {
        let mut inv = self.audit.key(&keys.meta);
        inv.key(&keys.held)
            .key(&keys.reservations)
            .key(&keys.idempotency)
            .key(&keys.reserving)
            .arg(full_max);
        AuditReply::parse(self.invoke("audit", &inv).await?)
    }

    /// Runs `change.lua`'s `freeze` for the change `token`, with a lease of `lease_ms`.
    pub(crate) async fn change_freeze(
        &self,
        keys: &SaleKeys,
        token: &str,
        lease_ms: u64,
    ) -> Result<Freeze, StoreError> {
        let mut inv = self.change.key(&keys.meta);
        inv.arg("freeze").arg(token).arg(lease_ms);
        let reply: Vec<String> = shape("change", self.invoke("change", &inv).await?)?;
        match reply.first().map(String::as_str) {
            Some("missing") => Ok(Freeze::Missing),
            Some("busy") => Ok(Freeze::Busy),
            Some("frozen") if reply.len() == 6 => Ok(Freeze::Frozen {
                now_us: num(reply.get(1), &reply)?,
                stock: num(reply.get(2), &reply)?,
                remaining: num(reply.get(3), &reply)?,
                reserved: num(reply.get(4), &reply)?,
                on_hold: num(reply.get(5), &reply)?,
            }),
            _ => Err(malformed("change", reply)),
        }
    }

    /// Runs `change.lua`'s `apply`: the sale's new values; `Some(unconfirmed units)` once in
    /// place, `None` if the freeze was no longer this change's.
    pub(crate) async fn change_apply(
        &self,
        keys: &SaleKeys,
        token: &str,
        applied: &Applied<'_>,
    ) -> Result<Option<u32>, StoreError> {
        use crate::instants::to_micros;
        let sale = applied.sale;
        let mut inv = self.change.key(&keys.meta);
        inv.arg("apply")
            .arg(token)
            .arg(sale.stock)
            .arg(sale.per_user_limit)
            .arg(to_micros(sale.starts_at))
            .arg(to_micros(sale.ends_at))
            .arg(if sale.cancelled_at.is_some() { "1" } else { "" })
            .arg(applied.revision);
        let reply: Vec<String> = shape("change", self.invoke("change", &inv).await?)?;
        match reply.first().map(String::as_str) {
            Some("lost") => Ok(None),
            Some("ok") if reply.len() == 3 => {
                let remaining: i64 = num(reply.get(1), &reply)?;
                let reserved: i64 = num(reply.get(2), &reply)?;
                Ok(Some((remaining + reserved).max(0) as u32))
            }
            _ => Err(malformed("change", reply)),
        }
    }

    /// Runs `change.lua`'s `thaw`: the change `token` ends without changing anything.
    pub(crate) async fn change_thaw(&self, keys: &SaleKeys, token: &str) -> Result<(), StoreError> {
        let mut inv = self.change.key(&keys.meta);
        inv.arg("thaw").arg(token);
        let _: Vec<String> = shape("change", self.invoke("change", &inv).await?)?;
        Ok(())
    }

    /// Runs a script's invocation within the Redis timeout; `what` names it in the error.
    async fn invoke(
        &self,
        what: &'static str,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<Value, StoreError> {
        let mut con = self.redis.con();
        self.redis
            .call(what, inv.invoke_async::<Value>(&mut con))
            .await
    }
}

/// How long a refusal is remembered by its idempotency key while the sale is open (the same
/// retention as the embedded store's).
const REFUSAL_RETENTION_MS: i64 = crate::embedded::REFUSAL_RETENTION.whole_milliseconds() as i64;
/// The most refusals one sale remembers by key (the same bound as the embedded store's).
const MAX_REFUSED_KEYS: usize = crate::embedded::MAX_REFUSED_KEYS;

/// One attempt as `admission.lua` takes it.
pub(crate) struct AdmissionArgs<'a> {
    pub user: &'a str,
    pub quantity: u32,
    /// The idempotency key, or "" for none.
    pub idempotency_key: &'a str,
    /// The order id to use if admitted.
    pub order_id: Uuid,
}

/// A reply that is not what `script`'s header promises.
fn malformed(script: &'static str, reply: impl std::fmt::Debug) -> StoreError {
    StoreError::internal(format!("unexpected {script} reply {reply:?}"))
}

/// Converts a script's reply to the Rust shape its header promises.
fn shape<T: FromRedisValue>(script: &'static str, reply: Value) -> Result<T, StoreError> {
    redis::from_redis_value(reply)
        .map_err(|e| StoreError::internal_from(format!("unexpected {script} reply shape"), e))
}

fn num<T: std::str::FromStr>(s: Option<&String>, reply: &[String]) -> Result<T, StoreError> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("admission", reply))
}

/// `admission.lua`'s refusal codes (see its header), each with the rejection it stands for,
/// given the script's argument. They are not the wire codes: `sale_not_active` is two codes
/// here (the side of the window), and refusals already remembered in Redis under these codes
/// must keep parsing. A test checks this table against the script and [`Outcome`].
const LUA_REFUSALS: [LuaRefusal; 6] = [
    LuaRefusal::new("upcoming", |_| {
        Rejection::NotActive(NotActiveReason::Upcoming)
    }),
    LuaRefusal::new("ended", |_| Rejection::NotActive(NotActiveReason::Ended)),
    LuaRefusal::new("sold_out", |_| Rejection::SoldOut),
    LuaRefusal::new("already", |_| Rejection::AlreadyPurchased),
    LuaRefusal::new("limit", |allowed| Rejection::LimitExceeded { allowed }),
    LuaRefusal::new("insufficient", |remaining| Rejection::InsufficientStock {
        remaining,
    }),
];

/// One refusal code of `admission.lua` and the rejection it stands for.
struct LuaRefusal {
    code: &'static str,
    /// The rejection, given the script's argument (units allowed or left).
    rejection: fn(u32) -> Rejection,
}

impl LuaRefusal {
    const fn new(code: &'static str, rejection: fn(u32) -> Rejection) -> Self {
        Self { code, rejection }
    }
}

/// A rejection from its script code and argument.
fn rejection(code: &str, arg: u32) -> Option<Rejection> {
    LUA_REFUSALS
        .iter()
        .find(|r| r.code == code)
        .map(|r| (r.rejection)(arg))
}

impl AdmissionReply {
    /// Parses the reply of `admission.lua` (see its header): `{status, now_us, ...}`.
    fn parse(reply: Value) -> Result<Self, StoreError> {
        let reply: Vec<String> = shape("admission", reply)?;
        Ok(Self {
            admission: Admission::parse(&reply)?,
            clock_us: reply.get(1).and_then(|s| s.parse().ok()),
        })
    }
}

impl Admission {
    /// Parses the items of `admission.lua`'s reply (see its header).
    pub(crate) fn parse(reply: &[String]) -> Result<Self, StoreError> {
        let bad = || malformed("admission", reply);
        let status = reply.first().map(String::as_str).ok_or_else(bad)?;
        Ok(match status {
            "missing" => Admission::Missing,
            "reused" => Admission::Reused,
            "pending" => Admission::Pending,
            "wait" => Admission::Wait,
            "admit" => Admission::Admitted {
                epoch: num(reply.get(2), reply)?,
                created_at: from_micros(num(reply.get(1), reply)?),
            },
            "reject" => {
                let code = reply.get(2).ok_or_else(bad)?;
                let arg = num(reply.get(3), reply)?;
                Admission::Rejected {
                    rejection: rejection(code, arg).ok_or_else(bad)?,
                    replay: false,
                    last: reply.get(4).is_some_and(|f| f == "1"),
                }
            }
            "replay" => {
                let record = reply.get(2).ok_or_else(bad)?;
                let fields: Vec<&str> = record.split('\n').collect();
                match fields.as_slice() {
                    ["C", _, _, order_id, created_us] => Admission::ReplayConfirmed {
                        order_id: order_id.parse().map_err(|_| bad())?,
                        created_at: from_micros(created_us.parse().map_err(|_| bad())?),
                    },
                    ["R", _, _, code, arg] => Admission::Rejected {
                        rejection: rejection(code, arg.parse().map_err(|_| bad())?)
                            .ok_or_else(bad)?,
                        replay: true,
                        last: false,
                    },
                    _ => return Err(bad()),
                }
            }
            _ => return Err(bad()),
        })
    }
}

impl Settled {
    /// Parses the reply of `settle.lua`: `{settled, unconfirmed or -1, sold_out_us or ""}`.
    fn parse(reply: Value) -> Result<Self, StoreError> {
        let (_settled, unconfirmed, sold_out_us): (u64, i64, String) = shape("settle", reply)?;
        let sold_out_at = if sold_out_us.is_empty() {
            None
        } else {
            let us = sold_out_us
                .parse()
                .map_err(|_| malformed("settle", &sold_out_us))?;
            Some(from_micros(us))
        };
        Ok(Self {
            // -1: the sale's state is gone.
            unconfirmed: u32::try_from(unconfirmed).ok(),
            sold_out_at,
        })
    }
}

/// Parses the reply of `expired.lua`: `{order_id, record, order_id, record, ...}`. An order id
/// that does not parse is skipped (no commit can carry it, and nothing else names it).
fn parse_expired(reply: Value) -> Result<Vec<Uuid>, StoreError> {
    let flat: Vec<String> = shape("expired", reply)?;
    Ok(flat
        .chunks(2)
        .filter_map(|pair| pair.first()?.parse().ok())
        .collect())
}

impl StepReply {
    /// Parses the reply of one step of `rebuild.lua`: `ok`, `lost` or `newer`.
    fn parse(reply: Value) -> Result<Self, StoreError> {
        let reply: String = shape("rebuild", reply)?;
        match reply.as_str() {
            "ok" => Ok(StepReply::Done),
            "lost" => Ok(StepReply::Lost),
            "newer" => Ok(StepReply::Newer),
            _ => Err(malformed("rebuild", reply)),
        }
    }
}

impl AuditReply {
    /// Parses the reply of `audit.lua` (see its header).
    fn parse(reply: Value) -> Result<Self, StoreError> {
        let reply: Vec<String> = shape("audit", reply)?;
        Self::parse_items(&reply)
    }

    fn parse_items(reply: &[String]) -> Result<Self, StoreError> {
        let bad = || malformed("audit", &reply[..reply.len().min(10)]);
        match reply.first().map(String::as_str) {
            Some("missing") => return Ok(AuditReply::Missing),
            Some("ok") if reply.len() >= 13 => {}
            _ => return Err(bad()),
        }
        let num = |i: usize| -> Result<i64, StoreError> {
            reply.get(i).and_then(|s| s.parse().ok()).ok_or_else(bad)
        };
        // "" when there were too many records to sum in one script.
        let optional = |i: usize| reply.get(i).and_then(|s| s.parse().ok());
        Ok(AuditReply::Holds(RedisHoldings {
            now_us: num(1)?,
            epoch: num(2)?,
            stock: num(3)?,
            remaining: num(4)?,
            held: optional(5),
            confirmed_keys: optional(6),
            reserved: num(7)?,
            reserved_counter: num(8)?,
            reserving: optional(9),
            revision: num(10)?,
            frozen: num(11)? == 1,
            on_hold: num(12)?,
            reserved_ids: reply[13..].iter().filter_map(|s| s.parse().ok()).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_core::Outcome;
    use std::collections::BTreeSet;

    /// The refusal codes `admission.lua` can return: every string assigned to its `code`.
    fn lua_refusal_codes() -> BTreeSet<&'static str> {
        include_str!("admission.lua")
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("code") && !line.contains("=="))
            .filter_map(|line| line.split('\'').nth(1))
            .collect()
    }

    #[test]
    fn every_lua_refusal_code_parses_and_every_one_parsed_is_returned() {
        let lua = lua_refusal_codes();
        assert!(lua.len() >= 5, "the scan of admission.lua found {lua:?}");
        let parsed: BTreeSet<&str> = LUA_REFUSALS.iter().map(|r| r.code).collect();
        assert_eq!(lua, parsed, "admission.lua and LUA_REFUSALS drifted apart");
    }

    #[test]
    fn lua_refusals_cover_exactly_the_outcomes_the_rules_decide() {
        let covered: BTreeSet<Outcome> = LUA_REFUSALS
            .iter()
            .map(|r| (r.rejection)(1).outcome())
            .collect();
        let decided: BTreeSet<Outcome> = Outcome::ALL.into_iter().filter(|o| o.decided()).collect();
        assert_eq!(
            covered, decided,
            "admission.lua cannot return every rejection"
        );
    }

    fn s(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn admission_replies_parse_into_outcomes() {
        assert!(matches!(
            Admission::parse(&s(&["admit", "1700000000000000", "3", "9"])).unwrap(),
            Admission::Admitted { epoch: 3, .. }
        ));
        assert!(matches!(
            Admission::parse(&s(&["reject", "1", "limit", "2", "0"])).unwrap(),
            Admission::Rejected {
                rejection: Rejection::LimitExceeded { allowed: 2 },
                replay: false,
                last: false
            }
        ));
        assert!(matches!(
            Admission::parse(&s(&["reject", "1", "sold_out", "0", "1"])).unwrap(),
            Admission::Rejected {
                rejection: Rejection::SoldOut,
                replay: false,
                last: true
            }
        ));
        assert!(matches!(
            Admission::parse(&s(&["wait", "1"])).unwrap(),
            Admission::Wait
        ));
        assert!(matches!(
            Admission::parse(&s(&["replay", "1", "R\nbob\n1\nsold_out\n0"])).unwrap(),
            Admission::Rejected {
                rejection: Rejection::SoldOut,
                replay: true,
                last: false
            }
        ));
        let id = Uuid::now_v7();
        let rec = format!("C\nbob\n1\n{id}\n1700000000000000");
        assert!(matches!(
            Admission::parse(&s(&["replay", "1", &rec])).unwrap(),
            Admission::ReplayConfirmed { order_id, .. } if order_id == id
        ));
        assert!(Admission::parse(&s(&["what"])).is_err());
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn is_internal<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
        matches!(result, Err(StoreError::Internal { .. }))
    }

    #[test]
    fn a_malformed_admission_reply_is_an_internal_error() {
        for reply in [
            Value::Nil,
            Value::Int(3),
            Value::Array(vec![]),
            Value::Array(vec![bulk("admit"), bulk("1"), bulk("not an epoch")]),
            Value::Array(vec![bulk("reject"), bulk("1"), bulk("what"), bulk("0")]),
            Value::Array(vec![bulk("replay"), bulk("1"), bulk("C\nbob\n1")]),
            Value::Array(vec![
                bulk("replay"),
                bulk("1"),
                bulk("C\nbob\n1\nnot-a-uuid\n1"),
            ]),
        ] {
            assert!(
                is_internal(AdmissionReply::parse(reply.clone())),
                "{reply:?}"
            );
        }
        let reply = AdmissionReply::parse(Value::Array(vec![bulk("wait"), bulk("17")])).unwrap();
        assert!(matches!(reply.admission, Admission::Wait));
        assert_eq!(reply.clock_us, Some(17));
    }

    #[test]
    fn a_malformed_settle_reply_is_an_internal_error() {
        let ok = Settled::parse(Value::Array(vec![
            Value::Int(2),
            Value::Int(5),
            bulk("1700000000000000"),
        ]))
        .unwrap();
        assert_eq!(ok.unconfirmed, Some(5));
        assert!(ok.sold_out_at.is_some());
        let gone = Settled::parse(Value::Array(vec![Value::Int(0), Value::Int(-1), bulk("")]));
        assert_eq!(
            gone.unwrap(),
            Settled {
                unconfirmed: None,
                sold_out_at: None
            }
        );
        for reply in [
            Value::Nil,
            bulk("ok"),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Int(1), bulk("x"), bulk("")]),
            Value::Array(vec![Value::Int(1), Value::Int(1), bulk("soon")]),
        ] {
            assert!(is_internal(Settled::parse(reply.clone())), "{reply:?}");
        }
    }

    #[test]
    fn a_malformed_audit_reply_is_an_internal_error_not_a_panic() {
        let items = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Every figure there but the reservations' list: once an index past the end.
        let short = items(&["ok", "1", "2", "10", "4", "", "", "0", "0", "", "3"]);
        assert!(is_internal(AuditReply::parse_items(&short)));
        assert!(is_internal(AuditReply::parse_items(&items(&["ok"]))));
        assert!(is_internal(AuditReply::parse_items(&items(&["what"]))));
        assert!(is_internal(AuditReply::parse(Value::Int(1))));
        assert_eq!(
            AuditReply::parse_items(&items(&["missing", "1"])).unwrap(),
            AuditReply::Missing
        );
        let id = Uuid::now_v7().to_string();
        let full = items(&[
            "ok", "1", "2", "10", "4", "", "3", "1", "1", "1", "7", "1", "2", &id,
        ]);
        let AuditReply::Holds(holdings) = AuditReply::parse_items(&full).unwrap() else {
            panic!("a full reply is not missing");
        };
        assert_eq!(
            (holdings.epoch, holdings.held, holdings.confirmed_keys),
            (2, None, Some(3))
        );
        assert_eq!((holdings.revision, holdings.frozen), (7, true));
        assert_eq!(holdings.on_hold, 2);
        assert_eq!(holdings.reserved_ids.len(), 1);
    }

    #[test]
    fn malformed_rebuild_and_expired_replies_are_internal_errors() {
        assert_eq!(
            StepReply::parse(Value::SimpleString("ok".into())).unwrap(),
            StepReply::Done
        );
        assert_eq!(StepReply::parse(bulk("lost")).unwrap(), StepReply::Lost);
        assert!(is_internal(StepReply::parse(bulk("what"))));
        assert!(is_internal(StepReply::parse(Value::Array(vec![bulk(
            "ok"
        )]))));
        let id = Uuid::now_v7();
        let expired = parse_expired(Value::Array(vec![bulk(&id.to_string()), bulk("rec")]));
        assert_eq!(expired.unwrap(), vec![id]);
        assert!(is_internal(parse_expired(Value::Int(1))));
    }
}
