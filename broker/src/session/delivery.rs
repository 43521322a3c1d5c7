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

use tern_codec::{ByteStr, PacketId, ProtocolVersion, PubRel, PublishQoS, QoS, ReasonCode};

use super::logged::{self, SessionLog};
use super::write::{out_qos, write_publish, write_pubrel, Written};
use crate::delivery::shared_writer::SharedWriter;
use crate::journal::record::StoredMessage;
use crate::journal::Journal;
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
    pub(super) map: Option<Box<HashMap<ByteStr, u16>>>,
    max: u16,
}

impl OutboundAliases {
    /// A table allowing aliases 1..=max (0: none).
    pub fn new(max: u16) -> OutboundAliases {
        OutboundAliases { map: None, max }
    }

    /// The alias to use for `topic` and whether the client already knows it.
    pub(super) fn choose(&self, topic: &str) -> Option<(u16, bool)> {
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
    /// The peer's address (the admin API shows it).
    pub peer: std::net::SocketAddr,
    /// The keep alive in force, in seconds (the admin API shows it).
    pub keep_alive_secs: u16,
    /// When the connection attached, in ms since the Unix epoch (the admin API shows it).
    pub connected_at_unix_ms: u64,
}

/// A QoS 1/2 message waiting for the window (or for the client to come back).
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) message: Arc<Message>,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) subscription_ids: Vec<u32>,
    /// The shared group it came through, so it can go to another member if this session
    /// leaves before it is sent.
    pub(super) group: Option<SharedKey>,
    /// Its number in the session's journal (0: not logged).
    pub(super) seq: u64,
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
    /// The journal, when persistence is on ([`crate::journal`]).
    pub journal: Option<&'a Journal>,
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
    /// The session's place in the journal, when it is persistent (boxed: most are not).
    log: Option<Box<SessionLog>>,
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
            log: None,
        }
    }

    /// Makes the session persistent as `session` in the journal, numbering its outbound
    /// messages after `last_seq`; `None` stops logging it (it ended, or its expiry is 0).
    pub fn set_log(&mut self, log: Option<(u64, u64)>) {
        self.log = log.map(|(session, last_seq)| Box::new(SessionLog::new(session, last_seq)));
    }

    /// When the persistent session's connection went away (ms since the epoch).
    pub fn offline_since_unix_ms(&self) -> Option<u64> {
        self.log.as_ref()?.offline_since_unix_ms
    }

    /// Records when the persistent session's connection went away (`None`: attached).
    pub fn set_offline_since_unix_ms(&mut self, at: Option<u64>) {
        if let Some(log) = &mut self.log {
            log.offline_since_unix_ms = at;
        }
    }

    /// The persistent session's pending will as last logged.
    pub fn logged_will(&self) -> Option<&(StoredMessage, u32)> {
        self.log.as_ref()?.will.as_ref()
    }

    /// Records the persistent session's pending will as logged.
    pub fn set_logged_will(&mut self, will: Option<(StoredMessage, u32)>) {
        if let Some(log) = &mut self.log {
            log.will = will;
        }
    }

    /// The session's id in the journal, when it is persistent.
    pub fn log_id(&self) -> Option<u64> {
        self.log.as_ref().map(|log| log.session)
    }

    /// The user name of the attached connection: `None` when offline, `Some(None)` for an
    /// anonymous client.
    pub fn link_username(&self) -> Option<Option<ByteStr>> {
        self.link.as_ref().map(|link| link.username.clone())
    }

    /// The attached connection, if one is.
    pub fn link(&self) -> Option<&Link> {
        self.link.as_ref()
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
                    0,
                    ctx,
                );
            }
            return;
        }
        let seq = match (&mut self.log, ctx.journal) {
            (Some(log), Some(_)) => log.next_seq(),
            _ => 0,
        };
        if self.link.is_some()
            && self.queue.is_empty()
            && self.window.len() < usize::from(self.window_max)
        {
            let queued = Queued {
                message: message.clone(),
                qos,
                retain,
                subscription_ids: subscription_ids.to_vec(),
                group: group.cloned(),
                seq,
            };
            self.send_inflight(queued, true, ctx);
        } else {
            self.enqueue(message, qos, retain, subscription_ids, group, seq, ctx);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: &[u32],
        group: Option<&SharedKey>,
        seq: u64,
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
        let queued = Queued {
            message: message.clone(),
            qos,
            retain,
            subscription_ids: subscription_ids.to_vec(),
            group: group.cloned(),
            seq,
        };
        if let (Some(log), Some(journal)) = (&self.log, ctx.journal) {
            logged::out(journal, log.session, &queued, 0, ctx.now);
        }
        self.queue.push_back(queued);
    }

    /// Sends a message into the window with a new packet id: `fresh` from a publisher, or
    /// from the queue. For a persistent session the journal learns the packet id first; a
    /// QoS 2 PUBLISH then waits in the writer until that is durable, so that after a crash
    /// it is resent with the same id and the client can tell it is a duplicate.
    fn send_inflight(&mut self, q: Queued, fresh: bool, ctx: DeliverCtx<'_>) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let packet_id = self.window.allocate_id();
        let out = out_qos(q.qos, packet_id);
        let log = self.log.as_ref().zip(ctx.journal).filter(|_| q.seq != 0);
        let position = log.map_or(0, |(log, journal)| {
            if fresh {
                logged::out(journal, log.session, &q, packet_id.get(), ctx.now)
            } else {
                logged::sent(journal, log.session, q.seq, packet_id.get())
            }
        });
        let hold = if q.qos == QoS::ExactlyOnce {
            position
        } else {
            0
        };
        let ids = &q.subscription_ids;
        match write_publish(link, &q.message, out, q.retain, false, ids, hold, ctx) {
            // Too large or expired: discarded as if delivered ([MQTT-3.1.2-25]).
            Written::Dropped => {
                if let Some((log, journal)) = log {
                    logged::done(journal, log.session, q.seq);
                }
            }
            Written::Yes | Written::Closed => self.window.push(Inflight {
                packet_id,
                message: q.message,
                qos: q.qos,
                retain: q.retain,
                subscription_ids: q.subscription_ids,
                stage: Stage::Published,
                group: q.group,
                seq: q.seq,
            }),
        }
    }

    /// Logs that outbound message `seq` is finished, if the session is persistent.
    fn log_done(&self, seq: u64, journal: Option<&Journal>) {
        if let (Some(log), Some(journal), true) = (&self.log, journal, seq != 0) {
            logged::done(journal, log.session, seq);
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
                self.log_done(next.seq, ctx.journal);
                continue;
            }
            self.send_inflight(next, false, ctx);
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
                        0,
                        ctx,
                    ) == Written::Dropped
                    {
                        expired.push(entry.packet_id);
                    }
                }
                Stage::Released => write_pubrel(link, PubRel::new(entry.packet_id), 0),
            }
        }
        for packet_id in expired {
            if let Some(entry) = self.window.remove(packet_id) {
                self.log_done(entry.seq, ctx.journal);
            }
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
            if let Some(entry) = self.window.remove(packet_id) {
                self.log_done(entry.seq, ctx.journal);
            }
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
                let seq = entry.seq;
                if reason.is_error() {
                    self.window.remove(packet_id);
                    self.log_done(seq, ctx.journal);
                    self.pump(ctx);
                } else {
                    entry.stage = Stage::Released;
                    // PUBREL leaves once the journal knows the client has the message:
                    // after a crash, PUBREL is resent rather than the PUBLISH.
                    let log = self.log.as_ref().zip(ctx.journal).filter(|_| seq != 0);
                    let hold = log.map_or(0, |(log, journal)| {
                        logged::released(journal, log.session, seq)
                    });
                    write_pubrel(link, PubRel::new(packet_id), hold);
                }
            }
            _ => {
                let mut pubrel = PubRel::new(packet_id);
                pubrel.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                write_pubrel(link, pubrel, 0);
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
            if let Some(entry) = self.window.remove(packet_id) {
                self.log_done(entry.seq, ctx.journal);
            }
            self.pump(ctx);
        }
    }

    /// Takes out the messages that came through a shared group, for another member: the
    /// queued ones, and with `include_sent` also those sent but not yet acknowledged
    /// (PUBLISH stage only: a QoS 2 message past PUBREC has been received).
    pub fn take_shared(&mut self, include_sent: bool, journal: Option<&Journal>) -> Vec<Redirect> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for queued in self.queue.drain(..) {
            match queued.group {
                Some(group) => {
                    self.queued_bytes -=
                        queued.message.publish().payload().len() + queued.message.topic().len();
                    if let (Some(log), Some(journal), true) = (&self.log, journal, queued.seq != 0)
                    {
                        logged::done(journal, log.session, queued.seq);
                    }
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
                    seq,
                    ..
                }) = self.window.remove(id)
                {
                    self.log_done(seq, journal);
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

#[path = "delivery_log.rs"]
mod log;
pub use self::log::{Restored, RestoredStage};

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
