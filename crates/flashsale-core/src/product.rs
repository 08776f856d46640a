//! What is on sale, described for buyers (docs/requirements.md#10-operating-sales, OP-12):
//! beside the sale's name, an optional description, price and image.
//!
//! Invariants: a description is trimmed, 1 to [`MAX_DESCRIPTION_CHARS`] characters, with no
//! control characters but line breaks and tabs (an empty one is no description); the price is
//! a [`Price`] (the one of checkout, `crate::money`), given whole or not at all; the image is
//! an [`ImageRef`], so only bytes sniffed as an accepted type are ever referred to. Every part
//! is optional: a sale with none of them is a sale as it was before products were described.

use crate::error::ValidationError;
use crate::image::ImageRef;
use crate::money::Price;
use std::sync::Arc;

/// The longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 2_000;

/// A sale's product description, price and image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Product {
    /// What the buyer reads about it (plain text, never markup). Shared, not copied, by every
    /// status body that carries it.
    pub description: Option<Arc<str>>,
    /// The unit price, shown to buyers.
    pub price: Option<Price>,
    /// The image the operator uploaded.
    pub image: Option<ImageRef>,
}

impl Product {
    /// Validates the product fields of a sale as sent at creation (the image comes later, by
    /// its own upload).
    pub fn parse(
        description: Option<&str>,
        price_minor: Option<i64>,
        currency: Option<&str>,
    ) -> Result<Self, ValidationError> {
        Ok(Self {
            description: description.map(parse_description).transpose()?.flatten(),
            price: Price::parse_pair(price_minor, currency)?,
            image: None,
        })
    }
}

/// Validates a description: trimmed; empty means none.
pub fn parse_description(raw: &str) -> Result<Option<Arc<str>>, ValidationError> {
    let text = raw.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.chars().count() > MAX_DESCRIPTION_CHARS
        || text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return Err(ValidationError::BadDescription);
    }
    Ok(Some(Arc::from(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_with_nothing_is_the_default() {
        assert_eq!(
            Product::parse(None, None, None).unwrap(),
            Product::default()
        );
        assert_eq!(
            Product::parse(Some("  "), None, None).unwrap(),
            Product::default()
        );
    }

    #[test]
    fn the_description_is_trimmed_and_bounded() {
        let p = Product::parse(Some(" Two lines\nof text "), None, None).unwrap();
        assert_eq!(p.description.as_deref(), Some("Two lines\nof text"));
        let longest = "é".repeat(MAX_DESCRIPTION_CHARS);
        assert!(parse_description(&longest).unwrap().is_some());
        for bad in ["é".repeat(MAX_DESCRIPTION_CHARS + 1), "bell\u{7}".into()] {
            assert_eq!(
                parse_description(&bad),
                Err(ValidationError::BadDescription)
            );
        }
    }

    #[test]
    fn the_price_comes_whole_with_its_currency() {
        let p = Product::parse(None, Some(1999), Some("EUR")).unwrap();
        assert_eq!(p.price, Some(Price::parse(1999, "EUR").unwrap()));
        assert_eq!(
            Product::parse(None, Some(1999), None),
            Err(ValidationError::PriceWithoutCurrency)
        );
        assert_eq!(
            Product::parse(None, None, Some("EUR")),
            Err(ValidationError::PriceWithoutCurrency)
        );
        assert_eq!(
            Product::parse(None, Some(-1), Some("EUR")),
            Err(ValidationError::PriceOutOfRange)
        );
        assert_eq!(
            Product::parse(None, Some(5), Some("eur")),
            Err(ValidationError::BadCurrency)
        );
    }
}
