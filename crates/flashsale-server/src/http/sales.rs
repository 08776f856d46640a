//! Sale status: `GET /api/sale` (the featured sale) and `GET /api/sales/{sale_id}`. The status
//! body is shared with admin creation and the live event stream. `server_time` is the store's
//! clock (the one that decides admission), never a separate one.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::SalePath;
use crate::http::json::JsonBuf;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flashsale_core::{CheckoutMode, Currency, EndReason, ImageRef, SaleState, pick_featured};
use flashsale_store::SaleStatus;
use serde::Serialize;
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// A sale's state on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    /// Before the start.
    Upcoming,
    /// Inside the window with stock left.
    Active,
    /// After the end, or sold out.
    Ended,
}

impl StateName {
    /// The wire name of `state`.
    pub fn of(state: SaleState) -> Self {
        match state {
            SaleState::Upcoming => StateName::Upcoming,
            SaleState::Active => StateName::Active,
            SaleState::Ended(_) => StateName::Ended,
        }
    }
}

/// Why a sale ended, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndedReason {
    /// The window closed.
    Time,
    /// Every unit was sold.
    SoldOut,
    /// The operator cancelled the sale.
    Cancelled,
}

impl EndedReason {
    /// Why `state` ended, when it has.
    pub fn of(state: SaleState) -> Option<Self> {
        state.ended_reason().map(|r| match r {
            EndReason::Time => EndedReason::Time,
            EndReason::SoldOut => EndedReason::SoldOut,
            EndReason::Cancelled => EndedReason::Cancelled,
        })
    }
}

/// The status body (docs/api.md "Sale status").
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SaleBody {
    /// The sale's id.
    pub sale_id: i64,
    /// What is on sale.
    pub name: String,
    /// The state at `server_time`.
    pub state: StateName,
    /// Why it ended, when ended.
    pub ended_reason: Option<EndedReason>,
    /// Start (inclusive).
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// End (exclusive).
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    /// Units on sale.
    pub stock_total: u32,
    /// Units not yet taken (the same as `stock_available`, kept for clients that read it).
    pub stock_remaining: u32,
    /// Units anyone may take now.
    pub stock_available: u32,
    /// Units held by live reservations (hold mode; 0 in instant mode).
    pub stock_held: u32,
    /// Units sold (paid, or confirmed in instant mode); `stock_total = stock_available +
    /// stock_held + stock_sold`.
    pub stock_sold: u32,
    /// Units one buyer may hold.
    pub per_user_limit: u32,
    /// When the last unit was taken.
    #[serde(with = "time::serde::rfc3339::option")]
    pub sold_out_at: Option<OffsetDateTime>,
    /// The store's clock when this body was made.
    #[serde(with = "time::serde::rfc3339")]
    pub server_time: OffsetDateTime,
    /// What the buyer reads about the product (plain text), if given.
    #[serde(serialize_with = "shared_text")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    pub description: Option<Arc<str>>,
    /// The unit price in minor units of `currency` (cents for EUR, yen for JPY), if given.
    #[schema(minimum = 1, maximum = 9_007_199_254_740_i64)]
    pub price_minor: Option<u64>,
    /// The price's ISO 4217 currency, with `price_minor`.
    #[serde(serialize_with = "currency_code")]
    #[schema(value_type = Option<String>, pattern = "^[A-Z]{3}$")]
    pub currency: Option<Currency>,
    /// Where the product image is served, with its version (`/api/sales/7/image?v=...`): a
    /// new image is a new URL. `null` when the sale has no image.
    #[serde(rename = "image_url", serialize_with = "image_url")]
    #[schema(value_type = Option<String>)]
    pub image: Option<ImageUrl>,
    /// `instant` (a purchase is final) or `hold` (a purchase reserves units to be paid for
    /// within `payment_window_secs`).
    pub checkout_mode: CheckoutName,
    /// Hold mode: how long a reservation waits for its payment, in seconds; `null` otherwise.
    #[schema(minimum = 60, maximum = 86_400)]
    pub payment_window_secs: Option<u32>,
    /// Buyers on the waitlist (hold mode, CO-9); 0 from `ends_at` on, when the list lapses.
    pub waitlist_length: u32,
}

