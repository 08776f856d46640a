//! Opening the database and rebuilding the in-memory books from it.

use super::book::{PersistedCounters, SaleBook};
use super::schema::{SALE_COLUMNS, SALE_LEN, from_micros, migrate, sale_of_row};
use crate::counter_columns;
use crate::ledger::{LedgerCause, LedgerEntry, LedgerKey, LedgerSource};
use crate::model::{Order, RejectionCounts};
use flashsale_core::{IdempotencyKey, OrderStatus, Outcome, PaymentRef, SaleId, UserId};
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use time::OffsetDateTime;

/// Opens the database with the durability settings the store relies on.
pub(crate) fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // WAL appends each group to one log. NORMAL: commits do not wait for the disk; the syncer
    // thread fsyncs the WAL before any order is answered (see `writer`), so a confirmed order
    // survives an OS crash or power loss, not only a process crash.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    // Checkpoints run on their own thread (see `spawn_checkpointer`) and, once the WAL is long,
    // on the writer between two groups (`writer::WalFrames`), never inside a buyer's commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Copies the WAL back into the database file every second, from a second connection.
///
/// A PASSIVE checkpoint never blocks the writer, so the fsync of the database file no longer
/// lands inside some unlucky group's commit; once a checkpoint has caught up, the writer's next
/// commit starts the WAL from the beginning again. Under a load that never pauses it never
/// catches up, so the writer also checkpoints once the WAL is long (`writer::WalFrames`). The
/// thread ends when `stop` is dropped.
pub(crate) fn spawn_checkpointer(
    path: &Path,
    stop: std::sync::mpsc::Receiver<()>,
) -> rusqlite::Result<std::thread::JoinHandle<()>> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    std::thread::Builder::new()
        .name("flashsale-checkpoint".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stop.recv_timeout(std::time::Duration::from_secs(1))
            {
                if let Err(e) = checkpoint(&conn) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                }
            }
        })
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Copies what it can of the WAL into the database file without waiting for anyone (PASSIVE).
pub(crate) fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

/// The index of the first counter column in the query of [`rebuild`] (after the sale, the
/// clock guard and `attempts`).
const FIRST_COUNTER: usize = SALE_LEN + 2;

/// Rebuilds every sale's book from the committed rows.
pub(crate) fn rebuild(conn: &Connection) -> rusqlite::Result<BTreeMap<SaleId, Arc<SaleBook>>> {
    let mut books = BTreeMap::new();
    // The sale's column names are its table's alone, so they need no qualifier.
    let mut sales = conn.prepare(&format!(
        "SELECT {SALE_COLUMNS}, c.last_decided_us, c.attempts, {}
         FROM sales s LEFT JOIN sale_counters c ON c.sale_id = s.id",
        counter_columns::list(|c| format!("c.{c}"))
    ))?;
    let mut rows = sales.query([])?;
    while let Some(row) = rows.next()? {
        let sale = sale_of_row(row)?;
        // `sales.sold_out_at_us` is not read back: the sold-out instant is derived from the
        // orders themselves (see `SaleBook::restore`), so no flag can disagree with them.
        let last_decided = row
            .get::<_, Option<i64>>(SALE_LEN)?
            .map_or(OffsetDateTime::UNIX_EPOCH, from_micros);
        let n = |i: usize| -> rusqlite::Result<u64> {
            Ok(row.get::<_, Option<i64>>(i)?.unwrap_or(0) as u64)
        };
        let mut rejections = RejectionCounts::default();
        for (i, outcome) in Outcome::COUNTED.into_iter().enumerate() {
            rejections.set(outcome, n(FIRST_COUNTER + i)?);
        }
        let counters = PersistedCounters {
            last_decided,
            attempts: n(SALE_LEN + 1)?,
            rejections,
        };
        let book = SaleBook::new(sale);
        book.restore_meta(counters);
        books.insert(book.sale().id, Arc::new(book));
    }
    let mut orders = conn.prepare(
        "SELECT order_id, sale_id, user_id, quantity, created_at_us, idempotency_key, status,
                expires_at_us, payment_ref, offered
         FROM orders ORDER BY created_at_us, order_id",
    )?;
    let mut rows = orders.query([])?;
    while let Some(row) = rows.next()? {
        let sale_id = SaleId(row.get(1)?);
        let Some(book) = books.get(&sale_id) else {
            continue;
        };
        let id: [u8; 16] = row.get(0)?;
        let user: String = row.get(2)?;
        let key: Option<String> = row.get(5)?;
        let status: String = row.get(6)?;
        let status = OrderStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                6,
                rusqlite::types::Type::Text,
                format!("unknown order status {status:?}").into(),
            )
        })?;
        let payment_ref: Option<String> = row.get(8)?;
        let payment_ref = payment_ref
            .map(|r| {
                PaymentRef::parse(&r).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        8,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
            })
            .transpose()?;
        // A reservation already past its deadline comes back reserved: the expiry timer
        // expires it through the same step as any other, right after open.
        let order = Order {
            status,
            expires_at: row.get::<_, Option<i64>>(7)?.map(from_micros),
            payment_ref,
            offered: row.get(9)?,
            order_id: uuid::Uuid::from_bytes(id),
            sale_id,
            // Stored ids were validated on the way in; a row that no longer parses is kept
            // under its raw text rather than dropped, so stock still agrees with the orders.
            user_id: UserId::parse(&user).unwrap_or_else(|_| {
                UserId::parse("invalid-stored-id").expect("literal id is valid")
            }),
            quantity: row.get(3)?,
            created_at: from_micros(row.get(4)?),
        };
        book.restore(order, key.and_then(|k| IdempotencyKey::parse(&k).ok()));
    }
    // The waitlist's history in join order: the `waiting` rows are the list.
    let mut waiters = conn.prepare(
        "SELECT sale_id, seq, user_id, joined_at_us, state = 'waiting'
         FROM waitlist ORDER BY sale_id, seq",
    )?;
    let mut rows = waiters.query([])?;
    while let Some(row) = rows.next()? {
        let Some(book) = books.get(&SaleId(row.get(0)?)) else {
            continue;
        };
        let user: String = row.get(2)?;
        let Ok(user) = UserId::parse(&user) else {
            // Ids were validated on the way in; one that no longer parses cannot be answered.
            tracing::warn!(user, "a waitlist row's user id no longer parses; skipped");
            continue;
        };
        let seq: i64 = row.get(1)?;
        book.restore_waiter(
            u64::try_from(seq).unwrap_or(0),
            user,
            from_micros(row.get(3)?),
            row.get(4)?,
        );
    }
    let mut recorded = conn.prepare(
        "SELECT id, sale_id, at_us, cause, order_id, available_delta, held_delta, sold_delta,
                sale_change_id
         FROM stock_ledger",
    )?;
    let mut rows = recorded.query([])?;
    while let Some(row) = rows.next()? {
        let Some(book) = books.get(&SaleId(row.get(1)?)) else {
            continue;
        };
        let cause: String = row.get(3)?;
        let cause = LedgerCause::parse(&cause).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                format!("unknown ledger cause {cause:?}").into(),
            )
        })?;
        let order_id: Option<[u8; 16]> = row.get(4)?;
        book.record(Some(LedgerEntry {
            key: LedgerKey {
                at: from_micros(row.get(2)?),
                source: LedgerSource::Recorded(row.get(0)?),
            },
            cause,
            order_id: order_id.map(uuid::Uuid::from_bytes),
            available_delta: row.get(5)?,
            held_delta: row.get(6)?,
            sold_delta: row.get(7)?,
            sale_change_id: row.get(8)?,
        }));
    }
    Ok(books)
}
