//! The broker's state and the journal's checkpoints: [`Broker::checkpoint`] writes every
//! persistent session, its subscriptions, outbound messages and inbound QoS 2 ids, and
//! every retained message as records ([`crate::journal::snapshot`]) and lets the log
//! before the checkpoint go; [`Broker::restore`] puts a recovered
//! [`crate::journal::state::State`] back as live (offline) sessions, trie entries and
//! retained messages, before the listeners open.
//!
//! A checkpoint reads the live state under the same locks the records are appended under,
//! one piece at a time: the log position taken before it starts is the cut, every record
//! before it is in the checkpoint, and records after it are replayed onto it at recovery
//! (replay converges, see `journal/state.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tern_codec::{LastWill, PacketId, QoS, SubscriptionOptions};
use tokio::time::Instant;

use super::Broker;
use crate::journal::record::{Record, StoredMessage};
use crate::journal::snapshot::{self, SnapshotError};
use crate::journal::state::{OutStage, SessionState, State};
use crate::journal::{self, unix_ms_now};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::delivery::{Restored, RestoredStage};
use crate::session::{Session, SubscriptionRecord};

/// What one checkpoint wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checkpointed {
    /// Persistent sessions written.
    pub sessions: usize,
    /// Records written.
    pub records: usize,
    /// Size of the checkpoint file.
    pub bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// What [`Broker::restore`] put back.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Sessions restored.
    pub sessions: usize,
    /// Sessions that had expired while the broker was down (dropped).
    pub expired_sessions: usize,
    /// Outbound messages restored.
    pub messages: usize,
    /// Retained messages restored.
    pub retained: usize,
    /// Stored messages that did not decode (dropped, logged).
    pub bad_messages: usize,
    /// Wills recovered: pending again, or due (their session had expired).
    pub wills: usize,
    /// The sessions that expired while the broker was down, with their wills (due now),
    /// for [`Broker::publish_recovered_wills`].
    pub expired: Vec<Expired>,
}

/// A recovered session that had expired while the broker was down.
#[derive(Debug)]
pub struct Expired {
    /// Its client id.
    pub client_id: Arc<str>,
    /// Its will, due now ([MQTT-3.1.3-9]: at the session's end at the latest).
    pub will: Option<LastWill>,
}

impl Broker {
    /// Writes a checkpoint of the persistent state and recycles the log before it. Blocking
    /// (file I/O): run it off the async workers. `Ok(None)` without persistence.
    ///
    /// # Errors
    /// [`SnapshotError`]: the checkpoint could not be written (the previous one and the
    /// whole log stay in place).
    pub fn checkpoint(&self) -> Result<Option<Checkpointed>, SnapshotError> {
        let Some(journal) = self.journal() else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let cut = journal.appended();
        // From here a record that refers to a body stored before the cut stores it again.
        // One that checked just before may still refer to an older body: the log is kept
        // back to the previous checkpoint's cut, whose bodies recovery reads too.
        let previous_cut = journal.set_cut(cut);
        let now = Instant::now();
        let mut records = Vec::new();
        let mut bodies = HashSet::new();
        let mut sessions = 0;
        for session in self.sessions() {
            if self.session_records(&session, now, &mut bodies, &mut records) {
                sessions += 1;
            }
        }
        for message in self.inner.retained.all() {
            if crate::config::is_sys_topic(message.topic()) {
                continue;
            }
            records.push(Record::Retain {
                topic: message.topic().to_owned(),
                message: Some(journal::stored(&message, now)),
            });
        }
        let count = records.len();
        let bytes = snapshot::write(journal.dir(), cut, records.into_iter())?;
        journal.set_checkpoint_bytes(bytes);
        if let Err(e) = journal.release_before(previous_cut) {
            tracing::warn!(error = %e, "log segments before the checkpoint not released");
        }
        Ok(Some(Checkpointed {
            sessions,
            records: count,
            bytes,
            elapsed: started.elapsed(),
        }))
    }

    /// Appends the records of one persistent session to `out`; false if it is not one.
    fn session_records(
        &self,
        session: &Arc<Session>,
        now: Instant,
        bodies: &mut HashSet<u64>,
        out: &mut Vec<Record>,
    ) -> bool {
        let id = session.id;
        {
            let delivery = session.delivery();
            if delivery.log_id().is_none() || session.is_ended() {
                return false;
            }
            out.push(Record::SessionOpen {
                session: id,
                client_id: session.client_id.to_string(),
                expiry_secs: session.expiry_secs(),
            });
            if let Some(at_unix_ms) = delivery.offline_since_unix_ms() {
                out.push(Record::SessionOffline {
                    session: id,
                    at_unix_ms,
                });
            }
            if let Some(will) = delivery.logged_will() {
                out.push(Record::Will {
                    session: id,
                    will: Some(will.clone()),
                });
            }
            if let Some(journal) = self.journal() {
                delivery.log_records(journal, now, bodies, out);
            }
        }
        out.extend(subscription_records(session, id));
        let qos2: Vec<u16> = session.incoming_qos2().iter().collect();
        for packet_id in qos2 {
            out.push(Record::Qos2Received {
                session: id,
                packet_id,
            });
        }
        true
    }

