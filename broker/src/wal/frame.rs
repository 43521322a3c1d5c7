//! The frame format of the log and its check: one record = one frame.
//!
//! ```text
//! len: u32 LE | crc32c: u32 LE (over seq and payload) | seq: u64 LE | payload (len bytes)
//! ```
//!
//! This file owns the layout, the encoding of a frame in place and the decision whether the
//! bytes at an offset are the next intact frame. It does no I/O.

/// Bytes before the payload: len, crc32c, seq.
pub(crate) const FRAME_HEADER_BYTES: usize = 16;

/// The largest payload a frame may carry (256 MiB, MQTT's largest packet). A length above
/// it in a file is garbage, not a record; `Wal::append_with` panics past it.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// Fills in the length and sequence number of the frame that starts at `start` in `buf`,
/// whose payload is everything after `start + FRAME_HEADER_BYTES`; the CRC is left for
/// [`fill_crcs`] (the committer computes it, outside the appenders' lock). Returns the
/// frame's length in bytes.
///
/// # Panics
/// If the payload is longer than [`MAX_RECORD_BYTES`].
pub(crate) fn seal_without_crc(buf: &mut [u8], start: usize, seq: u64) -> usize {
    let frame = &mut buf[start..];
    let payload_bytes = frame.len() - FRAME_HEADER_BYTES;
    assert!(
        payload_bytes <= MAX_RECORD_BYTES,
        "WAL record of {payload_bytes} bytes exceeds MAX_RECORD_BYTES"
    );
    frame[0..4].copy_from_slice(&(payload_bytes as u32).to_le_bytes());
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
    frame.len()
}

/// Computes and fills in the CRC of every frame in `frames` (whole frames back to back,
/// as [`seal_without_crc`] left them).
pub(crate) fn fill_crcs(frames: &mut [u8]) {
    let mut at = 0;
    while at + FRAME_HEADER_BYTES <= frames.len() {
        let len = u32::from_le_bytes([frames[at], frames[at + 1], frames[at + 2], frames[at + 3]])
            as usize;
        let end = at + FRAME_HEADER_BYTES + len;
        let crc = crc32c::crc32c(&frames[at + 8..end]);
        frames[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// [`seal_without_crc`] and the CRC: one whole frame (tests).
#[cfg(test)]
pub(crate) fn seal(buf: &mut [u8], start: usize, seq: u64) -> usize {
    let len = seal_without_crc(buf, start, seq);
    fill_crcs(&mut buf[start..]);
    len
}

/// Why reading stopped at an offset: the end of the log found there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Fewer bytes left than a header, or a length of 0 (zeroed, preallocated space).
    End,
    /// The length is larger than [`MAX_RECORD_BYTES`] or runs past the data.
    BadLength,
    /// The CRC does not match: torn or corrupted.
    BadCrc,
    /// An intact frame, but not the next sequence number: left over from a recycled segment.
    StaleSeq,
}

impl Stop {
    /// For the log line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stop::End => "end of data",
            Stop::BadLength => "bad length",
            Stop::BadCrc => "CRC mismatch",
            Stop::StaleSeq => "stale sequence number",
        }
    }
}

/// The intact frame with sequence number `seq` at `data[offset..]`: its payload range.
pub(crate) fn check(data: &[u8], offset: usize, seq: u64) -> Result<std::ops::Range<usize>, Stop> {
    let rest = &data[offset.min(data.len())..];
    if rest.len() < FRAME_HEADER_BYTES {
        return Err(Stop::End);
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len == 0 {
        return Err(Stop::End);
    }
    if len > MAX_RECORD_BYTES || len > rest.len() - FRAME_HEADER_BYTES {
        return Err(Stop::BadLength);
    }
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let end = FRAME_HEADER_BYTES + len;
    if crc32c::crc32c(&rest[8..end]) != crc {
        return Err(Stop::BadCrc);
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&rest[8..16]);
    if u64::from_le_bytes(seq_bytes) != seq {
        return Err(Stop::StaleSeq);
    }
    Ok(offset + FRAME_HEADER_BYTES..offset + end)
}

/// The length of the frame that starts at `data[offset..]`, read from its header (for
/// frames this process wrote itself).
pub(crate) fn frame_bytes_at(data: &[u8], offset: usize) -> usize {
    let h = &data[offset..offset + 4];
    FRAME_HEADER_BYTES + u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize
}

/// The sequence number of the frame that starts at `data[offset..]` (a frame this process
/// wrote itself).
pub(crate) fn seq_at(data: &[u8], offset: usize) -> u64 {
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&data[offset + 8..offset + 16]);
    u64::from_le_bytes(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; FRAME_HEADER_BYTES];
        buf.extend_from_slice(payload);
        seal(&mut buf, 0, seq);
        buf
    }

    #[test]
    fn sealed_frame_checks_and_detects_damage() {
        let f = frame(7, b"hello");
        assert_eq!(f.len(), 21);
        assert_eq!(&f[0..4], &5u32.to_le_bytes());
        assert_eq!(check(&f, 0, 7), Ok(16..21));
        assert_eq!(frame_bytes_at(&f, 0), 21);
        assert_eq!(seq_at(&f, 0), 7);
        assert_eq!(check(&f, 0, 8), Err(Stop::StaleSeq));
        assert_eq!(check(&f[..20], 0, 7), Err(Stop::BadLength));
        assert_eq!(check(&f[..15], 0, 7), Err(Stop::End));
        assert_eq!(check(&[0u8; 32], 0, 7), Err(Stop::End));
        for byte in 4..f.len() {
            let mut bad = f.clone();
            bad[byte] ^= 0x10;
            assert_eq!(check(&bad, 0, 7), Err(Stop::BadCrc), "flip in byte {byte}");
        }
    }
}
