//! The journal: what the broker acknowledged, made durable. It owns the write-ahead log
//! ([`crate::wal`]) as the broker uses it: [`record::Record`]s appended by the owners of
//! the state they describe (the session's delivery state, its subscriptions, its inbound
//! QoS 2 ids, the retained store), each under the lock of that state, and the durable
//! position acknowledgements wait for.
//!
//! The wait is per connection and per thread: [`Journal::append`] notes the highest
//! position this thread appended; the connection driver takes it after handling a packet
//! ([`take_appended`]) and holds its output (the acknowledgement and all after it) until
//! the log is durable that far (`SharedWriter` holds). Deliveries to other clients do not
//! wait for the disk, except QoS 2 to persistent sessions (exactly once across a crash
//! needs the packet id on disk before the PUBLISH leaves). Records held back until the end
//! of a connection's input buffer ([`batch`]) have no position yet: what depends on them
//! waits until their frame is appended (`delivery::pending_holds`).
//!
//! With `durability = "none"` there is no log: records are not written, nothing waits, and
//! only checkpoints ([`snapshot`]) keep state.

pub mod batch;
mod body_ids;
#[cfg(test)]
mod compat_tests;
#[cfg(test)]
mod held_out_tests;
pub mod open;
pub mod record;
pub mod snapshot;
pub mod state;

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tern_codec::template::Family;
use tokio::time::Instant;

use self::record::{Record, StoredMessage, StoredRef};
use crate::message::Message;
use crate::wal::{DirLock, Position, Wal};

thread_local! {
    /// The highest log position this thread appended since it last asked.
    static APPENDED: Cell<u64> = const { Cell::new(0) };
}

/// The highest log position the current thread appended since the last call (0: none),
/// and starts over. The connection driver calls it after handling one packet.
pub fn take_appended() -> u64 {
    APPENDED.with(|a| a.replace(0))
}

/// The broker's journal.
#[derive(Debug)]
pub struct Journal {
    /// The log; `None` with `durability = "none"`.
    wal: Option<Arc<Wal>>,
    /// The data directory.
    dir: PathBuf,
    /// Held for the life of the journal: no second broker uses the directory.
    _lock: Arc<DirLock>,
    /// The disk budget (`max_disk_bytes`; 0: none).
    max_disk_bytes: u64,
    /// Size of the last checkpoint written (or read at start).
    checkpoint_bytes: std::sync::atomic::AtomicU64,
    /// The cut of the checkpoint being or last written: a body stored before it is stored
    /// again before a new record refers to it.
    last_cut: AtomicU64,
    /// Where new body ids come from.
    body_ids: body_ids::BodyIds,
}

impl Journal {
    /// A journal over an open log (`None`: durability "none").
    pub fn new(
        wal: Option<Arc<Wal>>,
        dir: PathBuf,
        lock: Arc<DirLock>,
        max_disk_bytes: u64,
    ) -> Journal {
        let checkpoint_bytes =
            std::fs::metadata(dir.join(snapshot::FILE_NAME)).map_or(0, |m| m.len());
        Journal {
            wal,
            dir,
            _lock: lock,
            max_disk_bytes,
            checkpoint_bytes: std::sync::atomic::AtomicU64::new(checkpoint_bytes),
            last_cut: AtomicU64::new(0),
            body_ids: body_ids::BodyIds::new(),
        }
    }

    /// Recovery read a checkpoint with this cut.
    pub fn recovered_cut(&self, cut: u64) {
        self.last_cut.store(cut, Ordering::Release);
    }

    /// Body ids recovered go up to `max`: new ones are numbered above (call before any
    /// id is handed out).
    pub fn set_max_body_id(&self, max: u64) {
        self.body_ids.above(max);
    }

    /// A checkpoint with this cut is being written (call before it reads any state);
    /// returns the previous checkpoint's cut, before which the log may go once this one is
    /// written.
    pub fn set_cut(&self, cut: u64) -> u64 {
        self.last_cut.swap(cut, Ordering::AcqRel)
    }

