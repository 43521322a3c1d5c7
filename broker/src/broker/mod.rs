//! [`Broker`]: the state of one running broker, private behind a small API.
//!
//! The broker owns the session registry ([`sessions`]), the subscriptions as the router's
//! trie and each session's record of them, kept together by one set of operations
//! ([`subscriptions`]), the retained store ([`crate::retained`]), the offline timers of sessions
//! (will delay, session expiry: [`timers`]), the limits in force and the counters. Nothing
//! outside reaches into its fields: connections, the HTTP bridges and `$SYS` call its
//! methods (open/resume/end a session, subscribe, publish, reload).

pub mod cluster_link;
mod handover;
mod handover_form;
mod handover_merge;
mod journaling;
pub mod persist;
mod publish;
mod sessions;
mod subscriptions;
pub mod timers;
pub mod will;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use dashmap::DashMap;
use tokio::sync::{watch, Semaphore};

use crate::auth::{Auth, AuthError, AuthState};
use crate::backpressure::Relief;
use crate::config::{Config, HttpConfig, Limits, MqttFeatures, Redirect, SessionConfig, SysConfig};
use crate::delivery::budget::ByteBudget;
use crate::ip_limits::IpLimits;
use crate::journal::Journal;
use crate::keep_alive::KeepAlive;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::retained::RetainedStore;
use crate::router::{BridgeSink, Router};
use crate::session::delivery::DeliverCtx;
use crate::session::Session;

pub use self::cluster_link::{ClaimWait, ClusterLink, InterestReady};
pub use self::handover::{Adopted, HandedOver, Handover};
pub use self::handover_form::HandoverError;
pub use self::handover_merge::Prepared;
pub use self::subscriptions::Subscribed;

/// A handle to the broker; cheap to clone.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// The state behind a [`Broker`].
#[derive(Debug)]
struct Inner {
    /// Configuration read at startup. Its `limits` are never read: [`Broker::limits`] is
    /// the only way to the limits in force.
    config: Config,
    /// Subscriptions: the trie. Changed only through [`subscriptions`], with the sessions'
    /// records.
    router: Router,
    /// Retained messages.
    retained: RetainedStore,
    /// Client identifier -> session: a set of sessions found by their client id
    /// ([`sessions::Registered`]), 8 bytes a bucket where a map from the id takes 24.
    sessions: DashMap<sessions::Registered, ()>,
    /// Counters.
    metrics: Metrics,
    /// Password file and ACL in force ([`crate::auth`]).
    auth: Auth,
    /// When the broker started.
    started_at: Instant,
    /// The limits in force: the configured ones until a SIGHUP reload replaces them. New
    /// connections take a snapshot; broker-wide checks read them each time.
    limits: std::sync::RwLock<Arc<Limits>>,
    /// The `[mqtt]` section in force (capabilities, response information, redirection),
    /// swapped by a reload like the limits.
    features: std::sync::RwLock<Arc<MqttFeatures>>,
    /// Set by [`Broker::drain`]: new connections are redirected even when `[mqtt]
    /// redirect` is "none" (0x9C then); cleared by a reload that sets it to "none".
    draining: std::sync::atomic::AtomicBool,
    /// `limits.slow_consumer_timeout_ms`, read on every delivery: an atomic, not the lock.
    slow_consumer_timeout_ms: AtomicU64,
    /// `limits.backpressure_queued_messages`, read on every delivery.
    backpressure_queued_messages: std::sync::atomic::AtomicUsize,
    /// Wakes publishers held back by slow subscribers ([`crate::backpressure`]).
    relief: Relief,
    /// Bytes held for all clients, against `max_total_queued_bytes`; every session holds
    /// a reference ([`ByteBudget`]).
    budget: Arc<ByteBudget>,
    /// Enforces the connections' keep alive ([`crate::keep_alive`]).
    keep_alive: Arc<KeepAlive>,
    /// Finds the connections idle long enough to park ([`crate::idle_sweep`]).
    idle_sweep: Arc<crate::idle_sweep::IdleSweep>,
    /// Will delay and session expiry of offline sessions ([`timers`]).
    timers: Arc<timers::Timers>,
    /// Time to store and route one received PUBLISH (seconds).
    route_latency: prometheus_client::metrics::histogram::Histogram,
    /// Per-IP connection count and connect rate.
    ip_limits: Arc<IpLimits>,
    /// One permit per allowed connection; all permits back means all connections ended.
    connection_slots: Arc<Semaphore>,
    /// The number of permits `connection_slots` started with.
    connection_slot_count: u32,
    next_session_id: AtomicU64,
    shutdown_tx: watch::Sender<bool>,
    /// The journal, when persistence is on: set once, after recovery, before listeners open.
    journal: std::sync::OnceLock<Arc<Journal>>,
    /// State and counters of the MQTT bridges (written by [`crate::config::mqtt_bridges`]'
    /// tasks, read by the exports).
    bridge_links: crate::metrics::bridge_links::BridgeLinks,
    /// The cluster, when `[cluster]` is on: set once, before listeners open. Empty, every
    /// cluster hook costs one load.
    cluster: std::sync::OnceLock<Arc<dyn ClusterLink>>,
    /// Sessions recovered expired, whose wills wait for the cluster join
    /// ([`Broker::defer_recovered_wills`]).
    recovered_expired: std::sync::Mutex<Vec<persist::Expired>>,
}

