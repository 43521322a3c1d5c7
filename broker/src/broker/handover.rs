//! A session moving between cluster nodes: the node that loses a client hands its session
//! over as journal records ([`Broker::hand_over`]: subscriptions with their options and
//! identifiers, outbound QoS 1/2 messages in the window and the queue with their packet ids
//! and PUBREL state, inbound QoS 2 ids awaiting PUBREL, the expiry), and the node that
//! takes it puts them back as an offline session ([`Broker::adopt_session`]) that the
//! CONNECT then resumes. The records are the persistence layer's ([`Record`]), decoded
//! into its [`State`] and restored by the code recovery uses (`persist.rs`).
//!
//! A session too large for one NATS message goes in several handover forms
//! ([`Handover::into_forms`]), which `adopt_session` applies in order; a message body too
//! large for one form goes in parts across forms to a node that reads them
//! ([`Handover::in_parts`]). The form
//! itself (encoding, decoding, the split) is `handover_form.rs`'s. This module owns both
//! ends of a handover; which node asks which, when, and how the forms travel is the
//! cluster engine's ([`crate::cluster`]).

use std::sync::Arc;

use tern_codec::{LastWill, SubscriptionOptions};
use tokio::time::Instant;

use super::handover_form::{
    encode_records, split_records, Entry, FormReader, HandoverError, Identity,
};
use super::persist::{
    recovered_will, restored_outbound, subscription_records, Bodies, RestoreReport,
};
use super::Broker;
use crate::journal::record::Record;
use crate::journal::record::StoredMessage;
use crate::journal::state::{SessionState, State};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::delivery::{Restored, RestoredStage};
use crate::session::{Session, SubscriptionRecord};

/// The session id records carry in the handover form (ids are per node).
const HANDOVER_SESSION: u64 = 1;

/// What [`Broker::adopt_session`] put back.
#[derive(Debug, Default)]
pub struct Adopted {
    /// The session's filters (the cluster waits for their interest before CONNACK).
    pub filters: Vec<String>,
    /// Outbound messages restored.
    pub messages: usize,
}

/// A session ended here for a handover, as its records, not yet in the handover form
/// ([`Broker::end_for_handover`]): the encoding can happen elsewhere, off the task that
/// answers takeovers.
#[derive(Debug)]
pub struct Handover {
    client_id: String,
    /// The session's state (opening, subscriptions, inbound QoS 2 ids), then its outbound
    /// messages (bodies, `Out`, `Released`).
    records: Vec<Record>,
    /// Where the messages begin.
    messages_from: usize,
    /// The cluster identities of the messages, by their `Out` records' numbers (sent
    /// only to a node that asks for them).
    identities: Vec<Identity>,
    /// The identities of the messages handed to the session since the other node
    /// prepared the handover (in the forms with number 0): some were delivered here.
    seen: Vec<(u64, u64)>,
    /// Whether a record too large for one form goes in parts (the node taking the
    /// session reads them) rather than staying behind.
    parts: bool,
}

/// A session in several handover forms ([`Handover::into_forms`]).
#[derive(Debug, Default)]
pub struct HandedOver {
    /// The handover forms, to be applied in order (at least one).
    pub forms: Vec<Vec<u8>>,
    /// Outbound messages that could not go (a record of theirs larger than a form).
    pub dropped_messages: usize,
}

impl Handover {
    /// The client id of the session.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The session without its messages' cluster identities, for a node of an earlier
    /// version (which could not read them).
    pub fn without_identities(mut self) -> Handover {
        self.identities.clear();
        self.seen.clear();
        self.parts = false;
        self
    }

    /// The session with a record too large for one form (the body of a message larger
    /// than NATS's `max_payload`) in parts across forms, for a node that reads them:
    /// then every message moves.
    pub fn in_parts(mut self) -> Handover {
        self.parts = true;
        self
    }

