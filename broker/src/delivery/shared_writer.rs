//! SharedWriter: one connection's output buffer, shared by every task that sends to it.
//!
//! Producers (the connection's own task, and publishers routing to it from their tasks) lock
//! it briefly, append encoded packets (patched templates) and release. They wake the
//! connection's writer only when the buffer goes from empty to non-empty, so a burst of N
//! messages costs one wake-up. The connection's task swaps the whole buffer out
//! ([`SharedWriter::take`]) and writes it with as few syscalls as the socket allows
//! (`connection/output.rs`), so a slow socket never blocks a publisher.
//!
//! Slow consumers: the buffer has a byte cap. QoS 0 messages that would go past it are
//! dropped (the caller counts them); control packets are always appended. QoS 1/2
//! PUBLISH packets are appended only while the buffer is under its cap
//! ([`SharedWriter::has_room`]): the rest wait in their session's queue as shared
//! references, and the session asks to be told when the buffer drains
//! ([`SharedWriter::want_drain`]), which is also how a retained replay is paced. The moment the buffer first
//! went over the cap is kept, so the connection can disconnect a client that stays there
//! too long (DISCONNECT 0x97).

use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

use bytes::BytesMut;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};

pub use super::control::NO_DEADLINE_MS;

use super::control::Control;
use super::journal_hold::{JournalHold, Ready};
use crate::journal::batch::PENDING;

/// Buffers above this capacity are dropped instead of kept after a flush, so an idle
/// connection does not hold a large allocation (DESIGN.md "Idle connections").
pub const KEEP_CAPACITY_BYTES: usize = 64 * 1024;

/// A connection's shared output buffer.
#[derive(Debug)]
pub struct SharedWriter {
    state: Mutex<WriterState>,
    /// Wake-ups, kick and keep-alive state of the connection: not the buffer's business.
    control: Control,
    /// Byte cap for QoS 0 appends.
    cap_bytes: u32,
    /// Above this many buffered bytes, publishers hold back (see [`crate::backpressure`]).
    soft_cap_bytes: u32,
    /// Buffered bytes, mirrored out of the lock for the publishers' pressure check.
    len: AtomicU32,
    /// The consumer did not drain within a publisher's wait: publishers stop waiting for
    /// it (its QoS 0 messages beyond the cap are dropped instead) until it catches up.
    slow: AtomicBool,
    /// How many publishers stand in the back-pressure line for this consumer: while any
    /// does, others wait behind them rather than take the room first
    /// ([`crate::backpressure`]). Wraps only past 65,535 waiting publishers (then only
    /// fairness suffers).
    waiting: AtomicU16,
    /// A session has more to send once the buffer drains (a retained replay, QoS 1/2
    /// messages kept back by the cap): the connection pumps it after taking a batch.
    drain_wanted: AtomicBool,
}

#[derive(Debug)]
struct WriterState {
    buf: BytesMut,
    /// No more appends: the connection is closing; the writer flushes what is left.
    closed: bool,
    /// When the buffer first stayed over the cap, for the slow-consumer timeout.
    over_cap_since: Option<Instant>,
    /// The journal positions the buffered bytes depend on (an acknowledgement of a logged
    /// record, or a QoS 2 PUBLISH whose packet id is logged): none of them leaves before
    /// the journal is durable that far, though an earlier part of them may go first.
    journal: JournalHold,
    /// The cluster position the buffered bytes depend on (an acknowledgement of a message
    /// forwarded to other nodes): none of them leaves before NATS has confirmed it (0:
    /// nothing to wait for).
    cluster_hold_until: u64,
    /// Holds whose position is not known yet (records in a journal batch still open on
    /// some thread); nothing leaves while any is pending.
    pending_holds: u32,
}

/// How far what held output waits for has come: the journal's durable position and the
/// cluster's confirmed one (`u64::MAX`: nothing to wait for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    /// The journal is durable up to here.
    pub journal: u64,
    /// NATS has every message this node forwarded up to here.
    pub cluster: u64,
}

