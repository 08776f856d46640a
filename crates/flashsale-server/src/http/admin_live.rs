//! `GET /api/admin/sales/{sale_id}/live`: the operator's live view of one sale as
//! Server-Sent Events, fed by the sale's sampler ([`crate::live`]).
//!
//! The stream opens with one `history` event (the status body and every kept sample, oldest
//! first), then one `sample` event per new sample (each second while the sale runs). After the
//! sample that shows the sale ended the stream ends; for a sale that had already ended it ends
//! right after the history. A viewer that falls [`crate::live`]'s backlog behind, and every
//! stream at shutdown, is ended too: the page reconnects and gets the history again.
//!
//! It needs the admin token in the `Authorization` header, so browsers read it with `fetch()`
//! (an `EventSource` cannot send headers; a token in the URL would end up in logs). Unlike the
//! buyers' streams it is not counted per address: only operators holding the token open it.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, SalePath};
use crate::http::sales::SaleBody;
use crate::live::Published;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use std::convert::Infallible;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Streams a sale's history, then its new samples.
#[utoipa::path(
    get,
    path = "/api/admin/sales/{sale_id}/live",
    tag = "admin",
    security(("admin_token" = [])),
    params(("sale_id" = i64, Path, description = "The sale's id")),
    responses(
        (status = 200, description = "`text/event-stream`: first `event: history` whose data is `{\"sale\": status body, \"samples\": [sample, ...]}` (oldest first), then `event: sample` with one sample each (every second while the sale runs; a sample is `{at, state, ended_reason, stock_total, sold, available, attempts, confirmed_orders, confirmed_units, rejections: {code: n}, latency: null | {count, p50_ms, p99_ms}}`, the counters cumulative, the latency this instance's purchase answers since the previous sample). The stream ends after the sample showing the sale ended.", content_type = "text/event-stream"),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorDoc),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`: too many failed logins from this address", body = crate::http::openapi::ErrorDoc),
        (status = 503, description = "`unavailable`", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn get_live(
    State(app): State<AppState>,
    _: AdminAuth,
    SalePath(id): SalePath,
) -> Result<Response, ApiError> {
    let status = app.store.status(id).await?.ok_or(ApiError::SaleNotFound)?;
    let sale = SaleBody::new(&status, app.store.now());
    let subscription = app.live.subscribe(id);
    let mut history = String::with_capacity(
        64 + subscription
            .history
            .iter()
            .map(|s| s.len() + 1)
            .sum::<usize>(),
    );
    history.push_str("{\"sale\":");
    history.push_str(&serde_json::to_string(&sale).unwrap_or_default());
    history.push_str(",\"samples\":[");
    for (i, sample) in subscription.history.iter().enumerate() {
        if i > 0 {
            history.push(',');
        }
        history.push_str(sample);
    }
    history.push_str("]}");
    let viewer = Viewer {
        history: Some(history),
        next: subscription.next,
        shutdown: app.live.shutdown_token(),
    };
    let stream = stream::unfold(viewer, Viewer::next);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One open stream.
struct Viewer {
    /// Sent first, once.
    history: Option<String>,
    next: Option<broadcast::Receiver<Published>>,
    shutdown: CancellationToken,
}

impl Viewer {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if let Some(history) = self.history.take() {
            let event = Event::default().event("history").data(history);
            return Some((Ok(event), self));
        }
        let rx = self.next.as_mut()?;
        let published = tokio::select! {
            () = self.shutdown.cancelled() => return None,
            // Lagged or closed: end the stream; the page reconnects and reads the history.
            received = rx.recv() => received.ok()?,
        };
        if published.last {
            self.next = None;
        }
        let event = Event::default().event("sample").data(&*published.json);
        Some((Ok(event), self))
    }
}
