//! Recovery: reservations whose instance died, and sales whose Redis state was lost.
//!
//! **Expired reservations.** Every `reconcile_interval` (and once at start) each instance asks
//! Redis for reservations whose lease ran out and resolves them against PostgreSQL with the
//! fence of [`orders::resolve`]: it claims each one's `reservations` row as `released`. If the
//! row was already `committed`, the order is durable and the reservation is confirmed (stock
//! stays taken); otherwise the release won, no commit can land any more (the commit's own claim
//! on that row now fails), and the stock goes back. Several reconcilers racing agree, because
//! the row is claimed once and settling in Redis is idempotent.
//!
//! **Lost Redis state.** A sale whose `meta` hash is missing (Redis restarted without
//! persistence, FLUSHALL, eviction) is rebuilt from PostgreSQL before anyone is admitted again.
//! So is a sale whose state is present but wrong (a partial loss: AOF `everysec` or a failover
//! losing the last writes, an old dataset reloaded with a stale epoch): every round, `audit.lua`
//! reads the sale's epoch, stock taken, holdings, confirmed keys and live reservations in one
//! atomic step, and PostgreSQL says what they must be; two disagreements in a row trigger the
//! rebuild. One instance per interval audits a sale (a Redis lock per sale), and holdings and
//! keys are summed only for sales with at most [`AUDIT_FULL_MAX`] of them.
//!
//! The rebuild runs under a Redis lock owned by a token (every step of `rebuild.lua` checks it,
//! so a rebuilder whose lock expired changes nothing, and only the owner releases it): the
//! sale's epoch is bumped in PostgreSQL (which waits for commits in flight on the sale's row and
//! refuses later commits of orders admitted under the old epoch: their reservations are gone
//! with the old state, so their stock is released by the rebuild itself); then, only if Redis
//! does not already hold that epoch or a newer one, the old state is deleted and holdings and
//! confirmed idempotency keys are written back in bounded chunks, `meta` last.

use super::Inner;
use super::orders::{self, Resolution};
use super::scripts;
use crate::StoreError;
use flashsale_core::{Sale, SaleId};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Most reservations resolved per sale per round.
const MAX_PER_ROUND: usize = 1000;
/// How long one instance may hold a sale's rebuild lock.
const REBUILD_LOCK_MS: u64 = 10_000;
/// Most holdings + idempotency records the audit sums in its one atomic script, which blocks
/// Redis while it runs (0.9 to 1.5 us a record measured: ~4 to 8 ms at this bound); larger sales are
/// audited on their epoch and stock taken only.
const AUDIT_FULL_MAX: usize = 5_000;
/// Items per rebuild step (one bounded Redis call each, well under Lua's argument limits).
const CHUNK: usize = 1000;

/// Resolves expired reservations every interval until cancelled.
pub(crate) async fn run(inner: Arc<Inner>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(inner.cfg.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = reconcile_all(&inner, AuditPace::OncePerInterval).await {
            tracing::debug!(error = %e, "reconciler: will retry");
        }
    }
}

