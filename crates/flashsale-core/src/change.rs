//! An operator's change to a sale (docs/requirements.md#10-operating-sales): an edit of some
//! of its fields, or a cancellation, decided against the sale, the instant of decision and the
//! units already taken.
//!
//! The rules (SPEC 11), stated once here and applied by every store inside the same atomic
//! step as its purchases, so that an edit racing a purchase is decided before or after it,
//! never beside it:
//! - before the start, any field may change (each still valid as at creation, OP-2), the
//!   product's description, price and image included (OP-13);
//! - while active, only `stock` (raised, never below the units taken) and `ends_at` (never
//!   into the past, never at or before the start) may change (OP-3);
//! - once ended (by time, sold out, or cancelled) nothing may change (OP-4); sold out ends a
//!   sale for good (FL-5), so raising the stock of a sold-out sale is refused too;
//! - a cancellation ends an upcoming or active sale at once (OP-5).
//!
//! Fields sent with their current value are not changes: a form sent back whole is accepted
//! while the sale is active as long as only stock and end differ.

use crate::error::ValidationError;
use crate::image::ImageRef;
use crate::money::Price;
use crate::product::{Product, parse_description};
use crate::sale::{EndReason, MAX_STOCK, NewSale, Sale, SaleState, truncate_to_micros};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Some of a sale's fields, as the operator wants them (absent: unchanged). Values are raw:
/// [`apply`] validates them as creation does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaleEdit {
    /// New name.
    pub name: Option<String>,
    /// New start.
    pub starts_at: Option<OffsetDateTime>,
    /// New end.
    pub ends_at: Option<OffsetDateTime>,
    /// New stock.
    pub stock: Option<i64>,
    /// New per-user limit.
    pub per_user_limit: Option<i64>,
    /// New description (empty: none).
    pub description: Option<String>,
    /// New price, or its removal.
    pub price: Option<PriceEdit>,
    /// New image, or its removal.
    pub image: Option<ImageEdit>,
}

impl SaleEdit {
    /// Whether no field is given.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.starts_at.is_none()
            && self.ends_at.is_none()
            && self.stock.is_none()
            && self.per_user_limit.is_none()
            && self.description.is_none()
            && self.price.is_none()
            && self.image.is_none()
    }

    /// The product as this edit makes it of `current`, validated as at creation.
    fn product(&self, current: &Product) -> Result<Product, ValidationError> {
        let description = match &self.description {
            Some(raw) => parse_description(raw)?,
            None => current.description.clone(),
        };
        let price = match &self.price {
            Some(PriceEdit::Set { minor, currency }) => Some(Price::parse(*minor, currency)?),
            Some(PriceEdit::Remove) => None,
            None => current.price,
        };
        let image = match self.image {
            Some(ImageEdit::Set(image)) => Some(image),
            Some(ImageEdit::Remove) => None,
            None => current.image,
        };
        Ok(Product {
            description,
            price,
            image,
        })
    }
}

/// A change of a sale's price (raw: [`apply`] validates it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriceEdit {
    /// Set `price_minor` and `currency`, which come together.
    Set {
        /// Minor units.
        minor: i64,
        /// ISO 4217 code.
        currency: String,
    },
    /// The sale has no price any more.
    Remove,
}

/// A change of a sale's image: one already uploaded and sniffed, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageEdit {
    /// Show this image.
    Set(ImageRef),
    /// Show no image.
    Remove,
}

/// What an operator asks of a sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaleChange {
    /// Change some fields.
    Edit(SaleEdit),
    /// End the sale now.
    Cancel,
}

impl SaleChange {
    /// The kind recorded with the change (`edit` or `cancel`).
    pub fn kind(&self) -> &'static str {
        match self {
            SaleChange::Edit(_) => "edit",
            SaleChange::Cancel => "cancel",
        }
    }
}

