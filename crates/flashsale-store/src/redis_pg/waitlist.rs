//! The waitlist in the scale-out store (SPEC 9, CO-9..CO-11). PostgreSQL is its authority
//! (`waitlist` rows, migration 0011); the rules are `flashsale_core::Waitlist`'s, mirrored here
//! in SQL.
//!
//! Every change of a sale's list (a join, a leave, the offers of a release) runs in one
//! transaction holding the sale row's lock (`FOR UPDATE`), so changes are decided one at a
//! time per sale, in commit order, on every instance: `seq` (taken under that lock) is the
//! join order, and a release pops the head in that order. The same transaction bumps
//! `sales.waitlist_len` and `waitlist_rev`; after it commits the pair is published to the
//! sale's Redis `meta` hash by `waitlist.lua` (a newer revision only), where status reads pick
//! it up in the `HMGET` they already make. A publish lost with its instance is made good by
//! every reconciler round ([`Waitlists::republish`]) and by a rebuild.
//!
//! A join decides against PostgreSQL's figures, read under the sale row's lock that every
//! release takes too: a unit a release gave back to available is seen (the join is refused
//! `units_available`), and a unit held by a reservation is never available. Purchases Redis
//! admitted but the group commit has not written yet count as available here for those few
//! milliseconds: a join then is refused `units_available` (the buyer tries to buy, and is
//! refused or served), never accepted while a unit is free.

use super::connections::{Postgres, Redis};
use super::keys::Keys;
use crate::{StoreError, WaitlistJoin, WaitlistLeave, WaitlistPlace};
use flashsale_core::{SaleId, UserId, WaitlistRefusal};
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// Most sales whose list length one reconciler round publishes again.
const REPUBLISH_MAX: i64 = 1000;

/// The offers one release made: the buyers given a unit each, and the list after them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Offers {
    /// The buyers offered a unit, in join order (one unit each).
    pub users: Vec<String>,
    /// The list's new `(length, revision)` if it changed (someone was offered or passed).
    pub list: Option<(i64, i64)>,
}

/// Where a buyer stands, as [`Waitlists::place`] reads it.
#[derive(Debug)]
pub(crate) enum Standing {
    /// Waiting, or neither waiting nor offered.
    Place(WaitlistPlace),
    /// Not waiting; this is the latest reservation an offer gave them (read it whole).
    Offered(Uuid),
}

/// Joins, leaves and places on sales' waitlists, and the copy of their lengths in Redis.
pub(crate) struct Waitlists {
    pg: Arc<Postgres>,
    redis: Arc<Redis>,
    keys: Arc<Keys>,
    publish: redis::Script,
}

impl Waitlists {
    /// Waitlists kept in `pg`, their lengths published to `redis`.
    pub(crate) fn new(pg: Arc<Postgres>, redis: Arc<Redis>, keys: Arc<Keys>) -> Self {
        Self {
            pg,
            redis,
            keys,
            publish: redis::Script::new(include_str!("waitlist.lua")),
        }
    }

    /// See [`crate::SaleStore::waitlist_join`]: decided in one transaction on the sale row's
    /// lock, by `flashsale_core::Waitlist::join`'s order of checks, on PostgreSQL's clock.
    pub(crate) async fn join(
        &self,
        id: SaleId,
        user: &UserId,
    ) -> Result<Option<WaitlistJoin>, StoreError> {
        let mut client = self.pg.client().await?;
        let joined = self
            .pg
            .call("a waitlist join", join_tx(&mut client, id, user))
            .await;
        let (answer, list) = match joined {
            Ok(Some(done)) => done,
            Ok(None) => return Ok(None),
            Err(e) => {
                // Mid-transaction, perhaps: the connection is never handed to anyone else.
                drop(deadpool_postgres::Object::take(client));
                return Err(e);
            }
        };
        drop(client);
        if let Some((len, rev)) = list {
            self.publish(id, len, rev).await;
        }
        Ok(Some(answer))
    }

