//! The delivery state of one session: what a publisher in another task needs to hand it a
//! message, behind one short lock. It holds the link to the connection currently attached
//! (its SharedWriter, protocol version, maximum packet size, outbound topic aliases), the
//! QoS 1/2 inflight window and the bounded queue behind it.
//!
//! Nothing here awaits or does I/O: writing means appending to the SharedWriter.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use tern_codec::template::encode_publish;
use tern_codec::{
    ByteStr, Family, Outbound, PacketId, ProtocolVersion, PubRel, PublishQoS, QoS, ReasonCode,
};

use crate::delivery::shared_writer::{Appended, SharedWriter};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::inflight::{Inflight, Stage, Window};
use crate::session::SharedKey;

/// Outbound topic aliases of one connection (5.0): topic -> alias, within the client's
/// Topic Alias Maximum. Aliases are handed out first come and never reassigned.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    /// Boxed at the first alias: most clients allow none, and an empty map is 48 bytes.
    #[allow(clippy::box_collection)]
    map: Option<Box<HashMap<ByteStr, u16>>>,
    max: u16,
}

impl OutboundAliases {
    /// A table allowing aliases 1..=max (0: none).
    pub fn new(max: u16) -> OutboundAliases {
        OutboundAliases { map: None, max }
    }

    /// The alias to use for `topic` and whether the client already knows it.
    fn choose(&self, topic: &str) -> Option<(u16, bool)> {
        if self.max == 0 {
            return None;
        }
        let map = self.map.as_deref();
        if let Some(&alias) = map.and_then(|map| map.get(topic)) {
            return Some((alias, true));
        }
        // Aliases are 1..=in use + 1; once all `max` are taken (up to 65535, so the next
        // would not fit in a u16), new topics go without one ([MQTT-3.3.2-8]: never 0).
        let next = u16::try_from(map.map_or(0, HashMap::len) + 1).ok()?;
        (next <= self.max).then_some((next, false))
    }
}

/// The connection a session is attached to.
#[derive(Debug)]
pub struct Link {
    /// Output buffer of the connection.
    pub writer: Arc<SharedWriter>,
    /// Protocol version of the connection.
    pub version: ProtocolVersion,
    /// The client's Maximum Packet Size (u32::MAX when it gave none).
    pub max_packet_size_bytes: u32,
    /// Outbound topic aliases.
    pub aliases: OutboundAliases,
    /// The connection's generation; a connection only detaches itself.
    pub generation: u64,
    /// The user name the connection authenticated as (ACL reload re-derives from it).
    pub username: Option<ByteStr>,
}

/// A QoS 1/2 message waiting for the window (or for the client to come back).
#[derive(Debug)]
struct Queued {
    message: Arc<Message>,
    qos: QoS,
    retain: bool,
    subscription_ids: Vec<u32>,
    /// The shared group it came through, so it can go to another member if this session
    /// leaves before it is sent.
    group: Option<SharedKey>,
}

/// A message a leaving shared-group member held, to hand to another member.
#[derive(Debug)]
pub struct Redirect {
    /// The message.
    pub message: Arc<Message>,
    /// The group it came through.
    pub group: SharedKey,
}

/// Limits and context for one delivery call.
#[derive(Debug, Clone, Copy)]
pub struct DeliverCtx<'a> {
    /// Broker counters.
    pub metrics: &'a Metrics,
    /// Current time.
    pub now: Instant,
    /// How long a writer may stay over its cap before the client is disconnected.
    pub slow_consumer_timeout: Duration,
    /// A queue this long behind the window holds publishers back.
    pub backpressure_queued_messages: usize,
}

/// What happened to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Yes,
    /// Dropped for this subscriber: too large, expired, or over the cap (QoS 0).
    Dropped,
    /// The connection is closing.
    Closed,
}

/// The delivery state of one session.
#[derive(Debug)]
pub struct Delivery {
    link: Option<Link>,
    window: Window,
    /// Outbound window: min(client Receive Maximum, `max_inflight_messages`).
    window_max: u16,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    max_queued_messages: u32,
    max_queued_bytes: usize,
}

impl Delivery {
    /// Empty state with the queue bounds.
    pub fn new(max_queued_messages: usize, max_queued_bytes: usize) -> Delivery {
        Delivery {
            link: None,
            window: Window::default(),
            window_max: 1,
            queue: VecDeque::new(),
            queued_bytes: 0,
            max_queued_messages: u32::try_from(max_queued_messages).unwrap_or(u32::MAX),
            max_queued_bytes,
        }
    }

    /// The user name of the attached connection: `None` when offline, `Some(None)` for an
    /// anonymous client.
    pub fn link_username(&self) -> Option<Option<ByteStr>> {
        self.link.as_ref().map(|link| link.username.clone())
    }

