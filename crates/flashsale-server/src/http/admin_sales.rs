//! Operating sales (SPEC 11, issue 14): `GET /api/admin/sales` (list, newest first, keyset
//! cursor), `PATCH /api/admin/sales/{sale_id}` (edit) and `POST
//! /api/admin/sales/{sale_id}/cancel`. All need the admin bearer token ([`AdminAuth`]),
//! checked before anything else. The rules of a change are core's (`flashsale_core::change`),
//! decided by the store atomically with purchases; this module parses and maps.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{
    AdminAuth, MAX_SALE_BODY_BYTES, SalePath, json_body_within, parse_object,
};
use crate::http::sales::{SaleBody, StateName};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flashsale_core::{PriceEdit, SaleChange, SaleEdit, SaleId};
use flashsale_store::ChangeOutcome;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

/// Sales per page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 50;
/// The most sales one page holds.
pub const MAX_PAGE: usize = 200;

/// The query of `GET /api/admin/sales`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only sales in this state now (`upcoming`, `active`, `ended`).
    state: Option<String>,
    /// Where the previous page ended (its `next_cursor`); opaque.
    cursor: Option<String>,
    /// Sales per page, 1..=200 (default 50).
    limit: Option<String>,
}

/// One page of sales, newest first.
#[derive(Serialize, ToSchema)]
pub struct SalesPage {
    /// The sales' status bodies, newest (highest id) first.
    pub sales: Vec<SaleBody>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// The body of `PATCH /api/admin/sales/{sale_id}`: any subset of the create fields.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSaleRequest {
    /// What is on sale (1-200 characters); before the start only.
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    /// Start, RFC 3339; before the start only.
    #[schema(format = DateTime)]
    starts_at: Option<String>,
    /// End, RFC 3339, after the start and in the future.
    #[schema(format = DateTime)]
    ends_at: Option<String>,
    /// Units on sale; while active only raised, never below the units sold.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    stock: Option<i64>,
    /// Units one buyer may hold (1..=1,000); before the start only.
    #[schema(minimum = 1, maximum = 1000)]
    per_user_limit: Option<i64>,
    /// The product's description (plain text, at most 2,000 characters); `""` or `null`
    /// removes it. Before the start only.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 2000)]
    description: Field<String>,
    /// The unit price in minor units, with `currency`; both `null` remove the price. Before
    /// the start only.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 9_007_199_254_740_i64)]
    price_minor: Field<i64>,
    /// The price's ISO 4217 code, with `price_minor`.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^[A-Z]{3}$")]
    currency: Field<String>,
}

/// A field of a partial update: absent (unchanged), `null` (removed) or a value.
#[derive(Default)]
enum Field<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<T>::deserialize(d)?.map_or(Field::Null, Field::Value))
    }
}

/// The price change of a PATCH body: both fields or neither, `null` together to remove.
fn price_edit(minor: Field<i64>, currency: Field<String>) -> Result<Option<PriceEdit>, ApiError> {
    match (minor, currency) {
        (Field::Absent, Field::Absent) => Ok(None),
        (Field::Null, Field::Null) => Ok(Some(PriceEdit::Remove)),
        (Field::Value(minor), Field::Value(currency)) => {
            Ok(Some(PriceEdit::Set { minor, currency }))
        }
        _ => Err(invalid(
            "price_minor and currency must be given together (both null to remove the price)",
        )),
    }
}

