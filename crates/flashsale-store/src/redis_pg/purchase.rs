//! One purchase through the scale-out store, from the pre-filter to the answer (the path is
//! walked in `mod.rs`'s header). The pre-filter runs in the caller's future and takes nothing;
//! [`Purchases::purchase`] (admission onwards) runs on the store's tracker, so it goes on to
//! its end whether or not anyone still waits for it.

use super::admitter::Admitter;
use super::connections::Postgres;
use super::counters::Counters;
use super::fence::Resolution;
use super::orders::{self, CommitOutcome, OrderWriter, PendingOrder};
use super::rebuild::Rebuilder;
use super::scripts::Admission;
use super::settle::Settler;
use super::snapshot::Snapshot;
use crate::{Attempt, Order, PurchaseOutcome, StoreError};
use flashsale_core::{
    OrderStatus, QuantityAboveLimit, Rejection, Sale, SaleId, UserId, check_quantity,
};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

/// How long to wait before asking Redis again while a sale is being rebuilt elsewhere.
const REBUILD_POLL: Duration = Duration::from_millis(10);
/// How long to wait before asking Redis again while reservations in flight decide.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(5);

/// What the pre-filter decided.
pub(crate) enum PreFilter {
    /// The answer, with nothing taken.
    Answer(PurchaseOutcome),
    /// Ask Redis (the admission script) about this sale.
    Admit(Arc<Sale>),
}

/// What a purchase works with (each part handed over when the store is built).
pub(crate) struct Purchases {
    pub snapshot: Arc<Snapshot>,
    pub counters: Arc<Counters>,
    pub pg: Arc<Postgres>,
    pub admitter: Admitter,
    pub settler: Arc<Settler>,
    pub rebuilder: Arc<Rebuilder>,
    pub writer: OrderWriter,
    /// How long one purchase waits, in all, for reservations in flight or a rebuild.
    pub patience: Duration,
}

