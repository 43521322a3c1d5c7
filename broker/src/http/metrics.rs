//! `/metrics`: the broker's counters in the Prometheus text format, encoded with
//! prometheus-client from the live atomics at scrape time (nothing is kept twice), plus the
//! routing latency histogram and queue depths summed over sessions.

use hyper::{Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{full, Body};
use crate::broker::Broker;

/// The counters that are gauges (they go up and down).
const GAUGES: &[&str] = &[
    "clients_connected",
    "clients_parked",
    "subscriptions",
    "retained_messages",
    "journal_checkpoint_last_ms",
    "journal_checkpoint_bytes",
    "sessions",
    "bridge_clients",
    "bridge_rings",
];

/// Exports the broker's atomics.
#[derive(Debug)]
struct BrokerCollector {
    broker: Broker,
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in self.broker.metrics().snapshot() {
            if GAUGES.contains(&name) {
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                gauge.encode(metric)?;
            } else {
                let counter = ConstCounter::new(value);
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                counter.encode(metric)?;
            }
        }
        let (queued, inflight) = queue_depths(&self.broker);
        let metric = encoder.encode_descriptor(
            "session_queued_messages",
            "QoS 1/2 messages waiting in session queues (all sessions).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(queued).encode(metric)?;
        let metric = encoder.encode_descriptor(
            "session_inflight_messages",
            "QoS 1/2 messages sent and not yet acknowledged (all sessions).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(inflight).encode(metric)?;
        let budget = self.broker.budget();
        for (name, help, bytes) in [
            (
                "session_held_bytes",
                "Payload and topic bytes of the queued and inflight QoS 1/2 messages (all sessions).",
                budget.used_bytes(),
            ),
            (
                "max_total_queued_bytes",
                "The broker-wide bound on session_held_bytes in force (0: none).",
                budget.max_bytes(),
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX)).encode(metric)?;
        }
        if let Some(cluster) = self.broker.cluster() {
            encode_cluster(cluster.counters(), &mut encoder)?;
        }
        Ok(())
    }
}

/// The cluster's counters as `tern_cluster_*`.
fn encode_cluster(
    counters: Vec<(&'static str, &'static str, u64)>,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in counters {
        let name = format!("cluster_{name}");
        if matches!(
            name.as_str(),
            "cluster_interest_filters" | "cluster_nats_rtt_us" | "cluster_connected"
        ) {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(&name, help, None, MetricType::Gauge)?;
            gauge.encode(metric)?;
        } else {
            let metric = encoder.encode_descriptor(&name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
    }
    Ok(())
}

fn queue_depths(broker: &Broker) -> (i64, i64) {
    let mut queued = 0i64;
    let mut inflight = 0i64;
    for session in broker.sessions() {
        let delivery = session.delivery();
        queued += delivery.queued() as i64;
        inflight += delivery.inflight() as i64;
    }
    (queued, inflight)
}

/// Encodes the exposition text.
pub fn render(broker: &Broker) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("tern");
    registry.register_collector(Box::new(BrokerCollector {
        broker: broker.clone(),
    }));
    registry.register_collector(Box::new(super::metrics_journal::JournalCollector {
        broker: broker.clone(),
    }));
    registry.register_collector(Box::new(super::metrics_bridges::BridgeCollector {
        broker: broker.clone(),
    }));
    registry.register(
        "route_latency_seconds",
        "Time to store and route one received PUBLISH to every subscriber's buffer (one PUBLISH in 16 per connection is timed).",
        broker.route_latency().clone(),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The `/metrics` response.
pub fn respond(broker: &Broker) -> Response<Body> {
    match render(broker) {
        Ok(text) => full(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(_) => full(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "metrics encoding failed",
        ),
    }
}
