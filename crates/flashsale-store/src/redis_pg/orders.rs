//! Group commit of admitted orders to PostgreSQL.
//!
//! Buyers' tasks hand their admitted order to one batching task and wait; the task takes
//! everything queued (up to `max_batch`) into one transaction of a few multi-row statements
//! (`INSERT ... SELECT FROM UNNEST`), so one commit makes a whole group durable. `confirmed`
//! is answered only after that commit. In the same transaction:
//!
//! - the sales rows are locked and each order's admission epoch checked against the sale's
//!   (an order admitted before Redis lost its data and was rebuilt is refused: it is already
//!   forgotten by the rebuilt state), and its admission instant against the sale's window and
//!   cancellation as the row holds them (an order a stale Redis admitted after an operator's
//!   change it never took is refused: the change is committed, the order may not contradict
//!   it);
//! - each order claims its `reservations` row as `committed` (`ON CONFLICT DO NOTHING`): an
//!   order the reconciler already released loses, and is not written;
//! - a hold sale's order is written `reserved` with its `expires_at` (the admission instant
//!   plus the sale's window, read from the row in the same statement, so an instant purchase
//!   costs no extra statement);
//! - `buyers.held` and `sales.sold` are raised, their CHECKs refusing any oversell. A CHECK
//!   violation (Redis admitted what it should not have, e.g. after a partial data loss) splits
//!   the group in halves, recursively, so only the offending orders fail, never the group.
//!
//! When the transaction fails, the group's reservations are fenced as released (`fence.rs`,
//! which also tells us whether an ambiguous commit in fact went through) and their stock handed
//! back (`settle.rs`). If PostgreSQL cannot even be asked, the reservations are left to the
//! reconciler.
//!
//! The buyers' committed orders are read back from here too ([`buyer_orders`]).

use super::connections::Postgres;
use super::fence::{Fence, Reservation, Resolution};
use super::grouping::next_group;
use super::settle::Settler;
use crate::StoreError;
use crate::model::{Order, OrderKey};
use flashsale_core::{IdempotencyKey, OrderStatus, PaymentRef, SaleId, UserId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Group commits in flight at once (groups of one sale overlap but for the `sold` update).
const CONCURRENT_COMMITS: usize = 4;

/// An admitted order waiting for its commit.
pub(crate) struct PendingOrder {
    pub order: Order,
    /// The sale's epoch the order was admitted under.
    pub epoch: i64,
    pub key: Option<IdempotencyKey>,
    pub reply: oneshot::Sender<CommitOutcome>,
}

impl PendingOrder {
    fn reservation(&self) -> Reservation {
        Reservation {
            order_id: self.order.order_id,
            sale_id: self.order.sale_id,
        }
    }
}

/// What became of a pending order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitOutcome {
    /// Committed in PostgreSQL.
    Confirmed,
    /// Not committed, and it never will be: its stock is (or will be, by the reconciler)
    /// handed back.
    Failed,
    /// Not known: the commit failed in a way that may have landed (an error or timeout around
    /// COMMIT) and PostgreSQL could not be asked which. The reconciler decides it later.
    Unknown,
}

/// What the group commit works with.
pub(crate) struct Committer {
    pg: Arc<Postgres>,
    fence: Arc<Fence>,
    settler: Arc<Settler>,
    /// Most orders committed in one transaction.
    max_batch: usize,
}

/// The sending side of the batching task.
pub(crate) struct OrderWriter {
    tx: mpsc::Sender<PendingOrder>,
    committer: Arc<Committer>,
}

impl OrderWriter {
    /// Starts the batching task on `tracker`, committing through `pg` in groups of at most
    /// `max_batch`; it stops (committing what is queued) once `cancel` is cancelled.
    pub(crate) fn spawn(
        pg: Arc<Postgres>,
        fence: Arc<Fence>,
        settler: Arc<Settler>,
        max_batch: usize,
        cancel: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let committer = Arc::new(Committer {
            pg,
            fence,
            settler,
            max_batch,
        });
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tracker.spawn(Arc::clone(&committer).run(rx, cancel.clone(), tracker.clone()));
        Self { tx, committer }
    }

    /// Queues an order; gives it back if the writer has stopped.
    pub(crate) async fn send(&self, order: PendingOrder) -> Result<(), PendingOrder> {
        self.tx.send(order).await.map_err(|e| e.0)
    }

