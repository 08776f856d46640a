//! Group commit of admitted orders to PostgreSQL.
//!
//! Buyers' tasks hand their admitted order to one batching task and wait; the task takes
//! everything queued (up to `max_batch`) into one transaction of a few multi-row statements
//! (`INSERT ... SELECT FROM UNNEST`), so one commit makes a whole group durable. `confirmed`
//! is answered only after that commit. In the same transaction:
//!
//! - the sales rows are locked and each order's admission epoch checked against the sale's
//!   (an order admitted before Redis lost its data and was rebuilt is refused: it is already
//!   forgotten by the rebuilt state);
//! - each order claims its `reservations` row as `committed` (`ON CONFLICT DO NOTHING`): an
//!   order the reconciler already released loses, and is not written;
//! - `buyers.held` and `sales.sold` are raised, their CHECKs refusing any oversell.
//!
//! When the transaction fails, the group's reservations are fenced as released (which also
//! tells us whether an ambiguous commit in fact went through) and their stock handed back.
//! If PostgreSQL cannot even be asked, the reservations are left to the reconciler.

use super::Inner;
use super::scripts::Settle;
use crate::StoreError;
use crate::model::Order;
use flashsale_core::{IdempotencyKey, SaleId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Commits in flight at once (they serialise per sale on its row lock anyway).
const CONCURRENT_COMMITS: usize = 2;

/// An admitted order waiting for its commit.
pub(crate) struct PendingOrder {
    pub order: Order,
    /// The sale's epoch the order was admitted under.
    pub epoch: i64,
    pub key: Option<IdempotencyKey>,
    pub reply: oneshot::Sender<Settlement>,
}

/// What became of a pending order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Committed in PostgreSQL.
    Confirmed,
    /// Not committed; its stock is (or will be, by the reconciler) handed back.
    Failed,
}

/// How a reservation was resolved in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    Committed,
    Released,
}

/// The sending side of the batching task.
pub(crate) struct OrderWriter {
    tx: mpsc::Sender<PendingOrder>,
}

impl OrderWriter {
    /// Queues an order; gives it back if the writer has stopped.
    pub(crate) async fn send(&self, order: PendingOrder) -> Result<(), PendingOrder> {
        self.tx.send(order).await.map_err(|e| e.0)
    }
}

/// Starts the batching task.
pub(crate) fn spawn(
    inner: &Arc<Inner>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> OrderWriter {
    let (tx, rx) = mpsc::channel(inner.cfg.max_batch * 4);
    tracker.spawn(run(Arc::clone(inner), rx, cancel.clone(), tracker.clone()));
    OrderWriter { tx }
}

async fn run(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<PendingOrder>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_COMMITS));
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            _ = cancel.cancelled() => None,
        };
        let Some(first) = first else { break };
        // Waiting for a permit first lets the queue grow into a bigger group meanwhile.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < inner.cfg.max_batch {
            match rx.try_recv() {
                Ok(order) => batch.push(order),
                Err(_) => break,
            }
        }
        let inner = Arc::clone(&inner);
        tracker.spawn(async move {
            settle_batch(&inner, batch).await;
            drop(permit);
        });
    }
    // Shutting down: commit what was already queued, then stop.
    rx.close();
    let mut rest = Vec::new();
    while let Ok(order) = rx.try_recv() {
        rest.push(order);
    }
    if !rest.is_empty() {
        settle_batch(&inner, rest).await;
    }
}

/// Commits one group and answers each of its buyers.
async fn settle_batch(inner: &Inner, batch: Vec<PendingOrder>) {
    let outcome = commit(inner, &batch).await;
    let resolutions: HashMap<Uuid, Resolution> = match outcome {
        Ok(won) => batch
            .iter()
            .map(|p| {
                let r = if won.contains(&p.order.order_id) {
                    Resolution::Committed
                } else {
                    Resolution::Released
                };
                (p.order.order_id, r)
            })
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, orders = batch.len(), "order group failed to commit");
            let ids: Vec<(Uuid, SaleId)> = batch
                .iter()
                .map(|p| (p.order.order_id, p.order.sale_id))
                .collect();
            match resolve(inner, &ids).await {
                Ok(found) => found,
                Err(e) => {
                    // PostgreSQL cannot be asked: the reservations stay until the reconciler
                    // resolves them once it is back. The buyers are told nothing was taken,
                    // which is what the reconciler will make true (no commit can land).
                    tracing::warn!(error = %e, "cannot fence failed orders; reconciler will");
                    HashMap::new()
                }
            }
        }
    };
    let mut by_sale: BTreeMap<(SaleId, bool), Vec<Uuid>> = BTreeMap::new();
    for p in &batch {
        if let Some(r) = resolutions.get(&p.order.order_id) {
            by_sale
                .entry((p.order.sale_id, *r == Resolution::Committed))
                .or_default()
                .push(p.order.order_id);
        }
    }
    for ((sale, committed), ids) in by_sale {
        let how = if committed {
            Settle::Confirm
        } else {
            Settle::Release
        };
        settle(inner, sale, how, &ids).await;
    }
    for p in batch {
        let settlement = match resolutions.get(&p.order.order_id) {
            Some(Resolution::Committed) => Settlement::Confirmed,
            _ => Settlement::Failed,
        };
        // A buyer who went away still has their order committed; nothing to do.
        let _ = p.reply.send(settlement);
    }
}