    /// The session in one handover form. A form longer than `max_bytes` (what one NATS
    /// message may carry) goes without the outbound messages (dropped, logged):
    /// subscriptions and the rest still move. The answer to a node that asks in one
    /// message (an older version); [`Handover::into_forms`] moves the messages too.
    pub fn into_one_form(mut self, max_bytes: usize) -> Vec<u8> {
        let form = encode_records(&self.records);
        if form.len() <= max_bytes {
            return form;
        }
        let dropped = self.records[self.messages_from..]
            .iter()
            .filter(|r| matches!(r, Record::Out(_)))
            .count();
        tracing::warn!(
            client_id = self.client_id,
            dropped,
            bytes = form.len(),
            max_bytes,
            "handover too large: the session moves without its messages"
        );
        self.records.truncate(self.messages_from);
        encode_records(&self.records)
    }

    /// The session, messages included, in as many handover forms of at most
    /// `max_form_bytes` as it takes. A record larger than a form alone (a message's body)
    /// goes in parts if [`Handover::in_parts`]; otherwise its messages stay behind:
    /// dropped, logged and counted in the result.
    pub fn into_forms(self, max_form_bytes: usize) -> HandedOver {
        let split = if self.identities.is_empty() && self.seen.is_empty() {
            split_records(&self.records, max_form_bytes, self.parts)
        } else {
            split_records(&self.entries(), max_form_bytes, self.parts)
        };
        if split.dropped_messages + split.dropped_records > 0 {
            tracing::warn!(
                client_id = self.client_id,
                dropped_messages = split.dropped_messages,
                dropped_records = split.dropped_records,
                max_form_bytes,
                "handover: records larger than one NATS message stay behind"
            );
        }
        HandedOver {
            forms: split.forms,
            dropped_messages: split.dropped_messages,
        }
    }
}

impl Handover {
    /// The records with each message's identity right after its `Out` record.
    fn entries(&self) -> Vec<Entry> {
        let identities: std::collections::HashMap<u64, (u64, u64)> =
            self.identities.iter().copied().collect();
        let mut entries = Vec::with_capacity(self.records.len() + identities.len());
        for record in &self.records {
            let seq = match record {
                Record::Out(out) => Some(out.seq),
                _ => None,
            };
            entries.push(Entry::Record(record.clone()));
            if let Some(id) = seq.and_then(|seq| identities.get(&seq)) {
                entries.push(Entry::Identity((seq.unwrap_or(0), *id)));
            }
        }
        entries.extend(self.seen.iter().map(|id| Entry::Identity((0, *id))));
        entries
    }
}

/// A session decoded from handover forms: its state, the bodies of its messages and the
/// messages' cluster identities.
pub(super) struct Decoded {
    pub(super) session: SessionState,
    bodies: std::collections::HashMap<u64, StoredMessage>,
    identities: Vec<Identity>,
    /// Every identity the forms carry: the handed-over messages' and those the old node
    /// was handed since the handover was prepared.
    pub(super) known: std::collections::HashSet<(u64, u64)>,
}

/// Decodes handover forms, applied in order.
///
/// # Errors
/// [`HandoverError`]: a form does not decode or they hold no session.
pub(super) fn decode_forms(forms: &[&[u8]]) -> Result<Decoded, HandoverError> {
    let mut state = State::default();
    let mut reader = FormReader::default();
    for form in forms {
        for record in reader.read(form)? {
            state.apply(record);
        }
    }
    let identities = reader.finish()?;
    let (_, session) = state
        .sessions
        .drain()
        .next()
        .ok_or(HandoverError::NoSession)?;
    Ok(Decoded {
        session,
        bodies: std::mem::take(&mut state.bodies),
        known: identities.iter().map(|(_, id)| *id).collect(),
        identities,
    })
}

impl Decoded {
    /// The session's outbound messages, in order, each with its cluster identity when the
    /// forms carried it (`seq` as in the forms: the caller numbers them afresh).
    pub(super) fn take_outbound(&mut self, now: Instant) -> Vec<Restored> {
        let mut bodies = Bodies::new(std::mem::take(&mut self.bodies), now);
        let mut report = RestoreReport::default();
        let outbound = restored_outbound(&self.session, &mut bodies, &mut report);
        let identities: std::collections::HashMap<u64, (u64, u64)> = self
            .identities
            .drain(..)
            .filter(|(seq, _)| *seq != 0)
            .collect();
        for r in &outbound {
            if let Some(id) = identities.get(&r.seq) {
                let _ = r.message.set_identity(*id);
            }
        }
        outbound
    }
}