impl Broker {
    /// A broker with `config`, its `[auth]` files loaded; nothing listens until a listener
    /// runs it.
    ///
    /// # Errors
    /// A password or ACL file could not be loaded ([`AuthError`] names file and line).
    pub fn try_new(config: Config) -> Result<Broker, AuthError> {
        let auth = AuthState::load(&config.auth)?;
        Ok(Broker::with_auth(config, auth))
    }

    /// Like [`Broker::try_new`], but when the `[auth]` files cannot be loaded the error is
    /// logged and the broker fails closed ([`AuthState::deny_all`]: no client gets in).
    pub fn new(config: Config) -> Broker {
        let auth = AuthState::load(&config.auth).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot load [auth] files: refusing every client");
            AuthState::deny_all()
        });
        Broker::with_auth(config, auth)
    }

    fn with_auth(config: Config, auth: AuthState) -> Broker {
        let (shutdown_tx, _) = watch::channel(false);
        let limits = &config.limits;
        let slots = limits.max_connections.min(Semaphore::MAX_PERMITS);
        // Every configured bridge has a status from the start (down until it connects).
        let bridge_links = crate::metrics::bridge_links::BridgeLinks::default();
        for bridge in &config.mqtt_bridges {
            bridge_links.get_or_add(&bridge.name);
        }
        Broker {
            inner: Arc::new(Inner {
                router: Router::default(),
                retained: RetainedStore::default(),
                budget: Arc::new(ByteBudget::new(limits.total_queued_bytes())),
                sessions: DashMap::new(),
                metrics: Metrics::default(),
                auth: Auth::new(auth),
                started_at: Instant::now(),
                limits: std::sync::RwLock::new(Arc::new(limits.clone())),
                features: std::sync::RwLock::new(Arc::new(config.mqtt.clone())),
                draining: std::sync::atomic::AtomicBool::new(false),
                slow_consumer_timeout_ms: AtomicU64::new(limits.slow_consumer_timeout_ms),
                backpressure_queued_messages: std::sync::atomic::AtomicUsize::new(
                    limits.backpressure_queued_messages,
                ),
                relief: Relief::default(),
                keep_alive: Arc::default(),
                idle_sweep: Arc::default(),
                timers: Arc::default(),
                route_latency: prometheus_client::metrics::histogram::Histogram::new(
                    prometheus_client::metrics::histogram::exponential_buckets(1e-6, 4.0, 10),
                ),
                connection_slots: Arc::new(Semaphore::new(slots)),
                connection_slot_count: u32::try_from(slots).unwrap_or(u32::MAX),
                ip_limits: IpLimits::new(
                    limits.max_connections_per_ip,
                    limits.max_connect_rate_per_ip,
                ),
                next_session_id: AtomicU64::new(1),
                shutdown_tx,
                journal: std::sync::OnceLock::new(),
                bridge_links,
                cluster: std::sync::OnceLock::new(),
                recovered_expired: std::sync::Mutex::new(Vec::new()),
                config,
            }),
        }
    }

    /// Signals every connection and listener to shut down. MQTT connections are kicked
    /// through their session's link (they hold no shutdown receiver: that keeps an idle
    /// connection's task small); a connection attaching meanwhile sees the flag instead.
    pub fn shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
        for entry in self.inner.sessions.iter() {
            if let Some(writer) = entry.key().0.delivery().link_writer() {
                writer.control().kick(crate::error::Kick::Shutdown);
            }
        }
    }

    /// A receiver that changes to `true` when the broker shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown_tx.subscribe()
    }

    /// Whether shutdown has been signalled.
    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown_tx.borrow()
    }

    /// The limits in force (the only way to read them: they change on reload).
    pub fn limits(&self) -> Arc<Limits> {
        self.inner
            .limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts new limits in force (SIGHUP reload): for new connections and broker-wide
    /// checks. `max_connections` keeps its startup value (the connection semaphore is sized
    /// once).
    pub fn set_limits(&self, limits: Limits) {
        let inner = &self.inner;
        inner.ip_limits.set_bounds(
            limits.max_connections_per_ip,
            limits.max_connect_rate_per_ip,
        );
        inner
            .backpressure_queued_messages
            .store(limits.backpressure_queued_messages, Ordering::Relaxed);
        inner
            .slow_consumer_timeout_ms
            .store(limits.slow_consumer_timeout_ms, Ordering::Relaxed);
        inner.budget.set_max_bytes(limits.total_queued_bytes());
        *inner.limits.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(limits);
    }

    /// The `[mqtt]` section in force.
    pub fn features(&self) -> Arc<MqttFeatures> {
        self.inner
            .features
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a new `[mqtt]` section in force (reload), for new connections. Turning
    /// redirection on also drains the connected clients ([`Broker::drain`]); turning it
    /// off ends a drain. Returns how many connections were asked to leave.
    pub fn set_features(&self, features: MqttFeatures) -> usize {
        let was = self.features().redirect;
        let now = features.redirect;
        *self
            .inner
            .features
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(features);
        if now == Redirect::None {
            self.inner.draining.store(false, Ordering::Release);
            return 0;
        }
        if was == Redirect::None {
            return self.drain();
        }
        0
    }

    /// The redirection new connections get: `[mqtt] redirect`, or 0x9C while draining.
    pub fn redirect(&self) -> Redirect {
        match self.features().redirect {
            Redirect::None if self.inner.draining.load(Ordering::Acquire) => {
                Redirect::UseAnotherServer
            }
            mode => mode,
        }
    }

    /// Moves every client off this broker (SIGUSR1, or a reload turning redirection on):
    /// new connections are refused with the redirection from now on, and connected ones
    /// are closed, 5.0 clients with DISCONNECT 0x9C (0x9D with `redirect = "server_moved"`)
    /// carrying the Server Reference. Their sessions stay (and their wills are not
    /// published), for the server they move to or for their return. Returns how many
    /// connections were asked to leave.
    pub fn drain(&self) -> usize {
        self.inner.draining.store(true, Ordering::Release);
        let kick = match self.redirect() {
            Redirect::ServerMoved => crate::error::Kick::ServerMoved,
            _ => crate::error::Kick::UseAnotherServer,
        };
        let mut kicked = 0;
        for entry in self.inner.sessions.iter() {
            if let Some(writer) = entry.key().0.delivery().link_writer() {
                writer.control().kick(kick);
                kicked += 1;
            }
        }
        Metrics::add(&self.inner.metrics.connections_redirected, kicked as u64);
        kicked
    }

    /// Ends a [`Broker::drain`] that `[mqtt] redirect` does not ask for (a cluster node back
    /// in touch with NATS): new connections are taken again.
    pub fn end_drain(&self) {
        if self.features().redirect == Redirect::None {
            self.inner.draining.store(false, Ordering::Release);
        }
    }

    /// The ACL of an MQTT client under `state` (`None`: no ACL file), with the response
    /// topics of `[mqtt] response_information` granted: the client may read its own
    /// prefix and every client may write to any client's prefix, so that request/response
    /// works under an ACL file.
    pub fn client_acl(
        &self,
        state: &AuthState,
        client_id: &str,
        username: Option<&str>,
    ) -> Option<Arc<crate::auth::ClientAcl>> {
        let mut acl = state.client_acl(client_id, username)?;
        if let Some(response) = self.features().response_acl(client_id) {
            let acl = Arc::make_mut(&mut acl);
            if let Some(own) = &response.own_read {
                acl.grant(own, crate::auth::Access::Read);
            }
            acl.grant(&response.anyone_write, crate::auth::Access::Write);
        }
        Some(acl)
    }

    /// The `[http]` section (fixed at startup).
    pub fn http_config(&self) -> &HttpConfig {
        &self.inner.config.http
    }

    /// The `[session]` section (fixed at startup).
    pub fn session_config(&self) -> &SessionConfig {
        &self.inner.config.session
    }

    /// The `[persistence]` section (fixed at startup).
    pub fn persistence_config(&self) -> &crate::config::PersistenceConfig {
        &self.inner.config.persistence
    }

    /// The `[admin]` section as at startup (the token file is re-read on reload).
    pub fn admin_config(&self) -> &crate::config::AdminConfig {
        &self.inner.config.admin
    }

    /// The `[cluster]` section (fixed at startup).
    pub fn cluster_config(&self) -> &crate::config::ClusterConfig {
        &self.inner.config.cluster
    }

    /// The `[sys]` section (fixed at startup).
    pub fn sys_config(&self) -> &SysConfig {
        &self.inner.config.sys
    }

    /// The settings of `new` that differ from the running ones and take effect only after
    /// a restart (a reload reports them instead of applying them).
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let old = &self.inner.config;
        let mut changed = Vec::new();
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        if differs(&old.listeners, &new.listeners) {
            changed.push("listeners");
        }
        if differs(&old.http, &new.http) {
            changed.push("http");
        }
        if differs(&old.session, &new.session) {
            changed.push("session");
        }
        if differs(&old.sys, &new.sys) {
            changed.push("sys");
        }
        if old.persistence != new.persistence {
            changed.push("persistence");
        }
        if old.limits.max_connections != new.limits.max_connections {
            changed.push("limits.max_connections");
        }
        if old.log.format != new.log.format {
            changed.push("log.format");
        }
        changed
    }

    /// The broker's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// State and counters of the MQTT bridges.
    pub fn bridge_links(&self) -> &crate::metrics::bridge_links::BridgeLinks {
        &self.inner.bridge_links
    }

    /// The `[[mqtt_bridges]]` the broker started with (a reload passes its own).
    pub fn mqtt_bridges_config(&self) -> &[crate::config::MqttBridgeConfig] {
        &self.inner.config.mqtt_bridges
    }

    /// The password file and ACL in force.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// How long the broker has been running.
    pub fn uptime(&self) -> Duration {
        self.inner.started_at.elapsed()
    }

    /// When the broker started.
    pub fn started_at(&self) -> Instant {
        self.inner.started_at
    }

    /// Wake-ups for publishers held back by slow subscribers.
    pub fn relief(&self) -> &Relief {
        &self.inner.relief
    }

    /// The keep-alive sweeper of the connections.
    pub fn keep_alive(&self) -> &Arc<KeepAlive> {
        &self.inner.keep_alive
    }

    /// The sweeper that asks idle connections to park.
    pub fn idle_sweep(&self) -> &Arc<crate::idle_sweep::IdleSweep> {
        &self.inner.idle_sweep
    }

    /// The routing latency histogram (seconds per received PUBLISH).
    pub fn route_latency(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.inner.route_latency
    }

    /// Per-IP connection counts and connect rates.
    pub fn ip_limits(&self) -> &Arc<IpLimits> {
        &self.inner.ip_limits
    }

    /// One permit per allowed connection.
    pub fn connection_slots(&self) -> &Arc<Semaphore> {
        &self.inner.connection_slots
    }

    /// The number of connection permits there are (all back: every connection ended).
    pub fn connection_slot_count(&self) -> u32 {
        self.inner.connection_slot_count
    }

    /// Delivery context for `now`.
    pub fn deliver_ctx(&self, now: Instant) -> DeliverCtx<'_> {
        let inner = &self.inner;
        DeliverCtx {
            metrics: &inner.metrics,
            now,
            slow_consumer_timeout: Duration::from_millis(
                inner.slow_consumer_timeout_ms.load(Ordering::Relaxed),
            ),
            backpressure_queued_messages: inner
                .backpressure_queued_messages
                .load(Ordering::Relaxed),
            journal: self.journal(),
            retained: Some(&inner.retained),
            budget: &inner.budget,
            cache_templates: true,
        }
    }

    /// The broker-wide budget of bytes held for clients (`max_total_queued_bytes`).
    pub fn budget(&self) -> &Arc<ByteBudget> {
        &self.inner.budget
    }

    /// Sends `session` what waits for room in its connection's output buffer (a retained
    /// replay, QoS 1/2 messages kept back by the cap), as far as the room goes now.
    pub fn pump(&self, session: &Session, now: Instant) {
        session.delivery().pump(self.deliver_ctx(now));
    }

    /// The journal, when persistence is on.
    pub fn journal(&self) -> Option<&Journal> {
        self.inner.journal.get().map(|j| &**j)
    }

    /// Puts the journal in force (once, after recovery and before clients connect): from
    /// now on persistent sessions and retained messages are logged.
    pub fn attach_journal(&self, journal: Arc<Journal>) {
        let _ = self.inner.journal.set(journal);
    }

    /// How far the journal is durable (`u64::MAX` without one: nothing waits).
    pub fn durable_position(&self) -> u64 {
        self.journal().map_or(u64::MAX, Journal::durable)
    }

    /// How far the journal ([`Broker::durable_position`]) and the cluster
    /// ([`Broker::confirmed_position`]) have come, for output held for them.
    pub fn reached(&self) -> crate::delivery::shared_writer::Reached {
        crate::delivery::shared_writer::Reached {
            journal: self.durable_position(),
            cluster: self.confirmed_position(),
        }
    }

    /// Calls `f` with each retained message matching `filter` and not expired at `now`.
    pub fn for_each_retained(&self, filter: &str, now: Instant, f: impl FnMut(&Arc<Message>)) {
        self.inner.retained.for_each_match(filter, now, f);
    }

    /// Deletes the retained message of `topic` (logged like an empty retained PUBLISH, but
    /// routed to nobody); returns whether there was one.
    pub fn delete_retained(&self, topic: &str, now: Instant) -> bool {
        let empty = Message::broker_made(topic, bytes::Bytes::new(), true, now);
        let removed = self.inner.retained.update(&empty, self.journal(), now) < 0;
        if let Some(cluster) = self.inner.cluster.get() {
            cluster.retain_only(&empty, now);
        }
        if removed {
            Metrics::sub(&self.inner.metrics.retained_messages, 1);
        }
        removed
    }

    /// Removes the retained messages expired at `now`; returns how many.
    pub fn purge_expired_retained(&self, now: Instant) -> usize {
        let purged = self.inner.retained.purge_expired(now);
        Metrics::sub(&self.inner.metrics.retained_messages, purged as u64);
        purged
    }

    /// Adds bridge `sink`'s trie entry for `filter` (valid, not shared).
    pub fn subscribe_sink(&self, filter: &str, sink: Arc<dyn BridgeSink>) {
        if self.inner.router.subscribe_bridge(filter, sink) {
            if let Some(cluster) = self.inner.cluster.get() {
                cluster.interest_added(filter);
            }
        }
    }

    /// Removes bridge sink `sink_id`'s trie entry for `filter`.
    pub fn unsubscribe_sink(&self, filter: &str, sink_id: u64) {
        if self.inner.router.unsubscribe_bridge(filter, sink_id) {
            if let Some(cluster) = self.inner.cluster.get() {
                cluster.interest_removed(filter);
            }
        }
    }

    /// Number of trie entries (session subscriptions, shared groups, bridge sinks).
    pub fn trie_entries(&self) -> usize {
        self.inner.router.len()
    }
}
