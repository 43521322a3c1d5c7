//! [`Broker`]: the shared state of one running broker (configuration, session registry,
//! router, retained store, counters, shutdown signal) and the operations that span them:
//! opening and ending sessions, publishing a message.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tern_codec::ByteStr;
use tokio::sync::{watch, Semaphore};

use crate::auth::{Auth, AuthError, AuthState};
use crate::config::Config;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::retained::RetainedStore;
use crate::router::{RouteScratch, Router};
use crate::session::delivery::{DeliverCtx, Redirect};
use crate::session::Session;

/// A handle to the broker; cheap to clone.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// The state behind a [`Broker`].
#[derive(Debug)]
pub struct Inner {
    /// Configuration in force.
    pub config: Config,
    /// Subscriptions.
    pub router: Router,
    /// Retained messages.
    pub retained: RetainedStore,
    /// Client identifier -> session.
    pub sessions: DashMap<Arc<str>, Arc<Session>>,
    /// Counters.
    pub metrics: Metrics,
    /// Bridge rings (SSE, WebSocket JSON) and bridge clients ([`crate::bridge`]).
    pub bridges: crate::bridge::Bridges,
    /// Password file and ACL in force ([`crate::auth`]).
    pub auth: Auth,
    /// When the broker started.
    pub started_at: Instant,
    /// The limits in force: the configured ones until a SIGHUP reload replaces them. New
    /// connections take a snapshot; broker-wide checks read them each time.
    limits: std::sync::RwLock<Arc<crate::config::Limits>>,
    /// `limits.slow_consumer_timeout_ms`, read on every delivery: an atomic, not the lock.
    slow_consumer_timeout_ms: AtomicU64,
    /// `limits.backpressure_queued_messages`, read on every delivery.
    backpressure_queued_messages: std::sync::atomic::AtomicUsize,
    /// Wakes publishers held back by slow subscribers ([`crate::backpressure`]).
    pub relief: crate::backpressure::Relief,
    /// Enforces the connections' keep alive ([`crate::keep_alive`]).
    pub keep_alive: Arc<crate::keep_alive::KeepAlive>,
    /// Time to store and route one received PUBLISH (seconds).
    pub route_latency: prometheus_client::metrics::histogram::Histogram,
    /// Per-IP connection count and connect rate.
    pub ip_limits: std::sync::Arc<crate::listener::ip_limits::IpLimits>,
    /// One permit per allowed connection; all permits back means all connections ended.
    pub connection_slots: Arc<Semaphore>,
    next_session_id: AtomicU64,
    shutdown_tx: watch::Sender<bool>,
}

