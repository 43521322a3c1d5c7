//! Parked SSE subscribers: the idle clients of the lean path ([`super::sse_raw`]) without a
//! task of their own.
//!
//! A subscriber that has written everything it had is *parked*: its socket, cursor, client
//! slot and ring lease go into its ring's [`Parking`] list, and its task ends. One writer
//! task per ring (spawned when the first subscriber parks, gone when the list is empty)
//! serves the list. It wakes when the ring gets a message (the ring's coalesced `watch`), when
//! a subscriber parks, when a keep-alive is due, when a parked socket becomes readable, and at
//! shutdown. Each pass, for every parked subscriber:
//!
//! - a readable socket is drained; end of stream or an error means the client left: it is
//!   dropped (its slot and lease with it), so the client gauge drops at once;
//! - a subscriber behind the ring gets the frames from its cursor in one non-blocking
//!   `try_write`; the frames are gathered once per pass for every subscriber at the same
//!   cursor (normally all of them);
//! - a subscriber silent for `sse_keepalive_ms` gets a keep-alive comment (one timer for the
//!   ring: the writer sleeps until the earliest deadline, and serves with it those due within
//!   an eighth of the interval, so that deadlines fall into a few groups).
//!
//! A wake-up costs O(1) besides the pass: parked sockets hold a waker that only raises a flag
//! (so a readable socket is found by the pass, not by polling every socket at each wake-up),
//! and a wake-up for newly parked subscribers alone serves only them.
//!
//! A write that would block or is partial takes the subscriber off the fast path: it gets its
//! own task again ([`super::sse_raw::catch_up`]) with the unwritten rest, writes with the
//! usual slow-consumer timeout, skips ahead with a `lagged` event if the ring moved past it,
//! and parks again once caught up. At broker shutdown the writer closes every parked socket.
//!
//! The sockets stay registered with the runtime so that a client that leaves is noticed by
//! readiness rather than by polling every socket. That registration (tokio's `ScheduledIo`,
//! 256 B of heap, 128-byte aligned) is most of what a parked subscriber costs: the bench
//! measured about 550 B of RSS per parked subscriber, 204 B with deregistered sockets.
//!
//! This module owns the list and the writer. What a frame is belongs to [`super::ring`] and
//! [`super::sse`]; writing outside the fast path belongs to [`super::sse_raw`].

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ring::{self, Next, Ring};
use super::sse::{self, Subscriber};
use super::{ClientSlot, RingLease};
use crate::broker::Broker;
use crate::metrics::Metrics;

/// Most bytes gathered into one write (here and on the catch-up path).
pub const MAX_WRITE_BYTES: usize = 64 * 1024;

/// Subscribers served in a pass between two yields to the scheduler.
const YIELD_EVERY: usize = 256;

/// One idle subscriber: no task, no timer, no buffer.
#[derive(Debug)]
pub struct Parked {
    stream: TcpStream,
    /// The id of the next event this client reads.
    cursor: u64,
    /// When it was last written to; the keep-alive is due `sse_keepalive_ms` later.
    last_write: Instant,
    /// Keeps the client counted while parked.
    slot: ClientSlot,
    /// Keeps the ring alive while parked.
    lease: RingLease,
    /// Whether the socket holds the writer's readable waker.
    armed: bool,
    /// When its token expires: the writer sends `expired` and drops it then.
    expires_at: Option<Instant>,
}

impl Parked {
    /// The parked form of a caught-up subscriber (its pending frames, if any, are dropped:
    /// callers park only when there are none).
    pub fn new(stream: TcpStream, subscriber: Subscriber, last_write: Instant) -> Parked {
        Parked {
            stream,
            cursor: subscriber.cursor,
            last_write,
            slot: subscriber.slot,
            lease: subscriber.lease,
            armed: false,
            expires_at: subscriber.expires_at,
        }
    }

    /// Back to a subscriber with its own task, `rest` to be written first.
    fn unpark(self, rest: Bytes) -> (TcpStream, Subscriber, Instant) {
        let mut pending = VecDeque::new();
        if !rest.is_empty() {
            pending.push_back(rest);
        }
        let subscriber = Subscriber {
            slot: self.slot,
            lease: self.lease,
            cursor: self.cursor,
            pending,
            expires_at: self.expires_at,
        };
        (self.stream, subscriber, self.last_write)
    }
}

