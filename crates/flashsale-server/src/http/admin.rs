//! Operators: `POST /api/admin/sales` (create) and `GET /api/admin/sales/{sale_id}/summary`.
//! Both need the admin bearer token ([`AdminAuth`]), checked before anything else.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{
    AdminAuth, MAX_SALE_BODY_BYTES, SalePath, idempotency_key, json_body_within, parse_object,
};
use crate::http::sales::{EndedReason, SaleBody, StateName};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use flashsale_core::{Checkout, NewSale, Outcome, Product};
use flashsale_store::RejectionCounts;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

/// The body of `POST /api/admin/sales`.
#[derive(Deserialize, ToSchema)]
pub struct CreateSaleRequest {
    /// What is on sale (1-200 characters).
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// Start, RFC 3339.
    #[schema(format = DateTime)]
    starts_at: String,
    /// End, RFC 3339, strictly after the start.
    #[schema(format = DateTime)]
    ends_at: String,
    /// Units on sale (1..=1,000,000,000).
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    stock: i64,
    /// Units one buyer may hold (1..=1,000, default 1).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    per_user_limit: Option<i64>,
    /// What the buyer reads about the product: plain text (never markup), at most 2,000
    /// characters; empty or absent for none.
    #[serde(default)]
    #[schema(max_length = 2000)]
    description: Option<String>,
    /// The unit price shown to buyers, in minor units of `currency` (1..=9,007,199,254,740);
    /// given with `currency` or not at all.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 9_007_199_254_740_i64)]
    price_minor: Option<i64>,
    /// The price's ISO 4217 code (three uppercase letters, such as `EUR`); with `price_minor`.
    #[serde(default)]
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
    /// `instant` (the default: a purchase is final) or `hold` (a purchase reserves units that
    /// must be paid for within `payment_window_secs`; needs `price_minor` and `currency`).
    /// Fixed at creation.
    #[serde(default)]
    #[schema(value_type = Option<crate::http::sales::CheckoutName>)]
    checkout_mode: Option<String>,
    /// Hold mode only: how long a reservation waits for its payment (60..=86,400 seconds).
    #[serde(default)]
    #[schema(minimum = 60, maximum = 86_400)]
    payment_window_secs: Option<i64>,
}

/// Rejections by reason: one field per counted outcome ([`Outcome::COUNTED`], in that order),
/// named by its code. Its OpenAPI schema is derived from the same list.
#[derive(Serialize)]
#[serde(transparent)]
pub struct RejectionsBody(RejectionCounts);

impl From<RejectionCounts> for RejectionsBody {
    fn from(counts: RejectionCounts) -> Self {
        Self(counts)
    }
}

impl PartialSchema for RejectionsBody {
    fn schema() -> RefOr<Schema> {
        let mut object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Rejections by reason."));
        for outcome in Outcome::COUNTED {
            let count = ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .description(Some(format!("`{}` answers.", outcome.code())))
                .minimum(Some(0));
            object = object
                .property(outcome.code(), count)
                .required(outcome.code());
        }
        RefOr::T(Schema::Object(object.build()))
    }
}

impl ToSchema for RejectionsBody {}

/// The operator's summary of a sale.
#[derive(Serialize, ToSchema)]
pub struct SummaryBody {
    /// The sale's id.
    pub sale_id: i64,
    /// What is on sale.
    pub name: String,
    /// The state at `server_time`.
    pub state: StateName,
    /// Why it ended, when ended.
    pub ended_reason: Option<EndedReason>,
    /// Units on sale.
    pub stock_total: u32,
    /// Units not yet taken.
    pub stock_remaining: u32,
    /// Attempts decided (replays excluded).
    pub attempts: u64,
    /// Orders committed.
    pub confirmed_orders: u64,
    /// Units committed.
    pub confirmed_units: u64,
    /// Rejections by reason.
    pub rejections: RejectionsBody,
    /// Hold mode: units held by live reservations (0 in instant mode).
    pub stock_held: u32,
    /// Units sold (paid, or confirmed in instant mode).
    pub stock_sold: u32,
    /// Hold mode: reservations and the waitlist (all 0 in instant mode).
    pub checkout: CheckoutCountsBody,
    /// When the last unit was taken.
    #[serde(with = "time::serde::rfc3339::option")]
    pub sold_out_at: Option<OffsetDateTime>,
    /// The store's clock.
    #[serde(with = "time::serde::rfc3339")]
    pub server_time: OffsetDateTime,
}

/// A hold-mode sale's checkout counters (SPEC 9), counted from durable orders and the
/// waitlist.
#[derive(Serialize, ToSchema)]
pub struct CheckoutCountsBody {
    /// Reservations made: by purchases and by waitlist offers.
    pub reserved: u64,
    /// Reservations paid.
    pub paid: u64,
    /// Reservations that expired unpaid.
    pub expired: u64,
    /// Reservations their buyer cancelled.
    pub cancelled: u64,
    /// Joins of the waitlist (a buyer who left and joined again counts twice).
    pub waitlist_joins: u64,
    /// Reservations made by waitlist offers.
    pub offers_made: u64,
    /// Offered reservations that were paid.
    pub offers_taken: u64,
    /// Buyers waiting now.
    pub waitlist_length: u32,
}