impl std::ops::Deref for Broker {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
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
        let slots = config.limits.max_connections.min(Semaphore::MAX_PERMITS);
        Broker {
            inner: Arc::new(Inner {
                router: Router::default(),
                retained: RetainedStore::default(),
                sessions: DashMap::new(),
                metrics: Metrics::default(),
                bridges: crate::bridge::Bridges::default(),
                auth: Auth::new(auth),
                started_at: Instant::now(),
                limits: std::sync::RwLock::new(Arc::new(config.limits.clone())),
                slow_consumer_timeout_ms: AtomicU64::new(config.limits.slow_consumer_timeout_ms),
                backpressure_queued_messages: std::sync::atomic::AtomicUsize::new(
                    config.limits.backpressure_queued_messages,
                ),
                relief: crate::backpressure::Relief::default(),
                keep_alive: Arc::default(),
                route_latency: prometheus_client::metrics::histogram::Histogram::new(
                    prometheus_client::metrics::histogram::exponential_buckets(1e-6, 4.0, 10),
                ),
                connection_slots: Arc::new(Semaphore::new(slots)),
                ip_limits: crate::listener::ip_limits::IpLimits::new(
                    config.limits.max_connections_per_ip,
                    config.limits.max_connect_rate_per_ip,
                ),
                next_session_id: AtomicU64::new(1),
                shutdown_tx,
                config,
            }),
        }
    }

    /// Signals every connection and listener to shut down. MQTT connections are kicked
    /// through their session's link (they hold no shutdown receiver: that keeps an idle
    /// connection's task small); a connection attaching meanwhile sees the flag instead.
    pub fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
        for entry in self.sessions.iter() {
            if let Some(writer) = entry.value().delivery().link_writer() {
                writer.kick(crate::error::Kick::Shutdown);
            }
        }
    }

    /// A receiver that changes to `true` when the broker shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Whether shutdown has been signalled.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown_tx.borrow()
    }

    /// The limits in force.
    pub fn limits(&self) -> Arc<crate::config::Limits> {
        self.limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts new limits in force (SIGHUP reload): for new connections and broker-wide
    /// checks. `max_connections` keeps its startup value (the connection semaphore is sized
    /// once).
    pub fn set_limits(&self, limits: crate::config::Limits) {
        self.ip_limits.set_bounds(
            limits.max_connections_per_ip,
            limits.max_connect_rate_per_ip,
        );
        self.backpressure_queued_messages
            .store(limits.backpressure_queued_messages, Ordering::Relaxed);
        self.slow_consumer_timeout_ms
            .store(limits.slow_consumer_timeout_ms, Ordering::Relaxed);
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(limits);
    }

    /// Delivery context for `now`.
    pub fn deliver_ctx(&self, now: Instant) -> DeliverCtx<'_> {
        DeliverCtx {
            metrics: &self.metrics,
            now,
            slow_consumer_timeout: Duration::from_millis(
                self.slow_consumer_timeout_ms.load(Ordering::Relaxed),
            ),
            backpressure_queued_messages: self.backpressure_queued_messages.load(Ordering::Relaxed),
        }
    }

    /// Stores (if RETAIN) and routes a message; returns the number of sessions it went to.
    pub fn publish(
        &self,
        message: &Arc<Message>,
        scratch: &mut RouteScratch,
        now: Instant,
    ) -> usize {
        if message.publish().retain {
            let delta = self.retained.update(message);
            match delta {
                1 => Metrics::add(&self.metrics.retained_messages, 1),
                -1 => Metrics::sub(&self.metrics.retained_messages, 1),
                _ => {}
            }
        }
        self.router.route(message, scratch, self.deliver_ctx(now))
    }

    /// A client identifier for a client that sent an empty one.
    pub fn assign_client_id(&self) -> ByteStr {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(self.next_session_id.load(Ordering::Relaxed));
        hasher.write_u128(self.started_at.elapsed().as_nanos());
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
            let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
            Arc::new(Session::new(
                id,
                client_id.clone(),
                limits.max_queued_messages,
                limits.max_queued_bytes,
            ))
        };
        let mut replaced = None;
        // The DashMap guard lives only inside this block; ending the old session touches
        // the map again, so it happens after.
        let (session, present) = match self.sessions.entry(client_id.clone()) {
            Entry::Occupied(mut occupied) => {
                if clean_start || occupied.get().is_ended() {
                    let fresh = make();
                    replaced = Some(occupied.insert(fresh.clone()));
                    (fresh, false)
                } else {
                    (occupied.get().clone(), true)
                }
            }
            Entry::Vacant(vacant) => {
                let fresh = make();
                vacant.insert(fresh.clone());
                (fresh, false)
            }
        };
        if !present {
            Metrics::add(&self.metrics.sessions, 1);
        }
        if let Some(old) = replaced {
            if let Some(link) = old.delivery().take_link() {
                Metrics::add(&self.metrics.session_takeovers, 1);
                link.writer.kick(crate::error::Kick::TakenOver);
            }
            self.end_session(&old);
        }
        (session, present)
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
        for Redirect { message, group } in redirects {
            match group.pick_other(leaving_session) {
                Some(member) => {
                    let topic = message.publish().topic();
                    if member
                        .read_check
                        .as_ref()
                        .is_some_and(|acl| !acl.allows_read(topic))
                    {
                        Metrics::add(&self.metrics.acl_denied, 1);
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
                        Some(&group),
                        ctx,
                    );
                }
                None => Metrics::add(&self.metrics.dropped_shared_no_member, 1),
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
            link.writer.kick(crate::error::Kick::TakenOver);
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
    fn release_session(&self, session: &Arc<Session>) {
        let filters: Vec<Arc<str>> = session
            .subscriptions()
            .drain()
            .into_iter()
            .map(|(filter, _)| filter)
            .collect();
        for filter in &filters {
            if self.router.unsubscribe(filter, session.id) {
                Metrics::sub(&self.metrics.subscriptions, 1);
            }
        }
        let redirects = session.delivery().take_shared(true);
        self.redirect_shared(session.id, redirects);
        let dropped = session.delivery().clear();
        if dropped > 0 {
            tracing::debug!(client_id = %session.client_id, dropped, "session ended with undelivered messages");
        }
        self.sessions
            .remove_if(&session.client_id, |_, registered| {
                Arc::ptr_eq(registered, session)
            });
        Metrics::sub(&self.metrics.sessions, 1);
        session.wake_timers();
    }
}
