//! The SQLite schema of the embedded store, and how its rows map to domain values.
//!
//! Instants are stored as integer microseconds since the Unix epoch: exact, sortable, and the
//! same precision as PostgreSQL. `sales.sold` is kept by the writer in the same transaction as
//! the orders, and `CHECK (sold <= stock)` makes the database refuse an oversell on its own,
//! whatever the memory above it believes.

use crate::product_columns::product_of;
use flashsale_core::{CheckoutMode, Sale, SaleId};
use rusqlite::Connection;
use time::OffsetDateTime;

/// Creates the tables if they do not exist, and adds columns that later versions need.
///
/// `sale_counters.last_decided_us` is the clock guard: the latest instant the sale was decided
/// at, so that a restart on a clock stepped back still refuses an ended sale.
///
/// `orders` has no index beyond its keys on purpose: per-buyer reads are served from memory, and
/// every extra index is another random page written (and fsynced) per order.
pub(crate) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS sales (
             id             INTEGER PRIMARY KEY AUTOINCREMENT,
             name           TEXT    NOT NULL,
             starts_at_us   INTEGER NOT NULL,
             ends_at_us     INTEGER NOT NULL CHECK (ends_at_us > starts_at_us),
             stock          INTEGER NOT NULL CHECK (stock > 0),
             per_user_limit INTEGER NOT NULL CHECK (per_user_limit > 0),
             sold           INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0 AND sold <= stock),
             sold_out_at_us INTEGER,
             creation_key   TEXT
         );
         CREATE TABLE IF NOT EXISTS orders (
             order_id        BLOB    PRIMARY KEY,
             sale_id         INTEGER NOT NULL REFERENCES sales(id),
             user_id         TEXT    NOT NULL,
             quantity        INTEGER NOT NULL CHECK (quantity > 0),
             created_at_us   INTEGER NOT NULL,
             idempotency_key TEXT
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS sale_counters (
             sale_id            INTEGER PRIMARY KEY REFERENCES sales(id),
             attempts           INTEGER NOT NULL,
             sale_not_active    INTEGER NOT NULL,
             sold_out           INTEGER NOT NULL,
             already_purchased  INTEGER NOT NULL,
             limit_exceeded     INTEGER NOT NULL,
             insufficient_stock INTEGER NOT NULL,
             unavailable        INTEGER NOT NULL,
             last_decided_us    INTEGER
         );",
    )?;
    // Data directories created before the clock guard lack its column, and before admin
    // idempotency the sales' creation key (one sale per key).
    add_column(conn, "sale_counters", "last_decided_us", "INTEGER")?;
    add_column(conn, "sales", "creation_key", "TEXT")?;
    conn.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS sales_creation_key ON sales (creation_key)",
    )?;
    // Operators' changes (issue 14): the cancellation instant, and one row per field each
    // edit or cancel altered, written in the same transaction as the change itself (the same
    // table as PostgreSQL's migration 0006).
    add_column(conn, "sales", "cancelled_at_us", "INTEGER")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS sale_changes (
             id        INTEGER PRIMARY KEY AUTOINCREMENT,
             sale_id   INTEGER NOT NULL REFERENCES sales(id),
             at_us     INTEGER NOT NULL,
             kind      TEXT    NOT NULL CHECK (kind IN ('edit', 'cancel')),
             field     TEXT    NOT NULL,
             old_value TEXT,
             new_value TEXT
         );
         CREATE INDEX IF NOT EXISTS sale_changes_by_sale ON sale_changes (sale_id, id);",
    )?;
    // The product (OP-12..OP-15): the same columns as PostgreSQL's migration 0009; the
    // image's bytes are files beside the database (`images.rs`), the row names which.
    for column in crate::product_columns::COLUMNS.split(", ") {
        let ty = if column == "price_minor" {
            "INTEGER"
        } else {
            "TEXT"
        };
        add_column(conn, "sales", column, ty)?;
    }
    // Checkout (issue 12, CO-1): a sale's mode and payment window, fixed at creation (every
    // sale from before is instant); the units held by live reservations, kept by the writer
    // beside `sold` so the database refuses on its own to hold or sell more than the stock;
    // and each order's status, deadline and payment. An order row from before is `confirmed`.
    add_column(conn, "sales", "checkout", "TEXT NOT NULL DEFAULT 'instant'")?;
    add_column(conn, "sales", "payment_window_secs", "INTEGER")?;
    add_column(
        conn,
        "sales",
        "held",
        "INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0 AND held + sold <= stock)",
    )?;
    add_column(
        conn,
        "orders",
        "status",
        "TEXT NOT NULL DEFAULT 'confirmed'",
    )?;
    add_column(conn, "orders", "expires_at_us", "INTEGER")?;
    add_column(conn, "orders", "payment_ref", "TEXT")?;
    // The waitlist (issue 12, CO-9..CO-11): whether a reservation was made by an offer (every
    // order from before was not), and one history row per join, never deleted (the summary
    // counts joins ever): `waiting` until the buyer leaves (`left`), is offered a unit
    // (`offered`, with the reservation's id) or is passed over at the limit (`passed`). The
    // list is the `waiting` rows in `seq` order; at `ends_at` it lapses by the clock, not by a
    // write.
    add_column(conn, "orders", "offered", "INTEGER NOT NULL DEFAULT 0")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS waitlist (
             sale_id      INTEGER NOT NULL REFERENCES sales(id),
             seq          INTEGER NOT NULL,
             user_id      TEXT    NOT NULL,
             joined_at_us INTEGER NOT NULL,
             state        TEXT    NOT NULL DEFAULT 'waiting'
                          CHECK (state IN ('waiting', 'left', 'offered', 'passed')),
             ended_at_us  INTEGER,
             order_id     BLOB,
             PRIMARY KEY (sale_id, seq)
         ) WITHOUT ROWID;",
    )?;
    create_stock_ledger(conn)?;
    index_keyed_orders_only(conn)
}

