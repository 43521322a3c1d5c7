//! Encode-once PUBLISH templates for fan-out (DESIGN.md, "The path of one PUBLISH").
//!
//! A message is serialised at most once per *layout*: [`Family`] (3.x or 5.0) times "with a
//! packet identifier" (QoS > 0) or not (QoS 0). The first need builds a template:
//! - *raw*: the received frame itself, when it is already that layout and nothing in it must
//!   change (no inbound topic alias to strip, no subscription identifier);
//! - *cached*: otherwise, an encoding without topic alias or subscription identifiers.
//!
//! [`PublishTemplate::write_to`] appends the template to a subscriber's buffer and patches
//! byte 0 (DUP, QoS, RETAIN) and the packet identifier *in the copy*: shared bytes never
//! change. A subscriber that needs its own properties (subscription identifiers, an outbound
//! topic alias, a reduced message expiry) gets a one-shot encoding from [`encode_publish`].

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use crate::packet::{Publish, PublishPropertiesRef, Received, Strings};
use crate::property::{id, Counter, Sink, Writer};
use crate::types::{PacketId, ProtocolVersion, PublishQoS, QoS};
use crate::varint;
use crate::wire::{binary_len, write_binary, write_fixed_header};

/// The PUBLISH layouts: 3.1 and 3.1.1 share one, 5.0 adds properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// MQTT 3.1 and 3.1.1.
    V3,
    /// MQTT 5.0.
    V5,
}

impl Family {
    /// The family of a protocol version.
    pub fn of(version: ProtocolVersion) -> Family {
        if version.is_v5() {
            Family::V5
        } else {
            Family::V3
        }
    }
}

/// Using a template of the wrong layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// QoS 0 written with a packet-id template or QoS > 0 with a QoS 0 template: a downgrade
    /// to QoS 0 changes the layout and needs the QoS 0 template.
    #[error("template layout does not match the delivery QoS")]
    LayoutMismatch,
}

/// A buffer a template can be appended to and patched in.
pub trait PatchBuf {
    /// Appends `src`; returns the offset where it starts.
    fn append(&mut self, src: &[u8]) -> usize;
    /// Overwrites one byte at `at`.
    fn patch(&mut self, at: usize, byte: u8);
}

impl PatchBuf for Vec<u8> {
    fn append(&mut self, src: &[u8]) -> usize {
        let start = self.len();
        self.extend_from_slice(src);
        start
    }
    fn patch(&mut self, at: usize, byte: u8) {
        self[at] = byte;
    }
}

impl PatchBuf for BytesMut {
    fn append(&mut self, src: &[u8]) -> usize {
        let start = self.len();
        self.extend_from_slice(src);
        start
    }
    fn patch(&mut self, at: usize, byte: u8) {
        self[at] = byte;
    }
}

/// One encoded layout of a message, shared by every subscriber that uses it: a view of
/// the received frame or of the layout's cached encoding. Taking it costs no atomic
/// operation when it is the received frame (the common case: a subscriber of the
/// publisher's own protocol family).
#[derive(Debug, Clone, Copy)]
pub struct PublishTemplate<'a> {
    bytes: &'a Bytes,
    packet_id_offset: Option<usize>,
}

/// A layout's own encoding, built on first need and kept with the message.
#[derive(Debug)]
struct Encoded {
    bytes: Bytes,
    packet_id_offset: Option<usize>,
}

impl<'a> PublishTemplate<'a> {
    /// The encoded size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: a PUBLISH has at least a fixed header and a topic length.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether this layout carries a packet identifier (QoS > 0).
    pub fn has_packet_id(&self) -> bool {
        self.packet_id_offset.is_some()
    }

