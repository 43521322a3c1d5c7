//! PUBLISH (section 3.3): decoded zero-copy into one handle on the received frame.
//!
//! A [`Publish`] is in one of two forms, invisible to callers except through cost:
//! - *received*: what the decoder returns. It holds a single `Bytes` handle (the whole
//!   frame, kept for template reuse) plus `u32` positions of the topic, the property block
//!   and the payload. Decoding and dropping it cost one reference count increment and one
//!   decrement, however many properties it carries. The integer properties the broker reads
//!   per message are parsed in the decoder's one pass; the string, binary and user
//!   properties stay in the frame and are read on demand ([`PublishPropertiesRef`]).
//! - *owned*: a topic, a [`PublishProperties`] set and a payload, each its own handle. Built
//!   by [`Publish::new`] (wills, retained, `$SYS`, bridges, tests), and what a received
//!   publish turns into the first time its topic, properties or payload are changed
//!   ([`Publish::set_topic`], [`Publish::properties_mut`], [`Publish::resolve_alias`], ...).
//!   The change forgets the frame, which is then no longer an encoding of the message.
//!
//! The flags are plain fields and the QoS with its packet identifier is a [`PublishQoS`] in
//! both forms: templates patch them in every copy, so changing them never invalidates the
//! frame.
//!
//! Submodules: `received` (the frame layout), `scan` (the decoder's fast path), `view`
//! (read access to the properties of either form).

mod received;
mod scan;
mod view;

pub(crate) use view::Strings;
pub use view::{PublishPropertiesRef, SubscriptionIdentifiers, UserProperties};

use std::fmt;

use bytes::{Buf, BufMut, Bytes};

pub(crate) use received::Received;
use received::{Eager, Span};
use scan::Scan;

use super::{kind, Packet};
use crate::error::DecodeError;
use crate::property::{PropertySet, PublishProperties};
use crate::template::Family;
use crate::topic;
use crate::types::{str_from_validated, ByteStr, PacketId, ProtocolVersion, PublishQoS, QoS};
use crate::varint::{self, Peek};
use crate::wire::{binary_len, read_packet_id, read_str, write_binary, write_fixed_header};

/// PUBLISH: an application message.
///
/// Read the topic, payload and properties through [`Publish::topic`], [`Publish::payload`]
/// and [`Publish::properties`]; [`Publish::shared_topic`] and [`Publish::shared_payload`]
/// give `Bytes`-backed handles (no copy) to keep. See the module doc for the two forms.
///
/// The QoS and the packet identifier are set together ([`Publish::set_qos`]): a QoS 1 or 2
/// PUBLISH without an identifier cannot be built.
///
/// ```
/// use tern_codec::{PacketId, Publish, PublishQoS, QoS};
/// let p = Publish::new("t", "").with_qos(PublishQoS::ExactlyOnce(PacketId::MIN));
/// assert_eq!((p.qos(), p.packet_id()), (QoS::ExactlyOnce, Some(PacketId::MIN)));
/// assert_eq!(PublishQoS::new(QoS::ExactlyOnce, None), None);
/// ```
///
/// ```compile_fail
/// // The QoS is no field of its own that could disagree with the packet identifier.
/// let mut p = tern_codec::Publish::new("t", "");
/// p.qos = tern_codec::QoS::ExactlyOnce;
/// ```
#[derive(Clone)]
pub struct Publish {
    /// DUP: this is a resend of an earlier attempt.
    pub dup: bool,
    /// RETAIN.
    pub retain: bool,
    /// QoS of this delivery, with the packet identifier exactly when QoS > 0.
    qos: PublishQoS,
    /// Topic, properties and payload, in one of the two forms.
    body: Body,
}

#[derive(Clone)]
enum Body {
    /// As decoded: the frame and positions.
    Received(Received),
    /// Built or changed: one handle per field. Boxed so that the received form, the hot
    /// one, sets the size of every [`Packet`].
    Owned(Box<Owned>),
}

#[derive(Clone)]
struct Owned {
    /// Topic Name; empty only when a 5.0 topic alias stands in for it.
    topic: ByteStr,
    /// Properties (5.0).
    properties: PublishProperties,
    /// Payload.
    payload: Bytes,
}

impl PartialEq for Publish {
    /// Compares the message, not its form (a received publish equals the owned one built
    /// with the same fields).
    fn eq(&self, other: &Self) -> bool {
        self.dup == other.dup
            && self.qos == other.qos
            && self.retain == other.retain
            && self.topic() == other.topic()
            && self.payload() == other.payload()
            && self.properties() == other.properties()
    }
}

