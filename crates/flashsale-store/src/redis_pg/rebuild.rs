//! Rebuilding a sale's Redis state from PostgreSQL, when Redis lost it (the `meta` hash is
//! missing: Redis restarted without persistence, FLUSHALL, eviction) or holds it wrong (the
//! reconciler's audit found it diverged twice in a row). Nobody is admitted to a sale whose
//! `meta` is missing, so purchases wait for the rebuild.
//!
//! The rebuild runs under a Redis lock owned by a token (every step of `rebuild.lua` checks it,
//! so a rebuilder whose lock expired changes nothing, and only the owner releases it): the
//! sale's epoch is bumped in PostgreSQL (which waits for commits in flight on the sale's row and
//! refuses later commits of orders admitted under the old epoch: their reservations are gone
//! with the old state, so their stock is released by the rebuild itself); then, only if Redis
//! does not already hold that epoch or a newer one, the old state is deleted and holdings and
//! confirmed idempotency keys are written back in bounded chunks, `meta` last.

use super::connections::{Postgres, Redis};
use super::keys::{Keys, SaleKeys};
use super::sale_row::{SALE, SALE_LEN, sale_at};
use super::scripts::{RebuildLock, Scripts, Step, StepReply};
use super::snapshot::Snapshot;
use crate::StoreError;
use crate::instants::to_micros;
use flashsale_core::{CheckoutMode, Sale, SaleId};
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// How long one instance may hold a sale's rebuild lock.
const REBUILD_LOCK_MS: u64 = 10_000;
/// Items per rebuild step (one bounded Redis call each, well under Lua's argument limits).
const CHUNK: usize = 1000;

/// Rebuilds sales in Redis from PostgreSQL.
pub(crate) struct Rebuilder {
    redis: Arc<Redis>,
    pg: Arc<Postgres>,
    keys: Arc<Keys>,
    scripts: Arc<Scripts>,
    snapshot: Arc<Snapshot>,
}

impl Rebuilder {
    /// A rebuilder writing through `scripts` and setting `snapshot`'s figures.
    pub(crate) fn new(
        redis: Arc<Redis>,
        pg: Arc<Postgres>,
        keys: Arc<Keys>,
        scripts: Arc<Scripts>,
        snapshot: Arc<Snapshot>,
    ) -> Self {
        Self {
            redis,
            pg,
            keys,
            scripts,
            snapshot,
        }
    }

    /// Rebuilds a sale's Redis state from PostgreSQL if it is missing (see the module docs).
    /// Returns `false` if another instance is rebuilding it right now.
    pub(crate) async fn rebuild(&self, sale: &Sale) -> Result<bool, StoreError> {
        self.rebuild_if(sale, None).await
    }

    /// Rebuilds a sale whose Redis state, at `epoch`, was found to disagree with PostgreSQL
    /// (unless someone rebuilt it meanwhile). Returns `false` if another instance holds the
    /// lock.
    pub(crate) async fn rebuild_diverged(
        &self,
        sale: &Sale,
        epoch: i64,
    ) -> Result<bool, StoreError> {
        self.rebuild_if(sale, Some(epoch)).await
    }

    /// One rebuild under the sale's lock. `seen` is the Redis epoch that was found wrong
    /// (`None`: the state was missing); if Redis no longer shows it, someone else already
    /// rebuilt.
    async fn rebuild_if(&self, sale: &Sale, seen: Option<i64>) -> Result<bool, StoreError> {
        let keys = self.keys.sale(sale.id);
        let mut con = self.redis.con();
        let token = Uuid::now_v7().to_string();
        let locked: Option<String> = self
            .redis
            .call(
                "rebuild lock",
                redis::cmd("SET")
                    .arg(&keys.rebuild_lock)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(REBUILD_LOCK_MS)
                    .query_async(&mut con),
            )
            .await?;
        if locked.is_none() {
            return Ok(false);
        }
        let lock = Lock {
            scripts: &self.scripts,
            lock: RebuildLock {
                key: &keys.rebuild_lock,
                token: &token,
                ms: REBUILD_LOCK_MS,
            },
        };
        let result = self.rebuild_locked(&lock, &keys, sale, seen).await;
        // Only our own lock is released: if it expired and another instance holds it now, the
        // step finds a different token and leaves it alone.
        let _ = lock.step(Step::Unlock, &[], &[]).await;
        result.map(|()| true)
    }

