//! This instance's purchase latency as percentiles, for the operator's live view.
//!
//! The Prometheus histogram of `/metrics` has fourteen coarse buckets made for alerting and
//! cannot be read back as "p99 over the last second". [`PurchaseLatency`] is a finer log-scale
//! histogram of atomic counters: recording is one index computation and one relaxed
//! `fetch_add` (no lock, no allocation: it sits on the purchase path); a reader copies the
//! counts and subtracts an earlier copy to get the window between the two.
//!
//! Buckets are a quarter of an octave wide (each bound is 2^(1/4), about 19%, above the last),
//! from 1 µs to about 68 s; a percentile is reported as its bucket's upper bound, so it is at
//! most 19% above the true figure and never below it. The figures are this instance's alone:
//! with several instances behind a balancer each sees its own share of the purchases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per doubling.
const PER_OCTAVE: u32 = 4;
/// 26 octaves above 1 µs: about 67 s; slower answers share the last bucket.
const BUCKETS: usize = 26 * PER_OCTAVE as usize;

/// Counts of purchase answers by how long they took, since the process started.
pub struct PurchaseLatency {
    counts: [AtomicU64; BUCKETS],
}

impl Default for PurchaseLatency {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A copy of the counts at one moment.
#[derive(Clone)]
pub struct LatencyCounts([u64; BUCKETS]);

impl Default for LatencyCounts {
    fn default() -> Self {
        Self([0; BUCKETS])
    }
}

/// Percentiles of the answers in a window, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Answers in the window.
    pub count: u64,
    /// Half the answers took at most this long.
    pub p50_ms: f64,
    /// 99% of the answers took at most this long.
    pub p99_ms: f64,
}

impl PurchaseLatency {
    /// Counts one answer that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        self.counts[bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn counts(&self) -> LatencyCounts {
        LatencyCounts(std::array::from_fn(|i| {
            self.counts[i].load(Ordering::Relaxed)
        }))
    }
}

impl LatencyCounts {
    /// Percentiles of the answers counted after `earlier` was taken and up to `self`; `None`
    /// when there were none.
    pub fn since(&self, earlier: &LatencyCounts) -> Option<Percentiles> {
        let window: Vec<u64> = self
            .0
            .iter()
            .zip(earlier.0)
            .map(|(now, then)| now.saturating_sub(then))
            .collect();
        let count: u64 = window.iter().sum();
        if count == 0 {
            return None;
        }
        let at = |fraction: f64| {
            // The rank of the answer at this percentile, 1-based and never 0.
            let rank = ((count as f64 * fraction).ceil() as u64).max(1);
            let mut seen = 0;
            let bucket = window
                .iter()
                .position(|n| {
                    seen += n;
                    seen >= rank
                })
                .unwrap_or(BUCKETS - 1);
            upper_bound_ms(bucket)
        };
        Some(Percentiles {
            count,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
        })
    }
}

/// The bucket of an answer: bucket `i` holds answers of at most `2^((i+1)/4)` µs.
fn bucket_of(elapsed: Duration) -> usize {
    let micros = elapsed.as_secs_f64() * 1e6;
    if micros <= 1.0 {
        return 0;
    }
    let index = (micros.log2() * f64::from(PER_OCTAVE)).ceil() as usize;
    index.saturating_sub(1).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in milliseconds.
fn upper_bound_ms(i: usize) -> f64 {
    2f64.powf((i as f64 + 1.0) / f64::from(PER_OCTAVE)) / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percentile_is_never_below_the_answer_and_at_most_a_fifth_above() {
        for micros in [1u64, 2, 3, 17, 250, 999, 1_000, 4_321, 80_000, 2_000_000] {
            let bound = upper_bound_ms(bucket_of(Duration::from_micros(micros)));
            let ms = micros as f64 / 1e3;
            assert!(
                bound >= ms - 1e-9,
                "{micros} µs in a bucket up to {bound} ms"
            );
            assert!(
                bound <= ms * 1.19 + 1e-3,
                "{micros} µs reported as {bound} ms"
            );
        }
    }

    #[test]
    fn percentiles_cover_only_the_window_between_two_copies() {
        let latency = PurchaseLatency::default();
        for _ in 0..100 {
            latency.record(Duration::from_secs(1));
        }
        let before = latency.counts();
        assert_eq!(latency.counts().since(&before), None);
        for _ in 0..98 {
            latency.record(Duration::from_micros(500));
        }
        latency.record(Duration::from_millis(20));
        latency.record(Duration::from_millis(20));
        let window = latency.counts().since(&before).unwrap();
        assert_eq!(window.count, 100);
        assert!((0.5..0.6).contains(&window.p50_ms), "{window:?}");
        // The 99th of 100 answers is one of the two slow ones.
        assert!((20.0..24.0).contains(&window.p99_ms), "{window:?}");
    }

    #[test]
    fn answers_slower_than_the_last_bucket_are_counted_in_it() {
        let latency = PurchaseLatency::default();
        latency.record(Duration::from_secs(3_600));
        let window = latency.counts().since(&LatencyCounts::default()).unwrap();
        assert_eq!(window.count, 1);
        assert!(window.p99_ms > 60_000.0);
    }
}
