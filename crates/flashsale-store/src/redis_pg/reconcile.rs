//! Recovery: reservations whose instance died, and sales whose Redis state was lost or is
//! wrong.
//!
//! **Expired reservations.** Every `reconcile_interval` (and once at start) each instance asks
//! Redis for reservations whose lease ran out and resolves them against PostgreSQL with the
//! fence (`fence.rs`): it claims each one's `reservations` row as `released`. If the row was
//! already `committed`, the order is durable and the reservation is confirmed (stock stays
//! taken); otherwise the release won, no commit can land any more (the commit's own claim on
//! that row now fails), and the stock goes back. Several reconcilers racing agree, because the
//! row is claimed once and settling in Redis is idempotent.
//!
//! **Lost or wrong Redis state.** A sale whose `meta` hash is missing is rebuilt from
//! PostgreSQL (`rebuild.rs`). So is a sale whose state is present but wrong (a partial loss:
//! AOF `everysec` or a failover losing the last writes, an old dataset reloaded with a stale
//! epoch): every round, `audit.lua` reads the sale's epoch, stock taken, holdings, confirmed
//! keys, live reservations, units on hold (checkout) and the revision of the last operator's change it took in one
//! atomic step, and PostgreSQL says what they must be; two disagreements in a row trigger the
//! rebuild. A revision behind PostgreSQL's is a change committed there that Redis never took
//! (its instance lost Redis, or died, between the two): once the change's freeze lease has run
//! out (so no change is still on its way) the rebuild brings it in, within the lease plus one
//! or two intervals of its commit. Meanwhile the group commit refuses any order that stale
//! state admits against the change (`orders.rs`). One instance per interval audits a sale (a
//! Redis lock per sale), and holdings and keys are summed only for sales with at most
//! [`AUDIT_FULL_MAX`] of them.

