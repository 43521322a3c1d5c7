//! Records held on this thread and appended as one frame later, in two kinds:
//!
//! - An **atomic batch** ([`PENDING`]): the records of one step, which a crash leaves in
//!   the log whole or not at all (the frame's CRC covers every record in it). The routing
//!   of an inbound QoS 2 message from a persistent session uses it: the copies queued for
//!   subscribers and the publisher's received packet id are then either all recovered or
//!   none, so the publisher's resend after a crash is routed exactly once.
//! - **Deferred records** ([`DEFERRED`]): the records one connection's input buffer causes,
//!   collected while the connection handles it and appended once at its end
//!   (`connection/driver.rs`): the Out records of the messages its publishes hand to
//!   persistent sessions (`session/logged.rs`, only for sessions with a connection) and the
//!   steps its acknowledgements cause (sent from the queue, PUBREC received, finished). A
//!   publisher's buffer of a hundred publishes, or a subscriber's of a hundred PUBACKs,
//!   takes the log's lock once rather than a hundred times. Nothing that depends on them
//!   leaves before the frame is appended (`delivery::pending_holds`): the publisher's
//!   PUBACK/PUBREC and a QoS 2 PUBLISH wait until it is durable; a QoS 1 PUBLISH whose
//!   Out record is held back (sent at once, or queued and sent later by the subscriber's
//!   own thread: the subscriber's writer is held when the message is queued) waits until
//!   it is appended, so that the Done its PUBACK causes is logged after it.
//!
//!   So another thread may log a step of a message before its Out record lands: a
//!   `Sent` (the subscriber's thread sent it from the queue), or a `Done` that needs no
//!   answer from the client (handed to another member of a shared group, expired in the
//!   queue). Replay accepts these orders (`state.rs`). A `Released` or a `Done` from the
//!   client's PUBREC/PUBACK/PUBCOMP cannot come first: the client answers a PUBLISH that
//!   left after the Out record was appended.
//!
//!   A record carrying a message's body is held back like any other; another buffer or
//!   the log itself refers to that body only once its frame is appended (until then the
//!   message's body position is the buffer's mark, see [`out_buffer`], and a record
//!   going elsewhere carries the body again), so no record lands before the body it
//!   refers to.
//!
//! Both are encoded as a [`super::record::Record::Batch`]. Consecutive steps of one kind
//! of one session ([`append_step`]) share one record, a run (`record/compact.rs`): a
//! subscriber's hundred PUBACKs cost a few bytes each, not a record each. A record appended into either
//! has no log position yet: its caller gets [`PENDING`] or [`DEFERRED`], and output that
//! must wait for it is held until the frame is appended and its position known (see
//! `delivery::pending_holds`).

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::LocalKey;

use super::record::Step;
use crate::message::Message;

/// The position of a record appended into an open atomic batch: not known until it
/// closes.
pub const PENDING: u64 = u64::MAX;

/// The position of a deferred record: not known until the connection appends them.
pub const DEFERRED: u64 = u64::MAX - 1;

/// Whether `position` is one of the two not-yet-known positions.
pub fn is_pending(position: u64) -> bool {
    position >= DEFERRED
}

/// Tag of a batch record (see `record.rs`).
pub(super) const BATCH_TAG: u8 = 16;

/// The bit that sets the mark of a buffer apart from a log position (a body stored in a
/// buffer not appended yet: [`mark`]).
pub const MARK_BIT: u64 = 1 << 63;

/// Whether `position` is a buffer's mark rather than a log position.
pub fn is_mark(position: u64) -> bool {
    position & MARK_BIT != 0 && !is_pending(position)
}

/// An open buffer: its encoding and the run of steps its last record is, if it is one.
struct Buffer {
    /// Room for the log's frame header ([`HEADER_BYTES`]), then the batch record: the
    /// tag, the number of records (`u32 LE`, patched as records are added), then each
    /// record as `len: u32 LE | record`. Appended to the log as it is, without a copy.
    bytes: Vec<u8>,
    /// The last record, when it is a run of steps that a next step may extend.
    run: Option<Run>,
    /// This buffer's mark, unique among all buffers of all threads of the process.
    mark: u64,
    /// The messages whose bodies records in it carry: told the frame's position once it
    /// is appended.
    bodies: Vec<Arc<Message>>,
}

