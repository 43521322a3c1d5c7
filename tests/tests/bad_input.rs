//! Bad input (DESIGN.md "Bad input"): malformed packets, protocol violations and oversized
//! packets end in the spec's reaction (5.0: DISCONNECT with the right reason code; 3.1.1:
//! the connection is closed), never a panic, never an unbounded allocation, never another
//! client affected.
//!
//! The storm test feeds thousands of connections of random and mutated bytes from a seeded
//! PRNG; set `TERN_FUZZ_SEED` to replay a run (the seed is printed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_broker::metrics::Metrics;
use tern_codec::{
    Connect, Decoder, Packet, PacketId, ProtocolVersion, Publish, PublishQoS, QoS, ReasonCode,
    Subscribe, SubscriptionOptions,
};
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Panics anywhere in this process (broker tasks included), counted by a hook.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    /// Up to `max - 1` random bytes.
    fn bytes_below(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.byte()).collect()
    }
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

/// A packet with fixed header byte `byte0` and `body`.
fn frame(byte0: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte0];
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A 5.0 PUBLISH body: topic, packet id (QoS > 0), properties, payload.
fn publish_body_v5(topic: &[u8], packet_id: Option<u16>, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic, &mut body);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    varint(props.len(), &mut body);
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    body
}

fn connect_bytes(version: ProtocolVersion, id: &str) -> Vec<u8> {
    let mut connect = Connect::new(version, id);
    connect.keep_alive_secs = 0;
    Packet::Connect(Box::new(connect))
        .to_bytes(version)
        .to_vec()
}

/// A valid packet of a random kind, to be mutated.
fn valid_packet(rng: &mut Rng, version: ProtocolVersion) -> Vec<u8> {
    let id = PacketId::new(1 + rng.below(1000) as u16).expect("id");
    let packet = match rng.below(6) {
        0 | 1 => {
            let mut publish = Publish::new("fuzz/topic", rng.bytes_below(64));
            let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][rng.below(3)];
            publish.set_qos(PublishQoS::with_id(qos, id));
            publish.retain = rng.below(4) == 0;
            if version.is_v5() {
                publish.properties_mut().content_type = Some("text/plain".into());
                publish.properties_mut().user_properties = vec![("k".into(), "v".into())];
            }
            Packet::Publish(publish)
        }
        2 => Packet::Subscribe(Box::new(Subscribe {
            packet_id: id,
            properties: Default::default(),
            filters: vec![(
                "fuzz/+/x".into(),
                SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            )],
        })),
        3 => Packet::Unsubscribe(Box::new(tern_codec::Unsubscribe {
            packet_id: id,
            properties: Default::default(),
            filters: vec!["fuzz/#".into()],
        })),
        4 => Packet::PubRel(tern_codec::PubRel::new(id)),
        _ => Packet::PingReq,
    };
    packet.to_bytes(version).to_vec()
}

/// One way of breaking a valid packet.
fn mutate(rng: &mut Rng, mut packet: Vec<u8>) -> Vec<u8> {
    match rng.below(8) {
        // Flip a few bytes anywhere (header included).
        0 | 1 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(packet.len());
                packet[at] ^= 1 << rng.below(8);
            }
            packet
        }
        // Truncate, then say nothing more.
        2 => {
            let keep = rng.below(packet.len());
            packet.truncate(keep);
            packet
        }
        // A huge remaining length, a few bytes of body.
        3 => {
            let mut out = vec![packet[0], 0xFF, 0xFF, 0xFF, 0x7F];
            out.extend(rng.bytes_below(16));
            out
        }
        // Reserved flags set.
        4 => {
            packet[0] ^= 1 + rng.below(15) as u8;
            packet
        }
        // QoS 3 on a PUBLISH.
        5 => {
            let mut out = frame(0x36, &publish_body_v5(b"a/b", Some(1), &[], b"x"));
            out.extend(packet);
            out
        }
        // Invalid UTF-8 in a topic.
        6 => frame(
            0x30,
            &publish_body_v5(&[b'a', 0xC3, 0x28, 0xFF], None, &[], b"x"),
        ),
        // Random garbage appended after the packet.
        _ => {
            packet.extend(rng.bytes_below(64));
            packet
        }
    }
}

