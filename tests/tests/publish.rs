//! PUBLISH conformance (MQTT 3.1.1 and 5.0 sections 3.3 to 3.7, 4.3, 4.9): QoS flows in both
//! directions, QoS 2 de-duplication, reason codes, flow control (Receive Maximum both ways),
//! topic aliases both ways, message expiry, property pass-through, Maximum Packet Size and
//! retained messages.

use std::time::Duration;

use bytes::Bytes;
use tern_codec::{
    ByteStr, Connect, Packet, PacketId, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishQoS, QoS, ReasonCode, SubscriptionOptions,
};
use tern_tests::{duplex_client, test_config, Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const QUIET: Duration = Duration::from_millis(250);
const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

/// A PUBLISH at `qos`; for QoS > 0 its packet id is a placeholder that `send_raw` or
/// `Client::publish_packet` replace.
fn msg(topic: &str, payload: &[u8], qos: QoS) -> Publish {
    Publish::new(topic, payload.to_vec()).with_qos(PublishQoS::with_id(qos, pid(1)))
}

/// Sends a PUBLISH as it is (packet id chosen by the test), without waiting for acks.
async fn send_raw(client: &mut Client, mut publish: Publish, id: Option<u16>) {
    publish.set_qos(
        PublishQoS::new(publish.qos(), id.map(pid)).expect("a packet id exactly when QoS > 0"),
    );
    client.send(&Packet::Publish(publish)).await;
}

async fn connect_with(
    broker: &TestBroker,
    version: ProtocolVersion,
    id: &str,
    change: impl FnOnce(&mut Connect),
) -> Client {
    let mut connect = Connect::new(version, id);
    change(&mut connect);
    let mut client = broker.raw(version).await;
    let connack = client.connect(connect).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS, "{connack:?}");
    client
}

async fn expect_packet(client: &mut Client) -> Packet {
    client.recv().await
}

// [MQTT-4.3.1-1] [MQTT-4.3.2-1] [MQTT-4.3.3-1] (and 3.1.1 [MQTT-4.3.2-1] [MQTT-4.3.3-1]):
// QoS 0, 1 and 2 both ways, each version: inbound acks with the sender's packet id,
// outbound with a packet id exactly when QoS > 0, DUP 0, full PUBREC/PUBREL/PUBCOMP.
#[tokio::test]
async fn qos_0_1_2_both_directions_both_versions() {
    let broker = TestBroker::start().await;
    for version in [V5, V3] {
        let mut sub = broker.client(version, "q-sub").await;
        sub.subscribe("q/+", QoS::ExactlyOnce).await;
        let mut publisher = broker.client(version, "q-pub").await;
        for qos in QOS {
            // Inbound flow, by hand, with a distinctive packet id.
            let raw_id = 0x1234 + qos as u16;
            let id = (qos != QoS::AtMostOnce).then_some(raw_id);
            send_raw(&mut publisher, msg("q/x", b"payload", qos), id).await;
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => match expect_packet(&mut publisher).await {
                    Packet::PubAck(ack) => {
                        assert_eq!(ack.packet_id, pid(raw_id));
                        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
                    }
                    other => panic!("expected PUBACK, got {other:?}"),
                },
                QoS::ExactlyOnce => {
                    match expect_packet(&mut publisher).await {
                        Packet::PubRec(rec) => assert_eq!(rec.packet_id, pid(raw_id)),
                        other => panic!("expected PUBREC, got {other:?}"),
                    }
                    publisher
                        .send(&Packet::PubRel(PubRel::new(pid(raw_id))))
                        .await;
                    match expect_packet(&mut publisher).await {
                        Packet::PubComp(comp) => {
                            assert_eq!(comp.packet_id, pid(raw_id));
                            assert_eq!(comp.reason_code, ReasonCode::SUCCESS);
                        }
                        other => panic!("expected PUBCOMP, got {other:?}"),
                    }
                }
            }
            // Outbound flow.
            let got = sub.expect_publish().await;
            assert_eq!(got.qos(), qos, "{version:?}");
            assert_eq!(got.packet_id().is_some(), qos != QoS::AtMostOnce);
            assert!(!got.dup);
            assert_eq!((got.topic(), got.payload()), ("q/x", &b"payload"[..]));
            sub.ack(&got).await;
        }
        sub.ping().await;
        sub.expect_nothing(QUIET).await;
        publisher.disconnect().await;
        sub.disconnect().await;
    }
}