    /// The shared bytes (byte 0 and the packet identifier are placeholders).
    pub fn as_bytes(&self) -> &'a Bytes {
        self.bytes
    }

    /// Appends the template to `dst` and patches, in the copy, byte 0 with DUP, QoS and
    /// RETAIN and the packet identifier.
    ///
    /// # Errors
    /// [`TemplateError::LayoutMismatch`] when `out` has a packet identifier and the template
    /// does not, or the reverse. Nothing is written then.
    pub fn write_to(
        &self,
        dst: &mut impl PatchBuf,
        out: PublishQoS,
        retain: bool,
        dup: bool,
    ) -> Result<(), TemplateError> {
        match (out.packet_id(), self.packet_id_offset) {
            (None, None) => {
                let start = dst.append(self.bytes);
                dst.patch(start, Publish::byte0(QoS::AtMostOnce, retain, false));
            }
            (Some(id), Some(offset)) => {
                let start = dst.append(self.bytes);
                dst.patch(start, Publish::byte0(out.qos(), retain, dup));
                let [hi, lo] = id.get().to_be_bytes();
                dst.patch(start + offset, hi);
                dst.patch(start + offset + 1, lo);
            }
            _ => return Err(TemplateError::LayoutMismatch),
        }
        Ok(())
    }
}

/// The lazily built templates of one message, one slot per layout.
#[derive(Debug)]
pub struct PublishTemplates {
    publish: Publish,
    /// The cached encodings of the layouts the received frame is not (never the raw one),
    /// allocated on the first such need: most messages are only ever written in their
    /// received layout, and four inline slots (224 bytes, four cache lines touched again
    /// when the message is dropped) cost more than the rare extra allocation.
    slots: OnceLock<Box<[OnceLock<Encoded>; 4]>>,
}

impl PublishTemplates {
    /// Templates for `publish` (its inbound topic alias must already be resolved).
    pub fn new(publish: Publish) -> PublishTemplates {
        PublishTemplates {
            publish,
            slots: Default::default(),
        }
    }

    /// The message.
    pub fn publish(&self) -> &Publish {
        &self.publish
    }

    /// The template for a layout, built on first use.
    pub fn get(&self, family: Family, with_packet_id: bool) -> PublishTemplate<'_> {
        if let Some(raw) = self.raw(family, with_packet_id) {
            return raw;
        }
        let encoded = self.slots.get_or_init(Box::default)[slot(family, with_packet_id)]
            .get_or_init(|| encode(&self.publish, family, with_packet_id));
        PublishTemplate {
            bytes: &encoded.bytes,
            packet_id_offset: encoded.packet_id_offset,
        }
    }

    /// The template for a layout if it costs no new encoding: built already, or the
    /// received frame itself. For a one-off delivery (a retained replay) that should not
    /// leave an encoded copy behind in a message that lives on.
    pub fn peek(&self, family: Family, with_packet_id: bool) -> Option<PublishTemplate<'_>> {
        if let Some(raw) = self.raw(family, with_packet_id) {
            return Some(raw);
        }
        self.slots.get()?[slot(family, with_packet_id)]
            .get()
            .map(|encoded| PublishTemplate {
                bytes: &encoded.bytes,
                packet_id_offset: encoded.packet_id_offset,
            })
    }

    /// The received frame as the template of this layout, when it can be used as is.
    #[inline]
    fn raw(&self, family: Family, with_packet_id: bool) -> Option<PublishTemplate<'_>> {
        let raw = self.publish.received()?;
        raw_usable(raw, family, with_packet_id).then(|| PublishTemplate {
            bytes: &raw.frame,
            packet_id_offset: raw.packet_id_offset(),
        })
    }

    /// Whether `get(family, with_packet_id)` reuses the received frame without encoding.
    pub fn is_raw(&self, family: Family, with_packet_id: bool) -> bool {
        self.publish
            .received()
            .is_some_and(|raw| raw_usable(raw, family, with_packet_id))
    }
}

