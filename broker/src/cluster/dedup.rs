//! Dropping the second copy of a message. A node subscribes once per distinct filter, so a
//! message that matches two of its filters arrives twice; the first copy is routed through
//! the whole trie (one delivery per client, as on one node) and later copies are dropped
//! here, by origin node and sequence number. The check and the routing of first copies run
//! under a lock per (origin, topic) ([`super::ordered`]), which keeps each topic's order.
//!
//! Each origin has a window of the last [`WINDOW`] sequence numbers; a number older than the
//! window counts as seen (its first copy was routed long ago, or would be seconds late).
//! This module owns the windows only.

use std::collections::HashMap;
use std::sync::Mutex;

/// Sequence numbers remembered per origin (512 KiB each): seconds of traffic, since each
/// filter's subscription is read by its own task and one can lag behind the others by
/// tens of thousands of messages under load (a window of 65,536 lost 20 % of tern-bench's
/// cross-node p2p QoS 1 run as "seen").
const WINDOW: u64 = 1 << 22;
const WORDS: usize = (WINDOW / 64) as usize;

/// The windows of every origin node seen.
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    origins: Mutex<HashMap<u64, Window>>,
}

#[derive(Debug)]
struct Window {
    /// The highest sequence number seen.
    top: u64,
    /// One bit per sequence number in `top - WINDOW + 1 ..= top`, at `seq % WINDOW`.
    bits: Box<[u64; WORDS]>,
}

impl Dedup {
    /// Keeps in `items` only first copies (`key` gives an item's origin and sequence, in
    /// order), under one lock for all of them (a batch); returns how many were dropped.
    pub(crate) fn retain_first<T>(
        &self,
        items: &mut Vec<T>,
        key: impl Fn(&T) -> (u64, u64),
    ) -> usize {
        let before = items.len();
        let Some((origin, _)) = items.first().map(&key) else {
            return 0;
        };
        let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        // A batch comes from one node: its window is looked up once, not per item.
        let mut window = origins.remove(&origin).unwrap_or_else(Window::new);
        items.retain(|item| {
            let (from, sequence) = key(item);
            if from == origin {
                window.first_sight(sequence)
            } else {
                let other = origins.entry(from).or_insert_with(Window::new);
                other.first_sight(sequence)
            }
        });
        origins.insert(origin, window);
        before - items.len()
    }
}

impl Dedup {
    /// Whether (`origin`, `sequence`) was seen already (nothing is marked).
    pub(crate) fn seen(&self, origin: u64, sequence: u64) -> bool {
        let origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        origins.get(&origin).is_some_and(|w| w.has_seen(sequence))
    }
}

impl Window {
    fn has_seen(&self, seq: u64) -> bool {
        seq <= self.top && (self.top - seq >= WINDOW || self.is_set(seq))
    }

    fn new() -> Window {
        Window {
            top: 0,
            bits: Box::new([0; WORDS]),
        }
    }

    fn first_sight(&mut self, seq: u64) -> bool {
        if seq > self.top {
            if seq - self.top >= WINDOW {
                self.bits.fill(0);
            } else {
                for s in self.top + 1..=seq {
                    self.clear(s);
                }
            }
            self.top = seq;
            self.set(seq);
            return true;
        }
        if self.top - seq >= WINDOW || self.is_set(seq) {
            return false;
        }
        self.set(seq);
        true
    }

    fn index(seq: u64) -> (usize, u64) {
        let bit = seq % WINDOW;
        ((bit / 64) as usize, 1 << (bit % 64))
    }

    fn set(&mut self, seq: u64) {
        let (word, mask) = Window::index(seq);
        self.bits[word] |= mask;
    }

    fn clear(&mut self, seq: u64) {
        let (word, mask) = Window::index(seq);
        self.bits[word] &= !mask;
    }

    fn is_set(&self, seq: u64) -> bool {
        let (word, mask) = Window::index(seq);
        self.bits[word] & mask != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_sight(d: &Dedup, origin: u64, sequence: u64) -> bool {
        d.retain_first(&mut vec![(origin, sequence)], |k| *k) == 0
    }

    /// One call may mix origins (the batch's own window is taken out of the map while
    /// the others are looked up): each keeps its own window.
    #[test]
    fn a_batch_mixing_origins_keeps_each_window() {
        let d = Dedup::default();
        let mut items = vec![(1, 1), (2, 1), (1, 1), (2, 1), (1, 2), (3, 1)];
        assert_eq!(d.retain_first(&mut items, |k| *k), 2);
        assert_eq!(items, [(1, 1), (2, 1), (1, 2), (3, 1)]);
        assert!(!first_sight(&d, 2, 1));
        assert!(!first_sight(&d, 1, 2));
        assert!(first_sight(&d, 2, 2));
        assert_eq!(d.retain_first(&mut Vec::<(u64, u64)>::new(), |k| *k), 0);
    }

    #[test]
    fn seen_marks_nothing() {
        let d = Dedup::default();
        assert!(!d.seen(1, 5));
        assert!(first_sight(&d, 1, 5));
        assert!(d.seen(1, 5));
        assert!(!d.seen(1, 4) && !d.seen(1, 6) && !d.seen(2, 5));
        assert!(first_sight(&d, 1, 4), "seen() did not mark 4");
    }

    #[test]
    fn second_copies_are_dropped_in_any_order() {
        let d = Dedup::default();
        assert!(first_sight(&d, 1, 1));
        assert!(first_sight(&d, 1, 3));
        assert!(first_sight(&d, 1, 2), "late first copy");
        assert!(!first_sight(&d, 1, 2));
        assert!(!first_sight(&d, 1, 3));
        assert!(first_sight(&d, 2, 3), "origins are apart");
        assert!(first_sight(&d, 1, 3 + WINDOW));
        assert!(!first_sight(&d, 1, 3), "older than the window");
        assert!(first_sight(&d, 1, 4 + WINDOW));
        // A batch under one lock: a copy inside it and copies seen before are dropped.
        let mut batch = vec![(7, 1), (7, 2), (7, 1), (1, 4 + WINDOW), (7, 3)];
        assert_eq!(d.retain_first(&mut batch, |k| *k), 2);
        assert_eq!(batch, vec![(7, 1), (7, 2), (7, 3)]);
    }
}
