//! Live updates: `GET /api/sales/{sale_id}/events` (Server-Sent Events).
//!
//! One broadcaster task per sale with open streams polls `store.status()` every 100 ms and
//! publishes on a `watch` channel when the state, stock or sold-out instant changes; the body is
//! serialised once per change, however many streams are open. Each stream sends the current
//! status at once, then every change, and a fresh status after 5 s of silence (heartbeat).
//! The broadcaster stops when its last stream closes; every stream ends when the application
//! shuts down, so open streams never hold up a graceful shutdown.
//!
//! Streams are bounded (issue 17): one client address holds at most `--max-streams-per-ip`
//! (past it, 429 `rate_limited`), and each stream ends after `--stream-lifetime-secs` (give or
//! take a tenth, so streams opened together do not all reconnect together). The page treats
//! the end like a dropped stream: it polls and reconnects within a second or two.

use crate::address_slots::AddressSlot;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::SalePath;
use crate::http::sales::SaleBody;
use axum::extract::{Request, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use flashsale_core::{SaleId, SaleState};
use flashsale_store::{SaleStatus, SaleStore, StoreError};
use futures_util::stream;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a broadcaster asks the store.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The longest silence on a stream.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// One published status and its serialised body.
struct Snapshot {
    status: SaleStatus,
    state: SaleState,
    json: String,
}

impl Snapshot {
    fn new(status: SaleStatus, now: OffsetDateTime) -> Self {
        let state = status.state(now);
        let json = serde_json::to_string(&SaleBody::new(&status, now)).unwrap_or_default();
        Self {
            status,
            state,
            json,
        }
    }

    /// Whether `other` is worth telling streams about (`server_time` alone is not; an
    /// operator's change of the sale, its product included, is; so is a payment, which moves
    /// held to sold without changing what is available, and a change of the waitlist).
    fn differs(&self, other: &SaleStatus, state: SaleState) -> bool {
        self.state != state
            || self.status.sale != other.sale
            || self.status.remaining != other.remaining
            || self.status.held != other.held
            || self.status.waitlist != other.waitlist
            || self.status.sold_out_at != other.sold_out_at
    }
}

/// The per-sale broadcasters.
pub struct Broadcasts {
    store: Arc<dyn SaleStore>,
    feeds: Arc<Mutex<HashMap<SaleId, watch::Receiver<Arc<Snapshot>>>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Broadcasts {
    /// Broadcasters read `store`, run on `tasks` and stop on `shutdown`.
    pub fn new(store: Arc<dyn SaleStore>, shutdown: CancellationToken, tasks: TaskTracker) -> Self {
        Self {
            store,
            feeds: Arc::default(),
            shutdown,
            tasks,
        }
    }

    /// A receiver of the sale's snapshots, starting its broadcaster if none runs; `None` if
    /// there is no such sale.
    async fn subscribe(
        &self,
        id: SaleId,
    ) -> Result<Option<watch::Receiver<Arc<Snapshot>>>, StoreError> {
        if let Some(rx) = self.feeds.lock().get(&id) {
            return Ok(Some(rx.clone()));
        }
        // The lock is not held across the store call; a racing subscriber may start the
        // broadcaster first, in which case `entry` keeps theirs.
        let Some(status) = self.store.status(id).await? else {
            return Ok(None);
        };
        let mut feeds = self.feeds.lock();
        let rx = feeds.entry(id).or_insert_with(|| {
            let (tx, rx) = watch::channel(Arc::new(Snapshot::new(status, self.store.now())));
            self.tasks.spawn(broadcast(
                id,
                tx,
                Arc::clone(&self.store),
                Arc::clone(&self.feeds),
                self.shutdown.clone(),
            ));
            rx
        });
        Ok(Some(rx.clone()))
    }
}

/// Polls one sale and publishes changes until no stream listens or the app shuts down.
async fn broadcast(
    id: SaleId,
    tx: watch::Sender<Arc<Snapshot>>,
    store: Arc<dyn SaleStore>,
    feeds: Arc<Mutex<HashMap<SaleId, watch::Receiver<Arc<Snapshot>>>>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        {
            // The map holds one receiver; when it is the only one left, nobody listens.
            // Checked under the map's lock, so no subscriber can clone it meanwhile.
            let mut feeds = feeds.lock();
            if tx.receiver_count() <= 1 {
                feeds.remove(&id);
                return;
            }
        }
        match store.status(id).await {
            Ok(Some(status)) => {
                let now = store.now();
                let state = status.state(now);
                if tx.borrow().differs(&status, state) {
                    tx.send_replace(Arc::new(Snapshot::new(status, now)));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(sale = %id, error = %e, "status poll failed"),
        }
    }
    feeds.lock().remove(&id);
}

/// Live updates of a sale's state and stock.
#[utoipa::path(
    get,
    path = "/api/sales/{sale_id}/events",
    tag = "sales",
    params(("sale_id" = i64, Path, description = "The sale's id")),
    responses(
        (status = 200, description = "`text/event-stream`: `event: sale` messages whose data is the status body", content_type = "text/event-stream"),
        (status = 404, description = "`sale_not_found`", body = crate::http::openapi::ErrorDoc),
        (status = 429, description = "`rate_limited`: this address has too many streams open (or sent too many reads); `Retry-After` set", body = crate::http::openapi::ErrorDoc),
    )
)]
pub async fn get_events(
    State(app): State<AppState>,
    SalePath(id): SalePath,
    request: Request,
) -> Result<Response, ApiError> {
    // Without a peer address (a router called in-process) there is nobody to count.
    let slot = match app.limiter.client_of(&request) {
        Some(client) => Some(app.streams.try_take(client).ok_or(ApiError::RateLimited {
            retry_after_secs: HEARTBEAT.as_secs(),
        })?),
        None => None,
    };
    let rx = app
        .events
        .subscribe(id)
        .await?
        .ok_or(ApiError::SaleNotFound)?;
    let stream = stream::unfold(
        Feed {
            rx,
            first: true,
            store: Arc::clone(&app.events.store),
            shutdown: app.events.shutdown.clone(),
            ends: tokio::time::Instant::now() + jittered(app.stream_lifetime),
            _slot: slot,
        },
        Feed::next,
    );
    Ok(Sse::new(stream).into_response())
}

/// One stream's position.
struct Feed {
    rx: watch::Receiver<Arc<Snapshot>>,
    first: bool,
    store: Arc<dyn SaleStore>,
    shutdown: CancellationToken,
    /// When the server ends this stream.
    ends: tokio::time::Instant,
    /// The address's stream slot, given back when the stream ends.
    _slot: Option<AddressSlot>,
}

/// `lifetime` give or take a tenth.
fn jittered(lifetime: Duration) -> Duration {
    // A fresh `RandomState` holds fresh random keys: enough randomness for spreading.
    let unit = RandomState::new().hash_one(0u8) % 1_000;
    lifetime.mul_f64(0.9 + 0.2 * (unit as f64) / 1_000.0)
}

impl Feed {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if self.first {
            self.first = false;
            let snapshot = Arc::clone(&self.rx.borrow_and_update());
            return Some((Ok(event(&snapshot.json)), self));
        }
        let json = tokio::select! {
            () = self.shutdown.cancelled() => return None,
            () = tokio::time::sleep_until(self.ends) => return None,
            changed = self.rx.changed() => {
                changed.ok()?;
                Arc::clone(&self.rx.borrow_and_update()).json.clone()
            }
            () = tokio::time::sleep(HEARTBEAT) => {
                // A heartbeat carries the latest status with a fresh `server_time`.
                let status = self.rx.borrow().status.clone();
                serde_json::to_string(&SaleBody::new(&status, self.store.now())).unwrap_or_default()
            }
        };
        Some((Ok(event(&json)), self))
    }
}

fn event(json: &str) -> Event {
    Event::default().event("sale").data(json)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flashsale_core::NewSale;
    use time::macros::datetime;

    #[test]
    fn a_payment_or_a_waitlist_change_is_published_and_the_clock_alone_is_not() {
        let now = datetime!(2026-11-30 12:30 UTC);
        let sale = NewSale::parse(
            "Lamp",
            datetime!(2026-11-30 12:00 UTC),
            datetime!(2026-11-30 13:00 UTC),
            4,
            1,
        )
        .unwrap()
        .with_id(SaleId(1));
        let status = SaleStatus {
            sale: Arc::new(sale),
            remaining: 0,
            held: 4,
            waitlist: 0,
            sold_out_at: None,
        };
        let published = Snapshot::new(status.clone(), now);
        let same = status.clone();
        assert!(!published.differs(&same, same.state(now + Duration::from_secs(1))));
        let paid = SaleStatus {
            held: 3,
            ..status.clone()
        };
        assert!(published.differs(&paid, paid.state(now)), "held to sold");
        let joined = SaleStatus {
            waitlist: 1,
            ..status
        };
        assert!(published.differs(&joined, joined.state(now)), "a join");
    }
}
