//! Not splitting the brain: a node cut off from NATS for longer than `partition_lease_ms`
//! moves its clients off ([`crate::broker::Broker::drain`]: DISCONNECT 0x9C to 5.0
//! clients, new CONNECTs refused with 0x9C, 3.1.1: 0x03) and says why in the log, rather
//! than go on as a broker of its own while the others may take its clients over. When NATS
//! is back it takes clients again. `partition_lease_ms = 0` keeps the clients instead.
//!
//! This module owns the watchdog only.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::metrics::ClusterMetrics;
use crate::broker::Broker;

/// How often the connection state is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Watches the connection to NATS and drains the node while it has been lost for `lease`.
pub(crate) async fn watch(broker: Broker, metrics: Arc<ClusterMetrics>, lease: Duration) {
    let mut lost_since: Option<tokio::time::Instant> = None;
    let mut draining = false;
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        if metrics.connected.load(Ordering::Relaxed) {
            lost_since = None;
            if draining {
                draining = false;
                broker.end_drain();
                tracing::warn!("cluster: NATS is back; taking clients again");
            }
            continue;
        }
        let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < lease {
            continue;
        }
        // Every tick while cut off: clients that connected meanwhile are refused anyway, and
        // any that slipped in leave too.
        let moved = broker.drain();
        ClusterMetrics::inc_by(&metrics.partition_disconnects, moved as u64);
        if !draining {
            draining = true;
            tracing::error!(
                lease_ms = lease.as_millis() as u64,
                clients = moved,
                "cluster: cut off from NATS for longer than the lease; disconnecting clients \
                 (DISCONNECT 0x9C) and refusing new ones so that the cluster does not split"
            );
        }
    }
}