/// The log's frame header, which a buffer leaves room for at its start.
const HEADER_BYTES: usize = crate::wal::FRAME_HEADER_BYTES;

/// Where a buffer's count of records is.
const COUNT_AT: usize = HEADER_BYTES + 1;

/// A buffer's bytes before its first record.
const EMPTY_BYTES: usize = COUNT_AT + 4;

/// Most bytes of a closed buffer's allocation kept for this thread's next one.
const KEPT_BYTES: usize = 256 * 1024;

/// What [`take`] gives back: the frame and the messages whose bodies it holds.
pub(super) struct Taken {
    /// The frame: room for its header, then the batch record.
    pub(super) frame: Vec<u8>,
    /// Messages whose bodies it carries.
    pub(super) bodies: Vec<Arc<Message>>,
}

#[cfg(test)]
impl Taken {
    /// The batch record.
    pub(super) fn record(&self) -> &[u8] {
        &self.frame[HEADER_BYTES..]
    }
}

/// A run of steps of one session at the end of a buffer (`record::Step`).
struct Run {
    /// Where its length prefix is.
    start: usize,
    /// The run's tag (which kind of step it holds).
    tag: u8,
    /// Its session.
    session: u64,
    /// The number of its last step's message.
    last_seq: u64,
}

impl Buffer {
    /// Adds one record, the bytes `encode` appends.
    fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> usize {
        let buf = &mut self.bytes;
        let start = buf.len();
        buf.extend_from_slice(&[0; 4]);
        encode(buf);
        let at = COUNT_AT;
        let count = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) + 1;
        buf[at..at + 4].copy_from_slice(&count.to_le_bytes());
        self.patch_len(start);
        start
    }

    /// Fills in the length of the record whose prefix is at `start` (the last record).
    fn patch_len(&mut self, start: usize) {
        let len = (self.bytes.len() - start - 4) as u32;
        self.bytes[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
}

type Open = RefCell<Option<Buffer>>;

/// Threads numbered for marks.
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's number in marks (0: none yet) and the count of buffers it opened.
    static MARKS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// A new mark: this thread's number (30 bits) and its buffer count (32 bits) under
/// [`MARK_BIT`]; never one of [`PENDING`] and [`DEFERRED`].
fn next_mark() -> u64 {
    MARKS.with(|marks| {
        let (mut thread, count) = marks.get();
        if thread == 0 {
            thread = NEXT_THREAD.fetch_add(1, Ordering::Relaxed) & ((1 << 30) - 1);
        }
        marks.set((thread, count.wrapping_add(1)));
        MARK_BIT | (thread << 32) | (count & 0xFFFF_FFFF)
    })
}

thread_local! {
    /// The allocation of this thread's last closed buffer, for its next one (a buffer
    /// grows to a few kB per input buffer; allocating and growing it anew each time
    /// showed in profiles).
    static SPARE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The open batch.
    static ATOMIC: Open = const { RefCell::new(None) };
    /// The deferred records.
    static DEFERRED_RECORDS: Open = const { RefCell::new(None) };
}

/// The thread-local buffer of `kind` ([`PENDING`] or [`DEFERRED`]).
fn buffer(kind: u64) -> &'static LocalKey<Open> {
    if kind == DEFERRED {
        &DEFERRED_RECORDS
    } else {
        &ATOMIC
    }
}

/// Opens a buffer of `kind` on this thread; false if one is open already (they do not
/// nest).
pub(super) fn begin(kind: u64) -> bool {
    buffer(kind).with_borrow_mut(|open| {
        if open.is_some() {
            return false;
        }
        let mut bytes = SPARE.take();
        bytes.clear();
        bytes.resize(EMPTY_BYTES, 0);
        bytes[HEADER_BYTES] = BATCH_TAG;
        *open = Some(Buffer {
            bytes,
            run: None,
            mark: next_mark(),
            bodies: Vec::new(),
        });
        true
    })
}

