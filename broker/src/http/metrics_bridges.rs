//! `/metrics` for the MQTT bridges ([`crate::mqtt_bridge`]): per bridge (label `bridge`)
//! whether it is up, its state, what it holds for the remote, its counters, and its last
//! error as an info metric. Read from [`crate::metrics::bridge_links`] at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::broker::Broker;
use crate::metrics::bridge_links::{LinkState, LinkStatus};

/// Exports the bridges' statuses.
#[derive(Debug)]
pub(super) struct BridgeCollector {
    pub(super) broker: Broker,
}

/// One gauge family, a value per bridge.
fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    links: &[std::sync::Arc<LinkStatus>],
    value: impl Fn(&LinkStatus) -> i64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for link in links {
        let labels = [("bridge", link.name.as_str())];
        ConstGauge::new(value(link)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for BridgeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let links = self.broker.bridge_links().all();
        if links.is_empty() {
            return Ok(());
        }
        gauge_family(
            &mut encoder,
            "mqtt_bridge_up",
            "Whether the bridge's link to its remote is up (1) or not (0).",
            &links,
            |l| i64::from(l.state() == LinkState::Up),
        )?;
        gauge_family(
            &mut encoder,
            "mqtt_bridge_state",
            "The bridge's link: 0 down, 1 connecting, 2 up.",
            &links,
            |l| l.state() as i64,
        )?;
        gauge_family(
            &mut encoder,
            "mqtt_bridge_queued_messages",
            "QoS 1/2 messages the bridge holds for its remote (in flight or waiting).",
            &links,
            |l| i64::try_from(LinkStatus::get(&l.queued)).unwrap_or(i64::MAX),
        )?;
        let names: Vec<(&'static str, &'static str)> = links[0]
            .counters
            .snapshot()
            .into_iter()
            .map(|(name, help, _)| (name, help))
            .collect();
        for (i, (name, help)) in names.into_iter().enumerate() {
            let full_name = format!("mqtt_bridge_{name}");
            let mut family =
                encoder.encode_descriptor(&full_name, help, None, MetricType::Counter)?;
            for link in &links {
                let value = link.counters.snapshot()[i].2;
                let labels = [("bridge", link.name.as_str())];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "mqtt_bridge_last_error",
            "The bridge's last error (label `error`), 1 while there is one.",
            None,
            MetricType::Gauge,
        )?;
        for link in &links {
            if let Some(error) = link.last_error() {
                let labels = [("bridge", link.name.as_str()), ("error", error.as_str())];
                ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
