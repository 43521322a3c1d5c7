//! A handover without a gap: the node taking a client over first makes the session here
//! from its subscriptions alone ([`Broker::prepare_session`]), so that from the moment the
//! cluster routes its filters here every message for the client is queued in it; then
//! the old node ends its session and hands it over, and [`Broker::adopt_prepared`] merges
//! the two: the handed-over messages first (in the old node's order, with their packet
//! ids and PUBREL state), then those queued here meanwhile that the old node did not also
//! have. Messages are told apart by their cluster identity (origin node, sequence:
//! [`crate::message::Message::identity`]), which the handover forms carry.
//!
//! This module owns the early session and the merge; the handover itself is
//! `handover.rs`'s, which node asks which and when is the cluster engine's.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::time::Instant;

use super::handover::{decode_forms, journal_outbound, number_outbound, Adopted};
use super::handover_form::HandoverError;
use super::Broker;
use crate::journal::record::Record;
use crate::journal::state::SessionState;
use crate::session::delivery::Restored;
use crate::session::Session;

/// A session made here ahead of a handover ([`Broker::prepare_session`]).
#[derive(Debug)]
pub struct Prepared {
    /// The session, offline, subscribed.
    pub session: Arc<Session>,
    /// Its filters (the cluster waits for their interest before asking for the rest).
    pub filters: Vec<String>,
}

/// The outbound messages of a merged session: `handed` (the old node's, in its order),
/// then those of `early` (queued here since the early session was made, in order) whose
/// cluster identity is neither among `handed` nor in `known` (the old node had them too:
/// delivered there, or dropped by its limits). A message without an identity is kept:
/// nothing could be a copy of it.
pub(super) fn merge_outbound(
    handed: Vec<Restored>,
    early: Vec<Restored>,
    known: &HashSet<(u64, u64)>,
) -> Vec<Restored> {
    let mut seen: HashSet<(u64, u64)> =
        handed.iter().filter_map(|r| r.message.identity()).collect();
    seen.extend(known.iter().copied());
    let mut merged = handed;
    merged.extend(
        early
            .into_iter()
            .filter(|r| r.message.identity().is_none_or(|id| !seen.contains(&id))),
    );
    merged
}

impl Broker {
    /// `client_id`'s session state another node needs to make it ahead of a handover (its
    /// expiry and subscriptions, in the handover form); `None`: no session here. From now
    /// on the session notes the identities of the messages it is handed, for the handover
    /// ([`crate::session::delivery::Delivery::start_noting_seen`]); nothing else changes.
    pub fn prepare_form(&self, client_id: &str) -> Option<Vec<u8>> {
        let session = self.session(client_id)?;
        session.delivery().start_noting_seen(Instant::now());
        Some(self.stored_session_form(&session))
    }

    /// Makes here, from `form` ([`Broker::prepare_form`] of the node that holds the
    /// session), an offline session of its client id with its subscriptions, replacing
    /// any this node still held for it: from now on messages for it are queued in it. It
    /// is not journaled before [`Broker::adopt_prepared`]; it stays at least
    /// `linger_secs`.
    ///
    /// # Errors
    /// [`HandoverError`]: the form does not decode or holds no session.
    pub fn prepare_session(
        &self,
        form: &[u8],
        linger_secs: u32,
    ) -> Result<Prepared, HandoverError> {
        let decoded = decode_forms(&[form])?;
        let (adopted, session) =
            self.adopt_decoded(&decoded.session, Vec::new(), linger_secs, false);
        Ok(Prepared {
            session,
            filters: adopted.filters,
        })
    }

    /// Puts a handed-over session (its forms, applied in order) into `prepared`, merged
    /// with what was queued there meanwhile ([`merge_outbound`]); with `[persistence]` a
    /// persistent session goes into the journal as it then stands. Subscriptions become
    /// the handed-over ones. When `prepared` is no longer this node's session of the
    /// client id (ended, replaced), or the forms carry a will (a dead node's session),
    /// this is [`Broker::adopt_session`].
    ///
    /// # Errors
    /// [`HandoverError`]: a form does not decode or they hold no session.
    pub fn adopt_prepared(
        &self,
        prepared: &Prepared,
        forms: &[&[u8]],
        linger_secs: u32,
    ) -> Result<Adopted, HandoverError> {
        let mut decoded = decode_forms(forms)?;
        let handed = decoded.take_outbound(Instant::now());
        let s = &decoded.session;
        let session = &prepared.session;
        let current = self.session(&s.client_id);
        let same = current.is_some_and(|c| Arc::ptr_eq(&c, session));
        if !same || s.will.is_some() {
            return Ok(self.adopt_decoded(s, handed, linger_secs, true).0);
        }
        session.set_expiry_secs(s.expiry_secs);
        let Some(messages) = self.merge_into(session, s, handed, &decoded.known) else {
            // Ended meanwhile: the handed-over session goes in as a new one.
            return self.adopt_session(forms, linger_secs);
        };
        for &packet_id in &s.qos2_in {
            session.incoming_qos2().insert(packet_id);
        }
        self.adopt_subscriptions(session, &s.subscriptions);
        let extra: Vec<Arc<str>> = session
            .subscriptions()
            .iter()
            .map(|(filter, _)| filter.clone())
            .filter(|filter| !s.subscriptions.contains_key(&**filter))
            .collect();
        for filter in extra {
            self.unsubscribe(session, &filter);
        }
        Ok(Adopted {
            filters: s.subscriptions.keys().cloned().collect(),
            messages,
        })
    }

