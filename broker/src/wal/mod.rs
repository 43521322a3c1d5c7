//! The write-ahead log: durable, ordered storage of opaque records with group commit.
//!
//! It owns the files `*.wal` (and `*.wal.free`, `*.wal.discarded`) and `LOCK` in its
//! directory, and nothing else there (the checkpoint store lives beside it). It knows nothing
//! about what a record means: records are byte strings, numbered by the log.
//!
//! # How a record becomes durable
//! Appenders encode their record in place into one shared buffer ([`Wal::append_with`], a
//! short mutex, no I/O). One committer thread swaps the whole buffer out, writes it with one
//! `pwrite` per segment, `fdatasync`s it (durability `sync`) and publishes the durable
//! [`Position`], waking the tasks waiting for it ([`Wal::poll_durable`]). It goes straight
//! on with what was appended meanwhile: batches form while the previous fsync runs, with no
//! timer. With durability `write` a record is durable once written, and the committer
//! fsyncs every `fsync_interval_ms`.
//!
//! # Invariants on disk
//! - A frame is `len: u32 LE | crc32c: u32 LE | seq: u64 LE | payload`; the CRC covers seq
//!   and payload. Sequence numbers are consecutive over the whole life of the log, starting
//!   at 1; a log position is the number of frame bytes before a point (headers of segments
//!   and unused segment tails do not count).
//! - A segment `N.wal` starts with a header naming its first position (`N`) and first seq;
//!   frames follow back to back; after the last frame comes zeroed or stale space. The first
//!   frame of a segment follows the last frame of the previous segment (position and seq).
//! - A frame is replayed only if every frame before it was: recovery stops at the first
//!   frame that is torn, fails its CRC or carries an unexpected seq (stale frames of a
//!   reused segment have older seqs), and cuts the log there before anything is appended,
//!   so that new frames never follow unreplayed ones.
//! - Nothing is published durable that was not written (and, with `sync`, fdatasynced),
//!   files and renames included (the directory is fsynced). An I/O error stops the log for
//!   good: durable never advances again.

mod committer;
mod frame;
mod lock;
mod recovery;
mod segment;
mod shared;
mod stats;
mod waiters;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::config::Durability;

pub(crate) use frame::FRAME_HEADER_BYTES;
pub use frame::MAX_RECORD_BYTES;
pub use lock::DirLock;
pub use stats::{Histogram, WalStats, COMMIT_BATCH_BOUNDS_RECORDS, COMMIT_LATENCY_BOUNDS_US};

use shared::{Shared, Status};

/// A point in the log: the end of a record, in bytes of frames since the log began.
/// Monotonic over the life of the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u64);

/// How to open a log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// The data directory; created if missing.
    pub dir: PathBuf,
    /// `Sync` or `Write` (`None` has no log and is refused).
    pub durability: Durability,
    /// `Write`: how often the committer fsyncs.
    pub fsync_interval_ms: u64,
    /// Size of one preallocated segment. A record larger than a segment gets a segment of
    /// its own, as large as it needs.
    pub segment_bytes: u64,
    /// Where a log with no segment on disk starts: the cut of the checkpoint it follows,
    /// so that positions stay monotonic over the life of the data directory even when the
    /// segments were lost or moved aside.
    pub start_position: Position,
}

/// Why the log could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Another broker (or another lock in this process) holds the data directory.
    #[error("data directory {} is locked: another broker is using it", dir.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// A file operation failed.
    #[error("write-ahead log: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `durability = "none"` has no log.
    #[error("write-ahead log: durability \"none\" has no log")]
    NoLog,
    /// The log had already failed.
    #[error("write-ahead log: stopped after an earlier I/O error")]
    Failed,
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> WalError {
        WalError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Why a position will never become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalFailed {
    /// A write or fsync failed: the broker must stop rather than acknowledge.
    #[error("write-ahead log failed")]
    Io,
    /// The log was closed before the record was written.
    #[error("write-ahead log closed")]
    Closed,
}

/// Called once, from the committer thread, when the log fails.
pub type OnFatal = Box<dyn Fn(WalError) + Send + Sync>;

/// The records found at open, to replay in order: each with the position of its end.
/// Payloads share one buffer per segment.
pub type Replay = Vec<(Position, Bytes)>;

/// An open log. Share it as `Arc<Wal>`.
pub struct Wal {
    shared: Arc<Shared>,
    committer: Mutex<Option<JoinHandle<()>>>,
    /// Held for the life of the log.
    _lock: Arc<DirLock>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("appended", &self.appended())
            .field("durable", &self.durable())
            .finish()
    }
}

impl Wal {
    /// Opens (creating) the log in `options.dir`, whose lock the caller holds: reads every
    /// intact frame of every segment in order, stops at the first bad or torn frame (a torn
    /// tail is normal), cuts the log there, starts a new segment and the committer thread.
    /// Returns the records found, for replay.
    ///
    /// # Errors
    /// [`WalError::NoLog`] for durability `none`; [`WalError::Io`] if the directory or a
    /// segment cannot be read, cut or created.
    pub fn open(
        options: WalOptions,
        lock: Arc<DirLock>,
        on_fatal: OnFatal,
    ) -> Result<(Arc<Wal>, Replay), WalError> {
        if options.durability == Durability::None {
            return Err(WalError::NoLog);
        }
        let recovered = recovery::recover(&options.dir)?;
        let (shared, records, writer) = Shared::start(options, recovered)?;
        let shared = Arc::new(shared);
        let thread_shared = Arc::clone(&shared);
        let committer = std::thread::Builder::new()
            .name("tern-wal".into())
            .spawn(move || committer::run(&thread_shared, writer, on_fatal))
            .map_err(|e| WalError::io("spawn committer for", &shared.dir, e))?;
        let wal = Wal {
            shared,
            committer: Mutex::new(Some(committer)),
            _lock: lock,
        };
        Ok((Arc::new(wal), records))
    }

