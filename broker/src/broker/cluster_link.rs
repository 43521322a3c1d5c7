//! The broker's side of a cluster: the [`ClusterLink`] trait a cluster engine implements,
//! and the broker operations such an engine calls back (routing and retaining messages that
//! come from other nodes).
//!
//! The broker knows no more of clustering than this trait: which messages leave the node
//! ([`ClusterLink::forward`]), which filters its subscribers hold (the interest hooks, kept
//! in step with the trie by [`super::subscriptions`]) and when a new filter's interest is
//! in force cluster-wide (so that SUBACK can wait for it). Without a link (`[cluster]` off)
//! each hook is one load of an empty cell. The engine itself is [`crate::cluster`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tern_codec::LastWill;
use tokio::time::Instant;

use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::RouteScratch;
use crate::session::Session;

use super::Broker;

/// A wait on the cluster: until it has taken a filter's interest (or gave up waiting), or
/// until its queue to NATS has drained below the high-water mark. `Sync`: a connection
/// holds it across its own awaits.
pub type InterestReady = Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>>;

/// Completes once the cluster made this node the owner of a client id (or gave up).
pub type ClaimWait = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What a cluster engine does for the broker. Called on publishers' and subscribers' tasks:
/// every method must return quickly and never block.
pub trait ClusterLink: Send + Sync + fmt::Debug {
    /// `messages` were published on this node (and routed here already), in this order:
    /// send them to the nodes with interest, and store or delete them in the cluster's
    /// retained set if RETAIN. Returns the last one's position for
    /// [`ClusterLink::poll_confirmed`] (0: nothing to wait for).
    fn forward(&self, messages: &[Arc<Message>], now: Instant) -> u64;

    /// Gives `message`, published here, its cluster identity (this node, its sequence
    /// number) before it is routed, so that a session queueing it can hand it over with it;
    /// [`ClusterLink::forward`] then sends it under that identity. A QoS 0 message that is
    /// not retained gets none (it is never queued for a session): `forward` numbers it.
    fn identify(&self, message: &Message);

    /// Whether `message` cannot reach the other nodes at all (a retained message larger
    /// than NATS takes): the publisher's connection refuses it instead of routing it.
    fn refuses(&self, message: &Message) -> bool;

    /// Every message forwarded up to this position is in NATS.
    fn confirmed_position(&self) -> u64;

    /// Ready once NATS has every message forwarded up to `position` (registers the waker
    /// otherwise).
    fn poll_confirmed(&self, position: u64, cx: &mut std::task::Context<'_>)
        -> std::task::Poll<()>;

    /// The retained message of `message`'s topic changed on this node without a live
    /// delivery (an administrative delete: an empty payload).
    fn retain_only(&self, message: &Arc<Message>, now: Instant);

    /// A local subscriber now holds `filter` (one more holder; may be `$share/…`).
    fn interest_added(&self, filter: &str);

    /// A local subscriber let go of `filter` (one holder fewer).
    fn interest_removed(&self, filter: &str);

    /// Waits until the cluster routes messages matching `filter` to this node; `None` when it
    /// does already.
    fn interest_ready(&self, filter: &str) -> Option<InterestReady>;

    /// Makes this node the owner of `client_id` before its session is opened here (another
    /// node holding it closes that connection with 0x8E and, when the CONNECT `resume`s,
    /// hands the session over: [`Broker::adopt_session`]); `None` when nothing is to wait
    /// for.
    fn claim(&self, client_id: &str, resume: bool) -> Option<ClaimWait>;

    /// The CONNECT that claimed `client_id` ([`ClusterLink::claim`]) has attached its
    /// session: false when another node took the id over in between (the session must
    /// end here).
    fn attached(&self, client_id: &str) -> bool;

    /// The expiry or the subscriptions of `client_id`'s session changed (called under the
    /// session's locks: only take note; read it later with
    /// [`Broker::stored_session_form`]).
    fn session_changed(&self, client_id: &Arc<str>);

    /// The will `client_id`'s session would publish if this node died is now `form` (the
    /// handover form of [`Broker::will_form`]; `None`: no will).
    fn will_changed(&self, client_id: &Arc<str>, form: Option<Vec<u8>>);

    /// `client_id`'s session ended on this node (not handed over to another node).
    fn session_ended(&self, client_id: &Arc<str>);

    /// When messages wait for NATS past the high-water mark: completes once they have
    /// drained below it. A publisher waits on it before reading more (back-pressure
    /// instead of dropping cross-node copies).
    fn congested(&self) -> Option<InterestReady>;

    /// This node's name in the cluster.
    fn node_name(&self) -> &str;

    /// This node's cluster counters as `(name, help, value)`, for `/metrics`.
    fn counters(&self) -> Vec<(&'static str, &'static str, u64)>;

    /// This node's cluster counters and the members it sees, for `/api/stats` and the
    /// dashboard.
    fn stats(&self) -> serde_json::Value;
}

impl Broker {
    /// Joins a cluster: from now on local publishes are forwarded through `link` and the
    /// filters of subscribers are announced to it, those already held first (sessions
    /// recovered from disk). Once, before the listeners open.
    pub fn attach_cluster(&self, link: Arc<dyn ClusterLink>) {
        if self.inner.cluster.set(link.clone()).is_err() {
            return;
        }
        self.inner.router.serve_groups_by_cluster();
        for session in self.sessions() {
            for (filter, _) in session.subscriptions().iter() {
                link.interest_added(filter);
            }
        }
    }

