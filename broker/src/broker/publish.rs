//! Taking a client's message in: the retained store (RETAIN), routing to this node's
//! subscribers, and the copy for other cluster nodes. One message at a time, or a run of
//! messages of one topic and QoS (0 or 1) at once ([`crate::router::Router::route_run`]).

use std::sync::Arc;
use tokio::time::Instant;

use super::Broker;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::RouteScratch;
use tern_codec::QoS;

impl Broker {
    /// Stores (if RETAIN) and routes a message; returns the number of sessions and bridge
    /// sinks it went to.
    pub fn publish(
        &self,
        message: &Arc<Message>,
        scratch: &mut RouteScratch,
        now: Instant,
    ) -> usize {
        let inner = &self.inner;
        if message.publish().retain {
            match inner.retained.update(message, self.journal(), now) {
                1 => Metrics::add(&inner.metrics.retained_messages, 1),
                -1 => Metrics::sub(&inner.metrics.retained_messages, 1),
                _ => {}
            }
        }
        let cluster = inner.cluster.get();
        if let Some(cluster) = cluster {
            // Before routing: a session that queues it may be handed over at once.
            cluster.identify(message);
        }
        let delivered = inner.router.route(message, scratch, self.deliver_ctx(now));
        if let Some(cluster) = cluster {
            // The publisher's acknowledgement waits for NATS to have it.
            scratch.cluster_position = cluster.forward(std::slice::from_ref(message), now);
        }
        delivered
    }

    /// Routes a run of messages of one topic, publisher and QoS (0 or 1), not retained (see
    /// [`crate::router::Router::route_run`]), and sends each to other cluster nodes;
    /// returns the number of deliveries made, counted per message.
    pub fn publish_run(
        &self,
        messages: &[Arc<Message>],
        scratch: &mut RouteScratch,
        now: Instant,
    ) -> usize {
        let inner = &self.inner;
        let cluster = inner.cluster.get();
        // QoS 0 needs no identity before routing (it is never queued for a session nor
        // handed over); a connection runs QoS 1 only without a cluster
        // (`connection/publish.rs`).
        debug_assert!(cluster.is_none() || messages.iter().all(|m| m.qos() == QoS::AtMostOnce));
        let delivered = inner
            .router
            .route_run(messages, scratch, self.deliver_ctx(now));
        if let Some(cluster) = cluster {
            // No acknowledgement waits for NATS, but the position is kept as for any
            // message (a later acknowledgement covers it).
            let position = cluster.forward(messages, now);
            if position != 0 {
                scratch.cluster_position = position;
            }
        }
        delivered
    }
}
