//! `/metrics` for the journal ([persistence]): the write-ahead log's counters (records,
//! bytes, commits, fsyncs), the data directory's size, and the commit latency and batch
//! size histograms, read from the log's atomics at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::broker::Broker;
use crate::wal::{Histogram, COMMIT_BATCH_BOUNDS_RECORDS, COMMIT_LATENCY_BOUNDS_US};

/// Exports the journal's numbers (nothing without persistence).
#[derive(Debug)]
pub(super) struct JournalCollector {
    pub(super) broker: Broker,
}

impl Collector for JournalCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(journal) = self.broker.journal() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(i64::try_from(journal.disk_bytes()).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "journal_disk_bytes",
            "Bytes of the data directory: log segments and the checkpoint.",
            None,
            MetricType::Gauge,
        )?;
        gauge.encode(metric)?;
        let Some(wal) = journal.wal() else {
            return Ok(());
        };
        let stats = wal.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        for (name, help, value) in [
            (
                "journal_records",
                "Records appended to the write-ahead log.",
                load(&stats.records),
            ),
            (
                "journal_log_bytes",
                "Bytes of frames written to the write-ahead log.",
                load(&stats.bytes_written),
            ),
            (
                "journal_commits",
                "Group commits (one write per segment, then one fsync in sync mode).",
                load(&stats.batches),
            ),
            (
                "journal_fsyncs",
                "fdatasync calls on log segments.",
                load(&stats.fsyncs),
            ),
            (
                "journal_segments_created",
                "Log segments started (new or reused).",
                load(&stats.segments_created),
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        histogram(
            &mut encoder,
            "journal_commit_latency_seconds",
            "Duration of one group commit (write and, in sync mode, fdatasync).",
            &stats.commit_latency_us,
            &COMMIT_LATENCY_BOUNDS_US,
            1e-6,
        )?;
        histogram(
            &mut encoder,
            "journal_commit_batch_records",
            "Records made durable by one group commit.",
            &stats.commit_batch_records,
            &COMMIT_BATCH_BOUNDS_RECORDS,
            1.0,
        )?;
        Ok(())
    }
}

/// Encodes one of the log's histograms as `name`, its bounds and sum scaled by `scale`
/// (microseconds to seconds, or 1), the last bucket `+Inf`.
fn histogram<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &Histogram<N>,
    bounds: &[u64; N],
    scale: f64,
) -> Result<(), std::fmt::Error> {
    let (cumulative, sum, count) = h.cumulative(bounds);
    // The encoder accumulates: it wants each bucket's own count.
    let mut buckets = Vec::with_capacity(N + 1);
    let mut before = 0;
    for (bound, total) in cumulative {
        buckets.push((bound as f64 * scale, total - before));
        before = total;
    }
    buckets.push((f64::MAX, count.saturating_sub(before)));
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(sum as f64 * scale, count, &buckets, None)
}
