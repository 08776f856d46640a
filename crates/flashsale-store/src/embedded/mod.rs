//! The embedded store: the default, single node, no external service.
//!
//! Decisions are taken in memory, in each sale's [`book::SaleBook`] critical section; orders
//! are made durable by one [`writer`] thread in SQLite (WAL), committed in groups, each group
//! answered only after a syncer thread has fsynced the WAL behind it. `confirmed` is answered
//! only after the order's group has committed; if the commit fails the reservation is undone
//! and the buyer gets `unavailable`. On open, memory is rebuilt from the database, so a crash
//! (even `kill -9`) loses nothing that was confirmed.
//!
//! Checkout (hold mode): a purchase reserves; an order's transitions (pay, cancel, expire) are
//! decided in the same book critical section and made durable by the same group commit, and
//! the [`expiry`] timer thread sends due reservations through that step. The waitlist lives in
//! the book too: joins and leaves go through the same group commit, and a release's offers are
//! written in the release's own transaction (see `book`).
//!
//! Time only moves forward here: [`EmbeddedStore::now`] never returns an instant before one it
//! returned already, and each sale never decides at an instant before its last decision (kept
//! on disk with the counters), so a wall clock stepped back cannot re-open an ended sale.

mod book;
mod expiry;
mod images;
mod load;
pub(crate) mod schema;
mod waitlist;
mod writer;

use crate::{
    Attempt, ChangeOutcome, LedgerEntry, LedgerKey, Order, OrderEventOutcome, OrderKey,
    PurchaseHold, PurchaseOutcome, SaleStatus, SaleStore, StoreError, Summary,
};
use crate::{WaitlistJoin, WaitlistLeave, WaitlistPlace};
use async_trait::async_trait;
use book::{BookCounters, ChangeStep, EventStep, FirstAttempt, ListStep, SaleBook, Step};
pub use book::{MAX_REFUSED_KEYS, REFUSAL_RETENTION};
use bytes::Bytes;
pub use expiry::EXPIRY_INTERVAL;
use expiry::GuardedClock;
use flashsale_core::{Clock, ImageRef, NewSale, Sale, SaleChange, SaleId, UserId};
pub use images::IMAGES_DIR;
use images::ImageFiles;
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use time::OffsetDateTime;
use tokio::sync::oneshot;
pub use writer::WAL_RESTART_FRAMES;
use writer::{ListRequest, PendingOrder, SaleChangeWrite, TransitionWrite, Write};

/// The database file inside the data directory.
pub const DB_FILE: &str = "flashsale.db";
/// The lock file inside the data directory: one process at a time owns the directory.
pub const LOCK_FILE: &str = "flashsale.lock";

