//! Buying (`POST /api/sales/{sale_id}/orders`) and "did I get one?"
//! (`GET /api/sales/{sale_id}/orders/{user_id}`, and `.../orders/me` for a signed-in buyer).
//!
//! Who buys depends on `--identity` ([`crate::http::identity`]): in guest mode the body's
//! `user_id`; in jwt mode the token's buyer (checked before the body is read), with a body
//! `user_id` that names someone else answered 403 `forbidden`, and only the caller's own
//! orders readable.
//!
//! `create_order` is the hot path: parse, one store call, map the outcome. No lock, no
//! per-request setup beyond parsing: metric handles and the fixed rejection bodies are built
//! once, and the body is borrowed from the request bytes where it has no escapes. The store
//! owns the purchase once it may take stock (it runs on the store's tracker even if the client
//! goes away), and the in-flight slot and the address's share travel with it (see `purchase`).

use crate::http::AppState;
use crate::http::error::{ApiError, Challenge};
use crate::http::extract::{BuyerPath, SalePath, idempotency_key, json_body, parse_object};
use crate::http::identity::Caller;
use crate::http::json::JsonBuf;
use crate::http::limits::refuse_unread;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flashsale_core::{OrderStatus, Outcome, Quantity, Rejection, SaleId, UserId, sale};
use flashsale_store::{Attempt, Order, PurchaseHold, PurchaseOutcome};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// The purchase request body as sent, before validation.
#[derive(Deserialize)]
struct RawOrder<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(default)]
    quantity: Option<i64>,
}

/// The 201 body's serde form: the reference the hand-written [`confirmed_json`] is tested
/// against.
#[cfg(test)]
#[derive(Serialize)]
struct ConfirmedBody<'a> {
    code: &'static str,
    order: &'a Order,
}

/// The answer of a durable order: `confirmed` (instant mode) or `reserved` (hold mode).
fn admitted(order: &Order) -> Outcome {
    match order.status {
        OrderStatus::Reserved => Outcome::Reserved,
        _ => Outcome::Confirmed,
    }
}

/// The 201 body, written by hand (see [`crate::http::json`]): the bytes of [`ConfirmedBody`].
fn confirmed_json(order: &Order) -> JsonBuf {
    let mut out = JsonBuf::with_capacity(240 + order.user_id.as_str().len());
    let mut uuid = uuid::Uuid::encode_buffer();
    out.raw(b"{\"code\":")
        .string(admitted(order).code())
        .raw(b",\"order\":{\"order_id\":\"")
        .raw(
            order
                .order_id
                .hyphenated()
                .encode_lower(&mut uuid)
                .as_bytes(),
        )
        .raw(b"\",\"sale_id\":")
        .number(order.sale_id.0)
        .raw(b",\"user_id\":")
        .string(order.user_id.as_str())
        .raw(b",\"quantity\":")
        .number(order.quantity)
        .raw(b",\"created_at\":")
        .instant(Some(order.created_at))
        .raw(b",\"status\":")
        .string(order.status.as_str());
    if let Some(expires_at) = order.expires_at {
        out.raw(b",\"expires_at\":").instant(Some(expires_at));
    }
    if let Some(payment_ref) = &order.payment_ref {
        out.raw(b",\"payment_ref\":").string(payment_ref.as_str());
    }
    out.raw(b"}}");
    out
}

/// The purchase request body in a token mode: the buyer comes from the token, so `user_id`
/// may be left out (if present, it must name the same buyer).
#[derive(Deserialize)]
struct RawTokenOrder<'a> {
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
    #[serde(default)]
    quantity: Option<i64>,
}

/// The body of `GET /api/sales/{sale_id}/orders/{user_id}`.
#[derive(Serialize)]
struct BuyerOrdersBody<'a> {
    sale_id: SaleId,
    user_id: &'a UserId,
    orders: &'a [Order],
}

