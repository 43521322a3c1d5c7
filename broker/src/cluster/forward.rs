//! Sending this node's messages to NATS. A publisher's task wraps the message
//! ([`super::envelope`]) and hands it to a bounded queue without waiting; one task drains
//! the queue into the NATS client, which batches the writes. RETAIN changes go to a second
//! queue and task that writes the cluster's retained bucket ([`super::retained`]) in order.
//!
//! Where the queue is created: once half of `forward_queue_messages` wait, publishers are
//! held back before they read more ([`Forwarder::congested`]); past the whole queue (many
//! publishers at once) cross-node copies are dropped and counted (`forward_dropped`).
//!
//! Acknowledgement once NATS has a message: each queued message gets a position (its
//! number in the queue's order); the sending task, whenever it has sent messages that are
//! not yet confirmed and no round trip is in flight, makes one NATS round trip
//! ([`super::round_trip`]): its answer confirms every message sent before it (a group
//! commit, never one round trip per message). A connection holds its PUBACK/PUBREC until
//! the confirmed position reaches its message's ([`Confirmed`]). Messages sent before a
//! lost NATS connection are sent again after it (receivers drop second copies by origin
//! and sequence) before a round trip may confirm them.
//!
//! This module owns the queues, the sending tasks and the confirmed position.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

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
    subject: async_nats::Subject,
    envelope: Bytes,
}

/// Longest one confirming round trip may take before it counts as failed.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed round trip before the next.
const ROUND_TRIP_RETRY: Duration = Duration::from_millis(100);

/// How far NATS has confirmed this node's messages, and who waits for it.
#[derive(Debug, Default)]
pub(crate) struct Confirmed {
    /// Messages queued so far (the last position given out); under its lock a message
    /// enters the queue, so positions follow the queue's order.
    queued: Mutex<u64>,
    /// Every message up to this position is in NATS.
    position: AtomicU64,
    /// Connections waiting for a position (woken at each confirmation).
    waiters: Mutex<Vec<Waker>>,
}

impl Confirmed {
    /// The confirmed position.
    pub(crate) fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Ready once `position` is confirmed.
    pub(crate) fn poll(&self, position: u64, cx: &mut Context<'_>) -> Poll<()> {
        if self.position() >= position {
            return Poll::Ready(());
        }
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // Checked again under the lock: a confirmation in between has taken the list.
        if self.position() >= position {
            return Poll::Ready(());
        }
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn confirm(&self, position: u64) {
        self.position.fetch_max(position, Ordering::AcqRel);
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        waiters.into_iter().for_each(Waker::wake);
    }
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
    /// The queued and confirmed positions.
    confirmed: Arc<Confirmed>,
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
        let confirmed = Arc::new(Confirmed::default());
        let sender = LiveSender {
            client,
            metrics: metrics.clone(),
            confirmed: confirmed.clone(),
            unconfirmed: VecDeque::new(),
            sent: 0,
            disconnects_seen: 0,
        };
        tokio::spawn(sender.run(live_rx));
        tokio::spawn(write_retained(bucket, retained_rx, metrics.clone()));
        Forwarder {
            live,
            retained,
            origin,
            prefix,
            sequence: AtomicU64::new(0),
            metrics,
            queue,
            confirmed,
        }
    }

    /// The queued and confirmed positions.
    pub(crate) fn confirmed(&self) -> &Confirmed {
        &self.confirmed
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
    /// `$SYS` topics stay on their node: each node publishes its own. Returns its position
    /// (0: not queued, nothing to wait for).
    pub(crate) fn forward(&self, message: &Arc<Message>, now: Instant) -> u64 {
        let topic = message.topic();
        if crate::config::is_sys_topic(topic) {
            return 0;
        }
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let wire = envelope::encode(message, self.origin, sequence, now);
        if message.publish().retain {
            self.retain(topic, &wire, message.publish().payload().is_empty());
        }
        let out = Outgoing {
            subject: subject::topic_subject(&self.prefix, topic).into(),
            envelope: wire,
        };
        let mut queued = self
            .confirmed
            .queued
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.live.try_send(out).is_err() {
            drop(queued);
            ClusterMetrics::inc(&self.metrics.forward_dropped);
            tracing::debug!(
                topic,
                "cluster: queue to NATS full, cross-node copy dropped"
            );
            return 0;
        }
        *queued += 1;
        *queued
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

/// The task that drains the live queue into NATS and confirms what it sent.
struct LiveSender {
    client: async_nats::Client,
    metrics: Arc<ClusterMetrics>,
    confirmed: Arc<Confirmed>,
    /// Sent and not yet confirmed, with their positions: sent again after a lost
    /// connection.
    unconfirmed: VecDeque<(u64, Outgoing)>,
    /// Messages sent (the position of the last one).
    sent: u64,
    /// The NATS disconnects counted when `unconfirmed` was last (re)sent.
    disconnects_seen: u64,
}

type RoundTrip = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

impl LiveSender {
    async fn run(mut self, mut queue: mpsc::Receiver<Outgoing>) {
        let mut batch = Vec::with_capacity(64);
        // The round trip in flight and the position and disconnect count it started at.
        let mut in_flight: Option<(RoundTrip, u64, u64)> = None;
        loop {
            tokio::select! {
                n = queue.recv_many(&mut batch, 64) => {
                    if n == 0 {
                        return;
                    }
                    for out in batch.drain(..) {
                        self.send(out).await;
                    }
                }
                ok = async { (&mut in_flight.as_mut()?.0).await.then_some(()) }, if in_flight.is_some() => {
                    let Some((_, target, disconnects)) = in_flight.take() else { continue };
                    if ok.is_some() && self.disconnects() == disconnects {
                        self.unconfirmed.retain(|(position, _)| *position > target);
                        self.confirmed.confirm(target);
                    } else {
                        tokio::time::sleep(ROUND_TRIP_RETRY).await;
                    }
                }
            }
            if in_flight.is_none() && self.sent > self.confirmed.position() {
                in_flight = Some(self.start_round_trip().await);
            }
        }
    }

    fn disconnects(&self) -> u64 {
        ClusterMetrics::get(&self.metrics.disconnects)
    }

    async fn send(&mut self, out: Outgoing) {
        self.sent += 1;
        self.publish(&out).await;
        self.unconfirmed.push_back((self.sent, out));
    }

    async fn publish(&self, out: &Outgoing) {
        match self
            .client
            .publish(out.subject.clone(), out.envelope.clone())
            .await
        {
            Ok(()) => ClusterMetrics::inc(&self.metrics.messages_out),
            Err(e) => {
                ClusterMetrics::inc(&self.metrics.publish_errors);
                tracing::debug!(error = %e, "cluster: NATS refused a message");
            }
        }
    }

    /// Starts a round trip confirming everything sent so far; first sends again what a lost
    /// connection may have lost.
    async fn start_round_trip(&mut self) -> (RoundTrip, u64, u64) {
        let disconnects = self.disconnects();
        if disconnects != self.disconnects_seen {
            self.disconnects_seen = disconnects;
            for (_, out) in &self.unconfirmed {
                self.publish(out).await;
            }
        }
        let client = self.client.clone();
        let round_trip: RoundTrip = Box::pin(async move {
            let answer = tokio::time::timeout(ROUND_TRIP_TIMEOUT, super::round_trip(&client));
            matches!(answer.await, Ok(Ok(())))
        });
        (round_trip, self.sent, disconnects)
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
