//! A sale and its lifecycle (docs/requirements.md#2-sale-lifecycle): the state is derived from
//! the clock and the remaining stock, never stored as a flag that a job flips.

use crate::checkout::{Checkout, CheckoutMode};
use crate::error::ValidationError;
use crate::ids::{IdempotencyKey, SaleId};
use crate::product::Product;
use serde::Serialize;
use time::OffsetDateTime;

/// The largest stock one sale may have.
pub const MAX_STOCK: u32 = 1_000_000_000;
/// The largest per-user limit one sale may have.
pub const MAX_PER_USER_LIMIT: u32 = 1_000;
/// The longest sale name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// A sale: as created, then as its operator changed it (`crate::change`); stores replace it
/// whole, never mutate it in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    /// Assigned by the store.
    pub id: SaleId,
    /// What is on sale, for people.
    pub name: String,
    /// First instant at which attempts are admitted (inclusive).
    pub starts_at: OffsetDateTime,
    /// First instant at which attempts are refused (exclusive end).
    pub ends_at: OffsetDateTime,
    /// Units on sale.
    pub stock: u32,
    /// Units one buyer may hold across the sale.
    pub per_user_limit: u32,
    /// When the operator cancelled it: from then on it is ended (reason `cancelled`).
    pub cancelled_at: Option<OffsetDateTime>,
    /// Its description, price and image, as far as given.
    pub product: Product,
    /// How its units are paid for (CO-1): fixed at creation.
    pub checkout: CheckoutMode,
}

/// A validated request to create a sale; the store assigns the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSale {
    /// What is on sale.
    pub name: String,
    /// Start instant (inclusive).
    pub starts_at: OffsetDateTime,
    /// End instant (exclusive).
    pub ends_at: OffsetDateTime,
    /// Units on sale.
    pub stock: u32,
    /// Units one buyer may hold.
    pub per_user_limit: u32,
    /// Its description, price and image, as far as given (none by [`NewSale::parse`]).
    pub product: Product,
    /// How its units are paid for (instant by [`NewSale::parse`]); a hold needs a price.
    pub checkout: CheckoutMode,
    /// The admin's `Idempotency-Key`, if any: creating again with the same key gives back the
    /// sale first created with it instead of a second one.
    pub creation_key: Option<IdempotencyKey>,
}

impl NewSale {
    /// Validates raw fields: name 1..=200 chars (trimmed), end strictly after start once both
    /// are truncated to whole microseconds (the stored precision),
    /// stock 1..=[`MAX_STOCK`], per-user limit 1..=[`MAX_PER_USER_LIMIT`].
    pub fn parse(
        name: &str,
        starts_at: OffsetDateTime,
        ends_at: OffsetDateTime,
        stock: i64,
        per_user_limit: i64,
    ) -> Result<Self, ValidationError> {
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(ValidationError::BadName);
        }
        // Storage keeps microseconds (PostgreSQL's precision); truncate once, here, so every
        // store round-trips the same instants, and compare what will be stored: a window that
        // exists only below a microsecond would be empty once stored.
        let starts_at = truncate_to_micros(starts_at.to_offset(time::UtcOffset::UTC));
        let ends_at = truncate_to_micros(ends_at.to_offset(time::UtcOffset::UTC));
        if ends_at <= starts_at {
            return Err(ValidationError::EndNotAfterStart);
        }
        if stock < 1 || stock > i64::from(MAX_STOCK) {
            return Err(ValidationError::StockOutOfRange);
        }
        if per_user_limit < 1 || per_user_limit > i64::from(MAX_PER_USER_LIMIT) {
            return Err(ValidationError::LimitOutOfRange);
        }
        Ok(Self {
            name: name.to_owned(),
            starts_at,
            ends_at,
            stock: stock as u32,
            per_user_limit: per_user_limit as u32,
            product: Product::default(),
            checkout: CheckoutMode::Instant,
            creation_key: None,
        })
    }

    /// The same request, made idempotent by `key`.
    pub fn with_creation_key(self, key: IdempotencyKey) -> Self {
        Self {
            creation_key: Some(key),
            ..self
        }
    }

    /// The same request, describing its product.
    pub fn with_product(self, product: Product) -> Self {
        Self { product, ..self }
    }

    /// The same request with checkout terms already validated together (the price goes to the
    /// product, where buyers see it).
    pub fn with_checkout(self, checkout: Checkout) -> Self {
        let price = checkout.price().or(self.product.price);
        Self {
            checkout: checkout.mode(),
            product: Product {
                price,
                ..self.product
            },
            ..self
        }
    }

    /// Whether `sale` is what this request describes (a sale found under this request's
    /// creation key may have been created by a different request).
    pub fn describes(&self, sale: &Sale) -> bool {
        self.name == sale.name
            && self.starts_at == sale.starts_at
            && self.ends_at == sale.ends_at
            && self.stock == sale.stock
            && self.per_user_limit == sale.per_user_limit
            && self.product == sale.product
            && self.checkout == sale.checkout
    }

    /// The sale this request becomes once the store has given it an id.
    pub fn with_id(self, id: SaleId) -> Sale {
        Sale {
            id,
            name: self.name,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            stock: self.stock,
            per_user_limit: self.per_user_limit,
            cancelled_at: None,
            product: self.product,
            checkout: self.checkout,
        }
    }
}

