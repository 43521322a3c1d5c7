//! DESIGN.md's "Patching checklist", line by line, across protocol versions (5.0 publisher
//! -> 3.1.1 subscriber and back). Subscribers here read raw frames, so each test can check
//! the exact bytes a subscriber gets, not only what a lenient decoder makes of them.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_codec::{
    ByteStr, Connect, Decoder, Packet, PacketId, ProtocolVersion, PubAck, PubComp, PubRec, Publish,
    PublishProperties, PublishQoS, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions,
};
use tern_tests::{Client, TestBroker, RECV_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const QUIET: Duration = Duration::from_millis(250);
const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
const PAIRS: [(ProtocolVersion, ProtocolVersion); 4] = [(V5, V3), (V3, V5), (V5, V5), (V3, V3)];

/// A subscriber that reads whole frames as bytes.
struct RawSub {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
    next_id: u16,
}

impl RawSub {
    async fn connect(broker: &TestBroker, connect: Connect) -> RawSub {
        let version = connect.protocol;
        let stream = TcpStream::connect(broker.addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut sub = RawSub {
            stream,
            buf: BytesMut::new(),
            version,
            next_id: 0,
        };
        sub.send(&Packet::Connect(Box::new(connect))).await;
        match sub.packet().await.1 {
            Packet::ConnAck(c) => assert_eq!(c.code, ReasonCode::SUCCESS),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        sub
    }

    async fn new(broker: &TestBroker, version: ProtocolVersion, id: &str) -> RawSub {
        RawSub::connect(broker, Connect::new(version, id)).await
    }

    async fn send(&mut self, packet: &Packet) {
        let bytes = packet.to_bytes(self.version);
        self.stream.write_all(&bytes).await.expect("send");
    }

    /// The next whole frame, if one arrives within `wait` (None at end of stream too).
    async fn frame_within(&mut self, wait: Duration) -> Option<Bytes> {
        self.read_frame(wait).await.flatten()
    }

    /// The next whole frame within `wait`: `None` when none came in time, `Some(None)` at
    /// end of stream or on a read error.
    async fn read_frame(&mut self, wait: Duration) -> Option<Option<Bytes>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 2 {
                let mut len = 0usize;
                let mut shift = 0;
                for i in 1..self.buf.len().min(5) {
                    let b = self.buf[i];
                    len |= usize::from(b & 0x7F) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        let total = 1 + i + len;
                        if self.buf.len() >= total {
                            return Some(Some(self.buf.split_to(total).freeze()));
                        }
                        break;
                    }
                }
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_elapsed) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    fn decode(&self, frame: &Bytes) -> Packet {
        let mut decoder = Decoder::with_version(self.version, u32::MAX);
        let mut buf = BytesMut::from(&frame[..]);
        let packet = decoder
            .decode(&mut buf)
            .unwrap_or_else(|e| {
                panic!(
                    "{:?} subscriber got undecodable bytes {frame:02X?}: {e}",
                    self.version
                )
            })
            .expect("whole frame");
        assert!(buf.is_empty(), "trailing bytes");
        packet
    }

    async fn packet(&mut self) -> (Bytes, Packet) {
        let frame = self
            .frame_within(RECV_TIMEOUT)
            .await
            .expect("a packet in time");
        let packet = self.decode(&frame);
        (frame, packet)
    }

    async fn publish(&mut self) -> (Bytes, Publish) {
        match self.packet().await {
            (frame, Packet::Publish(p)) => (frame, p),
            (_, other) => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts the connection stays open and silent for `wait` (a frame, the end of stream
    /// or a read error fails).
    async fn expect_nothing(&mut self, wait: Duration) {
        match self.read_frame(wait).await {
            None => {}
            Some(Some(frame)) => panic!("expected nothing, got {:?}", self.decode(&frame)),
            Some(None) => panic!("expected nothing, but the connection closed"),
        }
    }

    async fn subscribe_with(
        &mut self,
        filters: &[(&str, SubscriptionOptions)],
        subscription_id: Option<u32>,
    ) -> SubAck {
        self.next_id += 1;
        let mut subscribe = Subscribe {
            packet_id: PacketId::new(self.next_id).expect("id"),
            properties: Default::default(),
            filters: filters
                .iter()
                .map(|(f, o)| (ByteStr::from(*f), *o))
                .collect(),
        };
        subscribe.properties.subscription_identifier = subscription_id;
        self.send(&Packet::Subscribe(Box::new(subscribe))).await;
        match self.packet().await.1 {
            Packet::SubAck(s) => *s,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_with(&[(filter, SubscriptionOptions::with_qos(qos))], None)
            .await
    }

    async fn ack(&mut self, publish: &Publish) {
        match publish.publish_qos() {
            PublishQoS::AtLeastOnce(id) => self.send(&Packet::PubAck(PubAck::new(id))).await,
            PublishQoS::ExactlyOnce(id) => {
                self.send(&Packet::PubRec(PubRec::new(id))).await;
                match self.packet().await.1 {
                    Packet::PubRel(rel) if rel.packet_id == id => {}
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(&Packet::PubComp(PubComp::new(id))).await;
            }
            _ => {}
        }
    }

    async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Default::default())).await;
        let _ = self.frame_within(Duration::from_secs(1)).await;
    }
}

/// The exact bytes the broker must send: the message as published, with the delivery's
/// QoS, RETAIN and packet id, DUP 0, and `properties` (ignored for 3.1.1).
#[allow(clippy::too_many_arguments)]
fn expected_frame(
    version: ProtocolVersion,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    packet_id: Option<PacketId>,
    properties: &PublishProperties,
) -> Bytes {
    let mut p = Publish::new(topic, payload.to_vec())
        .with_qos(PublishQoS::new(qos, packet_id).expect("a packet id exactly when QoS > 0"));
    p.retain = retain;
    if version.is_v5() {
        *p.properties_mut() = properties.clone();
    }
    Packet::Publish(p).to_bytes(version).freeze()
}

/// Properties a 5.0 publisher sets (and a 3.1.1 publisher cannot).
fn v5_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some(ByteStr::from("text/plain")),
        response_topic: Some(ByteStr::from("resp/topic")),
        correlation_data: Some(Bytes::from_static(b"cid")),
        user_properties: vec![(ByteStr::from("k"), ByteStr::from("v"))],
        ..Default::default()
    }
}

/// What a subscriber of `sub` version should see of a message from `publisher`.
fn forwarded_properties(publisher: ProtocolVersion) -> PublishProperties {
    if publisher.is_v5() {
        v5_properties()
    } else {
        PublishProperties::default()
    }
}

async fn publish_from(
    client: &mut Client,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    change: impl FnOnce(&mut Publish),
) {
    // publish_packet replaces the placeholder packet id with the client's next one.
    let mut p =
        Publish::new(topic, payload.to_vec()).with_qos(PublishQoS::with_id(qos, PacketId::MIN));
    p.retain = retain;
    if client.version.is_v5() {
        *p.properties_mut() = v5_properties();
    }
    change(&mut p);
    client.publish_packet(p).await;
}

fn byte0_qos(frame: &Bytes) -> u8 {
    (frame[0] >> 1) & 0b11
}

// Checklist: "QoS = min(publish QoS, granted QoS). A downgrade to QoS 0 changes the layout
// (the packet-id bytes disappear)". [MQTT-3.8.4-8] / 5.0 section 3.3.4,
// [MQTT-3.8.4-6] 3.8.4 (3.1.1): the delivery QoS is the minimum; every version pair, every
// combination, exact bytes (no packet id on a QoS 0 delivery).
#[tokio::test]
async fn qos_is_min_of_publish_and_granted_with_qos0_layout() {
    let broker = TestBroker::start().await;
    for (pub_v, sub_v) in PAIRS {
        let mut subs = Vec::new();
        for granted in QOS {
            let mut sub = RawSub::new(&broker, sub_v, &format!("qmin-{granted:?}")).await;
            sub.subscribe("qmin/t", granted).await;
            subs.push((granted, sub));
        }
        let mut publisher = broker.client(pub_v, "qmin-pub").await;
        for qos in QOS {
            publish_from(&mut publisher, "qmin/t", b"payload", qos, false, |_| {}).await;
            for (granted, sub) in subs.iter_mut() {
                let (frame, got) = sub.publish().await;
                let effective = qos.min(*granted);
                assert_eq!(
                    byte0_qos(&frame),
                    effective as u8,
                    "{pub_v:?}->{sub_v:?} {qos:?}/{granted:?}"
                );
                assert_eq!(got.packet_id().is_some(), effective != QoS::AtMostOnce);
                let expected = expected_frame(
                    sub_v,
                    "qmin/t",
                    b"payload",
                    effective,
                    false,
                    got.packet_id(),
                    &forwarded_properties(pub_v),
                );
                assert_eq!(frame, expected, "{pub_v:?}->{sub_v:?} {qos:?}/{granted:?}");
                sub.ack(&got).await;
            }
        }
        for (_, sub) in subs {
            sub.disconnect().await;
        }
        publisher.disconnect().await;
    }
}

// Checklist: "RETAIN on live delivery = retain-as-published ? original : 0. On delivery of a
// retained message because of a SUBSCRIBE, it is 1." [MQTT-3.3.1-12] [MQTT-3.3.1-13]
// (5.0), [MQTT-3.3.1-8] [MQTT-3.3.1-9] (3.1.1).
#[tokio::test]
async fn retain_flag_live_and_on_subscribe_across_versions() {
    let broker = TestBroker::start().await;
    for (pub_v, sub_v) in PAIRS {
        let topic = format!("rf/{pub_v:?}/{sub_v:?}");
        let mut plain = RawSub::new(&broker, sub_v, "rf-plain").await;
        plain.subscribe(&topic, QoS::AtLeastOnce).await;
        let mut rap = RawSub::new(&broker, V5, "rf-rap").await;
        rap.subscribe_with(
            &[(
                &topic,
                SubscriptionOptions {
                    retain_as_published: true,
                    ..SubscriptionOptions::with_qos(QoS::AtLeastOnce)
                },
            )],
            None,
        )
        .await;
        let mut publisher = broker.client(pub_v, "rf-pub").await;
        for qos in QOS {
            for retain in [true, false] {
                publish_from(&mut publisher, &topic, b"r", qos, retain, |_| {}).await;
                let (frame, got) = plain.publish().await;
                assert_eq!(
                    frame[0] & 1,
                    0,
                    "{pub_v:?}->{sub_v:?}: live RETAIN must be 0"
                );
                let expected = expected_frame(
                    sub_v,
                    &topic,
                    b"r",
                    qos.min(QoS::AtLeastOnce),
                    false,
                    got.packet_id(),
                    &forwarded_properties(pub_v),
                );
                assert_eq!(frame, expected);
                plain.ack(&got).await;
                let (frame, got) = rap.publish().await;
                assert_eq!(
                    frame[0] & 1 == 1,
                    retain,
                    "Retain As Published keeps {retain}"
                );
                rap.ack(&got).await;
            }
        }
        // The last retained one (QoS 2, "r") is sent with RETAIN 1 on a new subscription.
        publish_from(
            &mut publisher,
            &topic,
            b"kept",
            QoS::ExactlyOnce,
            true,
            |_| {},
        )
        .await;
        let (frame, got) = plain.publish().await;
        let expected = expected_frame(
            sub_v,
            &topic,
            b"kept",
            QoS::AtLeastOnce,
            false,
            got.packet_id(),
            &forwarded_properties(pub_v),
        );
        assert_eq!(frame, expected, "{pub_v:?}->{sub_v:?}: live RETAIN 0");
        plain.ack(&got).await;
        let (frame, got) = rap.publish().await;
        let expected = expected_frame(
            V5,
            &topic,
            b"kept",
            QoS::AtLeastOnce,
            true,
            got.packet_id(),
            &forwarded_properties(pub_v),
        );
        assert_eq!(
            frame, expected,
            "{pub_v:?}->V5: Retain As Published keeps RETAIN 1"
        );
        rap.ack(&got).await;
        let mut late = RawSub::new(&broker, sub_v, "rf-late").await;
        late.subscribe(&topic, QoS::ExactlyOnce).await;
        let (frame, got) = late.publish().await;
        let expected = expected_frame(
            sub_v,
            &topic,
            b"kept",
            QoS::ExactlyOnce,
            true,
            got.packet_id(),
            &forwarded_properties(pub_v),
        );
        assert_eq!(
            frame, expected,
            "{pub_v:?}->{sub_v:?}: RETAIN 1 at subscribe"
        );
        late.ack(&got).await;
        publish_from(&mut publisher, &topic, b"", QoS::AtMostOnce, true, |_| {}).await;
        late.disconnect().await;
        plain.disconnect().await;
        rap.disconnect().await;
        publisher.disconnect().await;
    }
}

// Checklist: "DUP = 0 on first send, 1 only on resending the same packet id."
// [MQTT-3.3.1-3]: the outgoing DUP is independent of the incoming one; [MQTT-4.4.0-1]
// (5.0) / [MQTT-4.4.0-1] (3.1.1): unacknowledged messages are resent with DUP 1 on resume.
#[tokio::test]
async fn dup_zero_on_first_send_one_on_resend_across_versions() {
    let broker = TestBroker::start().await;
    for (pub_v, sub_v) in PAIRS {
        let id = format!("dup-{pub_v:?}-{sub_v:?}");
        let persistent = |version: ProtocolVersion| {
            let mut c = Connect::new(version, id.as_str());
            c.clean_start = false;
            if version.is_v5() {
                c.properties.session_expiry_interval_secs = Some(60);
            }
            c
        };
        let mut sub = RawSub::connect(&broker, persistent(sub_v)).await;
        sub.subscribe("dup/t", QoS::ExactlyOnce).await;
        let mut publisher = broker.client(pub_v, "dup-pub").await;
        // The publisher's first attempt arrives flagged DUP=1 (as if an earlier send got lost).
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publish_from(&mut publisher, "dup/t", b"d", qos, false, |p| p.dup = true).await;
        }
        let (f1, p1) = sub.publish().await;
        let (f2, p2) = sub.publish().await;
        for frame in [&f1, &f2] {
            assert_eq!(
                frame[0] & 0b1000,
                0,
                "{pub_v:?}->{sub_v:?}: DUP 0 on first send"
            );
        }
        // Not acknowledged; the connection drops; on resume both come again with DUP 1 and
        // the same packet ids, otherwise identical.
        drop(sub);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut sub = RawSub::connect(&broker, persistent(sub_v)).await;
        for (first_frame, first) in [(f1, p1), (f2, p2)] {
            let (frame, got) = sub.publish().await;
            assert_eq!(got.packet_id(), first.packet_id());
            assert_eq!(frame[0], first_frame[0] | 0b1000, "DUP 1 on resend");
            assert_eq!(frame[1..], first_frame[1..]);
            sub.ack(&got).await;
        }
        // A new message after the resends: DUP 0.
        publish_from(
            &mut publisher,
            "dup/t",
            b"new",
            QoS::AtLeastOnce,
            false,
            |_| {},
        )
        .await;
        let (frame, got) = sub.publish().await;
        assert_eq!(frame[0] & 0b1000, 0);
        sub.ack(&got).await;
        sub.disconnect().await;
        publisher.disconnect().await;
    }
}

// Checklist: "Always strip the inbound topic alias." A 5.0 publisher's Topic Alias is never
// seen by any subscriber (5.0 without aliases: exact bytes without it; 3.1.1: exact 3.1.1
// bytes); a 5.0 subscriber with its own Topic Alias Maximum gets the broker's aliases,
// starting with the full topic.
#[tokio::test]
async fn inbound_topic_alias_stripped_before_fan_out() {
    let broker = TestBroker::start().await;
    let mut v3 = RawSub::new(&broker, V3, "strip-3").await;
    v3.subscribe("strip/#", QoS::AtLeastOnce).await;
    let mut v5 = RawSub::new(&broker, V5, "strip-5").await;
    v5.subscribe("strip/#", QoS::AtLeastOnce).await;
    let mut own = RawSub::connect(&broker, {
        let mut c = Connect::new(V5, "strip-own");
        c.properties.topic_alias_maximum = Some(5);
        c
    })
    .await;
    own.subscribe("strip/#", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(V5, "strip-pub").await;
    for (i, topic_on_wire) in ["strip/a", "", ""].into_iter().enumerate() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            publish_from(&mut publisher, topic_on_wire, &[i as u8], qos, false, |p| {
                p.properties_mut().topic_alias = Some(3)
            })
            .await;
            for sub in [&mut v3, &mut v5] {
                let (frame, got) = sub.publish().await;
                let expected = expected_frame(
                    sub.version,
                    "strip/a",
                    &[i as u8],
                    qos,
                    false,
                    got.packet_id(),
                    &v5_properties(),
                );
                assert_eq!(frame, expected, "{:?} message {i} {qos:?}", sub.version);
                sub.ack(&got).await;
            }
            let (_, got) = own.publish().await;
            if i == 0 && qos == QoS::AtMostOnce {
                assert_eq!(
                    got.topic(),
                    "strip/a",
                    "first use of an alias carries the topic"
                );
            }
            if let Some(alias) = got.properties().topic_alias() {
                assert!((1..=5).contains(&alias));
            }
            let mut props = got.properties().to_properties();
            props.topic_alias = None;
            assert_eq!(props, v5_properties());
            own.ack(&got).await;
        }
    }
}

