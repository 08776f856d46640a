//! The scale-out store: many stateless instances share Redis (the hot path) and PostgreSQL
//! (the durable record). See `docs/scale-out.md` for the whole design.
//!
//! The path of a purchase (`purchase.rs`), after core's `check_quantity`:
//! 1. pre-filter (`Purchases::pre_filter`, from the view in `snapshot.rs`): a sale known to be
//!    sold out or over is refused in process, with no round trip;
//! 2. admission (`admission.lua`, run by `scripts.rs`): one atomic script decides with
//!    Redis's clock, by the rules of `flashsale_core::decide` (checked against it by
//!    `tests/admission_differential.rs`), and if admitted takes the stock and records a
//!    reservation with a lease; the attempts of a sale queued together share one call, each
//!    decided in turn in arrival order (`admitter.rs`);
//! 3. group commit and fence (`orders.rs`, `fence.rs`): the order is written to PostgreSQL in
//!    a multi-row transaction that claims the reservation's fence row as committed; only then
//!    is `confirmed` answered (a failed write is fenced as released instead);
//! 4. settle (`settle.rs`, running `settle.lua`): the reservation is removed in Redis, kept
//!    (confirmed) or handed back (released).
//!
//! Steps 2 to 4 run as one task on the store's own tracker (`crate::in_flight`): a caller that
//! stops waiting cannot strand a reservation, and `shutdown` waits for them.
//!
//! Checkout with holds (`checkout.rs`): a hold sale's purchase takes the same path and is
//! committed `reserved`; PostgreSQL decides every later transition (pay, cancel, expire) in one
//! transaction on the order's row lock, and `transition.lua` then applies its unit move to
//! Redis at most once (the reconciler applies what a dead instance left, and expires
//! reservations past their deadline through the same step).
//!
//! The waitlist (`waitlist.rs`): joins and leaves in PostgreSQL under the sale row's lock; a
//! release offers its units to the earliest waiters inside its own transition transaction.
//!
//! Beside the path: `refresh.rs` keeps the snapshot current; `reconcile.rs` settles
//! reservations whose instance died and audits each sale's Redis state; `rebuild.rs` restores
//! a sale's Redis state from PostgreSQL when it was lost or found wrong; `counters.rs` keeps
//! the operator counters. Under them all: `connections.rs` (Redis and PostgreSQL handles,
//! with their timeouts), `keys.rs`, `schema.rs`, `config.rs`.
//!
//! Dependencies point one way: this module builds each part, hands it what it needs, and
//! serves the [`SaleStore`] contract from them; no part imports from here.
//!
//! Invariants kept here:
//! - PostgreSQL refuses on its own to sell more than the stock (`CHECK (sold <= stock)`) or more
//!   than the limit to a buyer (`CHECK (held <= per_user_limit)`), whatever Redis says.
//! - Each reservation is resolved exactly once, by whoever inserts its `reservations` row first
//!   (the commit or the reconciler's release): a late commit cannot land after a release.
//! - In Redis, `remaining + sold + reserved = stock` for every sale once nothing is in flight
//!   (a hold sale: `remaining + onhold + sold + reserved`).
//! - An order leaves `reserved` once (its row lock), and its unit move lands in Redis once.

mod admitter;
mod change;
mod checkout;
mod config;
pub(crate) mod connections;
mod counters;
mod fence;
mod grouping;
pub mod keys;
mod ledger;
mod orders;
mod purchase;
mod rebuild;
mod reconcile;
mod refresh;
mod sale_row;
pub(crate) mod schema;
mod scripts;
mod settle;
mod snapshot;
mod waitlist;

pub use config::{DEFAULT_KEY_PREFIX, DEFAULT_PG_SCHEMA, RedisPgConfig};

use crate::in_flight::InFlight;
use crate::product_columns::ProductRow;
use crate::{
    AdmissionBatches, Attempt, ChangeOutcome, Dependency, LedgerCause, LedgerEntry, LedgerKey,
    Order, OrderKey, PurchaseHold, PurchaseOutcome, SaleStatus, SaleStore, StoreError, Summary,
};
use crate::{WaitlistJoin, WaitlistLeave, WaitlistPlace};
use admitter::Admitter;
use async_trait::async_trait;
use bytes::Bytes;
use change::Changes;
use checkout::Checkouts;
use connections::{Postgres, Redis};
use counters::Counters;
use fence::Fence;
use flashsale_core::{IdempotencyKey, ImageRef, NewSale, Sale, SaleChange, SaleId, UserId};
use keys::Keys;
use orders::OrderWriter;
use purchase::{PreFilter, Purchases};
use rebuild::Rebuilder;
use reconcile::{AuditPace, Reconciler, ReconcilerParts};
use refresh::Refresher;
use scripts::Scripts;
use settle::Settler;
use snapshot::Snapshot;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use waitlist::{Standing, Waitlists};

