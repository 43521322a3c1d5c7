//! The state and counters of the MQTT bridges ([`crate::config::mqtt_bridges`]): one
//! [`LinkStatus`] per bridge, written by the bridge's task and read by `/metrics`,
//! `$SYS/broker/bridge/<name>/...`, `/api/stats` and the dashboard. This module owns the
//! numbers, not the bridges.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Where a bridge's link to its remote is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    /// Not connected; waiting to retry.
    Down = 0,
    /// Connecting (TCP, TLS, CONNECT/CONNACK, SUBSCRIBE).
    Connecting = 1,
    /// Connected and forwarding.
    Up = 2,
}

impl LinkState {
    /// The state as a word, for JSON and `$SYS`.
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Down => "down",
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
        }
    }
}

macro_rules! link_counters {
    ($(#[doc = $doc:literal] $name:ident,)*) => {
        /// A bridge's counters.
        #[derive(Debug, Default)]
        pub struct LinkCounters {
            $(#[doc = $doc] pub $name: AtomicU64,)*
        }

        impl LinkCounters {
            /// Every counter as (name, help text, value), for export.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $doc.trim(), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

link_counters! {
    /// Messages forwarded to the remote (QoS 1/2: acknowledged by it).
    messages_out,
    /// Messages received from the remote and published here.
    messages_in,
    /// Messages dropped: QoS 0 while the link was down, expired while queued, refused by the remote.
    messages_dropped,
    /// Messages from the remote dropped as our own coming back (loop prevention).
    loops_prevented,
    /// Successful connects to the remote.
    connects,
    /// Connect attempts that failed (refused, unreachable, TLS, timeout).
    connect_failures,
    /// Links that ended after being up.
    disconnects,
}

/// One bridge's state, last error and counters.
#[derive(Debug)]
pub struct LinkStatus {
    /// The bridge's name.
    pub name: String,
    state: AtomicU8,
    /// The last error, for operators (never a password).
    last_error: Mutex<Option<String>>,
    /// The remote the link is up to, or was last tried.
    remote: Mutex<String>,
    /// QoS 1/2 messages held for the remote (sent and unacknowledged, or waiting).
    pub queued: AtomicU64,
    /// Counters.
    pub counters: LinkCounters,
}

impl LinkStatus {
    /// A bridge that is down and has never connected.
    pub fn new(name: &str) -> LinkStatus {
        LinkStatus {
            name: name.to_string(),
            state: AtomicU8::new(LinkState::Down as u8),
            last_error: Mutex::new(None),
            remote: Mutex::new(String::new()),
            queued: AtomicU64::new(0),
            counters: LinkCounters::default(),
        }
    }

    /// The link's state.
    pub fn state(&self) -> LinkState {
        match self.state.load(Ordering::Relaxed) {
            2 => LinkState::Up,
            1 => LinkState::Connecting,
            _ => LinkState::Down,
        }
    }

    /// Sets the link's state.
    pub fn set_state(&self, state: LinkState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// The last error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records an error (the latest replaces the one before).
    pub fn set_last_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// The remote address last tried.
    pub fn remote(&self) -> String {
        self.remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the remote being tried.
    pub fn set_remote(&self, remote: &str) {
        *self.remote.lock().unwrap_or_else(|p| p.into_inner()) = remote.to_string();
    }

    /// The value of `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds one to `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The statuses of the running bridges, in configuration order.
#[derive(Debug, Default)]
pub struct BridgeLinks {
    links: RwLock<Vec<Arc<LinkStatus>>>,
}

impl BridgeLinks {
    /// The status of bridge `name`, created if new (a bridge restarted by a reload keeps
    /// its counters).
    pub fn get_or_add(&self, name: &str) -> Arc<LinkStatus> {
        let mut links = self.links.write().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = links.iter().find(|l| l.name == name) {
            return link.clone();
        }
        let link = Arc::new(LinkStatus::new(name));
        links.push(link.clone());
        link
    }

    /// Forgets bridge `name` (removed by a reload).
    pub fn remove(&self, name: &str) {
        self.links
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|l| l.name != name);
    }

    /// The statuses, in configuration order.
    pub fn all(&self) -> Vec<Arc<LinkStatus>> {
        self.links.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
