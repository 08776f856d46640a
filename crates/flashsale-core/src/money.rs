//! Prices and amounts (docs/requirements.md#9-checkout, CO-2): whole minor units of one ISO 4217
//! currency, compared exactly, never converted and never held as floating point.
//!
//! Invariants: a [`Currency`] is three uppercase ASCII letters; a [`Price`] is 1 to
//! [`MAX_PRICE_MINOR`]; a [`Money`] amount is 0 to [`MAX_AMOUNT_MINOR`], so any order's total
//! (price times at most [`MAX_PER_USER_LIMIT`] units) is exact in an `i64` column, a `u64`, and
//! a JSON number a browser reads without rounding.
//!
//! The currency is checked for its shape, not against a list: ISO 4217 gains and retires codes
//! (VED in 2021, SLE in 2022, XCG in 2025), a list in the binary would refuse a shop's new
//! currency until we ship again, and the shop's payment provider is the authority on what it
//! can charge. A payment must name the same code as the sale, byte for byte, so a wrongly typed
//! code cannot be paid in another currency. Codes are not normalised: `eur` is refused, not
//! read as `EUR`, so a webhook's currency is compared as it was signed.

use crate::error::ValidationError;
use crate::sale::MAX_PER_USER_LIMIT;
use std::fmt;

/// The largest amount, in minor units: 2^53 - 1, the largest integer a JSON reader using
/// doubles (every browser) reads exactly.
pub const MAX_AMOUNT_MINOR: u64 = (1 << 53) - 1;

/// The largest unit price, in minor units: small enough that the per-user limit's worth of
/// units still totals at most [`MAX_AMOUNT_MINOR`] (about 90 billion of a two-decimal currency).
pub const MAX_PRICE_MINOR: u64 = MAX_AMOUNT_MINOR / MAX_PER_USER_LIMIT as u64;

const _: () = assert!(MAX_PRICE_MINOR * MAX_PER_USER_LIMIT as u64 <= MAX_AMOUNT_MINOR);
const _: () = assert!(MAX_AMOUNT_MINOR <= i64::MAX as u64);

/// An ISO 4217 alphabetic currency code, such as `EUR` or `JPY`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Validates a code: exactly three uppercase ASCII letters.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(ValidationError::BadCurrency),
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Three ASCII letters by construction, so always UTF-8; the fallback is unreachable.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money: what an order costs, or what a payment says it paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    minor: u64,
    currency: Currency,
}

impl Money {
    /// Validates a payment's `amount_minor` and `currency` as sent (0..=[`MAX_AMOUNT_MINOR`]).
    pub fn parse(amount_minor: i64, currency: &str) -> Result<Self, ValidationError> {
        let currency = Currency::parse(currency)?;
        let minor = u64::try_from(amount_minor)
            .ok()
            .filter(|m| *m <= MAX_AMOUNT_MINOR)
            .ok_or(ValidationError::AmountOutOfRange)?;
        Ok(Self { minor, currency })
    }

    /// The amount in minor units (cents for EUR, yen for JPY).
    pub fn minor(&self) -> u64 {
        self.minor
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (minor units)", self.minor, self.currency)
    }
}

/// The price of one unit. Zero is refused: a hold exists to wait for a payment, and payment
/// providers refuse to charge nothing; a free giveaway is an instant-mode sale without a price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Price {
    unit: Money,
}

impl Price {
    /// Validates `price_minor` (1..=[`MAX_PRICE_MINOR`]) and `currency` as sent.
    pub fn parse(price_minor: i64, currency: &str) -> Result<Self, ValidationError> {
        let currency = Currency::parse(currency)?;
        let minor = u64::try_from(price_minor)
            .ok()
            .filter(|m| (1..=MAX_PRICE_MINOR).contains(m))
            .ok_or(ValidationError::PriceOutOfRange)?;
        Ok(Self {
            unit: Money { minor, currency },
        })
    }

    /// Validates an optional price as sent: both fields or neither (`None`).
    pub fn parse_pair(
        price_minor: Option<i64>,
        currency: Option<&str>,
    ) -> Result<Option<Self>, ValidationError> {
        match (price_minor, currency) {
            (Some(minor), Some(currency)) => Self::parse(minor, currency).map(Some),
            (None, None) => Ok(None),
            _ => Err(ValidationError::PriceWithoutCurrency),
        }
    }

