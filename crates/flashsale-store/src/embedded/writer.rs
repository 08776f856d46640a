//! The single SQLite writer and its syncer: a pipelined group commit.
//!
//! Buyers' tasks send a [`Write`] and await its reply. The writer thread takes everything queued
//! (up to [`MAX_BATCH`]) into one transaction and commits it with `synchronous=NORMAL`, which
//! appends the group to the WAL without waiting for the disk. It then hands the group's replies
//! to the syncer thread, which `fdatasync`s the WAL file and only then answers. While one fsync
//! runs, the writer is already committing the next group, so the disk's flush latency bounds
//! the latency of an answer but no longer the rate of commits; one fsync covers every group
//! written before it.
//!
//! Why this is durable: a commit is in the WAL file once it returns, and SQLite (WAL,
//! `synchronous=NORMAL`) syncs the WAL before every checkpoint and syncs the database after it,
//! so a frame is either still in the WAL, which our fsync flushed, or already in a synced
//! database file. A failed commit fails every write of its group: each buyer is told and the
//! store gives their stock back. A failed fsync leaves the outcome on disk unknown; like
//! PostgreSQL, we then stop the process rather than answer anything untrue: a restart rebuilds
//! memory from what the disk really holds.

use super::book::{PersistedCounters, SaleBook};
use super::schema::to_micros;
use crate::model::Order;
use flashsale_core::{IdempotencyKey, NewSale, SaleId};
use parking_lot::RwLock;
use rusqlite::{Connection, params};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The most writes committed in one transaction.
pub(crate) const MAX_BATCH: usize = 4096;
/// While a flush is running, the writer gathers at least this many writes before committing:
/// a group committed now would wait for the running flush anyway, and each commit costs CPU.
/// Measured under wrk: without it, commits averaged 7 orders and took the CPU the HTTP layer
/// needed. When the syncer is idle, whatever is queued is committed at once (low latency).
const MIN_GROUP_WHILE_FLUSHING: usize = 64;
/// How long the writer waits for more writes while gathering.
const GATHER_WAIT: Duration = Duration::from_micros(200);
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
    /// Commit what is queued, persist counters, reply once durable, and stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// A reply the syncer sends once the WAL is on disk.
pub(crate) enum Ack {
    Order(oneshot::Sender<Result<(), String>>),
    Sale(oneshot::Sender<Result<SaleId, String>>, SaleId),
    Shutdown(oneshot::Sender<()>),
}

/// The syncer thread's body: fsyncs the WAL for every group the writer committed, then
/// answers. Runs until the writer is gone.
pub(crate) fn sync(wal: File, acks: Receiver<Vec<Ack>>, flushing: Arc<AtomicBool>) {
    while let Ok(first) = acks.recv() {
        let mut groups = vec![first];
        groups.extend(acks.try_iter());
        flushing.store(true, Ordering::Release);
        if let Err(e) = wal.sync_data() {
            tracing::error!(error = %e, "fsync of the WAL failed: stopping so that no answer is untrue");
            std::process::abort();
        }
        flushing.store(false, Ordering::Release);
        let mut stop = false;
        for ack in groups.into_iter().flatten() {
            match ack {
                // A buyer who went away still had its order committed; nothing to do.
                Ack::Order(reply) => drop(reply.send(Ok(()))),
                Ack::Sale(reply, id) => drop(reply.send(Ok(id))),
                Ack::Shutdown(reply) => {
                    let _ = reply.send(());
                    stop = true;
                }
            }
        }
        if stop {
            return;
        }
    }
}

/// The writer thread's body: runs until every sender is gone.
pub(crate) fn run(
    mut conn: Connection,
    rx: Receiver<Write>,
    acks: Sender<Vec<Ack>>,
    flushing: Arc<AtomicBool>,
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
                let _ = acks.send(Vec::new());
                return;
            }
        }
        batch.extend(rx.try_iter().take(MAX_BATCH.saturating_sub(batch.len())));
        while !batch.is_empty()
            && batch.len() < MIN_GROUP_WHILE_FLUSHING
            && flushing.load(Ordering::Acquire)
        {
            match rx.recv_timeout(GATHER_WAIT) {
                Ok(write) => batch.push(write),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            batch.extend(rx.try_iter().take(MAX_BATCH.saturating_sub(batch.len())));
        }
        let mut shutdown = None;
        let mut orders = Vec::with_capacity(batch.len());
        let mut durable = Vec::with_capacity(batch.len() + 1);
        for write in batch.drain(..) {
            match write {
                Write::Order {
                    order,
                    key,
                    sold_out,
                    reply,
                } => orders.push((order, key, sold_out, reply)),
                Write::CreateSale { new, reply } => match create_sale(&conn, &new) {
                    Ok(id) => durable.push(Ack::Sale(reply, id)),
                    Err(e) => drop(reply.send(Err(e.to_string()))),
                },
                Write::Shutdown { reply } => shutdown = Some(reply),
            }
        }
        if !orders.is_empty() {
            match commit_orders(&mut conn, &orders) {
                Ok(()) => {
                    durable.extend(orders.into_iter().map(|(_, _, _, reply)| Ack::Order(reply)))
                }
                Err(e) => {
                    tracing::error!(error = %e, orders = orders.len(), "order batch failed to commit");
                    for (_, _, _, reply) in orders {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
        }
        if shutdown.is_some() || last_flush.elapsed() >= COUNTER_FLUSH {
            flush_counters(&mut conn, &books, &mut saved);
            last_flush = Instant::now();
        }
        let stop = shutdown.is_some();
        durable.extend(shutdown.map(Ack::Shutdown));
        // The syncer answers once the WAL holding these commits is on disk.
        if (!durable.is_empty() && acks.send(durable).is_err()) || stop {
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
