//! The state appenders, waiters and the committer share: the append buffer, the durable
//! position, the status, the segment bookkeeping. It owns the append path and the release
//! of old segments; writing is the committer's.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::committer::Writer;
use super::frame::{self, FRAME_HEADER_BYTES};
use super::recovery::Recovered;
use super::segment;
use super::stats::WalStats;
use super::waiters::Waiters;
use super::{Replay, WalError, WalFailed, WalOptions, MAX_BUFFERED_BYTES};

/// A thread's frame buffer grown past this by a large record is dropped after it.
const KEPT_FRAME_BYTES: usize = 64 * 1024;

/// At most this many released segments are kept for reuse; more are removed.
const MAX_FREE_SEGMENTS: usize = 2;

/// The life of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Running = 0,
    /// A write or fsync failed; durable never advances again.
    Failed = 1,
    /// Closed: the committer wrote everything appended before the close and stopped.
    Closed = 2,
}

/// What appenders fill and the committer swaps out.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    /// Frames appended and not yet taken by the committer.
    pub(crate) bytes: Vec<u8>,
    /// Number of frames in `bytes`.
    pub(crate) records: u64,
    /// Sequence number of the next frame.
    pub(crate) next_seq: u64,
    /// Position after the last frame appended.
    pub(crate) appended: u64,
    /// Position after the last frame in `bytes` (below `appended` only when appends were
    /// dropped after a close or failure).
    pub(crate) buffered_end: u64,
    /// The committer sleeps on `data_ready`: notify it (otherwise nobody needs the syscall).
    pub(crate) committer_waiting: bool,
    /// Appenders sleeping on `space_free` (buffer over `MAX_BUFFERED_BYTES`).
    pub(crate) appenders_waiting: usize,
    /// `close` was called: the committer writes what is here and stops; appends are dropped.
    pub(crate) closing: bool,
}

/// A segment before the current one.
#[derive(Debug)]
pub(crate) struct ClosedSegment {
    pub(crate) path: PathBuf,
    /// Position after its last frame (the first position of the next segment).
    pub(crate) end_position: u64,
    pub(crate) file_bytes: u64,
}

/// Segments that are not being written.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    /// Oldest first.
    pub(crate) closed: VecDeque<ClosedSegment>,
    /// Released segments waiting for reuse (each `segment_bytes` long).
    pub(crate) free: Vec<PathBuf>,
}

/// Fault injection (tests): the next write or fsync of the committer fails.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) fail_write: std::sync::atomic::AtomicBool,
    pub(crate) fail_sync: std::sync::atomic::AtomicBool,
}

