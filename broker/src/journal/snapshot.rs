//! Checkpoints: the whole persistent state written as records into one file
//! (`checkpoint.snap` in the data directory), after which the log before the checkpoint's
//! cut position can be recycled.
//!
//! Layout: the magic `TERNSNAP`, a format version (u32), the cut (u64: every log record
//! ending at or before it is in the snapshot), a CRC32C of those, then frames `len: u32 | crc32c: u32 |
//! record`, then a trailer frame of length `u32::MAX` holding the record count. A file is
//! written to `checkpoint.tmp`, fsynced, renamed over the old one and the directory
//! fsynced, so a crash leaves the old checkpoint or the new one, never a mix. A file that
//! does not read back whole (bad magic, bad CRC, no trailer) is reported as corrupt: the
//! caller moves it aside and starts from the log alone.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::record::{Record, RecordError};

/// File name of the checkpoint in the data directory.
pub const FILE_NAME: &str = "checkpoint.snap";
const TMP_NAME: &str = "checkpoint.tmp";
const MAGIC: &[u8; 8] = b"TERNSNAP";
const VERSION: u32 = 1;
const TRAILER: u32 = u32::MAX;
/// No record is larger than this (a PUBLISH is at most 256 MiB).
const MAX_RECORD_BYTES: u32 = 300 << 20;

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a whole checkpoint.
    #[error("checkpoint {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Snapshot {
    /// Log records ending at or before this position are in it.
    pub cut: u64,
    /// Its records, in the order written.
    pub records: Vec<Record>,
}

/// Writes a checkpoint of `records` with `cut` into `dir`, atomically replacing the last.
/// Returns the number of bytes written.
///
/// # Errors
/// [`SnapshotError::Io`]; the previous checkpoint is then still in place.
pub fn write(
    dir: &Path,
    cut: u64,
    records: impl Iterator<Item = Record>,
) -> Result<u64, SnapshotError> {
    let tmp = dir.join(TMP_NAME);
    let io = |source| SnapshotError::Io {
        path: tmp.clone(),
        source,
    };
    let file = File::create(&tmp).map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&cut.to_le_bytes());
    header.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
    out.write_all(&header).map_err(io)?;
    let mut buf = Vec::new();
    let mut count = 0u64;
    let mut bytes = 24u64;
    for record in records {
        buf.clear();
        record.encode(&mut buf);
        out.write_all(&(buf.len() as u32).to_le_bytes())
            .map_err(io)?;
        out.write_all(&crc32c::crc32c(&buf).to_le_bytes())
            .map_err(io)?;
        out.write_all(&buf).map_err(io)?;
        count += 1;
        bytes += 8 + buf.len() as u64;
    }
    out.write_all(&TRAILER.to_le_bytes()).map_err(io)?;
    out.write_all(&crc32c::crc32c(&count.to_le_bytes()).to_le_bytes())
        .map_err(io)?;
    out.write_all(&count.to_le_bytes()).map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    let path = dir.join(FILE_NAME);
    std::fs::rename(&tmp, &path).map_err(io)?;
    sync_dir(dir).map_err(io)?;
    Ok(bytes + 16)
}

/// Reads the checkpoint in `dir`; `Ok(None)` when there is none.
///
/// # Errors
/// [`SnapshotError::Io`] when it cannot be read, [`SnapshotError::Corrupt`] when it is not
/// whole.
pub fn read(dir: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    let path = dir.join(FILE_NAME);
    let mut data = Vec::new();
    match File::open(&path) {
        Ok(mut file) => file
            .read_to_end(&mut data)
            .map_err(|source| SnapshotError::Io {
                path: path.clone(),
                source,
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Io { path, source }),
    };
    parse(&data)
        .map(Some)
        .map_err(|reason| SnapshotError::Corrupt { path, reason })
}

fn parse(data: &[u8]) -> Result<Snapshot, String> {
    if data.len() < 24 || &data[..8] != MAGIC {
        return Err("no checkpoint header".into());
    }
    if crc32c::crc32c(&data[..20]) != u32::from_le_bytes(to4(&data[20..24])) {
        return Err("header CRC mismatch".into());
    }
    let version = u32::from_le_bytes(to4(&data[8..12]));
    if version != VERSION {
        return Err(format!("format version {version}, expected {VERSION}"));
    }
    let cut = u64::from_le_bytes(to8(&data[12..20]));
    let mut at = 24;
    let mut records = Vec::new();
    loop {
        let head = data.get(at..at + 8).ok_or("truncated before the trailer")?;
        let len = u32::from_le_bytes(to4(&head[..4]));
        let crc = u32::from_le_bytes(to4(&head[4..8]));
        at += 8;
        if len == TRAILER {
            let count = data.get(at..at + 8).ok_or("truncated trailer")?;
            if crc32c::crc32c(count) != crc
                || u64::from_le_bytes(to8(count)) != records.len() as u64
            {
                return Err("trailer does not match".into());
            }
            return Ok(Snapshot { cut, records });
        }
        if len > MAX_RECORD_BYTES {
            return Err(format!("record length {len} at byte {}", at - 8));
        }
        let body = data.get(at..at + len as usize).ok_or("truncated record")?;
        if crc32c::crc32c(body) != crc {
            return Err(format!("CRC mismatch at byte {}", at - 8));
        }
        let record = Record::decode(body).map_err(|e: RecordError| e.to_string())?;
        records.push(record);
        at += len as usize;
    }
}

fn to4(s: &[u8]) -> [u8; 4] {
    let mut a = [0; 4];
    a.copy_from_slice(s);
    a
}

fn to8(s: &[u8]) -> [u8; 8] {
    let mut a = [0; 8];
    a.copy_from_slice(s);
    a
}

/// Makes a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Moves a corrupt or unreadable file aside (`NAME.corrupt-<unix ms>`); returns the new
/// name.
pub fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{}", super::unix_ms_now()));
    let to = PathBuf::from(name);
    std::fs::rename(path, &to)?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: u64) -> Vec<Record> {
        (0..n)
            .map(|i| Record::SessionOpen {
                session: i,
                client_id: format!("client-{i}"),
                expiry_secs: 10,
            })
            .collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tern-snap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn round_trip_and_replace() {
        let dir = temp_dir("rt");
        assert!(read(&dir).expect("none").is_none());
        write(&dir, 5, records(3).into_iter()).expect("write");
        write(&dir, 77, records(10).into_iter()).expect("write");
        let snap = read(&dir).expect("read").expect("some");
        assert_eq!(snap.cut, 77);
        assert_eq!(snap.records, records(10));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Every truncation and every flipped byte of a checkpoint is detected: a checkpoint
    /// is used whole or not at all.
    #[test]
    fn truncated_or_flipped_checkpoint_is_corrupt() {
        let dir = temp_dir("bad");
        write(&dir, 1, records(4).into_iter()).expect("write");
        let data = std::fs::read(dir.join(FILE_NAME)).expect("read");
        for cut in 0..data.len() {
            assert!(parse(&data[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 0x10;
            assert!(parse(&bad).is_err(), "flip at {i}");
        }
        let moved = move_aside(&dir.join(FILE_NAME)).expect("move");
        assert!(moved.exists());
        assert!(read(&dir).expect("none").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
