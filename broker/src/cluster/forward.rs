//! Sending this node's messages to NATS. A publisher's task numbers the message (a QoS 1/2
//! or retained one before routing it here, [`Forwarder::identify`], so that a session
//! queueing it can hand it over with its identity; a QoS 0 one when it is queued) and hands
//! it to a bounded queue without waiting ([`Outbox`]); one task drains the queue, wraps the
//! messages ([`super::envelope`]) and hands them to the NATS client, which batches the
//! writes.
//! RETAIN changes go to a second queue and task that writes the cluster's retained bucket
//! ([`super::retained`]) in order.
//!
//! Batching: consecutive queued messages of one topic (one publisher's burst, typically)
//! travel as one NATS message carrying their envelopes in order, never larger than the
//! server's `max_payload` nor [`BATCH_MAX_BYTES`]; a lone message, or one too large to share,
//! travels alone in the single-envelope form. Nothing waits to fill a batch: it holds what
//! was queued when the task looked, so batches grow only when NATS is the bottleneck. The
//! subject is the topic's, so interest routing is exactly as for single messages; a batch
//! for a queue group (shared subscription) goes to one node of the group, which still picks
//! a member per message: groups are spread across nodes per batch, not per message.
//!
//! A message whose envelope is larger than the server's `max_payload` goes through the
//! object store ([`super::large`]): the sending task puts the envelope there and sends a
//! reference in its place, awaiting the put before it sends anything after it, so the
//! node's messages keep their order. The round trip confirming it follows the put, so it
//! is acknowledged once NATS has it, as any other.
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

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::envelope;
use super::large::LargeStore;
use super::metrics::ClusterMetrics;
use super::outbox::Outbox;
use super::retained::RetainedBucket;
use super::subject;
use crate::message::Message;

/// One message for NATS: an envelope or a batch of them.
struct Outgoing {
    subject: async_nats::Subject,
    envelope: Bytes,
    /// The MQTT messages it carries.
    messages: u64,
}

/// One MQTT message waiting for the sending task.
#[derive(Debug)]
struct Queued {
    message: Arc<Message>,
    /// Its number among this node's messages (for the receivers' duplicate check).
    sequence: u64,
}

/// The largest batch of envelopes in one NATS message (the server's `max_payload` caps it
/// further): large enough that the per-message costs vanish, small enough that one batch
/// does not hold a receiving node's filter task for long.
const BATCH_MAX_BYTES: usize = 256 * 1024;
/// Most messages the sending task takes from the queue at once.
const TAKE_MAX: usize = 512;

/// Longest one confirming round trip may take before it counts as failed.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed round trip before the next.
const ROUND_TRIP_RETRY: Duration = Duration::from_millis(100);

/// How far NATS has confirmed this node's messages (positions are given out by the
/// [`Outbox`]), and who waits for it.
#[derive(Debug, Default)]
pub(crate) struct Confirmed {
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
    live: Arc<Outbox<Queued>>,
    /// The NATS connection (for the server's `max_payload`).
    client: async_nats::Client,
    retained: mpsc::Sender<(String, Option<Bytes>)>,
    origin: u64,
    sequence: AtomicU64,
    metrics: Arc<ClusterMetrics>,
    /// The live queue's size: publishers are held back while less than half of it is free.
    queue: usize,
    /// The queued and confirmed positions.
    confirmed: Arc<Confirmed>,
}

impl Drop for Forwarder {
    /// The sending task ends once it has sent what is queued.
    fn drop(&mut self) {
        self.live.close();
    }
}

