//! An order's status and every transition of it (docs/requirements.md#9-checkout, CO-4..CO-8):
//! `reserved` -> `paid` | `expired` | `cancelled` in hold mode, `confirmed` in instant mode.
//!
//! [`transition`] is the single statement of the rules. A store calls it at its one atomic
//! point (inside the sale's critical section, or mirrored by a Redis script checked against
//! it), with the one clock it trusts, and writes the new state durably before answering. The
//! invariants it keeps:
//!
//! - `paid`, `expired`, `cancelled` and `confirmed` are final: no event leaves them, so of
//!   racing events (pay, cancel, expire) the first one decided wins and every later one gets
//!   the answer that names the winner (CO-6).
//! - A reservation is live while `now < expires_at`; from `expires_at` on it can only expire,
//!   whether or not the expiry timer has run yet (CO-5).
//! - Units move at most once per order: [`Transition::units`] is a payment or a release only on
//!   the transition out of `reserved`; an answer that changes nothing moves nothing.

use crate::checkout::PaymentWindow;
use crate::checkout_outcome::CheckoutOutcome;
use crate::ids::{PaymentRef, UserId};
use crate::money::{Money, Price};
use crate::units::{Units, UnitsError};
use thiserror::Error;
use time::OffsetDateTime;

/// An order's status, by its wire name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrderStatus {
    /// Instant mode: final at purchase.
    Confirmed,
    /// Hold mode: units held, waiting for payment until `expires_at`.
    Reserved,
    /// Hold mode: paid; the units are sold.
    Paid,
    /// Hold mode: not paid by `expires_at`; the units were released.
    Expired,
    /// Hold mode: released by the buyer; the units were released.
    Cancelled,
}

impl OrderStatus {
    /// Every status, in declaration order.
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Confirmed,
        OrderStatus::Reserved,
        OrderStatus::Paid,
        OrderStatus::Expired,
        OrderStatus::Cancelled,
    ];

    /// The wire name (`status` in order bodies; also the stored column's value).
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Paid => "paid",
            OrderStatus::Expired => "expired",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// The status with this wire name.
    pub fn parse(name: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether no event can change this status.
    pub const fn is_final(self) -> bool {
        !matches!(self, OrderStatus::Reserved)
    }
}

/// What a hold-mode order holds: whose it is, how many units, what they cost, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The buyer.
    pub owner: UserId,
    /// Units held.
    pub units: u32,
    /// What a payment must be, exactly: the price times the units.
    pub total: Money,
    /// The first instant at which the reservation is no longer payable.
    pub expires_at: OffsetDateTime,
}

impl Reservation {
    /// A reservation decided at `now` (a purchase, or an offer from the waitlist: each gets a
    /// fresh window). `None` only if the total is above [`crate::money::MAX_AMOUNT_MINOR`],
    /// which no quantity within the per-user limit reaches.
    pub fn new(
        owner: UserId,
        units: u32,
        price: Price,
        window: PaymentWindow,
        now: OffsetDateTime,
    ) -> Option<Self> {
        Some(Self {
            owner,
            units,
            total: price.total(units)?,
            expires_at: window.expires_at(now),
        })
    }

    /// Whether the reservation can still be paid or cancelled at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        now < self.expires_at
    }
}

/// An order's state: its status with what that status needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderState {
    /// Instant mode: final at purchase.
    Confirmed {
        /// The buyer.
        owner: UserId,
    },
    /// Waiting for payment.
    Reserved(Reservation),
    /// Paid by the payment named.
    Paid {
        /// What was reserved.
        reservation: Reservation,
        /// The payment that paid it: a redelivery names it again.
        payment_ref: PaymentRef,
    },
    /// Not paid in time.
    Expired(Reservation),
    /// Released by the buyer.
    Cancelled(Reservation),
}

impl OrderState {
    /// The status.
    pub fn status(&self) -> OrderStatus {
        match self {
            OrderState::Confirmed { .. } => OrderStatus::Confirmed,
            OrderState::Reserved(_) => OrderStatus::Reserved,
            OrderState::Paid { .. } => OrderStatus::Paid,
            OrderState::Expired(_) => OrderStatus::Expired,
            OrderState::Cancelled(_) => OrderStatus::Cancelled,
        }
    }

    /// The buyer.
    pub fn owner(&self) -> &UserId {
        match self {
            OrderState::Confirmed { owner } => owner,
            OrderState::Paid { reservation, .. } => &reservation.owner,
            OrderState::Reserved(r) | OrderState::Expired(r) | OrderState::Cancelled(r) => &r.owner,
        }
    }

