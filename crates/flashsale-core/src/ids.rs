//! Parsed newtypes: once a value has one of these types it is known to be valid.

use crate::error::ValidationError;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use unicode_normalization::UnicodeNormalization;

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

/// A buyer's self-reported id, normalised so that one person typing their id differently is
/// still one buyer. The rule (docs/api.md, "Buyer ids"), in order:
///
/// 1. Unicode NFC (a precomposed `é` and `e` + combining accent are the same id);
/// 2. invisible format characters (Unicode category Cf: zero-width space and joiners, the
///    byte-order mark, bidirectional marks, soft hyphen...) are removed;
/// 3. surrounding whitespace is trimmed;
/// 4. an id containing `@` is an email address and is lower-cased in full.
///
/// The result must be 1 to 254 characters with no control characters.
///
/// Cheap to clone (shared), because the stores keep it in several indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    /// The longest id accepted, in characters (an email address's maximum).
    pub const MAX_CHARS: usize = 254;

    /// Normalises and validates a raw id.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        // The bound is on the id as sent less surrounding whitespace, before normalising can
        // shorten it (removed format characters count). Byte length bounds the char count
        // from above, so most ids skip the count.
        let sent = raw.trim();
        if sent.len() > Self::MAX_CHARS && sent.chars().count() > Self::MAX_CHARS {
            return Err(ValidationError::UserIdTooLong);
        }
        // Most ids are ASCII: NFC and Cf removal leave them unchanged, so they skip both and
        // allocate once (the `Arc`), or twice for an email with capitals.
        let normalised: Cow<'_, str> = if raw.is_ascii() {
            Cow::Borrowed(raw)
        } else {
            Cow::Owned(raw.nfc().filter(|c| !is_format_char(*c)).collect())
        };
        let trimmed = normalised.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::EmptyUserId);
        }
        // NFC can also lengthen an id (a few characters decompose): bound the result too.
        if trimmed.len() > Self::MAX_CHARS && trimmed.chars().count() > Self::MAX_CHARS {
            return Err(ValidationError::UserIdTooLong);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ValidationError::UserIdControlChar);
        }
        if trimmed.contains('@') && trimmed.chars().any(|c| c.to_lowercase().ne([c])) {
            let lower = trimmed.to_lowercase();
            // Lower-casing can decompose (`İ` becomes `i` + U+0307); compose again.
            let lower: String = if lower.is_ascii() {
                lower
            } else {
                lower.nfc().collect()
            };
            if lower.chars().count() > Self::MAX_CHARS {
                return Err(ValidationError::UserIdTooLong);
            }
            return Ok(Self(Arc::from(lower)));
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
        if !is_visible_ascii(raw, Self::MAX_LEN) {
            return Err(ValidationError::BadIdempotencyKey);
        }
        Ok(Self(Arc::from(raw)))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `raw` is 1 to `max_len` visible ASCII characters (no space, no control): what an
/// opaque token from a header or another system may be.
fn is_visible_ascii(raw: &str, max_len: usize) -> bool {
    !raw.is_empty() && raw.len() <= max_len && raw.bytes().all(|b| b.is_ascii_graphic())
}

/// The payment system's reference for one payment attempt (`payment_ref` in the webhook):
/// 1 to 255 visible ASCII characters. Two events with the same reference are deliveries of the
/// same payment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PaymentRef(Arc<str>);

impl PaymentRef {
    /// The longest reference accepted, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Validates a raw reference.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if !is_visible_ascii(raw, Self::MAX_LEN) {
            return Err(ValidationError::BadPaymentRef);
        }
        Ok(Self(Arc::from(raw)))
    }

    /// The reference as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `c` is in Unicode's general category Cf (format: invisible characters that change
/// how text around them is shown). The ranges are those of Unicode 16; the category changes
/// rarely, and a new format character missing here only means two spellings of one id stay
/// distinct, as before this rule.
fn is_format_char(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_email_address_are_one_buyer() {
        // Issue 17: these were distinct buyers, so one person could buy once per spelling.
        let canonical = UserId::parse("alice@example.com").unwrap();
        for variant in [
            "Alice@example.com",
            "alice@EXAMPLE.com",
            " ALICE@Example.Com ",
            "ali\u{200B}ce@example.com",
            "\u{FEFF}alice@example.com\u{200D}",
            "alice\u{00AD}@example.com",
            "\u{202E}alice@example.com",
        ] {
            assert_eq!(UserId::parse(variant).unwrap(), canonical, "{variant:?}");
        }
    }

    #[test]
    fn ids_are_composed_to_nfc_and_plain_names_keep_their_case() {
        let composed = UserId::parse("jos\u{E9}").unwrap();
        assert_eq!(UserId::parse("jose\u{301}").unwrap(), composed);
        assert_eq!(UserId::parse("jo\u{200B}s\u{E9}").unwrap(), composed);
        // Not an email address: case is part of the id.
        assert_ne!(
            UserId::parse("Alice").unwrap(),
            UserId::parse("alice").unwrap()
        );
        // Lower-casing an email can decompose; the result is composed again.
        let dotted = UserId::parse("\u{130}@example.com").unwrap();
        assert_eq!(dotted.as_str(), "i\u{307}@example.com");
    }

    #[test]
    fn an_id_over_254_characters_as_sent_is_refused_even_if_normalising_shortens_it() {
        // Found by schemathesis: 254 characters and a soft hyphen were accepted once the
        // hyphen was removed, though the contract (and the OpenAPI maxLength) bound the id as
        // sent.
        let sent = format!("#\u{00AD}{}", "*".repeat(253));
        assert_eq!(sent.chars().count(), 255);
        assert_eq!(UserId::parse(&sent), Err(ValidationError::UserIdTooLong));
        assert!(UserId::parse(&"a".repeat(254)).is_ok());
    }

    #[test]
    fn an_id_of_only_invisible_characters_is_empty() {
        assert_eq!(
            UserId::parse("\u{200B}\u{200C} \u{FEFF}"),
            Err(ValidationError::EmptyUserId)
        );
    }

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

    #[test]
    fn payment_ref_must_be_1_to_255_visible_ascii_characters() {
        let max = "p".repeat(PaymentRef::MAX_LEN);
        assert_eq!(PaymentRef::parse(&max).unwrap().as_str(), max);
        assert_eq!(
            PaymentRef::parse("pi_3Nx-42").unwrap().as_str(),
            "pi_3Nx-42"
        );
        for bad in ["", " ", "pay ref", "caf\u{e9}", "a\nb", &"p".repeat(256)] {
            assert_eq!(
                PaymentRef::parse(bad),
                Err(ValidationError::BadPaymentRef),
                "{bad:?}"
            );
        }
    }
}
