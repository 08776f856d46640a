//! A sale as PostgreSQL's `sales` row holds it: the snapshot, the rebuild and an operator's
//! change each read one, with other columns beside it.

use crate::product_columns::product_of;
use flashsale_core::{CheckoutMode, PaymentWindow, Sale, SaleId};
use tokio_postgres::Row;

/// The columns [`sale_at`] reads, in its order: a query lists them together, as written here.
pub(crate) const SALE: &str = "id, name, starts_at, ends_at, stock, per_user_limit, cancelled_at, \
     description, price_minor, currency, image_kind, image_sha256, payment_window_secs";

/// How many columns [`SALE`] lists: a query's next column is at `first` plus this.
pub(crate) const SALE_LEN: usize = 13;

/// The sale in `row`'s columns from `first` on, listed as [`SALE`]. (The CHECKs of the table
/// keep stock and the limit positive, so the casts are exact.)
pub(crate) fn sale_at(row: &Row, first: usize) -> Sale {
    Sale {
        checkout: checkout_of(row.get(first + 12)),
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

/// The checkout mode stored as `payment_window_secs` (NULL: instant). Only a validated
/// window is ever written, so the parse cannot fail on a row this store wrote.
pub(crate) fn checkout_of(payment_window_secs: Option<i32>) -> CheckoutMode {
    match payment_window_secs.map(|secs| PaymentWindow::parse(i64::from(secs))) {
        Some(Ok(payment_window)) => CheckoutMode::Hold { payment_window },
        _ => CheckoutMode::Instant,
    }
}

/// The `payment_window_secs` column of a sale in `checkout` mode.
pub(crate) fn payment_window_secs(checkout: CheckoutMode) -> Option<i32> {
    checkout
        .payment_window()
        .map(|w| i32::try_from(w.secs()).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sale_len_counts_the_sale_columns() {
        assert_eq!(SALE.split(", ").count(), SALE_LEN);
    }

    #[test]
    fn a_checkout_mode_reads_back_as_it_was_written() {
        let hold = CheckoutMode::Hold {
            payment_window: PaymentWindow::parse(600).unwrap(),
        };
        for mode in [CheckoutMode::Instant, hold] {
            assert_eq!(checkout_of(payment_window_secs(mode)), mode);
        }
    }
}
