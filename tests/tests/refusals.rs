//! Issue #13 "Tell the client why": a CONNECT the broker cannot accept because it does not
//! decode gets a 5.0 CONNACK with the reason code before the close ([MQTT-4.13.1-1] lets a
//! server send it), and the 3.1.1 close where that version has no return code
//! ([MQTT-4.8.0-1]). The refusals of well-formed CONNECTs (0x84/0x01, 0x85/0x02, 0x86/0x04,
//! 0x87/0x05, 0x8C) are in connect.rs and auth.rs.

use std::time::Duration;

use tern_broker::metrics::Metrics;
use tern_codec::{ProtocolVersion, ReasonCode};
use tern_tests::TestBroker;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

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

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A CONNECT's fields, written by hand so that each can be broken.
#[derive(Clone)]
struct RawConnect {
    version: ProtocolVersion,
    flags: u8,
    props: Vec<u8>,
    client_id: Vec<u8>,
    /// Will properties (5.0), topic and payload; sets the will flag.
    will: Option<(Vec<u8>, Vec<u8>)>,
    /// Bytes cut off the end of the body (the remaining length still matches).
    truncate: usize,
}

impl RawConnect {
    fn new(version: ProtocolVersion) -> RawConnect {
        RawConnect {
            version,
            flags: 0x02,
            props: Vec::new(),
            client_id: b"refused".to_vec(),
            will: None,
            truncate: 0,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let v5 = self.version.is_v5();
        let mut body = Vec::new();
        string(b"MQTT", &mut body);
        body.push(if v5 { 5 } else { 4 });
        body.push(self.flags | if self.will.is_some() { 0x04 } else { 0 });
        body.extend_from_slice(&[0x00, 0x00]);
        if v5 {
            varint(self.props.len(), &mut body);
            body.extend_from_slice(&self.props);
        }
        string(&self.client_id, &mut body);
        if let Some((will_props, topic)) = &self.will {
            if v5 {
                varint(will_props.len(), &mut body);
                body.extend_from_slice(will_props);
            }
            string(topic, &mut body);
            string(b"gone", &mut body);
        }
        body.truncate(body.len() - self.truncate);
        let mut out = vec![0x10];
        varint(body.len(), &mut out);
        out.extend_from_slice(&body);
        out
    }
}

/// Each broken 5.0 CONNECT and the CONNACK reason code it gets.
fn cases() -> Vec<(&'static str, RawConnect, ReasonCode)> {
    let base = RawConnect::new(V5);
    let with = |change: &dyn Fn(&mut RawConnect)| {
        let mut c = base.clone();
        change(&mut c);
        c
    };
    vec![
        // [MQTT-3.1.2-3]: the reserved flag is set: malformed.
        (
            "mqtt_3_1_2_3 reserved flag",
            with(&|c| c.flags |= 0x01),
            ReasonCode::MALFORMED_PACKET,
        ),
        // The client identifier runs past the end of the packet: malformed.
        (
            "truncated client identifier",
            with(&|c| c.truncate = 3),
            ReasonCode::MALFORMED_PACKET,
        ),
        // 3.1.2.11.3: "It is a Protocol Error to include the Receive Maximum value of 0".
        (
            "3.1.2.11.3 receive maximum 0",
            with(&|c| c.props = vec![0x21, 0x00, 0x00]),
            ReasonCode::PROTOCOL_ERROR,
        ),
        // 3.1.2.11.2: "It is a Protocol Error to include the Session Expiry Interval more
        // than once".
        (
            "3.1.2.11.2 repeated property",
            with(&|c| c.props = vec![0x11, 0, 0, 0, 9, 0x11, 0, 0, 0, 9]),
            ReasonCode::PROTOCOL_ERROR,
        ),
        // [MQTT-3.1.3-11] / [MQTT-4.7.0-1]: the will topic is a topic name, no wildcards.
        (
            "mqtt_3_1_3_11 will topic with wildcard",
            with(&|c| c.will = Some((Vec::new(), b"a/#".to_vec()))),
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        // [MQTT-3.3.2-14]: the will's Response Topic has no wildcards.
        (
            "mqtt_3_3_2_14 will response topic with wildcard",
            with(&|c| {
                let mut props = vec![0x08];
                string(b"re/+", &mut props);
                c.will = Some((props, b"a/b".to_vec()));
            }),
            ReasonCode::PROTOCOL_ERROR,
        ),
    ]
}

/// Sends `bytes` as the first thing on a new connection and returns all the broker sent
/// before it closed.
async fn reply_to(broker: &TestBroker, version: ProtocolVersion, bytes: &[u8]) -> Vec<u8> {
    let mut client = broker.raw(version).await;
    client.send_bytes(bytes).await;
    let (reply, closed) = client.read_to_close(Duration::from_secs(2)).await;
    assert!(closed, "not closed; got {reply:02x?}");
    reply
}

// [MQTT-4.13.1-1] (5.0): a malformed CONNECT or one breaking a protocol rule is answered with
// CONNACK and the reason code, then the connection is closed.
#[tokio::test]
async fn mqtt_4_13_1_1_v5_undecodable_connect_gets_connack_with_reason() {
    let broker = TestBroker::start().await;
    for (what, connect, code) in cases() {
        let reply = reply_to(&broker, V5, &connect.bytes()).await;
        assert_eq!(reply, [0x20, 0x03, 0x00, code.0, 0x00], "{what}");
    }
    assert!(Metrics::get(&broker.broker().metrics().protocol_errors) >= cases().len() as u64);
    // A valid CONNECT still connects.
    let _ok = broker.client(V5, "ok").await;
    broker.running.stop().await;
}

// [MQTT-4.8.0-1] (3.1.1): a malformed CONNECT has no CONNACK return code: the connection is
// closed without one.
#[tokio::test]
async fn mqtt_4_8_0_1_v311_undecodable_connect_closes_without_connack() {
    let broker = TestBroker::start().await;
    for (what, mut connect, _) in cases() {
        if !connect.props.is_empty() || connect.will.as_ref().is_some_and(|w| !w.0.is_empty()) {
            continue; // 5.0 properties only
        }
        connect.version = V3;
        let reply = reply_to(&broker, V3, &connect.bytes()).await;
        assert!(reply.is_empty(), "{what}: got {reply:02x?}");
    }
    broker.running.stop().await;
}

// 3.2.2.3.6 / [MQTT-3.1.2-24]-side: a CONNECT above the broker's Maximum Packet Size is
// refused from its fixed header with CONNACK 0x95 (5.0), without reading the body; 3.1.1
// has no return code for it and just closes.
#[tokio::test]
async fn v5_connect_too_large_gets_connack_0x95() {
    let broker = TestBroker::start_with(|c| c.limits.max_packet_size_bytes = 1024).await;
    for version in [V5, V3] {
        let mut connect = RawConnect::new(version);
        connect.client_id = vec![b'x'; 2000];
        let reply = reply_to(&broker, version, &connect.bytes()).await;
        if version.is_v5() {
            assert_eq!(reply, [0x20, 0x03, 0x00, 0x95, 0x00]);
        } else {
            assert!(reply.is_empty(), "3.1.1: got {reply:02x?}");
        }
    }
    // Announcing 100 MB with only the protocol name and level sent is refused at once.
    let mut bytes = vec![0x10];
    varint(100_000_000, &mut bytes);
    bytes.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 5]);
    let reply = reply_to(&broker, V5, &bytes).await;
    assert_eq!(reply, [0x20, 0x03, 0x00, 0x95, 0x00]);
    broker.running.stop().await;
}
