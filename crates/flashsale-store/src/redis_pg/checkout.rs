//! Checkout with holds in the scale-out store (docs/requirements.md#9-checkout): an order's
//! transitions, the expiry sweep, and the unit moves they owe Redis.
//!
//! PostgreSQL is the authority for an order's status. A transition is one transaction: it
//! locks the order's row (`FOR UPDATE`), reads the deciding clock there (`clock_timestamp()`,
//! after the lock is held), decides with `flashsale_core::transition`, and writes the new
//! status (and payment reference), the buyer's allowance and the sale's `sold` (a release
//! gives units back: for a hold sale `sold` counts the units taken, held or paid), the
//! `stock_ledger` row, and `move_epoch` (the sale's epoch, read under the sale row's lock),
//! then commits. Racing events on any instance queue on the row lock: the first decides, every
//! later one reads the final status it wrote and gets the loser's answer (CO-6).
//!
//! Redis's figures (what admission decides with) follow: once committed, the move is applied
//! by `transition.lua`, which applies each order's move at most once (a set of applied order
//! ids per sale) and only under the epoch it committed under, then `move_epoch` is cleared. An
//! instance that dies between the commit and the apply leaves `move_epoch` set, and every
//! instance's reconciler applies such moves ([`Checkouts::apply_pending`]): a move lands once
//! whoever applies it, and a rebuild of Redis (which bumps the epoch under the sale row's
//! lock, so after any transition that committed before it) reflects it already.
//!
//! Expiry ([`Checkouts::expire_due`]): every instance's reconciler takes reservations whose
//! `expires_at` has passed on PostgreSQL's clock, `FOR UPDATE SKIP LOCKED` so instances share
//! them out, and sends each through the same transition with `OrderEvent::Expire`. A dead
//! instance's reservations are therefore expired by the others, and a second expiry of an order
//! finds it final and moves nothing. `expires_at` was set from Redis's clock at admission:
//! the two clocks are assumed synchronised, as the sale window already assumes.