// Checklist: "Subscription identifiers are per subscription". [MQTT-3.3.4-3]: each 5.0
// subscriber gets its own identifier; a 3.1.1 subscriber none (exact bytes); from either
// publisher version.
#[tokio::test]
async fn subscription_ids_per_subscription_across_versions() {
    let broker = TestBroker::start().await;
    let mut a = RawSub::new(&broker, V5, "sidx-a").await;
    a.subscribe_with(
        &[("sidx/+", SubscriptionOptions::with_qos(QoS::AtLeastOnce))],
        Some(11),
    )
    .await;
    let mut b = RawSub::new(&broker, V5, "sidx-b").await;
    b.subscribe_with(
        &[("sidx/+", SubscriptionOptions::with_qos(QoS::AtLeastOnce))],
        Some(268_435_455),
    )
    .await;
    let mut c = RawSub::new(&broker, V3, "sidx-c").await;
    c.subscribe("sidx/+", QoS::AtLeastOnce).await;
    for pub_v in [V5, V3] {
        let mut publisher = broker.client(pub_v, "sidx-pub").await;
        for qos in QOS {
            publish_from(&mut publisher, "sidx/t", b"s", qos, false, |_| {}).await;
            for (sub, id) in [(&mut a, 11u32), (&mut b, 268_435_455)] {
                let (frame, got) = sub.publish().await;
                assert_eq!(
                    got.properties()
                        .subscription_identifiers()
                        .collect::<Vec<_>>(),
                    vec![id]
                );
                let mut expected_props = forwarded_properties(pub_v);
                expected_props.subscription_identifiers = vec![id];
                assert_eq!(got.properties(), expected_props);
                let expected_len = expected_frame(
                    V5,
                    "sidx/t",
                    b"s",
                    qos.min(QoS::AtLeastOnce),
                    false,
                    got.packet_id(),
                    &expected_props,
                )
                .len();
                assert_eq!(frame.len(), expected_len);
                sub.ack(&got).await;
            }
            let (frame, got) = c.publish().await;
            let expected = expected_frame(
                V3,
                "sidx/t",
                b"s",
                qos.min(QoS::AtLeastOnce),
                false,
                got.packet_id(),
                &PublishProperties::default(),
            );
            assert_eq!(frame, expected);
            c.ack(&got).await;
        }
        publisher.disconnect().await;
    }
}

