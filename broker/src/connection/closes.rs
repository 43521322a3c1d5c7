//! Disconnects the broker initiates, as operators see them (issue #17): counted per reason
//! in `/metrics` (`disconnects_*`) and logged at `info` with the client id and address,
//! rate-limited per reason ([`LINES_PER_REASON_PER_SEC`] lines a second, then one line
//! saying how many were left out), so that a flood of bad clients cannot fill the disk.
//!
//! Closes the client starts (DISCONNECT, end of stream, I/O errors) are not logged here:
//! they stay at debug in the connection. A slow consumer's DISCONNECT 0x97 is attempted
//! but may never reach it: its socket is full (README, "Flow control").

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::error::Close;
use crate::metrics::Metrics;

/// Log lines per reason per second before lines are left out.
pub const LINES_PER_REASON_PER_SEC: u64 = 10;

/// Why the broker closed a connection, as counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A protocol error or malformed packet.
    ProtocolError,
    /// A slow consumer (0x97).
    SlowConsumer,
    /// A missed keep alive (0x8D) or no CONNECT in time.
    KeepAlive,
    /// A new connection took the session over (0x8E).
    TakenOver,
    /// A quota other than a slow consumer (0x97: data directory full).
    Quota,
    /// Shutdown, an administrator, token expiry, redirection, failed re-authentication.
    Other,
}

impl CloseReason {
    /// The reason of a close the broker started; `None` when the client ended it.
    pub fn of(close: &Close) -> Option<CloseReason> {
        Some(match close {
            Close::ClientDisconnect(_) | Close::PeerGone | Close::Io(_) => return None,
            Close::Protocol(_) | Close::RefusedMalformed(_) => CloseReason::ProtocolError,
            Close::SlowConsumer => CloseReason::SlowConsumer,
            Close::KeepAliveTimeout | Close::ConnectTimeout => CloseReason::KeepAlive,
            Close::TakenOver => CloseReason::TakenOver,
            Close::DiskFull => CloseReason::Quota,
            Close::Shutdown
            | Close::TokenExpired
            | Close::Administrative
            | Close::Redirected(_)
            | Close::ReauthFailed
            | Close::Refused(_) => CloseReason::Other,
        })
    }

    fn index(self) -> usize {
        self as usize
    }

    fn counter(self, metrics: &Metrics) -> &AtomicU64 {
        match self {
            CloseReason::ProtocolError => &metrics.disconnects_protocol_error,
            CloseReason::SlowConsumer => &metrics.disconnects_slow_consumer,
            CloseReason::KeepAlive => &metrics.disconnects_keep_alive,
            CloseReason::TakenOver => &metrics.disconnects_takeover,
            CloseReason::Quota => &metrics.disconnects_quota,
            CloseReason::Other => &metrics.disconnects_other,
        }
    }
}

/// One reason's log budget: the second it counts for, lines in it, lines left out.
#[derive(Default)]
struct Window {
    second: AtomicU64,
    lines: AtomicU64,
    left_out: AtomicU64,
}

/// Log budgets for the whole process (logging is process-wide too).
static WINDOWS: [Window; 6] = [const {
    Window {
        second: AtomicU64::new(0),
        lines: AtomicU64::new(0),
        left_out: AtomicU64::new(0),
    }
}; 6];

fn seconds_since_start() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
        + 1
}

/// Whether a line for `reason` may be logged now; `Some(n)`: yes, and `n` lines were left
/// out since the last one.
fn may_log(reason: CloseReason) -> Option<u64> {
    let window = &WINDOWS[reason.index()];
    let now = seconds_since_start();
    if window.second.swap(now, Ordering::Relaxed) != now {
        window.lines.store(0, Ordering::Relaxed);
    }
    if window.lines.fetch_add(1, Ordering::Relaxed) < LINES_PER_REASON_PER_SEC {
        Some(window.left_out.swap(0, Ordering::Relaxed))
    } else {
        window.left_out.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Counts and logs a close: `client_id` is `None` before CONNECT completed.
pub fn record(metrics: &Metrics, client_id: Option<&str>, peer: SocketAddr, close: &Close) {
    let Some(reason) = CloseReason::of(close) else {
        return;
    };
    Metrics::add(reason.counter(metrics), 1);
    if let Some(left_out) = may_log(reason) {
        let client_id = client_id.unwrap_or("-");
        tracing::info!(client_id, %peer, reason = %close, left_out, "connection closed by the broker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_close_logs_a_few_per_second() {
        let metrics = Metrics::default();
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        for _ in 0..100 {
            record(&metrics, Some("c"), peer, &Close::TakenOver);
        }
        record(&metrics, Some("c"), peer, &Close::PeerGone);
        assert_eq!(Metrics::get(&metrics.disconnects_takeover), 100);
        assert_eq!(Metrics::get(&metrics.disconnects_other), 0);
        let window = &WINDOWS[CloseReason::TakenOver.index()];
        assert!(window.left_out.load(Ordering::Relaxed) >= 100 - 2 * LINES_PER_REASON_PER_SEC);
    }
}