    /// The reservation behind a hold-mode order.
    pub fn reservation(&self) -> Option<&Reservation> {
        match self {
            OrderState::Confirmed { .. } => None,
            OrderState::Paid { reservation, .. } => Some(reservation),
            OrderState::Reserved(r) | OrderState::Expired(r) | OrderState::Cancelled(r) => Some(r),
        }
    }
}

/// Who asks to cancel a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canceller {
    /// Guest mode: whoever holds the order id (the id is the capability).
    OrderIdHolder,
    /// With identity: this verified buyer, who must own the order.
    Buyer(UserId),
}

/// Something that happens to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    /// The payment system says this payment succeeded.
    Pay {
        /// What it says was paid.
        amount: Money,
        /// Its reference for the payment.
        payment_ref: PaymentRef,
    },
    /// The payment system says this payment failed.
    PaymentFailed {
        /// Its reference for the payment.
        payment_ref: PaymentRef,
    },
    /// The buyer releases their reservation.
    Cancel {
        /// Who asks.
        by: Canceller,
    },
    /// The expiry timer (or reconciler) found the reservation at or past `expires_at`.
    Expire,
}

/// A decided event. Where the state changes, the new state is carried; the store writes it,
/// and moves the units as [`Transition::units`] says, in the same atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// `reserved` -> `paid`: the units become sold.
    Paid(OrderState),
    /// A redelivery of the payment that paid the order: the first answer again, no change.
    AlreadyPaid,
    /// The payment failed: the order stays `reserved`, payable until it expires; no change.
    PaymentFailed,
    /// `reserved` -> `cancelled`: the units are released.
    Cancelled(OrderState),
    /// `reserved` -> `expired`: the units are released.
    Expired(OrderState),
}

/// How a transition moves the sale's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitsMove {
    /// Nothing moves.
    None,
    /// These held units become sold ([`Units::pay`]).
    Pay(u32),
    /// These held units are freed: offered to the waitlist (they stay held) or released to
    /// available ([`Units::release`]).
    Release(u32),
}

impl Transition {
    /// The answer (`paid`, `payment_failed`, `cancelled`, `expired`).
    pub fn outcome(&self) -> CheckoutOutcome {
        match self {
            Transition::Paid(_) | Transition::AlreadyPaid => CheckoutOutcome::Paid,
            Transition::PaymentFailed => CheckoutOutcome::PaymentFailed,
            Transition::Cancelled(_) => CheckoutOutcome::Cancelled,
            Transition::Expired(_) => CheckoutOutcome::Expired,
        }
    }

    /// The state to write, or `None` when nothing changes.
    pub fn new_state(&self) -> Option<&OrderState> {
        match self {
            Transition::Paid(s) | Transition::Cancelled(s) | Transition::Expired(s) => Some(s),
            Transition::AlreadyPaid | Transition::PaymentFailed => None,
        }
    }

    /// How the sale's units move.
    pub fn units(&self) -> UnitsMove {
        let held = |s: &OrderState| s.reservation().map_or(0, |r| r.units);
        match self {
            Transition::Paid(s) => UnitsMove::Pay(held(s)),
            Transition::Cancelled(s) | Transition::Expired(s) => UnitsMove::Release(held(s)),
            Transition::AlreadyPaid | Transition::PaymentFailed => UnitsMove::None,
        }
    }

    /// Applies [`Transition::units`] to `units`, releasing freed units to available (a store
    /// that offers them to the waitlist instead leaves them held).
    pub fn apply(&self, units: &mut Units) -> Result<(), UnitsError> {
        match self.units() {
            UnitsMove::None => Ok(()),
            UnitsMove::Pay(n) => units.pay(n),
            UnitsMove::Release(n) => units.release(n),
        }
    }
}