// Checklist: "Message expiry: send the remaining interval". [MQTT-3.3.2-6]: a 5.0
// subscriber gets the interval; a 3.1.1 subscriber gets the 3.1.1 bytes (no properties).
#[tokio::test]
async fn message_expiry_forwarded_to_v5_and_stripped_for_v3() {
    let broker = TestBroker::start().await;
    let mut v5 = RawSub::new(&broker, V5, "mexp-5").await;
    v5.subscribe("mexp/t", QoS::ExactlyOnce).await;
    let mut v3 = RawSub::new(&broker, V3, "mexp-3").await;
    v3.subscribe("mexp/t", QoS::ExactlyOnce).await;
    let mut publisher = broker.client(V5, "mexp-pub").await;
    for qos in QOS {
        publish_from(&mut publisher, "mexp/t", b"e", qos, false, |p| {
            p.properties_mut().message_expiry_interval_secs = Some(3600)
        })
        .await;
        let (frame, got) = v5.publish().await;
        let mut props = v5_properties();
        props.message_expiry_interval_secs = Some(3600);
        assert_eq!(got.properties(), props, "not delayed: the full interval");
        assert_eq!(
            frame,
            expected_frame(V5, "mexp/t", b"e", qos, false, got.packet_id(), &props)
        );
        v5.ack(&got).await;
        let (frame, got) = v3.publish().await;
        assert_eq!(
            frame,
            expected_frame(V3, "mexp/t", b"e", qos, false, got.packet_id(), &props)
        );
        v3.ack(&got).await;
    }
}

