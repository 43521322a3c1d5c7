//! Sending this node's messages to NATS. A publisher's task wraps the message
//! ([`super::envelope`]) and hands it to a bounded queue without waiting; one task drains
//! the queue into the NATS client, which batches the writes. RETAIN changes go to a second
//! queue and task that writes the cluster's retained bucket ([`super::retained`]) in order.
//!
//! Where the queue is created: once half of `forward_queue_messages` wait, publishers are
//! held back before they read more ([`Forwarder::congested`]); past the whole queue (many
//! publishers at once) cross-node copies are dropped and counted (`forward_dropped`).
//! This module owns the queues and the sending tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::envelope;
use super::metrics::ClusterMetrics;
use super::retained::RetainedBucket;
use super::subject;
use crate::message::Message;

/// One message for NATS.
struct Outgoing {
    subject: String,
    envelope: Bytes,
}

/// The sending side of the node.
#[derive(Debug)]
pub(crate) struct Forwarder {
    live: mpsc::Sender<Outgoing>,
    retained: mpsc::Sender<(String, Option<Bytes>)>,
    origin: u64,
    prefix: String,
    sequence: AtomicU64,
    metrics: Arc<ClusterMetrics>,
    /// The live queue's size: publishers are held back while less than half of it is free.
    queue: usize,
}

/// How often a held-back publisher looks at the queue again.
const CONGESTION_POLL: std::time::Duration = std::time::Duration::from_millis(1);

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("subject", &self.subject)
            .finish()
    }
}

impl Forwarder {
    /// Starts the sending tasks.
    pub(crate) fn spawn(
        client: async_nats::Client,
        bucket: RetainedBucket,
        origin: u64,
        prefix: String,
        queue: usize,
        metrics: Arc<ClusterMetrics>,
    ) -> Forwarder {
        let (live, live_rx) = mpsc::channel(queue);
        let (retained, retained_rx) = mpsc::channel(queue);
        tokio::spawn(send_live(client, live_rx, metrics.clone()));
        tokio::spawn(write_retained(bucket, retained_rx, metrics.clone()));
        Forwarder {
            live,
            retained,
            origin,
            prefix,
            sequence: AtomicU64::new(0),
            metrics,
            queue,
        }
    }

    /// While less than half of the live queue is free: a wait until three quarters are.
    pub(crate) fn congested(&self) -> Option<crate::broker::InterestReady> {
        if self.live.capacity() >= self.queue / 2 {
            return None;
        }
        ClusterMetrics::inc(&self.metrics.publisher_waits);
        let live = self.live.clone();
        let resume_at = self.queue * 3 / 4;
        Some(Box::pin(async move {
            while live.capacity() < resume_at && !live.is_closed() {
                tokio::time::sleep(CONGESTION_POLL).await;
            }
        }))
    }

    /// Queues `message` for the other nodes (and its RETAIN change for the bucket).
    /// `$SYS` topics stay on their node: each node publishes its own.
    pub(crate) fn forward(&self, message: &Arc<Message>, now: Instant) {
        let topic = message.topic();
        if crate::config::is_sys_topic(topic) {
            return;
        }
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let wire = envelope::encode(message, self.origin, sequence, now);
        if message.publish().retain {
            self.retain(topic, &wire, message.publish().payload().is_empty());
        }
        let out = Outgoing {
            subject: subject::topic_subject(&self.prefix, topic),
            envelope: wire,
        };
        if self.live.try_send(out).is_err() {
            ClusterMetrics::inc(&self.metrics.forward_dropped);
            tracing::debug!(
                topic,
                "cluster: queue to NATS full, cross-node copy dropped"
            );
        }
    }

    /// Queues a RETAIN change only (no live delivery).
    pub(crate) fn retain_only(&self, message: &Arc<Message>, now: Instant) {
        let topic = message.topic();
        if crate::config::is_sys_topic(topic) {
            return;
        }
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let wire = envelope::encode(message, self.origin, sequence, now);
        self.retain(topic, &wire, message.publish().payload().is_empty());
    }

    fn retain(&self, topic: &str, wire: &Bytes, delete: bool) {
        let value = (!delete).then(|| wire.clone());
        if self.retained.try_send((topic.to_string(), value)).is_err() {
            ClusterMetrics::inc(&self.metrics.forward_dropped);
            tracing::warn!(
                topic,
                "cluster: retained queue full, change not stored cluster-wide"
            );
        }
    }
}

/// Drains the live queue into NATS.
async fn send_live(
    client: async_nats::Client,
    mut queue: mpsc::Receiver<Outgoing>,
    metrics: Arc<ClusterMetrics>,
) {
    let mut batch = Vec::with_capacity(64);
    while queue.recv_many(&mut batch, 64).await > 0 {
        for out in batch.drain(..) {
            match client.publish(out.subject, out.envelope).await {
                Ok(()) => ClusterMetrics::inc(&metrics.messages_out),
                Err(e) => {
                    ClusterMetrics::inc(&metrics.publish_errors);
                    tracing::debug!(error = %e, "cluster: NATS refused a message");
                }
            }
        }
    }
}

/// Writes RETAIN changes into the bucket, in order.
async fn write_retained(
    bucket: RetainedBucket,
    mut queue: mpsc::Receiver<(String, Option<Bytes>)>,
    metrics: Arc<ClusterMetrics>,
) {
    while let Some((topic, value)) = queue.recv().await {
        if bucket.write(&topic, value).await {
            ClusterMetrics::inc(&metrics.retained_writes);
        }
    }
}