/// Why a change was refused; each names the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRefusal {
    /// The sale has started and the change is not one allowed while active (409
    /// `sale_started`).
    #[error("{0}")]
    Started(&'static str),
    /// The sale has ended (409 `sale_ended`).
    #[error("{0}")]
    Ended(&'static str),
    /// The values themselves are wrong (400 `invalid_request`).
    #[error("{0}")]
    Invalid(String),
}

impl From<ValidationError> for ChangeRefusal {
    fn from(e: ValidationError) -> Self {
        ChangeRefusal::Invalid(e.to_string())
    }
}

/// Decides `change` to `sale` at `now`, with `taken` units sold or reserved: the sale as it
/// becomes, or why not.
pub fn apply(
    sale: &Sale,
    now: OffsetDateTime,
    taken: u32,
    change: &SaleChange,
) -> Result<Sale, ChangeRefusal> {
    let state = sale.state(now, sale.stock.saturating_sub(taken));
    if let SaleState::Ended(reason) = state {
        return Err(ChangeRefusal::Ended(match (change, reason) {
            (SaleChange::Cancel, _) => "the sale has already ended: it cannot be cancelled",
            (_, EndReason::SoldOut) => {
                "the sale sold out, which ended it for good: nothing can be changed, not even the stock"
            }
            _ => "the sale has ended: nothing can be changed",
        }));
    }
    let edit = match change {
        SaleChange::Cancel => {
            return Ok(Sale {
                cancelled_at: Some(now),
                ..sale.clone()
            });
        }
        SaleChange::Edit(edit) => edit,
    };
    if edit.is_empty() {
        return Err(ChangeRefusal::Invalid(
            "give at least one of name, starts_at, ends_at, stock, per_user_limit, description, price_minor and currency".into(),
        ));
    }
    let micros = |at: OffsetDateTime| truncate_to_micros(at.to_offset(time::UtcOffset::UTC));
    let ends_at = edit.ends_at.map(micros);
    if ends_at.is_some_and(|end| end <= now) {
        return Err(ChangeRefusal::Invalid(
            "ends_at must be in the future: a sale's end is never moved into the past".into(),
        ));
    }
    let product = edit.product(&sale.product)?;
    if state == SaleState::Active {
        if product != sale.product {
            return Err(ChangeRefusal::Started(
                "the sale has started: its description, price and image can no longer change (only stock, raised, and ends_at)",
            ));
        }
        return edit_active(sale, taken, edit, ends_at);
    }
    // Before the start: anything, validated as at creation.
    let new = NewSale::parse(
        edit.name.as_deref().unwrap_or(&sale.name),
        edit.starts_at.unwrap_or(sale.starts_at),
        ends_at.unwrap_or(sale.ends_at),
        edit.stock.unwrap_or(i64::from(sale.stock)),
        edit.per_user_limit
            .unwrap_or(i64::from(sale.per_user_limit)),
    )?
    .with_product(product);
    // The mode is fixed at creation (CO-1), and a hold needs its price to the end (CO-2).
    let checkout = crate::checkout::Checkout::new(sale.checkout, new.product.price)?;
    let new = new.with_checkout(checkout);
    if i64::from(new.stock) < i64::from(taken) {
        return Err(ChangeRefusal::Invalid(format!(
            "stock must not be below the {taken} units already taken"
        )));
    }
    Ok(new.with_id(sale.id))
}

/// While active: only a raise of the stock and a move of the end.
fn edit_active(
    sale: &Sale,
    taken: u32,
    edit: &SaleEdit,
    ends_at: Option<OffsetDateTime>,
) -> Result<Sale, ChangeRefusal> {
    let same_name = edit.name.as_deref().is_none_or(|n| n.trim() == sale.name);
    let same_start = edit
        .starts_at
        .is_none_or(|s| truncate_to_micros(s) == sale.starts_at);
    let same_limit = edit
        .per_user_limit
        .is_none_or(|l| l == i64::from(sale.per_user_limit));
    if !same_start {
        return Err(ChangeRefusal::Started(
            "the sale has started: starts_at can no longer change (only stock, raised, and ends_at)",
        ));
    }
    if !same_name || !same_limit {
        return Err(ChangeRefusal::Started(
            "the sale has started: only stock (raised) and ends_at can change",
        ));
    }
    let mut new = sale.clone();
    if let Some(stock) = edit.stock {
        if stock > i64::from(MAX_STOCK) || stock < 1 {
            return Err(ValidationError::StockOutOfRange.into());
        }
        // Lowering is refused whatever was sold: the rule, not the figures of the moment,
        // decides the answer (an edit racing purchases gets the same refusal either way).
        if stock < i64::from(sale.stock) {
            return Err(ChangeRefusal::Started(
                "the sale has started: its stock can only be raised",
            ));
        }
        if stock < i64::from(taken) {
            return Err(ChangeRefusal::Invalid(format!(
                "stock must not be below the {taken} units already sold or held"
            )));
        }
        new.stock = stock as u32;
    }
    if let Some(end) = ends_at {
        if end <= sale.starts_at {
            return Err(ValidationError::EndNotAfterStart.into());
        }
        new.ends_at = end;
    }
    Ok(new)
}

/// One field a change altered, with its values before and after as text (instants in RFC
/// 3339), for the record of changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    /// The field's wire name (`stock`, `ends_at`, `cancelled_at`, ...).
    pub field: &'static str,
    /// Its value before, if it had one.
    pub old: Option<String>,
    /// Its value after.
    pub new: Option<String>,
}

