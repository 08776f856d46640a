//! Validation errors: every way an input can be refused before any decision is taken.

use thiserror::Error;

/// Why an input was refused. Each becomes HTTP 400 `invalid_request` with this message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    /// The user id is empty or only whitespace.
    #[error("user_id must not be empty or whitespace")]
    EmptyUserId,
    /// The user id is longer than [`crate::UserId::MAX_CHARS`] characters.
    #[error("user_id must be at most 254 characters")]
    UserIdTooLong,
    /// The user id contains a control character.
    #[error("user_id must not contain control characters")]
    UserIdControlChar,
    /// The quantity is below 1 or above the sale's per-user limit.
    #[error("quantity must be between 1 and {limit} (this sale's per-user limit)")]
    QuantityOutOfRange {
        /// The sale's per-user limit.
        limit: u32,
    },
    /// The sale name is empty, whitespace or too long.
    #[error("name must be 1 to 200 characters")]
    BadName,
    /// `ends_at` is not strictly after `starts_at`.
    #[error("ends_at must be strictly after starts_at (instants are kept to the microsecond)")]
    EndNotAfterStart,
    /// The stock is below 1 or above the maximum.
    #[error("stock must be between 1 and 1000000000")]
    StockOutOfRange,
    /// The per-user limit is below 1 or above the maximum.
    #[error("per_user_limit must be between 1 and 1000")]
    LimitOutOfRange,
    /// The idempotency key is empty, too long, or not visible ASCII.
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    BadIdempotencyKey,
    /// The checkout mode is neither `instant` nor `hold`.
    #[error("checkout_mode must be \"instant\" or \"hold\"")]
    UnknownCheckoutMode,
    /// A hold-mode sale without `payment_window_secs`.
    #[error("checkout_mode \"hold\" needs payment_window_secs")]
    PaymentWindowRequired,
    /// `payment_window_secs` given for an instant-mode sale, where nothing waits for payment.
    #[error("payment_window_secs is only for checkout_mode \"hold\"")]
    PaymentWindowWithoutHold,
    /// The payment window is outside 60..=86,400 seconds.
    #[error("payment_window_secs must be between 60 and 86400")]
    PaymentWindowOutOfRange,
    /// A hold-mode sale without a price: a payment could not be checked against anything.
    #[error("checkout_mode \"hold\" needs price_minor and currency")]
    PriceRequired,
    /// Only one of `price_minor` and `currency` was given.
    #[error("price_minor and currency must be given together")]
    PriceWithoutCurrency,
    /// The price is below 1 or above [`crate::money::MAX_PRICE_MINOR`].
    #[error("price_minor must be between 1 and 9007199254740 (minor units)")]
    PriceOutOfRange,
    /// The currency is not three uppercase ASCII letters.
    #[error("currency must be an ISO 4217 code: three uppercase letters A-Z, such as EUR")]
    BadCurrency,
    /// The description is too long or has control characters other than line breaks and tabs.
    #[error(
        "description must be at most 2000 characters, with no control characters but line breaks and tabs"
    )]
    BadDescription,
    /// A payment amount is negative or above [`crate::money::MAX_AMOUNT_MINOR`].
    #[error("amount_minor must be between 0 and 9007199254740991 (minor units)")]
    AmountOutOfRange,
    /// The payment reference is empty, too long, or not visible ASCII.
    #[error("payment_ref must be 1 to 255 visible ASCII characters")]
    BadPaymentRef,
}
