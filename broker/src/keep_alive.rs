//! Keep-alive enforcement for all connections by one broker-wide sweeper, instead of a
//! timer per connection.
//!
//! A connection with a keep alive stores its deadline (milliseconds on this module's clock)
//! in its SharedWriter's control block ([`crate::delivery::control::Control`]) each time it receives bytes, and is registered here once. The
//! sweeper wakes every [`TICK_MS`], looks only at the connections whose last known deadline
//! falls in the ticks that passed, kicks those still past it with Keep Alive Timeout (0x8D)
//! and files the others under their new deadline. A connection is thus looked at about once
//! per keep-alive period, and an idle connection carries an 8-byte deadline instead of a
//! timer future of its own (DESIGN.md "Idle connections").
//!
//! A connection is closed no earlier than its deadline and at most one tick plus the
//! sweeper's scheduling delay after it ([MQTT-3.1.2-22]: "within one and a half times the
//! Keep Alive").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::delivery::shared_writer::SharedWriter;
use crate::error::Kick;

/// Sweep period, and the granularity of the deadlines filed.
pub const TICK_MS: u64 = 100;

pub use crate::delivery::shared_writer::NO_DEADLINE_MS;

/// The broker's keep-alive wheel: connections filed by the tick of their deadline.
#[derive(Debug)]
pub struct KeepAlive {
    /// Zero of the millisecond clock.
    base: Instant,
    wheel: Mutex<BTreeMap<u64, Vec<Weak<SharedWriter>>>>,
    /// A sweeper task runs (it ends when the wheel is empty, and is started again).
    sweeping: AtomicBool,
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive {
            base: Instant::now(),
            wheel: Mutex::new(BTreeMap::new()),
            sweeping: AtomicBool::new(false),
        }
    }
}

