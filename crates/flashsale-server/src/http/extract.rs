//! Our own extractors, so that every refusal is an [`ApiError`] in JSON (never axum's text):
//! path ids, the admin bearer token, and JSON bodies (size limit, content type, a deadline).

use crate::http::AppState;
use crate::http::error::ApiError;
use axum::body::HttpBody;
use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, header};
use bytes::{Bytes, BytesMut};
use flashsale_core::{IdempotencyKey, SaleId, UserId};
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 4096;

/// The largest body of an operator's sale (create, edit): room for a product description of
/// 2,000 characters of any script (up to 4 bytes each in UTF-8, more when escaped in JSON).
pub const MAX_SALE_BODY_BYTES: usize = 16 * 1024;

/// The `{sale_id}` path segment. Anything but a positive integer is 404 `sale_not_found`.
pub struct SalePath(pub SaleId);

impl<S: Send + Sync> FromRequestParts<S> for SalePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::SaleNotFound)?;
        sale_id(&params).map(SalePath)
    }
}

/// The `{sale_id}` and `{user_id}` path segments; the user id is trimmed and validated.
pub struct BuyerPath(pub SaleId, pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for BuyerPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::InvalidRequest("the path is not valid UTF-8".into()))?;
        let sale = sale_id(&params)?;
        let raw = params
            .iter()
            .find(|(name, _)| *name == "user_id")
            .map_or("", |(_, value)| value);
        Ok(BuyerPath(sale, UserId::parse(raw)?))
    }
}

fn sale_id(params: &RawPathParams) -> Result<SaleId, ApiError> {
    params
        .iter()
        .find(|(name, _)| *name == "sale_id")
        .and_then(|(_, value)| SaleId::parse(value))
        .ok_or(ApiError::SaleNotFound)
}

/// Proof that the request carried the admin bearer token.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = state
            .limiter
            .client_of_parts(&parts.extensions, &parts.headers);
        // Before comparing: a locked-out address learns nothing from further guesses.
        state.limiter.admin_locked(client)?;
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if presented.is_some_and(|token| constant_time_eq(token, &state.admin_token)) {
            return Ok(AdminAuth);
        }
        // Operators want to see guessing: INFO, with the client's address (never the token).
        tracing::info!(
            client = %client.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
            token_sent = presented.is_some(),
            "admin authentication failed"
        );
        state.limiter.admin_failed(client);
        Err(ApiError::Unauthorized)
    }
}

/// Compares without stopping at the first difference, so the time taken does not reveal how
/// much of a guessed token was right. (The length is not secret.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a JSON request body: 415 unless `content-type` is `application/json`, 413 over
/// [`MAX_BODY_BYTES`], 408 `body_timeout` when it has not all arrived within `deadline`
/// (a client that declares more than it sends; nothing was read, so nothing was taken).
/// Usually the body is one chunk, returned without copying.
pub async fn json_body(request: Request, deadline: Duration) -> Result<Bytes, ApiError> {
    json_body_within(request, deadline, MAX_BODY_BYTES).await
}

/// [`json_body`] with a limit of `max` bytes instead of [`MAX_BODY_BYTES`].
pub async fn json_body_within(
    request: Request,
    deadline: Duration,
    max: usize,
) -> Result<Bytes, ApiError> {
    let mut read = std::pin::pin!(read_json_body(request, max));
    // The body usually arrives with the headers, and then the first poll reads all of it: no
    // timer needs to exist. Making one (the clock, the runtime's handle) and moving the read
    // into it cost about 500 instructions per body (issue 15). The deadline is counted from
    // just after that first poll, which no client can tell apart.
    let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = first {
        return result;
    }
    match tokio::time::timeout(deadline, read).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::BodyTimeout),
    }
}

async fn read_json_body(request: Request, max: usize) -> Result<Bytes, ApiError> {
    let headers = request.headers();
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut body = request.into_body();
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    // Once the declared length has arrived the body says so (`is_end_stream`): a body of one
    // chunk takes one poll, not a second through the boxed body and hyper's channel that only
    // finds the end (issue 15).
    while !body.is_end_stream() {
        let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        else {
            break;
        };
        // Trailers, if a chunked body has any, are not part of the JSON.
        let Ok(chunk) = frame.map_err(|_| body_unreadable())?.into_data() else {
            continue;
        };
        let len = first.as_ref().map_or(0, Bytes::len)
            + joined.as_ref().map_or(0, BytesMut::len)
            + chunk.len();
        if len > max {
            return Err(ApiError::PayloadTooLarge);
        }
        match (&mut joined, first.take()) {
            (Some(buf), _) => buf.extend_from_slice(&chunk),
            (None, None) => first = Some(chunk),
            (None, Some(head)) => {
                let mut buf = BytesMut::with_capacity(len);
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&chunk);
                joined = Some(buf);
            }
        }
    }
    Ok(joined.map(BytesMut::freeze).or(first).unwrap_or_default())
}

fn body_unreadable() -> ApiError {
    ApiError::InvalidRequest(Cow::Borrowed("the request body could not be read"))
}

/// The request's `Idempotency-Key` header, if any (400 `invalid_request` if malformed).
pub fn idempotency_key(request: &Request) -> Result<Option<IdempotencyKey>, ApiError> {
    // A `HeaderName` is looked up by its hash alone; a `&str` is first parsed against every
    // standard header's name, on every purchase (issue 15).
    static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
    Ok(request
        .headers()
        .get(&IDEMPOTENCY_KEY)
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .map(IdempotencyKey::parse)
        .transpose()?)
}

/// Parses a JSON object body; anything else (malformed, missing or wrong-typed fields, an
/// array, which serde would otherwise accept for a struct) is a 400 naming what was wrong.
pub fn parse_object<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::InvalidRequest(Cow::Borrowed(
            "the body must be a JSON object",
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(Cow::Owned(format!("invalid JSON body: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