    /// Merges `handed` with what `session` queued, under its delivery lock (so that a
    /// message routed to it meanwhile comes after), journaling it when it is persistent;
    /// returns the number of messages (`None`: the session ended).
    fn merge_into(
        &self,
        session: &Arc<Session>,
        s: &SessionState,
        handed: Vec<Restored>,
        known: &HashSet<(u64, u64)>,
    ) -> Option<usize> {
        let journal = self.journal().filter(|_| s.expiry_secs > 0);
        let mut delivery = session.delivery();
        if session.is_ended() {
            return None;
        }
        let early = delivery.take_queued();
        let mut merged = merge_outbound(handed, early, known);
        number_outbound(&mut merged, journal.is_some());
        if let Some(journal) = journal {
            delivery.set_log(Some((session.id, merged.len() as u64)));
            session.set_logged(true);
            let at_unix_ms = crate::journal::unix_ms_now();
            delivery.set_offline_since_unix_ms(Some(at_unix_ms));
            journal.append(&Record::SessionOpen {
                session: session.id,
                client_id: session.client_id.to_string(),
                expiry_secs: s.expiry_secs,
            });
            journal.append(&Record::SessionOffline {
                session: session.id,
                at_unix_ms,
            });
            journal_outbound(journal, session.id, &merged, &s.qos2_in);
        }
        let messages = merged.len();
        delivery.restore_outbound(merged);
        Some(messages)
    }

    /// Ends `prepared` here if it is still this node's offline session of its client id
    /// (the handover it was made for did not happen: the CONNECT starts afresh).
    pub fn drop_prepared(&self, prepared: &Prepared) {
        let session = &prepared.session;
        let current = self.session(&session.client_id);
        if current.is_some_and(|c| Arc::ptr_eq(&c, session)) && !session.delivery().is_online() {
            self.drop_superseded(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::session::delivery::RestoredStage;
    use tern_codec::{PacketId, Publish, QoS};

    fn restored(n: u8, identity: Option<(u64, u64)>, stage: RestoredStage) -> Restored {
        let message = Message::new(Publish::new("t", vec![n]), Instant::now(), None);
        if let Some(id) = identity {
            let _ = message.set_identity(id);
        }
        Restored {
            message,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            group: None,
            seq: 0,
            stage,
        }
    }

    fn payloads(merged: &[Restored]) -> Vec<u8> {
        merged
            .iter()
            .map(|r| r.message.publish().payload()[0])
            .collect()
    }

    /// The old node's messages first, in its order and stages; the early session's copies
    /// of them dropped; the rest in the early session's order; unidentified ones kept.
    #[test]
    fn merge_drops_the_overlap_and_keeps_order() {
        let sent = RestoredStage::Sent(PacketId::new(7).expect("non-zero"));
        let handed = vec![
            restored(1, Some((1, 10)), sent),
            restored(2, Some((2, 5)), RestoredStage::Queued),
            restored(3, Some((1, 11)), RestoredStage::Queued),
            restored(4, None, RestoredStage::Queued),
        ];
        let early = vec![
            restored(2, Some((2, 5)), RestoredStage::Queued),
            restored(3, Some((1, 11)), RestoredStage::Queued),
            restored(5, Some((1, 12)), RestoredStage::Queued),
            restored(6, None, RestoredStage::Queued),
            restored(7, Some((2, 6)), RestoredStage::Queued),
        ];
        let merged = merge_outbound(handed, early, &HashSet::new());
        assert_eq!(payloads(&merged), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(merged[0].stage, sent, "packet id and stage kept");
    }

    #[test]
    fn merge_with_one_side_empty_is_that_side() {
        let early = vec![
            restored(1, Some((1, 1)), RestoredStage::Queued),
            restored(2, None, RestoredStage::Queued),
        ];
        let none = HashSet::new();
        assert_eq!(payloads(&merge_outbound(Vec::new(), early, &none)), [1, 2]);
        let handed = vec![restored(3, Some((1, 3)), RestoredStage::Queued)];
        assert_eq!(payloads(&merge_outbound(handed, Vec::new(), &none)), [3]);
    }

    /// Messages the old node was handed after the prepare and delivered (acknowledged,
    /// so not handed over) are not delivered again.
    #[test]
    fn merge_drops_what_the_old_node_delivered_meanwhile() {
        let handed = vec![restored(3, Some((1, 3)), RestoredStage::Queued)];
        let early = vec![
            restored(1, Some((1, 1)), RestoredStage::Queued),
            restored(2, Some((1, 2)), RestoredStage::Queued),
            restored(3, Some((1, 3)), RestoredStage::Queued),
            restored(4, Some((1, 4)), RestoredStage::Queued),
        ];
        let known: HashSet<(u64, u64)> = [(1, 1), (1, 2), (1, 3)].into();
        assert_eq!(payloads(&merge_outbound(handed, early, &known)), [3, 4]);
    }
}
