//! The scale-out store: many stateless instances share Redis (the hot path) and PostgreSQL
//! (the durable record). See `docs/scale-out.md` for the whole design.
//!
//! The path of a purchase (`purchase`, below), after core's `check_quantity`:
//! 1. pre-filter (`snapshot.rs`): a sale known to be sold out or over is refused from the
//!    in-process snapshot, with no round trip;
//! 2. admission (`admission.lua`, called by `scripts.rs`): one atomic script decides with
//!    Redis's clock, by the rules of `flashsale_core::decide` (checked against it by
//!    `tests/admission_differential.rs`), and if admitted takes the stock and records a
//!    reservation with a lease;
//! 3. group commit and fence (`orders.rs`): the order is written to PostgreSQL in a
//!    multi-row transaction that claims the reservation as committed; only then is
//!    `confirmed` answered (a failed write is fenced as released instead);
//! 4. settle (`settle.lua`): the reservation is removed in Redis, kept (confirmed) or handed
//!    back (released).
//!
//! Steps 2 to 4 run as one task on the store's own tracker (`crate::in_flight`): a caller that
//! stops waiting cannot strand a reservation, and `shutdown` waits for them.
//!
//! The [`reconcile`] task settles reservations whose instance died, and rebuilds a sale's
//! Redis state from PostgreSQL when Redis lost it.
//!
//! Invariants kept here:
//! - PostgreSQL refuses on its own to sell more than the stock (`CHECK (sold <= stock)`) or more
//!   than the limit to a buyer (`CHECK (held <= per_user_limit)`), whatever Redis says.
//! - Each reservation is resolved exactly once, by whoever inserts its `reservations` row first
//!   (the commit or the reconciler's release): a late commit cannot land after a release.
//! - In Redis, `remaining + sold + reserved = stock` for every sale once nothing is in flight.

mod counters;
pub mod keys;
mod orders;
mod reconcile;
pub(crate) mod schema;
mod scripts;
mod snapshot;

use crate::in_flight::InFlight;
use crate::{
    Attempt, Order, PurchaseHold, PurchaseOutcome, SaleStatus, SaleStore, StoreError, Summary,
};
use async_trait::async_trait;
use counters::Counters;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use flashsale_core::{
    IdempotencyKey, NewSale, NotActiveReason, QuantityAboveLimit, Rejection, Sale, SaleId, UserId,
    check_quantity,
};
use keys::Keys;
use orders::{CommitOutcome, OrderWriter, PendingOrder, Resolution};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use scripts::Scripts;
use snapshot::Snapshot;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The Redis key prefix when none is given (the server's `--redis-prefix` default too).
pub const DEFAULT_KEY_PREFIX: &str = "flashsale";
/// The PostgreSQL schema when none is given (the server's `--pg-schema` default too).
pub const DEFAULT_PG_SCHEMA: &str = "public";

/// How to reach and use Redis and PostgreSQL.
#[derive(Debug, Clone)]
pub struct RedisPgConfig {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    /// `postgres://user@host:port/db`.
    pub database_url: String,
    /// Prefix of every Redis key (isolates deployments and tests sharing one Redis).
    pub key_prefix: String,
    /// PostgreSQL schema holding the tables (created if missing; lowercase identifier).
    pub pg_schema: String,
    /// How long a reservation may stay unresolved before the reconciler resolves it.
    pub lease: Duration,
    /// Bound on each Redis call.
    pub redis_timeout: Duration,
    /// Bound on each PostgreSQL transaction (also the server-side statement timeout).
    pub pg_timeout: Duration,
    /// How often the status snapshot is refreshed (at most 250 ms).
    pub refresh_interval: Duration,
    /// How often expired reservations are looked for.
    pub reconcile_interval: Duration,
    /// PostgreSQL connections per instance.
    pub pg_pool_size: usize,
    /// Most orders committed in one transaction.
    pub max_batch: usize,
}

impl RedisPgConfig {
    /// Defaults for everything but the two URLs.
    pub fn new(redis_url: impl Into<String>, database_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            database_url: database_url.into(),
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            pg_schema: DEFAULT_PG_SCHEMA.into(),
            lease: Duration::from_secs(10),
            redis_timeout: Duration::from_millis(500),
            pg_timeout: Duration::from_secs(2),
            refresh_interval: Duration::from_millis(100),
            reconcile_interval: Duration::from_secs(1),
            pg_pool_size: 8,
            max_batch: 2048,
        }
    }
}