    /// Waits until this node owns `client_id` cluster-wide, with the session handed over
    /// from the node that held it when the CONNECT `resume`s (`None`: no cluster).
    pub fn claim_client(&self, client_id: &str, resume: bool) -> Option<ClaimWait> {
        self.inner.cluster.get()?.claim(client_id, resume)
    }

    /// The CONNECT that claimed `client_id` has attached its session; if another node took
    /// the id over in between, the session ends here (its connection gets 0x8E).
    pub fn cluster_attached(&self, client_id: &str) {
        let Some(cluster) = self.inner.cluster.get() else {
            return;
        };
        if !cluster.attached(client_id) {
            if let Some(session) = self.session(client_id) {
                tracing::debug!(client_id, "cluster: taken over while connecting");
                self.end_session(&session);
            }
        }
    }

    /// Tells the cluster that `session`'s expiry or subscriptions changed.
    pub(super) fn cluster_session_changed(&self, session: &Session) {
        if let Some(cluster) = self.inner.cluster.get() {
            cluster.session_changed(&session.client_id);
        }
    }

    /// Tells the cluster that `session`'s subscriptions changed, when it keeps them (a
    /// persistent session: a session with expiry 0 has nothing stored, its CONNECT said
    /// so already).
    pub(super) fn cluster_subscriptions_changed(&self, session: &Session) {
        if session.expiry_secs() > 0 {
            self.cluster_session_changed(session);
        }
    }

    /// Tells the cluster the will `session` would publish if this node died.
    pub(super) fn cluster_will(&self, session: &Session, will: Option<&LastWill>) {
        if let Some(cluster) = self.inner.cluster.get() {
            let form = will.map(|will| self.will_form(session, will));
            cluster.will_changed(&session.client_id, form);
        }
    }

    /// Tells the cluster that `session` ended here (unless it went on on another node).
    pub(super) fn cluster_session_ended(&self, session: &Session) {
        if let Some(cluster) = self.inner.cluster.get() {
            if !session.is_handed_over() {
                cluster.session_ended(&session.client_id);
            }
        }
    }

    /// Waits while the queue to the other nodes is over its high-water mark (`None`: no
    /// cluster, or it is not).
    pub fn cluster_congested(&self) -> Option<InterestReady> {
        self.inner.cluster.get()?.congested()
    }

    /// Whether the cluster cannot carry `message` to the other nodes (a retained message
    /// larger than the NATS server's `max_payload`); `false` without a cluster.
    pub fn cluster_refuses(&self, message: &Message) -> bool {
        self.inner
            .cluster
            .get()
            .is_some_and(|cluster| cluster.refuses(message))
    }

    /// How far the cluster has confirmed this node's messages (`u64::MAX`: no cluster,
    /// nothing to wait for). Acknowledgements held for a position wait until this reaches
    /// it, as they wait for the journal ([`Broker::durable_position`]).
    pub fn confirmed_position(&self) -> u64 {
        self.inner
            .cluster
            .get()
            .map_or(u64::MAX, |c| c.confirmed_position())
    }

    /// Ready once the cluster has confirmed `position` (at once without a cluster).
    pub fn poll_confirmed(
        &self,
        position: u64,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match self.inner.cluster.get() {
            Some(cluster) => cluster.poll_confirmed(position, cx),
            None => std::task::Poll::Ready(()),
        }
    }

    /// The cluster this node belongs to, if any.
    pub fn cluster(&self) -> Option<&Arc<dyn ClusterLink>> {
        self.inner.cluster.get()
    }

    /// Waits until messages matching `filter` published on other nodes reach this one
    /// (`None`: no cluster, or they do already).
    pub fn interest_ready(&self, filter: &str) -> Option<InterestReady> {
        self.inner.cluster.get()?.interest_ready(filter)
    }

    /// Routes a message that another node published to the local subscribers (not stored as
    /// retained: the cluster's retained set does that; not forwarded again). Returns the
    /// number of deliveries.
    pub fn route_remote(
        &self,
        message: &Arc<Message>,
        scratch: &mut RouteScratch,
        now: Instant,
    ) -> usize {
        let delivered = self
            .inner
            .router
            .route(message, scratch, self.deliver_ctx(now));
        // Nobody to hold back: the sender is another node. Slow subscribers are handled by
        // their own caps.
        drop(scratch.take_pressure());
        delivered
    }

    /// [`Broker::route_remote`] for a run of messages of one topic and QoS (0 or 1), not
    /// retained ([`crate::router::Router::route_run`]).
    pub fn route_remote_run(
        &self,
        messages: &[Arc<Message>],
        scratch: &mut RouteScratch,
        now: Instant,
    ) -> usize {
        let delivered = self
            .inner
            .router
            .route_run(messages, scratch, self.deliver_ctx(now));
        drop(scratch.take_pressure());
        delivered
    }

    /// Delivers a message the cluster picked this node for to one member of the shared
    /// group subscribed as `key` (`$share/{group}/{filter}`); returns 0 when it has no
    /// member here any more.
    pub fn route_to_group(
        &self,
        key: &str,
        message: &Arc<Message>,
        scratch: &mut RouteScratch,
        now: Instant,
    ) -> usize {
        let delivered = self
            .inner
            .router
            .route_group(key, message, scratch, self.deliver_ctx(now));
        drop(scratch.take_pressure());
        delivered
    }

    /// Stores (or, empty, deletes) a retained message as the cluster's retained set has it,
    /// without routing it.
    pub fn store_remote_retained(&self, message: &Arc<Message>, now: Instant) {
        match self.inner.retained.update(message, self.journal(), now) {
            1 => Metrics::add(&self.inner.metrics.retained_messages, 1),
            -1 => Metrics::sub(&self.inner.metrics.retained_messages, 1),
            _ => {}
        }
    }
}