impl Broker {
    /// Ends the session of `client_id` here because another node takes the client over,
    /// and returns its state in one handover form (`None`: no session here), as
    /// [`Broker::end_for_handover`] and [`Handover::into_one_form`] do.
    pub fn hand_over(&self, client_id: &str, max_bytes: usize) -> Option<Vec<u8>> {
        Some(self.end_for_handover(client_id)?.into_one_form(max_bytes))
    }

    /// Ends the session of `client_id` here because another node takes the client over,
    /// and returns its state as records (`None`: no session here): subscriptions with their
    /// options and identifiers, inbound QoS 2 ids, the expiry, and the outbound messages
    /// in the window and the queue, in order. Its connection gets DISCONNECT 0x8E; a will
    /// waiting for its delay is cancelled, as a resume cancels it (the session goes on
    /// elsewhere); the connection's own will follows the rules of a local takeover
    /// (`connection_closed`).
    pub fn end_for_handover(&self, client_id: &str) -> Option<Handover> {
        let session = self.session(client_id)?;
        let now = Instant::now();
        let id = HANDOVER_SESSION;
        let mut records = vec![Record::SessionOpen {
            session: id,
            client_id: client_id.to_string(),
            expiry_secs: session.expiry_secs(),
        }];
        let mut messages = Vec::new();
        let mut identities = Vec::new();
        let seen;
        let attached = {
            let mut delivery = session.delivery();
            session.mark_handed_over();
            if !session.mark_ended() {
                return None;
            }
            delivery.handover_records(id, now, &mut messages, &mut identities);
            seen = delivery.take_seen();
            // Handed over, not redirected to other shared-group members nor dropped.
            delivery.clear();
            delivery.take_link()
        };
        if let Some(link) = attached {
            Metrics::add(&self.inner.metrics.session_takeovers, 1);
            link.writer.control().kick(crate::error::Kick::TakenOver);
        }
        records.extend(subscription_records(&session, id));
        let qos2: Vec<u16> = session.incoming_qos2().iter().collect();
        records.extend(qos2.into_iter().map(|packet_id| Record::Qos2Received {
            session: id,
            packet_id,
        }));
        // A will filed for its delay is cancelled: the session resumes on the other node.
        self.session_resumed(&session);
        self.release_session(&session);
        let messages_from = records.len();
        records.append(&mut messages);
        Some(Handover {
            client_id: client_id.to_string(),
            records,
            messages_from,
            identities,
            seen,
            parts: false,
        })
    }

    /// Ends `session` here because the cluster holds a newer copy of it elsewhere (its
    /// client id is owned by another node): quietly — its connection, if any, gets 0x8E,
    /// a will waiting for its delay is dropped (the other copy has it), nothing is
    /// redirected and its entry in the cluster's session store stays.
    pub fn drop_superseded(&self, session: &Arc<Session>) {
        session.mark_handed_over();
        self.session_resumed(session);
        session.delivery().clear();
        self.end_session(session);
    }

    /// The state of `session` other nodes need if this node dies, in the handover form: its
    /// expiry and subscriptions (no messages).
    pub fn stored_session_form(&self, session: &Session) -> Vec<u8> {
        let id = HANDOVER_SESSION;
        let mut records = vec![Record::SessionOpen {
            session: id,
            client_id: session.client_id.to_string(),
            expiry_secs: session.expiry_secs(),
        }];
        records.extend(subscription_records(session, id));
        encode_records(&records)
    }

    /// `session`'s will in the handover form (with the session's expiry), as the journal
    /// stores it: the PUBLISH it becomes and its Will Delay Interval.
    pub fn will_form(&self, session: &Session, will: &LastWill) -> Vec<u8> {
        let delay_secs = will.properties.will_delay_interval_secs.unwrap_or(0);
        let now = Instant::now();
        let message = Message::new(super::will::to_publish(will.clone()), now, None);
        let id = HANDOVER_SESSION;
        encode_records(&[
            Record::SessionOpen {
                session: id,
                client_id: session.client_id.to_string(),
                expiry_secs: session.expiry_secs(),
            },
            Record::Will {
                session: id,
                will: Some((crate::journal::stored(&message, now), delay_secs)),
            },
        ])
    }

