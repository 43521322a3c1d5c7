//! Taking in a client's PUBLISH: refused when the cluster cannot carry it, otherwise stored
//! (RETAIN), routed and acknowledged once what the acknowledgement depends on holds.
//!
//! Consecutive messages of one topic and QoS, 0 or 1, not retained, wait in a run
//! ([`Routing::run`], at most [`RUN_MAX`]) and are routed together
//! ([`crate::broker::Broker::publish_run`]): a publisher's burst, read from one buffer,
//! costs one trie walk and one lock of each subscriber's delivery state (QoS 0: and of its
//! writer) instead of one per message. The run is routed before any other packet of the
//! client is handled and at the end of each read buffer, so nothing waits for more input
//! and the order of everything the client sent is kept. A QoS 1 run's PUBACKs follow its
//! routing, in order, and wait for what it logged, as each message's would. QoS 2 messages
//! are routed alone (each one's copies and received id make one journal frame), and so
//! are QoS 1 messages in a cluster (the queue to NATS drops what does not fit; reading
//! stops in time only when its room is looked at after each message).

use std::sync::Arc;

use tokio::time::Instant;

use super::held_records::HeldRecords;
use super::Connection;
use crate::journal::batch::PENDING;
use crate::message::Message;
use crate::router::{can_run, is_run_member};
use crate::session::machine::PendingAck;
use tern_codec::QoS;

/// One PUBLISH in this many is timed for the routing latency histogram (the first of each
/// connection always is).
const LATENCY_SAMPLE_EVERY: u64 = 16;

/// The longest run of messages routed at once: long enough to share the locks, short
/// enough that back-pressure is seen within a few dozen messages.
pub(super) const RUN_MAX: usize = 64;

impl Connection {
    /// Routes `message` now, or lets it join the run of messages waiting to be routed (the
    /// run goes first when the message cannot join it).
    pub(super) fn publish_or_join(&mut self, message: Arc<Message>, ack: PendingAck, now: Instant) {
        // A retained message too large for the cluster's retained bucket: refused as a whole
        // (0x97 to 5.0; 3.1.1 has no refusing acknowledgement, [MQTT-3.3.5-2]) rather than
        // retained on this node only.
        if self.broker.cluster_refuses(&message) {
            tracing::debug!(
                topic = message.topic(),
                "retained message larger than NATS takes: publish refused"
            );
            self.flush_run(now);
            if let Some(transmit) = self.machine.refused(ack, self.broker.journal()) {
                self.send(&transmit);
            }
            return;
        }
        // In a cluster a QoS 1 message goes alone: its copy for the other nodes must never
        // meet a full queue to NATS, whose room is looked at after each routing.
        let joins = can_run(&message)
            && (message.qos() == QoS::AtMostOnce || self.broker.cluster().is_none());
        if !joins {
            self.flush_run(now);
            self.publish(&message, ack, now);
            return;
        }
        let routing = self.routing.get_or_insert_default();
        if routing
            .run
            .first()
            .is_some_and(|first| !is_run_member(&message, first))
        {
            self.flush_run(now);
        }
        let routing = self.routing.get_or_insert_default();
        // QoS 0 is owed nothing: only a QoS 1 run keeps its acknowledgements.
        if message.qos() != QoS::AtMostOnce {
            routing.run_acks.push(ack);
        }
        routing.run.push(message);
        if routing.run.len() >= RUN_MAX {
            self.flush_run(now);
        }
    }

    /// Routes the run of messages waiting, if any, and acknowledges them (QoS 1) in order.
    pub(super) fn flush_run(&mut self, now: Instant) {
        let Some(routing) = self.routing.as_mut().filter(|r| !r.run.is_empty()) else {
            return;
        };
        let before = routing.published;
        let count = routing.run.len();
        routing.published = before.wrapping_add(count as u64);
        // Timed when a sampled message is in it: the whole run's routing, the longest any
        // of its messages waited.
        let sampled = (before + 1..=routing.published).any(|p| p % LATENCY_SAMPLE_EVERY == 1);
        let started = sampled.then(std::time::Instant::now);
        let delivered = self
            .broker
            .publish_run(&routing.run, &mut routing.scratch, now);
        if let Some(started) = started {
            self.broker
                .route_latency()
                .observe(started.elapsed().as_secs_f64());
        }
        routing.run.clear(); // its allocation serves the next run
        if !routing.run_acks.is_empty() {
            // Every message of a run went to the same subscriptions (shared groups aside,
            // which take one each): so each one's share, for its reason code.
            let mut acks = std::mem::take(&mut routing.run_acks);
            self.acknowledge_run(&acks, delivered.div_ceil(count));
            acks.clear();
            if let Some(routing) = self.routing.as_mut() {
                routing.run_acks = acks; // its allocation serves the next run too
            }
        }
        // What the routing logged (persistent subscribers) holds the PUBACKs, as after any
        // packet (a run may be routed outside one).
        self.hold_for_logged();
        self.note_cluster_congestion();
    }

    /// Sends the acknowledgements of a routed QoS 1 run, each message having gone to
    /// `delivered` subscribers (no cluster: nothing else to wait for).
    fn acknowledge_run(&mut self, acks: &[PendingAck], delivered: usize) {
        let journal = self.broker.journal();
        for &ack in acks {
            if let Some(transmit) = self.machine.published(ack, delivered, journal) {
                self.send(&transmit);
            }
        }
    }

    /// Stores, routes and acknowledges a client's message the cluster can carry.
    ///
    /// The routing latency histogram samples one PUBLISH in [`LATENCY_SAMPLE_EVERY`]: the
    /// clock reads would otherwise cost more than the routing of a small fan-out.
    fn publish(&mut self, message: &Arc<Message>, ack: PendingAck, now: Instant) {
        // A QoS 2 message from a persistent session: its copies for subscribers and its
        // received id go into the journal as one frame, so that after a crash the
        // publisher's resend is routed exactly once (see journal/batch.rs).
        let _batch = (ack.is_exactly_once() && self.machine.session().is_logged())
            .then(|| HeldRecords::begin(&self.broker, PENDING))
            .flatten();
        let routing = self.routing.get_or_insert_default();
        routing.published = routing.published.wrapping_add(1);
        let delivered = if routing.published % LATENCY_SAMPLE_EVERY != 1 {
            self.broker.publish(message, &mut routing.scratch, now)
        } else {
            let started = std::time::Instant::now();
            let delivered = self.broker.publish(message, &mut routing.scratch, now);
            self.broker
                .route_latency()
                .observe(started.elapsed().as_secs_f64());
            delivered
        };
        // In a cluster the acknowledgement leaves once NATS has the message.
        let forwarded = self
            .routing
            .as_mut()
            .map_or(0, |r| std::mem::take(&mut r.scratch.cluster_position));
        // A message sent to other nodes may have subscribers there, which this node does
        // not know of: 0x10 (No matching subscribers) is for when the server knows.
        let delivered = delivered.max(usize::from(forwarded != 0));
        if let Some(transmit) = self
            .machine
            .published(ack, delivered, self.broker.journal())
        {
            self.send(&transmit);
            if forwarded != 0 {
                self.out.lock().hold_cluster_until(forwarded);
            }
        }
        self.note_cluster_congestion();
    }

    /// In a cluster: when the queue to the other nodes is over its high-water mark, reading
    /// waits for it.
    fn note_cluster_congestion(&mut self) {
        if let Some(wait) = self.broker.cluster_congested() {
            if let Some(routing) = self.routing.as_mut() {
                routing.cluster_wait = Some(wait);
            }
        }
    }
}
