//! A bounded history of one sale's samples, oldest first.
//!
//! The chart shows a sale "over its life", so old samples matter as much as new ones: when the
//! history is full it keeps every other sample and from then on keeps one tick in two (then
//! one in four, ...). Memory stays bounded however long the sale lasts, and the whole life
//! stays on the chart at a coarser step. The samples carry cumulative counters (units sold,
//! attempts), so a rate between any two kept samples is still exact.

/// At most `cap` items, thinned by halving when full.
#[derive(Debug)]
pub struct History<T> {
    items: Vec<T>,
    cap: usize,
    /// Keep one tick in `stride`.
    stride: u64,
    ticks: u64,
}

impl<T> History<T> {
    /// An empty history of at most `cap` items (at least 2).
    pub fn new(cap: usize) -> Self {
        Self {
            items: Vec::new(),
            cap: cap.max(2),
            stride: 1,
            ticks: 0,
        }
    }

    /// Counts one tick; whether a sample taken now is to be kept.
    pub fn tick(&mut self) -> bool {
        let due = self.ticks.is_multiple_of(self.stride);
        self.ticks += 1;
        due
    }

    /// Appends `item`, first thinning a full history to every other item.
    pub fn push(&mut self, item: T) {
        if self.items.len() >= self.cap {
            let mut index = 0;
            self.items.retain(|_| {
                index += 1;
                index % 2 == 1
            });
            self.stride *= 2;
        }
        self.items.push(item);
    }

    /// The items, oldest first.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// Seconds (ticks) between two kept samples now.
    pub fn stride(&self) -> u64 {
        self.stride
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tick_is_kept_until_the_history_is_full() {
        let mut history = History::new(4);
        for i in 0..4 {
            assert!(history.tick());
            history.push(i);
        }
        assert_eq!(history.items(), &[0, 1, 2, 3]);
        assert_eq!(history.stride(), 1);
    }

    #[test]
    fn a_full_history_keeps_every_other_sample_and_then_one_tick_in_two() {
        let mut history = History::new(4);
        let mut kept = 0;
        for i in 0..12 {
            if history.tick() {
                history.push(i);
                kept += 1;
            }
            assert!(history.items().len() <= 4);
        }
        // The first sample always stays: the chart still starts where the sale started.
        assert_eq!(history.items().first(), Some(&0));
        assert!(history.stride() >= 2);
        assert!(kept < 12, "later ticks are skipped");
        // Oldest first, strictly increasing.
        assert!(history.items().windows(2).all(|w| w[0] < w[1]));
    }
}
