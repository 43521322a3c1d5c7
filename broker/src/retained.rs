//! The retained message store: the last retained message per topic, replaced by a newer
//! one, deleted by an empty payload ([MQTT-3.3.1-6], [MQTT-3.3.1-10]), expiring with its
//! own Message Expiry Interval.
//!
//! Topics are kept in order (a `BTreeMap`), and every change takes a number from one
//! sequence, so that a subscriber's replay is a cursor, not a copy of the matching set
//! (issue #17): [`RetainedStore::next_matches`] hands out the next few matches after the
//! last topic a replay reached, among the messages stored before the replay began
//! ([`RetainedStore::seq`]). A message stored later reached the subscriber live (it was
//! subscribed by then), so the replay skips it. Matching starts at the filter's literal
//! prefix (`a/b/` of `a/b/+/#`), so a replay of a narrow filter does not scan the store.
//!
//! This module owns the store, not the pacing: a session's delivery state holds the cursor
//! and asks for more when its client has room (`session/replay.rs`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use tokio::time::Instant;

use tern_codec::topic;
use tern_codec::ByteStr;

use crate::journal::record::Record;
use crate::journal::{self, Journal};
use crate::message::Message;

/// One retained message and the sequence number of the change that stored it.
#[derive(Debug)]
struct Entry {
    message: Arc<Message>,
    seq: u64,
}

#[derive(Debug, Default)]
struct State {
    map: BTreeMap<ByteStr, Entry>,
    /// The number of the last change (0: none yet).
    seq: u64,
}

/// Retained messages by topic.
#[derive(Debug, Default)]
pub struct RetainedStore {
    state: RwLock<State>,
}

impl RetainedStore {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores, replaces or (empty payload) deletes the retained message of its topic, and
    /// logs the change in `journal` (under the store's lock, so the log holds a topic's
    /// changes in order). Returns the change in the number of stored messages (-1, 0, +1).
    pub fn update(&self, message: &Arc<Message>, journal: Option<&Journal>, now: Instant) -> i64 {
        let publish = message.publish();
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        // `$SYS` statistics are made again by the running broker: not kept.
        if let Some(journal) = journal.filter(|_| !crate::config::is_sys_topic(publish.topic())) {
            journal.append(&Record::Retain {
                topic: publish.topic().to_owned(),
                message: (!publish.payload().is_empty()).then(|| journal::stored(message, now)),
            });
        }
        state.seq += 1;
        if publish.payload().is_empty() {
            return -(state.map.remove(publish.topic()).is_some() as i64);
        }
        let entry = Entry {
            message: message.clone(),
            seq: state.seq,
        };
        match state.map.insert(publish.shared_topic(), entry) {
            Some(_) => 0,
            None => 1,
        }
    }

    /// The number of the last change: a replay starting now sends what is stored up to it.
    pub fn seq(&self) -> u64 {
        self.read().seq
    }

    /// Calls `f` for every unexpired retained message matching `filter` (a plain filter).
    pub fn for_each_match(&self, filter: &str, now: Instant, mut f: impl FnMut(&Arc<Message>)) {
        let state = self.read();
        for (name, entry) in matching_range(&state.map, filter, None) {
            if topic::matches(filter, name) && !entry.message.is_expired(now) {
                f(&entry.message);
            }
        }
    }

    /// Appends to `out` up to `max` unexpired messages matching `filter` on topics after
    /// `after` (from the first with `None`), in topic order, stored by change `upto_seq` or
    /// earlier. Returns whether the matches are exhausted (nothing after the last one).
    pub fn next_matches(
        &self,
        filter: &str,
        after: Option<&str>,
        upto_seq: u64,
        now: Instant,
        max: usize,
        out: &mut Vec<(ByteStr, Arc<Message>)>,
    ) -> bool {
        let state = self.read();
        let mut added = 0;
        for (name, entry) in matching_range(&state.map, filter, after) {
            if added == max {
                return false;
            }
            if entry.seq <= upto_seq
                && topic::matches(filter, name)
                && !entry.message.is_expired(now)
            {
                out.push((name.clone(), entry.message.clone()));
                added += 1;
            }
        }
        true
    }

    /// The message retained on `topic`, if it was stored by change `upto_seq` or earlier.
    pub fn stored_by(&self, topic: &str, upto_seq: u64) -> Option<Arc<Message>> {
        let state = self.read();
        let entry = state.map.get(topic)?;
        (entry.seq <= upto_seq).then(|| entry.message.clone())
    }

