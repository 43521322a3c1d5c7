//! Helpers for the unit tests of the session, delivery and routing: sessions attached to a
//! SharedWriter without a socket, messages, and the packets a writer holds, decoded.

// Test-only code (compiled under cfg(test) by its parent):
#[cfg(test)]
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{Decoder, Packet, ProtocolVersion, Publish, QoS};
use tokio::time::Instant;

use crate::delivery::budget::ByteBudget;
use crate::delivery::shared_writer::SharedWriter;

/// No broker-wide bound, for tests of one session.
static UNLIMITED: ByteBudget = ByteBudget::new(0);
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::delivery::{DeliverCtx, Link, OutboundAliases};
use crate::session::Session;

/// A delivery context at `now` with generous limits.
pub(crate) fn ctx(metrics: &Metrics, now: Instant) -> DeliverCtx<'_> {
    DeliverCtx {
        metrics,
        now,
        slow_consumer_timeout: Duration::from_secs(30),
        backpressure_queued_messages: usize::MAX,
        journal: None,
        retained: None,
        budget: &UNLIMITED,
        cache_templates: true,
    }
}

/// A fresh session with room for `queue` queued messages.
pub(crate) fn session(id: u64, queue: usize) -> Arc<Session> {
    Arc::new(Session::new(
        id,
        Arc::from(format!("c{id}")),
        queue,
        1 << 20,
        Arc::new(ByteBudget::new(0)),
    ))
}

/// How a test connection attaches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attach {
    pub(crate) version: ProtocolVersion,
    /// The outbound window (the client's Receive Maximum).
    pub(crate) window: usize,
    /// The client's Topic Alias Maximum.
    pub(crate) alias_max: u16,
    /// The client's Maximum Packet Size.
    pub(crate) max_packet_size_bytes: u32,
}

impl Default for Attach {
    fn default() -> Self {
        Attach {
            version: ProtocolVersion::V5,
            window: 16,
            alias_max: 0,
            max_packet_size_bytes: u32::MAX,
        }
    }
}

/// Attaches a connection (generation `generation`) to `session`; returns its writer.
pub(crate) fn attach(
    session: &Session,
    how: Attach,
    generation: u64,
    ctx: DeliverCtx<'_>,
) -> Arc<SharedWriter> {
    let writer = Arc::new(SharedWriter::new(1 << 20));
    let link = Link {
        writer: writer.clone(),
        version: how.version,
        max_packet_size_bytes: how.max_packet_size_bytes,
        aliases: OutboundAliases::new(how.alias_max),
        generation,
        username: None,
        peer: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
        keep_alive_secs: 0,
        connected_at_unix_ms: 0,
    };
    session.delivery().attach(link, how.window, ctx);
    writer
}

/// Takes what `writer` holds and decodes it as `version` packets.
pub(crate) fn packets(writer: &SharedWriter, version: ProtocolVersion) -> Vec<Packet> {
    decode_packets(taken(writer), version)
}

/// Takes what `writer` holds, as bytes.
pub(crate) fn taken(writer: &SharedWriter) -> BytesMut {
    let mut buf = BytesMut::new();
    writer.take(&mut buf);
    buf
}

/// Decodes `buf` as whole `version` packets.
pub(crate) fn decode_packets(mut buf: BytesMut, version: ProtocolVersion) -> Vec<Packet> {
    let mut decoder = Decoder::with_version(version, u32::MAX);
    let mut out = Vec::new();
    while let Some(packet) = decoder.decode(&mut buf).expect("valid packets") {
        out.push(packet);
    }
    assert!(buf.is_empty(), "a partial packet was left");
    out
}

/// The PUBLISH packets among `packets`.
pub(crate) fn publishes(packets: Vec<Packet>) -> Vec<Publish> {
    packets
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(publish) => Some(publish),
            _ => None,
        })
        .collect()
}

/// A message on `topic` at `qos`, published by session `origin` (for No Local).
pub(crate) fn message(topic: &str, qos: QoS, retain: bool, origin: Option<u64>) -> Arc<Message> {
    let mut publish = Publish::new(topic, bytes::Bytes::from_static(b"payload")).with_qos(
        crate::test_support::publish_qos(qos, std::num::NonZeroU16::MIN),
    );
    publish.retain = retain;
    Message::new(publish, Instant::now(), origin)
}

/// `qos` with packet identifier `id` where it takes one.
pub(crate) fn publish_qos(qos: QoS, id: tern_codec::PacketId) -> tern_codec::PublishQoS {
    match qos {
        QoS::AtMostOnce => tern_codec::PublishQoS::AtMostOnce,
        QoS::AtLeastOnce => tern_codec::PublishQoS::AtLeastOnce(id),
        QoS::ExactlyOnce => tern_codec::PublishQoS::ExactlyOnce(id),
    }
}

/// A waker that counts its wake-ups.
#[derive(Debug, Default)]
pub(crate) struct WakeCount(std::sync::atomic::AtomicUsize);

impl WakeCount {
    /// Wake-ups so far.
    pub(crate) fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::task::Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A persistence configuration for a journal in `dir` (`durability = "sync"`, no
/// checkpoint within a test, 1 MiB segments).
pub(crate) fn persistence_config(dir: &std::path::Path) -> crate::config::PersistenceConfig {
    crate::config::PersistenceConfig {
        enabled: true,
        dir: dir.to_path_buf(),
        durability: crate::config::Durability::Sync,
        fsync_interval_ms: 1000,
        checkpoint_interval_secs: 3600,
        segment_bytes: 1 << 20,
        max_disk_bytes: 0,
    }
}