    /// See [`crate::SaleStore::waitlist_leave`].
    pub(crate) async fn leave(
        &self,
        id: SaleId,
        user: &UserId,
    ) -> Result<Option<WaitlistLeave>, StoreError> {
        let mut client = self.pg.client().await?;
        let left = self
            .pg
            .call("a waitlist leave", leave_tx(&mut client, id, user))
            .await;
        let (answer, list) = match left {
            Ok(Some(done)) => done,
            Ok(None) => return Ok(None),
            Err(e) => {
                drop(deadpool_postgres::Object::take(client));
                return Err(e);
            }
        };
        drop(client);
        if let Some((len, rev)) = list {
            self.publish(id, len, rev).await;
        }
        Ok(Some(answer))
    }

    /// See [`crate::SaleStore::waitlist_place`]: the position is the number of waiters
    /// ahead (a count on the `waitlist_queue` index) plus one; else the buyer's latest offer.
    /// The sale is known to exist.
    pub(crate) async fn place(&self, id: SaleId, user: &UserId) -> Result<Standing, StoreError> {
        let client = self.pg.client().await?;
        let row = self
            .pg
            .call(
                "a waitlist place",
                client.query_opt(
                    "SELECT (SELECT count(*) FROM waitlist a
                             WHERE a.sale_id = w.sale_id AND a.state = 'waiting'
                               AND a.seq < w.seq)
                     FROM waitlist w JOIN sales s ON s.id = w.sale_id
                     WHERE w.sale_id = $1 AND w.user_id = $2 AND w.state = 'waiting'
                       AND clock_timestamp() < s.ends_at AND s.cancelled_at IS NULL",
                    &[&id.0, &user.as_str()],
                ),
            )
            .await?;
        if let Some(row) = row {
            let ahead: i64 = row.get(0);
            return Ok(Standing::Place(WaitlistPlace::Waiting {
                position: u32::try_from(ahead + 1).unwrap_or(u32::MAX),
            }));
        }
        let offer = self
            .pg
            .call(
                "a waitlist offer",
                client.query_opt(
                    "SELECT order_id FROM orders
                     WHERE sale_id = $1 AND user_id = $2 AND offered
                     ORDER BY created_at DESC, order_id DESC LIMIT 1",
                    &[&id.0, &user.as_str()],
                ),
            )
            .await?;
        drop(client);
        Ok(match offer {
            Some(row) => Standing::Offered(row.get(0)),
            None => Standing::Place(WaitlistPlace::NotWaitlisted),
        })
    }

    /// Publishes a sale's list length to Redis if `rev` is newer than what it holds. Best
    /// effort: a failure is made good by the reconciler's [`Waitlists::republish`].
    pub(crate) async fn publish(&self, id: SaleId, len: i64, rev: i64) {
        let keys = self.keys.sale(id);
        let mut con = self.redis.con();
        let mut inv = self.publish.key(&keys.meta);
        inv.arg(len).arg(rev);
        let done: Result<i64, StoreError> = self
            .redis
            .call("waitlist length", inv.invoke_async(&mut con))
            .await;
        if let Err(e) = done {
            tracing::debug!(sale = %id, error = %e.report(), "waitlist length left for the reconciler");
        }
    }

    /// Publishes again the list length of every open sale that has had a list (a publish
    /// lost with its instance, or a Redis state rebuilt after it); returns how many.
    pub(crate) async fn republish(&self) -> Result<usize, StoreError> {
        let client = self.pg.client().await?;
        let rows = self
            .pg
            .call(
                "waitlist lengths",
                client.query(
                    "SELECT id, waitlist_len, waitlist_rev FROM sales
                     WHERE waitlist_rev > 0 AND ends_at > clock_timestamp()
                       AND cancelled_at IS NULL
                     ORDER BY id LIMIT $1",
                    &[&REPUBLISH_MAX],
                ),
            )
            .await?;
        drop(client);
        for row in &rows {
            let len: i32 = row.get(1);
            self.publish(SaleId(row.get(0)), i64::from(len), row.get(2))
                .await;
        }
        Ok(rows.len())
    }
}

/// A decided change: the answer, and the list's new `(length, revision)` if it changed.
type Changed<T> = (T, Option<(i64, i64)>);

