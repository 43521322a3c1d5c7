//! A subscriber of the checker: one persistent session subscribed to `crash/#`, recording
//! every message it receives in the [`Ledger`]. It acknowledges what it receives (PUBACK,
//! or PUBREC and PUBCOMP) and filters QoS 2 resends by packet id as the receiver in
//! [MQTT-4.3.3] does: a PUBLISH whose packet id still awaits its PUBREL is not a new
//! message. After a broker restart it reconnects; a session gone although its SUBACK came
//! is recorded, and it subscribes again.

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_codec::{
    ByteStr, Packet, PacketId, PubAck, PubComp, PubRec, Publish, PublishQoS, QoS, Subscribe,
    SubscriptionOptions,
};

use super::ledger::{Arrival, MessageId};
use super::wire::Wire;
use super::Ctx;

/// The filter every subscriber uses: all the non-retained publishers' topics.
pub(crate) const FILTER: &str = "crash/#";

/// How a subscriber behaves.
#[derive(Debug, Clone, Copy)]
pub enum SubscriberKind {
    /// Always connected (but for the broker's restarts).
    Steady,
    /// Online for `online`, then disconnected (session kept) for `offline`, and again:
    /// the broker queues for it, and those queues must survive a crash.
    Sleeper {
        /// How long it stays connected each time.
        online: Duration,
        /// How long it stays away each time.
        offline: Duration,
    },
    /// Subscribes only after the first restart, on a broker that recovered.
    Late,
}

/// What one subscriber does.
#[derive(Debug, Clone)]
pub(crate) struct SubscriberSpec {
    /// Its client id.
    pub(crate) client_id: String,
    /// The maximum QoS it subscribes with.
    pub(crate) max_qos: QoS,
    /// How it behaves.
    pub(crate) kind: SubscriberKind,
}

struct Subscriber {
    ctx: Arc<Ctx>,
    spec: SubscriberSpec,
    /// Its index in the ledger.
    index: usize,
    /// A SUBACK granting the subscription has arrived (on any connection).
    subscribed: bool,
    /// QoS 2 packet ids received (PUBREC sent) whose PUBREL has not come: part of the
    /// client's session state.
    awaiting_rel: HashSet<PacketId>,
    /// The packet id of the SUBSCRIBE in flight.
    subscribe_id: u16,
}

/// Runs the subscriber until the checker stops.
pub(crate) async fn run(ctx: Arc<Ctx>, spec: SubscriberSpec) {
    let index = ctx.ledger.add_subscriber(&spec.client_id, spec.max_qos);
    if let SubscriberKind::Late = spec.kind {
        while ctx.restarts() == 0 && !ctx.stopped() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let client_id = spec.client_id.clone();
    let mut subscriber = Subscriber {
        ctx: ctx.clone(),
        spec,
        index,
        subscribed: false,
        awaiting_rel: HashSet::new(),
        subscribe_id: 0,
    };
    let mut first = true;
    while let Some((mut wire, present)) = ctx.connect(&client_id, first).await {
        if !present {
            if subscriber.subscribed {
                ctx.ledger.lock().subscribers[index].sessions_lost += 1;
            }
            subscriber.awaiting_rel.clear();
        }
        let resubscribe = first || !present || !subscriber.subscribed;
        first = false;
        let online = match subscriber.session(&mut wire, resubscribe).await {
            Ok(online) => online,
            Err(_) => continue,
        };
        wire.disconnect().await;
        if !online {
            return;
        }
        if let SubscriberKind::Sleeper { offline, .. } = subscriber.spec.kind {
            let until = Instant::now() + offline;
            while Instant::now() < until && !ctx.stopped() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

impl Subscriber {
    /// One connection. Returns `Ok(true)` when it is time to go offline (a sleeper),
    /// `Ok(false)` when the checker stops, an error when the connection broke.
    async fn session(&mut self, wire: &mut Wire, resubscribe: bool) -> io::Result<bool> {
        if resubscribe {
            self.subscribe_id = self.subscribe_id % 1000 + 1;
            let subscribe = Subscribe {
                packet_id: PacketId::new(self.subscribe_id).expect("non-zero"),
                properties: Default::default(),
                filters: vec![(
                    ByteStr::from(FILTER),
                    SubscriptionOptions::with_qos(self.spec.max_qos),
                )],
            };
            wire.send(&Packet::Subscribe(Box::new(subscribe))).await?;
        }
        let online_until = match self.spec.kind {
            SubscriberKind::Sleeper { online, .. } => Some(Instant::now() + online),
            _ => None,
        };
        loop {
            if self.ctx.stopped() {
                return Ok(false);
            }
            if online_until.is_some_and(|t| Instant::now() >= t) {
                return Ok(true);
            }
            match tokio::time::timeout(Duration::from_millis(50), wire.recv()).await {
                Err(_elapsed) => {}
                Ok(packet) => self.handle(wire, packet?).await?,
            }
        }
    }

    async fn handle(&mut self, wire: &mut Wire, packet: Packet) -> io::Result<()> {
        match packet {
            Packet::Publish(publish) => self.receive(wire, &publish).await?,
            Packet::PubRel(rel) => {
                self.awaiting_rel.remove(&rel.packet_id);
                self.ctx
                    .ledger
                    .released(self.index, rel.packet_id.get(), self.ctx.restarts());
                wire.send(&Packet::PubComp(PubComp::new(rel.packet_id)))
                    .await?;
            }
            Packet::SubAck(ack) => {
                let granted = ack.reason_codes.first().is_some_and(|c| c.0 < 0x80);
                if granted && !self.subscribed {
                    self.subscribed = true;
                    self.ctx.ledger.lock().subscribers[self.index].subscribed =
                        Some(Instant::now());
                }
            }
            Packet::Disconnect(_) => {
                return Err(io::Error::other("DISCONNECT from the broker"));
            }
            _ => {}
        }
        Ok(())
    }

    async fn receive(&mut self, wire: &mut Wire, publish: &Publish) -> io::Result<()> {
        let message = MessageId::parse(publish.payload());
        let arrival = Arrival {
            packet_id: publish.packet_id().map_or(0, |id| id.get()),
            dup: publish.dup,
            run: self.ctx.restarts(),
        };
        let deliver = |ctx: &Ctx| {
            if let Some(message) = message {
                ctx.ledger.delivered(self.index, message, arrival);
            }
        };
        match publish.publish_qos() {
            PublishQoS::AtMostOnce => deliver(&self.ctx),
            PublishQoS::AtLeastOnce(id) => {
                deliver(&self.ctx);
                wire.send(&Packet::PubAck(PubAck::new(id))).await?;
            }
            PublishQoS::ExactlyOnce(id) => {
                if self.awaiting_rel.insert(id) {
                    deliver(&self.ctx);
                }
                wire.send(&Packet::PubRec(PubRec::new(id))).await?;
            }
        }
        Ok(())
    }
}