/// An order's idempotency key is unique within its sale, but most orders have none: the table
/// constraint `UNIQUE (sale_id, idempotency_key)` that orders had before issue 15 kept an index
/// entry for every keyless order too (a NULL is never a duplicate, yet is stored), one more
/// B-tree insert per purchase. A partial unique index enforces exactly the same rule with the
/// keyed orders only (the same as PostgreSQL's migration 0013). SQLite cannot drop a table
/// constraint, so a table that has it is rebuilt, once, in one transaction.
fn index_keyed_orders_only(conn: &Connection) -> rusqlite::Result<()> {
    const KEYED_ONLY: &str = "CREATE UNIQUE INDEX IF NOT EXISTS orders_idempotency_key
        ON orders (sale_id, idempotency_key) WHERE idempotency_key IS NOT NULL";
    let constrained: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_index_list('orders') WHERE origin = 'u'",
        [],
        |row| row.get(0),
    )?;
    if !constrained {
        return conn.execute_batch(KEYED_ONLY);
    }
    conn.execute_batch(&format!(
        "BEGIN;
         CREATE TABLE orders_rebuilt (
             order_id        BLOB    PRIMARY KEY,
             sale_id         INTEGER NOT NULL REFERENCES sales(id),
             user_id         TEXT    NOT NULL,
             quantity        INTEGER NOT NULL CHECK (quantity > 0),
             created_at_us   INTEGER NOT NULL,
             idempotency_key TEXT,
             status          TEXT    NOT NULL DEFAULT 'confirmed',
             expires_at_us   INTEGER,
             payment_ref     TEXT,
             offered         INTEGER NOT NULL DEFAULT 0
         ) WITHOUT ROWID;
         INSERT INTO orders_rebuilt (order_id, sale_id, user_id, quantity, created_at_us,
                                     idempotency_key, status, expires_at_us, payment_ref, offered)
         SELECT order_id, sale_id, user_id, quantity, created_at_us, idempotency_key, status,
                expires_at_us, payment_ref, offered
         FROM orders;
         DROP TABLE orders;
         ALTER TABLE orders_rebuilt RENAME TO orders;
         {KEYED_ONLY};
         COMMIT;"
    ))
}

