//! CONNECT / CONNACK conformance (MQTT 3.1, 3.1.1 and 5.0 section 3.1, 3.2): CONNACK
//! properties, client identifiers, Clean Start / Session Present, the first and a second
//! CONNECT, protocol levels, keep alive, the CONNECT timeout and authentication methods.

use std::time::Duration;

use tern_broker::config::Config;
use tern_broker::keep_alive::TICK_MS;
use tern_broker::Broker;
use tern_codec::{Connect, Packet, ProtocolVersion, Publish, QoS, ReasonCode, SubscriptionOptions};
use tern_tests::{duplex_client, test_config, Client, TestBroker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V31: ProtocolVersion = ProtocolVersion::V3_1;
const QUIET: Duration = Duration::from_millis(250);

fn connect_packet(
    version: ProtocolVersion,
    id: &str,
    change: impl FnOnce(&mut Connect),
) -> Connect {
    let mut connect = Connect::new(version, id);
    change(&mut connect);
    connect
}

/// A broker without listeners for tests on tokio's paused clock: its clients connect over
/// in-memory streams ([`duplex_client`]) on the test's runtime, so the keep-alive sweeper and
/// the CONNECT timeout run on virtual time and a wait of seconds takes none.
fn paused_broker(change: impl FnOnce(&mut Config)) -> Broker {
    let mut config = test_config();
    change(&mut config);
    Broker::new(config)
}

/// A keep-alive close comes at the deadline (1.5 x Keep Alive) and at most one sweeper tick
/// after it (`tern_broker::keep_alive`); on the paused clock that is exact.
fn assert_closed_at_deadline(elapsed: Duration, keep_alive: Duration, who: &str) {
    let deadline = keep_alive * 3 / 2;
    assert!(
        elapsed >= deadline && elapsed <= deadline + Duration::from_millis(TICK_MS),
        "{who} closed after {elapsed:?}, deadline {deadline:?}"
    );
}

/// Reads whatever the broker sends until it closes the socket (bounded by `limit`).
async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; 512];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("socket still open after {limit:?}; received {all:02X?}"),
        }
    }
}

// 5.0 section 3.2.2.3: a 5.0 CONNACK carries the server's limits and capabilities.
#[tokio::test]
async fn v5_connack_properties_report_limits_and_capabilities() {
    let broker = TestBroker::start_with(|c| {
        c.limits.receive_maximum = 7;
        c.limits.max_packet_size_bytes = 4096;
        c.limits.topic_alias_maximum = 9;
    })
    .await;
    let mut client = broker.raw(V5).await;
    let connack = client.connect(Connect::new(V5, "props")).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    let p = &connack.properties;
    assert_eq!(p.receive_maximum, Some(7), "Receive Maximum (3.2.2.3.3)");
    assert_eq!(
        p.maximum_packet_size_bytes,
        Some(4096),
        "Maximum Packet Size (3.2.2.3.6)"
    );
    assert_eq!(
        p.topic_alias_maximum,
        Some(9),
        "Topic Alias Maximum (3.2.2.3.8)"
    );
    // Absent means "available"; if present they must say so.
    assert_ne!(p.retain_available, Some(false));
    assert_ne!(p.wildcard_subscription_available, Some(false));
    assert_ne!(p.subscription_identifiers_available, Some(false));
    assert_ne!(p.shared_subscription_available, Some(false));
    // [MQTT-3.2.2-9]/[MQTT-3.2.2-10]: Maximum QoS, if sent, is 0 or 1; we support 2 (absent).
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.assigned_client_identifier, None, "the client gave an id");
    assert_eq!(
        p.server_keep_alive_secs, None,
        "no max_keep_alive_secs configured"
    );
    client.disconnect().await;
}

// 3.1.1 section 3.2: CONNACK is exactly 4 bytes, no properties.
#[tokio::test]
async fn v311_connack_is_four_bytes_without_properties() {
    let broker = TestBroker::start().await;
    for version in [V3, V31] {
        let mut stream = TcpStream::connect(broker.addr).await.expect("connect");
        let bytes = Packet::Connect(Box::new(Connect::new(version, "four"))).to_bytes(version);
        stream.write_all(&bytes).await.expect("write");
        let mut connack = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut connack))
            .await
            .expect("CONNACK in time")
            .expect("read");
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "{version:?}");
        // Nothing else follows.
        let mut more = [0u8; 1];
        assert!(
            tokio::time::timeout(QUIET, stream.read(&mut more))
                .await
                .is_err(),
            "unexpected bytes after CONNACK"
        );
    }
}

