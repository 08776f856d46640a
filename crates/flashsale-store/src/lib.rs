//! Where sales and orders live. [`SaleStore`] is the one contract; each backend keeps its
//! invariants behind it:
//!
//! - [`embedded`]: single node, no external service. Decisions in memory inside a per-sale
//!   critical section, orders made durable in SQLite (WAL) by one group-committing writer.
//! - [`redis_pg`] (scale-out): admission by a Redis script, orders durable in PostgreSQL.
//!
//! [`StoreConfig`] names one of them with its settings and opens it.
//!
//! Every backend promises the same thing: a [`PurchaseOutcome::Confirmed`] is returned only
//! once the order is durable, a failed write takes nothing, and no sequence of calls sells more
//! than the stock or more than the per-user limit to one buyer.
//!
//! Purchases are cancellation-safe: once an attempt may have taken stock, each store runs the
//! rest on its own tracker (`in_flight.rs`), carrying the caller's [`PurchaseHold`] with it,
//! and [`SaleStore::shutdown`] waits for all of it.
//!
//! Glossary (one name per idea, in both stores):
//! - **attempt**: one purchase request ([`Attempt`]); **decide**: apply the rules of
//!   `flashsale_core::decide` to it at one instant, with one clock.
//! - **admit**: the decision is yes; the units are taken at once as a **reservation** (embedded:
//!   units `pending` in the book; scale-out: a record with a **lease** in Redis).
//! - **commit**: make the reservation's order durable (SQLite fsync, PostgreSQL COMMIT), in a
//!   **group** with others; `confirmed` is answered only after it.
//! - **fence** (scale-out): the `reservations` row claimed once, `committed` by the commit or
//!   `released` by whoever gives up on it; its `Resolution` says which won.
//! - **settle**: apply a resolution to the reservation (Redis `settle.lua`: keep the units and
//!   confirm the key, or give them back; embedded: `confirm` or `undo` in the book).
//! - **commit outcome** (scale-out `CommitOutcome`): what the buyer is told of their commit:
//!   confirmed, failed (nothing taken), or unknown (`StoreError::Timeout`).
//! - **refusal**: a decided no ([`PurchaseOutcome::Rejected`]); remembered by **key** only while
//!   a later decision could differ.
//! - **replay**: a later attempt with a key gets the key's first answer; a **duplicate** (the
//!   first attempt still in flight) waits for it (embedded: its `FirstAttempt`; scale-out: the
//!   key's `pending` record, then a replay).
//! - **snapshot** (scale-out): each instance's in-process view of every sale, kept current by
//!   the **refresher**; the **pre-filter** answers from it what needs no round trip.
//! - **rebuild** / **audit** / **reconcile** (scale-out): restore a sale's Redis state from
//!   PostgreSQL / compare the two / settle expired reservations and audit, every interval.
//! - **failure** ([`StoreError`]): one of four kinds (unavailable, timeout, shutting down,
//!   internal), each saying **what** the store was doing, with the **cause** beneath it as its
//!   `source`; [`StoreError::report`] prints the chain.

pub mod accounts;
mod config;
mod counter_columns;
pub mod embedded;
mod error;
mod in_flight;
mod instants;
mod ledger;
mod model;
mod product_columns;
pub mod redis_pg;
pub mod sharded_map;

pub use config::StoreConfig;
pub use error::{Cause, Report, StoreError};
pub use in_flight::PurchaseHold;
pub use ledger::{LedgerCause, LedgerEntry, LedgerKey, LedgerSource};
pub use model::{
    AdmissionBatches, Attempt, BATCH_SIZE_BOUNDS, ChangeOutcome, CheckoutCounts, Dependency, Order,
    OrderEventOutcome, OrderKey, PurchaseOutcome, RejectionCounts, SaleStatus, Summary,
    WaitlistJoin, WaitlistLeave, WaitlistPlace,
};

use async_trait::async_trait;
use bytes::Bytes;
use flashsale_core::{ImageRef, NewSale, OrderEvent, Sale, SaleChange, SaleId, UserId};
use time::OffsetDateTime;
use uuid::Uuid;