/// The buffer an Out record goes into, as its kind and mark: an open atomic batch, else
/// (when `defer`) the open deferred records; `None`: straight into the log.
pub(super) fn out_buffer(defer: bool) -> Option<(u64, u64)> {
    let mark_of = |kind: u64| buffer(kind).with_borrow(|open| open.as_ref().map(|b| b.mark));
    match mark_of(PENDING) {
        Some(mark) => Some((PENDING, mark)),
        None if defer => mark_of(DEFERRED).map(|mark| (DEFERRED, mark)),
        None => None,
    }
}

/// Notes that the open buffer of `kind` holds `message`'s body: the message learns the
/// frame's position when it is appended.
pub(super) fn note_body(kind: u64, message: &Arc<Message>) {
    buffer(kind).with_borrow_mut(|open| {
        if let Some(buf) = open {
            buf.bodies.push(message.clone());
        }
    });
}

/// Appends the record `encode` writes to the open buffer of `kind` and returns `kind`;
/// gives `encode` back when none is open.
pub(super) fn append<F: FnOnce(&mut Vec<u8>)>(kind: u64, encode: F) -> Result<u64, F> {
    buffer(kind).with_borrow_mut(|open| match open {
        Some(buf) => {
            buf.push(encode);
            buf.run = None;
            Ok(kind)
        }
        None => Err(encode),
    })
}

/// Appends `step` of message `seq` of `session` to the open buffer of `kind` and returns
/// `kind`: onto the run the buffer ends with when it is of the same kind and session (a
/// byte or two), else as a new run; `None` when no buffer of `kind` is open.
pub(super) fn append_step(kind: u64, session: u64, seq: u64, step: Step) -> Option<u64> {
    buffer(kind).with_borrow_mut(|open| {
        let buf = open.as_mut()?;
        let tag = step.run_tag();
        match &mut buf.run {
            Some(run) if run.tag == tag && run.session == session => {
                step.encode_next(run.last_seq, seq, &mut buf.bytes);
                run.last_seq = seq;
                let start = run.start;
                buf.patch_len(start);
            }
            _ => {
                let start = buf.push(|dst| step.encode_run(session, seq, dst));
                buf.run = Some(Run {
                    start,
                    tag,
                    session,
                    last_seq: seq,
                });
            }
        }
        Some(kind)
    })
}

/// Closes the open buffer of `kind`: its encoding and the messages whose bodies it holds,
/// or `None` when it holds no record (or none is open).
/// An empty buffer's allocation is kept for the next one (with persistence on, every
/// connection opens one per input buffer, most of them logging nothing).
pub(super) fn take(kind: u64) -> Option<Taken> {
    let buf = buffer(kind).with_borrow_mut(Option::take)?;
    if buf.bytes.len() == EMPTY_BYTES {
        give_back(buf.bytes);
        return None;
    }
    Some(Taken {
        frame: buf.bytes,
        bodies: buf.bodies,
    })
}