    /// Appends one record: `encode` writes its payload at the end of the shared buffer
    /// (append only). Returns the position of the record's end, to wait for with
    /// [`Wal::poll_durable`]. Never does I/O; holds a mutex for the copy (the committer
    /// computes the CRC). If more than [`MAX_BUFFERED_BYTES`] wait for the committer (the
    /// disk is that far behind), it blocks on a condition variable until the committer
    /// takes them.
    ///
    /// After a failure or [`Wal::close`], the record is dropped and its position never
    /// becomes durable.
    ///
    /// # Panics
    /// If the payload is larger than [`MAX_RECORD_BYTES`], or if `encode` panics (the
    /// buffer is then left as it was).
    pub fn append_with(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Position {
        Position(self.shared.append_with(encode))
    }

    /// [`Wal::append_with`] for a frame its caller encoded: [`FRAME_HEADER_BYTES`] of room
    /// for the header (written here), then the payload. Copied once, into the buffer.
    ///
    /// # Panics
    /// If `frame` is shorter than the header or the payload larger than
    /// [`MAX_RECORD_BYTES`].
    pub(crate) fn append_framed(&self, frame: &mut [u8]) -> Position {
        Position(self.shared.append_frame(frame))
    }

    /// Everything up to here is durable (`sync`: fdatasynced; `write`: written).
    pub fn durable(&self) -> Position {
        Position(self.shared.durable.load(Ordering::Acquire))
    }

    /// The end of what has been appended so far.
    pub fn appended(&self) -> Position {
        Position(self.shared.appended.load(Ordering::Acquire))
    }

    /// Ready once `pos` is durable; otherwise registers `cx.waker()` (once per task and
    /// position, however often it polls) and is woken by the committer.
    ///
    /// # Errors
    /// [`WalFailed`] if `pos` will never become durable.
    pub fn poll_durable(&self, pos: Position, cx: &mut Context<'_>) -> Poll<Result<(), WalFailed>> {
        let state = || self.shared.durable_state(pos.0);
        if let Some(done) = state() {
            return Poll::Ready(done);
        }
        let mut result = None;
        let registered_late = self.shared.waiters.register(pos.0, cx.waker(), || {
            result = state();
            result.is_some()
        });
        match result {
            Some(done) if registered_late => Poll::Ready(done),
            _ => Poll::Pending,
        }
    }

    /// Waits until `pos` is durable. Cancel safe (dropping it only leaves a stale waker,
    /// removed at the next commit).
    pub fn wait_durable(&self, pos: Position) -> WaitDurable<'_> {
        WaitDurable { wal: self, pos }
    }

    /// Everything before `pos` is covered by a checkpoint: segments wholly before it are
    /// reused (at most two kept for reuse) or removed. The current segment is never released.
    ///
    /// # Errors
    /// [`WalError::Io`] if a file cannot be renamed or removed (the log goes on).
    pub fn release_before(&self, pos: Position) -> Result<(), WalError> {
        self.shared.release_before(pos.0)
    }

    /// Writes and fsyncs everything appended, then stops the committer. Later appends are
    /// dropped. Idempotent.
    ///
    /// # Errors
    /// [`WalError::Failed`] if the log failed (before or while closing).
    pub fn close(&self) -> Result<(), WalError> {
        self.shared.request_close();
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // The committer does not panic on I/O errors; a panic is a bug, reported as failure.
            if handle.join().is_err() {
                return Err(WalError::Failed);
            }
        }
        match self.shared.status() {
            Status::Failed => Err(WalError::Failed),
            _ => Ok(()),
        }
    }

    /// The log's counters.
    pub fn stats(&self) -> &WalStats {
        &self.shared.stats
    }

    /// Bytes of segment files on disk (current, closed and kept for reuse).
    pub fn disk_bytes(&self) -> u64 {
        self.shared.disk_bytes.load(Ordering::Relaxed)
    }

    /// Fault injection for tests: the next write or fsync fails.
    #[cfg(test)]
    pub(crate) fn faults(&self) -> &shared::Faults {
        &self.shared.faults
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The largest number of bytes appended and not yet taken by the committer; past it
/// appenders wait (64 MiB).
pub const MAX_BUFFERED_BYTES: usize = 64 << 20;

/// Future of [`Wal::wait_durable`].
#[derive(Debug)]
pub struct WaitDurable<'a> {
    wal: &'a Wal,
    pos: Position,
}

impl Future for WaitDurable<'_> {
    type Output = Result<(), WalFailed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.wal.poll_durable(self.pos, cx)
    }
}

#[cfg(test)]
pub(crate) mod tests;
