//! Parsed newtypes: once a value has one of these types it is known to be valid.

use crate::error::ValidationError;
use std::fmt;
use std::sync::Arc;

/// A sale's identifier, assigned by the store (positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct SaleId(pub i64);

impl SaleId {
    /// Parses a path segment; anything but a positive integer is `None` (no such sale).
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        raw.parse::<i64>().ok().filter(|id| *id > 0).map(SaleId)
    }
}

impl fmt::Display for SaleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A buyer's self-reported id: trimmed, 1 to 254 characters, no control characters.
///
/// Cheap to clone (shared), because the stores keep it in several indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    /// The longest id accepted, in characters (an email address's maximum).
    pub const MAX_CHARS: usize = 254;

    /// Trims and validates a raw id.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::EmptyUserId);
        }
        // Byte length bounds the char count from above, so most ids skip the count.
        if trimmed.len() > Self::MAX_CHARS && trimmed.chars().count() > Self::MAX_CHARS {
            return Err(ValidationError::UserIdTooLong);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ValidationError::UserIdControlChar);
        }
        Ok(Self(Arc::from(trimmed)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A number of units asked for in one attempt: at least 1, at most the sale's per-user limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    /// One unit, the default.
    pub const ONE: Quantity = Quantity(1);

    /// Validates a requested quantity against the sale's per-user limit.
    pub fn parse(raw: i64, per_user_limit: u32) -> Result<Self, ValidationError> {
        if raw < 1 || raw > i64::from(per_user_limit) {
            return Err(ValidationError::QuantityOutOfRange {
                limit: per_user_limit,
            });
        }
        Ok(Self(raw as u32))
    }

    /// A quantity already validated elsewhere (read back from a store).
    pub fn from_stored(units: u32) -> Self {
        Self(units.max(1))
    }

    /// The number of units.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// The client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// The longest key accepted, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Validates a raw header value.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let ok = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(ValidationError::BadIdempotencyKey);
        }
        Ok(Self(Arc::from(raw)))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_is_trimmed() {
        assert_eq!(
            UserId::parse("  alice@example.com\t").unwrap().as_str(),
            "alice@example.com"
        );
    }

    #[test]
    fn empty_and_whitespace_user_ids_are_refused() {
        for raw in ["", " ", "\t\n ", "\u{3000}"] {
            assert_eq!(
                UserId::parse(raw),
                Err(ValidationError::EmptyUserId),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn user_id_of_254_chars_is_accepted_and_255_refused() {
        let ok = "é".repeat(254);
        assert_eq!(UserId::parse(&ok).unwrap().as_str().chars().count(), 254);
        let long = "é".repeat(255);
        assert_eq!(UserId::parse(&long), Err(ValidationError::UserIdTooLong));
        // Surrounding whitespace does not count towards the limit.
        assert!(UserId::parse(&format!("  {}  ", "a".repeat(254))).is_ok());
    }

    #[test]
    fn user_id_with_control_characters_is_refused() {
        assert_eq!(
            UserId::parse("al\u{0}ice"),
            Err(ValidationError::UserIdControlChar)
        );
        assert_eq!(
            UserId::parse("a\nb"),
            Err(ValidationError::UserIdControlChar)
        );
    }

    #[test]
    fn quantity_must_be_within_one_and_the_limit() {
        assert_eq!(Quantity::parse(1, 1).unwrap().get(), 1);
        assert_eq!(Quantity::parse(3, 3).unwrap().get(), 3);
        for bad in [0, -1, 4, i64::MAX] {
            assert_eq!(
                Quantity::parse(bad, 3),
                Err(ValidationError::QuantityOutOfRange { limit: 3 })
            );
        }
    }

    #[test]
    fn sale_id_accepts_only_positive_integers() {
        assert_eq!(SaleId::parse("42"), Some(SaleId(42)));
        for bad in [
            "",
            "0",
            "-1",
            "abc",
            "1.5",
            "99999999999999999999",
            " 1",
            "+1",
        ] {
            assert_eq!(SaleId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn idempotency_key_must_be_visible_ascii() {
        assert!(IdempotencyKey::parse("abc-123_XYZ").is_ok());
        for bad in ["", "has space", "tab\t", "é", &"k".repeat(256)] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(ValidationError::BadIdempotencyKey)
            );
        }
    }
}
