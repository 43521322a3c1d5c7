//! Reconnect delays: exponential backoff with jitter between the configured bounds
//! (`reconnect_min_ms`, `reconnect_max_ms`).

use std::time::Duration;

/// Exponential backoff with jitter between `min` and `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    min_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    pub(crate) fn new(min_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            min_ms,
            max_ms,
            next_ms: min_ms,
        }
    }

    /// The next delay: the current bound, with up to a quarter taken off at random (so
    /// that bridges cut off together do not all come back at the same instant); the bound
    /// doubles.
    pub(crate) fn next(&mut self) -> Duration {
        let bound = self.next_ms;
        self.next_ms = (self.next_ms.saturating_mul(2)).min(self.max_ms);
        let mut random = [0u8; 8];
        let _ = getrandom::getrandom(&mut random);
        let jitter = u64::from_le_bytes(random) % (bound / 4 + 1);
        Duration::from_millis(bound - jitter)
    }

    pub(crate) fn reset(&mut self) {
        self.next_ms = self.min_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_bound_with_jitter_and_resets() {
        let mut backoff = Backoff::new(100, 1000);
        let delays: Vec<u64> = (0..6).map(|_| backoff.next().as_millis() as u64).collect();
        for (delay, bound) in delays.iter().zip([100, 200, 400, 800, 1000, 1000]) {
            assert!(*delay <= bound && *delay >= bound - bound / 4, "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(100));
    }
}
