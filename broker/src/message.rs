//! [`Message`]: one routed application message, shared (`Arc`) by every subscriber, queue
//! and inflight slot that holds it. It owns the encode-once templates of the message.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use once_cell::race::OnceBox;
use tokio::time::Instant;

use tern_codec::{ByteStr, Publish, PublishTemplates, QoS};

/// A routed message: the PUBLISH (inbound alias already resolved), its lazily built
/// templates, and when it arrived (for Message Expiry).
#[derive(Debug)]
pub struct Message {
    /// Templates, holding the publish itself.
    pub templates: PublishTemplates,
    /// When the broker received it.
    pub received_at: Instant,
    /// The session that published it, for No Local; `None` for broker-made messages
    /// (session ids start at 1: 8 bytes where `Option<u64>` takes 16).
    pub origin_session: Option<NonZeroU64>,
    /// Where the journal stored its body (persistence): set the first time a persistent
    /// session is handed it, read by every later one.
    pub journal_body: BodyRef,
    /// Its identity in the cluster (origin node, sequence number there), when it is one:
    /// given before a message published here is routed, or read from the envelope of one
    /// that came from another node; it travels with the message when a session is handed
    /// over, so that the node taking it drops copies it received itself. Boxed, set once:
    /// 8 bytes in every message (a `OnceLock` of the pair took 24 and moved the `Arc`'s
    /// allocation from jemalloc's 160-byte class to the 192-byte one), an allocation only
    /// in a cluster.
    cluster_identity: OnceBox<(u64, u64)>,
}

/// The journal's reference to a message's stored body: its id and the log position of the
/// record that stored it (0 and 0: not stored). Written only by the journal.
#[derive(Debug, Default)]
pub struct BodyRef {
    /// The body's id (0: none yet).
    pub id: std::sync::atomic::AtomicU64,
    /// The log position of the body's record (0: in no log).
    pub position: std::sync::atomic::AtomicU64,
}

impl Message {
    /// Wraps a publish received (or made) at `now`.
    pub fn new(
        publish: Publish,
        received_at: Instant,
        origin_session: Option<u64>,
    ) -> Arc<Message> {
        Arc::new(Message {
            templates: PublishTemplates::new(publish),
            received_at,
            origin_session: origin_session.and_then(NonZeroU64::new),
            journal_body: BodyRef::default(),
            cluster_identity: OnceBox::new(),
        })
    }

    /// A broker-made QoS 0 message (e.g. `$SYS`).
    pub fn broker_made(
        topic: &str,
        payload: impl Into<bytes::Bytes>,
        retain: bool,
        now: Instant,
    ) -> Arc<Message> {
        let mut publish = Publish::new(ByteStr::from(topic), payload.into());
        publish.retain = retain;
        Message::new(publish, now, None)
    }

    /// Its cluster identity (origin node, sequence), if it has one.
    pub fn identity(&self) -> Option<(u64, u64)> {
        self.cluster_identity.get().copied()
    }

    /// Gives it cluster identity `id` unless it has one; returns whether it took `id`.
    pub fn set_identity(&self, id: (u64, u64)) -> bool {
        self.cluster_identity.set(Box::new(id)).is_ok()
    }

    /// Its cluster identity, given by `make` if it has none yet.
    pub fn identity_or_init(&self, make: impl FnOnce() -> (u64, u64)) -> (u64, u64) {
        *self.cluster_identity.get_or_init(|| Box::new(make()))
    }

    /// The publish.
    pub fn publish(&self) -> &Publish {
        self.templates.publish()
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        self.publish().topic()
    }

    /// The QoS it was published with.
    pub fn qos(&self) -> QoS {
        self.publish().qos()
    }

    /// The remaining Message Expiry Interval at `now`: `None` when the message has none,
    /// `Some(Err(()))` when it has expired, else the whole seconds left (at least 1).
    pub fn remaining_expiry_secs(&self, now: Instant) -> Option<Result<u32, ()>> {
        let expiry = self.publish().properties().message_expiry_interval_secs()?;
        let elapsed = now.saturating_duration_since(self.received_at);
        let total = Duration::from_secs(u64::from(expiry));
        if elapsed >= total {
            return Some(Err(()));
        }
        Some(Ok(expiry - elapsed.as_secs() as u32))
    }

    /// Whether the message expired at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        matches!(self.remaining_expiry_secs(now), Some(Err(())))
    }
}

#[cfg(test)]
mod size_tests {
    use super::Message;

    /// A message's `Arc` allocation (two counts and the message) fits jemalloc's 160-byte
    /// class: every queued, inflight and routed message pays for one byte more with 32.
    #[test]
    fn a_message_fits_the_160_byte_class() {
        let allocation = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Message>();
        assert!(allocation <= 160, "Arc<Message> grew to {allocation} bytes");
    }
}