// [MQTT-4.3.3-10] (5.0) / [MQTT-4.3.3-2] (3.1.1): until PUBREL, a resent QoS 2 PUBLISH with
// the same packet id is answered with PUBREC and NOT delivered again; after PUBCOMP the id
// starts a new message ([MQTT-4.3.3-12]).
#[tokio::test]
async fn inbound_qos2_delivered_once_until_pubrel_mqtt_4_3_3_10() {
    let broker = TestBroker::start().await;
    for version in [V5, V3] {
        let mut sub = broker.client(version, "dd-sub").await;
        sub.subscribe("dd/t", QoS::ExactlyOnce).await;
        let mut publisher = broker.client(version, "dd-pub").await;
        send_raw(
            &mut publisher,
            msg("dd/t", b"once", QoS::ExactlyOnce),
            Some(7),
        )
        .await;
        assert!(
            matches!(expect_packet(&mut publisher).await, Packet::PubRec(r) if r.packet_id == pid(7))
        );
        let mut resend = msg("dd/t", b"once", QoS::ExactlyOnce);
        resend.dup = true;
        send_raw(&mut publisher, resend.clone(), Some(7)).await;
        assert!(
            matches!(expect_packet(&mut publisher).await, Packet::PubRec(r) if r.packet_id == pid(7))
        );
        send_raw(&mut publisher, resend, Some(7)).await;
        assert!(
            matches!(expect_packet(&mut publisher).await, Packet::PubRec(r) if r.packet_id == pid(7))
        );

        let got = sub.expect_publish_acked().await;
        assert_eq!(got.payload(), b"once");
        sub.expect_nothing(QUIET).await;

        publisher.send(&Packet::PubRel(PubRel::new(pid(7)))).await;
        assert!(
            matches!(expect_packet(&mut publisher).await, Packet::PubComp(c) if c.packet_id == pid(7) && c.reason_code == ReasonCode::SUCCESS)
        );
        // The same id after PUBCOMP is a new message.
        send_raw(
            &mut publisher,
            msg("dd/t", b"again", QoS::ExactlyOnce),
            Some(7),
        )
        .await;
        assert!(
            matches!(expect_packet(&mut publisher).await, Packet::PubRec(r) if r.packet_id == pid(7))
        );
        assert_eq!(sub.expect_publish_acked().await.payload(), b"again");
        publisher.send(&Packet::PubRel(PubRel::new(pid(7)))).await;
        assert!(matches!(
            expect_packet(&mut publisher).await,
            Packet::PubComp(_)
        ));
        publisher.disconnect().await;
        sub.disconnect().await;
    }
}

