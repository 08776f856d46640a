//! How a sale's units are paid for (docs/requirements.md#9-checkout, CO-1, CO-2): the checkout
//! mode, fixed when the sale is created, and the price.
//!
//! Invariants: a hold-mode sale always has a [`PaymentWindow`] of 60..=86,400 seconds and a
//! [`Price`]; an instant-mode sale has no window and may have a price (shown, never charged
//! here). [`Checkout::parse`] is the only way to build one, so a store never holds a hold-mode
//! sale a payment could not be checked against.

use crate::error::ValidationError;
use crate::money::Price;
use time::{Duration, OffsetDateTime};

/// How long a reservation waits for its payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PaymentWindow(u32);

impl PaymentWindow {
    /// The shortest window, in seconds: time to type a card number.
    pub const MIN_SECS: u32 = 60;
    /// The longest window, in seconds (a day): units held longer are a stock nobody can buy.
    pub const MAX_SECS: u32 = 86_400;

    /// Validates `payment_window_secs` as sent.
    pub fn parse(secs: i64) -> Result<Self, ValidationError> {
        if secs < i64::from(Self::MIN_SECS) || secs > i64::from(Self::MAX_SECS) {
            return Err(ValidationError::PaymentWindowOutOfRange);
        }
        Ok(Self(secs as u32))
    }

    /// The window in seconds.
    pub fn secs(self) -> u32 {
        self.0
    }

    /// The window as a duration.
    pub fn duration(self) -> Duration {
        Duration::seconds(i64::from(self.0))
    }

    /// When a reservation decided at `reserved_at` expires: the first instant at which it is
    /// no longer payable (the same half-open rule as a sale's end).
    pub fn expires_at(self, reserved_at: OffsetDateTime) -> OffsetDateTime {
        reserved_at + self.duration()
    }
}

/// The checkout mode of a sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckoutMode {
    /// A purchase is final when confirmed (sections 2-4 of the spec; the default).
    Instant,
    /// A purchase reserves units that must be paid for within the window.
    Hold {
        /// How long each reservation waits for its payment.
        payment_window: PaymentWindow,
    },
}

impl CheckoutMode {
    /// The wire names of the modes, for the OpenAPI enum.
    pub const NAMES: [&'static str; 2] = ["instant", "hold"];

    /// Validates `checkout_mode` (absent means `instant`) and `payment_window_secs`.
    pub fn parse(
        mode: Option<&str>,
        payment_window_secs: Option<i64>,
    ) -> Result<Self, ValidationError> {
        match (mode.unwrap_or("instant"), payment_window_secs) {
            ("instant", None) => Ok(CheckoutMode::Instant),
            ("instant", Some(_)) => Err(ValidationError::PaymentWindowWithoutHold),
            ("hold", Some(secs)) => Ok(CheckoutMode::Hold {
                payment_window: PaymentWindow::parse(secs)?,
            }),
            ("hold", None) => Err(ValidationError::PaymentWindowRequired),
            _ => Err(ValidationError::UnknownCheckoutMode),
        }
    }

    /// The wire name (`instant` or `hold`).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckoutMode::Instant => "instant",
            CheckoutMode::Hold { .. } => "hold",
        }
    }

    /// The payment window, for a hold-mode sale.
    pub fn payment_window(self) -> Option<PaymentWindow> {
        match self {
            CheckoutMode::Instant => None,
            CheckoutMode::Hold { payment_window } => Some(payment_window),
        }
    }
}

/// A sale's checkout terms: its mode and price, checked together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Checkout {
    mode: CheckoutMode,
    price: Option<Price>,
}

impl Checkout {
    /// An instant-mode sale without a price: every sale created before checkout existed.
    pub const INSTANT: Checkout = Checkout {
        mode: CheckoutMode::Instant,
        price: None,
    };

    /// Validates the checkout fields of a sale as sent: the mode and window
    /// ([`CheckoutMode::parse`]), then the price, which must be given whole (both fields or
    /// neither) and is required in hold mode.
    pub fn parse(
        mode: Option<&str>,
        payment_window_secs: Option<i64>,
        price_minor: Option<i64>,
        currency: Option<&str>,
    ) -> Result<Self, ValidationError> {
        let mode = CheckoutMode::parse(mode, payment_window_secs)?;
        Self::new(mode, Price::parse_pair(price_minor, currency)?)
    }

    /// Terms from parsed parts (a store reading a sale back): a hold needs a price.
    pub fn new(mode: CheckoutMode, price: Option<Price>) -> Result<Self, ValidationError> {
        if matches!(mode, CheckoutMode::Hold { .. }) && price.is_none() {
            return Err(ValidationError::PriceRequired);
        }
        Ok(Self { mode, price })
    }

    /// The mode.
    pub fn mode(&self) -> CheckoutMode {
        self.mode
    }

    /// The unit price, if the sale has one (always, in hold mode).
    pub fn price(&self) -> Option<Price> {
        self.price
    }

    /// The hold-mode terms, if this is a hold-mode sale: what a reservation needs.
    pub fn hold(&self) -> Option<(PaymentWindow, Price)> {
        match (self.mode, self.price) {
            (CheckoutMode::Hold { payment_window }, Some(price)) => Some((payment_window, price)),
            _ => None,
        }
    }
}

