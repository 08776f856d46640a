//! The waitlist (SPEC 9, CO-9, CO-10): `POST /api/sales/{sale_id}/waitlist` joins,
//! `GET .../waitlist/{user_id}` tells the place (or the reservation an offer made), `DELETE`
//! leaves.
//!
//! The store decides each request at its one atomic point; this module checks who asks and maps
//! the answer. Who asks follows the purchase route: in guest mode the body's or the path's
//! `user_id`; with identity the token's buyer, and another buyer's place is 403 `forbidden`.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{BuyerPath, SalePath, json_body, parse_object};
use crate::http::identity::Caller;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flashsale_core::{CheckoutOutcome, SaleId, UserId, WaitlistRefusal};
use flashsale_store::{Order, WaitlistJoin, WaitlistLeave, WaitlistPlace};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The join request body as sent (guest mode: `user_id` required; with identity optional, and
/// if present it must name the token's buyer).
#[derive(Deserialize)]
struct RawJoin<'a> {
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
}

/// The body of a buyer waiting: `waitlisted` with their place.
#[derive(Serialize)]
struct WaitingBody<'a> {
    code: &'static str,
    sale_id: SaleId,
    user_id: &'a UserId,
    /// 1 is the next offer.
    position: u32,
}

/// The body of a buyer an offer gave a reservation: `offered` with the order as it is now.
#[derive(Serialize)]
struct OfferedBody<'a> {
    code: &'static str,
    sale_id: SaleId,
    user_id: &'a UserId,
    order: &'a Order,
}

/// The body of a buyer who left.
#[derive(Serialize)]
struct LeftBody<'a> {
    code: &'static str,
    sale_id: SaleId,
    user_id: &'a UserId,
}

/// The code of a place that is an offered reservation (not an error code: a 200 body's).
pub const OFFERED: &str = "offered";