    /// Appends the Out record `encode` writes from the body id of `message` and, when the
    /// record must carry the body, the body itself (a body stored after the last
    /// checkpoint's cut, or in the same held buffer, is not stored again: a message handed
    /// to many persistent sessions is stored once per checkpoint). Goes into an open atomic
    /// batch, else with `defer` into this thread's open deferred records (returning
    /// [`batch::PENDING`] or [`batch::DEFERRED`]; [`take_appended`] then reports
    /// [`batch::DEFERRED`] until its frame is appended), else straight into the log. 0
    /// without a log.
    pub fn append_out<F>(&self, message: &Arc<Message>, now: Instant, defer: bool, encode: F) -> u64
    where
        F: FnOnce(&mut Vec<u8>, u64, Option<StoredRef<'_>>),
    {
        let Some(wal) = &self.wal else {
            return 0;
        };
        let held = batch::out_buffer(defer);
        let (id, inline) = self.body_for(message, now, held.map_or(0, |(_, mark)| mark));
        let carries = inline.is_some();
        let position = match held {
            Some((kind, mark)) => {
                let _ = batch::append(kind, |buf| encode(buf, id, inline));
                if carries {
                    batch::note_body(kind, message);
                    message.journal_body.position.store(mark, Ordering::Release);
                }
                if kind == batch::DEFERRED {
                    APPENDED.with(|a| a.set(a.get().max(batch::DEFERRED)));
                }
                return kind;
            }
            None => wal.append_with(|buf| encode(buf, id, inline)).0,
        };
        APPENDED.with(|a| a.set(a.get().max(position)));
        if carries {
            message
                .journal_body
                .position
                .store(position, Ordering::Release);
        }
        position
    }

    /// The id of `message`'s body and the body itself when the record going into the
    /// buffer marked `dest` (0: straight into the log) must carry it: when the body was
    /// stored before the last checkpoint's cut, or in a buffer not appended yet other than
    /// `dest` (a frame that may land after this record's, or never).
    fn body_for<'m>(
        &self,
        message: &'m Message,
        now: Instant,
        dest: u64,
    ) -> (u64, Option<StoredRef<'m>>) {
        let body = &message.journal_body;
        let id = body.id.load(Ordering::Acquire);
        if id != 0 {
            let position = body.position.load(Ordering::Acquire);
            let in_dest = dest != 0 && position == dest;
            let logged =
                !batch::is_mark(position) && position > self.last_cut.load(Ordering::Acquire);
            if in_dest || logged {
                return (id, None);
            }
        }
        let id = self.checkpoint_body_id(message);
        (id, Some(stored_ref(message, now)))
    }

    /// The id of `message`'s body for a checkpoint (which writes the body itself): the one
    /// it has, or a new one.
    pub fn checkpoint_body_id(&self, message: &Message) -> u64 {
        let body = &message.journal_body;
        match body.id.load(Ordering::Acquire) {
            0 => {
                let id = self.body_ids.next();
                // Two racing callers may both assign: either id is stored with its body.
                body.id.store(id, Ordering::Release);
                id
            }
            id => id,
        }
    }