impl Default for Checkout {
    fn default() -> Self {
        Self::INSTANT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn co1_absent_mode_is_instant_without_a_window() {
        assert_eq!(CheckoutMode::parse(None, None), Ok(CheckoutMode::Instant));
        assert_eq!(
            CheckoutMode::parse(Some("instant"), None),
            Ok(CheckoutMode::Instant)
        );
        assert_eq!(
            Checkout::parse(None, None, None, None),
            Ok(Checkout::INSTANT)
        );
        assert_eq!(Checkout::default(), Checkout::INSTANT);
    }

    #[test]
    fn co1_payment_window_is_accepted_exactly_from_60_to_86400_seconds() {
        for secs in [60, 61, 900, 86_399, 86_400] {
            let mode = CheckoutMode::parse(Some("hold"), Some(secs)).unwrap();
            assert_eq!(mode.payment_window().unwrap().secs() as i64, secs);
            assert_eq!(mode.as_str(), "hold");
        }
        for secs in [i64::MIN, -60, 0, 59, 86_401, i64::MAX] {
            assert_eq!(
                CheckoutMode::parse(Some("hold"), Some(secs)),
                Err(ValidationError::PaymentWindowOutOfRange),
                "{secs}"
            );
        }
    }

    #[test]
    fn co1_each_wrong_mode_field_has_its_own_error() {
        assert_eq!(
            CheckoutMode::parse(Some("hold"), None),
            Err(ValidationError::PaymentWindowRequired)
        );
        assert_eq!(
            CheckoutMode::parse(Some("instant"), Some(600)),
            Err(ValidationError::PaymentWindowWithoutHold)
        );
        assert_eq!(
            CheckoutMode::parse(None, Some(600)),
            Err(ValidationError::PaymentWindowWithoutHold)
        );
        for bad in ["", "HOLD", "Instant", " hold", "reserve"] {
            assert_eq!(
                CheckoutMode::parse(Some(bad), Some(600)),
                Err(ValidationError::UnknownCheckoutMode),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn co1_the_mode_names_are_the_wire_names() {
        let hold = CheckoutMode::parse(Some("hold"), Some(60)).unwrap();
        assert_eq!(
            [CheckoutMode::Instant.as_str(), hold.as_str()],
            CheckoutMode::NAMES
        );
    }

    #[test]
    fn co1_a_reservation_expires_one_window_after_it_was_decided() {
        let window = PaymentWindow::parse(600).unwrap();
        assert_eq!(
            window.expires_at(datetime!(2026-11-30 12:00:00.5 UTC)),
            datetime!(2026-11-30 12:10:00.5 UTC)
        );
    }

    #[test]
    fn co2_a_hold_mode_sale_needs_a_price() {
        assert_eq!(
            Checkout::parse(Some("hold"), Some(600), None, None),
            Err(ValidationError::PriceRequired)
        );
        let terms = Checkout::parse(Some("hold"), Some(600), Some(1999), Some("EUR")).unwrap();
        let (window, price) = terms.hold().unwrap();
        assert_eq!(window.secs(), 600);
        assert_eq!((price.minor(), price.currency().as_str()), (1999, "EUR"));
    }

    #[test]
    fn co2_an_instant_mode_sale_may_show_a_price_but_has_no_hold() {
        let terms = Checkout::parse(None, None, Some(500), Some("JPY")).unwrap();
        assert_eq!(terms.mode(), CheckoutMode::Instant);
        assert_eq!(terms.price().unwrap().minor(), 500);
        assert_eq!(terms.hold(), None);
    }

    #[test]
    fn co2_half_a_price_or_a_bad_price_is_refused() {
        assert_eq!(
            Checkout::parse(Some("hold"), Some(600), Some(100), None),
            Err(ValidationError::PriceWithoutCurrency)
        );
        assert_eq!(
            Checkout::parse(None, None, None, Some("EUR")),
            Err(ValidationError::PriceWithoutCurrency)
        );
        assert_eq!(
            Checkout::parse(Some("hold"), Some(600), Some(0), Some("EUR")),
            Err(ValidationError::PriceOutOfRange)
        );
        assert_eq!(
            Checkout::parse(Some("hold"), Some(600), Some(100), Some("euro")),
            Err(ValidationError::BadCurrency)
        );
        // The mode is checked first: a bad mode is named even when the price is bad too.
        assert_eq!(
            Checkout::parse(Some("hold"), Some(5), Some(0), Some("euro")),
            Err(ValidationError::PaymentWindowOutOfRange)
        );
    }

    #[test]
    fn co2_parts_read_back_without_a_price_cannot_make_a_hold() {
        let hold = CheckoutMode::parse(Some("hold"), Some(60)).unwrap();
        assert_eq!(
            Checkout::new(hold, None),
            Err(ValidationError::PriceRequired)
        );
        assert_eq!(
            Checkout::new(CheckoutMode::Instant, None),
            Ok(Checkout::INSTANT)
        );
    }
}
