//! PUBLISH (section 3.3): decoded zero-copy, with the received frame kept for reuse.

use std::fmt;
use std::num::NonZeroU32;

use bytes::{Buf, BufMut, Bytes};

use super::{kind, Packet};
use crate::error::DecodeError;
use crate::property::{id, PropertySet, PublishProperties, UserProperty};
use crate::template::Family;
use crate::topic;
use crate::types::{is_mqtt_str, is_topic_name, ByteStr, PacketId, ProtocolVersion, QoS};
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
    /// Offset of the two packet identifier bytes, when QoS > 0 (never 0: the fixed header
    /// and the topic length come first). A `u32` keeps [`Publish`], and so every
    /// [`Packet`], 16 bytes smaller: frames are limited to `u32` sizes anyway.
    packet_id_offset: Option<NonZeroU32>,
}

impl RawFrame {
    #[inline(always)]
    fn new(bytes: Bytes, family: Family, packet_id_offset: Option<usize>) -> RawFrame {
        RawFrame {
            bytes,
            family,
            packet_id_offset: packet_id_offset
                .and_then(|offset| NonZeroU32::new(u32::try_from(offset).ok()?)),
        }
    }

    /// Offset of the two packet identifier bytes, when QoS > 0.
    pub(crate) fn packet_id_offset(&self) -> Option<usize> {
        self.packet_id_offset.map(|offset| offset.get() as usize)
    }
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

    /// The checked decoder: field by field, with the exact error for a malformed frame.
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
            raw: Some(RawFrame::new(
                frame,
                Family::of(version),
                packet_id.map(|_| packet_id_offset),
            )),
        })
    }

    /// Decodes a whole PUBLISH frame (fixed header `byte0`, `header_len` bytes long), the
    /// decoder's hot path.
    ///
    /// A single pass over the frame as a plain slice ([`Scan::run`]) checks everything the
    /// checked decoder ([`Publish::decode`]) checks and records where the fields are; only
    /// then are the topic, payload and property values sliced off the frame, each with one
    /// reference count increment, and the packet is built straight in the return slot. Any
    /// problem at all sends the frame to the checked decoder, which finds the exact error:
    /// the two agree on every input, by construction and by the tests below.
    #[inline(always)]
    pub(crate) fn decode_frame(
        byte0: u8,
        frame: Bytes,
        header_len: usize,
        version: ProtocolVersion,
    ) -> Result<Option<Packet>, DecodeError> {
        let mut scan = Scan::new();
        if scan.run(byte0, &frame, header_len, version).is_none() {
            return Publish::decode_checked(byte0, frame, header_len, version);
        }
        let slice = |span: Span| frame.slice(span.start as usize..span.end as usize);
        let str = |span: Span| ByteStr::from_validated(slice(span));
        // Every slice first, so that the packet below is a plain aggregate that the compiler
        // writes straight into the return slot.
        let topic = str(scan.topic);
        let content_type = scan.content_type.map(str);
        let response_topic = scan.response_topic.map(str);
        let correlation_data = scan.correlation_data.map(slice);
        let payload = frame.slice(scan.payload_start as usize..);
        let packet_id_offset = scan.packet_id.map(|_| scan.topic.end as usize);
        Ok(Some(Packet::Publish(Publish {
            dup: byte0 & 0b1000 != 0,
            qos: scan.qos,
            retain: byte0 & 1 != 0,
            topic,
            packet_id: scan.packet_id,
            properties: PublishProperties {
                payload_format_indicator: scan.payload_format_indicator,
                message_expiry_interval_secs: scan.message_expiry_interval_secs,
                content_type,
                response_topic,
                correlation_data,
                subscription_identifiers: scan.subscription_identifiers,
                topic_alias: scan.topic_alias,
                user_properties: scan.user_properties,
            },
            payload,
            raw: Some(RawFrame::new(frame, Family::of(version), packet_id_offset)),
        })))
    }

    /// The checked decoder, kept out of line: reached only for frames the fast path does
    /// not accept, which are almost always malformed.
    #[cold]
    #[inline(never)]
    fn decode_checked(
        byte0: u8,
        frame: Bytes,
        header_len: usize,
        version: ProtocolVersion,
    ) -> Result<Option<Packet>, DecodeError> {
        let mut body = frame.clone();
        body.advance(header_len);
        Ok(Some(Packet::Publish(Publish::decode(
            byte0, body, frame, version,
        )?)))
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

/// A field's position in the frame.
#[derive(Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

/// What [`Scan::run`] found in a valid PUBLISH frame: positions, not yet slices.
struct Scan {
    qos: QoS,
    topic: Span,
    packet_id: Option<PacketId>,
    payload_format_indicator: Option<u8>,
    message_expiry_interval_secs: Option<u32>,
    content_type: Option<Span>,
    response_topic: Option<Span>,
    correlation_data: Option<Span>,
    subscription_identifiers: Vec<u32>,
    topic_alias: Option<u16>,
    user_properties: Vec<UserProperty>,
    payload_start: u32,
}

/// A cursor over the frame for [`Scan::run`]: every read is bounds-checked against `end` and
/// fails with `None`.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
}

