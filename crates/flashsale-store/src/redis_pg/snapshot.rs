//! Each instance's in-process view of every sale: what status reads and the fast path (the
//! pre-filter) use, and Redis's clock as estimated here. Sales are loaded into it from
//! PostgreSQL (here); their figures come from Redis, read by the refresher (`refresh.rs`) every
//! `refresh_interval` and lowered by every settle (`settle.rs`). A polling storm on status
//! therefore costs no Redis operation per request.
//!
//! The stock a status shows is the units not yet *confirmed* (Redis's free units plus those in
//! live reservations), so it only ever goes down: a reservation released after a failed commit
//! gives units back to admission without a sold-out sale ever looking open again (FL-5), and
//! the fast path answers `sold_out` only once every unit is confirmed, which is final. Each
//! update keeps the lower figure (a refresh read before a settle cannot raise it back); only a
//! rebuild from PostgreSQL sets it outright.
//!
//! An operator's change reaches every instance through Redis: `change.lua` stores the sale's
//! new `revision` in `meta` with the change, the refresher reads it with the figures, and an
//! entry whose revision is behind is reloaded from PostgreSQL (and its figure set outright: a
//! raised stock is the one way the figure goes up).
//!
//! While Redis cannot be read, the last view is kept for [`STALE_AFTER`]; after that a status
//! that could still change is refused (503) rather than answered from an old view. A sale that
//! is over (sold out or past its end) keeps answering: nothing can change it any more.

use super::connections::Postgres;
use super::sale_row::{SALE, SALE_LEN, sale_at};
use crate::instants::{from_micros, to_micros, unix_ms};
use crate::{SaleStatus, StoreError};
use flashsale_core::{NotActiveReason, Rejection, Sale, SaleId};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;

/// How long the last view answers status while Redis cannot be read.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(2);

/// One sale as last seen.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub sale: Arc<Sale>,
    /// Units not yet confirmed (free or reserved).
    pub remaining: u32,
    /// The sale's Redis epoch the figure was read under (`None`: read from PostgreSQL).
    pub epoch: Option<i64>,
    pub sold_out_at: Option<OffsetDateTime>,
    /// How many operator changes `sale` includes.
    pub revision: i64,
}

impl Entry {
    /// Keeps the lower figure (see the module docs); at 0 the sale sold out at `sold_out_at`
    /// (when its last unit was taken), unless that is already known.
    fn lower(&mut self, unconfirmed: u32, sold_out_at: Option<OffsetDateTime>) {
        self.remaining = self.remaining.min(unconfirmed);
        if self.remaining == 0 && self.sold_out_at.is_none() {
            self.sold_out_at = sold_out_at;
        }
    }

    pub(crate) fn status(&self) -> SaleStatus {
        SaleStatus {
            held: 0,
            waitlist: 0,
            sale: Arc::clone(&self.sale),
            remaining: self.remaining,
            sold_out_at: self.sold_out_at,
        }
    }
}

/// One sale's figures as Redis holds them in its `meta` hash (each `None` if absent).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    /// Free units (`None`: the sale's Redis state is gone).
    pub remaining: Option<i64>,
    /// Units of live reservations.
    pub reserved: Option<i64>,
    /// Units on hold, waiting for payment (hold mode).
    pub on_hold: Option<i64>,
    /// When the last unit was taken (microseconds).
    pub sold_out_us: Option<i64>,
    /// The sale's Redis epoch.
    pub epoch: Option<i64>,
    /// The revision of the sale Redis holds (operator changes applied).
    pub revision: Option<i64>,
}

/// What [`Snapshot::apply`] found.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Sales whose Redis state is gone (to be rebuilt).
    pub missing: Vec<Arc<Sale>>,
    /// Sales an operator changed since this view loaded them (to be reloaded).
    pub changed: Vec<SaleId>,
}

/// The view, Redis's clock as estimated from here, and where sales are loaded from.
pub(crate) struct Snapshot {
    pg: Arc<Postgres>,
    sales: RwLock<BTreeMap<SaleId, Entry>>,
    /// Redis time minus local time, in microseconds.
    offset_us: AtomicI64,
    /// The latest instant `now` returned (microseconds): it never goes back.
    last_now_us: AtomicI64,
    /// When (local Unix ms) Redis's figures were last read; 0: never.
    refreshed_ms: AtomicI64,
}

impl Snapshot {
    /// An empty view whose sales are loaded from `pg`.
    pub(crate) fn new(pg: Arc<Postgres>) -> Self {
        Self {
            pg,
            sales: RwLock::default(),
            offset_us: AtomicI64::new(0),
            last_now_us: AtomicI64::new(0),
            refreshed_ms: AtomicI64::new(0),
        }
    }

    pub(crate) fn get(&self, id: SaleId) -> Option<Entry> {
        self.sales.read().get(&id).cloned()
    }

