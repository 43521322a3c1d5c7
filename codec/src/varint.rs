//! The variable byte integer (section 1.5.5): 7 bits per byte, at most 4 bytes.

use bytes::{Buf, BufMut};

use crate::error::DecodeError;

/// The largest value a variable byte integer holds (268,435,455).
pub const VARINT_MAX: u32 = 268_435_455;

/// Result of peeking a varint at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peek {
    /// The value and how many bytes it took.
    Done(u32, usize),
    /// More bytes are needed.
    Incomplete,
}

/// Reads a varint from the start of `bytes` without consuming it.
pub(crate) fn peek(bytes: &[u8]) -> Result<Peek, DecodeError> {
    let mut value: u32 = 0;
    for (i, byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A non-minimal encoding (e.g. 0x80 0x00) is accepted: the spec only bounds the
            // length, and Mosquitto accepts it too.
            return Ok(Peek::Done(value, i + 1));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::MalformedVarint)
    } else {
        Ok(Peek::Incomplete)
    }
}

/// Reads and consumes a varint from a complete packet body.
pub(crate) fn read(buf: &mut impl Buf) -> Result<u32, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        if !buf.has_remaining() {
            return Err(DecodeError::Truncated);
        }
        let byte = buf.get_u8();
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::MalformedVarint)
}

/// How many bytes `value` takes as a varint.
pub fn len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `value` as a varint. Values above [`VARINT_MAX`] are a caller bug and are
/// clamped by a debug assertion.
pub fn write(dst: &mut impl BufMut, value: u32) {
    debug_assert!(value <= VARINT_MAX, "varint {value} out of range");
    let mut value = value.min(VARINT_MAX);
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        dst.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_round_trip() {
        for value in [
            0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, VARINT_MAX,
        ] {
            let mut out = Vec::new();
            write(&mut out, value);
            assert_eq!(out.len(), len(value));
            assert_eq!(peek(&out), Ok(Peek::Done(value, out.len())));
            assert_eq!(read(&mut &out[..]), Ok(value));
        }
    }

    #[test]
    fn five_bytes_is_malformed() {
        // [MQTT-1.5.5-1]: at most four bytes.
        assert_eq!(
            peek(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::MalformedVarint)
        );
        assert_eq!(peek(&[0xFF, 0xFF]), Ok(Peek::Incomplete));
    }
}
