//! The state the journal describes, rebuilt by applying records in log order: the
//! snapshot's records first, then the log's. Plain data; the broker turns it into live
//! sessions, subscriptions and retained messages (`broker/persist.rs`).
//!
//! Each record sets or clears one key, so applying a log suffix that holds every record
//! since the snapshot began onto the snapshot converges to the state at the end of the
//! log, even where the snapshot already saw some of those records. Records of a session
//! that is not open at that point (ended before, or never seen) are ignored: session ids
//! are never reused.
//!
//! In the log, a step of an outbound message may come before the message's Out record: the
//! publisher's thread holds its Out records back until the end of its input buffer
//! (`batch.rs`) while another thread logs a `Sent` (the subscriber's thread sent it from
//! the queue) or a `Done` that needs no answer from the client (given to another member
//! of a shared group, expired in the queue). Such a step is kept aside per session and
//! applied when the Out record comes; one whose Out record never comes is dropped at the
//! end of the replay ([`State::finish`]): that record never became durable, so nothing
//! that depended on it was acknowledged or sent. A `Released` or a `Done` the client's
//! answer causes cannot come first (the client answers a PUBLISH that left after the Out
//! record was appended), but would be handled the same way.
//!
//! A checkpoint may be written between a message's hand-over and its Out record landing
//! after the cut: an Out record for a message the snapshot holds keeps the snapshot's
//! stage when that is further on (Out is a message's first step), and one for a message
//! the snapshot does not hold though it is numbered up to the last number the snapshot's
//! session had handed out is ignored (the message was finished before the snapshot was
//! read; the step that finished it may be before the cut). Bodies are resolved when the
//! state is restored, after the whole replay, so a record may come before the body it
//! refers to; the journal never appends one that could land without it (`batch.rs`).

use std::collections::{BTreeMap, HashMap};

use super::record::{OutRecord, Record, StoredMessage};

/// Stage of an outbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutStage {
    /// Waiting in the queue (no packet id yet).
    Queued,
    /// Sent with this packet id, not yet acknowledged.
    Sent(u16),
    /// PUBREC received for this packet id: PUBREL owed.
    Released(u16),
}

/// One outbound message of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutEntry {
    /// What was handed to the session.
    pub record: Box<OutRecord>,
    /// Where it stands.
    pub stage: OutStage,
}

/// One session as recovered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionState {
    /// Client identifier.
    pub client_id: String,
    /// Session Expiry Interval in seconds.
    pub expiry_secs: u32,
    /// When its connection went away (ms since the epoch); `None`: it was connected.
    pub offline_at_unix_ms: Option<u64>,
    /// The pending will and its delay.
    pub will: Option<(StoredMessage, u32)>,
    /// Subscriptions: filter -> (options byte, subscription id).
    pub subscriptions: BTreeMap<String, (u8, u32)>,
    /// Outbound messages by number, in order.
    pub outbound: BTreeMap<u64, OutEntry>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub qos2_in: std::collections::BTreeSet<u16>,
    /// The highest outbound number seen (also of finished messages).
    pub max_seq: u64,
    /// Steps of messages whose Out record has not been applied yet, by message, in log
    /// order: applied when it comes, dropped by [`State::finish`].
    early: BTreeMap<u64, Vec<Record>>,
    /// The highest number the checkpoint the replay started from had handed out
    /// ([`State::log_begins`]): a message up to it that the checkpoint does not hold
    /// was finished before it was written.
    checkpoint_seq: u64,
}

/// Everything recovered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// Sessions by id.
    pub sessions: HashMap<u64, SessionState>,
    /// Retained messages by topic.
    pub retained: BTreeMap<String, StoredMessage>,
    /// Message bodies by id, which outbound messages refer to.
    pub bodies: HashMap<u64, StoredMessage>,
    /// The highest session id seen: new sessions are numbered above it.
    pub max_session_id: u64,
    /// The highest body id seen: new bodies are numbered above it.
    pub max_body_id: u64,
    /// Records applied.
    pub records: u64,
    /// The log's records are being applied ([`State::log_begins`]), in which a step may
    /// come before its message's Out record.
    in_log: bool,
}