    /// Puts recovered state back (before the listeners open, before the journal is
    /// attached, so nothing is logged again). Sessions come back offline; their expiry
    /// counts from when they went offline, or from now for those connected at the crash.
    pub fn restore(&self, mut state: State) -> RestoreReport {
        let mut done = RestoreReport::default();
        let inner = &self.inner;
        inner.next_session_id.fetch_max(
            state.max_session_id + 1,
            std::sync::atomic::Ordering::Relaxed,
        );
        let now = Instant::now();
        let now_unix_ms = unix_ms_now();
        for (topic, stored) in state.retained {
            match decode(&stored, now, now_unix_ms) {
                Some(message) => {
                    inner.retained.restore(message);
                    Metrics::add(&inner.metrics.retained_messages, 1);
                    done.retained += 1;
                }
                None => {
                    tracing::error!(%topic, "stored retained message does not decode: dropped");
                    done.bad_messages += 1;
                }
            }
        }
        let mut sessions: Vec<_> = state.sessions.into_iter().collect();
        sessions.sort_by_key(|(id, _)| *id);
        // Wills of sessions that expired while the broker was down go out once every
        // session (and so every subscriber) is back ([MQTT-3.1.3-9]: at the session's end);
        // in a cluster, once the node has rejoined.
        let mut expired = Vec::new();
        let mut bodies = Bodies {
            stored: std::mem::take(&mut state.bodies),
            decoded: HashMap::new(),
            now,
            now_unix_ms,
        };
        for (id, s) in sessions {
            let offline_ms = s.offline_at_unix_ms.unwrap_or(now_unix_ms);
            let gone_secs = now_unix_ms.saturating_sub(offline_ms) / 1000;
            if s.expiry_secs != u32::MAX && gone_secs >= u64::from(s.expiry_secs) {
                done.expired_sessions += 1;
                let will = s.will.as_ref().and_then(|(w, d)| recovered_will(w, *d, 0));
                expired.push(Expired {
                    client_id: Arc::from(s.client_id.as_str()),
                    will: will.map(|(will, _)| will),
                });
                continue;
            }
            let remaining = if s.expiry_secs == u32::MAX {
                u32::MAX
            } else {
                s.expiry_secs - gone_secs as u32
            };
            self.restore_session(id, s, remaining, gone_secs, &mut bodies, &mut done);
        }
        done.wills += expired.iter().filter(|e| e.will.is_some()).count();
        done.expired = expired;
        done
    }

    /// Publishes the wills of the sessions [`Broker::restore`] found expired (due since
    /// the broker was down). Call once the journal is attached, so that what they queue for
    /// persistent subscribers is logged, and in a cluster once the node has rejoined (with
    /// only the sessions no other node owns: [`crate::cluster`]).
    pub fn publish_recovered_wills(&self, expired: Vec<Expired>) {
        let now = Instant::now();
        for will in expired.into_iter().filter_map(|e| e.will) {
            let message = Message::new(super::will::to_publish(will), now, None);
            Metrics::add(&self.inner.metrics.wills_published, 1);
            self.publish(&message, &mut crate::router::RouteScratch::default(), now);
        }
    }

    /// Keeps the sessions [`Broker::restore`] found expired until the node has rejoined
    /// its cluster ([`Broker::take_recovered_wills`]), instead of publishing their wills.
    pub fn defer_recovered_wills(&self, expired: Vec<Expired>) {
        let kept = self.inner.recovered_expired.lock();
        kept.unwrap_or_else(|p| p.into_inner()).extend(expired);
    }

    /// The sessions kept by [`Broker::defer_recovered_wills`], taken out.
    pub fn take_recovered_wills(&self) -> Vec<Expired> {
        let kept = self.inner.recovered_expired.lock();
        std::mem::take(&mut *kept.unwrap_or_else(|p| p.into_inner()))
    }