/// Whether `message` travels under a number taken when it is queued rather than its
/// identity: a QoS 0 message is never queued for a session nor handed over, so it needs no
/// identity kept in it (an allocation per message), only a number for the receivers'
/// duplicate check. A retained one gets an identity before routing all the same: its
/// RETAIN change, encoded after it is queued, carries the same number.
fn needs_number(message: &Message) -> bool {
    message.qos() == tern_codec::QoS::AtMostOnce
        && !message.publish().retain
        && message.identity().is_none()
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
        (origin, probe): (u64, async_nats::Subject),
        prefix: String,
        queue: usize,
        metrics: Arc<ClusterMetrics>,
        large: LargeStore,
    ) -> Forwarder {
        let live = Arc::new(Outbox::new(queue));
        let (retained, retained_rx) = mpsc::channel(queue);
        let confirmed = Arc::new(Confirmed::default());
        let sender = LiveSender {
            client: client.clone(),
            probe,
            origin,
            prefix,
            metrics: metrics.clone(),
            confirmed: confirmed.clone(),
            unconfirmed: VecDeque::new(),
            sent: 0,
            disconnects_seen: 0,
            large,
        };
        tokio::spawn(sender.run(live.clone()));
        tokio::spawn(write_retained(bucket, retained_rx, metrics.clone()));
        Forwarder {
            live,
            client,
            retained,
            origin,
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
        if self.live.free() >= self.queue / 2 {
            return None;
        }
        ClusterMetrics::inc(&self.metrics.publisher_waits);
        let live = self.live.clone();
        let resume_at = self.queue * 3 / 4;
        Some(Box::pin(async move {
            while live.free() < resume_at && !live.is_closed() {
                tokio::time::sleep(CONGESTION_POLL).await;
            }
        }))
    }

    /// Queues `messages` (in order, under one lock) for the other nodes, and their RETAIN
    /// changes for the bucket. `$SYS` topics stay on their node: each node publishes its
    /// own. Returns the position of the last one queued (0: none, nothing to wait for).
    pub(crate) fn forward(&self, messages: &[Arc<Message>], now: Instant) -> u64 {
        let travels = |m: &&Arc<Message>| !crate::config::is_sys_topic(m.topic());
        // The numbers of the messages without an identity (QoS 0) are taken at once; under
        // the queue's lock each message costs a counter or a load and a reference count.
        let fresh = messages
            .iter()
            .filter(travels)
            .filter(|m| needs_number(m))
            .count() as u64;
        let mut next = match fresh {
            0 => 0,
            n => self.sequence.fetch_add(n, Ordering::Relaxed) + 1,
        };
        let pushed = self
            .live
            .push(messages.iter().filter(travels).map(|message| {
                let sequence = if needs_number(message) {
                    next += 1;
                    next - 1
                } else {
                    self.identify(message)
                };
                Queued {
                    message: message.clone(),
                    sequence,
                }
            }));
        // RETAIN changes are encoded outside the queue's lock (a retained message has its
        // identity from before routing).
        for message in messages.iter().filter(travels) {
            if message.publish().retain {
                let wire = envelope::encode(message, self.origin, self.identify(message), now);
                self.retain(
                    message.topic(),
                    &wire,
                    message.publish().payload().is_empty(),
                );
            }
        }
        if pushed.dropped > 0 {
            ClusterMetrics::inc_by(&self.metrics.forward_dropped, pushed.dropped as u64);
            tracing::debug!(
                dropped = pushed.dropped,
                "cluster: queue to NATS full, cross-node copies dropped"
            );
        }
        if pushed.queued == 0 {
            return 0;
        }
        pushed.position
    }

    /// `message`'s sequence number among this node's messages: the one it was given
    /// before it was routed here (its cluster identity), or a new one now, kept as its
    /// identity. `$SYS` messages get none (they stay here), nor do the messages numbered
    /// only when queued ([`needs_number`]: not retained QoS 0, never queued for a session
    /// nor handed over).
    pub(crate) fn identify(&self, message: &Message) -> u64 {
        if crate::config::is_sys_topic(message.topic()) || needs_number(message) {
            return 0;
        }
        let (_, sequence) = message.identity_or_init(|| (self.origin, self.next_sequence()));
        sequence
    }

    fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether `message` cannot reach the other nodes: a retained message whose envelope is
    /// larger than the NATS server takes (its `max_payload`). A live message that large
    /// travels through the object store ([`super::large`]), but the retained bucket holds
    /// values of one NATS message, and a retained message must stay as long as it is
    /// retained, which the object store's expiry does not allow. `$SYS` topics stay local.
    pub(crate) fn refuses(&self, message: &Message) -> bool {
        if !message.publish().retain {
            return false;
        }
        let max = self.client.max_payload();
        let refused = envelope::len_bound(message) > max
            && envelope::encoded_len(message) > max
            && !crate::config::is_sys_topic(message.topic());
        if refused {
            ClusterMetrics::inc(&self.metrics.publish_errors);
        }
        refused
    }

    /// Queues a RETAIN change only (no live delivery).
    pub(crate) fn retain_only(&self, message: &Arc<Message>, now: Instant) {
        let topic = message.topic();
        if crate::config::is_sys_topic(topic) {
            return;
        }
        let wire = envelope::encode(message, self.origin, self.next_sequence(), now);
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
    /// Where its round trips go ([`super::round_trip`]).
    probe: async_nats::Subject,
    /// This node's id, in every envelope.
    origin: u64,
    /// The subject prefix.
    prefix: String,
    metrics: Arc<ClusterMetrics>,
    confirmed: Arc<Confirmed>,
    /// Sent and not yet confirmed, with their positions: sent again after a lost
    /// connection.
    unconfirmed: VecDeque<(u64, Outgoing)>,
    /// Messages sent (the position of the last one).
    sent: u64,
    /// The NATS disconnects counted when `unconfirmed` was last (re)sent.
    disconnects_seen: u64,
    /// Where envelopes larger than `max_payload` go.
    large: LargeStore,
}

type RoundTrip = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

impl LiveSender {
    async fn run(mut self, queue: Arc<Outbox<Queued>>) {
        let mut batch = Vec::with_capacity(TAKE_MAX);
        // The round trip in flight and the position and disconnect count it started at.
        let mut in_flight: Option<(RoundTrip, u64, u64)> = None;
        loop {
            tokio::select! {
                n = queue.take(&mut batch, TAKE_MAX) => {
                    if n == 0 {
                        return;
                    }
                    self.send_all(&batch).await;
                    batch.clear();
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

    /// Sends `queued` in order, consecutive messages of one topic batched together.
    async fn send_all(&mut self, queued: &[Queued]) {
        let limit = self.client.max_payload().min(BATCH_MAX_BYTES);
        let (now, unix_now_ms) = (Instant::now(), envelope::unix_ms_now());
        let mut rest = queued;
        while let Some(first) = rest.first() {
            let topic = first.message.topic();
            let (run, size) = batch_run(rest, limit);
            let (batch, after) = rest.split_at(run);
            rest = after;
            let mut wire = BytesMut::with_capacity(size);
            let published = |q: &Queued| envelope::published_unix_ms(&q.message, now, unix_now_ms);
            if let [one] = batch {
                envelope::encode_into(
                    &mut wire,
                    &one.message,
                    self.origin,
                    one.sequence,
                    published(one),
                );
            } else {
                envelope::begin_batch(&mut wire);
                for q in batch {
                    envelope::push_batch_entry(
                        &mut wire,
                        &q.message,
                        self.origin,
                        q.sequence,
                        published(q),
                    );
                }
            }
            let mut envelope = wire.freeze();
            // Only a lone message can be this large (`batch_run`).
            if self.large.too_large(envelope.len()) {
                let acknowledged = batch[0].message.qos() != tern_codec::QoS::AtMostOnce;
                match self.large.put(&envelope, acknowledged).await {
                    Some(reference) => envelope = reference,
                    None => {
                        // Not stored (counted): nothing to send; its position still passes.
                        self.sent += batch.len() as u64;
                        continue;
                    }
                }
            }
            let out = Outgoing {
                subject: subject::topic_subject(&self.prefix, topic).into(),
                envelope,
                messages: batch.len() as u64,
            };
            self.sent += out.messages;
            self.publish(&out).await;
            self.unconfirmed.push_back((self.sent, out));
        }
    }

    async fn publish(&self, out: &Outgoing) {
        match self
            .client
            .publish(out.subject.clone(), out.envelope.clone())
            .await
        {
            Ok(()) => {
                ClusterMetrics::inc_by(&self.metrics.messages_out, out.messages);
                ClusterMetrics::inc(&self.metrics.nats_messages_out);
            }
            Err(e) => {
                ClusterMetrics::inc_by(&self.metrics.publish_errors, out.messages);
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
        let (client, probe) = (self.client.clone(), self.probe.clone());
        let round_trip: RoundTrip = Box::pin(async move {
            let answer = super::round_trip(&client, &probe);
            let answer = tokio::time::timeout(ROUND_TRIP_TIMEOUT, answer);
            matches!(answer.await, Ok(Ok(())))
        });
        (round_trip, self.sent, disconnects)
    }
}

/// How many of `queued` (at least one) go into the next NATS message, and its size: the
/// consecutive messages of the first one's topic while the batch stays within `limit`
/// bytes (each envelope counted at its upper bound, `envelope::len_bound`, which walks no
/// properties). A single message over `limit` goes alone (through the object store if it
/// is over the server's `max_payload`).
fn batch_run(queued: &[Queued], limit: usize) -> (usize, usize) {
    let Some(first) = queued.first() else {
        return (0, 0);
    };
    let topic = first.message.topic();
    let mut size = envelope::BATCH_HEADER_BYTES;
    let mut run = 0;
    for q in queued.iter().take_while(|q| q.message.topic() == topic) {
        let entry = envelope::BATCH_ENTRY_BYTES + envelope::len_bound(&q.message);
        if run > 0 && size + entry > limit {
            break;
        }
        size += entry;
        run += 1;
    }
    (run, size)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::{ByteStr, Publish};

    fn queued(topic: &str, payload_bytes: usize) -> Queued {
        let publish = Publish::new(ByteStr::from(topic), Bytes::from(vec![0u8; payload_bytes]));
        Queued {
            message: Message::new(publish, Instant::now(), None),
            sequence: 1,
        }
    }

    #[test]
    fn batches_take_consecutive_messages_of_one_topic_within_the_limit() {
        let q = [
            queued("a", 10),
            queued("a", 10),
            queued("b", 10),
            queued("a", 10),
        ];
        let entry = envelope::BATCH_ENTRY_BYTES + envelope::len_bound(&q[0].message);
        let header = envelope::BATCH_HEADER_BYTES;
        // Two of "a", then "b" alone (another subject), then "a" again.
        assert_eq!(batch_run(&q, 1 << 20), (2, header + 2 * entry));
        assert_eq!(batch_run(&q[2..], 1 << 20).0, 1);
        assert_eq!(batch_run(&q[3..], 1 << 20).0, 1);
        // The limit splits a run; a message over it still goes alone.
        assert_eq!(batch_run(&q, header + entry).0, 1);
        assert_eq!(batch_run(&q, header + 2 * entry).0, 2);
        assert_eq!(batch_run(&q, 1).0, 1);
        assert_eq!(batch_run(&[], 1), (0, 0));
    }
}