/// Why an event changed nothing: the loser's answer. Each names its [`CheckoutOutcome`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransitionError {
    /// The reservation expired (or reached `expires_at`) before this event was decided.
    #[error("the reservation expired at {expires_at}")]
    ReservationExpired {
        /// When it expired.
        expires_at: OffsetDateTime,
    },
    /// The buyer cancelled the reservation first.
    #[error("the order was cancelled")]
    OrderCancelled,
    /// The order is paid: it cannot be cancelled, expire, or be paid by another payment.
    #[error("the order is paid")]
    OrderPaid,
    /// The payment is not the order's total (amount or currency).
    #[error("the payment is {paid}, the order's total is {expected}")]
    AmountMismatch {
        /// What the order costs.
        expected: Money,
        /// What the payment says.
        paid: Money,
    },
    /// An instant-mode order: final at purchase; nothing to pay, cancel or expire.
    #[error("the order was confirmed at purchase (instant mode)")]
    OrderConfirmed,
    /// The canceller is not the order's buyer; answered as if there were no such order.
    #[error("no such order")]
    NotOwner,
    /// Expiry asked for while the reservation is still live (a timer firing early).
    #[error("the reservation is live until {expires_at}")]
    ReservationLive {
        /// When it will expire.
        expires_at: OffsetDateTime,
    },
}

impl TransitionError {
    /// The answer this loser gets.
    pub fn outcome(&self) -> CheckoutOutcome {
        match self {
            TransitionError::ReservationExpired { .. } => CheckoutOutcome::ReservationExpired,
            TransitionError::OrderCancelled => CheckoutOutcome::OrderCancelled,
            TransitionError::OrderPaid => CheckoutOutcome::OrderPaid,
            TransitionError::AmountMismatch { .. } => CheckoutOutcome::AmountMismatch,
            TransitionError::OrderConfirmed => CheckoutOutcome::OrderConfirmed,
            TransitionError::NotOwner => CheckoutOutcome::OrderNotFound,
            TransitionError::ReservationLive { .. } => CheckoutOutcome::ReservationLive,
        }
    }
}

