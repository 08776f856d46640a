//! Typed calls to the service's own endpoints that are not under load: create a sale, read
//! its status and summary, read one buyer's orders (docs/api.md).

use crate::client::{Conn, TransportError};
use crate::outcome::OrderBody;
use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `GET /api/sales/{id}` (the fields the tool uses).
#[derive(Debug, Clone, Deserialize)]
pub struct SaleStatus {
    /// The sale.
    pub sale_id: u64,
    /// `upcoming`, `active` or `ended`.
    pub state: String,
    /// Start instant.
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// Units at creation.
    pub stock_total: u64,
    /// Units not yet taken.
    pub stock_remaining: u64,
    /// Units one buyer may hold.
    pub per_user_limit: u32,
    /// The server's clock when it answered.
    #[serde(with = "time::serde::rfc3339")]
    pub server_time: OffsetDateTime,
}

/// `GET /api/admin/sales/{id}/summary` (the fields the tool uses).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Summary {
    /// Attempts the server counted.
    pub attempts: u64,
    /// Orders confirmed.
    pub confirmed_orders: u64,
    /// Units confirmed.
    pub confirmed_units: u64,
    /// Units not yet taken.
    pub stock_remaining: u64,
    /// Rejections by reason.
    #[serde(default)]
    pub rejections: BTreeMap<String, u64>,
}

/// What `GET /api/sales/{id}/orders/{user}` said about one buyer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuyerOrders {
    /// 200 with these orders.
    Found(Vec<OrderBody>),
    /// 404 `order_not_found`.
    None,
}

#[derive(Deserialize)]
struct OrdersBody {
    orders: Vec<OrderBody>,
}

/// The sale a run creates.
#[derive(Debug, Clone)]
pub struct NewSale {
    /// Its name.
    pub name: String,
    /// Seconds from now to its start.
    pub start_in: f64,
    /// Seconds from its start to its end.
    pub length_secs: u64,
    /// Units for sale.
    pub stock: u64,
    /// Units one buyer may hold.
    pub limit: u32,
    /// Hold mode: the payment window in seconds and the unit price in euro cents; `None` for
    /// an instant sale.
    pub hold: Option<(u64, i64)>,
}

/// Creates a sale through the admin API.
pub async fn create_sale(conn: &mut Conn, sale: &NewSale) -> anyhow::Result<SaleStatus> {
    let starts_at = OffsetDateTime::now_utc() + time::Duration::seconds_f64(sale.start_in);
    let length = i64::try_from(sale.length_secs).unwrap_or(i64::MAX / 2);
    let ends_at = starts_at + time::Duration::seconds(length);
    let mut body = serde_json::json!({
        "name": sale.name,
        "starts_at": starts_at.format(&Rfc3339)?,
        "ends_at": ends_at.format(&Rfc3339)?,
        "stock": sale.stock,
        "per_user_limit": sale.limit,
    });
    if let Some((payment_window_secs, price_minor)) = sale.hold {
        body["checkout_mode"] = "hold".into();
        body["payment_window_secs"] = payment_window_secs.into();
        body["price_minor"] = price_minor.into();
        body["currency"] = "EUR".into();
    }
    let answer = conn
        .send(
            Method::POST,
            "/api/admin/sales",
            Some(Bytes::from(body.to_string())),
        )
        .await
        .context("creating the sale")?;
    if answer.status != StatusCode::CREATED {
        bail!(
            "creating the sale: HTTP {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    serde_json::from_slice(&answer.body).context("reading the created sale")
}

/// Reads a sale's status.
pub async fn sale_status(conn: &mut Conn, sale_id: u64) -> anyhow::Result<SaleStatus> {
    let answer = conn
        .send(Method::GET, &format!("/api/sales/{sale_id}"), None)
        .await
        .context("reading the sale status")?;
    if answer.status != StatusCode::OK {
        bail!(
            "reading sale {sale_id}: HTTP {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    serde_json::from_slice(&answer.body).context("parsing the sale status")
}

/// Reads the admin summary of a sale.
pub async fn summary(conn: &mut Conn, sale_id: u64) -> anyhow::Result<Summary> {
    let answer = conn
        .send(
            Method::GET,
            &format!("/api/admin/sales/{sale_id}/summary"),
            None,
        )
        .await
        .context("reading the summary")?;
    if answer.status != StatusCode::OK {
        bail!(
            "reading the summary: HTTP {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    serde_json::from_slice(&answer.body).context("parsing the summary")
}

/// Reads one buyer's orders: by id for a guest, or with the buyer's `Authorization` value
/// through `orders/me` for a signed-in buyer.
pub async fn buyer_orders(
    conn: &mut Conn,
    sale_id: u64,
    user_id: &str,
    auth: Option<&str>,
) -> anyhow::Result<BuyerOrders> {
    let path = orders_path(sale_id, user_id, auth.is_some());
    let answer = conn
        .send_as(Method::GET, &path, None, auth)
        .await
        .map_err(|e: TransportError| anyhow::anyhow!("reading the orders of {user_id}: {e}"))?;
    match answer.status {
        StatusCode::OK => {
            let body: OrdersBody = serde_json::from_slice(&answer.body)
                .with_context(|| format!("parsing the orders of {user_id}"))?;
            Ok(BuyerOrders::Found(body.orders))
        }
        StatusCode::NOT_FOUND => Ok(BuyerOrders::None),
        other => bail!("reading the orders of {user_id}: HTTP {other}"),
    }
}

/// The path of a buyer's orders: `orders/me` for the signed-in caller, else by id.
fn orders_path(sale_id: u64, user_id: &str, signed_in: bool) -> String {
    match signed_in {
        true => format!("/api/sales/{sale_id}/orders/me"),
        false => format!("/api/sales/{sale_id}/orders/{}", encode_segment(user_id)),
    }
}

/// Percent-encodes a path segment (the generated ids are plain, but `--user-prefix` may not be).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_segment("a b/c@d"), "a%20b%2Fc@d");
        assert_eq!(encode_segment("run-1.u_2~"), "run-1.u_2~");
    }

    #[test]
    fn signed_in_buyers_read_their_orders_through_me() {
        assert_eq!(orders_path(7, "a b", false), "/api/sales/7/orders/a%20b");
        assert_eq!(orders_path(7, "a b", true), "/api/sales/7/orders/me");
    }
}
