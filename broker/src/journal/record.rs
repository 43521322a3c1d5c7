//! The records of the journal: one durable fact each about a session, its subscriptions,
//! its outbound messages, its inbound QoS 2 state, or a retained message, and their binary
//! encoding (a tag byte first; little-endian fixed-width fields, or varints in the compact
//! forms).
//!
//! Every record is a "register write": it sets or clears one key (a session, a
//! subscription `(session, filter)`, an outbound message `(session, seq)`, an inbound packet
//! id `(session, id)`, a retained topic). Records of one key are appended under the lock
//! that guards that key's state, so the log holds them in the order they happened, and
//! replaying any suffix of the log that holds every record since a snapshot onto that
//! snapshot gives the state at the end of the log (see [`super::state`]).
//!
//! The records a delivered message costs (out, body, sent, released, done) are written in
//! the compact form of [`compact`]; the fixed-width forms they had before are still
//! decoded, so a data directory written by an older broker recovers.

mod compact;
pub(super) mod legacy;
mod out;
mod stored;

pub use compact::Step;
pub use out::OutParts;
pub use stored::StoredRef;

use bytes::{Buf, BufMut, Bytes};
use tern_codec::Family;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A session with a non-zero expiry exists (or its expiry changed).
    SessionOpen {
        /// The broker's session id (never reused, also across restarts).
        session: u64,
        /// Its client identifier.
        client_id: String,
        /// Session Expiry Interval in seconds.
        expiry_secs: u32,
    },
    /// The session ended (expired, clean start, expiry set to 0): everything of it goes.
    SessionEnd {
        /// The session.
        session: u64,
    },
    /// Its connection went away at this wall-clock time (expiry counts from here).
    SessionOffline {
        /// The session.
        session: u64,
        /// Milliseconds since the Unix epoch.
        at_unix_ms: u64,
    },
    /// A connection attached to it again.
    SessionOnline {
        /// The session.
        session: u64,
    },
    /// The will of the session's connection (`None`: no will any more).
    Will {
        /// The session.
        session: u64,
        /// The will as a stored message, and its Will Delay Interval in seconds.
        will: Option<(StoredMessage, u32)>,
    },
    /// A subscription was made or replaced.
    Subscribe {
        /// The session.
        session: u64,
        /// The whole filter (`$share/...` included).
        filter: String,
        /// Options, in the 5.0 byte layout.
        options: u8,
        /// Subscription Identifier (0: none).
        subscription_id: u32,
    },
    /// A subscription was removed.
    Unsubscribe {
        /// The session.
        session: u64,
        /// The whole filter.
        filter: String,
    },
    /// An outbound QoS 1/2 message was handed to the session: queued (`packet_id` 0) or
    /// sent at once with `packet_id`.
    Out(Box<OutRecord>),
    /// A queued outbound message was sent with this packet id.
    Sent {
        /// The session.
        session: u64,
        /// The message's number in the session.
        seq: u64,
        /// The packet id it went out with.
        packet_id: u16,
    },
    /// The client answered PUBREC: the message is received, PUBREL is owed.
    Released {
        /// The session.
        session: u64,
        /// The message's number in the session.
        seq: u64,
    },
    /// The outbound message is finished (PUBACK, PUBCOMP, expired, handed elsewhere).
    Done {
        /// The session.
        session: u64,
        /// The message's number in the session.
        seq: u64,
    },
    /// An inbound QoS 2 PUBLISH was received with this packet id ([MQTT-4.3.3-9]).
    Qos2Received {
        /// The session.
        session: u64,
        /// Its packet id.
        packet_id: u16,
    },
    /// PUBREL released the inbound packet id.
    Qos2Released {
        /// The session.
        session: u64,
        /// Its packet id.
        packet_id: u16,
    },
    /// A message body, stored once however many sessions queue it: [`Record::Out`]
    /// records refer to it by `id` (ids are never reused).
    Body {
        /// The body's id.
        id: u64,
        /// The message.
        message: StoredMessage,
    },
    /// Records of one step in one frame, recovered all or none (see `journal/batch.rs`).
    Batch(Vec<Record>),
    /// The retained message of a topic was set (`Some`) or cleared (`None`).
    Retain {
        /// The topic.
        topic: String,
        /// The message.
        message: Option<StoredMessage>,
    },
}