/// See the module doc.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) options: WalOptions,
    pub(crate) buffer: Mutex<Buffer>,
    /// The committer waits here for frames.
    pub(crate) data_ready: Condvar,
    /// Appenders wait here while the buffer is over its bound.
    pub(crate) space_free: Condvar,
    /// Mirrors `Buffer::appended`, readable without the lock.
    pub(crate) appended: AtomicU64,
    pub(crate) durable: AtomicU64,
    status: AtomicU8,
    pub(crate) waiters: Waiters,
    pub(crate) segments: Mutex<Segments>,
    pub(crate) disk_bytes: AtomicU64,
    pub(crate) stats: WalStats,
    #[cfg(test)]
    pub(crate) faults: Faults,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The shared state after recovery, the records to replay and the committer's writer
    /// (with a new segment started).
    pub(crate) fn start(
        options: WalOptions,
        mut recovered: Recovered,
    ) -> Result<(Shared, Replay, Writer), WalError> {
        if recovered.segments.is_empty() {
            // A fresh log: it goes on after the checkpoint, and stale frames of old free
            // segments must never follow its first frames.
            recovered.next_position = recovered.next_position.max(options.start_position.0);
            for path in recovered.free.drain(..) {
                std::fs::remove_file(&path).map_err(|e| WalError::io("remove", &path, e))?;
            }
        }
        let mut segments = Segments::default();
        let mut disk_bytes = 0;
        for pair in recovered.segments.windows(2) {
            segments.closed.push_back(ClosedSegment {
                path: pair[0].path.clone(),
                end_position: pair[1].first_position,
                file_bytes: pair[0].file_bytes,
            });
            disk_bytes += pair[0].file_bytes;
        }
        if let Some(last) = recovered.segments.last() {
            segments.closed.push_back(ClosedSegment {
                path: last.path.clone(),
                end_position: recovered.next_position,
                file_bytes: last.file_bytes,
            });
            disk_bytes += last.file_bytes;
        }
        for path in recovered.free {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if len == options.segment_bytes && segments.free.len() < MAX_FREE_SEGMENTS {
                segments.free.push(path);
                disk_bytes += len;
            } else {
                std::fs::remove_file(&path).map_err(|e| WalError::io("remove", &path, e))?;
            }
        }
        let shared = Shared {
            dir: options.dir.clone(),
            options,
            buffer: Mutex::new(Buffer {
                next_seq: recovered.next_seq,
                appended: recovered.next_position,
                buffered_end: recovered.next_position,
                ..Buffer::default()
            }),
            data_ready: Condvar::new(),
            space_free: Condvar::new(),
            appended: AtomicU64::new(recovered.next_position),
            durable: AtomicU64::new(recovered.next_position),
            status: AtomicU8::new(Status::Running as u8),
            waiters: Waiters::default(),
            segments: Mutex::new(segments),
            disk_bytes: AtomicU64::new(disk_bytes),
            stats: WalStats::default(),
            #[cfg(test)]
            faults: Faults::default(),
        };
        let writer = Writer::start(&shared, recovered.next_position, recovered.next_seq)?;
        Ok((shared, recovered.records, writer))
    }

    pub(crate) fn status(&self) -> Status {
        match self.status.load(Ordering::Acquire) {
            0 => Status::Running,
            1 => Status::Failed,
            _ => Status::Closed,
        }
    }

    /// Sets the final status (failed or closed) and wakes everyone who waits.
    pub(crate) fn finish(&self, status: Status) {
        self.status.store(status as u8, Ordering::Release);
        self.waiters.wake_all();
        let _buffer = lock(&self.buffer);
        self.space_free.notify_all();
    }

    /// Whether `position` is settled: durable, or never to be.
    pub(crate) fn durable_state(&self, position: u64) -> Option<Result<(), WalFailed>> {
        if self.durable.load(Ordering::Acquire) >= position {
            return Some(Ok(()));
        }
        match self.status() {
            Status::Running => None,
            Status::Failed => Some(Err(WalFailed::Io)),
            Status::Closed => Some(Err(WalFailed::Closed)),
        }
    }

    /// See [`super::Wal::append_with`]. The record is encoded into this thread's frame
    /// buffer before the appenders' lock is taken: under it the frame is only numbered and
    /// copied (every delivery to a persistent session appends, from every worker).
    pub(crate) fn append_with(&self, encode: impl FnOnce(&mut Vec<u8>)) -> u64 {
        thread_local! {
            static FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        FRAME.with(|cell| match cell.try_borrow_mut() {
            Ok(mut frame) => {
                frame.clear();
                frame.resize(FRAME_HEADER_BYTES, 0);
                encode(&mut frame);
                let appended = self.append_frame(&mut frame);
                if frame.capacity() > KEPT_FRAME_BYTES {
                    *frame = Vec::new(); // a rare large record's buffer is not kept
                }
                appended
            }
            // Appending from inside an `encode` (never done): a buffer of its own.
            Err(_) => {
                let mut frame = vec![0; FRAME_HEADER_BYTES];
                encode(&mut frame);
                self.append_frame(&mut frame)
            }
        })
    }

    /// Numbers the encoded `frame` (header space first, then the payload) and copies it
    /// into the buffer for the committer; returns the log's end position after it.
    pub(crate) fn append_frame(&self, frame: &mut [u8]) -> u64 {
        let mut buffer = lock(&self.buffer);
        while buffer.bytes.len() >= MAX_BUFFERED_BYTES
            && !buffer.closing
            && self.status() == Status::Running
        {
            buffer.appenders_waiting += 1;
            buffer = self
                .space_free
                .wait(buffer)
                .unwrap_or_else(PoisonError::into_inner);
            buffer.appenders_waiting -= 1;
        }
        let frame_bytes = frame::seal_without_crc(frame, 0, buffer.next_seq);
        buffer.next_seq += 1;
        buffer.appended += frame_bytes as u64;
        let appended = buffer.appended;
        self.appended.store(appended, Ordering::Release);
        // Closing or failed: the frame is dropped, but its position was taken, so that
        // nothing waiting for it is ever released as durable.
        if !buffer.closing && self.status() == Status::Running {
            buffer.bytes.extend_from_slice(frame);
            buffer.records += 1;
            buffer.buffered_end = appended;
            if buffer.committer_waiting {
                buffer.committer_waiting = false;
                self.data_ready.notify_one();
            }
        }
        appended
    }

    pub(crate) fn request_close(&self) {
        let mut buffer = lock(&self.buffer);
        buffer.closing = true;
        self.data_ready.notify_one();
    }

    /// See [`super::Wal::release_before`].
    pub(crate) fn release_before(&self, position: u64) -> Result<(), WalError> {
        let mut segments = lock(&self.segments);
        let mut changed = false;
        while segments
            .closed
            .front()
            .is_some_and(|s| s.end_position <= position)
        {
            let Some(old) = segments.closed.pop_front() else {
                break;
            };
            changed = true;
            if segments.free.len() < MAX_FREE_SEGMENTS
                && old.file_bytes == self.options.segment_bytes
            {
                let free = segment::free_path(&old.path);
                std::fs::rename(&old.path, &free)
                    .map_err(|e| WalError::io("rename", &old.path, e))?;
                segments.free.push(free);
            } else {
                std::fs::remove_file(&old.path)
                    .map_err(|e| WalError::io("remove", &old.path, e))?;
                self.disk_bytes.fetch_sub(old.file_bytes, Ordering::Relaxed);
            }
        }
        if changed {
            segment::sync_dir(&self.dir)
                .map_err(|e| WalError::io("fsync directory", &self.dir, e))?;
        }
        Ok(())
    }
}