// [MQTT-3.1.3-6] [MQTT-3.1.3-7] (5.0): an empty client id gets a unique assigned one,
// returned in CONNACK.
#[tokio::test]
async fn v5_empty_client_id_gets_assigned_identifier_mqtt_3_1_3_6_and_7() {
    let broker = TestBroker::start().await;
    let mut a = broker.raw(V5).await;
    let ca = a.connect(Connect::new(V5, "")).await;
    let mut b = broker.raw(V5).await;
    let cb = b.connect(Connect::new(V5, "")).await;
    assert_eq!(ca.code, ReasonCode::SUCCESS);
    assert_eq!(cb.code, ReasonCode::SUCCESS);
    let ida = ca
        .properties
        .assigned_client_identifier
        .expect("assigned id for a");
    let idb = cb
        .properties
        .assigned_client_identifier
        .expect("assigned id for b");
    assert!(!ida.is_empty());
    assert_ne!(ida, idb, "assigned identifiers must be unique");
    // Both sessions work independently (neither took the other over).
    a.subscribe("assigned/a", QoS::AtLeastOnce).await;
    b.subscribe("assigned/b", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(V5, "assigned-pub").await;
    publisher
        .publish("assigned/a", b"1", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("assigned/b", b"2", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(a.expect_publish_acked().await.topic(), "assigned/a");
    assert_eq!(b.expect_publish_acked().await.topic(), "assigned/b");
    a.expect_nothing(QUIET).await;
}

// [MQTT-3.1.3-6] (3.1.1): a zero-byte client id with Clean Session 1 is accepted.
#[tokio::test]
async fn v311_empty_client_id_with_clean_session_is_accepted_mqtt_3_1_3_6() {
    let broker = TestBroker::start().await;
    let mut client = broker.raw(V3).await;
    let connack = client.connect(Connect::new(V3, "")).await;
    assert_eq!(connack.code.0, 0x00);
    assert!(!connack.session_present);
    client.ping().await;
}

// [MQTT-3.1.3-8] (3.1.1): a zero-byte client id with Clean Session 0 gets CONNACK 0x02
// (identifier rejected) and the connection is closed.
#[tokio::test]
async fn v311_empty_client_id_without_clean_session_refused_0x02_mqtt_3_1_3_8() {
    let broker = TestBroker::start().await;
    for version in [V3, V31] {
        let mut client = broker.raw(version).await;
        let connack = client
            .connect(connect_packet(version, "", |c| c.clean_start = false))
            .await;
        assert_eq!(connack.code.0, 0x02, "{version:?}");
        assert!(!connack.session_present, "[MQTT-3.2.2-4]");
        assert!(client.expect_disconnect().await.is_none());
    }
}

// [MQTT-3.1.3-8] (5.0): the server may reject a client id with CONNACK 0x85; Tern rejects
// a zero-length one with Clean Start 0 (issue #13: its session could only be resumed under
// a name the client did not choose).
#[tokio::test]
async fn v5_empty_client_id_without_clean_start_refused_0x85_mqtt_3_1_3_8() {
    let broker = TestBroker::start().await;
    let mut client = broker.raw(V5).await;
    let connack = client
        .connect(connect_packet(V5, "", |c| c.clean_start = false))
        .await;
    assert_eq!(connack.code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    assert!(!connack.session_present, "[MQTT-3.2.2-6]");
    assert!(client.expect_disconnect().await.is_none());
}

// [MQTT-3.2.2-2] [MQTT-3.2.2-3] (5.0) and [MQTT-3.2.2-1] [MQTT-3.2.2-2] [MQTT-3.2.2-3]
// (3.1.1): Session Present is 0 with Clean Start, 0 for a new session, 1 when resumed.
#[tokio::test]
async fn clean_start_and_session_present_both_versions() {
    let broker = TestBroker::start().await;
    for version in [V5, V3] {
        let id = format!("sp-{version:?}");
        let persistent = |c: &mut Connect| {
            c.clean_start = false;
            if c.protocol.is_v5() {
                c.properties.session_expiry_interval_secs = Some(60);
            }
        };
        // No session yet: Session Present 0.
        let mut client = broker.raw(version).await;
        let connack = client
            .connect(connect_packet(version, &id, persistent))
            .await;
        assert_eq!(connack.code, ReasonCode::SUCCESS);
        assert!(!connack.session_present, "{version:?}: new session");
        client.subscribe("sp/topic", QoS::AtLeastOnce).await;
        client.disconnect().await;

        // Resumed: Session Present 1, and the subscription is still there.
        let mut client = broker.raw(version).await;
        let connack = client
            .connect(connect_packet(version, &id, persistent))
            .await;
        assert!(connack.session_present, "{version:?}: resumed session");
        let mut publisher = broker.client(V5, "sp-pub").await;
        publisher
            .publish("sp/topic", b"kept", QoS::AtLeastOnce, false)
            .await;
        assert_eq!(client.expect_publish_acked().await.payload(), b"kept");
        client.disconnect().await;

        // Clean Start 1: Session Present 0 and the old subscription is gone.
        let mut client = broker.raw(version).await;
        let connack = client.connect(Connect::new(version, id.as_str())).await;
        assert!(!connack.session_present, "{version:?}: clean start");
        publisher
            .publish("sp/topic", b"gone", QoS::AtLeastOnce, false)
            .await;
        client.expect_nothing(QUIET).await;
        client.disconnect().await;
        publisher.disconnect().await;
    }
}

// [MQTT-3.1.0-1]: the first packet must be CONNECT; anything else closes the connection
// (no CONNACK, no DISCONNECT: the version is unknown).
#[tokio::test]
async fn first_packet_not_connect_closes_mqtt_3_1_0_1() {
    let broker = TestBroker::start().await;
    let others = [
        Packet::PingReq,
        Packet::Publish(Publish::new("x/y", &b"early"[..])),
        Packet::Disconnect(Default::default()),
    ];
    for version in [V5, V3] {
        for packet in &others {
            let mut client = broker.raw(version).await;
            client.send(packet).await;
            assert_eq!(
                client.expect_disconnect().await,
                None,
                "{version:?} {packet:?}"
            );
        }
    }
    // The broker still serves others.
    broker.client(V5, "after").await.ping().await;
}

// [MQTT-3.1.0-2]: a second CONNECT is a protocol error: DISCONNECT 0x82 (5.0), socket
// closed (3.1.1).
#[tokio::test]
async fn second_connect_is_protocol_error_mqtt_3_1_0_2() {
    let broker = TestBroker::start().await;
    let mut client = broker.client(V5, "twice5").await;
    client
        .send(&Packet::Connect(Box::new(Connect::new(V5, "twice5"))))
        .await;
    let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::PROTOCOL_ERROR);

    for version in [V3, V31] {
        let mut client = broker.client(version, "twice3").await;
        client
            .send(&Packet::Connect(Box::new(Connect::new(version, "twice3"))))
            .await;
        assert_eq!(client.expect_disconnect().await, None, "{version:?}");
    }
}

// [MQTT-3.1.2-2]: an unsupported protocol level gets CONNACK 0x01 (3.1.1 encoding) and
// the connection is closed.
#[tokio::test]
async fn unsupported_protocol_level_connack_0x01_mqtt_3_1_2_2() {
    let broker = TestBroker::start().await;
    for level in [2u8, 6, 0x83] {
        let mut bytes = Packet::Connect(Box::new(Connect::new(V3, "lvl"))).to_bytes(V3);
        // Fixed header (2 bytes), protocol name "MQTT" (2 + 4), then the level.
        assert_eq!(&bytes[2..8], b"\x00\x04MQTT");
        bytes[8] = level;
        let mut stream = TcpStream::connect(broker.addr).await.expect("connect");
        stream.write_all(&bytes).await.expect("write");
        let got = read_until_close(&mut stream, Duration::from_secs(3)).await;
        assert_eq!(got, [0x20, 0x02, 0x00, 0x01], "level {level}");
    }
}

// MQTT 3.1 (protocol name MQIsdp, level 3) clients connect and exchange messages with
// 3.1.1 and 5.0 clients.
#[tokio::test]
async fn mqtt_3_1_mqisdp_client_works() {
    let broker = TestBroker::start().await;
    let mut old = broker.client(V31, "mqisdp").await;
    let bytes = Packet::Connect(Box::new(Connect::new(V31, "x"))).to_bytes(V31);
    assert_eq!(
        &bytes[2..10],
        b"\x00\x06MQIsdp",
        "the test really speaks 3.1"
    );
    let suback = old.subscribe("legacy/in", QoS::ExactlyOnce).await;
    assert_eq!(suback.reason_codes, vec![ReasonCode(2)]);
    let mut modern = broker.client(V5, "modern").await;
    modern.subscribe("legacy/out", QoS::ExactlyOnce).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        modern.publish("legacy/in", b"to-3.1", qos, false).await;
        let got = old.expect_publish_acked().await;
        assert_eq!(
            (got.topic(), got.payload(), got.qos()),
            ("legacy/in", &b"to-3.1"[..], qos)
        );
        old.publish("legacy/out", b"from-3.1", qos, false).await;
        assert_eq!(modern.expect_publish_acked().await.payload(), b"from-3.1");
    }
    old.ping().await;
    old.disconnect().await;
}

// [MQTT-3.2.2-21] (3.2.2.3.14): with a maximum keep alive configured, a 5.0 client asking
// for more (or for none) is told the Server Keep Alive in CONNACK; a client within the
// limit keeps its own value and gets no property.
#[tokio::test]
async fn server_keep_alive_sent_when_client_exceeds_maximum_mqtt_3_2_2_21() {
    let broker = TestBroker::start_with(|c| c.limits.max_keep_alive_secs = 30).await;
    for (asked, expected) in [(60u16, Some(30u16)), (0, Some(30)), (30, None), (10, None)] {
        let mut client = broker.raw(V5).await;
        let connack = client
            .connect(connect_packet(V5, "ka", |c| c.keep_alive_secs = asked))
            .await;
        assert_eq!(connack.code, ReasonCode::SUCCESS);
        assert_eq!(
            connack.properties.server_keep_alive_secs, expected,
            "asked {asked}"
        );
        client.disconnect().await;
    }
}

// [MQTT-3.2.2-21]: the Server Keep Alive the broker announced is the one it enforces.
#[tokio::test(start_paused = true)]
async fn server_keep_alive_is_enforced() {
    let broker = paused_broker(|c| c.limits.max_keep_alive_secs = 1);
    let mut client = duplex_client(&broker, V5);
    let connack = client
        .connect(connect_packet(V5, "ska", |c| c.keep_alive_secs = 0))
        .await;
    assert_eq!(connack.properties.server_keep_alive_secs, Some(1));
    let start = tokio::time::Instant::now();
    let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::KEEP_ALIVE_TIMEOUT);
    assert_closed_at_deadline(start.elapsed(), Duration::from_secs(1), "5.0");
}

async fn keep_alive_client(broker: &Broker, version: ProtocolVersion, id: &str) -> Client {
    let mut client = duplex_client(broker, version);
    let connack = client
        .connect(connect_packet(version, id, |c| c.keep_alive_secs = 1))
        .await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    client
}

// [MQTT-3.1.2-22] (5.0) / [MQTT-3.1.2-24] (3.1.1): nothing received for 1.5 x Keep Alive
// closes the connection: DISCONNECT 0x8D for 5.0, the socket alone for 3.1.1. Not before
// 1.5 x (a client silent for just over 1 x Keep Alive is still within its allowance).
#[tokio::test(start_paused = true)]
async fn keep_alive_enforced_at_one_and_a_half_times_mqtt_3_1_2_22() {
    let broker = paused_broker(|_| {});
    let mut v5 = keep_alive_client(&broker, V5, "ka5").await;
    let mut v3 = keep_alive_client(&broker, V3, "ka3").await;
    let start = tokio::time::Instant::now();
    let (d5, d3) = tokio::join!(
        async {
            let d = v5.expect_disconnect().await;
            (d, start.elapsed())
        },
        async {
            let d = v3.expect_disconnect().await;
            (d, start.elapsed())
        }
    );
    assert_eq!(
        d5.0.expect("5.0 DISCONNECT").reason_code,
        ReasonCode::KEEP_ALIVE_TIMEOUT
    );
    assert_eq!(d3.0, None, "3.1.1 gets no DISCONNECT");
    for (elapsed, who) in [(d5.1, "5.0"), (d3.1, "3.1.1")] {
        assert_closed_at_deadline(elapsed, Duration::from_secs(1), who);
    }
}

// Keep alive: any packet (here PINGREQ, [MQTT-3.12.4-1]) resets the timer.
#[tokio::test(start_paused = true)]
async fn keep_alive_reset_by_traffic() {
    let broker = paused_broker(|_| {});
    let run = |version, id| {
        let broker = &broker;
        async move {
            let mut client = keep_alive_client(broker, version, id).await;
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(600)).await;
                client.ping().await;
            }
            // 2.4 s alive with a 1 s keep alive: the pings kept it open.
            client.expect_nothing(Duration::from_millis(900)).await;
            client.disconnect().await;
        }
    };
    tokio::join!(run(V5, "ka-ping5"), run(V3, "ka-ping3"));
}