use super::checkout::Checkouts;
use super::connections::{Postgres, Redis};
use super::fence::{Fence, Reservation, Resolution};
use super::keys::Keys;
use super::rebuild::Rebuilder;
use super::scripts::{AuditReply, RedisHoldings, Scripts};
use super::settle::Settler;
use super::snapshot::Snapshot;
use super::waitlist::Waitlists;
use crate::StoreError;
use crate::instants::from_micros;
use flashsale_core::{Sale, SaleId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Most reservations resolved per sale per round.
const MAX_PER_ROUND: usize = 1000;
/// Most reservations expired per round by one instance (each is one short transaction; the
/// rest are left for the next round or for the other instances).
const MAX_EXPIRED_PER_ROUND: usize = 200;
/// Most holdings + idempotency records the audit sums in its one atomic script, which blocks
/// Redis while it runs (0.9 to 1.5 us a record measured: ~4 to 8 ms at this bound); larger sales are
/// audited on their epoch and stock taken only.
const AUDIT_FULL_MAX: usize = 5_000;

/// What the reconciler works with.
pub(crate) struct ReconcilerParts {
    pub checkouts: Arc<Checkouts>,
    pub waitlists: Arc<Waitlists>,
    pub redis: Arc<Redis>,
    pub pg: Arc<Postgres>,
    pub keys: Arc<Keys>,
    pub scripts: Arc<Scripts>,
    pub snapshot: Arc<Snapshot>,
    pub fence: Arc<Fence>,
    pub settler: Arc<Settler>,
    pub rebuilder: Arc<Rebuilder>,
    /// How often a round runs.
    pub interval: Duration,
}

/// Resolves expired reservations and audits every sale, every interval.
pub(crate) struct Reconciler {
    parts: ReconcilerParts,
    /// Expired reservations released by this instance (stock given back).
    released: AtomicU64,
}

impl Reconciler {
    /// A reconciler over `parts`.
    pub(crate) fn new(parts: ReconcilerParts) -> Self {
        Self {
            parts,
            released: AtomicU64::new(0),
        }
    }

    /// Expired reservations whose stock this instance gave back, since start.
    pub(crate) fn released(&self) -> u64 {
        self.released.load(Ordering::Relaxed)
    }

    /// Resolves expired reservations every interval until cancelled.
    pub(crate) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.parts.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.reconcile_all(AuditPace::OncePerInterval).await {
                tracing::debug!(error = %e.report(), "reconciler: will retry");
            }
        }
    }

    /// One round over every known sale: expired reservations, then a comparison of the
    /// sale's Redis state with PostgreSQL (rebuilt if they disagree). Returns how many
    /// reservations were resolved. A sale that fails does not stop the round: the others are
    /// still reconciled, and the first error is returned at the end.
    pub(crate) async fn reconcile_all(&self, pace: AuditPace) -> Result<usize, StoreError> {
        let sales: Vec<Arc<Sale>> = self
            .parts
            .snapshot
            .all()
            .into_iter()
            .map(|s| s.sale)
            .collect();
        let mut total = 0;
        let mut first_error = None;
        // Holds first: moves committed but not applied (their instance died in between),
        // then reservations past their deadline, each through the one transition step.
        let checkouts = &self.parts.checkouts;
        let holds = async {
            let applied = checkouts.apply_pending(MAX_PER_ROUND).await?;
            let expired = checkouts.expire_due(MAX_EXPIRED_PER_ROUND).await?;
            // Waitlist lengths whose publish was lost (its instance died after the commit,
            // or Redis was rebuilt): not resolutions, so not counted.
            self.parts.waitlists.republish().await?;
            Ok::<_, StoreError>(applied + expired)
        };
        match holds.await {
            Ok(n) => total += n,
            Err(e) => {
                tracing::debug!(error = %e.report(), "reconciler: holds will be retried");
                first_error.get_or_insert(e);
            }
        }
        for sale in &sales {
            let result = match self.reconcile_sale(sale.id).await {
                Ok(n) => {
                    total += n;
                    self.audit(sale, pace).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::debug!(sale = %sale.id, error = %e.report(), "reconciler: sale will be retried");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Resolves the sale's expired reservations; returns how many.
    async fn reconcile_sale(&self, id: SaleId) -> Result<usize, StoreError> {
        let keys = self.parts.keys.sale(id);
        let expired: Vec<Reservation> = self
            .parts
            .scripts
            .expired(&keys, MAX_PER_ROUND)
            .await?
            .into_iter()
            .map(|order_id| Reservation {
                order_id,
                sale_id: id,
            })
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let found = self.parts.fence.resolve(&expired).await?;
        let mut split: BTreeMap<Resolution, Vec<Uuid>> = BTreeMap::new();
        for r in &expired {
            if let Some(how) = found.get(&r.order_id) {
                split.entry(*how).or_default().push(r.order_id);
            }
        }
        for (how, ids) in &split {
            tracing::info!(sale = %id, count = ids.len(), ?how, "reconciler resolved expired reservations");
            self.parts.settler.settle(id, *how, ids).await;
            if *how == Resolution::Released {
                self.released.fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(expired.len())
    }

    /// Compares a sale's Redis state with PostgreSQL and rebuilds it if they disagree twice in
    /// a row (once could be a rebuild by another instance between the two reads).
    async fn audit(&self, sale: &Sale, pace: AuditPace) -> Result<(), StoreError> {
        if pace == AuditPace::OncePerInterval && !self.take_audit_lock(sale.id).await? {
            return Ok(());
        }
        let rebuilder = &self.parts.rebuilder;
        let Some(first) = self.read_audit(sale.id).await? else {
            return rebuilder.rebuild(sale).await.map(drop);
        };
        if first.agrees() {
            return Ok(());
        }
        let Some(second) = self.read_audit(sale.id).await? else {
            return rebuilder.rebuild(sale).await.map(drop);
        };
        if second.agrees() {
            return Ok(());
        }
        tracing::warn!(sale = %sale.id, audit = ?second, "Redis disagrees with PostgreSQL: rebuilding the sale");
        rebuilder
            .rebuild_diverged(sale, second.redis_epoch)
            .await
            .map(drop)
    }

    /// Takes this interval's audit lock of a sale; false when another round already has it.
    async fn take_audit_lock(&self, id: SaleId) -> Result<bool, StoreError> {
        let keys = self.parts.keys.sale(id);
        let redis = &self.parts.redis;
        let mut con = redis.con();
        // The audit is one pass over the sale's holdings and keys (it blocks Redis for that
        // long): one instance per interval is enough.
        // A little under the interval, so this instance's own next round is never locked out.
        let interval_ms = (self.parts.interval.as_millis() * 9 / 10).max(1) as u64;
        let mine: Option<String> = redis
            .call(
                "audit lock",
                redis::cmd("SET")
                    .arg(&keys.audit_lock)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(interval_ms)
                    .query_async(&mut con),
            )
            .await?;
        Ok(mine.is_some())
    }

    /// One audit; `None` if the sale's Redis state is missing.
    async fn read_audit(&self, id: SaleId) -> Result<Option<Audit>, StoreError> {
        let keys = self.parts.keys.sale(id);
        let holdings = match self.parts.scripts.audit(&keys, AUDIT_FULL_MAX).await? {
            AuditReply::Missing => return Ok(None),
            AuditReply::Holds(holdings) => holdings,
        };
        let pg = &self.parts.pg;
        let client = pg.client().await?;
        // Orders admitted up to the audit's instant (admission stamps them with Redis's
        // clock), minus those whose reservation Redis still held then (counted as reserved
        // instead). Orders admitted later, or committed meanwhile, cannot make a healthy sale
        // look diverged. A released hold order whose move Redis has taken holds nothing.
        let row = pg
            .call(
                "audit",
                client.query_one(
                    "WITH mine AS (
                         SELECT quantity, idempotency_key FROM orders
                         WHERE sale_id = $1 AND created_at <= $2
                           AND NOT (status IN ('expired', 'cancelled')
                                    AND move_epoch IS NULL)
                     ), hold AS (
                         SELECT quantity, status FROM orders
                         WHERE sale_id = $1 AND created_at <= $2 AND order_id <> ALL($3)
                           AND expires_at IS NOT NULL
                           AND (status = 'reserved' OR move_epoch IS NOT NULL)
                     ), reserved AS (
                         SELECT quantity, idempotency_key FROM orders
                         WHERE order_id = ANY($3) AND sale_id = $1 AND created_at <= $2
                     )
                     SELECT s.epoch, s.revision,
                            (SELECT COALESCE(sum(quantity), 0) FROM mine)::int8
                              - (SELECT COALESCE(sum(quantity), 0) FROM reserved)::int8,
                            (SELECT count(idempotency_key) FROM mine)
                              - (SELECT count(idempotency_key) FROM reserved),
                            (SELECT COALESCE(sum(quantity), 0) FROM hold)::int8,
                            (SELECT COALESCE(sum(quantity), 0) FROM hold
                             WHERE status <> 'reserved')::int8,
                            (SELECT COALESCE(sum(quantity), 0) FROM hold
                             WHERE status IN ('expired', 'cancelled'))::int8
                     FROM sales s WHERE s.id = $1",
                    &[&id.0, &from_micros(holdings.now_us), &holdings.reserved_ids],
                ),
            )
            .await?;
        Ok(Some(Audit::of(
            &holdings,
            Durable {
                epoch: row.get(0),
                revision: row.get(1),
                settled: row.get(2),
                settled_keys: row.get(3),
                on_hold: row.get(4),
                moves_owed: row.get(5),
                releases_owed: row.get(6),
            },
        )))
    }
}

/// How often a sale is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuditPace {
    /// The periodic round: one instance per interval audits each sale (the audit lock).
    OncePerInterval,
    /// An explicit call (`reconcile_now`): audit now, whoever audited last.
    Now,
}

/// What Redis holds of a sale (`audit.lua`) and what PostgreSQL says it should be.
#[derive(Debug, PartialEq, Eq)]
struct Audit {
    redis_epoch: i64,
    pg_epoch: i64,
    /// The operator's change Redis last took.
    redis_revision: i64,
    /// The operator's change PostgreSQL last committed.
    pg_revision: i64,
    /// Whether a change's freeze lease was live in Redis (its change may be on its way).
    frozen: bool,
    /// `stock - remaining` in Redis.
    taken: i64,
    /// Sum of the buyers' holdings in Redis (`None`: too many to sum in one script).
    held: Option<i64>,
    /// Confirmed idempotency records in Redis (`None`: too many to count in one script).
    confirmed_keys: Option<i64>,
    /// Units of live reservations in Redis.
    reserved: i64,
    /// Meta's `reserved` counter, which must equal `reserved`.
    reserved_counter: i64,
    /// Sum of the per-buyer reserved units (`None`: too many to sum in one script).
    reserving: Option<i64>,
    /// Units PostgreSQL committed for orders admitted before the audit and not reserved then.
    settled: i64,
    /// Keyed orders among those.
    settled_keys: i64,
    /// Units on hold in Redis (hold mode).
    redis_on_hold: i64,
    /// Units of committed hold reservations PostgreSQL says Redis must hold: `reserved`, or
    /// left by a transition whose move Redis may not have taken yet.
    on_hold: i64,
    /// Units of transitions whose move Redis may or may not have taken (applied, but not yet
    /// marked so in PostgreSQL, is a few ms of every transition): Redis is right either way.
    moves_owed: i64,
    /// The releases among those (counted in `settled` as still taken).
    releases_owed: i64,
}

impl Audit {
    /// Whether Redis agrees with PostgreSQL: same epoch, the same revision (unless a change
    /// is on its way), and the units Redis counts as taken (and as held by buyers) are exactly
    /// the settled orders plus the live reservations.
    fn agrees(&self) -> bool {
        let expected = self.settled + self.reserved;
        let taken = (expected - self.releases_owed)..=expected;
        self.redis_epoch == self.pg_epoch
            && (self.frozen || self.redis_revision == self.pg_revision)
            && taken.contains(&self.taken)
            && self.reserved_counter == self.reserved
            && self.reserving.is_none_or(|r| r == self.reserved)
            && self.held.is_none_or(|held| taken.contains(&held))
            && self
                .confirmed_keys
                .is_none_or(|keys| keys == self.settled_keys)
            && ((self.on_hold - self.moves_owed)..=self.on_hold).contains(&self.redis_on_hold)
    }

    /// Redis's holdings beside what PostgreSQL holds.
    fn of(redis: &RedisHoldings, pg: Durable) -> Self {
        let Durable {
            epoch: pg_epoch,
            revision: pg_revision,
            settled,
            settled_keys,
            on_hold,
            moves_owed,
            releases_owed,
        } = pg;
        Self {
            redis_epoch: redis.epoch,
            pg_epoch,
            redis_revision: redis.revision,
            pg_revision,
            frozen: redis.frozen,
            taken: redis.stock - redis.remaining,
            held: redis.held,
            confirmed_keys: redis.confirmed_keys,
            reserved: redis.reserved,
            reserved_counter: redis.reserved_counter,
            reserving: redis.reserving,
            settled,
            settled_keys,
            redis_on_hold: redis.on_hold,
            on_hold,
            moves_owed,
            releases_owed,
        }
    }
}

/// What PostgreSQL says a sale's Redis state must be, at an audit's instant.
struct Durable {
    epoch: i64,
    revision: i64,
    /// Units committed for orders admitted before the audit and not reserved then.
    settled: i64,
    /// Keyed orders among those.
    settled_keys: i64,
    /// Units Redis must hold on hold (see [`Audit::on_hold`]).
    on_hold: i64,
    /// See [`Audit::moves_owed`].
    moves_owed: i64,
    /// See [`Audit::releases_owed`].
    releases_owed: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Audit {
        Audit {
            redis_epoch: 3,
            pg_epoch: 3,
            redis_revision: 1,
            pg_revision: 1,
            frozen: false,
            taken: 12,
            held: Some(12),
            confirmed_keys: Some(4),
            reserved: 2,
            reserved_counter: 2,
            reserving: Some(2),
            settled: 10,
            settled_keys: 4,
            redis_on_hold: 3,
            on_hold: 3,
            moves_owed: 0,
            releases_owed: 0,
        }
    }

    #[test]
    fn an_audit_agrees_only_when_every_figure_matches_postgres() {
        assert!(healthy().agrees());
        assert!(
            Audit {
                held: None,
                confirmed_keys: None,
                ..healthy()
            }
            .agrees(),
            "a large sale is judged on its epoch and stock taken"
        );
        assert!(
            Audit {
                pg_revision: 2,
                frozen: true,
                ..healthy()
            }
            .agrees(),
            "a change on its way (its freeze live) is not a divergence"
        );
        for (taken, on_hold) in [(12, 3), (11, 2)] {
            assert!(
                Audit {
                    taken,
                    held: Some(taken),
                    redis_on_hold: on_hold,
                    moves_owed: 1,
                    releases_owed: 1,
                    ..healthy()
                }
                .agrees(),
                "a release Redis has or has not taken yet is not a divergence: {taken}"
            );
        }
        let diverged = [
            Audit {
                pg_revision: 2,
                ..healthy()
            },
            Audit {
                redis_epoch: 2,
                ..healthy()
            },
            Audit {
                taken: 7,
                ..healthy()
            },
            Audit {
                held: Some(11),
                ..healthy()
            },
            Audit {
                confirmed_keys: Some(3),
                ..healthy()
            },
            Audit {
                reserved: 1,
                ..healthy()
            },
            Audit {
                reserved_counter: 0,
                ..healthy()
            },
            Audit {
                reserving: Some(1),
                ..healthy()
            },
            Audit {
                redis_on_hold: 2,
                ..healthy()
            },
            Audit {
                taken: 10,
                held: Some(10),
                redis_on_hold: 1,
                moves_owed: 1,
                releases_owed: 1,
                ..healthy()
            },
        ];
        for audit in diverged {
            assert!(!audit.agrees(), "{audit:?}");
        }
    }
}