// 3.7.2.1: PUBREL for an unknown packet id is answered with PUBCOMP 0x92 (Packet Identifier
// not found) in 5.0; with a plain PUBCOMP in 3.1.1 ([MQTT-4.3.3-11] respond to PUBREL).
#[tokio::test]
async fn pubrel_unknown_id_gets_pubcomp_0x92() {
    let broker = TestBroker::start().await;
    for (version, code) in [
        (V5, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
        (V3, ReasonCode::SUCCESS),
    ] {
        let mut client = broker.client(version, "rel").await;
        client.send(&Packet::PubRel(PubRel::new(pid(99)))).await;
        match expect_packet(&mut client).await {
            Packet::PubComp(comp) => {
                assert_eq!(comp.packet_id, pid(99));
                assert_eq!(comp.reason_code, code, "{version:?}");
            }
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        client.ping().await;
    }
}

// 3.4.2.1 / 3.5.2.1: PUBACK and PUBREC carry 0x10 (No matching subscribers) in 5.0 when
// nobody got the message; 3.1.1 has no reason code.
#[tokio::test]
async fn puback_pubrec_0x10_when_no_subscribers() {
    let broker = TestBroker::start().await;
    let mut client = broker.client(V5, "nosub").await;
    let code = client
        .publish("nobody/here", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(code, Some(ReasonCode::NO_MATCHING_SUBSCRIBERS));
    let code = client
        .publish("nobody/here", b"x", QoS::ExactlyOnce, false)
        .await;
    assert_eq!(code, Some(ReasonCode::NO_MATCHING_SUBSCRIBERS));
    // With a subscriber: Success.
    let mut sub = broker.client(V3, "somebody").await;
    sub.subscribe("nobody/#", QoS::AtMostOnce).await;
    let code = client
        .publish("nobody/here", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(code, Some(ReasonCode::SUCCESS));

    let mut v3 = broker.client(V3, "nosub3").await;
    let code = v3
        .publish("nobody3/here", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(
        code,
        Some(ReasonCode::SUCCESS),
        "3.1.1 PUBACK has no reason code"
    );
}

// 3.3.4 / 4.9 (5.0): a client that sends more unacknowledged QoS 2 PUBLISH than the
// Receive Maximum in CONNACK gets DISCONNECT 0x93. Completing a flow frees a slot.
#[tokio::test]
async fn inbound_receive_maximum_exceeded_disconnect_0x93() {
    let broker = TestBroker::start_with(|c| c.limits.receive_maximum = 2).await;
    let mut client = broker.raw(V5).await;
    let connack = client.connect(Connect::new(V5, "rm")).await;
    assert_eq!(connack.properties.receive_maximum, Some(2));
    // Within the quota, with a slot freed by PUBREL/PUBCOMP.
    for id in [1, 2] {
        send_raw(&mut client, msg("rm/t", b"x", QoS::ExactlyOnce), Some(id)).await;
        assert!(matches!(
            expect_packet(&mut client).await,
            Packet::PubRec(_)
        ));
    }
    client.send(&Packet::PubRel(PubRel::new(pid(1)))).await;
    assert!(matches!(
        expect_packet(&mut client).await,
        Packet::PubComp(_)
    ));
    send_raw(&mut client, msg("rm/t", b"x", QoS::ExactlyOnce), Some(3)).await;
    assert!(matches!(
        expect_packet(&mut client).await,
        Packet::PubRec(_)
    ));
    // QoS 1 is acknowledged at once and does not count.
    client.publish("rm/t", b"q1", QoS::AtLeastOnce, false).await;
    // Now 2 and 3 are unacknowledged: a third one exceeds the quota.
    send_raw(&mut client, msg("rm/t", b"x", QoS::ExactlyOnce), Some(4)).await;
    let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
}

async fn flow_control_case(sub: &mut Client, publisher: &mut Client, n: usize) {
    for i in 0..5u8 {
        publisher
            .publish("fc/t", &[i], QoS::AtLeastOnce, false)
            .await;
    }
    let mut outstanding = std::collections::VecDeque::new();
    for _ in 0..n {
        outstanding.push_back(sub.expect_publish().await);
    }
    sub.expect_nothing(QUIET).await;
    let mut next_expected = 0u8;
    let mut received = n;
    while let Some(p) = outstanding.pop_front() {
        assert_eq!(p.payload()[..], [next_expected], "in order");
        next_expected += 1;
        sub.ack(&p).await;
        if received < 5 {
            outstanding.push_back(sub.expect_publish().await);
            received += 1;
            // Never more than n outstanding.
            sub.expect_nothing(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(next_expected, 5);
}

// [MQTT-3.3.4-9] / [MQTT-4.9.0-2] (5.0): at most the client's Receive Maximum QoS 1/2
// PUBLISH are unacknowledged; the rest follow, in order, as acks arrive. A 3.1.1 client
// gets the broker's `max_inflight_messages` window the same way.
#[tokio::test]
async fn outbound_flow_control_receive_maximum_mqtt_3_3_4_9() {
    let broker = TestBroker::start_with(|c| c.limits.max_inflight_messages = 2).await;
    let mut publisher = broker.client(V5, "fc-pub").await;

    let mut sub = connect_with(&broker, V5, "fc-sub5", |c| {
        c.properties.receive_maximum = Some(3)
    })
    .await;
    sub.subscribe("fc/t", QoS::AtLeastOnce).await;
    // min(3, max_inflight 2) = 2.
    flow_control_case(&mut sub, &mut publisher, 2).await;
    sub.unsubscribe(&["fc/t"]).await;

    let mut sub = connect_with(&broker, V5, "fc-sub5b", |c| {
        c.properties.receive_maximum = Some(1)
    })
    .await;
    sub.subscribe("fc/t", QoS::AtLeastOnce).await;
    flow_control_case(&mut sub, &mut publisher, 1).await;
    sub.unsubscribe(&["fc/t"]).await;

    let mut sub = broker.client(V3, "fc-sub3").await;
    sub.subscribe("fc/t", QoS::AtLeastOnce).await;
    flow_control_case(&mut sub, &mut publisher, 2).await;
}

// [MQTT-4.9.0-2] (5.0): for QoS 2 the send quota comes back with PUBCOMP, not PUBREC.
#[tokio::test]
async fn outbound_flow_control_qos2_slot_freed_by_pubcomp() {
    let broker = TestBroker::start().await;
    let mut sub = connect_with(&broker, V5, "fc2-sub", |c| {
        c.properties.receive_maximum = Some(1)
    })
    .await;
    sub.subscribe("fc2/t", QoS::ExactlyOnce).await;
    let mut publisher = broker.client(V5, "fc2-pub").await;
    publisher
        .publish("fc2/t", b"1", QoS::ExactlyOnce, false)
        .await;
    publisher
        .publish("fc2/t", b"2", QoS::ExactlyOnce, false)
        .await;
    let first = sub.expect_publish().await;
    assert_eq!(first.payload(), b"1");
    let id = first.packet_id().expect("id");
    sub.send(&Packet::PubRec(PubRec::new(id))).await;
    assert!(matches!(expect_packet(&mut sub).await, Packet::PubRel(r) if r.packet_id == id));
    sub.expect_nothing(QUIET).await;
    sub.send(&Packet::PubComp(PubComp::new(id))).await;
    let second = sub.expect_publish_acked().await;
    assert_eq!(second.payload(), b"2");
}

// 3.3.2.3.4: inbound Topic Alias: set with a topic, used with an empty topic, re-mapped;
// subscribers (5.0 and 3.1.1) see the topic, never the publisher's alias.
#[tokio::test]
async fn inbound_topic_alias_set_use_and_remap() {
    let broker = TestBroker::start_with(|c| c.limits.topic_alias_maximum = 4).await;
    let mut sub5 = broker.client(V5, "ta-sub5").await;
    sub5.subscribe("ta/#", QoS::AtLeastOnce).await;
    let mut sub3 = broker.client(V3, "ta-sub3").await;
    sub3.subscribe("ta/#", QoS::AtLeastOnce).await;
    let mut publisher = broker.raw(V5).await;
    let connack = publisher.connect(Connect::new(V5, "ta-pub")).await;
    assert_eq!(connack.properties.topic_alias_maximum, Some(4));
    let aliased = |topic: &str, alias: u16, payload: &[u8]| {
        let mut p = msg(topic, payload, QoS::AtLeastOnce);
        p.properties_mut().topic_alias = Some(alias);
        p
    };
    for (topic, alias, payload, expected_topic) in [
        ("ta/x", 1, &b"set"[..], "ta/x"),
        ("", 1, b"use", "ta/x"),
        ("ta/y", 4, b"set4", "ta/y"),
        ("", 4, b"use4", "ta/y"),
        ("ta/z", 1, b"remap", "ta/z"),
        ("", 1, b"use-remapped", "ta/z"),
        ("", 4, b"use4-again", "ta/y"),
    ] {
        let code = publisher
            .publish_packet(aliased(topic, alias, payload))
            .await;
        assert_eq!(code, Some(ReasonCode::SUCCESS));
        for sub in [&mut sub5, &mut sub3] {
            let got = sub.expect_publish_acked().await;
            assert_eq!(got.topic(), expected_topic);
            assert_eq!(got.payload(), payload);
            assert_eq!(
                got.properties().topic_alias(),
                None,
                "publisher's alias leaked"
            );
        }
    }
}

// [MQTT-3.3.2-9] [MQTT-3.3.2-12]: a Topic Alias above the Topic Alias Maximum of CONNACK
// -> DISCONNECT 0x94 (Topic Alias invalid). [MQTT-3.3.2-8]: Topic Alias 0 is never allowed;
// the spec defines 0x94 only for "greater than the maximum", and tern-codec rejects 0 while
// decoding as a Protocol Error (0x82, see codec/tests/malformed.rs), so either code is
// accepted for 0 -- but the connection must end.
#[tokio::test]
async fn inbound_topic_alias_zero_or_above_maximum_disconnect_0x94() {
    let broker = TestBroker::start_with(|c| c.limits.topic_alias_maximum = 4).await;
    for alias in [0u16, 5, u16::MAX] {
        let mut client = broker.client(V5, "ta-bad").await;
        let mut p = msg("ta/bad", b"x", QoS::AtMostOnce);
        p.properties_mut().topic_alias = Some(alias);
        client.send(&Packet::Publish(p)).await;
        let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
        if alias == 0 {
            assert!(
                [ReasonCode::TOPIC_ALIAS_INVALID, ReasonCode::PROTOCOL_ERROR]
                    .contains(&disconnect.reason_code),
                "alias 0: {:?}",
                disconnect.reason_code
            );
        } else {
            assert_eq!(
                disconnect.reason_code,
                ReasonCode::TOPIC_ALIAS_INVALID,
                "alias {alias}"
            );
        }
    }
    // The maximum itself is accepted.
    let mut client = broker.client(V5, "ta-max").await;
    let mut p = msg("ta/max", b"x", QoS::AtLeastOnce);
    p.properties_mut().topic_alias = Some(4);
    assert_eq!(
        client.publish_packet(p).await,
        Some(ReasonCode::NO_MATCHING_SUBSCRIBERS)
    );
}

// 3.3.2.3.4: an empty topic with an alias never set on this connection is a Protocol
// Error (0x82); [MQTT-3.3.2-7]: aliases are not carried over to a new connection, even of
// the same session.
#[tokio::test]
async fn inbound_topic_alias_unknown_or_from_previous_connection_disconnect_0x82() {
    let broker = TestBroker::start().await;
    let mut client = broker.client(V5, "ta-unknown").await;
    let mut p = msg("", b"x", QoS::AtMostOnce);
    p.properties_mut().topic_alias = Some(2);
    client.send(&Packet::Publish(p.clone())).await;
    let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::PROTOCOL_ERROR);

    let persistent = |c: &mut Connect| {
        c.clean_start = false;
        c.properties.session_expiry_interval_secs = Some(60);
    };
    let mut client = connect_with(&broker, V5, "ta-forget", persistent).await;
    let mut set = msg("ta/forget", b"x", QoS::AtLeastOnce);
    set.properties_mut().topic_alias = Some(2);
    client.publish_packet(set).await;
    let mut used = msg("", b"y", QoS::AtLeastOnce);
    used.properties_mut().topic_alias = Some(2);
    client.publish_packet(used).await;
    client.disconnect().await;
    let mut client = connect_with(&broker, V5, "ta-forget", persistent).await;
    client.send(&Packet::Publish(p)).await;
    let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::PROTOCOL_ERROR);
}

// 3.3.2.3.4 / [MQTT-3.3.2-11]: outbound aliases when the client allows them: the second
// message on a topic has an empty topic and the alias; never above the client's maximum;
// without a maximum in CONNECT no alias is ever sent.
#[tokio::test]
async fn outbound_topic_alias_within_client_maximum_mqtt_3_3_2_11() {
    let broker = TestBroker::start().await;
    let mut sub = connect_with(&broker, V5, "oa-sub", |c| {
        c.properties.topic_alias_maximum = Some(2)
    })
    .await;
    sub.subscribe("oa/#", QoS::AtLeastOnce).await;
    let mut plain = broker.client(V5, "oa-plain").await;
    plain.subscribe("oa/#", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(V5, "oa-pub").await;
    let mut known: std::collections::HashMap<u16, String> = Default::default();
    let topics = [
        "oa/1", "oa/1", "oa/2", "oa/2", "oa/3", "oa/3", "oa/1", "oa/3",
    ];
    let mut saw_empty_topic = false;
    for (i, topic) in topics.iter().enumerate() {
        let payload = [i as u8];
        publisher
            .publish(topic, &payload, QoS::AtLeastOnce, false)
            .await;
        let got = sub.expect_publish_acked().await;
        assert_eq!(got.payload(), payload);
        let resolved = match got.properties().topic_alias() {
            Some(alias) => {
                assert!(
                    (1..=2).contains(&alias),
                    "alias {alias} above the maximum 2"
                );
                if got.topic().is_empty() {
                    saw_empty_topic = true;
                    known
                        .get(&alias)
                        .cloned()
                        .expect("alias used before being set")
                } else {
                    known.insert(alias, got.topic().to_string());
                    got.topic().to_string()
                }
            }
            None => {
                assert!(!got.topic().is_empty(), "empty topic without alias");
                got.topic().to_string()
            }
        };
        assert_eq!(resolved, *topic, "message {i}");
        // The second message on oa/1 must use the alias alone.
        if i == 1 {
            assert!(
                got.topic().is_empty(),
                "second message on a topic: empty topic + alias"
            );
            assert!(got.properties().topic_alias().is_some());
        }
        let other = plain.expect_publish_acked().await;
        assert_eq!(other.topic(), *topic);
        assert_eq!(
            other.properties().topic_alias(),
            None,
            "client without Topic Alias Maximum"
        );
    }
    assert!(saw_empty_topic);
}

// [MQTT-3.3.4-6]: a Subscription Identifier in a client's PUBLISH is a Protocol Error.
#[tokio::test]
async fn subscription_identifier_in_client_publish_disconnect_0x82_mqtt_3_3_4_6() {
    let broker = TestBroker::start().await;
    let mut sub = broker.client(V5, "sid-sub").await;
    sub.subscribe("sid/#", QoS::AtLeastOnce).await;
    let mut client = broker.client(V5, "sid-pub").await;
    let mut p = msg("sid/x", b"x", QoS::AtLeastOnce);
    p.properties_mut().subscription_identifiers = vec![3];
    send_raw(&mut client, p, Some(1)).await;
    let disconnect = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::PROTOCOL_ERROR);
    sub.expect_nothing(QUIET).await;
}

fn paused_broker() -> tern_broker::Broker {
    tern_broker::Broker::new(test_config())
}

async fn duplex_connect(
    broker: &tern_broker::Broker,
    version: ProtocolVersion,
    id: &str,
    change: impl FnOnce(&mut Connect),
) -> (Client, tern_codec::ConnAck) {
    let mut connect = Connect::new(version, id);
    connect.keep_alive_secs = 0;
    change(&mut connect);
    let mut client = duplex_client(broker, version);
    let connack = client.connect(connect).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    (client, connack)
}

fn expiring(topic: &str, payload: &[u8], secs: Option<u32>) -> Publish {
    let mut p = msg(topic, payload, QoS::AtLeastOnce);
    p.properties_mut().message_expiry_interval_secs = secs;
    p
}

// [MQTT-3.3.2-5] [MQTT-3.3.2-6]: a message waiting in the broker is sent with the remaining
// Message Expiry Interval, and dropped once it has passed (here: queued behind a full
// Receive Maximum window). Paused clock: deterministic.
#[tokio::test(start_paused = true)]
async fn message_expiry_remaining_and_expired_dropped_in_queue_mqtt_3_3_2_5_and_6() {
    let broker = paused_broker();
    let (mut sub, _) = duplex_connect(&broker, V5, "exp-sub", |c| {
        c.properties.receive_maximum = Some(1)
    })
    .await;
    sub.subscribe("exp/t", QoS::AtLeastOnce).await;
    let (mut publisher, _) = duplex_connect(&broker, V5, "exp-pub", |_| {}).await;
    publisher
        .publish_packet(expiring("exp/t", b"first", Some(10)))
        .await;
    let first = sub.expect_publish().await;
    // Online and immediate: the full interval.
    assert_eq!(first.properties().message_expiry_interval_secs(), Some(10));
    publisher
        .publish_packet(expiring("exp/t", b"late", Some(10)))
        .await;
    publisher
        .publish_packet(expiring("exp/t", b"short", Some(1)))
        .await;
    publisher
        .publish_packet(expiring("exp/t", b"forever", None))
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sub.ack(&first).await;
    let late = sub.expect_publish().await;
    assert_eq!(late.payload(), b"late");
    let remaining = late
        .properties()
        .message_expiry_interval_secs()
        .expect("expiry");
    assert!(
        (7..=8).contains(&remaining),
        "remaining {remaining}, expected 10 - 2.5"
    );
    sub.ack(&late).await;
    // "short" (1 s) expired while queued: dropped.
    let next = sub.expect_publish_acked().await;
    assert_eq!(next.payload(), b"forever");
    assert_eq!(next.properties().message_expiry_interval_secs(), None);
    sub.expect_nothing(QUIET).await;
}

// [MQTT-3.3.2-5]: messages queued for an offline session expire there too (5.0 and 3.1.1
// subscribers); the survivor carries the remaining interval (5.0).
#[tokio::test(start_paused = true)]
async fn message_expiry_offline_session_both_versions() {
    let broker = paused_broker();
    for version in [V5, V3] {
        let id = format!("exp-off-{version:?}");
        let persistent = |c: &mut Connect| {
            c.clean_start = false;
            if c.protocol.is_v5() {
                c.properties.session_expiry_interval_secs = Some(600);
            }
        };
        let (mut sub, _) = duplex_connect(&broker, version, &id, persistent).await;
        sub.subscribe("expoff/t", QoS::AtLeastOnce).await;
        sub.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (mut publisher, _) = duplex_connect(&broker, V5, "exp-off-pub", |_| {}).await;
        publisher
            .publish_packet(expiring("expoff/t", b"short", Some(1)))
            .await;
        publisher
            .publish_packet(expiring("expoff/t", b"long", Some(100)))
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (mut sub, connack) = duplex_connect(&broker, version, &id, persistent).await;
        assert!(connack.session_present);
        let got = sub.expect_publish_acked().await;
        assert_eq!(got.payload(), b"long", "{version:?}");
        if version.is_v5() {
            let remaining = got
                .properties()
                .message_expiry_interval_secs()
                .expect("expiry");
            assert!((96..=97).contains(&remaining), "remaining {remaining}");
        }
        sub.expect_nothing(QUIET).await;
        sub.disconnect().await;
        publisher.disconnect().await;
    }
}

fn rich_properties(p: &mut Publish) {
    p.properties_mut().payload_format_indicator = Some(1);
    p.properties_mut().content_type = Some(ByteStr::from("application/json; charset=utf-8"));
    p.properties_mut().response_topic = Some(ByteStr::from("reply/to/me"));
    p.properties_mut().correlation_data = Some(Bytes::from_static(b"\x00\x01corr\xff"));
    p.properties_mut().user_properties = vec![
        (ByteStr::from("k"), ByteStr::from("v1")),
        (ByteStr::from("a"), ByteStr::from("b")),
        (ByteStr::from("k"), ByteStr::from("v2")),
        (ByteStr::from(""), ByteStr::from("")),
    ];
}

// [MQTT-3.3.2-4] Payload Format Indicator, [MQTT-3.3.2-20] Content Type, [MQTT-3.3.2-15]
// Response Topic, [MQTT-3.3.2-16] Correlation Data, [MQTT-3.3.2-17] [MQTT-3.3.2-18] User
// Properties (in order): forwarded unaltered, on the shared template path and on the
// one-shot path (subscriber with a subscription identifier or topic aliases).
#[tokio::test]
async fn properties_passed_through_unchanged_mqtt_3_3_2_4_15_16_17_18_20() {
    let broker = TestBroker::start().await;
    let mut plain = broker.client(V5, "pp-plain").await;
    plain.subscribe("pp/#", QoS::ExactlyOnce).await;
    let mut with_id = broker.client(V5, "pp-id").await;
    with_id
        .subscribe_with(
            vec![("pp/#", SubscriptionOptions::with_qos(QoS::AtLeastOnce))],
            Some(42),
        )
        .await;
    let mut with_alias = connect_with(&broker, V5, "pp-alias", |c| {
        c.properties.topic_alias_maximum = Some(10)
    })
    .await;
    with_alias.subscribe("pp/#", QoS::AtMostOnce).await;
    let mut publisher = broker.client(V5, "pp-pub").await;
    for qos in QOS {
        let mut p = msg("pp/x", b"{\"a\":1}", qos);
        rich_properties(&mut p);
        let sent = p.properties().to_properties();
        publisher.publish_packet(p).await;
        for (sub, ids, max) in [
            (&mut plain, vec![], QoS::ExactlyOnce),
            (&mut with_id, vec![42], QoS::AtLeastOnce),
            (&mut with_alias, vec![], QoS::AtMostOnce),
        ] {
            let got = sub.expect_publish_acked().await;
            assert_eq!(got.qos(), qos.min(max));
            let mut expected = sent.clone();
            expected.subscription_identifiers = ids;
            expected.topic_alias = got.properties().topic_alias();
            assert_eq!(got.properties(), expected);
            assert_eq!(got.payload(), b"{\"a\":1}");
        }
    }
}

// 3.2.2.3.6 / [MQTT-3.2.2-15]: a packet above the server's Maximum Packet Size is a
// Packet Too Large error: DISCONNECT 0x95 (5.0), socket closed (3.1.1). Nothing routed.
#[tokio::test]
async fn inbound_packet_too_large_disconnect_0x95() {
    let broker = TestBroker::start_with(|c| c.limits.max_packet_size_bytes = 256).await;
    let mut sub = broker.client(V3, "big-sub").await;
    sub.subscribe("big/#", QoS::AtMostOnce).await;
    for version in [V5, V3] {
        let mut client = broker.client(version, "big").await;
        // Just fits: accepted.
        let fits = 256 - 2 - 2 - "big/t".len() - 2 - usize::from(version.is_v5()) - 1;
        let p = msg("big/t", &vec![b'x'; fits], QoS::AtLeastOnce);
        assert!(Packet::Publish(p.clone()).to_bytes(version).len() <= 256);
        client
            .publish("big/t", &vec![b'x'; fits], QoS::AtLeastOnce, false)
            .await;
        assert_eq!(sub.expect_publish().await.payload().len(), fits);
        // One KiB: too large.
        send_raw(
            &mut client,
            msg("big/t", &[b'y'; 1024], QoS::AtLeastOnce),
            Some(2),
        )
        .await;
        let disconnect = client.expect_disconnect().await;
        if version.is_v5() {
            let d = disconnect.expect("5.0 DISCONNECT");
            assert_eq!(d.reason_code, ReasonCode::PACKET_TOO_LARGE);
        } else {
            assert!(disconnect.is_none());
        }
    }
    sub.expect_nothing(QUIET).await;
}

// [MQTT-3.1.2-24] [MQTT-3.1.2-25]: a message larger than a subscriber's Maximum Packet Size
// is not sent to that subscriber (and treated as delivered: its window is not used up);
// other subscribers still get it.
#[tokio::test]
async fn outbound_too_large_for_one_subscriber_only_mqtt_3_1_2_24_and_25() {
    let broker = TestBroker::start().await;
    let mut small = connect_with(&broker, V5, "mps-small", |c| {
        c.properties.maximum_packet_size_bytes = Some(100);
        c.properties.receive_maximum = Some(1);
    })
    .await;
    small.subscribe("mps/#", QoS::AtLeastOnce).await;
    let mut large = broker.client(V5, "mps-large").await;
    large.subscribe("mps/#", QoS::AtLeastOnce).await;
    let mut v3 = broker.client(V3, "mps-v3").await;
    v3.subscribe("mps/#", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(V5, "mps-pub").await;
    for qos in [QoS::AtLeastOnce, QoS::AtMostOnce, QoS::AtLeastOnce] {
        publisher.publish("mps/big", &[7u8; 200], qos, false).await;
        assert_eq!(large.expect_publish_acked().await.payload().len(), 200);
        assert_eq!(v3.expect_publish_acked().await.payload().len(), 200);
    }
    publisher
        .publish("mps/small", b"fits", QoS::AtLeastOnce, false)
        .await;
    let got = small.expect_publish_acked().await;
    assert_eq!(
        got.payload(),
        b"fits",
        "the large ones were skipped, window not used up"
    );
    assert_eq!(large.expect_publish_acked().await.payload(), b"fits");
    small.expect_nothing(QUIET).await;
}

// [MQTT-3.3.1-5] store, [MQTT-3.3.1-6] [MQTT-3.3.1-7] delete with an empty payload and do
// not store it, replace with the newer one; [MQTT-3.3.1-8] (5.0; 3.1.1 [MQTT-3.3.1-8]) RETAIN
// 1 when sent because of a subscription. Both versions.
#[tokio::test]
async fn retained_store_replace_delete_mqtt_3_3_1_5_to_8() {
    let broker = TestBroker::start().await;
    for version in [V5, V3] {
        let root = format!("ret{version:?}");
        let t = |s: &str| format!("{root}/{s}");
        let mut publisher = broker.client(version, "ret-pub").await;
        publisher
            .publish(&t("a"), b"first", QoS::AtLeastOnce, true)
            .await;
        publisher
            .publish(&t("a"), b"second", QoS::AtLeastOnce, true)
            .await;
        publisher
            .publish(&t("b"), b"b-value", QoS::ExactlyOnce, true)
            .await;
        publisher
            .publish(&t("c"), b"c-value", QoS::AtMostOnce, true)
            .await;
        publisher.publish(&t("c"), b"", QoS::AtMostOnce, true).await; // delete c
        publisher
            .publish(&t("d"), b"", QoS::AtLeastOnce, true)
            .await; // empty: not stored
        publisher
            .publish(&t("e"), b"not-retained", QoS::AtLeastOnce, false)
            .await;
        publisher.ping().await;

        let mut sub = broker.client(version, "ret-sub").await;
        sub.subscribe(&format!("{root}/#"), QoS::ExactlyOnce).await;
        let mut got = Vec::new();
        let mut received = Vec::new();
        for _ in 0..2 {
            received.push(sub.expect_publish().await);
        }
        for p in received {
            sub.ack(&p).await;
            assert!(
                p.retain,
                "[MQTT-3.3.1-8] RETAIN 1 on a retained message sent at subscribe"
            );
            got.push((p.topic().to_string(), p.shared_payload(), p.qos()));
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                (t("a"), Bytes::from_static(b"second"), QoS::AtLeastOnce),
                (t("b"), Bytes::from_static(b"b-value"), QoS::ExactlyOnce),
            ]
        );
        sub.expect_nothing(QUIET).await;

        // A retained empty message is still delivered live to current subscribers.
        publisher
            .publish(&t("a"), b"", QoS::AtLeastOnce, true)
            .await;
        let live = sub.expect_publish_acked().await;
        assert_eq!(
            (live.topic().to_string(), live.payload().len()),
            (t("a"), 0)
        );
        let mut late = broker.client(version, "ret-late").await;
        late.subscribe(&format!("{root}/#"), QoS::AtLeastOnce).await;
        let p = late.expect_publish_acked().await;
        assert_eq!(p.topic(), t("b"), "a deleted, only b left");
        late.expect_nothing(QUIET).await;
        publisher.publish(&t("b"), b"", QoS::AtMostOnce, true).await;
        publisher.disconnect().await;
        sub.disconnect().await;
        late.disconnect().await;
    }
}

// Keep helper types used (PubAck is constructed by the harness; check ids are echoed).
#[tokio::test]
async fn puback_for_unknown_outbound_id_is_ignored() {
    let broker = TestBroker::start().await;
    for version in [V5, V3] {
        let mut client = broker.client(version, "stray-ack").await;
        client.send(&Packet::PubAck(PubAck::new(pid(500)))).await;
        client.send(&Packet::PubComp(PubComp::new(pid(501)))).await;
        client.ping().await;
        client.expect_nothing(Duration::from_millis(100)).await;
    }
}

// [MQTT-3.3.2-5] [MQTT-3.3.2-6] for retained messages: a retained message sent because of
// a later SUBSCRIBE carries the remaining interval, and is no longer sent once expired.
#[tokio::test(start_paused = true)]
async fn retained_message_expiry_remaining_and_expired() {
    let broker = paused_broker();
    let (mut publisher, _) = duplex_connect(&broker, V5, "rexp-pub", |_| {}).await;
    let mut long = expiring("rexp/long", b"long", Some(30));
    long.retain = true;
    publisher.publish_packet(long).await;
    let mut short = expiring("rexp/short", b"short", Some(2));
    short.retain = true;
    publisher.publish_packet(short).await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    for version in [V5, V3] {
        let (mut sub, _) = duplex_connect(&broker, version, "rexp-sub", |_| {}).await;
        sub.subscribe("rexp/#", QoS::AtLeastOnce).await;
        let got = sub.expect_publish_acked().await;
        assert_eq!(
            got.payload(),
            b"long",
            "{version:?}: the expired one is gone"
        );
        assert!(got.retain);
        if version.is_v5() {
            let remaining = got
                .properties()
                .message_expiry_interval_secs()
                .expect("expiry");
            assert!(
                (24..=25).contains(&remaining),
                "remaining {remaining}, expected 30 - 5.5"
            );
        } else {
            assert_eq!(got.properties().message_expiry_interval_secs(), None);
        }
        sub.expect_nothing(QUIET).await;
        sub.disconnect().await;
    }
}