/// Checks what the broker sent back to a bad connection: well-formed packets only, and any
/// DISCONNECT with a reason code of 0x80 or more.
fn check_reply(version: ProtocolVersion, reply: &[u8], what: &str) {
    let mut decoder = Decoder::with_version(version, u32::MAX);
    let mut buf = BytesMut::from(reply);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(Packet::Disconnect(d))) => {
                assert!(d.reason_code.0 >= 0x80, "{what}: DISCONNECT {d:?}")
            }
            Ok(Some(_)) => {}
            // A partial packet at the end: the broker closed while we were reading it?
            // Only acceptable if nothing is left at all.
            Ok(None) => {
                assert!(buf.is_empty(), "{what}: reply ends in a partial packet");
                return;
            }
            Err(e) => panic!("{what}: broker sent a malformed packet: {e:?}"),
        }
    }
}

/// One bad connection: random bytes, or a valid CONNECT then a mutated packet; the client
/// then half-closes and reads until the broker closes.
async fn bad_connection(addr: std::net::SocketAddr, seed: u64, n: usize) {
    let mut rng = Rng(seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let version = if rng.below(2) == 0 { V5 } else { V3 };
    let mut client = Client::tcp(addr, version).await;
    let (bytes, connected) = match rng.below(4) {
        0 => (rng.bytes_below(300), false),
        1 => (
            mutate(&mut rng, connect_bytes(version, &format!("fuzz-{n}"))),
            false,
        ),
        _ => {
            let mut bytes = connect_bytes(version, &format!("fuzz-{n}"));
            for _ in 0..rng.below(3) {
                let packet = valid_packet(&mut rng, version);
                bytes.extend(packet);
            }
            let packet = valid_packet(&mut rng, version);
            bytes.extend(mutate(&mut rng, packet));
            (bytes, true)
        }
    };
    let what = format!(
        "connection {n} (seed {seed}, {version:?}, {} bytes)",
        bytes.len()
    );
    if client.try_send_bytes(&bytes).await {
        client.shutdown_write().await;
    }
    let (reply, closed) = client.read_to_close(Duration::from_secs(3)).await;
    assert!(closed, "{what}: the broker did not close the connection");
    if connected {
        check_reply(version, &reply, &what);
    }
}

// The storm: 2000 connections of random and mutated bytes, 50 at a time. The broker never
// panics, closes every bad connection, sends only well-formed packets (any DISCONNECT with
// a reason code >= 0x80), and keeps serving: a client connected throughout gets every one
// of its messages during the storm, and a new client connects fine afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_input_never_breaks_the_broker() {
    count_panics();
    let seed = std::env::var("TERN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("bad input storm: TERN_FUZZ_SEED={seed}");
    let broker = TestBroker::start_with(|c| {
        c.limits.connect_timeout_ms = 2_000;
        c.limits.max_packet_size_bytes = 64 * 1024;
        // Thousands of connections from one address in well under a second: the per-IP
        // admission limits (tested in limits.rs) would refuse most of them before they could
        // send anything, and this test is about what they send.
        c.limits.max_connect_rate_per_ip = 0;
        c.limits.max_connections_per_ip = 0;
    })
    .await;
    let b = broker.broker();
    let panics_before = PANICS.load(Ordering::SeqCst);

    let mut canary_sub = broker.client(V5, "canary-sub").await;
    canary_sub.subscribe("canary/#", QoS::AtLeastOnce).await;
    let mut canary_pub = broker.client(V3, "canary-pub").await;

    const CONNECTIONS: usize = 2000;
    const CONCURRENT: usize = 50;
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        let next = next.clone();
        let addr = broker.addr;
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= CONNECTIONS {
                    return;
                }
                bad_connection(addr, seed, n).await;
            }
        });
    }
    // The canary keeps talking during the storm.
    let mut sent = 0u32;
    while next.load(Ordering::Relaxed) < CONNECTIONS {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "storm too slow"
        );
        canary_pub
            .publish("canary/t", &sent.to_be_bytes(), QoS::AtLeastOnce, false)
            .await;
        let got = canary_sub.expect_publish_acked().await;
        assert_eq!(got.payload(), &sent.to_be_bytes(), "canary message lost");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while let Some(result) = workers.join_next().await {
        if let Err(e) = result {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "bad input storm: {CONNECTIONS} connections in {elapsed:?}, canary {sent} messages, \
         protocol_errors {}, timeouts {}",
        Metrics::get(&b.metrics().protocol_errors),
        Metrics::get(&b.metrics().timeouts)
    );
    assert!(sent > 0);
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        panics_before,
        "something panicked during the storm (seed {seed})"
    );
    // Still serving: a new client, and the canary.
    let mut fresh = broker.client(V5, "after-storm").await;
    fresh.subscribe("canary/#", QoS::AtLeastOnce).await;
    canary_pub
        .publish("canary/t", b"after", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(canary_sub.expect_publish_acked().await.payload(), b"after");
    assert_eq!(fresh.expect_publish_acked().await.payload(), b"after");
    // Every bad connection is gone.
    let wait = Instant::now() + Duration::from_secs(3);
    while Metrics::get(&b.metrics().clients_connected) != 3 {
        assert!(
            Instant::now() < wait,
            "{} connections still open after the storm",
            Metrics::get(&b.metrics().clients_connected)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.running.stop().await;
}

/// A connected 5.0 (or 3.1.1) client on a fresh broker.
async fn connected(broker: &TestBroker, version: ProtocolVersion) -> Client {
    let mut client = broker.raw(version).await;
    let mut connect = Connect::new(version, "bad");
    connect.keep_alive_secs = 0;
    let connack = client.connect(connect).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    client
}

/// Sends `bytes` after CONNECT and expects the broker's DISCONNECT with `reason` (5.0) or
/// a plain close (3.1.1), promptly.
async fn expect_rejected(
    broker: &TestBroker,
    version: ProtocolVersion,
    bytes: &[u8],
    reason: ReasonCode,
    what: &str,
) {
    let mut client = connected(broker, version).await;
    client.send_bytes(bytes).await;
    let started = Instant::now();
    let disconnect = client.expect_disconnect().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{what}: not rejected promptly"
    );
    if version.is_v5() {
        let disconnect = disconnect.unwrap_or_else(|| panic!("{what}: closed without DISCONNECT"));
        assert_eq!(disconnect.reason_code, reason, "{what}");
    } else {
        assert!(
            disconnect.is_none(),
            "{what}: 3.1.1 has no server DISCONNECT"
        );
    }
}

/// (what, bytes after CONNECT, 5.0 reason code).
fn malformed_cases() -> Vec<(&'static str, Vec<u8>, ReasonCode)> {
    let malformed = ReasonCode::MALFORMED_PACKET;
    let protocol = ReasonCode::PROTOCOL_ERROR;
    let mut two_pfi = Vec::new();
    two_pfi.extend_from_slice(&[0x01, 0x01, 0x01, 0x01]);
    vec![
        // [MQTT-3.3.1-4]: QoS 3 is malformed.
        (
            "mqtt_3_3_1_4 PUBLISH QoS 3",
            frame(0x36, &publish_body_v5(b"a/b", Some(1), &[], b"x")),
            malformed,
        ),
        // [MQTT-3.3.1-2]: DUP 1 with QoS 0: a well-formed packet breaking a rule (issue #13).
        (
            "mqtt_3_3_1_2 PUBLISH DUP with QoS 0",
            frame(0x38, &publish_body_v5(b"a/b", None, &[], b"x")),
            protocol,
        ),
        // [MQTT-3.3.2-14]: a Response Topic with wildcards is a protocol error (not 0x90,
        // which is about the PUBLISH's own topic).
        (
            "mqtt_3_3_2_14 response topic with wildcard",
            frame(
                0x30,
                &publish_body_v5(b"a/b", None, &[0x08, 0x00, 0x03, b'r', b'/', b'#'], b"x"),
            ),
            protocol,
        ),
        // [MQTT-1.5.4-1]: ill-formed UTF-8 in a topic.
        (
            "mqtt_1_5_4_1 invalid UTF-8 topic",
            frame(0x30, &publish_body_v5(&[b'a', 0xC3, 0x28], None, &[], b"x")),
            malformed,
        ),
        // [MQTT-1.5.4-2]: U+0000 in a topic.
        (
            "mqtt_1_5_4_2 NUL in topic",
            frame(0x30, &publish_body_v5(b"a\0b", None, &[], b"x")),
            malformed,
        ),
        // [MQTT-3.8.1-1] / [MQTT-2.1.3-1]: SUBSCRIBE flags must be 0010.
        (
            "mqtt_3_8_1_1 SUBSCRIBE reserved flags",
            frame(0x80, &[0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x01]),
            malformed,
        ),
        // [MQTT-3.6.1-1]: PUBREL flags must be 0010.
        (
            "mqtt_3_6_1_1 PUBREL reserved flags",
            frame(0x60, &[0x00, 0x01]),
            malformed,
        ),
        // Packet type 0 is reserved.
        ("packet type 0", frame(0x00, &[]), malformed),
        // [MQTT-1.5.5-1] a remaining length of more than four bytes.
        (
            "mqtt_1_5_5_1 remaining length over 4 bytes",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            malformed,
        ),
        // A topic length running past the end of the packet.
        (
            "topic length past the packet",
            frame(0x30, &[0x00, 0x20, b'a', b'b']),
            malformed,
        ),
        // [MQTT-3.8.3-2]: SUBSCRIBE with no topic filter.
        (
            "mqtt_3_8_3_2 SUBSCRIBE without filters",
            frame(0x82, &[0x00, 0x01, 0x00]),
            protocol,
        ),
        // [MQTT-3.1.0-2]: a second CONNECT.
        (
            "mqtt_3_1_0_2 second CONNECT",
            connect_bytes(V5, "again"),
            protocol,
        ),
        // 3.3.2.3.2: a property given twice (Payload Format Indicator).
        (
            "duplicate property",
            frame(0x30, &publish_body_v5(b"a/b", None, &two_pfi, b"x")),
            protocol,
        ),
        // [MQTT-3.3.4-6]: a Subscription Identifier in a client's PUBLISH.
        (
            "mqtt_3_3_4_6 subscription identifier from client",
            frame(0x30, &publish_body_v5(b"a/b", None, &[0x0B, 0x01], b"x")),
            protocol,
        ),
        // [MQTT-3.3.2-8]: Topic Alias 0 is not permitted: 0x94 Topic Alias invalid.
        (
            "mqtt_3_3_2_8 topic alias 0",
            frame(
                0x30,
                &publish_body_v5(b"a/b", None, &[0x23, 0x00, 0x00], b"x"),
            ),
            ReasonCode::TOPIC_ALIAS_INVALID,
        ),
        // 3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there is no
        // Topic Alias" (0x82, not 0x90 Topic Name invalid).
        (
            "3.3.2.1 empty topic without topic alias",
            frame(0x30, &publish_body_v5(b"", None, &[], b"x")),
            protocol,
        ),
        // [MQTT-3.3.2-2]: wildcards in a topic name: Topic Name invalid.
        (
            "mqtt_3_3_2_2 wildcard in topic name",
            frame(0x30, &publish_body_v5(b"a/+", None, &[], b"x")),
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        // [MQTT-3.3.2-9] / 3.2.2.3.8: a Topic Alias above our Topic Alias Maximum (1024).
        (
            "mqtt_3_3_2_9 topic alias above maximum",
            frame(
                0x30,
                &publish_body_v5(b"a/b", None, &[0x23, 0x04, 0x01], b"x"),
            ),
            ReasonCode::TOPIC_ALIAS_INVALID,
        ),
        // A packet only a server sends.
        (
            "CONNACK from a client",
            frame(0x20, &[0x00, 0x00, 0x00]),
            protocol,
        ),
    ]
}

// [MQTT-4.13.1-1] (5.0): a malformed packet or protocol error closes the connection after a
// DISCONNECT with the reason code the specification gives.
#[tokio::test]
async fn mqtt_4_13_1_1_v5_malformed_packets_get_the_right_disconnect_reason() {
    let broker = TestBroker::start().await;
    for (what, bytes, reason) in malformed_cases() {
        expect_rejected(&broker, V5, &bytes, reason, what).await;
    }
    assert!(
        Metrics::get(&broker.broker().metrics().protocol_errors) >= malformed_cases().len() as u64
    );
    // The broker still works.
    let mut sub = broker.client(V5, "ok").await;
    sub.subscribe("ok", QoS::AtLeastOnce).await;
    broker.running.stop().await;
}

// [MQTT-4.8.0-1] (3.1.1): a protocol violation closes the network connection (no
// DISCONNECT from a 3.1.1 server).
#[tokio::test]
async fn mqtt_4_8_0_1_v311_malformed_packets_close_the_connection() {
    let broker = TestBroker::start().await;
    let v3_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "PUBLISH QoS 3",
            frame(0x36, &[0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'x']),
        ),
        (
            "PUBLISH DUP with QoS 0",
            frame(0x38, &[0x00, 0x03, b'a', b'/', b'b', b'x']),
        ),
        (
            "invalid UTF-8 topic",
            frame(0x30, &[0x00, 0x02, 0xC3, 0x28, b'x']),
        ),
        (
            "SUBSCRIBE reserved flags",
            frame(0x80, &[0x00, 0x01, 0x00, 0x01, b'a', 0x01]),
        ),
        ("SUBSCRIBE without filters", frame(0x82, &[0x00, 0x01])),
        ("second CONNECT", connect_bytes(V3, "again")),
        ("packet type 0", frame(0x00, &[])),
        ("AUTH in 3.1.1", frame(0xF0, &[])),
    ];
    for (what, bytes) in v3_cases {
        expect_rejected(&broker, V3, &bytes, ReasonCode::SUCCESS, what).await;
    }
    broker.running.stop().await;
}