    /// Releases the reservation of an order that never reached PostgreSQL (shutting down).
    pub(crate) async fn release_unwritten(&self, order: &Order) {
        let reservation = Reservation {
            order_id: order.order_id,
            sale_id: order.sale_id,
        };
        let committer = &self.committer;
        if let Ok(found) = committer.fence.resolve(&[reservation]).await
            && found.get(&order.order_id) == Some(&Resolution::Released)
        {
            committer
                .settler
                .settle(order.sale_id, Resolution::Released, &[order.order_id])
                .await;
        }
    }
}

impl Committer {
    async fn run(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<PendingOrder>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) {
        let permits = Arc::new(Semaphore::new(CONCURRENT_COMMITS));
        while let Some((permit, batch)) =
            next_group(&mut rx, &permits, &cancel, self.max_batch).await
        {
            let committer = Arc::clone(&self);
            tracker.spawn(async move {
                committer.commit_group(batch).await;
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
            self.commit_group(rest).await;
        }
    }

    /// Commits one group and answers each of its buyers.
    async fn commit_group(&self, batch: Vec<PendingOrder>) {
        // `None`: how the group ended is not known (see `CommitOutcome::Unknown`).
        let resolutions = self.resolutions(&batch).await;
        let mut by_sale: BTreeMap<(SaleId, Resolution), Vec<Uuid>> = BTreeMap::new();
        for p in &batch {
            if let Some(r) = resolutions.as_ref().and_then(|r| r.get(&p.order.order_id)) {
                by_sale
                    .entry((p.order.sale_id, *r))
                    .or_default()
                    .push(p.order.order_id);
            }
        }
        for ((sale, how), ids) in by_sale {
            self.settler.settle(sale, how, &ids).await;
        }
        for p in batch {
            let outcome = match &resolutions {
                None => CommitOutcome::Unknown,
                Some(r) => match r.get(&p.order.order_id) {
                    Some(Resolution::Committed) => CommitOutcome::Confirmed,
                    // Fenced as released, or (a bug) missing: no commit of it can land any more.
                    _ => CommitOutcome::Failed,
                },
            };
            // A buyer who went away still has their order committed; nothing to do.
            let _ = p.reply.send(outcome);
        }
    }

    /// Commits the group and says how each of its reservations was resolved; `None` if that
    /// is not known (the commit failed, maybe after landing, and the fence cannot be asked).
    async fn resolutions(&self, batch: &[PendingOrder]) -> Option<HashMap<Uuid, Resolution>> {
        let e = match self.commit(batch).await {
            Ok(won) => {
                return Some(
                    batch
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
                );
            }
            Err(e) => e,
        };
        tracing::error!(error = %e.report(), orders = batch.len(), "order group failed to commit");
        let reservations: Vec<Reservation> = batch.iter().map(PendingOrder::reservation).collect();
        match self.fence.resolve(&reservations).await {
            Ok(found) => Some(found),
            Err(e) => {
                // PostgreSQL cannot be asked: the reservations stay until the reconciler
                // resolves them once it is back. The failed commit may have landed (the error
                // may have come after COMMIT reached the server), so the buyers are told the
                // outcome is not known, never that nothing was taken.
                tracing::warn!(error = %e.report(), "cannot fence failed orders; reconciler will");
                None
            }
        }
    }

    /// Commits a group; returns the order ids committed. If the group's one statement breaks
    /// a CHECK (a buyer over the limit or the sale over its stock: Redis admitted an order it
    /// should not have, e.g. after losing part of its data), the group is split in halves and
    /// each half committed on its own, down to single orders: only the offending orders fail,
    /// never the whole group. Any other failure ends it; the caller then asks the fence what
    /// landed.
    async fn commit(&self, batch: &[PendingOrder]) -> Result<HashSet<Uuid>, StoreError> {
        let mut won = HashSet::new();
        let mut todo = vec![batch];
        while let Some(part) = todo.pop() {
            match self.commit_part(part).await {
                Ok(part_won) => won.extend(part_won),
                Err(Failure::Check(_)) if part.len() > 1 => {
                    let (a, b) = part.split_at(part.len() / 2);
                    todo.push(b);
                    todo.push(a);
                }
                Err(Failure::Check(e)) => {
                    // Not written; its buyer is told nothing was taken, which is true.
                    tracing::warn!(order = %part[0].order.order_id, sale = %part[0].order.sale_id,
                        error = %e, "order refused by PostgreSQL's CHECK; Redis admitted it wrongly");
                }
                Err(Failure::Other(e)) => return Err(e),
            }
        }
        Ok(won)
    }

    /// One group-commit transaction. A deadlock or serialisation failure (two groups holding
    /// the same buyer, rare) is retried once: the failed transaction was rolled back whole, so
    /// nothing of it can have landed.
    async fn commit_part(&self, batch: &[PendingOrder]) -> Result<HashSet<Uuid>, Failure> {
        let pg = &self.pg;
        let mut retried = false;
        loop {
            let mut client = match pg.client().await {
                Ok(client) => client,
                Err(e) => {
                    pg.unreachable();
                    return Err(Failure::Other(e));
                }
            };
            match tokio::time::timeout(pg.timeout(), commit_tx(&mut client, batch)).await {
                Ok(Ok(won)) => return Ok(won),
                Ok(Err(e)) if !retried && retryable(&e) => retried = true,
                Ok(Err(e))
                    if e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION) =>
                {
                    return Err(Failure::Check(CheckViolation(e)));
                }
                Ok(Err(e)) => {
                    if e.is_closed() {
                        pg.unreachable();
                    }
                    drop_connection(client);
                    return Err(Failure::Other(StoreError::unavailable_from(
                        "postgres commit orders",
                        e,
                    )));
                }
                Err(_) => {
                    drop_connection(client);
                    return Err(Failure::Other(StoreError::timeout(
                        "postgres commit orders",
                    )));
                }
            }
        }
    }
}

/// Why one transaction of a group failed.
enum Failure {
    /// A CHECK constraint refused the statement (nothing was written).
    Check(CheckViolation),
    Other(StoreError),
}

/// A CHECK violation, shown with its SQLSTATE and server message.
struct CheckViolation(tokio_postgres::Error);

impl std::fmt::Display for CheckViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{}: {}", db.code().code(), db.message()),
            None => write!(f, "{}", self.0),
        }
    }
}