/// The embedded store. Cheap to share behind an `Arc`.
pub struct EmbeddedStore {
    /// The deciding clock behind its guard (the expiry timer reads it too).
    clock: Arc<GuardedClock>,
    books: Arc<RwLock<BTreeMap<SaleId, Arc<SaleBook>>>>,
    writes: mpsc::Sender<Write>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropping the sender stops the expiry timer thread.
    expiry: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    /// Dropping the sender stops the checkpoint thread.
    checkpointer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    path: PathBuf,
    /// Holds the data directory's exclusive lock; the OS releases it when this is dropped or
    /// the process dies (even by `kill -9`), so a stale lock file never blocks a restart.
    /// Shutdown releases it once the writer has stopped: a handle still alive somewhere (a
    /// task finishing) must not keep the next store from opening the directory.
    lock: Mutex<Option<std::fs::File>>,
    /// The product images, files beside the database.
    images: Arc<ImageFiles>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `data_dir`, rebuilds memory from disk, and
    /// starts the writer thread. Blocking: call it before serving, or in `spawn_blocking`.
    pub fn open(data_dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::unavailable_from(
                format!("cannot create data directory {}", data_dir.display()),
                e,
            )
        })?;
        let lock = lock_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let images = ImageFiles::open(data_dir).map_err(|e| {
            StoreError::unavailable_from(
                format!(
                    "cannot create the images directory in {}",
                    data_dir.display()
                ),
                e,
            )
        })?;
        let conn = load::connect(&path).map_err(|e| unavailable(&path, e))?;
        let books = load::rebuild(&conn).map_err(|e| unavailable(&path, e))?;
        let high_water = books
            .values()
            .map(|b| b.last_decided())
            .max()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let books = Arc::new(RwLock::new(books));
        let (stop_checkpoints, stop_rx) = mpsc::channel();
        let checkpointer =
            load::spawn_checkpointer(&path, stop_rx).map_err(|e| unavailable(&path, e))?;
        let wal_path = data_dir.join(format!("{DB_FILE}-wal"));
        let wal = std::fs::File::open(&wal_path).map_err(|e| {
            StoreError::unavailable_from(format!("cannot open {} for fsync", wal_path.display()), e)
        })?;
        let (writes, rx) = mpsc::channel();
        let (acks, acks_rx) = mpsc::channel();
        let flushing = Arc::new(writer::Flushing::default());
        let writer_flushing = Arc::clone(&flushing);
        let writer_books = Arc::clone(&books);
        let syncer_books = Arc::clone(&books);
        let spawn_failed =
            |e: std::io::Error| StoreError::internal_from("cannot start the writer threads", e);
        std::thread::Builder::new()
            .name("flashsale-sync".into())
            .spawn(move || writer::sync(wal, acks_rx, flushing, syncer_books))
            .map_err(spawn_failed)?;
        let writer = std::thread::Builder::new()
            .name("flashsale-writer".into())
            .spawn(move || writer::run(conn, rx, acks, writer_flushing, writer_books))
            .map_err(spawn_failed)?;
        let clock = Arc::new(GuardedClock::new(clock, high_water));
        let (stop_expiry, stop_expiry_rx) = mpsc::channel();
        let timer = expiry::spawn(
            Arc::clone(&clock),
            Arc::clone(&books),
            writes.clone(),
            stop_expiry_rx,
        )
        .map_err(spawn_failed)?;
        Ok(Self {
            clock,
            books,
            writes,
            writer: Mutex::new(Some(writer)),
            expiry: Mutex::new(Some((stop_expiry, timer))),
            checkpointer: Mutex::new(Some((stop_checkpoints, checkpointer))),
            path,
            lock: Mutex::new(Some(lock)),
            images: Arc::new(images),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many idempotency keys a sale holds in memory (confirmed, pending, and refusals
    /// still retained), or `None` if there is no such sale. For measuring the bound.
    pub fn idempotency_keys(&self, id: SaleId) -> Option<usize> {
        self.book(id).map(|b| b.key_count())
    }

    fn book(&self, id: SaleId) -> Option<Arc<SaleBook>> {
        self.books.read().get(&id).cloned()
    }

    /// The book of the sale that holds the committed order `id`.
    fn book_of_order(&self, id: uuid::Uuid) -> Option<Arc<SaleBook>> {
        self.books.read().values().find(|b| b.holds(id)).cloned()
    }

    /// Decides the attempt; stock is taken only in [`Reserved::Yes`]. Dropping this future
    /// takes nothing: every await in it comes before the reservation.
    async fn reserve(&self, attempt: &Attempt) -> Result<Reserved, StoreError> {
        let Some(book) = self.book(attempt.sale_id) else {
            return Ok(Reserved::No(PurchaseOutcome::SaleNotFound));
        };
        // Stored instants have microsecond precision; deciding at the stored precision keeps
        // an order's `created_at` identical before and after a restart.
        loop {
            let now = flashsale_core::sale::truncate_to_micros(self.now());
            let step = book.admit(
                &attempt.user_id,
                attempt.quantity,
                attempt.idempotency_key.as_ref(),
                now,
            );
            match step {
                Step::Answer(outcome) => return Ok(Reserved::No(outcome)),
                Step::Wait(mut rx) => {
                    // A duplicate of an attempt in flight: the first one decides for both.
                    let first = rx
                        .wait_for(|first| !matches!(first, FirstAttempt::InFlight))
                        .await
                        .map_err(|_| StoreError::ShuttingDown)?
                        .clone();
                    return match first {
                        FirstAttempt::Answered(outcome) => Ok(Reserved::No(outcome)),
                        FirstAttempt::InFlight | FirstAttempt::Failed => Err(
                            StoreError::unavailable("the first attempt with this key failed"),
                        ),
                    };
                }
                // The refusal hinged on writes in flight; the sender is dropped once they
                // settle (closing the channel is the signal), then decide again.
                Step::Retry(mut rx) => {
                    let _ = rx.changed().await;
                }
                Step::Reserved(reservation) => return Ok(Reserved::Yes(book, reservation)),
            }
        }
    }

    /// Makes a decided join or leave durable; the writer (failed) or the syncer (durable)
    /// settles it in the book whoever still waits, so a caller that goes away leaves nothing
    /// pending.
    async fn write_list(
        &self,
        book: &Arc<SaleBook>,
        write: book::ListWrite,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        let request = ListRequest {
            book: Arc::clone(book),
            write,
            reply,
        };
        if let Err(mpsc::SendError(Write::List(request))) = self.writes.send(Write::List(request)) {
            request.fail(None);
            return Err(StoreError::ShuttingDown);
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::unavailable_from(
                "the waitlist change could not be made durable; nothing changed",
                e,
            )),
            Err(_) => Err(StoreError::ShuttingDown),
        }
    }

    async fn send<T>(&self, write: Write, reply: oneshot::Receiver<T>) -> Result<T, StoreError> {
        send_write(&self.writes, write, reply).await
    }
}

/// Queues a write and waits for the writer's reply; the writer gone means shutting down.
async fn send_write<T>(
    writes: &mpsc::Sender<Write>,
    write: Write,
    reply: oneshot::Receiver<T>,
) -> Result<T, StoreError> {
    writes.send(write).map_err(|_| StoreError::ShuttingDown)?;
    reply.await.map_err(|_| StoreError::ShuttingDown)
}

/// What deciding an attempt came to: an answer, or stock taken that must be committed.
enum Reserved {
    /// Nothing was taken; this is the answer.
    No(PurchaseOutcome),
    /// Stock is reserved in the book: the order must be written, then confirmed or undone.
    Yes(Arc<SaleBook>, book::Reservation),
}

/// Takes the data directory's exclusive lock: two processes writing one database would each
/// trust its own memory of the stock and oversell.
fn lock_dir(data_dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::unavailable_from(format!("cannot open {}", path.display()), e))?;
    // A lock just released can still be held for a moment by a process being spawned (its
    // copy of the descriptor lives until it execs), so a busy lock is tried again briefly
    // before the directory is called taken.
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::unavailable(format!(
                    "data directory {} is in use by another flashsale process (it holds {})",
                    data_dir.display(),
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::unavailable_from(
                    format!("cannot lock {}", path.display()),
                    e,
                ));
            }
        }
    }
}