/// The stock ledger's recorded entries (issue 14; the same table as PostgreSQL's migration
/// 0008): every change of a sale's units that is not an order (orders are their own entries),
/// written in the same transaction as the change. A data directory from before it gets the
/// entries its sales and `sale_changes` imply, once, when the table is created.
fn create_stock_ledger(conn: &Connection) -> rusqlite::Result<()> {
    let present: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'stock_ledger'",
        [],
        |row| row.get(0),
    )?;
    if present {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE stock_ledger (
             id              INTEGER PRIMARY KEY AUTOINCREMENT,
             sale_id         INTEGER NOT NULL REFERENCES sales(id),
             at_us           INTEGER NOT NULL,
             cause           TEXT    NOT NULL,
             order_id        BLOB,
             available_delta INTEGER NOT NULL,
             held_delta      INTEGER NOT NULL,
             sold_delta      INTEGER NOT NULL,
             sale_change_id  INTEGER REFERENCES sale_changes(id)
         );
         CREATE INDEX stock_ledger_by_sale ON stock_ledger (sale_id, at_us, id);
         -- The stock a sale was created with is the first stock change's old value, if any;
         -- it was created no later than its start (orders come after it) or its first change.
         INSERT INTO stock_ledger (sale_id, at_us, cause, available_delta, held_delta, sold_delta)
         SELECT s.id,
                min(s.starts_at_us, coalesce(
                    (SELECT min(c.at_us) FROM sale_changes c WHERE c.sale_id = s.id),
                    s.starts_at_us)),
                'created',
                coalesce((SELECT CAST(c.old_value AS INTEGER) FROM sale_changes c
                          WHERE c.sale_id = s.id AND c.field = 'stock' ORDER BY c.id LIMIT 1),
                         s.stock),
                0, 0
         FROM sales s ORDER BY s.id;
         INSERT INTO stock_ledger
             (sale_id, at_us, cause, available_delta, held_delta, sold_delta, sale_change_id)
         SELECT c.sale_id, c.at_us, c.kind,
                CASE c.kind WHEN 'edit'
                    THEN CAST(c.new_value AS INTEGER) - CAST(c.old_value AS INTEGER) ELSE 0 END,
                0, 0, c.id
         FROM sale_changes c
         WHERE (c.kind = 'edit' AND c.field = 'stock')
            OR (c.kind = 'cancel' AND c.field = 'cancelled_at')
         ORDER BY c.id;
         COMMIT;",
    )
}

/// Adds `column` to `table` unless it is there (names are constants of this module).
fn add_column(conn: &Connection, table: &str, column: &str, ty: &str) -> rusqlite::Result<()> {
    let present: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |row| row.get(0),
    )?;
    if !present {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))?;
    }
    Ok(())
}

/// The columns [`sale_of_row`] reads, in its order.
pub(crate) const SALE_COLUMNS: &str = "id, name, starts_at_us, ends_at_us, stock, per_user_limit, \
     cancelled_at_us, description, price_minor, currency, image_kind, image_sha256, checkout, \
     payment_window_secs";

/// How many columns [`SALE_COLUMNS`] lists: a query's next column is at this index.
pub(crate) const SALE_LEN: usize = 14;