    /// Bytes the data directory holds: log segments and the checkpoint.
    pub fn disk_bytes(&self) -> u64 {
        let log = self.wal.as_ref().map_or(0, |wal| wal.disk_bytes());
        log + self
            .checkpoint_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the size of the checkpoint just written.
    pub fn set_checkpoint_bytes(&self, bytes: u64) {
        self.checkpoint_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the data directory is over `max_disk_bytes`: QoS 1/2 publishes are refused
    /// (0x97) rather than acknowledged and then not stored.
    pub fn over_budget(&self) -> bool {
        self.max_disk_bytes != 0 && self.disk_bytes() > self.max_disk_bytes
    }

    /// The end of what has been appended (0 without a log).
    pub fn appended(&self) -> u64 {
        self.wal.as_ref().map_or(0, |wal| wal.appended().0)
    }

    /// A checkpoint covers everything up to `position`: the log before it may go.
    ///
    /// # Errors
    /// The log could not delete or recycle a segment.
    pub fn release_before(&self, position: u64) -> Result<(), crate::wal::WalError> {
        match &self.wal {
            Some(wal) => wal.release_before(Position(position)),
            None => Ok(()),
        }
    }

    /// Flushes and closes the log (clean shutdown).
    ///
    /// # Errors
    /// The final write or fsync failed.
    pub fn close(&self) -> Result<(), crate::wal::WalError> {
        match &self.wal {
            Some(wal) => wal.close(),
            None => Ok(()),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The log, if records are written.
    pub fn wal(&self) -> Option<&Arc<Wal>> {
        self.wal.as_ref()
    }

    /// Appends `record`; returns its end position (0 when nothing is written). Call it
    /// while holding the lock of the state the record describes.
    pub fn append(&self, record: &Record) -> u64 {
        self.append_with(|buf| record.encode(buf))
    }

    /// Appends the record `encode` writes (the hot path's records are encoded from borrowed
    /// parts, without building a [`Record`]); see [`Journal::append`]. Inside an open
    /// atomic batch the record goes into it (and [`batch::PENDING`] is returned).
    pub fn append_with(&self, encode: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let Some(wal) = &self.wal else {
            return 0;
        };
        let encode = match batch::append(batch::PENDING, encode) {
            Ok(pending) => return pending,
            Err(encode) => encode,
        };
        let position = wal.append_with(encode).0;
        APPENDED.with(|a| a.set(a.get().max(position)));
        position
    }

    /// Appends a step of outbound message `seq` of `session` that an acknowledgement
    /// caused (sent from the queue, PUBREC received, finished): into this thread's deferred
    /// records when they are open ([`batch::DEFERRED`] is returned, and [`take_appended`]
    /// does not see it), else as [`Journal::append`] does. Consecutive steps of one kind of
    /// one session held back together are one record ([`batch::append_step`]).
    pub fn append_step(&self, session: u64, seq: u64, step: record::Step) -> u64 {
        if self.wal.is_none() {
            return 0;
        }
        if let Some(held) = batch::append_step(batch::DEFERRED, session, seq, step) {
            return held;
        }
        if let Some(held) = batch::append_step(batch::PENDING, session, seq, step) {
            return held;
        }
        self.append_with(|buf| step.encode_run(session, seq, buf))
    }

    /// Opens a buffer of held-back records of `kind` on this thread ([`batch`]): an atomic
    /// batch ([`batch::PENDING`]) or the deferred records ([`batch::DEFERRED`]); the
    /// records appended into it until [`Journal::end_held`] go into the log as one frame.
    /// False (and nothing opened) without a log or when one of that kind is open already.
    pub fn begin_held(&self, kind: u64) -> bool {
        self.wal.is_some() && batch::begin(kind)
    }

    /// Appends the open buffer of `kind` as one frame; returns its position (0 if it held
    /// nothing). An atomic batch's position is also what [`take_appended`] reports from
    /// now on (the acknowledgement of the packet that made it waits for it); nothing waits
    /// for deferred records but the output they held.
    pub fn end_held(&self, kind: u64) -> u64 {
        let (Some(wal), Some(mut taken)) = (&self.wal, batch::take(kind)) else {
            return 0;
        };
        let position = wal.append_framed(&mut taken.frame).0;
        batch::give_back(taken.frame);
        for message in taken.bodies {
            // Later records may refer to the body where it now is.
            let body = &message.journal_body;
            body.position.store(position, Ordering::Release);
        }
        if kind == batch::PENDING {
            APPENDED.with(|a| a.set(a.get().max(position)));
        }
        position
    }

    /// Everything up to here is durable (`u64::MAX` without a log: nothing waits).
    pub fn durable(&self) -> u64 {
        self.wal.as_ref().map_or(u64::MAX, |wal| wal.durable().0)
    }

    /// Ready once the log is durable up to `position`, or when it failed (the broker is
    /// stopping then; held output is never released).
    pub fn poll_durable(&self, position: u64, cx: &mut Context<'_>) -> Poll<bool> {
        match &self.wal {
            None => Poll::Ready(true),
            Some(wal) => wal.poll_durable(Position(position), cx).map(|r| r.is_ok()),
        }
    }
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

thread_local! {
    /// A recent reading of the wall clock and the monotonic instant it was taken at.
    static WALL_CLOCK: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// The wall-clock time at `now` in milliseconds since the Unix epoch, from a reading of
/// the wall clock this thread took at most a second before (one system-clock read per
/// second per thread instead of one per stored message; a step of the wall clock shows
/// within a second).
fn unix_ms_at(now: Instant) -> u64 {
    WALL_CLOCK.with(|cached| {
        if let Some((at, unix_ms)) = cached.get() {
            if let Some(since) = now.checked_duration_since(at) {
                if since.as_millis() < 1000 {
                    return unix_ms + since.as_millis() as u64;
                }
            }
        }
        let unix_ms = unix_ms_now();
        cached.set(Some((now, unix_ms)));
        unix_ms
    })
}

/// `message` as stored: its PUBLISH encoded as 5.0 and its wall-clock receive time.
pub fn stored(message: &Message, now: Instant) -> StoredMessage {
    // The template's frame, shared (not copied) with the message.
    stored_ref(message, now).to_stored()
}

/// [`stored`], borrowed from `message` (no reference to its frame taken).
pub fn stored_ref(message: &Message, now: Instant) -> StoredRef<'_> {
    let age_ms = now
        .saturating_duration_since(message.received_at)
        .as_millis() as u64;
    let (family, publish) = publish_template(message);
    StoredRef {
        received_unix_ms: unix_ms_at(now).saturating_sub(age_ms),
        origin_session: message.origin_session.map_or(0, std::num::NonZeroU64::get),
        publish,
        family,
    }
}

/// The frame `message` is stored as: the received frame when it can be stored as is (3.x
/// frames have no properties to lose), else the 5.0 template (built once per message, or
/// the received frame itself), shared by every record that stores the message.
fn publish_template(message: &Message) -> (Family, &bytes::Bytes) {
    let with_packet_id = message.qos() != tern_codec::QoS::AtMostOnce;
    let templates = &message.templates;
    let (family, template) = match templates.peek(Family::V5, with_packet_id) {
        Some(template) => (Family::V5, template),
        None => match templates.peek(Family::V3, with_packet_id) {
            Some(template) if templates.is_raw(Family::V3, with_packet_id) => {
                (Family::V3, template)
            }
            _ => (Family::V5, templates.get(Family::V5, with_packet_id)),
        },
    };
    (family, template.as_bytes())
}
