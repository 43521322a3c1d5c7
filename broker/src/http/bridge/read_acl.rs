//! The read ACL of a bridge ring, and how a reload of the ACL reaches the rings.
//!
//! A ring has one reader identity (user name or anonymous, part of its registry key), so
//! one read ACL: [`Readable`] says which of the messages its filters match may enter it.
//! It is derived when the ring is created, from the auth state in force, and again for
//! every ring by [`Bridges::reapply_acl`] when a reload (SIGHUP) brings new rules.
//!
//! A reader whose filters all become unreadable stays connected and receives nothing
//! ([`Readable::Nothing`]), as an MQTT subscription removed by a reload; unlike that
//! subscription, its ring and trie entries stay, so a later reload that grants access again
//! resumes delivery. A reader some of whose filters become unreadable keeps receiving what
//! the others match (a check per message).
//!
//! This module owns the derivation and the reapply pass; the ring applies the check
//! ([`super::ring::Ring::set_readable`]), the request checks (401/403) are in
//! [`super::access`].

use std::collections::HashMap;
use std::sync::Arc;

use super::access::BRIDGE_CLIENT_ID;
use super::Bridges;
use crate::auth::{AuthState, ClientAcl, SubscribeVerdict};
use crate::metrics::Metrics;

/// Which routed messages may enter a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readable {
    /// Every message the filters match: no ACL file, or every filter wholly readable.
    All,
    /// Those whose topic the reader's ACL lets it read, checked one by one.
    Checked(Arc<ClientAcl>),
    /// None: the reader may read no topic any of the filters match.
    Nothing,
}

impl Readable {
    /// What `acl` (`None`: no ACL file) lets a reader of `filters` receive.
    pub fn derive(acl: Option<Arc<ClientAcl>>, filters: &[Box<str>]) -> Readable {
        let Some(acl) = acl else {
            return Readable::All;
        };
        let mut all = true;
        let mut any = false;
        for filter in filters {
            match acl.check_subscribe(filter) {
                SubscribeVerdict::Allowed => any = true,
                SubscribeVerdict::Filtered => {
                    all = false;
                    any = true;
                }
                SubscribeVerdict::Denied => all = false,
            }
        }
        match (all, any) {
            (true, _) => Readable::All,
            (false, true) => Readable::Checked(acl),
            (false, false) => Readable::Nothing,
        }
    }

    /// What the reader `reader` of `filters` may receive under `state`.
    pub fn for_reader(state: &AuthState, reader: Option<&str>, filters: &[Box<str>]) -> Readable {
        Readable::derive(state.client_acl(BRIDGE_CLIENT_ID, reader), filters)
    }

    /// Whether a message published to `topic` may enter the ring.
    #[inline]
    pub fn allows(&self, topic: &str) -> bool {
        match self {
            Readable::All => true,
            Readable::Checked(acl) => acl.allows_read(topic),
            Readable::Nothing => false,
        }
    }
}

/// What [`Bridges::reapply_acl`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reapplied {
    /// Rings whose read ACL was re-derived.
    pub rings: usize,
    /// Entries already in rings that the new rules forbid: blanked, never sent.
    pub entries_blanked: usize,
}

impl Bridges {
    /// Re-derives the read ACL of every ring from `state`, then puts `state` in force
    /// (`broker.auth()`), all under the registry lock.
    ///
    /// The order closes every window for a message the new rules forbid: each ring swaps
    /// its check and blanks the entries it holds that are now forbidden before the new state
    /// is in force (a publisher pushes under the ring's lock, so it sees the old check or the
    /// new, never a mix), and no ring can be created from the old state meanwhile (creation
    /// takes the registry lock, see [`Bridges::attach`]). Widened rules apply to messages
    /// routed after the swap.
    pub fn reapply_acl(&self, state: crate::auth::AuthState) -> Reapplied {
        let broker = &self.broker;
        let rings = self.rings();
        let mut acls: HashMap<Option<&str>, Option<Arc<ClientAcl>>> = HashMap::new();
        let mut done = Reapplied::default();
        for ring in rings.values() {
            let reader = ring.reader.as_deref();
            let acl = acls
                .entry(reader)
                .or_insert_with(|| state.client_acl(BRIDGE_CLIENT_ID, reader))
                .clone();
            let readable = Readable::derive(acl, &ring.filters);
            if readable == Readable::Nothing && ring.readable() != Readable::Nothing {
                Metrics::add(&broker.metrics().acl_denied, 1);
                tracing::debug!(ring = ring.id, reader, filters = ?ring.filters,
                    "bridge filters no longer readable: the ring receives nothing");
            }
            done.entries_blanked += ring.set_readable(readable);
            done.rings += 1;
        }
        if done.entries_blanked > 0 {
            Metrics::add(&broker.metrics().acl_denied, done.entries_blanked as u64);
        }
        broker.auth().replace(state);
        drop(rings);
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AclFile;

    fn acl(text: &str) -> Arc<ClientAcl> {
        let file = AclFile::parse(text, std::path::Path::new("acl")).expect("acl");
        Arc::new(file.for_client(BRIDGE_CLIENT_ID, None))
    }

    fn filters(list: &[&str]) -> Vec<Box<str>> {
        list.iter().map(|f| Box::from(*f)).collect()
    }

    #[test]
    fn derivation() {
        assert_eq!(Readable::derive(None, &filters(&["#"])), Readable::All);
        let rules = acl("topic read a/public/#\n");
        assert_eq!(
            Readable::derive(Some(rules.clone()), &filters(&["a/public/#"])),
            Readable::All
        );
        assert_eq!(
            Readable::derive(Some(rules.clone()), &filters(&["a/#"])),
            Readable::Checked(rules.clone())
        );
        assert_eq!(
            Readable::derive(Some(rules.clone()), &filters(&["a/public/#", "b/#"])),
            Readable::Checked(rules.clone()),
            "one filter denied: the other's messages still come, checked"
        );
        assert_eq!(
            Readable::derive(Some(rules), &filters(&["b/#", "c"])),
            Readable::Nothing
        );
    }
}
