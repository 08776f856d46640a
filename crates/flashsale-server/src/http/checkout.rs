//! Checkout (SPEC 9): orders as a resource (`GET` and `DELETE /api/orders/{order_id}`), the
//! payment webhook (`POST /api/payments/webhook`, only with `--payment-webhook-secret`) and
//! the demo payment route (`POST /api/orders/{order_id}/pay`, only without it).
//!
//! Every route ends in [`decide`]: one [`SaleStore::order_event`] call, whose answer is mapped
//! here, so the webhook and the demo route pay through the same code path. The store decides
//! (CO-4..CO-8); this module only checks who asks and what was sent.
//!
//! In guest mode the order id is the capability: whoever holds it may read, cancel or
//! demo-pay the order. With identity the caller must own it, else `order_not_found`, the same
//! answer as for an id that does not exist, so nothing is learnt (CO-8).

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{json_body, parse_object};
use crate::http::identity::Caller;
use axum::Json;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use flashsale_core::payment_signature::SIGNATURE_HEADER;
use flashsale_core::{
    Canceller, CheckoutOutcome, Money, OrderEvent, PaymentRef, TransitionError, UserId,
};
use flashsale_store::{Order, OrderEventOutcome, SaleStore};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use utoipa::ToSchema;
use uuid::Uuid;

/// The `{order_id}` of a route: an order id that is not a UUID names no order (404).
pub struct OrderPath(pub Uuid);

impl FromRequestParts<AppState> for OrderPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        let path = parts.uri.path();
        // `/api/orders/{order_id}` or `/api/orders/{order_id}/pay`.
        let id = path
            .strip_prefix("/api/orders/")
            .map(|rest| rest.split('/').next().unwrap_or(rest))
            .and_then(|raw| Uuid::try_parse(raw).ok())
            .ok_or_else(not_found)?;
        Ok(Self(id))
    }
}

/// The answer of an event that was decided: its code and the order after it
/// ([`crate::http::openapi::OrderEventDoc`]).
#[derive(Serialize)]
pub struct OrderEventBody<'a> {
    /// `paid`, `payment_failed`, `cancelled` or `expired`.
    pub code: &'static str,
    /// The order as it is now.
    pub order: &'a Order,
}

/// The body of `GET /api/orders/{order_id}` ([`crate::http::openapi::OrderByIdDoc`]).
#[derive(Serialize)]
pub struct OrderBody<'a> {
    /// The order with its status.
    pub order: &'a Order,
}

/// The body the payment system posts to the webhook.
#[derive(Deserialize, ToSchema)]
pub struct WebhookRequest {
    /// The order paid for.
    order_id: String,
    /// `succeeded` or `failed`.
    #[schema(value_type = PaymentStatus)]
    status: String,
    /// The payment system's reference for this payment (1-255 visible ASCII); a redelivery
    /// carries the same one.
    payment_ref: String,
    /// The amount paid, in minor units of `currency`.
    amount_minor: i64,
    /// ISO 4217 code, three uppercase letters.
    currency: String,
}

/// What the payment system says of a payment.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// The money was taken: the order becomes `paid`.
    Succeeded,
    /// The payment failed: the reservation stays payable until it expires.
    Failed,
}

/// The optional body of the demo payment route.
#[derive(Deserialize, ToSchema, Default)]
pub struct DemoPaymentRequest {
    /// `succeeded` (the default) or `failed`, to try the failure path.
    #[serde(default)]
    #[schema(value_type = Option<PaymentStatus>)]
    status: Option<String>,
}

fn not_found() -> ApiError {
    ApiError::Checkout {
        outcome: CheckoutOutcome::OrderNotFound,
        message: Cow::Borrowed("there is no such order"),
        order: None,
    }
}

/// The order `id` if the caller may see it: any holder of the id in guest mode, only its
/// buyer with identity.
async fn visible_order(
    store: &dyn SaleStore,
    id: Uuid,
    caller: Option<&UserId>,
) -> Result<Order, ApiError> {
    let order = store.order(id).await?.ok_or_else(not_found)?;
    if caller.is_some_and(|me| *me != order.user_id) {
        return Err(not_found());
    }
    Ok(order)
}