/// A sale's checkout mode, by its wire name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutName {
    /// A purchase is final when confirmed.
    Instant,
    /// A purchase reserves units until they are paid for or the window ends.
    Hold,
}

/// A sale's image as its status body links it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageUrl {
    /// The sale.
    pub sale_id: i64,
    /// The image.
    pub image: ImageRef,
}

impl ImageUrl {
    /// Writes the URL (ASCII: digits and hex, nothing to escape) into `out`.
    fn write(&self, out: &mut JsonBuf) {
        out.raw(b"\"/api/sales/")
            .number(self.sale_id)
            .raw(b"/image?v=")
            .raw(&self.image.version())
            .raw(b"\"");
    }
}

fn shared_text<S: serde::Serializer>(text: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_some(&text.as_deref())
}

fn currency_code<S: serde::Serializer>(code: &Option<Currency>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_some(&code.as_ref().map(Currency::as_str))
}

fn image_url<S: serde::Serializer>(url: &Option<ImageUrl>, s: S) -> Result<S::Ok, S::Error> {
    let url = url.map(|u| {
        format!(
            "/api/sales/{}/image?v={}",
            u.sale_id,
            String::from_utf8_lossy(&u.image.version())
        )
    });
    s.serialize_some(&url)
}

impl SaleBody {
    /// The body of `status` at `now` (the store's clock).
    pub fn new(status: &SaleStatus, now: OffsetDateTime) -> Self {
        let state = status.state(now);
        let sale = &status.sale;
        Self {
            sale_id: sale.id.0,
            name: sale.name.clone(),
            state: StateName::of(state),
            ended_reason: EndedReason::of(state),
            starts_at: sale.starts_at,
            ends_at: sale.ends_at,
            stock_total: sale.stock,
            stock_remaining: status.remaining,
            stock_available: status.remaining,
            stock_held: status.held,
            stock_sold: status.sold(),
            per_user_limit: sale.per_user_limit,
            sold_out_at: status.sold_out_at,
            server_time: now,
            description: sale.product.description.clone(),
            price_minor: sale.product.price.map(|p| p.minor()),
            currency: sale.product.price.map(|p| p.currency()),
            image: sale.product.image.map(|image| ImageUrl {
                sale_id: sale.id.0,
                image,
            }),
            checkout_mode: match sale.checkout {
                CheckoutMode::Instant => CheckoutName::Instant,
                CheckoutMode::Hold { .. } => CheckoutName::Hold,
            },
            payment_window_secs: sale.checkout.payment_window().map(|w| w.secs()),
            waitlist_length: if sale.waitlist_open(now) {
                status.waitlist
            } else {
                0
            },
        }
    }

