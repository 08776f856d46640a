//! The Redis scripts (each `.lua` file opens with its KEYS, ARGV and returns) and the parsing
//! of their replies. Scripts are loaded once at start and called by SHA (`EVALSHA`, falling
//! back to loading on `NOSCRIPT`, e.g. after Redis restarted).

use super::Inner;
use super::keys::SaleKeys;
use super::orders::Resolution;
use crate::StoreError;
use flashsale_core::{NotActiveReason, Rejection};
use redis::Script;
use redis::aio::ConnectionManager;
use time::OffsetDateTime;
use uuid::Uuid;

/// The loaded scripts.
pub(crate) struct Scripts {
    admission: Script,
    settle: Script,
    expired: Script,
    rebuild: Script,
    audit: Script,
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

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            admission: Script::new(include_str!("admission.lua")),
            settle: Script::new(include_str!("settle.lua")),
            expired: Script::new(include_str!("expired.lua")),
            rebuild: Script::new(include_str!("rebuild.lua")),
            audit: Script::new(include_str!("audit.lua")),
        }
    }

    /// Loads every script so the first purchases need no `NOSCRIPT` round trip.
    pub(crate) async fn load(&self, inner: &Inner) -> Result<(), StoreError> {
        for script in [
            &self.admission,
            &self.settle,
            &self.expired,
            &self.rebuild,
            &self.audit,
        ] {
            let mut con = inner.con();
            inner
                .redis_call("SCRIPT LOAD", script.load_async(&mut con))
                .await?;
        }
        Ok(())
    }

    /// Runs `admission.lua`.
    pub(crate) async fn admission(
        &self,
        con: &mut ConnectionManager,
        keys: &SaleKeys,
        attempt: &AdmissionArgs<'_>,
    ) -> redis::RedisResult<Vec<String>> {
        let mut inv = self.admission.prepare_invoke();
        for key in keys.script_keys() {
            inv.key(key);
        }
        inv.arg(attempt.user)
            .arg(attempt.quantity)
            .arg(attempt.idempotency_key)
            .arg(attempt.order_id.to_string())
            .arg(attempt.lease_ms)
            .arg(REFUSAL_RETENTION_MS)
            .arg(MAX_REFUSED_KEYS);
        inv.invoke_async(con).await
    }

    /// Runs `settle.lua`; returns how many reservations were settled, the sale's units not yet
    /// confirmed afterwards (`None` if the sale's state is gone) and when its last unit was
    /// taken, if it was.
    pub(crate) async fn settle(
        &self,
        con: &mut ConnectionManager,
        keys: &SaleKeys,
        how: Resolution,
        order_ids: &[Uuid],
    ) -> redis::RedisResult<(u64, Option<u32>, Option<OffsetDateTime>)> {
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
        let (settled, unconfirmed, sold_out_us): (u64, i64, String) = inv.invoke_async(con).await?;
        let sold_out_at = sold_out_us.parse().ok().map(from_micros);
        Ok((settled, u32::try_from(unconfirmed).ok(), sold_out_at))
    }

    /// Runs `expired.lua`: up to `max` reservations whose lease ran out, with their records.
    pub(crate) async fn expired(
        &self,
        con: &mut ConnectionManager,
        keys: &SaleKeys,
        max: usize,
    ) -> redis::RedisResult<Vec<String>> {
        self.expired
            .key(&keys.leases)
            .key(&keys.reservations)
            .arg(max)
            .invoke_async(con)
            .await
    }

    /// Runs one step of `rebuild.lua` under the lock `token`; `keys` follow the lock.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn rebuild(
        &self,
        con: &mut ConnectionManager,
        lock: &str,
        token: &str,
        lock_ms: u64,
        step: &str,
        keys: &[&str],
        args: &[String],
    ) -> redis::RedisResult<String> {
        let mut inv = self.rebuild.key(lock);
        for key in keys {
            inv.key(*key);
        }
        inv.arg(token).arg(lock_ms).arg(step);
        for arg in args {
            inv.arg(arg);
        }
        inv.invoke_async(con).await
    }

    /// Runs `audit.lua`: what Redis holds of a sale (see its header); holdings and keys are
    /// summed only if there are at most `full_max` of them.
    pub(crate) async fn audit(
        &self,
        con: &mut ConnectionManager,
        keys: &SaleKeys,
        full_max: usize,
    ) -> redis::RedisResult<Vec<String>> {
        self.audit
            .key(&keys.meta)
            .key(&keys.held)
            .key(&keys.reservations)
            .key(&keys.idempotency)
            .key(&keys.reserving)
            .arg(full_max)
            .invoke_async(con)
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
    pub lease_ms: u64,
}

/// Redis's clock from a script reply (the second item), in microseconds.
pub(crate) fn now_of(reply: &[String]) -> Option<i64> {
    reply.get(1).and_then(|s| s.parse().ok())
}

/// An instant from microseconds since the epoch.
pub(crate) fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Microseconds since the epoch.
pub(crate) fn to_micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

fn bad(reply: &[String]) -> StoreError {
    StoreError::internal(format!("unexpected admission reply {reply:?}"))
}

fn num<T: std::str::FromStr>(s: Option<&String>, reply: &[String]) -> Result<T, StoreError> {
    s.and_then(|s| s.parse().ok()).ok_or_else(|| bad(reply))
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

impl Admission {
    /// Parses the reply of `admission.lua` (see its header).
    pub(crate) fn parse(reply: &[String]) -> Result<Self, StoreError> {
        let status = reply
            .first()
            .map(String::as_str)
            .ok_or_else(|| bad(reply))?;
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
                let code = reply.get(2).ok_or_else(|| bad(reply))?;
                let arg = num(reply.get(3), reply)?;
                Admission::Rejected {
                    rejection: rejection(code, arg).ok_or_else(|| bad(reply))?,
                    replay: false,
                    last: reply.get(4).is_some_and(|f| f == "1"),
                }
            }
            "replay" => {
                let record = reply.get(2).ok_or_else(|| bad(reply))?;
                let fields: Vec<&str> = record.split('\n').collect();
                match fields.first().copied() {
                    Some("C") if fields.len() == 5 => Admission::ReplayConfirmed {
                        order_id: fields[3].parse().map_err(|_| bad(reply))?,
                        created_at: from_micros(fields[4].parse().map_err(|_| bad(reply))?),
                    },
                    Some("R") if fields.len() == 5 => Admission::Rejected {
                        rejection: rejection(fields[3], fields[4].parse().map_err(|_| bad(reply))?)
                            .ok_or_else(|| bad(reply))?,
                        replay: true,
                        last: false,
                    },
                    _ => return Err(bad(reply)),
                }
            }
            _ => return Err(bad(reply)),
        })
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
}