/// How long a busy data-directory lock is tried again before the directory is called taken.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(250);

fn unavailable(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::unavailable_from(format!("database {}", path.display()), e)
}

#[async_trait]
impl SaleStore for EmbeddedStore {
    async fn waitlist_join(
        &self,
        id: SaleId,
        user: UserId,
    ) -> Result<Option<WaitlistJoin>, StoreError> {
        let Some(book) = self.book(id) else {
            return Ok(None);
        };
        loop {
            match book.decide_join(&user, self.clock.decision_instant()) {
                ListStep::Answer(answer) => return Ok(Some(answer)),
                ListStep::Retry(mut rx) => {
                    let _ = rx.changed().await;
                }
                ListStep::Write(write) => {
                    let position = u32::try_from(write.position).unwrap_or(u32::MAX);
                    self.write_list(&book, write).await?;
                    return Ok(Some(WaitlistJoin::Joined { position }));
                }
            }
        }
    }

    async fn waitlist_place(
        &self,
        id: SaleId,
        user: &UserId,
    ) -> Result<Option<WaitlistPlace>, StoreError> {
        Ok(self.book(id).map(|b| b.place(user, self.now())))
    }

    async fn waitlist_leave(
        &self,
        id: SaleId,
        user: &UserId,
    ) -> Result<Option<WaitlistLeave>, StoreError> {
        let Some(book) = self.book(id) else {
            return Ok(None);
        };
        loop {
            match book.decide_leave(user, self.clock.decision_instant()) {
                ListStep::Answer(answer) => return Ok(Some(answer)),
                ListStep::Retry(mut rx) => {
                    let _ = rx.changed().await;
                }
                ListStep::Write(write) => {
                    self.write_list(&book, write).await?;
                    return Ok(Some(WaitlistLeave::Left));
                }
            }
        }
    }

    async fn order(&self, order_id: uuid::Uuid) -> Result<Option<Order>, StoreError> {
        Ok(self.book_of_order(order_id).and_then(|b| b.order(order_id)))
    }