/// The buyer's committed orders in a sale, oldest first.
pub(crate) async fn buyer_orders(
    pg: &Postgres,
    id: SaleId,
    user: &UserId,
) -> Result<Vec<Order>, StoreError> {
    let client = pg.client().await?;
    let rows = pg
        .call(
            "orders of a buyer",
            client.query(
                "SELECT order_id, quantity, created_at, status, expires_at, payment_ref, offered
                 FROM orders
                 WHERE sale_id = $1 AND user_id = $2 ORDER BY created_at, order_id",
                &[&id.0, &user.as_str()],
            ),
        )
        .await?;
    rows.iter()
        .map(|row| {
            let checkout = checkout_at(row, 3)?;
            Ok(Order {
                status: checkout.status,
                expires_at: checkout.expires_at,
                payment_ref: checkout.payment_ref,
                offered: checkout.offered,
                order_id: row.get(0),
                sale_id: id,
                user_id: user.clone(),
                quantity: row.get::<_, i32>(1) as u32,
                created_at: row.get(2),
            })
        })
        .collect()
}

/// An order's checkout columns as stored (`status, expires_at, payment_ref, offered`).
pub(crate) struct CheckoutColumns {
    pub status: OrderStatus,
    pub expires_at: Option<time::OffsetDateTime>,
    pub payment_ref: Option<PaymentRef>,
    /// Made by a waitlist offer.
    pub offered: bool,
}

/// The columns `status, expires_at, payment_ref, offered` of `row` from `first` on.
pub(crate) fn checkout_at(row: &Row, first: usize) -> Result<CheckoutColumns, StoreError> {
    let status: &str = row.get(first);
    let status = OrderStatus::parse(status)
        .ok_or_else(|| StoreError::internal(format!("unknown order status {status:?}")))?;
    let payment_ref = row
        .get::<_, Option<&str>>(first + 2)
        .map(PaymentRef::parse)
        .transpose()
        .map_err(|e| StoreError::internal_from("a stored payment reference", e))?;
    Ok(CheckoutColumns {
        status,
        expires_at: row.get(first + 1),
        payment_ref,
        offered: row.get(first + 3),
    })
}

