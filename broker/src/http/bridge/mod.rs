//! Bridges: live topics for browsers and plain HTTP clients on the HTTP listener, from the
//! same routed stream as MQTT.
//!
//! - [`sse`]: `GET /sse?filter=..`, Server-Sent Events; [`sse_raw`] serves connections that
//!   start with that request without hyper, and [`sse_park`] keeps their idle subscribers
//!   without a task each, so an idle subscriber stays small.
//! - [`ws_json`]: `GET /ws`, a WebSocket JSON API (subscribe, unsubscribe, publish).
//! - [`mqtt_ws`]: `GET /mqtt`, MQTT over WebSocket through the ordinary connection driver.
//! - [`dashboard`]: `GET /` (a live page) and `GET /api/stats`.
//! - [`ring`]: the shared ring of one bridge subscription and the encode-once step.
//! - [`read_acl`]: which messages a ring's reader may read, and how an ACL reload reaches
//!   the rings.
//! - [`access`]: authentication, ACL, CORS and query parsing shared by the endpoints.
//!
//! A bridge subscription is a subscriber in the router's trie ([`crate::router::SubValue::Bridge`]):
//! one [`ring::Ring`] per distinct filter set and reader (user name, or anonymous), shared by
//! every client with that set and that user name: clients of one ring always have the same
//! read ACL, before and after a reload. [`Bridges`] is the registry of rings. A ring whose
//! last client left lingers for `ring_linger_ms` so that a reconnecting client can resume
//! with `Last-Event-ID`.
//!
//! This module owns the registry, the client limit and the dispatch of bridge paths; the
//! HTTP listener itself is [`crate::http`].

pub mod access;
pub mod dashboard;
pub mod mqtt_ws;
pub mod read_acl;
pub mod ring;
pub mod sse;
pub mod sse_park;
pub mod sse_raw;
pub mod ws_json;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::broker::Broker;
use crate::http::{json_error, Body};
use crate::metrics::Metrics;

use self::read_acl::Readable;
use self::ring::{Ring, RingLimits};

/// What distinguishes two rings: the filter set and whose read ACL applies (the user name,
/// `None` for anonymous). The reader is part of the key even when the filters are wholly
/// readable: a reload may change that for one user and not for another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RingKey {
    filters: Arc<[Box<str>]>,
    reader: Option<Box<str>>,
}

/// The registry of bridge rings, and the count of bridge clients: the HTTP side's state,
/// next to the broker it serves (the broker does not know its bridges: they are sinks in
/// its router, [`crate::router::BridgeSink`]).
#[derive(Debug)]
pub struct Bridges {
    broker: Broker,
    rings: Mutex<HashMap<RingKey, Arc<Ring>>>,
    next_ring_id: AtomicU64,
    clients: AtomicUsize,
    /// The admin API's credentials and reload hook ([`crate::http::admin`]).
    admin: crate::http::admin::Admin,
    /// The MQTT bridges, once started ([`crate::mqtt_bridge`]): reload reaches them here.
    mqtt_bridges: std::sync::OnceLock<Arc<crate::mqtt_bridge::MqttBridges>>,
}

impl Bridges {
    /// The (empty) bridge registry of `broker`.
    pub fn new(broker: Broker) -> Arc<Bridges> {
        Arc::new(Bridges {
            admin: crate::http::admin::Admin::new(broker.admin_config()),
            broker,
            rings: Mutex::default(),
            next_ring_id: AtomicU64::new(0),
            clients: AtomicUsize::new(0),
            mqtt_bridges: std::sync::OnceLock::new(),
        })
    }

    /// Hands over the started MQTT bridges (once, at start).
    pub fn set_mqtt_bridges(&self, bridges: Arc<crate::mqtt_bridge::MqttBridges>) {
        let _ = self.mqtt_bridges.set(bridges);
    }

    /// The MQTT bridges, once started.
    pub fn mqtt_bridges(&self) -> Option<&Arc<crate::mqtt_bridge::MqttBridges>> {
        self.mqtt_bridges.get()
    }

    /// The broker the bridges serve.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The admin API's state.
    pub fn admin(&self) -> &crate::http::admin::Admin {
        &self.admin
    }

    fn rings(&self) -> MutexGuard<'_, HashMap<RingKey, Arc<Ring>>> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of live rings.
    pub fn ring_count(&self) -> usize {
        self.rings().len()
    }

    /// Bridge clients connected (SSE and WebSocket JSON).
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// SSE subscribers parked (idle, without a task: see [`sse_park`]).
    pub fn parked_count(&self) -> usize {
        self.rings().values().map(|r| r.parking.len()).sum()
    }

    /// Attaches a client of user `reader` (`None`: anonymous) to the ring of `filters`
    /// (valid, sorted, deduplicated, non-empty), creating the ring and its trie entries when
    /// it is the first. A new ring's read ACL is derived from the auth state in force, under
    /// the registry lock (so a concurrent reload sees it: see [`Bridges::reapply_acl`]); an
    /// existing ring's is already current.
    pub fn attach(self: &Arc<Self>, filters: Vec<Box<str>>, reader: Option<&str>) -> RingLease {
        let broker = &self.broker;
        let key = RingKey {
            filters: Arc::from(filters),
            reader: reader.map(Box::from),
        };
        let mut rings = self.rings();
        let ring = match rings.get(&key) {
            Some(ring) => ring.clone(),
            None => {
                let id = self.next_ring_id.fetch_add(1, Ordering::Relaxed) + 1;
                let http = &broker.http_config();
                let limits = RingLimits {
                    max_messages: http.ring_max_messages.max(1),
                    max_bytes: http.ring_max_bytes,
                };
                let readable = Readable::for_reader(&broker.auth().current(), reader, &key.filters);
                let ring = Arc::new(Ring::new(
                    id,
                    key.filters.clone(),
                    key.reader.clone(),
                    limits,
                    readable,
                ));
                for filter in key.filters.iter() {
                    broker.subscribe_sink(filter, ring.clone());
                }
                rings.insert(key, ring.clone());
                Metrics::add(&broker.metrics().bridge_rings, 1);
                ring
            }
        };
        ring.clients.fetch_add(1, Ordering::Relaxed);
        RingLease {
            bridges: self.clone(),
            ring,
        }
    }