    async fn rebuild_locked(
        &self,
        lock: &Lock<'_>,
        keys: &SaleKeys,
        sale: &Sale,
        seen: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut con = self.redis.con();
        let (current, clock_us): (Option<i64>, Option<i64>) = self
            .redis
            .call(
                "HMGET epoch",
                redis::cmd("HMGET")
                    .arg(&keys.meta)
                    .arg("epoch")
                    .arg("clock_us")
                    .query_async(&mut con),
            )
            .await?;
        if current != seen {
            // Restored (or rebuilt at another epoch) by someone else since we looked.
            return Ok(());
        }
        let durable = self.read_durable(sale.id, current.unwrap_or(0)).await?;
        // The epoch is checked before anything is deleted: a slower rebuilder (older epoch)
        // must not wipe what a faster one restored.
        let begun = lock
            .must(
                Step::Begin,
                &keys.script_keys(),
                &[durable.epoch.to_string()],
            )
            .await?;
        if begun == StepReply::Newer {
            return Ok(());
        }
        fill(lock, keys, &durable).await?;
        // The sale as PostgreSQL holds it now, not as this instance last saw it: an operator
        // may have changed it since.
        // `sold` counts a hold sale's held units too: they stay taken, on hold.
        let remaining = durable.sale.stock.saturating_sub(durable.sold);
        lock.must(
            Step::Restore,
            &[&keys.meta],
            &restored_meta(&durable.sale, &durable, remaining, clock_us),
        )
        .await?;
        self.snapshot.replace(
            Arc::new(durable.sale.clone()),
            durable.revision,
            Some(remaining + durable.on_hold),
        );
        tracing::info!(sale = %sale.id, epoch = durable.epoch, sold = durable.sold, "sale rebuilt in Redis from PostgreSQL");
        Ok(())
    }

    /// What PostgreSQL knows of a sale, read under a new epoch above `min_epoch`.
    async fn read_durable(&self, id: SaleId, min_epoch: i64) -> Result<Durable, StoreError> {
        let mut client = self.pg.client().await?;
        self.pg
            .call(
                "read sale for rebuild",
                read_durable(&mut client, id, min_epoch),
            )
            .await
    }
}

/// Writes the holdings and confirmed idempotency keys back, in bounded chunks, each one call
/// well within the Redis timeout, so a sale with any number of buyers finishes rebuilding.
async fn fill(lock: &Lock<'_>, keys: &SaleKeys, durable: &Durable) -> Result<(), StoreError> {
    fill_hash(lock, &keys.held, &durable.held, |h| {
        [h.user.clone(), h.units.to_string()]
    })
    .await?;
    fill_hash(lock, &keys.idempotency, &durable.keys, |k| {
        [k.key.clone(), k.record.clone()]
    })
    .await
}

/// Writes `items` into the hash `hash`, [`CHUNK`] (field, value) pairs a step.
async fn fill_hash<T>(
    lock: &Lock<'_>,
    hash: &str,
    items: &[T],
    pair: impl Fn(&T) -> [String; 2],
) -> Result<(), StoreError> {
    for chunk in items.chunks(CHUNK) {
        let args: Vec<String> = chunk.iter().flat_map(&pair).collect();
        lock.must(Step::Fill, &[hash], &args).await?;
    }
    Ok(())
}

/// The arguments of the `restore` step: `meta` as it must be after the rebuild.
fn restored_meta(
    sale: &Sale,
    durable: &Durable,
    remaining: u32,
    clock_us: Option<i64>,
) -> Vec<String> {
    vec![
        sale.stock.to_string(),
        sale.per_user_limit.to_string(),
        to_micros(sale.starts_at).to_string(),
        to_micros(sale.ends_at).to_string(),
        remaining.to_string(),
        durable.epoch.to_string(),
        durable
            .sold_out_at
            // A hold sale with units on hold is not sold out yet (its `sold` counts them).
            .filter(|_| durable.on_hold == 0)
            .map(|t| to_micros(t).to_string())
            .unwrap_or_default(),
        // The clock guard survives the rebuild: what the old state had decided with, or at
        // least the instant of the last order PostgreSQL holds.
        clock_us
            .unwrap_or(0)
            .max(durable.last_order_at.map_or(0, to_micros))
            .to_string(),
        if sale.cancelled_at.is_some() { "1" } else { "" }.to_owned(),
        durable.revision.to_string(),
        if matches!(sale.checkout, CheckoutMode::Hold { .. }) {
            "1"
        } else {
            ""
        }
        .to_owned(),
        durable.on_hold.to_string(),
        durable.waitlist.0.to_string(),
        durable.waitlist.1.to_string(),
    ]
}

