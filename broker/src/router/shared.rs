//! Shared subscription groups (`$share/{group}/{filter}`, MQTT 5.0 section 4.8.2; also
//! accepted from 3.1.1 clients as Mosquitto does): the members of one group on one filter,
//! and round-robin choice of the member that gets each message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use super::SubEntry;
use crate::session::SharedKey;

/// The members of one group. A group is identified by its name AND its filter: the same
/// name on two filters is two groups (the router keys groups by trie path and name).
#[derive(Debug)]
pub struct SharedGroup {
    /// The filter the group was subscribed with, `$share/{group}/{filter}`: what sessions
    /// remember of it.
    key: SharedKey,
    members: RwLock<Vec<SubEntry>>,
    cursor: AtomicUsize,
}

impl SharedGroup {
    /// An empty group subscribed with `key` (`$share/{group}/{filter}`).
    pub fn new(key: SharedKey) -> SharedGroup {
        SharedGroup {
            key,
            members: RwLock::default(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The filter the group was subscribed with.
    pub fn key(&self) -> &SharedKey {
        &self.key
    }

    /// Adds a member or replaces its options.
    /// Returns whether the session was not a member before.
    pub fn upsert(&self, entry: SubEntry) -> bool {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        match members
            .iter_mut()
            .find(|m| m.session.id == entry.session.id)
        {
            Some(existing) => {
                *existing = entry;
                false
            }
            None => {
                members.push(entry);
                true
            }
        }
    }

    /// Removes a member; returns (whether it was a member, whether the group is now empty).
    pub fn remove(&self, session_id: u64) -> (bool, bool) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        let before = members.len();
        members.retain(|m| m.session.id != session_id);
        (members.len() != before, members.is_empty())
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the group has no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The member for the next message: round robin over the members that are online;
    /// when none is, the next member in turn (its session queues QoS 1/2 messages).
    pub fn pick(&self) -> Option<SubEntry> {
        self.next_online(None, true)
    }

    /// An online member other than `except`, for messages a leaving member still held.
    pub fn pick_other(&self, except: u64) -> Option<SubEntry> {
        self.next_online(Some(except), false)
    }

    /// Round robin from the cursor: the first online member that is not `except`; with
    /// `or_any`, the member at the cursor when none is online.
    fn next_online(&self, except: Option<u64>, or_any: bool) -> Option<SubEntry> {
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        let n = members.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let online = (0..n)
            .map(|k| &members[(start + k) % n])
            .find(|m| Some(m.session.id) != except && m.session.delivery().is_online());
        online
            .or_else(|| members.get(start).filter(|_| or_any))
            .cloned()
    }
}
