//! The envelope one message travels in between nodes: a fixed header (who sent it, its
//! sequence number, QoS and RETAIN, when it was published) followed by the MQTT 5.0 PUBLISH
//! frame as the sending node encoded it for its own 5.0 subscribers. The receiving node
//! decodes that frame in place ([`tern_codec::Publish::decode_whole_frame`]): its topic,
//! properties and payload stay slices of the received `Bytes`, and its 5.0 subscribers get
//! those very bytes as their template (zero copy on the receiving side).
//!
//! Layout (big-endian): `b'T'`, version `1`, flags (bit 0 RETAIN, bits 1-2 QoS), origin node
//! id (8 bytes), sequence (8), publish time in Unix milliseconds (8), then the frame.
//! This module owns the format only.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tern_codec::{Family, PacketId, ProtocolVersion, Publish, PublishQoS, QoS};
use tokio::time::Instant;

use crate::message::Message;

const MAGIC: u8 = b'T';
const VERSION: u8 = 1;
/// Bytes before the frame.
pub(crate) const HEADER_BYTES: usize = 27;

/// What the header says of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The node that published it.
    pub(crate) origin: u64,
    /// Its number among that node's messages.
    pub(crate) sequence: u64,
    /// When it was published, Unix milliseconds (Message Expiry counts from there).
    pub(crate) published_unix_ms: u64,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvelopeError {
    /// Too short, another magic byte or version.
    #[error("not a Tern envelope (version {0})")]
    Foreign(u8),
    /// The QoS bits say 3.
    #[error("invalid QoS in the envelope")]
    InvalidQoS,
    /// The frame inside does not decode.
    #[error("bad PUBLISH frame in the envelope: {0}")]
    Frame(#[from] tern_codec::DecodeError),
}

/// Now as Unix milliseconds.
pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wraps `message` (published on node `origin` as its `sequence`th message).
pub(crate) fn encode(message: &Arc<Message>, origin: u64, sequence: u64, now: Instant) -> Bytes {
    let publish = message.publish();
    let qos = publish.qos();
    let frame = message.templates.get(Family::V5, qos != QoS::AtMostOnce);
    let mut out = BytesMut::with_capacity(HEADER_BYTES + frame.len());
    out.put_u8(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(publish.retain as u8 | (qos as u8) << 1);
    out.put_u64(origin);
    out.put_u64(sequence);
    let age_ms = now
        .saturating_duration_since(message.received_at)
        .as_millis() as u64;
    out.put_u64(unix_ms_now().saturating_sub(age_ms));
    out.extend_from_slice(frame.as_bytes());
    out.freeze()
}

/// The header of `envelope`, without decoding the frame (to drop duplicates cheaply).
///
/// # Errors
/// [`EnvelopeError::Foreign`] when it is no envelope of this version.
pub(crate) fn header(envelope: &[u8]) -> Result<Header, EnvelopeError> {
    if envelope.len() < HEADER_BYTES || envelope[0] != MAGIC || envelope[1] != VERSION {
        return Err(EnvelopeError::Foreign(
            envelope.get(1).copied().unwrap_or(0),
        ));
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&envelope[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    Ok(Header {
        origin: u64_at(3),
        sequence: u64_at(11),
        published_unix_ms: u64_at(19),
    })
}

/// The message in `envelope`, as received at `now` (its age since publication is kept, for
/// Message Expiry). No Local does not apply: it comes from no session of this node.
///
/// # Errors
/// A foreign envelope, bad QoS bits or a frame that does not decode.
pub(crate) fn decode(envelope: Bytes, now: Instant) -> Result<Arc<Message>, EnvelopeError> {
    let header = header(&envelope)?;
    let flags = envelope[2];
    let qos = match (flags >> 1) & 0b11 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(EnvelopeError::InvalidQoS),
    };
    let frame = envelope.slice(HEADER_BYTES..);
    let mut publish = Publish::decode_whole_frame(frame, ProtocolVersion::V5)?;
    let packet_id = publish
        .packet_id()
        .or((qos != QoS::AtMostOnce).then_some(PacketId::MIN));
    if let Some(qos) = PublishQoS::new(qos, packet_id) {
        publish.set_qos(qos);
    }
    publish.retain = flags & 1 != 0;
    publish.dup = false;
    let age = Duration::from_millis(unix_ms_now().saturating_sub(header.published_unix_ms));
    let received_at = now.checked_sub(age).unwrap_or(now);
    Ok(Message::new(publish, received_at, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::{ByteStr, PublishProperties};

    fn message(qos: QoS, retain: bool) -> Arc<Message> {
        let mut publish = Publish::new(ByteStr::from("a/b.c"), Bytes::from_static(b"payload"));
        let id = (qos != QoS::AtMostOnce).then_some(PacketId::MIN);
        publish.set_qos(PublishQoS::new(qos, id).expect("qos"));
        publish.retain = retain;
        *publish.properties_mut() = PublishProperties {
            content_type: Some(ByteStr::from("text/plain")),
            ..PublishProperties::default()
        };
        Message::new(publish, Instant::now(), Some(7))
    }

    #[test]
    fn round_trip_keeps_the_message() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for retain in [false, true] {
                let sent = message(qos, retain);
                let wire = encode(&sent, 42, 9, Instant::now());
                let h = header(&wire).expect("header");
                assert_eq!((h.origin, h.sequence), (42, 9));
                let got = decode(wire, Instant::now()).expect("decode");
                assert_eq!(got.publish().topic(), "a/b.c");
                assert_eq!(got.publish().payload(), b"payload");
                assert_eq!(got.qos(), qos);
                assert_eq!(got.publish().retain, retain);
                assert_eq!(
                    got.publish().properties().content_type(),
                    Some("text/plain")
                );
                assert_eq!(got.origin_session, None);
            }
        }
    }

    #[test]
    fn foreign_bytes_are_refused() {
        assert!(header(b"nope").is_err());
        let mut wire =
            BytesMut::from(&encode(&message(QoS::AtMostOnce, false), 1, 1, Instant::now())[..]);
        wire[2] = 0b110;
        assert_eq!(
            decode(wire.freeze(), Instant::now()).err(),
            Some(EnvelopeError::InvalidQoS)
        );
    }
}
