//! How both stores keep a sale's product in its `sales` row: five nullable columns
//! (`description`, `price_minor`, `currency`, `image_kind`, `image_sha256`), the same names in
//! SQLite and PostgreSQL (migration 0009). The image's bytes are kept apart (embedded: a file;
//! scale-out: `sale_images`), under the sale and the digest the row names.

use flashsale_core::{ImageRef, Price, Product};
use std::sync::Arc;

/// The product columns, in the order [`ProductRow`] lists them.
pub(crate) const COLUMNS: &str = "description, price_minor, currency, image_kind, image_sha256";

/// A product as its columns hold it.
#[derive(Debug, Default)]
pub(crate) struct ProductRow {
    pub description: Option<String>,
    pub price_minor: Option<i64>,
    pub currency: Option<String>,
    pub image_kind: Option<&'static str>,
    pub image_sha256: Option<String>,
}

impl ProductRow {
    /// The columns of `product`.
    pub(crate) fn of(product: &Product) -> Self {
        Self {
            description: product.description.as_deref().map(str::to_owned),
            // At most MAX_PRICE_MINOR, far below i64::MAX.
            price_minor: product.price.map(|p| p.minor() as i64),
            currency: product.price.map(|p| p.currency().to_string()),
            image_kind: product.image.map(|i| i.kind().as_str()),
            image_sha256: product.image.map(|i| i.sha256_hex()),
        }
    }
}

/// The product of columns read back. Every value was validated before it was written; one
/// that no longer parses (a row edited by hand) is dropped rather than failing the sale.
pub(crate) fn product_of(
    description: Option<String>,
    price_minor: Option<i64>,
    currency: Option<String>,
    image_kind: Option<String>,
    image_sha256: Option<String>,
) -> Product {
    Product {
        description: description.map(Arc::from),
        price: Price::parse_pair(price_minor, currency.as_deref())
            .ok()
            .flatten(),
        image: match (image_kind, image_sha256) {
            (Some(kind), Some(hex)) => ImageRef::from_stored(&kind, &hex),
            _ => None,
        },
    }
}