    pub(crate) fn all(&self) -> Vec<SaleStatus> {
        self.sales.read().values().map(Entry::status).collect()
    }

    /// The ids of every sale in the view.
    pub(crate) fn ids(&self) -> Vec<SaleId> {
        self.sales.read().keys().copied().collect()
    }

    pub(crate) fn insert(
        &self,
        sale: Arc<Sale>,
        remaining: u32,
        sold_out_at: Option<OffsetDateTime>,
    ) {
        self.insert_entry(Entry {
            sale,
            remaining,
            epoch: None,
            sold_out_at,
            revision: 0,
        });
    }

    fn insert_entry(&self, entry: Entry) {
        self.sales.write().entry(entry.sale.id).or_insert(entry);
    }

    /// Takes in the sale as changed (`revision`), unless the view holds a later one already;
    /// with `remaining`, sets the figure outright (a rebuild read it from PostgreSQL, or a
    /// change moved it).
    pub(crate) fn replace(&self, sale: Arc<Sale>, revision: i64, remaining: Option<u32>) {
        let mut sales = self.sales.write();
        let Some(entry) = sales.get_mut(&sale.id) else {
            return;
        };
        if revision < entry.revision {
            return;
        }
        entry.sale = sale;
        entry.revision = revision;
        if let Some(remaining) = remaining {
            entry.remaining = remaining;
            if remaining > 0 {
                entry.sold_out_at = None;
            }
        }
    }

    /// Lowers the figure to `unconfirmed` if that is lower (see the module docs); at 0 the
    /// sale sold out at `sold_out_at` (when its last unit was taken).
    pub(crate) fn lower_remaining(
        &self,
        id: SaleId,
        unconfirmed: u32,
        sold_out_at: Option<OffsetDateTime>,
    ) {
        if let Some(entry) = self.sales.write().get_mut(&id) {
            entry.lower(unconfirmed, sold_out_at);
        }
    }

    /// Takes in the figures Redis holds of `ids` (in the same order), just read; returns the
    /// sales whose Redis state is gone (to be rebuilt) and those changed since loaded.
    pub(crate) fn apply(&self, ids: &[SaleId], figures: Vec<Figures>) -> Applied {
        self.refreshed_ms.store(unix_ms(), Ordering::Relaxed);
        let mut applied = Applied::default();
        let missing = &mut applied.missing;
        let mut sales = self.sales.write();
        for (id, figures) in ids.iter().zip(figures) {
            let Some(entry) = sales.get_mut(id) else {
                continue;
            };
            let Some(remaining) = figures.remaining else {
                missing.push(Arc::clone(&entry.sale));
                continue;
            };
            let unconfirmed =
                (remaining + figures.reserved.unwrap_or(0) + figures.on_hold.unwrap_or(0)).max(0)
                    as u32;
            if entry.epoch.is_some() && entry.epoch != figures.epoch {
                // Rebuilt from PostgreSQL since the last read: the old figure was Redis's
                // (possibly wrong) view, the new one is the durable truth.
                entry.remaining = unconfirmed;
                entry.sold_out_at = None;
            }
            if figures.revision.unwrap_or(0) > entry.revision {
                // Changed by an operator (on any instance): the stock may have been raised.
                entry.remaining = unconfirmed;
                entry.sold_out_at = None;
                applied.changed.push(*id);
            }
            entry.epoch = figures.epoch;
            entry.lower(unconfirmed, figures.sold_out_us.map(from_micros));
        }
        drop(sales);
        applied
    }

    /// Whether the view is too old to answer a status that could still change.
    fn stale(&self) -> bool {
        let at = self.refreshed_ms.load(Ordering::Relaxed);
        unix_ms() - at > STALE_AFTER.as_millis() as i64
    }

    /// `status`, unless the view is too old to say it: a sale that could still change is not
    /// answered from a view Redis has not confirmed for a while.
    pub(crate) fn current(&self, status: SaleStatus) -> Result<SaleStatus, StoreError> {
        // Staleness first: it is the rare case, and the one clock read a fresh view needs.
        if self.stale()
            && status.remaining > 0
            && status.sale.cancelled_at.is_none()
            && self.now() < status.sale.ends_at
        {
            return Err(StoreError::unavailable(
                "the sale's figures cannot be read from Redis right now",
            ));
        }
        Ok(status)
    }

    fn max_id(&self) -> i64 {
        self.sales.read().keys().next_back().map_or(0, |id| id.0)
    }

    /// The rejection this instance can give without asking Redis, if any.
    pub(crate) fn fast_reject(&self, id: SaleId, now: OffsetDateTime) -> Option<Rejection> {
        let sales = self.sales.read();
        let entry = sales.get(&id)?;
        settled_rejection(&entry.sale, entry.remaining, now)
    }

    /// Records Redis's clock as just read (microseconds).
    pub(crate) fn observe_clock(&self, redis_us: Option<i64>) {
        if let Some(redis_us) = redis_us {
            let local = to_micros(OffsetDateTime::now_utc());
            self.offset_us.store(redis_us - local, Ordering::Relaxed);
        }
    }