impl Cursor<'_> {
    #[inline(always)]
    fn u8(&mut self) -> Option<u8> {
        if self.pos >= self.end {
            return None;
        }
        let v = self.bytes[self.pos];
        self.pos += 1;
        Some(v)
    }

    #[inline(always)]
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.end - self.pos < N {
            return None;
        }
        let v = self.bytes[self.pos..self.pos + N].try_into().ok()?;
        self.pos += N;
        Some(v)
    }

    #[inline(always)]
    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    /// A variable byte integer of at most four bytes (non-minimal encodings accepted).
    #[inline(always)]
    fn varint(&mut self) -> Option<u32> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// Two-byte length, then that many bytes.
    #[inline(always)]
    fn binary(&mut self) -> Option<Span> {
        let len = usize::from(self.u16()?);
        if self.end - self.pos < len {
            return None;
        }
        let start = self.pos;
        self.pos += len;
        Some(Span {
            start: start as u32,
            end: self.pos as u32,
        })
    }

    /// A string: binary data that is an MQTT UTF-8 string.
    #[inline(always)]
    fn str(&mut self) -> Option<Span> {
        let span = self.binary()?;
        is_mqtt_str(&self.bytes[span.start as usize..span.end as usize]).then_some(span)
    }
}

/// Stores a single-valued property; `None` for a second copy.
#[inline(always)]
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

impl Scan {
    #[inline(always)]
    fn new() -> Scan {
        let empty = Span { start: 0, end: 0 };
        Scan {
            qos: QoS::AtMostOnce,
            topic: empty,
            packet_id: None,
            payload_format_indicator: None,
            message_expiry_interval_secs: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            subscription_identifiers: Vec::new(),
            topic_alias: None,
            user_properties: Vec::new(),
            payload_start: 0,
        }
    }

