//! The control block of one connection, next to its output buffer
//! ([`super::shared_writer::SharedWriter`]) but apart from it: the wake-up of the
//! connection's task (output to write, a close or a kick), why it must close ([`Kick`]),
//! its keep-alive state for the broker-wide sweeper ([`crate::keep_alive`]) and its idle
//! level for the parking sweeper ([`crate::idle_sweep`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::error::Kick;

/// Keep-alive deadline meaning "not now" (a connection whose reading is paused by the
/// broker): see [`crate::keep_alive`].
pub const NO_DEADLINE_MS: u64 = u64::MAX;

/// Idle level at which the sweeper asks the connection to park (and wakes it).
pub const IDLE_PARK_REQUESTED: u8 = 3;

/// Wake-ups, kick and keep-alive state of one connection.
#[derive(Debug)]
pub struct Control {
    /// The connection's task, woken for output to write, a close or a kick. Polled, not a
    /// `Notify`: waiting on it takes no room in the task's future (see `poll_notified`).
    waker: AtomicWaker,
    /// A wake-up not yet seen by the task (kept like a permit, so none is lost).
    woken: AtomicBool,
    /// Why the connection must close: a [`Kick`] as its byte, 0 while it may go on.
    kick: AtomicU8,
    /// Sweeps of [`crate::idle_sweep`] since the connection's task last went round its
    /// loop (0 to [`IDLE_PARK_REQUESTED`], which asks it to park). One byte in what was
    /// padding: the control block stays the size it was.
    idle: AtomicU8,
    /// The connection's keep-alive timeout in ms (0: none), for [`crate::keep_alive`].
    keep_alive_ms: AtomicU32,
    /// The keep-alive wheel's tick this connection is filed under, so that it can be
    /// taken out when the connection ends (see [`crate::keep_alive::KeepAlive::unwatch`]).
    keep_alive_tick: AtomicU32,
    /// When the connection times out unless it receives something, in ms on the
    /// [`crate::keep_alive::KeepAlive`] clock.
    keep_alive_deadline_ms: AtomicU64,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            waker: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            kick: AtomicU8::new(0),
            idle: AtomicU8::new(0),
            keep_alive_ms: AtomicU32::new(0),
            keep_alive_tick: AtomicU32::new(0),
            keep_alive_deadline_ms: AtomicU64::new(NO_DEADLINE_MS),
        }
    }
}

impl Control {
    /// Asks the connection to close for `reason` (takeover, slow consumer, keep alive,
    /// shutdown; sent as DISCONNECT to 5.0 clients). The first reason stays.
    pub fn kick(&self, reason: Kick) {
        let _ = self
            .kick
            .compare_exchange(0, reason.to_u8(), Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }

    /// Sets the keep-alive timeout the sweeper re-checks this connection after.
    pub fn set_keep_alive_ms(&self, timeout_ms: u64) {
        let ms = u32::try_from(timeout_ms).unwrap_or(u32::MAX);
        self.keep_alive_ms.store(ms, Ordering::Relaxed);
    }

    /// Records the keep-alive wheel tick this connection is filed under.
    pub fn set_keep_alive_tick(&self, tick: u32) {
        self.keep_alive_tick.store(tick, Ordering::Relaxed);
    }

    /// The keep-alive wheel tick this connection is filed under.
    pub fn keep_alive_tick(&self) -> u32 {
        self.keep_alive_tick.load(Ordering::Relaxed)
    }

    /// The keep-alive timeout in ms (0: none).
    pub fn keep_alive_ms(&self) -> u64 {
        u64::from(self.keep_alive_ms.load(Ordering::Relaxed))
    }

    /// Moves the keep-alive deadline (ms on the broker's keep-alive clock;
    /// [`NO_DEADLINE_MS`] while the broker itself pauses reading).
    pub fn set_keep_alive_deadline_ms(&self, deadline_ms: u64) {
        self.keep_alive_deadline_ms
            .store(deadline_ms, Ordering::Relaxed);
    }

    /// The keep-alive deadline, see [`Control::set_keep_alive_deadline_ms`].
    pub fn keep_alive_deadline_ms(&self) -> u64 {
        self.keep_alive_deadline_ms.load(Ordering::Relaxed)
    }

    /// One sweep of the idle sweeper: raises the idle level, and at
    /// [`IDLE_PARK_REQUESTED`] wakes the connection to park. Returns the new level (the old
    /// one when the connection reset it meanwhile).
    pub fn idle_step(&self) -> u8 {
        let level = self.idle.load(Ordering::Relaxed);
        if level >= IDLE_PARK_REQUESTED {
            return level;
        }
        match self
            .idle
            .compare_exchange(level, level + 1, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) if level + 1 == IDLE_PARK_REQUESTED => {
                self.wake();
                IDLE_PARK_REQUESTED
            }
            Ok(_) => level + 1,
            Err(now) => now,
        }
    }

    /// The connection went round its loop: resets the idle level and returns the one it
    /// had ([`IDLE_PARK_REQUESTED`]: the sweeper asks it to park). One relaxed load when
    /// nothing was swept since the last call.
    #[inline]
    pub fn take_idle(&self) -> u8 {
        if self.idle.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.idle.swap(0, Ordering::AcqRel)
    }

    /// The reason the connection was asked to close with, if it was.
    pub fn kicked(&self) -> Option<Kick> {
        Kick::from_u8(self.kick.load(Ordering::Acquire))
    }

    /// Wakes the connection's task (or leaves the wake-up for its next poll).
    pub(super) fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once after an append made an empty buffer non-empty, a `close` or a
    /// [`Control::kick`] since the last time it was ready. Only the connection's own
    /// task may poll this (one waker is kept).
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// [`Control::poll_notified`] as a future.
    ///
    /// # Cancel safety
    /// Cancel safe: a wake-up that comes while nobody waits is kept.
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await;
    }
}
