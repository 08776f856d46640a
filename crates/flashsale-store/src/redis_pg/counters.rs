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

use super::connections::Postgres;
use crate::CheckoutCounts;
use crate::counter_columns;
use crate::{RejectionCounts, SaleStatus, StoreError, Summary};
use flashsale_core::{Outcome, Rejection, SaleId};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// Counts not yet flushed.
#[derive(Debug, Clone, Copy, Default)]
struct Delta {
    attempts: u64,
    rejections: RejectionCounts,
}

impl Delta {
    fn add(&mut self, other: &Delta) {
        self.attempts += other.attempts;
        self.rejections.add(&other.rejections);
    }
}

/// Deltas taken for one flush, with the id that makes applying them idempotent.
struct Batch {
    id: Uuid,
    deltas: Vec<(SaleId, Delta)>,
}

/// This instance's unflushed counts, per sale, and where they are flushed to.
pub(crate) struct Counters {
    pg: Arc<Postgres>,
    deltas: Mutex<HashMap<SaleId, Delta>>,
    /// A flush that failed (it may or may not have landed), retried first with its own id.
    /// The lock is held by a flush from taking the deltas until PostgreSQL has them, and by a
    /// summary while it reads both, so a summary never sees a delta twice or not at all.
    unsent: tokio::sync::Mutex<Option<Batch>>,
}

impl Counters {
    /// No counts yet; flushed to `pg`.
    pub(crate) fn new(pg: Arc<Postgres>) -> Self {
        Self {
            pg,
            deltas: Mutex::default(),
            unsent: tokio::sync::Mutex::default(),
        }
    }

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
            .record(Outcome::Unavailable);
    }

    fn pending(&self, id: SaleId) -> Delta {
        self.deltas.lock().get(&id).copied().unwrap_or_default()
    }

    /// Adds the deltas to PostgreSQL. A failed flush is kept whole, with its id, and retried
    /// first next time; new deltas wait for the flush after it.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let mut unsent = self.unsent.lock().await;
        if let Some(batch) = unsent.as_ref() {
            write(&self.pg, batch).await?;
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
        let result = write(&self.pg, &batch).await;
        if result.is_err() {
            *unsent = Some(batch);
        }
        result
    }
}

async fn write(pg: &Postgres, batch: &Batch) -> Result<(), StoreError> {
    let taken = &batch.deltas;
    let ids: Vec<i64> = taken.iter().map(|(id, _)| id.0).collect();
    let attempts: Vec<i64> = taken.iter().map(|(_, d)| d.attempts as i64).collect();
    let counts: Vec<Vec<i64>> = Outcome::COUNTED
        .into_iter()
        .map(|o| {
            taken
                .iter()
                .map(|(_, d)| d.rejections.get(o) as i64)
                .collect()
        })
        .collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids, &attempts];
    params.extend(counts.iter().map(|c| c as &(dyn ToSql + Sync)));
    params.push(&batch.id);
    let client = pg.client().await?;
    pg.call("flush counters", client.execute(flush_sql(), &params))
        .await
        .map(drop)
}

/// The flush: applies one batch of deltas unless its id was applied before (`$1` sale ids,
/// `$2` attempts, then one array per counter column, then the flush id).
fn flush_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let n = counter_columns::names().count();
        let flush_id = n + 3;
        let arrays = (1..=n + 2)
            .map(|i| format!("${i}::int8[]"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "WITH first AS (
                 INSERT INTO counter_flushes (flush_id) VALUES (${flush_id})
                 ON CONFLICT (flush_id) DO NOTHING RETURNING flush_id
             ), pruned AS (
                 DELETE FROM counter_flushes WHERE flushed_at < now() - interval '1 day'
             )
             INSERT INTO sale_counters AS c (sale_id, attempts, {columns})
             SELECT * FROM UNNEST({arrays})
             WHERE EXISTS (SELECT 1 FROM first)
             ON CONFLICT (sale_id) DO UPDATE SET
                 attempts = c.attempts + excluded.attempts, {updates}",
            columns = counter_columns::list(str::to_owned),
            updates = counter_columns::list(|c| format!("{c} = c.{c} + excluded.{c}")),
        )
    })
}

/// The summary's checkout counts of sale `$1`, from its durable orders and waitlist rows
/// (CO-11): hold orders ever (offers included), paid, expired, cancelled, offers made, offers
/// paid, joins ever (history rows are kept, so a buyer who left and joined again counts twice).
const CHECKOUT_COUNTS: &str = "
    SELECT count(*),
           count(*) FILTER (WHERE status = 'paid'),
           count(*) FILTER (WHERE status = 'expired'),
           count(*) FILTER (WHERE status = 'cancelled'),
           count(*) FILTER (WHERE offered),
           count(*) FILTER (WHERE offered AND status = 'paid'),
           (SELECT count(*) FROM waitlist WHERE sale_id = $1)
    FROM orders WHERE sale_id = $1 AND expires_at IS NOT NULL";

/// The summary's query: `$1` the sale, `$2` the id of a failed flush; columns: orders, units,
/// attempts, each counter, whether that flush landed.
fn summary_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT (SELECT count(*) FROM orders WHERE sale_id = $1),
                    (SELECT COALESCE(sum(quantity), 0)::int8 FROM orders WHERE sale_id = $1),
                    c.attempts, {},
                    EXISTS (SELECT 1 FROM counter_flushes WHERE flush_id = $2)
             FROM (SELECT 1) AS one
             LEFT JOIN sale_counters c ON c.sale_id = $1",
            counter_columns::list(|c| format!("c.{c}"))
        )
    })
}

impl Counters {
    /// The operator's summary: committed figures and counters from PostgreSQL, plus what this
    /// instance has not flushed yet.
    pub(crate) async fn summary(&self, status: SaleStatus) -> Result<Summary, StoreError> {
        let id = status.sale.id;
        let unsent = self.unsent.lock().await;
        let unsent_id = unsent.as_ref().map(|b| b.id);
        let client = self.pg.client().await?;
        let row = self
            .pg
            .call(
                "summary",
                client.query_one(summary_sql(), &[&id.0, &unsent_id]),
            )
            .await?;
        let checkout = self
            .pg
            .call(
                "checkout counts",
                client.query_one(CHECKOUT_COUNTS, &[&id.0]),
            )
            .await?;
        drop(client);
        let c = |i: usize| checkout.get::<_, i64>(i) as u64;
        let checkout = CheckoutCounts {
            reserved: c(0),
            paid: c(1),
            expired: c(2),
            cancelled: c(3),
            offers_made: c(4),
            offers_taken: c(5),
            waitlist_joins: c(6),
        };
        let n = |i: usize| row.get::<_, Option<i64>>(i).unwrap_or(0) as u64;
        let mut counted = Delta {
            attempts: n(2),
            rejections: RejectionCounts::default(),
        };
        for (i, outcome) in Outcome::COUNTED.into_iter().enumerate() {
            counted.rejections.set(outcome, n(3 + i));
        }
        let landed = 3 + Outcome::COUNTED.len();
        counted.add(&self.pending(id));
        // A failed flush counts as pending unless it did land after all.
        if let Some(batch) = unsent.as_ref()
            && !row.get::<_, bool>(landed)
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
            checkout,
        })
    }
}
