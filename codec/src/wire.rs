//! Primitive field readers and writers over a complete packet body (`Bytes`): integers,
//! UTF-8 strings and binary data, each with a two-byte length prefix (section 1.5).
//!
//! Readers take the body by `&mut Bytes` and slice it, so strings and binary data are
//! zero-copy views of the frame. Running past the end is [`DecodeError::Truncated`]: the
//! frame is complete when these run, so a short field is malformed, not "need more".

use bytes::{Buf, BufMut, Bytes};

use crate::error::DecodeError;
use crate::types::{ByteStr, PacketId};

pub(crate) fn read_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    if buf.is_empty() {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u8())
}

pub(crate) fn read_u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
    if buf.len() < 2 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u16())
}

pub(crate) fn read_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u32())
}

/// Binary data: two-byte length, then that many bytes.
pub(crate) fn read_binary(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::from(read_u16(buf)?);
    if buf.len() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.split_to(len))
}

/// A UTF-8 string: two-byte length, then validated UTF-8.
pub(crate) fn read_str(buf: &mut Bytes) -> Result<ByteStr, DecodeError> {
    ByteStr::from_bytes(read_binary(buf)?)
}

/// A non-zero packet identifier ([MQTT-2.2.1-3]).
pub(crate) fn read_packet_id(buf: &mut Bytes) -> Result<PacketId, DecodeError> {
    PacketId::new(read_u16(buf)?).ok_or(DecodeError::ZeroPacketId)
}

pub(crate) fn write_binary(dst: &mut impl BufMut, data: &[u8]) {
    debug_assert!(data.len() <= usize::from(u16::MAX));
    dst.put_u16(data.len() as u16);
    dst.put_slice(data);
}

/// The encoded size of a string or binary field.
pub(crate) fn binary_len(data: &[u8]) -> usize {
    2 + data.len()
}

/// Writes a fixed header: the first byte and the remaining length.
pub(crate) fn write_fixed_header(dst: &mut impl BufMut, byte0: u8, remaining_len: usize) {
    dst.put_u8(byte0);
    crate::varint::write(dst, remaining_len as u32);
}