    /// Puts a session another node handed over (handover forms, applied in order) back
    /// here as an offline session of its client id, replacing any this node still held for
    /// it, so that the CONNECT that asked for it resumes it (Session Present 1). Its
    /// subscriptions are in the trie and announced to the cluster when this returns. A will
    /// in the forms (a dead node's client) waits for its delay as after a close, unless the
    /// session resumes first; a session with expiry 0 ends at once (its will goes out).
    ///
    /// # Errors
    /// [`HandoverError`]: the form does not decode or holds no session.
    ///
    /// `linger_secs`: the session stays at least this long even with a shorter expiry (a
    /// CONNECT that asked for it attaches in a moment; 0 for a dead node's session).
    pub fn adopt_session(
        &self,
        forms: &[&[u8]],
        linger_secs: u32,
    ) -> Result<Adopted, HandoverError> {
        let mut decoded = decode_forms(forms)?;
        let outbound = decoded.take_outbound(Instant::now());
        Ok(self
            .adopt_decoded(&decoded.session, outbound, linger_secs, true)
            .0)
    }

    /// [`Broker::adopt_session`] for forms already decoded, with their outbound messages;
    /// returns the session too. A persistent session goes into this node's journal only
    /// if `may_journal` (not a session made ahead of a handover: `handover_merge.rs`).
    pub(super) fn adopt_decoded(
        &self,
        s: &SessionState,
        mut outbound: Vec<Restored>,
        linger_secs: u32,
        may_journal: bool,
    ) -> (Adopted, Arc<Session>) {
        let journaled = may_journal && self.journal().is_some() && s.expiry_secs > 0;
        number_outbound(&mut outbound, journaled);
        if let Some(stale) = self.session(&s.client_id) {
            self.drop_superseded(&stale);
        }
        let limits = self.limits();
        let id = self
            .inner
            .next_session_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = Arc::new(Session::new(
            id,
            Arc::from(s.client_id.as_str()),
            limits.max_queued_messages,
            limits.max_queued_bytes,
            self.budget().clone(),
        ));
        session.set_expiry_secs(s.expiry_secs);
        let generation = session.next_generation();
        let adopted = Adopted {
            filters: s.subscriptions.keys().cloned().collect(),
            messages: outbound.len(),
        };
        let will = s
            .will
            .as_ref()
            .and_then(|(w, delay)| recovered_will(w, *delay, 0));
        if journaled {
            self.journal_adopted(&session, &outbound, &s.qos2_in, will.as_ref());
        }
        session.delivery().restore_outbound(outbound);
        for &packet_id in &s.qos2_in {
            session.incoming_qos2().insert(packet_id);
        }
        if self.register(session.clone()).is_none() {
            Metrics::add(&self.inner.metrics.sessions, 1);
        }
        self.adopt_subscriptions(&session, &s.subscriptions);
        if let Some((will, _)) = &will {
            self.cluster_will(&session, Some(will));
        }
        self.went_offline(&session, generation, will, s.expiry_secs.max(linger_secs));
        (adopted, session)
    }

    /// Writes an adopted persistent session into this node's journal as it stands, before
    /// its subscriptions are made (which log themselves): opened and offline with its
    /// will, each outbound message with its body, PUBREL owed, inbound QoS 2 ids.
    fn journal_adopted(
        &self,
        session: &Arc<Session>,
        outbound: &[Restored],
        qos2_in: &std::collections::BTreeSet<u16>,
        will: Option<&(LastWill, std::time::Duration)>,
    ) {
        let Some(journal) = self.journal() else {
            return;
        };
        session
            .delivery()
            .set_log(Some((session.id, outbound.len() as u64)));
        session.set_logged(true);
        self.log_offline(session, will.map(|(w, _)| w));
        journal_outbound(journal, session.id, outbound, qos2_in);
    }

