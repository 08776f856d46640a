//! The orders of a sale for operators (SPEC 11, OP-8): `GET /api/admin/sales/{sale_id}/orders`,
//! one keyset page as JSON, or with `?format=csv` (or `Accept: text/csv`) every order as a CSV
//! streamed page by page from the store.
//!
//! Memory stays flat however many orders a sale has: the CSV never holds more than one page
//! of [`CSV_PAGE`] orders and its rendered chunk; the next page is read only when the client
//! has taken the previous chunk (the body is a pull stream). The cursor is opaque: base64 of
//! the last order's [`OrderKey`], so orders committed meanwhile never shift a page.
//!
//! Cells are written for spreadsheets, which run a cell starting with `=`, `+`, `-`, `@`, tab
//! or CR as a formula: such a cell gets a leading `'`. Then RFC 4180 quoting.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, SalePath};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use flashsale_core::SaleId;
use flashsale_store::{Order, OrderKey, SaleStore, StoreError};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Orders per JSON page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// The most orders one JSON page holds.
pub const MAX_PAGE: usize = 1000;
/// Orders the CSV reads from the store at a time.
pub const CSV_PAGE: usize = 1000;

/// The CSV's header row.
const CSV_HEADER: &str = "order_id,user_id,quantity,created_at\r\n";

/// The query of `GET /api/admin/sales/{sale_id}/orders`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// Where the previous page ended (its `next_cursor`); opaque. JSON only.
    cursor: Option<String>,
    /// Orders per page, 1..=1000 (default 100). JSON only.
    limit: Option<String>,
    /// `json` (the default) or `csv` (every order); `Accept: text/csv` also asks for CSV.
    format: Option<String>,
}

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
    params(("sale_id" = i64, Path, description = "The sale's id"), OrdersQuery),
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
    query: Result<Query<OrdersQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|_| invalid("the query string could not be read"))?;
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| invalid("limit must be an integer from 1 to 1000"))?,
    };
    let csv = match query.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(_) => return Err(invalid("format must be json or csv")),
        None => accepts_csv(&headers),
    };
    if csv {
        return csv_export(&app.store, id).await;
    }
    // One more than the page tells whether another page follows without a second read.
    let mut orders = app
        .store
        .order_page(id, after, limit + 1)
        .await?
        .ok_or(ApiError::SaleNotFound)?;
    let next_cursor = if orders.len() > limit {
        orders.truncate(limit);
        orders.last().map(|o| encode_cursor(o.key()))
    } else {
        None
    };
    Ok(Json(OrdersPage {
        orders,
        next_cursor,
    })
    .into_response())
}

/// Whether the `Accept` header names `text/csv` (and not JSON before it).
fn accepts_csv(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|item| item.split(';').next().unwrap_or("").trim())
        .find(|media| media.eq_ignore_ascii_case("text/csv") || media.contains("json"))
        .is_some_and(|media| media.eq_ignore_ascii_case("text/csv"))
}