/// Sends `event` for order `id` to the store and answers what it decided.
async fn decide(app: &AppState, id: Uuid, event: OrderEvent) -> Result<Response, ApiError> {
    match app.store.order_event(id, event).await? {
        OrderEventOutcome::NotFound => Err(not_found()),
        OrderEventOutcome::Decided {
            result: Ok(transition),
            order,
        } => {
            let outcome = transition.outcome();
            let status = StatusCode::from_u16(outcome.status()).unwrap_or(StatusCode::OK);
            let body = OrderEventBody {
                code: outcome.code(),
                order: &order,
            };
            Ok((status, Json(body)).into_response())
        }
        OrderEventOutcome::Decided {
            result: Err(TransitionError::NotOwner),
            ..
        } => Err(not_found()),
        OrderEventOutcome::Decided {
            result: Err(refusal),
            order,
        } => Err(ApiError::Checkout {
            outcome: refusal.outcome(),
            message: Cow::Owned(refusal.to_string()),
            order: Some(Box::new(order)),
        }),
    }
}

/// One order, with its status.
#[utoipa::path(
    get,
    path = "/api/orders/{order_id}",
    tag = "orders",
    params(("order_id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = crate::http::openapi::OrderByIdDoc),
        (status = 401, description = "`unauthenticated` (with identity)", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`order_not_found`: no such order, or (with identity) not the caller's", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable` or `timeout`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn get_order(
    State(app): State<AppState>,
    Caller(caller): Caller,
    OrderPath(id): OrderPath,
) -> Result<Response, ApiError> {
    let order = visible_order(&*app.store, id, caller.as_ref()).await?;
    Ok(Json(OrderBody { order: &order }).into_response())
}

/// The buyer releases their reservation (CO-8).
#[utoipa::path(
    delete,
    path = "/api/orders/{order_id}",
    tag = "orders",
    params(("order_id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "`cancelled`: the units are released", body = crate::http::openapi::OrderEventDoc),
        (status = 401, description = "`unauthenticated` (with identity)", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`order_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 409, description = "`order_paid`, `order_cancelled`, `reservation_expired` or `order_confirmed` (an instant-mode order); `order` is the order as it is", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable` or `timeout`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn cancel_order(
    State(app): State<AppState>,
    Caller(caller): Caller,
    OrderPath(id): OrderPath,
) -> Result<Response, ApiError> {
    let by = match caller {
        Some(buyer) => Canceller::Buyer(buyer),
        None => Canceller::OrderIdHolder,
    };
    decide(&app, id, OrderEvent::Cancel { by }).await
}

/// The payment system confirms a payment (SPEC 9, CO-7, CO-11).
#[utoipa::path(
    post,
    path = "/api/payments/webhook",
    tag = "payments",
    params(
        ("Flashsale-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<raw body>\")>`; several `v1` allowed"),
    ),
    request_body = WebhookRequest,
    responses(
        (status = 201, description = "`paid` (also for a redelivery of the paying event)", body = crate::http::openapi::OrderEventDoc),
        (status = 200, description = "`payment_failed`: the reservation stays payable until it expires", body = crate::http::openapi::OrderEventDoc),
        (status = 400, description = "`invalid_request`", body = crate::http::openapi::ErrorDoc),
        (status = 401, description = "`signature_missing`, `signature_malformed`, `signature_stale` or `signature_mismatch`: nothing changed", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`order_not_found`; `not_found` when no webhook secret is set (the webhook is off)", body = crate::http::openapi::ErrorDoc),
        (status = 409, description = "`amount_mismatch`, `reservation_expired`, `order_cancelled`, `order_paid` or `order_confirmed`: nothing changed", body = crate::http::openapi::ErrorDoc),
        (status = 413, description = "`payload_too_large`", body = crate::http::openapi::ErrorDoc),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable` or `timeout`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn payment_webhook(
    State(app): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let Some(secret) = app.webhook_secret.clone() else {
        return Err(ApiError::NotFound);
    };
    let signature = request
        .headers()
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .map(str::to_owned);
    let body = json_body(request, app.body_timeout).await?;
    // The signature first: nothing of an unauthenticated body is believed, not even its shape.
    secret
        .verify(signature.as_deref(), &body, app.store.now())
        .map_err(|refusal| ApiError::Checkout {
            outcome: refusal.outcome(),
            message: Cow::Owned(refusal.to_string()),
            order: None,
        })?;
    let raw: WebhookRequest = parse_object(&body)?;
    let id = Uuid::try_parse(&raw.order_id)
        .map_err(|_| invalid("order_id must be an order's id (a UUID)"))?;
    let payment_ref = PaymentRef::parse(&raw.payment_ref)?;
    let event = match raw.status.as_str() {
        "succeeded" => OrderEvent::Pay {
            amount: Money::parse(raw.amount_minor, &raw.currency)?,
            payment_ref,
        },
        "failed" => OrderEvent::PaymentFailed { payment_ref },
        _ => return Err(invalid("status must be succeeded or failed")),
    };
    decide(&app, id, event).await
}

/// Pays a reservation without a payment provider (demo mode: on only while no webhook secret
/// is set), through the same step as the webhook: a payment of exactly the order's total, with
/// the reference `demo-<order_id>`, so paying twice is a redelivery.
#[utoipa::path(
    post,
    path = "/api/orders/{order_id}/pay",
    tag = "payments",
    params(("order_id" = Uuid, Path, description = "The order's id")),
    request_body(content = Option<DemoPaymentRequest>, description = "Optional; `{\"status\":\"failed\"}` tries the failure path"),
    responses(
        (status = 201, description = "`paid`", body = crate::http::openapi::OrderEventDoc),
        (status = 200, description = "`payment_failed`", body = crate::http::openapi::OrderEventDoc),
        (status = 400, description = "`invalid_request`", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`order_not_found`; `not_found` when a webhook secret is set (the demo route is off)", body = crate::http::openapi::ErrorDoc),
        (status = 409, description = "`reservation_expired`, `order_cancelled`, `order_paid` or `order_confirmed`", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable` or `timeout`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn demo_payment(
    State(app): State<AppState>,
    Caller(caller): Caller,
    OrderPath(id): OrderPath,
    request: Request,
) -> Result<Response, ApiError> {
    if app.webhook_secret.is_some() {
        return Err(ApiError::NotFound);
    }
    let raw = if request
        .headers()
        .contains_key(axum::http::header::CONTENT_TYPE)
    {
        parse_object::<DemoPaymentRequest>(&json_body(request, app.body_timeout).await?)?
    } else {
        DemoPaymentRequest::default()
    };
    let order = visible_order(&*app.store, id, caller.as_ref()).await?;
    let payment_ref = PaymentRef::parse(&format!("demo-{id}"))?;
    let event = match raw.status.as_deref() {
        None | Some("succeeded") => {
            let status = app.store.status(order.sale_id).await?;
            let total = status
                .and_then(|s| s.sale.product.price)
                .and_then(|price| price.total(order.quantity));
            let Some(amount) = total else {
                // No price: an instant-mode order, which takes no payment.
                return Err(ApiError::Checkout {
                    outcome: CheckoutOutcome::OrderConfirmed,
                    message: Cow::Borrowed(
                        "the order was confirmed at purchase (instant mode): nothing to pay",
                    ),
                    order: Some(Box::new(order)),
                });
            };
            OrderEvent::Pay {
                amount,
                payment_ref,
            }
        }
        Some("failed") => OrderEvent::PaymentFailed { payment_ref },
        Some(_) => return Err(invalid("status must be succeeded or failed")),
    };
    decide(&app, id, event).await
}

fn invalid(message: &'static str) -> ApiError {
    ApiError::InvalidRequest(Cow::Borrowed(message))
}