// Checklist: "Maximum packet size is the receiver's ... a message too big for one
// subscriber is dropped for that subscriber alone." [MQTT-3.1.2-24] [MQTT-3.1.2-25]; the
// size is checked on the bytes that subscriber would get (a 5.0 PUBLISH with properties is
// larger than the same message for 3.1.1).
#[tokio::test]
async fn max_packet_size_checked_per_subscriber_layout() {
    let broker = TestBroker::start().await;
    let payload = [b'p'; 40];
    // The 3.1.1 encoding of the message at QoS 1.
    let v3_len = expected_frame(
        V3,
        "mps/t",
        &payload,
        QoS::AtLeastOnce,
        false,
        PacketId::new(1),
        &PublishProperties::default(),
    )
    .len();
    let v5_len = expected_frame(
        V5,
        "mps/t",
        &payload,
        QoS::AtLeastOnce,
        false,
        PacketId::new(1),
        &v5_properties(),
    )
    .len();
    assert!(v5_len > v3_len + 10);
    // A 5.0 subscriber whose limit lies between the two sizes cannot take the 5.0 message.
    let mut tight = RawSub::connect(&broker, {
        let mut c = Connect::new(V5, "mps-tight");
        c.properties.maximum_packet_size_bytes = Some(v3_len as u32 + 5);
        c
    })
    .await;
    tight.subscribe("mps/t", QoS::AtLeastOnce).await;
    let mut exact = RawSub::connect(&broker, {
        let mut c = Connect::new(V5, "mps-exact");
        c.properties.maximum_packet_size_bytes = Some(v5_len as u32);
        c
    })
    .await;
    exact.subscribe("mps/t", QoS::AtLeastOnce).await;
    let mut v3 = RawSub::new(&broker, V3, "mps-v3").await;
    v3.subscribe("mps/t", QoS::AtLeastOnce).await;

    let mut publisher = broker.client(V5, "mps-pub").await;
    publish_from(
        &mut publisher,
        "mps/t",
        &payload,
        QoS::AtLeastOnce,
        false,
        |_| {},
    )
    .await;
    let (frame, got) = exact.publish().await;
    assert_eq!(frame.len(), v5_len, "exactly at the limit is allowed");
    exact.ack(&got).await;
    let (frame, got) = v3.publish().await;
    assert_eq!(frame.len(), v3_len);
    v3.ack(&got).await;
    tight.expect_nothing(QUIET).await;

    // The same message from a 3.1.1 publisher (no properties) fits the tight subscriber.
    let mut publisher3 = broker.client(V3, "mps-pub3").await;
    publish_from(
        &mut publisher3,
        "mps/t",
        &payload,
        QoS::AtLeastOnce,
        false,
        |_| {},
    )
    .await;
    let (frame, got) = tight.publish().await;
    assert!(frame.len() <= v3_len + 5);
    assert_eq!(got.payload(), payload);
    tight.ack(&got).await;
}

