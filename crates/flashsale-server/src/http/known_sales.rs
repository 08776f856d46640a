//! The sales this instance has seen, kept so that a purchase can learn whether its sale exists
//! and is inside its window before charging the buyer's rate limit or the address's share,
//! without a store round trip per attempt. A sale never changes once created (only its
//! remaining stock does, which this does not keep), so an entry is never stale.

use flashsale_core::{Sale, SaleId};
use flashsale_store::{SaleStore, StoreError};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// Sales by id, filled on first use. Its size is bounded by the sales that exist: an unknown
/// id leaves no entry.
#[derive(Default)]
pub struct KnownSales(RwLock<HashMap<SaleId, Arc<Sale>>>);

impl KnownSales {
    /// The sale with `id`, asking `store` the first time; `None` if there is no such sale.
    pub async fn get(
        &self,
        store: &dyn SaleStore,
        id: SaleId,
    ) -> Result<Option<Arc<Sale>>, StoreError> {
        if let Some(sale) = self.0.read().get(&id) {
            return Ok(Some(Arc::clone(sale)));
        }
        let Some(status) = store.status(id).await? else {
            return Ok(None);
        };
        self.0.write().insert(id, Arc::clone(&status.sale));
        Ok(Some(status.sale))
    }
}
