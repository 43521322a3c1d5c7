//! The log's numbers: plain atomics bumped by the committer and read by whoever exports
//! them. This file owns the counters and histograms, not their export format.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the commit latency histogram, in microseconds.
pub const COMMIT_LATENCY_BOUNDS_US: [u64; 12] = [
    50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400,
];
/// Upper bounds of the commit batch size histogram, in records.
pub const COMMIT_BATCH_BOUNDS_RECORDS: [u64; 12] =
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 4_096];

/// A histogram of fixed buckets: counts per upper bound (the last bucket holds everything
/// above the last bound), the sum and the count.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    overflow: AtomicU64,
    sum: AtomicU64,
    count: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    fn observe(&self, bounds: &[u64; N], value: u64) {
        match bounds.iter().position(|b| value <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (`value <= bound`), as Prometheus wants them, then the
    /// sum and the count of all observations.
    pub fn cumulative(&self, bounds: &[u64; N]) -> (Vec<(u64, u64)>, u64, u64) {
        let mut total = 0;
        let buckets = bounds
            .iter()
            .zip(&self.buckets)
            .map(|(bound, count)| {
                total += count.load(Ordering::Relaxed);
                (*bound, total)
            })
            .collect();
        (
            buckets,
            self.sum.load(Ordering::Relaxed),
            self.count.load(Ordering::Relaxed),
        )
    }
}

/// Counters of one log.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Records appended.
    pub records: AtomicU64,
    /// Bytes written to segments (frames, not headers).
    pub bytes_written: AtomicU64,
    /// Batches written (one write(2) per batch and segment).
    pub batches: AtomicU64,
    /// fdatasync calls on segments.
    pub fsyncs: AtomicU64,
    /// Segments started (new or reused).
    pub segments_created: AtomicU64,
    /// Released segments reused instead of creating a file.
    pub segments_reused: AtomicU64,
    /// Duration of the last commit (write and, in sync mode, fdatasync), microseconds.
    pub last_commit_us: AtomicU64,
    /// Sum of all commit durations, microseconds.
    pub total_commit_us: AtomicU64,
    /// Commit durations, microseconds ([`COMMIT_LATENCY_BOUNDS_US`]).
    pub commit_latency_us: Histogram<12>,
    /// Records per commit ([`COMMIT_BATCH_BOUNDS_RECORDS`]).
    pub commit_batch_records: Histogram<12>,
}

impl WalStats {
    /// One commit of `records` records took `micros`.
    pub(crate) fn commit(&self, records: u64, micros: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.last_commit_us.store(micros, Ordering::Relaxed);
        self.total_commit_us.fetch_add(micros, Ordering::Relaxed);
        self.commit_latency_us
            .observe(&COMMIT_LATENCY_BOUNDS_US, micros);
        self.commit_batch_records
            .observe(&COMMIT_BATCH_BOUNDS_RECORDS, records);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::<3>::default();
        let bounds = [1, 10, 100];
        for v in [0, 1, 5, 50, 500] {
            h.observe(&bounds, v);
        }
        let (buckets, sum, count) = h.cumulative(&bounds);
        assert_eq!(buckets, vec![(1, 2), (10, 3), (100, 4)]);
        assert_eq!((sum, count), (556, 5));
    }
}