/// Every field that differs between `old` and `new`, in a fixed order.
pub fn changed_fields(old: &Sale, new: &Sale) -> Vec<FieldChange> {
    let instant = |at: OffsetDateTime| at.format(&Rfc3339).unwrap_or_else(|_| at.to_string());
    let mut out = Vec::new();
    let mut push = |field, a: Option<String>, b: Option<String>| {
        if a != b {
            out.push(FieldChange {
                field,
                old: a,
                new: b,
            });
        }
    };
    push("name", Some(old.name.clone()), Some(new.name.clone()));
    push(
        "starts_at",
        Some(instant(old.starts_at)),
        Some(instant(new.starts_at)),
    );
    push(
        "ends_at",
        Some(instant(old.ends_at)),
        Some(instant(new.ends_at)),
    );
    push(
        "stock",
        Some(old.stock.to_string()),
        Some(new.stock.to_string()),
    );
    push(
        "per_user_limit",
        Some(old.per_user_limit.to_string()),
        Some(new.per_user_limit.to_string()),
    );
    push(
        "description",
        old.product.description.as_deref().map(str::to_owned),
        new.product.description.as_deref().map(str::to_owned),
    );
    push(
        "price_minor",
        old.product.price.map(|p| p.minor().to_string()),
        new.product.price.map(|p| p.minor().to_string()),
    );
    push(
        "currency",
        old.product.price.map(|p| p.currency().to_string()),
        new.product.price.map(|p| p.currency().to_string()),
    );
    push(
        "image",
        old.product.image.map(|i| i.describe()),
        new.product.image.map(|i| i.describe()),
    );
    push(
        "cancelled_at",
        old.cancelled_at.map(instant),
        new.cancelled_at.map(instant),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SaleId;
    use time::Duration;
    use time::macros::datetime;

    const START: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);
    const END: OffsetDateTime = datetime!(2026-11-22 12:10 UTC);
    const BEFORE: OffsetDateTime = datetime!(2026-11-22 11:00 UTC);
    const DURING: OffsetDateTime = datetime!(2026-11-22 12:05 UTC);

    fn sale() -> Sale {
        NewSale::parse("Widget", START, END, 10, 2)
            .unwrap()
            .with_id(SaleId(1))
    }

    fn edit(f: impl FnOnce(&mut SaleEdit)) -> SaleChange {
        let mut e = SaleEdit::default();
        f(&mut e);
        SaleChange::Edit(e)
    }

    #[test]
    fn op2_before_the_start_any_field_may_change() {
        let new = apply(
            &sale(),
            BEFORE,
            0,
            &edit(|e| {
                e.name = Some(" Gadget ".into());
                e.starts_at = Some(START + Duration::minutes(1));
                e.stock = Some(3);
                e.per_user_limit = Some(1);
            }),
        )
        .unwrap();
        assert_eq!(new.name, "Gadget");
        assert_eq!(new.starts_at, START + Duration::minutes(1));
        assert_eq!((new.stock, new.per_user_limit), (3, 1));
        assert_eq!(new.id, SaleId(1));
    }

    #[test]
    fn op2_before_the_start_fields_are_validated_as_at_creation() {
        let bad = apply(&sale(), BEFORE, 0, &edit(|e| e.starts_at = Some(END)));
        assert_eq!(bad, Err(ValidationError::EndNotAfterStart.into()));
        let bad = apply(&sale(), BEFORE, 0, &edit(|e| e.stock = Some(0)));
        assert_eq!(bad, Err(ValidationError::StockOutOfRange.into()));
        let bad = apply(&sale(), BEFORE, 0, &edit(|_| {}));
        assert!(matches!(bad, Err(ChangeRefusal::Invalid(_))));
    }

    #[test]
    fn op3_while_active_the_start_cannot_move() {
        let r = apply(
            &sale(),
            DURING,
            0,
            &edit(|e| e.starts_at = Some(START - Duration::minutes(1))),
        );
        assert!(matches!(r, Err(ChangeRefusal::Started(m)) if m.contains("starts_at")));
    }

    #[test]
    fn op3_while_active_stock_may_be_raised_but_not_lowered() {
        let raised = apply(&sale(), DURING, 4, &edit(|e| e.stock = Some(20))).unwrap();
        assert_eq!(raised.stock, 20);
        let lowered = apply(&sale(), DURING, 4, &edit(|e| e.stock = Some(9)));
        assert!(matches!(lowered, Err(ChangeRefusal::Started(_))));
        // Below the units taken too: still the rule that stock only rises.
        let below = apply(&sale(), DURING, 8, &edit(|e| e.stock = Some(3)));
        assert!(matches!(below, Err(ChangeRefusal::Started(_))));
    }

    #[test]
    fn op3_while_active_the_end_moves_but_never_into_the_past() {
        let later = apply(
            &sale(),
            DURING,
            0,
            &edit(|e| e.ends_at = Some(END + Duration::hours(1))),
        )
        .unwrap();
        assert_eq!(later.ends_at, END + Duration::hours(1));
        let past = apply(&sale(), DURING, 0, &edit(|e| e.ends_at = Some(DURING)));
        assert!(matches!(past, Err(ChangeRefusal::Invalid(m)) if m.contains("past")));
    }

    #[test]
    fn op3_a_form_sent_back_whole_while_active_changes_only_stock_and_end() {
        let r = apply(
            &sale(),
            DURING,
            0,
            &edit(|e| {
                e.name = Some("Widget".into());
                e.starts_at = Some(START);
                e.per_user_limit = Some(2);
                e.stock = Some(11);
            }),
        )
        .unwrap();
        assert_eq!(r.stock, 11);
        let renamed = apply(&sale(), DURING, 0, &edit(|e| e.name = Some("Other".into())));
        assert!(matches!(renamed, Err(ChangeRefusal::Started(_))));
    }

    #[test]
    fn op4_an_ended_sale_cannot_change_and_a_sold_out_one_not_even_its_stock() {
        let r = apply(&sale(), END, 0, &edit(|e| e.stock = Some(20)));
        assert!(matches!(r, Err(ChangeRefusal::Ended(_))));
        let r = apply(&sale(), DURING, 10, &edit(|e| e.stock = Some(20)));
        assert!(matches!(r, Err(ChangeRefusal::Ended(m)) if m.contains("sold out")));
    }

    #[test]
    fn op5_a_cancellation_ends_the_sale_at_once_and_only_once() {
        let cancelled = apply(&sale(), DURING, 3, &SaleChange::Cancel).unwrap();
        assert_eq!(cancelled.cancelled_at, Some(DURING));
        assert_eq!(
            cancelled.state(DURING, 7),
            SaleState::Ended(EndReason::Cancelled)
        );
        let again = apply(&cancelled, DURING, 3, &SaleChange::Cancel);
        assert!(matches!(again, Err(ChangeRefusal::Ended(_))));
        let upcoming = apply(&sale(), BEFORE, 0, &SaleChange::Cancel).unwrap();
        assert_eq!(
            upcoming.state(BEFORE, 10),
            SaleState::Ended(EndReason::Cancelled)
        );
    }

    fn image() -> ImageRef {
        ImageRef::of(&crate::image::tests::png()).unwrap()
    }

    #[test]
    fn co1_co2_an_edit_keeps_the_mode_and_never_takes_a_holds_price() {
        let checkout =
            crate::checkout::Checkout::parse(Some("hold"), Some(600), Some(1999), Some("EUR"))
                .unwrap();
        let held = NewSale::parse("Widget", START, END, 10, 2)
            .unwrap()
            .with_checkout(checkout)
            .with_id(SaleId(1));
        let renamed = apply(&held, BEFORE, 0, &edit(|e| e.name = Some("Gadget".into()))).unwrap();
        assert_eq!(
            renamed.checkout, held.checkout,
            "the mode is fixed at creation"
        );
        assert_eq!(renamed.product.price, held.product.price);
        let repriced = apply(
            &held,
            BEFORE,
            0,
            &edit(|e| {
                e.price = Some(PriceEdit::Set {
                    minor: 2499,
                    currency: "EUR".into(),
                })
            }),
        )
        .unwrap();
        assert_eq!(repriced.product.price.unwrap().minor(), 2499);
        assert_eq!(repriced.checkout, held.checkout);
        let unpriced = apply(
            &held,
            BEFORE,
            0,
            &edit(|e| e.price = Some(PriceEdit::Remove)),
        );
        assert_eq!(
            unpriced,
            Err(ChangeRefusal::from(ValidationError::PriceRequired))
        );
    }

    #[test]
    fn op13_before_the_start_the_product_may_change_and_be_removed() {
        let described = apply(
            &sale(),
            BEFORE,
            0,
            &edit(|e| {
                e.description = Some(" Blue, 40 cm ".into());
                e.price = Some(PriceEdit::Set {
                    minor: 1999,
                    currency: "EUR".into(),
                });
                e.image = Some(ImageEdit::Set(image()));
            }),
        )
        .unwrap();
        assert_eq!(
            described.product.description.as_deref(),
            Some("Blue, 40 cm")
        );
        assert_eq!(described.product.price.unwrap().minor(), 1999);
        assert_eq!(described.product.image, Some(image()));
        let bare = apply(
            &described,
            BEFORE,
            0,
            &edit(|e| {
                e.description = Some(String::new());
                e.price = Some(PriceEdit::Remove);
                e.image = Some(ImageEdit::Remove);
            }),
        )
        .unwrap();
        assert_eq!(bare.product, Product::default());
        let fields: Vec<_> = changed_fields(&described, &bare)
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(fields, ["description", "price_minor", "currency", "image"]);
    }

    #[test]
    fn op13_the_product_is_validated_as_at_creation() {
        let bad = apply(
            &sale(),
            BEFORE,
            0,
            &edit(|e| {
                e.price = Some(PriceEdit::Set {
                    minor: 0,
                    currency: "EUR".into(),
                })
            }),
        );
        assert_eq!(bad, Err(ValidationError::PriceOutOfRange.into()));
        let bad = apply(
            &sale(),
            BEFORE,
            0,
            &edit(|e| e.description = Some("\u{0}".into())),
        );
        assert_eq!(bad, Err(ValidationError::BadDescription.into()));
    }

    #[test]
    fn op13_while_active_the_product_cannot_change_but_may_be_sent_back_unchanged() {
        let mut described = sale();
        described.product.description = Some("Blue".into());
        described.product.image = Some(image());
        for change in [
            edit(|e| e.description = Some("Red".into())),
            edit(|e| e.image = Some(ImageEdit::Remove)),
            edit(|e| {
                e.price = Some(PriceEdit::Set {
                    minor: 5,
                    currency: "EUR".into(),
                })
            }),
        ] {
            let r = apply(&described, DURING, 0, &change);
            assert!(matches!(r, Err(ChangeRefusal::Started(m)) if m.contains("description")));
        }
        let same = apply(
            &described,
            DURING,
            0,
            &edit(|e| {
                e.description = Some("Blue ".into());
                e.image = Some(ImageEdit::Set(image()));
                e.stock = Some(12);
            }),
        )
        .unwrap();
        assert_eq!(same.stock, 12);
        assert_eq!(same.product, described.product);
    }

    #[test]
    fn changed_fields_lists_what_differs_with_old_and_new_values() {
        let old = sale();
        let new = Sale {
            stock: 12,
            cancelled_at: Some(DURING),
            ..old.clone()
        };
        let changes = changed_fields(&old, &new);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].field, "stock");
        assert_eq!(changes[0].old.as_deref(), Some("10"));
        assert_eq!(changes[0].new.as_deref(), Some("12"));
        assert_eq!(changes[1].field, "cancelled_at");
        assert_eq!(changes[1].old, None);
        assert_eq!(changes[1].new.as_deref(), Some("2026-11-22T12:05:00Z"));
    }
}