    /// The body as JSON, the same bytes `serde_json` writes for it (a test holds them equal;
    /// see [`crate::http::json`] for why by hand).
    pub fn to_json(&self) -> JsonBuf {
        let description = self.description.as_deref().map_or(0, str::len);
        let mut out = JsonBuf::with_capacity(420 + self.name.len() + description);
        out.raw(b"{\"sale_id\":")
            .number(self.sale_id)
            .raw(b",\"name\":")
            .string(&self.name)
            .raw(match self.state {
                StateName::Upcoming => b",\"state\":\"upcoming\"",
                StateName::Active => b",\"state\":\"active\"",
                StateName::Ended => b",\"state\":\"ended\"",
            })
            .raw(match self.ended_reason {
                None => b",\"ended_reason\":null",
                Some(EndedReason::Time) => b",\"ended_reason\":\"time\"",
                Some(EndedReason::SoldOut) => b",\"ended_reason\":\"sold_out\"",
                Some(EndedReason::Cancelled) => b",\"ended_reason\":\"cancelled\"",
            })
            .raw(b",\"starts_at\":")
            .instant(Some(self.starts_at))
            .raw(b",\"ends_at\":")
            .instant(Some(self.ends_at))
            .raw(b",\"stock_total\":")
            .number(self.stock_total)
            .raw(b",\"stock_remaining\":")
            .number(self.stock_remaining)
            .raw(b",\"stock_available\":")
            .number(self.stock_available)
            .raw(b",\"stock_held\":")
            .number(self.stock_held)
            .raw(b",\"stock_sold\":")
            .number(self.stock_sold)
            .raw(b",\"per_user_limit\":")
            .number(self.per_user_limit)
            .raw(b",\"sold_out_at\":")
            .instant(self.sold_out_at)
            .raw(b",\"server_time\":")
            .instant(Some(self.server_time))
            .raw(b",\"description\":");
        match &self.description {
            Some(text) => out.string(text),
            None => out.raw(b"null"),
        };
        out.raw(b",\"price_minor\":");
        match self.price_minor {
            Some(minor) => out.number(minor),
            None => out.raw(b"null"),
        };
        out.raw(b",\"currency\":");
        match &self.currency {
            Some(code) => out.string(code.as_str()),
            None => out.raw(b"null"),
        };
        out.raw(b",\"image_url\":");
        match &self.image {
            Some(url) => url.write(&mut out),
            None => {
                out.raw(b"null");
            }
        }
        out.raw(match self.checkout_mode {
            CheckoutName::Instant => b",\"checkout_mode\":\"instant\"",
            CheckoutName::Hold => b",\"checkout_mode\":\"hold\"",
        });
        out.raw(b",\"payment_window_secs\":");
        match self.payment_window_secs {
            Some(secs) => out.number(secs),
            None => out.raw(b"null"),
        };
        out.raw(b",\"waitlist_length\":")
            .number(self.waitlist_length)
            .raw(b"}");
        out
    }
}

impl IntoResponse for SaleBody {
    fn into_response(self) -> Response {
        self.to_json().into_response(StatusCode::OK)
    }
}