/// The scale-out store (Redis admission + PostgreSQL durability). Cheap to share in an `Arc`.
pub struct RedisPgStore {
    redis: Arc<Redis>,
    pg: Arc<Postgres>,
    keys: Arc<Keys>,
    snapshot: Arc<Snapshot>,
    counters: Arc<Counters>,
    rebuilder: Arc<Rebuilder>,
    reconciler: Arc<Reconciler>,
    purchases: Arc<Purchases>,
    changes: Arc<Changes>,
    checkouts: Arc<Checkouts>,
    waitlists: Arc<Waitlists>,
    /// Purchases past the pre-filter, run to their end whoever waits (shutdown waits for them).
    in_flight: InFlight,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl RedisPgStore {
    /// Connects to both services, applies the migrations, loads the sales, and starts the
    /// background tasks (group committer, snapshot refresher, reconciler). Fails if either
    /// service is unreachable now; after that, outages are survived and recovered from.
    pub async fn connect(cfg: RedisPgConfig) -> Result<Self, StoreError> {
        if !schema::valid_schema(&cfg.pg_schema) {
            return Err(StoreError::internal(format!(
                "invalid PostgreSQL schema name {:?}",
                cfg.pg_schema
            )));
        }
        let redis = Arc::new(Redis::new(&cfg)?);
        let pg = Arc::new(Postgres::new(&cfg)?);
        redis.ping().await?;
        schema::apply(&pg, &cfg.pg_schema).await?;
        let keys = Arc::new(Keys::new(&cfg.key_prefix));
        let scripts = Arc::new(Scripts::new(Arc::clone(&redis)));
        scripts.load().await?;
        let snapshot = Arc::new(Snapshot::new(Arc::clone(&pg)));
        let counters = Arc::new(Counters::new(Arc::clone(&pg)));
        let fence = Arc::new(Fence::new(Arc::clone(&pg)));
        let settler = Arc::new(Settler::new(
            Arc::clone(&keys),
            Arc::clone(&scripts),
            Arc::clone(&snapshot),
        ));
        let rebuilder = Arc::new(Rebuilder::new(
            Arc::clone(&redis),
            Arc::clone(&pg),
            Arc::clone(&keys),
            Arc::clone(&scripts),
            Arc::clone(&snapshot),
        ));
        let refresher = Refresher::new(
            Arc::clone(&snapshot),
            Arc::clone(&redis),
            Arc::clone(&keys),
            Arc::clone(&rebuilder),
            Arc::clone(&counters),
            cfg.refresh_interval,
        );
        refresher.refresh().await;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let writer = OrderWriter::spawn(
            Arc::clone(&pg),
            Arc::clone(&fence),
            Arc::clone(&settler),
            cfg.max_batch,
            &cancel,
            &tracker,
        );
        tracker.spawn(refresher.run(cancel.clone()));
        let waitlists = Arc::new(Waitlists::new(
            Arc::clone(&pg),
            Arc::clone(&redis),
            Arc::clone(&keys),
        ));
        let checkouts = Arc::new(Checkouts::new(
            Arc::clone(&pg),
            Arc::clone(&keys),
            Arc::clone(&scripts),
            Arc::clone(&waitlists),
        ));
        let reconciler = Arc::new(Reconciler::new(ReconcilerParts {
            checkouts: Arc::clone(&checkouts),
            waitlists: Arc::clone(&waitlists),
            redis: Arc::clone(&redis),
            pg: Arc::clone(&pg),
            keys: Arc::clone(&keys),
            scripts: Arc::clone(&scripts),
            snapshot: Arc::clone(&snapshot),
            fence,
            settler: Arc::clone(&settler),
            rebuilder: Arc::clone(&rebuilder),
            interval: cfg.reconcile_interval,
        }));
        tracker.spawn(Arc::clone(&reconciler).run(cancel.clone()));
        let changes = Arc::new(Changes {
            pg: Arc::clone(&pg),
            keys: Arc::clone(&keys),
            scripts: Arc::clone(&scripts),
            snapshot: Arc::clone(&snapshot),
            rebuilder: Arc::clone(&rebuilder),
            patience: cfg.pg_timeout,
        });
        let admitter = Admitter::spawn(
            scripts,
            Arc::clone(&keys),
            cfg.lease.as_millis() as u64,
            &cancel,
            &tracker,
        );
        let purchases = Arc::new(Purchases {
            snapshot: Arc::clone(&snapshot),
            counters: Arc::clone(&counters),
            pg: Arc::clone(&pg),
            admitter,
            settler,
            rebuilder: Arc::clone(&rebuilder),
            writer,
            patience: cfg.pg_timeout,
        });
        Ok(Self {
            redis,
            pg,
            keys,
            snapshot,
            counters,
            rebuilder,
            reconciler,
            purchases,
            changes,
            checkouts,
            waitlists,
            in_flight: InFlight::default(),
            cancel,
            tracker,
        })
    }

    /// The Redis key names this store uses (for operators and tests).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Test hook: while `skip` is set, order transitions commit in PostgreSQL but their unit
    /// moves are not applied to Redis, as if this instance died between the two; the
    /// reconciler (of any instance) applies them later.
    #[doc(hidden)]
    pub fn skip_redis_moves(&self, skip: bool) {
        self.checkouts.skip_apply(skip);
    }

    /// The figures of hold-mode sales among `statuses` as Redis holds them now (one `HMGET`
    /// each, in one pipeline); instant sales keep the snapshot's, with no Redis call.
    async fn with_holds(
        &self,
        mut statuses: Vec<SaleStatus>,
    ) -> Result<Vec<SaleStatus>, StoreError> {
        let holds: Vec<usize> = (0..statuses.len())
            .filter(|&i| statuses[i].sale.checkout.payment_window().is_some())
            .collect();
        if holds.is_empty() {
            return Ok(statuses);
        }
        let mut pipe = redis::pipe();
        for &i in &holds {
            pipe.cmd("HMGET")
                .arg(&self.keys.sale(statuses[i].sale.id).meta)
                .arg("remaining")
                .arg("reserved")
                .arg("onhold")
                .arg("waitlist");
        }
        let mut con = self.redis.con();
        type Figures = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
        let figures: Vec<Figures> = self
            .redis
            .call("status of hold sales", pipe.query_async(&mut con))
            .await?;
        let now = self.snapshot.now();
        for (i, (remaining, reserved, on_hold, waitlist)) in holds.into_iter().zip(figures) {
            // A sale whose Redis state is being rebuilt keeps the snapshot's figures.
            if let Some(remaining) = remaining {
                let status = statuses[i].clone();
                // The list lapses at the end (or a cancellation): nobody waits from then on.
                let waitlist = if now < status.sale.ends_at && status.sale.cancelled_at.is_none() {
                    waitlist.unwrap_or(0)
                } else {
                    0
                };
                statuses[i] = checkout::hold_status(
                    status,
                    remaining,
                    reserved.unwrap_or(0),
                    on_hold.unwrap_or(0),
                    waitlist,
                );
            }
        }
        Ok(statuses)
    }

    /// Resolves expired reservations and audits every sale now, as the periodic reconciler
    /// does (but whoever audited last); returns how many reservations were resolved.
    pub async fn reconcile_now(&self) -> Result<usize, StoreError> {
        self.reconciler.reconcile_all(AuditPace::Now).await
    }
}

#[async_trait]
impl SaleStore for RedisPgStore {
    async fn waitlist_join(
        &self,
        id: SaleId,
        user: UserId,
    ) -> Result<Option<WaitlistJoin>, StoreError> {
        self.waitlists.join(id, &user).await
    }

