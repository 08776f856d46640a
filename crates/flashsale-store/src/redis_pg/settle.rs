//! Settling: applying a reservation's [`Resolution`] in Redis (`settle.lua`), once the fence
//! has decided it: kept and its key confirmed (committed), or its units given back
//! (released). Settling twice is harmless, so whoever resolved a reservation settles it: the
//! group commit, the purchase whose admission reply was lost, the reconciler.

use super::fence::Resolution;
use super::keys::Keys;
use super::scripts::{Scripts, Settled};
use super::snapshot::Snapshot;
use flashsale_core::SaleId;
use std::sync::Arc;
use uuid::Uuid;

/// Settles reservations in Redis and shows confirmed units in the snapshot at once.
pub(crate) struct Settler {
    keys: Arc<Keys>,
    scripts: Arc<Scripts>,
    snapshot: Arc<Snapshot>,
}

impl Settler {
    /// A settler running `settle.lua` and lowering `snapshot`.
    pub(crate) fn new(keys: Arc<Keys>, scripts: Arc<Scripts>, snapshot: Arc<Snapshot>) -> Self {
        Self {
            keys,
            scripts,
            snapshot,
        }
    }

    /// Settles reservations of one sale resolved `how`; on failure the reconciler does it
    /// after the lease.
    pub(crate) async fn settle(&self, sale: SaleId, how: Resolution, order_ids: &[Uuid]) {
        let keys = self.keys.sale(sale);
        match self.scripts.settle(&keys, how, order_ids).await {
            // Confirmed units show in status at once (a release changes nothing there).
            Ok(Settled {
                unconfirmed: Some(unconfirmed),
                sold_out_at,
            }) => self
                .snapshot
                .lower_remaining(sale, unconfirmed, sold_out_at),
            Ok(Settled {
                unconfirmed: None, ..
            }) => {}
            Err(e) => {
                tracing::warn!(sale = %sale, error = %e.report(), "cannot settle reservations yet")
            }
        }
    }
}
