//! The stock ledger in PostgreSQL: a page is the sale's `stock_ledger` rows (written with the
//! sale's creation, with each change, see `change.rs`, and with each hold transition, see
//! `checkout.rs`) merged with its committed orders (an instant order is an `order` entry, a
//! hold order the `reserve` entry of [`LedgerEntry::of_order`]),
//! both read as keyset range scans (`stock_ledger_by_sale`, `orders_by_sale_time`) and merged
//! by the ledger key in one statement.

use super::connections::Postgres;
use crate::StoreError;
use crate::ledger::{LedgerCause, LedgerEntry, LedgerKey, LedgerSource};
use flashsale_core::SaleId;
use time::{Date, Month, OffsetDateTime};
use uuid::Uuid;

/// Each branch reads at most `$5` rows after the cursor; the outer merge keeps the first `$5`.
/// Source 0 (`stock_ledger`) sorts before source 1 (orders) at one instant, as
/// [`LedgerSource`] does. The cursor is split per branch: `(at, id) > ($2, $3)` for recorded
/// entries and `(created_at, order_id) > ($2, $4)` for orders (see [`bounds`]).
const PAGE: &str = "
    SELECT at, source, id, order_id, cause, available_delta, held_delta, sold_delta,
           sale_change_id
    FROM (
        (SELECT at, 0 AS source, id, order_id, cause, available_delta, held_delta, sold_delta,
                sale_change_id
         FROM stock_ledger WHERE sale_id = $1 AND (at, id) > ($2, $3)
         ORDER BY at, id LIMIT $5)
        UNION ALL
        (SELECT created_at, 1, 0, order_id,
                CASE WHEN expires_at IS NULL THEN 'order' ELSE 'reserve' END,
                -quantity::bigint,
                CASE WHEN expires_at IS NULL THEN 0 ELSE quantity END::bigint,
                CASE WHEN expires_at IS NULL THEN quantity ELSE 0 END::bigint, NULL::bigint
         FROM orders WHERE sale_id = $1 AND (created_at, order_id) > ($2, $4)
         ORDER BY created_at, order_id LIMIT $5)
    ) page
    ORDER BY at, source, id, order_id LIMIT $5";

/// The cursor as each branch's bound: (instant, recorded id, order id). After a recorded entry,
/// orders at its instant all follow (the nil id is below every order id); after an order,
/// recorded entries at its instant all precede it (no id is above `i64::MAX`).
fn bounds(after: Option<LedgerKey>) -> (OffsetDateTime, i64, Uuid) {
    match after {
        // Before any sale: PostgreSQL's timestamptz starts in 4713 BC, `time` in 9999 BC.
        None => (
            Date::from_calendar_date(1, Month::January, 1)
                .map_or(OffsetDateTime::UNIX_EPOCH, |d| d.midnight().assume_utc()),
            i64::MIN,
            Uuid::nil(),
        ),
        Some(LedgerKey {
            at,
            source: LedgerSource::Recorded(id),
        }) => (at, id, Uuid::nil()),
        Some(LedgerKey {
            at,
            source: LedgerSource::Order(order_id),
        }) => (at, i64::MAX, order_id),
    }
}

/// Up to `limit` entries of the sale's ledger after `after`, in ledger order.
pub(crate) async fn ledger_page(
    pg: &Postgres,
    id: SaleId,
    after: Option<LedgerKey>,
    limit: usize,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (at, recorded, order) = bounds(after);
    let client = pg.client().await?;
    let rows = pg
        .call(
            "a page of a sale's stock ledger",
            client.query(PAGE, &[&id.0, &at, &recorded, &order, &limit]),
        )
        .await?;
    rows.iter()
        .map(|row| {
            let source: i32 = row.get(1);
            let order_id: Option<Uuid> = row.get(3);
            let cause: &str = row.get(4);
            let cause = LedgerCause::parse(cause).ok_or_else(|| {
                StoreError::internal(format!("unknown stock ledger cause {cause:?}"))
            })?;
            let source = match (source, order_id) {
                (1, Some(order_id)) => LedgerSource::Order(order_id),
                _ => LedgerSource::Recorded(row.get(2)),
            };
            Ok(LedgerEntry {
                key: LedgerKey {
                    at: row.get(0),
                    source,
                },
                cause,
                order_id,
                available_delta: row.get(5),
                held_delta: row.get(6),
                sold_delta: row.get(7),
                sale_change_id: row.get(8),
            })
        })
        .collect()
}
