//! The shared ring of one bridge subscription, and the encode-once step that fills it.
//!
//! A [`Ring`] is what a set of bridge filters (one SSE request, one WebSocket client's
//! subscriptions) looks like to the router: one trie entry per filter, all pointing at the
//! same ring. Routing a message that matches it encodes the message once as JSON (shared by
//! every ring it goes to, see [`deliver`]) and once per ring as an SSE frame (the frame
//! carries the ring's event id), pushes both, and wakes the ring's clients through one
//! coalesced `watch` notification. A client is only a cursor (a sequence number) into the
//! ring: clients with the same filter set share one ring and nothing is queued per client.
//!
//! The ring is bounded by a message count and a byte count; the oldest entries go first. A
//! client whose cursor fell behind the oldest entry skips ahead and is told how many it
//! missed ([`Next::Lagged`]).
//!
//! Every ring has one reader identity (a user name, or anonymous) and admits only what that
//! reader may read ([`Readable`], kept with the entries under the ring's lock). A reload of
//! the ACL swaps it ([`Ring::set_readable`]) and blanks the entries already held that the new
//! rules forbid, so a client behind its cursor never reads them.
//!
//! This module owns the ring and the JSON/SSE encoding. It does not own the registry of rings
//! (see [`super::Bridges`]) or any I/O (the ring holds the list of its parked SSE subscribers,
//! [`super::sse_park`] serves them).

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use tern_codec::Publish;
use tokio::sync::watch;

use super::read_acl::Readable;
use super::sse_park::Parking;
use crate::message::Message;

/// Event ids of one ring are `id << RING_ID_SHIFT` plus a sequence number starting at 1, so
/// an id from another ring (or an earlier ring of the same filters) is recognised as such.
const RING_ID_SHIFT: u32 = 32;

/// The JSON prefix every encoded message starts with; the SSE `data:` line drops it.
const MESSAGE_PREFIX: &[u8] = b"{\"type\":\"message\",";

/// One message in a ring, encoded for every bridge format.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The event id (see [`Ring::first_id`]).
    pub id: u64,
    /// `{"type":"message","topic":...}`: a WebSocket text frame as is, or a batch element.
    pub json: Bytes,
    /// `id: N\nevent: message\ndata: {"topic":...}\n\n`: a whole SSE event.
    pub sse: Bytes,
}

/// What a client's cursor finds next.
#[derive(Debug)]
pub enum Next {
    /// The entry at the cursor (the cursor moved past it).
    Entry(Entry),
    /// The cursor was behind the oldest entry: it skipped this many messages forward.
    Lagged(u64),
    /// Nothing new.
    Empty,
}

/// Bounds of a ring.
#[derive(Debug, Clone, Copy)]
pub struct RingLimits {
    /// Most entries held.
    pub max_messages: usize,
    /// Most bytes held (JSON plus SSE encodings); at least one entry is always kept.
    pub max_bytes: usize,
}

#[derive(Debug)]
struct State {
    /// Which messages may enter; read under this lock by every push, so a swap
    /// ([`Ring::set_readable`]) and the blanking of entries it forbids are atomic with
    /// respect to publishers.
    readable: Readable,
    /// Entries in id order; a blanked entry (forbidden by a reloaded ACL) has empty
    /// encodings and is skipped by readers.
    entries: VecDeque<Entry>,
    /// The id of `entries[0]`, or of the next entry when empty.
    first_id: u64,
    /// The id the next pushed entry gets.
    next_id: u64,
    bytes: usize,
}

/// The ring of one bridge filter set.
#[derive(Debug)]
pub struct Ring {
    /// Unique among the rings of a broker; the trie key of this ring's entries.
    pub id: u64,
    /// The filters, sorted and without duplicates (with `reader`, the registry key).
    pub filters: Arc<[Box<str>]>,
    /// Whose read ACL applies: the user name, `None` for anonymous. Kept so that a reload
    /// can re-derive the ACL ([`super::Bridges::reapply_acl`]).
    pub reader: Option<Box<str>>,
    limits: RingLimits,
    state: Mutex<State>,
    /// Bumped after each push: one coalesced wake-up for every client of the ring.
    wake: watch::Sender<()>,
    /// Clients holding a cursor; changed only under the registry lock.
    pub(super) clients: AtomicUsize,
    /// The ring's idle SSE subscribers (lean path), served by one writer task: see
    /// [`super::sse_park`]. The ring only holds the list.
    pub(super) parking: Parking,
}

