//! The operator's live view of a sale: a per-second history of its figures, kept in memory and
//! streamed by `GET /api/admin/sales/{sale_id}/live` ([`crate::http::admin_live`]).
//!
//! One sampler task per sale, however many operators watch it (as the buyers' event
//! broadcasters): every second it reads the sale's summary from the store (units sold and
//! available, attempts, confirmed, rejections by reason) and this instance's purchase latency
//! over that second ([`crate::latency`]), appends the sample to the sale's bounded
//! [`history::History`] and sends it to the open streams. A viewer gets the history first and
//! then each new sample; the history and the subscription are taken under one lock, so a
//! viewer neither misses nor repeats a sample.
//!
//! Which sales are sampled: every active sale (a watcher looks each second, so the chart
//! covers the sale's life even when nobody opened the page at its start), and an upcoming sale
//! while someone watches it. The sampler of an ended sale takes a last sample and stops (the
//! end is final, FL-5); its history stays for later viewers, for the [`MAX_SALES`] most recent
//! sales.
//!
//! In memory only: a restarted instance starts the history again from its first sample (the
//! chart's line begins there), and with several instances each keeps its own history of the
//! same shared figures, and its own latency.

pub mod history;

use crate::http::sales::{EndedReason, StateName};
use crate::latency::{LatencyCounts, Percentiles, PurchaseLatency};
use flashsale_core::{SaleId, SaleState};
use flashsale_store::{RejectionCounts, SaleStore, Summary};
use history::History;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a sale is sampled (until its history is full; then less often, see [`History`]).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept per sale: half an hour at one a second before thinning (about 0.5 MB of JSON).
pub const HISTORY_CAP: usize = 1_800;
/// Sales whose history is kept; past it, the oldest ended ones are forgotten.
pub const MAX_SALES: usize = 32;
/// New samples a slow stream may fall behind by before it is ended (the page reconnects and
/// gets the history again).
const STREAM_BACKLOG: usize = 64;

/// One sample of a sale, as sent to the page.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// When it was taken (the store's clock).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The state then.
    pub state: StateName,
    /// Why it ended, when ended.
    pub ended_reason: Option<EndedReason>,
    /// Units on sale.
    pub stock_total: u32,
    /// Units taken so far.
    pub sold: u32,
    /// Units not yet taken.
    pub available: u32,
    /// Attempts decided so far.
    pub attempts: u64,
    /// Orders committed so far.
    pub confirmed_orders: u64,
    /// Units committed so far.
    pub confirmed_units: u64,
    /// Rejections by reason so far.
    pub rejections: RejectionCounts,
    /// This instance's purchase answers since the previous sample (all sales), if any.
    pub latency: Option<Percentiles>,
}

impl Sample {
    fn new(summary: &Summary, now: OffsetDateTime, latency: Option<Percentiles>) -> Self {
        let state = summary.status.state(now);
        let stock_total = summary.status.sale.stock;
        Self {
            at: now,
            state: StateName::of(state),
            ended_reason: EndedReason::of(state),
            stock_total,
            sold: stock_total.saturating_sub(summary.status.remaining),
            available: summary.status.remaining,
            attempts: summary.attempts,
            confirmed_orders: summary.confirmed_orders,
            confirmed_units: summary.confirmed_units,
            rejections: summary.rejections,
            latency,
        }
    }
}

/// A serialised sample, and whether it is the sale's last (the sale has ended).
#[derive(Debug, Clone)]
pub struct Published {
    /// The sample as JSON.
    pub json: Arc<str>,
    /// The sale has ended: no sample follows.
    pub last: bool,
}

/// What a new viewer gets: the history so far and the samples that follow it.
pub struct Subscription {
    /// Every kept sample so far, oldest first.
    pub history: Vec<Arc<str>>,
    /// The samples after those; `None` when the sale has ended and none will follow.
    pub next: Option<broadcast::Receiver<Published>>,
}

/// One sale's history and its viewers.
struct Feed {
    history: History<Arc<str>>,
    tx: broadcast::Sender<Published>,
    /// A sampler task runs for this sale.
    sampling: bool,
    /// The last sample showed the sale ended.
    ended: bool,
}

