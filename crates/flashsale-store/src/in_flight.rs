//! Purchases in flight, owned by their store rather than by whoever asked.
//!
//! A purchase that has taken stock must run to its end (commit then confirm, or undo), or the
//! books would hold a reservation nobody settles until a restart or a lease. The scale-out
//! store runs that part as a task on its own [`InFlight`] tracker: a caller that stops waiting
//! (a client hanging up, a request timeout) only stops hearing the answer, and shutdown waits
//! for every such task. The embedded store needs no task: its writer and syncer settle each
//! pending order themselves (`embedded::writer::PendingOrder`). Either way the caller's
//! [`PurchaseHold`] travels with the purchase, so what the caller meant to hold "while the
//! purchase runs" (an in-flight slot, units reserved for an address) is held exactly that long.

use crate::{PurchaseOutcome, StoreError};
use std::future::Future;
use tokio_util::task::TaskTracker;

/// What a purchase's caller holds for as long as the purchase's work runs, then told how it
/// ended. Dropping it unended (the work never began, or its task was torn down) drops what it
/// holds: nothing was taken on its behalf.
#[derive(Default)]
pub struct PurchaseHold(Option<Box<OnEnd>>);

/// What a [`PurchaseHold`] does with the outcome once the work has ended.
type OnEnd = dyn FnOnce(&Result<PurchaseOutcome, StoreError>) + Send;

impl PurchaseHold {
    /// Holds whatever `on_end` captures until the work ends, then calls it with the outcome
    /// (before the caller, if still waiting, hears it).
    pub fn new(on_end: impl FnOnce(&Result<PurchaseOutcome, StoreError>) + Send + 'static) -> Self {
        Self(Some(Box::new(on_end)))
    }

    /// The work has ended with `outcome`.
    pub(crate) fn end(self, outcome: &Result<PurchaseOutcome, StoreError>) {
        if let Some(on_end) = self.0 {
            on_end(outcome);
        }
    }

    /// The attempt was answered before any work that could take stock: ends the hold with
    /// `outcome` and returns it.
    pub(crate) fn answer(
        self,
        outcome: Result<PurchaseOutcome, StoreError>,
    ) -> Result<PurchaseOutcome, StoreError> {
        self.end(&outcome);
        outcome
    }
}

/// A store's purchases in flight: the tasks that must finish whatever their callers do.
#[derive(Default)]
pub(crate) struct InFlight(TaskTracker);

impl InFlight {
    /// Starts `work` now as a task of its own, ending `hold` with its outcome when it ends;
    /// the returned future only waits for that outcome, so dropping it cancels nothing.
    pub(crate) fn run(
        &self,
        hold: PurchaseHold,
        work: impl Future<Output = Result<PurchaseOutcome, StoreError>> + Send + 'static,
    ) -> impl Future<Output = Result<PurchaseOutcome, StoreError>> + Send + 'static {
        let task = self.0.spawn(async move {
            let outcome = work.await;
            hold.end(&outcome);
            outcome
        });
        async move {
            task.await.map_err(|e| {
                // A panic in the work, or the runtime going away under it.
                StoreError::internal_from("a purchase task did not finish", e)
            })?
        }
    }

    /// Waits until every purchase started so far has ended (later ones are waited for too,
    /// while they keep coming).
    pub(crate) async fn drain(&self) {
        self.0.close();
        self.0.wait().await;
    }
}
