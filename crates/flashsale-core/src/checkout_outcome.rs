//! The one vocabulary of checkout answers (docs/requirements.md#9-checkout): every code an
//! order transition, a waitlist request or a payment webhook's signature check can be answered
//! with, and its HTTP status.
//!
//! Each domain result names its answer through `outcome()` ([`crate::order::Transition`],
//! [`crate::order::TransitionError`], [`crate::waitlist::WaitlistRefusal`],
//! [`crate::payment_signature::SignatureRejection`]); the HTTP mapping, the OpenAPI enums and
//! the counters derive from [`CheckoutOutcome::ALL`]. Where a checkout answer means what a
//! purchase answer already means (`sold_out`, `already_purchased`, `sale_not_active`) it keeps
//! that code, and a test checks that the two enums agree on its status.
//!
//! The status is a plain number: this crate has no HTTP dependency.

/// One answer of the checkout flow, named by its stable wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckoutOutcome {
    /// 201 `paid`: the reservation is paid (also the answer to a redelivery of that payment).
    Paid,
    /// 200 `payment_failed`: the payment failed; the reservation stays, payable until it expires.
    PaymentFailed,
    /// 200 `cancelled`: the buyer released their reservation.
    Cancelled,
    /// 200 `expired`: the reservation reached `expires_at` unpaid (the expiry timer's answer).
    Expired,
    /// 409 `reservation_expired`: the reservation expired before this event was decided.
    ReservationExpired,
    /// 409 `order_cancelled`: the reservation was cancelled before this event was decided.
    OrderCancelled,
    /// 409 `order_paid`: the order is paid; it cannot be cancelled, expire or be paid again.
    OrderPaid,
    /// 409 `amount_mismatch`: the payment's amount or currency is not the order's total.
    AmountMismatch,
    /// 409 `order_confirmed`: an instant-mode order, final at purchase; nothing to pay or cancel.
    OrderConfirmed,
    /// 404 `order_not_found`: no such order, or (with identity) another buyer's.
    OrderNotFound,
    /// 409 `reservation_live`: expiry asked for before `expires_at` (a timer firing early).
    ReservationLive,
    /// 201 `waitlisted`: the buyer joined the waitlist; the body carries their position.
    Waitlisted,
    /// 409 `units_available`: units can be reserved now; the waitlist is for when none can.
    UnitsAvailable,
    /// 409 `already_waitlisted`: the buyer is on this sale's waitlist already.
    AlreadyWaitlisted,
    /// 409 `already_purchased`: the buyer's reserved and paid units reach the per-user limit.
    AlreadyPurchased,
    /// 409 `sold_out`: every unit is sold; nothing can free up for the waitlist.
    SoldOut,
    /// 409 `sale_not_active`: the sale has not started (there is nothing to wait for yet).
    SaleNotActive,
    /// 409 `waitlist_closed`: the sale has reached `ends_at`; the waitlist offers nothing more.
    WaitlistClosed,
    /// 404 `not_waitlisted`: the buyer is not on this sale's waitlist.
    NotWaitlisted,
    /// 200 `left_waitlist`: the buyer is off the waitlist; everyone behind moved up one place.
    LeftWaitlist,
    /// 401 `signature_missing`: the webhook has no `Flashsale-Signature` header.
    SignatureMissing,
    /// 401 `signature_malformed`: the header is not `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`.
    SignatureMalformed,
    /// 401 `signature_stale`: the signed time is more than 5 minutes from the server's clock.
    SignatureStale,
    /// 401 `signature_mismatch`: no `v1` is the HMAC of this body with the configured secret.
    SignatureMismatch,
}

impl CheckoutOutcome {
    /// Every checkout outcome, in declaration order (`ALL[o.index()] == o`).
    pub const ALL: [CheckoutOutcome; 24] = [
        CheckoutOutcome::Paid,
        CheckoutOutcome::PaymentFailed,
        CheckoutOutcome::Cancelled,
        CheckoutOutcome::Expired,
        CheckoutOutcome::ReservationExpired,
        CheckoutOutcome::OrderCancelled,
        CheckoutOutcome::OrderPaid,
        CheckoutOutcome::AmountMismatch,
        CheckoutOutcome::OrderConfirmed,
        CheckoutOutcome::OrderNotFound,
        CheckoutOutcome::ReservationLive,
        CheckoutOutcome::Waitlisted,
        CheckoutOutcome::UnitsAvailable,
        CheckoutOutcome::AlreadyWaitlisted,
        CheckoutOutcome::AlreadyPurchased,
        CheckoutOutcome::SoldOut,
        CheckoutOutcome::SaleNotActive,
        CheckoutOutcome::WaitlistClosed,
        CheckoutOutcome::NotWaitlisted,
        CheckoutOutcome::LeftWaitlist,
        CheckoutOutcome::SignatureMissing,
        CheckoutOutcome::SignatureMalformed,
        CheckoutOutcome::SignatureStale,
        CheckoutOutcome::SignatureMismatch,
    ];

