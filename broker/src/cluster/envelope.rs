//! The envelope one message travels in between nodes: a fixed header (who sent it, its
//! sequence number, QoS and RETAIN, when it was published) followed by a PUBLISH frame:
//! - a 3.x publisher's message: the frame as the client sent it (3.x frames carry no
//!   properties, so nothing is lost), and the receiving node's 3.x subscribers get those
//!   bytes; neither node encodes it again;
//! - any other message: the MQTT 5.0 frame as the sending node encoded it for its own 5.0
//!   subscribers (or would have), which the receiving node's 5.0 subscribers get.
//!
//! The receiving node decodes the frame in place
//! ([`tern_codec::Publish::decode_whole_frame`]): its topic, properties and payload stay
//! slices of the received `Bytes` (zero copy on the receiving side).
//!
//! Layout (big-endian): `b'T'`, version (`1`: a 5.0 frame follows, `3`: a 3.x frame),
//! flags (bit 0 RETAIN, bits 1-2 QoS), origin node id (8 bytes), sequence (8), publish time
//! in Unix milliseconds (8), then the frame. (A node of a version before 3.x frames
//! refuses version `3` as foreign: counted, not misread.)
//!
//! A batch carries several envelopes of one topic (one NATS subject) in one NATS message,
//! so that NATS and both nodes pay their per-message cost once for all of them: `b'T'`,
//! version `2`, then for each envelope its length (u32) and the envelope, in the order
//! they were published. [`split`] yields the envelopes of either form as slices of the
//! received `Bytes`.
//!
//! A reference stands for an envelope too large for one NATS message (larger than the
//! server's `max_payload`), which is kept in the object store ([`super::large`]): `b'T'`,
//! version `4`, the flags, origin, sequence and publish time of the envelope it stands for,
//! then the object's name (UTF-8, to the end). It always travels alone, never in a batch.
//! ([`header`] refuses it as foreign: it is resolved before anything else looks at it.)
//!
//! This module owns the format only.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tern_codec::template::{encode_publish, encoded_publish_len, PublishTemplate};
use tern_codec::{Family, Outbound, PacketId, ProtocolVersion, Publish, PublishQoS, QoS};
use tokio::time::Instant;

use crate::message::Message;

const MAGIC: u8 = b'T';
const VERSION: u8 = 1;
/// The version byte of an envelope whose frame is a 3.x one.
const V3_VERSION: u8 = 3;
/// The version byte of a batch.
const BATCH_VERSION: u8 = 2;
/// The version byte of a reference to an envelope kept in the object store.
const REFERENCE_VERSION: u8 = 4;
/// Bytes before the frame.
pub(crate) const HEADER_BYTES: usize = 27;
/// Bytes before a batch's first entry.
pub(crate) const BATCH_HEADER_BYTES: usize = 2;
/// Bytes before each envelope in a batch (its length).
pub(crate) const BATCH_ENTRY_BYTES: usize = 4;