    fn restore_session(
        &self,
        id: u64,
        s: SessionState,
        remaining_secs: u32,
        gone_secs: u64,
        bodies: &mut Bodies,
        done: &mut RestoreReport,
    ) {
        let offline_ms = s.offline_at_unix_ms.unwrap_or(bodies.now_unix_ms);
        let limits = self.limits();
        let client_id: Arc<str> = Arc::from(s.client_id.as_str());
        let session = Arc::new(Session::new(
            id,
            client_id.clone(),
            limits.max_queued_messages,
            limits.max_queued_bytes,
            self.budget().clone(),
        ));
        session.set_expiry_secs(s.expiry_secs);
        let generation = session.next_generation();
        let outbound = restored_outbound(&s, bodies, done);
        {
            let mut delivery = session.delivery();
            delivery.set_log(Some((id, s.max_seq)));
            delivery.set_offline_since_unix_ms(Some(offline_ms));
            delivery.set_logged_will(s.will.clone());
            session.set_logged(true);
            done.messages += outbound.len();
            delivery.restore_outbound(outbound);
        }
        for &packet_id in &s.qos2_in {
            session.incoming_qos2().insert(packet_id);
        }
        debug_assert_eq!(*client_id, *session.client_id);
        if let Some(old) = self.register(session.clone()) {
            tracing::warn!(client_id = %old.client_id, "two recovered sessions for one client id: the newer kept");
        } else {
            Metrics::add(&self.inner.metrics.sessions, 1);
        }
        for (filter, (options, subscription_id)) in &s.subscriptions {
            let Ok(options) = SubscriptionOptions::from_v5_byte(*options) else {
                continue;
            };
            let record = SubscriptionRecord {
                options,
                subscription_id: (*subscription_id != 0).then_some(*subscription_id),
            };
            // The ACL is re-derived when the client comes back (its user name is known
            // then); until then it holds what it held before the restart.
            self.subscribe(&session, filter, record, None, 0);
        }
        done.sessions += 1;
        // A will pending at the crash (or of a connection open then) waits out what is left
        // of its delay, as if the connection had closed when the broker went down.
        let will = s
            .will
            .as_ref()
            .and_then(|(w, delay)| recovered_will(w, *delay, gone_secs));
        if will.is_some() {
            done.wills += 1;
        }
        self.went_offline(&session, generation, will, remaining_secs);
    }
}

/// A stored will as a live one, with what is left of its delay after `gone_secs`.
pub(super) fn recovered_will(
    stored: &StoredMessage,
    delay_secs: u32,
    gone_secs: u64,
) -> Option<(LastWill, Duration)> {
    let Some(publish) = stored.decode_publish() else {
        tracing::error!("stored will does not decode: dropped");
        return None;
    };
    let left_secs = u64::from(delay_secs).saturating_sub(gone_secs);
    Some((
        super::will::from_publish(&publish, delay_secs),
        Duration::from_secs(left_secs),
    ))
}

/// The recovered message bodies, each decoded once into the message every session that
/// queued it shares again.
pub(super) struct Bodies {
    stored: HashMap<u64, StoredMessage>,
    decoded: HashMap<u64, Arc<Message>>,
    /// The restore's clock.
    now: Instant,
    now_unix_ms: u64,
}

impl Bodies {
    /// The bodies of `stored`, to be decoded as received `now`.
    pub(super) fn new(stored: HashMap<u64, StoredMessage>, now: Instant) -> Bodies {
        Bodies {
            stored,
            decoded: HashMap::new(),
            now,
            now_unix_ms: unix_ms_now(),
        }
    }

    fn message(&mut self, id: u64) -> Option<Arc<Message>> {
        if let Some(message) = self.decoded.get(&id) {
            return Some(message.clone());
        }
        let message = decode(self.stored.get(&id)?, self.now, self.now_unix_ms)?;
        message
            .journal_body
            .id
            .store(id, std::sync::atomic::Ordering::Relaxed);
        self.decoded.insert(id, message.clone());
        Some(message)
    }
}

/// The outbound messages of a recovered session, decoded, in order.
pub(super) fn restored_outbound(
    s: &SessionState,
    bodies: &mut Bodies,
    done: &mut RestoreReport,
) -> Vec<Restored> {
    let mut out = Vec::with_capacity(s.outbound.len());
    for entry in s.outbound.values() {
        let r = &entry.record;
        let Some(message) = bodies.message(r.body) else {
            done.bad_messages += 1;
            tracing::error!(client_id = %s.client_id, seq = r.seq, body = r.body, "stored message missing or does not decode: dropped");
            continue;
        };
        let id = |id: u16| PacketId::new(id);
        let stage = match entry.stage {
            OutStage::Queued => Some(RestoredStage::Queued),
            OutStage::Sent(p) => id(p).map(RestoredStage::Sent),
            OutStage::Released(p) => id(p).map(RestoredStage::Released),
        };
        let Some(stage) = stage else { continue };
        out.push(Restored {
            message,
            qos: if r.qos == 2 {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            },
            retain: r.retain,
            subscription_ids: r.subscription_ids.clone(),
            group: r.group.as_deref().map(Arc::from),
            seq: r.seq,
            stage,
        });
    }
    out
}

/// A stored message as a live one, received as long ago as it was.
fn decode(stored: &StoredMessage, now: Instant, now_unix_ms: u64) -> Option<Arc<Message>> {
    let publish = stored.decode_publish()?;
    let age = Duration::from_millis(now_unix_ms.saturating_sub(stored.received_unix_ms));
    let received_at = now.checked_sub(age).unwrap_or(now);
    let origin = (stored.origin_session != 0).then_some(stored.origin_session);
    Some(Message::new(publish, received_at, origin))
}

/// The journal records of `session`'s subscriptions (`id`: its journal id): what a
/// checkpoint and a cluster handover write for them.
pub(super) fn subscription_records(session: &Session, id: u64) -> impl Iterator<Item = Record> {
    session
        .subscription_snapshot()
        .into_iter()
        .map(move |(filter, record)| Record::Subscribe {
            session: id,
            filter: filter.to_string(),
            options: record.options.to_v5_byte(),
            subscription_id: record.subscription_id.unwrap_or(0),
        })
}
