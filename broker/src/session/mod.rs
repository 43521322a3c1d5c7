//! Sessions: the state of one client identifier that outlives its connections.
//!
//! A [`Session`] is shared (`Arc`) between the registry, the router (its subscriptions point
//! at it) and the connection attached to it. Its parts sit behind separate small locks so
//! that a publisher fanning out touches only [`delivery::Delivery`]; the subscription list
//! and the inbound QoS 2 state are touched only by the session's own connection.

pub mod delivery;
pub mod inflight;
mod link;
mod logged;
pub mod machine;
pub mod packet_ids;
pub mod subscriptions;
mod write;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tern_codec::SubscriptionOptions;

use self::delivery::Delivery;
use self::packet_ids::PacketIdSet;
use self::subscriptions::SubscriptionSet;
use crate::delivery::budget::ByteBudget;

/// A shared subscription group as a session refers to it: the whole filter it was
/// subscribed with (`$share/{group}/{filter}`). Plain data: the router resolves it to the
/// group's members ([`crate::router::Router::shared_group`]) when a leaving member's
/// messages go to another.
pub type SharedKey = Arc<str>;

/// One subscription as the session remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Options granted.
    pub options: SubscriptionOptions,
    /// Subscription Identifier (5.0).
    pub subscription_id: Option<u32>,
}

/// The state of one client identifier.
#[derive(Debug)]
pub struct Session {
    /// Unique per session object (a clean start makes a new one), for No Local and merging.
    pub id: u64,
    /// The client identifier.
    pub client_id: Arc<str>,
    /// What publishers need: the attached connection, the inflight window, the queue.
    delivery: Mutex<Delivery>,
    /// Subscriptions, keyed by the full filter (`$share/...` included).
    subscriptions: Mutex<SubscriptionSet>,
    /// Inbound QoS 2 packet ids received and not yet released by PUBREL ([MQTT-4.3.3-9]).
    incoming_qos2: Mutex<PacketIdSet>,
    /// Generation of the connection that attached last; bumped on every attach.
    generation: AtomicU64,
    /// Session Expiry Interval in force, in seconds (u32::MAX: never).
    expiry_secs: AtomicU32,
    /// Set once the session has ended; a late attach must not revive it.
    ended: AtomicBool,
    /// Set when the session ended because a cluster node took it over with its state: the
    /// session goes on there, so the close of its connection here cancels a delayed will
    /// as a resume would.
    handed_over: AtomicBool,
    /// Whether the session is persistent and logged in the journal (set by the broker
    /// under the delivery lock, with [`delivery::Delivery::set_log`]).
    logged: AtomicBool,
    /// Bytes read from and written to the attached connection (since it attached), for the
    /// admin API. Here rather than next to the connection's output buffer: there they
    /// would move every connection's writer into a larger allocation class.
    bytes: [AtomicU64; 2],
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (no multi-step
    // invariants span a panic point), so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Session {
    /// A new, empty session, holding bytes for its client out of `budget`.
    pub fn new(
        id: u64,
        client_id: Arc<str>,
        max_queued_messages: usize,
        max_queued_bytes: usize,
        budget: Arc<ByteBudget>,
    ) -> Session {
        Session {
            id,
            client_id,
            delivery: Mutex::new(Delivery::new(max_queued_messages, max_queued_bytes, budget)),
            subscriptions: Mutex::new(SubscriptionSet::default()),
            incoming_qos2: Mutex::new(PacketIdSet::default()),
            generation: AtomicU64::new(0),
            expiry_secs: AtomicU32::new(0),
            ended: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            logged: AtomicBool::new(false),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Counts `n` bytes read (`written` false) or written by the attached connection.
    #[inline]
    pub fn count_bytes(&self, written: bool, n: u64) {
        self.bytes[usize::from(written)].fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes read from and written to the attached connection since it attached.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes[0].load(Ordering::Relaxed),
            self.bytes[1].load(Ordering::Relaxed),
        )
    }

    /// Starts counting bytes for a newly attached connection.
    pub fn reset_bytes(&self) {
        for counter in &self.bytes {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the session is persistent and logged in the journal.
    pub fn is_logged(&self) -> bool {
        self.logged.load(Ordering::Acquire)
    }

    /// Marks the session logged or not (the broker does, with the delivery's log).
    pub fn set_logged(&self, logged: bool) {
        self.logged.store(logged, Ordering::Release);
    }

    /// Locks the delivery state. Never held across `.await`.
    pub fn delivery(&self) -> MutexGuard<'_, Delivery> {
        lock(&self.delivery)
    }

    /// Locks the subscription list.
    pub fn subscriptions(&self) -> MutexGuard<'_, SubscriptionSet> {
        lock(&self.subscriptions)
    }

    /// A copy of the subscription list, to work through without holding its lock.
    pub fn subscription_snapshot(&self) -> Vec<(Arc<str>, SubscriptionRecord)> {
        self.subscriptions()
            .iter()
            .map(|(filter, record)| (filter.clone(), *record))
            .collect()
    }

    /// Locks the inbound QoS 2 state.
    pub fn incoming_qos2(&self) -> MutexGuard<'_, PacketIdSet> {
        lock(&self.incoming_qos2)
    }

    /// Starts a new connection generation and returns it.
    pub fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The generation of the connection attached last.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The Session Expiry Interval in force.
    pub fn expiry_secs(&self) -> u32 {
        self.expiry_secs.load(Ordering::Acquire)
    }

    /// Sets the Session Expiry Interval.
    pub fn set_expiry_secs(&self, secs: u32) {
        self.expiry_secs.store(secs, Ordering::Release);
    }

    /// Marks the session ended; returns whether it was live until now.
    pub fn mark_ended(&self) -> bool {
        !self.ended.swap(true, Ordering::AcqRel)
    }

    /// Whether the session has ended.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Marks the session as handed over to another cluster node (before it ends here).
    pub fn mark_handed_over(&self) {
        self.handed_over.store(true, Ordering::Release);
    }

    /// Whether the session went on on another cluster node.
    pub fn is_handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    /// What every client costs while idle, shared by its connection, the registry and the
    /// trie: jemalloc puts the `Arc` (16 bytes of counts and the session) in the 256-byte
    /// class; one byte more than 240 costs 64 per session. For this the flow state behind
    /// [`delivery::Delivery`] is boxed at first need, the inbound QoS 2 ids at the first,
    /// the subscription list is a boxed slice and the link keeps its own user name.
    #[test]
    fn an_idle_session_is_small() {
        let session = std::mem::size_of::<super::Session>();
        eprintln!(
            "session {session} B, delivery {} B, link {} B",
            std::mem::size_of::<super::delivery::Delivery>(),
            std::mem::size_of::<super::delivery::Link>(),
        );
        assert!(session <= 240, "the session grew to {session} bytes");
    }
}