// 3.1.4 / DESIGN "bounded everything": a connection that sends no CONNECT (or only part of
// one) within the connect timeout is closed.
#[tokio::test(start_paused = true)]
async fn connect_timeout_closes_silent_connection() {
    let broker = paused_broker(|c| c.limits.connect_timeout_ms = 200);
    let timeout = Duration::from_millis(200);
    let start = tokio::time::Instant::now();
    let mut silent = duplex_client(&broker, V5);
    let (got, closed) = silent.read_to_close(Duration::from_secs(3)).await;
    assert!(closed, "still open after 3 s");
    assert!(got.is_empty(), "nothing is sent: {got:02X?}");
    assert_eq!(start.elapsed(), timeout, "closed at the CONNECT timeout");

    let start = tokio::time::Instant::now();
    let mut partial = duplex_client(&broker, V5);
    let bytes = Packet::Connect(Box::new(Connect::new(V5, "half"))).to_bytes(V5);
    partial.send_bytes(&bytes[..bytes.len() / 2]).await;
    let (got, closed) = partial.read_to_close(Duration::from_secs(3)).await;
    assert!(closed, "still open after 3 s");
    assert!(got.is_empty(), "nothing is sent: {got:02X?}");
    assert_eq!(start.elapsed(), timeout, "closed at the CONNECT timeout");

    // A prompt client is unaffected by the short timeout.
    let mut client = duplex_client(&broker, V5);
    let connack = client.connect(Connect::new(V5, "prompt")).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.ping().await;
}