/// The join's transaction; `None` if there is no such sale.
async fn join_tx(
    client: &mut deadpool_postgres::Object,
    id: SaleId,
    user: &UserId,
) -> Result<Option<Changed<WaitlistJoin>>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // The sale row's lock first (as releases take it), then the clock: the decision's
    // instant is after every change that committed before it.
    let Some(sale) = tx
        .query_opt(
            "SELECT starts_at, ends_at, stock, sold, per_user_limit, cancelled_at
             FROM sales WHERE id = $1 FOR UPDATE",
            &[&id.0],
        )
        .await?
    else {
        return Ok(None);
    };
    let now: OffsetDateTime = tx.query_one("SELECT clock_timestamp()", &[]).await?.get(0);
    let (starts_at, ends_at): (OffsetDateTime, OffsetDateTime) = (sale.get(0), sale.get(1));
    let (stock, taken, limit): (i32, i32, i32) = (sale.get(2), sale.get(3), sale.get(4));
    let cancelled = sale.get::<_, Option<OffsetDateTime>>(5).is_some();
    let refused = |refusal| Ok(Some((WaitlistJoin::Refused(refusal), None)));
    if now < starts_at {
        return refused(WaitlistRefusal::NotStarted);
    }
    if now >= ends_at || cancelled {
        return refused(WaitlistRefusal::Closed);
    }
    // `sold` counts a hold sale's taken units (held or paid): the held ones are the live
    // reservations.
    let held: i64 = tx
        .query_one(
            "SELECT COALESCE(sum(quantity), 0)::int8 FROM orders
             WHERE sale_id = $1 AND status = 'reserved'",
            &[&id.0],
        )
        .await?
        .get(0);
    let paid = i64::from(taken) - held;
    if paid >= i64::from(stock) {
        return refused(WaitlistRefusal::SoldOut);
    }
    let available = i64::from(stock) - i64::from(taken);
    if available > 0 {
        return refused(WaitlistRefusal::UnitsAvailable {
            available: u32::try_from(available).unwrap_or(u32::MAX),
        });
    }
    let waiting = tx
        .query_opt(
            "SELECT (SELECT count(*) FROM waitlist a
                     WHERE a.sale_id = w.sale_id AND a.state = 'waiting' AND a.seq < w.seq)
             FROM waitlist w WHERE w.sale_id = $1 AND w.user_id = $2 AND w.state = 'waiting'",
            &[&id.0, &user.as_str()],
        )
        .await?;
    if let Some(row) = waiting {
        let ahead: i64 = row.get(0);
        return refused(WaitlistRefusal::AlreadyWaitlisted {
            position: usize::try_from(ahead + 1).unwrap_or(usize::MAX),
        });
    }
    let holding: i32 = tx
        .query_opt(
            "SELECT held FROM buyers WHERE sale_id = $1 AND user_id = $2",
            &[&id.0, &user.as_str()],
        )
        .await?
        .map_or(0, |r| r.get(0));
    if holding >= limit {
        return refused(WaitlistRefusal::AtLimit {
            limit: u32::try_from(limit).unwrap_or(0),
        });
    }
    tx.execute(
        "INSERT INTO waitlist (sale_id, user_id, joined_at) VALUES ($1, $2, $3)",
        &[&id.0, &user.as_str(), &now],
    )
    .await?;
    let list = bump(&tx, id, 1).await?;
    tx.commit().await?;
    // Appended at the end: everyone waiting joined earlier.
    let position = u32::try_from(list.0).unwrap_or(u32::MAX);
    Ok(Some((WaitlistJoin::Joined { position }, Some(list))))
}

/// The leave's transaction; `None` if there is no such sale. After `ends_at` the list has
/// lapsed (so has a cancelled sale's): nobody waits, so nothing changes.
async fn leave_tx(
    client: &mut deadpool_postgres::Object,
    id: SaleId,
    user: &UserId,
) -> Result<Option<Changed<WaitlistLeave>>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let Some(sale) = tx
        .query_opt(
            "SELECT ends_at > clock_timestamp() AND cancelled_at IS NULL
             FROM sales WHERE id = $1 FOR UPDATE",
            &[&id.0],
        )
        .await?
    else {
        return Ok(None);
    };
    if !sale.get::<_, bool>(0) {
        return Ok(Some((WaitlistLeave::NotWaitlisted, None)));
    }
    let left = tx
        .execute(
            "UPDATE waitlist SET state = 'left', decided_at = clock_timestamp()
             WHERE sale_id = $1 AND user_id = $2 AND state = 'waiting'",
            &[&id.0, &user.as_str()],
        )
        .await?;
    if left == 0 {
        return Ok(Some((WaitlistLeave::NotWaitlisted, None)));
    }
    let list = bump(&tx, id, -1).await?;
    tx.commit().await?;
    Ok(Some((WaitlistLeave::Left, Some(list))))
}

