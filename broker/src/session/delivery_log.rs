//! A persistent session's outbound messages for a checkpoint (as journal records), and
//! put back into the window and the queue at recovery. The same records carry a session's
//! outbound messages to another node of a cluster when it takes the client over
//! ([`Delivery::handover_records`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tern_codec::{PacketId, QoS};
use tokio::time::Instant;

use super::{flow_mut, Delivery, Queued};
use crate::journal::record::Record;
use crate::journal::{self, Journal};
use crate::message::Message;
use crate::session::inflight::{Inflight, Stage};
use crate::session::logged;
use crate::session::SharedKey;

/// Most identities a session notes between a prepare and its handover ([`Seen`]): one
/// MiB; a handover comes milliseconds after its prepare.
const SEEN_MAX: usize = 1 << 16;
/// A session stops noting this long after a prepare that no handover followed (the other
/// node gave up): far past any `handover_timeout_ms` and interest wait.
const SEEN_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The cluster identities of the QoS 1/2 messages handed to a session since another node
/// prepared to take it over: that node drops its own copies of them when it merges, also
/// of those delivered and acknowledged here meanwhile.
#[derive(Debug)]
pub(super) struct Seen {
    ids: Vec<(u64, u64)>,
    /// When the prepare came.
    since: Instant,
}

/// Where a recovered outbound message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoredStage {
    /// In the queue.
    Queued,
    /// Sent with this packet id (resent with DUP on resume).
    Sent(PacketId),
    /// PUBREC received for this packet id (PUBREL resent on resume).
    Released(PacketId),
}

/// A recovered outbound message.
#[derive(Debug)]
pub struct Restored {
    /// The message.
    pub message: Arc<Message>,
    /// Delivery QoS (1 or 2).
    pub qos: QoS,
    /// RETAIN as delivered.
    pub retain: bool,
    /// Subscription identifiers.
    pub subscription_ids: Vec<u32>,
    /// The shared group it came through.
    pub group: Option<SharedKey>,
    /// Its number in the session.
    pub seq: u64,
    /// Where it stands.
    pub stage: RestoredStage,
}

impl Restored {
    /// Logs this message handed to persistent session `session` with `packet_id` (0:
    /// queued): its Out record, with its body unless the journal holds it since the last
    /// checkpoint.
    pub fn log_out(&self, journal: &Journal, session: u64, packet_id: u16, now: Instant) -> u64 {
        let of = logged::OutOf {
            qos: self.qos,
            retain: self.retain,
            subscription_ids: &self.subscription_ids,
            group: self.group.as_deref(),
        };
        logged::out_of(
            journal,
            session,
            (self.seq, &self.message),
            of,
            (packet_id, false),
            now,
        )
    }
}

/// The body id of `message`, pushing its body record first if this checkpoint has not yet.
fn body_record(
    journal: &Journal,
    message: &Message,
    now: Instant,
    bodies: &mut HashSet<u64>,
    out: &mut Vec<Record>,
) -> u64 {
    let id = journal.checkpoint_body_id(message);
    if bodies.insert(id) {
        out.push(Record::Body {
            id,
            message: journal::stored(message, now),
        });
    }
    id
}

