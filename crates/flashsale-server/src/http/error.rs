//! The one error type of the HTTP layer. Every non-2xx answer is an [`ApiError`]; each variant
//! documents its status and stable `code`. Bodies are JSON `{"code", "message"}` plus the extra
//! fields of docs/api.md. Bodies without variable parts are built at compile time, since the
//! commonest answers under load (`sold_out`) are among them. 5xx bodies are generic; the cause,
//! with its whole chain (a store error's `what`, then each `source` beneath it down to the
//! root: "store unavailable: postgres commit orders: db error: ..."), rides on the response as
//! a [`Failure`] and is logged once, with the request's id, method and path, by
//! [`crate::http::stack::Framed`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flashsale_core::{CheckoutOutcome, NotActiveReason, Outcome, ValidationError};
use flashsale_store::{Order, StoreError};
use serde::Serialize;
use std::borrow::Cow;

/// How long a client should wait before retrying a 503, in seconds.
const RETRY_AFTER_SECS: &str = "1";

/// An answer other than success.
#[derive(Debug)]
pub enum ApiError {
    /// 400 `invalid_request`: malformed body, bad field, bad header.
    InvalidRequest(Cow<'static, str>),
    /// 401 `unauthorized`: missing or wrong admin token.
    Unauthorized,
    /// 401 `unauthenticated`: a buyer route without a valid buyer token (`--identity jwt`),
    /// or `orders/me` in guest mode; `WWW-Authenticate: Bearer` says why.
    Unauthenticated(Challenge),
    /// 403 `forbidden`: the token's buyer asked to act for, or read, another buyer.
    Forbidden,
    /// 401 `invalid_credentials` (`--identity accounts`): no account has this email, or the
    /// password is wrong; the same answer for both, on purpose.
    InvalidCredentials,
    /// 409 `email_taken` (`--identity accounts`): an account with this email exists.
    EmailTaken,
    /// 404 `sale_not_found`: no such sale (or a sale id that is not a positive integer).
    SaleNotFound,
    /// 404 `order_not_found`: the buyer has no order in this sale.
    OrderNotFound,
    /// 404 `not_found`: no such route.
    NotFound,
    /// 405 `method_not_allowed`: the route exists, the method does not.
    MethodNotAllowed,
    /// 409 `already_purchased`: the buyer holds the per-user limit; carries their orders.
    AlreadyPurchased(Vec<Order>),
    /// 409 `limit_exceeded`: the quantity would take the buyer over the limit.
    LimitExceeded {
        /// Units the buyer may still take.
        allowed: u32,
        /// The buyer's orders.
        orders: Vec<Order>,
    },
    /// 409 `sold_out`: the sale was active but no stock is left.
    SoldOut,
    /// 409 `insufficient_stock`: fewer units are left than asked for.
    InsufficientStock {
        /// Units left.
        stock_remaining: u32,
    },
    /// 409 `sale_not_active`: the sale is upcoming or ended by time.
    SaleNotActive(NotActiveReason),
    /// 409 `sale_started`: an operator's change that is not allowed once the sale has started
    /// (SPEC 11); the message names the rule.
    SaleStarted(&'static str),
    /// 409 `sale_ended`: an operator's change (or cancel) of a sale that has ended; the message
    /// names the rule.
    SaleEnded(&'static str),
    /// 409 `address_limit_reached`: this client address already holds (or is buying) its
    /// share of the sale (`--purchase-share-per-ip`).
    AddressShareTaken {
        /// Units one address may hold in this sale.
        share: u32,
    },
    /// 408 `body_timeout`: the request body did not arrive in time; nothing was read or taken.
    /// The connection is closed.
    BodyTimeout,
    /// 413 `payload_too_large`: body over the limit.
    PayloadTooLarge,
    /// 415 `unsupported_media_type`: `content-type` is not `application/json`.
    UnsupportedMediaType,
    /// 413 `image_too_large`: an uploaded image over `--max-image-bytes`; refused from its
    /// `Content-Length` or as soon as more arrived, never buffered past the limit.
    ImageTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// 415 `unsupported_image`: an upload whose bytes are not a PNG, JPEG or WebP image
    /// (whatever its `Content-Type` said).
    UnsupportedImage,
    /// 404 `image_not_found`: the sale has no image.
    ImageNotFound,
    /// 422 `idempotency_key_reused`: the key was first used with another user or quantity.
    IdempotencyKeyReused,
    /// 429 `rate_limited`: this client or buyer sent too many requests; `Retry-After` set.
    RateLimited {
        /// Seconds until the bucket has a token again (at least 1).
        retry_after_secs: u64,
    },
    /// 503 `overloaded`: shed before any work; `Retry-After` set.
    Overloaded,
    /// 503 `timeout`: the answer was not ready within the request timeout. For a purchase
    /// the outcome is unknown (it may have been confirmed): the buyer checks their orders or
    /// retries with the same `Idempotency-Key`. `Retry-After` set.
    Timeout,
    /// 503 `unavailable` (a dependency is down or shutting down; nothing was taken), 503
    /// `timeout` (a dependency did not answer in time: the outcome is unknown, as for
    /// [`ApiError::Timeout`]) or 500 `internal` (a bug).
    Store(StoreError),
    /// 500 `internal`: a bug in this process (e.g. a panic caught by the middleware).
    Internal(String),
    /// A checkout answer that changed nothing (SPEC 9): `reservation_expired`,
    /// `order_cancelled`, `order_paid`, `amount_mismatch`, `order_confirmed`,
    /// `reservation_live` (409), `order_not_found` (404) or a refused webhook signature (401
    /// `signature_missing`, `signature_malformed`, `signature_stale`, `signature_mismatch`);
    /// the order as it is, where the caller may see it.
    Checkout {
        /// The answer, with its code and status.
        outcome: CheckoutOutcome,
        /// What happened, for people.
        message: Cow<'static, str>,
        /// The order as it is now (never for `order_not_found`).
        order: Option<Box<Order>>,
    },
}

/// Why a buyer route answered 401 `unauthenticated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// No bearer token was sent.
    Missing,
    /// A token was sent and refused (`error="invalid_token"`).
    InvalidToken,
    /// `orders/me` in guest mode: the service knows no caller.
    GuestMode,
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::InvalidRequest(Cow::Owned(e.to_string()))
    }
}

impl From<flashsale_core::ChangeRefusal> for ApiError {
    fn from(refusal: flashsale_core::ChangeRefusal) -> Self {
        use flashsale_core::ChangeRefusal;
        match refusal {
            ChangeRefusal::Started(rule) => ApiError::SaleStarted(rule),
            ChangeRefusal::Ended(rule) => ApiError::SaleEnded(rule),
            ChangeRefusal::Invalid(message) => ApiError::InvalidRequest(Cow::Owned(message)),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e)
    }
}

/// `{"code": "...", "message": "..."}` as a compile-time string.
macro_rules! fixed_body {
    ($code:literal, $message:literal) => {
        concat!(r#"{"code":""#, $code, r#"","message":""#, $message, r#""}"#)
    };
}

const UNAUTHORIZED: &str = fixed_body!("unauthorized", "a valid admin bearer token is required");
const TOKEN_MISSING: &str = fixed_body!(
    "unauthenticated",
    "sign in at the shop first: this route needs the buyer's bearer token"
);
const TOKEN_INVALID: &str = fixed_body!(
    "unauthenticated",
    "the bearer token is invalid or expired: sign in at the shop again"
);
const GUEST_MODE: &str = fixed_body!(
    "unauthenticated",
    "this service does not sign buyers in (--identity guest): read a buyer's orders at /api/sales/{sale_id}/orders/{user_id}"
);
const FORBIDDEN: &str = fixed_body!(
    "forbidden",
    "the signed-in buyer may act only for themselves, and read only their own orders"
);
const INVALID_CREDENTIALS: &str =
    fixed_body!("invalid_credentials", "the email or the password is wrong");
const EMAIL_TAKEN: &str = fixed_body!(
    "email_taken",
    "an account with this email exists already: log in instead"
);
/// The challenge of every 401 `unauthenticated`.
const BEARER_CHALLENGE: &str = r#"Bearer realm="flashsale""#;
/// The challenge when a token was sent and refused (RFC 6750, section 3.1).
const INVALID_TOKEN_CHALLENGE: &str = r#"Bearer realm="flashsale", error="invalid_token""#;
const SALE_NOT_FOUND: &str = fixed_body!("sale_not_found", "there is no such sale");
const ORDER_NOT_FOUND: &str =
    fixed_body!("order_not_found", "this buyer has no order in this sale");
const NOT_FOUND: &str = fixed_body!("not_found", "there is nothing at this address");
const UNSUPPORTED_IMAGE: &str = fixed_body!(
    "unsupported_image",
    "the body is not a PNG, JPEG or WebP image (its type is read from its bytes, not its Content-Type)"
);
const IMAGE_NOT_FOUND: &str = fixed_body!("image_not_found", "this sale has no image");
const METHOD_NOT_ALLOWED: &str = fixed_body!(
    "method_not_allowed",
    "this method is not allowed on this address"
);
const SOLD_OUT: &str = fixed_body!("sold_out", "the sale is sold out");
const NOT_ACTIVE_UPCOMING: &str =
    r#"{"code":"sale_not_active","message":"the sale has not started yet","state":"upcoming"}"#;
const NOT_ACTIVE_ENDED: &str =
    r#"{"code":"sale_not_active","message":"the sale has ended","state":"ended"}"#;
const PAYLOAD_TOO_LARGE: &str =
    fixed_body!("payload_too_large", "the request body is over 4096 bytes");
const UNSUPPORTED_MEDIA_TYPE: &str = fixed_body!(
    "unsupported_media_type",
    "content-type must be application/json"
);
const IDEMPOTENCY_KEY_REUSED: &str = fixed_body!(
    "idempotency_key_reused",
    "this Idempotency-Key was used before with another user_id or quantity"
);
const BODY_TIMEOUT: &str = fixed_body!(
    "body_timeout",
    "the request body did not arrive in time; nothing was taken"
);
const RATE_LIMITED: &str = fixed_body!(
    "rate_limited",
    "too many requests from this client; retry after the time in Retry-After"
);
const TIMEOUT: &str = fixed_body!(
    "timeout",
    "the answer took too long; a purchase may still have been confirmed: check your orders or retry with the same Idempotency-Key"
);
const OVERLOADED: &str = fixed_body!("overloaded", "too many requests right now; retry shortly");
const UNAVAILABLE: &str = fixed_body!(
    "unavailable",
    "the service cannot take this request now; nothing was taken; retry shortly"
);
const INTERNAL: &str = fixed_body!("internal", "an internal error occurred");

/// The shape of an error body with variable parts.
#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<&'a Order>,
    #[serde(skip_serializing_if = "Option::is_none")]
    orders: Option<&'a [Order]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stock_remaining: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address_share: Option<u32>,
}

impl<'a> ErrorBody<'a> {
    fn new(code: &'static str, message: &'a str) -> Self {
        Self {
            code,
            message,
            order: None,
            orders: None,
            allowed: None,
            stock_remaining: None,
            address_share: None,
        }
    }
}

impl ApiError {
    /// The purchase answer this error is, if it is one ([`Outcome`] holds its code and
    /// status); `None` for the answers no purchase gets (auth, orders lookup, routing).
    pub fn outcome(&self) -> Option<Outcome> {
        Some(match self {
            ApiError::InvalidRequest(_) => Outcome::InvalidRequest,
            ApiError::SaleNotFound => Outcome::SaleNotFound,
            ApiError::AlreadyPurchased(_) => Outcome::AlreadyPurchased,
            ApiError::LimitExceeded { .. } => Outcome::LimitExceeded,
            ApiError::SoldOut => Outcome::SoldOut,
            ApiError::InsufficientStock { .. } => Outcome::InsufficientStock,
            ApiError::SaleNotActive(_) => Outcome::SaleNotActive,
            ApiError::AddressShareTaken { .. } => Outcome::AddressLimitReached,
            ApiError::BodyTimeout => Outcome::BodyTimeout,
            ApiError::Unauthenticated(_) => Outcome::Unauthenticated,
            ApiError::Forbidden => Outcome::Forbidden,
            ApiError::PayloadTooLarge => Outcome::PayloadTooLarge,
            ApiError::UnsupportedMediaType => Outcome::UnsupportedMediaType,
            ApiError::IdempotencyKeyReused => Outcome::IdempotencyKeyReused,
            ApiError::RateLimited { .. } => Outcome::RateLimited,
            ApiError::Overloaded => Outcome::Overloaded,
            ApiError::Timeout | ApiError::Store(StoreError::Timeout { .. }) => Outcome::Timeout,
            ApiError::Store(StoreError::Internal { .. }) | ApiError::Internal(_) => {
                Outcome::Internal
            }
            ApiError::Store(_) => Outcome::Unavailable,
            ApiError::Unauthorized
            | ApiError::InvalidCredentials
            | ApiError::EmailTaken
            | ApiError::SaleStarted(_)
            | ApiError::SaleEnded(_)
            | ApiError::OrderNotFound
            | ApiError::NotFound
            | ApiError::MethodNotAllowed
            | ApiError::ImageTooLarge { .. }
            | ApiError::UnsupportedImage
            | ApiError::ImageNotFound
            | ApiError::Checkout { .. } => return None,
        })
    }

