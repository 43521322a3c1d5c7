//! Local to remote: the bridge's queue of messages for the remote, in order. No I/O: it
//! takes the PUBLISH packets the local broker delivers to the bridge's session and the
//! remote's acknowledgements, and says what to send each way ([`Sends`]).
//!
//! A local delivery is acknowledged to the local broker only once the remote has it
//! (PUBACK, or PUBCOMP for QoS 2), so what is queued here is also held, unacknowledged, by
//! the bridge's local session: a crash of Tern loses nothing the session keeps. The remote
//! packet identifier is the local one (each identifier is in use on both sides exactly as
//! long), and while the link is down the queue waits; when it returns, what was sent and
//! not acknowledged goes again first, with DUP ([MQTT-4.4.0-1]), in the order first sent ([MQTT-4.6.0-1]), then the
//! rest in order.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tern_codec::{ByteStr, Packet, PacketId, PubAck, PubRec, PubRel, Publish, PublishQoS, QoS};
use tokio::time::Instant;

use super::topics::Rules;
use super::Sends;
use crate::metrics::bridge_links::LinkStatus;

/// The user property a Tern bridge adds to what it forwards (5.0), naming its client
/// identifier on the remote: a message carrying our own marker back is a loop.
pub const ORIGIN_PROPERTY: &str = "tern-bridge-origin";

/// Where one queued message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the link or the remote's window; `dup`: it was sent before.
    Unsent { dup: bool },
    /// PUBLISH sent, no acknowledgement yet.
    Sent,
    /// QoS 2: PUBREC received; PUBREL to send (again after a reconnect).
    ReleaseUnsent,
    /// QoS 2: PUBREL sent, waiting for PUBCOMP.
    ReleaseSent,
}

/// One message for the remote.
#[derive(Debug)]
struct Entry {
    /// The identifier, on both sides.
    packet_id: PacketId,
    /// The QoS the local broker delivered at (how to acknowledge it).
    local_qos: QoS,
    /// The PUBLISH for the remote, without its identifier.
    publish: Publish,
    /// QoS towards the remote (1 or 2).
    qos: QoS,
    /// When it was queued: message expiry is reduced by the time spent here.
    queued_at: Instant,
    stage: Stage,
}

/// The queue towards the remote.
#[derive(Debug)]
pub(crate) struct Outbound {
    entries: VecDeque<Entry>,
    /// Whether the remote speaks 5.0 (properties are carried).
    remote_v5: bool,
    /// Our client identifier on the remote: the value of [`ORIGIN_PROPERTY`].
    origin: ByteStr,
    /// Whether the link is up.
    connected: bool,
    /// The remote's Receive Maximum.
    window: usize,
    /// The remote's Maximum Packet Size: a larger message is dropped, not sent (the
    /// remote would close the link for it, again after every reconnect).
    max_packet_bytes: usize,
    status: Arc<LinkStatus>,
}

impl Outbound {
    /// An empty queue.
    pub(crate) fn new(remote_v5: bool, origin: &str, status: Arc<LinkStatus>) -> Outbound {
        Outbound {
            entries: VecDeque::new(),
            remote_v5,
            origin: ByteStr::from(origin),
            connected: false,
            window: 0,
            max_packet_bytes: usize::MAX,
            status,
        }
    }

    fn publish_status(&self) {
        self.status
            .queued
            .store(self.entries.len() as u64, Ordering::Relaxed);
    }

    /// The link is up: what was in flight goes again (PUBREL first where PUBREC came, if
    /// the remote kept the session), then the queue.
    pub(crate) fn link_up(
        &mut self,
        session_present: bool,
        max_packet_bytes: u32,
        window: u16,
        out: &mut Sends,
    ) {
        self.connected = true;
        self.max_packet_bytes = usize::try_from(max_packet_bytes).unwrap_or(usize::MAX);
        self.window = usize::from(window.max(1));
        let mut i = 0;
        while i < self.entries.len() {
            let entry = &mut self.entries[i];
            match entry.stage {
                Stage::ReleaseUnsent | Stage::ReleaseSent if !session_present => {
                    // The remote had it (PUBREC) and forgot the session: it is delivered.
                    if let Some(entry) = self.entries.remove(i) {
                        self.delivered(&entry, out);
                    }
                    continue;
                }
                Stage::ReleaseSent => entry.stage = Stage::ReleaseUnsent,
                Stage::Sent => entry.stage = Stage::Unsent { dup: true },
                _ => {}
            }
            i += 1;
        }
        self.pump(Instant::now(), out);
    }