impl Eq for Publish {}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads may hold anything, secrets included: print only their size.
        f.debug_struct("Publish")
            .field("dup", &self.dup)
            .field("qos", &self.qos())
            .field("retain", &self.retain)
            .field("topic", &self.topic())
            .field("packet_id", &self.packet_id())
            .field("properties", &self.properties())
            .field("payload_bytes", &self.payload().len())
            .field("received", &self.received().is_some())
            .finish()
    }
}

impl Publish {
    /// A QoS 0 message on `topic`, with no properties.
    pub fn new(topic: impl Into<ByteStr>, payload: impl Into<Bytes>) -> Publish {
        Publish {
            dup: false,
            qos: PublishQoS::AtMostOnce,
            retain: false,
            body: Body::Owned(Box::new(Owned {
                topic: topic.into(),
                properties: PublishProperties::default(),
                payload: payload.into(),
            })),
        }
    }

    /// This publish with `qos` (and its packet identifier).
    pub fn with_qos(mut self, qos: PublishQoS) -> Publish {
        self.qos = qos;
        self
    }

    /// The QoS level.
    #[inline]
    pub fn qos(&self) -> QoS {
        self.qos.qos()
    }

    /// The packet identifier, present exactly when QoS > 0.
    #[inline]
    pub fn packet_id(&self) -> Option<PacketId> {
        self.qos.packet_id()
    }

    /// The QoS together with the packet identifier.
    #[inline]
    pub fn publish_qos(&self) -> PublishQoS {
        self.qos
    }

    /// Sets the QoS and the packet identifier (the frame, if any, stays usable: templates
    /// patch both in every copy).
    #[inline]
    pub fn set_qos(&mut self, qos: PublishQoS) {
        self.qos = qos;
    }

    /// The Topic Name; empty only when a 5.0 topic alias stands in for it.
    #[inline]
    pub fn topic(&self) -> &str {
        match &self.body {
            // SAFETY: the topic span of a `Received` is UTF-8 (invariant in `received`).
            #[allow(unsafe_code)]
            Body::Received(r) => unsafe { str_from_validated(r.topic()) },
            Body::Owned(o) => o.topic.as_str(),
        }
    }

    /// The Topic Name as a handle to keep (a slice of the frame for a received publish: no
    /// copy, one reference count).
    pub fn shared_topic(&self) -> ByteStr {
        match &self.body {
            // SAFETY: the topic span of a `Received` is UTF-8 (invariant in `received`).
            #[allow(unsafe_code)]
            Body::Received(r) => unsafe { ByteStr::from_validated(r.frame.slice(r.topic.range())) },
            Body::Owned(o) => o.topic.clone(),
        }
    }