impl Delivery {
    /// Holds what a connection being attached to this persistent session will be sent
    /// until the journal is durable as far as it was appended now: a message resent or
    /// sent from the queue may have been logged, or handed over, just before, and must not
    /// reach the client before its record is durable (a QoS 2 message would otherwise come
    /// twice after a crash: now, and when its publisher resends it).
    /// Records held back on other threads (a publisher's input buffer) that the previous
    /// connection's output waited for are waited for too.
    pub(super) fn hold_for_journal(&mut self, link: &super::Link, journal: Option<&Journal>) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        if let Some(previous) = log.predecessor.take() {
            previous.hand_pending_holds_to(&link.writer);
        }
        if let Some(journal) = journal {
            link.writer.lock().hold_until(journal.appended());
        }
    }

    /// The connection of `link` goes away (given back): if its output waits for records
    /// held back on other threads, the session's next connection will wait for them too.
    pub(super) fn note_predecessor(&mut self, link: Option<super::Link>) -> Option<super::Link> {
        if let (Some(log), Some(link)) = (self.log.as_mut(), &link) {
            if link.writer.has_pending_holds() {
                log.predecessor = Some(link.writer.clone());
            }
        }
        link
    }

    /// Appends the records that rebuild this session's outbound state to `out` (a
    /// checkpoint): the last number used, then each message in the window and the queue.
    /// Nothing when the session is not persistent.
    /// Each message's body goes before its first record, once per checkpoint (`bodies`
    /// holds the ids written so far, over all sessions).
    pub fn log_records(
        &self,
        journal: &Journal,
        now: Instant,
        bodies: &mut HashSet<u64>,
        out: &mut Vec<Record>,
    ) {
        let Some(log) = &self.log else {
            return;
        };
        let session = log.session;
        if log.last_seq() > 0 {
            out.push(Record::Done {
                session,
                seq: log.last_seq(),
            });
        }
        for e in self.flow().window.iter().filter(|e| e.seq != 0) {
            let body = body_record(journal, &e.message, now, bodies, out);
            out.push(logged::out_record(
                session,
                e.seq,
                e.packet_id.get(),
                body,
                e.into(),
            ));
            if e.stage == Stage::Released {
                out.push(Record::Released {
                    session,
                    seq: e.seq,
                });
            }
        }
        for q in self.flow().queue.iter().filter(|q| q.seq != 0) {
            let body = body_record(journal, &q.message, now, bodies, out);
            out.push(logged::out_record(session, q.seq, 0, body, q.into()));
        }
    }

    /// Appends records that rebuild this session's outbound state elsewhere (a cluster
    /// takeover), persistent or not: each message in the window and the queue, in order,
    /// numbered from 1, its body (ids from 1) before its first record. The cluster
    /// identity of each message that has one goes to `identities`, by its number there.
    pub fn handover_records(
        &self,
        session: u64,
        now: Instant,
        out: &mut Vec<Record>,
        identities: &mut Vec<(u64, (u64, u64))>,
    ) {
        let mut bodies: HashMap<*const Message, u64> = HashMap::new();
        let mut body_of = |message: &Arc<Message>, out: &mut Vec<Record>| {
            let next = bodies.len() as u64 + 1;
            let id = *bodies.entry(Arc::as_ptr(message)).or_insert(next);
            if id == next {
                out.push(Record::Body {
                    id,
                    message: journal::stored(message, now),
                });
            }
            id
        };
        let mut seq = 0;
        for e in self.flow().window.iter() {
            seq += 1;
            identities.extend(e.message.identity().map(|id| (seq, id)));
            let body = body_of(&e.message, out);
            out.push(logged::out_record(
                session,
                seq,
                e.packet_id.get(),
                body,
                e.into(),
            ));
            if e.stage == Stage::Released {
                out.push(Record::Released { session, seq });
            }
        }
        for q in self.flow().queue.iter() {
            seq += 1;
            identities.extend(q.message.identity().map(|id| (seq, id)));
            let body = body_of(&q.message, out);
            out.push(logged::out_record(session, seq, 0, body, q.into()));
        }
    }

    /// Starts noting the identities of the messages handed to the session (another node
    /// prepares to take it over), forgetting any noted before.
    pub fn start_noting_seen(&mut self, now: Instant) {
        flow_mut(&mut self.flow).seen = Some(Box::new(Seen {
            ids: Vec::new(),
            since: now,
        }));
    }

    /// Notes `message`'s identity if the session is noting (until [`SEEN_MAX`] of them, for
    /// at most [`SEEN_MAX_AGE`]).
    pub(super) fn note_seen(&mut self, message: &Message, now: Instant) {
        let Some(flow) = self.flow.as_deref_mut() else {
            return;
        };
        let Some(seen) = flow.seen.as_deref_mut() else {
            return;
        };
        if now.saturating_duration_since(seen.since) > SEEN_MAX_AGE {
            flow.seen = None;
            return;
        }
        if let Some(id) = message.identity().filter(|_| seen.ids.len() < SEEN_MAX) {
            seen.ids.push(id);
        }
    }

    /// The identities noted since [`Delivery::start_noting_seen`] (empty if it was not
    /// called), and stops noting.
    pub fn take_seen(&mut self) -> Vec<(u64, u64)> {
        let seen = self.flow.as_deref_mut().and_then(|f| f.seen.take());
        seen.map(|seen| seen.ids).unwrap_or_default()
    }

    /// Takes the queued messages out, in order, giving their bytes back (an offline
    /// session whose queue is merged with a handed-over session's: they are put back with
    /// [`Delivery::restore_outbound`]). The window stays as it is.
    pub fn take_queued(&mut self) -> Vec<Restored> {
        let Some(flow) = self.flow.as_deref_mut() else {
            return Vec::new();
        };
        let taken: Vec<Restored> = flow
            .queue
            .drain(..)
            .map(|q| Restored {
                message: q.message,
                qos: q.qos,
                retain: q.retain,
                subscription_ids: q.subscription_ids,
                group: q.group,
                seq: q.seq,
                stage: RestoredStage::Queued,
            })
            .collect();
        let freed = std::mem::take(&mut flow.queued_bytes);
        self.give_back(freed);
        taken
    }

    /// Puts recovered outbound messages back, in order (recovery: nothing is logged). Sent
    /// ones go into the window with their packet ids, the rest into the queue; both go out
    /// when a connection resumes the session.
    pub fn restore_outbound(&mut self, entries: Vec<Restored>) {
        for r in entries {
            let stage = match r.stage {
                RestoredStage::Queued => {
                    self.hold_restored(super::held_size(&r.message), false);
                    flow_mut(&mut self.flow).queue.push_back(Queued {
                        message: r.message,
                        qos: r.qos,
                        retain: r.retain,
                        subscription_ids: r.subscription_ids,
                        group: r.group,
                        seq: r.seq,
                    });
                    continue;
                }
                RestoredStage::Sent(id) => (id, Stage::Published),
                RestoredStage::Released(id) => (id, Stage::Released),
            };
            self.hold_restored(super::held_size(&r.message), true);
            flow_mut(&mut self.flow).window.restore(Inflight {
                packet_id: stage.0,
                message: r.message,
                qos: r.qos,
                retain: r.retain,
                subscription_ids: r.subscription_ids,
                stage: stage.1,
                group: r.group,
                seq: r.seq,
            });
        }
    }
}