    async fn order_event(
        &self,
        order_id: uuid::Uuid,
        event: flashsale_core::OrderEvent,
    ) -> Result<OrderEventOutcome, StoreError> {
        let Some(book) = self.book_of_order(order_id) else {
            return Ok(OrderEventOutcome::NotFound);
        };
        loop {
            match book.decide_event(order_id, &event, self.clock.decision_instant()) {
                EventStep::NotFound => return Ok(OrderEventOutcome::NotFound),
                EventStep::Answer(result, order) => {
                    return Ok(OrderEventOutcome::Decided { result, order });
                }
                EventStep::Invalid(why) => return Err(StoreError::internal(why)),
                // The order's previous transition is being written: decide against what it
                // becomes (the sender is dropped once it is applied or failed).
                EventStep::Wait(mut rx) => {
                    let _ = rx.changed().await;
                }
                EventStep::Decided(decided) => {
                    let transition = decided.transition.clone();
                    let (reply, rx) = oneshot::channel();
                    // From here the writer (failed) or the syncer (durable) ends the
                    // transition, whoever still waits for it.
                    let write = Write::Transition(TransitionWrite {
                        book: Arc::clone(&book),
                        decided,
                        reply: Some(reply),
                    });
                    if let Err(mpsc::SendError(write)) = self.writes.send(write) {
                        if let Write::Transition(write) = write {
                            write.abandon();
                        }
                        return Err(StoreError::ShuttingDown);
                    }
                    return match rx.await {
                        Ok(Ok(order)) => Ok(OrderEventOutcome::Decided {
                            result: Ok(transition),
                            order,
                        }),
                        Ok(Err(e)) => Err(StoreError::unavailable_from(
                            "the order's change could not be made durable; nothing changed",
                            e,
                        )),
                        Err(_) => Err(StoreError::ShuttingDown),
                    };
                }
            }
        }
    }

    async fn create_sale(&self, new: NewSale) -> Result<Sale, StoreError> {
        let (reply, rx) = oneshot::channel();
        let at = flashsale_core::sale::truncate_to_micros(self.now());
        // The syncer adds the sale's book once the sale is durable, whether or not this future
        // is still there to hear about it: a caller that goes away cannot leave a sale on disk
        // that answers 404.
        self.send(Write::CreateSale { new, at, reply }, rx)
            .await?
            .map_err(|e| StoreError::unavailable_from("the sale could not be made durable", e))
    }

    async fn change_sale(
        &self,
        id: SaleId,
        change: SaleChange,
    ) -> Result<ChangeOutcome, StoreError> {
        let Some(book) = self.book(id) else {
            return Ok(ChangeOutcome::SaleNotFound);
        };
        loop {
            let now = flashsale_core::sale::truncate_to_micros(self.now());
            match book.begin_change(&change, now) {
                ChangeStep::Refused(refusal) => return Ok(ChangeOutcome::Refused(refusal)),
                ChangeStep::Busy(mut rx) => {
                    let _ = rx.changed().await;
                }
                ChangeStep::Claimed { old, new, at } => {
                    let (reply, rx) = oneshot::channel();
                    let write = Write::ChangeSale {
                        change: SaleChangeWrite {
                            book: Arc::clone(&book),
                            kind: change.kind(),
                            old,
                            new,
                            at,
                        },
                        reply,
                    };
                    // From here the writer (or, once durable, the syncer) ends the change,
                    // whoever still waits for it.
                    if let Err(std::sync::mpsc::SendError(_)) = self.writes.send(write) {
                        book.finish_change(None, None);
                        return Err(StoreError::ShuttingDown);
                    }
                    return match rx.await {
                        Ok(Ok(_)) => Ok(ChangeOutcome::Changed(book.status(self.now()))),
                        Ok(Err(e)) => Err(StoreError::unavailable_from(
                            "the change could not be made durable; nothing changed",
                            e,
                        )),
                        Err(_) => Err(StoreError::ShuttingDown),
                    };
                }
            }
        }
    }