impl Ring {
    /// An empty ring of `filters` read by `reader`, admitting what `readable` lets through.
    pub fn new(
        id: u64,
        filters: Arc<[Box<str>]>,
        reader: Option<Box<str>>,
        limits: RingLimits,
        readable: Readable,
    ) -> Ring {
        let first = (id << RING_ID_SHIFT) + 1;
        Ring {
            id,
            filters,
            reader,
            limits,
            state: Mutex::new(State {
                readable,
                entries: VecDeque::new(),
                first_id: first,
                next_id: first,
                bytes: 0,
            }),
            wake: watch::Sender::new(()),
            clients: AtomicUsize::new(0),
            parking: Parking::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that sees a change after every push.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.wake.subscribe()
    }

    /// The id the next message will get: a cursor starting here sees only new messages.
    pub fn next_id(&self) -> u64 {
        self.state().next_id
    }

    /// Where a client that last saw event `last_id` resumes: `Some(cursor)` when the id
    /// belongs to this ring (the cursor may be behind the oldest entry: the first read then
    /// reports how many were lost), `None` when it does not.
    pub fn resume_cursor(&self, last_id: u64) -> Option<u64> {
        let state = self.state();
        let ours = last_id >> RING_ID_SHIFT == self.id;
        (ours && last_id < state.next_id).then_some(last_id + 1)
    }

    /// Appends one message to `topic` encoded as `json` (which starts with
    /// [`MESSAGE_PREFIX`]) if the reader may read it, dropping the oldest entries over the
    /// limits, and wakes the clients. Returns how many old entries were dropped, or `None`
    /// when the reader may not read the message (nothing changed).
    fn push(&self, topic: &str, json: &Bytes) -> Option<usize> {
        let mut dropped = 0;
        {
            let mut state = self.state();
            if !state.readable.allows(topic) {
                return None;
            }
            let id = state.next_id;
            let sse = sse_frame(id, json);
            let size = json.len() + sse.len();
            state.next_id += 1;
            state.bytes += size;
            state.entries.push_back(Entry {
                id,
                json: json.clone(),
                sse,
            });
            while state.entries.len() > self.limits.max_messages
                || (state.bytes > self.limits.max_bytes && state.entries.len() > 1)
            {
                let Some(old) = state.entries.pop_front() else {
                    break;
                };
                state.bytes -= old.json.len() + old.sse.len();
                state.first_id = old.id + 1;
                dropped += 1;
            }
            if let Some(front) = state.entries.front() {
                state.first_id = front.id;
            }
        }
        self.wake.send_replace(());
        Some(dropped)
    }

    /// Puts `readable` in force for the messages routed from now on, and blanks the entries
    /// held that it forbids (readers skip them). Returns how many entries were blanked.
    pub fn set_readable(&self, readable: Readable) -> usize {
        let mut state = self.state();
        if state.readable == readable {
            return 0;
        }
        let mut blanked = 0;
        let mut freed = 0;
        if !matches!(readable, Readable::All) {
            for entry in state.entries.iter_mut() {
                if entry.json.is_empty() {
                    continue;
                }
                let allowed = entry_topic(&entry.json).is_some_and(|t| readable.allows(&t));
                if !allowed {
                    freed += entry.json.len() + entry.sse.len();
                    entry.json = Bytes::new();
                    entry.sse = Bytes::new();
                    blanked += 1;
                }
            }
        }
        state.bytes -= freed;
        state.readable = readable;
        blanked
    }

    /// What the ring admits now.
    pub fn readable(&self) -> Readable {
        self.state().readable.clone()
    }

    /// The next entry at `cursor`, moving it forward.
    pub fn next(&self, cursor: &mut u64) -> Next {
        let state = self.state();
        if *cursor < state.first_id {
            let missed = state.first_id - *cursor;
            *cursor = state.first_id;
            return Next::Lagged(missed);
        }
        let mut index = (*cursor - state.first_id) as usize;
        loop {
            match state.entries.get(index) {
                // Blanked by an ACL reload: never sent.
                Some(entry) if entry.json.is_empty() => {
                    *cursor = entry.id + 1;
                    index += 1;
                }
                Some(entry) => {
                    *cursor = entry.id + 1;
                    return Next::Entry(entry.clone());
                }
                None => return Next::Empty,
            }
        }
    }

    /// Entries held (for tests and stats).
    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    /// Whether the ring holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::router::BridgeSink for Ring {
    fn id(&self) -> u64 {
        self.id
    }

    /// Encodes the message as JSON on first use (once for every ring it reaches).
    fn push(&self, message: &Message, encoded: &mut Option<Bytes>) -> Option<usize> {
        let publish = message.publish();
        let json = encoded.get_or_insert_with(|| encode_json(publish, false));
        Ring::push(self, publish.topic(), json)
    }
}

/// The topic of an encoded message: [`encode_json`] writes it first after
/// [`MESSAGE_PREFIX`], so only that string is parsed. `None` if `json` is not such an
/// encoding.
fn entry_topic(json: &[u8]) -> Option<String> {
    use serde::Deserialize;
    let rest = json
        .strip_prefix(MESSAGE_PREFIX)?
        .strip_prefix(b"\"topic\":")?;
    let mut de = serde_json::Deserializer::from_slice(rest);
    String::deserialize(&mut de).ok()
}

/// `id: N\nevent: message\ndata: {"topic":...}\n\n` from the shared JSON.
fn sse_frame(id: u64, json: &Bytes) -> Bytes {
    let body = json.get(MESSAGE_PREFIX.len()..).unwrap_or_default();
    let mut out = BytesMut::with_capacity(body.len() + 48);
    out.put_slice(b"id: ");
    out.put_slice(id.to_string().as_bytes());
    out.put_slice(b"\nevent: message\ndata: {");
    out.put_slice(body);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// An SSE event for a message sent outside the ring (a retained message on subscribe): no
/// `id:` line, so it does not disturb `Last-Event-ID`.
pub fn sse_event_without_id(json: &Bytes) -> Bytes {
    let body = json.get(MESSAGE_PREFIX.len()..).unwrap_or_default();
    let mut out = BytesMut::with_capacity(body.len() + 32);
    out.put_slice(b"event: message\ndata: {");
    out.put_slice(body);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// The `lagged` notice: `missed` is `None` when the count is unknown (an event id from
/// another stream).
pub fn lagged_json(missed: Option<u64>) -> String {
    match missed {
        Some(n) => format!("{{\"type\":\"lagged\",\"missed\":{n}}}"),
        None => "{\"type\":\"lagged\",\"missed\":null}".to_string(),
    }
}

/// The SSE form of [`lagged_json`].
pub fn lagged_sse(missed: Option<u64>) -> Bytes {
    let data = match missed {
        Some(n) => format!("{{\"missed\":{n}}}"),
        None => "{\"missed\":null}".to_string(),
    };
    Bytes::from(format!("event: lagged\ndata: {data}\n\n"))
}

/// Encodes a message as `{"type":"message","topic":..,"payload":..,["encoding":"base64",]
/// "qos":..,"retain":..,"properties":{..}}`. The payload is a JSON string when it is UTF-8,
/// else base64. `retain` is the flag as delivered: false on live delivery (as for an MQTT
/// subscription without Retain As Published), true for a retained message sent on subscribe.
pub fn encode_json(publish: &Publish, retain: bool) -> Bytes {
    let mut out = Vec::with_capacity(publish.topic().len() + publish.payload().len() + 96);
    out.extend_from_slice(MESSAGE_PREFIX);
    out.extend_from_slice(b"\"topic\":");
    push_json_str(&mut out, publish.topic());
    out.extend_from_slice(b",\"payload\":");
    match std::str::from_utf8(publish.payload()) {
        Ok(text) => push_json_str(&mut out, text),
        Err(_) => {
            out.push(b'"');
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(publish.payload())
                    .as_bytes(),
            );
            out.extend_from_slice(b"\",\"encoding\":\"base64\"");
        }
    }
    out.extend_from_slice(b",\"qos\":");
    out.push(b'0' + publish.qos() as u8);
    out.extend_from_slice(if retain {
        b",\"retain\":true"
    } else {
        b",\"retain\":false"
    });
    out.extend_from_slice(b",\"properties\":{");
    push_properties(&mut out, publish);
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// The 5.0 properties a bridge client can use (the Topic Alias and Subscription Identifiers
/// are per connection and left out). Correlation data is base64.
fn push_properties(out: &mut Vec<u8>, publish: &Publish) {
    let p = publish.properties();
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, name: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        push_json_str(out, name);
        out.push(b':');
    };
    if let Some(v) = p.payload_format_indicator() {
        key(out, "payload_format_indicator");
        out.extend_from_slice(v.to_string().as_bytes());
    }
    if let Some(v) = p.message_expiry_interval_secs() {
        key(out, "message_expiry_interval");
        out.extend_from_slice(v.to_string().as_bytes());
    }
    if let Some(v) = p.content_type() {
        key(out, "content_type");
        push_json_str(out, v);
    }
    if let Some(v) = p.response_topic() {
        key(out, "response_topic");
        push_json_str(out, v);
    }
    if let Some(v) = p.correlation_data() {
        key(out, "correlation_data");
        push_json_str(out, &base64::engine::general_purpose::STANDARD.encode(v));
    }
    if p.user_properties().next().is_some() {
        key(out, "user_properties");
        out.push(b'[');
        for (i, (k, v)) in p.user_properties().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            push_json_str(out, k);
            out.push(b',');
            push_json_str(out, v);
            out.push(b']');
        }
        out.push(b']');
    }
}

/// Appends `text` as a JSON string literal, copying runs that need no escaping at once.
pub fn push_json_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::router::BridgeSink;