    /// Redis's clock as estimated here; never earlier than an instant it returned before (a
    /// clock stepped back, here or in Redis, must not re-open an ended sale).
    pub(crate) fn now(&self) -> OffsetDateTime {
        let local = to_micros(OffsetDateTime::now_utc());
        let estimate = local + self.offset_us.load(Ordering::Relaxed);
        let last = self.last_now_us.fetch_max(estimate, Ordering::Relaxed);
        from_micros(estimate.max(last))
    }

    /// Loads the sales created since the last load (by any instance). This query runs every
    /// refresh: it is the heartbeat that lifts the up-front refusal of purchases as soon as
    /// PostgreSQL answers again.
    pub(crate) async fn load_new(&self) -> Result<(), StoreError> {
        let client = self.pg.client().await?;
        let rows = self
            .pg
            .call(
                "load sales",
                client.query(
                    &format!("SELECT {SALE}, {SOLD}, sold_out_at, revision FROM sales WHERE id > $1 ORDER BY id"),
                    &[&self.max_id()],
                ),
            )
            .await?;
        self.pg.reachable();
        for row in &rows {
            self.insert_entry(entry_of(row));
        }
        Ok(())
    }

    /// Reloads a sale an operator changed from PostgreSQL (its figures stay as Redis said).
    pub(crate) async fn reload(&self, id: SaleId) -> Result<(), StoreError> {
        let client = self.pg.client().await?;
        let row = self
            .pg
            .call(
                "reload sale",
                client.query_opt(
                    &format!(
                        "SELECT {SALE}, {SOLD}, sold_out_at, revision FROM sales WHERE id = $1"
                    ),
                    &[&id.0],
                ),
            )
            .await?;
        if let Some(row) = row {
            let e = entry_of(&row);
            self.replace(e.sale, e.revision, None);
        }
        Ok(())
    }

    /// Looks one sale up in PostgreSQL (created by another instance since the last refresh).
    pub(crate) async fn load_one(&self, id: SaleId) -> Result<Option<Arc<Sale>>, StoreError> {
        let client = self.pg.client().await?;
        let row = self
            .pg
            .call(
                "load sale",
                client.query_opt(
                    &format!(
                        "SELECT {SALE}, {SOLD}, sold_out_at, revision FROM sales WHERE id = $1"
                    ),
                    &[&id.0],
                ),
            )
            .await?;
        Ok(row.map(|row| {
            let e = entry_of(&row);
            let sale = Arc::clone(&e.sale);
            self.insert_entry(e);
            sale
        }))
    }

    /// The sale, from the view or else from PostgreSQL; `None` if there is no such sale.
    pub(crate) async fn sale(&self, id: SaleId) -> Result<Option<Arc<Sale>>, StoreError> {
        if let Some(entry) = self.get(id) {
            return Ok(Some(entry.sale));
        }
        self.load_one(id).await
    }
}

/// The rejection a snapshot entry implies without asking Redis, if any.
fn settled_rejection(sale: &Sale, remaining: u32, now: OffsetDateTime) -> Option<Rejection> {
    // Margin on the time check: this instance's estimate of Redis's clock may be a few ms
    // off, and an attempt at the very edge must be decided by Redis itself.
    const MARGIN: time::Duration = time::Duration::seconds(1);
    if sale.cancelled_at.is_some() {
        return Some(Rejection::NotActive(NotActiveReason::Ended));
    }
    if now < sale.starts_at + MARGIN {
        return None;
    }
    if remaining == 0 {
        return Some(Rejection::SoldOut);
    }
    if now >= sale.ends_at + MARGIN {
        return Some(Rejection::NotActive(NotActiveReason::Ended));
    }
    None
}

/// The units sold of a `sales` row: a hold sale's `sold` counts its units on hold too
/// (reservations waiting for payment), which are not sold yet. Instant sales skip the sum.
const SOLD: &str = "CASE WHEN payment_window_secs IS NULL THEN sold ELSE sold - (
         SELECT COALESCE(sum(quantity), 0) FROM orders o
         WHERE o.sale_id = sales.id AND o.status = 'reserved')::int4 END";

fn entry_of(row: &tokio_postgres::Row) -> Entry {
    // SELECT {SALE}, {SOLD}, sold_out_at, revision
    let sale = sale_at(row, 0);
    let sold = row.get::<_, i32>(SALE_LEN) as u32;
    let remaining = sale.stock.saturating_sub(sold);
    Entry {
        remaining,
        epoch: None,
        // A hold sale's row says when its last unit was taken; it is sold out once paid.
        sold_out_at: row
            .get::<_, Option<OffsetDateTime>>(SALE_LEN + 1)
            .filter(|_| remaining == 0),
        revision: row.get(SALE_LEN + 2),
        sale: Arc::new(sale),
    }
}
