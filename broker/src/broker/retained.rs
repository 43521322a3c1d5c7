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

use crate::journal::record::Record;
use crate::journal::{self, Journal};
use crate::message::Message;

/// Retained messages by topic.
#[derive(Debug, Default)]
pub struct RetainedStore {
    map: RwLock<HashMap<ByteStr, Arc<Message>>>,
}

impl RetainedStore {
    /// Stores, replaces or (empty payload) deletes the retained message of its topic, and
    /// logs the change in `journal` (under the store's lock, so the log holds a topic's
    /// changes in order). Returns the change in the number of stored messages (-1, 0, +1).
    pub fn update(&self, message: &Arc<Message>, journal: Option<&Journal>, now: Instant) -> i64 {
        let publish = message.publish();
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        // `$SYS` statistics are made again by the running broker: not kept.
        if let Some(journal) = journal.filter(|_| !crate::config::is_sys_topic(publish.topic())) {
            journal.append(&Record::Retain {
                topic: publish.topic().to_owned(),
                message: (!publish.payload().is_empty()).then(|| journal::stored(message, now)),
            });
        }
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

    /// Puts a recovered message in place, without logging it.
    pub fn restore(&self, message: Arc<Message>) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.insert(message.publish().shared_topic(), message);
    }

    /// Every retained message (for a checkpoint), read under the store's lock with the
    /// journal position it is consistent with.
    pub fn all(&self) -> Vec<Arc<Message>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
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