impl KeepAlive {
    fn wheel(&self) -> MutexGuard<'_, BTreeMap<u64, Vec<Weak<SharedWriter>>>> {
        self.wheel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Milliseconds on this wheel's clock at `at`.
    pub fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Milliseconds on this wheel's clock now.
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// Starts enforcing `timeout` on the connection writing to `writer`, from now. Must be
    /// called from within the runtime (it may start the sweeper).
    pub fn watch(self: &Arc<Self>, writer: &Arc<SharedWriter>, timeout: Duration) {
        let timeout_ms = timeout.as_millis().min(u128::from(u32::MAX)) as u64;
        writer.control().set_keep_alive_ms(timeout_ms);
        let deadline = self.now_ms() + timeout_ms;
        writer.control().set_keep_alive_deadline_ms(deadline);
        let tick = tick_of(deadline);
        writer.control().set_keep_alive_tick(tick as u32);
        self.wheel()
            .entry(tick)
            .or_default()
            .push(Arc::downgrade(writer));
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Takes the connection writing to `writer` off the wheel (it ended). Without this a
    /// closed connection's entry, and the `SharedWriter` allocation its `Weak` holds,
    /// would stay until its deadline came round: a connection storm would pile them up.
    pub fn unwatch(&self, writer: &Arc<SharedWriter>) {
        // Read under the lock: the sweeper re-files (and re-ticks) under it too.
        let mut wheel = self.wheel();
        let tick = u64::from(writer.control().keep_alive_tick());
        if let Some(filed) = wheel.get_mut(&tick) {
            filed.retain(|weak| weak.as_ptr() != Arc::as_ptr(writer));
            if filed.is_empty() {
                wheel.remove(&tick);
            }
        }
    }

    /// Looks at the connections filed up to now: kicks the expired ones, files the others
    /// under their current deadline. Returns whether any connection is still filed.
    fn sweep_once(&self, now_ms: u64) -> bool {
        let due = {
            let mut wheel = self.wheel();
            let later = wheel.split_off(&(tick_of(now_ms) + 1));
            std::mem::replace(&mut *wheel, later)
        };
        let mut refile: Vec<(u64, Weak<SharedWriter>)> = Vec::new();
        for weak in due.into_values().flatten() {
            let Some(writer) = weak.upgrade() else {
                continue; // the connection is gone
            };
            if writer.control().kicked().is_some() || writer.lock().is_closed() {
                continue;
            }
            let deadline = writer.control().keep_alive_deadline_ms();
            if deadline <= now_ms {
                writer.control().kick(Kick::KeepAlive);
            } else {
                // Paused reading (NO_DEADLINE_MS) is looked at again one period later.
                let next = deadline.min(now_ms.saturating_add(writer.control().keep_alive_ms()));
                refile.push((next, weak));
            }
        }
        let mut wheel = self.wheel();
        for (deadline, weak) in refile {
            let tick = tick_of(deadline);
            if let Some(writer) = weak.upgrade() {
                writer.control().set_keep_alive_tick(tick as u32);
            }
            wheel.entry(tick).or_default().push(weak);
        }
        if wheel.is_empty() {
            // Cleared under the lock: a `watch` after this starts a new sweeper.
            self.sweeping.store(false, Ordering::Release);
            return false;
        }
        true
    }
}

/// The tick a deadline falls in: it is looked at on the first sweep at or after the
/// deadline.
fn tick_of(deadline_ms: u64) -> u64 {
    deadline_ms.div_ceil(TICK_MS)
}

/// The sweeper: one tick at a time until the wheel is empty or the broker is gone.
async fn sweep(wheel: Weak<KeepAlive>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(TICK_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(wheel) = wheel.upgrade() else {
            return;
        };
        if !wheel.sweep_once(wheel.now_ms()) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kicks_only_after_the_deadline_and_refiles_touched_connections() {
        let ka = Arc::new(KeepAlive::default());
        let idle = Arc::new(SharedWriter::new(1024));
        let busy = Arc::new(SharedWriter::new(1024));
        ka.watch(&idle, Duration::from_millis(1000));
        ka.watch(&busy, Duration::from_millis(1000));
        let t0 = ka.now_ms();
        assert!(ka.sweep_once(t0 + 500));
        assert_eq!(idle.control().kicked(), None, "not before the deadline");
        busy.control().set_keep_alive_deadline_ms(t0 + 1800);
        assert!(ka.sweep_once(t0 + 1100));
        assert_eq!(idle.control().kicked(), Some(Kick::KeepAlive));
        assert_eq!(busy.control().kicked(), None, "traffic moved its deadline");
        assert!(!ka.sweep_once(t0 + 1900), "nothing left filed");
        assert_eq!(busy.control().kicked(), Some(Kick::KeepAlive));
    }

    #[tokio::test]
    async fn an_ended_connection_leaves_the_wheel_at_once() {
        let ka = Arc::new(KeepAlive::default());
        let ended = Arc::new(SharedWriter::new(1024));
        let other = Arc::new(SharedWriter::new(1024));
        ka.watch(&ended, Duration::from_millis(1000));
        ka.watch(&other, Duration::from_millis(1000));
        ka.unwatch(&ended);
        assert_eq!(ka.wheel().values().map(Vec::len).sum::<usize>(), 1);
        // Also after a refile under a later tick.
        let t0 = ka.now_ms();
        other.control().set_keep_alive_deadline_ms(t0 + 5000);
        assert!(ka.sweep_once(t0 + 1100));
        ka.unwatch(&other);
        assert!(ka.wheel().is_empty());
    }

    #[tokio::test]
    async fn paused_and_gone_connections() {
        let ka = Arc::new(KeepAlive::default());
        let paused = Arc::new(SharedWriter::new(1024));
        ka.watch(&paused, Duration::from_millis(1000));
        let gone = Arc::new(SharedWriter::new(1024));
        ka.watch(&gone, Duration::from_millis(1000));
        drop(gone);
        paused.control().set_keep_alive_deadline_ms(NO_DEADLINE_MS);
        let t0 = ka.now_ms();
        assert!(ka.sweep_once(t0 + 1100), "the paused one stays filed");
        assert_eq!(paused.control().kicked(), None);
        assert_eq!(ka.wheel().values().map(Vec::len).sum::<usize>(), 1);
    }
}
