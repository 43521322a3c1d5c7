//! Counting what arrives: per-publisher sequence windows (duplicates, out of order), a shared
//! HDR latency histogram, and the counters every scenario reports.
//!
//! Subscriber tasks keep a [`Batch`] of their own and fold it into the shared [`Collector`]
//! once per socket read, so the lock and the atomics are touched per read, not per message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Highest latency the histogram tracks, in microseconds (larger values are clamped).
const MAX_LATENCY_US: u64 = 600_000_000;

/// How one message relates to those seen before from the same publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Newer than anything seen so far (gaps allowed: those are losses or still in flight).
    InOrder,
    /// Older than the newest seen and not seen before.
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

/// Sequence numbers seen from one publisher: the highest, and a 64-bit map of those just
/// below it. Anything older than the map counts as out of order (it cannot be told from a
/// duplicate any more).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SeqWindow {
    /// Highest sequence number seen plus one; 0 while nothing has been seen.
    next: u64,
    /// Bit `i` set: sequence `next - 1 - i` has been seen.
    seen: u64,
}

impl SeqWindow {
    /// Classifies `seq` and remembers it.
    pub(crate) fn observe(&mut self, seq: u32) -> Arrival {
        let seq = u64::from(seq);
        if seq >= self.next {
            let shift = seq - self.next + 1;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.next = seq + 1;
            return Arrival::InOrder;
        }
        let back = self.next - 1 - seq;
        if back >= 64 {
            return Arrival::OutOfOrder;
        }
        let bit = 1u64 << back;
        if self.seen & bit != 0 {
            Arrival::Duplicate
        } else {
            self.seen |= bit;
            Arrival::OutOfOrder
        }
    }
}

/// One subscriber's counts since its last flush, plus latencies waiting to be recorded.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Messages sent inside the measured window that arrived (duplicates included).
    pub(crate) received: u64,
    /// Of those, duplicates.
    pub(crate) duplicated: u64,
    /// Of those, out of order.
    pub(crate) out_of_order: u64,
    /// Deliveries (any send time) that arrived inside the measured window: throughput.
    pub(crate) delivered_in_window: u64,
    /// All deliveries, warm-up and drain included (for the progress line).
    pub(crate) delivered: u64,
    /// Latencies in microseconds of measured, non-duplicate arrivals.
    pub(crate) latencies_us: Vec<u64>,
}

impl Batch {
    /// Counts one measured arrival with its latency.
    pub(crate) fn measured(&mut self, arrival: Arrival, latency_ns: u64) {
        self.received += 1;
        match arrival {
            Arrival::Duplicate => self.duplicated += 1,
            Arrival::OutOfOrder => {
                self.out_of_order += 1;
                self.latencies_us.push(latency_ns / 1000);
            }
            Arrival::InOrder => self.latencies_us.push(latency_ns / 1000),
        }
    }
}

/// Totals shared by all tasks of a run.
#[derive(Debug)]
pub(crate) struct Collector {
    hist: Mutex<Histogram<u64>>,
    received: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    delivered_in_window: AtomicU64,
    delivered: AtomicU64,
    /// PUBLISH packets written by publishers, warm-up and drain included.
    pub(crate) sent_total: AtomicU64,
    /// PUBLISH packets sent inside the measured window.
    pub(crate) sent_measured: AtomicU64,
}

impl Collector {
    /// An empty collector.
    pub(crate) fn new() -> anyhow::Result<Collector> {
        Ok(Collector {
            hist: Mutex::new(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?),
            received: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            delivered_in_window: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            sent_total: AtomicU64::new(0),
            sent_measured: AtomicU64::new(0),
        })
    }

    /// Adds a batch and empties it (keeping its capacity).
    pub(crate) fn flush(&self, batch: &mut Batch) {
        if batch.received > 0 {
            self.received.fetch_add(batch.received, Relaxed);
            self.duplicated.fetch_add(batch.duplicated, Relaxed);
            self.out_of_order.fetch_add(batch.out_of_order, Relaxed);
        }
        if batch.delivered_in_window > 0 {
            self.delivered_in_window
                .fetch_add(batch.delivered_in_window, Relaxed);
        }
        if !batch.latencies_us.is_empty() {
            let mut hist = self.hist.lock().unwrap_or_else(|e| e.into_inner());
            for &us in &batch.latencies_us {
                hist.saturating_record(us.max(1));
            }
        }
        if batch.delivered > 0 {
            self.delivered.fetch_add(batch.delivered, Relaxed);
        }
        batch.received = 0;
        batch.delivered = 0;
        batch.duplicated = 0;
        batch.out_of_order = 0;
        batch.delivered_in_window = 0;
        batch.latencies_us.clear();
    }