// Checklist: "Never serve 5.0 bytes to a 3.1.1 client or the reverse." Exact bytes both
// ways, every QoS, with every property a 5.0 publisher can set.
#[tokio::test]
async fn never_serve_v5_bytes_to_v3_or_the_reverse() {
    let broker = TestBroker::start().await;
    let mut v3 = RawSub::new(&broker, V3, "wire-3").await;
    v3.subscribe("wire/t", QoS::ExactlyOnce).await;
    let mut v5 = RawSub::new(&broker, V5, "wire-5").await;
    v5.subscribe("wire/t", QoS::ExactlyOnce).await;
    let mut pub5 = broker.client(V5, "wire-pub5").await;
    let mut pub3 = broker.client(V3, "wire-pub3").await;
    for qos in QOS {
        for (publisher, props) in [
            (&mut pub5, v5_properties()),
            (&mut pub3, PublishProperties::default()),
        ] {
            publish_from(publisher, "wire/t", b"bytes", qos, false, |p| {
                p.properties_mut().message_expiry_interval_secs =
                    p.properties().content_type().as_ref().map(|_| 500);
            })
            .await;
            let mut props = props;
            if props.content_type.is_some() {
                props.message_expiry_interval_secs = Some(500);
            }
            for sub in [&mut v3, &mut v5] {
                let (frame, got) = sub.publish().await;
                let expected = expected_frame(
                    sub.version,
                    "wire/t",
                    b"bytes",
                    qos,
                    false,
                    got.packet_id(),
                    &props,
                );
                assert_eq!(frame, expected, "{:?} subscriber, {qos:?}", sub.version);
                sub.ack(&got).await;
            }
        }
    }
    // The 3.1.1 frame has no property length byte at all: topic (2+6) + id (2) + payload (5).
    pub5.publish("wire/t", b"bytes", QoS::AtLeastOnce, false)
        .await;
    let (frame, got) = v3.publish().await;
    assert_eq!(frame.len(), 2 + (2 + 6) + 2 + 5);
    v3.ack(&got).await;
    let (frame, got) = v5.publish().await;
    assert_eq!(
        frame.len(),
        2 + (2 + 6) + 2 + 1 + 5,
        "5.0: one property length byte"
    );
    v5.ack(&got).await;
}