    /// Routes `message` to `rings` as the router does.
    fn deliver(message: &Message, rings: &mut Vec<Arc<Ring>>, metrics: &Metrics) -> usize {
        let mut sinks: Vec<Arc<dyn BridgeSink>> =
            rings.drain(..).map(|r| r as Arc<dyn BridgeSink>).collect();
        crate::router::deliver_to_bridges(std::slice::from_ref(&message), &mut sinks, metrics)
    }
    use tern_codec::{PacketId, PublishQoS};

    fn ring(max_messages: usize) -> Ring {
        Ring::new(
            7,
            Arc::from(vec![Box::<str>::from("a/#")]),
            None,
            RingLimits {
                max_messages,
                max_bytes: 1 << 20,
            },
            Readable::All,
        )
    }

    fn message(payload: &'static [u8]) -> Arc<Message> {
        Message::broker_made("a/b", payload, false, tokio::time::Instant::now())
    }

    #[test]
    fn json_encoding() {
        let mut publish = Publish::new("t/\"q\"", Bytes::from_static(b"hi\n"))
            .with_qos(PublishQoS::AtLeastOnce(PacketId::MIN));
        publish.properties_mut().content_type = Some("text/plain".into());
        publish
            .properties_mut()
            .user_properties
            .push(("k".into(), "v".into()));
        let json = encode_json(&publish, false);
        assert_eq!(
            &json[..],
            br#"{"type":"message","topic":"t/\"q\"","payload":"hi\n","qos":1,"retain":false,"properties":{"content_type":"text/plain","user_properties":[["k","v"]]}}"#
        );
        let binary = Publish::new("b", Bytes::from_static(&[0xff, 0x00]));
        let json = encode_json(&binary, true);
        assert_eq!(
            &json[..],
            br#"{"type":"message","topic":"b","payload":"/wA=","encoding":"base64","qos":0,"retain":true,"properties":{}}"#
        );
        let mut out = Vec::new();
        push_json_str(&mut out, "\u{1}é");
        assert_eq!(out, "\"\\u0001é\"".as_bytes());
    }

