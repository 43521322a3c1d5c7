//! The committer thread: takes the whole append buffer, writes it to the current segment
//! (rolling to the next when a frame does not fit), fdatasyncs, publishes the durable
//! position and wakes the waiters; then at once the next batch. It owns the current
//! segment file; the appenders never touch a file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use crate::config::Durability;

use super::frame;
use super::segment::{self, SegmentHeader, SEGMENT_HEADER_BYTES};
use super::shared::{ClosedSegment, Shared, Status};
use super::{OnFatal, WalError};

/// The segment being written.
pub(crate) struct Writer {
    file: File,
    path: PathBuf,
    /// Where the next frame goes in the file.
    offset: u64,
    capacity_bytes: u64,
    /// The position after the last frame written.
    position: u64,
    /// Written and not yet fdatasynced.
    unsynced: bool,
    last_sync: Instant,
}

impl Writer {
    /// Starts the first segment of this run at `position`.
    pub(crate) fn start(shared: &Shared, position: u64, seq: u64) -> Result<Writer, WalError> {
        let capacity_bytes = shared.options.segment_bytes;
        let (file, path) = new_segment(shared, position, seq, capacity_bytes)?;
        Ok(Writer {
            file,
            path,
            offset: SEGMENT_HEADER_BYTES,
            capacity_bytes,
            position,
            unsynced: false,
            last_sync: Instant::now(),
        })
    }