/// The sale the page shows: the active one, else the next upcoming, else the latest ended.
#[utoipa::path(
    get,
    path = "/api/sale",
    tag = "sales",
    responses(
        (status = 200, description = "The featured sale", body = SaleBody),
        (status = 404, description = "`sale_not_found`: there is no sale", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn get_featured_sale(State(app): State<AppState>) -> Result<SaleBody, ApiError> {
    let statuses = app.store.statuses().await?;
    let now = app.store.now();
    let featured = pick_featured(
        statuses.iter().map(|s| (&*s.sale, s.remaining + s.held)),
        now,
    )
    .map(|sale| sale.id)
    .ok_or(ApiError::SaleNotFound)?;
    let status = statuses
        .iter()
        .find(|s| s.sale.id == featured)
        .ok_or(ApiError::SaleNotFound)?;
    Ok(SaleBody::new(status, now))
}

/// One sale's status.
#[utoipa::path(
    get,
    path = "/api/sales/{sale_id}",
    tag = "sales",
    params(("sale_id" = i64, Path, description = "The sale's id (a positive integer)")),
    responses(
        (status = 200, description = "The sale", body = SaleBody),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn get_sale(
    State(app): State<AppState>,
    SalePath(id): SalePath,
) -> Result<SaleBody, ApiError> {
    let status = app.store.status(id).await?.ok_or(ApiError::SaleNotFound)?;
    Ok(SaleBody::new(&status, app.store.now()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn instant() -> impl Strategy<Value = OffsetDateTime> {
        // Years 1..=9999 and any nanosecond: what RFC 3339 can write.
        (-62_135_596_800i64..253_402_300_799, 0u32..1_000_000_000).prop_map(|(s, ns)| {
            OffsetDateTime::from_unix_timestamp(s).unwrap()
                + time::Duration::nanoseconds(i64::from(ns))
        })
    }

    fn body() -> impl Strategy<Value = SaleBody> {
        (
            (any::<i64>(), any::<String>(), 0usize..3, 0usize..3),
            (
                instant(),
                instant(),
                proptest::option::of(instant()),
                instant(),
            ),
            (any::<u32>(), any::<u32>(), any::<u32>(), any::<[u32; 2]>()),
            (
                any::<bool>(),
                proptest::option::of(60u32..=86_400),
                any::<u32>(),
            ),
            (
                proptest::option::of(any::<String>()),
                proptest::option::of(1..=flashsale_core::money::MAX_PRICE_MINOR),
                proptest::option::of("[A-Z]{3}"),
                proptest::option::of(any::<[u8; 8]>()),
            ),
        )
            .prop_map(
                |(
                    (sale_id, name, state, reason),
                    (starts, ends, sold_out, now),
                    (t, r, l, [h, sold]),
                    (hold, window, waiting),
                    (description, price, currency, image),
                )| {
                    SaleBody {
                        sale_id,
                        name,
                        state: [StateName::Upcoming, StateName::Active, StateName::Ended][state],
                        ended_reason: [None, Some(EndedReason::Time), Some(EndedReason::SoldOut)]
                            [reason],
                        starts_at: starts,
                        ends_at: ends,
                        stock_total: t,
                        stock_remaining: r,
                        stock_available: r,
                        stock_held: h,
                        stock_sold: sold,
                        per_user_limit: l,
                        sold_out_at: sold_out,
                        server_time: now,
                        description: description.map(Arc::from),
                        price_minor: price,
                        currency: currency.map(|c| Currency::parse(&c).unwrap()),
                        image: image.map(|seed| ImageUrl {
                            sale_id,
                            image: an_image(seed),
                        }),
                        checkout_mode: if hold {
                            CheckoutName::Hold
                        } else {
                            CheckoutName::Instant
                        },
                        payment_window_secs: window,
                        waitlist_length: waiting,
                    }
                },
            )
    }

    /// A PNG header of `seed`'s size: a different image (and digest) per seed.
    fn an_image(seed: [u8; 8]) -> ImageRef {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&[1, seed[0], seed[1], seed[2], 1, seed[3], seed[4], seed[5]]);
        png.extend_from_slice(&[8, 6, 0, 0, 0, seed[6], seed[7], 0, 0]);
        ImageRef::of(&png).unwrap()
    }

    proptest! {
        #[test]
        fn the_hand_written_body_is_what_serde_writes(body in body()) {
            let expected = serde_json::to_vec(&body).unwrap();
            let written = body.to_json().into_bytes();
            prop_assert_eq!(
                std::str::from_utf8(&written).unwrap(),
                std::str::from_utf8(&expected).unwrap()
            );
        }
    }

    #[test]
    fn names_that_need_escaping_are_escaped_as_serde_does() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        for name in [
            "\"quoted\"",
            "back\\slash",
            "tab\tnew\nline",
            "\u{1}\u{1f}",
            "ünï 🎉",
        ] {
            let body = SaleBody {
                sale_id: 7,
                name: name.to_owned(),
                state: StateName::Active,
                ended_reason: None,
                starts_at: at,
                ends_at: at,
                stock_total: 1,
                stock_remaining: 0,
                stock_available: 0,
                stock_held: 1,
                stock_sold: 0,
                per_user_limit: 1,
                sold_out_at: Some(at),
                server_time: at,
                description: Some(Arc::from(name)),
                price_minor: Some(1999),
                currency: Some(Currency::parse("EUR").unwrap()),
                image: Some(ImageUrl {
                    sale_id: 7,
                    image: an_image([0; 8]),
                }),
                checkout_mode: CheckoutName::Hold,
                payment_window_secs: Some(600),
                waitlist_length: 3,
            };
            assert_eq!(
                body.to_json().into_bytes(),
                serde_json::to_vec(&body).unwrap(),
                "{name:?}"
            );
        }
    }
}