// [MQTT-4.12.0-1] / 3.1.2.11.9: enhanced authentication is not offered, so a CONNECT with
// an Authentication Method gets CONNACK 0x8C and the connection closes.
#[tokio::test]
async fn authentication_method_refused_0x8c() {
    let broker = TestBroker::start().await;
    let mut client = broker.raw(V5).await;
    let connack = client
        .connect(connect_packet(V5, "auth", |c| {
            c.properties.authentication_method = Some("SCRAM-SHA-1".into());
            c.properties.authentication_data = Some(bytes::Bytes::from_static(b"client-first"));
        }))
        .await;
    assert_eq!(connack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert!(!connack.session_present, "[MQTT-3.2.2-6]");
    assert!(client.expect_disconnect().await.is_none());
    // A refused CONNECT creates no session.
    let mut again = broker.raw(V5).await;
    let connack = again
        .connect(connect_packet(V5, "auth", |c| {
            c.clean_start = false;
            c.properties.session_expiry_interval_secs = Some(60);
        }))
        .await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    assert!(!connack.session_present);
}

// [MQTT-3.9.3-1] per version: after CONNECT the SUBACK returns the granted QoS (3.1 too).
#[tokio::test]
async fn subscribe_after_connect_uses_granted_qos() {
    let broker = TestBroker::start().await;
    for version in [V5, V3, V31] {
        let mut client = broker.client(version, "granted").await;
        let suback = client
            .subscribe_with(
                vec![("g/1", SubscriptionOptions::with_qos(QoS::AtLeastOnce))],
                None,
            )
            .await;
        assert_eq!(suback.reason_codes, vec![ReasonCode(1)], "{version:?}");
        client.disconnect().await;
    }
}