impl State {
    /// Applies one record.
    pub fn apply(&mut self, record: Record) {
        self.records += 1;
        if let Some(id) = record.session() {
            self.max_session_id = self.max_session_id.max(id);
        }
        match record {
            Record::SessionOpen {
                session,
                client_id,
                expiry_secs,
            } => {
                let state = self.sessions.entry(session).or_default();
                state.client_id = client_id;
                state.expiry_secs = expiry_secs;
            }
            Record::SessionEnd { session } => {
                self.sessions.remove(&session);
            }
            Record::Body { id, message } => {
                self.max_body_id = self.max_body_id.max(id);
                self.bodies.insert(id, message);
            }
            Record::Batch(records) => {
                self.records -= 1;
                for record in records {
                    self.apply(record);
                }
            }
            Record::Retain { topic, message } => match message {
                Some(message) => {
                    self.retained.insert(topic, message);
                }
                None => {
                    self.retained.remove(&topic);
                }
            },
            other => {
                let Some(id) = other.session() else { return };
                if let Some(state) = self.sessions.get_mut(&id) {
                    state.apply(other, self.in_log);
                }
            }
        }
    }
}

impl State {
    /// The checkpoint's records (if any) are applied; the log's follow. A message a
    /// session's checkpoint does not hold, numbered up to the last number it had handed
    /// out, was finished before the checkpoint was written: its records in the log are
    /// ignored. Any other step that comes before its message's Out record is kept until
    /// that comes.
    pub fn log_begins(&mut self) {
        self.in_log = true;
        for session in self.sessions.values_mut() {
            session.checkpoint_seq = session.max_seq;
        }
    }

    /// The replay is over: steps whose Out record never came are dropped (that record
    /// never became durable, so nothing that depended on it was acknowledged or sent).
    /// Returns how many were dropped.
    pub fn finish(&mut self) -> u64 {
        let mut dropped = 0;
        for session in self.sessions.values_mut() {
            dropped += session.early.values().map(|s| s.len() as u64).sum::<u64>();
            session.early.clear();
            session.checkpoint_seq = 0;
        }
        self.in_log = false;
        dropped
    }

    /// Applies only the bodies `record` is or holds (a record from before the checkpoint's
    /// cut: later records may refer to them).
    pub fn apply_bodies(&mut self, record: Record) {
        match record {
            Record::Body { .. } => self.apply(record),
            Record::Batch(records) => records
                .into_iter()
                .filter(|r| matches!(r, Record::Body { .. }))
                .for_each(|r| self.apply(r)),
            _ => {}
        }
    }
}

impl SessionState {
    fn apply(&mut self, record: Record, in_log: bool) {
        match record {
            Record::SessionOffline { at_unix_ms, .. } => {
                self.offline_at_unix_ms = Some(at_unix_ms);
            }
            Record::SessionOnline { .. } => self.offline_at_unix_ms = None,
            Record::Will { will, .. } => self.will = will,
            Record::Subscribe {
                filter,
                options,
                subscription_id,
                ..
            } => {
                self.subscriptions
                    .insert(filter, (options, subscription_id));
            }
            Record::Unsubscribe { filter, .. } => {
                self.subscriptions.remove(&filter);
            }
            Record::Out(out) => self.apply_out(out),
            Record::Sent { seq, .. } | Record::Released { seq, .. } | Record::Done { seq, .. } => {
                self.max_seq = self.max_seq.max(seq);
                if self.outbound.contains_key(&seq) {
                    self.apply_step(record);
                } else if in_log && seq > self.checkpoint_seq {
                    // Logged by another thread before the Out record, which the publisher's
                    // thread held back until the end of its input buffer.
                    self.early.entry(seq).or_default().push(record);
                }
            }
            Record::Qos2Received { packet_id, .. } => {
                self.qos2_in.insert(packet_id);
            }
            Record::Qos2Released { packet_id, .. } => {
                self.qos2_in.remove(&packet_id);
            }
            Record::SessionOpen { .. }
            | Record::SessionEnd { .. }
            | Record::Retain { .. }
            | Record::Body { .. }
            | Record::Batch(_) => {}
        }
    }