/// The CSV response: the first page is read before answering, so an unknown sale is a 404
/// and a store failure a 503; later pages are read as the client takes the body. A failure
/// after the answer began cuts the body short (the client sees an incomplete transfer, never
/// a CSV that looks complete).
async fn csv_export(store: &Arc<dyn SaleStore>, id: SaleId) -> Result<Response, ApiError> {
    let first = store
        .order_page(id, None, CSV_PAGE)
        .await?
        .ok_or(ApiError::SaleNotFound)?;
    let mut head = String::with_capacity(CSV_HEADER.len() + first.len() * 96);
    head.push_str(CSV_HEADER);
    let after = write_rows(&mut head, &first);
    let more = first.len() == CSV_PAGE;
    let rest = CsvPages {
        store: Arc::clone(store),
        id,
        after,
        done: !more,
    };
    let chunks =
        futures_util::stream::once(std::future::ready(Ok::<_, StoreError>(Bytes::from(head))))
            .chain(futures_util::stream::unfold(rest, CsvPages::next));
    let disposition = format!("attachment; filename=\"sale-{}-orders.csv\"", id.0);
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The pages of a CSV after the first: one store read per chunk of the body.
struct CsvPages {
    store: Arc<dyn SaleStore>,
    id: SaleId,
    after: Option<OrderKey>,
    done: bool,
}

impl CsvPages {
    /// The next chunk, or the end (after a short page, or a failure, which is sent as the
    /// stream's error so the body is cut).
    async fn next(mut self) -> Option<(Result<Bytes, StoreError>, Self)> {
        if self.done {
            return None;
        }
        let page = match self.store.order_page(self.id, self.after, CSV_PAGE).await {
            Ok(Some(page)) => page,
            Ok(None) => {
                self.done = true;
                return Some((
                    Err(StoreError::internal("the sale went away during its export")),
                    self,
                ));
            }
            Err(e) => {
                tracing::warn!(sale_id = self.id.0, error = %e.report(), "orders export cut short");
                self.done = true;
                return Some((Err(e), self));
            }
        };
        self.done = page.len() < CSV_PAGE;
        if page.is_empty() {
            return None;
        }
        let mut chunk = String::with_capacity(page.len() * 96);
        self.after = write_rows(&mut chunk, &page).or(self.after);
        Some((Ok(Bytes::from(chunk)), self))
    }
}

/// Appends one CSV row per order; returns the last order's key.
fn write_rows(out: &mut String, orders: &[Order]) -> Option<OrderKey> {
    use std::fmt::Write as _;
    for order in orders {
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
    orders.last().map(Order::key)
}

/// Appends one cell: defused against formula injection, then quoted per RFC 4180 where it
/// holds a comma, a quote, CR or LF (or the defusing quote's text needs it).
fn push_cell(out: &mut String, cell: &str) {
    let formula = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quoted = cell.contains([',', '"', '\r', '\n']);
    if quoted {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    if cell.contains('"') {
        out.push_str(&cell.replace('"', "\"\""));
    } else {
        out.push_str(cell);
    }
    if quoted {
        out.push('"');
    }
}

/// The prefix inside every cursor: a cursor without it was not given by this service.
const CURSOR_PREFIX: &str = "order:";

fn encode_cursor(after: OrderKey) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{CURSOR_PREFIX}{}:{}",
        after.created_at.unix_timestamp_nanos(),
        after.order_id.hyphenated()
    ))
}

fn decode_cursor(raw: &str) -> Result<OrderKey, ApiError> {
    let parse = |text: &str| -> Option<OrderKey> {
        let (nanos, id) = text.strip_prefix(CURSOR_PREFIX)?.split_once(':')?;
        Some(OrderKey {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?,
            order_id: Uuid::parse_str(id).ok()?,
        })
    };
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| parse(&text))
        .ok_or_else(|| invalid("cursor must be a next_cursor this service gave"))
}

fn invalid(message: &'static str) -> ApiError {
    ApiError::InvalidRequest(Cow::Borrowed(message))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cell(raw: &str) -> String {
        let mut out = String::new();
        push_cell(&mut out, raw);
        out
    }

    #[test]
    fn a_cell_a_spreadsheet_would_run_as_a_formula_is_defused() {
        assert_eq!(cell("=1+1"), "'=1+1");
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("-1"), "'-1");
        assert_eq!(cell("@SUM(1)"), "'@SUM(1)");
        assert_eq!(cell("\tx"), "'\tx");
        assert_eq!(
            cell("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(cell("alice"), "alice");
        assert_eq!(cell("a=b"), "a=b");
    }

    #[test]
    fn a_cell_with_a_comma_quote_or_line_break_is_quoted() {
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("a\nb"), "\"a\nb\"");
    }

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let key = OrderKey {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_764_000_000_123_456_000)
                .unwrap(),
            order_id: Uuid::now_v7(),
        };
        assert_eq!(decode_cursor(&encode_cursor(key)).unwrap(), key);
        assert!(decode_cursor("abc").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("sale:1")).is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("order:1:not-a-uuid")).is_err());
    }

    #[test]
    fn accept_text_csv_asks_for_csv_unless_json_comes_first() {
        let with = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
            accepts_csv(&h)
        };
        assert!(with("text/csv"));
        assert!(with("text/csv; charset=utf-8, application/json;q=0.5"));
        assert!(!with("application/json, text/csv"));
        assert!(!with("*/*"));
        assert!(!accepts_csv(&HeaderMap::new()));
    }
}