    /// The unit price in minor units.
    pub fn minor(&self) -> u64 {
        self.unit.minor
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.unit.currency
    }

    /// What `units` units cost. `None` only above [`MAX_AMOUNT_MINOR`], which no quantity
    /// within [`MAX_PER_USER_LIMIT`] reaches.
    pub fn total(&self, units: u32) -> Option<Money> {
        let minor = self
            .unit
            .minor
            .checked_mul(u64::from(units))
            .filter(|m| *m <= MAX_AMOUNT_MINOR)?;
        Some(Money {
            minor,
            currency: self.unit.currency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn currency_accepts_three_uppercase_letters_and_keeps_them() {
        for code in ["EUR", "JPY", "XCG", "AAA"] {
            assert_eq!(Currency::parse(code).unwrap().as_str(), code);
        }
        assert_eq!(Currency::parse("EUR").unwrap().to_string(), "EUR");
    }

    #[test]
    fn currency_refuses_every_other_shape() {
        for bad in [
            "", "E", "EU", "EURO", "eur", "Eur", "EU1", "E R", " EUR", "EUR ", "ÉUR", "€", "US$",
        ] {
            assert_eq!(
                Currency::parse(bad),
                Err(ValidationError::BadCurrency),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn price_is_between_one_and_the_maximum_minor_units() {
        assert_eq!(Price::parse(1, "EUR").unwrap().minor(), 1);
        let max = i64::try_from(MAX_PRICE_MINOR).unwrap();
        assert_eq!(Price::parse(max, "EUR").unwrap().minor(), MAX_PRICE_MINOR);
        for bad in [0, -1, max + 1, i64::MIN, i64::MAX] {
            assert_eq!(
                Price::parse(bad, "EUR"),
                Err(ValidationError::PriceOutOfRange),
                "{bad}"
            );
        }
        assert_eq!(Price::parse(100, "eur"), Err(ValidationError::BadCurrency));
    }

    #[test]
    fn the_largest_order_of_the_largest_price_is_exact_in_json() {
        let price = Price::parse(i64::try_from(MAX_PRICE_MINOR).unwrap(), "EUR").unwrap();
        let total = price.total(MAX_PER_USER_LIMIT).unwrap();
        assert!(total.minor() <= MAX_AMOUNT_MINOR);
        // A double holds it exactly: what a browser reads is what we stored.
        assert_eq!(total.minor() as f64 as u64, total.minor());
        assert_eq!(price.total(u32::MAX), None);
    }

    #[test]
    fn amount_is_between_zero_and_the_maximum_minor_units() {
        assert_eq!(Money::parse(0, "JPY").unwrap().minor(), 0);
        let max = i64::try_from(MAX_AMOUNT_MINOR).unwrap();
        assert_eq!(Money::parse(max, "JPY").unwrap().minor(), MAX_AMOUNT_MINOR);
        for bad in [-1, max + 1, i64::MIN, i64::MAX] {
            assert_eq!(
                Money::parse(bad, "JPY"),
                Err(ValidationError::AmountOutOfRange)
            );
        }
        assert_eq!(Money::parse(5, "JP"), Err(ValidationError::BadCurrency));
    }

    #[test]
    fn amounts_are_equal_only_in_the_same_currency() {
        assert_eq!(Money::parse(500, "EUR"), Money::parse(500, "EUR"));
        assert_ne!(Money::parse(500, "EUR"), Money::parse(500, "USD"));
        assert_ne!(Money::parse(500, "EUR"), Money::parse(501, "EUR"));
    }

    proptest! {
        /// The total is the exact product, in the price's currency, for every quantity a sale
        /// can allow.
        #[test]
        fn total_is_price_times_units(minor in 1..=MAX_PRICE_MINOR, units in 1..=MAX_PER_USER_LIMIT) {
            let price = Price::parse(i64::try_from(minor).unwrap(), "SEK").unwrap();
            let total = price.total(units).unwrap();
            prop_assert_eq!(u128::from(total.minor()), u128::from(minor) * u128::from(units));
            prop_assert_eq!(total.currency(), price.currency());
        }
    }
}