    /// A message handed over: its entry, unless it has one at a later stage already (a
    /// checkpoint written after the message was handed over and before its Out record,
    /// held back, was appended); then the steps logged before it.
    fn apply_out(&mut self, mut out: Box<OutRecord>) {
        let seq = out.seq;
        self.max_seq = self.max_seq.max(seq);
        // The stage holds the packet id from here on (a checkpoint puts it back).
        let stage = match std::mem::take(&mut out.packet_id) {
            0 => OutStage::Queued,
            id => OutStage::Sent(id),
        };
        match self.outbound.get_mut(&seq) {
            Some(entry) => {
                if stage.rank() > entry.stage.rank() {
                    entry.stage = stage;
                }
            }
            None if seq <= self.checkpoint_seq => return, // finished before the checkpoint
            None => {
                self.outbound.insert(seq, OutEntry { record: out, stage });
            }
        }
        for step in self.early.remove(&seq).unwrap_or_default() {
            self.apply_step(step);
        }
    }

    /// A step of a message that has an entry.
    fn apply_step(&mut self, step: Record) {
        match step {
            Record::Sent { seq, packet_id, .. } => {
                if let Some(entry) = self.outbound.get_mut(&seq) {
                    entry.stage = OutStage::Sent(packet_id);
                }
            }
            Record::Released { seq, .. } => {
                if let Some(entry) = self.outbound.get_mut(&seq) {
                    if let OutStage::Sent(id) | OutStage::Released(id) = entry.stage {
                        entry.stage = OutStage::Released(id);
                    }
                }
            }
            Record::Done { seq, .. } => {
                self.outbound.remove(&seq);
            }
            _ => {}
        }
    }
}

