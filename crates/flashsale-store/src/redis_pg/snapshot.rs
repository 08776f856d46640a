//! Each instance's in-process view of every sale: what status reads and the fast path use.
//!
//! A background task refreshes it every `refresh_interval` (100 ms by default, at most 250 ms):
//! new sales from PostgreSQL (created by any instance), then one pipelined Redis round trip for
//! the clock and every sale's figures. A polling storm on status therefore costs no Redis
//! operation per request. A sale whose Redis state is missing is rebuilt from here too, so
//! Redis losing its data is noticed even when nobody is buying.
//!
//! The stock a status shows is the units not yet *confirmed* (Redis's free units plus those in
//! live reservations), so it only ever goes down: a reservation released after a failed commit
//! gives units back to admission without a sold-out sale ever looking open again (FL-5), and
//! the fast path answers `sold_out` only once every unit is confirmed, which is final. Each
//! update keeps the lower figure (a refresh read before a settle cannot raise it back); only a
//! rebuild from PostgreSQL sets it outright.
//!
//! While Redis cannot be read, the last view is kept for [`STALE_AFTER`]; after that a status
//! that could still change is refused (503) rather than answered from an old view. A sale that
//! is over (sold out or past its end) keeps answering: nothing can change it any more.

use super::{Inner, reconcile, scripts, settled_rejection};
use crate::{SaleStatus, StoreError};
use flashsale_core::{Rejection, Sale, SaleId};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

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
            sale: Arc::clone(&self.sale),
            remaining: self.remaining,
            sold_out_at: self.sold_out_at,
        }
    }
}

/// The view, and Redis's clock as estimated from here.
#[derive(Default)]
pub(crate) struct Snapshot {
    sales: RwLock<BTreeMap<SaleId, Entry>>,
    /// Redis time minus local time, in microseconds.
    offset_us: AtomicI64,
    /// The latest instant `now` returned (microseconds): it never goes back.
    last_now_us: AtomicI64,
    /// When (local Unix ms) Redis's figures were last read; 0: never.
    refreshed_ms: AtomicI64,
}

impl Snapshot {
    pub(crate) fn get(&self, id: SaleId) -> Option<Entry> {
        self.sales.read().get(&id).cloned()
    }

    pub(crate) fn all(&self) -> Vec<SaleStatus> {
        self.sales.read().values().map(Entry::status).collect()
    }

    pub(crate) fn insert(
        &self,
        sale: Arc<Sale>,
        remaining: u32,
        sold_out_at: Option<OffsetDateTime>,
    ) {
        self.sales.write().entry(sale.id).or_insert(Entry {
            sale,
            remaining,
            epoch: None,
            sold_out_at,
        });
    }

    /// Sets the figure outright (a rebuild read it from PostgreSQL).
    pub(crate) fn set_remaining(&self, id: SaleId, remaining: u32) {
        if let Some(entry) = self.sales.write().get_mut(&id) {
            entry.remaining = remaining;
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

    /// Whether the view is too old to answer a status that could still change.
    pub(crate) fn stale(&self) -> bool {
        let at = self.refreshed_ms.load(Ordering::Relaxed);
        super::unix_ms() - at > STALE_AFTER.as_millis() as i64
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
            let local = scripts::to_micros(OffsetDateTime::now_utc());
            self.offset_us.store(redis_us - local, Ordering::Relaxed);
        }
    }

    /// Redis's clock as estimated here; never earlier than an instant it returned before (a
    /// clock stepped back, here or in Redis, must not re-open an ended sale).
    pub(crate) fn now(&self) -> OffsetDateTime {
        let local = scripts::to_micros(OffsetDateTime::now_utc());
        let estimate = local + self.offset_us.load(Ordering::Relaxed);
        let last = self.last_now_us.fetch_max(estimate, Ordering::Relaxed);
        scripts::from_micros(estimate.max(last))
    }
}

/// Refreshes the snapshot every interval until cancelled.
pub(crate) async fn run(inner: Arc<Inner>, cancel: CancellationToken) {
    let period = inner.cfg.refresh_interval.min(Duration::from_millis(250));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        refresh(&inner).await;
        n += 1;
        // Counters are statistics: flushing them about once a second is plenty.
        if n.is_multiple_of(10)
            && let Err(e) = inner.counters.flush(&inner).await
        {
            tracing::debug!(error = %e, "counters not flushed; retrying later");
        }
    }
}

