//! The retained message store: the last retained message per topic, replaced by a newer
//! one, deleted by an empty payload ([MQTT-3.3.1-6], [MQTT-3.3.1-10]), expiring with its
//! own Message Expiry Interval.
//!
//! Lookup by filter scans the store; a trie index is the next step when stores grow large.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::time::Instant;

use tern_codec::topic;
use tern_codec::ByteStr;

use crate::message::Message;

/// Retained messages by topic.
#[derive(Debug, Default)]
pub struct RetainedStore {
    map: RwLock<HashMap<ByteStr, Arc<Message>>>,
}

impl RetainedStore {
    /// Stores, replaces or (empty payload) deletes the retained message of its topic.
    /// Returns the change in the number of stored messages (-1, 0 or +1).
    pub fn update(&self, message: &Arc<Message>) -> i64 {
        let publish = message.publish();
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if publish.payload().is_empty() {
            return -(map.remove(publish.topic()).is_some() as i64);
        }
        match map.insert(publish.shared_topic(), message.clone()) {
            Some(_) => 0,
            None => 1,
        }
    }

    /// Calls `f` for every unexpired retained message matching `filter` (a plain filter).
    pub fn for_each_match(&self, filter: &str, now: Instant, mut f: impl FnMut(&Arc<Message>)) {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        for (name, message) in map.iter() {
            if topic::matches(filter, name) && !message.is_expired(now) {
                f(message);
            }
        }
    }

    /// Removes expired messages; returns how many.
    pub fn purge_expired(&self, now: Instant) -> usize {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, m| !m.is_expired(now));
        before - map.len()
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