impl OutStage {
    /// Its order among the stages a message goes through.
    fn rank(self) -> u8 {
        match self {
            OutStage::Queued => 0,
            OutStage::Sent(_) => 1,
            OutStage::Released(_) => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records that rebuild `state` (a model of a checkpoint's content, which the broker
    /// writes from its live state: `broker/persist.rs`), in an order [`State::apply`]
    /// accepts: each session's opening first.
    fn records_of(state: &State) -> impl Iterator<Item = Record> + '_ {
        let referenced: std::collections::BTreeSet<u64> = state
            .sessions
            .values()
            .flat_map(|s| s.outbound.values().map(|e| e.record.body))
            .collect();
        let bodies = referenced.into_iter().filter_map(|id| {
            let message = state.bodies.get(&id)?.clone();
            Some(Record::Body { id, message })
        });
        let sessions = state
            .sessions
            .iter()
            .flat_map(|(&id, s)| session_records(id, s));
        let retained = state
            .retained
            .iter()
            .map(|(topic, message)| Record::Retain {
                topic: topic.clone(),
                message: Some(message.clone()),
            });
        bodies.chain(sessions).chain(retained)
    }

    /// The records that rebuild one session.
    fn session_records(id: u64, s: &SessionState) -> Vec<Record> {
        let mut out = vec![Record::SessionOpen {
            session: id,
            client_id: s.client_id.clone(),
            expiry_secs: s.expiry_secs,
        }];
        if let Some(at_unix_ms) = s.offline_at_unix_ms {
            out.push(Record::SessionOffline {
                session: id,
                at_unix_ms,
            });
        }
        if s.will.is_some() {
            out.push(Record::Will {
                session: id,
                will: s.will.clone(),
            });
        }
        for (filter, &(options, subscription_id)) in &s.subscriptions {
            out.push(Record::Subscribe {
                session: id,
                filter: filter.clone(),
                options,
                subscription_id,
            });
        }
        if s.max_seq > 0 {
            // Carries the highest number used, so that numbers are never handed out twice; it
            // comes before the messages, so it removes none of them.
            out.push(Record::Done {
                session: id,
                seq: s.max_seq,
            });
        }
        for entry in s.outbound.values() {
            let mut record = entry.record.clone();
            record.packet_id = match entry.stage {
                OutStage::Queued => 0,
                OutStage::Sent(id) | OutStage::Released(id) => id,
            };
            let seq = record.seq;
            out.push(Record::Out(record));
            if matches!(entry.stage, OutStage::Released(_)) {
                out.push(Record::Released { session: id, seq });
            }
        }
        for &packet_id in &s.qos2_in {
            out.push(Record::Qos2Received {
                session: id,
                packet_id,
            });
        }
        out
    }

    use bytes::Bytes;

    fn msg(n: u8) -> StoredMessage {
        StoredMessage {
            received_unix_ms: 1,
            origin_session: 0,
            publish: Bytes::from(vec![n]),
            family: tern_codec::Family::V5,
        }
    }

    fn out(session: u64, seq: u64, packet_id: u16) -> Record {
        Record::Out(Box::new(OutRecord {
            session,
            seq,
            qos: 1,
            retain: false,
            packet_id,
            subscription_ids: vec![],
            group: None,
            body: seq,
        }))
    }

    fn body(id: u64) -> Record {
        Record::Body {
            id,
            message: msg(id as u8),
        }
    }

    fn open(session: u64) -> Record {
        Record::SessionOpen {
            session,
            client_id: format!("c{session}"),
            expiry_secs: 60,
        }
    }

    /// A history of one session's keys: subscriptions and outbound messages in every stage.
    fn history() -> Vec<Record> {
        vec![
            open(1),
            Record::Subscribe {
                session: 1,
                filter: "a/#".into(),
                options: 1,
                subscription_id: 0,
            },
            body(1),
            out(1, 1, 0),
            body(2),
            out(1, 2, 0),
            Record::Sent {
                session: 1,
                seq: 1,
                packet_id: 10,
            },
            Record::Retain {
                topic: "r".into(),
                message: Some(msg(9)),
            },
            Record::Done { session: 1, seq: 1 },
            Record::Sent {
                session: 1,
                seq: 2,
                packet_id: 11,
            },
            Record::Released { session: 1, seq: 2 },
            Record::Qos2Received {
                session: 1,
                packet_id: 5,
            },
            body(3),
            out(1, 3, 12),
            Record::Unsubscribe {
                session: 1,
                filter: "a/#".into(),
            },
            Record::Subscribe {
                session: 1,
                filter: "b".into(),
                options: 2,
                subscription_id: 4,
            },
            open(2),
            out(2, 1, 0),
            Record::SessionEnd { session: 2 },
            out(2, 2, 0), // late record of an ended session: ignored
            Record::Qos2Released {
                session: 1,
                packet_id: 5,
            },
            Record::Retain {
                topic: "r2".into(),
                message: Some(msg(8)),
            },
            Record::Retain {
                topic: "r".into(),
                message: None,
            },
        ]
    }

    /// Replays a checkpoint's records, then a log's.
    fn replay_from(
        snapshot: impl IntoIterator<Item = Record>,
        log: impl IntoIterator<Item = Record>,
    ) -> State {
        let mut state = State::default();
        for r in snapshot {
            state.apply(r);
        }
        state.log_begins();
        for r in log {
            state.apply(r);
        }
        state.finish();
        state.records = 0;
        state
    }

    /// Replays a log alone.
    fn replay(records: impl IntoIterator<Item = Record>) -> State {
        replay_from([], records)
    }

    /// The state the broker holds after `live` happened, in that order (each message's Out
    /// first): what a checkpoint written then holds.
    fn live_state(live: &[Record]) -> State {
        let mut state = State::default();
        for r in live {
            state.apply(r.clone());
        }
        state.records = 0;
        state
    }

    #[test]
    fn replay_gives_the_final_state() {
        let state = replay(history());
        let s = &state.sessions[&1];
        assert_eq!(
            s.subscriptions.keys().collect::<Vec<_>>(),
            vec!["b"],
            "unsubscribed a/#"
        );
        assert_eq!(s.outbound.len(), 2);
        assert_eq!(s.outbound[&2].stage, OutStage::Released(11));
        assert_eq!(s.outbound[&3].stage, OutStage::Sent(12));
        assert!(s.qos2_in.is_empty());
        assert!(!state.sessions.contains_key(&2), "ended");
        assert_eq!(state.retained.keys().collect::<Vec<_>>(), vec!["r2"]);
        assert_eq!(state.max_session_id, 2);
    }

    /// A history whose log order is not the order things happened in: a publisher's thread
    /// held its Out records back until the end of its input buffer while a subscriber's
    /// thread logged a step of one of them (sent from the queue) and another thread
    /// finished another (handed to another member of a shared group). Returns what happened,
    /// in order, and the log as indexes into it.
    fn history_out_of_order() -> (Vec<Record>, Vec<usize>) {
        let sent = |seq, packet_id| Record::Sent {
            session: 1,
            seq,
            packet_id,
        };
        let live = vec![
            open(1),                                 // 0
            body(1),                                 // 1
            out(1, 1, 0),                            // 2 held back by the publisher
            sent(1, 10),                             // 3 sent from the queue
            out(1, 2, 0),                            // 4 held back
            Record::Done { session: 1, seq: 2 },     // 5 handed to another member
            out(1, 3, 0),                            // 6 held back
            Record::Done { session: 1, seq: 1 },     // 7 acknowledged (after the Out)
            out(1, 4, 11),                           // 8 sent at once, not held back
            sent(3, 12),                             // 9
            Record::Released { session: 1, seq: 3 }, // 10
        ];
        let log = vec![0, 3, 5, 8, 1, 2, 4, 6, 7, 9, 10];
        (live, log)
    }

    /// A snapshot taken at any point k, followed by the whole log from any earlier point
    /// j (everything before j happened before k), converges to the state at the end of the
    /// log: the property checkpoints rely on (records of the log before the cut may or may
    /// not be in the snapshot; records after it may describe what the snapshot holds
    /// already, also when a step comes before its message's Out record).
    #[test]
    fn snapshot_plus_any_overlapping_suffix_converges() {
        let in_order = history();
        let (live, log) = history_out_of_order();
        let histories = [
            (in_order.clone(), (0..in_order.len()).collect()),
            (live, log),
        ];
        for (live, log) in histories {
            let logged: Vec<Record> = log.iter().map(|&i| live[i].clone()).collect();
            let end = replay(logged.clone());
            assert_eq!(end.sessions, live_state(&live).sessions, "log {log:?}");
            for k in 0..=live.len() {
                let snapshot: Vec<Record> = records_of(&live_state(&live[..k])).collect();
                for j in (0..=log.len()).filter(|&j| log[..j].iter().all(|&i| i < k)) {
                    let state = replay_from(snapshot.iter().cloned(), logged[j..].iter().cloned());
                    let at = format!("snapshot at {k}, log from {j} of {log:?}");
                    assert_eq!(state.sessions, end.sessions, "{at}");
                    assert_eq!(state.retained, end.retained, "{at}");
                }
            }
        }
    }

    #[test]
    fn a_step_logged_before_its_out_record_applies_when_it_comes() {
        let sent = Record::Sent {
            session: 1,
            seq: 1,
            packet_id: 7,
        };
        let state = replay([open(1), sent, body(1), out(1, 1, 0)]);
        assert_eq!(state.sessions[&1].outbound[&1].stage, OutStage::Sent(7));
        let done = Record::Done { session: 1, seq: 2 };
        let state = replay([open(1), done, body(2), out(1, 2, 0)]);
        assert!(state.sessions[&1].outbound.is_empty(), "finished");
    }

    #[test]
    fn an_out_record_after_a_checkpoint_holding_its_message_further_on_keeps_that_stage() {
        let snapshot = [
            open(1),
            body(1),
            out(1, 1, 9), // sent with packet id 9
            Record::Released { session: 1, seq: 1 },
            body(2),
            out(1, 2, 8),
        ];
        let state = replay_from(snapshot, [out(1, 1, 0), out(1, 2, 0)]);
        let outbound = &state.sessions[&1].outbound;
        assert_eq!(outbound[&1].stage, OutStage::Released(9));
        assert_eq!(outbound[&2].stage, OutStage::Sent(8));
    }

    /// A message a checkpoint does not hold, numbered below what it had handed out, was
    /// finished before it: its Out record after the cut (held back while another thread
    /// finished it before the cut) does not bring it back.
    #[test]
    fn an_out_record_of_a_message_finished_before_the_checkpoint_is_ignored() {
        let snapshot = [open(1), Record::Done { session: 1, seq: 3 }];
        let state = replay_from(snapshot, [body(2), out(1, 2, 0), body(4), out(1, 4, 0)]);
        let outbound = &state.sessions[&1].outbound;
        assert_eq!(outbound.keys().copied().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn a_step_whose_out_record_never_came_is_dropped() {
        let sent = Record::Sent {
            session: 1,
            seq: 5,
            packet_id: 3,
        };
        let mut state = State::default();
        state.log_begins();
        for r in [open(1), sent, Record::Released { session: 1, seq: 5 }] {
            state.apply(r);
        }
        assert_eq!(state.finish(), 2);
        let s = &state.sessions[&1];
        assert!(s.outbound.is_empty() && s.early.is_empty());
        assert_eq!(s.max_seq, 5, "its number is not handed out again");
    }
}
