//! The fixed-width encoding the records of a delivered message had before `compact.rs`
//! (tags 8 to 11, 15 and 17). Cluster handover forms are still written in it
//! ([`Record::encode_fixed`]), so that a node of an older version reads them during a
//! rolling upgrade; tests build the bytes of an older broker's log with it.

use bytes::BufMut;

use super::{head, put_str, OutRecord, Record, StoredMessage};
use super::{BATCH, BODY, DONE, OUT, OUT_WITH_BODY, RELEASED, SENT};

/// Appends `record` as an older broker encoded it.
pub(crate) fn encode(record: &Record, dst: &mut Vec<u8>) {
    match record {
        Record::Out(out) => encode_out_fixed(out, None, dst),
        Record::Sent {
            session,
            seq,
            packet_id,
        } => {
            head(dst, SENT, *session);
            dst.put_u64_le(*seq);
            dst.put_u16_le(*packet_id);
        }
        Record::Released { session, seq } => {
            head(dst, RELEASED, *session);
            dst.put_u64_le(*seq);
        }
        Record::Done { session, seq } => {
            head(dst, DONE, *session);
            dst.put_u64_le(*seq);
        }
        Record::Body { id, message } => {
            dst.put_u8(BODY);
            dst.put_u64_le(*id);
            message.encode(dst);
        }
        Record::Batch(records) => {
            dst.put_u8(BATCH);
            dst.put_u32_le(records.len() as u32);
            for record in records {
                let start = dst.len();
                dst.put_u32_le(0);
                encode(record, dst);
                let len = (dst.len() - start - 4) as u32;
                dst[start..start + 4].copy_from_slice(&len.to_le_bytes());
            }
        }
        // The other records are encoded as they always were.
        other => other.encode(dst),
    }
}

/// Appends an out record as an older broker encoded it, with its body inline (tag 17)
/// when `inline` is given (tests: a handover form never inlines a body).
#[cfg(test)]
pub(crate) fn encode_out(out: &OutRecord, inline: Option<&StoredMessage>, dst: &mut Vec<u8>) {
    encode_out_fixed(out, inline, dst);
}

fn encode_out_fixed(out: &OutRecord, inline: Option<&StoredMessage>, dst: &mut Vec<u8>) {
    head(
        dst,
        if inline.is_some() { OUT_WITH_BODY } else { OUT },
        out.session,
    );
    dst.put_u64_le(out.seq);
    dst.put_u8(out.qos | (out.retain as u8) << 2);
    dst.put_u16_le(out.packet_id);
    dst.put_u16_le(out.subscription_ids.len() as u16);
    for id in &out.subscription_ids {
        dst.put_u32_le(*id);
    }
    put_str(dst, out.group.as_deref().unwrap_or(""));
    dst.put_u64_le(out.body);
    if let Some(message) = inline {
        message.encode(dst);
    }
}