/// Attempts to buy.
#[utoipa::path(
    post,
    path = "/api/sales/{sale_id}/orders",
    tag = "orders",
    params(
        ("sale_id" = i64, Path, description = "The sale's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII; the same key with the same body replays the first answer"),
    ),
    request_body = crate::http::openapi::OrderRequestDoc,
    responses(
        (status = 201, description = "`confirmed`: the order is durable; in hold mode `reserved`: the order is durable and its units are held until `expires_at`", body = crate::http::openapi::ConfirmedDoc),
        (status = 400, description = "`invalid_request`", body = crate::http::openapi::PurchaseErrorDoc),
        (status = 401, description = "`unauthenticated` (`--identity jwt`): no valid bearer token; `WWW-Authenticate` set", body = crate::http::openapi::PurchaseErrorDoc),
        (status = 403, description = "`forbidden` (`--identity jwt`): the body's `user_id` is not the token's buyer", body = crate::http::openapi::PurchaseErrorDoc),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::PurchaseErrorDoc),
        (status = 408, description = "`body_timeout`: the body did not arrive in time; nothing taken", body = crate::http::openapi::PurchaseErrorDoc),
        (status = 409, description = "`already_purchased`, `limit_exceeded`, `sold_out`, `insufficient_stock`, `sale_not_active` or `address_limit_reached`", body = crate::http::openapi::PurchaseErrorDoc),
        (status = 413, description = "`payload_too_large`", body = crate::http::openapi::PurchaseErrorDoc),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::openapi::PurchaseErrorDoc),
        (status = 422, description = "`idempotency_key_reused`", body = crate::http::openapi::PurchaseErrorDoc),
        (status = 429, description = "`rate_limited`: too many attempts from this address or buyer; `Retry-After` set", body = crate::http::openapi::PurchaseErrorDoc),
        (status = 503, description = "`overloaded` or `unavailable` (nothing was taken), or `timeout` (outcome unknown); `Retry-After` set", body = crate::http::openapi::PurchaseErrorDoc),
    )
)]
pub async fn create_order(
    State(app): State<AppState>,
    SalePath(sale_id): SalePath,
    request: Request,
) -> Response {
    let Ok(slot) = Arc::clone(&app.purchase_slots).try_acquire_owned() else {
        app.metrics.record_purchase(Outcome::Overloaded);
        // Shed before reading the body: drain it (or close) so keep-alive clients can go on.
        return refuse_unread(request, ApiError::Overloaded.into_response()).await;
    };
    let result = purchase(&app, sale_id, request, slot).await;
    match result {
        Ok(order) => {
            app.metrics.record_purchase(admitted(&order));
            confirmed_json(&order).into_response(StatusCode::CREATED)
        }
        Err(e) => {
            if let Some(outcome) = e.outcome() {
                app.metrics.record_purchase(outcome);
            }
            e.into_response()
        }
    }
}

