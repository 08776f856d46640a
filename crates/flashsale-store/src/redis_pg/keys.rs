//! Every Redis key the scale-out store uses, and nothing else names one.
//!
//! All keys of one sale share the hash tag `{<prefix>:sale:<id>}`, so they live in one slot
//! and the admission script (which touches several of them atomically) also runs on Redis
//! Cluster. The prefix is configurable: deployments share a Redis by prefix, and each test
//! isolates itself with its own.

use flashsale_core::SaleId;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// Builds key names under one prefix.
#[derive(Debug)]
pub struct Keys {
    prefix: String,
    /// Each sale's names, built once: an admission passes seven of them, and formatting them
    /// on every purchase was seven allocations on the hot path.
    sales: RwLock<HashMap<SaleId, Arc<SaleKeys>>>,
}

/// The keys of one sale (all in the same hash slot).
#[derive(Debug, Clone)]
pub struct SaleKeys {
    /// Hash: `stock`, `limit`, `starts_us`, `ends_us`, `remaining` (free units), `reserved`
    /// (units of live reservations), `epoch`, `sold_out_us`, `clock_us` (the last instant an
    /// admission decided with). Its absence means Redis lost the sale: it must be rebuilt from
    /// PostgreSQL.
    pub meta: String,
    /// Hash: user id -> units held (committed or reserved).
    pub held: String,
    /// Sorted set: order id of each live reservation, scored by its lease deadline (ms).
    pub leases: String,
    /// Hash: order id -> the reservation (`user\nquantity\ncreated_us\nkey\nepoch`).
    pub reservations: String,
    /// Hash: idempotency key -> the first outcome (see `admission.lua`).
    pub idempotency: String,
    /// Sorted set: idempotency key of each remembered refusal, scored by when (ms), so that
    /// refusals are forgotten after a retention and beyond a bound.
    pub refused: String,
    /// Hash: user id -> units of that buyer's live reservations (not yet settled).
    pub reserving: String,
    /// Set: order ids whose transition's unit move is applied (`transition.lua`), so each
    /// order's move lands at most once.
    pub applied: String,
    /// String: held by the one instance rebuilding the sale.
    pub rebuild_lock: String,
    /// String: held for one reconciler interval by the instance auditing the sale, so one
    /// instance, not all of them, pays for the audit each round.
    pub audit_lock: String,
}

impl SaleKeys {
    /// The seven keys the scripts take, in their `KEYS` order.
    pub fn script_keys(&self) -> [&str; 7] {
        [
            &self.meta,
            &self.held,
            &self.leases,
            &self.reservations,
            &self.idempotency,
            &self.refused,
            &self.reserving,
        ]
    }
}

impl Keys {
    /// Keys under `prefix` (for example `flashsale`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            sales: RwLock::default(),
        }
    }

    /// The keys of sale `id`.
    pub fn sale(&self, id: SaleId) -> Arc<SaleKeys> {
        if let Some(keys) = self.sales.read().get(&id) {
            return Arc::clone(keys);
        }
        let keys = Arc::new(self.build(id));
        Arc::clone(self.sales.write().entry(id).or_insert(keys))
    }

    fn build(&self, id: SaleId) -> SaleKeys {
        let tag = format!("{{{}:sale:{}}}", self.prefix, id.0);
        SaleKeys {
            meta: format!("{tag}:meta"),
            held: format!("{tag}:held"),
            leases: format!("{tag}:leases"),
            reservations: format!("{tag}:reservations"),
            idempotency: format!("{tag}:idempotency"),
            refused: format!("{tag}:refused"),
            reserving: format!("{tag}:reserving"),
            applied: format!("{tag}:applied"),
            rebuild_lock: format!("{tag}:rebuild"),
            audit_lock: format!("{tag}:audit"),
        }
    }

    /// A `SCAN MATCH` pattern covering every key under this prefix.
    pub fn pattern(&self) -> String {
        format!("{{{}:*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_sale_shares_one_hash_tag() {
        let k = Keys::new("fs").sale(SaleId(42));
        for key in k.script_keys().into_iter().chain([
            k.applied.as_str(),
            k.rebuild_lock.as_str(),
            k.audit_lock.as_str(),
        ]) {
            assert!(key.starts_with("{fs:sale:42}:"), "{key}");
        }
    }
}