// Checklist: "Overlapping subscriptions of one client: deliver ONE copy, at the highest
// granted QoS, carrying every matching subscription identifier (5.0)." [MQTT-3.3.4-2]
// [MQTT-3.3.4-4]; across publisher versions, for 5.0 and 3.1.1 subscribers.
#[tokio::test]
async fn overlapping_subscriptions_one_copy_across_versions() {
    let broker = TestBroker::start().await;
    let mut v5 = RawSub::new(&broker, V5, "ovx-5").await;
    v5.subscribe_with(
        &[("ovx/+", SubscriptionOptions::with_qos(QoS::AtMostOnce))],
        Some(1),
    )
    .await;
    v5.subscribe_with(
        &[("ovx/#", SubscriptionOptions::with_qos(QoS::ExactlyOnce))],
        Some(2),
    )
    .await;
    v5.subscribe_with(
        &[("ovx/t", SubscriptionOptions::with_qos(QoS::AtLeastOnce))],
        None,
    )
    .await;
    let mut v3 = RawSub::new(&broker, V3, "ovx-3").await;
    v3.subscribe("ovx/+", QoS::AtMostOnce).await;
    v3.subscribe("ovx/#", QoS::AtLeastOnce).await;
    for pub_v in [V5, V3] {
        let mut publisher = broker.client(pub_v, "ovx-pub").await;
        for qos in QOS {
            publish_from(&mut publisher, "ovx/t", b"o", qos, false, |_| {}).await;
            let (frame, got) = v5.publish().await;
            assert_eq!(byte0_qos(&frame), qos as u8, "highest granted is 2");
            let mut ids = got
                .properties()
                .subscription_identifiers()
                .collect::<Vec<_>>();
            ids.sort();
            assert_eq!(ids, vec![1, 2]);
            v5.ack(&got).await;
            v5.expect_nothing(Duration::from_millis(100)).await;
            let (frame, got) = v3.publish().await;
            let expected = expected_frame(
                V3,
                "ovx/t",
                b"o",
                qos.min(QoS::AtLeastOnce),
                false,
                got.packet_id(),
                &PublishProperties::default(),
            );
            assert_eq!(frame, expected);
            v3.ack(&got).await;
            v3.expect_nothing(Duration::from_millis(100)).await;
        }
        publisher.disconnect().await;
    }
}