    /// The link is down: everything in flight waits for the next one.
    pub(crate) fn link_down(&mut self) {
        self.connected = false;
        for entry in &mut self.entries {
            entry.stage = match entry.stage {
                Stage::Sent => Stage::Unsent { dup: true },
                Stage::ReleaseSent => Stage::ReleaseUnsent,
                other => other,
            };
        }
    }

    /// A PUBLISH the local broker delivered to the bridge.
    pub(crate) fn handle_local_publish(
        &mut self,
        publish: Publish,
        rules: &Rules,
        now: Instant,
        out: &mut Sends,
    ) {
        let local_qos = publish.qos();
        let local_id = publish.packet_id();
        if let Some(id) = local_id {
            if self.entries.iter().any(|e| e.packet_id == id) {
                // A redelivery (DUP) of one we hold: it is already queued.
                return;
            }
        }
        if self.carries_our_origin(&publish) {
            // It went out over this bridge before and came back by another way (two
            // bridges in opposite directions between the same brokers): the circle ends.
            LinkStatus::count(&self.status.counters.loops_prevented);
            if let Some(id) = local_id {
                ack_local(id, local_qos, out);
            }
            return;
        }
        let Some(mapped) = rules.outbound(publish.topic()) else {
            LinkStatus::count(&self.status.counters.messages_dropped);
            if let Some(id) = local_id {
                ack_local(id, local_qos, out);
            }
            return;
        };
        let qos = mapped.qos.min(local_qos);
        let remote = self.remote_publish(&publish, mapped.topic);
        match (local_id, qos) {
            (Some(packet_id), QoS::AtLeastOnce | QoS::ExactlyOnce) => {
                self.entries.push_back(Entry {
                    packet_id,
                    local_qos,
                    publish: remote,
                    qos,
                    queued_at: now,
                    stage: Stage::Unsent { dup: false },
                });
                self.pump(now, out);
            }
            (local_id, _) => {
                // QoS 0 on this hop: sent now if the link is up (and it fits), else lost
                // (counted).
                let fits = remote.encoded_len(self.version()) <= self.max_packet_bytes;
                if self.connected && fits {
                    out.remote.push(Packet::Publish(remote));
                    LinkStatus::count(&self.status.counters.messages_out);
                } else {
                    LinkStatus::count(&self.status.counters.messages_dropped);
                }
                if let Some(id) = local_id {
                    ack_local(id, local_qos, out);
                }
            }
        }
    }

    /// Whether `publish` already went out over this bridge (our origin marker).
    fn carries_our_origin(&self, publish: &Publish) -> bool {
        self.remote_v5
            && publish
                .properties()
                .user_properties()
                .any(|(k, v)| k == ORIGIN_PROPERTY && v == self.origin.as_str())
    }

    /// The PUBLISH for the remote: the remote topic, the payload, RETAIN, and (5.0 to 5.0)
    /// the properties with our origin marker, without the subscription identifiers and the
    /// topic alias, which belong to the local hop.
    fn remote_publish(&self, publish: &Publish, topic: String) -> Publish {
        let mut remote = Publish::new(topic, publish.shared_payload());
        remote.retain = publish.retain;
        if self.remote_v5 {
            let mut properties = publish.properties().to_properties();
            properties.subscription_identifiers.clear();
            properties.topic_alias = None;
            properties
                .user_properties
                .push((ByteStr::from(ORIGIN_PROPERTY), self.origin.clone()));
            *remote.properties_mut() = properties;
        }
        remote
    }