    /// A client left `ring`: when it was the last, the ring goes after the linger time
    /// (unless a client attached again meanwhile).
    fn release(self: &Arc<Self>, ring: &Arc<Ring>) {
        let broker = &self.broker;
        {
            let _rings = self.rings();
            if ring.clients.fetch_sub(1, Ordering::Relaxed) != 1 {
                return;
            }
        }
        let linger = Duration::from_millis(broker.http_config().ring_linger_ms);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if !linger.is_zero() && !broker.is_shutting_down() => {
                let bridges = self.clone();
                let ring = ring.clone();
                handle.spawn(async move {
                    tokio::time::sleep(linger).await;
                    bridges.reap(&ring);
                });
            }
            _ => self.reap(ring),
        }
    }

    /// Removes `ring` and its trie entries if it has no client.
    fn reap(&self, ring: &Arc<Ring>) {
        let broker = &self.broker;
        let mut rings = self.rings();
        if ring.clients.load(Ordering::Relaxed) != 0 {
            return;
        }
        let key = rings
            .iter()
            .find(|(_, r)| Arc::ptr_eq(r, ring))
            .map(|(k, _)| k.clone());
        if let Some(key) = key {
            rings.remove(&key);
            for filter in ring.filters.iter() {
                broker.unsubscribe_sink(filter, ring.id);
            }
            Metrics::sub(&broker.metrics().bridge_rings, 1);
        }
    }
}

/// A client's hold on a ring; dropping it detaches the client.
#[derive(Debug)]
pub struct RingLease {
    bridges: Arc<Bridges>,
    ring: Arc<Ring>,
}

impl RingLease {
    /// The ring.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.bridges.broker
    }
}

impl Drop for RingLease {
    fn drop(&mut self) {
        self.bridges.release(&self.ring);
    }
}

/// One bridge client counted against `max_bridge_clients`; dropping it frees the place.
#[derive(Debug)]
pub struct ClientSlot {
    bridges: Arc<Bridges>,
}

impl ClientSlot {
    /// Takes a place, or `None` (counted) when `max_bridge_clients` are connected.
    pub fn acquire(bridges: &Arc<Bridges>) -> Option<ClientSlot> {
        let broker = &bridges.broker;
        let max = broker.http_config().max_bridge_clients;
        let taken = bridges
            .clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            Metrics::add(&broker.metrics().bridge_clients_refused, 1);
            return None;
        }
        Metrics::add(&broker.metrics().bridge_clients, 1);
        Some(ClientSlot {
            bridges: bridges.clone(),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.bridges.clients.fetch_sub(1, Ordering::Relaxed);
        Metrics::sub(&self.bridges.broker.metrics().bridge_clients, 1);
    }
}

/// Serves the bridge paths (and 404 for anything else); called by [`crate::http`] for every
/// path it does not serve itself.
pub async fn route(
    bridges: &Arc<Bridges>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let broker = bridges.broker.clone();
    let origin = match access::check_origin(&broker, &request) {
        Ok(origin) => origin,
        Err(response) => return *response,
    };
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = match (&method, path.as_str()) {
        (&Method::GET, "/") => dashboard::page(),
        (&Method::GET, "/api/stats") => dashboard::stats(bridges),
        (&Method::GET, "/sse") => sse::handle(bridges, &request).await,
        (&Method::GET, "/ws") => ws_json::handle(bridges, request, peer).await,
        (&Method::GET, "/mqtt") => mqtt_ws::handle(&broker, request, peer),
        (&Method::OPTIONS, "/" | "/api/stats" | "/sse") => access::preflight(),
        (_, "/" | "/api/stats" | "/sse" | "/ws" | "/mqtt") => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => json_error(StatusCode::NOT_FOUND, "not found"),
    };
    if let Some(origin) = origin {
        access::add_cors_headers(&mut response, origin);
    }
    response
}

/// Checks and normalises a client's filters: each valid as an MQTT filter, not a shared
/// subscription, within `max_topic_levels`; at most `max_filters_per_client`; at least one.
/// Returns them sorted without duplicates.
///
/// # Errors
/// What is wrong, for a 400 (or an `error` reply).
pub fn validate_filters(broker: &Broker, filters: Vec<String>) -> Result<Vec<Box<str>>, String> {
    let max = broker.http_config().max_filters_per_client;
    if filters.is_empty() {
        return Err("at least one filter is required".into());
    }
    let mut out: Vec<Box<str>> = Vec::with_capacity(filters.len());
    for filter in filters {
        tern_codec::topic::validate_filter(&filter)
            .map_err(|_| format!("invalid topic filter {filter:?}"))?;
        if filter.starts_with("$share/") {
            return Err(format!(
                "shared subscriptions are not available on bridges: {filter:?}"
            ));
        }
        if !broker.limits().topic_within_limits(&filter) {
            return Err(format!("too many topic levels in (or too long) {filter:?}"));
        }
        out.push(filter.into_boxed_str());
    }
    out.sort_unstable();
    out.dedup();
    if out.len() > max {
        return Err(format!("at most {max} filters per client"));
    }
    Ok(out)
}