/// The sale in the first [`SALE_LEN`] columns of `row` ([`SALE_COLUMNS`]).
pub(crate) fn sale_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Sale> {
    let mode: String = row.get(12)?;
    let checkout = CheckoutMode::parse(Some(&mode), row.get(13)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(12, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Sale {
        checkout,
        id: SaleId(row.get(0)?),
        name: row.get(1)?,
        starts_at: from_micros(row.get(2)?),
        ends_at: from_micros(row.get(3)?),
        stock: row.get(4)?,
        per_user_limit: row.get(5)?,
        cancelled_at: row.get::<_, Option<i64>>(6)?.map(from_micros),
        product: product_of(
            row.get(7)?,
            row.get(8)?,
            row.get(9)?,
            row.get(10)?,
            row.get(11)?,
        ),
    })
}

/// The `checkout` and `payment_window_secs` columns of a sale's mode.
pub(crate) fn checkout_columns(mode: CheckoutMode) -> (&'static str, Option<u32>) {
    (mode.as_str(), mode.payment_window().map(|w| w.secs()))
}

/// Microseconds since the epoch.
pub(crate) fn to_micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

/// The instant `micros` after the epoch.
pub(crate) fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rusqlite::params;

    #[test]
    fn sale_len_counts_the_sale_columns() {
        assert_eq!(SALE_COLUMNS.split(", ").count(), SALE_LEN);
    }

    #[test]
    fn a_database_from_before_the_ledger_gets_the_entries_its_sales_and_changes_imply() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        // As the schema was before the ledger: a sale created with 10 units, raised to 15 at
        // 50, renamed at 60, cancelled at 70.
        conn.execute_batch(
            "DROP TABLE stock_ledger;
             INSERT INTO sales (id, name, starts_at_us, ends_at_us, stock, per_user_limit,
                                cancelled_at_us)
             VALUES (1, 'old', 100, 1000, 15, 1, 70);
             INSERT INTO sale_changes (sale_id, at_us, kind, field, old_value, new_value) VALUES
                 (1, 50, 'edit', 'stock', '10', '15'),
                 (1, 60, 'edit', 'name', 'a', 'old'),
                 (1, 70, 'cancel', 'cancelled_at', NULL, 'x');",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let rows: Vec<(i64, String, i64, Option<i64>)> = conn
            .prepare(
                "SELECT at_us, cause, available_delta, sale_change_id FROM stock_ledger
                 ORDER BY at_us, id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (50, "created".to_owned(), 10, None),
                (50, "edit".to_owned(), 5, Some(1)),
                (70, "cancel".to_owned(), 0, Some(3)),
            ]
        );
        migrate(&conn).unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM stock_ledger", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 3, "the backfill runs once");
    }

    /// `orders`' indexes beside its primary key: name, unique, origin, partial.
    fn order_indexes(conn: &Connection) -> Vec<(String, bool, String, bool)> {
        conn.prepare(
            "SELECT name, \"unique\", origin, partial FROM pragma_index_list('orders')
             WHERE origin != 'pk' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn orders_from_before_keep_every_row_and_keys_stay_unique_per_sale_with_keyless_orders_unindexed()
     {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        // As the table was before issue 15: the keys unique by a table constraint.
        conn.execute_batch(
            "DROP TABLE orders;
             CREATE TABLE orders (
                 order_id        BLOB    PRIMARY KEY,
                 sale_id         INTEGER NOT NULL REFERENCES sales(id),
                 user_id         TEXT    NOT NULL,
                 quantity        INTEGER NOT NULL CHECK (quantity > 0),
                 created_at_us   INTEGER NOT NULL,
                 idempotency_key TEXT,
                 UNIQUE (sale_id, idempotency_key)
             ) WITHOUT ROWID;
             ALTER TABLE orders ADD COLUMN status TEXT NOT NULL DEFAULT 'confirmed';
             ALTER TABLE orders ADD COLUMN expires_at_us INTEGER;
             ALTER TABLE orders ADD COLUMN payment_ref TEXT;
             ALTER TABLE orders ADD COLUMN offered INTEGER NOT NULL DEFAULT 0;
             INSERT INTO sales (id, name, starts_at_us, ends_at_us, stock, per_user_limit)
             VALUES (1, 'old', 100, 1000, 15, 3), (2, 'other', 100, 1000, 15, 3);
             INSERT INTO orders (order_id, sale_id, user_id, quantity, created_at_us,
                                 idempotency_key, status, expires_at_us, payment_ref, offered)
             VALUES (x'01', 1, 'a', 1, 200, 'k1', 'paid', 900, 'pay-1', 1),
                    (x'02', 1, 'b', 2, 201, NULL, 'confirmed', NULL, NULL, 0);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        let rows: Vec<String> = conn
            .prepare(
                "SELECT quote(order_id) || ' ' || user_id || ' ' || quote(idempotency_key) || ' '
                        || status || ' ' || quote(expires_at_us) || ' ' || quote(payment_ref)
                        || ' ' || offered
                 FROM orders ORDER BY order_id",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                "X'01' a 'k1' paid 900 'pay-1' 1",
                "X'02' b NULL confirmed NULL NULL 0"
            ]
        );
        let insert = "INSERT INTO orders (order_id, sale_id, user_id, quantity, created_at_us,
                                          idempotency_key) VALUES (?1, ?2, 'c', 1, 300, ?3)";
        let duplicate = conn.execute(insert, params![vec![3u8], 1, "k1"]);
        assert!(duplicate.is_err(), "a key is unique within its sale");
        conn.execute(insert, params![vec![4u8], 2, "k1"]).unwrap();
        conn.execute(insert, params![vec![5u8], 1, None::<String>])
            .unwrap();
        conn.execute(insert, params![vec![6u8], 1, None::<String>])
            .unwrap();
        // The one index beside the table is unique and partial (keyed orders only), on a
        // database from before and on a new one alike.
        let keys_only = [(
            "orders_idempotency_key".to_owned(),
            true,
            "c".to_owned(),
            true,
        )];
        assert_eq!(order_indexes(&conn), keys_only);
        let fresh = Connection::open_in_memory().unwrap();
        migrate(&fresh).unwrap();
        assert_eq!(order_indexes(&fresh), keys_only);
    }
}
