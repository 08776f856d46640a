//! The snapshot's refresher: a background task that, every `refresh_interval` (100 ms by
//! default, at most 250 ms), loads new sales from PostgreSQL (created by any instance), then
//! reads the clock and every sale's figures from Redis in one pipelined round trip. A sale
//! whose Redis state is missing is rebuilt from here too, so Redis losing its data is noticed
//! even when nobody is buying. A sale whose Redis `revision` is ahead of the view (an operator
//! changed it, on any instance) is reloaded from PostgreSQL. About once a second it also flushes the operator counters.

use super::connections::Redis;
use super::counters::Counters;
use super::keys::Keys;
use super::rebuild::Rebuilder;
use super::snapshot::{Figures, Snapshot};
use crate::StoreError;
use flashsale_core::SaleId;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest refresh period, whatever the configuration says.
const MAX_PERIOD: Duration = Duration::from_millis(250);

/// Refreshes the snapshot.
pub(crate) struct Refresher {
    snapshot: Arc<Snapshot>,
    redis: Arc<Redis>,
    keys: Arc<Keys>,
    rebuilder: Arc<Rebuilder>,
    counters: Arc<Counters>,
    period: Duration,
}

impl Refresher {
    /// A refresher of `snapshot` every `interval` (at most 250 ms).
    pub(crate) fn new(
        snapshot: Arc<Snapshot>,
        redis: Arc<Redis>,
        keys: Arc<Keys>,
        rebuilder: Arc<Rebuilder>,
        counters: Arc<Counters>,
        interval: Duration,
    ) -> Self {
        Self {
            snapshot,
            redis,
            keys,
            rebuilder,
            counters,
            period: interval.min(MAX_PERIOD),
        }
    }

    /// Refreshes the snapshot every period until cancelled.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.refresh().await;
            n += 1;
            // Counters are statistics: flushing them about once a second is plenty.
            if n.is_multiple_of(10)
                && let Err(e) = self.counters.flush().await
            {
                tracing::debug!(error = %e.report(), "counters not flushed; retrying later");
            }
        }
    }

    /// One refresh: new sales from PostgreSQL, then figures and clock from Redis.
    pub(crate) async fn refresh(&self) {
        if let Err(e) = self.snapshot.load_new().await {
            tracing::debug!(error = %e.report(), "snapshot: cannot load new sales");
        }
        let ids = self.snapshot.ids();
        let read = match self.read_redis(&ids).await {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(error = %e.report(), "snapshot: redis unreachable, keeping the last view");
                return;
            }
        };
        self.snapshot.observe_clock(read.clock_us);
        let applied = self.snapshot.apply(&ids, read.figures);
        for sale in applied.missing {
            if let Err(e) = self.rebuilder.rebuild(&sale).await {
                tracing::warn!(sale = %sale.id, error = %e.report(), "cannot rebuild sale in Redis yet");
            }
        }
        for id in applied.changed {
            if let Err(e) = self.snapshot.reload(id).await {
                tracing::debug!(sale = %id, error = %e.report(), "cannot reload a changed sale yet");
            }
        }
    }

    /// Redis's clock and the figures of `ids`, in one pipeline.
    async fn read_redis(&self, ids: &[SaleId]) -> Result<RedisRead, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        for id in ids {
            pipe.cmd("HMGET")
                .arg(&self.keys.sale(*id).meta)
                .arg("remaining")
                .arg("reserved")
                .arg("sold_out_us")
                .arg("epoch")
                .arg("revision")
                .arg("onhold");
        }
        let mut con = self.redis.con();
        type Meta = (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        );
        let (time, metas) = self
            .redis
            .call("snapshot", async {
                let mut values: Vec<redis::Value> = pipe.query_async(&mut con).await?;
                let time: Vec<String> = redis::from_redis_value(values.remove(0))?;
                let metas = values
                    .into_iter()
                    .map(|v| redis::from_redis_value(v).map_err(redis::RedisError::from))
                    .collect::<redis::RedisResult<Vec<Meta>>>()?;
                Ok::<_, redis::RedisError>((time, metas))
            })
            .await?;
        let clock_us = match time.as_slice() {
            [secs, micros] => match (secs.parse::<i64>(), micros.parse::<i64>()) {
                (Ok(secs), Ok(micros)) => Some(secs * 1_000_000 + micros),
                _ => None,
            },
            _ => None,
        };
        let figures = metas
            .into_iter()
            .map(
                |(remaining, reserved, sold_out_us, epoch, revision, on_hold)| Figures {
                    remaining,
                    reserved,
                    on_hold,
                    sold_out_us,
                    epoch,
                    revision,
                },
            )
            .collect();
        Ok(RedisRead { clock_us, figures })
    }
}

/// What one refresh read from Redis.
struct RedisRead {
    /// Redis's clock (microseconds), if its reply was readable.
    clock_us: Option<i64>,
    /// The figures of each sale asked about, in the same order.
    figures: Vec<Figures>,
}
