//! Which connections have been idle long enough to park (`limits.park_idle_after_ms`):
//! one broker-wide sweeper instead of a timer per connection, as [`crate::keep_alive`].
//!
//! A connection whose transport can park is watched here while it has a task. The sweeper
//! runs every half `park_idle_after_ms` and raises each watched connection's idle level
//! (a byte in its control block, [`crate::delivery::control::Control::idle_step`]); the
//! connection's task resets it each time it goes round its loop (one relaxed load when
//! nothing was swept). A connection whose level reaches
//! [`IDLE_PARK_REQUESTED`] — no wake-up for two whole sweep periods after the sweep that
//! raised it first, so idle for at least `park_idle_after_ms` and at most 1.5 times that —
//! is woken, taken off the list, and parks if it can (`connection::park`); one that cannot
//! (output still being written) watches itself again, as does one that wakes from parking.
//!
//! This module owns the list and the sweeper, and the broker's epoll of parked sockets
//! ([`crate::park_poll`], started at the first parking); not the parking itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use crate::delivery::shared_writer::SharedWriter;
use crate::park_poll::ParkPoll;

pub use crate::delivery::control::IDLE_PARK_REQUESTED;

/// Shortest sweep period, whatever `park_idle_after_ms` says.
const MIN_SWEEP_MS: u64 = 10;

/// The connections watched for idleness, and the sweeper's state.
#[derive(Debug, Default)]
pub struct IdleSweep {
    /// `park_idle_after_ms` as the last watched connection saw it (a reload applies from
    /// the next connection on); 0: parking is off.
    after_ms: AtomicU64,
    /// Connections with a task that may park.
    watched: Mutex<Vec<Weak<SharedWriter>>>,
    /// A sweeper task runs (it ends when the list is empty, and is started again).
    sweeping: AtomicBool,
    /// The epoll parked sockets wait in, from the first parking on.
    park_poll: OnceLock<Arc<ParkPoll>>,
}

impl IdleSweep {
    fn watched(&self) -> MutexGuard<'_, Vec<Weak<SharedWriter>>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching the connection writing to `writer` (its task just started or woke
    /// from parking) with `after_ms` (`park_idle_after_ms`; 0 does nothing). Must be called
    /// from within the runtime (it may start the sweeper).
    pub fn watch(self: &Arc<Self>, writer: &Arc<SharedWriter>, after_ms: u64) {
        if after_ms == 0 {
            return;
        }
        self.after_ms.store(after_ms, Ordering::Relaxed);
        writer.control().take_idle();
        self.watched().push(Arc::downgrade(writer));
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// The epoll of parked sockets, started on the current runtime at the first call;
    /// `None` (logged) when it cannot be: connections then do not park.
    pub fn park_poll(&self) -> Option<&Arc<ParkPoll>> {
        if let Some(poll) = self.park_poll.get() {
            return Some(poll);
        }
        match ParkPoll::start() {
            // A racing first parking may have set it meanwhile: its epoll stays, ours goes.
            Ok(poll) => Some(self.park_poll.get_or_init(|| poll)),
            Err(e) => {
                tracing::error!(error = %e, "cannot create the epoll of parked sockets: connections are not parked");
                None
            }
        }
    }

    /// Connections watched now (those with a task that may park).
    pub fn len(&self) -> usize {
        self.watched().len()
    }

    /// Whether none is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One sweep: raises every watched connection's idle level, wakes and drops those it
    /// asks to park, drops those gone or closing. Returns whether any is still watched.
    fn sweep_once(&self) -> bool {
        let mut list = std::mem::take(&mut *self.watched());
        list.retain(|weak| {
            let Some(writer) = weak.upgrade() else {
                return false; // the connection is gone
            };
            if writer.control().kicked().is_some() || writer.lock().is_closed() {
                return false;
            }
            writer.control().idle_step() < IDLE_PARK_REQUESTED
        });
        let mut watched = self.watched();
        // Those watched during the sweep go behind; the list shrinks after a wave of parking.
        list.append(&mut watched);
        if list.capacity() > 4 * list.len() + 64 {
            list.shrink_to(2 * list.len());
        }
        *watched = list;
        if watched.is_empty() {
            // Cleared under the lock: a `watch` after this starts a new sweeper.
            self.sweeping.store(false, Ordering::Release);
            return false;
        }
        true
    }

    fn period(&self) -> Duration {
        let after_ms = self.after_ms.load(Ordering::Relaxed);
        Duration::from_millis((after_ms / 2).max(MIN_SWEEP_MS))
    }
}

/// The sweeper: one sweep per period until nothing is watched or the broker is gone.
async fn sweep(idle: Weak<IdleSweep>) {
    loop {
        let Some(period) = idle.upgrade().map(|idle| idle.period()) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        if !idle.sweep_once() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn asks_to_park_after_two_quiet_periods_only() {
        let sweep = Arc::new(IdleSweep::default());
        let quiet = Arc::new(SharedWriter::new(1024));
        let busy = Arc::new(SharedWriter::new(1024));
        sweep.watch(&quiet, 1000);
        sweep.watch(&busy, 1000);
        assert!(sweep.sweep_once());
        assert!(sweep.sweep_once());
        assert_eq!(sweep.len(), 2, "idle for one period at most: not yet");
        // The busy one goes round its loop between sweeps.
        assert_eq!(busy.control().take_idle(), 2);
        assert!(sweep.sweep_once());
        assert_eq!(
            sweep.len(),
            1,
            "the quiet one was asked to park and left the list"
        );
        assert_eq!(quiet.control().take_idle(), IDLE_PARK_REQUESTED);
        assert_eq!(busy.control().take_idle(), 1);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            quiet.control().poll_notified(&mut cx).is_ready(),
            "the request wakes the connection"
        );
        assert!(busy.control().poll_notified(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn drops_gone_and_closed_connections_and_stops() {
        let sweep = Arc::new(IdleSweep::default());
        let gone = Arc::new(SharedWriter::new(1024));
        let closed = Arc::new(SharedWriter::new(1024));
        sweep.watch(&gone, 1000);
        sweep.watch(&closed, 1000);
        drop(gone);
        closed.close();
        assert!(!sweep.sweep_once(), "nothing left: the sweeper stops");
        assert!(sweep.is_empty());
        assert!(!sweep.sweeping.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn off_when_zero() {
        let sweep = Arc::new(IdleSweep::default());
        let writer = Arc::new(SharedWriter::new(1024));
        sweep.watch(&writer, 0);
        assert!(sweep.is_empty());
    }
}
