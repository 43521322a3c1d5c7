//! The incremental frame decoder: a two-state machine (fixed header, then body) over a
//! `BytesMut` that the caller keeps filling from its transport.
//!
//! Limits are checked before buffering: as soon as the fixed header is complete the whole
//! packet size is known, and a packet above the maximum is rejected before its body is read
//! (so a hostile peer announcing 256 MiB never makes us allocate it). Reserved header flags
//! are checked at the same point.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::{kind, Packet, PubAck, PubComp, PubRec, PubRel, Publish};
use crate::types::{PacketId, ProtocolVersion};
use crate::varint::{self, Peek};

/// The largest remaining length the format allows, plus a 5-byte fixed header.
pub const MAX_PACKET_SIZE_BYTES: u32 = varint::VARINT_MAX + 5;

/// Decodes a stream of MQTT frames, one connection's worth.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Protocol version; `None` on the server side until CONNECT has been decoded, or
    /// until a CONNECT that fails to decode has shown its protocol name and level.
    version: Option<ProtocolVersion>,
    /// Largest accepted packet, fixed header included.
    max_packet_size_bytes: u32,
    state: DecodeState,
}

/// Where the decoder is inside the current frame.
#[derive(Debug, Clone, Copy)]
enum DecodeState {
    /// Waiting for a complete fixed header.
    Header,
    /// Header parsed; waiting until `total_len` bytes are buffered.
    Body {
        byte0: u8,
        header_len: usize,
        total_len: usize,
    },
}

impl Decoder {
    /// A server-side decoder: the version is learnt from the CONNECT packet.
    pub fn new(max_packet_size_bytes: u32) -> Decoder {
        Decoder {
            version: None,
            max_packet_size_bytes,
            state: DecodeState::Header,
        }
    }

    /// A decoder for a known protocol version (client side, or after CONNECT).
    pub fn with_version(version: ProtocolVersion, max_packet_size_bytes: u32) -> Decoder {
        Decoder {
            version: Some(version),
            max_packet_size_bytes,
            state: DecodeState::Header,
        }
    }

    /// The protocol version in use, once known.
    ///
    /// After a CONNECT that failed to decode, this is the version its protocol name and
    /// level declare (when they are whole and supported), so that a server can still
    /// answer a CONNACK with the reason code in that version's encoding ([MQTT-4.13.1-1]
    /// lets it).
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Before the version is known: takes it from the start of a CONNECT frame in `frame`
    /// (fixed header first), if its protocol name and level are there and supported.
    fn learn_declared_version(&mut self, frame: &[u8]) {
        if self.version.is_some() || frame.first().map(|b| b >> 4) != Some(kind::CONNECT) {
            return;
        }
        let Ok(Peek::Done(_, len_bytes)) = varint::peek(&frame[1..]) else {
            return;
        };
        // The name (at most "MQIsdp", with its length) and the level: 9 bytes.
        let rest = &frame[(1 + len_bytes).min(frame.len())..];
        let mut body = Bytes::copy_from_slice(&rest[..rest.len().min(9)]);
        if let Ok(version) = crate::packet::Connect::decode_protocol(&mut body) {
            self.version = Some(version);
        }
    }

    /// Sets the protocol version (e.g. a client after sending CONNECT).
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    /// The maximum accepted packet size.
    pub fn max_packet_size_bytes(&self) -> u32 {
        self.max_packet_size_bytes
    }

    /// Whether the decoder is between frames (nothing of a frame consumed): then it is
    /// the same as a fresh one of its version and size limit.
    pub fn is_between_frames(&self) -> bool {
        matches!(self.state, DecodeState::Header)
    }

    /// Changes the maximum accepted packet size.
    pub fn set_max_packet_size(&mut self, max_packet_size_bytes: u32) {
        self.max_packet_size_bytes = max_packet_size_bytes;
    }

