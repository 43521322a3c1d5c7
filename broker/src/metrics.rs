//! Broker-wide counters: plain atomics, bumped on the hot path with relaxed ordering and
//! read by `$SYS` (and later `/metrics`). This module owns the numbers, not their export.

use std::sync::atomic::{AtomicU64, Ordering};

pub mod bridge_links;

macro_rules! counters {
    ($(#[doc = $doc:literal] $name:ident $([$kind:ident])?,)*) => {
        /// Counters and gauges of one broker.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $doc] pub $name: counter_type!($($kind)?),)*
        }

        impl Metrics {
            /// Every counter as (name, help text, value), for export.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $doc.trim(), Counter::get(&self.$name)),)*]
            }
        }
    };
}

/// The type of a counter: an [`AtomicU64`], or [`Sharded`] for those bumped per message.
macro_rules! counter_type {
    () => {
        AtomicU64
    };
    (sharded) => {
        Sharded
    };
}

counters! {
    /// Connections currently open (after CONNACK).
    clients_connected,
    /// Connections currently parked: open, idle, without a task of their own (a part of `clients_connected`).
    clients_parked,
    /// Connections accepted since start.
    connections_accepted,
    /// Connections refused: over `max_connections_per_ip`.
    connections_refused_per_ip,
    /// Connections refused: over `max_connect_rate_per_ip`.
    connections_refused_rate,
    /// SUBSCRIBE filters refused: over `max_subscriptions_per_client`.
    subscriptions_refused_quota,
    /// Times a client's reading was paused for `max_publish_rate_per_client`.
    publish_throttled,
    /// Times a publisher stopped reading to let its subscribers drain.
    backpressure_waits,
    /// Subscribers marked slow after not draining within `backpressure_max_wait_ms`.
    backpressure_slow_consumers,
    /// HTTP requests served.
    http_requests,
    /// TLS handshakes that failed or timed out.
    tls_handshake_failures,
    /// Connections refused: over `max_connections`.
    connections_refused_limit,
    /// PUBLISH packets received from clients.
    messages_received [sharded],
    /// PUBLISH packets written to clients.
    messages_sent [sharded],
    /// Bytes read from clients.
    bytes_received [sharded],
    /// Bytes written to clients.
    bytes_sent [sharded],
    /// QoS 0 messages dropped because a writer was over its byte cap.
    dropped_qos0_slow_consumer,
    /// QoS 1/2 messages dropped because a session queue was full (`max_queued_messages`, or `max_queued_bytes` counting queued and inflight).
    dropped_queue_full,
    /// QoS 1/2 messages dropped for a session because the broker held `max_total_queued_bytes`.
    dropped_total_budget,
    /// QoS 1/2 publishes refused (0x97; 3.1.1: dropped) because the broker held `max_total_queued_bytes`.
    publishes_refused_total_budget,
    /// Messages dropped for one subscriber because they exceed its Maximum Packet Size.
    dropped_too_large_for_client,
    /// Messages dropped because their Message Expiry Interval passed.
    dropped_expired,
    /// Messages from a shared subscription whose member left with no other member online.
    dropped_shared_no_member,
    /// Messages dropped because their topic has more levels than `max_topic_levels`.
    dropped_topic_too_deep,
    /// Malformed packets and protocol errors that closed a connection.
    protocol_errors,
    /// Connections closed for not sending CONNECT in time or missing keep alive.
    timeouts,
    /// Clients disconnected as slow consumers: over the writer cap (QoS 0), or a QoS 1/2 window that did not move, for `slow_consumer_timeout_ms`.
    slow_consumer_disconnects,
    /// Connections closed by the broker for a protocol error or malformed packet.
    disconnects_protocol_error,
    /// Connections closed by the broker as slow consumers (0x97).
    disconnects_slow_consumer,
    /// Connections closed by the broker for a missed keep alive (0x8D).
    disconnects_keep_alive,
    /// Connections closed by the broker because a new connection took the session over (0x8E).
    disconnects_takeover,
    /// Connections closed by the broker for a quota (0x97 other than slow consumers: data directory full).
    disconnects_quota,
    /// Connections closed by the broker for other reasons (shutdown, admin, token expiry, redirection, failed re-authentication).
    disconnects_other,
    /// Sessions taken over by a new connection.
    session_takeovers,
    /// Will messages published.
    wills_published,
    /// Subscriptions currently held (filters x sessions).
    subscriptions,
    /// Retained messages currently stored.
    retained_messages,
    /// Sessions currently known (online and offline).
    sessions,
    /// CONNECTs refused by authentication (bad credentials, anonymous not allowed).
    auth_failures,
    /// Tokens accepted ([auth.jwt]).
    auth_jwt_accepted,
    /// Tokens refused: expired.
    auth_jwt_refused_expired,
    /// Tokens refused: not yet valid (nbf).
    auth_jwt_refused_not_yet_valid,
    /// Tokens refused: bad signature or unknown key id.
    auth_jwt_refused_signature,
    /// Tokens refused: another algorithm than the configured one (or none).
    auth_jwt_refused_algorithm,
    /// Tokens refused: malformed, or aud, iss, user name or ACL claim not accepted.
    auth_jwt_refused_claims,
    /// Clients the HTTP callout let in.
    auth_http_accepted,
    /// Clients the HTTP callout refused.
    auth_http_denied,
    /// HTTP callouts that failed (down, timeout, bad answer).
    auth_http_errors,
    /// HTTP callout answers taken from the cache.
    auth_http_cache_hits,
    /// Connections closed because their token expired.
    auth_token_expired_disconnects,
    /// Bridge requests refused for a password in the URL (allow_password_in_url off).
    bridge_password_in_url_refused,
    /// Admin API requests.
    admin_requests,
    /// Admin API requests refused: missing or wrong token (or the API disabled).
    admin_unauthorized,
    /// Admin API requests refused as malformed (400).
    admin_bad_requests,
    /// Clients disconnected through the admin API.
    admin_kicks,
    /// Operations the ACL refused: subscriptions, publishes, wills, deliveries.
    acl_denied,
    /// Enhanced authentications (SCRAM-SHA-256) that succeeded, at CONNECT or again later.
    enhanced_auth_successes,
    /// Connections sent elsewhere: CONNACK or DISCONNECT 0x9C/0x9D (redirect, drain).
    connections_redirected,
    /// Bridge clients connected (SSE and WebSocket JSON).
    bridge_clients,
    /// Bridge clients refused: over `max_bridge_clients`.
    bridge_clients_refused,
    /// Bridge rings (one per distinct filter set).
    bridge_rings,
    /// Messages pushed into bridge rings (one per message per ring).
    bridge_messages,
    /// Bridge ring entries dropped to stay within the ring limits.
    bridge_ring_evictions,
    /// Messages bridge clients missed because they fell behind their ring.
    bridge_lagged_messages,
    /// Messages published from WebSocket JSON clients.
    bridge_publishes,
    /// WebSocket JSON publishes refused by `ws_publish_rate_per_sec`.
    bridge_publish_throttled,
    /// Checkpoints written ([persistence]).
    journal_checkpoints,
    /// Duration of the last checkpoint in milliseconds.
    journal_checkpoint_last_ms,
    /// Size of the last checkpoint in bytes.
    journal_checkpoint_bytes,
    /// Records recovered at startup (checkpoint and log).
    journal_recovered_records,
    /// Sessions restored at startup.
    journal_recovered_sessions,
    /// Time the startup recovery took in milliseconds.
    journal_recovery_ms,
    /// QoS 1/2 publishes refused because the data directory was over `max_disk_bytes`.
    publishes_refused_disk_full,
}

