//! The sales this instance has seen, kept so that a purchase can learn whether its sale exists
//! and is inside its window before charging the buyer's rate limit or the address's share,
//! without asking the store for every attempt. An operator may change a sale's window (issue
//! 14), on any instance: an entry is asked for again once it is older than [`FRESH_FOR`], and
//! this instance forgets an entry as soon as it changes the sale itself.

use flashsale_core::{Sale, SaleId};
use flashsale_store::{SaleStore, StoreError};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an entry is used before the store is asked again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// Sales by id, filled on first use. Its size is bounded by the sales that exist: an unknown
/// id leaves no entry.
#[derive(Default)]
pub struct KnownSales(RwLock<HashMap<SaleId, (Arc<Sale>, Instant)>>);

impl KnownSales {
    /// The sale with `id`, asking `store` the first time and once the entry is older than
    /// [`FRESH_FOR`]; `None` if there is no such sale.
    pub async fn get(
        &self,
        store: &dyn SaleStore,
        id: SaleId,
    ) -> Result<Option<Arc<Sale>>, StoreError> {
        if let Some((sale, at)) = self.0.read().get(&id)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(Some(Arc::clone(sale)));
        }
        let Some(status) = store.status(id).await? else {
            return Ok(None);
        };
        self.0
            .write()
            .insert(id, (Arc::clone(&status.sale), Instant::now()));
        Ok(Some(status.sale))
    }

    /// Forgets the sale (it was just changed here).
    pub fn forget(&self, id: SaleId) {
        self.0.write().remove(&id);
    }
}
