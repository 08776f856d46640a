//! A sale as PostgreSQL's `sales` row holds it: the snapshot, the rebuild and an operator's
//! change each read one, with other columns beside it.

use crate::product_columns::product_of;
use flashsale_core::{Sale, SaleId};
use tokio_postgres::Row;

/// The columns [`sale_at`] reads, in its order: a query lists them together, as written here.
pub(crate) const SALE: &str = "id, name, starts_at, ends_at, stock, per_user_limit, cancelled_at, \
     description, price_minor, currency, image_kind, image_sha256";

/// How many columns [`SALE`] lists: a query's next column is at `first` plus this.
pub(crate) const SALE_LEN: usize = 12;

/// The sale in `row`'s columns from `first` on, listed as [`SALE`]. (The CHECKs of the table
/// keep stock and the limit positive, so the casts are exact.)
pub(crate) fn sale_at(row: &Row, first: usize) -> Sale {
    Sale {
        checkout: flashsale_core::CheckoutMode::Instant,
        id: SaleId(row.get(first)),
        name: row.get(first + 1),
        starts_at: row.get(first + 2),
        ends_at: row.get(first + 3),
        stock: row.get::<_, i32>(first + 4) as u32,
        per_user_limit: row.get::<_, i32>(first + 5) as u32,
        cancelled_at: row.get(first + 6),
        product: product_of(
            row.get(first + 7),
            row.get(first + 8),
            row.get(first + 9),
            row.get(first + 10),
            row.get(first + 11),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sale_len_counts_the_sale_columns() {
        assert_eq!(SALE.split(", ").count(), SALE_LEN);
    }
}