/// Every sampled sale of this instance.
pub struct Live {
    store: Arc<dyn SaleStore>,
    latency: Arc<PurchaseLatency>,
    feeds: Mutex<HashMap<SaleId, Arc<Mutex<Feed>>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Live {
    /// Samplers read `store` and `latency`, run on `tasks` and stop on `shutdown`.
    pub fn new(
        store: Arc<dyn SaleStore>,
        latency: Arc<PurchaseLatency>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            latency,
            feeds: Mutex::default(),
            shutdown,
            tasks,
        })
    }

    /// Cancelled at shutdown: streams end then.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The sale's history and its next samples, starting its sampler if none runs. The caller
    /// has checked that the sale exists.
    pub fn subscribe(self: &Arc<Self>, id: SaleId) -> Subscription {
        let feed = self.feed(id);
        let mut guard = feed.lock();
        let history = guard.history.items().to_vec();
        if guard.ended {
            return Subscription {
                history,
                next: None,
            };
        }
        let next = Some(guard.tx.subscribe());
        self.ensure_sampling(id, &feed, &mut guard);
        Subscription { history, next }
    }

    /// Each second until shutdown: starts a sampler for every active sale that has none, so
    /// its history covers its whole life whether or not anyone watches.
    pub async fn watch_active(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(statuses) = self.store.statuses().await else {
                continue;
            };
            let now = self.store.now();
            for status in statuses
                .iter()
                .filter(|s| s.state(now) == SaleState::Active)
            {
                let feed = self.feed(status.sale.id);
                let mut guard = feed.lock();
                if !guard.ended {
                    self.ensure_sampling(status.sale.id, &feed, &mut guard);
                }
            }
        }
    }

    /// The sale's feed, created (and the oldest ended feeds forgotten) if it has none.
    fn feed(&self, id: SaleId) -> Arc<Mutex<Feed>> {
        let mut feeds = self.feeds.lock();
        if let Some(feed) = feeds.get(&id) {
            return Arc::clone(feed);
        }
        if feeds.len() >= MAX_SALES {
            let mut ended: Vec<SaleId> = feeds
                .iter()
                .filter(|(_, feed)| {
                    let feed = feed.lock();
                    feed.ended && !feed.sampling
                })
                .map(|(id, _)| *id)
                .collect();
            ended.sort_unstable();
            for old in ended.into_iter().take(feeds.len() + 1 - MAX_SALES) {
                feeds.remove(&old);
            }
        }
        let feed = Arc::new(Mutex::new(Feed {
            history: History::new(HISTORY_CAP),
            tx: broadcast::channel(STREAM_BACKLOG).0,
            sampling: false,
            ended: false,
        }));
        feeds.insert(id, Arc::clone(&feed));
        feed
    }

    /// Starts the sale's sampler unless one runs (the caller holds the feed's lock).
    fn ensure_sampling(self: &Arc<Self>, id: SaleId, feed: &Arc<Mutex<Feed>>, guard: &mut Feed) {
        if guard.sampling {
            return;
        }
        guard.sampling = true;
        self.tasks
            .spawn(Arc::clone(self).sample(id, Arc::clone(feed)));
    }

    /// Samples one sale each second until it ends, until an upcoming sale has no viewer, or
    /// until shutdown.
    async fn sample(self: Arc<Self>, id: SaleId, feed: Arc<Mutex<Feed>>) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut since: LatencyCounts = self.latency.counts();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !feed.lock().history.tick() {
                continue;
            }
            let summary = match self.store.summary(id).await {
                Ok(Some(summary)) => summary,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(sale = %id, error = %e, "live sample failed");
                    continue;
                }
            };
            let now = self.store.now();
            let counts = self.latency.counts();
            let sample = Sample::new(&summary, now, counts.since(&since));
            since = counts;
            let json: Arc<str> = serde_json::to_string(&sample).unwrap_or_default().into();
            let last = sample.state == StateName::Ended;
            let mut guard = feed.lock();
            guard.history.push(Arc::clone(&json));
            // No viewer is not an error: the sample is in the history for the next one.
            let _ = guard.tx.send(Published { json, last });
            if last {
                guard.ended = true;
                break;
            }
            // Checked under the feed's lock: a new viewer either counts here or restarts us.
            if sample.state == StateName::Upcoming && guard.tx.receiver_count() == 0 {
                break;
            }
        }
        feed.lock().sampling = false;
    }
}
