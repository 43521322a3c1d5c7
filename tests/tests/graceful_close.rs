//! The end of a connection the broker closes with a reason (DISCONNECT with a reason code,
//! or a CONNACK refusing the CONNECT): the socket must close with FIN, never RST, so that a
//! client still writing when the reason is sent can read it. A socket closed with unread
//! input makes the kernel answer with RST: the client's writes then fail with EPIPE or
//! ECONNRESET, and a client library that treats a failed write as the end never reads the
//! reason code.

use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{Connect, Decoder, Packet, PacketId, ProtocolVersion, Publish, ReasonCode};
use tern_tests::{TestBroker, RECV_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
/// How long the client waits between its first burst and the next one (well within the
/// broker's linger).
const PAUSE: Duration = Duration::from_millis(50);

/// `count` QoS 2 PUBLISH with packet ids from `first_id` on, encoded back to back.
fn qos2_flood(first_id: u16, count: u16) -> BytesMut {
    let mut bytes = BytesMut::new();
    for id in first_id..first_id + count {
        let id = PacketId::new(id).expect("non-zero id");
        let publish = Publish::new("flood/t", b"x".to_vec())
            .with_qos(tern_codec::PublishQoS::ExactlyOnce(id));
        bytes.extend_from_slice(&Packet::Publish(publish).to_bytes(V5));
    }
    bytes
}

/// Reads until the broker closes the connection; returns the packets it sent, and the
/// error that ended the stream instead of an orderly end of stream (FIN), if one did.
async fn read_until_closed(
    stream: &mut TcpStream,
    version: ProtocolVersion,
) -> (Vec<Packet>, Option<std::io::Error>) {
    let mut decoder = Decoder::with_version(version, u32::MAX);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let ended = tokio::time::timeout(RECV_TIMEOUT, async {
        loop {
            buf.reserve(4096);
            match stream.read_buf(&mut buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .expect("the broker closes the connection");
    while let Some(packet) = decoder
        .decode(&mut buf)
        .expect("the broker sends valid packets")
    {
        packets.push(packet);
    }
    (packets, ended)
}

/// Writes `bytes` as a client that does not read would: the result is what it sees.
async fn write(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

// [MQTT-3.14.4-2] with [MQTT-3.3.4-9]'s reaction (5.0 section 3.3.4: more unacknowledged QoS
// 2 PUBLISH than the Receive Maximum get DISCONNECT 0x93): the server closes the Network
// Connection after DISCONNECT, and closes it so that the client reads the reason code. A
// client flooding QoS 2 PUBLISH without reading keeps writing after the broker's DISCONNECT:
// its writes succeed (the broker reads and discards them for a while after its FIN), and
// when it reads it gets DISCONNECT 0x93 and an orderly end of stream, not a reset.
#[tokio::test]
async fn receive_maximum_exceeded_flood_reads_disconnect_0x93_not_reset_mqtt_3_14_4_2() {
    let broker = TestBroker::start_with(|c| c.limits.receive_maximum = 2).await;
    let mut stream = TcpStream::connect(broker.addr).await.expect("connect");
    let mut first = Packet::Connect(Box::new(Connect::new(V5, "flood"))).to_bytes(V5);
    first.extend_from_slice(&qos2_flood(1, 5_000));
    write(&mut stream, &first).await.expect("first burst");
    tokio::time::sleep(PAUSE).await;
    // Still writing after the broker's DISCONNECT (it went out at the third PUBLISH).
    write(&mut stream, &qos2_flood(5_001, 5_000))
        .await
        .expect("a write after the broker's DISCONNECT is not reset");
    let (packets, error) = read_until_closed(&mut stream, V5).await;
    assert!(
        error.is_none(),
        "connection reset instead of closed: {error:?}"
    );
    assert!(matches!(packets.first(), Some(Packet::ConnAck(c)) if c.code == ReasonCode::SUCCESS));
    match packets.last() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
        }
        other => panic!("expected DISCONNECT 0x93 last, got {other:?} in {packets:?}"),
    }
    broker.running.stop().await;
}

// [MQTT-3.2.2-7] (5.0; [MQTT-3.2.2-5] in 3.1.1): after a CONNACK refusing the connection the
// server closes the Network Connection, and closes it so that the client reads the CONNACK.
// The client writes on after its CONNECT (as one that pipelines its first packets does): its
// writes succeed, and it reads the CONNACK and an orderly end of stream, not a reset.
#[tokio::test]
async fn refused_connect_with_more_input_reads_connack_not_reset_mqtt_3_2_2_7() {
    let broker = TestBroker::start().await;
    let mut unsupported_auth = Connect::new(V5, "auth-method");
    unsupported_auth.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let mut empty_id_keeping_session = Connect::new(V3, "");
    empty_id_keeping_session.clean_start = false;
    for (connect, code) in [
        (unsupported_auth, ReasonCode::BAD_AUTHENTICATION_METHOD),
        // 3.1.1 return code 0x02: identifier rejected ([MQTT-3.1.3-8]).
        (empty_id_keeping_session, ReasonCode(0x02)),
    ] {
        let version = connect.protocol;
        let mut stream = TcpStream::connect(broker.addr).await.expect("connect");
        let mut first = Packet::Connect(Box::new(connect)).to_bytes(version);
        // PINGREQ after PINGREQ: anything the client sends before it reads CONNACK.
        first.extend_from_slice(&[0xC0, 0x00].repeat(32 * 1024));
        write(&mut stream, &first).await.expect("first burst");
        tokio::time::sleep(PAUSE).await;
        write(&mut stream, &[0xC0, 0x00].repeat(32 * 1024))
            .await
            .expect("a write after the refusing CONNACK is not reset");
        let (packets, error) = read_until_closed(&mut stream, version).await;
        assert!(
            error.is_none(),
            "{version:?}: reset instead of closed: {error:?}"
        );
        match &packets[..] {
            [Packet::ConnAck(connack)] => assert_eq!(connack.code, code, "{version:?}"),
            other => panic!("{version:?}: expected one CONNACK, got {other:?}"),
        }
    }
    broker.running.stop().await;
}
