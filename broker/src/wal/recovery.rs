//! Reading the log back at open: every intact frame of every segment, in order, up to the
//! first bad one; then cutting the log there so that new frames never follow old garbage.
//! It owns the decision of what is replayed, not what a record means.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::frame::{self, Stop};
use super::segment::{self, SegmentHeader, SEGMENT_HEADER_BYTES};
use super::{Position, WalError};

/// A segment kept after recovery (all but the one the log continues in are closed).
#[derive(Debug, Clone)]
pub(crate) struct KeptSegment {
    pub(crate) first_position: u64,
    pub(crate) path: PathBuf,
    pub(crate) file_bytes: u64,
}

/// What open found.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The records to replay, in order, with their end positions.
    pub(crate) records: Vec<(Position, Bytes)>,
    /// Segments holding those records, in order; the log goes on in a new segment after them.
    pub(crate) segments: Vec<KeptSegment>,
    /// Released segments waiting for reuse.
    pub(crate) free: Vec<PathBuf>,
    /// Position and sequence number of the next frame.
    pub(crate) next_position: u64,
    pub(crate) next_seq: u64,
}

/// Where reading stopped: the segment, the offset in it, and why.
struct StopPoint {
    index: usize,
    offset: u64,
    why: &'static str,
}

/// Reads every segment of `dir` in order and cuts the log after the last intact frame:
/// the segment it stops in is truncated there (removed if it holds no frame), later segments
/// are removed (moved aside as `NAME.discarded` if they have an intact header: they are
/// data after a gap, kept for inspection).
pub(crate) fn recover(dir: &Path) -> Result<Recovered, WalError> {
    let listing = segment::list(dir).map_err(|e| WalError::io("list", dir, e))?;
    let mut out = Recovered {
        free: listing.free,
        next_seq: 1,
        ..Recovered::default()
    };
    let mut stop = None;
    for (index, (name_position, path)) in listing.segments.iter().enumerate() {
        let data = read_all(path)?;
        let Some(header) = SegmentHeader::decode(&data) else {
            stop = Some(StopPoint {
                index,
                offset: 0,
                why: "no intact segment header",
            });
            break;
        };
        let continues = header.first_position == *name_position
            && (index == 0
                || (header.first_position == out.next_position
                    && header.first_seq == out.next_seq));
        if !continues {
            stop = Some(StopPoint {
                index,
                offset: 0,
                why: "segment does not continue the log",
            });
            break;
        }
        if index == 0 {
            out.next_position = header.first_position;
            out.next_seq = header.first_seq;
        }
        let (end, why) = read_frames(data, &mut out);
        out.segments.push(KeptSegment {
            first_position: header.first_position,
            path: path.clone(),
            file_bytes: end,
        });
        stop = Some(StopPoint {
            index,
            offset: end,
            why: why.as_str(),
        });
    }
    if let Some(stop) = stop {
        cut(dir, &listing.segments, &stop, &mut out)?;
    }
    Ok(out)
}

fn read_all(path: &Path) -> Result<Vec<u8>, WalError> {
    let mut file = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| WalError::io("open", path, e))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| WalError::io("read", path, e))?;
    // What is replayed must be on disk, not only in the page cache of a crashed process.
    file.sync_data()
        .map_err(|e| WalError::io("fsync", path, e))?;
    Ok(data)
}

/// Appends the intact frames of one segment to `out`; returns the offset after the last one
/// and why reading stopped there.
fn read_frames(mut data: Vec<u8>, out: &mut Recovered) -> (u64, Stop) {
    let mut offset = SEGMENT_HEADER_BYTES as usize;
    let mut ranges = Vec::new();
    let why = loop {
        match frame::check(&data, offset, out.next_seq) {
            Ok(payload) => {
                offset = payload.end;
                ranges.push(payload);
                out.next_seq += 1;
            }
            Err(why) => break why,
        }
    };
    // The last segment is mostly preallocated space: keep only what the records need.
    if offset < data.len() / 2 {
        data.truncate(offset);
        data.shrink_to_fit();
    }
    let data = Bytes::from(data);
    for range in ranges {
        out.next_position += (range.end - range.start + frame::FRAME_HEADER_BYTES) as u64;
        out.records
            .push((Position(out.next_position), data.slice(range)));
    }
    (offset as u64, why)
}

/// Cuts the log at `stop`: truncates the last kept segment after its last frame (or
/// removes it if it holds none) and discards every segment after it.
fn cut(
    dir: &Path,
    segments: &[(u64, PathBuf)],
    stop: &StopPoint,
    out: &mut Recovered,
) -> Result<(), WalError> {
    tracing::info!(
        dir = %dir.display(),
        records = out.records.len(),
        segments = out.segments.len(),
        position = out.next_position,
        next_seq = out.next_seq,
        stopped_in = %segments[stop.index].1.display(),
        offset = stop.offset,
        reason = stop.why,
        "write-ahead log read"
    );
    let kept_count = out.segments.len();
    if let Some(last) = out.segments.last().cloned() {
        if last.file_bytes <= SEGMENT_HEADER_BYTES {
            remove(&last.path)?;
            out.segments.pop();
        } else {
            truncate(&last.path, last.file_bytes)?;
        }
    }
    for (_, path) in &segments[kept_count..] {
        discard(path)?;
    }
    segment::sync_dir(dir).map_err(|e| WalError::io("fsync directory", dir, e))
}

fn truncate(path: &Path, len_bytes: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io("open", path, e))?;
    file.set_len(len_bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| WalError::io("truncate", path, e))
}

fn remove(path: &Path) -> Result<(), WalError> {
    std::fs::remove_file(path).map_err(|e| WalError::io("remove", path, e))
}

/// A segment after the end of the log: garbage (a reused file whose header was never
/// rewritten, preallocated space) is removed; one with an intact header naming itself and an
/// intact first frame held data after a gap, and is moved aside as `NAME.discarded`.
fn discard(path: &Path) -> Result<(), WalError> {
    let data = read_all(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let holds_data = SegmentHeader::decode(&data).is_some_and(|h| {
        segment::segment_path(dir, h.first_position) == path
            && frame::check(&data, SEGMENT_HEADER_BYTES as usize, h.first_seq).is_ok()
    });
    if holds_data {
        let mut aside = path.as_os_str().to_owned();
        aside.push(".discarded");
        tracing::warn!(
            segment = %path.display(),
            "write-ahead log: segment after a damaged frame moved aside, not replayed"
        );
        std::fs::rename(path, &aside).map_err(|e| WalError::io("rename", path, e))
    } else {
        remove(path)
    }
}