use super::connections::Postgres;
use super::keys::Keys;
use super::orders::checkout_at;
use super::scripts::{MoveApplied, MoveToApply, Scripts};
use super::waitlist::{Offers, Waitlists, offer_freed};
use crate::instants::to_micros;
use crate::ledger::LedgerCause;
use crate::{Order, OrderEventOutcome, SaleStatus, StoreError};
use flashsale_core::{
    OrderEvent, OrderState, OrderStatus, Price, Reservation, SaleId, UnitsMove, UserId, transition,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

/// The columns a transition reads of an order and its sale, in [`state_of`]'s order.
const ORDER: &str = "o.order_id, o.sale_id, o.user_id, o.quantity, o.created_at, o.status,
     o.expires_at, o.payment_ref, o.offered, s.price_minor, s.currency";

/// A committed transition's unit move, owed to Redis until applied.
#[derive(Debug, Clone)]
pub(crate) struct PendingMove {
    order_id: Uuid,
    sale_id: SaleId,
    epoch: i64,
    pay: bool,
    user: String,
    units: u32,
    /// When the transition was decided (a last payment's instant is the sold-out instant).
    at: OffsetDateTime,
    /// A release: the waiters its units were offered to, one unit each (those units stay
    /// held, for them).
    offered: Vec<String>,
}

/// Which order a transition locks.
enum Target {
    /// This one (waiting for its row lock).
    Order(Uuid),
    /// Any reservation past its deadline that no other instance has locked.
    NextExpired,
}

/// What one transition transaction decided (`None` from [`Checkouts::step`]: no such order,
/// or, for [`Target::NextExpired`], none due).
struct Decided {
    outcome: OrderEventOutcome,
    /// The committed move still to apply to Redis.
    owed: Option<PendingMove>,
    /// The waitlist's new `(length, revision)` if the transition's offers changed it.
    list: Option<(i64, i64)>,
}

/// Why a transition transaction failed.
enum Failure {
    /// PostgreSQL failed before COMMIT was sent: nothing changed.
    Before(tokio_postgres::Error),
    /// COMMIT failed: it may have landed.
    AtCommit(tokio_postgres::Error),
    /// A stored row this store cannot read back (a bug): rolled back.
    Stored(StoreError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Before(e)
    }
}

/// Orders' transitions, the expiry sweep and the moves they owe Redis.
pub(crate) struct Checkouts {
    pg: Arc<Postgres>,
    keys: Arc<Keys>,
    scripts: Arc<Scripts>,
    /// Where a release's offers change the list's length published to Redis.
    waitlists: Arc<Waitlists>,
    /// Test hook: commit transitions without applying their moves to Redis, as if the
    /// instance died between the two.
    skip_apply: AtomicBool,
}

impl Checkouts {
    /// Transitions through `pg`, their moves applied through `scripts`.
    pub(crate) fn new(
        pg: Arc<Postgres>,
        keys: Arc<Keys>,
        scripts: Arc<Scripts>,
        waitlists: Arc<Waitlists>,
    ) -> Self {
        Self {
            pg,
            keys,
            scripts,
            waitlists,
            skip_apply: AtomicBool::new(false),
        }
    }

    /// See [`super::RedisPgStore::skip_redis_moves`].
    pub(crate) fn skip_apply(&self, skip: bool) {
        self.skip_apply.store(skip, Ordering::Relaxed);
    }

    /// One order by id, as PostgreSQL holds it now.
    pub(crate) async fn order(&self, id: Uuid) -> Result<Option<Order>, StoreError> {
        let client = self.pg.client().await?;
        let row = self
            .pg
            .call(
                "an order",
                client.query_opt(
                    &format!(
                        "SELECT {ORDER} FROM orders o JOIN sales s ON s.id = o.sale_id
                         WHERE o.order_id = $1"
                    ),
                    &[&id],
                ),
            )
            .await?;
        row.map(|row| order_of(&row)).transpose()
    }

    /// Decides `event` for order `id` (see [`crate::SaleStore::order_event`]).
    pub(crate) async fn event(
        &self,
        id: Uuid,
        event: &OrderEvent,
    ) -> Result<OrderEventOutcome, StoreError> {
        match self.step(Target::Order(id), event).await? {
            None => Ok(OrderEventOutcome::NotFound),
            Some(Decided {
                outcome,
                owed,
                list,
            }) => {
                if let Some(owed) = owed {
                    self.apply(&owed).await;
                    if let Some((len, rev)) = list {
                        self.waitlists.publish(owed.sale_id, len, rev).await;
                    }
                }
                Ok(outcome)
            }
        }
    }

    /// Expires up to `max` reservations past their deadline on PostgreSQL's clock; returns
    /// how many this call expired.
    pub(crate) async fn expire_due(&self, max: usize) -> Result<usize, StoreError> {
        let mut expired = 0;
        for _ in 0..max {
            match self.step(Target::NextExpired, &OrderEvent::Expire).await? {
                None => break,
                Some(Decided {
                    outcome,
                    owed,
                    list,
                }) => {
                    if let OrderEventOutcome::Decided { result: Ok(_), .. } = outcome {
                        expired += 1;
                    }
                    if let Some(owed) = owed {
                        self.apply(&owed).await;
                        if let Some((len, rev)) = list {
                            self.waitlists.publish(owed.sale_id, len, rev).await;
                        }
                    }
                }
            }
        }
        Ok(expired)
    }

    /// Applies up to `max` committed moves not yet applied to Redis (their instance died, or
    /// Redis could not be reached); returns how many were settled.
    pub(crate) async fn apply_pending(&self, max: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let client = self.pg.client().await?;
        let rows = self
            .pg
            .call(
                "moves owed to Redis",
                client.query(
                    "SELECT order_id, sale_id, move_epoch, status, user_id, quantity,
                            (SELECT max(l.at) FROM stock_ledger l
                             WHERE l.sale_id = o.sale_id AND l.order_id = o.order_id),
                            ARRAY(SELECT x.user_id FROM orders x WHERE x.offered_from = o.order_id
                                  ORDER BY x.created_at, x.order_id)
                     FROM orders o WHERE move_epoch IS NOT NULL LIMIT $1",
                    &[&limit],
                ),
            )
            .await?;
        drop(client);
        let mut settled = 0;
        for row in &rows {
            let status: &str = row.get(3);
            let owed = PendingMove {
                order_id: row.get(0),
                sale_id: SaleId(row.get(1)),
                epoch: row.get(2),
                pay: status == OrderStatus::Paid.as_str(),
                user: row.get(4),
                units: row.get::<_, i32>(5) as u32,
                // Written in the transition's transaction; absent only for a bug.
                at: row
                    .get::<_, Option<OffsetDateTime>>(6)
                    .unwrap_or_else(OffsetDateTime::now_utc),
                offered: row.get(7),
            };
            if self.apply(&owed).await {
                settled += 1;
            }
        }
        Ok(settled)
    }

    /// Applies a committed move to Redis and, once it is there (or reflected), clears it in
    /// PostgreSQL. Best effort: whatever fails is left for the reconciler, which applies it
    /// at most once. Returns whether the move is settled.
    async fn apply(&self, owed: &PendingMove) -> bool {
        if self.skip_apply.load(Ordering::Relaxed) {
            return false;
        }
        let keys = self.keys.sale(owed.sale_id);
        let applied = self
            .scripts
            .apply_move(
                &keys,
                &MoveToApply {
                    order_id: owed.order_id,
                    epoch: owed.epoch,
                    pay: owed.pay,
                    user: &owed.user,
                    units: owed.units,
                    at_us: to_micros(owed.at),
                    offered: &owed.offered,
                },
            )
            .await;
        match applied {
            Ok(MoveApplied::Applied | MoveApplied::Done) => {}
            Ok(MoveApplied::Later) => return false,
            Err(e) => {
                tracing::warn!(order = %owed.order_id, error = %e.report(), "a committed move is left for the reconciler");
                return false;
            }
        }
        let cleared = async {
            let client = self.pg.client().await?;
            self.pg
                .call(
                    "a move applied",
                    client.execute(
                        "UPDATE orders SET move_epoch = NULL
                         WHERE order_id = $1 AND move_epoch = $2",
                        &[&owed.order_id, &owed.epoch],
                    ),
                )
                .await
        };
        // If this fails the reconciler applies it again, and `transition.lua` answers "done".
        cleared.await.is_ok()
    }

    /// One transition transaction on a connection of its own, bounded by the PostgreSQL
    /// timeout. A failure before COMMIT changed nothing; a failed COMMIT may have landed, and
    /// is answered `Timeout` (ask again: the answer names the outcome).
    async fn step(
        &self,
        target: Target,
        event: &OrderEvent,
    ) -> Result<Option<Decided>, StoreError> {
        let pg = &self.pg;
        let mut client = pg.client().await?;
        match tokio::time::timeout(pg.timeout(), step_tx(&mut client, &target, event)).await {
            Ok(Ok(step)) => Ok(step),
            Ok(Err(Failure::Before(e))) => {
                drop(deadpool_postgres::Object::take(client));
                Err(StoreError::unavailable_from("postgres order transition", e))
            }
            Ok(Err(Failure::AtCommit(e))) => {
                drop(deadpool_postgres::Object::take(client));
                tracing::warn!(error = %e, "an order transition's commit failed; it may have landed");
                Err(StoreError::timeout("postgres order transition commit"))
            }
            Ok(Err(Failure::Stored(e))) => {
                drop(deadpool_postgres::Object::take(client));
                Err(e)
            }
            Err(_) => {
                // Mid-transaction: the connection is never handed to anyone else.
                drop(deadpool_postgres::Object::take(client));
                Err(StoreError::timeout("postgres order transition"))
            }
        }
    }
}

/// Status of hold sales as Redis holds them now: `available` (free units, with those of
/// purchases still committing, as instant sales show them) and `held`, read in one `HMGET`
/// each so that available + held + sold = stock within each figure set; and the waitlist's
/// length (published there by `waitlist.rs`; 0 at and after the end, the caller's to say).
pub(crate) fn hold_status(
    status: SaleStatus,
    remaining: i64,
    reserved: i64,
    on_hold: i64,
    waitlist: i64,
) -> SaleStatus {
    let stock = i64::from(status.sale.stock);
    let held = on_hold.clamp(0, stock);
    let available = (remaining + reserved).clamp(0, stock - held);
    SaleStatus {
        remaining: available as u32,
        held: held as u32,
        waitlist: u32::try_from(waitlist.max(0)).unwrap_or(u32::MAX),
        ..status
    }
}

async fn step_tx(
    client: &mut deadpool_postgres::Object,
    target: &Target,
    event: &OrderEvent,
) -> Result<Option<Decided>, Failure> {
    let tx = client.transaction().await?;
    let id = match target {
        Target::Order(id) => *id,
        Target::NextExpired => {
            let due = tx
                .query_opt(
                    "SELECT order_id FROM orders
                     WHERE status = 'reserved' AND expires_at <= clock_timestamp()
                     ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                    &[],
                )
                .await?;
            match due {
                Some(row) => row.get(0),
                None => return Ok(None),
            }
        }
    };
    let Some(row) = tx
        .query_opt(
            &format!(
                "SELECT {ORDER} FROM orders o JOIN sales s ON s.id = o.sale_id
                 WHERE o.order_id = $1 FOR UPDATE OF o"
            ),
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    // Read once the row lock is held: the decision's instant is after every earlier winner's.
    let now: OffsetDateTime = tx.query_one("SELECT clock_timestamp()", &[]).await?.get(0);
    let order = order_of(&row).map_err(Failure::Stored)?;
    let state = state_of(&row, &order).map_err(Failure::Stored)?;
    let result = transition(&state, event, now);
    let Some((decided, new)) = result
        .as_ref()
        .ok()
        .and_then(|t| t.new_state().map(|new| (t, new)))
    else {
        return unchanged(tx, result, order).await;
    };
    let (pay, units) = match decided.units() {
        UnitsMove::Pay(n) => (true, n),
        UnitsMove::Release(n) => (false, n),
        UnitsMove::None => (false, 0),
    };
    let n = i32::try_from(units).unwrap_or(i32::MAX);
    let released = if pay { 0 } else { n };
    let offers = if released > 0 {
        free_units(&tx, order.sale_id, &order.user_id, released, now, id).await?
    } else {
        Offers::default()
    };
    // Every transition takes the sale row's lock: it orders the transition with a rebuild's
    // epoch bump, so the epoch read here says which Redis state the move belongs to. The
    // payment of the last unit held is the sale's sold-out instant (as `transition.lua`
    // records it in Redis).
    let epoch: i64 = tx
        .query_one(
            "UPDATE sales SET sold_out_at = CASE
                 WHEN $2 AND sold = stock AND NOT EXISTS (
                     SELECT 1 FROM orders WHERE sale_id = $1 AND status = 'reserved'
                         AND order_id <> $3) THEN $4
                 ELSE sold_out_at END
             WHERE id = $1 RETURNING epoch",
            &[&order.sale_id.0, &pay, &id, &now],
        )
        .await?
        .get(0);
    let payment_ref = match new {
        OrderState::Paid { payment_ref, .. } => Some(payment_ref.as_str()),
        _ => None,
    };
    tx.execute(
        "UPDATE orders SET status = $2, payment_ref = COALESCE($3, payment_ref), move_epoch = $4
         WHERE order_id = $1",
        &[&id, &new.status().as_str(), &payment_ref, &epoch],
    )
    .await?;
    if let Some((cause, [available, held, sold])) = LedgerCause::of_transition(decided) {
        tx.execute(
            "INSERT INTO stock_ledger
                 (sale_id, at, cause, order_id, available_delta, held_delta, sold_delta)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &order.sale_id.0,
                &now,
                &cause.code(),
                &id,
                &available,
                &held,
                &sold,
            ],
        )
        .await?;
    }
    tx.commit().await.map_err(Failure::AtCommit)?;
    let owed = PendingMove {
        order_id: id,
        sale_id: order.sale_id,
        epoch,
        pay,
        user: order.user_id.as_str().to_owned(),
        units,
        at: now,
        offered: offers.users,
    };
    let order = Order {
        status: new.status(),
        payment_ref: match new {
            OrderState::Paid { payment_ref, .. } => Some(payment_ref.clone()),
            _ => order.payment_ref,
        },
        ..order
    };
    Ok(Some(Decided {
        outcome: OrderEventOutcome::Decided { result, order },
        owed: Some(owed),
        list: offers.list,
    }))
}

/// Frees `n` units of sale `sale` held by `user` at `now` (the release of order `from`): the
/// one place PostgreSQL frees units. The buyer's allowance comes back (CO-7); then, in this
/// same transaction, the waitlist is offered the units (CO-10, [`offer_freed`]) and those
/// nobody takes go back to available (`sales.sold` down). Redis's half is `transition.lua`'s
/// release branch, told the offered buyers.
async fn free_units(
    tx: &deadpool_postgres::Transaction<'_>,
    sale: SaleId,
    user: &UserId,
    n: i32,
    now: OffsetDateTime,
    from: Uuid,
) -> Result<Offers, tokio_postgres::Error> {
    // The buyer's row goes at 0 (its CHECK keeps it positive). Buyers before the sale's row:
    // the group commit locks them in that order too. (An offer then locks the offered buyer's
    // row after the sale's: a waiter's own purchase committing at that instant may deadlock
    // with it, and PostgreSQL aborts one of the two whole; see docs/architecture.md.)
    tx.execute(
        "WITH gone AS (
             DELETE FROM buyers WHERE sale_id = $1 AND user_id = $2 AND held <= $3
         )
         UPDATE buyers SET held = held - $3
         WHERE sale_id = $1 AND user_id = $2 AND held > $3",
        &[&sale.0, &user.as_str(), &n],
    )
    .await?;
    let offers = offer_freed(tx, sale, n, now, from).await?;
    let back = n - i32::try_from(offers.users.len()).unwrap_or(n);
    tx.execute(
        "UPDATE sales SET sold = sold - $2, sold_out_at = NULL WHERE id = $1",
        &[&sale.0, &back],
    )
    .await?;
    Ok(offers)
}