    /// Checks a whole PUBLISH frame and locates its fields, accepting exactly the frames
    /// [`Publish::decode`] accepts (and no others): `None` means "let the checked decoder
    /// say what is wrong". Unusual but valid encodings (e.g. a property identifier written
    /// as a multi-byte varint) are left to the checked decoder too.
    #[inline(always)]
    fn run(
        &mut self,
        byte0: u8,
        frame: &Bytes,
        header_len: usize,
        version: ProtocolVersion,
    ) -> Option<()> {
        let bytes: &[u8] = frame;
        // Spans are u32: a frame is at most 256 MiB plus its header.
        if bytes.len() > u32::MAX as usize || header_len > bytes.len() {
            return None;
        }
        self.qos = match (byte0 >> 1) & 0b11 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return None,
        };
        // [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
        if byte0 & 0b1000 != 0 && self.qos == QoS::AtMostOnce {
            return None;
        }
        let mut cur = Cursor {
            bytes,
            pos: header_len,
            end: bytes.len(),
        };
        let topic = cur.binary()?;
        if !is_topic_name(&bytes[topic.start as usize..topic.end as usize]) {
            return None;
        }
        self.topic = topic;
        if self.qos != QoS::AtMostOnce {
            self.packet_id = Some(PacketId::new(cur.u16()?)?);
        }
        if version.is_v5() {
            let len = cur.varint()? as usize;
            if cur.end - cur.pos < len {
                return None;
            }
            let mut props = Cursor {
                bytes,
                pos: cur.pos,
                end: cur.pos + len,
            };
            cur.pos += len;
            while props.pos < props.end {
                self.property(&mut props, frame)?;
            }
        }
        // [MQTT-4.7.3-1] (3.1.1): a topic name has at least one character; 5.0 allows an
        // empty one only with a Topic Alias (3.3.2.3.4).
        if topic.start == topic.end && self.topic_alias.is_none() {
            return None;
        }
        self.payload_start = cur.pos as u32;
        Some(())
    }

    /// One property of the block, dispatched on its identifier straight into its field.
    #[inline(always)]
    fn property(&mut self, props: &mut Cursor<'_>, frame: &Bytes) -> Option<()> {
        match props.u8()? {
            id::PAYLOAD_FORMAT_INDICATOR => {
                let v = props.u8()?;
                if v > 1 {
                    return None;
                }
                once(&mut self.payload_format_indicator, v)
            }
            id::MESSAGE_EXPIRY_INTERVAL => {
                let v = u32::from_be_bytes(props.array()?);
                once(&mut self.message_expiry_interval_secs, v)
            }
            id::CONTENT_TYPE => {
                let v = props.str()?;
                once(&mut self.content_type, v)
            }
            id::RESPONSE_TOPIC => {
                // [MQTT-3.3.2-14]: the Response Topic is a topic name (no wildcards).
                let v = props.binary()?;
                if !is_topic_name(&props.bytes[v.start as usize..v.end as usize]) {
                    return None;
                }
                once(&mut self.response_topic, v)
            }
            id::CORRELATION_DATA => {
                let v = props.binary()?;
                once(&mut self.correlation_data, v)
            }
            id::SUBSCRIPTION_IDENTIFIER => {
                // 0 is a protocol error (3.3.2.3.8).
                let v = props.varint().filter(|&v| v != 0)?;
                self.subscription_identifiers.push(v);
                Some(())
            }
            id::TOPIC_ALIAS => {
                // Topic Alias 0 is a protocol error (3.3.2.3.4).
                let v = props.u16().filter(|&v| v != 0)?;
                once(&mut self.topic_alias, v)
            }
            id::USER_PROPERTY => {
                let k = props.str()?;
                let v = props.str()?;
                let str = |s: Span| {
                    ByteStr::from_validated(frame.slice(s.start as usize..s.end as usize))
                };
                self.user_properties.push((str(k), str(v)));
                Some(())
            }
            // Anything else (not allowed here, unknown, or a multi-byte identifier).
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fast path's contract: whenever it accepts a frame, the checked decoder accepts it
    /// too and builds the very same packet (received frame and packet identifier offset
    /// included). When it declines, the checked decoder runs, so nothing else is needed.
    fn agree(byte0: u8, body: &[u8], version: ProtocolVersion) -> Result<bool, TestCaseError> {
        let mut frame = vec![byte0];
        varint::write(&mut frame, body.len() as u32);
        let header_len = frame.len();
        frame.extend_from_slice(body);
        let frame = Bytes::from(frame);
        let mut scan = Scan::new();
        if scan.run(byte0, &frame, header_len, version).is_none() {
            return Ok(false);
        }
        let fast = Publish::decode_frame(byte0, frame.clone(), header_len, version);
        let checked = Publish::decode_checked(byte0, frame, header_len, version);
        let (Ok(Some(Packet::Publish(fast))), Ok(Some(Packet::Publish(checked)))) = (fast, checked)
        else {
            return Err(TestCaseError::fail(format!(
                "fast path accepted what the checked decoder rejects: {byte0:02x} {body:02x?}"
            )));
        };
        prop_assert_eq!(&fast, &checked);
        let (fast_raw, checked_raw) = (fast.raw.as_ref(), checked.raw.as_ref());
        prop_assert_eq!(fast_raw.map(|r| &r.bytes), checked_raw.map(|r| &r.bytes));
        prop_assert_eq!(fast_raw.map(|r| r.family), checked_raw.map(|r| r.family));
        prop_assert_eq!(
            fast_raw.map(RawFrame::packet_id_offset),
            checked_raw.map(RawFrame::packet_id_offset)
        );
        Ok(true)
    }

    fn string() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"".to_vec()),
            Just(b"a/b".to_vec()),
            Just(b"sensors/building-1/floor-2/temp".to_vec()),
            Just(b"a/+".to_vec()),
            Just(b"#".to_vec()),
            Just(b"a\0b".to_vec()),
            Just("t/\u{e9}t\u{e9}/\u{1F600}".as_bytes().to_vec()),
            Just(b"bad\xff".to_vec()),
            Just(b"\xc3".to_vec()),
            Just(b"\xed\xa0\x80".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(0x20u8..0x7f, 0..40),
        ]
    }

    fn with_len(data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    /// One property: a plausible identifier (or any byte) with a plausible value.
    fn property() -> impl Strategy<Value = Vec<u8>> {
        let id = prop_oneof![
            Just(id::PAYLOAD_FORMAT_INDICATOR),
            Just(id::MESSAGE_EXPIRY_INTERVAL),
            Just(id::CONTENT_TYPE),
            Just(id::RESPONSE_TOPIC),
            Just(id::CORRELATION_DATA),
            Just(id::SUBSCRIPTION_IDENTIFIER),
            Just(id::TOPIC_ALIAS),
            Just(id::USER_PROPERTY),
            Just(id::RECEIVE_MAXIMUM),
            Just(id::REASON_STRING),
            Just(id::MAXIMUM_QOS),
            any::<u8>(),
        ];
        let value = prop_oneof![
            (0u8..3).prop_map(|v| vec![v]),
            any::<[u8; 2]>().prop_map(|v| v.to_vec()),
            any::<[u8; 4]>().prop_map(|v| v.to_vec()),
            Just(vec![0x80, 0x01]),
            Just(vec![0xFF, 0xFF, 0xFF, 0xFF]),
            string().prop_map(|s| with_len(&s)),
            (string(), string()).prop_map(|(k, v)| [with_len(&k), with_len(&v)].concat()),
        ];
        (id, value).prop_map(|(id, value)| [vec![id], value].concat())
    }

    /// A PUBLISH body close to valid: topic, packet identifier, properties, payload.
    fn body() -> impl Strategy<Value = (u8, Vec<u8>)> {
        (
            any::<u8>(),
            string(),
            any::<u16>(),
            proptest::collection::vec(property(), 0..5),
            proptest::collection::vec(any::<u8>(), 0..8),
            any::<bool>(),
        )
            .prop_map(|(flags, topic, id, props, payload, with_props)| {
                let byte0 = kind::PUBLISH << 4 | flags & 0x0F;
                let mut body = with_len(&topic);
                if (byte0 >> 1) & 0b11 != 0 {
                    body.extend_from_slice(&id.to_be_bytes());
                }
                if with_props {
                    let props = props.concat();
                    varint::write(&mut body, props.len() as u32);
                    body.extend_from_slice(&props);
                }
                body.extend_from_slice(&payload);
                (byte0, body)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn fast_path_agrees_with_checked_decoder(
            (byte0, mut body) in body(),
            cut in any::<prop::sample::Index>(),
            flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
            truncate in any::<bool>(),
        ) {
            if let Some((at, byte)) = flip {
                if !body.is_empty() {
                    let at = at.index(body.len());
                    body[at] = byte;
                }
            }
            if truncate {
                body.truncate(cut.index(body.len() + 1));
            }
            for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
                agree(byte0, &body, version)?;
            }
        }

        #[test]
        fn fast_path_agrees_on_random_bytes(
            flags in 0u8..16,
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
                agree(kind::PUBLISH << 4 | flags, &body, version)?;
            }
        }
    }

    /// The fast path takes the usual frames (otherwise it would be a slow path).
    #[test]
    fn fast_path_takes_common_frames() {
        let mut p = Publish::new("sensors/building-1/floor-2/temp", vec![0x5a; 64]);
        p.qos = QoS::AtLeastOnce;
        p.packet_id = PacketId::new(42);
        p.properties.payload_format_indicator = Some(1);
        p.properties.message_expiry_interval_secs = Some(3600);
        p.properties.content_type = Some("json".into());
        p.properties.response_topic = Some("reply/to/\u{e9}".into());
        p.properties.correlation_data = Some(Bytes::from_static(b"\x00\x01"));
        p.properties.subscription_identifiers = vec![1, 300];
        p.properties.topic_alias = Some(3);
        p.properties.user_properties = vec![("k".into(), "v".into()), ("k".into(), "".into())];
        for (version, publish) in [
            (ProtocolVersion::V5, p.clone()),
            (ProtocolVersion::V3_1_1, Publish::new("a", "")),
            (ProtocolVersion::V3_1_1, Publish::new("\u{e9}/x", "payload")),
        ] {
            let mut encoded = Vec::new();
            publish.encode(version, &mut encoded);
            let header_len = encoded.len() - publish.body_len(version);
            let taken = agree(encoded[0], &encoded[header_len..], version);
            assert!(matches!(taken, Ok(true)), "{publish:?}: {taken:?}");
        }
    }

    #[test]
    fn packet_is_small() {
        assert!(std::mem::size_of::<Packet>() <= 272);
    }
}
