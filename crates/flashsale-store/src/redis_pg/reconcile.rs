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
//! persistence, FLUSHALL, eviction) is rebuilt from PostgreSQL before anyone is admitted again:
//! under a Redis lock so one instance does it, the sale's epoch is bumped in PostgreSQL (which
//! waits for commits in flight on the sale's row and refuses later commits of orders admitted
//! under the old epoch: their reservations are gone with the old state), then remaining stock,
//! buyers' holdings and confirmed idempotency keys are written back, `meta` last.

use super::Inner;
use super::orders::{self, Resolution};
use super::scripts::{self, Settle};
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
/// Items per HSET while rebuilding (well under Lua/argument limits).
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
        if let Err(e) = reconcile_all(&inner).await {
            tracing::debug!(error = %e, "reconciler: will retry");
        }
    }
}

/// One round over every known sale; returns how many reservations were resolved.
pub(crate) async fn reconcile_all(inner: &Inner) -> Result<usize, StoreError> {
    let ids: Vec<SaleId> = inner
        .snapshot
        .all()
        .into_iter()
        .map(|s| s.sale.id)
        .collect();
    let mut total = 0;
    for id in ids {
        total += reconcile_sale(inner, id).await?;
    }
    Ok(total)
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
    let mut split: BTreeMap<bool, Vec<Uuid>> = BTreeMap::new();
    for (order_id, _) in &ids {
        if let Some(r) = found.get(order_id) {
            split
                .entry(*r == Resolution::Committed)
                .or_default()
                .push(*order_id);
        }
    }
    for (committed, ids) in &split {
        let how = if *committed {
            Settle::Confirm
        } else {
            Settle::Release
        };
        tracing::info!(sale = %id, count = ids.len(), ?how, "reconciler resolved expired reservations");
        orders::settle(inner, id, how, ids).await;
        if !*committed {
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
    let result = rebuild_locked(inner, sale).await;
    let _: Result<i64, _> = inner
        .redis_call(
            "rebuild unlock",
            redis::cmd("DEL")
                .arg(&keys.rebuild_lock)
                .query_async(&mut con),
        )
        .await;
    result.map(|()| true)
}

async fn rebuild_locked(inner: &Inner, sale: &Sale) -> Result<(), StoreError> {
    let keys = inner.keys.sale(sale.id);
    let mut con = inner.con();
    let exists: bool = inner
        .redis_call(
            "EXISTS",
            redis::cmd("EXISTS").arg(&keys.meta).query_async(&mut con),
        )
        .await?;
    if exists {
        return Ok(());
    }
    let state = inner
        .pg_call("read sale for rebuild", read_for_rebuild(inner, sale.id))
        .await??;
    let mut pipe = redis::pipe();
    pipe.cmd("DEL")
        .arg(&keys.held)
        .arg(&keys.leases)
        .arg(&keys.reservations)
        .arg(&keys.idempotency)
        .ignore();
    for chunk in state.held.chunks(CHUNK) {
        let cmd = pipe.cmd("HSET").arg(&keys.held);
        for (user, held) in chunk {
            cmd.arg(user).arg(held);
        }
        cmd.ignore();
    }
    for chunk in state.keys.chunks(CHUNK) {
        let cmd = pipe.cmd("HSET").arg(&keys.idempotency);
        for (key, record) in chunk {
            cmd.arg(key).arg(record);
        }
        cmd.ignore();
    }
    inner
        .redis_call("rebuild", pipe.query_async::<()>(&mut con))
        .await?;
    let args = vec![
        sale.stock.to_string(),
        sale.per_user_limit.to_string(),
        scripts::to_micros(sale.starts_at).to_string(),
        scripts::to_micros(sale.ends_at).to_string(),
        sale.stock.saturating_sub(state.sold).to_string(),
        state.epoch.to_string(),
        state
            .sold_out_at
            .map(|t| scripts::to_micros(t).to_string())
            .unwrap_or_default(),
    ];
    inner
        .redis_call("restore", inner.scripts.restore(&mut con, &keys, &args))
        .await?;
    inner
        .snapshot
        .set_remaining(sale.id, sale.stock.saturating_sub(state.sold));
    tracing::info!(sale = %sale.id, epoch = state.epoch, sold = state.sold, "sale rebuilt in Redis from PostgreSQL");
    Ok(())
}

/// What PostgreSQL knows of a sale, read under a new epoch.
struct Durable {
    epoch: i64,
    sold: u32,
    sold_out_at: Option<time::OffsetDateTime>,
    held: Vec<(String, i32)>,
    /// Idempotency key -> its confirmed record (as `admission.lua` stores it).
    keys: Vec<(String, String)>,
}

async fn read_for_rebuild(
    inner: &Inner,
    id: SaleId,
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
            "UPDATE sales SET epoch = epoch + 1 WHERE id = $1 RETURNING epoch, sold, sold_out_at",
            &[&id.0],
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
        held,
        keys,
    }))
}