impl Purchases {
    /// Step 1, the pre-filter: answers what can be answered without Redis. Takes nothing, so
    /// dropping it half-way is harmless.
    pub(crate) async fn pre_filter(&self, attempt: &Attempt) -> Result<PreFilter, StoreError> {
        let Some(sale) = self.snapshot.sale(attempt.sale_id).await? else {
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
            && let Some(rejection) = self.snapshot.fast_reject(sale.id, self.snapshot.now())
        {
            self.counters.attempt(sale.id, Some(rejection));
            return Ok(PreFilter::Answer(PurchaseOutcome::Rejected {
                rejection,
                orders: Vec::new(),
            }));
        }
        if self.pg.recently_down() {
            // At most one attempt a second reaches Redis while PostgreSQL is unreachable, so
            // an outage strands (until it ends plus a lease) almost no stock. "Nothing was
            // taken" is true of this attempt but not always of its key: an earlier attempt
            // with the key may have been confirmed (its answer lost in the outage), so a keyed
            // attempt is told the outcome is unknown, and its retry will replay it.
            if attempt.idempotency_key.is_some() {
                return Err(StoreError::timeout(
                    "postgres is unreachable; the key's first attempt may have been confirmed",
                ));
            }
            return Err(StoreError::unavailable("postgres is unreachable"));
        }
        Ok(PreFilter::Admit(sale))
    }

    /// Steps 2 to 4: admission, then commit and settle if admitted. Asks Redis again while
    /// the answer waits on something in flight (a rebuild, reservations, the key's first
    /// attempt), within the purchase's patience.
    pub(crate) async fn purchase(
        self: Arc<Self>,
        sale: Arc<Sale>,
        attempt: Attempt,
    ) -> Result<PurchaseOutcome, StoreError> {
        // Shared with the admission batch (which outlives no purchase) without a copy.
        let attempt = Arc::new(attempt);
        let (sale, attempt) = (&sale, &attempt);
        let order_id = Uuid::now_v7();
        let deadline = Instant::now() + self.patience;
        let mut rebuilt = false;
        loop {
            let poll = match self.admit(sale.id, attempt, order_id).await? {
                Admission::Missing => {
                    match self.rebuild_missing(sale, &mut rebuilt, deadline).await? {
                        Some(poll) => poll,
                        None => continue,
                    }
                }
                Admission::Pending => key_in_flight(deadline)?,
                Admission::Wait => units_in_flight(deadline)?,
                Admission::Reused => return Ok(PurchaseOutcome::IdempotencyKeyReused),
                Admission::ReplayConfirmed {
                    order_id,
                    created_at,
                } => {
                    return Ok(PurchaseOutcome::Confirmed(order_of(
                        sale, attempt, order_id, created_at,
                    )));
                }
                Admission::Rejected {
                    rejection,
                    replay,
                    last,
                } => return Ok(self.refused(sale, attempt, rejection, replay, last).await),
                Admission::Admitted { epoch, created_at } => {
                    self.counters.attempt(sale.id, None);
                    let order = order_of(sale, attempt, order_id, created_at);
                    return self.commit(order, epoch, attempt).await;
                }
            };
            tokio::time::sleep(poll).await;
        }
    }

    /// Redis lost the sale: rebuilds it (or waits for whoever is) before admitting. `None`:
    /// rebuilt here, ask again at once; otherwise how long to wait before asking again.
    async fn rebuild_missing(
        &self,
        sale: &Sale,
        rebuilt: &mut bool,
        deadline: Instant,
    ) -> Result<Option<Duration>, StoreError> {
        if *rebuilt || Instant::now() >= deadline {
            return Err(StoreError::unavailable("sale state is being rebuilt"));
        }
        *rebuilt = self.rebuilder.rebuild(sale).await?;
        Ok((!*rebuilt).then_some(REBUILD_POLL))
    }

    /// Step 2: the attempt decided by the admission script, in a batch with the attempts of
    /// its sale that arrived with it (`admitter.rs`).
    async fn admit(
        &self,
        id: SaleId,
        attempt: &Arc<Attempt>,
        order_id: Uuid,
    ) -> Result<Admission, StoreError> {
        let reply = match self.admitter.admit(attempt, order_id).await {
            Ok(reply) => reply,
            // The script answered, but not as its header says: a bug, not an outage.
            Err(e @ StoreError::Internal { .. }) => return Err(e),
            Err(e) => {
                // The script may have run (a reply lost or late): its reservation would hold
                // the stock and the buyer's limit until the lease ran out. This order id is
                // never committed (only this call could have sent it to the writer), so
                // nothing was taken whatever happened; release it now rather than in a lease.
                self.settler
                    .settle(id, Resolution::Released, &[order_id])
                    .await;
                return Err(StoreError::unavailable_from(
                    "the admission script failed; nothing was taken",
                    e,
                ));
            }
        };
        self.snapshot.observe_clock(reply.clock_us);
        Ok(reply.admission)
    }

    /// Steps 3 and 4: the group commit (which settles), then the buyer's answer.
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
                self.writer.release_unwritten(&pending.order).await;
                CommitOutcome::Failed
            }
        };
        match outcome {
            CommitOutcome::Confirmed => Ok(PurchaseOutcome::Confirmed(order)),
            CommitOutcome::Failed => {
                self.counters.unavailable(order.sale_id);
                Err(StoreError::unavailable(
                    "the order could not be made durable; nothing was taken",
                ))
            }
            CommitOutcome::Unknown => Err(StoreError::timeout(
                "the order's commit may or may not have landed; the reconciler decides it",
            )),
        }
    }

    /// A refusal from the admission script: counted (unless replayed), and shown with the
    /// buyer's orders when it is about them.
    async fn refused(
        &self,
        sale: &Sale,
        attempt: &Attempt,
        rejection: Rejection,
        replay: bool,
        last: bool,
    ) -> PurchaseOutcome {
        if !replay {
            self.counters.attempt(sale.id, Some(rejection));
        }
        if last && rejection == Rejection::SoldOut {
            // Every unit is confirmed: the fast path may answer from here on.
            self.snapshot.lower_remaining(sale.id, 0, None);
        }
        self.rejected(sale.id, &attempt.user_id, rejection).await
    }

    async fn rejected(&self, id: SaleId, user: &UserId, rejection: Rejection) -> PurchaseOutcome {
        let orders = match rejection {
            // The buyer's orders are only shown when the rejection is about them; if
            // PostgreSQL cannot say right now, the rejection still stands without them.
            Rejection::AlreadyPurchased | Rejection::LimitExceeded { .. } => {
                orders::buyer_orders(&self.pg, id, user)
                    .await
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        PurchaseOutcome::Rejected { rejection, orders }
    }
}

/// The first attempt with this key is being committed: its outcome is ours. Its instance may
/// have died; then only the reconciler settles it, after the lease. Until then the outcome is
/// unknown, and saying so (not "nothing was taken") keeps the client on the same key.
fn key_in_flight(deadline: Instant) -> Result<Duration, StoreError> {
    if Instant::now() >= deadline {
        return Err(StoreError::timeout(
            "the first attempt with this key is still in flight",
        ));
    }
    Ok(IN_FLIGHT_POLL)
}

/// A refusal that reservations in flight could make untrue (the last units, or the buyer's
/// own holding, not yet committed): wait for their outcome. If they are stranded (their
/// instance died; the reconciler settles them after the lease), this attempt took nothing, and
/// says so.
fn units_in_flight(deadline: Instant) -> Result<Duration, StoreError> {
    if Instant::now() >= deadline {
        return Err(StoreError::unavailable(
            "units reserved by purchases still in flight decide this attempt; nothing was taken",
        ));
    }
    Ok(IN_FLIGHT_POLL)
}

/// The order an attempt makes (or made) under `order_id`: in a hold sale a reservation,
/// payable until the admission instant plus the window (as the group commit writes it).
fn order_of(sale: &Sale, attempt: &Attempt, order_id: Uuid, created_at: OffsetDateTime) -> Order {
    let expires_at = sale
        .checkout
        .payment_window()
        .map(|w| w.expires_at(created_at));
    Order {
        status: if expires_at.is_some() {
            OrderStatus::Reserved
        } else {
            OrderStatus::Confirmed
        },
        expires_at,
        payment_ref: None,
        offered: false,
        order_id,
        sale_id: sale.id,
        user_id: attempt.user_id.clone(),
        quantity: attempt.quantity.get(),
        created_at,
    }
}
