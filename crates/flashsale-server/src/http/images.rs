//! Product images (OP-14, OP-15): `PUT` and `DELETE /api/admin/sales/{sale_id}/image` (admin
//! token) and `GET /api/sales/{sale_id}/image`.
//!
//! An upload is the image's bytes as the body. It is refused as 413 `image_too_large` from its
//! `Content-Length` or as soon as more than `--max-image-bytes` arrived (never buffered past
//! the limit), and as 415 `unsupported_image` unless its bytes are a PNG, JPEG or WebP image
//! (`flashsale_core::image`; the `Content-Type` sent is not read). Setting it is a change of
//! the sale like any other (`flashsale_core::change`: before the start only, recorded).
//!
//! Serving: the type sniffed at upload, a strong ETag (the bytes' SHA-256), and a cache
//! lifetime of a year: the status body's `image_url` carries the image's version, so a new
//! upload is a new URL and no cache ever holds a stale image under the current one.

use crate::http::AppState;
use crate::http::admin_sales::change;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, SalePath};
use crate::http::limits::refuse_unread;
use crate::http::sales::SaleBody;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use flashsale_core::{ImageEdit, ImageRef, SaleChange, SaleEdit};
use futures_util::StreamExt;
use std::borrow::Cow;
use std::time::Duration;

/// How long a browser or proxy may keep an image: a year, the most RFC 9111 caches honour.
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// Uploads the sale's product image.
#[utoipa::path(
    put,
    path = "/api/admin/sales/{sale_id}/image",
    tag = "admin",
    security(("admin_token" = [])),
    params(("sale_id" = i64, Path, description = "The sale's id")),
    request_body(
        content = Vec<u8>,
        description = "The image's bytes: PNG, JPEG or WebP, told from the bytes themselves (the Content-Type is not read), at most `--max-image-bytes` (default 2 MiB)",
        content_type = "application/octet-stream"
    ),
    responses(
        (status = 200, description = "The sale, showing the image (`image_url`)", body = SaleBody),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 408, description = "`body_timeout`", body = crate::http::openapi::ErrorDoc),
        (status = 409, description = "`sale_started` (the image can change only before the start) or `sale_ended`", body = crate::http::openapi::ErrorDoc),
        (status = 413, description = "`image_too_large`", body = crate::http::openapi::ErrorDoc),
        (status = 415, description = "`unsupported_image`: not a PNG, JPEG or WebP image", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`: too many failed logins from this address", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn put_image(
    State(app): State<AppState>,
    _: AdminAuth,
    SalePath(id): SalePath,
    request: Request,
) -> Result<Response, ApiError> {
    let Some(status) = app.store.status(id).await? else {
        // Refused before the body was read: drained if small, else the connection closes.
        return Ok(refuse_unread(request, ApiError::SaleNotFound.into_response()).await);
    };
    let bytes = image_body(request, app.max_image_bytes, app.body_timeout).await?;
    let image = ImageRef::of(&bytes).ok_or(ApiError::UnsupportedImage)?;
    let edit = SaleChange::Edit(SaleEdit {
        image: Some(ImageEdit::Set(image)),
        ..SaleEdit::default()
    });
    // The store decides again, atomically; this only spares keeping bytes that a sale which
    // has started would refuse anyway.
    let taken = status.sale.stock.saturating_sub(status.remaining);
    flashsale_core::change::apply(&status.sale, app.store.now(), taken, &edit)?;
    app.store.put_image(id, image, bytes).await?;
    Ok(change(&app, id, edit).await?.into_response())
}

/// Removes the sale's product image.
#[utoipa::path(
    delete,
    path = "/api/admin/sales/{sale_id}/image",
    tag = "admin",
    security(("admin_token" = [])),
    params(("sale_id" = i64, Path, description = "The sale's id")),
    responses(
        (status = 200, description = "The sale, with no image (`image_url` null)", body = SaleBody),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 409, description = "`sale_started` or `sale_ended`: the image can change only before the start", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`: too many failed logins from this address", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn delete_image(
    State(app): State<AppState>,
    _: AdminAuth,
    SalePath(id): SalePath,
) -> Result<SaleBody, ApiError> {
    let edit = SaleEdit {
        image: Some(ImageEdit::Remove),
        ..SaleEdit::default()
    };
    change(&app, id, SaleChange::Edit(edit)).await
}

/// Serves the sale's product image.
#[utoipa::path(
    get,
    path = "/api/sales/{sale_id}/image",
    tag = "sales",
    params(
        ("sale_id" = i64, Path, description = "The sale's id"),
        ("v" = Option<String>, Query, description = "The image's version, as `image_url` carries it (only makes the URL change with the image)"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag seen before: 304 if it is still the image"),
    ),
    responses(
        (status = 200, description = "The image, as `image/png`, `image/jpeg` or `image/webp` (the type its bytes are), with `ETag` and `Cache-Control: public, max-age=31536000, immutable`", content_type = "image/*", body = Vec<u8>),
        (status = 304, description = "Not modified: `If-None-Match` names this image"),
        (status = 404, description = "`sale_not_found` or `image_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn get_image(
    State(app): State<AppState>,
    SalePath(id): SalePath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let status = app.store.status(id).await?.ok_or(ApiError::SaleNotFound)?;
    let image = status.sale.product.image.ok_or(ApiError::ImageNotFound)?;
    let etag = format!("\"{}\"", image.sha256_hex());
    if headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| matches_etag(v.as_bytes(), &etag))
    {
        return Ok(with_cache_headers(
            StatusCode::NOT_MODIFIED.into_response(),
            &etag,
        ));
    }
    let Some(bytes) = app.store.image(id, image).await? else {
        // The row names an image whose bytes are gone (a data directory restored without
        // its images): say so once per request, answer as if there were none.
        tracing::warn!(sale = %id, image = %image.describe(), "image bytes missing");
        return Err(ApiError::ImageNotFound);
    };
    let mut response = Response::new(Body::from(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(image.kind().content_type()),
    );
    Ok(with_cache_headers(response, &etag))
}

fn with_cache_headers(mut response: Response, etag: &str) -> Response {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    // Nothing in an image may run as a document, even if opened on its own.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    response
}

/// Whether an `If-None-Match` value names `etag` (`*`, or a list of tags compared weakly, as
/// RFC 9110 says for this header).
fn matches_etag(value: &[u8], etag: &str) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Reads an upload of at most `limit` bytes within `deadline`.
async fn image_body(request: Request, limit: usize, deadline: Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(deadline, read_image_body(request, limit)).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::BodyTimeout),
    }
}

async fn read_image_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = ApiError::ImageTooLarge { limit };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large);
    }
    // Sized from the declaration, within the limit: one allocation for an honest client.
    let mut body = BytesMut::with_capacity(declared.map_or(64 * 1024, |n| n as usize));
    let mut stream = request.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::InvalidRequest(Cow::Borrowed("the request body could not be read"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_names_the_etag_in_a_list_weakly_or_as_a_star() {
        let etag = "\"abc\"";
        assert!(matches_etag(b"\"abc\"", etag));
        assert!(matches_etag(b"W/\"abc\"", etag));
        assert!(matches_etag(b"\"x\", \"abc\"", etag));
        assert!(matches_etag(b"*", etag));
        assert!(!matches_etag(b"\"abd\"", etag));
        assert!(!matches_etag(b"abc", etag));
        assert!(!matches_etag(b"\xff", etag));
    }
}
