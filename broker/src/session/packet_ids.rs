//! A set of packet identifiers (the inbound QoS 2 messages awaiting PUBREL): a sorted
//! `Vec<u16>`, boxed at the first id, so that a session whose client never publishes at
//! QoS 2 carries 8 bytes for it (a `Vec` takes 24, a `HashSet` 48). It holds at most
//! Receive Maximum ids, so inserting into the middle stays cheap.

/// Sorted, distinct packet identifiers.
#[derive(Debug, Default)]
pub struct PacketIdSet {
    #[allow(clippy::box_collection)]
    ids: Option<Box<Vec<u16>>>,
}

impl PacketIdSet {
    fn ids(&self) -> &[u16] {
        self.ids.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: &u16) -> bool {
        self.ids().binary_search(id).is_ok()
    }

    /// The ids, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.ids().iter().copied()
    }

    /// Adds `id`; returns whether it was not there yet.
    pub fn insert(&mut self, id: u16) -> bool {
        let ids = self.ids.get_or_insert_default();
        match ids.binary_search(&id) {
            Ok(_) => false,
            Err(i) => {
                ids.insert(i, id);
                true
            }
        }
    }

    /// Removes `id`; returns whether it was there.
    pub fn remove(&mut self, id: &u16) -> bool {
        let Some(ids) = self.ids.as_deref_mut() else {
            return false;
        };
        match ids.binary_search(id) {
            Ok(i) => {
                ids.remove(i);
                if ids.is_empty() {
                    // Give the buffer back; the box stays, so that a client publishing at
                    // QoS 2 allocates once per message here, as with a bare `Vec`.
                    *ids = Vec::new();
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ids().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ids().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_semantics() {
        let mut set = PacketIdSet::default();
        assert!(set.insert(7));
        assert!(set.insert(3));
        assert!(!set.insert(7));
        assert!(set.contains(&3) && set.contains(&7) && !set.contains(&5));
        assert_eq!(set.len(), 2);
        assert!(set.remove(&7));
        assert!(!set.remove(&7));
        assert!(set.remove(&3));
        assert!(set.is_empty());
        assert_eq!(
            set.ids.as_ref().map(|ids| ids.capacity()),
            Some(0),
            "let go when empty"
        );
        assert!(set.insert(9) && set.contains(&9), "and made again");
    }
}
