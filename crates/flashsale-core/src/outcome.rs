//! The one vocabulary of purchase answers: every code a purchase attempt can be answered with
//! (docs/api.md), its HTTP status, and which of them the operator's counters keep.
//!
//! Everything that lists outcomes derives from [`Outcome::ALL`]: the store's counters and
//! their columns, the summary body, the metrics labels, the OpenAPI enum and the HTTP error
//! mapping. Adding an outcome means adding it here, plus the code that decides it; tests in
//! each crate fail if a derived list (or a Lua script's codes) drifts from this one.
//!
//! The status is a plain number: this crate has no HTTP dependency.

/// One answer to a purchase attempt, named by its stable wire code.
///
/// The declaration order is the order of `ALL`, of the summary's `rejections` fields and of
/// the counter columns: keep the counted outcomes in the order the summary shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// 201 `confirmed`: the order is durable.
    Confirmed,
    /// Hold mode: the order is durable and its units are held until `expires_at` (201).
    Reserved,
    /// 409 `sale_not_active`: the sale is upcoming or has ended by time.
    SaleNotActive,
    /// 409 `sold_out`: the sale was active but no stock is left.
    SoldOut,
    /// 409 `already_purchased`: the buyer holds the per-user limit.
    AlreadyPurchased,
    /// 409 `limit_exceeded`: the quantity would take the buyer over the limit.
    LimitExceeded,
    /// 409 `insufficient_stock`: fewer units are left than asked for.
    InsufficientStock,
    /// 503 `unavailable`: a dependency is down or the order could not be made durable;
    /// nothing was taken.
    Unavailable,
    /// 503 `timeout`: no answer in time; the outcome is unknown.
    Timeout,
    /// 400 `invalid_request`: malformed body, bad field or header, quantity out of range.
    InvalidRequest,
    /// 404 `sale_not_found`: no such sale.
    SaleNotFound,
    /// 422 `idempotency_key_reused`: the key was first used with another user or quantity.
    IdempotencyKeyReused,
    /// 409 `address_limit_reached`: the client address already holds its share of the sale.
    AddressLimitReached,
    /// 429 `rate_limited`: too many requests from this client or buyer.
    RateLimited,
    /// 503 `overloaded`: shed before any work.
    Overloaded,
    /// 413 `payload_too_large`: the body is over the limit.
    PayloadTooLarge,
    /// 415 `unsupported_media_type`: the body is not JSON.
    UnsupportedMediaType,
    /// 408 `body_timeout`: the body did not arrive in time.
    BodyTimeout,
    /// 401 `unauthenticated`: with `--identity jwt`, no bearer token, or one that failed.
    Unauthenticated,
    /// 403 `forbidden`: the body names another buyer than the token's.
    Forbidden,
    /// 500 `internal`: a bug.
    Internal,
}

impl Outcome {
    /// Every outcome, in declaration order (`ALL[o.index()] == o`).
    pub const ALL: [Outcome; 21] = [
        Outcome::Confirmed,
        Outcome::Reserved,
        Outcome::SaleNotActive,
        Outcome::SoldOut,
        Outcome::AlreadyPurchased,
        Outcome::LimitExceeded,
        Outcome::InsufficientStock,
        Outcome::Unavailable,
        Outcome::Timeout,
        Outcome::InvalidRequest,
        Outcome::SaleNotFound,
        Outcome::IdempotencyKeyReused,
        Outcome::AddressLimitReached,
        Outcome::RateLimited,
        Outcome::Overloaded,
        Outcome::PayloadTooLarge,
        Outcome::UnsupportedMediaType,
        Outcome::BodyTimeout,
        Outcome::Unauthenticated,
        Outcome::Forbidden,
        Outcome::Internal,
    ];

    /// How many outcomes there are: the length of an array indexed by [`Outcome::index`].
    pub const COUNT: usize = Outcome::ALL.len();

    /// The outcomes the operator's counters keep (the summary's `rejections`), in `ALL` order.
    pub const COUNTED: [Outcome; counted_len()] = counted();

