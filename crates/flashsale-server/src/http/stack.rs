//! The middleware every request passes through, as two hand-written tower services rather
//! than a stack of `from_fn` layers: each `from_fn` boxes a `Next` and its future per request,
//! and each `Router::layer` wraps every route in one more boxed `Route` that axum clones per
//! request, so a status read paid as much for its stack as for its handler (issue 15;
//! `scripts/instructions_per_request.sh` counts both).
//!
//! - [`Framed`], around the whole router (routes, fallbacks, panics), built once per listener:
//!   the request id (the `x-request-id` header, kept when the client sent one, generated
//!   otherwise, and echoed on the answer), `X-Content-Type-Options: nosniff` and
//!   `Referrer-Policy: no-referrer`, a `request` span at DEBUG level (so at the default INFO it
//!   costs nothing), a panic answered 500 `internal`, and the one log line of a 5xx: the
//!   [`Failure`] the answer carries, with the request's id, method and path;
//! - [`RouteStack`], around each matched route (a `route_layer`, which is where axum knows the
//!   matched path): the per-address rate limit, the answer timeout, and the route's metrics, in
//!   that order from the inside out: metrics see every answer (timeouts and refusals too), the
//!   timeout covers the limiter and the handler.

use crate::http::AppState;
use crate::http::error::{ApiError, Failure};
use crate::http::limits;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either};
use std::any::Any;
use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument;

/// The request id header.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: a process-wide counter hashed under a key drawn at start, as 16 hex digits.
/// Unique in practice (a 64-bit keyed hash of distinct counters), cheap, easy to grep, and,
/// unlike the bare counter, they do not tell a client how many requests the service has had.
#[derive(Clone)]
pub struct RequestIds(Arc<(AtomicU64, RandomState)>);

impl Default for RequestIds {
    fn default() -> Self {
        Self(Arc::new((AtomicU64::new(0), RandomState::new())))
    }
}

impl RequestIds {
    fn next(&self) -> HeaderValue {
        let (counter, key) = &*self.0;
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let mut hex = [0u8; 16];
        let digits = key.hash_one(n);
        for (i, byte) in hex.iter_mut().enumerate() {
            let nibble = (digits >> (60 - 4 * i)) & 0xf;
            *byte = b"0123456789abcdef"[nibble as usize];
        }
        // Sixteen hex digits are always a valid header value.
        HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// The outermost service (see the module docs): wraps a router once, not each of its routes.
#[derive(Clone)]
pub struct Framed<S> {
    inner: S,
    ids: RequestIds,
}

impl<S> Framed<S> {
    /// Frames every request `inner` serves.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            ids: RequestIds::default(),
        }
    }
}

impl<S, B> Service<axum::http::Request<B>> for Framed<S>
where
    S: Service<axum::http::Request<B>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        let id = match request.headers().get(&X_REQUEST_ID) {
            Some(given) => given.clone(),
            None => {
                let id = self.ids.next();
                request
                    .headers_mut()
                    .insert(X_REQUEST_ID.clone(), id.clone());
                id
            }
        };
        let span = tracing::debug_span!(
            "request",
            id = id.to_str().unwrap_or("-"),
            method = %request.method(),
            path = %request.uri().path(),
        );
        // Kept for a failure's log line: a method and a URI clone are reference counts, not
        // copies.
        let method = request.method().clone();
        let uri = request.uri().clone();
        // A panic while the router makes the handler's future is answered like one inside it.
        // The future is wrapped before it is boxed: each wrapper made inside the box would
        // be one more copy of the whole route's future (memcpy was 11% of a sold-out answer).
        let answer = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)))
            .map(|future| AssertUnwindSafe(future).catch_unwind().instrument(span));
        Box::pin(async move {
            let answered = match answer {
                Ok(future) => future.await,
                Err(panic) => Err(panic),
            };
            let mut response = match answered {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(panic) => panic_response(panic),
            };
            if let Some(failure) = response.extensions_mut().remove::<Failure>() {
                let id = id.to_str().unwrap_or("-");
                failure.log(id, &method, uri.path(), response.status());
            }
            let headers = response.headers_mut();
            headers.insert(X_REQUEST_ID.clone(), id);
            // Browsers must not guess a JSON error into HTML, nor send our URLs elsewhere.
            headers
                .entry(header::X_CONTENT_TYPE_OPTIONS)
                .or_insert(HeaderValue::from_static("nosniff"));
            headers
                .entry(header::REFERRER_POLICY)
                .or_insert(HeaderValue::from_static("no-referrer"));
            Ok(response)
        })
    }
}