/// How long purchases are refused up front after PostgreSQL was found unreachable.
const PG_DOWN_BACKOFF_MS: i64 = 1_000;

/// Bound on applying the migrations at start.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// What every part of the store shares.
pub(crate) struct Inner {
    cfg: RedisPgConfig,
    redis: ConnectionManager,
    pool: Pool,
    keys: Keys,
    scripts: Scripts,
    snapshot: Snapshot,
    counters: Counters,
    /// Until when (Unix ms) purchases are refused before admission because PostgreSQL could
    /// not be reached: admitting them would only strand their stock until it is back.
    pg_down_until_ms: AtomicI64,
    /// Expired reservations released by this instance's reconciler (stock given back).
    released: AtomicU64,
}

/// The scale-out store (Redis admission + PostgreSQL durability). Cheap to share in an `Arc`.
pub struct RedisPgStore {
    inner: Arc<Inner>,
    purchases: Arc<Purchases>,
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
        let client = redis::Client::open(cfg.redis_url.as_str())
            .map_err(|e| StoreError::unavailable_from("bad REDIS_URL", e))?;
        let redis_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.redis_timeout))
            .set_response_timeout(Some(cfg.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let redis = ConnectionManager::new_lazy_with_config(client, redis_cfg)
            .map_err(|e| StoreError::unavailable_from("redis connection", e))?;
        let pool = pg_pool(&cfg)?;
        let keys = Keys::new(&cfg.key_prefix);
        let inner = Arc::new(Inner {
            redis,
            pool,
            keys,
            scripts: Scripts::new(),
            snapshot: Snapshot::default(),
            pg_down_until_ms: AtomicI64::new(0),
            released: AtomicU64::new(0),
            counters: Counters::default(),
            cfg,
        });
        inner.ping_redis().await?;
        {
            let mut client = inner.pg().await?;
            // Migrations may wait for another instance's (advisory lock) and take longer
            // than one purchase's bound.
            let migrated = tokio::time::timeout(
                MIGRATION_TIMEOUT,
                schema::migrate(&mut client, &inner.cfg.pg_schema),
            )
            .await
            .map_err(|_| StoreError::timeout("postgres migrations"))?;
            migrated.map_err(|e| StoreError::unavailable_from("postgres migrations", e))?;
        }
        inner.scripts.load(&inner).await?;
        snapshot::refresh(&inner).await;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let writer = orders::spawn(&inner, &cancel, &tracker);
        tracker.spawn(snapshot::run(Arc::clone(&inner), cancel.clone()));
        tracker.spawn(reconcile::run(Arc::clone(&inner), cancel.clone()));
        Ok(Self {
            purchases: Arc::new(Purchases {
                inner: Arc::clone(&inner),
                writer,
            }),
            inner,
            in_flight: InFlight::default(),
            cancel,
            tracker,
        })
    }

    /// The Redis key names this store uses (for operators and tests).
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Resolves expired reservations and audits every sale now, as the periodic reconciler
    /// does (but whoever audited last); returns how many reservations were resolved.
    pub async fn reconcile_now(&self) -> Result<usize, StoreError> {
        reconcile::reconcile_all(&self.inner, reconcile::AuditPace::Now).await
    }

    async fn sale(&self, id: SaleId) -> Result<Option<Arc<Sale>>, StoreError> {
        if let Some(entry) = self.inner.snapshot.get(id) {
            return Ok(Some(entry.sale));
        }
        snapshot::load_one(&self.inner, id).await
    }

    /// Step 1, the pre-filter: answers what can be answered without Redis. Takes nothing, so
    /// dropping it half-way is harmless.
    async fn pre_filter(&self, attempt: &Attempt) -> Result<PreFilter, StoreError> {
        let Some(sale) = self.sale(attempt.sale_id).await? else {
            return Ok(PreFilter::Answer(PurchaseOutcome::SaleNotFound));
        };
        // The rule is core's (`decide` states it first); it is checked here, before the key
        // is looked up, because the answer depends on the request and the sale alone.
        if let Err(QuantityAboveLimit { limit }) = check_quantity(&sale, attempt.quantity) {
            return Ok(PreFilter::Answer(PurchaseOutcome::QuantityAboveLimit {
                limit,
            }));
        }
        // Fast path: a sale known to be sold out or over is rejected without a round trip.
        // Keyed attempts still go to Redis: their key may replay an earlier confirmation.
        if attempt.idempotency_key.is_none()
            && let Some(rejection) = self.inner.snapshot.fast_reject(sale.id, self.now())
        {
            self.inner.counters.attempt(sale.id, Some(rejection));
            return Ok(PreFilter::Answer(PurchaseOutcome::Rejected {
                rejection,
                orders: Vec::new(),
            }));
        }
        if self.inner.pg_recently_down() {
            // At most one attempt a second reaches Redis while PostgreSQL is unreachable, so
            // an outage strands (until it ends plus a lease) almost no stock.
            return Err(StoreError::unavailable("postgres is unreachable"));
        }
        Ok(PreFilter::Admit(sale))
    }

    /// A status from the snapshot, unless the snapshot is too old to say it: a sale that could
    /// still change is not answered from a view Redis has not confirmed for a while.
    fn current(&self, status: SaleStatus) -> Result<SaleStatus, StoreError> {
        // Staleness first: it is the rare case, and the one clock read a fresh view needs.
        if self.inner.snapshot.stale() && status.remaining > 0 && self.now() < status.sale.ends_at {
            return Err(StoreError::unavailable(
                "the sale's figures cannot be read from Redis right now",
            ));
        }
        Ok(status)
    }
}

