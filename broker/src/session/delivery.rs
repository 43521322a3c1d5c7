//! The delivery state of one session: what a publisher in another task needs to hand it a
//! message, behind one short lock. It holds the link to the connection currently attached
//! (its SharedWriter, protocol version, maximum packet size, outbound topic aliases), the
//! QoS 1/2 inflight window, the bounded queue behind it, and the retained replays in
//! progress (cursors over the retained store, `replay.rs`).
//!
//! Flow control (issue #17): `max_queued_bytes` bounds what the session holds, queued and
//! inflight together, and every byte of it also counts against the broker-wide
//! [`ByteBudget`] (`delivery_held.rs`). A QoS 1/2 PUBLISH enters the window only while the
//! connection's output buffer is under its cap; the rest stays queued as shared
//! references, encoded when the writer drains. A client whose window has not moved for
//! `slow_consumer_timeout` while messages wait for it is disconnected (0x97).
//!
//! Nothing here awaits or does I/O: writing means appending to the SharedWriter.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use tern_codec::{PacketId, PubRel, PublishQoS, QoS, ReasonCode};

pub use super::link::{Link, OutboundAliases};
use super::logged::{self, SessionLog};
use super::write::{out_qos, write_publish, write_pubrel, Written};
use crate::delivery::budget::ByteBudget;
use crate::delivery::pending_holds;
use crate::delivery::shared_writer::SharedWriter;
use crate::journal::batch::is_pending;
use crate::journal::record::StoredMessage;
use crate::journal::Journal;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::retained::RetainedStore;
use crate::session::inflight::{Inflight, Stage};
use crate::session::SharedKey;

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
    /// The retained store, which retained replays page through (`None`: no replays).
    pub retained: Option<&'a RetainedStore>,
    /// The broker-wide budget of bytes held for clients (`max_total_queued_bytes`).
    pub budget: &'a ByteBudget,
    /// Whether a PUBLISH encoding made for this delivery is kept in the message for the
    /// next subscriber (live fan-out); a retained replay encodes one-shot instead, so that
    /// replaying a large store leaves no encoded copy of it behind.
    pub cache_templates: bool,
}

/// The delivery state of one session.
#[derive(Debug)]
pub struct Delivery {
    link: Option<Link>,
    /// The window, the queue and the bytes they hold (`delivery_held.rs`): boxed, and
    /// absent until the first QoS 1/2 message or retained replay (`None` holds nothing).
    /// Most idle sessions never need it, and it is 120 bytes.
    flow: Option<Box<Flow>>,
    /// Outbound window: min(client Receive Maximum, `max_inflight_messages`).
    window_max: u16,
    max_queued_messages: u32,
    /// Bound on the queued and inflight bytes together.
    max_queued_bytes: usize,
    /// The broker-wide budget the held bytes are also taken from.
    budget: Arc<ByteBudget>,
    /// The session's place in the journal, when it is persistent (boxed: most are not).
    log: Option<Box<SessionLog>>,
}