    /// Writes a batch of whole frames, rolling segments as needed.
    fn write_batch(&mut self, shared: &Shared, batch: &[u8]) -> Result<(), WalError> {
        let mut done = 0;
        while done < batch.len() {
            let room = (self.capacity_bytes - self.offset) as usize;
            let mut n = batch.len() - done;
            if n > room {
                n = 0;
                while done + n < batch.len() {
                    let frame_bytes = frame::frame_bytes_at(batch, done + n);
                    if n + frame_bytes > room {
                        break;
                    }
                    n += frame_bytes;
                }
            }
            if n == 0 {
                let frame_bytes = frame::frame_bytes_at(batch, done);
                self.roll(shared, frame_bytes as u64, frame::seq_at(batch, done))?;
                continue;
            }
            self.write_at(shared, &batch[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, shared: &Shared, bytes: &[u8]) -> Result<(), WalError> {
        #[cfg(test)]
        if shared.faults.fail_write.swap(false, Ordering::Relaxed) {
            return Err(WalError::io(
                "write",
                &self.path,
                std::io::Error::other("injected"),
            ));
        }
        self.file
            .write_all_at(bytes, self.offset)
            .map_err(|e| WalError::io("write", &self.path, e))?;
        self.offset += bytes.len() as u64;
        self.position += bytes.len() as u64;
        self.unsynced = true;
        let stats = &shared.stats;
        stats
            .bytes_written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn sync(&mut self, shared: &Shared) -> Result<(), WalError> {
        #[cfg(test)]
        if shared.faults.fail_sync.swap(false, Ordering::Relaxed) {
            return Err(WalError::io(
                "fdatasync",
                &self.path,
                std::io::Error::other("injected"),
            ));
        }
        self.file
            .sync_data()
            .map_err(|e| WalError::io("fdatasync", &self.path, e))?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the current segment (fdatasynced) and starts the next one for a frame of
    /// `frame_bytes` with sequence number `seq`.
    fn roll(&mut self, shared: &Shared, frame_bytes: u64, seq: u64) -> Result<(), WalError> {
        if self.unsynced {
            self.sync(shared)?;
        }
        let capacity_bytes = shared
            .options
            .segment_bytes
            .max(SEGMENT_HEADER_BYTES + frame_bytes);
        let (file, path) = new_segment(shared, self.position, seq, capacity_bytes)?;
        let closed = ClosedSegment {
            path: std::mem::replace(&mut self.path, path),
            end_position: self.position,
            file_bytes: self.capacity_bytes,
        };
        shared
            .segments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed
            .push_back(closed);
        self.file = file;
        self.offset = SEGMENT_HEADER_BYTES;
        self.capacity_bytes = capacity_bytes;
        Ok(())
    }

    /// When the next fsync is due (durability `write` with unsynced data).
    fn fsync_due(&self, shared: &Shared) -> Option<Instant> {
        (shared.options.durability == Durability::Write && self.unsynced)
            .then(|| self.last_sync + Duration::from_millis(shared.options.fsync_interval_ms))
    }
}

/// Creates (or reuses a released file for) the segment starting at `position`.
fn new_segment(
    shared: &Shared,
    position: u64,
    seq: u64,
    capacity_bytes: u64,
) -> Result<(File, PathBuf), WalError> {
    let free = (capacity_bytes == shared.options.segment_bytes)
        .then(|| {
            shared
                .segments
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .free
                .pop()
        })
        .flatten();
    let header = SegmentHeader {
        first_position: position,
        first_seq: seq,
    };
    let path = segment::segment_path(&shared.dir, position);
    let file = segment::create(&shared.dir, header, capacity_bytes, free.as_deref())
        .map_err(|e| WalError::io("create segment", &path, e))?;
    let stats = &shared.stats;
    stats.segments_created.fetch_add(1, Ordering::Relaxed);
    if free.is_some() {
        stats.segments_reused.fetch_add(1, Ordering::Relaxed);
    } else {
        shared
            .disk_bytes
            .fetch_add(capacity_bytes, Ordering::Relaxed);
    }
    Ok((file, path))
}

/// `write` durability: the shortest time between two commits under load (well under an
/// fsync, 120-240 µs here, which paces `sync` commits by itself).
const WRITE_COMMIT_EVERY: Duration = Duration::from_micros(150);

/// What the committer took from the buffer.
struct Batch {
    /// The position after its last frame.
    end_position: u64,
    records: u64,
    /// The last batch: `close` was called before it was taken.
    closing: bool,
}

/// Waits for frames (or for a due fsync, or a close) and swaps the buffer into `bytes`.
fn take_batch(shared: &Shared, bytes: &mut Vec<u8>, fsync_due: Option<Instant>) -> Batch {
    let mut buffer = shared.buffer.lock().unwrap_or_else(PoisonError::into_inner);
    while buffer.bytes.is_empty() && !buffer.closing {
        buffer.committer_waiting = true;
        buffer = match fsync_due {
            None => shared
                .data_ready
                .wait(buffer)
                .unwrap_or_else(PoisonError::into_inner),
            Some(due) => {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                let (buffer, _) = shared
                    .data_ready
                    .wait_timeout(buffer, due - now)
                    .unwrap_or_else(PoisonError::into_inner);
                buffer
            }
        };
    }
    buffer.committer_waiting = false;
    std::mem::swap(&mut buffer.bytes, bytes);
    if buffer.appenders_waiting > 0 {
        shared.space_free.notify_all();
    }
    Batch {
        end_position: buffer.buffered_end,
        records: std::mem::take(&mut buffer.records),
        closing: buffer.closing,
    }
}

/// Writes and syncs one batch, publishes it durable. Returns whether it was the last.
fn commit(
    shared: &Shared,
    writer: &mut Writer,
    bytes: &[u8],
    batch: &Batch,
) -> Result<bool, WalError> {
    let started = Instant::now();
    if !bytes.is_empty() {
        writer.write_batch(shared, bytes)?;
    }
    let sync_now = match shared.options.durability {
        Durability::Write => writer
            .fsync_due(shared)
            .is_some_and(|due| batch.closing || Instant::now() >= due),
        _ => writer.unsynced,
    };
    if sync_now {
        writer.sync(shared)?;
    }
    shared.durable.store(batch.end_position, Ordering::Release);
    shared.waiters.wake_up_to(batch.end_position);
    if batch.records > 0 {
        let micros = started.elapsed().as_micros() as u64;
        shared
            .stats
            .records
            .fetch_add(batch.records, Ordering::Relaxed);
        shared.stats.commit(batch.records, micros);
    }
    Ok(batch.closing)
}

/// The committer thread's body: commits batches until the log is closed or fails.
pub(crate) fn run(shared: &Shared, mut writer: Writer, on_fatal: OnFatal) {
    let mut bytes = Vec::new();
    let result = loop {
        let batch = take_batch(shared, &mut bytes, writer.fsync_due(shared));
        let started = Instant::now();
        // The CRCs are computed here, off the appenders' lock.
        frame::fill_crcs(&mut bytes);
        match commit(shared, &mut writer, &bytes, &batch) {
            Ok(true) => break Ok(()),
            Ok(false) => bytes.clear(),
            Err(e) => break Err(e),
        }
        // With `write`, a commit costs a write(2), not an fsync: back to back, the committer
        // would spin on one core with small batches, and every commit wakes the connections
        // waiting on it. Commits under load are paced to one per WRITE_COMMIT_EVERY, so that
        // batches grow as they do during a sync fsync (an idle log waits for data as usual).
        if shared.options.durability == Durability::Write && batch.records > 0 {
            let spent = started.elapsed();
            if spent < WRITE_COMMIT_EVERY {
                std::thread::sleep(WRITE_COMMIT_EVERY - spent);
            }
        }
    };
    match result {
        Ok(()) => shared.finish(Status::Closed),
        Err(e) => {
            tracing::error!(error = %e, "write-ahead log failed: nothing more becomes durable");
            shared.finish(Status::Failed);
            on_fatal(e);
        }
    }
}