/// Puts a [`RouteStack`] around each matched route (`Router::route_layer`).
#[derive(Clone)]
pub struct RouteStackLayer(AppState);

impl RouteStackLayer {
    /// The route stack of the service whose state is `app`.
    pub fn new(app: AppState) -> Self {
        Self(app)
    }
}

impl<S> Layer<S> for RouteStackLayer {
    type Service = RouteStack<S>;
    fn layer(&self, inner: S) -> RouteStack<S> {
        RouteStack {
            inner,
            app: self.0.clone(),
        }
    }
}

/// Rate limit, timeout and metrics around one route (see the module docs).
#[derive(Clone)]
pub struct RouteStack<S> {
    inner: S,
    app: AppState,
}

impl<S> Service<Request> for RouteStack<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        // A clone of the matched path is a reference-count increment, not a copy.
        let route = request.extensions().get::<MatchedPath>().cloned();
        // The limiter decides before the route starts, so a refused request never reaches it.
        // A refusal is rare: boxed, its (larger) future does not widen every route's. The
        // timeout is wrapped before the box for the same reason as in `Framed`.
        let answer = match limits::charge_address(&self.app, &request) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(refusal) => Either::Right(Box::pin(
                limits::refuse_unread(request, refusal.into_response()).map(Ok),
            )),
        };
        // Only the wait for the response head counts: an event stream, once started, is not
        // cut off.
        let answer = tokio::time::timeout(self.app.request_timeout, answer);
        let app = self.app.clone();
        Box::pin(async move {
            let response = match answer.await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    let mut response = ApiError::Timeout.into_response();
                    response.extensions_mut().insert(Failure {
                        internal: false,
                        what: "request timed out",
                        cause: format!("no answer within {:?}", app.request_timeout),
                    });
                    response
                }
            };
            if let Some(route) = route {
                app.metrics
                    .record(route.as_str(), response.status(), started);
            }
            Ok(response)
        })
    }
}

/// The answer to a handler that panicked: 500 `internal`, logged with the panic's message.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    ApiError::Internal(format!("handler panicked: {detail}")).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use flashsale_store::StoreError;
    use tower::ServiceExt;

    /// Runs `f` with a subscriber that writes every log line into the returned buffer.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    /// The log of one `GET path` through [`Framed`] (which catches panics too),
    /// and the request id the answer carried.
    fn log_of_one_request(path: &'static str) -> (String, String) {
        let app = Router::new()
            .route(
                "/unavailable",
                get(|| async {
                    let root = std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "connection refused",
                    );
                    ApiError::Store(StoreError::unavailable_from("postgres commit orders", root))
                }),
            )
            .route(
                "/panics",
                get(|| async {
                    if true {
                        panic!("the handler's bug");
                    }
                }),
            )
            .route("/fine", get(|| async { "fine" }));
        let app = Framed::new(app);
        let mut id = String::new();
        let lines = logged(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
            let response = runtime.block_on(app.oneshot(request)).unwrap();
            id = response.headers()[&X_REQUEST_ID]
                .to_str()
                .unwrap()
                .to_owned();
        });
        (lines, id)
    }

    #[test]
    fn a_failure_is_logged_once_with_its_request_and_whole_cause_chain() {
        let (lines, id) = log_of_one_request("/unavailable");
        assert_eq!(lines.lines().count(), 1, "{lines}");
        for part in [
            "WARN",
            id.as_str(),
            "GET",
            "/unavailable",
            "503",
            "store unavailable: postgres commit orders: connection refused",
        ] {
            assert!(lines.contains(part), "{part:?} missing from {lines}");
        }
    }

    #[test]
    fn a_panic_is_logged_once_as_an_error_with_its_request() {
        let (lines, id) = log_of_one_request("/panics");
        let errors: Vec<_> = lines.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{lines}");
        assert!(
            errors[0].contains(&id) && errors[0].contains("the handler's bug"),
            "{lines}"
        );
    }

    #[test]
    fn a_success_logs_nothing_at_the_default_level() {
        let (lines, id) = log_of_one_request("/fine");
        assert_eq!(id.len(), 16);
        assert_eq!(lines, "", "{lines}");
    }

    #[test]
    fn request_ids_are_sixteen_hex_digits_and_differ() {
        let ids = RequestIds::default();
        let a = ids.next();
        let b = ids.next();
        for id in [&a, &b] {
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 16, "{s}");
            assert!(
                s.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{s}"
            );
        }
        assert_ne!(a, b);
    }
}