fn raw_usable(raw: &Received, family: Family, with_packet_id: bool) -> bool {
    raw.family == family
        && raw.has_packet_id == with_packet_id
        && raw.eager.topic_alias.is_none()
        && !raw.eager.has_subscription_identifiers
}

fn slot(family: Family, with_packet_id: bool) -> usize {
    (family == Family::V5) as usize * 2 + with_packet_id as usize
}

/// Encodes a layout the received frame is not.
fn encode(publish: &Publish, family: Family, with_packet_id: bool) -> Encoded {
    let version = match family {
        Family::V3 => ProtocolVersion::V3_1_1,
        Family::V5 => ProtocolVersion::V5,
    };
    // The placeholder id 1 is overwritten by every write_to.
    let out = if with_packet_id {
        PublishQoS::AtLeastOnce(PacketId::MIN)
    } else {
        PublishQoS::AtMostOnce
    };
    let outbound = Outbound::default();
    let encoding = Encoding::plan(publish, version, out, &outbound);
    let mut dst = BytesMut::with_capacity(encoding.len());
    let layout = encoding.write(&mut dst, false, false);
    Encoded {
        bytes: dst.freeze(),
        packet_id_offset: layout.packet_id_offset,
    }
}

/// Per-subscriber properties of a one-shot encoding (5.0; ignored for 3.x).
#[derive(Debug, Clone, Copy, Default)]
pub struct Outbound<'a> {
    /// Subscription identifiers of every subscription of this client that matched.
    pub subscription_identifiers: &'a [u32],
    /// Outbound topic alias for this connection.
    pub topic_alias: Option<u16>,
    /// Send an empty topic name: the client already knows `topic_alias`.
    pub omit_topic: bool,
    /// Remaining Message Expiry Interval, replacing the received one.
    pub message_expiry_interval_secs: Option<u32>,
}

/// Where the packet identifier landed in an encoding.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Offset of the packet identifier from the start of the packet.
    pub packet_id_offset: Option<usize>,
    /// Total encoded length.
    pub len: usize,
}

/// The outbound property set: the message's own, minus topic alias and subscription
/// identifiers, plus this subscriber's. Read in place from a received frame: no reference
/// count is taken for the strings copied.
struct OutboundProps<'a> {
    base: PublishPropertiesRef<'a>,
    /// The base's string and binary properties, found once for both visits.
    strings: Strings<'a>,
    outbound: &'a Outbound<'a>,
}

impl OutboundProps<'_> {
    fn visit<S: Sink>(&self, sink: &mut S) {
        let base = self.base;
        sink.byte(
            id::PAYLOAD_FORMAT_INDICATOR,
            base.payload_format_indicator(),
        );
        sink.u32(
            id::MESSAGE_EXPIRY_INTERVAL,
            self.outbound
                .message_expiry_interval_secs
                .or(base.message_expiry_interval_secs()),
        );
        sink.binary(id::CONTENT_TYPE, self.strings.content_type);
        sink.binary(id::RESPONSE_TOPIC, self.strings.response_topic);
        sink.binary(id::CORRELATION_DATA, self.strings.correlation_data);
        for sub_id in self.outbound.subscription_identifiers {
            sink.varint(id::SUBSCRIPTION_IDENTIFIER, Some(*sub_id));
        }
        sink.u16(id::TOPIC_ALIAS, self.outbound.topic_alias);
        for (name, value) in base.user_properties() {
            sink.user(name.as_bytes(), value.as_bytes());
        }
    }
}

/// Encodes `publish` for one subscriber: its version, QoS and packet identifier, flags, and
/// per-subscriber properties. The message's own topic alias and subscription identifiers are
/// never copied. Returns where the packet identifier went.
pub fn encode_publish(
    dst: &mut impl BufMut,
    publish: &Publish,
    version: ProtocolVersion,
    out: PublishQoS,
    retain: bool,
    dup: bool,
    outbound: &Outbound<'_>,
) -> Layout {
    Encoding::plan(publish, version, out, outbound).write(dst, retain, dup)
}

