//! The compact encoding of the records a delivered message costs (tags 18 to 23): integers
//! as LEB128 varints instead of fixed-width little-endian fields, and the steps of one
//! session's outbound messages (sent, released, done) as *runs*: the session once, then
//! each step's number as the difference from the one before it.
//!
//! ```text
//! out / out with body:  tag | session | seq | flags: u8 | packet_id | n | sub id * n
//!                       | group len | group | body id [| message]
//! body:                 tag | id | message
//! message:              received_unix_ms | origin_session | (len << 1 | is_3x) | publish
//! run of steps:         tag | session | seq [| packet_id] | (zigzag(seq - prev) [| packet_id])*
//! ```
//!
//! Every integer above but `flags` is a varint. A run ends where its record ends (its
//! length is the frame's, or its batch entry's). A run of one step decodes as that step's
//! record, a longer one as a [`Record::Batch`] of them. The fixed-width forms (tags 1 to
//! 17) are still decoded: logs and checkpoints written before this encoding recover.

use bytes::BufMut;
use tern_codec::Family;

use super::{
    get_u8, take_frame, take_str, OutRecord, Record, RecordError, StoredMessage, StoredRef,
};

/// An [`OutRecord`] in the compact form.
pub(super) const OUT_C: u8 = 18;
/// An [`OutRecord`] followed by its body, compact: decoded as the batch `[Body, Out]`.
pub(super) const OUT_WITH_BODY_C: u8 = 19;
/// A [`Record::Body`] in the compact form.
pub(super) const BODY_C: u8 = 20;
/// A run of [`Record::Sent`] of one session.
pub(super) const SENT_RUN: u8 = 21;
/// A run of [`Record::Released`] of one session.
pub(super) const RELEASED_RUN: u8 = 22;
/// A run of [`Record::Done`] of one session.
pub(super) const DONE_RUN: u8 = 23;

/// A step of an outbound message that an acknowledgement causes, as runs record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Sent from the queue with this packet id ([`Record::Sent`]).
    Sent(u16),
    /// PUBREC received ([`Record::Released`]).
    Released,
    /// Finished ([`Record::Done`]).
    Done,
}

impl Step {
    /// The tag of a run of steps of this kind.
    pub(crate) fn run_tag(self) -> u8 {
        match self {
            Step::Sent(_) => SENT_RUN,
            Step::Released => RELEASED_RUN,
            Step::Done => DONE_RUN,
        }
    }

    /// The record of this step of message `seq` of `session`.
    pub fn record(self, session: u64, seq: u64) -> Record {
        match self {
            Step::Sent(packet_id) => Record::Sent {
                session,
                seq,
                packet_id,
            },
            Step::Released => Record::Released { session, seq },
            Step::Done => Record::Done { session, seq },
        }
    }

    /// Appends a run holding only this step of message `seq` of `session`.
    pub fn encode_run(self, session: u64, seq: u64, dst: &mut Vec<u8>) {
        dst.put_u8(self.run_tag());
        put_var(dst, session);
        put_var(dst, seq);
        self.put_packet_id(dst);
    }

    /// Appends this step of message `seq` to a run whose last step was of `prev_seq`
    /// (and of the same kind and session).
    pub fn encode_next(self, prev_seq: u64, seq: u64, dst: &mut Vec<u8>) {
        let delta = seq.wrapping_sub(prev_seq) as i64;
        put_var(dst, ((delta << 1) ^ (delta >> 63)) as u64);
        self.put_packet_id(dst);
    }

    fn put_packet_id(self, dst: &mut Vec<u8>) {
        if let Step::Sent(packet_id) = self {
            put_var(dst, u64::from(packet_id));
        }
    }
}

/// A run after its tag (the whole rest of the record).
pub(super) fn decode_run(tag: u8, mut src: &[u8]) -> Result<Record, RecordError> {
    let session = get_var(&mut src)?;
    let mut seq = get_var(&mut src)?;
    let step = |src: &mut &[u8]| -> Result<Step, RecordError> {
        Ok(match tag {
            SENT_RUN => Step::Sent(get_var_u16(src)?),
            RELEASED_RUN => Step::Released,
            _ => Step::Done,
        })
    };
    let first = step(&mut src)?.record(session, seq);
    if src.is_empty() {
        return Ok(first);
    }
    let mut records = vec![first];
    while !src.is_empty() {
        let zigzag = get_var(&mut src)?;
        let delta = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
        seq = seq.wrapping_add(delta as u64);
        records.push(step(&mut src)?.record(session, seq));
    }
    Ok(Record::Batch(records))
}