#[derive(Default)]
struct State {
    parked: Vec<Parked>,
    /// Whether a writer task serves this list (at most one does).
    writer_running: bool,
    /// Set at shutdown: nothing parks any more.
    closed: bool,
}

/// The parked subscribers of one ring.
#[derive(Default)]
pub struct Parking {
    state: Mutex<State>,
    /// Wakes the writer when a subscriber parks (it may have missed a message meanwhile).
    parked_wake: Notify,
    /// Subscribers parked (including those the writer holds during a pass).
    count: AtomicUsize,
}

impl std::fmt::Debug for Parking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parking")
            .field("parked", &self.len())
            .finish_non_exhaustive()
    }
}

impl Parking {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribers parked now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether none is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parks `parked` on its ring and makes sure a writer serves it. At shutdown the subscriber
/// is dropped instead (which closes its socket).
pub fn park(parked: Parked) {
    let ring = parked.lease.ring().clone();
    let broker = parked.lease.broker().clone();
    let parking = &ring.parking;
    let spawn = {
        let mut state = parking.state();
        if state.closed || broker.is_shutting_down() {
            drop(state);
            drop(parked);
            return;
        }
        state.parked.push(parked);
        parking.count.fetch_add(1, Ordering::Relaxed);
        !std::mem::replace(&mut state.writer_running, true)
    };
    if spawn {
        tokio::spawn(write_parked(broker, ring));
    } else {
        parking.parked_wake.notify_one();
    }
}

/// What a pass did with one subscriber.
enum Step {
    /// Still parked.
    Keep,
    /// Off the fast path, with the bytes still to write.
    Unpark(Bytes),
    /// The client left (or its socket failed).
    Gone,
}

/// The frames from one cursor, gathered once per pass.
struct Batch {
    start: u64,
    end: u64,
    bytes: Bytes,
    /// Messages skipped (a `lagged` event is in `bytes`).
    missed: u64,
}

/// Wakes the writer when a parked socket it armed becomes readable. Every parked socket holds
/// a waker of this (rather than the task's), so the writer learns that *some* socket fired
/// without polling all of them on every wake-up.
#[derive(Default)]
struct ReadableSignal {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadableSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Completes when a parked socket fired (see [`ReadableSignal`]).
///
/// # Cancel safety
/// Cancel safe: the flag is only read here.
async fn any_readable(signal: &ReadableSignal) {
    poll_fn(|cx| {
        if signal.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        signal.task.register(cx.waker());
        if signal.fired.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// When keep-alive comments are due.
struct KeepAlive {
    /// `sse_keepalive_ms`.
    every: Duration,
    /// A little less: a pass for one subscriber's keep-alive also serves those due within
    /// the next eighth of the interval, so that subscribers parked at scattered times fall
    /// into a few groups instead of waking the writer once each.
    due_after: Duration,
}

impl KeepAlive {
    fn new(every: Duration) -> KeepAlive {
        KeepAlive {
            every,
            due_after: every - every / 8,
        }
    }
}

/// The writer of one ring's parked subscribers; runs while any is parked.
async fn write_parked(broker: Broker, ring: Arc<Ring>) {
    let parking = &ring.parking;
    let mut wake = ring.subscribe();
    let mut shutdown = broker.shutdown_signal();
    let keepalive = KeepAlive::new(sse::keepalive_every(&broker));
    let signal = Arc::new(ReadableSignal::default());
    let readable_waker = Waker::from(signal.clone());
    let timer = tokio::time::sleep(keepalive.every);
    tokio::pin!(timer);
    let mut list: Vec<Parked> = Vec::new();
    let mut batches: Vec<Batch> = Vec::new();
    // How many at the front of the list the last pass served; those behind parked since.
    let mut settled = 0;
    let mut next_keepalive = Instant::now() + keepalive.every;
    let mut only_newcomers = false;
    loop {
        if *shutdown.borrow_and_update() {
            close_all(parking);
            return;
        }
        // A socket fired: it has not been drained yet and its waker is spent, so serve (and
        // arm again) every subscriber. A wake-up for newcomers alone serves only them.
        let rearm = signal.fired.swap(false, Ordering::AcqRel);
        let full = !only_newcomers || rearm || wake.has_changed().unwrap_or(true);
        if full {
            // Seen before reading the ring: a push from now on wakes the writer again.
            wake.borrow_and_update();
        }
        std::mem::swap(&mut list, &mut parking.state().parked);
        let now = Instant::now();
        let head = ring.next_id();
        let index = if full { 0 } else { settled.min(list.len()) };
        if full {
            next_keepalive = now + keepalive.every;
        }
        let pass = Pass {
            ring: &ring,
            keepalive: &keepalive,
            signal: &signal,
            readable_waker: &readable_waker,
            now,
            head,
            rearm,
        };
        let behind = pass
            .serve(&mut list, index, &mut batches, &mut next_keepalive)
            .await;
        batches.clear();
        settled = list.len();
        if !hand_back(parking, &mut list) {
            return;
        }
        only_newcomers = false;
        if behind {
            // More than one write's worth was waiting: go on after letting others run.
            tokio::task::yield_now().await;
            continue;
        }
        timer.as_mut().reset(next_keepalive);
        tokio::select! {
            biased;
            // Cancel safe (watch::Receiver::changed); an error means the broker is gone.
            changed = shutdown.changed() => {
                if changed.is_err() {
                    close_all(parking);
                    return;
                }
            }
            // Cancel safe; the ring (and its sender) outlives this task.
            _ = wake.changed() => {}
            // Cancel safe: a permit stored while the writer was busy is kept.
            () = parking.parked_wake.notified() => only_newcomers = true,
            // Cancel safe: the sleep is reset, not recreated.
            () = &mut timer => {}
            // Cancel safe (documented there).
            () = any_readable(&signal) => {}
        }
    }
}

/// One pass of the writer over the parked list: what it needs besides the list.
struct Pass<'a> {
    ring: &'a Arc<Ring>,
    keepalive: &'a KeepAlive,
    signal: &'a Arc<ReadableSignal>,
    readable_waker: &'a Waker,
    now: Instant,
    /// The ring's next id when the pass began.
    head: u64,
    /// Arm every socket's readiness again (one fired).
    rearm: bool,
}

impl Pass<'_> {
    /// Serves the subscribers from `index` on: writes what each has waiting, unparks those
    /// that fell behind, drops those gone. Returns whether one is still behind the ring;
    /// lowers `next_keepalive` to the earliest keep-alive due.
    async fn serve(
        &self,
        list: &mut Vec<Parked>,
        mut index: usize,
        batches: &mut Vec<Batch>,
        next_keepalive: &mut Instant,
    ) -> bool {
        let parking = &self.ring.parking;
        let mut behind = false;
        let mut steps = 0usize;
        while index < list.len() {
            steps += 1;
            if steps.is_multiple_of(YIELD_EVERY) {
                // A pass over thousands of sockets should not hold the worker thread (and the
                // tasks queued behind it) for its whole length.
                tokio::task::yield_now().await;
            }
            match step(
                &mut list[index],
                self.ring,
                batches,
                self.now,
                self.keepalive,
            ) {
                Step::Keep => {
                    let parked = &mut list[index];
                    self.arm(parked);
                    behind |= parked.cursor < self.head;
                    *next_keepalive =
                        (*next_keepalive).min(parked.last_write + self.keepalive.every);
                    if let Some(at) = parked.expires_at {
                        // The writer wakes then too, to end the stream.
                        *next_keepalive = (*next_keepalive).min(at);
                    }
                    index += 1;
                }
                Step::Unpark(rest) => {
                    parking.count.fetch_sub(1, Ordering::Relaxed);
                    let (stream, subscriber, last_write) = list.swap_remove(index).unpark(rest);
                    tokio::spawn(super::sse_raw::catch_up(stream, subscriber, last_write));
                }
                Step::Gone => {
                    parking.count.fetch_sub(1, Ordering::Relaxed);
                    drop(list.swap_remove(index));
                }
            }
        }
        behind
    }

    /// Registers for the socket's readiness (a read means the client went away or sent
    /// something) unless it is registered and nothing fired.
    fn arm(&self, parked: &mut Parked) {
        if self.rearm || !parked.armed {
            parked.armed = true;
            let mut cx = Context::from_waker(self.readable_waker);
            if parked.stream.poll_read_ready(&mut cx).is_ready() {
                // Readable again already: the next pass drains it.
                self.signal.fired.store(true, Ordering::Release);
            }
        }
    }
}

/// Puts the served `list` back as the parked list, with those that parked during the pass
/// behind it (the next pass serves them); `list` gets the old (empty) vector. Returns
/// `false`, with the writer marked stopped, when nobody is parked any more.
fn hand_back(parking: &Parking, list: &mut Vec<Parked>) -> bool {
    let mut state = parking.state();
    list.append(&mut state.parked);
    std::mem::swap(list, &mut state.parked);
    if state.parked.is_empty() {
        state.writer_running = false;
        return false;
    }
    let len = state.parked.len();
    if state.parked.capacity() > 4 * len + 64 {
        state.parked.shrink_to(2 * len);
    }
    if list.capacity() > 64 {
        // Newcomers of a connection burst: not worth keeping.
        *list = Vec::new();
    }
    true
}

/// Drops every parked subscriber (closing its socket) and refuses new ones.
fn close_all(parking: &Parking) {
    let parked = {
        let mut state = parking.state();
        state.closed = true;
        state.writer_running = false;
        std::mem::take(&mut state.parked)
    };
    parking.count.fetch_sub(parked.len(), Ordering::Relaxed);
    drop(parked);
}

/// One subscriber's share of a pass.
fn step(
    parked: &mut Parked,
    ring: &Ring,
    batches: &mut Vec<Batch>,
    now: Instant,
    keepalive: &KeepAlive,
) -> Step {
    if client_gone(&parked.stream) {
        return Step::Gone;
    }
    if sse::expired(parked.expires_at, now) {
        sse::count_expired(parked.lease.broker());
        let _ = parked.stream.try_write(sse::EXPIRED);
        return Step::Gone;
    }
    let found = match batches.iter().position(|b| b.start == parked.cursor) {
        Some(index) => Some(index),
        None => gather(ring, parked.cursor).map(|batch| {
            batches.push(batch);
            batches.len() - 1
        }),
    };
    let bytes = match found {
        Some(index) => {
            let batch = &batches[index];
            if batch.missed > 0 {
                let metrics = &parked.lease.broker().metrics();
                Metrics::add(&metrics.bridge_lagged_messages, batch.missed);
            }
            parked.cursor = batch.end;
            batch.bytes.clone()
        }
        None if now >= parked.last_write + keepalive.due_after => {
            Bytes::from_static(sse::KEEPALIVE)
        }
        None => return Step::Keep,
    };
    match parked.stream.try_write(&bytes) {
        Ok(n) if n == bytes.len() => {
            parked.last_write = now;
            Step::Keep
        }
        Ok(n) => {
            parked.last_write = now;
            Step::Unpark(bytes.slice(n..))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Step::Unpark(bytes),
        Err(_) => Step::Gone,
    }
}

/// The frames at `start` (at most about [`MAX_WRITE_BYTES`]), or `None` when there are none.
fn gather(ring: &Ring, start: u64) -> Option<Batch> {
    let mut cursor = start;
    let mut missed = 0;
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    loop {
        let frame = match ring.next(&mut cursor) {
            Next::Entry(entry) => entry.sse,
            Next::Lagged(n) => {
                missed += n;
                ring::lagged_sse(Some(n))
            }
            Next::Empty => break,
        };
        match (&first, &mut more) {
            (None, _) => first = Some(frame),
            (Some(one), None) => {
                let mut out = BytesMut::with_capacity(one.len() + frame.len());
                out.extend_from_slice(one);
                out.extend_from_slice(&frame);
                more = Some(out);
            }
            (Some(_), Some(out)) => out.extend_from_slice(&frame),
        }
        let size = more
            .as_ref()
            .map_or_else(|| first.as_ref().map_or(0, Bytes::len), BytesMut::len);
        if size >= MAX_WRITE_BYTES {
            break;
        }
    }
    let bytes = match more {
        Some(out) => out.freeze(),
        None => first?,
    };
    Some(Batch {
        start,
        end: cursor,
        bytes,
        missed,
    })
}

/// Whether the client closed its side or the socket failed; what it sent is read and
/// ignored. Costs no system call unless the socket was reported readable.
fn client_gone(stream: &TcpStream) -> bool {
    let mut sink = [0u8; 64];
    loop {
        match stream.try_read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}
