//! Group admission: the attempts of one sale that arrive together are decided by one run of
//! `admission.lua`, in arrival order, as the group commit (`orders.rs`) makes their orders
//! durable in one transaction.
//!
//! Purchases hand their attempt to one batching task and wait for their own reply. The task
//! takes everything queued (up to [`MAX_ATTEMPTS_PER_CALL`]), splits it by sale (a script
//! call touches the keys of one sale), and runs one script call per sale. Nothing waits for a
//! batch to fill: an attempt arriving while Redis is idle goes at once, alone; while
//! [`CONCURRENT_CALLS`] calls are in flight the queue grows into the next batch.
//!
//! Each attempt is decided exactly as it would have been alone at that point: the script reads
//! the sale afresh before each, so an attempt sees every write of the ones before it. A call
//! that fails fails every attempt of its batch with the same error; the caller then releases
//! its own order id (`purchase.rs`), as when a single attempt's call failed: a script stopped
//! half-way (Redis does not roll a script back) leaves reservations that those releases undo.
//! A caller whose batch task went away without replying is told the same.

use super::grouping::next_group;
use super::keys::Keys;
use super::scripts::{AdmissionArgs, AdmissionReply, Scripts};
use crate::{AdmissionBatches, Attempt, BATCH_SIZE_BOUNDS, StoreError};
use flashsale_core::SaleId;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Most attempts decided by one script call (a call holds Redis for its whole run: at about
/// 5 µs an attempt, a full batch takes a few ms).
pub(crate) const MAX_ATTEMPTS_PER_CALL: usize = 512;
/// Batches in flight at once: one being decided while the next one's reply travels keeps
/// Redis busy without letting every attempt go alone.
const CONCURRENT_CALLS: usize = 2;

/// One attempt waiting for its decision.
struct Request {
    attempt: Arc<Attempt>,
    /// The order id to use if admitted.
    order_id: Uuid,
    reply: oneshot::Sender<Result<AdmissionReply, StoreError>>,
}

/// The sending side of the batching task.
pub(crate) struct Admitter {
    tx: mpsc::Sender<Request>,
    batcher: Arc<Batcher>,
}

impl Admitter {
    /// Starts the batching task on `tracker`; it stops once `cancel` is cancelled, failing
    /// what is still queued (nothing of it was sent).
    pub(crate) fn spawn(
        scripts: Arc<Scripts>,
        keys: Arc<Keys>,
        lease_ms: u64,
        cancel: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let batcher = Arc::new(Batcher {
            scripts,
            keys,
            lease_ms,
            meter: Meter::default(),
        });
        let (tx, rx) = mpsc::channel(MAX_ATTEMPTS_PER_CALL * 4);
        tracker.spawn(Arc::clone(&batcher).run(rx, cancel.clone(), tracker.clone()));
        Self { tx, batcher }
    }

    /// Decides `attempt` (admitted under `order_id`) in the next batch of its sale.
    pub(crate) async fn admit(
        &self,
        attempt: &Arc<Attempt>,
        order_id: Uuid,
    ) -> Result<AdmissionReply, StoreError> {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            attempt: Arc::clone(attempt),
            order_id,
            reply,
        };
        if self.tx.send(request).await.is_err() {
            return Err(StoreError::ShuttingDown);
        }
        // The batch task went away mid-call (the runtime is going down): the script may have
        // run, so this is a failed call like any other.
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::unavailable(
                "the admission batch ended without a reply",
            ))
        })
    }

    /// The calls made so far, and their sizes.
    pub(crate) fn batches(&self) -> AdmissionBatches {
        self.batcher.meter.read()
    }
}

/// What the batching task works with.
struct Batcher {
    scripts: Arc<Scripts>,
    keys: Arc<Keys>,
    lease_ms: u64,
    meter: Meter,
}

impl Batcher {
    async fn run(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Request>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) {
        let permits = Arc::new(Semaphore::new(CONCURRENT_CALLS));
        while let Some((permit, queued)) =
            next_group(&mut rx, &permits, &cancel, MAX_ATTEMPTS_PER_CALL).await
        {
            let permit = Arc::new(permit);
            for (sale, batch) in by_sale(queued) {
                let batcher = Arc::clone(&self);
                let permit = Arc::clone(&permit);
                tracker.spawn(async move {
                    batcher.decide(sale, batch).await;
                    drop(permit);
                });
            }
        }
        // Shutting down (purchases have drained by now): what is left was never sent.
        rx.close();
        while let Ok(request) = rx.try_recv() {
            let _ = request.reply.send(Err(StoreError::ShuttingDown));
        }
    }