    #[test]
    fn sse_frame_carries_the_id() {
        let json = encode_json(&Publish::new("x", Bytes::from_static(b"1")), false);
        let frame = sse_frame(42, &json);
        assert_eq!(
            &frame[..],
            b"id: 42\nevent: message\ndata: {\"topic\":\"x\",\"payload\":\"1\",\"qos\":0,\"retain\":false,\"properties\":{}}\n\n"
        );
    }

    #[test]
    fn cursor_reads_lags_and_resumes() {
        let ring = Arc::new(ring(3));
        let metrics = Metrics::default();
        let mut cursor = ring.next_id();
        let first = cursor;
        assert!(matches!(ring.next(&mut cursor), Next::Empty));
        for _ in 0..5 {
            deliver(
                &message(b"m"),
                &mut vec![ring.clone(), ring.clone()],
                &metrics,
            );
        }
        // Pushed once per ring even when listed twice.
        assert_eq!(Metrics::get(&metrics.bridge_messages), 5);
        assert_eq!(ring.len(), 3);
        assert!(matches!(ring.next(&mut cursor), Next::Lagged(2)));
        for offset in 2..5 {
            match ring.next(&mut cursor) {
                Next::Entry(e) => assert_eq!(e.id, first + offset),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(ring.next(&mut cursor), Next::Empty));
        assert_eq!(ring.resume_cursor(first + 3), Some(first + 4));
        assert_eq!(ring.resume_cursor(first + 5), None, "not issued yet");
        assert_eq!(ring.resume_cursor(5), None, "another ring's id");
    }

    #[test]
    fn byte_limit_keeps_at_least_one() {
        let ring = Arc::new(Ring::new(
            1,
            Arc::from(vec![Box::<str>::from("#")]),
            None,
            RingLimits {
                max_messages: 100,
                max_bytes: 10,
            },
            Readable::All,
        ));
        let metrics = Metrics::default();
        for _ in 0..3 {
            deliver(&message(b"one"), &mut vec![ring.clone()], &metrics);
        }
        assert_eq!(ring.len(), 1);
        assert_eq!(Metrics::get(&metrics.bridge_ring_evictions), 2);
    }

    fn acl(text: &str) -> Arc<crate::auth::ClientAcl> {
        let file = crate::auth::AclFile::parse(text, std::path::Path::new("acl")).expect("acl");
        Arc::new(file.for_client("c", None))
    }

    #[test]
    fn entry_topic_reads_the_escaped_topic() {
        let json = encode_json(&Publish::new("a/\"q\"/é", Bytes::from_static(b"x")), false);
        assert_eq!(entry_topic(&json).as_deref(), Some("a/\"q\"/é"));
        assert_eq!(entry_topic(b"{}"), None);
    }

    #[test]
    fn narrowing_blanks_held_entries_and_filters_new_ones() {
        let ring = Arc::new(ring(10));
        let metrics = Metrics::default();
        let mut cursor = ring.next_id();
        for topic in ["a/public/1", "a/secret/1", "a/public/2"] {
            let m = Message::broker_made(topic, "m", false, tokio::time::Instant::now());
            deliver(&m, &mut vec![ring.clone()], &metrics);
        }
        let narrowed = Readable::Checked(acl("topic read a/public/#\n"));
        assert_eq!(ring.set_readable(narrowed.clone()), 1);
        assert_eq!(ring.set_readable(narrowed), 0, "same rules: nothing to do");
        let m = Message::broker_made("a/secret/2", "m", false, tokio::time::Instant::now());
        assert_eq!(deliver(&m, &mut vec![ring.clone()], &metrics), 0);
        assert_eq!(Metrics::get(&metrics.acl_denied), 1);
        let mut seen = Vec::new();
        while let Next::Entry(e) = ring.next(&mut cursor) {
            seen.push(entry_topic(&e.json).expect("topic"));
        }
        assert_eq!(seen, ["a/public/1", "a/public/2"]);
        assert_eq!(ring.set_readable(Readable::Nothing), 2);
        let m = Message::broker_made("a/public/3", "m", false, tokio::time::Instant::now());
        assert_eq!(deliver(&m, &mut vec![ring.clone()], &metrics), 0);
        ring.set_readable(Readable::All);
        assert_eq!(
            deliver(&m, &mut vec![ring.clone()], &metrics),
            1,
            "widened again"
        );
        assert!(matches!(ring.next(&mut cursor), Next::Entry(_)));
    }

    /// A swap racing publishers on other threads: once `set_readable` returns, the ring
    /// holds nothing the new rules forbid, and nothing forbidden enters it afterwards.
    #[test]
    fn no_forbidden_entry_survives_a_swap_under_concurrent_pushes() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let ring = Arc::new(ring(100_000));
        let stop = Arc::new(AtomicBool::new(false));
        let publishers: Vec<_> = (0..2)
            .map(|_| {
                let (ring, stop) = (ring.clone(), stop.clone());
                std::thread::spawn(move || {
                    let metrics = Metrics::default();
                    let now = tokio::time::Instant::now();
                    let secret = Message::broker_made("a/secret/x", "s", false, now);
                    let public = Message::broker_made("a/public/x", "p", false, now);
                    while !stop.load(Ordering::Relaxed) {
                        deliver(&secret, &mut vec![ring.clone()], &metrics);
                        deliver(&public, &mut vec![ring.clone()], &metrics);
                    }
                })
            })
            .collect();
        while ring.len() < 1000 {
            std::thread::yield_now();
        }
        ring.set_readable(Readable::Checked(acl("topic read a/public/#\n")));
        let scan = |ring: &Ring| {
            let mut cursor = (ring.id << RING_ID_SHIFT) + 1;
            let mut read = 0;
            loop {
                match ring.next(&mut cursor) {
                    Next::Entry(e) => {
                        assert_eq!(entry_topic(&e.json).as_deref(), Some("a/public/x"));
                        read += 1;
                    }
                    Next::Lagged(_) => {}
                    Next::Empty => return read,
                }
            }
        };
        // Until the publishers (maybe starved on a loaded machine) have pushed after the
        // swap; every scan checks that nothing forbidden is in the ring.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while scan(&ring) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no entry after the swap"
            );
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        for publisher in publishers {
            publisher.join().expect("publisher");
        }
        assert!(scan(&ring) > 0);
    }
}