/// An outbound message handed to a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// The session.
    pub session: u64,
    /// The message's number in the session (increasing, never reused).
    pub seq: u64,
    /// QoS it is delivered at (1 or 2).
    pub qos: u8,
    /// RETAIN flag it is delivered with.
    pub retain: bool,
    /// Packet id when sent at once; 0 when queued.
    pub packet_id: u16,
    /// Subscription identifiers it carries.
    pub subscription_ids: Vec<u32>,
    /// The shared group (`$share/...` filter) it came through, if any.
    pub group: Option<String>,
    /// The id of its [`Record::Body`].
    pub body: u64,
}

/// A message as stored: when it was received and its PUBLISH (topic, payload, QoS, retain,
/// properties; aliases already resolved) as a 5.0 frame, or as the 3.x frame it arrived in
/// (which has no properties to lose): a 3.x publisher's message is stored without being
/// encoded again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// When the broker received it, in milliseconds since the Unix epoch (Message Expiry
    /// counts from here).
    pub received_unix_ms: u64,
    /// The session that published it (No Local), 0 for none.
    pub origin_session: u64,
    /// The encoded PUBLISH packet, of `family`'s layout.
    pub publish: Bytes,
    /// The layout of `publish`.
    pub family: Family,
}

/// The top bit of a stored message's length says its frame is 3.x (absent in logs written
/// before 3.x frames were stored, which held 5.0 frames only).
const V3_FRAME_FLAG: u32 = 1 << 31;

/// A record that could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its fields.
    #[error("record truncated")]
    Truncated,
    /// Unknown tag byte.
    #[error("unknown record tag {0}")]
    UnknownTag(u8),
    /// A string that is not UTF-8.
    #[error("record string is not UTF-8")]
    BadString,
    /// A varint longer than 10 bytes, or too large for its field.
    #[error("record varint out of range")]
    BadVarint,
}

const SESSION_OPEN: u8 = 1;
const SESSION_END: u8 = 2;
const SESSION_OFFLINE: u8 = 3;
const SESSION_ONLINE: u8 = 4;
const WILL: u8 = 5;
const SUBSCRIBE: u8 = 6;
const UNSUBSCRIBE: u8 = 7;
const OUT: u8 = 8;
const SENT: u8 = 9;
const RELEASED: u8 = 10;
const DONE: u8 = 11;
const QOS2_RECEIVED: u8 = 12;
const QOS2_RELEASED: u8 = 13;
const RETAIN: u8 = 14;
const BODY: u8 = 15;
const BATCH: u8 = super::batch::BATCH_TAG;
/// An [`OutRecord`] followed by its body: decoded as the batch `[Body, Out]`.
const OUT_WITH_BODY: u8 = 17;

fn encode_body(id: u64, message: &StoredMessage, dst: &mut Vec<u8>) {
    dst.put_u8(compact::BODY_C);
    compact::put_var(dst, id);
    compact::encode_message(message.as_stored_ref(), dst);
}

