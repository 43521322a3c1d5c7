//! The state the journal describes, rebuilt by applying records in log order: the
//! snapshot's records first, then the log's. Plain data; the broker turns it into live
//! sessions, subscriptions and retained messages (`broker/persist.rs`).
//!
//! Each record sets or clears one key, so applying a log suffix that holds every record
//! since the snapshot began onto the snapshot converges to the state at the end of the
//! log, even where the snapshot already saw some of those records. Records of a session
//! that is not open at that point (ended before, or never seen) are ignored: session ids
//! are never reused.

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
                    state.apply(other);
                }
            }
        }
    }
}

impl State {
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
    fn apply(&mut self, record: Record) {
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
            Record::Out(mut out) => {
                self.max_seq = self.max_seq.max(out.seq);
                // The stage holds the packet id from here on (a checkpoint puts it back).
                let stage = match std::mem::take(&mut out.packet_id) {
                    0 => OutStage::Queued,
                    id => OutStage::Sent(id),
                };
                self.outbound
                    .insert(out.seq, OutEntry { record: out, stage });
            }
            Record::Sent { seq, packet_id, .. } => {
                self.max_seq = self.max_seq.max(seq);
                if let Some(entry) = self.outbound.get_mut(&seq) {
                    entry.stage = OutStage::Sent(packet_id);
                }
            }
            Record::Released { seq, .. } => {
                self.max_seq = self.max_seq.max(seq);
                if let Some(entry) = self.outbound.get_mut(&seq) {
                    if let OutStage::Sent(id) | OutStage::Released(id) = entry.stage {
                        entry.stage = OutStage::Released(id);
                    }
                }
            }
            Record::Done { seq, .. } => {
                self.max_seq = self.max_seq.max(seq);
                self.outbound.remove(&seq);
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

    fn replay(records: impl IntoIterator<Item = Record>) -> State {
        let mut state = State::default();
        for r in records {
            state.apply(r);
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

    /// A snapshot taken at any point k, followed by the whole log from any earlier point
    /// j <= k, converges to the state at the end of the log: the property checkpoints rely
    /// on (records of the log before the cut may or may not be in the snapshot).
    #[test]
    fn snapshot_plus_any_overlapping_suffix_converges() {
        let history = history();
        let end = replay(history.clone());
        for k in 0..=history.len() {
            let at_k = replay(history[..k].iter().cloned());
            let snapshot: Vec<Record> = records_of(&at_k).collect();
            for j in 0..=k {
                let state = replay(snapshot.iter().cloned().chain(history[j..].iter().cloned()));
                assert_eq!(
                    state.sessions, end.sessions,
                    "snapshot at {k}, log from {j}"
                );
                assert_eq!(
                    state.retained, end.retained,
                    "snapshot at {k}, log from {j}"
                );
            }
        }
    }
}