/// Lists sales, newest first.
#[utoipa::path(
    get,
    path = "/api/admin/sales",
    tag = "admin",
    security(("admin_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "One page of sales", body = SalesPage),
        (status = 400, description = "`invalid_request`: unknown state, a cursor this service did not give, or a limit outside 1..=200", body = crate::http::openapi::ErrorDoc),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`: too many failed logins from this address", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn list_sales(
    State(app): State<AppState>,
    _: AdminAuth,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SalesPage>, ApiError> {
    let Query(query) = query.map_err(|_| invalid("the query string could not be read"))?;
    let state = query.state.as_deref().map(state_filter).transpose()?;
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| invalid("limit must be an integer from 1 to 200"))?,
    };
    let now = app.store.now();
    let mut statuses = app.store.statuses().await?;
    // Keyset on the id (creation order): a page never repeats or skips a sale because sales
    // were created or changed between two pages.
    statuses.retain(|s| after.is_none_or(|after| s.sale.id < after));
    statuses.sort_unstable_by_key(|s| std::cmp::Reverse(s.sale.id));
    let mut page = Vec::with_capacity(limit.min(statuses.len()));
    let mut more = false;
    for status in &statuses {
        let body = SaleBody::new(status, now);
        if state.is_some_and(|s| s != body.state) {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(body);
    }
    let next_cursor = match page.last() {
        Some(last) if more => Some(encode_cursor(SaleId(last.sale_id))),
        _ => None,
    };
    Ok(Json(SalesPage {
        sales: page,
        next_cursor,
    }))
}

/// Edits a sale (SPEC 11).
#[utoipa::path(
    patch,
    path = "/api/admin/sales/{sale_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("sale_id" = i64, Path, description = "The sale's id")),
    request_body = UpdateSaleRequest,
    responses(
        (status = 200, description = "The sale as changed", body = SaleBody),
        (status = 400, description = "`invalid_request`: a bad value, no field, an unknown field, an end in the past or before the start, stock below the units sold", body = crate::http::openapi::ErrorDoc),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 409, description = "`sale_started` (only raising stock or moving the end is allowed once active; the description, price and image change only before the start) or `sale_ended` (nothing changes once ended, sold out or cancelled)", body = crate::http::openapi::ErrorDoc),
        (status = 413, description = "`payload_too_large`", body = crate::http::openapi::ErrorDoc),
        (status = 415, description = "`unsupported_media_type`", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`: too many failed logins from this address", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`: nothing changed (or, for `timeout`, not known)", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn update_sale(
    State(app): State<AppState>,
    _: AdminAuth,
    SalePath(id): SalePath,
    request: Request,
) -> Result<SaleBody, ApiError> {
    let body = json_body_within(request, app.body_timeout, MAX_SALE_BODY_BYTES).await?;
    let raw: UpdateSaleRequest = parse_object(&body)?;
    let edit = SaleEdit {
        name: raw.name,
        starts_at: raw
            .starts_at
            .as_deref()
            .map(|s| instant("starts_at", s))
            .transpose()?,
        ends_at: raw
            .ends_at
            .as_deref()
            .map(|s| instant("ends_at", s))
            .transpose()?,
        stock: raw.stock,
        per_user_limit: raw.per_user_limit,
        description: match raw.description {
            Field::Absent => None,
            Field::Null => Some(String::new()),
            Field::Value(text) => Some(text),
        },
        price: price_edit(raw.price_minor, raw.currency)?,
        image: None,
    };
    change(&app, id, SaleChange::Edit(edit)).await
}

/// Cancels a sale: it ends at once (`ended_reason` `cancelled`).
#[utoipa::path(
    post,
    path = "/api/admin/sales/{sale_id}/cancel",
    tag = "admin",
    security(("admin_token" = [])),
    params(("sale_id" = i64, Path, description = "The sale's id")),
    responses(
        (status = 200, description = "The sale, ended (`cancelled`)", body = SaleBody),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 409, description = "`sale_ended`: already ended (by time, sold out, or cancelled before)", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`: too many failed logins from this address", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn cancel_sale(
    State(app): State<AppState>,
    _: AdminAuth,
    SalePath(id): SalePath,
) -> Result<SaleBody, ApiError> {
    change(&app, id, SaleChange::Cancel).await
}

/// Asks the store for `change` and answers the sale as it is now, or the refusal.
pub(crate) async fn change(
    app: &AppState,
    id: SaleId,
    change: SaleChange,
) -> Result<SaleBody, ApiError> {
    let outcome = app.store.change_sale(id, change).await;
    // Whatever came of it, the next purchase here reads the sale afresh.
    app.known_sales.forget(id);
    match outcome? {
        ChangeOutcome::Changed(status) => Ok(SaleBody::new(&status, app.store.now())),
        ChangeOutcome::Refused(refusal) => Err(refusal.into()),
        ChangeOutcome::SaleNotFound => Err(ApiError::SaleNotFound),
    }
}

fn state_filter(raw: &str) -> Result<StateName, ApiError> {
    match raw {
        "upcoming" => Ok(StateName::Upcoming),
        "active" => Ok(StateName::Active),
        "ended" => Ok(StateName::Ended),
        _ => Err(invalid("state must be one of upcoming, active, ended")),
    }
}

/// The prefix inside every cursor: a cursor without it was not given by this service.
const CURSOR_PREFIX: &str = "sale:";

fn encode_cursor(after: SaleId) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{}", after.0))
}

fn decode_cursor(raw: &str) -> Result<SaleId, ApiError> {
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(CURSOR_PREFIX)?.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .map(SaleId)
        .ok_or_else(|| invalid("cursor must be a next_cursor this service gave"))
}

fn instant(field: &str, raw: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| {
        ApiError::InvalidRequest(
            format!("{field} must be an RFC 3339 instant such as 2026-11-22T12:00:00Z").into(),
        )
    })
}

fn invalid(message: &'static str) -> ApiError {
    ApiError::InvalidRequest(Cow::Borrowed(message))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flashsale_core::SaleState;

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let c = encode_cursor(SaleId(42));
        assert_eq!(decode_cursor(&c).unwrap(), SaleId(42));
        assert!(decode_cursor("42").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("sale:-1")).is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("order:1")).is_err());
    }

    #[test]
    fn every_state_name_is_a_filter() {
        for s in [SaleState::Upcoming, SaleState::Active] {
            assert!(state_filter(s.as_str()).is_ok());
        }
        assert!(state_filter("ended").is_ok());
        assert!(state_filter("sold_out").is_err());
    }
}
