//! The flash-sale domain, with no I/O: what a sale is, which state it is in at a given instant
//! (docs/requirements.md#2-sale-lifecycle), and how one purchase attempt is decided
//! (docs/requirements.md#3-stock-and-purchase-rules).
//!
//! Everything here is a pure function of its inputs. Time is always passed in (see [`clock`]),
//! so every boundary (exactly at the start, exactly at the end) can be tested exactly, and the
//! stores decide each attempt inside their own atomic step with the clock they trust.
//!
//! - [`ids`]: parsed newtypes for user ids, sale ids, quantities, idempotency keys and payment
//!   references.
//! - [`sale`]: the sale, its derived state, and which sale the page features.
//! - [`purchase`]: the rules that turn one attempt into an admission or a rejection.
//! - [`outcome`]: every answer a purchase can get, with its wire code and status: the one
//!   list the counters, metrics, OpenAPI enum and HTTP errors derive from.
//! - [`checkout`]: a sale's checkout mode (instant, or hold with a payment window) and price.
//! - [`money`]: ISO 4217 currencies, prices and amounts in whole minor units.
//! - [`units`]: a sale's units as available, held and sold, always adding up to the total.
//! - [`order`]: an order's status and [`transition`], the one statement of how events change it.
//! - [`waitlist`]: who waits for a freed unit, in which order, and who is offered the next one.
//! - [`payment_signature`]: the payment webhook's `Flashsale-Signature`, signed and verified.
//! - [`checkout_outcome`]: every answer of the checkout flow, with its wire code and status.
//! - [`product`]: what is on sale, described: description, price and image.
//! - [`image`]: a product image's type, told from its bytes, and its digest.
//! - [`change`]: an operator's edit or cancellation of a sale, and the rules that allow it.
//! - [`error`]: validation errors, each naming what was wrong.

pub mod change;
pub mod checkout;
pub mod checkout_outcome;
pub mod clock;
pub mod error;
pub mod ids;
pub mod image;
pub mod money;
pub mod order;
pub mod outcome;
pub mod payment_signature;
pub mod product;
pub mod purchase;
pub mod sale;
pub mod units;
pub mod waitlist;

pub use change::{ChangeRefusal, FieldChange, ImageEdit, PriceEdit, SaleChange, SaleEdit};
pub use checkout::{Checkout, CheckoutMode, PaymentWindow};
pub use checkout_outcome::CheckoutOutcome;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::ValidationError;
pub use ids::{IdempotencyKey, PaymentRef, Quantity, SaleId, UserId};
pub use image::{ImageKind, ImageRef};
pub use money::{Currency, Money, Price};
pub use order::{
    Canceller, OrderEvent, OrderState, OrderStatus, Reservation, Transition, TransitionError,
    UnitsMove, transition,
};
pub use outcome::Outcome;
pub use payment_signature::{SecretTooShort, SignatureRejection, WebhookSecret};
pub use product::Product;
pub use purchase::{
    Decision, NotActiveReason, QuantityAboveLimit, Rejection, check_quantity, decide, decide_units,
};
pub use sale::{EndReason, NewSale, Sale, SaleState, pick_featured};
pub use units::{Units, UnitsError};
pub use waitlist::{Waitlist, WaitlistRefusal};