/// Moves the sale's list length by `by` and bumps its revision; returns both, new.
async fn bump(
    tx: &deadpool_postgres::Transaction<'_>,
    id: SaleId,
    by: i32,
) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = tx
        .query_one(
            "UPDATE sales SET waitlist_len = waitlist_len + $2, waitlist_rev = waitlist_rev + 1
             WHERE id = $1 RETURNING waitlist_len, waitlist_rev",
            &[&id.0, &by],
        )
        .await?;
    Ok((i64::from(row.get::<_, i32>(0)), row.get(1)))
}

/// Offers up to `n` units freed at `now` by the release of order `from` (in the caller's
/// transition transaction) to the sale's waiters, by `flashsale_core::Waitlist::next_offer`:
/// each unit to the earliest waiter whose reserved and paid units (`buyers.held`, the
/// releasing buyer's already lowered) leave room for one more, as a new one-unit reservation
/// with a fresh window from `now`; waiters met at the limit are passed (taken off). Nothing at
/// or after `ends_at`. Takes the sale row's lock (after the releasing buyer's row, as the group
/// commit orders them). The caller gives the units not offered back to available.
pub(crate) async fn offer_freed(
    tx: &deadpool_postgres::Transaction<'_>,
    sale: SaleId,
    n: i32,
    now: OffsetDateTime,
    from: Uuid,
) -> Result<Offers, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "SELECT ends_at, per_user_limit, payment_window_secs, cancelled_at FROM sales
             WHERE id = $1 FOR UPDATE",
            &[&sale.0],
        )
        .await?;
    let (ends_at, limit): (OffsetDateTime, i32) = (row.get(0), row.get(1));
    let Some(window) = row.get::<_, Option<i32>>(2) else {
        return Ok(Offers::default());
    };
    // A cancelled sale ended: its list lapsed as at `ends_at`.
    if now >= ends_at || row.get::<_, Option<OffsetDateTime>>(3).is_some() {
        return Ok(Offers::default());
    }
    let expires_at = now + time::Duration::seconds(i64::from(window));
    let mut offers = Offers::default();
    let mut popped = 0;
    while offers.users.len() < usize::try_from(n).unwrap_or(0) {
        let Some(head) = tx
            .query_opt(
                "SELECT w.seq, w.user_id, COALESCE(b.held, 0) FROM waitlist w
                 LEFT JOIN buyers b ON b.sale_id = w.sale_id AND b.user_id = w.user_id
                 WHERE w.sale_id = $1 AND w.state = 'waiting' ORDER BY w.seq LIMIT 1",
                &[&sale.0],
            )
            .await?
        else {
            break;
        };
        let (seq, user, holding): (i64, String, i32) = (head.get(0), head.get(1), head.get(2));
        popped += 1;
        if holding >= limit {
            tx.execute(
                "UPDATE waitlist SET state = 'passed', decided_at = $2 WHERE seq = $1",
                &[&seq, &now],
            )
            .await?;
            continue;
        }
        let order_id = Uuid::now_v7();
        tx.execute(
            "INSERT INTO orders (order_id, sale_id, user_id, quantity, created_at, status,
                                 expires_at, offered, offered_from)
             VALUES ($1, $2, $3, 1, $4, 'reserved', $5, true, $6)",
            &[&order_id, &sale.0, &user, &now, &expires_at, &from],
        )
        .await?;
        tx.execute(
            "INSERT INTO buyers AS b (sale_id, user_id, held, per_user_limit)
             VALUES ($1, $2, 1, $3)
             ON CONFLICT (sale_id, user_id) DO UPDATE SET held = b.held + 1",
            &[&sale.0, &user, &limit],
        )
        .await?;
        tx.execute(
            "UPDATE waitlist SET state = 'offered', decided_at = $2, order_id = $3
             WHERE seq = $1",
            &[&seq, &now, &order_id],
        )
        .await?;
        offers.users.push(user);
    }
    if popped > 0 {
        offers.list = Some(bump(tx, sale, -popped).await?);
    }
    Ok(offers)
}