impl Metrics {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add<C: Counter + ?Sized>(counter: &C, n: u64) {
        counter.add(n);
    }

    /// Subtracts `n` from a gauge.
    #[inline]
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    #[inline]
    pub fn get<C: Counter + ?Sized>(counter: &C) -> u64 {
        counter.get()
    }
}

/// A number only ever added to and read.
pub trait Counter {
    /// Adds `n`.
    fn add(&self, n: u64);
    /// The current value.
    fn get(&self) -> u64;
}

impl Counter for AtomicU64 {
    #[inline]
    fn add(&self, n: u64) {
        self.fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    fn get(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

/// Shards of a [`Sharded`] counter: one per thread for the first this many threads that
/// bump one (the workers); later threads share the last.
const SHARDS: usize = 16;

/// A counter bumped by every worker thread for every message (messages and bytes in and
/// out): each of the first threads has a cache line of its own, which only it writes, so
/// a bump is a plain load and store (no locked instruction, no line passed between
/// cores); threads past those share the last shard with atomic adds. Read by summing.
#[derive(Debug, Default)]
pub struct Sharded {
    shards: [Padded; SHARDS],
}

/// One shard, alone on its cache line (128 bytes: adjacent-line prefetching pairs lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// The shard shared by the threads that came too late for one of their own.
const SHARED_SHARD: usize = SHARDS - 1;

impl Sharded {
    /// This thread's shard, handed out in order at a thread's first bump of any sharded
    /// counter: `SHARED_SHARD` once the others are taken.
    fn shard() -> usize {
        use std::sync::atomic::AtomicUsize;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed).min(SHARED_SHARD);
        }
        SHARD.with(|s| *s)
    }
}

impl Counter for Sharded {
    #[inline]
    fn add(&self, n: u64) {
        let shard = Self::shard();
        let cell = &self.shards[shard].0;
        if shard == SHARED_SHARD {
            cell.fetch_add(n, Ordering::Relaxed);
        } else {
            // Only this thread writes this shard: no read-modify-write needed.
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        }
    }

    fn get(&self) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sharded_counter_sums_what_every_thread_added() {
        let counter = std::sync::Arc::new(Sharded::default());
        let threads: Vec<_> = (0..(SHARDS + 8))
            .map(|i| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        Metrics::add(&*counter, i as u64);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("adder");
        }
        let expected: u64 = (0..(SHARDS as u64 + 8)).map(|i| i * 1000).sum();
        assert_eq!(Metrics::get(&*counter), expected);
    }

    #[test]
    fn the_snapshot_includes_sharded_counters() {
        let m = Metrics::default();
        Metrics::add(&m.messages_sent, 5);
        Metrics::add(&m.bytes_received, 7);
        let snap = m.snapshot();
        let value = |n: &str| snap.iter().find(|(name, _, _)| *name == n).map(|e| e.2);
        assert_eq!(value("messages_sent"), Some(5));
        assert_eq!(value("bytes_received"), Some(7));
    }
}