/// Drops sub-microsecond precision.
pub fn truncate_to_micros(at: OffsetDateTime) -> OffsetDateTime {
    let nanos = at.nanosecond();
    at.replace_nanosecond(nanos - nanos % 1_000).unwrap_or(at)
}

/// Why a sale ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `now >= ends_at` with stock left.
    Time,
    /// Every unit was sold.
    SoldOut,
    /// The operator cancelled the sale.
    Cancelled,
}

/// The state of a sale at one instant (the table of docs/requirements.md#2-sale-lifecycle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaleState {
    /// `now < starts_at` (FL-1).
    Upcoming,
    /// `starts_at <= now < ends_at` with stock left (FL-2).
    Active,
    /// At or after the end (FL-3), or sold out (FL-4).
    Ended(EndReason),
}

impl SaleState {
    /// The wire name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            SaleState::Upcoming => "upcoming",
            SaleState::Active => "active",
            SaleState::Ended(_) => "ended",
        }
    }

    /// The end reason, if ended.
    pub fn ended_reason(self) -> Option<EndReason> {
        match self {
            SaleState::Ended(reason) => Some(reason),
            _ => None,
        }
    }
}

impl Sale {
    /// Whether the waitlist is open at `now` (CO-9, CO-10): before `ends_at` and not cancelled.
    /// From then on it has lapsed: nobody waits, joins are closed, nothing is offered.
    pub fn waitlist_open(&self, now: OffsetDateTime) -> bool {
        now < self.ends_at && self.cancelled_at.is_none()
    }

    /// The state at `now` given `remaining` units.
    ///
    /// Sold out wins over time once stock is 0: units are only sold inside the window, so a sale
    /// with no stock left necessarily sold out before its end. FL-5 follows: neither `now`
    /// moving forward nor stock (which only falls) can take an ended sale back.
    pub fn state(&self, now: OffsetDateTime, remaining: u32) -> SaleState {
        // A cancellation ends the sale whatever the clock or the stock says (FL-5: for good).
        if self.cancelled_at.is_some() {
            return SaleState::Ended(EndReason::Cancelled);
        }
        if remaining == 0 {
            // A sale cannot be sold out before it starts: stock only moves inside the window.
            if now < self.starts_at {
                return SaleState::Upcoming;
            }
            return SaleState::Ended(EndReason::SoldOut);
        }
        if now < self.starts_at {
            SaleState::Upcoming
        } else if now < self.ends_at {
            SaleState::Active
        } else {
            SaleState::Ended(EndReason::Time)
        }
    }
}