/// Settles reservations in Redis; on failure the reconciler does it after the lease.
pub(crate) async fn settle(inner: &Inner, sale: SaleId, how: Settle, ids: &[Uuid]) {
    let keys = inner.keys.sale(sale);
    let mut con = inner.con();
    match inner
        .redis_call("settle", inner.scripts.settle(&mut con, &keys, how, ids))
        .await
    {
        Ok(_) => {
            if how == Settle::Release
                && let Some(entry) = inner.snapshot.get(sale)
                && entry.remaining == 0
            {
                // Stock came back: let the next refresh say how much, but stop the fast
                // path from answering sold out meanwhile.
                inner.snapshot.set_remaining(sale, 1);
            }
        }
        Err(e) => tracing::warn!(sale = %sale, error = %e, "cannot settle reservations yet"),
    }
}

/// Releases reservations of orders that never reached PostgreSQL (shutting down).
pub(crate) async fn release_unwritten(inner: &Inner, orders: &[Order]) {
    let ids: Vec<(Uuid, SaleId)> = orders.iter().map(|o| (o.order_id, o.sale_id)).collect();
    if let Ok(found) = resolve(inner, &ids).await {
        for o in orders {
            if found.get(&o.order_id) == Some(&Resolution::Released) {
                settle(inner, o.sale_id, Settle::Release, &[o.order_id]).await;
            }
        }
    }
}

/// Fences reservations: claims each one not yet resolved as `released`, then reads how every
/// one of them was resolved. Whoever inserted the row first (a commit or a release) won.
pub(crate) async fn resolve(
    inner: &Inner,
    ids: &[(Uuid, SaleId)],
) -> Result<HashMap<Uuid, Resolution>, StoreError> {
    let mut sorted = ids.to_vec();
    // One lock order for every writer of `reservations`, so fences and commits never deadlock.
    sorted.sort();
    let order_ids: Vec<Uuid> = sorted.iter().map(|(id, _)| *id).collect();
    let sale_ids: Vec<i64> = sorted.iter().map(|(_, s)| s.0).collect();
    let client = inner.pg().await?;
    inner
        .pg_call(
            "fence reservations",
            client.execute(
                "INSERT INTO reservations (order_id, sale_id, resolution)
                 SELECT o, s, 'released' FROM UNNEST($1::uuid[], $2::int8[]) AS t(o, s)
                 ON CONFLICT (order_id) DO NOTHING",
                &[&order_ids, &sale_ids],
            ),
        )
        .await?;
    let rows = inner
        .pg_call(
            "read reservations",
            client.query(
                "SELECT order_id, resolution FROM reservations WHERE order_id = ANY($1)",
                &[&order_ids],
            ),
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let r = if row.get::<_, &str>(1) == "committed" {
                Resolution::Committed
            } else {
                Resolution::Released
            };
            (row.get(0), r)
        })
        .collect())
}

/// One group-commit transaction; returns the order ids committed.
async fn commit(inner: &Inner, batch: &[PendingOrder]) -> Result<HashSet<Uuid>, StoreError> {
    let mut client = inner.pg().await?;
    let result = inner
        .pg_call("commit orders", commit_tx(&mut client, batch))
        .await;
    if result.is_err() {
        // The connection may be mid-transaction (timed out): never hand it to anyone else.
        let _ = deadpool_postgres::Object::take(client);
    }
    result
}