    async fn waitlist_place(
        &self,
        id: SaleId,
        user: &UserId,
    ) -> Result<Option<WaitlistPlace>, StoreError> {
        if self.snapshot.sale(id).await?.is_none() {
            return Ok(None);
        }
        match self.waitlists.place(id, user).await? {
            Standing::Place(place) => Ok(Some(place)),
            Standing::Offered(order_id) => match self.checkouts.order(order_id).await? {
                Some(order) => Ok(Some(WaitlistPlace::Offered(order))),
                None => Err(StoreError::internal(format!(
                    "offered order {order_id} vanished"
                ))),
            },
        }
    }

    async fn waitlist_leave(
        &self,
        id: SaleId,
        user: &UserId,
    ) -> Result<Option<WaitlistLeave>, StoreError> {
        self.waitlists.leave(id, user).await
    }

    async fn order(&self, order_id: uuid::Uuid) -> Result<Option<Order>, StoreError> {
        self.checkouts.order(order_id).await
    }

    async fn order_event(
        &self,
        order_id: uuid::Uuid,
        event: flashsale_core::OrderEvent,
    ) -> Result<crate::OrderEventOutcome, StoreError> {
        // On the tracker: once the transaction may commit, its move is applied to Redis
        // whoever still waits (else the reconciler would have to).
        let checkouts = Arc::clone(&self.checkouts);
        self.tracker
            .spawn(async move { checkouts.event(order_id, &event).await })
            .await
            .map_err(|e| StoreError::internal_from("the order event's task failed", e))?
    }

