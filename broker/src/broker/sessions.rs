//! The session registry: client identifier -> session, with the operations that open,
//! take over, resume and end sessions, and hand a leaving shared-group member's messages to
//! another member.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

use dashmap::mapref::entry::Entry;
use tern_codec::ByteStr;

use std::time::Duration;

use tern_codec::LastWill;

use super::{will, Broker};
use crate::metrics::Metrics;
use crate::session::delivery::Redirect;
use crate::session::Session;

/// A session in the registry, hashed and compared as its client identifier (and found by
/// it, as a `&str`): the registry is a set of sessions, one pointer a bucket, instead of a
/// map from the id (an `Arc<str>` and the session, 24 bytes a bucket).
#[derive(Debug, Clone)]
pub(super) struct Registered(pub(super) Arc<Session>);

impl std::hash::Hash for Registered {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As the `str` it borrows as, so that a lookup by `&str` finds it.
        (*self.0.client_id).hash(state);
    }
}

impl PartialEq for Registered {
    fn eq(&self, other: &Registered) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for Registered {}

impl std::borrow::Borrow<str> for Registered {
    fn borrow(&self) -> &str {
        &self.0.client_id
    }
}

impl Broker {
    /// Number of sessions in the registry.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// The session of `client_id`, if one is registered.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.inner
            .sessions
            .get(client_id)
            .map(|s| s.key().0.clone())
    }

    /// Registers `session` (recovery), replacing and returning one of the same client id.
    pub(super) fn register(&self, session: Arc<Session>) -> Option<Arc<Session>> {
        match self.inner.sessions.entry(Registered(session)) {
            Entry::Occupied(occupied) => Some(occupied.replace_entry(()).0 .0),
            Entry::Vacant(vacant) => {
                vacant.insert(());
                None
            }
        }
    }

    /// Whether a session of `client_id` is registered.
    pub fn has_session(&self, client_id: &str) -> bool {
        self.inner.sessions.contains_key(client_id)
    }