// Checklist, QoS and RETAIN together on the retained path: a retained QoS 2 message sent
// because of a SUBSCRIBE granted QoS 0 uses the QoS 0 layout (no packet id) with RETAIN 1,
// exact bytes for each version pair.
#[tokio::test]
async fn retained_on_subscribe_downgraded_to_qos0_exact_bytes() {
    let broker = TestBroker::start().await;
    for (pub_v, sub_v) in PAIRS {
        let topic = format!("rq0/{pub_v:?}/{sub_v:?}");
        let mut publisher = broker.client(pub_v, "rq0-pub").await;
        publish_from(
            &mut publisher,
            &topic,
            b"kept",
            QoS::ExactlyOnce,
            true,
            |_| {},
        )
        .await;
        for granted in QOS {
            let mut sub = RawSub::new(&broker, sub_v, "rq0-sub").await;
            sub.subscribe(&topic, granted).await;
            let (frame, got) = sub.publish().await;
            let expected = expected_frame(
                sub_v,
                &topic,
                b"kept",
                granted,
                true,
                got.packet_id(),
                &forwarded_properties(pub_v),
            );
            assert_eq!(frame, expected, "{pub_v:?}->{sub_v:?} granted {granted:?}");
            assert_eq!(got.packet_id().is_some(), granted != QoS::AtMostOnce);
            sub.ack(&got).await;
            sub.disconnect().await;
        }
        publish_from(&mut publisher, &topic, b"", QoS::AtMostOnce, true, |_| {}).await;
        publisher.disconnect().await;
    }
}