/// What the pre-filter decided.
enum PreFilter {
    /// The answer, with nothing taken.
    Answer(PurchaseOutcome),
    /// Ask Redis (the admission script) about this sale.
    Admit(Arc<Sale>),
}

/// The part of a purchase that runs on the store's tracker (admission onwards): it owns what
/// it needs, so it goes on to its end whether or not anyone still waits for it.
struct Purchases {
    inner: Arc<Inner>,
    writer: OrderWriter,
}

impl Purchases {
    async fn purchase_in_redis(
        self: Arc<Self>,
        sale: Arc<Sale>,
        attempt: Attempt,
    ) -> Result<PurchaseOutcome, StoreError> {
        let (sale, attempt) = (&sale, &attempt);
        let inner = &self.inner;
        let order_id = uuid::Uuid::now_v7();
        let deadline = tokio::time::Instant::now() + inner.cfg.pg_timeout;
        let mut rebuilt = false;
        loop {
            let reply = inner.admit(sale.id, attempt, order_id).await?;
            match reply {
                scripts::Admission::Missing => {
                    // Redis lost the sale: rebuild it (or wait for whoever is) before admitting.
                    if rebuilt || tokio::time::Instant::now() >= deadline {
                        return Err(StoreError::unavailable("sale state is being rebuilt"));
                    }
                    if reconcile::rebuild(inner, sale).await? {
                        rebuilt = true;
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                scripts::Admission::Pending => {
                    // The first attempt with this key is being committed: its outcome is ours.
                    // Its instance may have died; then only the reconciler settles it, after
                    // the lease. Until then the outcome is unknown, and saying so (not
                    // "nothing was taken") keeps the client on the same key.
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StoreError::timeout(
                            "the first attempt with this key is still in flight",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                scripts::Admission::Wait => {
                    // A refusal that reservations in flight could make untrue (the last units,
                    // or the buyer's own holding, not yet committed): wait for their outcome.
                    // If they are stranded (their instance died; the reconciler settles them
                    // after the lease), this attempt took nothing, and says so.
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StoreError::unavailable(
                            "units reserved by purchases still in flight decide this attempt; \
                             nothing was taken",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                scripts::Admission::Reused => return Ok(PurchaseOutcome::IdempotencyKeyReused),
                scripts::Admission::ReplayConfirmed {
                    order_id,
                    created_at,
                } => {
                    return Ok(PurchaseOutcome::Confirmed(Order {
                        order_id,
                        sale_id: sale.id,
                        user_id: attempt.user_id.clone(),
                        quantity: attempt.quantity.get(),
                        created_at,
                    }));
                }
                scripts::Admission::Rejected {
                    rejection,
                    replay,
                    last,
                } => {
                    if !replay {
                        inner.counters.attempt(sale.id, Some(rejection));
                    }
                    if last && rejection == Rejection::SoldOut {
                        // Every unit is confirmed: the fast path may answer from here on.
                        inner.snapshot.lower_remaining(sale.id, 0, None);
                    }
                    return Ok(self.rejected(sale.id, &attempt.user_id, rejection).await);
                }
                scripts::Admission::Admitted { epoch, created_at } => {
                    inner.counters.attempt(sale.id, None);
                    let order = Order {
                        order_id,
                        sale_id: sale.id,
                        user_id: attempt.user_id.clone(),
                        quantity: attempt.quantity.get(),
                        created_at,
                    };
                    return self.commit(order, epoch, attempt).await;
                }
            }
        }
    }

    async fn commit(
        &self,
        order: Order,
        epoch: i64,
        attempt: &Attempt,
    ) -> Result<PurchaseOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        let pending = PendingOrder {
            order: order.clone(),
            epoch,
            key: attempt.idempotency_key.clone(),
            reply,
        };
        let outcome = match self.writer.send(pending).await {
            // The writer went away with the order: whether it landed is not known here.
            Ok(()) => rx.await.unwrap_or(CommitOutcome::Unknown),
            Err(pending) => {
                // Shutting down: nothing was written, so hand the stock back (best effort;
                // the reconciler releases it after the lease otherwise).
                orders::release_unwritten(&self.inner, &[pending.order]).await;
                CommitOutcome::Failed
            }
        };
        match outcome {
            CommitOutcome::Confirmed => Ok(PurchaseOutcome::Confirmed(order)),
            CommitOutcome::Failed => {
                self.inner.counters.unavailable(order.sale_id);
                Err(StoreError::unavailable(
                    "the order could not be made durable; nothing was taken",
                ))
            }
            CommitOutcome::Unknown => Err(StoreError::timeout(
                "the order's commit may or may not have landed; the reconciler decides it",
            )),
        }
    }

    async fn rejected(&self, id: SaleId, user: &UserId, rejection: Rejection) -> PurchaseOutcome {
        let orders = match rejection {
            // The buyer's orders are only shown when the rejection is about them; if
            // PostgreSQL cannot say right now, the rejection still stands without them.
            Rejection::AlreadyPurchased | Rejection::LimitExceeded { .. } => {
                self.inner.orders_of(id, user).await.unwrap_or_default()
            }
            _ => Vec::new(),
        };
        PurchaseOutcome::Rejected { rejection, orders }
    }
}

fn pg_pool(cfg: &RedisPgConfig) -> Result<Pool, StoreError> {
    let mut pg: tokio_postgres::Config = cfg
        .database_url
        .parse()
        .map_err(|e| StoreError::unavailable_from("bad DATABASE_URL", e))?;
    let ms = cfg.pg_timeout.as_millis();
    pg.connect_timeout(cfg.pg_timeout);
    // Server-side bounds too: a statement or lock wait abandoned by a timed-out client must not
    // keep running (and holding locks) on the server.
    pg.options(format!(
        "-c search_path={} -c statement_timeout={ms} -c lock_timeout={ms} \
         -c idle_in_transaction_session_timeout={}",
        cfg.pg_schema,
        ms * 5
    ));
    let manager = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(cfg.pg_pool_size.max(2))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(cfg.pg_timeout))
        .create_timeout(Some(cfg.pg_timeout))
        .recycle_timeout(Some(cfg.pg_timeout))
        .build()
        .map_err(|e| StoreError::internal_from("cannot build the PostgreSQL pool", e))
}

fn unix_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Inner {
    /// PostgreSQL could not be reached: refuse purchases up front for a moment.
    pub(crate) fn pg_unreachable(&self) {
        self.pg_down_until_ms
            .store(unix_ms() + PG_DOWN_BACKOFF_MS, Ordering::Relaxed);
    }

    /// PostgreSQL answered: purchases may go ahead again.
    pub(crate) fn pg_reachable(&self) {
        self.pg_down_until_ms.store(0, Ordering::Relaxed);
    }

    /// Whether PostgreSQL was found unreachable a moment ago.
    fn pg_recently_down(&self) -> bool {
        unix_ms() < self.pg_down_until_ms.load(Ordering::Relaxed)
    }

    /// Runs one Redis call within the Redis timeout.
    pub(crate) async fn redis_call<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.cfg.redis_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::unavailable_from(format!("redis {what}"), e)),
            Err(_) => Err(StoreError::timeout(format!("redis {what}"))),
        }
    }

    /// Runs one PostgreSQL operation within the PostgreSQL timeout.
    pub(crate) async fn pg_call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.cfg.pg_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::unavailable_from(format!("postgres {what}"), e)),
            Err(_) => Err(StoreError::timeout(format!("postgres {what}"))),
        }
    }

    /// A pooled PostgreSQL connection.
    pub(crate) async fn pg(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::unavailable_from("postgres connection", e))
    }

    /// A Redis connection handle (multiplexed: every clone pipelines over one socket).
    pub(crate) fn con(&self) -> ConnectionManager {
        self.redis.clone()
    }

    async fn ping_redis(&self) -> Result<(), StoreError> {
        let mut con = self.con();
        self.redis_call("PING", redis::cmd("PING").query_async::<String>(&mut con))
            .await
            .map(drop)
    }

    async fn ping_pg(&self) -> Result<(), StoreError> {
        let client = self.pg().await?;
        self.pg_call("SELECT 1", client.simple_query("SELECT 1"))
            .await
            .map(drop)
    }

    async fn admit(
        &self,
        id: SaleId,
        attempt: &Attempt,
        order_id: uuid::Uuid,
    ) -> Result<scripts::Admission, StoreError> {
        let keys = self.keys.sale(id);
        let args = scripts::AdmissionArgs {
            user: attempt.user_id.as_str(),
            quantity: attempt.quantity.get(),
            idempotency_key: attempt.idempotency_key.as_ref().map_or("", |k| k.as_str()),
            order_id,
            lease_ms: self.cfg.lease.as_millis() as u64,
        };
        let mut con = self.con();
        let call = self.scripts.admission(&mut con, &keys, &args);
        let reply: Vec<String> = match self.redis_call("admission", call).await {
            Ok(reply) => reply,
            Err(e) => {
                // The script may have run (a reply lost or late): its reservation would hold
                // the stock and the buyer's limit until the lease ran out. This order id is
                // never committed (only this call could have sent it to the writer), so
                // nothing was taken whatever happened; release it now rather than in a lease.
                orders::settle(self, id, Resolution::Released, &[order_id]).await;
                return Err(StoreError::unavailable_from(
                    "the admission script failed; nothing was taken",
                    e,
                ));
            }
        };
        let admission = scripts::Admission::parse(&reply)?;
        self.snapshot.observe_clock(scripts::now_of(&reply));
        Ok(admission)
    }

    /// The buyer's committed orders, oldest first.
    pub(crate) async fn orders_of(
        &self,
        id: SaleId,
        user: &UserId,
    ) -> Result<Vec<Order>, StoreError> {
        let client = self.pg().await?;
        let rows = self
            .pg_call(
                "orders of a buyer",
                client.query(
                    "SELECT order_id, quantity, created_at FROM orders
                     WHERE sale_id = $1 AND user_id = $2 ORDER BY created_at, order_id",
                    &[&id.0, &user.as_str()],
                ),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Order {
                order_id: row.get(0),
                sale_id: id,
                user_id: user.clone(),
                quantity: row.get::<_, i32>(1) as u32,
                created_at: row.get(2),
            })
            .collect())
    }
}

