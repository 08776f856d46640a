//! The flash-sale domain, with no I/O: what a sale is, which state it is in at a given instant
//! (docs/requirements.md#2-sale-lifecycle), and how one purchase attempt is decided
//! (docs/requirements.md#3-stock-and-purchase-rules).
//!
//! Everything here is a pure function of its inputs. Time is always passed in (see [`clock`]),
//! so every boundary (exactly at the start, exactly at the end) can be tested exactly, and the
//! stores decide each attempt inside their own atomic step with the clock they trust.
//!
//! - [`ids`]: parsed newtypes for user ids, sale ids, quantities and idempotency keys.
//! - [`sale`]: the sale, its derived state, and which sale the page features.
//! - [`purchase`]: the rules that turn one attempt into an admission or a rejection.
//! - [`outcome`]: every answer a purchase can get, with its wire code and status: the one
//!   list the counters, metrics, OpenAPI enum and HTTP errors derive from.
//! - [`change`]: an operator's edit or cancellation of a sale, and the rules that allow it.
//! - [`error`]: validation errors, each naming what was wrong.

pub mod change;
pub mod clock;
pub mod error;
pub mod ids;
pub mod outcome;
pub mod purchase;
pub mod sale;

pub use change::{ChangeRefusal, FieldChange, SaleChange, SaleEdit};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::ValidationError;
pub use ids::{IdempotencyKey, Quantity, SaleId, UserId};
pub use outcome::Outcome;
pub use purchase::{
    Decision, NotActiveReason, QuantityAboveLimit, Rejection, check_quantity, decide,
};
pub use sale::{EndReason, NewSale, Sale, SaleState, pick_featured};