    /// The stable wire code.
    pub const fn code(self) -> &'static str {
        match self {
            CheckoutOutcome::Paid => "paid",
            CheckoutOutcome::PaymentFailed => "payment_failed",
            CheckoutOutcome::Cancelled => "cancelled",
            CheckoutOutcome::Expired => "expired",
            CheckoutOutcome::ReservationExpired => "reservation_expired",
            CheckoutOutcome::OrderCancelled => "order_cancelled",
            CheckoutOutcome::OrderPaid => "order_paid",
            CheckoutOutcome::AmountMismatch => "amount_mismatch",
            CheckoutOutcome::OrderConfirmed => "order_confirmed",
            CheckoutOutcome::OrderNotFound => "order_not_found",
            CheckoutOutcome::ReservationLive => "reservation_live",
            CheckoutOutcome::Waitlisted => "waitlisted",
            CheckoutOutcome::UnitsAvailable => "units_available",
            CheckoutOutcome::AlreadyWaitlisted => "already_waitlisted",
            CheckoutOutcome::AlreadyPurchased => "already_purchased",
            CheckoutOutcome::SoldOut => "sold_out",
            CheckoutOutcome::SaleNotActive => "sale_not_active",
            CheckoutOutcome::WaitlistClosed => "waitlist_closed",
            CheckoutOutcome::NotWaitlisted => "not_waitlisted",
            CheckoutOutcome::LeftWaitlist => "left_waitlist",
            CheckoutOutcome::SignatureMissing => "signature_missing",
            CheckoutOutcome::SignatureMalformed => "signature_malformed",
            CheckoutOutcome::SignatureStale => "signature_stale",
            CheckoutOutcome::SignatureMismatch => "signature_mismatch",
        }
    }

    /// The HTTP status this outcome is answered with.
    pub const fn status(self) -> u16 {
        match self {
            CheckoutOutcome::Paid | CheckoutOutcome::Waitlisted => 201,
            CheckoutOutcome::PaymentFailed
            | CheckoutOutcome::Cancelled
            | CheckoutOutcome::Expired
            | CheckoutOutcome::LeftWaitlist => 200,
            CheckoutOutcome::ReservationExpired
            | CheckoutOutcome::OrderCancelled
            | CheckoutOutcome::OrderPaid
            | CheckoutOutcome::AmountMismatch
            | CheckoutOutcome::OrderConfirmed
            | CheckoutOutcome::ReservationLive
            | CheckoutOutcome::UnitsAvailable
            | CheckoutOutcome::AlreadyWaitlisted
            | CheckoutOutcome::AlreadyPurchased
            | CheckoutOutcome::SoldOut
            | CheckoutOutcome::SaleNotActive
            | CheckoutOutcome::WaitlistClosed => 409,
            CheckoutOutcome::OrderNotFound | CheckoutOutcome::NotWaitlisted => 404,
            CheckoutOutcome::SignatureMissing
            | CheckoutOutcome::SignatureMalformed
            | CheckoutOutcome::SignatureStale
            | CheckoutOutcome::SignatureMismatch => 401,
        }
    }

    /// The position in [`CheckoutOutcome::ALL`], for arrays indexed by outcome.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The outcome with this wire code.
    pub fn from_code(code: &str) -> Option<CheckoutOutcome> {
        CheckoutOutcome::ALL.into_iter().find(|o| o.code() == code)
    }
}

impl std::fmt::Display for CheckoutOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;
    use std::collections::BTreeSet;

    #[test]
    fn all_lists_every_checkout_outcome_once_at_its_index() {
        for (i, o) in CheckoutOutcome::ALL.into_iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?} is out of place in ALL");
            assert_eq!(CheckoutOutcome::from_code(o.code()), Some(o));
            assert!(
                o.code()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{o:?}: a code is also a column name and a metrics label"
            );
        }
        let codes: BTreeSet<_> = CheckoutOutcome::ALL.iter().map(|o| o.code()).collect();
        assert_eq!(codes.len(), CheckoutOutcome::ALL.len(), "two share a code");
        assert_eq!(CheckoutOutcome::from_code("confirmed"), None);
    }

    /// A code both vocabularies use means the same answer in both.
    #[test]
    fn codes_shared_with_purchase_outcomes_have_the_same_status() {
        let mut shared = Vec::new();
        for o in CheckoutOutcome::ALL {
            if let Some(purchase) = Outcome::from_code(o.code()) {
                assert_eq!(o.status(), purchase.status(), "{o:?}");
                shared.push(o.code());
            }
        }
        assert_eq!(shared, ["already_purchased", "sold_out", "sale_not_active"]);
    }

    #[test]
    fn statuses_are_those_of_the_contract() {
        for o in CheckoutOutcome::ALL {
            let expected = match o.code() {
                "paid" | "waitlisted" => 201,
                "payment_failed" | "cancelled" | "expired" | "left_waitlist" => 200,
                "order_not_found" | "not_waitlisted" => 404,
                code if code.starts_with("signature_") => 401,
                _ => 409,
            };
            assert_eq!(o.status(), expected, "{o:?}");
        }
    }
}