/// The number of bytes [`encode_publish`] appends for these arguments, found without
/// encoding (nor allocating).
pub fn encoded_publish_len(
    publish: &Publish,
    version: ProtocolVersion,
    out: PublishQoS,
    outbound: &Outbound<'_>,
) -> usize {
    Encoding::plan(publish, version, out, outbound).len()
}

/// An encoding whose sizes are known before any byte is written, so that a template gets a
/// buffer of exactly its size (one allocation, and no copy when it is frozen).
struct Encoding<'a> {
    publish: &'a Publish,
    topic: &'a [u8],
    props: OutboundProps<'a>,
    /// Length of the property block's contents; `None` for 3.x.
    props_len: Option<usize>,
    out: PublishQoS,
    body_len: usize,
    header_len: usize,
}

impl<'a> Encoding<'a> {
    fn plan(
        publish: &'a Publish,
        version: ProtocolVersion,
        out: PublishQoS,
        outbound: &'a Outbound<'a>,
    ) -> Encoding<'a> {
        let topic: &[u8] =
            if outbound.omit_topic && version.is_v5() && outbound.topic_alias.is_some() {
                &[]
            } else {
                publish.topic().as_bytes()
            };
        let base = publish.properties();
        let props = OutboundProps {
            base,
            strings: if version.is_v5() {
                base.strings()
            } else {
                Strings::default()
            },
            outbound,
        };
        let props_len = if version.is_v5() {
            let mut counter = Counter::default();
            props.visit(&mut counter);
            Some(counter.0)
        } else {
            None
        };
        let pid_len = if out.packet_id().is_some() { 2 } else { 0 };
        let body_len = binary_len(topic)
            + pid_len
            + props_len.map_or(0, |l| varint::len(l as u32) + l)
            + publish.payload().len();
        Encoding {
            publish,
            topic,
            props,
            props_len,
            out,
            body_len,
            header_len: 1 + varint::len(body_len as u32),
        }
    }

    /// The whole encoded length.
    fn len(&self) -> usize {
        self.header_len + self.body_len
    }

    fn write(&self, dst: &mut impl BufMut, retain: bool, dup: bool) -> Layout {
        let out = self.out;
        let dup = dup && out.packet_id().is_some();
        write_fixed_header(dst, Publish::byte0(out.qos(), retain, dup), self.body_len);
        write_binary(dst, self.topic);
        let packet_id_offset = out.packet_id().map(|id| {
            dst.put_u16(id.get());
            self.header_len + binary_len(self.topic)
        });
        if let Some(len) = self.props_len {
            varint::write(dst, len as u32);
            self.props.visit(&mut Writer(dst));
        }
        dst.put_slice(self.publish.payload());
        Layout {
            packet_id_offset,
            len: self.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `peek` never encodes: a layout not built yet (and not the received frame) is `None`
    /// until `get` builds it.
    #[test]
    fn peek_does_not_build() {
        let templates = PublishTemplates::new(Publish::new("a/b", b"x".to_vec()));
        assert!(templates.peek(Family::V5, false).is_none());
        let built = templates.get(Family::V5, false).as_bytes().clone();
        let peeked = templates
            .peek(Family::V5, false)
            .map(|t| t.as_bytes().clone());
        assert_eq!(peeked, Some(built));
        assert!(templates.peek(Family::V3, true).is_none());
    }

    /// The templates add one pointer-sized slot and a state word to the message: a
    /// message that is only written in its received layout allocates nothing more.
    #[test]
    fn templates_add_sixteen_bytes_to_the_publish() {
        assert!(
            std::mem::size_of::<PublishTemplates>() <= std::mem::size_of::<Publish>() + 16,
            "{} bytes for a {}-byte publish",
            std::mem::size_of::<PublishTemplates>(),
            std::mem::size_of::<Publish>()
        );
    }
}