async fn purchase(
    app: &AppState,
    sale_id: SaleId,
    request: Request,
    slot: OwnedSemaphorePermit,
) -> Result<Order, ApiError> {
    let idempotency_key = idempotency_key(&request)?;
    let client = app.limiter.client_of(&request);
    // Before the body is read: an unauthenticated client gets nothing more from us.
    let verified = app.identity.caller(request.headers(), || app.store.now())?;
    let token_mode = verified.is_some();
    let body = json_body(request, app.body_timeout).await?;
    let (user_id, raw_quantity) = match verified {
        None => {
            let raw: RawOrder<'_> = parse_object(&body)?;
            (UserId::parse(&raw.user_id)?, raw.quantity)
        }
        Some(buyer) => {
            let raw: RawTokenOrder<'_> = parse_object(&body)?;
            // Naming oneself is fine (older clients send it); naming anyone else is not.
            if let Some(named) = raw.user_id
                && UserId::parse(&named)? != buyer
            {
                return Err(ApiError::Forbidden);
            }
            (buyer, raw.quantity)
        }
    };
    let quantity = match raw_quantity {
        None => Quantity::ONE,
        Some(n) => match Quantity::parse(n, sale::MAX_PER_USER_LIMIT) {
            Ok(quantity) => quantity,
            Err(_) => return Err(bad_quantity(app, sale_id).await),
        },
    };
    let share = if app.limiter.enabled() {
        // The buyer's bucket and the address's share are charged only for a sale that exists
        // and is inside its window: an attempt refused for any other reason must not spend
        // anyone's budget (naming a victim's id against a missing sale locked them out).
        let sale = app
            .known_sales
            .get(app.store.as_ref(), sale_id)
            .await?
            .ok_or(ApiError::SaleNotFound)?;
        let now = app.store.now();
        if sale.starts_at <= now && now < sale.ends_at {
            if token_mode {
                app.limiter.check_verified_buyer(&user_id)?;
            } else {
                app.limiter.check_buyer(&user_id, client)?;
            }
            app.limiter.reserve_share(&sale, client, quantity.get())?
        } else {
            None
        }
    } else {
        None
    };
    let attempt = Attempt {
        sale_id,
        user_id,
        quantity,
        idempotency_key,
    };
    // The store runs the purchase to its end even if this future is dropped (a client hanging
    // up, the request timeout), and holds the in-flight slot and the address's share until
    // then: abandoned purchases still count against `--max-inflight-purchases`, and the share
    // stays reserved exactly when the order is confirmed.
    let hold = PurchaseHold::new(move |outcome| {
        if let (Ok(PurchaseOutcome::Confirmed(_)), Some(share)) = (outcome, share) {
            share.keep();
        }
        drop(slot);
    });
    let outcome = app.store.purchase_holding(attempt, hold).await?;
    match outcome {
        PurchaseOutcome::Confirmed(order) => Ok(order),
        PurchaseOutcome::Rejected { rejection, orders } => Err(match rejection {
            Rejection::NotActive(reason) => ApiError::SaleNotActive(reason),
            Rejection::SoldOut => ApiError::SoldOut,
            Rejection::AlreadyPurchased => ApiError::AlreadyPurchased(orders),
            Rejection::LimitExceeded { allowed } => ApiError::LimitExceeded { allowed, orders },
            Rejection::InsufficientStock { remaining } => ApiError::InsufficientStock {
                stock_remaining: remaining,
            },
        }),
        PurchaseOutcome::SaleNotFound => Err(ApiError::SaleNotFound),
        PurchaseOutcome::QuantityAboveLimit { limit } => {
            Err(flashsale_core::ValidationError::QuantityOutOfRange { limit }.into())
        }
        PurchaseOutcome::IdempotencyKeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// The answer to a quantity below 1 or above every sale's limit, in the sale's own numbers (a
/// rare, wrong request: reading the sale here costs the hot path nothing).
async fn bad_quantity(app: &AppState, sale_id: SaleId) -> ApiError {
    match app.store.status(sale_id).await {
        Ok(Some(status)) => flashsale_core::ValidationError::QuantityOutOfRange {
            limit: status.sale.per_user_limit,
        }
        .into(),
        Ok(None) => ApiError::SaleNotFound,
        Err(e) => e.into(),
    }
}

/// A buyer's committed orders in a sale.
#[utoipa::path(
    get,
    path = "/api/sales/{sale_id}/orders/{user_id}",
    tag = "orders",
    params(
        ("sale_id" = i64, Path, description = "The sale's id"),
        ("user_id" = String, Path, description = "The buyer's id (normalised as in docs/api.md)", min_length = 1, max_length = 254, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb][^\\u0000-\\u001f\\u007f-\\u009f]*$"),
    ),
    responses(
        (status = 200, description = "The buyer's orders", body = crate::http::openapi::BuyerOrdersDoc),
        (status = 400, description = "`invalid_request`: bad user id", body = crate::http::openapi::ErrorDoc),
        (status = 401, description = "`unauthenticated` (`--identity jwt`): no valid bearer token; `WWW-Authenticate` set", body = crate::http::openapi::ErrorDoc),
        (status = 403, description = "`forbidden` (`--identity jwt`): another buyer's orders", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`order_not_found` or `sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`; `Retry-After` set", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable` or `timeout`; `Retry-After` set", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn get_orders(
    State(app): State<AppState>,
    Caller(caller): Caller,
    BuyerPath(sale_id, user_id): BuyerPath,
) -> Result<Response, ApiError> {
    if caller.is_some_and(|me| me != user_id) {
        return Err(ApiError::Forbidden);
    }
    orders_of(&app, sale_id, &user_id).await
}

/// The signed-in caller's committed orders in a sale.
#[utoipa::path(
    get,
    path = "/api/sales/{sale_id}/orders/me",
    tag = "orders",
    params(
        ("sale_id" = i64, Path, description = "The sale's id"),
    ),
    responses(
        (status = 200, description = "The caller's orders", body = crate::http::openapi::BuyerOrdersDoc),
        (status = 401, description = "`unauthenticated`: no valid bearer token, or `--identity guest` (which signs nobody in); `WWW-Authenticate` set", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`order_not_found` or `sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`; `Retry-After` set", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable` or `timeout`; `Retry-After` set", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn get_my_orders(
    State(app): State<AppState>,
    Caller(caller): Caller,
    SalePath(sale_id): SalePath,
) -> Result<Response, ApiError> {
    let me = caller.ok_or(ApiError::Unauthenticated(Challenge::GuestMode))?;
    orders_of(&app, sale_id, &me).await
}

/// The 200 body with `user_id`'s orders, or 404.
async fn orders_of(
    app: &AppState,
    sale_id: SaleId,
    user_id: &UserId,
) -> Result<Response, ApiError> {
    let orders = app
        .store
        .orders(sale_id, user_id)
        .await?
        .ok_or(ApiError::SaleNotFound)?;
    if orders.is_empty() {
        return Err(ApiError::OrderNotFound);
    }
    let body = BuyerOrdersBody {
        sale_id,
        user_id,
        orders: &orders,
    };
    Ok(Json(body).into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::OffsetDateTime;

    proptest! {
        #[test]
        fn the_hand_written_confirmation_is_what_serde_writes(
            id in any::<u128>(),
            sale in any::<i64>(),
            user in "[^\\p{Cc}\\s]{1,40}",
            quantity in any::<u32>(),
            seconds in -62_135_596_800i64..253_402_214_399,
            nanos in 0i64..1_000_000_000,
            status in 0usize..5,
            window in proptest::option::of(60i64..=86_400),
            paid_by in proptest::option::of("[!-~]{1,40}"),
        ) {
            let Ok(user_id) = UserId::parse(&user) else { return Ok(()) };
            let order = Order {
                order_id: uuid::Uuid::from_u128(id),
                sale_id: SaleId(sale),
                user_id,
                quantity,
                created_at: OffsetDateTime::from_unix_timestamp(seconds).unwrap()
                    + time::Duration::nanoseconds(nanos),
                status: OrderStatus::ALL[status],
                expires_at: window.map(|w| {
                    OffsetDateTime::from_unix_timestamp(seconds).unwrap()
                        + time::Duration::seconds(w)
                }),
                payment_ref: paid_by.map(|r| flashsale_core::PaymentRef::parse(&r).unwrap()),
                offered: false,
            };
            let expected = serde_json::to_vec(&ConfirmedBody {
                code: admitted(&order).code(),
                order: &order,
            })
            .unwrap();
            let written = confirmed_json(&order).into_bytes();
            prop_assert_eq!(
                std::str::from_utf8(&written).unwrap(),
                std::str::from_utf8(&expected).unwrap()
            );
        }
    }
}
