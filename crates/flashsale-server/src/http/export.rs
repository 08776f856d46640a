//! What the operator's paged exports share (a sale's orders, its stock ledger; SPEC 11): the
//! query (`cursor`, `limit`, `format`), opaque keyset cursors, and the CSV streamed a page at a
//! time from the store.
//!
//! Memory stays flat however long the export: the CSV never holds more than one page of
//! [`CSV_PAGE`] rows and its rendered chunk; the next page is read only when the client has
//! taken the previous chunk (the body is a pull stream).
//!
//! Cells are written for spreadsheets, which run a cell starting with `=`, `+`, `-`, `@`, tab
//! or CR as a formula: such a cell gets a leading `'`. Then RFC 4180 quoting.

use crate::http::error::ApiError;
use axum::body::Body;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use flashsale_core::SaleId;
use flashsale_store::{SaleStore, StoreError};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::Arc;
use utoipa::IntoParams;

/// Rows per JSON page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// The most rows one JSON page holds.
pub const MAX_PAGE: usize = 1000;
/// Rows the CSV reads from the store at a time.
pub const CSV_PAGE: usize = 1000;

/// The query of a paged export.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Where the previous page ended (its `next_cursor`); opaque. JSON only.
    cursor: Option<String>,
    /// Rows per page, 1..=1000 (default 100). JSON only.
    limit: Option<String>,
    /// `json` (the default) or `csv` (every row); `Accept: text/csv` also asks for CSV.
    format: Option<String>,
}

/// A paged export's query, checked.
pub struct PageRequest {
    /// The cursor as given (each export decodes its own).
    pub cursor: Option<String>,
    /// Rows per JSON page.
    pub limit: usize,
    /// Whether every row is asked for as CSV.
    pub csv: bool,
}

impl PageRequest {
    /// Checks `limit` and `format` (the cursor is checked by its export); a bad one is 400.
    pub fn parse(query: PageQuery, headers: &HeaderMap) -> Result<Self, ApiError> {
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
            None => accepts_csv(headers),
        };
        Ok(Self {
            cursor: query.cursor,
            limit,
            csv,
        })
    }
}

/// One kind of row a sale can be exported as, read from the store a keyset page at a time.
pub trait Export: Send + Sync + 'static {
    /// A row's place in the export order (the cursor's content).
    type Key: Copy + Send + Sync + 'static;
    /// One row.
    type Row: Send + 'static;
    /// The CSV's header row, with its line break.
    const HEADER: &'static str;
    /// What the rows are, in the attachment's file name (`sale-{id}-{NAME}.csv`) and logs.
    const NAME: &'static str;
    /// Up to `limit` rows after `after`, or `None` if there is no such sale.
    fn page(
        store: &dyn SaleStore,
        id: SaleId,
        after: Option<Self::Key>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<Self::Row>>, StoreError>>;
    /// The row's key.
    fn key(row: &Self::Row) -> Self::Key;
    /// Appends the row's CSV line (cells through [`push_cell`] where text is free).
    fn write_row(out: &mut String, row: &Self::Row);
}

/// What a listing request gets: every row as a CSV response, or one JSON page's rows with the
/// cursor of the next page (`None` on the last).
pub enum Listing<R> {
    /// The streamed CSV, already answered.
    Csv(Response),
    /// One page, for the route to render as its JSON body.
    Page(Vec<R>, Option<String>),
}