/// A batch: the count, then each record as `len: u32 LE | record`.
fn encode_batch(records: &[Record], dst: &mut Vec<u8>) {
    dst.put_u8(BATCH);
    dst.put_u32_le(records.len() as u32);
    for record in records {
        let start = dst.len();
        dst.put_u32_le(0);
        record.encode(dst);
        let len = (dst.len() - start - 4) as u32;
        dst[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// A batch after its tag: exactly the records its count says, nothing after them, none
/// of them a batch.
fn decode_batch(mut src: &[u8]) -> Result<Record, RecordError> {
    let count = get_u32(&mut src)? as usize;
    let mut records = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let len = get_u32(&mut src)? as usize;
        if src.len() < len {
            return Err(RecordError::Truncated);
        }
        let inner = &src[..len];
        if inner.first() == Some(&BATCH) {
            return Err(RecordError::UnknownTag(BATCH));
        }
        // An out record with its body decodes as a batch of the two: flattened, so that
        // batches never nest once decoded.
        match Record::decode(inner)? {
            Record::Batch(parts) => records.extend(parts),
            record => records.push(record),
        }
        src.advance(len);
    }
    if !src.is_empty() {
        return Err(RecordError::Truncated);
    }
    Ok(Record::Batch(records))
}

/// A 0 byte for `None`; a 1 byte then `encode(value)` for `Some`.
fn put_optional<T>(dst: &mut Vec<u8>, value: Option<&T>, encode: impl FnOnce(&mut Vec<u8>, &T)) {
    match value {
        None => dst.put_u8(0),
        Some(value) => {
            dst.put_u8(1);
            encode(dst, value);
        }
    }
}

impl Record {
    /// Appends the encoding to `dst`.
    pub fn encode(&self, dst: &mut Vec<u8>) {
        match self {
            Record::SessionOpen {
                session,
                client_id,
                expiry_secs,
            } => {
                head(dst, SESSION_OPEN, *session);
                put_str(dst, client_id);
                dst.put_u32_le(*expiry_secs);
            }
            Record::SessionEnd { session } => head(dst, SESSION_END, *session),
            Record::SessionOffline {
                session,
                at_unix_ms,
            } => {
                head(dst, SESSION_OFFLINE, *session);
                dst.put_u64_le(*at_unix_ms);
            }
            Record::SessionOnline { session } => head(dst, SESSION_ONLINE, *session),
            Record::Will { session, will } => {
                head(dst, WILL, *session);
                put_optional(dst, will.as_ref(), |dst, (message, delay_secs)| {
                    dst.put_u32_le(*delay_secs);
                    message.encode(dst);
                });
            }
            Record::Subscribe {
                session,
                filter,
                options,
                subscription_id,
            } => {
                head(dst, SUBSCRIBE, *session);
                put_str(dst, filter);
                dst.put_u8(*options);
                dst.put_u32_le(*subscription_id);
            }
            Record::Unsubscribe { session, filter } => {
                head(dst, UNSUBSCRIBE, *session);
                put_str(dst, filter);
            }
            Record::Out(out) => out.encode(dst),
            Record::Sent {
                session,
                seq,
                packet_id,
            } => Step::Sent(*packet_id).encode_run(*session, *seq, dst),
            Record::Released { session, seq } => Step::Released.encode_run(*session, *seq, dst),
            Record::Done { session, seq } => Step::Done.encode_run(*session, *seq, dst),
            Record::Qos2Received { session, packet_id } => {
                head(dst, QOS2_RECEIVED, *session);
                dst.put_u16_le(*packet_id);
            }
            Record::Qos2Released { session, packet_id } => {
                head(dst, QOS2_RELEASED, *session);
                dst.put_u16_le(*packet_id);
            }
            Record::Batch(records) => encode_batch(records, dst),
            Record::Body { id, message } => encode_body(*id, message, dst),
            Record::Retain { topic, message } => {
                dst.put_u8(RETAIN);
                put_str(dst, topic);
                put_optional(dst, message.as_ref(), |dst, m| m.encode(dst));
            }
        }
    }

    /// Appends the encoding older brokers wrote (fixed-width fields, no runs): what
    /// cluster handover forms are written in, so that a node of an older version reads
    /// the forms of a newer one. [`Record::decode`] reads both.
    pub fn encode_fixed(&self, dst: &mut Vec<u8>) {
        legacy::encode(self, dst);
    }

    /// Whether the encoded record `src` is, or may hold, a [`Record::Body`].
    pub fn may_hold_body(src: &[u8]) -> bool {
        matches!(
            src.first(),
            Some(&BODY)
                | Some(&BATCH)
                | Some(&OUT_WITH_BODY)
                | Some(&compact::BODY_C)
                | Some(&compact::OUT_WITH_BODY_C)
        )
    }

    /// Decodes one record (the whole of `src`).
    ///
    /// # Errors
    /// [`RecordError`] for a truncated record, an unknown tag or a bad string.
    pub fn decode(src: &[u8]) -> Result<Record, RecordError> {
        let mut src = src;
        let tag = get_u8(&mut src)?;
        if tag == RETAIN {
            let topic = get_str(&mut src)?;
            let message = match get_u8(&mut src)? {
                0 => None,
                _ => Some(StoredMessage::decode(&mut src)?),
            };
            return Ok(Record::Retain { topic, message });
        }
        if tag == BATCH {
            return decode_batch(src);
        }
        if tag == BODY {
            let id = get_u64(&mut src)?;
            let message = StoredMessage::decode(&mut src)?;
            return Ok(Record::Body { id, message });
        }
        if tag >= compact::OUT_C {
            return decode_compact(tag, src);
        }
        let session = get_u64(&mut src)?;
        decode_session_record(tag, session, src)
    }
}

/// A record in the compact form (tags 18 and up), after its tag.
fn decode_compact(tag: u8, mut src: &[u8]) -> Result<Record, RecordError> {
    let record = match tag {
        compact::BODY_C => {
            let id = compact::get_var(&mut src)?;
            let message = compact::decode_message(&mut src)?;
            Record::Body { id, message }
        }
        compact::OUT_C => Record::Out(Box::new(compact::decode_out(&mut src)?)),
        compact::OUT_WITH_BODY_C => {
            let out = compact::decode_out(&mut src)?;
            let message = compact::decode_message(&mut src)?;
            Record::Batch(vec![
                Record::Body {
                    id: out.body,
                    message,
                },
                Record::Out(Box::new(out)),
            ])
        }
        compact::SENT_RUN | compact::RELEASED_RUN | compact::DONE_RUN => {
            return compact::decode_run(tag, src);
        }
        other => return Err(RecordError::UnknownTag(other)),
    };
    if !src.is_empty() {
        return Err(RecordError::Truncated);
    }
    Ok(record)
}

/// A record about one session, after its tag and session id.
fn decode_session_record(tag: u8, session: u64, mut src: &[u8]) -> Result<Record, RecordError> {
    Ok(match tag {
        SESSION_OPEN => Record::SessionOpen {
            session,
            client_id: get_str(&mut src)?,
            expiry_secs: get_u32(&mut src)?,
        },
        SESSION_END => Record::SessionEnd { session },
        SESSION_OFFLINE => Record::SessionOffline {
            session,
            at_unix_ms: get_u64(&mut src)?,
        },
        SESSION_ONLINE => Record::SessionOnline { session },
        WILL => {
            let will = match get_u8(&mut src)? {
                0 => None,
                _ => {
                    let delay_secs = get_u32(&mut src)?;
                    Some((StoredMessage::decode(&mut src)?, delay_secs))
                }
            };
            Record::Will { session, will }
        }
        SUBSCRIBE => Record::Subscribe {
            session,
            filter: get_str(&mut src)?,
            options: get_u8(&mut src)?,
            subscription_id: get_u32(&mut src)?,
        },
        UNSUBSCRIBE => Record::Unsubscribe {
            session,
            filter: get_str(&mut src)?,
        },
        OUT => Record::Out(Box::new(OutRecord::decode_after_head(session, &mut src)?)),
        OUT_WITH_BODY => {
            let out = OutRecord::decode_after_head(session, &mut src)?;
            let message = StoredMessage::decode(&mut src)?;
            Record::Batch(vec![
                Record::Body {
                    id: out.body,
                    message,
                },
                Record::Out(Box::new(out)),
            ])
        }
        SENT => Record::Sent {
            session,
            seq: get_u64(&mut src)?,
            packet_id: get_u16(&mut src)?,
        },
        RELEASED => Record::Released {
            session,
            seq: get_u64(&mut src)?,
        },
        DONE => Record::Done {
            session,
            seq: get_u64(&mut src)?,
        },
        QOS2_RECEIVED => Record::Qos2Received {
            session,
            packet_id: get_u16(&mut src)?,
        },
        QOS2_RELEASED => Record::Qos2Released {
            session,
            packet_id: get_u16(&mut src)?,
        },
        other => return Err(RecordError::UnknownTag(other)),
    })
}

impl Record {
    /// The session the record is about (`None` for retained messages).
    pub fn session(&self) -> Option<u64> {
        match self {
            Record::SessionOpen { session, .. }
            | Record::SessionEnd { session }
            | Record::SessionOffline { session, .. }
            | Record::SessionOnline { session }
            | Record::Will { session, .. }
            | Record::Subscribe { session, .. }
            | Record::Unsubscribe { session, .. }
            | Record::Sent { session, .. }
            | Record::Released { session, .. }
            | Record::Done { session, .. }
            | Record::Qos2Received { session, .. }
            | Record::Qos2Released { session, .. } => Some(*session),
            Record::Out(out) => Some(out.session),
            Record::Retain { .. } | Record::Body { .. } | Record::Batch(_) => None,
        }
    }
}

fn head(dst: &mut Vec<u8>, tag: u8, session: u64) {
    dst.put_u8(tag);
    dst.put_u64_le(session);
}

fn put_str(dst: &mut Vec<u8>, s: &str) {
    dst.put_u32_le(s.len() as u32);
    dst.put_slice(s.as_bytes());
}

fn get_u8(src: &mut &[u8]) -> Result<u8, RecordError> {
    src.try_get_u8().map_err(|_| RecordError::Truncated)
}

fn get_u16(src: &mut &[u8]) -> Result<u16, RecordError> {
    src.try_get_u16_le().map_err(|_| RecordError::Truncated)
}

fn get_u32(src: &mut &[u8]) -> Result<u32, RecordError> {
    src.try_get_u32_le().map_err(|_| RecordError::Truncated)
}

fn get_u64(src: &mut &[u8]) -> Result<u64, RecordError> {
    src.try_get_u64_le().map_err(|_| RecordError::Truncated)
}

fn get_str(src: &mut &[u8]) -> Result<String, RecordError> {
    let len = get_u32(src)? as usize;
    take_str(src, len)
}

/// The next `len` bytes of `src` (taken off it); both encodings' length-prefixed fields
/// end here.
fn take_bytes<'a>(src: &mut &'a [u8], len: usize) -> Result<&'a [u8], RecordError> {
    if src.len() < len {
        return Err(RecordError::Truncated);
    }
    let (bytes, rest) = src.split_at(len);
    *src = rest;
    Ok(bytes)
}