/// Up to `limit` of the sale's committed orders after `after`, in export order (by the
/// `orders_by_sale_time` index, so each page is a range scan however many orders the sale has).
pub(crate) async fn order_page(
    pg: &Postgres,
    id: SaleId,
    after: Option<OrderKey>,
    limit: usize,
) -> Result<Vec<Order>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let client = pg.client().await?;
    let rows = match after {
        None => {
            pg.call(
                "a page of a sale's orders",
                client.query(
                    "SELECT order_id, user_id, quantity, created_at, status, expires_at,
                            payment_ref, offered FROM orders
                     WHERE sale_id = $1 ORDER BY created_at, order_id LIMIT $2",
                    &[&id.0, &limit],
                ),
            )
            .await?
        }
        Some(after) => {
            pg.call(
                "a page of a sale's orders",
                client.query(
                    "SELECT order_id, user_id, quantity, created_at, status, expires_at,
                            payment_ref, offered FROM orders
                     WHERE sale_id = $1 AND (created_at, order_id) > ($2, $3)
                     ORDER BY created_at, order_id LIMIT $4",
                    &[&id.0, &after.created_at, &after.order_id, &limit],
                ),
            )
            .await?
        }
    };
    rows.iter()
        .map(|row| {
            let user: &str = row.get(1);
            let checkout = checkout_at(row, 4)?;
            Ok(Order {
                status: checkout.status,
                expires_at: checkout.expires_at,
                payment_ref: checkout.payment_ref,
                offered: checkout.offered,
                order_id: row.get(0),
                sale_id: id,
                user_id: UserId::parse(user).map_err(|e| {
                    StoreError::internal_from("reading a page of a sale's orders", e)
                })?,
                quantity: row.get::<_, i32>(2) as u32,
                created_at: row.get(3),
            })
        })
        .collect()
}

/// What the group commit reads of a sale's row to accept an order admitted in Redis.
struct SaleRow {
    epoch: i64,
    starts_at: time::OffsetDateTime,
    ends_at: time::OffsetDateTime,
    cancelled_at: Option<time::OffsetDateTime>,
}