/// What the header says of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The node that published it.
    pub(crate) origin: u64,
    /// Its number among that node's messages.
    pub(crate) sequence: u64,
    /// When it was published, Unix milliseconds (Message Expiry counts from there).
    pub(crate) published_unix_ms: u64,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvelopeError {
    /// Too short, another magic byte or version.
    #[error("not a Tern envelope (version {0})")]
    Foreign(u8),
    /// The QoS bits say 3.
    #[error("invalid QoS in the envelope")]
    InvalidQoS,
    /// The frame inside does not decode.
    #[error("bad PUBLISH frame in the envelope: {0}")]
    Frame(#[from] tern_codec::DecodeError),
    /// A batch entry's length runs past the end of the batch.
    #[error("truncated batch of envelopes")]
    TruncatedBatch,
    /// A reference whose object name is missing or not UTF-8.
    #[error("bad reference to a large envelope")]
    BadReference,
}

/// Now as Unix milliseconds.
pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wraps `message` (published on node `origin` as its `sequence`th message).
pub(crate) fn encode(message: &Arc<Message>, origin: u64, sequence: u64, now: Instant) -> Bytes {
    let mut out = BytesMut::with_capacity(encoded_len(message));
    let published = published_unix_ms(message, now, unix_ms_now());
    encode_into(&mut out, message, origin, sequence, published);
    out.freeze()
}

/// The size of `message`'s envelope.
pub(crate) fn encoded_len(message: &Message) -> usize {
    let publish = message.publish();
    let with_id = publish.qos() != QoS::AtMostOnce;
    let frame_len = match sent_frame(message, with_id) {
        Some((_, frame)) => frame.len(),
        // Measured, not built: this runs for every PUBLISH in a cluster.
        None => encoded_publish_len(
            publish,
            ProtocolVersion::V5,
            template_layout(with_id),
            &Outbound::default(),
        ),
    };
    HEADER_BYTES + frame_len
}

/// The frame an envelope of `message` carries when it needs no encoding: a 3.x
/// publisher's frame as received, else the 5.0 template if one is built (or received).
/// The version byte of the envelope comes with it.
fn sent_frame(message: &Message, with_id: bool) -> Option<(u8, PublishTemplate<'_>)> {
    let templates = &message.templates;
    if templates.is_raw(Family::V3, with_id) {
        return templates
            .peek(Family::V3, with_id)
            .map(|frame| (V3_VERSION, frame));
    }
    templates
        .peek(Family::V5, with_id)
        .map(|frame| (VERSION, frame))
}

/// An upper bound of [`encoded_len`] that costs no walk of the properties for a message
/// received from a client (see [`tern_codec::Publish::v5_len_bound`]): what the size
/// checks of every PUBLISH use, falling back to the exact length only near a limit.
pub(crate) fn len_bound(message: &Message) -> usize {
    match message.publish().v5_len_bound() {
        Some(bound) => HEADER_BYTES + bound,
        None => encoded_len(message),
    }
}

/// The QoS layout of the 5.0 frame in an envelope, as `templates.get` builds it: placeholder
/// packet id 1 when the message has one.
fn template_layout(with_id: bool) -> PublishQoS {
    if with_id {
        PublishQoS::AtLeastOnce(PacketId::MIN)
    } else {
        PublishQoS::AtMostOnce
    }
}

/// When `message` was published, in Unix milliseconds, given `now` and `unix_now_ms`
/// (read once for many messages).
pub(crate) fn published_unix_ms(message: &Message, now: Instant, unix_now_ms: u64) -> u64 {
    let age_ms = now
        .saturating_duration_since(message.received_at)
        .as_millis() as u64;
    unix_now_ms.saturating_sub(age_ms)
}

/// Appends `message`'s envelope to `out`.
pub(crate) fn encode_into(
    out: &mut BytesMut,
    message: &Message,
    origin: u64,
    sequence: u64,
    published_unix_ms: u64,
) {
    let publish = message.publish();
    let qos = publish.qos();
    let with_id = qos != QoS::AtMostOnce;
    // A 3.x publisher's frame, or the 5.0 frame made for local subscribers (or received),
    // when there is one; else a 5.0 frame encoded straight into the envelope, the same
    // bytes `templates.get` would build but without keeping a copy in the message (most
    // messages crossing nodes have no local 5.0 subscriber, and the copy, its allocation
    // and its one-time initialisation were a tenth of a forwarding node's CPU).
    let frame = sent_frame(message, with_id);
    let frame_len = frame.map_or_else(|| len_bound(message) - HEADER_BYTES, |(_, f)| f.len());
    out.reserve(HEADER_BYTES + frame_len);
    out.put_u8(MAGIC);
    out.put_u8(frame.map_or(VERSION, |(version, _)| version));
    out.put_u8(publish.retain as u8 | (qos as u8) << 1);
    out.put_u64(origin);
    out.put_u64(sequence);
    out.put_u64(published_unix_ms);
    match frame {
        Some((_, frame)) => out.extend_from_slice(frame.as_bytes()),
        None => {
            // As `templates.get` encodes a layout: placeholder id 1, RETAIN and DUP clear.
            let layout = template_layout(with_id);
            let outbound = Outbound::default();
            encode_publish(
                out,
                publish,
                ProtocolVersion::V5,
                layout,
                false,
                false,
                &outbound,
            );
        }
    }
}

/// Starts a batch in `out` (entries follow with [`push_batch_entry`]).
pub(crate) fn begin_batch(out: &mut BytesMut) {
    out.put_u8(MAGIC);
    out.put_u8(BATCH_VERSION);
}

/// Appends `message`'s envelope to the batch in `out`.
pub(crate) fn push_batch_entry(
    out: &mut BytesMut,
    message: &Message,
    origin: u64,
    sequence: u64,
    published_unix_ms: u64,
) {
    let length_at = out.len();
    out.put_u32(0);
    encode_into(out, message, origin, sequence, published_unix_ms);
    let length = (out.len() - length_at - BATCH_ENTRY_BYTES) as u32;
    out[length_at..length_at + BATCH_ENTRY_BYTES].copy_from_slice(&length.to_be_bytes());
}

/// The envelopes in a received NATS message (one, or a batch's entries in order), each a
/// slice of `payload`.
pub(crate) fn split(mut payload: Bytes) -> Split {
    // The slices are cut with `advance` and `split_to`, not `slice`: every clone and drop of
    // a slice is an atomic operation on the received buffer's count, which the subscribers'
    // tasks (other threads) touch too when they drop the messages.
    if payload.len() >= BATCH_HEADER_BYTES && payload[0] == MAGIC && payload[1] == BATCH_VERSION {
        payload.advance(BATCH_HEADER_BYTES);
        Split::Batch(payload)
    } else {
        Split::One(Some(payload))
    }
}

/// The iterator of [`split`]. A batch whose entry runs past its end yields
/// [`EnvelopeError::TruncatedBatch`] and ends there.
#[derive(Debug)]
pub(crate) enum Split {
    /// A single envelope (not yet taken).
    One(Option<Bytes>),
    /// A batch's entries not yet taken.
    Batch(Bytes),
}

impl Iterator for Split {
    type Item = Result<Bytes, EnvelopeError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Split::One(one) => one.take().map(Ok),
            Split::Batch(rest) if rest.is_empty() => None,
            Split::Batch(rest) => {
                let length = rest
                    .get(..BATCH_ENTRY_BYTES)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
                match length {
                    Some(n) if rest.len() - BATCH_ENTRY_BYTES >= n => {
                        rest.advance(BATCH_ENTRY_BYTES);
                        Some(Ok(rest.split_to(n)))
                    }
                    _ => {
                        *rest = Bytes::new();
                        Some(Err(EnvelopeError::TruncatedBatch))
                    }
                }
            }
        }
    }
}