    /// Sends what the link and the remote's window allow, in order.
    fn pump(&mut self, now: Instant, out: &mut Sends) {
        if !self.connected {
            self.publish_status();
            return;
        }
        let mut in_flight = self
            .entries
            .iter()
            .filter(|e| !matches!(e.stage, Stage::Unsent { .. }))
            .count();
        let version = self.version();
        let max_packet_bytes = self.max_packet_bytes;
        let fits = |p: &Publish| p.encoded_len(version) <= max_packet_bytes;
        let mut i = 0;
        while i < self.entries.len() {
            let entry = &mut self.entries[i];
            match entry.stage {
                Stage::ReleaseUnsent => {
                    out.remote
                        .push(Packet::PubRel(PubRel::new(entry.packet_id)));
                    entry.stage = Stage::ReleaseSent;
                }
                Stage::Unsent { dup } if in_flight < self.window => {
                    if let Some(publish) = prepare(entry, dup, now).filter(fits) {
                        out.remote.push(Packet::Publish(publish));
                        entry.stage = Stage::Sent;
                        in_flight += 1;
                    } else if let Some(expired) = self.entries.remove(i) {
                        // Expired while queued ([MQTT-3.3.2-5]), or larger than the remote
                        // takes ([MQTT-3.1.2-25]): not forwarded.
                        LinkStatus::count(&self.status.counters.messages_dropped);
                        ack_local(expired.packet_id, expired.local_qos, out);
                        continue;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        self.publish_status();
    }

    /// The remote's PUBACK, PUBREC or PUBCOMP.
    pub(crate) fn handle_remote_ack(&mut self, packet: &Packet, out: &mut Sends) {
        let (id, code) = match packet {
            Packet::PubAck(a) => (a.packet_id, a.reason_code.0),
            Packet::PubRec(a) => (a.packet_id, a.reason_code.0),
            Packet::PubComp(a) => (a.packet_id, a.reason_code.0),
            _ => return,
        };
        let Some(i) = self.entries.iter().position(|e| e.packet_id == id) else {
            if let Packet::PubRec(_) = packet {
                // [MQTT-4.3.3-4]: PUBREC is answered with PUBREL, even for one we forgot.
                out.remote.push(Packet::PubRel(PubRel::new(id)));
            }
            return;
        };
        let stage = self.entries[i].stage;
        match (packet, stage) {
            (Packet::PubRec(_), Stage::Sent) if code < 0x80 => {
                self.entries[i].stage = Stage::ReleaseSent;
                out.remote.push(Packet::PubRel(PubRel::new(id)));
                return;
            }
            (Packet::PubAck(_) | Packet::PubRec(_), Stage::Sent)
            | (Packet::PubComp(_), Stage::ReleaseSent) => {}
            _ => return,
        }
        if let Some(entry) = self.entries.remove(i) {
            if code >= 0x80 {
                // Refused by the remote (not authorized, quota...): acknowledged here, so
                // that it does not block the queue, and counted.
                LinkStatus::count(&self.status.counters.messages_dropped);
                self.status
                    .set_last_error(format!("remote refused a PUBLISH: reason 0x{code:02x}"));
                ack_local(entry.packet_id, entry.local_qos, out);
            } else {
                self.delivered(&entry, out);
            }
        }
        self.pump(Instant::now(), out);
    }

    fn delivered(&self, entry: &Entry, out: &mut Sends) {
        LinkStatus::count(&self.status.counters.messages_out);
        ack_local(entry.packet_id, entry.local_qos, out);
    }

    fn version(&self) -> tern_codec::ProtocolVersion {
        if self.remote_v5 {
            tern_codec::ProtocolVersion::V5
        } else {
            tern_codec::ProtocolVersion::V3_1_1
        }
    }

    /// Messages held for the remote.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The PUBLISH to send for `entry`, its expiry reduced by the time queued; `None` when
/// it expired.
fn prepare(entry: &Entry, dup: bool, now: Instant) -> Option<Publish> {
    let mut publish = entry.publish.clone();
    publish.set_qos(PublishQoS::with_id(entry.qos, entry.packet_id));
    publish.dup = dup;
    if let Some(expiry) = publish.properties().message_expiry_interval_secs() {
        let waited = now.saturating_duration_since(entry.queued_at).as_secs();
        let waited = u32::try_from(waited).unwrap_or(u32::MAX);
        if waited >= expiry {
            return None;
        }
        publish.properties_mut().message_expiry_interval_secs = Some(expiry - waited);
    }
    Some(publish)
}

/// Acknowledges a delivery of the local broker: PUBACK, or PUBREC for QoS 2 (its PUBREL is
/// answered by [`super::Bridge`]).
fn ack_local(id: PacketId, local_qos: QoS, out: &mut Sends) {
    match local_qos {
        QoS::AtLeastOnce => out.local.push(Packet::PubAck(PubAck::new(id))),
        QoS::ExactlyOnce => out.local.push(Packet::PubRec(PubRec::new(id))),
        QoS::AtMostOnce => {}
    }
}
