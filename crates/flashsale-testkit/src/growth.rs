//! What the growth examples share (`map_growth`, `limiter_growth`): the `--keys N` argument,
//! and the longest call within each power of two of a map's size.

use std::time::{Duration, Instant};

/// The `--keys N` argument (default `default`); exits with the usage line on anything else.
pub fn keys_arg(example: &str, default: u64) -> u64 {
    let mut args = std::env::args().skip(1);
    let mut keys = default;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--keys", Some(n)) => keys = n,
            _ => {
                eprintln!("usage: {example} [--keys N]");
                std::process::exit(2);
            }
        }
    }
    keys
}

/// The longest `call(make(n))` for `n` in `0..keys`, in bands by `n` (the entries already
/// in): `[0, 1)`, `[1, 2)`, `[2, 4)`, `[4, 8)`, ...; only `call` is timed.
pub fn longest_by_band<K>(
    keys: u64,
    mut make: impl FnMut(u64) -> K,
    mut call: impl FnMut(K),
) -> Vec<(u64, Duration)> {
    let mut bands: Vec<(u64, Duration)> = Vec::new();
    for n in 0..keys {
        let key = make(n);
        let started = Instant::now();
        call(key);
        let took = started.elapsed();
        let band = (n + 1).next_power_of_two() / 2;
        match bands.last_mut() {
            Some((b, longest)) if *b == band => *longest = (*longest).max(took),
            _ => bands.push((band, took)),
        }
    }
    bands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_are_powers_of_two_and_hold_their_longest_call() {
        let bands = longest_by_band(
            9,
            |n| n,
            |n| {
                if n == 5 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            },
        );
        // Band k holds the calls made with k..2k entries already in: `n` is that count.
        let starts: Vec<u64> = bands.iter().map(|(b, _)| *b).collect();
        assert_eq!(starts, [0, 1, 2, 4, 8]);
        // The slow call (n = 5) is the longest of band 4, whatever the others took.
        assert!(bands[3].1 >= Duration::from_millis(2));
    }
}
