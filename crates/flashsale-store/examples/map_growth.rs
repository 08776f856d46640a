//! How long one insert can stop a sale's book: the longest single insert into a `HashMap`
//! (which moves every entry when it grows) against a [`ShardedMap`] (which moves one shard's),
//! with buyer-like keys and values, up to `--keys` entries (default 2,000,000).
//!
//! `cargo run --release -p flashsale-store --example map_growth [-- --keys N]`
//!
//! Prints, for each map, the longest insert within each power of two of size. Wall time on a
//! shared machine: compare the two columns of one run, not runs with each other.

use flashsale_store::sharded_map::ShardedMap;
use flashsale_testkit::growth::{keys_arg, longest_by_band};
use std::collections::HashMap;
use std::sync::Arc;

/// About what the book keeps per buyer: two counters, the order keys, a channel slot.
#[derive(Default)]
struct Buyer {
    _held: u32,
    _pending: u32,
    _orders: Vec<[u8; 24]>,
    _settled: Option<Arc<()>>,
}

fn key(n: u64) -> Arc<str> {
    format!(
        "load-{:08x}-{n}",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
    )
    .into()
}

fn main() {
    let keys = keys_arg("map_growth", 2_000_000);
    let mut plain: HashMap<Arc<str>, Buyer> = HashMap::new();
    let plain_bands = longest_by_band(keys, key, |k| {
        plain.entry(k).or_default();
    });
    drop(plain);
    let mut sharded: ShardedMap<Arc<str>, Buyer> = ShardedMap::new();
    let sharded_bands = longest_by_band(keys, key, |k| {
        sharded.get_or_default(&k);
    });
    println!("entries from      longest insert: HashMap   ShardedMap");
    for ((band, plain), (_, sharded)) in plain_bands.iter().zip(&sharded_bands) {
        if *band >= 1024 {
            println!(
                "{band:>12}      {:>20.3} ms {:>9.3} ms",
                plain.as_secs_f64() * 1e3,
                sharded.as_secs_f64() * 1e3
            );
        }
    }
    println!(
        "{keys} entries; the sharded map's largest shard holds {} (its next growth moves that many)",
        sharded.largest_shard()
    );
}
