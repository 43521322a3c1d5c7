//! The outbound QoS 1/2 window of one session: packet identifier allocation and the
//! messages sent but not yet acknowledged, in the order they were sent.

use std::collections::VecDeque;
use std::num::NonZeroU16;
use std::sync::Arc;

use tern_codec::{PacketId, QoS};

use crate::message::Message;
use crate::session::SharedKey;

/// Where a QoS 1/2 delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// QoS 2: PUBREC received, PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// One unacknowledged outbound message.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// The packet identifier it was sent with.
    pub packet_id: PacketId,
    /// The message.
    pub message: Arc<Message>,
    /// Delivery QoS (1 or 2).
    pub qos: QoS,
    /// RETAIN flag it was sent with.
    pub retain: bool,
    /// Subscription identifiers it was sent with.
    pub subscription_ids: Vec<u32>,
    /// Progress.
    pub stage: Stage,
    /// The shared group it came through, if any.
    pub group: Option<SharedKey>,
    /// Its number in the session's journal (0: not logged).
    pub seq: u64,
}

/// The inflight window: entries in allocation order, so identifiers in use always lie in
/// the circular range from the oldest entry's identifier to `next_id`.
#[derive(Debug, Default)]
pub struct Window {
    entries: VecDeque<Inflight>,
    next_id: u16,
    /// The id sequence has caught up with the oldest entry: check candidates fully.
    wrapped: bool,
}

impl Window {
    /// An empty window (`const`: the empty flow state is a `static`).
    pub const fn new() -> Window {
        Window {
            entries: VecDeque::new(),
            next_id: 0,
            wrapped: false,
        }
    }

    /// Number of unacknowledged messages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Allocates an identifier not in use. Ids are handed out in sequence and entries stay
    /// in allocation order, so the next id can only collide once the sequence has wrapped
    /// round to the oldest entry; from then on (until the window empties) every candidate
    /// is checked against the whole window.
    ///
    /// Call only while `len() < 65535`.
    pub fn allocate_id(&mut self) -> PacketId {
        loop {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            let candidate = self.next_id;
            if self
                .entries
                .front()
                .is_some_and(|oldest| oldest.packet_id.get() == candidate)
            {
                self.wrapped = true;
            }
            let collides =
                self.wrapped && self.entries.iter().any(|e| e.packet_id.get() == candidate);
            if !collides {
                // `candidate` is in 1..=65535 by construction.
                return NonZeroU16::new(candidate).unwrap_or(NonZeroU16::MIN);
            }
        }
    }

    /// Puts back a recovered entry with the packet id it had: ids are then checked for
    /// collisions as after a wrap.
    pub fn restore(&mut self, entry: Inflight) {
        self.wrapped = true;
        self.entries.push_back(entry);
    }

    /// Records a sent message.
    pub fn push(&mut self, entry: Inflight) {
        self.entries.push_back(entry);
    }

    /// The entry with `packet_id`, searching from the oldest (acks mostly come in order).
    pub fn get(&self, packet_id: PacketId) -> Option<&Inflight> {
        self.entries.iter().find(|e| e.packet_id == packet_id)
    }

    /// The entry with `packet_id`, searching from the oldest (acks mostly come in order).
    pub fn get_mut(&mut self, packet_id: PacketId) -> Option<&mut Inflight> {
        self.entries.iter_mut().find(|e| e.packet_id == packet_id)
    }

    /// Removes and returns the entry with `packet_id`.
    pub fn remove(&mut self, packet_id: PacketId) -> Option<Inflight> {
        let index = self.entries.iter().position(|e| e.packet_id == packet_id)?;
        let entry = self.entries.remove(index);
        if self.entries.is_empty() {
            self.wrapped = false;
        }
        entry
    }

    /// All entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Inflight> {
        self.entries.iter()
    }

    /// Removes every entry.
    pub fn drain(&mut self) -> impl Iterator<Item = Inflight> + '_ {
        self.wrapped = false;
        self.entries.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn entry(window: &mut Window) -> Inflight {
        Inflight {
            packet_id: window.allocate_id(),
            message: Message::broker_made("t", "p", false, Instant::now()),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            stage: Stage::Published,
            group: None,
            seq: 0,
        }
    }

    #[test]
    fn ids_are_sequential_nonzero_and_wrap() {
        let mut window = Window::default();
        let e = entry(&mut window);
        assert_eq!(e.packet_id.get(), 1);
        window.push(e);
        // Ack it and run the counter round the whole range: 0 is never handed out.
        window.remove(NonZeroU16::MIN);
        for _ in 0..70_000 {
            assert_ne!(window.allocate_id().get(), 0);
        }
    }

    #[test]
    fn never_reuses_an_id_in_flight_after_wrap() {
        let mut window = Window::default();
        let oldest = entry(&mut window);
        let oldest_id = oldest.packet_id;
        window.push(oldest);
        // Allocate and ack the rest of the range so the counter comes back round.
        for _ in 0..65_534 {
            let e = entry(&mut window);
            let id = e.packet_id;
            window.push(e);
            window.remove(id);
        }
        let next = entry(&mut window);
        assert_ne!(
            next.packet_id, oldest_id,
            "the id of the oldest unacknowledged message is in use"
        );
        let next_id = next.packet_id;
        window.push(next);
        // And the one after that must avoid both.
        let after = window.allocate_id();
        assert_ne!(after, oldest_id);
        assert_ne!(after, next_id);
    }
}