/// Creates a sale.
#[utoipa::path(
    post,
    path = "/api/admin/sales",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII; creating again with the same key and body answers the sale first created with it, not a second sale"),
    ),
    request_body = CreateSaleRequest,
    responses(
        (status = 201, description = "The new sale (or, with a key seen before, the sale first created with it)", body = SaleBody),
        (status = 400, description = "`invalid_request`", body = crate::http::openapi::ErrorDoc),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorDoc),
        (status = 408, description = "`body_timeout`", body = crate::http::openapi::ErrorDoc),
        (status = 413, description = "`payload_too_large`", body = crate::http::openapi::ErrorDoc),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::openapi::ErrorDoc),
        (status = 422, description = "`idempotency_key_reused`: the key created a different sale", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`: too many failed logins from this address", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn create_sale(
    State(app): State<AppState>,
    _: AdminAuth,
    request: Request,
) -> Result<(StatusCode, Json<SaleBody>), ApiError> {
    let key = idempotency_key(&request)?;
    let body = json_body_within(request, app.body_timeout, MAX_SALE_BODY_BYTES).await?;
    let raw: CreateSaleRequest = parse_object(&body)?;
    let mut new = NewSale::parse(
        &raw.name,
        instant("starts_at", &raw.starts_at)?,
        instant("ends_at", &raw.ends_at)?,
        raw.stock,
        raw.per_user_limit.unwrap_or(1),
    )?
    .with_product(Product::parse(
        raw.description.as_deref(),
        raw.price_minor,
        raw.currency.as_deref(),
    )?)
    .with_checkout(Checkout::parse(
        raw.checkout_mode.as_deref(),
        raw.payment_window_secs,
        raw.price_minor,
        raw.currency.as_deref(),
    )?);
    if let Some(key) = key {
        new = new.with_creation_key(key);
    }
    let sale = app.store.create_sale(new.clone()).await?;
    if !new.describes(&sale) {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let status = app.store.status(sale.id).await?.ok_or_else(|| {
        ApiError::Internal(format!("sale {} vanished right after creation", sale.id))
    })?;
    Ok((
        StatusCode::CREATED,
        Json(SaleBody::new(&status, app.store.now())),
    ))
}

fn instant(field: &str, raw: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| {
        ApiError::InvalidRequest(
            format!("{field} must be an RFC 3339 instant such as 2026-11-22T12:00:00Z").into(),
        )
    })
}

/// A sale's counters for operators.
#[utoipa::path(
    get,
    path = "/api/admin/sales/{sale_id}/summary",
    tag = "admin",
    security(("admin_token" = [])),
    params(("sale_id" = i64, Path, description = "The sale's id")),
    responses(
        (status = 200, description = "The summary", body = SummaryBody),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`: too many failed logins from this address", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn get_summary(
    State(app): State<AppState>,
    _: AdminAuth,
    SalePath(id): SalePath,
) -> Result<Json<SummaryBody>, ApiError> {
    let summary = app.store.summary(id).await?.ok_or(ApiError::SaleNotFound)?;
    let status = SaleBody::new(&summary.status, app.store.now());
    Ok(Json(SummaryBody {
        sale_id: status.sale_id,
        name: status.name,
        state: status.state,
        ended_reason: status.ended_reason,
        stock_total: status.stock_total,
        stock_remaining: status.stock_remaining,
        attempts: summary.attempts,
        confirmed_orders: summary.confirmed_orders,
        confirmed_units: summary.confirmed_units,
        rejections: summary.rejections.into(),
        stock_held: status.stock_held,
        stock_sold: status.stock_sold,
        checkout: CheckoutCountsBody {
            reserved: summary.checkout.reserved,
            paid: summary.checkout.paid,
            expired: summary.checkout.expired,
            cancelled: summary.checkout.cancelled,
            waitlist_joins: summary.checkout.waitlist_joins,
            offers_made: summary.checkout.offers_made,
            offers_taken: summary.checkout.offers_taken,
            waitlist_length: status.waitlist_length,
        },
        sold_out_at: status.sold_out_at,
        server_time: status.server_time,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_rejections_are_the_counted_outcomes_in_order_with_their_counts() {
        let mut counts = RejectionCounts::default();
        for (i, outcome) in Outcome::COUNTED.into_iter().enumerate() {
            counts.set(outcome, i as u64 + 1);
        }
        // Outcomes that are not counted never show up.
        counts.record(Outcome::RateLimited);
        let body = serde_json::to_string(&RejectionsBody::from(counts)).unwrap();
        let expected: Vec<String> = Outcome::COUNTED
            .into_iter()
            .enumerate()
            .map(|(i, o)| format!("\"{}\":{}", o.code(), i + 1))
            .collect();
        assert_eq!(body, format!("{{{}}}", expected.join(",")));
        assert_eq!(
            body,
            r#"{"sale_not_active":1,"sold_out":2,"already_purchased":3,"limit_exceeded":4,"insufficient_stock":5,"unavailable":6}"#
        );
    }
}
