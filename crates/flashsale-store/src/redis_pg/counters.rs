//! Operator counters (attempts, rejections by reason), kept off the hot path.
//!
//! Each instance counts in memory and adds its deltas to `sale_counters` in PostgreSQL about
//! once a second, so no Redis write is spent on statistics and they survive Redis losing its
//! data. The summary reads PostgreSQL and adds this instance's unflushed deltas; other
//! instances' last second may be missing from it.
//!
//! A flush is idempotent: it carries an id recorded in `counter_flushes` in the same statement,
//! and a flush that failed is retried later with the same id and the same deltas (new counts
//! go to the next one). So a flush that in fact landed although its answer was lost (the
//! connection broke around COMMIT) is never added twice.

use super::Inner;
use crate::{RejectionCounts, SaleStatus, StoreError, Summary};
use flashsale_core::{Rejection, SaleId};
use parking_lot::Mutex;
use std::collections::HashMap;
use uuid::Uuid;

/// Counts not yet flushed.
#[derive(Debug, Clone, Copy, Default)]
struct Delta {
    attempts: u64,
    rejections: RejectionCounts,
}

impl Delta {
    fn add(&mut self, other: &Delta) {
        let (a, b) = (&mut self.rejections, &other.rejections);
        self.attempts += other.attempts;
        a.sale_not_active += b.sale_not_active;
        a.sold_out += b.sold_out;
        a.already_purchased += b.already_purchased;
        a.limit_exceeded += b.limit_exceeded;
        a.insufficient_stock += b.insufficient_stock;
        a.unavailable += b.unavailable;
    }
}

/// Deltas taken for one flush, with the id that makes applying them idempotent.
struct Batch {
    id: Uuid,
    deltas: Vec<(SaleId, Delta)>,
}

/// This instance's unflushed counts, per sale.
#[derive(Default)]
pub(crate) struct Counters {
    deltas: Mutex<HashMap<SaleId, Delta>>,
    /// A flush that failed (it may or may not have landed), retried first with its own id.
    /// The lock is held by a flush from taking the deltas until PostgreSQL has them, and by a
    /// summary while it reads both, so a summary never sees a delta twice or not at all.
    unsent: tokio::sync::Mutex<Option<Batch>>,
}

impl Counters {
    /// One decided attempt: admitted (`None`) or rejected.
    pub(crate) fn attempt(&self, id: SaleId, rejection: Option<Rejection>) {
        let mut deltas = self.deltas.lock();
        let d = deltas.entry(id).or_default();
        d.attempts += 1;
        if let Some(rejection) = rejection {
            d.rejections.count(rejection);
        }
    }

    /// An admitted attempt whose order could not be made durable.
    pub(crate) fn unavailable(&self, id: SaleId) {
        self.deltas
            .lock()
            .entry(id)
            .or_default()
            .rejections
            .unavailable += 1;
    }

    fn pending(&self, id: SaleId) -> Delta {
        self.deltas.lock().get(&id).copied().unwrap_or_default()
    }

    /// Adds the deltas to PostgreSQL. A failed flush is kept whole, with its id, and retried
    /// first next time; new deltas wait for the flush after it.
    pub(crate) async fn flush(&self, inner: &Inner) -> Result<(), StoreError> {
        let mut unsent = self.unsent.lock().await;
        if let Some(batch) = unsent.as_ref() {
            write(inner, batch).await?;
            *unsent = None;
        }
        let deltas: Vec<(SaleId, Delta)> = self.deltas.lock().drain().collect();
        if deltas.is_empty() {
            return Ok(());
        }
        let batch = Batch {
            id: Uuid::now_v7(),
            deltas,
        };
        let result = write(inner, &batch).await;
        if result.is_err() {
            *unsent = Some(batch);
        }
        result
    }
}

