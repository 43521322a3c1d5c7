//! Remote to local: messages from the remote, published on this broker by the bridge's
//! local client (so the ACL applies to the bridge's identity). No I/O: it takes the
//! remote's PUBLISH and PUBREL and the local broker's acknowledgements, and says what to
//! send each way ([`Sends`]).
//!
//! The remote is acknowledged only once the local broker has the message: PUBACK after the
//! local PUBACK, PUBREC after the local PUBREC. A QoS 2 message whose PUBREC went out is
//! remembered until the remote's PUBREL, so that a resend (DUP) after a reconnect is
//! answered, not published twice ([MQTT-4.3.3-10]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tern_codec::{Packet, PacketId, PubAck, PubComp, PubRec, PubRel, Publish, PublishQoS, QoS};

use super::outbound::ORIGIN_PROPERTY;
use super::topics::Rules;
use super::Sends;
use crate::metrics::bridge_links::LinkStatus;

/// Where one message from the remote is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the local broker's window.
    Waiting,
    /// Published locally under this identifier; no acknowledgement yet.
    Published(PacketId),
    /// QoS 2: the local broker has it, PUBREC went to the remote; waiting for PUBREL.
    Received,
}

/// The remote's messages on their way in.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// Remote packet identifier -> stage.
    by_remote: HashMap<PacketId, Stage>,
    /// Local packet identifier -> the remote one it carries.
    by_local: HashMap<PacketId, PacketId>,
    /// Messages waiting for the local window, in order: (remote id, the local PUBLISH).
    waiting: VecDeque<(PacketId, Publish)>,
    /// The local broker's Receive Maximum.
    window: usize,
    next_local: u16,
    remote_v5: bool,
    /// Our client identifier on the remote (our [`ORIGIN_PROPERTY`] value).
    origin: String,
    connected: bool,
    status: Arc<LinkStatus>,
}

impl Inbound {
    /// Nothing in flight yet; `window`: the local broker's Receive Maximum.
    pub(crate) fn new(
        remote_v5: bool,
        origin: &str,
        window: u16,
        status: Arc<LinkStatus>,
    ) -> Inbound {
        Inbound {
            by_remote: HashMap::new(),
            by_local: HashMap::new(),
            waiting: VecDeque::new(),
            window: usize::from(window.max(1)),
            next_local: 0,
            remote_v5,
            origin: origin.to_string(),
            connected: false,
            status,
        }
    }

    /// The link is up; without the remote's session, what it had in flight is gone (its
    /// messages still reach the local broker, their acknowledgements go nowhere).
    pub(crate) fn link_up(&mut self, session_present: bool) {
        self.connected = true;
        if !session_present {
            self.by_remote.clear();
        }
    }

    /// The link is down.
    pub(crate) fn link_down(&mut self) {
        self.connected = false;
    }

    /// A PUBLISH from the remote.
    pub(crate) fn handle_remote_publish(
        &mut self,
        publish: Publish,
        rules: &Rules,
        out: &mut Sends,
    ) {
        let remote_id = publish.packet_id();
        if let Some(id) = remote_id {
            match self.by_remote.get(&id) {
                Some(Stage::Received) => {
                    out.remote.push(Packet::PubRec(PubRec::new(id)));
                    return;
                }
                Some(_) => return,
                None => {}
            }
        }
        let mapped = rules.inbound(publish.topic());
        let looped = self.remote_v5
            && publish
                .properties()
                .user_properties()
                .any(|(k, v)| k == ORIGIN_PROPERTY && v == self.origin);
        let Some(mapped) = mapped.filter(|_| !looped) else {
            let counter = if looped {
                &self.status.counters.loops_prevented
            } else {
                &self.status.counters.messages_dropped
            };
            LinkStatus::count(counter);
            self.ack_remote_unpublished(&publish, out);
            return;
        };
        let mut local = Publish::new(mapped.topic, publish.shared_payload());
        local.retain = publish.retain;
        if self.remote_v5 {
            let mut properties = publish.properties().to_properties();
            properties.subscription_identifiers.clear();
            properties.topic_alias = None;
            *local.properties_mut() = properties;
        }
        let qos = mapped.qos.min(publish.qos());
        match (remote_id, qos) {
            (Some(id), QoS::AtLeastOnce | QoS::ExactlyOnce) => {
                local.set_qos(PublishQoS::with_id(qos, id));
                self.by_remote.insert(id, Stage::Waiting);
                self.waiting.push_back((id, local));
                self.pump(out);
            }
            (remote_id, _) => {
                out.local.push(Packet::Publish(local));
                LinkStatus::count(&self.status.counters.messages_in);
                if remote_id.is_some() {
                    self.ack_remote_unpublished(&publish, out);
                }
            }
        }
    }