impl Delivery {
    /// Empty state with the queue bounds, holding bytes out of `budget`.
    pub fn new(
        max_queued_messages: usize,
        max_queued_bytes: usize,
        budget: Arc<ByteBudget>,
    ) -> Delivery {
        Delivery {
            link: None,
            flow: None,
            window_max: 1,
            max_queued_messages: u32::try_from(max_queued_messages).unwrap_or(u32::MAX),
            max_queued_bytes,
            budget,
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
    pub fn link_username(&self) -> Option<Option<Arc<str>>> {
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

    /// Number of queued messages.
    pub fn queued(&self) -> usize {
        self.flow().queue.len()
    }

    /// Number of unacknowledged outbound messages.
    pub fn inflight(&self) -> usize {
        self.flow().window.len()
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
        if self.flow().replays.is_some() {
            // A retained message this live one must not overtake goes first.
            self.pull_forward(message.topic(), ctx);
        }
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
        self.note_seen(message, ctx.now);
        let seq = match (&mut self.log, ctx.journal) {
            (Some(log), Some(_)) => log.next_seq(),
            _ => 0,
        };
        let size = held_size(message);
        if self.flow().queue.is_empty() && self.has_window_room() && self.has_writer_room(size) {
            if !self.reserve(size, message, ctx) {
                return;
            }
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
        self.note_waiting(ctx);
        let size = held_size(message);
        if self.flow().queue.len() >= self.max_queued_messages as usize {
            Metrics::add(&ctx.metrics.dropped_queue_full, 1);
            tracing::debug!(
                topic = message.topic(),
                "session queue full: message dropped"
            );
            return;
        }
        if !self.reserve(size, message, ctx) {
            return;
        }
        let queued = Queued {
            message: message.clone(),
            qos,
            retain,
            subscription_ids: subscription_ids.to_vec(),
            group: group.cloned(),
            seq,
        };
        if let (Some(log), Some(journal)) = (&self.log, ctx.journal) {
            // Held back only while a connection's output can wait for it: a message
            // queued here may be sent from the queue on the client's own thread, before
            // this thread appends the record; its PUBLISH (and so what the client
            // answers) waits for it.
            let link = self.link.as_ref();
            let position = logged::out(journal, log.session, &queued, 0, link.is_some(), ctx.now);
            if let (true, Some(link)) = (is_pending(position), link) {
                pending_holds::hold(&link.writer, position, qos == QoS::ExactlyOnce);
            }
        }
        let flow = flow_mut(&mut self.flow);
        flow.queued_bytes += size;
        flow.queue.push_back(queued);
    }

    /// Sends a message into the window with a new packet id: `fresh` from a publisher, or
    /// from the queue. For a persistent session the journal learns the packet id first; a
    /// QoS 2 PUBLISH then waits in the writer until that is durable, so that after a crash
    /// it is resent with the same id and the client can tell it is a duplicate.
    fn send_inflight(&mut self, q: Queued, fresh: bool, ctx: DeliverCtx<'_>) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let packet_id = flow_mut(&mut self.flow).window.allocate_id();
        let out = out_qos(q.qos, packet_id);
        let log = self.log.as_ref().zip(ctx.journal).filter(|_| q.seq != 0);
        let position = log.map_or(0, |(log, journal)| {
            if fresh {
                logged::out(journal, log.session, &q, packet_id.get(), true, ctx.now)
            } else {
                logged::sent(journal, log.session, q.seq, packet_id.get())
            }
        });
        let hold = if q.qos == QoS::ExactlyOnce {
            position
        } else {
            if fresh && is_pending(position) {
                // The Out record is held back: the PUBLISH leaves once it is appended, so
                // that the client's PUBACK is logged after it.
                pending_holds::hold(&link.writer, position, false);
            }
            0
        };
        let ids = &q.subscription_ids;
        match write_publish(link, &q.message, out, q.retain, false, ids, hold, ctx) {
            // Too large or expired: discarded as if delivered ([MQTT-3.1.2-25]).
            Written::Dropped => {
                if let Some((log, journal)) = log {
                    logged::done(journal, log.session, q.seq);
                }
                self.give_back(held_size(&q.message));
            }
            Written::Yes | Written::Closed => self.window_push(Inflight {
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

    /// Moves queued messages into the window while there is room in it and in the
    /// connection's output buffer, then goes on with a retained replay, if one is in
    /// progress, once the queue is empty.
    pub fn pump(&mut self, ctx: DeliverCtx<'_>) {
        while self.has_window_room() {
            let Some(next) = self.flow().queue.front() else {
                break;
            };
            let size = held_size(&next.message);
            if !self.has_writer_room(size) {
                return;
            }
            let Some(flow) = self.flow.as_deref_mut() else {
                break;
            };
            let Some(next) = flow.queue.pop_front() else {
                break;
            };
            flow.queued_bytes -= size;
            if next.message.is_expired(ctx.now) {
                Metrics::add(&ctx.metrics.dropped_expired, 1);
                self.log_done(next.seq, ctx.journal);
                self.give_back(size);
                continue;
            }
            self.send_inflight(next, false, ctx);
        }
        if self.flow().queue.is_empty() && self.flow().replays.is_some() {
            self.pump_replays(ctx);
        }
    }

    /// Attaches a connection (its output held for the journal first: `hold_for_journal`),
    /// resends what is unacknowledged (PUBLISH with DUP=1 [MQTT-4.4.0-1], PUBREL), pumps.
    pub fn attach(&mut self, link: Link, window_max: usize, ctx: DeliverCtx<'_>) {
        self.window_max = u16::try_from(window_max.max(1)).unwrap_or(u16::MAX);
        self.unstall();
        self.hold_for_journal(&link, ctx.journal);
        let link = self.link.insert(link);
        let mut expired = Vec::new();
        for entry in flow_ref(&self.flow).window.iter() {
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
            if let Some(entry) = self.window_remove(packet_id) {
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
            self.take_link();
            self.unstall();
            self.give_back(0); // offline: no idle credit
            self.release_idle();
            true
        } else {
            false
        }
    }

    /// Takes the current link away (a new connection takes the session over).
    pub fn take_link(&mut self) -> Option<Link> {
        let link = self.link.take();
        self.note_predecessor(link)
    }

    /// PUBACK from the client. Unknown ids are ignored.
    pub fn handle_puback(&mut self, packet_id: PacketId, ctx: DeliverCtx<'_>) {
        if self
            .flow()
            .window
            .get(packet_id)
            .is_some_and(|e| e.qos == QoS::AtLeastOnce)
        {
            if let Some(entry) = self.window_remove(packet_id) {
                self.log_done(entry.seq, ctx.journal);
            }
            self.unstall();
            self.pump(ctx);
        }
    }

    /// PUBREC from the client: answer PUBREL (0x92 for an unknown id in 5.0). A PUBREC with
    /// an error code ends the exchange (5.0 section 4.3.3: the message is not delivered).
    pub fn handle_pubrec(&mut self, packet_id: PacketId, reason: ReasonCode, ctx: DeliverCtx<'_>) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        match self
            .flow
            .as_deref_mut()
            .and_then(|flow| flow.window.get_mut(packet_id))
        {
            Some(entry) if entry.qos == QoS::ExactlyOnce => {
                let seq = entry.seq;
                if reason.is_error() {
                    self.window_remove(packet_id);
                    self.unstall();
                    self.log_done(seq, ctx.journal);
                    self.pump(ctx);
                } else {
                    entry.stage = Stage::Released;
                    if let Some(flow) = self.flow.as_deref_mut() {
                        flow.stalled_since = None;
                    }
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
            .flow()
            .window
            .get(packet_id)
            .is_some_and(|e| e.stage == Stage::Released)
        {
            if let Some(entry) = self.window_remove(packet_id) {
                self.log_done(entry.seq, ctx.journal);
            }
            self.unstall();
            self.pump(ctx);
        }
    }

    /// Takes out the messages that came through a shared group, for another member: the
    /// queued ones, and with `include_sent` also those sent but not yet acknowledged
    /// (PUBLISH stage only: a QoS 2 message past PUBREC has been received).
    pub fn take_shared(&mut self, include_sent: bool, journal: Option<&Journal>) -> Vec<Redirect> {
        let mut taken = Vec::new();
        let mut freed = 0;
        if let Some(flow) = self.flow.as_deref_mut() {
            let mut kept = VecDeque::with_capacity(flow.queue.len());
            for queued in flow.queue.drain(..) {
                let Some(group) = queued.group else {
                    kept.push_back(queued);
                    continue;
                };
                let size = held_size(&queued.message);
                flow.queued_bytes -= size;
                freed += size;
                if let (Some(log), Some(journal), true) = (&self.log, journal, queued.seq != 0) {
                    logged::done(journal, log.session, queued.seq);
                }
                taken.push(Redirect {
                    message: queued.message,
                    group,
                });
            }
            flow.queue = kept;
        }
        self.give_back(freed);
        if include_sent {
            let ids: Vec<_> = self
                .flow()
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
                }) = self.window_remove(id)
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
        let n = self.flow().window.len() + self.flow().queue.len();
        self.release_all();
        self.flow = None;
        n
    }
}

/// The bytes a message counts for in `max_queued_bytes` and the broker-wide budget: its
/// payload and topic (what grows with what clients send).
pub(super) fn held_size(message: &Message) -> usize {
    message.publish().payload().len() + message.topic().len()
}

#[path = "delivery_held.rs"]
mod held;
use self::held::{flow_mut, flow_ref, Flow};
#[path = "replay.rs"]
mod replay;
pub use self::replay::ReplayRequest;

#[path = "delivery_log.rs"]
mod log;
#[path = "delivery_run.rs"]
mod run;
pub use self::log::{Restored, RestoredStage};

#[cfg(test)]
#[path = "delivery_tests.rs"]
mod scenarios;