/// The next `len` bytes of `src` as a UTF-8 string.
fn take_str(src: &mut &[u8], len: usize) -> Result<String, RecordError> {
    let bytes = take_bytes(src, len)?;
    let s = std::str::from_utf8(bytes).map_err(|_| RecordError::BadString)?;
    Ok(s.to_owned())
}

/// The stored PUBLISH frame of `len` bytes at the front of `src`, of the 3.x layout when
/// `is_3x`.
fn take_frame(src: &mut &[u8], len: usize, is_3x: bool) -> Result<(Bytes, Family), RecordError> {
    let publish = Bytes::copy_from_slice(take_bytes(src, len)?);
    Ok((publish, if is_3x { Family::V3 } else { Family::V5 }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::{Packet, ProtocolVersion, Publish};

    fn message() -> StoredMessage {
        StoredMessage {
            received_unix_ms: 1_700_000_000_000,
            origin_session: 7,
            publish: Bytes::from_static(b"\x30\x05\x00\x01tpay"),
            family: Family::V5,
        }
    }

    fn all() -> Vec<Record> {
        vec![
            Record::SessionOpen {
                session: 1,
                client_id: "c1".into(),
                expiry_secs: 60,
            },
            Record::SessionEnd { session: 2 },
            Record::SessionOffline {
                session: 3,
                at_unix_ms: 99,
            },
            Record::SessionOnline { session: 3 },
            Record::Will {
                session: 4,
                will: Some((message(), 5)),
            },
            Record::Will {
                session: 4,
                will: None,
            },
            Record::Subscribe {
                session: 5,
                filter: "a/+/b".into(),
                options: 0b10_1110,
                subscription_id: 12,
            },
            Record::Unsubscribe {
                session: 5,
                filter: "$share/g/x".into(),
            },
            Record::Out(Box::new(OutRecord {
                session: 6,
                seq: 1 << 40,
                qos: 2,
                retain: true,
                packet_id: 65535,
                subscription_ids: vec![1, 2],
                group: Some("$share/g/t".into()),
                body: 1 << 33,
            })),
            Record::Body {
                id: 1 << 33,
                message: message(),
            },
            Record::Batch(vec![
                Record::Body {
                    id: 3,
                    message: message(),
                },
                Record::Qos2Received {
                    session: 7,
                    packet_id: 2,
                },
            ]),
            Record::Sent {
                session: 6,
                seq: 3,
                packet_id: 9,
            },
            Record::Released { session: 6, seq: 3 },
            Record::Done { session: 6, seq: 3 },
            Record::Qos2Received {
                session: 7,
                packet_id: 1,
            },
            Record::Qos2Released {
                session: 7,
                packet_id: 1,
            },
            Record::Retain {
                topic: "r/t".into(),
                message: Some(message()),
            },
            Record::Retain {
                topic: "r/t".into(),
                message: None,
            },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        for record in all() {
            let mut buf = Vec::new();
            record.encode(&mut buf);
            assert_eq!(Record::decode(&buf), Ok(record.clone()), "{record:?}");
        }
    }

    /// Out record 9 of session 6 (QoS 1, packet id 4, subscription id 3, body 12).
    fn out_6_9() -> OutRecord {
        OutRecord {
            session: 6,
            seq: 9,
            qos: 1,
            retain: false,
            packet_id: 4,
            subscription_ids: vec![3],
            group: None,
            body: 12,
        }
    }

    #[test]
    fn an_out_record_with_its_body_decodes_as_body_then_out() {
        let out = out_6_9();
        let body = message();
        let mut buf = Vec::new();
        out.parts(Some(body.as_stored_ref())).encode(&mut buf);
        assert!(Record::may_hold_body(&buf));
        let expected = Record::Batch(vec![
            Record::Body {
                id: 12,
                message: body,
            },
            Record::Out(Box::new(out)),
        ]);
        assert_eq!(Record::decode(&buf), Ok(expected));
        for cut in 0..buf.len() {
            assert!(Record::decode(&buf[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for record in all() {
            let mut buf = Vec::new();
            record.encode(&mut buf);
            for cut in 0..buf.len() {
                assert!(Record::decode(&buf[..cut]).is_err(), "{record:?} cut {cut}");
            }
        }
        assert_eq!(
            Record::decode(&[200, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(RecordError::UnknownTag(200))
        );
    }

    /// A 3.x frame is stored as received and flagged as such; it decodes as the publish
    /// it was, and a 5.0 frame still decodes as 5.0 (logs from before the flag).
    #[test]
    fn a_3x_frame_is_stored_as_is_and_decodes() {
        use tern_codec::{PacketId, PublishQoS};
        let publish = Publish::new("a/b", &b"payload"[..])
            .with_qos(PublishQoS::AtLeastOnce(PacketId::new(3).expect("non-zero")));
        for (version, family) in [
            (ProtocolVersion::V3_1_1, Family::V3),
            (ProtocolVersion::V5, Family::V5),
        ] {
            let stored = StoredMessage {
                received_unix_ms: 5,
                origin_session: 1,
                publish: Packet::Publish(publish.clone()).to_bytes(version).into(),
                family,
            };
            let mut bytes = Vec::new();
            stored.encode(&mut bytes);
            let again = StoredMessage::decode(&mut &bytes[..]).expect("decodes");
            assert_eq!(again, stored);
            let decoded = again.decode_publish().expect("a publish");
            assert_eq!(decoded.topic(), "a/b");
            assert_eq!(decoded.payload(), &b"payload"[..]);
        }
    }

    /// Records an older broker wrote (the fixed-width forms) decode to the same records.
    #[test]
    fn the_fixed_width_forms_of_older_logs_still_decode() {
        for record in all() {
            let mut old = Vec::new();
            legacy::encode(&record, &mut old);
            assert_eq!(Record::decode(&old), Ok(record.clone()), "{record:?}");
        }
        // Bytes as an older broker wrote them, spelled out: done (tag 11), sent (9), and
        // an out record with its body (17, decoded as [Body, Out]).
        let done = [11, 6, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            Record::decode(&done),
            Ok(Record::Done { session: 6, seq: 3 })
        );
        let sent = [9, 6, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 9, 0];
        let expected = Record::Sent {
            session: 6,
            seq: 3,
            packet_id: 9,
        };
        assert_eq!(Record::decode(&sent), Ok(expected));
        #[rustfmt::skip]
        let out_with_body = [
            17, 6, 0, 0, 0, 0, 0, 0, 0, // tag, session
            9, 0, 0, 0, 0, 0, 0, 0, 1, 4, 0, // seq, flags (QoS 1), packet id
            1, 0, 3, 0, 0, 0, 0, 0, 0, 0, // one subscription id: 3; no group
            12, 0, 0, 0, 0, 0, 0, 0, // body id
            5, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, // received, origin
            2, 0, 0, 0x80, 0x30, 0, // a 3.x frame of 2 bytes
        ];
        let expected = Record::Batch(vec![
            Record::Body {
                id: 12,
                message: StoredMessage {
                    received_unix_ms: 5,
                    origin_session: 7,
                    publish: Bytes::from_static(&[0x30, 0]),
                    family: Family::V3,
                },
            },
            Record::Out(Box::new(out_6_9())),
        ]);
        assert_eq!(Record::decode(&out_with_body), Ok(expected));
        assert!(Record::may_hold_body(&out_with_body));
    }

    /// The compact forms: a done record is a few bytes, a run of steps of one session a
    /// byte or two per step, and a run decodes back to its steps in order (numbers going
    /// backwards too).
    #[test]
    fn steps_of_one_session_are_a_compact_run() {
        let mut one = Vec::new();
        Record::Done { session: 6, seq: 3 }.encode(&mut one);
        assert_eq!(one, [compact::DONE_RUN, 6, 3]);
        let seqs = [1_000_000u64, 1_000_001, 1_000_003, 999_990, 1 << 50, 0];
        for step in [Step::Done, Step::Released, Step::Sent(65535)] {
            let mut run = Vec::new();
            step.encode_run(300, seqs[0], &mut run);
            for pair in seqs.windows(2) {
                step.encode_next(pair[0], pair[1], &mut run);
            }
            let expected = seqs.iter().map(|&seq| step.record(300, seq)).collect();
            assert_eq!(Record::decode(&run), Ok(Record::Batch(expected)));
            let mut hundred = Vec::new();
            step.encode_run(300, 5000, &mut hundred);
            for seq in 5001..5100 {
                step.encode_next(seq - 1, seq, &mut hundred);
            }
            let per_step = if step == Step::Done { 1 } else { 4 };
            assert!(
                hundred.len() <= 8 + 99 * per_step,
                "{step:?}: {}",
                hundred.len()
            );
        }
        assert_eq!(
            Record::decode(&[
                compact::DONE_RUN,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0x7f,
                1
            ]),
            Err(RecordError::BadVarint)
        );
        assert_eq!(
            Record::decode(&[compact::SENT_RUN, 1, 1, 0x80, 0x80, 0x04]),
            Err(RecordError::BadVarint),
            "a packet id above 65535"
        );
        assert_eq!(
            Record::decode(&[compact::DONE_RUN + 1]),
            Err(RecordError::UnknownTag(24))
        );
    }

    proptest::proptest! {
        /// No bytes make the decoder panic, whatever tag they start with.
        #[test]
        fn garbage_never_panics(tag in 0u8..32, rest in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&rest);
            let _ = Record::decode(&bytes);
            let _ = Record::may_hold_body(&bytes);
        }

        /// Out records, bodies and runs of any field values round-trip in the compact form,
        /// and every prefix of one is an error, never a panic.
        #[test]
        fn compact_forms_round_trip(
            session in proptest::num::u64::ANY,
            seqs in proptest::collection::vec(proptest::num::u64::ANY, 1..8),
            packet_id in proptest::num::u16::ANY,
            subscription_ids in proptest::collection::vec(proptest::num::u32::ANY, 0..4),
            body in proptest::num::u64::ANY,
            received in proptest::num::u64::ANY,
            publish in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let out = OutRecord {
                session,
                seq: seqs[0],
                qos: 2,
                retain: true,
                packet_id,
                subscription_ids,
                group: Some("$share/g/#".into()),
                body,
            };
            let message = StoredMessage {
                received_unix_ms: received,
                origin_session: session,
                publish: Bytes::from(publish),
                family: Family::V3,
            };
            let records = [
                Record::Out(Box::new(out)),
                Record::Body { id: body, message },
                Record::Sent { session, seq: seqs[0], packet_id },
            ];
            for record in records {
                let mut buf = Vec::new();
                record.encode(&mut buf);
                proptest::prop_assert_eq!(Record::decode(&buf), Ok(record));
                for cut in 0..buf.len() {
                    proptest::prop_assert!(Record::decode(&buf[..cut]).is_err());
                }
            }
            let mut run = Vec::new();
            Step::Sent(packet_id).encode_run(session, seqs[0], &mut run);
            for pair in seqs.windows(2) {
                Step::Sent(packet_id).encode_next(pair[0], pair[1], &mut run);
            }
            let steps: Vec<Record> = seqs.iter().map(|&seq| Step::Sent(packet_id).record(session, seq)).collect();
            let expected = if steps.len() == 1 { steps[0].clone() } else { Record::Batch(steps) };
            proptest::prop_assert_eq!(Record::decode(&run), Ok(expected));
        }
    }
}
