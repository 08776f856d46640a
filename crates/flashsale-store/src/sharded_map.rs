//! A hash map split into shards, so it never stops a sale to grow.
//!
//! A hash map grows by moving every entry into a table twice the size, in one call, and the
//! embedded book makes that call under the sale's lock: no purchase of the sale, and no read
//! of it, moves until it returns. Here each of [`SHARDS`] tables grows on its own, so a growth
//! moves about 1/256 of the entries (`cargo run --release -p flashsale-store --example
//! map_growth` measures both; docs/benchmarks.md has the figures). A key is hashed once per
//! call: the hash's middle bits pick the shard, and the shard's table uses the rest.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use std::hash::{BuildHasher, Hash, RandomState};

/// How many tables the entries are split into.
pub const SHARDS: usize = 256;

/// Where the bits that pick a shard start: above the low bits a table picks buckets with, and
/// below the top seven it keeps as tags, so within one shard neither is the same for every key.
const SHARD_SHIFT: u32 = 40;

/// Each key's `V`, like a `HashMap<K, V>` with only the calls the embedded book makes.
pub struct ShardedMap<K, V> {
    /// Keyed at random per map, like `HashMap`'s, so chosen keys cannot pile into one bucket.
    hasher: RandomState,
    shards: Box<[HashTable<(K, V)>]>,
}

impl<K: Hash + Eq + Clone, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone, V> ShardedMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
        }
    }

    /// The key's hash and shard.
    fn locate(&self, key: &K) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, (hash >> SHARD_SHIFT) as usize % SHARDS)
    }

    /// The key's value, if it has one.
    pub fn get(&self, key: &K) -> Option<&V> {
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find(hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The key's value, mutably, if it has one.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find_mut(hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The key's entry in its shard (`hashbrown`'s), cloning the key only to insert it.
    fn entry(&mut self, key: &K) -> Entry<'_, (K, V)> {
        let (hash, shard) = self.locate(key);
        let Self { hasher, shards } = self;
        shards[shard].entry(hash, |(k, _)| k == key, |(k, _)| hasher.hash_one(k))
    }

    /// The key's value, made with `V::default()` if it has none.
    pub fn get_or_default(&mut self, key: &K) -> &mut V
    where
        V: Default,
    {
        match self.entry(key) {
            Entry::Occupied(entry) => &mut entry.into_mut().1,
            Entry::Vacant(entry) => &mut entry.insert((key.clone(), V::default())).into_mut().1,
        }
    }

    /// Sets the key's value, returning the one it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.entry(&key) {
            Entry::Occupied(mut entry) => Some(std::mem::replace(&mut entry.get_mut().1, value)),
            Entry::Vacant(entry) => {
                entry.insert((key, value));
                None
            }
        }
    }

    /// Removes the key's value, returning it.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (hash, shard) = self.locate(key);
        match self.shards[shard].find_entry(hash, |(k, _)| k == key) {
            Ok(entry) => Some(entry.remove().0.1),
            Err(_) => None,
        }
    }

    /// How many keys have a value.
    pub fn len(&self) -> usize {
        self.shards.iter().map(HashTable::len).sum()
    }

    /// Whether no key has a value.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(HashTable::is_empty)
    }

    /// The most keys one shard holds: what its next growth moves at most.
    pub fn largest_shard(&self) -> usize {
        self.shards.iter().map(HashTable::len).max().unwrap_or(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_changed_replaced_and_removed() {
        let mut map: ShardedMap<String, u32> = ShardedMap::new();
        let (a, b) = ("a".to_owned(), "b".to_owned());
        assert_eq!(map.get(&a), None);
        assert_eq!(map.get_mut(&a), None);
        *map.get_or_default(&a) += 2;
        *map.get_or_default(&a) += 3;
        assert_eq!(map.get(&a), Some(&5));
        assert_eq!(map.insert(b.clone(), 7), None);
        assert_eq!(map.insert(b.clone(), 8), Some(7));
        *map.get_mut(&b).unwrap() += 1;
        assert_eq!(map.len(), 2);
        assert_eq!(map.remove(&b), Some(9));
        assert_eq!(map.remove(&b), None);
        assert_eq!((map.get(&b), map.len()), (None, 1));
    }

    #[test]
    fn every_value_survives_the_shards_growing() {
        let mut map: ShardedMap<usize, usize> = ShardedMap::new();
        for n in 0..20_000 {
            assert_eq!(map.insert(n, n * 2), None);
        }
        assert_eq!(map.len(), 20_000);
        assert!((0..20_000).all(|n| map.get(&n) == Some(&(n * 2))));
    }

    /// What bounds a growth: keys spread over every shard, none holding much more than its
    /// share (a shard picked from bits that do not vary would take them all).
    #[test]
    fn keys_spread_over_every_shard() {
        let mut map: ShardedMap<String, ()> = ShardedMap::new();
        for n in 0..100 * SHARDS {
            map.insert(format!("buyer-{n}"), ());
        }
        let sizes = map.shards.iter().map(HashTable::len);
        let (smallest, largest) = (sizes.clone().min().unwrap(), sizes.max().unwrap());
        // 100 per shard on average; a fair spread stays within 5 standard deviations (50).
        assert!(
            smallest > 50 && largest < 150,
            "{smallest}..{largest} per shard"
        );
    }
}
