//! The single SQLite writer: a dedicated thread that commits orders in groups.
//!
//! Buyers' tasks send a [`Write`] and await its reply; the thread takes everything queued (up to
//! [`MAX_BATCH`]) into one transaction, so one fsync makes a whole group durable. Under light
//! load a group is one order and the latency is one fsync; under a herd the group grows and the
//! fsync cost is shared. A failed commit fails every write of the group: each buyer is told,
//! and the store gives their stock back.

use super::book::{PersistedCounters, SaleBook};
use super::schema::to_micros;
use crate::model::Order;
use flashsale_core::{IdempotencyKey, NewSale, SaleId};
use parking_lot::RwLock;
use rusqlite::{Connection, params};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The most writes committed in one transaction.
pub(crate) const MAX_BATCH: usize = 4096;
/// How often counters are persisted while they change.
const COUNTER_FLUSH: Duration = Duration::from_millis(500);

/// One request to the writer.
pub(crate) enum Write {
    /// Make an admitted order durable.
    Order {
        order: Order,
        key: Option<IdempotencyKey>,
        sold_out: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Create a sale and return its id.
    CreateSale {
        new: NewSale,
        reply: oneshot::Sender<Result<SaleId, String>>,
    },
    /// Commit what is queued, persist counters, reply, and stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// The writer thread's body: runs until every sender is gone.
pub(crate) fn run(
    mut conn: Connection,
    rx: Receiver<Write>,
    books: Arc<RwLock<BTreeMap<SaleId, Arc<SaleBook>>>>,
) {
    let mut saved: HashMap<SaleId, PersistedCounters> = HashMap::new();
    let mut last_flush = Instant::now();
    let mut batch = Vec::with_capacity(256);
    loop {
        match rx.recv_timeout(COUNTER_FLUSH) {
            Ok(first) => batch.push(first),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                flush_counters(&mut conn, &books, &mut saved);
                return;
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let mut shutdown = None;
        let mut orders = Vec::with_capacity(batch.len());
        for write in batch.drain(..) {
            match write {
                Write::Order {
                    order,
                    key,
                    sold_out,
                    reply,
                } => orders.push((order, key, sold_out, reply)),
                Write::CreateSale { new, reply } => {
                    let _ = reply.send(create_sale(&conn, &new).map_err(|e| e.to_string()));
                }
                Write::Shutdown { reply } => shutdown = Some(reply),
            }
        }
        if !orders.is_empty() {
            let result = commit_orders(&mut conn, &orders).map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(error = %e, orders = orders.len(), "order batch failed to commit");
            }
            for (_, _, _, reply) in orders {
                // A buyer who went away still had its order committed; nothing to do.
                let _ = reply.send(result.clone());
            }
        }
        if shutdown.is_some() || last_flush.elapsed() >= COUNTER_FLUSH {
            flush_counters(&mut conn, &books, &mut saved);
            last_flush = Instant::now();
        }
        if let Some(reply) = shutdown {
            let _ = reply.send(());
            return;
        }
    }
}

type PendingOrder = (
    Order,
    Option<IdempotencyKey>,
    bool,
    oneshot::Sender<Result<(), String>>,
);

fn commit_orders(conn: &mut Connection, orders: &[PendingOrder]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO orders (order_id, sale_id, user_id, quantity, created_at_us, idempotency_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut sold: BTreeMap<SaleId, i64> = BTreeMap::new();
        for (order, key, _, _) in orders {
            insert.execute(params![
                order.order_id.as_bytes().as_slice(),
                order.sale_id.0,
                order.user_id.as_str(),
                order.quantity,
                to_micros(order.created_at),
                key.as_ref().map(IdempotencyKey::as_str),
            ])?;
            *sold.entry(order.sale_id).or_default() += i64::from(order.quantity);
        }
        let mut add_sold = tx.prepare_cached("UPDATE sales SET sold = sold + ?2 WHERE id = ?1")?;
        for (sale, units) in sold {
            add_sold.execute(params![sale.0, units])?;
        }
        let mut sold_out = tx.prepare_cached(
            "UPDATE sales SET sold_out_at_us = ?2 WHERE id = ?1 AND sold = stock",
        )?;
        for (order, _, last, _) in orders {
            if *last {
                sold_out.execute(params![order.sale_id.0, to_micros(order.created_at)])?;
            }
        }
    }
    tx.commit()
}

fn create_sale(conn: &Connection, new: &NewSale) -> rusqlite::Result<SaleId> {
    conn.execute(
        "INSERT INTO sales (name, starts_at_us, ends_at_us, stock, per_user_limit) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            new.name,
            to_micros(new.starts_at),
            to_micros(new.ends_at),
            new.stock,
            new.per_user_limit
        ],
    )?;
    Ok(SaleId(conn.last_insert_rowid()))
}

fn flush_counters(
    conn: &mut Connection,
    books: &RwLock<BTreeMap<SaleId, Arc<SaleBook>>>,
    saved: &mut HashMap<SaleId, PersistedCounters>,
) {
    let changed: Vec<(SaleId, PersistedCounters)> = books
        .read()
        .iter()
        .map(|(id, book)| (*id, book.persisted_counters()))
        .filter(|(id, c)| saved.get(id) != Some(c))
        .collect();
    if changed.is_empty() {
        return;
    }
    let result = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO sale_counters (sale_id, attempts, sale_not_active, sold_out, already_purchased,
                                            limit_exceeded, insufficient_stock, unavailable)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (sale_id) DO UPDATE SET
                     attempts = excluded.attempts, sale_not_active = excluded.sale_not_active,
                     sold_out = excluded.sold_out, already_purchased = excluded.already_purchased,
                     limit_exceeded = excluded.limit_exceeded,
                     insufficient_stock = excluded.insufficient_stock, unavailable = excluded.unavailable",
            )?;
            for (id, c) in &changed {
                let r = &c.rejections;
                upsert.execute(params![
                    id.0,
                    c.attempts as i64,
                    r.sale_not_active as i64,
                    r.sold_out as i64,
                    r.already_purchased as i64,
                    r.limit_exceeded as i64,
                    r.insufficient_stock as i64,
                    r.unavailable as i64
                ])?;
            }
        }
        tx.commit()
    })();
    match result {
        Ok(()) => saved.extend(changed),
        // Counters are statistics: a failed flush is retried next time, orders are unaffected.
        Err(e) => tracing::warn!(error = %e, "could not persist sale counters"),
    }
}