    /// Measured arrivals minus duplicates.
    pub(crate) fn received_unique(&self) -> u64 {
        self.received
            .load(Relaxed)
            .saturating_sub(self.duplicated.load(Relaxed))
    }

    /// Deliveries that arrived inside the measured window so far.
    pub(crate) fn delivered_in_window(&self) -> u64 {
        self.delivered_in_window.load(Relaxed)
    }

    /// All deliveries so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Relaxed)
    }

    /// The counts and latency percentiles as JSON, given how many deliveries were expected
    /// and how long the measured window was.
    pub(crate) fn report(&self, expected: u64, window_secs: f64) -> Value {
        let received = self.received.load(Relaxed);
        let duplicated = self.duplicated.load(Relaxed);
        let unique = received.saturating_sub(duplicated);
        let sent = self.sent_measured.load(Relaxed);
        let hist = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "sent": sent,
            "sent_total": self.sent_total.load(Relaxed),
            "expected": expected,
            "received": received,
            "lost": expected.saturating_sub(unique),
            // Nothing sent inside the window: nothing to lose, and 0 % would mislead.
            "lost_pct": if expected == 0 { Value::Null } else { json!(round3(100.0 * expected.saturating_sub(unique) as f64 / expected as f64)) },
            "duplicated": duplicated,
            "out_of_order": self.out_of_order.load(Relaxed),
            "sent_per_sec": round3(sent as f64 / window_secs),
            "delivered_per_sec": round3(self.delivered_in_window() as f64 / window_secs),
            "latency_us": latency_json(&hist),
        })
    }
}

/// p50/p90/p99/p99.9/max/mean of a histogram in microseconds.
pub(crate) fn latency_json(hist: &Histogram<u64>) -> Value {
    if hist.is_empty() {
        return Value::Null;
    }
    json!({
        "count": hist.len(),
        "p50": hist.value_at_quantile(0.50),
        "p90": hist.value_at_quantile(0.90),
        "p99": hist.value_at_quantile(0.99),
        "p999": hist.value_at_quantile(0.999),
        "max": hist.max(),
        "mean": round3(hist.mean()),
    })
}

/// Rounds to three decimals, for readable JSON.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A fresh latency histogram in microseconds.
pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_classifies_arrivals() {
        let mut w = SeqWindow::default();
        assert_eq!(w.observe(0), Arrival::InOrder);
        assert_eq!(w.observe(1), Arrival::InOrder);
        assert_eq!(w.observe(1), Arrival::Duplicate);
        assert_eq!(w.observe(5), Arrival::InOrder); // 2..4 missing so far
        assert_eq!(w.observe(3), Arrival::OutOfOrder);
        assert_eq!(w.observe(3), Arrival::Duplicate);
        assert_eq!(w.observe(0), Arrival::Duplicate);
        assert_eq!(w.observe(200), Arrival::InOrder);
        assert_eq!(w.observe(100), Arrival::OutOfOrder); // beyond the map: cannot tell
        assert_eq!(w.observe(199), Arrival::OutOfOrder);
        assert_eq!(w.observe(199), Arrival::Duplicate);
    }

    #[test]
    fn collector_counts_losses_and_duplicates() -> anyhow::Result<()> {
        let c = Collector::new()?;
        c.sent_measured.store(4, Relaxed);
        let mut w = SeqWindow::default();
        let mut b = Batch::default();
        for seq in [0, 2, 2, 1] {
            b.measured(w.observe(seq), 2_000_000);
        }
        b.delivered_in_window = 4;
        c.flush(&mut b);
        assert_eq!(b.received, 0);
        let r = c.report(4, 2.0);
        assert_eq!(r["received"], 4);
        assert_eq!(r["duplicated"], 1);
        assert_eq!(r["out_of_order"], 1);
        assert_eq!(r["lost"], 1); // seq 3 never came
        assert_eq!(r["delivered_per_sec"], 2.0);
        assert_eq!(r["latency_us"]["count"], 3);
        assert_eq!(r["latency_us"]["p50"], 2000);
        Ok(())
    }
}
