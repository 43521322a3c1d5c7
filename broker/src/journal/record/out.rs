//! The outbound-message record: [`OutParts`], the borrowed form the hot path encodes
//! straight into the log's buffer (with the message's body inline the first time, in the
//! compact form of `compact.rs`), and the decoding of the fixed-width [`OutRecord`] of
//! older logs.

use bytes::BufMut;

use super::compact::{encode_message, OutFields, OUT_C, OUT_WITH_BODY_C};
use super::{get_str, get_u16, get_u32, get_u64, get_u8};
use super::{OutRecord, RecordError, StoredRef};

/// The parts of an [`OutRecord`], borrowed: the hot path encodes them straight into the
/// log's buffer ([`OutParts::encode`]) without building a record.
#[derive(Debug, Clone, Copy)]
pub struct OutParts<'a> {
    /// The session.
    pub session: u64,
    /// The message's number in the session.
    pub seq: u64,
    /// Delivery QoS (1 or 2).
    pub qos: u8,
    /// RETAIN as delivered.
    pub retain: bool,
    /// Packet id; 0 while queued.
    pub packet_id: u16,
    /// Subscription identifiers delivered with it.
    pub subscription_ids: &'a [u32],
    /// The shared subscription group it came through.
    pub group: Option<&'a str>,
    /// The id of the message's [`Record::Body`].
    pub body: u64,
    /// The body itself, when this record stores it (the first record about the message
    /// since the last checkpoint): one frame instead of a body record and an out record.
    pub inline: Option<StoredRef<'a>>,
}

impl OutParts<'_> {
    /// Appends the encoding of the [`Record::Out`] these parts make (with `inline`: of the
    /// [`Record::Batch`] of its body and it).
    pub fn encode(&self, dst: &mut Vec<u8>) {
        let tag = if self.inline.is_some() {
            OUT_WITH_BODY_C
        } else {
            OUT_C
        };
        dst.put_u8(tag);
        OutFields {
            session: self.session,
            seq: self.seq,
            flags: self.qos | (self.retain as u8) << 2,
            packet_id: self.packet_id,
            subscription_ids: self.subscription_ids,
            group: self.group.unwrap_or(""),
            body: self.body,
        }
        .encode(dst);
        if let Some(message) = self.inline {
            encode_message(message, dst);
        }
    }
}

impl OutRecord {
    /// This record as parts to encode, carrying `inline` as its body when given.
    pub fn parts<'a>(&'a self, inline: Option<StoredRef<'a>>) -> OutParts<'a> {
        OutParts {
            session: self.session,
            seq: self.seq,
            qos: self.qos,
            retain: self.retain,
            packet_id: self.packet_id,
            subscription_ids: &self.subscription_ids,
            group: self.group.as_deref(),
            body: self.body,
            inline,
        }
    }

    pub(super) fn encode(&self, dst: &mut Vec<u8>) {
        self.parts(None).encode(dst);
    }

    pub(super) fn decode_after_head(
        session: u64,
        src: &mut &[u8],
    ) -> Result<OutRecord, RecordError> {
        let seq = get_u64(src)?;
        let flags = get_u8(src)?;
        let packet_id = get_u16(src)?;
        let n = get_u16(src)?;
        let mut subscription_ids = Vec::with_capacity(usize::from(n).min(64));
        for _ in 0..n {
            subscription_ids.push(get_u32(src)?);
        }
        let group = get_str(src)?;
        Ok(OutRecord {
            session,
            seq,
            qos: flags & 0b11,
            retain: flags & 0b100 != 0,
            packet_id,
            subscription_ids,
            group: (!group.is_empty()).then_some(group),
            body: get_u64(src)?,
        })
    }
}