// [MQTT-3.1.0-1]: the first packet must be CONNECT; anything else closes the connection.
#[tokio::test]
async fn mqtt_3_1_0_1_first_packet_not_connect_closes() {
    let broker = TestBroker::start().await;
    for bytes in [
        frame(0xC0, &[]),
        frame(0x30, &[0x00, 0x01, b'a']),
        vec![0x47, 0x45, 0x54, 0x20],
    ] {
        let mut client = broker.raw(V5).await;
        client.send_bytes(&bytes).await;
        let (reply, closed) = client.read_to_close(Duration::from_secs(2)).await;
        assert!(closed, "{bytes:02x?}: not closed");
        assert!(reply.is_empty(), "{bytes:02x?}: got {reply:02x?}");
    }
    broker.running.stop().await;
}

// 3.2.2.3.6 / [MQTT-3.2.2-15]: a packet above the broker's Maximum Packet Size gets
// DISCONNECT 0x95 as soon as its fixed header announces the size: the broker does not wait
// for (or buffer) the body.
#[tokio::test]
async fn oversized_remaining_length_rejected_from_the_header_without_buffering() {
    let broker = TestBroker::start_with(|c| c.limits.max_packet_size_bytes = 64 * 1024).await;
    for version in [V5, V3] {
        let mut client = connected(&broker, version).await;
        // PUBLISH announcing 200 MB, then a few bytes of it.
        let mut bytes = vec![0x30];
        varint(200_000_000, &mut bytes);
        bytes.extend_from_slice(&[0x00, 0x03, b'a', b'/', b'b', 1, 2, 3, 4]);
        client.send_bytes(&bytes).await;
        let started = Instant::now();
        let disconnect = client.expect_disconnect().await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "not rejected promptly"
        );
        if version.is_v5() {
            let disconnect = disconnect.expect("DISCONNECT 0x95");
            assert_eq!(disconnect.reason_code, ReasonCode::PACKET_TOO_LARGE);
        } else {
            assert!(disconnect.is_none());
        }
    }
    // Just over the limit is too large as well; just under passes.
    let mut client = connected(&broker, V5).await;
    let body = publish_body_v5(b"a/b", None, &[], &vec![0u8; 64 * 1024 - 4 - 9]);
    let ok = frame(0x30, &body);
    assert!(ok.len() <= 64 * 1024, "{}", ok.len());
    client.send_bytes(&ok).await;
    client.ping().await;
    let body = publish_body_v5(b"a/b", None, &[], &vec![0u8; 64 * 1024]);
    client.send_bytes(&frame(0x30, &body)[..8]).await;
    let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::PACKET_TOO_LARGE);
    broker.running.stop().await;
}

// A CONNECT announcing more than the maximum packet size is refused before its body is
// read, too.
#[tokio::test]
async fn oversized_connect_rejected_from_the_header() {
    let broker = TestBroker::start_with(|c| c.limits.max_packet_size_bytes = 64 * 1024).await;
    let mut client = broker.raw(V5).await;
    let mut bytes = vec![0x10];
    varint(100_000_000, &mut bytes);
    bytes.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 5]);
    client.send_bytes(&bytes).await;
    let (_, closed) = client.read_to_close(Duration::from_millis(500)).await;
    assert!(closed, "oversized CONNECT not rejected promptly");
    broker.running.stop().await;
}