/// The storage contract shared by every backend (embedded, Redis + PostgreSQL).
#[async_trait]
pub trait SaleStore: Send + Sync + 'static {
    /// Creates a sale and returns it with its new id.
    async fn create_sale(&self, new: NewSale) -> Result<Sale, StoreError>;

    /// Decides an operator's change (edit or cancel) by `flashsale_core::change::apply`, in the
    /// same atomic step as purchases (no purchase is decided between the decision and the
    /// change taking effect), records it with its instant and old/new values, and returns only
    /// once both are durable; every instance sees the change from then on.
    async fn change_sale(
        &self,
        id: SaleId,
        change: SaleChange,
    ) -> Result<ChangeOutcome, StoreError>;

    /// Keeps `bytes`, the image `image` refers to, for sale `id`, durably (OP-14). The sale
    /// shows it only once a change sets it ([`SaleStore::change_sale`] with
    /// `ImageEdit::Set(image)`), so an image kept for a change that is then refused is never
    /// served. Keeping the same bytes again is a no-op.
    async fn put_image(&self, id: SaleId, image: ImageRef, bytes: Bytes) -> Result<(), StoreError>;

    /// The bytes of sale `id`'s image `image`, or `None` if they are not kept.
    async fn image(&self, id: SaleId, image: ImageRef) -> Result<Option<Bytes>, StoreError>;

    /// Decides one attempt atomically (window, stock, limit, quantity, take, record) and, when
    /// admitted, returns only after the order is durable. `Err` means nothing was taken, except
    /// [`StoreError::Timeout`]: the outcome is not known (the buyer checks or retries with the
    /// same key).
    ///
    /// Cancellation-safe: once the attempt may have taken stock, the rest of the work (commit,
    /// then confirm or undo) runs on the store's own tracker, so dropping this future at any
    /// point only stops the caller hearing the answer; [`SaleStore::shutdown`] waits for it.
    async fn purchase(&self, attempt: Attempt) -> Result<PurchaseOutcome, StoreError> {
        self.purchase_holding(attempt, PurchaseHold::default())
            .await
    }

    /// [`SaleStore::purchase`], keeping `hold` for as long as the purchase's work runs (past
    /// this future, if it is dropped) and ending it with the outcome; dropped unended if no
    /// work that could take stock was begun.
    async fn purchase_holding(
        &self,
        attempt: Attempt,
        hold: PurchaseHold,
    ) -> Result<PurchaseOutcome, StoreError>;

    /// One sale with its live figures, or `None` if there is no such sale.
    async fn status(&self, id: SaleId) -> Result<Option<SaleStatus>, StoreError>;

    /// Every sale with its live figures (the server picks the featured one).
    async fn statuses(&self) -> Result<Vec<SaleStatus>, StoreError>;

    /// The buyer's committed orders in a sale (empty if none), or `None` if there is no such
    /// sale.
    async fn orders(&self, id: SaleId, user: &UserId) -> Result<Option<Vec<Order>>, StoreError>;

    /// One page of the sale's committed orders, in [`OrderKey`] order: the first `limit`
    /// after `after` (from the first order when `None`), or `None` if there is no such sale.
    /// An order committed before the first page was read is on exactly one page of a walk
    /// from `None` to an empty page; one committed during the walk is on at most one.
    async fn order_page(
        &self,
        id: SaleId,
        after: Option<OrderKey>,
        limit: usize,
    ) -> Result<Option<Vec<Order>>, StoreError>;

    /// One page of the sale's stock ledger, in [`LedgerKey`] order: the first `limit` entries
    /// after `after` (from the first when `None`), or `None` if there is no such sale. Every
    /// change of the sale's available, held or sold units has exactly one entry, made durable
    /// in the same atomic step as the change. An entry committed before the first page was read
    /// is on exactly one page of a walk from `None` to an empty page; one committed during the
    /// walk is on at most one.
    async fn ledger_page(
        &self,
        id: SaleId,
        after: Option<LedgerKey>,
        limit: usize,
    ) -> Result<Option<Vec<LedgerEntry>>, StoreError>;

    /// One order by its id, with its status as decided now, or `None` if there is none.
    async fn order(&self, order_id: Uuid) -> Result<Option<Order>, StoreError>;

    /// Decides `event` for order `order_id` by `flashsale_core::transition` (CO-4..CO-8), at
    /// one atomic point with the store's one deciding clock, and moves the sale's units as
    /// the transition says (held to sold; or freed: held to available) in the same step. A
    /// change is durable before this returns; racing events on one order, on any instance,
    /// have exactly one winner. `Err` means nothing changed, except [`StoreError::Timeout`]
    /// (not known: ask again, the answer is the same).
    ///
    /// Expiry needs no caller: each store runs its own timer that sends
    /// [`OrderEvent::Expire`] through this same step once `expires_at` has passed on the
    /// deciding clock, exactly once per reservation, across restarts and instance deaths.
    ///
    /// Freed units (an expiry or a cancel) go to the waitlist in the same atomic step (CO-10):
    /// before `ends_at`, each unit in turn to the earliest waiter whose reserved and paid
    /// units leave room for one more (those met at the limit are taken off the list), as a new
    /// reservation of one unit with a fresh window from the same clock reading and
    /// `offered: true`, taken off the list; units nobody takes go back to available (after
    /// `ends_at`, to no one). An offer's reservation is an order like any other: it expires,
    /// is paid or cancelled through this same step, and its own release offers again.
    async fn order_event(
        &self,
        order_id: Uuid,
        event: OrderEvent,
    ) -> Result<OrderEventOutcome, StoreError>;

    /// Puts `user` at the end of sale `id`'s waitlist (CO-9), decided at one atomic point by
    /// the rules and order of checks of `flashsale_core::Waitlist::join` (the window, then
    /// the units: `sold_out` when every unit is sold, `units_available` while any unit is
    /// available; then the buyer: already waiting, or reserved and paid units at the limit),
    /// against the same figures and allowances purchases are decided on. A join is durable
    /// before this returns. `None` if there is no such sale; an instant-mode sale's list is
    /// always refused `units_available` or `sold_out` as its figures say.
    async fn waitlist_join(
        &self,
        id: SaleId,
        user: UserId,
    ) -> Result<Option<WaitlistJoin>, StoreError>;

    /// Where `user` stands on sale `id`'s waitlist: their position (1 is next), or the latest
    /// reservation an offer gave them, or neither. At and after `ends_at` nobody waits (the
    /// list lapses) but an offered reservation is still shown. `None` if there is no such
    /// sale.
    async fn waitlist_place(
        &self,
        id: SaleId,
        user: &UserId,
    ) -> Result<Option<WaitlistPlace>, StoreError>;

    /// Takes `user` off sale `id`'s waitlist, durably. `None` if there is no such sale.
    async fn waitlist_leave(
        &self,
        id: SaleId,
        user: &UserId,
    ) -> Result<Option<WaitlistLeave>, StoreError>;

    /// The sale's counters for operators, or `None` if there is no such sale.
    async fn summary(&self, id: SaleId) -> Result<Option<Summary>, StoreError>;

    /// `Ok` when every dependency answers (for `/readyz`).
    async fn ready(&self) -> Result<(), StoreError>;

    /// Each external dependency with whether it answers now (for the
    /// `flashsale_dependency_up` metric); none for a store without external services.
    async fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }

    /// Expired reservations whose stock went back, since start (for the
    /// `flashsale_reservations_released_total` metric); 0 for a store without leases.
    fn reservations_released(&self) -> u64 {
        0
    }

    /// The admission batches sent to a shared service since start (for the
    /// `flashsale_admission_*` metrics); none for a store deciding in process.
    fn admission_batches(&self) -> AdmissionBatches {
        AdmissionBatches::default()
    }

    /// The instant this store decides admission at, as best known here: the injected clock
    /// for the embedded store, the shared store's clock for scale-out.
    fn now(&self) -> OffsetDateTime;

    /// Waits for every purchase in flight to end, then flushes pending writes and stops
    /// background work; later calls may fail.
    async fn shutdown(&self);
}