    /// The attached connection's output (to kick it), if one is attached.
    pub fn link_writer(&self) -> Option<&Arc<SharedWriter>> {
        self.link.as_ref().map(|link| &link.writer)
    }

    /// Whether a connection is attached.
    pub fn is_online(&self) -> bool {
        self.link.is_some()
    }

    /// The writer publishers should wait for, if this session is falling behind: its buffer
    /// over the soft cap, or its queue at the back-pressure bound (and not marked slow).
    pub fn pressure(&self, ctx: DeliverCtx<'_>) -> Option<&Arc<SharedWriter>> {
        let link = self.link.as_ref()?;
        let queue_long = self.queue.len() >= ctx.backpressure_queued_messages;
        (link.writer.is_pressing() || (queue_long && !link.writer.is_slow()))
            .then_some(&link.writer)
    }

    /// Whether this session's consumer is marked slow (behind, but not waited for).
    pub fn is_slow(&self) -> bool {
        self.link.as_ref().is_some_and(|link| link.writer.is_slow())
    }

    /// Number of queued messages.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Number of unacknowledged outbound messages.
    pub fn inflight(&self) -> usize {
        self.window.len()
    }

    /// Hands a message to this session at `qos` (already min(publish, granted)).
    pub fn deliver(
        &mut self,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        ctx: DeliverCtx<'_>,
    ) {
        self.deliver_via(message, qos, retain, subscription_ids, None, ctx);
    }

    /// [`Delivery::deliver`] for a message that came through shared group `group`.
    pub fn deliver_via(
        &mut self,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        group: Option<&SharedKey>,
        ctx: DeliverCtx<'_>,
    ) {
        if qos == QoS::AtMostOnce {
            // QoS 0 is not queued for offline sessions (as Mosquitto by default).
            if let Some(link) = self.link.as_mut() {
                write_publish(
                    link,
                    message,
                    PublishQoS::AtMostOnce,
                    retain,
                    false,
                    subscription_ids,
                    ctx,
                );
            }
            return;
        }
        if self.link.is_some()
            && self.queue.is_empty()
            && self.window.len() < usize::from(self.window_max)
        {
            let group = group.cloned();
            self.send_inflight(
                message.clone(),
                qos,
                retain,
                subscription_ids.to_vec(),
                group,
                ctx,
            );
        } else {
            self.enqueue(message, qos, retain, subscription_ids, group, ctx);
        }
    }

    fn enqueue(
        &mut self,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        group: Option<&SharedKey>,
        ctx: DeliverCtx<'_>,
    ) {
        let size = message.publish().payload().len() + message.topic().len();
        if self.queue.len() >= self.max_queued_messages as usize
            || self.queued_bytes + size > self.max_queued_bytes
        {
            Metrics::add(&ctx.metrics.dropped_queue_full, 1);
            tracing::debug!(
                topic = message.topic(),
                "session queue full: message dropped"
            );
            return;
        }
        self.queued_bytes += size;
        self.queue.push_back(Queued {
            message: message.clone(),
            qos,
            retain,
            subscription_ids: subscription_ids.to_vec(),
            group: group.cloned(),
        });
    }

