//! The timers of a session whose connection has gone: the Will Delay Interval and the
//! Session Expiry Interval (3.1.2.11.2, 3.1.3.2.2).
//!
//! One task per disconnected session that has something to wait for. The will is published
//! when its delay passes or the session ends, whichever is first ([MQTT-3.1.3-9]: not if the
//! session resumes before); the session ends when its expiry passes while still offline.

use std::sync::Arc;
use std::time::Duration;

use tern_codec::LastWill;
use tokio::time::Instant;

use super::will;
use crate::broker::Broker;
use crate::session::Session;

/// What the offline task waits for.
#[derive(Debug)]
pub struct Offline {
    /// The session.
    pub session: Arc<Session>,
    /// The generation of the connection that went away.
    pub generation: u64,
    /// The will to publish, with its delay.
    pub will: Option<(LastWill, Duration)>,
}

/// Runs the offline timers of one session until the will is out and the session ended or
/// resumed.
///
/// # Cancel safety
/// Meant to run as its own task; dropping it cancels a pending will and expiry.
pub async fn run(broker: Broker, offline: Offline) {
    let Offline {
        session,
        generation,
        mut will,
    } = offline;
    let start = Instant::now();
    let expiry_secs = session.expiry_secs();
    let expires_at =
        (expiry_secs != u32::MAX).then(|| start + Duration::from_secs(u64::from(expiry_secs)));
    loop {
        let will_at = will.as_ref().map(|(_, delay)| start + *delay);
        let next = match (will_at, expires_at) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => return,
        };
        // Register for a wake-up before checking state, so none is missed in between.
        let woken = session.timer_wake_notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if session.generation() != generation {
            return; // resumed: the will is cancelled, the expiry restarts at the next close
        }
        if !session.is_ended() {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = &mut woken => continue,
            }
        }
        if session.generation() != generation {
            return;
        }
        let now = Instant::now();
        let ended = session.is_ended() || expires_at.is_some_and(|at| at <= now);
        if ended || will_at.is_some_and(|at| at <= now) {
            if let Some((last_will, _)) = will.take() {
                will::publish(&broker, &session, last_will);
            }
        }
        if ended {
            broker.end_session_unless_resumed(&session, generation);
            return;
        }
    }
}