    /// The stable wire code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::EmailTaken => "email_taken",
            ApiError::SaleStarted(_) => "sale_started",
            ApiError::SaleEnded(_) => "sale_ended",
            ApiError::OrderNotFound => "order_not_found",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::ImageTooLarge { .. } => "image_too_large",
            ApiError::UnsupportedImage => "unsupported_image",
            ApiError::ImageNotFound => "image_not_found",
            ApiError::Checkout { outcome, .. } => outcome.code(),
            _ => self.outcome().map_or("internal", Outcome::code),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::InvalidCredentials => StatusCode::UNAUTHORIZED,
            ApiError::EmailTaken | ApiError::SaleStarted(_) | ApiError::SaleEnded(_) => {
                StatusCode::CONFLICT
            }
            ApiError::OrderNotFound | ApiError::NotFound | ApiError::ImageNotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::ImageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedImage => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Checkout { outcome, .. } => {
                StatusCode::from_u16(outcome.status()).unwrap_or(StatusCode::CONFLICT)
            }
            _ => self
                .outcome()
                .and_then(|o| StatusCode::from_u16(o.status()).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    fn body(&self) -> Bytes {
        let fixed = match self {
            ApiError::Unauthorized => UNAUTHORIZED,
            ApiError::Unauthenticated(Challenge::Missing) => TOKEN_MISSING,
            ApiError::Unauthenticated(Challenge::InvalidToken) => TOKEN_INVALID,
            ApiError::Unauthenticated(Challenge::GuestMode) => GUEST_MODE,
            ApiError::Forbidden => FORBIDDEN,
            ApiError::InvalidCredentials => INVALID_CREDENTIALS,
            ApiError::EmailTaken => EMAIL_TAKEN,
            ApiError::SaleNotFound => SALE_NOT_FOUND,
            ApiError::OrderNotFound => ORDER_NOT_FOUND,
            ApiError::NotFound => NOT_FOUND,
            ApiError::MethodNotAllowed => METHOD_NOT_ALLOWED,
            ApiError::UnsupportedImage => UNSUPPORTED_IMAGE,
            ApiError::ImageNotFound => IMAGE_NOT_FOUND,
            ApiError::SoldOut => SOLD_OUT,
            ApiError::SaleNotActive(NotActiveReason::Upcoming) => NOT_ACTIVE_UPCOMING,
            ApiError::SaleNotActive(NotActiveReason::Ended) => NOT_ACTIVE_ENDED,
            ApiError::PayloadTooLarge => PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => UNSUPPORTED_MEDIA_TYPE,
            ApiError::IdempotencyKeyReused => IDEMPOTENCY_KEY_REUSED,
            ApiError::RateLimited { .. } => RATE_LIMITED,
            ApiError::BodyTimeout => BODY_TIMEOUT,
            ApiError::Overloaded => OVERLOADED,
            ApiError::Timeout => TIMEOUT,
            ApiError::Store(StoreError::Internal { .. }) | ApiError::Internal(_) => INTERNAL,
            ApiError::Store(StoreError::Timeout { .. }) => TIMEOUT,
            ApiError::Store(_) => UNAVAILABLE,
            ApiError::InvalidRequest(message) => {
                return to_bytes(&ErrorBody::new("invalid_request", message));
            }
            ApiError::SaleStarted(rule) => {
                return to_bytes(&ErrorBody::new("sale_started", rule));
            }
            ApiError::ImageTooLarge { limit } => {
                let message = format!("the image must be at most {limit} bytes");
                return to_bytes(&ErrorBody::new("image_too_large", &message));
            }
            ApiError::SaleEnded(rule) => {
                return to_bytes(&ErrorBody::new("sale_ended", rule));
            }
            ApiError::Checkout {
                outcome,
                message,
                order,
            } => {
                return to_bytes(&ErrorBody {
                    order: order.as_deref(),
                    ..ErrorBody::new(outcome.code(), message)
                });
            }
            ApiError::AlreadyPurchased(orders) => {
                return to_bytes(&ErrorBody {
                    order: orders.first(),
                    orders: Some(orders),
                    ..ErrorBody::new(
                        "already_purchased",
                        "this buyer already holds the per-user limit",
                    )
                });
            }
            ApiError::LimitExceeded { allowed, orders } => {
                return to_bytes(&ErrorBody {
                    allowed: Some(*allowed),
                    orders: Some(orders),
                    ..ErrorBody::new(
                        "limit_exceeded",
                        "this quantity would take the buyer over the per-user limit",
                    )
                });
            }
            ApiError::AddressShareTaken { share } => {
                return to_bytes(&ErrorBody {
                    address_share: Some(*share),
                    ..ErrorBody::new(
                        "address_limit_reached",
                        "buyers from this network address already hold their share of this sale",
                    )
                });
            }
            ApiError::InsufficientStock { stock_remaining } => {
                return to_bytes(&ErrorBody {
                    stock_remaining: Some(*stock_remaining),
                    ..ErrorBody::new(
                        "insufficient_stock",
                        "fewer units are left than the quantity asked for",
                    )
                });
            }
        };
        Bytes::from_static(fixed.as_bytes())
    }
}

fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    match serde_json::to_vec(value) {
        Ok(bytes) => Bytes::from(bytes),
        // Serialising these plain structs cannot fail; answer generically if it ever does.
        Err(_) => Bytes::from_static(INTERNAL.as_bytes()),
    }
}

/// Why an answer is a 5xx, carried on the response to the one place that logs it,
/// [`crate::http::stack::Framed`], which knows the request (id, method, path) and logs it once.
#[derive(Debug, Clone)]
pub struct Failure {
    /// A bug or corrupt data (logged as an error), not a dependency being away (a warning).
    pub internal: bool,
    /// The log line's message: what kind of failure.
    pub what: &'static str,
    /// What failed, with its whole cause chain on one line.
    pub cause: String,
}

impl Failure {
    /// The failure behind `error`, if it is one worth a log line.
    fn of(error: &ApiError) -> Option<Self> {
        let (internal, what, cause) = match error {
            ApiError::Store(cause @ StoreError::Internal { .. }) => {
                (true, "internal error", cause.report().to_string())
            }
            ApiError::Internal(cause) => (true, "internal error", cause.clone()),
            ApiError::Store(cause) => (false, "store unavailable", cause.report().to_string()),
            _ => return None,
        };
        Some(Self {
            internal,
            what,
            cause,
        })
    }

