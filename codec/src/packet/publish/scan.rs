//! The decoder's fast path for PUBLISH: one pass over the frame as a plain slice that checks
//! everything the checked decoder checks and records where the fields are, touching no
//! reference count. It answers only "valid, here are the positions" or "let the checked
//! decoder find the exact error"; the tests below hold the two to the same verdicts.

use bytes::Bytes;

use super::received::{Eager, Span};
use crate::property::id;
use crate::types::{is_mqtt_str, is_topic_name, PacketId, ProtocolVersion, PublishQoS, QoS};

/// What [`Scan::run`] found in a valid PUBLISH frame: positions and the eager integers.
pub(super) struct Scan {
    pub(super) qos: PublishQoS,
    pub(super) topic: Span,
    /// The property block contents (empty for 3.x).
    pub(super) props: Span,
    pub(super) eager: Eager,
    /// Content Type, Response Topic and Correlation Data seen so far (bit per property),
    /// to reject a second copy: their values stay in the frame.
    seen: u8,
    pub(super) payload_start: u32,
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
    pub(super) fn new() -> Scan {
        Scan {
            qos: PublishQoS::AtMostOnce,
            topic: Span::default(),
            props: Span::default(),
            eager: Eager::default(),
            seen: 0,
            payload_start: 0,
        }
    }

    /// Records one of the properties whose value stays in the frame; `None` for a second
    /// copy.
    #[inline(always)]
    fn seen_once(&mut self, bit: u8) -> Option<()> {
        if self.seen & bit != 0 {
            return None;
        }
        self.seen |= bit;
        Some(())
    }

    /// Checks a whole PUBLISH frame and locates its fields, accepting exactly the frames
    /// [`super::Publish::decode`] accepts (and no others): `None` means "let the checked decoder
    /// say what is wrong". Unusual but valid encodings (e.g. a property identifier written
    /// as a multi-byte varint) are left to the checked decoder too.
    #[inline(always)]
    pub(super) fn run(
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
        let qos = match (byte0 >> 1) & 0b11 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return None,
        };
        // [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
        if byte0 & 0b1000 != 0 && qos == QoS::AtMostOnce {
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
        self.qos = match qos {
            QoS::AtMostOnce => PublishQoS::AtMostOnce,
            QoS::AtLeastOnce => PublishQoS::AtLeastOnce(PacketId::new(cur.u16()?)?),
            QoS::ExactlyOnce => PublishQoS::ExactlyOnce(PacketId::new(cur.u16()?)?),
        };
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
            self.props = Span::new(props.pos, props.end);
            while props.pos < props.end {
                self.property(&mut props)?;
            }
        }
        // [MQTT-4.7.3-1] (3.1.1): a topic name has at least one character; 5.0 allows an
        // empty one only with a Topic Alias (3.3.2.1).
        if topic.start == topic.end && self.eager.topic_alias.is_none() {
            return None;
        }
        self.payload_start = cur.pos as u32;
        Some(())
    }

    /// One property of the block, dispatched on its identifier straight into its field.
    #[inline(always)]
    fn property(&mut self, props: &mut Cursor<'_>) -> Option<()> {
        match props.u8()? {
            id::PAYLOAD_FORMAT_INDICATOR => {
                let v = props.u8()?;
                if v > 1 {
                    return None;
                }
                once(&mut self.eager.payload_format_indicator, v)
            }
            id::MESSAGE_EXPIRY_INTERVAL => {
                let v = u32::from_be_bytes(props.array()?);
                once(&mut self.eager.message_expiry_interval_secs, v)
            }
            id::CONTENT_TYPE => {
                props.str()?;
                self.seen_once(1)
            }
            id::RESPONSE_TOPIC => {
                // [MQTT-3.3.2-14]: the Response Topic is a topic name (no wildcards).
                let v = props.binary()?;
                if !is_topic_name(&props.bytes[v.start as usize..v.end as usize]) {
                    return None;
                }
                self.seen_once(2)
            }
            id::CORRELATION_DATA => {
                props.binary()?;
                self.seen_once(4)
            }
            id::SUBSCRIPTION_IDENTIFIER => {
                // 0 is a protocol error (3.3.2.3.8).
                props.varint().filter(|&v| v != 0)?;
                self.eager.has_subscription_identifiers = true;
                Some(())
            }
            id::TOPIC_ALIAS => {
                // Topic Alias 0 is a protocol error (3.3.2.3.4).
                let v = props.u16().filter(|&v| v != 0)?;
                once(&mut self.eager.topic_alias, v)
            }
            id::USER_PROPERTY => {
                props.str()?;
                props.str()?;
                Some(())
            }
            // Anything else (not allowed here, unknown, or a multi-byte identifier).
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Publish;
    use super::*;
    use crate::packet::{kind, Packet};
    use crate::varint;
    use proptest::prelude::*;

    /// The fast path's contract: whenever it accepts a frame, the checked decoder accepts it
    /// too and builds the very same packet (every position in the received frame included). When it declines, the checked decoder runs, so nothing else is needed.
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
        prop_assert!(fast.received().is_some());
        prop_assert_eq!(fast.received(), checked.received());
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
        let mut p = Publish::new("sensors/building-1/floor-2/temp", vec![0x5a; 64]).with_qos(
            PublishQoS::AtLeastOnce(PacketId::new(42).expect("non-zero")),
        );
        let props = p.properties_mut();
        props.payload_format_indicator = Some(1);
        props.message_expiry_interval_secs = Some(3600);
        props.content_type = Some("json".into());
        props.response_topic = Some("reply/to/\u{e9}".into());
        props.correlation_data = Some(Bytes::from_static(b"\x00\x01"));
        props.subscription_identifiers = vec![1, 300];
        props.topic_alias = Some(3);
        props.user_properties = vec![("k".into(), "v".into()), ("k".into(), "".into())];
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
