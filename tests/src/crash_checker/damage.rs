//! Damage to a stopped broker's data directory, as a crash or a bad disk leaves it: the
//! frames of the write-ahead log (walked with the layout documented in the broker's `wal`
//! module), a log cut at a frame, a torn or garbled tail, a flipped byte, a corrupt
//! checkpoint. Only files of a data directory the test created are touched.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tern_broker::journal::record::Record;

/// Bytes of a segment header; frames start after it.
const SEGMENT_HEADER_BYTES: u64 = 32;
/// Bytes of a frame header: len u32, crc32c u32, seq u64.
const FRAME_HEADER_BYTES: u64 = 16;

/// One frame of the log.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The segment file holding it.
    pub segment: PathBuf,
    /// Where it starts in the file.
    pub offset: u64,
    /// Its length, header included.
    pub len: u64,
    /// Its record, if the payload decodes.
    pub record: Option<Record>,
}

/// The live segments (`*.wal`) of `dir`, in log order.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments
}

/// The frames of the log in `dir`, in order: in each segment, up to zeroed space or a
/// frame that runs past the end of the file. (No CRC check: meant for a fresh directory,
/// whose segments hold no stale frames.)
pub fn frames(dir: &Path) -> Vec<Frame> {
    let mut frames = Vec::new();
    for segment in segments(dir) {
        let data = std::fs::read(&segment).expect("read segment");
        let mut offset = SEGMENT_HEADER_BYTES as usize;
        while offset + FRAME_HEADER_BYTES as usize <= data.len() {
            let len = u32::from_le_bytes(
                data[offset..offset + 4]
                    .try_into()
                    .expect("four bytes by the bound above"),
            ) as usize;
            let end = offset + FRAME_HEADER_BYTES as usize + len;
            if len == 0 || end > data.len() {
                break;
            }
            let payload = &data[offset + FRAME_HEADER_BYTES as usize..end];
            frames.push(Frame {
                segment: segment.clone(),
                offset: offset as u64,
                len: end as u64 - offset as u64,
                record: Record::decode(payload).ok(),
            });
            offset = end;
        }
    }
    frames
}

/// Ends the log at `frame`: it and everything after it in its segment become zeroed,
/// preallocated space, as if the broker had died before writing them. Later segments are
/// removed.
pub fn cut_log_at(dir: &Path, frame: &Frame) {
    let file = OpenOptions::new()
        .write(true)
        .open(&frame.segment)
        .expect("open segment");
    let size = file.metadata().expect("stat segment").len();
    let zeros = vec![0u8; (size - frame.offset) as usize];
    file.write_all_at(&zeros, frame.offset).expect("zero tail");
    for later in segments(dir).into_iter().filter(|s| *s > frame.segment) {
        std::fs::remove_file(later).expect("remove later segment");
    }
}

/// Truncates the segment of `frame` in the middle of it: a torn write of a file that was
/// not preallocated.
pub fn tear_frame(frame: &Frame) {
    OpenOptions::new()
        .write(true)
        .open(&frame.segment)
        .expect("open segment")
        .set_len(frame.offset + frame.len / 2)
        .expect("truncate segment");
}

/// Writes `bytes` over `path` at `offset`.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open file")
        .write_all_at(bytes, offset)
        .expect("write");
}

/// Flips every bit of the byte in the middle of `frame`'s payload (the CRC must catch it).
pub fn flip_byte_in(frame: &Frame) {
    let at = frame.offset + FRAME_HEADER_BYTES + (frame.len - FRAME_HEADER_BYTES) / 2;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&frame.segment)
        .expect("open segment");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).expect("read byte");
    file.write_all_at(&[!byte[0]], at).expect("write byte");
}

/// The checkpoint file of a data directory.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(tern_broker::journal::snapshot::FILE_NAME)
}