/// Joins the sale's waitlist.
#[utoipa::path(
    post,
    path = "/api/sales/{sale_id}/waitlist",
    tag = "waitlist",
    params(("sale_id" = i64, Path, description = "The sale's id")),
    request_body = crate::http::openapi::WaitlistJoinDoc,
    responses(
        (status = 201, description = "`waitlisted`: the buyer waits at `position` (1 is the next offer)", body = crate::http::openapi::WaitlistPlaceDoc),
        (status = 400, description = "`invalid_request`", body = crate::http::openapi::ErrorDoc),
        (status = 401, description = "`unauthenticated` (with identity)", body = crate::http::openapi::ErrorDoc),
        (status = 403, description = "`forbidden` (with identity): the body's `user_id` is not the token's buyer", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 409, description = "`units_available` (reserve one instead), `sold_out` (every unit is paid), `sale_not_active` (not started), `waitlist_closed` (at or after `ends_at`), `already_waitlisted` (the message names the place), `already_purchased` (reserved and paid units at the limit)", body = crate::http::openapi::ErrorDoc),
        (status = 413, description = "`payload_too_large`", body = crate::http::openapi::ErrorDoc),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable` or `timeout`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn join_waitlist(
    State(app): State<AppState>,
    Caller(caller): Caller,
    SalePath(sale_id): SalePath,
    request: Request,
) -> Result<Response, ApiError> {
    let body = json_body(request, app.body_timeout).await?;
    let raw: RawJoin<'_> = parse_object(&body)?;
    let named = raw.user_id.as_deref().map(UserId::parse).transpose()?;
    let user = match (caller, named) {
        (None, Some(named)) => named,
        (None, None) => {
            return Err(ApiError::InvalidRequest(Cow::Borrowed(
                "user_id is required",
            )));
        }
        (Some(me), Some(named)) if named != me => return Err(ApiError::Forbidden),
        (Some(me), _) => me,
    };
    let joined = app
        .store
        .waitlist_join(sale_id, user.clone())
        .await?
        .ok_or(ApiError::SaleNotFound)?;
    match joined {
        WaitlistJoin::Joined { position } => {
            let body = WaitingBody {
                code: CheckoutOutcome::Waitlisted.code(),
                sale_id,
                user_id: &user,
                position,
            };
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        WaitlistJoin::Refused(refusal) => Err(refused(refusal)),
    }
}

/// Where a buyer stands: waiting (with the place) or offered (with the reservation).
#[utoipa::path(
    get,
    path = "/api/sales/{sale_id}/waitlist/{user_id}",
    tag = "waitlist",
    params(
        ("sale_id" = i64, Path, description = "The sale's id"),
        ("user_id" = String, Path, description = "The buyer's id (normalised as in docs/api.md)"),
    ),
    responses(
        (status = 200, description = "`waitlisted` with `position`, or `offered` with `order`: the reservation an offer made (its status now)", body = crate::http::openapi::WaitlistPlaceDoc),
        (status = 400, description = "`invalid_request`: bad user id", body = crate::http::openapi::ErrorDoc),
        (status = 401, description = "`unauthenticated` (with identity)", body = crate::http::openapi::ErrorDoc),
        (status = 403, description = "`forbidden` (with identity): another buyer's place", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`not_waitlisted` (also once the list lapsed at `ends_at`) or `sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable` or `timeout`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn get_waitlist_place(
    State(app): State<AppState>,
    Caller(caller): Caller,
    BuyerPath(sale_id, user): BuyerPath,
) -> Result<Response, ApiError> {
    if caller.is_some_and(|me| me != user) {
        return Err(ApiError::Forbidden);
    }
    let place = app
        .store
        .waitlist_place(sale_id, &user)
        .await?
        .ok_or(ApiError::SaleNotFound)?;
    match place {
        WaitlistPlace::Waiting { position } => Ok(Json(WaitingBody {
            code: CheckoutOutcome::Waitlisted.code(),
            sale_id,
            user_id: &user,
            position,
        })
        .into_response()),
        WaitlistPlace::Offered(order) => Ok(Json(OfferedBody {
            code: OFFERED,
            sale_id,
            user_id: &user,
            order: &order,
        })
        .into_response()),
        WaitlistPlace::NotWaitlisted => Err(refused(WaitlistRefusal::NotWaitlisted)),
    }
}

/// Leaves the waitlist; everyone behind moves up one place.
#[utoipa::path(
    delete,
    path = "/api/sales/{sale_id}/waitlist/{user_id}",
    tag = "waitlist",
    params(
        ("sale_id" = i64, Path, description = "The sale's id"),
        ("user_id" = String, Path, description = "The buyer's id (normalised as in docs/api.md)"),
    ),
    responses(
        (status = 200, description = "`left_waitlist`", body = crate::http::openapi::WaitlistLeftDoc),
        (status = 400, description = "`invalid_request`: bad user id", body = crate::http::openapi::ErrorDoc),
        (status = 401, description = "`unauthenticated` (with identity)", body = crate::http::openapi::ErrorDoc),
        (status = 403, description = "`forbidden` (with identity): another buyer's place", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`not_waitlisted` or `sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable` or `timeout`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn leave_waitlist(
    State(app): State<AppState>,
    Caller(caller): Caller,
    BuyerPath(sale_id, user): BuyerPath,
) -> Result<Response, ApiError> {
    if caller.is_some_and(|me| me != user) {
        return Err(ApiError::Forbidden);
    }
    let left = app
        .store
        .waitlist_leave(sale_id, &user)
        .await?
        .ok_or(ApiError::SaleNotFound)?;
    match left {
        WaitlistLeave::Left => Ok(Json(LeftBody {
            code: CheckoutOutcome::LeftWaitlist.code(),
            sale_id,
            user_id: &user,
        })
        .into_response()),
        WaitlistLeave::NotWaitlisted => Err(refused(WaitlistRefusal::NotWaitlisted)),
    }
}

/// The error answer of a refusal: its code, its status, its message.
fn refused(refusal: WaitlistRefusal) -> ApiError {
    ApiError::Checkout {
        outcome: refusal.outcome(),
        message: Cow::Owned(refusal.to_string()),
        order: None,
    }
}