async fn write(inner: &Inner, batch: &Batch) -> Result<(), StoreError> {
    let taken = &batch.deltas;
    let col =
        |f: fn(&Delta) -> u64| -> Vec<i64> { taken.iter().map(|(_, d)| f(d) as i64).collect() };
    let ids: Vec<i64> = taken.iter().map(|(id, _)| id.0).collect();
    let (attempts, not_active, sold_out) = (
        col(|d| d.attempts),
        col(|d| d.rejections.sale_not_active),
        col(|d| d.rejections.sold_out),
    );
    let (already, limit, insufficient, unavailable) = (
        col(|d| d.rejections.already_purchased),
        col(|d| d.rejections.limit_exceeded),
        col(|d| d.rejections.insufficient_stock),
        col(|d| d.rejections.unavailable),
    );
    let client = inner.pg().await?;
    inner
        .pg_call(
            "flush counters",
            client.execute(
                "WITH first AS (
                     INSERT INTO counter_flushes (flush_id) VALUES ($9)
                     ON CONFLICT (flush_id) DO NOTHING RETURNING flush_id
                 ), pruned AS (
                     DELETE FROM counter_flushes WHERE flushed_at < now() - interval '1 day'
                 )
                 INSERT INTO sale_counters AS c (sale_id, attempts, sale_not_active, sold_out,
                     already_purchased, limit_exceeded, insufficient_stock, unavailable)
                 SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[],
                                      $5::int8[], $6::int8[], $7::int8[], $8::int8[])
                 WHERE EXISTS (SELECT 1 FROM first)
                 ON CONFLICT (sale_id) DO UPDATE SET
                     attempts = c.attempts + excluded.attempts,
                     sale_not_active = c.sale_not_active + excluded.sale_not_active,
                     sold_out = c.sold_out + excluded.sold_out,
                     already_purchased = c.already_purchased + excluded.already_purchased,
                     limit_exceeded = c.limit_exceeded + excluded.limit_exceeded,
                     insufficient_stock = c.insufficient_stock + excluded.insufficient_stock,
                     unavailable = c.unavailable + excluded.unavailable",
                &[
                    &ids,
                    &attempts,
                    &not_active,
                    &sold_out,
                    &already,
                    &limit,
                    &insufficient,
                    &unavailable,
                    &batch.id,
                ],
            ),
        )
        .await
        .map(drop)
}

/// The operator's summary: committed figures and counters from PostgreSQL, plus what this
/// instance has not flushed yet.
pub(crate) async fn summary(inner: &Inner, status: SaleStatus) -> Result<Summary, StoreError> {
    let id = status.sale.id;
    let unsent = inner.counters.unsent.lock().await;
    let unsent_id = unsent.as_ref().map(|b| b.id);
    let client = inner.pg().await?;
    let row = inner
        .pg_call(
            "summary",
            client.query_one(
                "SELECT (SELECT count(*) FROM orders WHERE sale_id = $1),
                        (SELECT COALESCE(sum(quantity), 0)::int8 FROM orders WHERE sale_id = $1),
                        c.attempts, c.sale_not_active, c.sold_out, c.already_purchased,
                        c.limit_exceeded, c.insufficient_stock, c.unavailable,
                        EXISTS (SELECT 1 FROM counter_flushes WHERE flush_id = $2)
                 FROM (SELECT 1) AS one
                 LEFT JOIN sale_counters c ON c.sale_id = $1",
                &[&id.0, &unsent_id],
            ),
        )
        .await?;
    let n = |i: usize| row.get::<_, Option<i64>>(i).unwrap_or(0) as u64;
    let mut counted = Delta {
        attempts: n(2),
        rejections: RejectionCounts {
            sale_not_active: n(3),
            sold_out: n(4),
            already_purchased: n(5),
            limit_exceeded: n(6),
            insufficient_stock: n(7),
            unavailable: n(8),
        },
    };
    counted.add(&inner.counters.pending(id));
    // A failed flush counts as pending unless it did land after all.
    if let Some(batch) = unsent.as_ref()
        && !row.get::<_, bool>(9)
        && let Some((_, d)) = batch.deltas.iter().find(|(sale, _)| *sale == id)
    {
        counted.add(d);
    }
    Ok(Summary {
        status,
        attempts: counted.attempts,
        confirmed_orders: row.get::<_, i64>(0) as u64,
        confirmed_units: row.get::<_, i64>(1) as u64,
        rejections: counted.rejections,
    })
}