    async fn create_sale(&self, new: NewSale) -> Result<Sale, StoreError> {
        let pg = &self.pg;
        let client = pg.client().await?;
        let key = new.creation_key.as_ref().map(IdempotencyKey::as_str);
        let product = ProductRow::of(&new.product);
        let at = flashsale_core::sale::truncate_to_micros(self.now());
        // A key seen before (a retry after a lost answer) inserts nothing: its sale is returned.
        // The sale and its `created` ledger entry are one statement, so one atomic step.
        let row = pg
            .call(
                "create sale",
                client.query_opt(
                    "WITH sale AS (
                         INSERT INTO sales (name, starts_at, ends_at, stock, per_user_limit,
                                            creation_key, description, price_minor, currency,
                                            image_kind, image_sha256, payment_window_secs)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $14)
                         ON CONFLICT (creation_key) DO NOTHING RETURNING id, stock
                     ), entry AS (
                         INSERT INTO stock_ledger
                             (sale_id, at, cause, available_delta, held_delta, sold_delta)
                         SELECT id, $12, $13, stock, 0, 0 FROM sale
                     )
                     SELECT id FROM sale",
                    &[
                        &new.name,
                        &new.starts_at,
                        &new.ends_at,
                        &(new.stock as i32),
                        &(new.per_user_limit as i32),
                        &key,
                        &product.description,
                        &product.price_minor,
                        &product.currency,
                        &product.image_kind,
                        &product.image_sha256,
                        &at,
                        &LedgerCause::Created.code(),
                        &sale_row::payment_window_secs(new.checkout),
                    ],
                ),
            )
            .await?;
        let Some(row) = row else {
            let id: i64 = pg
                .call(
                    "sale of a creation key",
                    client.query_one("SELECT id FROM sales WHERE creation_key = $1", &[&key]),
                )
                .await?
                .get(0);
            drop(client);
            return match self.snapshot.load_one(SaleId(id)).await? {
                Some(sale) => Ok(Sale::clone(&sale)),
                None => Err(StoreError::internal(format!("sale {id} vanished"))),
            };
        };
        drop(client);
        let sale = Arc::new(new.with_id(SaleId(row.get(0))));
        self.snapshot.insert(Arc::clone(&sale), sale.stock, None);
        // The sale is durable now. If Redis cannot be initialised this moment, the first
        // purchase (or the snapshot refresher) finds it missing and rebuilds it.
        if let Err(e) = self.rebuilder.rebuild(&sale).await {
            tracing::warn!(sale = %sale.id, error = %e.report(), "new sale not yet initialised in Redis");
        }
        Ok(Sale::clone(&sale))
    }

    async fn change_sale(
        &self,
        id: SaleId,
        change: SaleChange,
    ) -> Result<ChangeOutcome, StoreError> {
        // On the tracker: once the sale may be frozen, the change runs to its end (thawed or
        // applied) whoever still waits for it.
        let changes = Arc::clone(&self.changes);
        self.tracker
            .spawn(changes.change(id, change))
            .await
            .map_err(|e| StoreError::internal_from("the change's task failed", e))?
    }

    async fn put_image(&self, id: SaleId, image: ImageRef, bytes: Bytes) -> Result<(), StoreError> {
        let client = self.pg.client().await?;
        self.pg
            .call(
                "keep an image",
                client.execute(
                    "INSERT INTO sale_images (sale_id, sha256, kind, bytes) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (sale_id, sha256) DO NOTHING",
                    &[
                        &id.0,
                        &image.sha256_hex(),
                        &image.kind().as_str(),
                        &bytes.as_ref(),
                    ],
                ),
            )
            .await?;
        Ok(())
    }

    async fn image(&self, id: SaleId, image: ImageRef) -> Result<Option<Bytes>, StoreError> {
        let client = self.pg.client().await?;
        let row = self
            .pg
            .call(
                "read an image",
                client.query_opt(
                    "SELECT bytes FROM sale_images WHERE sale_id = $1 AND sha256 = $2",
                    &[&id.0, &image.sha256_hex()],
                ),
            )
            .await?;
        Ok(row.map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
    }

    async fn purchase_holding(
        &self,
        attempt: Attempt,
        hold: PurchaseHold,
    ) -> Result<PurchaseOutcome, StoreError> {
        match self.purchases.pre_filter(&attempt).await {
            Ok(PreFilter::Answer(outcome)) => hold.answer(Ok(outcome)),
            Ok(PreFilter::Admit(sale)) => {
                // From the admission call on, stock may be taken (even by a call whose reply
                // is lost): the rest runs on the store's tracker, to its end.
                let purchases = Arc::clone(&self.purchases);
                self.in_flight
                    .run(hold, purchases.purchase(sale, attempt))
                    .await
            }
            Err(e) => hold.answer(Err(e)),
        }
    }

    async fn status(&self, id: SaleId) -> Result<Option<SaleStatus>, StoreError> {
        let entry = match self.snapshot.get(id) {
            Some(entry) => entry,
            None => match self
                .snapshot
                .load_one(id)
                .await?
                .and_then(|_| self.snapshot.get(id))
            {
                Some(entry) => entry,
                None => return Ok(None),
            },
        };
        let status = self.snapshot.current(entry.status())?;
        if status.sale.checkout.payment_window().is_none() {
            return Ok(Some(status));
        }
        Ok(self.with_holds(vec![status]).await?.pop())
    }

    async fn statuses(&self) -> Result<Vec<SaleStatus>, StoreError> {
        let statuses = self
            .snapshot
            .all()
            .into_iter()
            .map(|status| self.snapshot.current(status))
            .collect::<Result<Vec<_>, _>>()?;
        self.with_holds(statuses).await
    }

    async fn orders(&self, id: SaleId, user: &UserId) -> Result<Option<Vec<Order>>, StoreError> {
        if self.snapshot.sale(id).await?.is_none() {
            return Ok(None);
        }
        orders::buyer_orders(&self.pg, id, user).await.map(Some)
    }

    async fn order_page(
        &self,
        id: SaleId,
        after: Option<OrderKey>,
        limit: usize,
    ) -> Result<Option<Vec<Order>>, StoreError> {
        if self.snapshot.sale(id).await?.is_none() {
            return Ok(None);
        }
        orders::order_page(&self.pg, id, after, limit)
            .await
            .map(Some)
    }

    async fn ledger_page(
        &self,
        id: SaleId,
        after: Option<LedgerKey>,
        limit: usize,
    ) -> Result<Option<Vec<LedgerEntry>>, StoreError> {
        if self.snapshot.sale(id).await?.is_none() {
            return Ok(None);
        }
        ledger::ledger_page(&self.pg, id, after, limit)
            .await
            .map(Some)
    }

    async fn summary(&self, id: SaleId) -> Result<Option<Summary>, StoreError> {
        let Some(status) = self.status(id).await? else {
            return Ok(None);
        };
        self.counters.summary(status).await.map(Some)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.redis.ping().await?;
        self.pg.ping().await
    }

    async fn dependencies(&self) -> Vec<Dependency> {
        let (redis, pg) = tokio::join!(self.redis.ping(), self.pg.ping());
        vec![
            Dependency {
                name: "redis",
                up: redis.is_ok(),
            },
            Dependency {
                name: "postgres",
                up: pg.is_ok(),
            },
        ]
    }

    fn reservations_released(&self) -> u64 {
        self.reconciler.released()
    }

    fn admission_batches(&self) -> AdmissionBatches {
        self.purchases.admitter.batches()
    }

    fn now(&self) -> OffsetDateTime {
        self.snapshot.now()
    }

    async fn shutdown(&self) {
        // Purchases past the pre-filter are committed and settled while the writer still runs.
        self.in_flight.drain().await;
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Err(e) = self.counters.flush().await {
            tracing::warn!(error = %e.report(), "could not flush counters at shutdown");
        }
    }
}

impl Drop for RedisPgStore {
    fn drop(&mut self) {
        // Background tasks hold the parts they need, not the store: stop them with it.
        self.cancel.cancel();
    }
}