/// Decides `event` for an order in `state` at `now` (the store's clock, read once inside its
/// atomic step).
///
/// Order of checks: who asks (a cancel by another buyer is `NotOwner` whatever the state, so
/// it learns nothing), then the state (a final state names itself: `order_paid`,
/// `order_cancelled`, `reservation_expired`, `order_confirmed`), then the clock (a reservation
/// at or past `expires_at` answers `reservation_expired` to a payment or a cancel), then the
/// amount. A redelivery of the paying event (same `payment_ref`, same amount) is answered
/// `paid` again at any time; any other payment of a paid order is `order_paid`.
pub fn transition(
    state: &OrderState,
    event: &OrderEvent,
    now: OffsetDateTime,
) -> Result<Transition, TransitionError> {
    if let OrderEvent::Cancel {
        by: Canceller::Buyer(caller),
    } = event
        && caller != state.owner()
    {
        return Err(TransitionError::NotOwner);
    }
    let reservation = match state {
        OrderState::Reserved(r) => r,
        OrderState::Paid {
            reservation,
            payment_ref,
        } => {
            return match event {
                OrderEvent::Pay {
                    amount,
                    payment_ref: paying,
                } if paying == payment_ref && *amount == reservation.total => {
                    Ok(Transition::AlreadyPaid)
                }
                _ => Err(TransitionError::OrderPaid),
            };
        }
        OrderState::Expired(r) => {
            return Err(TransitionError::ReservationExpired {
                expires_at: r.expires_at,
            });
        }
        OrderState::Cancelled(_) => return Err(TransitionError::OrderCancelled),
        OrderState::Confirmed { .. } => return Err(TransitionError::OrderConfirmed),
    };
    let expires_at = reservation.expires_at;
    let live = reservation.is_live(now);
    match event {
        OrderEvent::Expire if live => Err(TransitionError::ReservationLive { expires_at }),
        OrderEvent::Expire => Ok(Transition::Expired(OrderState::Expired(
            reservation.clone(),
        ))),
        _ if !live => Err(TransitionError::ReservationExpired { expires_at }),
        OrderEvent::Pay {
            amount,
            payment_ref,
        } => {
            if *amount != reservation.total {
                return Err(TransitionError::AmountMismatch {
                    expected: reservation.total,
                    paid: *amount,
                });
            }
            Ok(Transition::Paid(OrderState::Paid {
                reservation: reservation.clone(),
                payment_ref: payment_ref.clone(),
            }))
        }
        OrderEvent::PaymentFailed { .. } => Ok(Transition::PaymentFailed),
        OrderEvent::Cancel { .. } => Ok(Transition::Cancelled(OrderState::Cancelled(
            reservation.clone(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::Duration;
    use time::macros::datetime;

    const RESERVED_AT: OffsetDateTime = datetime!(2026-11-30 12:00 UTC);
    const EXPIRES_AT: OffsetDateTime = datetime!(2026-11-30 12:10 UTC);
    const NS: Duration = Duration::nanoseconds(1);

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn reservation() -> Reservation {
        let price = Price::parse(1250, "EUR").unwrap();
        let window = PaymentWindow::parse(600).unwrap();
        Reservation::new(user("ada"), 2, price, window, RESERVED_AT).unwrap()
    }

    fn reserved() -> OrderState {
        OrderState::Reserved(reservation())
    }

    fn money(minor: i64, currency: &str) -> Money {
        Money::parse(minor, currency).unwrap()
    }

    fn pay(minor: i64, currency: &str, payment_ref: &str) -> OrderEvent {
        OrderEvent::Pay {
            amount: money(minor, currency),
            payment_ref: PaymentRef::parse(payment_ref).unwrap(),
        }
    }

    fn good_pay() -> OrderEvent {
        pay(2500, "EUR", "pay_1")
    }

    fn failed() -> OrderEvent {
        OrderEvent::PaymentFailed {
            payment_ref: PaymentRef::parse("pay_0").unwrap(),
        }
    }

    fn cancel_by(buyer: &str) -> OrderEvent {
        OrderEvent::Cancel {
            by: Canceller::Buyer(user(buyer)),
        }
    }

    fn guest_cancel() -> OrderEvent {
        OrderEvent::Cancel {
            by: Canceller::OrderIdHolder,
        }
    }

    fn paid() -> OrderState {
        transition(&reserved(), &good_pay(), RESERVED_AT)
            .unwrap()
            .new_state()
            .unwrap()
            .clone()
    }

    fn every_event() -> Vec<OrderEvent> {
        vec![
            good_pay(),
            pay(2500, "EUR", "pay_2"),
            pay(1, "EUR", "pay_1"),
            failed(),
            cancel_by("ada"),
            guest_cancel(),
            OrderEvent::Expire,
        ]
    }

    #[test]
    fn co4_a_reservation_holds_the_units_at_the_price_for_one_window() {
        let r = reservation();
        assert_eq!(r.total, money(2500, "EUR"));
        assert_eq!(r.expires_at, EXPIRES_AT);
        assert!(r.is_live(EXPIRES_AT - NS));
        assert!(!r.is_live(EXPIRES_AT));
        assert_eq!(reserved().status(), OrderStatus::Reserved);
        assert_eq!(reserved().owner(), &user("ada"));
    }

    #[test]
    fn co4_a_live_reservation_paid_exactly_becomes_paid_and_its_units_sold() {
        let t = transition(&reserved(), &good_pay(), EXPIRES_AT - NS).unwrap();
        assert_eq!(t.outcome(), CheckoutOutcome::Paid);
        assert_eq!(t.outcome().code(), "paid");
        assert_eq!(t.new_state().unwrap().status(), OrderStatus::Paid);
        assert_eq!(t.units(), UnitsMove::Pay(2));
        let mut units = Units::new(5);
        units.reserve(2).unwrap();
        t.apply(&mut units).unwrap();
        assert_eq!((units.available(), units.held(), units.sold()), (3, 0, 2));
    }

    #[test]
    fn co4_a_failed_payment_leaves_the_reservation_payable() {
        let t = transition(&reserved(), &failed(), RESERVED_AT).unwrap();
        assert_eq!(t, Transition::PaymentFailed);
        assert_eq!(t.outcome().code(), "payment_failed");
        assert_eq!(t.new_state(), None);
        assert_eq!(t.units(), UnitsMove::None);
        // The buyer tries again and pays.
        let again = transition(&reserved(), &good_pay(), RESERVED_AT + NS).unwrap();
        assert_eq!(again.outcome(), CheckoutOutcome::Paid);
    }

    #[test]
    fn co4_the_owner_or_the_order_id_holder_cancels_a_live_reservation() {
        for event in [cancel_by("ada"), guest_cancel()] {
            let t = transition(&reserved(), &event, EXPIRES_AT - NS).unwrap();
            assert_eq!(t.outcome().code(), "cancelled");
            assert_eq!(t.new_state().unwrap().status(), OrderStatus::Cancelled);
            assert_eq!(t.units(), UnitsMove::Release(2));
            let mut units = Units::new(5);
            units.reserve(2).unwrap();
            t.apply(&mut units).unwrap();
            assert_eq!((units.available(), units.held(), units.sold()), (5, 0, 0));
        }
    }

    #[test]
    fn co5_a_reservation_expires_exactly_at_expires_at_and_not_a_nanosecond_before() {
        assert_eq!(
            transition(&reserved(), &OrderEvent::Expire, EXPIRES_AT - NS),
            Err(TransitionError::ReservationLive {
                expires_at: EXPIRES_AT
            })
        );
        let t = transition(&reserved(), &OrderEvent::Expire, EXPIRES_AT).unwrap();
        assert_eq!(t.outcome().code(), "expired");
        assert_eq!(t.new_state().unwrap().status(), OrderStatus::Expired);
        assert_eq!(t.units(), UnitsMove::Release(2));
        // A late timer expires it just the same.
        let late = transition(
            &reserved(),
            &OrderEvent::Expire,
            EXPIRES_AT + Duration::days(2),
        );
        assert_eq!(late.unwrap().units(), UnitsMove::Release(2));
    }

    #[test]
    fn co5_from_expires_at_on_a_payment_or_cancel_is_too_late_even_before_the_timer_ran() {
        let too_late = TransitionError::ReservationExpired {
            expires_at: EXPIRES_AT,
        };
        let expired = Err(too_late.clone());
        for event in [good_pay(), failed(), cancel_by("ada"), guest_cancel()] {
            assert_eq!(
                transition(&reserved(), &event, EXPIRES_AT),
                expired,
                "{event:?}"
            );
            assert_eq!(
                transition(&reserved(), &event, EXPIRES_AT + Duration::hours(1)),
                expired
            );
        }
        assert_eq!(too_late.outcome().code(), "reservation_expired");
    }

    #[test]
    fn co6_a_payment_of_another_amount_or_currency_is_amount_mismatch_and_changes_nothing() {
        for (minor, currency) in [(2499, "EUR"), (2501, "EUR"), (0, "EUR"), (2500, "USD")] {
            let err =
                transition(&reserved(), &pay(minor, currency, "pay_1"), RESERVED_AT).unwrap_err();
            assert_eq!(
                err,
                TransitionError::AmountMismatch {
                    expected: money(2500, "EUR"),
                    paid: money(minor, currency),
                }
            );
            assert_eq!(err.outcome().code(), "amount_mismatch");
            assert_eq!(err.outcome().status(), 409);
        }
        // The one price per unit is not the total of two units.
        assert!(transition(&reserved(), &pay(1250, "EUR", "pay_1"), RESERVED_AT).is_err());
    }

    #[test]
    fn co6_every_event_on_a_paid_order_is_order_paid_except_the_paying_redelivery() {
        for event in every_event() {
            let answer = transition(&paid(), &event, RESERVED_AT + NS);
            if event == good_pay() {
                assert_eq!(answer, Ok(Transition::AlreadyPaid));
            } else {
                assert_eq!(answer, Err(TransitionError::OrderPaid), "{event:?}");
            }
        }
        assert_eq!(TransitionError::OrderPaid.outcome().code(), "order_paid");
    }

    #[test]
    fn co6_every_event_on_a_cancelled_order_is_order_cancelled() {
        let cancelled = OrderState::Cancelled(reservation());
        for event in every_event() {
            for now in [RESERVED_AT, EXPIRES_AT] {
                assert_eq!(
                    transition(&cancelled, &event, now),
                    Err(TransitionError::OrderCancelled),
                    "{event:?}"
                );
            }
        }
        assert_eq!(
            TransitionError::OrderCancelled.outcome().code(),
            "order_cancelled"
        );
    }

    #[test]
    fn co6_every_event_on_an_expired_order_is_reservation_expired_so_a_second_timer_frees_nothing()
    {
        let expired = OrderState::Expired(reservation());
        for event in every_event() {
            assert_eq!(
                transition(&expired, &event, EXPIRES_AT + NS),
                Err(TransitionError::ReservationExpired {
                    expires_at: EXPIRES_AT
                }),
                "{event:?}"
            );
        }
    }

    #[test]
    fn co6_an_instant_mode_order_takes_no_payment_cancel_or_expiry() {
        let confirmed = OrderState::Confirmed { owner: user("ada") };
        assert_eq!(confirmed.reservation(), None);
        for event in every_event() {
            assert_eq!(
                transition(&confirmed, &event, RESERVED_AT),
                Err(TransitionError::OrderConfirmed),
                "{event:?}"
            );
        }
        assert_eq!(
            TransitionError::OrderConfirmed.outcome().code(),
            "order_confirmed"
        );
    }

    #[test]
    fn co7_a_redelivered_payment_is_answered_paid_again_at_any_time_and_moves_nothing() {
        for now in [RESERVED_AT, EXPIRES_AT, EXPIRES_AT + Duration::days(30)] {
            let t = transition(&paid(), &good_pay(), now).unwrap();
            assert_eq!(t, Transition::AlreadyPaid);
            assert_eq!(t.outcome(), CheckoutOutcome::Paid);
            assert_eq!(t.new_state(), None);
            assert_eq!(t.units(), UnitsMove::None);
        }
        // The same reference with another amount is not a redelivery.
        assert_eq!(
            transition(&paid(), &pay(2400, "EUR", "pay_1"), RESERVED_AT),
            Err(TransitionError::OrderPaid)
        );
    }

    #[test]
    fn co8_another_buyer_cancelling_is_told_there_is_no_such_order_in_every_state() {
        let states = [
            reserved(),
            paid(),
            OrderState::Expired(reservation()),
            OrderState::Cancelled(reservation()),
            OrderState::Confirmed { owner: user("ada") },
        ];
        for state in states {
            let err = transition(&state, &cancel_by("bob"), RESERVED_AT).unwrap_err();
            assert_eq!(err, TransitionError::NotOwner, "{state:?}");
            assert_eq!(err.outcome().code(), "order_not_found");
            assert_eq!(err.outcome().status(), 404);
        }
    }

    #[test]
    fn co8_a_paid_order_cannot_be_cancelled() {
        assert_eq!(
            transition(&paid(), &cancel_by("ada"), RESERVED_AT),
            Err(TransitionError::OrderPaid)
        );
    }

    #[test]
    fn status_names_are_the_wire_names_and_only_reserved_can_change() {
        let names: Vec<_> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            ["confirmed", "reserved", "paid", "expired", "cancelled"]
        );
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            assert_eq!(status.is_final(), status != OrderStatus::Reserved);
        }
        assert_eq!(OrderStatus::parse("Paid"), None);
    }

    /// The events of the race proptest: index into this list.
    fn race_event(i: u8) -> OrderEvent {
        match i % 7 {
            0 => good_pay(),
            1 => pay(2400, "EUR", "pay_9"),
            2 => failed(),
            3 => cancel_by("ada"),
            4 => cancel_by("bob"),
            5 => guest_cancel(),
            _ => OrderEvent::Expire,
        }
    }

    proptest! {
        /// Any events in any order, at times moving forward across `expires_at`: against a
        /// naive model, the first event that may change a live (or due) reservation wins, every
        /// later one changes nothing, and the units move exactly once if and only if the order
        /// left `reserved`.
        #[test]
        fn co6_racing_events_have_exactly_one_winner_and_move_units_at_most_once(
            events in proptest::collection::vec((0u8..7, 0i64..400), 1..40),
        ) {
            let mut state = reserved();
            let mut units = Units::new(3);
            units.reserve(2).unwrap();
            // Close to the deadline, in steps of 0 to 3 s, so that events land exactly on it.
            let mut now = EXPIRES_AT - Duration::seconds(4);
            let mut model = OrderStatus::Reserved;
            let mut changes = 0;
            for (i, step) in events {
                now += Duration::seconds(step / 100);
                let event = race_event(i);
                // The model, written from the spec's words alone.
                let live = now < EXPIRES_AT;
                if model == OrderStatus::Reserved {
                    model = match i % 7 {
                        0 if live => OrderStatus::Paid,
                        3 | 5 if live => OrderStatus::Cancelled,
                        6 if !live => OrderStatus::Expired,
                        _ => OrderStatus::Reserved,
                    };
                }
                match transition(&state, &event, now) {
                    Ok(t) => {
                        t.apply(&mut units).unwrap();
                        if let Some(next) = t.new_state() {
                            prop_assert_eq!(state.status(), OrderStatus::Reserved);
                            state = next.clone();
                            changes += 1;
                        }
                    }
                    Err(e) => prop_assert!(e.outcome().status() >= 400),
                }
                prop_assert_eq!(state.status(), model);
                prop_assert_eq!(units.available() + units.held() + units.sold(), 3);
            }
            prop_assert!(changes <= 1);
            let expected = match model {
                OrderStatus::Reserved => (1, 2, 0),
                OrderStatus::Paid => (1, 0, 2),
                _ => (3, 0, 0),
            };
            prop_assert_eq!((units.available(), units.held(), units.sold()), expected);
        }
    }
}