/// Which sale the page shows (`GET /api/sale`): the active one, else the next upcoming, else
/// the most recently ended. Ties go to the earliest start, then the lowest id, so the choice is
/// stable between calls.
pub fn pick_featured<'a, I>(sales: I, now: OffsetDateTime) -> Option<&'a Sale>
where
    I: IntoIterator<Item = (&'a Sale, u32)>,
{
    let mut active: Option<&Sale> = None;
    let mut upcoming: Option<&Sale> = None;
    let mut ended: Option<(&Sale, OffsetDateTime)> = None;
    for (sale, remaining) in sales {
        match sale.state(now, remaining) {
            SaleState::Active => {
                if active.is_none_or(|a| (sale.starts_at, sale.id) < (a.starts_at, a.id)) {
                    active = Some(sale);
                }
            }
            SaleState::Upcoming => {
                if upcoming.is_none_or(|u| (sale.starts_at, sale.id) < (u.starts_at, u.id)) {
                    upcoming = Some(sale);
                }
            }
            SaleState::Ended(_) => {
                // Without a sold-out instant, the end of the window orders ended sales.
                let key = sale.ends_at;
                if ended.is_none_or(|(e, k)| (key, sale.id) > (k, e.id)) {
                    ended = Some((sale, key));
                }
            }
        }
    }
    active.or(upcoming).or(ended.map(|(s, _)| s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;
    use time::macros::datetime;

    const START: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);
    const END: OffsetDateTime = datetime!(2026-11-22 12:10 UTC);

    fn sale(id: i64, stock: u32) -> Sale {
        NewSale::parse("Widget", START, END, i64::from(stock), 1)
            .unwrap()
            .with_id(SaleId(id))
    }

    #[test]
    fn a_window_shorter_than_a_microsecond_is_refused_as_invalid() {
        // Issue 17: both instants truncate to the same microsecond, so the stored window would
        // be empty (PostgreSQL's CHECK refused it and the API answered 503).
        let start = START + Duration::nanoseconds(100);
        let end = START + Duration::nanoseconds(200);
        assert_eq!(
            NewSale::parse("Widget", start, end, 10, 1),
            Err(ValidationError::EndNotAfterStart)
        );
        // One whole microsecond is a (tiny) valid window.
        let sale = NewSale::parse("Widget", START, START + Duration::microseconds(1), 10, 1);
        assert!(sale.is_ok());
    }

    #[test]
    fn fl1_sale_is_upcoming_until_one_nanosecond_before_the_start() {
        let s = sale(1, 10);
        assert_eq!(
            s.state(START - Duration::nanoseconds(1), 10),
            SaleState::Upcoming
        );
        assert_eq!(s.state(START - Duration::days(1), 10), SaleState::Upcoming);
    }

    #[test]
    fn fl2_sale_is_active_exactly_at_the_start() {
        assert_eq!(sale(1, 10).state(START, 10), SaleState::Active);
    }

    #[test]
    fn fl2_sale_is_active_one_nanosecond_before_the_end() {
        assert_eq!(
            sale(1, 10).state(END - Duration::nanoseconds(1), 1),
            SaleState::Active
        );
    }

    #[test]
    fn fl3_sale_is_ended_by_time_exactly_at_the_end_whatever_the_stock() {
        let s = sale(1, 10);
        assert_eq!(s.state(END, 10), SaleState::Ended(EndReason::Time));
        assert_eq!(s.state(END, 1), SaleState::Ended(EndReason::Time));
        assert_eq!(
            s.state(END + Duration::days(400), 10),
            SaleState::Ended(EndReason::Time)
        );
    }

    #[test]
    fn fl4_sale_is_ended_sold_out_when_no_stock_is_left() {
        let s = sale(1, 10);
        assert_eq!(s.state(START, 0), SaleState::Ended(EndReason::SoldOut));
        assert_eq!(s.state(END, 0), SaleState::Ended(EndReason::SoldOut));
    }

    #[test]
    fn fl5_ended_never_turns_back_as_time_moves_forward() {
        let s = sale(1, 10);
        let mut t = START;
        let mut seen_end = false;
        for remaining in (0..=10).rev() {
            t += Duration::seconds(7);
            let state = s.state(t, remaining);
            if seen_end {
                assert!(matches!(state, SaleState::Ended(_)), "turned back at {t}");
            }
            seen_end |= matches!(state, SaleState::Ended(_));
        }
        assert!(seen_end);
    }

    #[test]
    fn new_sale_refuses_an_end_not_after_the_start() {
        assert_eq!(
            NewSale::parse("x", START, START, 1, 1),
            Err(ValidationError::EndNotAfterStart)
        );
        assert_eq!(
            NewSale::parse("x", END, START, 1, 1),
            Err(ValidationError::EndNotAfterStart)
        );
    }

    #[test]
    fn new_sale_refuses_bad_stock_limit_and_name() {
        assert_eq!(
            NewSale::parse("x", START, END, 0, 1),
            Err(ValidationError::StockOutOfRange)
        );
        assert_eq!(
            NewSale::parse("x", START, END, -5, 1),
            Err(ValidationError::StockOutOfRange)
        );
        assert_eq!(
            NewSale::parse("x", START, END, 1_000_000_001, 1),
            Err(ValidationError::StockOutOfRange)
        );
        assert_eq!(
            NewSale::parse("x", START, END, 1, 0),
            Err(ValidationError::LimitOutOfRange)
        );
        assert_eq!(
            NewSale::parse("x", START, END, 1, 1001),
            Err(ValidationError::LimitOutOfRange)
        );
        assert_eq!(
            NewSale::parse("  ", START, END, 1, 1),
            Err(ValidationError::BadName)
        );
        assert_eq!(
            NewSale::parse(&"n".repeat(201), START, END, 1, 1),
            Err(ValidationError::BadName)
        );
    }

    #[test]
    fn new_sale_normalises_to_utc_microseconds() {
        let start = datetime!(2026-11-22 13:00:00.123456789 +01:00);
        let s = NewSale::parse(" Widget ", start, END, 1, 1).unwrap();
        assert_eq!(s.name, "Widget");
        assert_eq!(s.starts_at, datetime!(2026-11-22 12:00:00.123456 UTC));
        assert_eq!(s.starts_at.offset(), time::UtcOffset::UTC);
    }

    #[test]
    fn featured_sale_prefers_active_then_next_upcoming_then_latest_ended() {
        let ended = NewSale::parse(
            "old",
            START - Duration::hours(2),
            START - Duration::hours(1),
            5,
            1,
        )
        .unwrap()
        .with_id(SaleId(1));
        let active = sale(2, 5);
        let soon = NewSale::parse("soon", END, END + Duration::hours(1), 5, 1)
            .unwrap()
            .with_id(SaleId(3));
        let later = NewSale::parse(
            "later",
            END + Duration::hours(2),
            END + Duration::hours(3),
            5,
            1,
        )
        .unwrap()
        .with_id(SaleId(4));
        let now = START + Duration::minutes(1);
        let all = [(&ended, 5), (&later, 5), (&active, 5), (&soon, 5)];
        assert_eq!(pick_featured(all, now).unwrap().id, SaleId(2));
        let no_active = [(&ended, 5), (&later, 5), (&active, 0), (&soon, 5)];
        assert_eq!(pick_featured(no_active, now).unwrap().id, SaleId(3));
        let only_ended = [(&ended, 5), (&active, 0)];
        assert_eq!(pick_featured(only_ended, now).unwrap().id, SaleId(2));
        assert!(pick_featured(std::iter::empty(), now).is_none());
    }
}