/// A PostgreSQL error with its server message, if any.
pub(crate) fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

#[async_trait]
impl SaleStore for RedisPgStore {
    async fn create_sale(&self, new: NewSale) -> Result<Sale, StoreError> {
        let inner = &self.inner;
        let client = inner.pg().await?;
        let key = new.creation_key.as_ref().map(IdempotencyKey::as_str);
        // A key seen before (a retry after a lost answer) inserts nothing: its sale is returned.
        let row = inner
            .pg_call(
                "create sale",
                client.query_opt(
                    "INSERT INTO sales (name, starts_at, ends_at, stock, per_user_limit,
                                        creation_key)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (creation_key) DO NOTHING RETURNING id",
                    &[
                        &new.name,
                        &new.starts_at,
                        &new.ends_at,
                        &(new.stock as i32),
                        &(new.per_user_limit as i32),
                        &key,
                    ],
                ),
            )
            .await?;
        let Some(row) = row else {
            let id: i64 = inner
                .pg_call(
                    "sale of a creation key",
                    client.query_one("SELECT id FROM sales WHERE creation_key = $1", &[&key]),
                )
                .await?
                .get(0);
            drop(client);
            return match snapshot::load_one(inner, SaleId(id)).await? {
                Some(sale) => Ok(Sale::clone(&sale)),
                None => Err(StoreError::internal(format!("sale {id} vanished"))),
            };
        };
        drop(client);
        let sale = Arc::new(new.with_id(SaleId(row.get(0))));
        inner.snapshot.insert(Arc::clone(&sale), sale.stock, None);
        // The sale is durable now. If Redis cannot be initialised this moment, the first
        // purchase (or the snapshot refresher) finds it missing and rebuilds it.
        if let Err(e) = reconcile::rebuild(inner, &sale).await {
            tracing::warn!(sale = %sale.id, error = %e, "new sale not yet initialised in Redis");
        }
        Ok(Sale::clone(&sale))
    }

    async fn purchase_holding(
        &self,
        attempt: Attempt,
        hold: PurchaseHold,
    ) -> Result<PurchaseOutcome, StoreError> {
        match self.pre_filter(&attempt).await {
            Ok(PreFilter::Answer(outcome)) => hold.answer(Ok(outcome)),
            Ok(PreFilter::Admit(sale)) => {
                // From the admission call on, stock may be taken (even by a call whose reply
                // is lost): the rest runs on the store's tracker, to its end.
                let purchases = Arc::clone(&self.purchases);
                self.in_flight
                    .run(hold, purchases.purchase_in_redis(sale, attempt))
                    .await
            }
            Err(e) => hold.answer(Err(e)),
        }
    }

    async fn status(&self, id: SaleId) -> Result<Option<SaleStatus>, StoreError> {
        let entry = match self.inner.snapshot.get(id) {
            Some(entry) => entry,
            None => match snapshot::load_one(&self.inner, id)
                .await?
                .and_then(|_| self.inner.snapshot.get(id))
            {
                Some(entry) => entry,
                None => return Ok(None),
            },
        };
        self.current(entry.status()).map(Some)
    }

    async fn statuses(&self) -> Result<Vec<SaleStatus>, StoreError> {
        self.inner
            .snapshot
            .all()
            .into_iter()
            .map(|status| self.current(status))
            .collect()
    }

    async fn orders(&self, id: SaleId, user: &UserId) -> Result<Option<Vec<Order>>, StoreError> {
        if self.sale(id).await?.is_none() {
            return Ok(None);
        }
        self.inner.orders_of(id, user).await.map(Some)
    }

    async fn summary(&self, id: SaleId) -> Result<Option<Summary>, StoreError> {
        let Some(status) = self.status(id).await? else {
            return Ok(None);
        };
        counters::summary(&self.inner, status).await.map(Some)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.inner.ping_redis().await?;
        self.inner.ping_pg().await
    }

    async fn dependencies(&self) -> Vec<(&'static str, bool)> {
        let (redis, pg) = tokio::join!(self.inner.ping_redis(), self.inner.ping_pg());
        vec![("redis", redis.is_ok()), ("postgres", pg.is_ok())]
    }

    fn reservations_released(&self) -> u64 {
        self.inner.released.load(Ordering::Relaxed)
    }

    fn now(&self) -> OffsetDateTime {
        self.inner.snapshot.now()
    }

    async fn shutdown(&self) {
        // Purchases past the pre-filter are committed and settled while the writer still runs.
        self.in_flight.drain().await;
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Err(e) = self.inner.counters.flush(&self.inner).await {
            tracing::warn!(error = %e, "could not flush counters at shutdown");
        }
    }
}

impl Drop for RedisPgStore {
    fn drop(&mut self) {
        // Background tasks hold the shared state, not the store: stop them with it.
        self.cancel.cancel();
    }
}

/// The rejection a snapshot entry implies without asking Redis, if any.
fn settled_rejection(sale: &Sale, remaining: u32, now: OffsetDateTime) -> Option<Rejection> {
    // Margin on the time check: this instance's estimate of Redis's clock may be a few ms
    // off, and an attempt at the very edge must be decided by Redis itself.
    const MARGIN: time::Duration = time::Duration::seconds(1);
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
