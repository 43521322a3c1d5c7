//! [`Received`]: a decoded PUBLISH as its one frame handle plus the positions of its fields,
//! and [`RawProps`], a reader over the kept property block that touches no reference count.
//!
//! This module owns the layout of a received publish; it does not validate anything: every
//! `Received` is built by the decoder (`scan` or the checked decoder) after the frame passed
//! every check, so the readers here can trust it.
//!
//! Invariant, relied on by `unsafe` code (`str_from_validated`, `ByteStr::from_validated`):
//! in a `Received`, the topic span and the spans of every string property (Content Type,
//! Response Topic, User Property names and values) in the property block hold well formed
//! UTF-8. Only `Publish::decode` and `Publish::decode_frame` build one, after checking
//! exactly that, and nothing changes a `Received` afterwards (a change to a publish turns
//! it into the owned form); the frame is an immutable `Bytes`.

use std::ops::Range;

use bytes::Bytes;

use crate::property::id;
use crate::template::Family;

/// A field's position in the frame. `u32`s keep [`Received`], and so every
/// [`crate::Packet`], small: a frame is at most 256 MiB plus its header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    #[inline(always)]
    pub(crate) fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// The integer properties the broker reads on every message, parsed in the decoder's single
/// pass (they cost no reference count); the others stay in the frame until asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Eager {
    pub(crate) payload_format_indicator: Option<u8>,
    pub(crate) message_expiry_interval_secs: Option<u32>,
    pub(crate) topic_alias: Option<u16>,
    /// Whether any Subscription Identifier is present: a client must not send one, and a
    /// template must not reuse a frame that carries one.
    pub(crate) has_subscription_identifiers: bool,
}

/// A PUBLISH exactly as received: one `Bytes` handle on the whole frame (the only reference
/// count a decoded publish holds) and where its fields are.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Received {
    /// The whole frame, fixed header included: reused as a template when the layout fits.
    pub(crate) frame: Bytes,
    /// The topic name.
    pub(crate) topic: Span,
    /// The contents of the property block, after its length; empty for 3.x.
    pub(crate) props: Span,
    /// Where the payload starts; it runs to the end of the frame.
    pub(crate) payload_start: u32,
    pub(crate) eager: Eager,
    /// The layout family it was encoded in.
    pub(crate) family: Family,
    /// Whether the frame carries a packet identifier (it did at QoS > 0; the `qos` field of
    /// the publish may have changed since).
    pub(crate) has_packet_id: bool,
}

impl Received {
    /// Offset of the two packet identifier bytes, right after the topic, when present.
    pub(crate) fn packet_id_offset(&self) -> Option<usize> {
        self.has_packet_id.then_some(self.topic.end as usize)
    }

    /// The topic name bytes (validated).
    #[inline(always)]
    pub(crate) fn topic(&self) -> &[u8] {
        &self.frame[self.topic.range()]
    }

    /// The payload bytes.
    #[inline(always)]
    pub(crate) fn payload(&self) -> &[u8] {
        &self.frame[self.payload_start as usize..]
    }

    /// The property block contents.
    pub(crate) fn props(&self) -> RawProps<'_> {
        RawProps {
            bytes: &self.frame,
            pos: self.props.start as usize,
            end: self.props.end as usize,
        }
    }
}

/// One property of a validated block, by position.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RawProp {
    /// A byte, two-byte, four-byte or variable byte integer property.
    Int(u8, u32),
    /// A string or binary data property.
    Data(u8, Span),
    /// A User Property: name and value.
    User(Span, Span),
}

/// Iterates a validated PUBLISH property block without copying or counting references.
/// It stops at anything unexpected, which a validated block never holds.
#[derive(Clone, Debug)]
pub(crate) struct RawProps<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) pos: usize,
    pub(crate) end: usize,
}

impl<'a> RawProps<'a> {
    /// The bytes of a span.
    pub(crate) fn at(&self, span: Span) -> &'a [u8] {
        &self.bytes[span.range()]
    }

    fn take(&mut self, n: usize) -> Option<usize> {
        if self.end - self.pos < n {
            return None;
        }
        let at = self.pos;
        self.pos += n;
        Some(at)
    }

    fn uint(&mut self, n: usize) -> Option<u32> {
        let at = self.take(n)?;
        Some(
            self.bytes[at..at + n]
                .iter()
                .fold(0, |acc, &b| acc << 8 | u32::from(b)),
        )
    }

    fn varint(&mut self) -> Option<u32> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.uint(1)?;
            value |= (byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn binary(&mut self) -> Option<Span> {
        let len = self.uint(2)? as usize;
        let at = self.take(len)?;
        Some(Span::new(at, at + len))
    }
}

impl Iterator for RawProps<'_> {
    type Item = RawProp;

    fn next(&mut self) -> Option<RawProp> {
        if self.pos >= self.end {
            return None;
        }
        // The identifier is a varint on the wire (the checked decoder accepts a multi-byte
        // one); every PUBLISH property identifier fits in one byte.
        let ident = u8::try_from(self.varint()?).ok()?;
        let prop = match ident {
            id::PAYLOAD_FORMAT_INDICATOR => RawProp::Int(ident, self.uint(1)?),
            id::TOPIC_ALIAS => RawProp::Int(ident, self.uint(2)?),
            id::MESSAGE_EXPIRY_INTERVAL => RawProp::Int(ident, self.uint(4)?),
            id::SUBSCRIPTION_IDENTIFIER => RawProp::Int(ident, self.varint()?),
            id::CONTENT_TYPE | id::RESPONSE_TOPIC | id::CORRELATION_DATA => {
                RawProp::Data(ident, self.binary()?)
            }
            id::USER_PROPERTY => RawProp::User(self.binary()?, self.binary()?),
            _ => {
                self.pos = self.end;
                return None;
            }
        };
        Some(prop)
    }
}