    fn send_inflight(
        &mut self,
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        group: Option<SharedKey>,
        ctx: DeliverCtx<'_>,
    ) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let packet_id = self.window.allocate_id();
        let out = out_qos(qos, packet_id);
        match write_publish(link, &message, out, retain, false, &subscription_ids, ctx) {
            // Too large or expired: discarded as if delivered ([MQTT-3.1.2-25]).
            Written::Dropped => {}
            Written::Yes | Written::Closed => self.window.push(Inflight {
                packet_id,
                message,
                qos,
                retain,
                subscription_ids,
                stage: Stage::Published,
                group,
            }),
        }
    }

    /// Moves queued messages into the window while there is room.
    pub fn pump(&mut self, ctx: DeliverCtx<'_>) {
        while self.link.is_some() && self.window.len() < usize::from(self.window_max) {
            let Some(next) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -=
                next.message.publish().payload().len() + next.message.topic().len();
            if next.message.is_expired(ctx.now) {
                Metrics::add(&ctx.metrics.dropped_expired, 1);
                continue;
            }
            self.send_inflight(
                next.message,
                next.qos,
                next.retain,
                next.subscription_ids,
                next.group,
                ctx,
            );
        }
    }

    /// Attaches a connection. With `resume`, resends what is unacknowledged: PUBLISH with
    /// DUP=1 ([MQTT-4.4.0-1]) or PUBREL; then fills the window from the queue.
    pub fn attach(&mut self, link: Link, window_max: usize, ctx: DeliverCtx<'_>) {
        self.window_max = u16::try_from(window_max.max(1)).unwrap_or(u16::MAX);
        let link = self.link.insert(link);
        let mut expired = Vec::new();
        for entry in self.window.iter() {
            match entry.stage {
                Stage::Published => {
                    let out = out_qos(entry.qos, entry.packet_id);
                    if write_publish(
                        link,
                        &entry.message,
                        out,
                        entry.retain,
                        true,
                        &entry.subscription_ids,
                        ctx,
                    ) == Written::Dropped
                    {
                        expired.push(entry.packet_id);
                    }
                }
                Stage::Released => write_pubrel(link, PubRel::new(entry.packet_id)),
            }
        }
        for packet_id in expired {
            self.window.remove(packet_id);
        }
        self.pump(ctx);
    }

    /// Detaches the connection of `generation`, if it is still the one attached.
    pub fn detach(&mut self, generation: u64) -> bool {
        if self
            .link
            .as_ref()
            .is_some_and(|l| l.generation == generation)
        {
            self.link = None;
            true
        } else {
            false
        }
    }

    /// Takes the current link away (a new connection takes the session over).
    pub fn take_link(&mut self) -> Option<Link> {
        self.link.take()
    }

    /// PUBACK from the client. Unknown ids are ignored.
    pub fn handle_puback(&mut self, packet_id: PacketId, ctx: DeliverCtx<'_>) {
        if self
            .window
            .get_mut(packet_id)
            .is_some_and(|e| e.qos == QoS::AtLeastOnce)
        {
            self.window.remove(packet_id);
            self.pump(ctx);
        }
    }

    /// PUBREC from the client: answer PUBREL (0x92 for an unknown id in 5.0). A PUBREC with
    /// an error code ends the exchange (5.0 section 4.3.3: the message is not delivered).
    pub fn handle_pubrec(&mut self, packet_id: PacketId, reason: ReasonCode, ctx: DeliverCtx<'_>) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        match self.window.get_mut(packet_id) {
            Some(entry) if entry.qos == QoS::ExactlyOnce => {
                if reason.is_error() {
                    self.window.remove(packet_id);
                    self.pump(ctx);
                } else {
                    entry.stage = Stage::Released;
                    write_pubrel(link, PubRel::new(packet_id));
                }
            }
            _ => {
                let mut pubrel = PubRel::new(packet_id);
                pubrel.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                write_pubrel(link, pubrel);
            }
        }
    }

    /// PUBCOMP from the client.
    pub fn handle_pubcomp(&mut self, packet_id: PacketId, ctx: DeliverCtx<'_>) {
        if self
            .window
            .get_mut(packet_id)
            .is_some_and(|e| e.stage == Stage::Released)
        {
            self.window.remove(packet_id);
            self.pump(ctx);
        }
    }

    /// Takes out the messages that came through a shared group, for another member: the
    /// queued ones, and with `include_sent` also those sent but not yet acknowledged
    /// (PUBLISH stage only: a QoS 2 message past PUBREC has been received).
    pub fn take_shared(&mut self, include_sent: bool) -> Vec<Redirect> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for queued in self.queue.drain(..) {
            match queued.group {
                Some(group) => {
                    self.queued_bytes -=
                        queued.message.publish().payload().len() + queued.message.topic().len();
                    taken.push(Redirect {
                        message: queued.message,
                        group,
                    });
                }
                None => kept.push_back(queued),
            }
        }
        self.queue = kept;
        if include_sent {
            let ids: Vec<_> = self
                .window
                .iter()
                .filter(|e| e.group.is_some() && e.stage == Stage::Published)
                .map(|e| e.packet_id)
                .collect();
            for id in ids {
                if let Some(Inflight {
                    message,
                    group: Some(group),
                    ..
                }) = self.window.remove(id)
                {
                    taken.push(Redirect { message, group });
                }
            }
        }
        taken
    }

    /// Drops everything held (session end); returns how many messages were discarded.
    pub fn clear(&mut self) -> usize {
        let n = self.window.drain().count() + self.queue.len();
        self.queue.clear();
        self.queued_bytes = 0;
        n
    }
}

fn out_qos(qos: QoS, packet_id: PacketId) -> PublishQoS {
    if qos == QoS::ExactlyOnce {
        PublishQoS::ExactlyOnce(packet_id)
    } else {
        PublishQoS::AtLeastOnce(packet_id)
    }
}

fn write_pubrel(link: &Link, pubrel: PubRel) {
    let version = link.version;
    let mut guard = link.writer.lock();
    if !guard.is_closed() {
        pubrel.encode(version, guard.buf());
    }
}