    /// The stable wire code (docs/api.md).
    pub const fn code(self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::Reserved => "reserved",
            Outcome::SaleNotActive => "sale_not_active",
            Outcome::SoldOut => "sold_out",
            Outcome::AlreadyPurchased => "already_purchased",
            Outcome::LimitExceeded => "limit_exceeded",
            Outcome::InsufficientStock => "insufficient_stock",
            Outcome::Unavailable => "unavailable",
            Outcome::Timeout => "timeout",
            Outcome::InvalidRequest => "invalid_request",
            Outcome::SaleNotFound => "sale_not_found",
            Outcome::IdempotencyKeyReused => "idempotency_key_reused",
            Outcome::AddressLimitReached => "address_limit_reached",
            Outcome::RateLimited => "rate_limited",
            Outcome::Overloaded => "overloaded",
            Outcome::PayloadTooLarge => "payload_too_large",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::Internal => "internal",
        }
    }

    /// The HTTP status this outcome is answered with.
    pub const fn status(self) -> u16 {
        match self {
            Outcome::Confirmed | Outcome::Reserved => 201,
            Outcome::SaleNotActive
            | Outcome::SoldOut
            | Outcome::AlreadyPurchased
            | Outcome::LimitExceeded
            | Outcome::InsufficientStock
            | Outcome::AddressLimitReached => 409,
            Outcome::Unavailable | Outcome::Timeout | Outcome::Overloaded => 503,
            Outcome::InvalidRequest => 400,
            Outcome::SaleNotFound => 404,
            Outcome::IdempotencyKeyReused => 422,
            Outcome::RateLimited => 429,
            Outcome::PayloadTooLarge => 413,
            Outcome::UnsupportedMediaType => 415,
            Outcome::BodyTimeout => 408,
            Outcome::Unauthenticated => 401,
            Outcome::Forbidden => 403,
            Outcome::Internal => 500,
        }
    }

    /// Whether the purchase rules ([`crate::decide`]) can answer this: the outcome of some
    /// [`crate::Rejection`]. These are the codes a store's admission (`admission.lua`
    /// included) must be able to return.
    pub const fn decided(self) -> bool {
        matches!(
            self,
            Outcome::SaleNotActive
                | Outcome::SoldOut
                | Outcome::AlreadyPurchased
                | Outcome::LimitExceeded
                | Outcome::InsufficientStock
        )
    }

    /// Whether the operator's counters keep this outcome (one stored counter each): every
    /// rejection the rules decide, and `unavailable` (admitted, but the write failed).
    pub const fn counted(self) -> bool {
        self.decided() || matches!(self, Outcome::Unavailable)
    }

    /// The position in [`Outcome::ALL`], for arrays indexed by outcome.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The outcome with this wire code.
    pub fn from_code(code: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.code() == code)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

const fn counted_len() -> usize {
    let (mut n, mut i) = (0, 0);
    while i < Outcome::COUNT {
        if Outcome::ALL[i].counted() {
            n += 1;
        }
        i += 1;
    }
    n
}

const fn counted() -> [Outcome; counted_len()] {
    let mut out = [Outcome::Confirmed; counted_len()];
    let (mut n, mut i) = (0, 0);
    while i < Outcome::COUNT {
        if Outcome::ALL[i].counted() {
            out[n] = Outcome::ALL[i];
            n += 1;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Quantity, SaleId};
    use crate::purchase::{Decision, decide};
    use crate::sale::NewSale;
    use std::collections::BTreeSet;
    use time::Duration;
    use time::macros::datetime;

    #[test]
    fn all_lists_every_outcome_once_at_its_index() {
        for (i, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?} is out of place in ALL");
        }
        let codes: BTreeSet<_> = Outcome::ALL.iter().map(|o| o.code()).collect();
        assert_eq!(codes.len(), Outcome::COUNT, "two outcomes share a code");
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_code(o.code()), Some(o));
            assert!(
                o.code()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{o:?}: a code is also a column name and a metrics label"
            );
        }
    }

    #[test]
    fn the_counted_outcomes_are_the_rejections_and_unavailable_in_summary_order() {
        let codes: Vec<_> = Outcome::COUNTED.iter().map(|o| o.code()).collect();
        assert_eq!(
            codes,
            [
                "sale_not_active",
                "sold_out",
                "already_purchased",
                "limit_exceeded",
                "insufficient_stock",
                "unavailable"
            ]
        );
    }

    #[test]
    fn statuses_are_those_of_the_contract() {
        for o in Outcome::ALL {
            let status = o.status();
            assert!((200..600).contains(&status));
            assert_eq!(
                status == 201,
                matches!(o, Outcome::Confirmed | Outcome::Reserved)
            );
            if o.decided() {
                assert_eq!(status, 409, "{o:?}");
            }
        }
    }

    /// `decided` is checked against `decide` itself: every outcome it names is reached by some
    /// input, and no rejection has an outcome it does not name.
    #[test]
    fn decided_outcomes_are_exactly_those_decide_can_give() {
        let start = datetime!(2026-11-22 12:00 UTC);
        let end = datetime!(2026-11-22 12:10 UTC);
        let sale = NewSale::parse("Widget", start, end, 10, 3)
            .unwrap()
            .with_id(SaleId(1));
        let mut reached = BTreeSet::new();
        for now in [start - Duration::seconds(1), start, end] {
            for remaining in 0..=3 {
                for held in 0..=3 {
                    for q in 1..=3 {
                        let quantity = Quantity::parse(q, 3).unwrap();
                        if let Decision::Reject(r) = decide(&sale, now, remaining, held, quantity) {
                            reached.insert(r.outcome());
                        }
                    }
                }
            }
        }
        let decided: BTreeSet<_> = Outcome::ALL.into_iter().filter(|o| o.decided()).collect();
        assert_eq!(reached, decided);
    }
}