    /// Decodes the next packet from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame (having reserved room
    /// for it); the caller reads more and calls again. On success the frame's bytes are
    /// split off `buf`. After an error the stream cannot be resynchronised: close it.
    ///
    /// # Errors
    /// Any [`DecodeError`]; [`DecodeError::reason_code`] says what to answer.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let (byte0, header_len, total_len) = match self.state {
            DecodeState::Header => match self.decode_header(buf) {
                Ok(Some(header)) => header,
                Ok(None) => return Ok(None),
                Err(e) => {
                    // A CONNECT too large still says its version in its first bytes.
                    self.learn_declared_version(buf);
                    return Err(e);
                }
            },
            DecodeState::Body {
                byte0,
                header_len,
                total_len,
            } => (byte0, header_len, total_len),
        };
        if buf.len() < total_len {
            self.state = DecodeState::Body {
                byte0,
                header_len,
                total_len,
            };
            buf.reserve(total_len - buf.len());
            return Ok(None);
        }
        self.state = DecodeState::Header;
        if total_len - header_len == 2 && (kind::PUBACK..=kind::PUBCOMP).contains(&(byte0 >> 4)) {
            return decode_short_ack(byte0, buf, header_len).map(Some);
        }
        let frame = buf.split_to(total_len).freeze();
        let version = self.version.unwrap_or(ProtocolVersion::V3_1_1);
        if byte0 >> 4 == kind::PUBLISH {
            // The hot path: built straight into the return slot.
            return Publish::decode_frame(byte0, frame, header_len, version);
        }
        self.decode_other(byte0, frame, header_len, version)
    }

    /// Every packet but PUBLISH.
    #[inline(never)]
    fn decode_other(
        &mut self,
        byte0: u8,
        frame: Bytes,
        header_len: usize,
        version: ProtocolVersion,
    ) -> Result<Option<Packet>, DecodeError> {
        self.learn_declared_version(&frame);
        let packet = Packet::decode_body(byte0, frame, header_len, version)?;
        if let Packet::Connect(connect) = &packet {
            self.version = Some(connect.protocol);
        }
        Ok(Some(packet))
    }

    /// Parses the fixed header: `(byte0, header_len, total_len)` once it is complete.
    #[inline(always)]
    fn decode_header(&self, buf: &BytesMut) -> Result<Option<(u8, usize, usize)>, DecodeError> {
        let Some(&byte0) = buf.first() else {
            return Ok(None);
        };
        let packet_type = byte0 >> 4;
        let flags = byte0 & 0x0F;
        if packet_type == 0
            || (packet_type == kind::AUTH && self.version.is_some_and(|v| !v.is_v5()))
        {
            return Err(DecodeError::InvalidPacketType(packet_type));
        }
        // [MQTT-2.1.3-1]: reserved flags must have their fixed values.
        if let Some(required) = Packet::required_flags(packet_type) {
            if flags != required {
                return Err(DecodeError::InvalidHeaderFlags { packet_type, flags });
            }
        }
        let (remaining_len, len_bytes) = match varint::peek(&buf[1..]) {
            Ok(Peek::Done(value, len)) => (value, len),
            Ok(Peek::Incomplete) => return Ok(None),
            Err(_) => return Err(DecodeError::MalformedRemainingLength),
        };
        let header_len = 1 + len_bytes;
        let total = u64::from(remaining_len) + header_len as u64;
        if total > u64::from(self.max_packet_size_bytes) {
            return Err(DecodeError::PacketTooLarge {
                size: u32::try_from(total).unwrap_or(u32::MAX),
                max: self.max_packet_size_bytes,
            });
        }
        Ok(Some((byte0, header_len, total as usize)))
    }
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP that is a packet identifier only (3.x, and 5.0's
/// Success without properties): the hot acknowledgements, read in place and consumed from
/// `buf` without a frame handle (no reference count to take and drop per packet).
#[inline]
fn decode_short_ack(
    byte0: u8,
    buf: &mut BytesMut,
    header_len: usize,
) -> Result<Packet, DecodeError> {
    let id = u16::from_be_bytes([buf[header_len], buf[header_len + 1]]);
    buf.advance(header_len + 2);
    let packet_id = PacketId::new(id).ok_or(DecodeError::ZeroPacketId)?;
    Ok(match byte0 >> 4 {
        kind::PUBACK => Packet::PubAck(PubAck::new(packet_id)),
        kind::PUBREC => Packet::PubRec(PubRec::new(packet_id)),
        kind::PUBREL => Packet::PubRel(PubRel::new(packet_id)),
        _ => Packet::PubComp(PubComp::new(packet_id)),
    })
}