impl Reached {
    /// Nothing to wait for (no journal, no cluster).
    pub const ALL: Reached = Reached {
        journal: u64::MAX,
        cluster: u64::MAX,
    };
}

/// What held output waits for: a journal position ([`PENDING`] while not known yet) and a
/// cluster position; 0 where it waits for nothing of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeldFor {
    /// The journal position.
    pub journal: u64,
    /// The cluster position.
    pub cluster: u64,
}

/// Whether an append happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The bytes are in the buffer.
    Yes,
    /// Longer than the receiver's Maximum Packet Size: dropped. The packet's length.
    TooLarge(usize),
    /// Over the byte cap (QoS 0 only): dropped. Since when the buffer has been over its cap,
    /// for the slow-consumer timeout.
    OverCap(Instant),
    /// The connection is closing: dropped.
    Closed,
}

/// Exclusive access to the buffer for one batch of appends; wakes the writer on drop if
/// the buffer went from empty to non-empty.
pub struct WriteGuard<'a> {
    writer: &'a SharedWriter,
    state: MutexGuard<'a, WriterState>,
    was_empty: bool,
}

impl WriteGuard<'_> {
    /// The buffer to append to.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.state.buf
    }

    /// Whether the connection is closing.
    pub fn is_closed(&self) -> bool {
        self.state.closed
    }

    /// Holds everything buffered (so far and until it is taken) until the journal is
    /// durable up to `position` (see [`crate::journal`]); 0 holds nothing. A position not
    /// known yet ([`PENDING`], `DEFERRED`: records this thread holds back) is not one: use
    /// [`WriteGuard::hold_for_held_records`] (or `pending_holds::hold`) for it.
    pub fn hold_until(&mut self, position: u64) {
        debug_assert!(!crate::journal::batch::is_pending(position));
        if !crate::journal::batch::is_pending(position) {
            let settled = self.state.pending_holds == 0;
            let len = self.state.buf.len();
            self.state.journal.raise(position, len, settled);
        }
    }

    /// Holds everything buffered (so far and until it is taken) until this thread's held
    /// records of `kind` are appended, and with `durable` until the journal is durable that
    /// far (`super::pending_holds`); `writer` is the one this guard locks.
    pub fn hold_for_held_records(&mut self, writer: &Arc<SharedWriter>, kind: u64, durable: bool) {
        debug_assert!(std::ptr::eq(self.writer, &**writer));
        if super::pending_holds::register(writer, kind, durable) {
            self.state.pending_holds += 1;
        }
    }

    /// One hold for held records ended: the records were appended and, for a durable
    /// hold, the output waits until the journal is durable up to `position` (0: not).
    /// Returns the writer this one's waits are passed on to, which must end one too
    /// ([`SharedWriter::hand_pending_holds_to`]).
    pub(super) fn end_pending_hold(&mut self, position: u64) -> Option<Arc<SharedWriter>> {
        self.state.pending_holds = self.state.pending_holds.saturating_sub(1);
        let settled = self.state.pending_holds == 0;
        let len = self.state.buf.len();
        self.state.journal.raise(position, len, settled);
        self.state.journal.successor(settled)
    }

    /// Holds everything buffered (so far and until it is taken) until NATS has confirmed
    /// the cluster position `position` (a forwarded message, see `cluster/forward.rs`).
    pub fn hold_cluster_until(&mut self, position: u64) {
        self.state.cluster_hold_until = self.state.cluster_hold_until.max(position);
    }

    /// Records that a QoS 0 message did not fit, starting the slow-consumer clock.
    /// Returns since when the buffer has been over its cap (this call's `now` if it was not).
    fn mark_over_cap(&mut self, now: Instant) -> Instant {
        *self.state.over_cap_since.get_or_insert(now)
    }

    /// Appends the one packet `encode` writes, unless the connection is closing, the packet
    /// is longer than `max_len` (the receiver's Maximum Packet Size) or, with `capped` (QoS
    /// 0), it would take the buffer past its byte cap, which starts the slow-consumer clock.
    /// Every PUBLISH delivered goes through here.
    ///
    /// `len` is the exact number of bytes `encode` appends, when known ahead (a template):
    /// then a packet that does not fit is never copied. With `None` (a one-shot encoding)
    /// the packet is encoded in place and taken back if it does not fit.
    pub fn append_packet(
        &mut self,
        len: Option<usize>,
        max_len: usize,
        capped: bool,
        now: Instant,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Appended {
        if self.is_closed() {
            return Appended::Closed;
        }
        let start = self.state.buf.len();
        let (len, encode) = match len {
            Some(len) => (len, Some(encode)),
            None => {
                encode(&mut self.state.buf);
                (self.state.buf.len() - start, None)
            }
        };
        let refused = if len > max_len {
            Appended::TooLarge(len)
        } else if capped && start + len > self.writer.cap_bytes as usize {
            Appended::OverCap(self.mark_over_cap(now))
        } else {
            if let Some(encode) = encode {
                encode(&mut self.state.buf);
            }
            return Appended::Yes;
        };
        self.state.buf.truncate(start);
        refused
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.writer
            .len
            .store(clamp_u32(self.state.buf.len()), Ordering::Relaxed);
        let now_non_empty = !self.state.buf.is_empty();
        if self.was_empty && now_non_empty {
            self.writer.control.wake();
        }
    }
}