/// The part of a listing route every export shares: the query checked (a bad one 400), then
/// the CSV, or one page read with one row more than asked so the next cursor needs no second
/// read. An unknown sale is 404.
pub async fn list<E: Export>(
    store: &Arc<dyn SaleStore>,
    id: SaleId,
    headers: &HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
    decode: impl FnOnce(&str) -> Result<E::Key, ApiError>,
    encode: impl FnOnce(E::Key) -> String,
) -> Result<Listing<E::Row>, ApiError> {
    let Query(query) = query.map_err(|_| invalid("the query string could not be read"))?;
    let request = PageRequest::parse(query, headers)?;
    let after = request.cursor.as_deref().map(decode).transpose()?;
    if request.csv {
        return Ok(Listing::Csv(csv_response::<E>(store, id).await?));
    }
    let limit = request.limit;
    let mut rows = E::page(&**store, id, after, limit + 1)
        .await?
        .ok_or(ApiError::SaleNotFound)?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|row| encode(E::key(row)))
    } else {
        None
    };
    Ok(Listing::Page(rows, next_cursor))
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
pub async fn csv_response<E: Export>(
    store: &Arc<dyn SaleStore>,
    id: SaleId,
) -> Result<Response, ApiError> {
    let first = E::page(&**store, id, None, CSV_PAGE)
        .await?
        .ok_or(ApiError::SaleNotFound)?;
    let mut head = String::with_capacity(E::HEADER.len() + first.len() * 96);
    head.push_str(E::HEADER);
    let after = write_rows::<E>(&mut head, &first);
    let rest = CsvPages::<E> {
        store: Arc::clone(store),
        id,
        after,
        done: first.len() < CSV_PAGE,
    };
    let chunks =
        futures_util::stream::once(std::future::ready(Ok::<_, StoreError>(Bytes::from(head))))
            .chain(futures_util::stream::unfold(rest, CsvPages::next));
    let disposition = format!("attachment; filename=\"sale-{}-{}.csv\"", id.0, E::NAME);
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
struct CsvPages<E: Export> {
    store: Arc<dyn SaleStore>,
    id: SaleId,
    after: Option<E::Key>,
    done: bool,
}

impl<E: Export> CsvPages<E> {
    /// The next chunk, or the end (after a short page, or a failure, which is sent as the
    /// stream's error so the body is cut).
    async fn next(mut self) -> Option<(Result<Bytes, StoreError>, Self)> {
        if self.done {
            return None;
        }
        let page = match E::page(&*self.store, self.id, self.after, CSV_PAGE).await {
            Ok(Some(page)) => page,
            Ok(None) => {
                self.done = true;
                return Some((
                    Err(StoreError::internal("the sale went away during its export")),
                    self,
                ));
            }
            Err(e) => {
                tracing::warn!(sale_id = self.id.0, export = E::NAME, error = %e.report(), "export cut short");
                self.done = true;
                return Some((Err(e), self));
            }
        };
        self.done = page.len() < CSV_PAGE;
        if page.is_empty() {
            return None;
        }
        let mut chunk = String::with_capacity(page.len() * 96);
        self.after = write_rows::<E>(&mut chunk, &page).or(self.after);
        Some((Ok(Bytes::from(chunk)), self))
    }
}

/// Appends one CSV line per row; returns the last row's key.
fn write_rows<E: Export>(out: &mut String, rows: &[E::Row]) -> Option<E::Key> {
    for row in rows {
        E::write_row(out, row);
    }
    rows.last().map(E::key)
}

/// Appends one cell: defused against formula injection, then quoted per RFC 4180 where it
/// holds a comma, a quote, CR or LF (or the defusing quote's text needs it).
pub fn push_cell(out: &mut String, cell: &str) {
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

/// An opaque cursor: base64 of `prefix` (which names the export) and the key's text.
pub fn encode_cursor(prefix: &str, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{prefix}{key}"))
}

/// The key's text in a cursor [`encode_cursor`] made with `prefix`, parsed by `parse`; any
/// other cursor is 400.
pub fn decode_cursor<K>(
    prefix: &str,
    raw: &str,
    parse: impl FnOnce(&str) -> Option<K>,
) -> Result<K, ApiError> {
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(prefix).and_then(parse))
        .ok_or_else(|| invalid("cursor must be a next_cursor this service gave"))
}

/// A 400 `invalid_request` with `message`.
pub fn invalid(message: &'static str) -> ApiError {
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
    fn a_cursor_of_another_export_is_refused() {
        let raw = encode_cursor("order:", "12");
        assert_eq!(
            decode_cursor("order:", &raw, |t| t.parse::<u32>().ok()).unwrap(),
            12
        );
        assert!(decode_cursor("ledger:", &raw, |t| t.parse::<u32>().ok()).is_err());
        assert!(decode_cursor("order:", "%%", |t| t.parse::<u32>().ok()).is_err());
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