    async fn purchase_holding(
        &self,
        attempt: Attempt,
        hold: PurchaseHold,
    ) -> Result<PurchaseOutcome, StoreError> {
        let (book, reservation) = match self.reserve(&attempt).await {
            Ok(Reserved::Yes(book, reservation)) => (book, reservation),
            Ok(Reserved::No(outcome)) => return hold.answer(Ok(outcome)),
            Err(e) => return hold.answer(Err(e)),
        };
        // From here the stock is taken in memory. The pending order settles it (and ends the
        // hold) whoever waits: the syncer once durable, the writer if the group fails, its drop
        // if the writer is gone (a failed send drops it here). Nothing to await but the answer.
        let (reply, rx) = oneshot::channel();
        let _ = self.writes.send(Write::Order(PendingOrder::new(
            book,
            reservation,
            hold,
            reply,
        )));
        rx.await.unwrap_or(Err(StoreError::ShuttingDown))
    }

    async fn put_image(&self, id: SaleId, image: ImageRef, bytes: Bytes) -> Result<(), StoreError> {
        let images = Arc::clone(&self.images);
        tokio::task::spawn_blocking(move || images.put(id, image, &bytes))
            .await
            .map_err(|e| StoreError::internal_from("image write task failed", e))?
            .map_err(|e| StoreError::unavailable_from("cannot write the image file", e))
    }

    async fn image(&self, id: SaleId, image: ImageRef) -> Result<Option<Bytes>, StoreError> {
        let images = Arc::clone(&self.images);
        tokio::task::spawn_blocking(move || images.get(id, image))
            .await
            .map_err(|e| StoreError::internal_from("image read task failed", e))?
            .map_err(|e| StoreError::unavailable_from("cannot read the image file", e))
    }

    async fn status(&self, id: SaleId) -> Result<Option<SaleStatus>, StoreError> {
        Ok(self.book(id).map(|b| b.status(self.now())))
    }

    async fn statuses(&self) -> Result<Vec<SaleStatus>, StoreError> {
        let now = self.now();
        Ok(self.books.read().values().map(|b| b.status(now)).collect())
    }

    async fn orders(&self, id: SaleId, user: &UserId) -> Result<Option<Vec<Order>>, StoreError> {
        Ok(self.book(id).map(|b| b.orders(user)))
    }

    async fn order_page(
        &self,
        id: SaleId,
        after: Option<OrderKey>,
        limit: usize,
    ) -> Result<Option<Vec<Order>>, StoreError> {
        Ok(self.book(id).map(|b| b.order_page(after, limit)))
    }

    async fn ledger_page(
        &self,
        id: SaleId,
        after: Option<LedgerKey>,
        limit: usize,
    ) -> Result<Option<Vec<LedgerEntry>>, StoreError> {
        Ok(self.book(id).map(|b| b.ledger_page(after, limit)))
    }

    async fn summary(&self, id: SaleId) -> Result<Option<Summary>, StoreError> {
        Ok(self.book(id).map(|b| {
            let BookCounters {
                attempts,
                confirmed_orders,
                confirmed_units,
                rejections,
            } = b.counters();
            Summary {
                status: b.status(self.now()),
                attempts,
                confirmed_orders,
                confirmed_units,
                rejections,
                checkout: b.checkout_counts(),
            }
        }))
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let alive = self
            .writer
            .lock()
            .as_ref()
            .is_some_and(|h| !h.is_finished());
        if alive {
            Ok(())
        } else {
            Err(StoreError::ShuttingDown)
        }
    }

    fn now(&self) -> OffsetDateTime {
        // Never an instant before one already returned: status and decisions both read this.
        self.clock.now()
    }

    async fn shutdown(&self) {
        // The timer stops first: nothing it decides may come after the writer's last group.
        let timer = self.expiry.lock().take();
        if let Some((stop, handle)) = timer {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // Purchases already holding stock are queued before this (a purchase sends its order in
        // the same step that takes the stock), so the writer commits them first; one that
        // reserves after it is undone and answered `ShuttingDown` when the writer drops it.
        let (reply, rx) = oneshot::channel();
        // The writer commits what is queued, persists counters, replies and exits; writes sent
        // after that fail with `ShuttingDown` and their reservations are undone.
        let _ = self.send(Write::Shutdown { reply }, rx).await;
        let writer = self.writer.lock().take();
        let checkpointer = self.checkpointer.lock().take();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(handle) = writer {
                let _ = handle.join();
            }
            if let Some((stop, handle)) = checkpointer {
                drop(stop);
                let _ = handle.join();
            }
        })
        .await;
        // Nothing writes any more: the directory is free for the next store.
        drop(self.lock.lock().take());
    }
}
