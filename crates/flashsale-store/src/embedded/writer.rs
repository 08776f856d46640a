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
//!
//! Each order group also writes the counters of the sales that changed, in the same
//! transaction, so the persisted rejections never lag the orders by more than the quiet
//! periods in between (flushed every [`COUNTER_FLUSH`]).
//!
//! Every statement a group runs, `BEGIN` and `COMMIT` included ([`WriteTx`]), comes from the
//! connection's statement cache (six statements: the default capacity of 16 holds them all),
//! so no group parses SQL again. Hold-mode groups add their own cached statements (a
//! reservation's insert, the units moved, a transition's order update and ledger row): an
//! instant-mode group runs none of them.

use super::book::{Decided, ListWrite, PersistedCounters, Reservation, SaleBook};
use super::schema::{SALE_COLUMNS, checkout_columns, sale_of_row, to_micros};
use super::waitlist::ListOp;
use crate::counter_columns;
use crate::in_flight::PurchaseHold;
use crate::ledger::{LedgerCause, LedgerEntry, LedgerKey, LedgerSource, change_entry};
use crate::model::{Order, SaleStatus};
use crate::product_columns::ProductRow;
use crate::{PurchaseOutcome, StoreError};
use flashsale_core::{IdempotencyKey, NewSale, Sale, SaleId, change::changed_fields};
use parking_lot::RwLock;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::oneshot;

/// The most writes committed in one transaction.
pub(crate) const MAX_BATCH: usize = 4096;
/// While a flush is running, the writer gathers at least this many writes before committing:
/// a group committed now would wait for the running flush anyway, and each commit costs CPU.
/// Measured under wrk: without it, commits averaged 7 orders and took the CPU the HTTP layer
/// needed. When the syncer is idle, whatever is queued is committed at once (low latency).
const MIN_GROUP_WHILE_FLUSHING: usize = 64;
/// How long the writer sleeps between looks at the queue while gathering.
const GATHER_WAIT: Duration = Duration::from_micros(200);
/// How often counters are persisted while they change.
const COUNTER_FLUSH: Duration = Duration::from_millis(500);
/// Once the WAL holds this many frames (about 4 MiB of 4 KiB pages), the writer checkpoints
/// it itself so that its next commit starts the WAL from the beginning again. The background
/// checkpointer alone never catches up while commits keep coming: under a steady load the WAL
/// grew by about 1 KiB per purchase without end (255 MB in 10 s under wrk), every fsync had to
/// commit the file's growth to the file system's journal too, and the backlog was left to
/// copy once the load stopped.
pub const WAL_RESTART_FRAMES: i32 = 1024;

