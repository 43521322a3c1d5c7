//! Loop prevention where the remote has no means of its own: a 3.1.1 remote that refused
//! Mosquitto's bridge bit has no No Local either, so it sends the bridge back what the
//! bridge published there whenever an in rule covers it. The bridge remembers a
//! fingerprint (topic and payload) of each message it sends out and drops the first
//! matching message that comes back.
//!
//! Best effort, and said so: an identical message (same topic, same payload) published on
//! the remote by someone else while ours is remembered is taken for the echo and dropped
//! once. The memory is bounded ([`REMEMBERED`]); an echo arriving after that many newer
//! messages went out is not recognised.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// How many fingerprints are kept.
const REMEMBERED: usize = 4096;

/// Fingerprints of what went out, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Echoes {
    order: VecDeque<u64>,
    counts: HashMap<u64, u32>,
}

fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    topic.hash(&mut hasher);
    payload.hash(&mut hasher);
    hasher.finish()
}

impl Echoes {
    /// A message went out on `topic` (the remote topic).
    pub(crate) fn sent(&mut self, topic: &str, payload: &[u8]) {
        let print = fingerprint(topic, payload);
        if self.order.len() == REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.forget(old);
            }
        }
        self.order.push_back(print);
        *self.counts.entry(print).or_default() += 1;
    }

    fn forget(&mut self, print: u64) {
        if let Some(count) = self.counts.get_mut(&print) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&print);
            }
        }
    }

    /// Whether a message from the remote is one of ours coming back (forgotten then).
    pub(crate) fn is_echo(&mut self, topic: &str, payload: &[u8]) -> bool {
        let print = fingerprint(topic, payload);
        if !self.counts.contains_key(&print) {
            return false;
        }
        self.forget(print);
        if let Some(at) = self.order.iter().position(|p| *p == print) {
            self.order.remove(at);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_is_recognised_once() {
        let mut echoes = Echoes::default();
        echoes.sent("a", b"1");
        echoes.sent("a", b"1");
        assert!(!echoes.is_echo("a", b"2"));
        assert!(echoes.is_echo("a", b"1"));
        assert!(echoes.is_echo("a", b"1"));
        assert!(!echoes.is_echo("a", b"1"));
    }

    #[test]
    fn memory_is_bounded() {
        let mut echoes = Echoes::default();
        for n in 0..(REMEMBERED + 10) {
            echoes.sent("t", n.to_string().as_bytes());
        }
        assert_eq!(echoes.order.len(), REMEMBERED);
        assert!(!echoes.is_echo("t", b"0"));
        assert!(echoes.is_echo("t", (REMEMBERED + 9).to_string().as_bytes()));
    }
}