/// Ends a transition that changes nothing: no write, nothing owed.
async fn unchanged(
    tx: deadpool_postgres::Transaction<'_>,
    result: Result<flashsale_core::Transition, flashsale_core::TransitionError>,
    order: Order,
) -> Result<Option<Decided>, Failure> {
    tx.commit().await?;
    Ok(Some(Decided {
        outcome: OrderEventOutcome::Decided { result, order },
        owed: None,
        list: None,
    }))
}

/// The order in a row of [`ORDER`].
fn order_of(row: &Row) -> Result<Order, StoreError> {
    let user: &str = row.get(2);
    let checkout = checkout_at(row, 5)?;
    Ok(Order {
        order_id: row.get(0),
        sale_id: SaleId(row.get(1)),
        user_id: UserId::parse(user).map_err(|e| StoreError::internal_from("a stored buyer", e))?,
        quantity: row.get::<_, i32>(3) as u32,
        created_at: row.get(4),
        status: checkout.status,
        expires_at: checkout.expires_at,
        payment_ref: checkout.payment_ref,
        offered: checkout.offered,
    })
}

/// The core's state of `order` (a row of [`ORDER`]): a hold order's total is the sale's
/// price times its units.
fn state_of(row: &Row, order: &Order) -> Result<OrderState, StoreError> {
    let owner = order.user_id.clone();
    if order.status == OrderStatus::Confirmed {
        return Ok(OrderState::Confirmed { owner });
    }
    let bad =
        |what: &str| StoreError::internal(format!("hold order {} has {what}", order.order_id));
    let price = Price::parse_pair(row.get(9), row.get::<_, Option<&str>>(10))
        .map_err(|e| StoreError::internal_from("a stored price", e))?
        .ok_or_else(|| bad("no price"))?;
    let reservation = Reservation {
        owner,
        units: order.quantity,
        total: price
            .total(order.quantity)
            .ok_or_else(|| bad("a total out of range"))?,
        expires_at: order.expires_at.ok_or_else(|| bad("no deadline"))?,
    };
    Ok(match order.status {
        OrderStatus::Reserved => OrderState::Reserved(reservation),
        OrderStatus::Paid => OrderState::Paid {
            reservation,
            payment_ref: order.payment_ref.clone().ok_or_else(|| bad("no payment"))?,
        },
        OrderStatus::Expired => OrderState::Expired(reservation),
        OrderStatus::Cancelled => OrderState::Cancelled(reservation),
        OrderStatus::Confirmed => OrderState::Confirmed {
            owner: reservation.owner,
        },
    })
}