/// Why the writer could not make a write durable (nothing of it was written).
#[derive(Debug, Error)]
pub(crate) enum WriteError {
    /// The order's group failed to commit; every order of the group fails with it.
    #[error("committing a group of orders to SQLite")]
    Orders(#[source] Arc<rusqlite::Error>),
    /// The sale could not be inserted.
    #[error("creating a sale in SQLite")]
    Sale(#[source] rusqlite::Error),
    /// An operator's change could not be written.
    #[error("changing a sale in SQLite")]
    Change(#[source] rusqlite::Error),
}

/// One request to the writer.
pub(crate) enum Write {
    /// Make an admitted order durable.
    Order(PendingOrder),
    /// Make an order's decided transition durable, in the same group as orders.
    Transition(TransitionWrite),
    /// Make a waitlist join or leave durable, in the same group as orders.
    List(ListRequest),
    /// Create a sale (with its ledger entry, decided at `at`), add its book once durable, and
    /// return it.
    CreateSale {
        new: NewSale,
        at: time::OffsetDateTime,
        reply: oneshot::Sender<Result<Sale, WriteError>>,
    },
    /// Write an operator's change decided by the book (which is changing until it is in
    /// place), with its record; put it in the book once durable and answer the sale's status.
    ChangeSale {
        change: SaleChangeWrite,
        reply: oneshot::Sender<Result<SaleStatus, WriteError>>,
    },
    /// Commit what is queued, persist counters, reply once durable, and stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// An operator's change on its way to the disk.
pub(crate) struct SaleChangeWrite {
    /// The sale's book, changing until this write ends.
    pub book: Arc<SaleBook>,
    /// `edit` or `cancel`.
    pub kind: &'static str,
    /// The sale before.
    pub old: Arc<Sale>,
    /// The sale after.
    pub new: Sale,
    /// When it was decided.
    pub at: time::OffsetDateTime,
}

/// An admitted order on its way to the disk. Like a transition, it is settled by whoever
/// finishes it, not by whoever waits for it: the syncer confirms it in the book once durable,
/// the writer undoes it if its group fails, and dropping it unwritten (the writer gone) undoes
/// it too. Each then ends the caller's hold and answers, so a caller that goes away leaves
/// neither stock nor its hold taken, and no task per purchase is needed to make sure of it.
pub(crate) struct PendingOrder {
    book: Arc<SaleBook>,
    /// Taken when the order is settled; `None` only after that.
    reservation: Option<Reservation>,
    hold: PurchaseHold,
    reply: Option<oneshot::Sender<Result<PurchaseOutcome, StoreError>>>,
}

impl PendingOrder {
    /// The reservation `book` took, to be made durable; `reply` hears how it ended.
    pub(crate) fn new(
        book: Arc<SaleBook>,
        reservation: Reservation,
        hold: PurchaseHold,
        reply: oneshot::Sender<Result<PurchaseOutcome, StoreError>>,
    ) -> Self {
        Self {
            book,
            reservation: Some(reservation),
            hold,
            reply: Some(reply),
        }
    }

    /// The order to write and its idempotency key.
    fn row(&self) -> Option<(&Order, Option<&IdempotencyKey>)> {
        let reservation = self.reservation.as_ref()?;
        Some((&reservation.order, reservation.key.as_ref().map(|c| &c.key)))
    }

    /// The order is durable: confirm it in the book, end the hold, answer.
    fn durable(mut self) {
        if let Some(reservation) = self.reservation.take() {
            let outcome = Ok(self.book.confirm(reservation));
            self.answer(outcome);
        }
    }

    /// Nothing of it was written (`None`: the writer is gone): give the stock back, end the
    /// hold, answer.
    fn fail(&mut self, e: Option<WriteError>) {
        if let Some(reservation) = self.reservation.take() {
            self.book.undo(reservation);
            self.answer(Err(match e {
                Some(e) => StoreError::unavailable_from(
                    "the order could not be made durable; nothing was taken",
                    e,
                ),
                None => StoreError::ShuttingDown,
            }));
        }
    }

    fn answer(&mut self, outcome: Result<PurchaseOutcome, StoreError>) {
        std::mem::take(&mut self.hold).end(&outcome);
        if let Some(reply) = self.reply.take() {
            // A caller who went away still had its order settled; nothing to tell.
            let _ = reply.send(outcome);
        }
    }
}

impl Drop for PendingOrder {
    fn drop(&mut self) {
        self.fail(None);
    }
}

/// A decided transition on its way to the disk. Whatever becomes of it, the book's transition
/// is finished by the writer (failed) or the syncer (durable), not by whoever waits for it: a
/// caller that goes away (or the expiry timer, which does not wait) cannot leave the order in
/// transition.
pub(crate) struct TransitionWrite {
    /// The order's sale.
    pub book: Arc<SaleBook>,
    /// The decision.
    pub decided: Decided,
    /// Answered with the order as it is now once durable, or with why nothing changed.
    pub reply: Option<oneshot::Sender<Result<Order, WriteError>>>,
}

impl TransitionWrite {
    /// The writer is gone: end the transition with nothing changed (the caller, if any, is
    /// told by its reply channel closing).
    pub(crate) fn abandon(self) {
        self.book.finish_transition(&self.decided, None);
    }

    /// Nothing of it was written: end the transition with nothing changed and tell the caller.
    pub(crate) fn fail(self, e: WriteError) {
        self.book.finish_transition(&self.decided, None);
        if let Some(reply) = self.reply {
            let _ = reply.send(Err(e));
        }
    }
}

/// A waitlist join or leave on its way to the disk. Like a transition, the book's entry is
/// settled by the writer (failed) or the syncer (durable), whoever still waits for it.
pub(crate) struct ListRequest {
    /// The sale's book.
    pub book: Arc<SaleBook>,
    /// The decision.
    pub write: ListWrite,
    /// Answered once durable, or with why nothing changed.
    pub reply: oneshot::Sender<Result<(), WriteError>>,
}

impl ListRequest {
    /// Nothing of it was written (or the writer is gone): undo it in the book, tell the caller.
    pub(crate) fn fail(self, e: Option<WriteError>) {
        self.book.finish_list(&self.write, false);
        if let Some(e) = e {
            let _ = self.reply.send(Err(e));
        }
    }
}

/// Whether the syncer is flushing, and how it wakes a writer gathering while it flushes.
#[derive(Default)]
pub(crate) struct Flushing {
    busy: AtomicBool,
    writer: OnceLock<std::thread::Thread>,
}

impl Flushing {
    fn begin(&self) {
        self.busy.store(true, Ordering::Release);
    }

    /// The flush is done: a writer gathering can commit at once.
    fn end(&self) {
        self.busy.store(false, Ordering::Release);
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }

    fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }
}

/// A reply the syncer sends once the WAL is on disk.
pub(crate) enum Ack {
    /// An order is durable.
    Order(PendingOrder),
    /// A sale is durable: add its book (with its ledger entry, unless it was created before
    /// under the same key), then answer with it.
    Sale(
        oneshot::Sender<Result<Sale, WriteError>>,
        Sale,
        Option<LedgerEntry>,
    ),
    /// A change is durable: put it in the book with its ledger entry, if it has one, then
    /// answer with the sale's status.
    Change(
        oneshot::Sender<Result<SaleStatus, WriteError>>,
        Arc<SaleBook>,
        Sale,
        Option<LedgerEntry>,
    ),
    /// A transition is durable: apply it with its ledger entry, then answer with the order.
    Transition(TransitionWrite, LedgerEntry),
    /// A waitlist join or leave is durable: apply it in the book, then answer.
    List(ListRequest),
    /// Everything before is durable and the writer has stopped.
    Shutdown(oneshot::Sender<()>),
}

/// The syncer thread's body: fsyncs the WAL for every group the writer committed, then
/// answers. Runs until the writer is gone.
pub(crate) fn sync(
    wal: File,
    acks: Receiver<Vec<Ack>>,
    flushing: Arc<Flushing>,
    books: Arc<RwLock<BTreeMap<SaleId, Arc<SaleBook>>>>,
) {
    while let Ok(first) = acks.recv() {
        let mut groups = vec![first];
        groups.extend(acks.try_iter());
        flushing.begin();
        if let Err(e) = wal.sync_data() {
            tracing::error!(error = %e, "fsync of the WAL failed: stopping so that no answer is untrue");
            std::process::abort();
        }
        flushing.end();
        let mut stop = false;
        for ack in groups.into_iter().flatten() {
            match ack {
                Ack::Order(order) => order.durable(),
                // The book is added here, not by the caller, so a caller that went away still
                // leaves a sale that answers.
                Ack::Sale(reply, sale, entry) => {
                    // A sale created before under the same key already has its book.
                    books.write().entry(sale.id).or_insert_with(|| {
                        let book = SaleBook::new(sale.clone());
                        book.record(entry);
                        Arc::new(book)
                    });
                    drop(reply.send(Ok(sale)));
                }
                // Also here, not by the caller: a caller that went away must not leave the book
                // changing, nor the durable change out of it.
                Ack::Change(reply, book, sale, entry) => {
                    book.finish_change(Some(sale), entry);
                    // Only the `waitlist` figure reads the instant (has the list lapsed?): the
                    // caller reads the status again on the store's clock.
                    let now = time::OffsetDateTime::now_utc();
                    drop(reply.send(Ok(book.status(now))));
                }
                Ack::Transition(write, entry) => {
                    let order = write.book.finish_transition(&write.decided, Some(entry));
                    if let Some(reply) = write.reply {
                        let _ = reply.send(Ok(order));
                    }
                }
                Ack::List(request) => {
                    request.book.finish_list(&request.write, true);
                    let _ = request.reply.send(Ok(()));
                }
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
    flushing: Arc<Flushing>,
    books: Arc<RwLock<BTreeMap<SaleId, Arc<SaleBook>>>>,
) {
    let _ = flushing.writer.set(std::thread::current());
    let wal = WalFrames::watch(&mut conn);
    let mut saved: HashMap<SaleId, PersistedCounters> = HashMap::new();
    let mut last_sold = LastSold::default();
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
        // Gathering sleeps rather than waiting on the queue: waiting on it, every buyer's send
        // woke the writer for that one write (a futex wake and a context switch per purchase;
        // sleeping instead saved about 5% of the server's CPU per purchase under wrk). The
        // syncer wakes it when the flush ends; a closed queue is seen by the next
        // `recv_timeout`.
        while !batch.is_empty() && batch.len() < MIN_GROUP_WHILE_FLUSHING && flushing.busy() {
            std::thread::park_timeout(GATHER_WAIT);
            batch.extend(rx.try_iter().take(MAX_BATCH.saturating_sub(batch.len())));
        }
        let mut shutdown = None;
        let mut orders = Vec::with_capacity(batch.len());
        let mut transitions = Vec::new();
        let mut lists = Vec::new();
        let mut durable = Vec::with_capacity(batch.len() + 1);
        for write in batch.drain(..) {
            match write {
                Write::Order(pending) => orders.push(pending),
                Write::Transition(write) => transitions.push(write),
                Write::List(request) => lists.push(request),
                Write::CreateSale { new, at, reply } => match create_sale(&mut conn, new, at) {
                    Ok((sale, entry)) => durable.push(Ack::Sale(reply, sale, entry)),
                    Err(e) => drop(reply.send(Err(WriteError::Sale(e)))),
                },
                Write::ChangeSale { change, reply } => match change_sale(&mut conn, &change) {
                    Ok(entry) => durable.push(Ack::Change(reply, change.book, change.new, entry)),
                    Err(e) => {
                        change.book.finish_change(None, None);
                        drop(reply.send(Err(WriteError::Change(e))));
                    }
                },
                Write::Shutdown { reply } => shutdown = Some(reply),
            }
        }
        if !orders.is_empty() || !transitions.is_empty() || !lists.is_empty() {
            let changed = changed_counters(&books, &saved);
            let sold = SoldOut {
                books: &books,
                committed: &last_sold,
            };
            match commit_orders(&mut conn, &orders, &transitions, &lists, &changed, sold) {
                Ok((entries, group)) => {
                    saved.extend(changed);
                    // A group may hold only earlier admissions than one committed before it.
                    for (sale, at) in group {
                        raise(&mut last_sold, sale, at);
                    }
                    durable.extend(orders.into_iter().map(Ack::Order));
                    durable.extend(
                        transitions
                            .into_iter()
                            .zip(entries)
                            .map(|(t, entry)| Ack::Transition(t, entry)),
                    );
                    durable.extend(lists.into_iter().map(Ack::List));
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        orders = orders.len(),
                        transitions = transitions.len(),
                        "order batch failed to commit"
                    );
                    // One error, shared by every write of the group it failed.
                    let e = Arc::new(e);
                    for mut p in orders {
                        p.fail(Some(WriteError::Orders(Arc::clone(&e))));
                    }
                    for t in transitions {
                        t.fail(WriteError::Orders(Arc::clone(&e)));
                    }
                    for l in lists {
                        l.fail(Some(WriteError::Orders(Arc::clone(&e))));
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
        // After the group is handed to the syncer, so its fsync runs meanwhile; only the next
        // group waits for the copy.
        wal.restart_if_long(&conn);
    }
}

/// How many frames the WAL holds after the writer's last commit (SQLite's WAL hook tells).
struct WalFrames(Option<Arc<std::sync::atomic::AtomicI32>>);

impl WalFrames {
    /// Registers the hook on the writer's connection. Without it (registration failed) the WAL
    /// is left to the background checkpointer, as before, and the failure is logged.
    fn watch(conn: &mut Connection) -> Self {
        let frames = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let seen = Arc::clone(&frames);
        let hook = move |_: &mut rusqlite::hooks::Wal, pages| {
            seen.store(pages, Ordering::Relaxed);
            Ok(())
        };
        match conn.wal_hook(Some(hook)) {
            Ok(()) => Self(Some(frames)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the WAL's length; it is left to the checkpointer");
                Self(None)
            }
        }
    }

    /// Checkpoints (PASSIVE: never waits for anyone) once the WAL holds
    /// [`WAL_RESTART_FRAMES`]. The background checkpointer has usually copied most of it
    /// already; what is left is the latest frames and the database file's fsync.
    fn restart_if_long(&self, conn: &Connection) {
        let Some(frames) = &self.0 else { return };
        if frames.load(Ordering::Relaxed) < WAL_RESTART_FRAMES {
            return;
        }
        frames.store(0, Ordering::Relaxed);
        // Busy (the background checkpointer is running) or failed: the next commit tells the
        // length again and this is tried again then.
        if let Err(e) = super::load::checkpoint(conn) {
            tracing::debug!(error = %e, "the writer's WAL checkpoint did not run");
        }
    }
}

/// A write transaction begun and committed with cached statements (rusqlite's `Transaction`
/// parses `BEGIN` and `COMMIT` every time); rolled back if dropped before its commit, as
/// `Transaction` is.
struct WriteTx<'c> {
    conn: &'c Connection,
}

impl<'c> WriteTx<'c> {
    /// `BEGIN` (deferred, as `Connection::transaction`).
    fn begin(conn: &'c mut Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN")?.execute([])?;
        Ok(Self { conn })
    }

    /// `COMMIT`; on failure the transaction is rolled back when `self` drops.
    fn commit(self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.conn.is_autocommit() {
            // Nothing of a failed group may stay. As with `Transaction`, a failed rollback is
            // not reported here: the next group's BEGIN fails, and is reported, instead.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Per sale, the latest admission (µs) among the instant orders this process has committed.
type LastSold = HashMap<SaleId, i64>;

/// Raises the sale's latest admission to `at` (never lowers it).
fn raise(last: &mut LastSold, sale: SaleId, at: i64) {
    let latest = last.entry(sale).or_insert(at);
    *latest = (*latest).max(at);
}

/// What the writer knows, without reading the orders back, of the latest admission among a
/// sale's committed orders: the sale's sold-out instant. Reading it back (`max(created_at_us)`
/// over the sale's orders) scanned every order of every sale, since `orders` has no index by
/// sale, and stalled every purchase behind the group that sold a sale out.
#[derive(Clone, Copy)]
struct SoldOut<'a> {
    /// The books: the latest sold admission of orders durable before this process or already
    /// confirmed in it.
    books: &'a RwLock<BTreeMap<SaleId, Arc<SaleBook>>>,
    /// The latest admission of every group committed by this process, confirmed or not yet.
    committed: &'a LastSold,
}

impl SoldOut<'_> {
    /// The sale's latest committed admission, given the latest of the group being committed.
    fn at(self, sale: SaleId, in_group: i64) -> i64 {
        let restored = self
            .books
            .read()
            .get(&sale)
            .and_then(|b| b.last_sold_at())
            .map_or(i64::MIN, to_micros);
        let committed = self.committed.get(&sale).copied().unwrap_or(i64::MIN);
        in_group.max(restored).max(committed)
    }
}

/// Commits a group: its orders, its transitions (returning their ledger entries, in their
/// order) and the counters that changed, in one transaction. Also returns, per sale, the latest
/// admission among the group's instant orders.
fn commit_orders(
    conn: &mut Connection,
    orders: &[PendingOrder],
    transitions: &[TransitionWrite],
    lists: &[ListRequest],
    counters: &[(SaleId, PersistedCounters)],
    sold_out_at: SoldOut<'_>,
) -> rusqlite::Result<(Vec<LedgerEntry>, LastSold)> {
    let tx = WriteTx::begin(conn)?;
    let mut latest = LastSold::new();
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO orders (order_id, sale_id, user_id, quantity, created_at_us, idempotency_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut sold: BTreeMap<SaleId, i64> = BTreeMap::new();
        let mut held: BTreeMap<SaleId, i64> = BTreeMap::new();
        for (order, key) in orders.iter().filter_map(PendingOrder::row) {
            let key = key.map(IdempotencyKey::as_str);
            if let Some(expires_at) = order.expires_at {
                insert_reservation(&tx, order, key, expires_at)?;
                *held.entry(order.sale_id).or_default() += i64::from(order.quantity);
                continue;
            }
            let at = to_micros(order.created_at);
            insert.execute(params![
                order.order_id.as_bytes().as_slice(),
                order.sale_id.0,
                order.user_id.as_str(),
                order.quantity,
                at,
                key,
            ])?;
            *sold.entry(order.sale_id).or_default() += i64::from(order.quantity);
            raise(&mut latest, order.sale_id, at);
        }
        for (sale, units) in held {
            move_units(&tx, sale, units, 0)?;
        }
        // Says whether this group sold the sale out.
        let mut add_sold = tx.prepare_cached(
            "UPDATE sales SET sold = sold + ?2 WHERE id = ?1
             RETURNING sold = stock AND sold_out_at_us IS NULL",
        )?;
        for (sale, units) in sold {
            let sold_out = add_sold
                .query_row(params![sale.0, units], |row| row.get::<_, bool>(0))
                .optional()?;
            if sold_out == Some(true) {
                // The sold-out instant is the latest admission among the sale's orders,
                // whichever group commits last: the order that took the last unit may commit
                // in an earlier group than one admitted before it.
                let in_group = latest.get(&sale).copied().unwrap_or(i64::MIN);
                tx.prepare_cached("UPDATE sales SET sold_out_at_us = ?2 WHERE id = ?1")?
                    .execute(params![sale.0, sold_out_at.at(sale, in_group)])?;
            }
        }
    }
    let entries = transitions
        .iter()
        .map(|t| write_transition(&tx, &t.decided))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for request in lists {
        write_list(&tx, &request.write)?;
    }
    write_counters(&tx, counters)?;
    tx.commit()?;
    Ok((entries, latest))
}

/// Inserts a hold-mode order: `reserved` until `expires_at`.
fn insert_reservation(
    tx: &Connection,
    order: &Order,
    key: Option<&str>,
    expires_at: time::OffsetDateTime,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO orders (order_id, sale_id, user_id, quantity, created_at_us, idempotency_key,
                             status, expires_at_us, offered)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        order.order_id.as_bytes().as_slice(),
        order.sale_id.0,
        order.user_id.as_str(),
        order.quantity,
        to_micros(order.created_at),
        key,
        order.status.as_str(),
        to_micros(expires_at),
        order.offered,
    ])?;
    Ok(())
}

/// Moves a sale's held and sold units (`CHECK` refuses more than the stock).
fn move_units(tx: &Connection, sale: SaleId, held: i64, sold: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE sales SET held = held + ?2, sold = sold + ?3 WHERE id = ?1")?
        .execute(params![sale.0, held, sold])?;
    Ok(())
}

/// Writes a decided transition: the order's new status (only out of `reserved`: a second
/// decision for one reservation finds no row and fails its group rather than moving units
/// twice), the sale's units, and its `stock_ledger` row, which it returns as an entry.
fn write_transition(tx: &Connection, decided: &Decided) -> rusqlite::Result<LedgerEntry> {
    let order = &decided.after;
    let changed = tx
        .prepare_cached(
            "UPDATE orders SET status = ?2, payment_ref = ?3
             WHERE order_id = ?1 AND status = 'reserved'",
        )?
        .execute(params![
            order.order_id.as_bytes().as_slice(),
            order.status.as_str(),
            order.payment_ref.as_ref().map(|r| r.as_str()),
        ])?;
    if changed != 1 {
        return Err(rusqlite::Error::StatementChangedRows(changed));
    }
    let [available, held, sold] = decided.deltas;
    move_units(tx, order.sale_id, held, sold)?;
    tx.prepare_cached(
        "INSERT INTO stock_ledger
             (sale_id, at_us, cause, order_id, available_delta, held_delta, sold_delta)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        order.sale_id.0,
        to_micros(decided.at),
        decided.cause.code(),
        order.order_id.as_bytes().as_slice(),
        available,
        held,
        sold,
    ])?;
    let recorded = tx.last_insert_rowid();
    write_claims(tx, decided)?;
    Ok(LedgerEntry {
        key: LedgerKey {
            at: decided.at,
            source: LedgerSource::Recorded(recorded),
        },
        cause: decided.cause,
        order_id: Some(order.order_id),
        available_delta: available,
        held_delta: held,
        sold_delta: sold,
        sale_change_id: None,
    })
}

/// Writes a release's waitlist, after the release itself (its units are free first): each
/// offer as a new reservation holding one unit, and each waiter taken off as `offered` or
/// `passed`. Only a row still `waiting` changes, so an offer made twice fails its group.
fn write_claims(tx: &Connection, decided: &Decided) -> rusqlite::Result<()> {
    let sale = decided.after.sale_id;
    for claim in &decided.claims {
        let (state, order_id) = match &claim.offer {
            Some(order) => {
                if let Some(expires_at) = order.expires_at {
                    insert_reservation(tx, order, None, expires_at)?;
                }
                move_units(tx, sale, i64::from(order.quantity), 0)?;
                ("offered", Some(order.order_id))
            }
            None => ("passed", None),
        };
        let changed = tx
            .prepare_cached(
                "UPDATE waitlist SET state = ?3, ended_at_us = ?4, order_id = ?5
                 WHERE sale_id = ?1 AND seq = ?2 AND state = 'waiting'",
            )?
            .execute(params![
                sale.0,
                claim.seq as i64,
                state,
                to_micros(decided.at),
                order_id.as_ref().map(|id| id.as_bytes().as_slice()),
            ])?;
        if changed != 1 {
            return Err(rusqlite::Error::StatementChangedRows(changed));
        }
    }
    Ok(())
}

/// Writes a join (a new `waiting` row: history rows are never deleted) or a leave (the row,
/// still `waiting`, becomes `left`).
fn write_list(tx: &Connection, write: &ListWrite) -> rusqlite::Result<()> {
    let changed = match write.op {
        ListOp::Join => tx
            .prepare_cached(
                "INSERT INTO waitlist (sale_id, seq, user_id, joined_at_us, state)
                 VALUES (?1, ?2, ?3, ?4, 'waiting')",
            )?
            .execute(params![
                write.sale_id.0,
                write.seq as i64,
                write.user.as_str(),
                to_micros(write.at),
            ])?,
        ListOp::Leave => tx
            .prepare_cached(
                "UPDATE waitlist SET state = 'left', ended_at_us = ?3
                 WHERE sale_id = ?1 AND seq = ?2 AND state = 'waiting'",
            )?
            .execute(params![
                write.sale_id.0,
                write.seq as i64,
                to_micros(write.at)
            ])?,
    };
    if changed != 1 {
        return Err(rusqlite::Error::StatementChangedRows(changed));
    }
    Ok(())
}

/// Inserts the sale and its `created` ledger entry in one transaction, or returns the one
/// first created with the same creation key (and no entry: it has its own).
fn create_sale(
    conn: &mut Connection,
    new: NewSale,
    at: time::OffsetDateTime,
) -> rusqlite::Result<(Sale, Option<LedgerEntry>)> {
    let key = new.creation_key.as_ref().map(IdempotencyKey::as_str);
    if let Some(key) = key {
        let existing = conn
            .query_row(
                &format!("SELECT {SALE_COLUMNS} FROM sales WHERE creation_key = ?1"),
                params![key],
                sale_of_row,
            )
            .optional()?;
        if let Some(sale) = existing {
            return Ok((sale, None));
        }
    }
    let product = ProductRow::of(&new.product);
    let (mode, window) = checkout_columns(new.checkout);
    let tx = WriteTx::begin(conn)?;
    tx.execute(
        "INSERT INTO sales (name, starts_at_us, ends_at_us, stock, per_user_limit, creation_key,
                            description, price_minor, currency, image_kind, image_sha256,
                            checkout, payment_window_secs)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            new.name,
            to_micros(new.starts_at),
            to_micros(new.ends_at),
            new.stock,
            new.per_user_limit,
            key,
            product.description,
            product.price_minor,
            product.currency,
            product.image_kind,
            product.image_sha256,
            mode,
            window,
        ],
    )?;
    let sale = new.with_id(SaleId(tx.last_insert_rowid()));
    let available = i64::from(sale.stock);
    let entry = record(&tx, sale.id, at, LedgerCause::Created, available, None)?;
    tx.commit()?;
    Ok((sale, Some(entry)))
}

/// Inserts one `stock_ledger` row (nothing held or sold moves in the causes recorded today)
/// and returns it as an entry.
fn record(
    tx: &Connection,
    sale: SaleId,
    at: time::OffsetDateTime,
    cause: LedgerCause,
    available_delta: i64,
    sale_change_id: Option<i64>,
) -> rusqlite::Result<LedgerEntry> {
    tx.execute(
        "INSERT INTO stock_ledger
             (sale_id, at_us, cause, available_delta, held_delta, sold_delta, sale_change_id)
         VALUES (?1, ?2, ?3, ?4, 0, 0, ?5)",
        params![
            sale.0,
            to_micros(at),
            cause.code(),
            available_delta,
            sale_change_id
        ],
    )?;
    Ok(LedgerEntry {
        key: LedgerKey {
            at,
            source: LedgerSource::Recorded(tx.last_insert_rowid()),
        },
        cause,
        order_id: None,
        available_delta,
        held_delta: 0,
        sold_delta: 0,
        sale_change_id,
    })
}

/// Writes the sale as changed, one `sale_changes` row per field it altered and, if it moves
/// units or cancels, its ledger entry, in one transaction.
fn change_sale(
    conn: &mut Connection,
    change: &SaleChangeWrite,
) -> rusqlite::Result<Option<LedgerEntry>> {
    let tx = WriteTx::begin(conn)?;
    let new = &change.new;
    let product = ProductRow::of(&new.product);
    tx.execute(
        "UPDATE sales SET name = ?2, starts_at_us = ?3, ends_at_us = ?4, stock = ?5,
                          per_user_limit = ?6, cancelled_at_us = ?7, description = ?8,
                          price_minor = ?9, currency = ?10, image_kind = ?11, image_sha256 = ?12
         WHERE id = ?1",
        params![
            new.id.0,
            new.name,
            to_micros(new.starts_at),
            to_micros(new.ends_at),
            new.stock,
            new.per_user_limit,
            new.cancelled_at.map(to_micros),
            product.description,
            product.price_minor,
            product.currency,
            product.image_kind,
            product.image_sha256,
        ],
    )?;
    let mut insert_change = tx.prepare(
        "INSERT INTO sale_changes (sale_id, at_us, kind, field, old_value, new_value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let ledger = change_entry(&change.old, new);
    let mut referred = None;
    for f in changed_fields(&change.old, new) {
        insert_change.execute(params![
            new.id.0,
            to_micros(change.at),
            change.kind,
            f.field,
            f.old,
            f.new
        ])?;
        if ledger.is_some_and(|(_, _, field)| field == f.field) {
            referred = Some(tx.last_insert_rowid());
        }
    }
    drop(insert_change);
    let entry = ledger
        .map(|(cause, delta, _)| record(&tx, new.id, change.at, cause, delta, referred))
        .transpose()?;
    tx.commit()?;
    Ok(entry)
}

/// The sales whose counters changed since they were last written.
fn changed_counters(
    books: &RwLock<BTreeMap<SaleId, Arc<SaleBook>>>,
    saved: &HashMap<SaleId, PersistedCounters>,
) -> Vec<(SaleId, PersistedCounters)> {
    books
        .read()
        .iter()
        .map(|(id, book)| (*id, book.persisted_counters()))
        .filter(|(id, c)| saved.get(id) != Some(c))
        .collect()
}

fn flush_counters(
    conn: &mut Connection,
    books: &RwLock<BTreeMap<SaleId, Arc<SaleBook>>>,
    saved: &mut HashMap<SaleId, PersistedCounters>,
) {
    let changed = changed_counters(books, saved);
    if changed.is_empty() {
        return;
    }
    let result = WriteTx::begin(conn).and_then(|tx| {
        write_counters(&tx, &changed)?;
        tx.commit()
    });
    match result {
        Ok(()) => saved.extend(changed),
        // Counters are statistics: a failed flush is retried next time, orders are unaffected.
        Err(e) => tracing::warn!(error = %e, "could not persist sale counters"),
    }
}

fn write_counters(
    tx: &Connection,
    changed: &[(SaleId, PersistedCounters)],
) -> rusqlite::Result<()> {
    let mut upsert = tx.prepare_cached(upsert_counters_sql())?;
    for (id, c) in changed {
        let mut values = vec![id.0, c.attempts as i64];
        values.extend(c.rejections.iter().map(|(_, n)| n as i64));
        values.push(to_micros(c.last_decided));
        upsert.execute(params_from_iter(values))?;
    }
    Ok(())
}

/// `INSERT INTO sale_counters ... ON CONFLICT DO UPDATE`, with the counter columns of
/// [`counter_columns`]: sale id, attempts, each counter, then the clock guard.
fn upsert_counters_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let n = counter_columns::names().count();
        let placeholders = (1..=n + 3).map(|i| format!("?{i}")).collect::<Vec<_>>();
        format!(
            "INSERT INTO sale_counters (sale_id, attempts, {columns}, last_decided_us)
             VALUES ({placeholders})
             ON CONFLICT (sale_id) DO UPDATE SET
                 attempts = excluded.attempts, {updates},
                 last_decided_us = max(coalesce(last_decided_us, 0), excluded.last_decided_us)",
            columns = counter_columns::list(str::to_owned),
            placeholders = placeholders.join(", "),
            updates = counter_columns::list(|c| format!("{c} = excluded.{c}")),
        )
    })
}
