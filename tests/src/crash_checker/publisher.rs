//! A publisher of the checker: one persistent session sending QoS 1 or QoS 2 messages
//! with unique payload ids on its own topic, a window of them in flight, recording each
//! acknowledgement in the [`Ledger`]. After a broker restart it reconnects and, if its
//! session is still there, resends what was not acknowledged (PUBLISH with DUP and the same
//! packet id, or PUBREL after a PUBREC), as [MQTT-4.4.0-1] asks of a client.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_codec::{Packet, PacketId, ProtocolVersion, PubRel, Publish, PublishQoS, QoS};

use super::ledger::MessageId;
use super::wire::Wire;
use super::Ctx;

/// What one publisher does.
#[derive(Debug, Clone)]
pub(crate) struct PublisherSpec {
    /// Its number (in payloads and its client id).
    pub(crate) index: u32,
    /// QoS 1 or 2.
    pub(crate) qos: QoS,
    /// Publish with RETAIN on `crash-retained/<index>` instead of `crash/<index>`.
    pub(crate) retain: bool,
    /// Least time between two new messages.
    pub(crate) interval: Duration,
}

/// A message sent and not yet completed.
struct Inflight {
    packet_id: PacketId,
    message: MessageId,
    /// QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    released: bool,
}

struct Publisher {
    ctx: Arc<Ctx>,
    spec: PublisherSpec,
    topic: String,
    next_seq: u64,
    last_packet_id: u16,
    inflight: VecDeque<Inflight>,
}

/// How a connection ended.
enum End {
    /// Publishing stopped and nothing is in flight.
    Done,
    /// The connection broke (the broker went away): reconnect.
    Broken,
    /// (From one packet's handling:) carry on.
    Continue,
}

/// Runs the publisher until the checker stops publishing and everything it sent is
/// completed (or the checker stops altogether).
pub(crate) async fn run(ctx: Arc<Ctx>, spec: PublisherSpec) {
    let topic = if spec.retain {
        format!("crash-retained/{}", spec.index)
    } else {
        format!("crash/{}", spec.index)
    };
    if spec.retain {
        ctx.ledger
            .lock()
            .retained_topics
            .insert(spec.index, topic.clone());
    }
    let client_id = format!("crash-pub-{}", spec.index);
    // Every other publisher speaks 3.1.1: its messages are stored as the 3.x frames they
    // arrived in, and must come back as intact as the 5.0 ones.
    let version = if spec.index % 2 == 1 {
        ProtocolVersion::V3_1_1
    } else {
        ProtocolVersion::V5
    };
    let mut publisher = Publisher {
        ctx: ctx.clone(),
        spec,
        topic,
        next_seq: 0,
        last_packet_id: 0,
        inflight: VecDeque::new(),
    };
    let mut first = true;
    // A 3.1.1 session with Clean Session 1 ends with its connection: 3.1.1 publishers ask
    // for a persistent session from the start (the broker's data directory is new).
    let fresh = |first: bool| first && version == ProtocolVersion::V5;
    while let Some((mut wire, present)) = ctx.connect_as(&client_id, fresh(first), version).await {
        if !present && !first {
            // [MQTT-4.4.0-1] only applies to a session that is still there.
            ctx.ledger.lock().publisher_sessions_lost += 1;
            publisher.inflight.clear();
        }
        first = false;
        match publisher.session(&mut wire).await {
            Ok(End::Done) => {
                wire.disconnect().await;
                return;
            }
            Ok(End::Broken | End::Continue) | Err(_) => {}
        }
    }
}

impl Publisher {
    /// One connection: resend what is in flight, then publish until told to stop.
    async fn session(&mut self, wire: &mut Wire) -> io::Result<End> {
        for inflight in &self.inflight {
            let packet = if inflight.released {
                Packet::PubRel(PubRel::new(inflight.packet_id))
            } else {
                Packet::Publish(self.publish(inflight.message, inflight.packet_id, true))
            };
            wire.send(&packet).await?;
        }
        let mut next_send = Instant::now();
        loop {
            let publishing = self.ctx.publishing() && self.next_seq < self.ctx.max_messages;
            if !publishing && self.inflight.is_empty() {
                return Ok(End::Done);
            }
            let now = Instant::now();
            if publishing && self.inflight.len() < self.ctx.window && now >= next_send {
                self.send_new(wire).await?;
                next_send = now + self.spec.interval;
                continue;
            }
            let wait = if publishing && self.inflight.len() < self.ctx.window {
                next_send.saturating_duration_since(now)
            } else {
                Duration::from_millis(50)
            };
            match tokio::time::timeout(wait, wire.recv()).await {
                Err(_elapsed) => {}
                Ok(packet) => {
                    if let End::Broken = self.handle(wire, packet?).await? {
                        return Ok(End::Broken);
                    }
                }
            }
        }
    }

    async fn send_new(&mut self, wire: &mut Wire) -> io::Result<()> {
        let message = MessageId {
            publisher: self.spec.index,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let packet_id = self.next_packet_id();
        self.ctx.ledger.sent(
            message,
            self.spec.qos,
            self.spec.retain,
            self.ctx.restarts(),
        );
        self.inflight.push_back(Inflight {
            packet_id,
            message,
            released: false,
        });
        wire.send(&Packet::Publish(self.publish(message, packet_id, false)))
            .await
    }

    fn publish(&self, message: MessageId, packet_id: PacketId, dup: bool) -> Publish {
        let mut publish = Publish::new(self.topic.as_str(), message.payload())
            .with_qos(PublishQoS::with_id(self.spec.qos, packet_id));
        publish.retain = self.spec.retain;
        publish.dup = dup;
        publish
    }

    /// A packet identifier not in flight.
    fn next_packet_id(&mut self) -> PacketId {
        loop {
            self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
            let id = PacketId::new(self.last_packet_id).expect("non-zero by construction");
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    async fn handle(&mut self, wire: &mut Wire, packet: Packet) -> io::Result<End> {
        match packet {
            Packet::PubAck(ack) => {
                if let Some(done) = self.take(ack.packet_id) {
                    self.record(done.message, ack.reason_code.0);
                }
            }
            Packet::PubRec(rec) => {
                let Some(at) = self.position(rec.packet_id) else {
                    return Ok(End::Continue);
                };
                let message = self.inflight[at].message;
                if self.inflight[at].released {
                    // A PUBREC for a PUBREL already sent: send it again.
                } else if rec.reason_code.0 >= 0x80 {
                    self.inflight.remove(at);
                    self.record(message, rec.reason_code.0);
                    return Ok(End::Continue);
                } else {
                    self.inflight[at].released = true;
                    self.record(message, rec.reason_code.0);
                }
                wire.send(&Packet::PubRel(PubRel::new(rec.packet_id)))
                    .await?;
            }
            Packet::PubComp(comp) => {
                self.take(comp.packet_id);
            }
            Packet::Disconnect(_) => return Ok(End::Broken),
            _ => {}
        }
        Ok(End::Continue)
    }

    fn record(&self, message: MessageId, reason_code: u8) {
        if reason_code < 0x80 {
            self.ctx.ledger.acked(message);
        } else {
            self.ctx.ledger.lock().refused += 1;
        }
    }

    fn position(&self, packet_id: PacketId) -> Option<usize> {
        self.inflight.iter().position(|i| i.packet_id == packet_id)
    }

    fn take(&mut self, packet_id: PacketId) -> Option<Inflight> {
        let at = self.position(packet_id)?;
        self.inflight.remove(at)
    }
}
