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
}