/// `n` as a `u32`, saturating (buffer lengths are far below 4 GiB in practice).
fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl SharedWriter {
    /// An empty writer with a byte cap for QoS 0 appends (and a soft cap of a quarter of it).
    pub fn new(cap_bytes: usize) -> SharedWriter {
        SharedWriter::with_soft_cap(cap_bytes, cap_bytes / 4)
    }

    /// An empty writer with a byte cap for QoS 0 appends and the buffered size above which
    /// publishers wait for this consumer.
    pub fn with_soft_cap(cap_bytes: usize, soft_cap_bytes: usize) -> SharedWriter {
        SharedWriter {
            state: Mutex::new(WriterState {
                buf: BytesMut::new(),
                closed: false,
                over_cap_since: None,
                journal: JournalHold::default(),
                cluster_hold_until: 0,
                pending_holds: 0,
            }),
            control: Control::default(),
            // Stored as u32 (every connection has one): caps beyond 4 GiB mean "no cap".
            cap_bytes: u32::try_from(cap_bytes).unwrap_or(u32::MAX),
            soft_cap_bytes: u32::try_from(soft_cap_bytes).unwrap_or(u32::MAX),
            len: AtomicU32::new(0),
            slow: AtomicBool::new(false),
            waiting: AtomicU16::new(0),
            drain_wanted: AtomicBool::new(false),
        }
    }

    /// Whether publishers should wait for this consumer: more than the soft cap buffered,
    /// and not marked slow.
    pub fn is_pressing(&self) -> bool {
        self.len.load(Ordering::Relaxed) > self.soft_cap_bytes && !self.slow.load(Ordering::Relaxed)
    }

    /// Whether publishers stand in the back-pressure line for this consumer.
    pub fn has_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) != 0
    }

    /// One more (`true`) or one less publisher in the line for this consumer.
    pub fn count_waiting(&self, more: bool) {
        if more {
            self.waiting.fetch_add(1, Ordering::Relaxed);
        } else {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether the buffer holds no more than the soft cap.
    pub fn is_relieved(&self) -> bool {
        self.len.load(Ordering::Relaxed) <= self.soft_cap_bytes
    }

    /// Whether a packet of `len` bytes fits under the byte cap now (always when nothing is
    /// buffered, so that a packet larger than the cap still goes, alone).
    pub fn has_room(&self, len: usize) -> bool {
        let buffered = self.len.load(Ordering::Relaxed) as usize;
        buffered == 0 || buffered + len <= self.cap_bytes as usize
    }

    /// Whether fewer than `bytes` are buffered.
    pub fn is_below(&self, bytes: usize) -> bool {
        (self.len.load(Ordering::Relaxed) as usize) < bytes
    }

    /// The byte cap.
    pub fn cap_bytes(&self) -> usize {
        self.cap_bytes as usize
    }

    /// Asks the connection to pump its session once the buffer drains.
    pub fn want_drain(&self) {
        self.drain_wanted.store(true, Ordering::Relaxed);
    }

    /// Whether a pump was asked for since the last call (and forgets it).
    #[inline]
    pub fn take_drain_wanted(&self) -> bool {
        self.drain_wanted.load(Ordering::Relaxed)
            && self.drain_wanted.swap(false, Ordering::Relaxed)
    }

    /// Whether a pump was asked for (and not yet taken): output is still to come.
    pub fn is_drain_wanted(&self) -> bool {
        self.drain_wanted.load(Ordering::Relaxed)
    }

    /// Whether the consumer is marked slow (publishers do not wait for it).
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Marks the consumer slow: publishers no longer wait for it.
    /// Returns whether it was not marked before.
    pub fn mark_slow(&self) -> bool {
        !self.slow.swap(true, Ordering::Relaxed)
    }

    /// Locks the buffer for a batch of appends. Hold it only while encoding: never across
    /// an `.await`.
    pub fn lock(&self) -> WriteGuard<'_> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let was_empty = state.buf.is_empty();
        WriteGuard {
            writer: self,
            state,
            was_empty,
        }
    }

    /// Appends bytes produced by `encode` unless closed. `capped` applies the byte cap
    /// (QoS 0 messages); `len` is the exact number of bytes `encode` appends. One lock for
    /// one [`WriteGuard::append_packet`] with no size limit.
    pub fn append(
        &self,
        len: usize,
        capped: bool,
        now: Instant,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Appended {
        self.lock()
            .append_packet(Some(len), usize::MAX, capped, now, encode)
    }

    /// Whether some of the output waits for records held back on some thread.
    pub fn has_pending_holds(&self) -> bool {
        self.lock().state.pending_holds > 0
    }

    /// Another connection took this one's session over while this one's output waited for
    /// records held back on other threads (a publisher's input buffer, not appended yet):
    /// `next`, the new connection's writer, waits for each of them too, so that nothing it
    /// sends for the session (a resend, a message from the queue) leaves before the records
    /// it depends on are appended, and durable as far as they must be.
    pub fn hand_pending_holds_to(&self, next: &Arc<SharedWriter>) {
        let mut guard = self.lock();
        let count = guard.state.pending_holds;
        if count == 0 || std::ptr::eq(self, &**next) {
            return;
        }
        guard.state.journal.set_successor(next.clone());
        // Locked in this order only (the old writer, then the new one).
        let mut next_guard = next.lock();
        next_guard.state.pending_holds += count;
        let len = next_guard.state.buf.len();
        next_guard.state.journal.raise(0, len, false);
    }

    /// Lets go of the buffer's allocation if nothing is buffered (a connection that parks:
    /// the next append allocates again).
    pub fn release_idle_buffer(&self) {
        let mut guard = self.lock();
        if guard.state.buf.is_empty() {
            guard.state.buf = BytesMut::new();
            guard.state.journal.release();
        }
    }

    /// Marks the writer closed: later appends are dropped, the connection task flushes what is
    /// buffered and ends.
    pub fn close(&self) {
        let mut guard = self.lock();
        guard.state.closed = true;
        drop(guard);
        self.control.wake();
    }

    /// The connection's control block: wake-ups, kick, keep alive.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Since when the buffer has been over its cap without draining, if it is.
    pub fn over_cap_since(&self) -> Option<Instant> {
        self.lock().state.over_cap_since
    }

    /// Drops everything buffered when it waits for a cluster position beyond `confirmed`
    /// (a closing connection: acknowledgements of messages NATS never confirmed must not
    /// go, what the close writes next must). QoS 1/2 deliveries in it are sent again when
    /// the session resumes. Returns whether it dropped anything.
    pub fn discard_unconfirmed(&self, confirmed: u64) -> bool {
        let mut guard = self.lock();
        if guard.state.cluster_hold_until <= confirmed {
            return false;
        }
        guard.state.buf.clear();
        guard.state.cluster_hold_until = 0;
        guard.state.journal.clear();
        true
    }

    /// Swaps the pending bytes into `out` (which must be empty). Returns `false` when the
    /// writer is closed and nothing is left.
    pub fn take(&self, out: &mut BytesMut) -> bool {
        self.take_durable(out, Reached::ALL).unwrap_or(true)
    }

    /// [`SharedWriter::take`] when the journal and the cluster have `reached` that far:
    /// `Err(held)` (nothing taken) while the buffered bytes wait for the journal or the
    /// cluster to reach the positions in `held`.
    ///
    /// # Errors
    /// The positions to wait for.
    pub fn take_durable(&self, out: &mut BytesMut, reached: Reached) -> Result<bool, HeldFor> {
        let mut guard = self.lock();
        let state = &mut guard.state;
        let cluster_held = state.cluster_hold_until > reached.cluster;
        let pending = state.pending_holds > 0;
        match state
            .journal
            .ready(reached.journal, !pending && !cluster_held)
        {
            Ready::All => {}
            Ready::Prefix(len) if !cluster_held => {
                // What earlier holds kept back goes; the rest waits for later records.
                *out = state.buf.split_to(len);
                state.journal.took_prefix();
                return Ok(true);
            }
            ready => {
                let wait = match ready {
                    Ready::Wait(position) if position > reached.journal => position,
                    _ if pending => PENDING,
                    _ => 0,
                };
                return Err(HeldFor {
                    journal: wait,
                    cluster: if cluster_held {
                        state.cluster_hold_until
                    } else {
                        0
                    },
                });
            }
        }
        state.journal.clear();
        state.cluster_hold_until = 0;
        std::mem::swap(&mut guard.state.buf, out);
        if out.len() < self.cap_bytes as usize {
            guard.state.over_cap_since = None;
        }
        if out.len() <= self.soft_cap_bytes as usize / 8 {
            // Caught up (nearly nothing was waiting): publishers may wait for it once more.
            // Well below the soft cap, so a consumer hovering at it does not flip back and
            // forth, costing a publisher a wait each time.
            self.slow.store(false, Ordering::Relaxed);
        }
        // Keep the buffer we handed back small when idle.
        if guard.state.buf.capacity() > KEEP_CAPACITY_BYTES {
            guard.state.buf = BytesMut::new();
        }
        Ok(!(out.is_empty() && guard.state.closed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_applies_to_qos0_only() {
        let writer = SharedWriter::new(10);
        let now = Instant::now();
        assert_eq!(
            writer.append(8, true, now, |b| b.extend_from_slice(&[0; 8])),
            Appended::Yes
        );
        assert_eq!(
            writer.append(8, true, now, |b| b.extend_from_slice(&[0; 8])),
            Appended::OverCap(now)
        );
        assert_eq!(writer.over_cap_since(), Some(now));
        assert_eq!(
            writer.append(8, false, now, |b| b.extend_from_slice(&[0; 8])),
            Appended::Yes
        );
        let mut out = BytesMut::new();
        assert!(writer.take(&mut out));
        assert_eq!(out.len(), 16);
        writer.close();
        assert_eq!(
            writer.append(1, false, now, |b| b.extend_from_slice(&[0])),
            Appended::Closed
        );
    }

    /// The checks delivery makes, with the length known ahead (a template) or only once
    /// encoded (a one-shot encoding, taken back when it does not fit): Maximum Packet Size
    /// first ([MQTT-3.1.2-24]: nothing larger is sent), then the cap for QoS 0.
    #[test]
    fn append_packet_checks_size_then_cap_mqtt_3_1_2_24() {
        let writer = SharedWriter::new(10);
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        let mut guard = writer.lock();
        for len in [Some(6), None] {
            let fill = |b: &mut BytesMut| b.extend_from_slice(&[7; 6]);
            assert_eq!(
                guard.append_packet(len, 5, false, now, fill),
                Appended::TooLarge(6),
                "{len:?}"
            );
            assert!(guard.buf().is_empty(), "nothing left of it");
        }
        let six = |b: &mut BytesMut| b.extend_from_slice(&[1; 6]);
        assert_eq!(guard.append_packet(None, 6, true, now, six), Appended::Yes);
        for (len, at) in [(Some(6), now), (None, later)] {
            let fill = |b: &mut BytesMut| b.extend_from_slice(&[2; 6]);
            assert_eq!(
                guard.append_packet(len, 100, true, at, fill),
                Appended::OverCap(now),
                "{len:?}: over since the first time"
            );
            assert_eq!(guard.buf().len(), 6, "taken back");
        }
        let fill = |b: &mut BytesMut| b.extend_from_slice(&[3; 6]);
        assert_eq!(
            guard.append_packet(None, 100, false, now, fill),
            Appended::Yes
        );
        assert_eq!(guard.buf().len(), 12, "QoS 1/2 are not capped");
        drop(guard);
        writer.close();
        let fill = |b: &mut BytesMut| b.extend_from_slice(&[4]);
        assert_eq!(
            writer.lock().append_packet(None, 100, false, now, fill),
            Appended::Closed
        );
    }

    #[test]
    fn acknowledgements_of_an_earlier_hold_go_before_later_ones_are_durable() {
        let writer = SharedWriter::new(1024);
        let now = Instant::now();
        let journal = |journal| Reached {
            journal,
            cluster: u64::MAX,
        };
        writer.append(2, true, now, |b| b.extend_from_slice(b"a1"));
        writer.lock().hold_until(100);
        writer.append(2, true, now, |b| b.extend_from_slice(b"b2"));
        writer.lock().hold_until(200);
        let mut out = BytesMut::new();
        let held = writer.take_durable(&mut out, journal(99));
        assert_eq!(held.map_err(|h| h.journal), Err(100), "waits for the first");
        assert_eq!(writer.take_durable(&mut out, journal(150)), Ok(true));
        assert_eq!(&out[..], b"a1", "the first hold's bytes only");
        let mut out = BytesMut::new();
        let held = writer.take_durable(&mut out, journal(150));
        assert_eq!(held.map_err(|h| h.journal), Err(200));
        assert_eq!(writer.take_durable(&mut out, journal(200)), Ok(true));
        assert_eq!(&out[..], b"b2");
    }

    #[test]
    fn output_held_for_the_cluster_waits_for_its_position() {
        let writer = SharedWriter::new(1024);
        let now = Instant::now();
        writer.append(3, true, now, |b| b.extend_from_slice(b"ack"));
        writer.lock().hold_cluster_until(7);
        let mut out = BytesMut::new();
        let reached = |cluster| Reached {
            journal: u64::MAX,
            cluster,
        };
        let held = writer.take_durable(&mut out, reached(6));
        assert_eq!(
            held,
            Err(HeldFor {
                journal: 0,
                cluster: 7
            })
        );
        assert!(out.is_empty(), "nothing leaves before NATS confirmed it");
        assert!(!writer.discard_unconfirmed(7), "confirmed: nothing dropped");
        assert_eq!(writer.take_durable(&mut out, reached(7)), Ok(true));
        assert_eq!(&out[..], b"ack");
        writer.append(3, true, now, |b| b.extend_from_slice(b"two"));
        writer.lock().hold_cluster_until(9);
        assert!(
            writer.discard_unconfirmed(8),
            "a close drops what NATS never had"
        );
        writer.append(3, true, now, |b| b.extend_from_slice(b"bye"));
        let mut out = BytesMut::new();
        assert_eq!(writer.take_durable(&mut out, reached(8)), Ok(true));
        assert_eq!(&out[..], b"bye");
    }
}