/// Encodes one PUBLISH into the link's writer: the shared template patched in place, or a
/// one-shot encoding when this subscriber needs its own properties. Applies the client's
/// Maximum Packet Size, Message Expiry and (for QoS 0) the writer's byte cap.
fn write_publish(
    link: &mut Link,
    message: &Message,
    out: PublishQoS,
    retain: bool,
    dup: bool,
    subscription_ids: &[u32],
    ctx: DeliverCtx<'_>,
) -> Written {
    let publish = message.publish();
    let remaining_expiry = match message.remaining_expiry_secs(ctx.now) {
        Some(Err(())) => {
            Metrics::add(&ctx.metrics.dropped_expired, 1);
            return Written::Dropped;
        }
        Some(Ok(secs)) => Some(secs),
        None => None,
    };
    let v5 = link.version.is_v5();
    let reduced_expiry = remaining_expiry
        .filter(|&r| Some(r) != publish.properties().message_expiry_interval_secs());
    let alias = if v5 {
        link.aliases.choose(publish.topic())
    } else {
        None
    };
    let one_shot =
        v5 && (!subscription_ids.is_empty() || alias.is_some() || reduced_expiry.is_some());
    let capped = out == PublishQoS::AtMostOnce;
    let max_len = link.max_packet_size_bytes as usize;

    // The size and cap checks are the SharedWriter's (`WriteGuard::append_packet`).
    let mut guard = link.writer.lock();
    let appended = if one_shot {
        let outbound = Outbound {
            subscription_identifiers: subscription_ids,
            topic_alias: alias.map(|(a, _)| a),
            omit_topic: alias.is_some_and(|(_, known)| known),
            message_expiry_interval_secs: reduced_expiry,
        };
        guard.append_packet(None, max_len, capped, ctx.now, |buf| {
            encode_publish(buf, publish, link.version, out, retain, dup, &outbound);
        })
    } else {
        let template = message
            .templates
            .get(Family::of(link.version), out.packet_id().is_some());
        guard.append_packet(Some(template.len()), max_len, capped, ctx.now, |buf| {
            // The layout matches `out` by construction (same `packet_id().is_some()`).
            let _ = template.write_to(buf, out, retain, dup);
        })
    };
    drop(guard);
    let written = account(link, message, appended, max_len, ctx);
    if written != Written::Yes {
        return written;
    }
    if let Some((alias, false)) = alias {
        link.aliases
            .map
            .get_or_insert_default()
            .insert(publish.shared_topic(), alias);
    }
    Written::Yes
}

/// Counts what became of one append: sent, too large for the client, or over the writer's
/// cap (a slow consumer, kicked once it has been stuck past `slow_consumer_timeout`).
fn account(
    link: &Link,
    message: &Message,
    appended: Appended,
    max_len: usize,
    ctx: DeliverCtx<'_>,
) -> Written {
    match appended {
        Appended::Yes => {
            Metrics::add(&ctx.metrics.messages_sent, 1);
            Written::Yes
        }
        Appended::Closed => Written::Closed,
        Appended::TooLarge(len) => {
            Metrics::add(&ctx.metrics.dropped_too_large_for_client, 1);
            tracing::debug!(
                topic = message.topic(),
                len,
                max_len,
                "message too large for client: dropped"
            );
            Written::Dropped
        }
        Appended::OverCap(stuck_since) => {
            Metrics::add(&ctx.metrics.dropped_qos0_slow_consumer, 1);
            if ctx.now.duration_since(stuck_since) >= ctx.slow_consumer_timeout {
                link.writer.control().kick(crate::error::Kick::SlowConsumer);
            }
            Written::Dropped
        }
    }
}

#[cfg(test)]
#[path = "delivery_tests.rs"]
mod scenarios;

#[cfg(test)]
mod tests {
    use super::*;

    /// [MQTT-3.3.2-8] (no Topic Alias 0) and [MQTT-3.3.2-11] (none above the client's
    /// maximum) at the largest maximum a client can give: with all 65535 aliases in use a
    /// new topic goes without one, instead of alias 65535 + 1 overflowing to 0.
    #[test]
    fn outbound_alias_at_maximum_65535_mqtt_3_3_2_8() {
        let mut aliases = OutboundAliases::new(u16::MAX);
        let map = aliases.map.get_or_insert_default();
        for alias in 1..u16::MAX {
            map.insert(ByteStr::from(format!("t/{alias}")), alias);
        }
        assert_eq!(
            aliases.choose("new/1"),
            Some((u16::MAX, false)),
            "the last one"
        );
        aliases
            .map
            .get_or_insert_default()
            .insert(ByteStr::from("new/1"), u16::MAX);
        assert_eq!(aliases.choose("new/1"), Some((u16::MAX, true)));
        assert_eq!(aliases.choose("t/7"), Some((7, true)));
        assert_eq!(aliases.choose("new/2"), None, "all taken: no alias");
    }
}
