//! Subscriptions have one owner. A session's record of its subscriptions and the router's
//! trie change together, in the operations here, under the session's subscription lock:
//! SUBSCRIBE, UNSUBSCRIBE, re-checking under a reloaded ACL and the end of a session all go
//! through them, so the two never disagree (an UNSUBSCRIBE racing a reload cannot leave a
//! trie entry behind, nor can a SUBSCRIBE racing the end of its session).
//!
//! Lock order: the session's subscription lock, then the trie's. Routing takes only the
//! trie's (and then a session's delivery lock), never a subscription lock.

use std::sync::Arc;

use tern_codec::QoS;
use tokio::time::Instant;

use crate::auth::{AuthState, ClientAcl, SubscribeVerdict};
use crate::metrics::Metrics;
use crate::session::delivery::ReplayRequest;
use crate::session::{Session, SubscriptionRecord};

use super::Broker;

/// What [`Broker::subscribe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// A new subscription.
    New,
    /// The filter was subscribed already: its options were replaced.
    Replaced,
    /// Refused: the session holds `max_subscriptions_per_client` already.
    QuotaExceeded,
    /// Refused: the session has ended (taken over or expired) meanwhile.
    SessionEnded,
}

impl Broker {
    /// Subscribes `session` to `filter` (validated; may be `$share/{group}/{filter}`) with
    /// `record`, checking each message against `read_check` before delivery (`None`: the
    /// filter is wholly readable). At most `max_subscriptions` per session (0: no limit).
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        record: SubscriptionRecord,
        read_check: Option<Arc<ClientAcl>>,
        max_subscriptions: usize,
    ) -> Subscribed {
        let mut subscriptions = session.subscriptions();
        if session.is_ended() {
            return Subscribed::SessionEnded;
        }
        let existed = subscriptions.contains_key(filter);
        if !existed && max_subscriptions > 0 && subscriptions.len() >= max_subscriptions {
            Metrics::add(&self.inner.metrics.subscriptions_refused_quota, 1);
            return Subscribed::QuotaExceeded;
        }
        subscriptions.insert(Arc::from(filter), record);
        self.log_subscribe(session, filter, record);
        self.put_in_trie(session, filter, record, read_check);
        if existed {
            Subscribed::Replaced
        } else {
            Subscribed::New
        }
    }

    /// Unsubscribes `session` from `filter`; returns whether it was subscribed.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let mut subscriptions = session.subscriptions();
        let existed = subscriptions.remove(filter).is_some();
        if existed {
            self.log_unsubscribe(session, filter);
            session.delivery().cancel_replay(filter);
        }
        self.take_from_trie(session, filter);
        existed
    }

    /// Re-checks `session`'s subscriptions under `acl` (`None`: no ACL file): filters it may
    /// no longer read are removed, the others get `acl` for their delivery checks (or none
    /// when wholly readable). Used when a session resumes under a connection that may have
    /// another user name, and when a reload brings new rules.
    pub fn reapply_acl(&self, session: &Arc<Session>, acl: Option<&Arc<ClientAcl>>) {
        let mut subscriptions = session.subscriptions();
        if session.is_ended() {
            return;
        }
        let current: Vec<(Arc<str>, SubscriptionRecord)> = subscriptions
            .iter()
            .map(|(filter, record)| (filter.clone(), *record))
            .collect();
        for (filter, record) in current {
            let verdict = acl.map_or(SubscribeVerdict::Allowed, |acl| {
                acl.check_subscribe(&filter)
            });
            if verdict == SubscribeVerdict::Denied {
                subscriptions.remove(&filter);
                self.log_unsubscribe(session, &filter);
                self.take_from_trie(session, &filter);
                Metrics::add(&self.inner.metrics.acl_denied, 1);
                tracing::debug!(client_id = %session.client_id, %filter, "subscription no longer allowed: removed");
            } else {
                let check = acl.filter(|_| verdict == SubscribeVerdict::Filtered);
                self.put_in_trie(session, &filter, record, check.cloned());
            }
        }
    }

    /// Re-derives the ACL of every connected session from `state` and re-checks its
    /// subscriptions; returns how many sessions were re-checked. Offline sessions are
    /// re-checked when they resume.
    pub fn recheck_subscriptions(&self, state: &AuthState) -> usize {
        let mut rechecked = 0;
        for session in self.sessions() {
            let Some(username) = session.delivery().link_username() else {
                continue; // offline
            };
            let acl = self.client_acl(state, &session.client_id, username.as_deref());
            self.reapply_acl(&session, acl.as_ref());
            rechecked += 1;
        }
        rechecked
    }

    /// Starts sending `session` the retained messages matching `filter`, just subscribed
    /// with `granted` QoS (the delivery QoS is the lower of it and the message's),
    /// `read_check` and `subscription_id`. Sent because of a subscribe: RETAIN is 1
    /// ([MQTT-3.3.1-8]); the ACL's read check applies to them too. A cursor over the store,
    /// paced by the subscriber (`session/replay.rs`): all of them reach a client that keeps
    /// reading, whatever their number ([MQTT-3.3.1-9]).
    pub fn send_retained(
        &self,
        session: &Arc<Session>,
        filter: &str,
        granted: QoS,
        read_check: Option<&Arc<ClientAcl>>,
        subscription_id: Option<u32>,
        now: Instant,
    ) {
        let request = ReplayRequest {
            filter: Arc::from(filter),
            granted,
            subscription_id,
            read_check: read_check.cloned(),
            upto_seq: self.inner.retained.seq(),
        };
        session
            .delivery()
            .start_replay(request, self.deliver_ctx(now));
    }

    /// Removes every subscription of `session` (it has ended).
    pub(super) fn drop_subscriptions(&self, session: &Arc<Session>) {
        let mut subscriptions = session.subscriptions();
        for (filter, _) in subscriptions.drain() {
            self.take_from_trie(session, &filter);
        }
    }

    fn put_in_trie(
        &self,
        session: &Arc<Session>,
        filter: &str,
        record: SubscriptionRecord,
        read_check: Option<Arc<ClientAcl>>,
    ) {
        let added = self.inner.router.subscribe_checked(
            filter,
            session,
            record.options,
            record.subscription_id,
            read_check,
        );
        if added {
            Metrics::add(&self.inner.metrics.subscriptions, 1);
            if let Some(cluster) = self.inner.cluster.get() {
                cluster.interest_added(filter);
            }
        }
    }

    fn take_from_trie(&self, session: &Arc<Session>, filter: &str) {
        if self.inner.router.unsubscribe(filter, session.id) {
            Metrics::sub(&self.inner.metrics.subscriptions, 1);
            if let Some(cluster) = self.inner.cluster.get() {
                cluster.interest_removed(filter);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tern_codec::{QoS, SubscriptionOptions};

    fn record() -> SubscriptionRecord {
        SubscriptionRecord {
            options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            subscription_id: None,
        }
    }

    /// An UNSUBSCRIBE racing a reload's re-check: once the UNSUBSCRIBE is done, no trie entry
    /// of the session is left (issue #10: the re-check worked from a snapshot of the
    /// subscriptions and put a just-removed filter back into the trie, where it kept
    /// delivering).
    #[test]
    fn unsubscribe_racing_a_recheck_leaves_no_trie_entry() {
        let broker = Broker::new(Config::default_config());
        let (session, _) = broker.open_session("c", true);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, s, d) = (broker.clone(), session.clone(), done.clone());
        let recheck = std::thread::spawn(move || {
            while !d.load(std::sync::atomic::Ordering::Relaxed) {
                b.reapply_acl(&s, None);
            }
        });
        let mut left_behind = 0;
        for _ in 0..20_000 {
            broker.subscribe(&session, "a/b", record(), None, 0);
            broker.unsubscribe(&session, "a/b");
            // Under the session's lock the record and the trie must agree: no entry for a
            // filter the session no longer holds.
            let subscriptions = session.subscriptions();
            if subscriptions.is_empty() && broker.trie_entries() != 0 {
                left_behind += 1;
            }
            drop(subscriptions);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        recheck.join().expect("recheck");
        assert_eq!(left_behind, 0, "trie entries outlived their UNSUBSCRIBE");
        assert_eq!(broker.trie_entries(), 0);
    }

    /// A SUBSCRIBE after its session ended adds nothing (the end released what it saw).
    #[test]
    fn subscribe_after_the_end_adds_nothing() {
        let broker = Broker::new(Config::default_config());
        let (session, _) = broker.open_session("c", true);
        broker.subscribe(&session, "x", record(), None, 0);
        broker.end_session(&session);
        assert_eq!(broker.trie_entries(), 0);
        assert_eq!(
            broker.subscribe(&session, "y", record(), None, 0),
            Subscribed::SessionEnded
        );
        assert_eq!(broker.trie_entries(), 0);
        assert!(!broker.has_session("c"));
    }

    /// `max_subscriptions_per_client` counts new filters only; replacing one is allowed.
    #[test]
    fn quota_counts_new_filters_only() {
        let broker = Broker::new(Config::default_config());
        let (session, _) = broker.open_session("c", true);
        assert_eq!(
            broker.subscribe(&session, "a", record(), None, 2),
            Subscribed::New
        );
        assert_eq!(
            broker.subscribe(&session, "b", record(), None, 2),
            Subscribed::New
        );
        assert_eq!(
            broker.subscribe(&session, "c", record(), None, 2),
            Subscribed::QuotaExceeded
        );
        assert_eq!(
            broker.subscribe(&session, "a", record(), None, 2),
            Subscribed::Replaced
        );
        assert_eq!(broker.trie_entries(), 2);
        assert_eq!(Metrics::get(&broker.metrics().subscriptions), 2);
    }
}
