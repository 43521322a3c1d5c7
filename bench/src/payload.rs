//! The benchmark payload: a 16-byte header at the front of every PUBLISH payload, followed
//! by zero padding up to `--payload-bytes`.
//!
//! Layout (little endian): send time in nanoseconds since the process [`epoch`] (`u64`),
//! sequence number per publisher (`u32`), publisher index (`u32`). Publishers and
//! subscribers live in the same process, so the clock is the same monotonic one on both
//! ends and latency is simply `receive time - send time`.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes of the header; the smallest payload the generator sends.
pub(crate) const HEADER_BYTES: usize = 16;

/// Bytes of the header written as hexadecimal text.
pub(crate) const HEX_BYTES: usize = 2 * HEADER_BYTES;

/// The instant all timestamps count from.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub(crate) fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What a payload header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Send time, nanoseconds since [`epoch`].
    pub(crate) sent_ns: u64,
    /// Sequence number within the publisher, from 0.
    pub(crate) seq: u32,
    /// Index of the publisher.
    pub(crate) publisher: u32,
}

impl Stamp {
    /// Writes the header into the first [`HEADER_BYTES`] of `dst` (which must be that long).
    pub(crate) fn write(&self, dst: &mut [u8]) {
        dst[0..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        dst[8..12].copy_from_slice(&self.seq.to_le_bytes());
        dst[12..16].copy_from_slice(&self.publisher.to_le_bytes());
    }

    /// Reads the header from the front of a payload; `None` if it is too short.
    pub(crate) fn read(src: &[u8]) -> Option<Stamp> {
        let header: &[u8; HEADER_BYTES] = src.get(..HEADER_BYTES)?.try_into().ok()?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&header[0..8]);
        let mut seq = [0u8; 4];
        seq.copy_from_slice(&header[8..12]);
        let mut publisher = [0u8; 4];
        publisher.copy_from_slice(&header[12..16]);
        Some(Stamp {
            sent_ns: u64::from_le_bytes(ts),
            seq: u32::from_le_bytes(seq),
            publisher: u32::from_le_bytes(publisher),
        })
    }

    /// Writes the header as [`HEX_BYTES`] lowercase hex digits into the front of `dst`.
    pub(crate) fn write_hex(&self, dst: &mut [u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut raw = [0u8; HEADER_BYTES];
        self.write(&mut raw);
        for (i, b) in raw.iter().enumerate() {
            dst[2 * i] = DIGITS[usize::from(b >> 4)];
            dst[2 * i + 1] = DIGITS[usize::from(b & 0xF)];
        }
    }

    /// Reads a header written by [`Stamp::write_hex`]; `None` if too short or not hex.
    pub(crate) fn read_hex(src: &[u8]) -> Option<Stamp> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        let hex = src.get(..HEX_BYTES)?;
        let mut raw = [0u8; HEADER_BYTES];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            raw[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Stamp::read(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let stamp = Stamp {
            sent_ns: 0x0102_0304_0506_0708,
            seq: 77,
            publisher: 4_000_000_000,
        };
        let mut buf = [0xAAu8; 64];
        stamp.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(stamp));
        assert_eq!(Stamp::read(&buf[..HEADER_BYTES]), Some(stamp));
        assert_eq!(Stamp::read(&buf[..HEADER_BYTES - 1]), None);
    }

    #[test]
    fn hex_stamp_round_trips() {
        let stamp = Stamp {
            sent_ns: 123_456_789_012,
            seq: 9,
            publisher: 0,
        };
        let mut buf = [b'.'; 40];
        stamp.write_hex(&mut buf);
        assert!(buf[..HEX_BYTES].iter().all(u8::is_ascii_hexdigit));
        assert_eq!(buf[HEX_BYTES], b'.');
        assert_eq!(Stamp::read_hex(&buf), Some(stamp));
        assert_eq!(Stamp::read_hex(&buf[..HEX_BYTES - 1]), None);
        assert_eq!(Stamp::read_hex(b"zz000000000000000000000000000000"), None);
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