/// Keeps the allocation of a taken buffer's frame for this thread's next buffer.
pub(super) fn give_back(frame: Vec<u8>) {
    if frame.capacity() <= KEPT_BYTES {
        SPARE.set(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::Record;

    /// A buffer that held nothing leaves its allocation for the next one: with
    /// persistence on, every input buffer of every connection opens one.
    #[test]
    fn an_empty_buffer_keeps_its_allocation_for_the_next() {
        assert!(begin(DEFERRED));
        assert!(take(DEFERRED).is_none(), "nothing to append");
        let kept = SPARE.with_borrow(Vec::as_ptr);
        assert!(SPARE.with_borrow(Vec::capacity) >= EMPTY_BYTES);
        assert!(begin(DEFERRED));
        let open = DEFERRED_RECORDS.with_borrow(|open| open.as_ref().map(|b| b.bytes.as_ptr()));
        assert_eq!(open, Some(kept), "the same allocation");
        assert!(take(DEFERRED).is_none());
    }

    #[test]
    fn records_appended_in_a_batch_come_back_as_one_record() {
        assert!(append(PENDING, |_| {}).is_err(), "no batch open");
        assert!(begin(PENDING));
        assert!(!begin(PENDING), "batches do not nest");
        let records = [
            Record::Qos2Received {
                session: 1,
                packet_id: 9,
            },
            Record::Done { session: 2, seq: 3 },
        ];
        for r in &records {
            assert_eq!(append(PENDING, |buf| r.encode(buf)).ok(), Some(PENDING));
        }
        let bytes = take(PENDING).expect("two records").record().to_vec();
        assert_eq!(Record::decode(&bytes), Ok(Record::Batch(records.to_vec())));
        assert!(append(PENDING, |_| {}).is_err(), "closed");
        assert!(begin(PENDING));
        assert!(
            take(PENDING).is_none(),
            "an empty batch is nothing to append"
        );
    }
}

#[cfg(test)]
mod deferred_tests {
    use super::*;
    use crate::journal::record::Record;

    #[test]
    fn deferred_records_and_an_atomic_batch_are_kept_apart() {
        assert!(begin(DEFERRED));
        assert!(
            begin(PENDING),
            "an atomic batch opens inside a deferred buffer"
        );
        let done = Record::Done { session: 1, seq: 2 };
        let received = Record::Qos2Received {
            session: 1,
            packet_id: 3,
        };
        assert_eq!(append(DEFERRED, |b| done.encode(b)).ok(), Some(DEFERRED));
        assert_eq!(append(PENDING, |b| received.encode(b)).ok(), Some(PENDING));
        let atomic = take(PENDING).expect("one record").record().to_vec();
        assert_eq!(Record::decode(&atomic), Ok(Record::Batch(vec![received])));
        let deferred = take(DEFERRED).expect("one record").record().to_vec();
        assert_eq!(Record::decode(&deferred), Ok(Record::Batch(vec![done])));
        assert!(is_pending(PENDING) && is_pending(DEFERRED) && !is_pending(DEFERRED - 1));
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;
    use crate::journal::record::Record;

    /// Steps of one kind of one session extend the run the buffer ends with; another
    /// kind, another session or another record starts a new one, so the order of the
    /// records is kept.
    #[test]
    fn consecutive_steps_of_one_session_share_a_run() {
        assert_eq!(append_step(DEFERRED, 1, 1, Step::Done), None, "none open");
        assert!(begin(DEFERRED));
        for seq in 1..=100 {
            assert_eq!(append_step(DEFERRED, 7, seq, Step::Done), Some(DEFERRED));
        }
        let hundred = take(DEFERRED).expect("a run").record().to_vec();
        assert!(hundred.len() < 5 + 4 + 3 + 100, "{} bytes", hundred.len());
        let dones = (1..=100)
            .map(|seq| Record::Done { session: 7, seq })
            .collect();
        assert_eq!(Record::decode(&hundred), Ok(Record::Batch(dones)));

        assert!(begin(DEFERRED));
        let q2 = Record::Qos2Received {
            session: 7,
            packet_id: 1,
        };
        append_step(DEFERRED, 7, 1, Step::Done);
        append_step(DEFERRED, 8, 2, Step::Done);
        append_step(DEFERRED, 8, 3, Step::Sent(4));
        assert!(append(DEFERRED, |b| q2.encode(b)).is_ok());
        append_step(DEFERRED, 8, 4, Step::Sent(5));
        append_step(DEFERRED, 8, 3, Step::Done);
        let expected = vec![
            Record::Done { session: 7, seq: 1 },
            Record::Done { session: 8, seq: 2 },
            Record::Sent {
                session: 8,
                seq: 3,
                packet_id: 4,
            },
            q2,
            Record::Sent {
                session: 8,
                seq: 4,
                packet_id: 5,
            },
            Record::Done { session: 8, seq: 3 },
        ];
        let bytes = take(DEFERRED).expect("records").record().to_vec();
        assert_eq!(Record::decode(&bytes), Ok(Record::Batch(expected)));
    }
}
