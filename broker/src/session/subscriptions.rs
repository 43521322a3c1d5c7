//! A session's subscription list: filter -> options, sized for the common case.
//!
//! Most clients hold a handful of subscriptions, and an idle connection is mostly its
//! session: a `HashMap` with one entry allocates room for four and sits 48 bytes inline.
//! Up to [`SMALL_MAX`] entries live in a sorted `Vec` (binary search); past that the set
//! becomes a boxed `HashMap`, so a client with thousands of subscriptions still subscribes
//! in constant time.

use std::collections::HashMap;
use std::sync::Arc;

use super::SubscriptionRecord;

/// Most entries kept in the sorted vector.
pub const SMALL_MAX: usize = 32;

/// Filter -> subscription options of one session.
#[derive(Debug)]
pub enum SubscriptionSet {
    /// Sorted by filter; a boxed slice, exactly as long as needed (16 bytes inline where
    /// a `Vec` takes 24: the whole set is then 16).
    Small(Box<[(Arc<str>, SubscriptionRecord)]>),
    /// Many subscriptions.
    #[allow(clippy::box_collection)] // 8 bytes inline instead of 48 in every session
    Large(Box<HashMap<Arc<str>, SubscriptionRecord>>),
}

impl Default for SubscriptionSet {
    fn default() -> Self {
        SubscriptionSet::Small(Box::default())
    }
}

impl SubscriptionSet {
    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        match self {
            SubscriptionSet::Small(items) => items.len(),
            SubscriptionSet::Large(map) => map.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `filter` is subscribed.
    pub fn contains_key(&self, filter: &str) -> bool {
        self.get(filter).is_some()
    }

    /// The options `filter` is subscribed with.
    pub fn get(&self, filter: &str) -> Option<&SubscriptionRecord> {
        match self {
            SubscriptionSet::Small(items) => items
                .binary_search_by(|(f, _)| (**f).cmp(filter))
                .ok()
                .map(|i| &items[i].1),
            SubscriptionSet::Large(map) => map.get(filter),
        }
    }

    /// Subscribes `filter` (or replaces its options); returns the options it replaced.
    pub fn insert(
        &mut self,
        filter: Arc<str>,
        record: SubscriptionRecord,
    ) -> Option<SubscriptionRecord> {
        match self {
            SubscriptionSet::Small(items) => {
                match items.binary_search_by(|(f, _)| (**f).cmp(&*filter)) {
                    Ok(i) => Some(std::mem::replace(&mut items[i].1, record)),
                    Err(i) if items.len() < SMALL_MAX => {
                        // Grow one at a time: a Vec's first growth would make room for 4.
                        let mut grown = std::mem::take(items).into_vec();
                        grown.reserve_exact(1);
                        grown.insert(i, (filter, record));
                        *items = grown.into_boxed_slice();
                        None
                    }
                    Err(_) => {
                        let mut map: HashMap<_, _> =
                            std::mem::take(items).into_vec().into_iter().collect();
                        map.insert(filter, record);
                        *self = SubscriptionSet::Large(Box::new(map));
                        None
                    }
                }
            }
            SubscriptionSet::Large(map) => map.insert(filter, record),
        }
    }

    /// Unsubscribes `filter`; returns its options if it was subscribed.
    pub fn remove(&mut self, filter: &str) -> Option<SubscriptionRecord> {
        match self {
            SubscriptionSet::Small(items) => {
                let i = items.binary_search_by(|(f, _)| (**f).cmp(filter)).ok()?;
                let mut shrunk = std::mem::take(items).into_vec();
                let (_, record) = shrunk.remove(i);
                *items = shrunk.into_boxed_slice();
                Some(record)
            }
            SubscriptionSet::Large(map) => map.remove(filter),
        }
    }

    /// The subscriptions, in no particular order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&Arc<str>, &SubscriptionRecord)> + '_> {
        match self {
            SubscriptionSet::Small(items) => Box::new(items.iter().map(|(f, r)| (f, r))),
            SubscriptionSet::Large(map) => Box::new(map.iter()),
        }
    }

    /// Takes every subscription out, leaving the set empty (and small).
    pub fn drain(&mut self) -> Vec<(Arc<str>, SubscriptionRecord)> {
        match std::mem::take(self) {
            SubscriptionSet::Small(items) => items.into_vec(),
            SubscriptionSet::Large(map) => map.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::SubscriptionOptions;

    fn record(id: u32) -> SubscriptionRecord {
        SubscriptionRecord {
            options: SubscriptionOptions::default(),
            subscription_id: Some(id),
        }
    }

    /// The same operations on the set and on a `HashMap` agree, across the switch from
    /// the sorted vector to the map and back to empty.
    #[test]
    fn behaves_like_a_map_small_and_large() {
        let mut set = SubscriptionSet::default();
        let mut model: HashMap<Arc<str>, SubscriptionRecord> = HashMap::new();
        for round in 0..3u32 {
            for i in 0..(SMALL_MAX as u32 * 3) {
                let filter: Arc<str> = format!("t/{}", (i * 7919 + round) % 97).into();
                assert_eq!(
                    set.insert(filter.clone(), record(i)),
                    model.insert(filter.clone(), record(i))
                );
                assert_eq!(set.len(), model.len());
                if i % 5 == 0 {
                    let gone = format!("t/{}", i % 97);
                    assert_eq!(set.remove(&gone), model.remove(&*gone));
                }
                assert_eq!(set.get(&filter), model.get(&filter));
            }
            let mut listed: Vec<_> = set.iter().map(|(f, r)| (f.clone(), *r)).collect();
            let mut expected: Vec<_> = model.iter().map(|(f, r)| (f.clone(), *r)).collect();
            listed.sort_by(|a, b| a.0.cmp(&b.0));
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(listed, expected);
            assert_eq!(set.drain().len(), model.len());
            model.clear();
            assert!(set.is_empty());
            assert!(matches!(set, SubscriptionSet::Small(_)));
        }
    }
}