/// The fields of an out record after its tag, compact.
pub(super) struct OutFields<'a> {
    pub(super) session: u64,
    pub(super) seq: u64,
    pub(super) flags: u8,
    pub(super) packet_id: u16,
    pub(super) subscription_ids: &'a [u32],
    pub(super) group: &'a str,
    pub(super) body: u64,
}

impl OutFields<'_> {
    pub(super) fn encode(&self, dst: &mut Vec<u8>) {
        let mut head = Varints::default();
        head.put(self.session);
        head.put(self.seq);
        head.put_byte(self.flags);
        head.put(u64::from(self.packet_id));
        head.put(self.subscription_ids.len() as u64);
        dst.extend_from_slice(head.bytes());
        for id in self.subscription_ids {
            put_var(dst, u64::from(*id));
        }
        put_var(dst, self.group.len() as u64);
        dst.put_slice(self.group.as_bytes());
        put_var(dst, self.body);
    }
}

/// Up to five varints (or bytes) encoded on the stack, then copied out at once: the hot
/// path's fixed fields cost one copy into the log's buffer, not a push per byte.
struct Varints {
    buf: [u8; 50],
    len: usize,
}

impl Default for Varints {
    fn default() -> Self {
        Varints {
            buf: [0; 50],
            len: 0,
        }
    }
}

impl Varints {
    fn put(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.buf[self.len] = value as u8 | 0x80;
            self.len += 1;
            value >>= 7;
        }
        self.put_byte(value as u8);
    }

    fn put_byte(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// An out record after its tag, compact.
pub(super) fn decode_out(src: &mut &[u8]) -> Result<OutRecord, RecordError> {
    let session = get_var(src)?;
    let seq = get_var(src)?;
    let flags = get_u8(src)?;
    let packet_id = get_var_u16(src)?;
    let n = get_var(src)?;
    let mut subscription_ids = Vec::with_capacity((n as usize).min(64));
    for _ in 0..n {
        subscription_ids.push(get_var_u32(src)?);
    }
    let group = get_var_str(src)?;
    Ok(OutRecord {
        session,
        seq,
        qos: flags & 0b11,
        retain: flags & 0b100 != 0,
        packet_id,
        subscription_ids,
        group: (!group.is_empty()).then_some(group),
        body: get_var(src)?,
    })
}

/// Appends a stored message, compact.
pub(super) fn encode_message(message: StoredRef<'_>, dst: &mut Vec<u8>) {
    let mut head = Varints::default();
    head.put(message.received_unix_ms);
    head.put(message.origin_session);
    let is_3x = matches!(message.family, Family::V3) as u64;
    head.put((message.publish.len() as u64) << 1 | is_3x);
    dst.reserve(head.len + message.publish.len());
    dst.extend_from_slice(head.bytes());
    dst.extend_from_slice(message.publish);
}

/// A stored message from the front of `src`, compact.
pub(super) fn decode_message(src: &mut &[u8]) -> Result<StoredMessage, RecordError> {
    let received_unix_ms = get_var(src)?;
    let origin_session = get_var(src)?;
    let len_and_flag = get_var(src)?;
    let len = usize::try_from(len_and_flag >> 1).map_err(|_| RecordError::Truncated)?;
    let (publish, family) = take_frame(src, len, len_and_flag & 1 != 0)?;
    Ok(StoredMessage {
        received_unix_ms,
        origin_session,
        publish,
        family,
    })
}

/// Appends `value` as an unsigned LEB128 varint (1 to 10 bytes).
pub(super) fn put_var(dst: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        dst.push(value as u8 | 0x80);
        value >>= 7;
    }
    dst.push(value as u8);
}

/// An unsigned LEB128 varint from the front of `src`.
///
/// # Errors
/// [`RecordError::Truncated`] when `src` ends inside it, [`RecordError::BadVarint`] when it
/// runs past 10 bytes or past 64 bits.
pub(super) fn get_var(src: &mut &[u8]) -> Result<u64, RecordError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = get_u8(src)?;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(RecordError::BadVarint);
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(RecordError::BadVarint)
}

fn get_var_u16(src: &mut &[u8]) -> Result<u16, RecordError> {
    u16::try_from(get_var(src)?).map_err(|_| RecordError::BadVarint)
}

fn get_var_u32(src: &mut &[u8]) -> Result<u32, RecordError> {
    u32::try_from(get_var(src)?).map_err(|_| RecordError::BadVarint)
}

fn get_var_str(src: &mut &[u8]) -> Result<String, RecordError> {
    let len = usize::try_from(get_var(src)?).map_err(|_| RecordError::Truncated)?;
    take_str(src, len)
}