    /// A PUBLISH from the remote recognised as our own coming back ([`super::echo`]): not
    /// published, acknowledged, counted.
    pub(crate) fn drop_echo(&mut self, publish: &Publish, out: &mut Sends) {
        LinkStatus::count(&self.status.counters.loops_prevented);
        self.ack_remote_unpublished(publish, out);
    }

    /// Acknowledges a remote PUBLISH that is not published here (a loop, no rule, QoS 0
    /// locally): PUBACK, or PUBREC with the PUBREL answered later.
    fn ack_remote_unpublished(&mut self, publish: &Publish, out: &mut Sends) {
        match publish.publish_qos() {
            PublishQoS::AtMostOnce => {}
            PublishQoS::AtLeastOnce(id) => out.remote.push(Packet::PubAck(PubAck::new(id))),
            PublishQoS::ExactlyOnce(id) => {
                self.by_remote.insert(id, Stage::Received);
                out.remote.push(Packet::PubRec(PubRec::new(id)));
            }
        }
    }

    /// Publishes waiting messages while the local window has room.
    fn pump(&mut self, out: &mut Sends) {
        while self.by_local.len() < self.window {
            let Some((remote_id, mut local)) = self.waiting.pop_front() else {
                return;
            };
            let Some(local_id) = self.next_local_id() else {
                self.waiting.push_front((remote_id, local));
                return;
            };
            local.set_qos(PublishQoS::with_id(local.qos(), local_id));
            self.by_local.insert(local_id, remote_id);
            self.by_remote.insert(remote_id, Stage::Published(local_id));
            out.local.push(Packet::Publish(local));
        }
    }

    fn next_local_id(&mut self) -> Option<PacketId> {
        for _ in 0..u16::MAX {
            self.next_local = self.next_local.wrapping_add(1);
            if let Some(id) = PacketId::new(self.next_local) {
                if !self.by_local.contains_key(&id) {
                    return Some(id);
                }
            }
        }
        None
    }

    /// The remote stage of the message published locally as `local_id`, if it is still
    /// that message's (the remote may have forgotten it and reused the identifier).
    fn remote_of(&self, local_id: PacketId) -> Option<PacketId> {
        let remote_id = *self.by_local.get(&local_id)?;
        (self.by_remote.get(&remote_id) == Some(&Stage::Published(local_id))).then_some(remote_id)
    }

    /// The local broker's PUBACK, PUBREC or PUBCOMP of a message we published.
    pub(crate) fn handle_local_ack(&mut self, packet: &Packet, out: &mut Sends) {
        match packet {
            Packet::PubAck(ack) => {
                if let Some(remote_id) = self.remote_of(ack.packet_id) {
                    self.by_remote.remove(&remote_id);
                    self.ack_remote(Packet::PubAck(PubAck::new(remote_id)), out);
                }
                self.by_local.remove(&ack.packet_id);
                self.count_local_result(ack.reason_code.0);
            }
            Packet::PubRec(rec) => {
                out.local.push(Packet::PubRel(PubRel::new(rec.packet_id)));
                if let Some(remote_id) = self.remote_of(rec.packet_id) {
                    self.by_remote.insert(remote_id, Stage::Received);
                    self.ack_remote(Packet::PubRec(PubRec::new(remote_id)), out);
                }
                self.count_local_result(rec.reason_code.0);
            }
            Packet::PubComp(comp) => {
                self.by_local.remove(&comp.packet_id);
            }
            _ => return,
        }
        self.pump(out);
    }

    fn count_local_result(&self, code: u8) {
        if code >= 0x80 {
            // Refused here (the bridge's ACL, a quota): the remote is still acknowledged.
            LinkStatus::count(&self.status.counters.messages_dropped);
            self.status.set_last_error(format!(
                "local broker refused a message from the remote: reason 0x{code:02x}"
            ));
        } else {
            LinkStatus::count(&self.status.counters.messages_in);
        }
    }

    fn ack_remote(&self, packet: Packet, out: &mut Sends) {
        // While the link is down the acknowledgement is lost; the remote resends (DUP) and
        // QoS 2 is answered from `Received`, QoS 1 is published again (at least once).
        if self.connected {
            out.remote.push(packet);
        }
    }

    /// The remote's PUBREL: the exchange ends ([MQTT-4.3.3-11]: PUBCOMP even if unknown).
    pub(crate) fn handle_remote_release(&mut self, id: PacketId, out: &mut Sends) {
        if self.by_remote.get(&id) == Some(&Stage::Received) {
            self.by_remote.remove(&id);
        }
        out.remote.push(Packet::PubComp(PubComp::new(id)));
    }
}
