//! A set of packet identifiers (the inbound QoS 2 messages awaiting PUBREL): a sorted
//! `Vec<u16>`, 24 bytes inline where a `HashSet` takes 48, and no allocation while empty.
//! It holds at most Receive Maximum ids, so inserting into the middle stays cheap.

/// Sorted, distinct packet identifiers.
#[derive(Debug, Default)]
pub struct PacketIdSet {
    ids: Vec<u16>,
}

impl PacketIdSet {
    /// Whether `id` is in the set.
    pub fn contains(&self, id: &u16) -> bool {
        self.ids.binary_search(id).is_ok()
    }

    /// The ids, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.ids.iter().copied()
    }

    /// Adds `id`; returns whether it was not there yet.
    pub fn insert(&mut self, id: u16) -> bool {
        match self.ids.binary_search(&id) {
            Ok(_) => false,
            Err(i) => {
                self.ids.insert(i, id);
                true
            }
        }
    }

    /// Removes `id`; returns whether it was there.
    pub fn remove(&mut self, id: &u16) -> bool {
        match self.ids.binary_search(id) {
            Ok(i) => {
                self.ids.remove(i);
                if self.ids.is_empty() {
                    self.ids = Vec::new(); // give the allocation back
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
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
    }
}
