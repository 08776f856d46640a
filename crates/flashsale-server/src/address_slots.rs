//! Counting what each client address holds open (connections, event streams), so that one
//! address cannot take the whole budget (issue 17).
//!
//! A slot is taken when the thing opens and given back when its [`AddressSlot`] is dropped,
//! however the thing ends. Addresses are counted by their rate-limit key
//! ([`client_ip::rate_key`](crate::http::client_ip::rate_key)): an IPv6 client is its /64.
//! An address holding nothing has no entry, so the map's size follows the addresses holding
//! something open right now.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Open things per address, each address bounded by `max`.
#[derive(Debug)]
pub struct AddressSlots {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One open thing of one address; dropping it gives the slot back.
#[derive(Debug)]
pub struct AddressSlot {
    slots: Arc<AddressSlots>,
    address: IpAddr,
}

impl AddressSlots {
    /// At most `max` open things per address (0 is treated as 1: an address may always hold one).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            held: Mutex::default(),
        })
    }

    /// The bound per address.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for `address`, or `None` when it already holds `max`.
    pub fn try_take(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        let mut held = self.held.lock();
        let count = held.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            slots: Arc::clone(self),
            address,
        })
    }

    /// How many slots `address` holds.
    pub fn held_by(&self, address: IpAddr) -> usize {
        self.held.lock().get(&address).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock();
        if let Some(count) = held.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_max_and_gets_slots_back_when_they_close() {
        let slots = AddressSlots::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = slots.try_take(a).unwrap();
        let _second = slots.try_take(a).unwrap();
        assert!(slots.try_take(a).is_none());
        // Another address is not affected.
        assert!(slots.try_take(b).is_some());
        drop(first);
        assert!(slots.try_take(a).is_some());
    }

    #[test]
    fn addresses_holding_nothing_leave_no_entry() {
        let slots = AddressSlots::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        drop(slots.try_take(a).unwrap());
        assert!(slots.held.lock().is_empty());
        assert_eq!(slots.held_by(a), 0);
    }
}
