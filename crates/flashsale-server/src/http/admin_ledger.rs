//! The stock ledger of a sale for operators (SPEC 11, OP-9..OP-11):
//! `GET /api/admin/sales/{sale_id}/ledger`, one keyset page of entries as JSON, or with
//! `?format=csv` (or `Accept: text/csv`) every entry as a CSV streamed page by page (the
//! machinery of [`export`](crate::http::export), shared with the orders export).
//!
//! Each entry carries its own `cursor` (the position after it) besides the page's
//! `next_cursor`: both are base64 of the entry's [`LedgerKey`] (instant, source, id), a total
//! order that entries committed meanwhile never shift.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::export::{Export, Listing, PageQuery, decode_cursor, encode_cursor, list};
use crate::http::extract::{AdminAuth, SalePath};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use flashsale_core::SaleId;
use flashsale_store::{LedgerEntry, LedgerKey, LedgerSource, SaleStore, StoreError};
use futures_util::future::BoxFuture;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use uuid::Uuid;

/// One change of a sale's available / held / sold units.
#[derive(Serialize, ToSchema)]
pub struct LedgerEntryBody {
    /// The position just after this entry: as `cursor`, the page starts with the next one.
    pub cursor: String,
    /// When the change was decided (an order: when its attempt was admitted).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// Why: `created` (the stock appears as available), `order` (available -q, sold +q),
    /// `edit` (an operator changed the stock: available moves by the difference), `cancel`
    /// (moves nothing in instant mode). Hold causes (`reserve`, `payment`, `expiry`,
    /// `release`) will be added with checkout, with the same fields.
    #[schema(example = "order")]
    pub cause: &'static str,
    /// The order concerned, if any.
    pub order_id: Option<Uuid>,
    /// Change of the units anyone may still buy.
    pub available_delta: i64,
    /// Change of the units held by buyers who have not paid yet (0 in instant mode).
    pub held_delta: i64,
    /// Change of the units sold.
    pub sold_delta: i64,
    /// For `edit` and `cancel`: the id of the change's record (its `stock` or `cancelled_at`
    /// field) in the sale's change history.
    pub sale_change_id: Option<i64>,
}

impl From<&LedgerEntry> for LedgerEntryBody {
    fn from(entry: &LedgerEntry) -> Self {
        Self {
            cursor: encode(entry.key),
            at: entry.at(),
            cause: entry.cause.code(),
            order_id: entry.order_id,
            available_delta: entry.available_delta,
            held_delta: entry.held_delta,
            sold_delta: entry.sold_delta,
            sale_change_id: entry.sale_change_id,
        }
    }
}

/// One page of a sale's stock ledger, by instant, then changes before orders, then id.
#[derive(Serialize, ToSchema)]
pub struct LedgerPage {
    /// The entries on this page.
    pub entries: Vec<LedgerEntryBody>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Lists a sale's stock ledger: one JSON page, or every entry as CSV.
#[utoipa::path(
    get,
    path = "/api/admin/sales/{sale_id}/ledger",
    tag = "admin",
    security(("admin_token" = [])),
    params(("sale_id" = i64, Path, description = "The sale's id"), PageQuery),
    responses(
        (status = 200, description = "One page of ledger entries (JSON), or with `format=csv` / `Accept: text/csv` every entry as a streamed CSV (`at,cause,order_id,available_delta,held_delta,sold_delta,sale_change_id`, header row, RFC 4180), as an attachment. Replaying every entry's deltas gives the sale's available, held and sold units",
            content((LedgerPage = "application/json"), (String = "text/csv"))),
        (status = 400, description = "`invalid_request`: a cursor this service did not give, a limit outside 1..=1000, or a format other than json or csv", body = crate::http::openapi::ErrorDoc),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`: too many failed logins from this address", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn list_ledger(
    State(app): State<AppState>,
    _: AdminAuth,
    SalePath(id): SalePath,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    match list::<LedgerExport>(&app.store, id, &headers, query, decode, encode).await? {
        Listing::Csv(response) => Ok(response),
        Listing::Page(entries, next_cursor) => Ok(Json(LedgerPage {
            entries: entries.iter().map(LedgerEntryBody::from).collect(),
            next_cursor,
        })
        .into_response()),
    }
}

/// A sale's stock ledger as an [`Export`].
struct LedgerExport;

impl Export for LedgerExport {
    type Key = LedgerKey;
    type Row = LedgerEntry;
    const HEADER: &'static str =
        "at,cause,order_id,available_delta,held_delta,sold_delta,sale_change_id\r\n";
    const NAME: &'static str = "ledger";

    fn page(
        store: &dyn SaleStore,
        id: SaleId,
        after: Option<LedgerKey>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<LedgerEntry>>, StoreError>> {
        store.ledger_page(id, after, limit)
    }

    fn key(row: &LedgerEntry) -> LedgerKey {
        row.key
    }

    /// Every cell is the service's own (an instant, a cause code, a UUID, integers): none can
    /// start a formula but a negative delta, which is a number, written as one.
    fn write_row(out: &mut String, entry: &LedgerEntry) {
        use std::fmt::Write as _;
        let at = entry
            .at()
            .format(&Rfc3339)
            .unwrap_or_else(|_| String::from("?"));
        let _ = write!(out, "{at},{},", entry.cause.code());
        if let Some(id) = entry.order_id {
            let _ = write!(out, "{}", id.hyphenated());
        }
        let _ = write!(
            out,
            ",{},{},{},",
            entry.available_delta, entry.held_delta, entry.sold_delta
        );
        if let Some(id) = entry.sale_change_id {
            let _ = write!(out, "{id}");
        }
        out.push_str("\r\n");
    }
}

/// The prefix inside every ledger cursor: a cursor without it was not given by this route.
const CURSOR_PREFIX: &str = "ledger:";

fn encode(after: LedgerKey) -> String {
    let nanos = after.at.unix_timestamp_nanos();
    encode_cursor(
        CURSOR_PREFIX,
        &match after.source {
            LedgerSource::Recorded(id) => format!("{nanos}:r:{id}"),
            LedgerSource::Order(id) => format!("{nanos}:o:{}", id.hyphenated()),
        },
    )
}

fn decode(raw: &str) -> Result<LedgerKey, ApiError> {
    decode_cursor(CURSOR_PREFIX, raw, |text| {
        let mut parts = text.splitn(3, ':');
        let at = OffsetDateTime::from_unix_timestamp_nanos(parts.next()?.parse().ok()?).ok()?;
        let source = match (parts.next()?, parts.next()?) {
            ("r", id) => LedgerSource::Recorded(id.parse().ok()?),
            ("o", id) => LedgerSource::Order(Uuid::parse_str(id).ok()?),
            _ => return None,
        };
        Some(LedgerKey { at, source })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn a_cursor_round_trips_for_both_sources_and_a_forged_one_is_refused() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_764_000_000_123_456_000).unwrap();
        for source in [
            LedgerSource::Recorded(42),
            LedgerSource::Order(Uuid::now_v7()),
        ] {
            let key = LedgerKey { at, source };
            assert_eq!(decode(&encode(key)).unwrap(), key);
        }
        assert!(decode("abc").is_err());
        assert!(
            decode(&URL_SAFE_NO_PAD.encode("order:1:0190a0b0-0000-7000-8000-000000000000"))
                .is_err()
        );
        assert!(decode(&URL_SAFE_NO_PAD.encode("ledger:1:r:x")).is_err());
        assert!(decode(&URL_SAFE_NO_PAD.encode("ledger:1:z:1")).is_err());
    }
}