/// The rebuild lock as held by one instance: every step runs only while its token is there.
struct Lock<'a> {
    scripts: &'a Scripts,
    lock: RebuildLock<'a>,
}

impl Lock<'_> {
    async fn step(
        &self,
        step: Step,
        keys: &[&str],
        args: &[String],
    ) -> Result<StepReply, StoreError> {
        self.scripts.rebuild(&self.lock, step, keys, args).await
    }

    /// A step that must find the lock still ours.
    async fn must(
        &self,
        step: Step,
        keys: &[&str],
        args: &[String],
    ) -> Result<StepReply, StoreError> {
        let reply = self.step(step, keys, args).await?;
        if reply == StepReply::Lost {
            return Err(StoreError::unavailable(
                "rebuild lock expired; another instance took over",
            ));
        }
        Ok(reply)
    }
}

/// What PostgreSQL knows of a sale, read under a new epoch.
struct Durable {
    /// The sale's row as it is now (with every operator change).
    sale: Sale,
    /// How many operator changes it has had.
    revision: i64,
    epoch: i64,
    sold: u32,
    sold_out_at: Option<OffsetDateTime>,
    /// Units of the reservations waiting for payment (hold mode).
    on_hold: u32,
    /// When the sale's last order was admitted.
    last_order_at: Option<OffsetDateTime>,
    /// The waitlist's length and revision (`waitlist.rs`), as status reads them from meta.
    waitlist: (i32, i64),
    held: Vec<Holding>,
    keys: Vec<ConfirmedKey>,
}

/// Units one buyer holds (committed).
struct Holding {
    user: String,
    units: i32,
}

/// A confirmed idempotency key and its record, as `admission.lua` stores it.
struct ConfirmedKey {
    key: String,
    record: String,
}

/// Bumps the sale's epoch above `min_epoch` (the epoch Redis showed: a Redis dataset from
/// elsewhere must not outrank the rebuild) and reads what the rebuild writes back, in one
/// transaction.
async fn read_durable(
    client: &mut deadpool_postgres::Object,
    id: SaleId,
    min_epoch: i64,
) -> Result<Durable, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // FOR UPDATE conflicts with the FOR KEY SHARE every group commit takes first: commits in
    // flight finish before the epoch moves, and any later commit of an order admitted under
    // the old epoch is refused.
    tx.execute("SELECT 1 FROM sales WHERE id = $1 FOR UPDATE", &[&id.0])
        .await?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE sales SET epoch = GREATEST(epoch, $2) + 1 WHERE id = $1
                 RETURNING epoch, sold, sold_out_at,
                     (SELECT max(created_at) FROM orders WHERE sale_id = $1), {SALE}, revision,
                     (SELECT COALESCE(sum(quantity), 0) FROM orders
                      WHERE sale_id = $1 AND status = 'reserved')::int4,
                     waitlist_len, waitlist_rev"
            ),
            &[&id.0, &min_epoch],
        )
        .await?;
    let held = tx
        .query(
            "SELECT user_id, held FROM buyers WHERE sale_id = $1",
            &[&id.0],
        )
        .await?
        .iter()
        .map(|r| Holding {
            user: r.get(0),
            units: r.get(1),
        })
        .collect();
    let keys = tx
        .query(
            "SELECT idempotency_key, user_id, quantity, order_id, created_at FROM orders
             WHERE sale_id = $1 AND idempotency_key IS NOT NULL",
            &[&id.0],
        )
        .await?
        .iter()
        .map(|r| {
            let (user, q, order_id, created): (&str, i32, Uuid, OffsetDateTime) =
                (r.get(1), r.get(2), r.get(3), r.get(4));
            ConfirmedKey {
                key: r.get(0),
                record: format!("C\n{user}\n{q}\n{order_id}\n{}", to_micros(created)),
            }
        })
        .collect();
    tx.commit().await?;
    Ok(Durable {
        sale: sale_at(&row, 4),
        revision: row.get(4 + SALE_LEN),
        epoch: row.get(0),
        sold: row.get::<_, i32>(1) as u32,
        sold_out_at: row.get(2),
        on_hold: row.get::<_, i32>(5 + SALE_LEN) as u32,
        last_order_at: row.get(3),
        waitlist: (row.get(6 + SALE_LEN), row.get(7 + SALE_LEN)),
        held,
        keys,
    })
}