    /// Logs it, once, with the request it answered.
    pub fn log(&self, id: &str, method: &axum::http::Method, path: &str, status: StatusCode) {
        let status = status.as_u16();
        let (what, cause) = (self.what, &self.cause);
        if self.internal {
            tracing::error!(id, %method, path, status, error = %cause, "{what}");
        } else {
            tracing::warn!(id, %method, path, status, error = %cause, "{what}");
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let failure = Failure::of(&self);
        let mut response = (status, self.body()).into_response();
        if let Some(failure) = failure {
            response.extensions_mut().insert(failure);
        }
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self,
            ApiError::BodyTimeout
                | ApiError::PayloadTooLarge
                | ApiError::ImageTooLarge { .. }
                | ApiError::UnsupportedMediaType
                | ApiError::Unauthorized
                | ApiError::Unauthenticated(_)
        ) {
            // Refused with the body unread (or only partly read): hyper cannot reuse the
            // connection, so say so, or a keep-alive client's next request meets a closed
            // socket.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::Unauthenticated(challenge) = self {
            let challenge = match challenge {
                Challenge::InvalidToken => INVALID_TOKEN_CHALLENGE,
                Challenge::Missing | Challenge::GuestMode => BEARER_CHALLENGE,
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let ApiError::RateLimited { retry_after_secs } = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fixed_bodies_are_json_with_their_code() {
        let all = [
            ApiError::Unauthorized,
            ApiError::Unauthenticated(Challenge::Missing),
            ApiError::Unauthenticated(Challenge::InvalidToken),
            ApiError::Unauthenticated(Challenge::GuestMode),
            ApiError::Forbidden,
            ApiError::InvalidCredentials,
            ApiError::EmailTaken,
            ApiError::SaleNotFound,
            ApiError::OrderNotFound,
            ApiError::NotFound,
            ApiError::MethodNotAllowed,
            ApiError::SoldOut,
            ApiError::SaleNotActive(NotActiveReason::Upcoming),
            ApiError::SaleNotActive(NotActiveReason::Ended),
            ApiError::PayloadTooLarge,
            ApiError::UnsupportedMediaType,
            ApiError::IdempotencyKeyReused,
            ApiError::Overloaded,
            ApiError::Timeout,
            ApiError::RateLimited {
                retry_after_secs: 3,
            },
            ApiError::Store(StoreError::ShuttingDown),
            ApiError::Store(StoreError::timeout("x")),
            ApiError::Store(StoreError::internal("x")),
            ApiError::InvalidRequest("bad \"quote\"".into()),
            ApiError::AddressShareTaken { share: 10 },
            ApiError::BodyTimeout,
            ApiError::ImageTooLarge { limit: 2048 },
            ApiError::UnsupportedImage,
            ApiError::ImageNotFound,
        ];
        for e in all {
            let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
            assert_eq!(v["code"], e.code());
            assert!(v["message"].is_string());
        }
    }

    /// One error for each purchase answer other than `confirmed`.
    fn one_error_per_outcome() -> Vec<ApiError> {
        vec![
            ApiError::InvalidRequest("bad".into()),
            ApiError::SaleNotFound,
            ApiError::AlreadyPurchased(Vec::new()),
            ApiError::LimitExceeded {
                allowed: 1,
                orders: Vec::new(),
            },
            ApiError::SoldOut,
            ApiError::InsufficientStock { stock_remaining: 1 },
            ApiError::SaleNotActive(NotActiveReason::Ended),
            ApiError::AddressShareTaken { share: 1 },
            ApiError::BodyTimeout,
            ApiError::PayloadTooLarge,
            ApiError::UnsupportedMediaType,
            ApiError::IdempotencyKeyReused,
            ApiError::Unauthenticated(Challenge::Missing),
            ApiError::Forbidden,
            ApiError::RateLimited {
                retry_after_secs: 1,
            },
            ApiError::Overloaded,
            ApiError::Timeout,
            ApiError::Store(StoreError::unavailable("x")),
            ApiError::Internal("x".into()),
        ]
    }

    #[test]
    fn every_outcome_but_confirmed_and_reserved_is_an_error_answered_with_its_code_and_status() {
        let errors = one_error_per_outcome();
        let covered: std::collections::BTreeSet<Outcome> =
            errors.iter().filter_map(ApiError::outcome).collect();
        let expected: std::collections::BTreeSet<Outcome> = Outcome::ALL
            .into_iter()
            .filter(|o| !matches!(o, Outcome::Confirmed | Outcome::Reserved))
            .collect();
        assert_eq!(covered, expected);
        for e in errors {
            let outcome = e.outcome().unwrap();
            let response_status = e.status();
            let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
            assert_eq!(v["code"], outcome.code(), "{e:?}");
            assert_eq!(response_status.as_u16(), outcome.status(), "{e:?}");
        }
    }

    #[test]
    fn rate_limited_answers_carry_their_retry_after() {
        let response = ApiError::RateLimited {
            retry_after_secs: 3,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }

    fn failure_of(error: ApiError) -> Failure {
        error
            .into_response()
            .extensions()
            .get::<Failure>()
            .cloned()
            .expect("a 5xx carries its failure")
    }

    #[test]
    fn a_store_failure_carries_its_whole_cause_chain_to_the_log() {
        let root = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let failure = failure_of(ApiError::Store(StoreError::unavailable_from(
            "postgres commit orders",
            root,
        )));
        assert!(!failure.internal);
        assert_eq!(
            failure.cause,
            "store unavailable: postgres commit orders: connection refused"
        );
    }

    #[test]
    fn an_internal_store_error_is_an_internal_failure_with_its_root_cause() {
        let root = std::io::Error::other("malformed reply");
        let inner = StoreError::internal_from("parsing the admission reply", root);
        let failure = failure_of(ApiError::Store(StoreError::unavailable_from(
            "the admission failed",
            inner,
        )));
        assert_eq!(
            failure.cause,
            "store unavailable: the admission failed: store internal error: parsing the \
             admission reply: malformed reply"
        );
        let failure = failure_of(ApiError::Store(StoreError::internal_from(
            "parsing the admission reply",
            std::io::Error::other("malformed reply"),
        )));
        assert!(failure.internal);
        assert!(failure.cause.contains("malformed reply"), "{failure:?}");
    }

    #[test]
    fn answers_that_are_not_failures_carry_none() {
        for error in [
            ApiError::SaleNotFound,
            ApiError::Overloaded,
            ApiError::Timeout,
        ] {
            assert!(
                error
                    .into_response()
                    .extensions()
                    .get::<Failure>()
                    .is_none()
            );
        }
    }

    #[test]
    fn unauthenticated_answers_challenge_and_say_when_the_token_was_refused() {
        let missing = ApiError::Unauthenticated(Challenge::Missing).into_response();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="flashsale""#
        );
        let refused = ApiError::Unauthenticated(Challenge::InvalidToken).into_response();
        assert_eq!(
            refused.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="flashsale", error="invalid_token""#
        );
        assert_eq!(ApiError::Forbidden.status(), StatusCode::FORBIDDEN);
    }
}