/// One round over every known sale: expired reservations, then a comparison of the sale's
/// Redis state with PostgreSQL (rebuilt if they disagree). Returns how many reservations were
/// resolved. A sale that fails does not stop the round: the others are still reconciled, and
/// the first error is returned at the end.
pub(crate) async fn reconcile_all(inner: &Inner, pace: AuditPace) -> Result<usize, StoreError> {
    let sales: Vec<Arc<Sale>> = inner.snapshot.all().into_iter().map(|s| s.sale).collect();
    let mut total = 0;
    let mut first_error = None;
    for sale in &sales {
        let result = match reconcile_sale(inner, sale.id).await {
            Ok(n) => {
                total += n;
                audit(inner, sale, pace).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!(sale = %sale.id, error = %e, "reconciler: sale will be retried");
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
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
}

impl Audit {
    /// Whether Redis agrees with PostgreSQL: same epoch, and the units Redis counts as taken
    /// (and as held by buyers) are exactly the settled orders plus the live reservations.
    fn agrees(&self) -> bool {
        let expected = self.settled + self.reserved;
        self.redis_epoch == self.pg_epoch
            && self.taken == expected
            && self.reserved_counter == self.reserved
            && self.reserving.is_none_or(|r| r == self.reserved)
            && self.held.is_none_or(|held| held == expected)
            && self
                .confirmed_keys
                .is_none_or(|keys| keys == self.settled_keys)
    }
}

/// Compares a sale's Redis state with PostgreSQL and rebuilds it if they disagree twice in a
/// row (once could be a rebuild by another instance between the two reads).
async fn audit(inner: &Inner, sale: &Sale, pace: AuditPace) -> Result<(), StoreError> {
    if pace == AuditPace::OncePerInterval && !take_audit_lock(inner, sale.id).await? {
        return Ok(());
    }
    let Some(first) = read_audit(inner, sale.id).await? else {
        return rebuild(inner, sale).await.map(drop);
    };
    if first.agrees() {
        return Ok(());
    }
    let Some(second) = read_audit(inner, sale.id).await? else {
        return rebuild(inner, sale).await.map(drop);
    };
    if second.agrees() {
        return Ok(());
    }
    tracing::warn!(sale = %sale.id, audit = ?second, "Redis disagrees with PostgreSQL: rebuilding the sale");
    rebuild_diverged(inner, sale, second.redis_epoch)
        .await
        .map(drop)
}

/// Takes this interval's audit lock of a sale; false when another round already has it.
async fn take_audit_lock(inner: &Inner, id: SaleId) -> Result<bool, StoreError> {
    let keys = inner.keys.sale(id);
    let mut con = inner.con();
    // The audit is one pass over the sale's holdings and keys (it blocks Redis for that
    // long): one instance per interval is enough.
    // A little under the interval, so this instance's own next round is never locked out.
    let interval_ms = (inner.cfg.reconcile_interval.as_millis() * 9 / 10).max(1) as u64;
    let mine: Option<String> = inner
        .redis_call(
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
async fn read_audit(inner: &Inner, id: SaleId) -> Result<Option<Audit>, StoreError> {
    let keys = inner.keys.sale(id);
    let mut con = inner.con();
    let reply = inner
        .redis_call(
            "audit",
            inner.scripts.audit(&mut con, &keys, AUDIT_FULL_MAX),
        )
        .await?;
    let bad = || {
        StoreError::internal(format!(
            "unexpected audit reply {:?}",
            &reply[..reply.len().min(8)]
        ))
    };
    let num = |i: usize| -> Result<i64, StoreError> {
        reply.get(i).and_then(|s| s.parse().ok()).ok_or_else(bad)
    };
    match reply.first().map(String::as_str) {
        Some("missing") => return Ok(None),
        Some("ok") => {}
        _ => return Err(bad()),
    }
    let (now_us, redis_epoch, stock, remaining) = (num(1)?, num(2)?, num(3)?, num(4)?);
    let optional = |i: usize| reply.get(i).and_then(|s| s.parse().ok());
    let (held, confirmed_keys, reserved) = (optional(5), optional(6), num(7)?);
    let (reserved_counter, reserving) = (num(8)?, optional(9));
    let reserved_ids: Vec<Uuid> = reply[10..].iter().filter_map(|s| s.parse().ok()).collect();
    let at = scripts::from_micros(now_us);
    let client = inner.pg().await?;
    // Orders admitted up to the audit's instant (admission stamps them with Redis's clock),
    // minus those whose reservation Redis still held then (counted as reserved instead).
    // Orders admitted later, or committed meanwhile, cannot make a healthy sale look diverged.
    let row = inner
        .pg_call(
            "audit",
            client.query_one(
                "WITH mine AS (
                     SELECT quantity, idempotency_key FROM orders
                     WHERE sale_id = $1 AND created_at <= $2
                 ), reserved AS (
                     SELECT quantity, idempotency_key FROM orders
                     WHERE order_id = ANY($3) AND sale_id = $1 AND created_at <= $2
                 )
                 SELECT s.epoch,
                        (SELECT COALESCE(sum(quantity), 0) FROM mine)::int8
                          - (SELECT COALESCE(sum(quantity), 0) FROM reserved)::int8,
                        (SELECT count(idempotency_key) FROM mine)
                          - (SELECT count(idempotency_key) FROM reserved)
                 FROM sales s WHERE s.id = $1",
                &[&id.0, &at, &reserved_ids],
            ),
        )
        .await?;
    Ok(Some(Audit {
        redis_epoch,
        pg_epoch: row.get(0),
        taken: stock - remaining,
        held,
        confirmed_keys,
        reserved,
        reserved_counter,
        reserving,
        settled: row.get(1),
        settled_keys: row.get(2),
    }))
}

async fn reconcile_sale(inner: &Inner, id: SaleId) -> Result<usize, StoreError> {
    let keys = inner.keys.sale(id);
    let mut con = inner.con();
    let flat = inner
        .redis_call(
            "expired",
            inner.scripts.expired(&mut con, &keys, MAX_PER_ROUND),
        )
        .await?;
    let ids: Vec<(Uuid, SaleId)> = flat
        .chunks(2)
        .filter_map(|pair| pair.first()?.parse().ok())
        .map(|order_id| (order_id, id))
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let found = orders::resolve(inner, &ids).await?;
    let mut split: BTreeMap<Resolution, Vec<Uuid>> = BTreeMap::new();
    for (order_id, _) in &ids {
        if let Some(r) = found.get(order_id) {
            split.entry(*r).or_default().push(*order_id);
        }
    }
    for (how, ids) in &split {
        tracing::info!(sale = %id, count = ids.len(), ?how, "reconciler resolved expired reservations");
        orders::settle(inner, id, *how, ids).await;
        if *how == Resolution::Released {
            inner
                .released
                .fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
    Ok(ids.len())
}

/// Rebuilds a sale's Redis state from PostgreSQL if it is missing (see the module docs).
/// Returns `false` if another instance is rebuilding it right now.
pub(crate) async fn rebuild(inner: &Inner, sale: &Sale) -> Result<bool, StoreError> {
    rebuild_if(inner, sale, None).await
}

/// Rebuilds a sale whose Redis state, at `epoch`, was found to disagree with PostgreSQL
/// (unless someone rebuilt it meanwhile). Returns `false` if another instance holds the lock.
async fn rebuild_diverged(inner: &Inner, sale: &Sale, epoch: i64) -> Result<bool, StoreError> {
    rebuild_if(inner, sale, Some(epoch)).await
}

/// One rebuild under the sale's lock. `seen` is the Redis epoch that was found wrong (`None`:
/// the state was missing); if Redis no longer shows it, someone else already rebuilt.
async fn rebuild_if(inner: &Inner, sale: &Sale, seen: Option<i64>) -> Result<bool, StoreError> {
    let keys = inner.keys.sale(sale.id);
    let mut con = inner.con();
    let token = Uuid::now_v7().to_string();
    let locked: Option<String> = inner
        .redis_call(
            "rebuild lock",
            redis::cmd("SET")
                .arg(&keys.rebuild_lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(REBUILD_LOCK_MS)
                .query_async(&mut con),
        )
        .await?;
    if locked.is_none() {
        return Ok(false);
    }
    let lock = Lock {
        inner,
        key: &keys.rebuild_lock,
        token: &token,
    };
    let result = rebuild_locked(&lock, sale, seen).await;
    // Only our own lock is released: if it expired and another instance holds it now, the
    // step finds a different token and leaves it alone.
    let _ = lock.step("unlock", &[], &[]).await;
    result.map(|()| true)
}

/// The rebuild lock as held by one instance: every step runs only while its token is there.
struct Lock<'a> {
    inner: &'a Inner,
    key: &'a str,
    token: &'a str,
}

impl Lock<'_> {
    async fn step(&self, step: &str, keys: &[&str], args: &[String]) -> Result<String, StoreError> {
        let mut con = self.inner.con();
        self.inner
            .redis_call(
                "rebuild",
                self.inner.scripts.rebuild(
                    &mut con,
                    self.key,
                    self.token,
                    REBUILD_LOCK_MS,
                    step,
                    keys,
                    args,
                ),
            )
            .await
    }

    /// A step that must find the lock still ours.
    async fn must(&self, step: &str, keys: &[&str], args: &[String]) -> Result<String, StoreError> {
        let reply = self.step(step, keys, args).await?;
        if reply == "lost" {
            return Err(StoreError::unavailable(
                "rebuild lock expired; another instance took over",
            ));
        }
        Ok(reply)
    }
}

async fn rebuild_locked(lock: &Lock<'_>, sale: &Sale, seen: Option<i64>) -> Result<(), StoreError> {
    let inner = lock.inner;
    let keys = inner.keys.sale(sale.id);
    let mut con = inner.con();
    let (current, clock_us): (Option<i64>, Option<i64>) = inner
        .redis_call(
            "HMGET epoch",
            redis::cmd("HMGET")
                .arg(&keys.meta)
                .arg("epoch")
                .arg("clock_us")
                .query_async(&mut con),
        )
        .await?;
    if current != seen {
        // Restored (or rebuilt at another epoch) by someone else since we looked.
        return Ok(());
    }
    let state = inner
        .pg_call(
            "read sale for rebuild",
            read_for_rebuild(inner, sale.id, current.unwrap_or(0)),
        )
        .await??;
    // The epoch is checked before anything is deleted: a slower rebuilder (older epoch) must
    // not wipe what a faster one restored.
    let begun = lock
        .must("begin", &keys.script_keys(), &[state.epoch.to_string()])
        .await?;
    if begun == "newer" {
        return Ok(());
    }
    // In bounded chunks, each one call well within the Redis timeout, so a sale with any
    // number of buyers finishes rebuilding.
    for chunk in state.held.chunks(CHUNK) {
        let args: Vec<String> = chunk
            .iter()
            .flat_map(|(user, held)| [user.clone(), held.to_string()])
            .collect();
        lock.must("fill", &[&keys.held], &args).await?;
    }
    for chunk in state.keys.chunks(CHUNK) {
        let args: Vec<String> = chunk
            .iter()
            .flat_map(|(key, record)| [key.clone(), record.clone()])
            .collect();
        lock.must("fill", &[&keys.idempotency], &args).await?;
    }
    let remaining = sale.stock.saturating_sub(state.sold);
    let args = vec![
        sale.stock.to_string(),
        sale.per_user_limit.to_string(),
        scripts::to_micros(sale.starts_at).to_string(),
        scripts::to_micros(sale.ends_at).to_string(),
        remaining.to_string(),
        state.epoch.to_string(),
        state
            .sold_out_at
            .map(|t| scripts::to_micros(t).to_string())
            .unwrap_or_default(),
        // The clock guard survives the rebuild: what the old state had decided with, or at
        // least the instant of the last order PostgreSQL holds.
        clock_us
            .unwrap_or(0)
            .max(state.last_order_at.map_or(0, scripts::to_micros))
            .to_string(),
    ];
    lock.must("restore", &[&keys.meta], &args).await?;
    inner.snapshot.set_remaining(sale.id, remaining);
    tracing::info!(sale = %sale.id, epoch = state.epoch, sold = state.sold, "sale rebuilt in Redis from PostgreSQL");
    Ok(())
}

/// What PostgreSQL knows of a sale, read under a new epoch.
struct Durable {
    epoch: i64,
    sold: u32,
    sold_out_at: Option<time::OffsetDateTime>,
    /// When the sale's last order was admitted.
    last_order_at: Option<time::OffsetDateTime>,
    held: Vec<(String, i32)>,
    /// Idempotency key -> its confirmed record (as `admission.lua` stores it).
    keys: Vec<(String, String)>,
}

/// `min_epoch`: the epoch Redis showed; the new epoch is above it even if PostgreSQL's was not
/// (a Redis dataset from elsewhere must not outrank the rebuild).
async fn read_for_rebuild(
    inner: &Inner,
    id: SaleId,
    min_epoch: i64,
) -> Result<Result<Durable, StoreError>, tokio_postgres::Error> {
    let mut client = match inner.pg().await {
        Ok(client) => client,
        Err(e) => return Ok(Err(e)),
    };
    let tx = client.transaction().await?;
    // FOR UPDATE conflicts with the FOR KEY SHARE every group commit takes first: commits in
    // flight finish before the epoch moves, and any later commit of an order admitted under
    // the old epoch is refused.
    tx.execute("SELECT 1 FROM sales WHERE id = $1 FOR UPDATE", &[&id.0])
        .await?;
    let row = tx
        .query_one(
            "UPDATE sales SET epoch = GREATEST(epoch, $2) + 1 WHERE id = $1
             RETURNING epoch, sold, sold_out_at,
                 (SELECT max(created_at) FROM orders WHERE sale_id = $1)",
            &[&id.0, &min_epoch],
        )
        .await?;
    let held = tx
        .query(
            "SELECT user_id, held FROM buyers WHERE sale_id = $1",
            &[&id.0],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let keys = tx
        .query(
            "SELECT idempotency_key, user_id, quantity, order_id, created_at FROM orders
             WHERE sale_id = $1 AND idempotency_key IS NOT NULL",
            &[&id.0],
        )
        .await?
        .iter()
        .map(|r| {
            let (user, q, order_id, created): (&str, i32, Uuid, time::OffsetDateTime) =
                (r.get(1), r.get(2), r.get(3), r.get(4));
            let record = format!(
                "C\n{user}\n{q}\n{order_id}\n{}",
                scripts::to_micros(created)
            );
            (r.get(0), record)
        })
        .collect();
    tx.commit().await?;
    Ok(Ok(Durable {
        epoch: row.get(0),
        sold: row.get::<_, i32>(1) as u32,
        sold_out_at: row.get(2),
        last_order_at: row.get(3),
        held,
        keys,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Audit {
        Audit {
            redis_epoch: 3,
            pg_epoch: 3,
            taken: 12,
            held: Some(12),
            confirmed_keys: Some(4),
            reserved: 2,
            reserved_counter: 2,
            reserving: Some(2),
            settled: 10,
            settled_keys: 4,
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
        let diverged = [
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
        ];
        for audit in diverged {
            assert!(!audit.agrees(), "{audit:?}");
        }
    }
}