impl SaleRow {
    /// Whether an order admitted under `epoch` at `at` (Redis's clock) may commit: admitted
    /// under the sale's current state, inside its window as PostgreSQL now holds it, and
    /// before any cancellation. Orders admitted before a change froze the sale were decided
    /// with it (counted as taken), and are admitted before its instant.
    fn admits(&self, epoch: i64, at: time::OffsetDateTime) -> bool {
        epoch == self.epoch
            && self.starts_at <= at
            && at < self.ends_at
            && self.cancelled_at.is_none_or(|cancelled| at < cancelled)
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// A connection whose transaction failed or timed out may be mid-transaction: never hand it to
/// anyone else.
fn drop_connection(client: deadpool_postgres::Object) {
    drop(deadpool_postgres::Object::take(client));
}

async fn commit_tx(
    client: &mut deadpool_postgres::Object,
    batch: &[PendingOrder],
) -> Result<HashSet<Uuid>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut sale_ids: Vec<i64> = batch.iter().map(|p| p.order.sale_id.0).collect();
    sale_ids.sort_unstable();
    sale_ids.dedup();
    // FOR KEY SHARE: concurrent groups of the same sale do not block each other here (only on
    // the final `sold` update), but a rebuild's FOR UPDATE waits for every group in flight,
    // and a group starting after the rebuild reads the new epoch.
    // The row also says what an operator's change committed (cancelled, a moved end): an
    // order admitted by a Redis that never took that change is refused here, so stale Redis
    // can cost a buyer a 503 but never confirm what the change forbids.
    let rows = tx
        .query(
            "SELECT id, epoch, starts_at, ends_at, cancelled_at FROM sales
             WHERE id = ANY($1) ORDER BY id FOR KEY SHARE",
            &[&sale_ids],
        )
        .await?;
    let rows: HashMap<i64, SaleRow> = rows
        .iter()
        .map(|r| {
            let row = SaleRow {
                epoch: r.get(1),
                starts_at: r.get(2),
                ends_at: r.get(3),
                cancelled_at: r.get(4),
            };
            (r.get(0), row)
        })
        .collect();
    let mut fresh: Vec<&PendingOrder> = batch
        .iter()
        .filter(|p| {
            rows.get(&p.order.sale_id.0)
                .is_some_and(|row| row.admits(p.epoch, p.order.created_at))
        })
        .collect();
    if fresh.is_empty() {
        tx.commit().await?;
        return Ok(HashSet::new());
    }
    // One lock order for every writer of `reservations` (see `resolve`).
    fresh.sort_by_key(|p| p.order.order_id);
    let ids: Vec<Uuid> = fresh.iter().map(|p| p.order.order_id).collect();
    let sids: Vec<i64> = fresh.iter().map(|p| p.order.sale_id.0).collect();
    let users: Vec<&str> = fresh.iter().map(|p| p.order.user_id.as_str()).collect();
    let qtys: Vec<i32> = fresh.iter().map(|p| p.order.quantity as i32).collect();
    let created: Vec<time::OffsetDateTime> = fresh.iter().map(|p| p.order.created_at).collect();
    let keys: Vec<Option<&str>> = fresh
        .iter()
        .map(|p| p.key.as_ref().map(IdempotencyKey::as_str))
        .collect();
    // One statement: claim the fence rows, write the orders that won them, raise the buyers'
    // holdings (one row per buyer, in one order for every instance so concurrent groups never
    // deadlock) and the sales' `sold`. The sold-out instant is the sale's latest order (the
    // last unit Redis admitted), which an earlier group may have committed: `last_sold_at`
    // carries it, read from the row as it is once a concurrent group has committed. The
    // CHECKs on `buyers` and `sales` refuse the whole statement if it would put anyone over
    // the limit or the sale over its stock (`commit` then splits the group to find the
    // offending orders).
    let won: HashSet<Uuid> = tx
        .query(
            "WITH input AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::int4[],
                                      $5::timestamptz[], $6::text[])
                     AS t(order_id, sale_id, user_id, quantity, created_at, idempotency_key)
             ), won AS (
                 INSERT INTO reservations (order_id, sale_id, resolution)
                 SELECT order_id, sale_id, 'committed' FROM input ORDER BY order_id
                 ON CONFLICT (order_id) DO NOTHING RETURNING order_id
             ), ins AS (
                 INSERT INTO orders (order_id, sale_id, user_id, quantity, created_at,
                                     idempotency_key, status, expires_at)
                 SELECT i.*,
                        CASE WHEN s.payment_window_secs IS NULL THEN 'confirmed'
                             ELSE 'reserved' END,
                        i.created_at + make_interval(secs => s.payment_window_secs)
                 FROM input i JOIN won USING (order_id) JOIN sales s ON s.id = i.sale_id
                 RETURNING sale_id, user_id, quantity, created_at
             ), held AS (
                 INSERT INTO buyers AS b (sale_id, user_id, held, per_user_limit)
                 SELECT ins.sale_id, ins.user_id, sum(ins.quantity)::int4, s.per_user_limit
                 FROM ins JOIN sales s ON s.id = ins.sale_id
                 GROUP BY ins.sale_id, ins.user_id, s.per_user_limit
                 ORDER BY ins.sale_id, ins.user_id
                 ON CONFLICT (sale_id, user_id) DO UPDATE SET held = b.held + excluded.held
             ), sold AS (
                 UPDATE sales SET sold = sales.sold + d.n,
                     last_sold_at = GREATEST(sales.last_sold_at, d.last),
                     sold_out_at = CASE WHEN sales.sold + d.n = sales.stock
                                        THEN COALESCE(sales.sold_out_at,
                                                      GREATEST(sales.last_sold_at, d.last))
                                        ELSE sales.sold_out_at END
                 FROM (SELECT sale_id, sum(quantity)::int4 AS n, max(created_at) AS last
                       FROM ins GROUP BY sale_id) d
                 WHERE sales.id = d.sale_id
             )
             SELECT order_id FROM won",
            &[&ids, &sids, &users, &qtys, &created, &keys],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().await?;
    Ok(won)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn an_order_is_admitted_only_under_the_epoch_window_and_cancellation_postgres_holds() {
        let row = SaleRow {
            epoch: 2,
            starts_at: datetime!(2026-01-01 10:00 UTC),
            ends_at: datetime!(2026-01-01 11:00 UTC),
            cancelled_at: Some(datetime!(2026-01-01 10:30 UTC)),
        };
        assert!(row.admits(2, datetime!(2026-01-01 10:00 UTC)));
        assert!(row.admits(2, datetime!(2026-01-01 10:29:59.999999 UTC)));
        assert!(!row.admits(1, datetime!(2026-01-01 10:10 UTC)), "old epoch");
        assert!(
            !row.admits(2, datetime!(2026-01-01 9:59:59.999999 UTC)),
            "before the start"
        );
        assert!(
            !row.admits(2, datetime!(2026-01-01 10:30 UTC)),
            "at the cancellation"
        );
        let open = SaleRow {
            cancelled_at: None,
            ..row
        };
        assert!(open.admits(2, datetime!(2026-01-01 10:59:59.999999 UTC)));
        assert!(
            !open.admits(2, datetime!(2026-01-01 11:00 UTC)),
            "at the end"
        );
    }
}
