//! Per-IP admission: at most `max_connections_per_ip` open connections and at most
//! `max_connect_rate_per_ip` new connections per second (a token bucket, burst equal to one
//! second's worth) from one address. Checked right after accept, before any handshake, by
//! every MQTT listener ([`super::tcp`]) and by `GET /mqtt` on the HTTP listener
//! ([`crate::http::bridge::mqtt_ws`]), against one table: an address's MQTT connections count
//! together, whatever they came in by.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many open connections from this address.
    TooManyConnections,
    /// Connecting too fast.
    RateExceeded,
}

impl Refusal {
    /// The counter this refusal is counted in.
    pub fn counter(self, metrics: &crate::metrics::Metrics) -> &AtomicU64 {
        match self {
            Refusal::TooManyConnections => &metrics.connections_refused_per_ip,
            Refusal::RateExceeded => &metrics.connections_refused_rate,
        }
    }

    /// What to tell an HTTP client (`GET /mqtt`).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "too many connections from this address",
            Refusal::RateExceeded => "connecting too fast from this address",
        }
    }
}

/// Admissions between two purges of idle entries.
const PURGE_EVERY: u64 = 1024;

#[derive(Debug)]
struct IpState {
    open: u32,
    tokens: f64,
    refilled_at: Instant,
}

/// The per-address table. Entries of addresses with no open connection and a full bucket
/// are purged now and then, so the table stays as small as the set of active addresses.
#[derive(Debug)]
pub struct IpLimits {
    table: DashMap<IpAddr, IpState>,
    /// Bounds, changeable at run time (SIGHUP reload).
    max_open: AtomicU32,
    rate_per_sec: AtomicU32,
    /// Admission attempts, to purge every [`PURGE_EVERY`].
    attempts: AtomicU64,
}

/// Holds one admitted connection's place; releases it on drop.
#[derive(Debug)]
pub struct Admission {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(mut state) = self.limits.table.get_mut(&self.ip) {
            state.open = state.open.saturating_sub(1);
        }
    }
}

impl IpLimits {
    /// A table with the given bounds (0 turns a bound off).
    pub fn new(max_open: u32, rate_per_sec: u32) -> Arc<IpLimits> {
        Arc::new(IpLimits {
            table: DashMap::new(),
            max_open: AtomicU32::new(max_open),
            rate_per_sec: AtomicU32::new(rate_per_sec),
            attempts: AtomicU64::new(0),
        })
    }

    /// Changes the bounds (0 turns one off).
    pub fn set_bounds(&self, max_open: u32, rate_per_sec: u32) {
        self.max_open.store(max_open, Ordering::Relaxed);
        self.rate_per_sec.store(rate_per_sec, Ordering::Relaxed);
    }

    /// Admits a new connection from `ip` at `now`, or says why not. Every
    /// [`PURGE_EVERY`] attempts, idle entries are purged first.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admission, Refusal> {
        if self.attempts.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1 {
            self.purge(now);
        }
        let max_open = self.max_open.load(Ordering::Relaxed);
        let rate_per_sec = f64::from(self.rate_per_sec.load(Ordering::Relaxed));
        let mut state = self.table.entry(ip).or_insert_with(|| IpState {
            open: 0,
            tokens: rate_per_sec,
            refilled_at: now,
        });
        if max_open > 0 && state.open >= max_open {
            return Err(Refusal::TooManyConnections);
        }
        if rate_per_sec > 0.0 {
            let elapsed = now
                .saturating_duration_since(state.refilled_at)
                .as_secs_f64();
            state.tokens = (state.tokens + elapsed * rate_per_sec).min(rate_per_sec);
            state.refilled_at = now;
            if state.tokens < 1.0 {
                return Err(Refusal::RateExceeded);
            }
            state.tokens -= 1.0;
        }
        state.open += 1;
        drop(state);
        Ok(Admission {
            limits: self.clone(),
            ip,
        })
    }

    /// Removes idle entries (no open connection, bucket refilled).
    pub fn purge(&self, now: Instant) {
        let full_after = Duration::from_secs(1);
        self.table
            .retain(|_, s| s.open > 0 || now.saturating_duration_since(s.refilled_at) < full_after);
    }

    /// Number of addresses tracked.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "127.0.0.1".parse().expect("ip")
    }

    #[test]
    fn caps_open_connections() {
        let limits = IpLimits::new(2, 0);
        let now = Instant::now();
        let a = limits.admit(ip(), now).expect("first");
        let _b = limits.admit(ip(), now).expect("second");
        assert_eq!(
            limits.admit(ip(), now).err(),
            Some(Refusal::TooManyConnections)
        );
        drop(a);
        assert!(
            limits.admit(ip(), now).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn rate_limits_and_refills() {
        let limits = IpLimits::new(0, 3);
        let now = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| limits.admit(ip(), now).expect("within burst"))
            .collect();
        assert_eq!(limits.admit(ip(), now).err(), Some(Refusal::RateExceeded));
        let later = now + Duration::from_millis(400);
        assert!(
            limits.admit(ip(), later).is_ok(),
            "one token back after a third of a second"
        );
        drop(held);
    }

    #[test]
    fn purge_keeps_active_addresses_only() {
        let limits = IpLimits::new(10, 10);
        let now = Instant::now();
        let held = limits.admit(ip(), now).expect("admit");
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        drop(limits.admit(other, now).expect("admit"));
        limits.purge(now + Duration::from_secs(2));
        assert_eq!(limits.len(), 1);
        drop(held);
        limits.purge(now + Duration::from_secs(4));
        assert!(limits.is_empty());
    }
}
