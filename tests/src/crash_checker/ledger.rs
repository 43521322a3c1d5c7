//! What the checker saw, as plain data: every message sent (and when), every
//! acknowledgement the broker gave for it, every SUBACK, every delivery, and events such as
//! a session found missing after a restart. The publisher and subscriber tasks write it;
//! [`super::verdict`] reads it at the end. No I/O, no judgement.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tern_codec::QoS;

/// A message of the checker: publisher number and sequence number (from 0, per publisher).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    /// Which publisher sent it.
    pub publisher: u32,
    /// Its place in that publisher's sequence.
    pub seq: u64,
}

impl MessageId {
    /// The payload carrying this id: `"<publisher>:<seq>"`.
    pub fn payload(self) -> Vec<u8> {
        format!("{}:{}", self.publisher, self.seq).into_bytes()
    }

    /// The id a payload carries, if it is one of the checker's.
    pub fn parse(payload: &[u8]) -> Option<MessageId> {
        let text = std::str::from_utf8(payload).ok()?;
        let (publisher, seq) = text.split_once(':')?;
        Some(MessageId {
            publisher: publisher.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// One message sent by a publisher.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its QoS (1 or 2).
    pub qos: QoS,
    /// Whether it was published with RETAIN.
    pub retain: bool,
    /// When it was first sent: a subscription acknowledged before this must receive it.
    pub first_sent: Instant,
    /// When the broker acknowledged it (PUBACK 0x00, or PUBREC < 0x80 for QoS 2).
    pub acked: Option<Instant>,
    /// The broker run it was first sent to (0: the first start).
    pub run: u32,
}

/// One subscriber's subscription and what it received.
#[derive(Debug, Clone)]
pub struct SubscriberLog {
    /// Its client identifier.
    pub client_id: String,
    /// The maximum QoS it subscribed with.
    pub max_qos: QoS,
    /// When its first SUBACK (granted) arrived: every message first sent after it is owed
    /// to this subscriber, whatever happened to the session later.
    pub subscribed: Option<Instant>,
    /// Deliveries in arrival order, after the subscriber's own QoS 2 duplicate filtering
    /// by packet id (a PUBLISH resent with a packet id still awaiting PUBREL is not a new
    /// delivery, [MQTT-4.3.3]).
    pub deliveries: Vec<MessageId>,
    /// How each delivery arrived, index for index with `deliveries`.
    pub arrivals: Vec<Arrival>,
    /// QoS 2 PUBRELs received: (packet id, broker run, deliveries recorded before it).
    pub releases: Vec<(u16, u32, usize)>,
    /// Reconnects that found no session although a SUBACK had been received.
    pub sessions_lost: u32,
}

/// How one delivery arrived: for explaining a duplicate.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Its packet id (0 for QoS 0).
    pub packet_id: u16,
    /// Its DUP flag.
    pub dup: bool,
    /// Which broker run sent it (0: the first start).
    pub run: u32,
}

/// Everything the checker recorded.
#[derive(Debug, Default)]
pub struct LedgerData {
    /// Messages by id.
    pub sent: HashMap<MessageId, Sent>,
    /// Acknowledgements with an error reason code (e.g. 0x97 over the disk budget): not
    /// acknowledged, so not owed.
    pub refused: u64,
    /// Subscribers, by index.
    pub subscribers: Vec<SubscriberLog>,
    /// Retained topics: for each retained publisher, its topic.
    pub retained_topics: HashMap<u32, String>,
    /// Reconnects of a publisher that found no session.
    pub publisher_sessions_lost: u32,
}

/// The shared, locked [`LedgerData`].
#[derive(Debug, Default)]
pub struct Ledger {
    data: Mutex<LedgerData>,
}

impl Ledger {
    /// The data, locked (briefly: never across an `.await`).
    pub fn lock(&self) -> MutexGuard<'_, LedgerData> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A publisher is about to send `id` for the first time.
    pub(crate) fn sent(&self, id: MessageId, qos: QoS, retain: bool, run: u32) {
        self.lock().sent.insert(
            id,
            Sent {
                qos,
                retain,
                first_sent: Instant::now(),
                acked: None,
                run,
            },
        );
    }

    /// The broker acknowledged `id`.
    pub(crate) fn acked(&self, id: MessageId) {
        if let Some(sent) = self.lock().sent.get_mut(&id) {
            sent.acked.get_or_insert_with(Instant::now);
        }
    }

    /// Adds a subscriber; returns its index.
    pub(crate) fn add_subscriber(&self, client_id: &str, max_qos: QoS) -> usize {
        let mut data = self.lock();
        data.subscribers.push(SubscriberLog {
            client_id: client_id.to_owned(),
            max_qos,
            subscribed: None,
            deliveries: Vec::new(),
            arrivals: Vec::new(),
            releases: Vec::new(),
            sessions_lost: 0,
        });
        data.subscribers.len() - 1
    }

    /// Subscriber `index` received `id`.
    pub(crate) fn delivered(&self, index: usize, id: MessageId, arrival: Arrival) {
        let mut data = self.lock();
        data.subscribers[index].deliveries.push(id);
        data.subscribers[index].arrivals.push(arrival);
    }

    /// Subscriber `index` received a PUBREL for `packet_id` from broker run `run`.
    pub(crate) fn released(&self, index: usize, packet_id: u16, run: u32) {
        let mut data = self.lock();
        let sub = &mut data.subscribers[index];
        let seen = sub.deliveries.len();
        sub.releases.push((packet_id, run, seen));
    }

    /// Total deliveries so far (to see whether the drain still makes progress).
    pub fn delivery_count(&self) -> usize {
        self.lock()
            .subscribers
            .iter()
            .map(|s| s.deliveries.len())
            .sum()
    }
}