async fn commit_tx(
    client: &mut deadpool_postgres::Object,
    batch: &[PendingOrder],
) -> Result<HashSet<Uuid>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut sale_ids: Vec<i64> = batch.iter().map(|p| p.order.sale_id.0).collect();
    sale_ids.sort_unstable();
    sale_ids.dedup();
    let rows = tx
        .query(
            "SELECT id, epoch, per_user_limit FROM sales WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&sale_ids],
        )
        .await?;
    let sales: HashMap<i64, (i64, i32)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut fresh: Vec<&PendingOrder> = batch
        .iter()
        .filter(|p| sales.get(&p.order.sale_id.0).map(|s| s.0) == Some(p.epoch))
        .collect();
    fresh.sort_by_key(|p| p.order.order_id);
    let ids: Vec<Uuid> = fresh.iter().map(|p| p.order.order_id).collect();
    let sids: Vec<i64> = fresh.iter().map(|p| p.order.sale_id.0).collect();
    let won: HashSet<Uuid> = tx
        .query(
            "INSERT INTO reservations (order_id, sale_id, resolution)
             SELECT o, s, 'committed' FROM UNNEST($1::uuid[], $2::int8[]) AS t(o, s)
             ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
            &[&ids, &sids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let winners: Vec<&PendingOrder> = fresh
        .into_iter()
        .filter(|p| won.contains(&p.order.order_id))
        .collect();
    if winners.is_empty() {
        tx.commit().await?;
        return Ok(won);
    }
    let ids: Vec<Uuid> = winners.iter().map(|p| p.order.order_id).collect();
    let sids: Vec<i64> = winners.iter().map(|p| p.order.sale_id.0).collect();
    let users: Vec<&str> = winners.iter().map(|p| p.order.user_id.as_str()).collect();
    let qtys: Vec<i32> = winners.iter().map(|p| p.order.quantity as i32).collect();
    let created: Vec<time::OffsetDateTime> = winners.iter().map(|p| p.order.created_at).collect();
    let keys: Vec<Option<&str>> = winners
        .iter()
        .map(|p| p.key.as_ref().map(IdempotencyKey::as_str))
        .collect();
    tx.execute(
        "INSERT INTO orders (order_id, sale_id, user_id, quantity, created_at, idempotency_key)
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::int4[],
                              $5::timestamptz[], $6::text[])",
        &[&ids, &sids, &users, &qtys, &created, &keys],
    )
    .await?;
    // One row per buyer (a statement may not touch a row twice), in one order for every
    // instance so concurrent groups never deadlock on the same buyers.
    let mut held: BTreeMap<(i64, &str), i32> = BTreeMap::new();
    let mut sold: BTreeMap<i64, (i32, time::OffsetDateTime)> = BTreeMap::new();
    for p in &winners {
        *held
            .entry((p.order.sale_id.0, p.order.user_id.as_str()))
            .or_default() += p.order.quantity as i32;
        let s = sold
            .entry(p.order.sale_id.0)
            .or_insert((0, p.order.created_at));
        s.0 += p.order.quantity as i32;
        s.1 = s.1.max(p.order.created_at);
    }
    let b_sales: Vec<i64> = held.keys().map(|(s, _)| *s).collect();
    let b_users: Vec<&str> = held.keys().map(|(_, u)| *u).collect();
    let b_held: Vec<i32> = held.values().copied().collect();
    let b_limits: Vec<i32> = b_sales
        .iter()
        .map(|s| sales.get(s).map_or(0, |x| x.1))
        .collect();
    tx.execute(
        "INSERT INTO buyers AS b (sale_id, user_id, held, per_user_limit)
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int4[], $4::int4[])
         ON CONFLICT (sale_id, user_id) DO UPDATE SET held = b.held + excluded.held",
        &[&b_sales, &b_users, &b_held, &b_limits],
    )
    .await?;
    let s_ids: Vec<i64> = sold.keys().copied().collect();
    let s_units: Vec<i32> = sold.values().map(|v| v.0).collect();
    let s_last: Vec<time::OffsetDateTime> = sold.values().map(|v| v.1).collect();
    tx.execute(
        "UPDATE sales SET sold = sales.sold + d.n,
             sold_out_at = CASE WHEN sales.sold + d.n = sales.stock
                                THEN COALESCE(sales.sold_out_at, d.last) ELSE sales.sold_out_at END
         FROM UNNEST($1::int8[], $2::int4[], $3::timestamptz[]) AS d(id, n, last)
         WHERE sales.id = d.id",
        &[&s_ids, &s_units, &s_last],
    )
    .await?;
    tx.commit().await?;
    Ok(won)
}
