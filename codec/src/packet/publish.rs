//! PUBLISH (section 3.3): decoded zero-copy, with the received frame kept for reuse.

use std::fmt;

use bytes::{BufMut, Bytes};

use super::kind;
use crate::error::DecodeError;
use crate::property::{PropertySet, PublishProperties};
use crate::template::Family;
use crate::topic;
use crate::types::{ByteStr, PacketId, ProtocolVersion, QoS};
use crate::varint;
use crate::wire::{binary_len, read_packet_id, read_str, write_binary, write_fixed_header};

/// PUBLISH: an application message. Topic, properties and payload are slices of the frame.
#[derive(Clone)]
pub struct Publish {
    /// DUP: this is a resend of an earlier attempt.
    pub dup: bool,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name; empty only when a 5.0 topic alias stands in for it.
    pub topic: ByteStr,
    /// Packet identifier, present exactly when QoS > 0.
    pub packet_id: Option<PacketId>,
    /// Properties (5.0).
    pub properties: PublishProperties,
    /// Payload.
    pub payload: Bytes,
    /// The frame this was decoded from, for [`crate::PublishTemplates`] to reuse.
    raw: Option<RawFrame>,
}

/// The received bytes of a PUBLISH and what is needed to reuse them as a template.
#[derive(Clone, Debug)]
pub(crate) struct RawFrame {
    /// The whole frame, fixed header included.
    pub(crate) bytes: Bytes,
    /// The layout family it was encoded in.
    pub(crate) family: Family,
    /// Offset of the two packet identifier bytes, when QoS > 0.
    pub(crate) packet_id_offset: Option<usize>,
}

impl PartialEq for Publish {
    /// Compares the message, not where it came from (the kept frame is ignored).
    fn eq(&self, other: &Self) -> bool {
        self.dup == other.dup
            && self.qos == other.qos
            && self.retain == other.retain
            && self.topic == other.topic
            && self.packet_id == other.packet_id
            && self.properties == other.properties
            && self.payload == other.payload
    }
}

impl Eq for Publish {}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads may hold anything, secrets included: print only their size.
        f.debug_struct("Publish")
            .field("dup", &self.dup)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("topic", &self.topic)
            .field("packet_id", &self.packet_id)
            .field("properties", &self.properties)
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

impl Publish {
    /// A QoS 0 message on `topic`, with no properties.
    pub fn new(topic: impl Into<ByteStr>, payload: impl Into<Bytes>) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: payload.into(),
            raw: None,
        }
    }

    // Inlined into the decoder so that the (large) packet is built in place rather than
    // moved through several return slots.
    #[inline]
    pub(crate) fn decode(
        byte0: u8,
        mut body: Bytes,
        frame: Bytes,
        version: ProtocolVersion,
    ) -> Result<Publish, DecodeError> {
        let dup = byte0 & 0b1000 != 0;
        let qos = QoS::from_u8((byte0 >> 1) & 0b11)?;
        let retain = byte0 & 1 != 0;
        // [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupWithQoS0);
        }
        let topic = read_str(&mut body)?;
        topic::validate_name(&topic)?;
        let packet_id_offset = frame.len() - body.len();
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            Some(read_packet_id(&mut body)?)
        };
        let properties = if version.is_v5() {
            PublishProperties::decode(&mut body)?
        } else {
            PublishProperties::default()
        };
        // [MQTT-4.7.3-1] (3.1.1): a topic name has at least one character; 5.0 allows an
        // empty one only with a Topic Alias (3.3.2.3.4).
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(DecodeError::InvalidTopicName);
        }
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload: body,
            raw: Some(RawFrame {
                bytes: frame,
                family: Family::of(version),
                packet_id_offset: packet_id.map(|_| packet_id_offset),
            }),
        })
    }

    /// The first byte of the fixed header for these flags.
    pub(crate) fn byte0(qos: QoS, retain: bool, dup: bool) -> u8 {
        kind::PUBLISH << 4 | (dup as u8) << 3 | (qos as u8) << 1 | retain as u8
    }

    /// The frame this was decoded from, if it is still an exact encoding of `self`.
    pub(crate) fn raw(&self) -> Option<&RawFrame> {
        self.raw.as_ref()
    }

    /// Forgets the received frame. Call this after changing any field: the frame is then no
    /// longer an encoding of the message and must not be reused as a template.
    pub fn invalidate_raw(&mut self) {
        self.raw = None;
    }

    /// Replaces an inbound topic alias by the topic it stands for: sets the topic, removes
    /// the alias property and forgets the received frame.
    pub fn resolve_alias(&mut self, topic: ByteStr) {
        self.topic = topic;
        self.properties.topic_alias = None;
        self.raw = None;
    }

    /// The length of the body (after the fixed header) when encoded for `version`.
    pub fn body_len(&self, version: ProtocolVersion) -> usize {
        let mut len = binary_len(self.topic.as_bytes()) + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            len += 2;
        }
        if version.is_v5() {
            len += self.properties.block_len();
        }
        len
    }

    /// The whole encoded size for `version`, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let body = self.body_len(version);
        1 + varint::len(body as u32) + body
    }

    /// Appends the packet encoded for `version`, as it is (no template, no patching).
    pub fn encode(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        write_fixed_header(
            dst,
            Publish::byte0(self.qos, self.retain, self.dup),
            self.body_len(version),
        );
        write_binary(dst, self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            // A QoS > 0 PUBLISH without an id is a caller bug; 0 keeps the layout intact.
            dst.put_u16(self.packet_id.map_or(0, PacketId::get));
        }
        if version.is_v5() {
            self.properties.encode(dst);
        }
        dst.put_slice(&self.payload);
    }
}
