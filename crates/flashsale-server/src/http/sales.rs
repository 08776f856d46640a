//! Sale status: `GET /api/sale` (the featured sale) and `GET /api/sales/{sale_id}`. The status
//! body is shared with admin creation and the live event stream. `server_time` is the store's
//! clock (the one that decides admission), never a separate one.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::SalePath;
use axum::Json;
use axum::extract::State;
use flashsale_core::{EndReason, SaleState, pick_featured};
use flashsale_store::SaleStatus;
use serde::Serialize;
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

/// Why a sale ended, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndedReason {
    /// The window closed.
    Time,
    /// Every unit was sold.
    SoldOut,
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
    /// Units not yet taken.
    pub stock_remaining: u32,
    /// Units one buyer may hold.
    pub per_user_limit: u32,
    /// When the last unit was taken.
    #[serde(with = "time::serde::rfc3339::option")]
    pub sold_out_at: Option<OffsetDateTime>,
    /// The store's clock when this body was made.
    #[serde(with = "time::serde::rfc3339")]
    pub server_time: OffsetDateTime,
}

impl SaleBody {
    /// The body of `status` at `now` (the store's clock).
    pub fn new(status: &SaleStatus, now: OffsetDateTime) -> Self {
        let state = status.state(now);
        let sale = &status.sale;
        Self {
            sale_id: sale.id.0,
            name: sale.name.clone(),
            state: match state {
                SaleState::Upcoming => StateName::Upcoming,
                SaleState::Active => StateName::Active,
                SaleState::Ended(_) => StateName::Ended,
            },
            ended_reason: state.ended_reason().map(|r| match r {
                EndReason::Time => EndedReason::Time,
                EndReason::SoldOut => EndedReason::SoldOut,
            }),
            starts_at: sale.starts_at,
            ends_at: sale.ends_at,
            stock_total: sale.stock,
            stock_remaining: status.remaining,
            per_user_limit: sale.per_user_limit,
            sold_out_at: status.sold_out_at,
            server_time: now,
        }
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
pub async fn get_featured_sale(State(app): State<AppState>) -> Result<Json<SaleBody>, ApiError> {
    let statuses = app.store.statuses().await?;
    let now = app.store.now();
    let featured = pick_featured(statuses.iter().map(|s| (&*s.sale, s.remaining)), now)
        .map(|sale| sale.id)
        .ok_or(ApiError::SaleNotFound)?;
    let status = statuses
        .iter()
        .find(|s| s.sale.id == featured)
        .ok_or(ApiError::SaleNotFound)?;
    Ok(Json(SaleBody::new(status, now)))
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
) -> Result<Json<SaleBody>, ApiError> {
    let status = app.store.status(id).await?.ok_or(ApiError::SaleNotFound)?;
    Ok(Json(SaleBody::new(&status, app.store.now())))
}
