//! Per-topic order across this node's filter tasks ([MQTT-4.6.0-6]: messages of one topic
//! reach a subscriber in the order their publisher sent them).
//!
//! A message matching several of the node's filters arrives once per filter, each filter's
//! NATS subscription read by its own task ([`super::interest`]); the first copy is routed
//! through the whole trie and the others are dropped ([`super::dedup`]). Without more, a
//! task that finds message M1 a copy could move on and route M2 (same topic, same
//! publisher) while the task that took M1 first is still delivering it. So the duplicate
//! check and the routing of a NATS message's first copies happen under one lock, picked by
//! a hash of (origin node, subject) from [`STRIPES`] mutexes: a task that finds M1 a copy
//! got past the lock only after M1's routing had ended, and M2 comes after M1 in every
//! filter's stream (one subject, so the same filters match; NATS sends one connection's
//! messages in order). Messages of other topics (or other origins) take other stripes,
//! mostly, and are routed in parallel.
//!
//! Not covered: a filter subscribed while messages of an overlapping one wait unread in
//! that one's stream; the new filter's task can take a later message first (and route it,
//! a first sight) before the older task reaches the earlier ones.
//!
//! This module owns the stripes; the windows of seen messages are [`Dedup`]'s.

use std::hash::BuildHasher as _;
use std::sync::Mutex;

use super::dedup::Dedup;

/// Locks that (origin, subject) pairs share: enough that unrelated topics rarely wait for
/// each other on a node's few cores.
const STRIPES: usize = 64;

/// Duplicate check and routing of first copies, in order per (origin, subject).
#[derive(Debug)]
pub(crate) struct FirstCopies {
    dedup: Dedup,
    stripes: Box<[Mutex<()>]>,
    hasher: foldhash::fast::FixedState,
}

impl Default for FirstCopies {
    fn default() -> FirstCopies {
        FirstCopies {
            dedup: Dedup::default(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x7e64),
        }
    }
}

impl FirstCopies {
    /// Whether the message (`origin`, `sequence`) was routed already (a later copy, to be
    /// dropped): lets a large message's copy skip its fetch. Nothing is marked.
    pub(crate) fn seen(&self, (origin, sequence): (u64, u64)) -> bool {
        self.dedup.seen(origin, sequence)
    }

    /// Keeps in `items` (one NATS message's envelopes: one origin, one subject) only first
    /// copies (`identity` gives an item's origin and sequence) and hands them to `route`, all
    /// under the stripe lock of (`origin`, `subject`); returns how many were dropped. `route`
    /// must not wait (it holds a thread's lock).
    pub(crate) fn route_first<T>(
        &self,
        (origin, subject): (u64, &[u8]),
        items: &mut Vec<T>,
        identity: impl Fn(&T) -> (u64, u64),
        route: impl FnOnce(&mut Vec<T>),
    ) -> usize {
        let stripe = self.hasher.hash_one((origin, subject)) as usize % self.stripes.len();
        let _ordered = self.stripes[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dropped = self.dedup.retain_first(items, identity);
        if !items.is_empty() {
            route(items);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Duration;

    /// Task F1 takes M1 first and is still routing it when task F2 reaches M1 (a copy) and
    /// then M2: F2 must not deliver M2 before F1 has delivered M1 ([MQTT-4.6.0-6]). The
    /// interleaving is forced: F1's routing waits until F2 has started, then gives F2 time
    /// to overtake it.
    #[test]
    fn a_copy_found_while_its_first_is_routed_holds_the_next_message_back() {
        let first = Arc::new(FirstCopies::default());
        let delivered = Arc::new(StdMutex::new(Vec::new()));
        let (f1_routing_tx, f1_routing) = mpsc::channel::<()>();
        let (f2_done_tx, f2_done) = mpsc::channel::<()>();
        let stream = (7, &b"tern.t.x"[..]);

        let f1 = {
            let (first, delivered) = (first.clone(), delivered.clone());
            std::thread::spawn(move || {
                first.route_first(
                    stream,
                    &mut vec![(7, 1)],
                    |k| *k,
                    |m1| {
                        f1_routing_tx.send(()).expect("F2 waits");
                        // F2 would have delivered M2 by now if nothing held it back.
                        let _ = f2_done.recv_timeout(Duration::from_millis(300));
                        delivered
                            .lock()
                            .expect("lock")
                            .extend(m1.iter().map(|k| k.1));
                    },
                );
            })
        };
        f1_routing.recv().expect("F1 routes M1");
        let f2 = {
            let (first, delivered) = (first.clone(), delivered.clone());
            std::thread::spawn(move || {
                for message in [(7, 1), (7, 2)] {
                    first.route_first(
                        stream,
                        &mut vec![message],
                        |k| *k,
                        |m| {
                            delivered
                                .lock()
                                .expect("lock")
                                .extend(m.iter().map(|k| k.1));
                        },
                    );
                }
                let _ = f2_done_tx.send(());
            })
        };
        f1.join().expect("F1");
        f2.join().expect("F2");
        assert_eq!(
            *delivered.lock().expect("lock"),
            vec![1, 2],
            "M1 once, then M2"
        );
    }

    #[test]
    fn copies_in_a_batch_and_seen_before_are_dropped_and_not_routed() {
        let first = FirstCopies::default();
        let mut routed = Vec::new();
        let stream = (1, &b"s"[..]);
        let dropped = first.route_first(
            stream,
            &mut vec![(1, 1), (1, 2)],
            |k| *k,
            |m| routed.append(m),
        );
        assert_eq!(dropped, 0);
        let mut batch = vec![(1, 2), (1, 3), (1, 3)];
        let dropped = first.route_first(stream, &mut batch, |k| *k, |m| routed.append(m));
        assert_eq!(dropped, 2);
        let dropped = first.route_first(
            stream,
            &mut vec![(1, 1)],
            |k| *k,
            |_| panic!("nothing left to route"),
        );
        assert_eq!(dropped, 1);
        assert_eq!(routed, vec![(1, 1), (1, 2), (1, 3)]);
    }
}
