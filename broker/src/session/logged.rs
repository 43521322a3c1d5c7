//! A persistent session's outbound messages as the journal sees them: the numbering of
//! its messages and the records of their steps (handed over, sent with a packet id, PUBREC
//! received, finished). Called by [`super::delivery::Delivery`] under its lock. The records
//! of one message land in the order its steps happened, except that its Out record, held
//! back by the publisher's thread until the end of its input buffer, may land after a step
//! another thread logged (`journal::batch`, `journal::state`).

use std::sync::Arc;

use tokio::time::Instant;

use tern_codec::QoS;

use super::delivery::Queued;
use super::inflight::Inflight;
use crate::journal::record::{OutParts, OutRecord, Record, Step, StoredMessage};
use crate::journal::Journal;
use crate::message::Message;

/// A persistent session's place in the journal.
#[derive(Debug)]
pub(crate) struct SessionLog {
    /// The session's id in the journal.
    pub session: u64,
    /// The number of the last outbound message handed to it.
    last_seq: u64,
    /// When its connection went away (ms since the epoch); `None` while connected.
    pub offline_since_unix_ms: Option<u64>,
    /// The pending will as last logged (for checkpoints): the stored message and its
    /// delay in seconds.
    pub will: Option<(StoredMessage, u32)>,
    /// The writer of the connection that went away while its output waited for records
    /// held back on other threads: the next connection's writer waits for them too.
    pub predecessor: Option<std::sync::Arc<crate::delivery::shared_writer::SharedWriter>>,
}

impl SessionLog {
    /// The log of `session`, numbering after `last_seq`.
    pub(crate) fn new(session: u64, last_seq: u64) -> SessionLog {
        SessionLog {
            session,
            last_seq,
            offline_since_unix_ms: None,
            will: None,
            predecessor: None,
        }
    }

    /// The number for the next outbound message.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// The number of the last outbound message handed over.
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

/// Logs a message handed to `session`: queued (`packet_id` 0) or sent with `packet_id`.
/// The first record about a message since the last checkpoint carries its body. With
/// `defer` (the session has a connection whose output can be held) the record may go into
/// this thread's deferred records: the caller then holds what depends on it (see
/// [`crate::journal::batch`]).
pub(super) fn out(
    journal: &Journal,
    session: u64,
    q: &Queued,
    packet_id: u16,
    defer: bool,
    now: Instant,
) -> u64 {
    out_of(
        journal,
        session,
        (q.seq, &q.message),
        q.into(),
        (packet_id, defer),
        now,
    )
}

/// Logs message `seq` handed to `session`, described by `of`: what [`out`] does for any
/// entry (a queued one, or one a session taken over from another node brings).
pub(super) fn out_of(
    journal: &Journal,
    session: u64,
    (seq, message): (u64, &Arc<Message>),
    of: OutOf<'_>,
    (packet_id, defer): (u16, bool),
    now: Instant,
) -> u64 {
    journal.append_out(message, now, defer, |dst, body, inline| {
        OutParts {
            session,
            seq,
            qos: of.qos as u8,
            retain: of.retain,
            packet_id,
            subscription_ids: of.subscription_ids,
            group: of.group,
            body,
            inline,
        }
        .encode(dst);
    })
}

/// What an Out record says of a message in a session's queue or window, borrowed from the
/// entry (no copy of it is made to write the record).
pub(super) struct OutOf<'a> {
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) subscription_ids: &'a [u32],
    pub(super) group: Option<&'a str>,
}

impl<'a> From<&'a Queued> for OutOf<'a> {
    fn from(q: &'a Queued) -> Self {
        OutOf {
            qos: q.qos,
            retain: q.retain,
            subscription_ids: &q.subscription_ids,
            group: q.group.as_deref(),
        }
    }
}

impl<'a> From<&'a Inflight> for OutOf<'a> {
    fn from(e: &'a Inflight) -> Self {
        OutOf {
            qos: e.qos,
            retain: e.retain,
            subscription_ids: &e.subscription_ids,
            group: e.group.as_deref(),
        }
    }
}

/// The record of message `seq` handed to `session` (`packet_id` 0: queued), its body
/// being `body`.
pub(super) fn out_record(
    session: u64,
    seq: u64,
    packet_id: u16,
    body: u64,
    of: OutOf<'_>,
) -> Record {
    Record::Out(Box::new(OutRecord {
        session,
        seq,
        qos: of.qos as u8,
        retain: of.retain,
        packet_id,
        subscription_ids: of.subscription_ids.to_vec(),
        group: of.group.map(str::to_owned),
        body,
    }))
}

// The steps below are held back until the end of the connection's input buffer like Out
// records (`journal::batch`); one may land before its message's Out record, which replay
// accepts (`journal::state`).

/// Logs that queued message `seq` went out with `packet_id`.
pub(super) fn sent(journal: &Journal, session: u64, seq: u64, packet_id: u16) -> u64 {
    journal.append_step(session, seq, Step::Sent(packet_id))
}

/// Logs that the client answered PUBREC for `seq`.
pub(super) fn released(journal: &Journal, session: u64, seq: u64) -> u64 {
    journal.append_step(session, seq, Step::Released)
}

/// Logs that `seq` is finished.
pub(super) fn done(journal: &Journal, session: u64, seq: u64) -> u64 {
    journal.append_step(session, seq, Step::Done)
}