    /// The payload.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match &self.body {
            Body::Received(r) => r.payload(),
            Body::Owned(o) => &o.payload,
        }
    }

    /// The payload as a handle to keep (a slice of the frame for a received publish: no
    /// copy, one reference count).
    pub fn shared_payload(&self) -> Bytes {
        match &self.body {
            Body::Received(r) => r.frame.slice(r.payload_start as usize..),
            Body::Owned(o) => o.payload.clone(),
        }
    }

    /// The properties (5.0), read in place.
    #[inline]
    pub fn properties(&self) -> PublishPropertiesRef<'_> {
        match &self.body {
            Body::Received(r) => PublishPropertiesRef::received(r),
            Body::Owned(o) => PublishPropertiesRef::owned(&o.properties),
        }
    }

    /// The properties, to change. A received publish turns into the owned form first (see
    /// the module doc): its frame is forgotten.
    pub fn properties_mut(&mut self) -> &mut PublishProperties {
        &mut self.make_owned().properties
    }

    /// Replaces the topic (the frame, if any, is forgotten).
    pub fn set_topic(&mut self, topic: impl Into<ByteStr>) {
        self.make_owned().topic = topic.into();
    }

    /// Replaces the payload (the frame, if any, is forgotten).
    pub fn set_payload(&mut self, payload: impl Into<Bytes>) {
        self.make_owned().payload = payload.into();
    }

    /// Replaces an inbound topic alias by the topic it stands for: sets the topic, removes
    /// the alias property and forgets the received frame.
    pub fn resolve_alias(&mut self, topic: ByteStr) {
        let owned = self.make_owned();
        owned.topic = topic;
        owned.properties.topic_alias = None;
    }

    /// Whether this still holds the received frame, reusable as a template.
    pub fn is_received(&self) -> bool {
        self.received().is_some()
    }

    /// The received frame and its layout, while the publish is unchanged.
    pub(crate) fn received(&self) -> Option<&Received> {
        match &self.body {
            Body::Received(r) => Some(r),
            Body::Owned(_) => None,
        }
    }

    /// Turns a received publish into the owned form (topic, properties and payload become
    /// handles on the frame, no byte is copied) and returns the fields.
    fn make_owned(&mut self) -> &mut Owned {
        match self.body {
            Body::Owned(ref mut owned) => owned,
            Body::Received(ref r) => {
                let owned = Owned {
                    // SAFETY: the topic span of a `Received` is UTF-8 (invariant in
                    // `received`).
                    #[allow(unsafe_code)]
                    topic: unsafe { ByteStr::from_validated(r.frame.slice(r.topic.range())) },
                    properties: PublishPropertiesRef::received(r).to_properties(),
                    payload: r.frame.slice(r.payload_start as usize..),
                };
                self.body = Body::Owned(Box::new(owned));
                // Owned now: returns at once.
                self.make_owned()
            }
        }
    }

    /// The checked decoder: field by field, with the exact error for a malformed frame. It
    /// builds the same received form as the fast path ([`Publish::decode_frame`]).
    pub(crate) fn decode(
        byte0: u8,
        frame: Bytes,
        header_len: usize,
        version: ProtocolVersion,
    ) -> Result<Publish, DecodeError> {
        let dup = byte0 & 0b1000 != 0;
        let qos = QoS::from_u8((byte0 >> 1) & 0b11)?;
        let retain = byte0 & 1 != 0;
        // [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupWithQoS0);
        }
        let mut body = frame.clone();
        body.advance(header_len);
        let at = |body: &Bytes| frame.len() - body.len();
        let topic = read_str(&mut body)?;
        topic::validate_name(&topic)?;
        let topic_span = Span::new(at(&body) - topic.len(), at(&body));
        let qos = match qos {
            QoS::AtMostOnce => PublishQoS::AtMostOnce,
            QoS::AtLeastOnce => PublishQoS::AtLeastOnce(read_packet_id(&mut body)?),
            QoS::ExactlyOnce => PublishQoS::ExactlyOnce(read_packet_id(&mut body)?),
        };
        let (props_span, properties) = if version.is_v5() {
            let block_start = at(&body);
            let properties = PublishProperties::decode(&mut body)?;
            // The length varint was just read successfully, so it peeks the same.
            let varint_len = match varint::peek(&frame[block_start..]) {
                Ok(Peek::Done(_, len)) => len,
                _ => return Err(DecodeError::PropertyLength),
            };
            (Span::new(block_start + varint_len, at(&body)), properties)
        } else {
            (Span::default(), PublishProperties::default())
        };
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(if version.is_v5() {
                // 3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and
                // there is no Topic Alias."
                DecodeError::EmptyTopicWithoutAlias
            } else {
                // [MQTT-4.7.3-1] (3.1.1): a topic name has at least one character.
                DecodeError::InvalidTopicName
            });
        }
        let eager = Eager {
            payload_format_indicator: properties.payload_format_indicator,
            message_expiry_interval_secs: properties.message_expiry_interval_secs,
            topic_alias: properties.topic_alias,
            has_subscription_identifiers: !properties.subscription_identifiers.is_empty(),
        };
        let payload_start = at(&body) as u32;
        // `read_str` validated the topic and `PublishProperties::decode` every string
        // property: the invariant of `Received` holds.
        Ok(Publish {
            dup,
            qos,
            retain,
            body: Body::Received(Received {
                frame,
                topic: topic_span,
                props: props_span,
                payload_start,
                eager,
                family: Family::of(version),
                has_packet_id: qos.packet_id().is_some(),
            }),
        })
    }

    /// Decodes a whole PUBLISH frame (fixed header `byte0`, `header_len` bytes long), the
    /// decoder's hot path.
    ///
    /// A single pass over the frame as a plain slice ([`Scan::run`]) checks everything the
    /// checked decoder ([`Publish::decode`]) checks and records where the fields are; the
    /// frame itself is the only handle kept, so no reference count is touched here at all.
    /// Any problem sends the frame to the checked decoder, which finds the exact error: the
    /// two agree on every input, by construction and by the tests in `scan`.
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
        // The scan validated the topic and every string property: the invariant of
        // `Received` holds.
        Ok(Some(Packet::Publish(Publish {
            dup: byte0 & 0b1000 != 0,
            qos: scan.qos,
            retain: byte0 & 1 != 0,
            body: Body::Received(Received {
                frame,
                topic: scan.topic,
                props: scan.props,
                payload_start: scan.payload_start,
                eager: scan.eager,
                family: Family::of(version),
                has_packet_id: scan.qos.packet_id().is_some(),
            }),
        })))
    }

    /// Decodes one whole PUBLISH frame held in `frame` (fixed header included), without
    /// copying: the publish keeps `frame` as its body. For frames that travel between
    /// brokers as they were encoded (the cluster's envelope), not for reading a stream.
    ///
    /// # Errors
    /// [`DecodeError::InvalidPacketType`] when `frame` is no PUBLISH,
    /// [`DecodeError::Truncated`] or [`DecodeError::TrailingBytes`] when its remaining
    /// length does not match, or any error of the PUBLISH decoder.
    pub fn decode_whole_frame(
        frame: Bytes,
        version: ProtocolVersion,
    ) -> Result<Publish, DecodeError> {
        let byte0 = *frame.first().ok_or(DecodeError::Truncated)?;
        if byte0 >> 4 != kind::PUBLISH {
            return Err(DecodeError::InvalidPacketType(byte0 >> 4));
        }
        let (remaining, varint_len) = match crate::varint::peek(&frame[1..])? {
            crate::varint::Peek::Done(value, len) => (value as usize, len),
            crate::varint::Peek::Incomplete => return Err(DecodeError::Truncated),
        };
        let header_len = 1 + varint_len;
        match (header_len + remaining).cmp(&frame.len()) {
            std::cmp::Ordering::Greater => return Err(DecodeError::Truncated),
            std::cmp::Ordering::Less => return Err(DecodeError::TrailingBytes),
            std::cmp::Ordering::Equal => {}
        }
        match Publish::decode_frame(byte0, frame, header_len, version)? {
            Some(Packet::Publish(publish)) => Ok(publish),
            _ => Err(DecodeError::InvalidPacketType(byte0 >> 4)),
        }
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
        Ok(Some(Packet::Publish(Publish::decode(
            byte0, frame, header_len, version,
        )?)))
    }

    /// The first byte of the fixed header for these flags.
    pub(crate) fn byte0(qos: QoS, retain: bool, dup: bool) -> u8 {
        kind::PUBLISH << 4 | (dup as u8) << 3 | (qos as u8) << 1 | retain as u8
    }

    /// The length of the body (after the fixed header) when encoded for `version`.
    pub fn body_len(&self, version: ProtocolVersion) -> usize {
        let mut len = binary_len(self.topic().as_bytes()) + self.payload().len();
        if self.packet_id().is_some() {
            len += 2;
        }
        if version.is_v5() {
            len += self.properties().block_len();
        }
        len
    }

    /// An upper bound of the size of this message's 5.0 encoding (any QoS layout, no
    /// per-subscriber properties), found without walking its properties: the received
    /// frame's length plus what the 5.0 form can add to it (a property length of up to 4
    /// bytes, a packet identifier). `None` for a publish that is not the received frame any
    /// more (made here, or changed: an inbound topic alias resolved), whose size
    /// [`Publish::encoded_len`] gives.
    pub fn v5_len_bound(&self) -> Option<usize> {
        let received = self.received()?;
        Some(received.frame.len() + 4 + 2)
    }

    /// The whole encoded size for `version`, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let body = self.body_len(version);
        1 + varint::len(body as u32) + body
    }

    /// Appends the packet encoded for `version`, as it is (no template, no patching). The
    /// properties of a received publish are copied as they came, topic alias included.
    pub fn encode(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        write_fixed_header(
            dst,
            Publish::byte0(self.qos(), self.retain, self.dup),
            self.body_len(version),
        );
        write_binary(dst, self.topic().as_bytes());
        if let Some(id) = self.packet_id() {
            dst.put_u16(id.get());
        }
        if version.is_v5() {
            self.properties().encode(dst);
        }
        dst.put_slice(self.payload());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(p: &Publish, version: ProtocolVersion) -> Publish {
        let bytes = Packet::Publish(p.clone()).to_bytes(version).freeze();
        let header_len = bytes.len() - p.body_len(version);
        match Publish::decode_frame(bytes[0], bytes, header_len, version) {
            Ok(Some(Packet::Publish(p))) => p,
            other => panic!("{other:?}"),
        }
    }

    /// `v5_len_bound` is never below the 5.0 encoding's size, whatever the frame came as: a
    /// 3.1.1 frame (no property block) or a 5.0 frame with properties. A frame whose topic
    /// alias was resolved is no longer the received frame: no bound.
    #[test]
    fn the_v5_length_bound_holds() {
        let mut rich = Publish::new("a/b", &b"payload"[..])
            .with_qos(PublishQoS::AtLeastOnce(PacketId::new(9).expect("non-zero")));
        rich.properties_mut().content_type = Some("json".into());
        rich.properties_mut().user_properties = vec![("k".into(), "v".into())];
        let v3 = decoded(&Publish::new("t/1", &b"x"[..]), ProtocolVersion::V3_1_1);
        let v5 = decoded(&rich, ProtocolVersion::V5);
        let mut aliased = Publish::new("", &b"x"[..]);
        aliased.properties_mut().topic_alias = Some(3);
        let mut aliased = decoded(&aliased, ProtocolVersion::V5);
        aliased.resolve_alias(ByteStr::from("a/much/longer/topic/than/the/frame/had"));
        assert_eq!(aliased.v5_len_bound(), None);
        for p in [v3, v5] {
            let bound = p.v5_len_bound().expect("received");
            for out in [
                PublishQoS::AtMostOnce,
                PublishQoS::ExactlyOnce(PacketId::MIN),
            ] {
                let mut q = p.clone();
                q.set_qos(out);
                assert!(bound >= q.encoded_len(ProtocolVersion::V5), "{p:?} {out:?}");
            }
        }
        assert_eq!(Publish::new("t", &b"x"[..]).v5_len_bound(), None);
    }

    /// A received publish reads like the one it was encoded from, and turns into the owned
    /// form, with the same fields, on the first change.
    #[test]
    fn received_and_owned_agree() {
        let mut p = Publish::new("a/b", &b"payload"[..])
            .with_qos(PublishQoS::AtLeastOnce(PacketId::new(9).expect("non-zero")));
        let props = p.properties_mut();
        props.message_expiry_interval_secs = Some(5);
        props.content_type = Some("json".into());
        props.correlation_data = Some(Bytes::from_static(b"\x00"));
        props.subscription_identifiers = vec![4, 2];
        props.user_properties = vec![("k".into(), "v".into()), ("k".into(), "w".into())];
        let mut r = decoded(&p, ProtocolVersion::V5);
        assert!(r.is_received());
        assert_eq!(r, p);
        assert_eq!(r.properties().content_type(), Some("json"));
        assert_eq!(r.properties().correlation_data(), Some(&b"\x00"[..]));
        assert!(r.properties().has_subscription_identifiers());
        assert_eq!(
            r.properties()
                .subscription_identifiers()
                .collect::<Vec<_>>(),
            [4, 2]
        );
        assert_eq!(
            r.properties().to_properties(),
            p.properties().to_properties()
        );
        assert_eq!(&*r.shared_topic(), "a/b");
        assert_eq!(r.shared_payload(), Bytes::from_static(b"payload"));
        r.properties_mut().content_type = None;
        assert!(!r.is_received());
        assert_eq!(r.topic(), "a/b");
        assert_eq!(r.payload(), b"payload");
        assert_eq!(r.properties().content_type(), None);
        assert_eq!(r.properties().message_expiry_interval_secs(), Some(5));

        let v3 = decoded(&p, ProtocolVersion::V3_1_1);
        assert!(v3.properties().is_empty());
        assert_eq!(v3.topic(), "a/b");
    }

    /// Resolving an inbound alias forgets the frame and the alias.
    #[test]
    fn resolve_alias() {
        let mut p = Publish::new("", &b"x"[..]);
        p.properties_mut().topic_alias = Some(3);
        let mut r = decoded(&p, ProtocolVersion::V5);
        assert_eq!(r.topic(), "");
        assert_eq!(r.properties().topic_alias(), Some(3));
        r.resolve_alias("t".into());
        assert!(!r.is_received());
        assert_eq!(r.topic(), "t");
        assert_eq!(r.properties().topic_alias(), None);
    }

    /// The received form sets the size of a PUBLISH (the owned form is boxed).
    #[test]
    fn publish_is_small() {
        let size = std::mem::size_of::<Publish>();
        assert!(size <= 80, "{size}");
        assert!(std::mem::size_of::<Packet>() <= 112);
    }
}