    /// Puts a recovered message in place, without logging it.
    pub fn restore(&self, message: Arc<Message>) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.seq += 1;
        let seq = state.seq;
        state
            .map
            .insert(message.publish().shared_topic(), Entry { message, seq });
    }

    /// Every retained message (for a checkpoint), read under the store's lock with the
    /// journal position it is consistent with.
    pub fn all(&self) -> Vec<Arc<Message>> {
        let state = self.read();
        state.map.values().map(|e| e.message.clone()).collect()
    }

    /// Removes expired messages; returns how many.
    pub fn purge_expired(&self, now: Instant) -> usize {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let before = state.map.len();
        state.map.retain(|_, e| !e.message.is_expired(now));
        before - state.map.len()
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The part of `filter` before the separator of its first wildcard level: every matching
/// topic starts with it (`a/b` of `a/b/+/c`; `a` of `a/#`, which matches `a` itself too,
/// [MQTT-4.7.1-2]; all of a filter without wildcards).
fn literal_prefix(filter: &str) -> &str {
    let mut end = 0;
    for level in filter.split_inclusive('/') {
        if level.starts_with('+') || level.starts_with('#') {
            break;
        }
        end += level.len();
    }
    let prefix = &filter[..end];
    if end < filter.len() {
        prefix.strip_suffix('/').unwrap_or(prefix)
    } else {
        prefix
    }
}

/// The entries that may match `filter`, after topic `after`: those starting with the
/// filter's literal prefix, in order.
fn matching_range<'a>(
    map: &'a BTreeMap<ByteStr, Entry>,
    filter: &str,
    after: Option<&str>,
) -> impl Iterator<Item = (&'a ByteStr, &'a Entry)> + 'a {
    let prefix = literal_prefix(filter).to_owned();
    let start = match after {
        Some(after) if after >= prefix.as_str() => Bound::Excluded(after),
        _ => Bound::Included(prefix.as_str()),
    };
    map.range::<str, _>((start, Bound::Unbounded))
        .take_while(move |(name, _)| name.starts_with(prefix.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::Publish;

    fn retain(store: &RetainedStore, topic: &str, payload: &str) {
        let mut publish = Publish::new(topic, payload.as_bytes().to_vec());
        publish.retain = true;
        store.update(
            &Message::new(publish, Instant::now(), None),
            None,
            Instant::now(),
        );
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix("a/b/+/c"), "a/b");
        assert_eq!(literal_prefix("a/b/#"), "a/b");
        assert_eq!(literal_prefix("#"), "");
        assert_eq!(literal_prefix("+/x"), "");
        assert_eq!(literal_prefix("a/b"), "a/b");
        assert_eq!(literal_prefix("a//#"), "a/");
    }

    /// `a/#` matches `a` itself ([MQTT-4.7.1-2]), which sorts before `a/...`.
    #[test]
    fn multi_level_wildcard_matches_its_parent_mqtt_4_7_1_2() {
        let store = RetainedStore::default();
        for topic in ["a", "a/b", "ab", "a/b/c", "b"] {
            retain(&store, topic, "x");
        }
        let mut got = Vec::new();
        store.for_each_match("a/#", Instant::now(), |m| got.push(m.topic().to_string()));
        assert_eq!(got, ["a", "a/b", "a/b/c"]);
        let mut page = Vec::new();
        assert!(store.next_matches("a/#", None, store.seq(), Instant::now(), 10, &mut page));
        assert_eq!(page.len(), 3);
    }

    /// A cursor hands out every match once, in topic order, a few at a time, and skips
    /// what was stored after its replay began (that reached the subscriber live).
    #[test]
    fn cursor_pages_through_matches_stored_before_it_began() {
        let store = RetainedStore::default();
        for i in 0..10 {
            retain(&store, &format!("rc/{i}"), "x");
        }
        retain(&store, "other/1", "x");
        let upto = store.seq();
        retain(&store, "rc/5", "newer");
        retain(&store, "rc/99", "newer");
        let (mut after, mut got) = (None::<ByteStr>, Vec::new());
        loop {
            let mut page = Vec::new();
            let done =
                store.next_matches("rc/#", after.as_deref(), upto, Instant::now(), 3, &mut page);
            after = page.last().map(|(t, _)| t.clone()).or(after);
            got.extend(page.into_iter().map(|(t, _)| t.to_string()));
            if done {
                break;
            }
        }
        let want: Vec<String> = (0..10)
            .filter(|&i| i != 5)
            .map(|i| format!("rc/{i}"))
            .collect();
        assert_eq!(got, want);
        assert!(store.stored_by("rc/5", upto).is_none(), "replaced since");
        assert!(store.stored_by("rc/4", upto).is_some());
    }
}