/// One refresh: new sales from PostgreSQL, then figures and clock from Redis.
pub(crate) async fn refresh(inner: &Arc<Inner>) {
    if let Err(e) = load_new(inner).await {
        tracing::debug!(error = %e, "snapshot: cannot load new sales");
    }
    let ids: Vec<SaleId> = inner.snapshot.sales.read().keys().copied().collect();
    let mut pipe = redis::pipe();
    pipe.cmd("TIME");
    for id in &ids {
        pipe.cmd("HMGET")
            .arg(&inner.keys.sale(*id).meta)
            .arg("remaining")
            .arg("reserved")
            .arg("sold_out_us")
            .arg("epoch");
    }
    let mut con = inner.con();
    type Figures = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
    type Reply = (Vec<String>, Vec<Figures>);
    let reply = inner
        .redis_call("snapshot", async {
            let mut values: Vec<redis::Value> = pipe.query_async(&mut con).await?;
            let time: Vec<String> = redis::from_redis_value(values.remove(0))?;
            let figures = values
                .into_iter()
                .map(|v| redis::from_redis_value(v).map_err(redis::RedisError::from))
                .collect::<redis::RedisResult<Vec<Figures>>>()?;
            Ok::<Reply, redis::RedisError>((time, figures))
        })
        .await;
    let (time, figures) = match reply {
        Ok(reply) => reply,
        Err(e) => {
            tracing::debug!(error = %e, "snapshot: redis unreachable, keeping the last view");
            return;
        }
    };
    if let [secs, micros] = time.as_slice()
        && let (Ok(secs), Ok(micros)) = (secs.parse::<i64>(), micros.parse::<i64>())
    {
        inner
            .snapshot
            .observe_clock(Some(secs * 1_000_000 + micros));
    }
    inner
        .snapshot
        .refreshed_ms
        .store(super::unix_ms(), Ordering::Relaxed);
    let mut missing = Vec::new();
    {
        let mut sales = inner.snapshot.sales.write();
        for (id, (remaining, reserved, sold_out_us, epoch)) in ids.iter().zip(figures) {
            let Some(entry) = sales.get_mut(id) else {
                continue;
            };
            match remaining {
                Some(remaining) => {
                    let unconfirmed = (remaining + reserved.unwrap_or(0)).max(0) as u32;
                    if entry.epoch.is_some() && entry.epoch != epoch {
                        // Rebuilt from PostgreSQL since the last read: the old figure was
                        // Redis's (possibly wrong) view, the new one is the durable truth.
                        entry.remaining = unconfirmed;
                        entry.sold_out_at = None;
                    }
                    entry.epoch = epoch;
                    entry.lower(unconfirmed, sold_out_us.map(scripts::from_micros));
                }
                None => missing.push(Arc::clone(&entry.sale)),
            }
        }
    }
    for sale in missing {
        if let Err(e) = reconcile::rebuild(inner, &sale).await {
            tracing::warn!(sale = %sale.id, error = %e, "cannot rebuild sale in Redis yet");
        }
    }
}

const SALE_COLUMNS: &str = "id, name, starts_at, ends_at, stock, per_user_limit, sold, sold_out_at";

fn entry_of(row: &tokio_postgres::Row) -> Entry {
    let sale = Sale {
        id: SaleId(row.get(0)),
        name: row.get(1),
        starts_at: row.get(2),
        ends_at: row.get(3),
        stock: row.get::<_, i32>(4) as u32,
        per_user_limit: row.get::<_, i32>(5) as u32,
    };
    let sold = row.get::<_, i32>(6) as u32;
    Entry {
        remaining: sale.stock.saturating_sub(sold),
        epoch: None,
        sold_out_at: row.get(7),
        sale: Arc::new(sale),
    }
}

async fn load_new(inner: &Inner) -> Result<(), StoreError> {
    let client = inner.pg().await?;
    let rows = inner
        .pg_call(
            "load sales",
            client.query(
                &format!("SELECT {SALE_COLUMNS} FROM sales WHERE id > $1 ORDER BY id"),
                &[&inner.snapshot.max_id()],
            ),
        )
        .await?;
    // This query runs every refresh: it is the heartbeat that lifts the up-front refusal of
    // purchases as soon as PostgreSQL answers again.
    inner.pg_reachable();
    for row in &rows {
        let e = entry_of(row);
        inner.snapshot.insert(e.sale, e.remaining, e.sold_out_at);
    }
    Ok(())
}

/// Looks one sale up in PostgreSQL (created by another instance since the last refresh).
pub(crate) async fn load_one(inner: &Inner, id: SaleId) -> Result<Option<Arc<Sale>>, StoreError> {
    let client = inner.pg().await?;
    let row = inner
        .pg_call(
            "load sale",
            client.query_opt(
                &format!("SELECT {SALE_COLUMNS} FROM sales WHERE id = $1"),
                &[&id.0],
            ),
        )
        .await?;
    Ok(row.map(|row| {
        let e = entry_of(&row);
        let sale = Arc::clone(&e.sale);
        inner.snapshot.insert(e.sale, e.remaining, e.sold_out_at);
        sale
    }))
}