    pub(super) fn adopt_subscriptions(
        &self,
        session: &Arc<Session>,
        subscriptions: &std::collections::BTreeMap<String, (u8, u32)>,
    ) {
        for (filter, (options, subscription_id)) in subscriptions {
            let Ok(options) = SubscriptionOptions::from_v5_byte(*options) else {
                continue;
            };
            let record = SubscriptionRecord {
                options,
                subscription_id: (*subscription_id != 0).then_some(*subscription_id),
            };
            // The ACL is re-derived when the client's CONNECT resumes the session.
            self.subscribe(session, filter, record, None, 0);
        }
    }
}

/// Numbers outbound messages for the session taking them: from 1 when it goes into this
/// node's journal (`journaled`), else 0, as for a session that is not logged.
pub(super) fn number_outbound(outbound: &mut [Restored], journaled: bool) {
    for (i, r) in outbound.iter_mut().enumerate() {
        r.seq = if journaled { i as u64 + 1 } else { 0 };
    }
}

/// Writes outbound messages of persistent session `session` into `journal` (each with
/// its body, PUBREL owed), then its inbound QoS 2 ids.
pub(super) fn journal_outbound(
    journal: &crate::journal::Journal,
    session: u64,
    outbound: &[Restored],
    qos2_in: &std::collections::BTreeSet<u16>,
) {
    let now = Instant::now();
    for r in outbound {
        let packet_id = match r.stage {
            RestoredStage::Queued => 0,
            RestoredStage::Sent(p) | RestoredStage::Released(p) => p.get(),
        };
        r.log_out(journal, session, packet_id, now);
        if matches!(r.stage, RestoredStage::Released(_)) {
            journal.append(&Record::Released {
                session,
                seq: r.seq,
            });
        }
    }
    for &packet_id in qos2_in {
        journal.append(&Record::Qos2Received { session, packet_id });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::handover_form::decode_records;
    use crate::config::Config;

    #[tokio::test]
    async fn a_handed_over_session_comes_back_with_its_subscriptions() {
        let a = Broker::new(Config::default_config());
        let (session, _) = a.open_session("c", false);
        session.set_expiry_secs(300);
        let record = SubscriptionRecord {
            options: SubscriptionOptions::from_v5_byte(1).expect("QoS 1"),
            subscription_id: Some(9),
        };
        a.subscribe(&session, "x/#", record, None, 0);
        session.incoming_qos2().insert(5);
        let form = a
            .hand_over("c", usize::MAX)
            .expect("a session to hand over");
        assert!(!a.has_session("c"), "the session ended on the old node");
        let b = Broker::new(Config::default_config());
        let adopted = b.adopt_session(&[&form], 0).expect("adopted");
        assert_eq!(adopted.filters, vec!["x/#".to_string()]);
        let resumed = b.session("c").expect("the session");
        assert_eq!(resumed.expiry_secs(), 300);
        let subs = resumed.subscription_snapshot();
        assert_eq!(subs[0].1.subscription_id, Some(9));
        assert!(resumed.incoming_qos2().contains(&5));
        let (_, present) = b.open_session("c", false);
        assert!(present, "[MQTT-3.2.2-3] Session Present on resume");
    }

    /// `a` holds an offline session "c" subscribed to `q/#` at QoS 1 with `count` messages
    /// of 100 bytes queued for it (each payload starts with its number, big-endian).
    fn with_queued_messages(count: u16) -> Broker {
        let a = Broker::new(Config::default_config());
        let (session, _) = a.open_session("c", false);
        session.set_expiry_secs(300);
        let record = SubscriptionRecord {
            options: SubscriptionOptions::from_v5_byte(1).expect("QoS 1"),
            subscription_id: None,
        };
        a.subscribe(&session, "q/#", record, None, 0);
        let now = Instant::now();
        for i in 1..=count {
            let id = tern_codec::PacketId::new(i).expect("non-zero");
            let mut payload = vec![7; 100];
            payload[..2].copy_from_slice(&i.to_be_bytes());
            let publish = tern_codec::Publish::new("q/1", payload).with_qos(
                tern_codec::PublishQoS::with_id(tern_codec::QoS::AtLeastOnce, id),
            );
            let message = Message::new(publish, now, None);
            a.publish(&message, &mut crate::router::RouteScratch::default(), now);
        }
        a
    }

    /// The numbers of the messages `broker` holds for "c", in order (read by handing the
    /// session over once more).
    fn message_numbers(broker: &Broker) -> Vec<u16> {
        let form = broker.hand_over("c", usize::MAX).expect("a session");
        let mut state = State::default();
        for record in decode_records(&form).expect("decodes") {
            state.apply(record);
        }
        let session = state.sessions.values().next().expect("the session");
        session
            .outbound
            .values()
            .map(|e| {
                let stored = &state.bodies[&e.record.body];
                let publish = stored.decode_publish().expect("a PUBLISH");
                u16::from_be_bytes([publish.payload()[0], publish.payload()[1]])
            })
            .collect()
    }

    /// The messages' cluster identities travel in the forms (split or not) to a node
    /// that asks for them, and not to one that does not.
    #[tokio::test]
    async fn message_identities_move_with_the_session_when_asked() {
        // Identities as if the messages had come from node 7 (every third has none).
        let queued: Vec<Option<(u64, u64)>> = (0..20)
            .map(|i| (i % 3 != 0).then_some((7, 100 + i)))
            .collect();
        let a = with_queued_messages(20);
        let handover = a.end_for_handover("c").expect("a session");
        assert!(handover.identities.is_empty(), "a node without a cluster");
        let mut handover = handover;
        handover.identities = queued
            .iter()
            .enumerate()
            .filter_map(|(i, id)| Some((i as u64 + 1, (*id)?)))
            .collect();
        handover.seen = vec![(8, 1), (8, 2)];
        let plain = Handover {
            client_id: handover.client_id.clone(),
            records: handover.records.clone(),
            messages_from: handover.messages_from,
            identities: handover.identities.clone(),
            seen: handover.seen.clone(),
            parts: false,
        }
        .without_identities();
        let forms = handover.into_forms(1024).forms;
        assert!(forms.len() > 1, "split: {} forms", forms.len());
        let forms: Vec<&[u8]> = forms.iter().map(Vec::as_slice).collect();
        let mut decoded = decode_forms(&forms).expect("decodes");
        let outbound = decoded.take_outbound(Instant::now());
        let got: Vec<Option<(u64, u64)>> = outbound.iter().map(|r| r.message.identity()).collect();
        assert_eq!(got, queued);
        assert!(decoded.known.contains(&(8, 2)) && decoded.known.contains(&(7, 101)));
        let forms = plain.into_forms(usize::MAX).forms;
        let forms: Vec<&[u8]> = forms.iter().map(Vec::as_slice).collect();
        let mut decoded = decode_forms(&forms).expect("decodes");
        let outbound = decoded.take_outbound(Instant::now());
        assert_eq!(outbound.len(), 20);
        assert!(outbound.iter().all(|r| r.message.identity().is_none()));
        assert!(decoded.known.is_empty());
    }

    /// Publishes a QoS 1 message on `q/1` with cluster identity `(9, sequence)`.
    fn publish_identified(broker: &Broker, sequence: u64) {
        let id = tern_codec::PacketId::new(1).expect("non-zero");
        let publish = tern_codec::Publish::new("q/1", vec![1]).with_qos(
            tern_codec::PublishQoS::with_id(tern_codec::QoS::AtLeastOnce, id),
        );
        let now = Instant::now();
        let message = Message::new(publish, now, None);
        let _ = message.set_identity((9, sequence));
        broker.publish(&message, &mut crate::router::RouteScratch::default(), now);
    }

    /// After a prepare the session notes the identities of the messages it is handed and
    /// hands them over with it; not before the prepare, and not long after it.
    #[tokio::test(start_paused = true)]
    async fn a_prepared_session_hands_over_what_it_was_handed_since() {
        let a = with_queued_messages(0);
        publish_identified(&a, 1);
        assert!(a.prepare_form("c").is_some());
        publish_identified(&a, 2);
        publish_identified(&a, 3);
        let handover = a.end_for_handover("c").expect("a session");
        assert_eq!(handover.seen, vec![(9, 2), (9, 3)]);
        let a = with_queued_messages(0);
        assert!(a.prepare_form("c").is_some());
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        publish_identified(&a, 4);
        let handover = a.end_for_handover("c").expect("a session");
        assert!(handover.seen.is_empty(), "no handover came: noting stopped");
    }

    #[tokio::test]
    async fn queued_messages_move_with_the_session() {
        let a = with_queued_messages(2);
        let form = a.hand_over("c", usize::MAX).expect("a session");
        let b = Broker::new(Config::default_config());
        let adopted = b.adopt_session(&[&form], 0).expect("adopted");
        assert_eq!(adopted.messages, 2);
    }

    #[tokio::test]
    async fn a_form_too_large_for_nats_moves_without_its_messages() {
        let a = with_queued_messages(2);
        let form = a.hand_over("c", 150).expect("a session");
        assert!(form.len() <= 150, "{} bytes", form.len());
        let b = Broker::new(Config::default_config());
        let adopted = b.adopt_session(&[&form], 0).expect("adopted");
        assert_eq!(adopted.filters, vec!["q/#".to_string()]);
        assert_eq!(adopted.messages, 0);
    }

    /// 50 messages of 100 bytes in forms of at most 1 KiB: many forms, each within the
    /// limit; adopted together they give the session back with every message, in order.
    #[tokio::test]
    async fn a_large_session_moves_whole_in_several_forms() {
        let a = with_queued_messages(50);
        let handed = a.end_for_handover("c").expect("a session").into_forms(1024);
        assert!(handed.forms.len() > 5, "{} forms", handed.forms.len());
        assert!(handed.forms.iter().all(|f| f.len() <= 1024));
        assert_eq!(handed.dropped_messages, 0);
        assert!(!a.has_session("c"), "the session ended on the old node");
        let b = Broker::new(Config::default_config());
        let forms: Vec<&[u8]> = handed.forms.iter().map(Vec::as_slice).collect();
        let adopted = b.adopt_session(&forms, 0).expect("adopted");
        assert_eq!(adopted.messages, 50);
        assert_eq!(adopted.filters, vec!["q/#".to_string()]);
        assert_eq!(message_numbers(&b), (1..=50).collect::<Vec<u16>>());
    }

    /// Forms too small for one message body: the messages stay behind (counted), the
    /// session and its subscription still move.
    #[tokio::test]
    async fn messages_larger_than_a_form_stay_behind_and_are_counted() {
        let a = with_queued_messages(3);
        let handed = a.end_for_handover("c").expect("a session").into_forms(120);
        assert_eq!(handed.dropped_messages, 3);
        let b = Broker::new(Config::default_config());
        let forms: Vec<&[u8]> = handed.forms.iter().map(Vec::as_slice).collect();
        let adopted = b.adopt_session(&forms, 0).expect("adopted");
        assert_eq!(adopted.messages, 0);
        assert_eq!(adopted.filters, vec!["q/#".to_string()]);
    }

    /// Forms too small for one message body, for a node that reads parts: the bodies go
    /// in parts and every message moves, in order.
    #[tokio::test]
    async fn messages_larger_than_a_form_move_in_parts_when_asked() {
        let a = with_queued_messages(3);
        let handover = a.end_for_handover("c").expect("a session").in_parts();
        let handed = handover.without_identities().into_forms(120);
        assert_eq!(
            handed.dropped_messages, 3,
            "no parts for an earlier version"
        );
        let a = with_queued_messages(3);
        let handed = a
            .end_for_handover("c")
            .expect("a session")
            .in_parts()
            .into_forms(120);
        assert_eq!(handed.dropped_messages, 0);
        assert!(handed.forms.iter().all(|f| f.len() <= 120));
        let b = Broker::new(Config::default_config());
        let forms: Vec<&[u8]> = handed.forms.iter().map(Vec::as_slice).collect();
        let adopted = b.adopt_session(&forms, 0).expect("adopted");
        assert_eq!(adopted.messages, 3);
        assert_eq!(message_numbers(&b), vec![1, 2, 3]);
    }
}