    /// The sessions registered now (a snapshot: no registry guard is held while the caller
    /// works through them).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.inner
            .sessions
            .iter()
            .map(|entry| entry.key().0.clone())
            .collect()
    }

    /// A client identifier for a client that sent an empty one.
    pub fn assign_client_id(&self) -> ByteStr {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(self.inner.next_session_id.load(Ordering::Relaxed));
        hasher.write_u128(self.inner.started_at.elapsed().as_nanos());
        ByteStr::from(format!("tern-{:016x}", hasher.finish()))
    }

    /// Finds or creates the session of `client_id`. With `clean_start` (or no session) a
    /// new one replaces any existing one, which ends. Returns the session and whether an
    /// existing one continues (Session Present).
    pub fn open_session(&self, client_id: &str, clean_start: bool) -> (Arc<Session>, bool) {
        let limits = self.limits();
        // One allocation for the id, shared by the registry's key and the session.
        let client_id: Arc<str> = Arc::from(client_id);
        let make = || {
            let id = self.inner.next_session_id.fetch_add(1, Ordering::Relaxed);
            Arc::new(Session::new(
                id,
                client_id.clone(),
                limits.max_queued_messages,
                limits.max_queued_bytes,
                self.inner.budget.clone(),
            ))
        };
        let mut replaced = None;
        // The DashMap guard lives only inside this block; ending the old session touches
        // the map again, so it happens after.
        // The registry is keyed by the session itself, so the entry needs one: a resume
        // (most often) is found without making one first.
        let resumed = (!clean_start)
            .then(|| self.session(&client_id))
            .flatten()
            .filter(|existing| !existing.is_ended());
        let (session, present) = match resumed {
            Some(existing) => (existing, true),
            None => {
                let fresh = make();
                match self.inner.sessions.entry(Registered(fresh.clone())) {
                    Entry::Occupied(occupied) => {
                        let existing = occupied.key().0.clone();
                        if clean_start || existing.is_ended() {
                            replaced = Some(occupied.replace_entry(()).0 .0);
                            (fresh, false)
                        } else {
                            // Registered meanwhile by a racing CONNECT: resumed after all.
                            (existing, true)
                        }
                    }
                    Entry::Vacant(vacant) => {
                        vacant.insert(());
                        (fresh, false)
                    }
                }
            }
        };
        if !present {
            Metrics::add(&self.inner.metrics.sessions, 1);
        }
        if let Some(old) = replaced {
            if let Some(link) = old.delivery().take_link() {
                Metrics::add(&self.inner.metrics.session_takeovers, 1);
                link.writer.control().kick(crate::error::Kick::TakenOver);
            }
            self.end_session(&old);
        }
        (session, present)
    }

    /// The connection of `generation` to `session` has closed, with `will` (and its delay)
    /// to publish if the close publishes it: detaches the connection, hands queued shared
    /// messages to other members, then publishes the will or files it with the session's
    /// expiry, or ends the session (expiry 0).
    pub fn connection_closed(
        &self,
        session: &Arc<Session>,
        generation: u64,
        will: Option<(LastWill, Duration)>,
    ) {
        let detached = session.delivery().detach(generation);
        if !detached {
            // Taken over: a new connection owns the session. A will with a delay is
            // cancelled if that connection resumed the session ([MQTT-3.1.3-9]), here or on
            // another cluster node (handed over); one without (or whose session ended)
            // goes out now.
            if let Some((last_will, delay)) = will {
                let ended = session.is_ended() && !session.is_handed_over();
                if delay.is_zero() || ended {
                    will::publish(self, session, last_will);
                }
            }
            return;
        }
        // Queued messages from shared subscriptions go to an online member now rather than
        // wait for this client; what was already sent waits for a resume (or session end).
        let redirects = session.delivery().take_shared(false, self.journal());
        self.redirect_shared(session.id, redirects);
        let expiry_secs = session.expiry_secs();
        let mut will = will;
        if expiry_secs == 0 || will.as_ref().is_some_and(|(_, delay)| delay.is_zero()) {
            if let Some((last_will, _)) = will.take() {
                will::publish(self, session, last_will);
            }
        }
        if expiry_secs == 0 {
            self.end_session_unless_resumed(session, generation);
        } else {
            self.log_offline(session, will.as_ref().map(|(w, _)| w));
            self.went_offline(session, generation, will, expiry_secs);
        }
    }

    /// Hands messages a leaving shared-group member held to another online member of the
    /// same group (5.0 section 4.8.2: "the Server SHOULD send the Application Message to
    /// another Client that is subscribed to the same Shared Subscription"). Messages with no
    /// other member online are dropped and counted.
    pub fn redirect_shared(&self, leaving_session: u64, redirects: Vec<Redirect>) {
        if redirects.is_empty() {
            return;
        }
        let now = Instant::now();
        let ctx = self.deliver_ctx(now);
        for Redirect {
            message,
            group: key,
        } in redirects
        {
            let group = self.inner.router.shared_group(&key);
            match group.as_ref().and_then(|g| g.pick_other(leaving_session)) {
                Some(member) => {
                    let topic = message.publish().topic();
                    if member
                        .read_check
                        .as_ref()
                        .is_some_and(|acl| !acl.allows_read(topic))
                    {
                        Metrics::add(&self.inner.metrics.acl_denied, 1);
                        continue;
                    }
                    let qos = message.qos().min(member.options.qos);
                    let retain = message.publish().retain && member.options.retain_as_published;
                    let ids: Vec<u32> = member.subscription_id.into_iter().collect();
                    member.session.delivery().deliver_via(
                        &message,
                        qos,
                        retain,
                        &ids,
                        Some(&key),
                        ctx,
                    );
                }
                None => Metrics::add(&self.inner.metrics.dropped_shared_no_member, 1),
            }
        }
    }

    /// Ends a session: removes its subscriptions, drops what it held, and removes it from
    /// the registry if it is still the registered one. Idempotent.
    ///
    /// A connection still attached is closed (DISCONNECT 0x8E). The end is marked under the
    /// delivery lock, which a connection attaching holds while it checks for it: it either
    /// attached before (and is closed here) or sees the end and opens a session again.
    pub fn end_session(&self, session: &Arc<Session>) {
        let attached = {
            let mut delivery = session.delivery();
            if !session.mark_ended() {
                return;
            }
            delivery.take_link()
        };
        if let Some(link) = attached {
            link.writer.control().kick(crate::error::Kick::TakenOver);
        }
        self.release_session(session);
    }

    /// Ends a session whose connection of `generation` has gone, unless another connection
    /// has claimed it since (a resume): neither the close of an old connection nor the
    /// expiry timer may end the session a newer connection owns.
    pub fn end_session_unless_resumed(&self, session: &Arc<Session>, generation: u64) {
        {
            let delivery = session.delivery();
            if delivery.is_online() || session.generation() != generation {
                return;
            }
            if !session.mark_ended() {
                return;
            }
        }
        self.release_session(session);
    }

    /// What ending a session releases, once it is marked ended.
    pub(super) fn release_session(&self, session: &Arc<Session>) {
        self.log_ended(session);
        self.drop_subscriptions(session);
        let redirects = session.delivery().take_shared(true, self.journal());
        self.redirect_shared(session.id, redirects);
        let dropped = session.delivery().clear();
        if dropped > 0 {
            tracing::debug!(client_id = %session.client_id, dropped, "session ended with undelivered messages");
        }
        self.inner
            .sessions
            .remove_if(&*session.client_id, |registered, _| {
                Arc::ptr_eq(&registered.0, session)
            });
        Metrics::sub(&self.inner.metrics.sessions, 1);
        // A will still waiting for its delay goes out now: the session ended first
        // ([MQTT-3.1.3-9]).
        if let Some(last_will) = self.inner.timers.take(session.id) {
            will::publish(self, session, *last_will);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The registry is a set of sessions found by their client id: a resume finds the
    /// session (Session Present), a clean start replaces and ends it ([MQTT-3.1.2-4]), an
    /// ended session is replaced even without clean start, and ending removes only the
    /// session registered (not a newer one of the same id).
    #[test]
    fn registry_finds_replaces_and_removes_by_client_id() {
        let broker = Broker::new(Config::default_config());
        let (first, present) = broker.open_session("c", false);
        assert!(!present);
        assert_eq!(broker.session_count(), 1);
        let (again, present) = broker.open_session("c", false);
        assert!(present && Arc::ptr_eq(&first, &again), "resumed");
        let (fresh, present) = broker.open_session("c", true);
        assert!(!present && !Arc::ptr_eq(&first, &fresh), "clean start");
        assert!(first.is_ended(), "the replaced session ended");
        assert_eq!(broker.session_count(), 1);
        assert!(Arc::ptr_eq(
            &broker.session("c").expect("registered"),
            &fresh
        ));
        broker.end_session(&first); // already ended and replaced: nothing happens
        assert!(broker.has_session("c"));
        broker.end_session(&fresh);
        assert!(!broker.has_session("c") && broker.session_count() == 0);
        let (other, _) = broker.open_session("d", false);
        assert!(
            broker.register(other.clone()).is_some(),
            "same id: replaced"
        );
        assert_eq!(broker.sessions().len(), 1);
    }
}