    /// Decides one sale's batch in one script call and answers each of its attempts.
    async fn decide(&self, sale: SaleId, batch: Vec<Request>) {
        let keys = self.keys.sale(sale);
        let args: Vec<AdmissionArgs<'_>> = batch
            .iter()
            .map(|r| AdmissionArgs {
                user: r.attempt.user_id.as_str(),
                quantity: r.attempt.quantity.get(),
                idempotency_key: r
                    .attempt
                    .idempotency_key
                    .as_ref()
                    .map_or("", |k| k.as_str()),
                order_id: r.order_id,
            })
            .collect();
        self.meter.record(batch.len());
        let result = self.scripts.admission(&keys, self.lease_ms, &args).await;
        drop(args);
        match result {
            Ok(replies) => {
                for (request, reply) in batch.into_iter().zip(replies) {
                    // Its purchase task owns the receiver and runs to its end; it is gone only
                    // if the runtime is going down, and then the reconciler settles the
                    // reservation after its lease.
                    let _ = request.reply.send(Ok(reply));
                }
            }
            Err(e) => {
                let errors = e.for_each_of(batch.len());
                for (request, e) in batch.into_iter().zip(errors) {
                    let _ = request.reply.send(Err(e));
                }
            }
        }
    }
}

/// Splits queued attempts by sale, each sale's in arrival order, sales in order of their
/// first attempt (nearly always one sale: a flash sale is one hot key).
fn by_sale(queued: Vec<Request>) -> Vec<(SaleId, Vec<Request>)> {
    let mut sales: Vec<(SaleId, Vec<Request>)> = Vec::with_capacity(1);
    for request in queued {
        let sale = request.attempt.sale_id;
        match sales.iter_mut().find(|(id, _)| *id == sale) {
            Some((_, batch)) => batch.push(request),
            None => sales.push((sale, vec![request])),
        }
    }
    sales
}

/// Counts script calls and their sizes, lock-free (one call records three increments).
#[derive(Default)]
struct Meter {
    calls: AtomicU64,
    attempts: AtomicU64,
    /// Calls by size bucket: `(BATCH_SIZE_BOUNDS[i - 1], BATCH_SIZE_BOUNDS[i]]`.
    by_bucket: [AtomicU64; BATCH_SIZE_BOUNDS.len()],
}

impl Meter {
    fn record(&self, size: usize) {
        let size = size as u64;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.attempts.fetch_add(size, Ordering::Relaxed);
        let bucket = BATCH_SIZE_BOUNDS
            .iter()
            .position(|&bound| size <= bound)
            .unwrap_or(BATCH_SIZE_BOUNDS.len() - 1);
        self.by_bucket[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> AdmissionBatches {
        let mut at_most = [0; BATCH_SIZE_BOUNDS.len()];
        let mut sum = 0;
        for (cell, bucket) in at_most.iter_mut().zip(&self.by_bucket) {
            sum += bucket.load(Ordering::Relaxed);
            *cell = sum;
        }
        AdmissionBatches {
            calls: self.calls.load(Ordering::Relaxed),
            attempts: self.attempts.load(Ordering::Relaxed),
            at_most,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_batch_is_the_last_size_bound() {
        assert_eq!(
            BATCH_SIZE_BOUNDS.last().copied(),
            Some(MAX_ATTEMPTS_PER_CALL as u64)
        );
    }

    #[test]
    fn the_meter_counts_calls_attempts_and_cumulative_sizes() {
        let meter = Meter::default();
        for size in [1, 1, 2, 3, 512] {
            meter.record(size);
        }
        let read = meter.read();
        assert_eq!((read.calls, read.attempts), (5, 519));
        assert_eq!(&read.at_most[..4], &[2, 3, 4, 4]);
        assert_eq!(read.at_most.last().copied(), Some(5));
    }
}