/// The header of `envelope`, without decoding the frame (to drop duplicates cheaply).
///
/// # Errors
/// [`EnvelopeError::Foreign`] when it is no envelope of this version.
pub(crate) fn header(envelope: &[u8]) -> Result<Header, EnvelopeError> {
    if envelope.len() < HEADER_BYTES
        || envelope[0] != MAGIC
        || !matches!(envelope[1], VERSION | V3_VERSION)
    {
        return Err(EnvelopeError::Foreign(
            envelope.get(1).copied().unwrap_or(0),
        ));
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&envelope[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    Ok(Header {
        origin: u64_at(3),
        sequence: u64_at(11),
        published_unix_ms: u64_at(19),
    })
}

/// Whether `payload` (a received NATS message) is a reference to an envelope kept in the
/// object store.
pub(crate) fn is_reference(payload: &[u8]) -> bool {
    payload.len() >= 2 && payload[0] == MAGIC && payload[1] == REFERENCE_VERSION
}

/// The origin node and sequence of the message a reference stands for (read without
/// fetching it, to skip a copy already routed); `None` for anything else.
pub(crate) fn reference_identity(payload: &[u8]) -> Option<(u64, u64)> {
    if !is_reference(payload) || payload.len() < HEADER_BYTES {
        return None;
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&payload[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    Some((u64_at(3), u64_at(11)))
}

/// The reference standing for `envelope` (a whole envelope of version `1` or `3`) kept in
/// the object store under `name`: its header with version `4`, then `name`.
///
/// # Errors
/// [`EnvelopeError::Foreign`] when `envelope` is no whole envelope;
/// [`EnvelopeError::BadReference`] for an empty name.
pub(crate) fn encode_reference(envelope: &[u8], name: &str) -> Result<Bytes, EnvelopeError> {
    header(envelope)?;
    if name.is_empty() {
        return Err(EnvelopeError::BadReference);
    }
    let mut out = BytesMut::with_capacity(HEADER_BYTES + name.len());
    out.put_u8(MAGIC);
    out.put_u8(REFERENCE_VERSION);
    out.extend_from_slice(&envelope[2..HEADER_BYTES]);
    out.extend_from_slice(name.as_bytes());
    Ok(out.freeze())
}

/// The object name in `reference`.
///
/// # Errors
/// [`EnvelopeError::Foreign`] when it is no reference, [`EnvelopeError::BadReference`] when
/// its name is missing or not UTF-8.
pub(crate) fn reference_name(reference: &[u8]) -> Result<&str, EnvelopeError> {
    if reference.len() < HEADER_BYTES || !is_reference(reference) {
        return Err(EnvelopeError::Foreign(
            reference.get(1).copied().unwrap_or(0),
        ));
    }
    match std::str::from_utf8(&reference[HEADER_BYTES..]) {
        Ok(name) if !name.is_empty() => Ok(name),
        _ => Err(EnvelopeError::BadReference),
    }
}

/// Whether `envelope` (fetched from the object store) is a whole envelope with the flags,
/// origin, sequence and publish time `reference` names: not another message's, nor
/// garbled.
pub(crate) fn stands_for(reference: &[u8], envelope: &[u8]) -> bool {
    header(envelope).is_ok()
        && reference_name(reference).is_ok()
        && envelope[2..HEADER_BYTES] == reference[2..HEADER_BYTES]
}

/// The message in `envelope`, as received at `now` (Unix time `unix_now_ms`, read once for
/// a whole batch; its age since publication is kept, for Message Expiry). No Local does
/// not apply: it comes from no session of this node.
///
/// # Errors
/// A foreign envelope, bad QoS bits or a frame that does not decode.
pub(crate) fn decode(
    envelope: Bytes,
    now: Instant,
    unix_now_ms: u64,
) -> Result<Arc<Message>, EnvelopeError> {
    let header = header(&envelope)?;
    let flags = envelope[2];
    let qos = match (flags >> 1) & 0b11 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(EnvelopeError::InvalidQoS),
    };
    let version = match envelope[1] {
        V3_VERSION => ProtocolVersion::V3_1_1,
        _ => ProtocolVersion::V5,
    };
    let mut frame = envelope;
    frame.advance(HEADER_BYTES);
    let mut publish = Publish::decode_whole_frame(frame, version)?;
    let packet_id = publish
        .packet_id()
        .or((qos != QoS::AtMostOnce).then_some(PacketId::MIN));
    if let Some(qos) = PublishQoS::new(qos, packet_id) {
        publish.set_qos(qos);
    }
    publish.retain = flags & 1 != 0;
    publish.dup = false;
    let age = Duration::from_millis(unix_now_ms.saturating_sub(header.published_unix_ms));
    let received_at = now.checked_sub(age).unwrap_or(now);
    let message = Message::new(publish, received_at, None);
    if qos != QoS::AtMostOnce {
        // Kept for a handover (QoS 0 is never queued for a session nor handed over).
        let _ = message.set_identity((header.origin, header.sequence));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::{ByteStr, PublishProperties};

    fn message(qos: QoS, retain: bool) -> Arc<Message> {
        let mut publish = Publish::new(ByteStr::from("a/b.c"), Bytes::from_static(b"payload"));
        let id = (qos != QoS::AtMostOnce).then_some(PacketId::MIN);
        publish.set_qos(PublishQoS::new(qos, id).expect("qos"));
        publish.retain = retain;
        *publish.properties_mut() = PublishProperties {
            content_type: Some(ByteStr::from("text/plain")),
            ..PublishProperties::default()
        };
        Message::new(publish, Instant::now(), Some(7))
    }

    #[test]
    fn round_trip_keeps_the_message() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for retain in [false, true] {
                let sent = message(qos, retain);
                let wire = encode(&sent, 42, 9, Instant::now());
                let h = header(&wire).expect("header");
                assert_eq!((h.origin, h.sequence), (42, 9));
                let got = decode(wire, Instant::now(), unix_ms_now()).expect("decode");
                assert_eq!(got.publish().topic(), "a/b.c");
                assert_eq!(got.publish().payload(), b"payload");
                assert_eq!(got.qos(), qos);
                assert_eq!(got.publish().retain, retain);
                assert_eq!(
                    got.publish().properties().content_type(),
                    Some("text/plain")
                );
                assert_eq!(got.origin_session, None);
            }
        }
    }

    /// A message with no 5.0 template yet is encoded straight into the envelope, byte for
    /// byte as the template `templates.get` builds would be, and keeps no copy.
    #[test]
    fn an_envelope_without_a_template_is_the_same_bytes() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for retain in [false, true] {
                let direct = message(qos, retain);
                let now = Instant::now();
                let mut first = BytesMut::new();
                encode_into(&mut first, &direct, 1, 2, 3);
                assert!(direct
                    .templates
                    .peek(Family::V5, qos != QoS::AtMostOnce)
                    .is_none());
                let built = message(qos, retain);
                built.templates.get(Family::V5, qos != QoS::AtMostOnce);
                let mut second = BytesMut::new();
                encode_into(&mut second, &built, 1, 2, 3);
                assert_eq!(first, second, "{qos:?} retain {retain}");
                assert_eq!(encoded_len(&direct), first.len(), "measured as encoded");
                assert!(len_bound(&direct) >= first.len());
                let got = decode(first.freeze(), now, unix_ms_now()).expect("decode");
                assert_eq!((got.qos(), got.publish().retain), (qos, retain));
            }
        }
    }

    /// A 3.x publisher's message crosses as the frame the client sent (neither node
    /// encodes it again) and arrives as a message whose 3.x template is those bytes, while
    /// 5.0 subscribers still get a 5.0 encoding of it.
    #[test]
    fn a_3x_frame_crosses_as_received() {
        use tern_codec::Packet;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let id = (qos != QoS::AtMostOnce).then(|| PacketId::new(7).expect("non-zero"));
            let mut sent = Publish::new("a/b.c", &b"payload"[..]);
            sent.set_qos(PublishQoS::new(qos, id).expect("qos"));
            sent.retain = true;
            let frame: Bytes = Packet::Publish(sent)
                .to_bytes(ProtocolVersion::V3_1_1)
                .into();
            let publish = Publish::decode_whole_frame(frame.clone(), ProtocolVersion::V3_1_1)
                .expect("a 3.1.1 frame");
            let message = Message::new(publish, Instant::now(), Some(7));
            let wire = encode(&message, 4, 5, Instant::now());
            assert_eq!(wire.len(), encoded_len(&message));
            assert!(len_bound(&message) >= wire.len());
            assert_eq!(&wire[HEADER_BYTES..], &frame[..], "the frame as received");
            assert!(message.templates.peek(Family::V5, id.is_some()).is_none());
            let h = header(&wire).expect("header");
            assert_eq!((h.origin, h.sequence), (4, 5));
            let got = decode(wire, Instant::now(), unix_ms_now()).expect("decode");
            assert_eq!((got.qos(), got.publish().retain), (qos, true));
            assert_eq!(got.publish().topic(), "a/b.c");
            assert_eq!(got.publish().payload(), b"payload");
            assert!(got.templates.is_raw(Family::V3, id.is_some()));
            let v5 = got.templates.get(Family::V5, id.is_some());
            let again = Publish::decode_whole_frame(v5.as_bytes().clone(), ProtocolVersion::V5)
                .expect("a 5.0 frame");
            assert_eq!(again.payload(), b"payload");
        }
    }

    #[test]
    fn a_batch_splits_into_its_envelopes_in_order() {
        let now = Instant::now();
        let unix = unix_ms_now();
        let mut out = BytesMut::new();
        begin_batch(&mut out);
        let messages = [
            message(QoS::AtMostOnce, false),
            message(QoS::AtLeastOnce, true),
            message(QoS::ExactlyOnce, false),
        ];
        let mut expected_len = BATCH_HEADER_BYTES;
        for (i, m) in messages.iter().enumerate() {
            push_batch_entry(
                &mut out,
                m,
                3,
                10 + i as u64,
                published_unix_ms(m, now, unix),
            );
            expected_len += BATCH_ENTRY_BYTES + encoded_len(m);
        }
        assert_eq!(out.len(), expected_len);
        let entries: Vec<_> = split(out.freeze()).collect();
        assert_eq!(entries.len(), 3);
        for (i, entry) in entries.into_iter().enumerate() {
            let entry = entry.expect("entry");
            assert_eq!(header(&entry).expect("header").sequence, 10 + i as u64);
            let got = decode(entry, now, unix).expect("decode");
            assert_eq!(got.qos(), messages[i].qos());
            assert_eq!(got.publish().retain, messages[i].publish().retain);
            assert_eq!(got.publish().payload(), b"payload");
        }
        // A single envelope is one entry; a cut batch ends with an error.
        let single = encode(&messages[0], 1, 1, now);
        assert_eq!(split(single.clone()).collect::<Vec<_>>(), vec![Ok(single)]);
        let mut cut = BytesMut::new();
        begin_batch(&mut cut);
        push_batch_entry(&mut cut, &messages[0], 1, 1, unix);
        cut.truncate(cut.len() - 1);
        let entries: Vec<_> = split(cut.freeze()).collect();
        assert_eq!(entries, vec![Err(EnvelopeError::TruncatedBatch)]);
    }

    /// A reference carries the header of the envelope it stands for and the object's name;
    /// only that envelope matches it; it is no envelope itself.
    #[test]
    fn a_reference_names_its_object_and_matches_only_its_envelope() {
        let now = Instant::now();
        let wire = encode(&message(QoS::ExactlyOnce, false), 42, 9, now);
        let reference = encode_reference(&wire, "000000000000002a.9").expect("reference");
        assert!(is_reference(&reference));
        assert!(!is_reference(&wire));
        assert_eq!(reference.len(), HEADER_BYTES + "000000000000002a.9".len());
        assert_eq!(reference_name(&reference), Ok("000000000000002a.9"));
        assert_eq!(reference_identity(&reference), Some((42, 9)));
        assert_eq!(reference_identity(&wire), None);
        assert_eq!(reference_identity(&reference[..HEADER_BYTES - 1]), None);
        assert!(stands_for(&reference, &wire));
        // Another message (another sequence), or the same one garbled, is not it.
        let other = encode(&message(QoS::ExactlyOnce, false), 42, 10, now);
        assert!(!stands_for(&reference, &other));
        assert!(!stands_for(&reference, &wire[..HEADER_BYTES - 1]));
        assert!(!stands_for(&reference, b"garbage"));
        // A reference is not an envelope: what reads headers refuses it as foreign.
        assert_eq!(header(&reference), Err(EnvelopeError::Foreign(4)));
        assert_eq!(
            split(reference.clone()).collect::<Vec<_>>(),
            vec![Ok(reference.clone())]
        );
    }

    /// A reference from an unknown source: too short, without a name, a name that is not
    /// UTF-8, or no reference at all, is refused, never misread.
    #[test]
    fn a_garbled_reference_is_refused() {
        let wire = encode(&message(QoS::AtLeastOnce, false), 1, 1, Instant::now());
        assert_eq!(
            encode_reference(&wire, ""),
            Err(EnvelopeError::BadReference)
        );
        assert_eq!(
            encode_reference(b"nope", "x"),
            Err(EnvelopeError::Foreign(b'o'))
        );
        let reference = encode_reference(&wire, "n").expect("reference");
        let nameless = &reference[..HEADER_BYTES];
        assert_eq!(reference_name(nameless), Err(EnvelopeError::BadReference));
        assert!(!stands_for(nameless, &wire));
        let mut bad_utf8 = BytesMut::from(&reference[..]);
        bad_utf8[HEADER_BYTES] = 0xff;
        assert_eq!(reference_name(&bad_utf8), Err(EnvelopeError::BadReference));
        assert_eq!(
            reference_name(&reference[..HEADER_BYTES - 3]),
            Err(EnvelopeError::Foreign(4))
        );
        assert_eq!(reference_name(&wire), Err(EnvelopeError::Foreign(VERSION)));
    }

    #[test]
    fn foreign_bytes_are_refused() {
        assert!(header(b"nope").is_err());
        let mut wire =
            BytesMut::from(&encode(&message(QoS::AtMostOnce, false), 1, 1, Instant::now())[..]);
        wire[2] = 0b110;
        assert_eq!(
            decode(wire.freeze(), Instant::now(), unix_ms_now()).err(),
            Some(EnvelopeError::InvalidQoS)
        );
    }
}
