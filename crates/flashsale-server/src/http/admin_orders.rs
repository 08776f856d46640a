//! The orders of a sale for operators (SPEC 11, OP-8): `GET /api/admin/sales/{sale_id}/orders`,
//! one keyset page as JSON, or with `?format=csv` (or `Accept: text/csv`) every order as a CSV
//! streamed page by page from the store (see [`export`](crate::http::export) for the paging,
//! the streaming and the cell escaping shared with the stock ledger).
//!
//! The cursor is opaque: base64 of the last order's [`OrderKey`], so orders committed
//! meanwhile never shift a page.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::export::{
    Export, Listing, PageQuery, decode_cursor, encode_cursor, list, push_cell,
};
use crate::http::extract::{AdminAuth, SalePath};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use flashsale_core::SaleId;
use flashsale_store::{Order, OrderKey, SaleStore, StoreError};
use futures_util::future::BoxFuture;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use uuid::Uuid;

/// One page of a sale's orders, by `created_at` then `order_id`.
#[derive(Serialize, ToSchema)]
pub struct OrdersPage {
    /// The sale's committed orders on this page.
    #[schema(value_type = Vec<crate::http::openapi::OrderDoc>)]
    pub orders: Vec<Order>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Lists a sale's committed orders: one JSON page, or every order as CSV.
#[utoipa::path(
    get,
    path = "/api/admin/sales/{sale_id}/orders",
    tag = "admin",
    security(("admin_token" = [])),
    params(("sale_id" = i64, Path, description = "The sale's id"), PageQuery),
    responses(
        (status = 200, description = "One page of orders (JSON), or with `format=csv` / `Accept: text/csv` every order as a streamed CSV (`order_id,user_id,quantity,created_at`, header row, RFC 4180, cells that a spreadsheet would run as a formula prefixed with `'`), as an attachment",
            content((OrdersPage = "application/json"), (String = "text/csv"))),
        (status = 400, description = "`invalid_request`: a cursor this service did not give, a limit outside 1..=1000, or a format other than json or csv", body = crate::http::openapi::ErrorDoc),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`: too many failed logins from this address", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn list_orders(
    State(app): State<AppState>,
    _: AdminAuth,
    SalePath(id): SalePath,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    match list::<OrdersExport>(&app.store, id, &headers, query, decode, encode).await? {
        Listing::Csv(response) => Ok(response),
        Listing::Page(orders, next_cursor) => Ok(Json(OrdersPage {
            orders,
            next_cursor,
        })
        .into_response()),
    }
}

/// A sale's orders as an [`Export`].
struct OrdersExport;

impl Export for OrdersExport {
    type Key = OrderKey;
    type Row = Order;
    const HEADER: &'static str = "order_id,user_id,quantity,created_at\r\n";
    const NAME: &'static str = "orders";

    fn page(
        store: &dyn SaleStore,
        id: SaleId,
        after: Option<OrderKey>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<Order>>, StoreError>> {
        store.order_page(id, after, limit)
    }

    fn key(row: &Order) -> OrderKey {
        row.key()
    }

    fn write_row(out: &mut String, order: &Order) {
        use std::fmt::Write as _;
        let created_at = order
            .created_at
            .format(&Rfc3339)
            .unwrap_or_else(|_| String::from("?"));
        let _ = write!(out, "{},", order.order_id.hyphenated());
        push_cell(out, order.user_id.as_str());
        let _ = write!(out, ",{},", order.quantity);
        push_cell(out, &created_at);
        out.push_str("\r\n");
    }
}

/// The prefix inside every orders cursor: a cursor without it was not given by this route.
const CURSOR_PREFIX: &str = "order:";

fn encode(after: OrderKey) -> String {
    encode_cursor(
        CURSOR_PREFIX,
        &format!(
            "{}:{}",
            after.created_at.unix_timestamp_nanos(),
            after.order_id.hyphenated()
        ),
    )
}

fn decode(raw: &str) -> Result<OrderKey, ApiError> {
    decode_cursor(CURSOR_PREFIX, raw, |text| {
        let (nanos, id) = text.split_once(':')?;
        Some(OrderKey {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?,
            order_id: Uuid::parse_str(id).ok()?,
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let key = OrderKey {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_764_000_000_123_456_000)
                .unwrap(),
            order_id: Uuid::now_v7(),
        };
        assert_eq!(decode(&encode(key)).unwrap(), key);
        assert!(decode("abc").is_err());
        assert!(decode(&URL_SAFE_NO_PAD.encode("sale:1")).is_err());
        assert!(decode(&URL_SAFE_NO_PAD.encode("order:1:not-a-uuid")).is_err());
    }
}
