//! A sale as PostgreSQL's `sales` row holds it: the snapshot, the rebuild and an operator's
//! change each read one, with other columns beside it.

use flashsale_core::{Sale, SaleId};
use tokio_postgres::Row;

/// The columns [`sale_at`] reads, in its order: a query lists them together, as written here.
pub(crate) const SALE: &str = "id, name, starts_at, ends_at, stock, per_user_limit, cancelled_at";

/// The sale in `row`'s columns from `first` on, listed as [`SALE`]. (The CHECKs of the table
/// keep stock and the limit positive, so the casts are exact.)
pub(crate) fn sale_at(row: &Row, first: usize) -> Sale {
    Sale {
        id: SaleId(row.get(first)),
        name: row.get(first + 1),
        starts_at: row.get(first + 2),
        ends_at: row.get(first + 3),
        stock: row.get::<_, i32>(first + 4) as u32,
        per_user_limit: row.get::<_, i32>(first + 5) as u32,
        cancelled_at: row.get(first + 6),
    }
}
