//! The control packets: one module per packet type, each with a `decode`/`encode` pair, and
//! [`Packet`], the enum the decoder yields.
//!
//! `decode` functions take the complete body of one frame as `Bytes` (the fixed header
//! already parsed and checked) and must consume it exactly; PUBLISH alone takes the whole
//! frame and the header length, because it keeps the frame as its only handle. `encode` appends the whole
//! packet, fixed header included, to any `BufMut`.

mod auth;
mod connack;
mod connect;
mod disconnect;
mod puback;
mod publish;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;

pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, LastWill};
pub use disconnect::Disconnect;
pub use puback::{PubAck, PubComp, PubRec, PubRel};
pub use publish::{Publish, PublishPropertiesRef, SubscriptionIdentifiers, UserProperties};
pub(crate) use publish::{Received, Strings};
pub use suback::SubAck;
pub use subscribe::Subscribe;
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;

use bytes::{Buf, BufMut, Bytes};

use crate::error::DecodeError;
use crate::types::ProtocolVersion;

/// Packet type numbers (the high nibble of byte 0, section 2.1.2).
#[allow(missing_docs)]
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// One MQTT control packet. Large, rare variants are boxed to keep the enum small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (client to server).
    Connect(Box<Connect>),
    /// CONNACK (server to client).
    ConnAck(Box<ConnAck>),
    /// PUBLISH (both directions).
    Publish(Publish),
    /// PUBACK.
    PubAck(PubAck),
    /// PUBREC.
    PubRec(PubRec),
    /// PUBREL.
    PubRel(PubRel),
    /// PUBCOMP.
    PubComp(PubComp),
    /// SUBSCRIBE.
    Subscribe(Box<Subscribe>),
    /// SUBACK.
    SubAck(Box<SubAck>),
    /// UNSUBSCRIBE.
    Unsubscribe(Box<Unsubscribe>),
    /// UNSUBACK.
    UnsubAck(Box<UnsubAck>),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (5.0 only).
    Auth(Box<Auth>),
}

impl Packet {
    /// The reserved flags nibble a packet type must carry ([MQTT-2.1.3-1]); `None` for
    /// PUBLISH, whose flags carry DUP, QoS and RETAIN.
    pub(crate) fn required_flags(packet_type: u8) -> Option<u8> {
        match packet_type {
            kind::PUBLISH => None,
            kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => Some(0b0010),
            _ => Some(0),
        }
    }

    /// Decodes one whole frame whose fixed header is `byte0` and `header_len` bytes long.
    ///
    /// Takes the frame by value so that no reference count is touched needlessly (each
    /// `Bytes` clone or drop of a shared buffer is an atomic operation, and they dominated the
    /// decode profile): PUBLISH keeps the frame as its one handle; every other packet just
    /// advances past the header. (The decoder sends PUBLISH through
    /// [`Publish::decode_frame`] instead, the fast path to the same result.)
    #[inline]
    pub(crate) fn decode_body(
        byte0: u8,
        frame: Bytes,
        header_len: usize,
        version: ProtocolVersion,
    ) -> Result<Packet, DecodeError> {
        let packet_type = byte0 >> 4;
        if packet_type == kind::PUBLISH {
            return Ok(Packet::Publish(Publish::decode(
                byte0, frame, header_len, version,
            )?));
        }
        let mut body = frame;
        body.advance(header_len);
        Ok(match packet_type {
            kind::CONNECT => Packet::Connect(Box::new(Connect::decode(body)?)),
            kind::CONNACK => Packet::ConnAck(Box::new(ConnAck::decode(body, version)?)),
            kind::PUBACK => Packet::PubAck(PubAck::decode(body, version)?),
            kind::PUBREC => Packet::PubRec(PubRec::decode(body, version)?),
            kind::PUBREL => Packet::PubRel(PubRel::decode(body, version)?),
            kind::PUBCOMP => Packet::PubComp(PubComp::decode(body, version)?),
            kind::SUBSCRIBE => Packet::Subscribe(Box::new(Subscribe::decode(body, version)?)),
            kind::SUBACK => Packet::SubAck(Box::new(SubAck::decode(body, version)?)),
            kind::UNSUBSCRIBE => Packet::Unsubscribe(Box::new(Unsubscribe::decode(body, version)?)),
            kind::UNSUBACK => Packet::UnsubAck(Box::new(UnsubAck::decode(body, version)?)),
            kind::PINGREQ | kind::PINGRESP => {
                if !body.is_empty() {
                    return Err(DecodeError::TrailingBytes);
                }
                if packet_type == kind::PINGREQ {
                    Packet::PingReq
                } else {
                    Packet::PingResp
                }
            }
            kind::DISCONNECT => Packet::Disconnect(Disconnect::decode(body, version)?),
            kind::AUTH if version.is_v5() => Packet::Auth(Box::new(Auth::decode(body)?)),
            other => return Err(DecodeError::InvalidPacketType(other)),
        })
    }

    /// Appends the whole packet, encoded for `version`, to `dst`.
    ///
    /// CONNECT is always encoded for its own `protocol` field.
    pub fn encode(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        match self {
            Packet::Connect(p) => p.encode(dst),
            Packet::ConnAck(p) => p.encode(version, dst),
            Packet::Publish(p) => p.encode(version, dst),
            Packet::PubAck(p) => p.encode(version, dst),
            Packet::PubRec(p) => p.encode(version, dst),
            Packet::PubRel(p) => p.encode(version, dst),
            Packet::PubComp(p) => p.encode(version, dst),
            Packet::Subscribe(p) => p.encode(version, dst),
            Packet::SubAck(p) => p.encode(version, dst),
            Packet::Unsubscribe(p) => p.encode(version, dst),
            Packet::UnsubAck(p) => p.encode(version, dst),
            Packet::PingReq => dst.put_slice(&[kind::PINGREQ << 4, 0]),
            Packet::PingResp => dst.put_slice(&[kind::PINGRESP << 4, 0]),
            Packet::Disconnect(p) => p.encode(version, dst),
            Packet::Auth(p) => p.encode(dst),
        }
    }

    /// The packet encoded for `version` as a new buffer (tests and cold paths).
    pub fn to_bytes(&self, version: ProtocolVersion) -> bytes::BytesMut {
        let mut out = bytes::BytesMut::new();
        self.encode(version, &mut out);
        out
    }

    /// The spec name of the packet type, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// Fails with [`DecodeError::TrailingBytes`] when a body has bytes left after its last field.
pub(crate) fn expect_end(body: &Bytes) -> Result<(), DecodeError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes)
    }
}

/// Checks a received reason code against the set legal for a packet.
pub(crate) fn check_reason(
    code: u8,
    legal: &[u8],
) -> Result<crate::reason::ReasonCode, DecodeError> {
    if legal.contains(&code) {
        Ok(crate::reason::ReasonCode(code))
    } else {
        Err(DecodeError::InvalidReasonCode(code))
    }
}
