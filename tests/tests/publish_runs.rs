//! A publisher's burst of QoS 0 and QoS 1 messages, read from one buffer, is routed as runs
//! (one trie walk and one lock per subscriber for consecutive messages of one topic and
//! QoS, `broker/src/router/batch.rs`). These tests send whole bursts in one TCP write, mixing
//! topics, QoS, RETAIN and other packets, and check that every subscriber gets exactly
//! what routing one message at a time gives, in the publisher's order ([MQTT-4.6.0-6]:
//! every topic is an Ordered Topic on non-shared subscriptions; Tern keeps the
//! publisher's order across topics and QoS too).

use bytes::BytesMut;
use tern_codec::{
    Connect, Packet, PacketId, ProtocolVersion, Publish, PublishQoS, QoS, SubscriptionOptions,
};
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

/// One item of a burst: a PUBLISH (topic, QoS, RETAIN) or a PINGREQ.
enum Item {
    Publish(&'static str, QoS, bool),
    Ping,
}

/// The burst as one buffer, payloads numbered in order ("0", "1", ...); returns the
/// buffer and each publish's (topic, payload, QoS) in order.
fn burst(items: &[(usize, Item)]) -> (BytesMut, Vec<(String, String, QoS)>) {
    let mut buf = BytesMut::new();
    let mut sent = Vec::new();
    let mut next_id = 1u16;
    for (count, item) in items {
        for _ in 0..*count {
            let packet = match item {
                Item::Ping => Packet::PingReq,
                Item::Publish(topic, qos, retain) => {
                    let payload = sent.len().to_string();
                    let id = PacketId::new(next_id).expect("non-zero");
                    next_id += 1;
                    let mut publish = Publish::new(*topic, payload.clone().into_bytes())
                        .with_qos(PublishQoS::with_id(*qos, id));
                    publish.retain = *retain;
                    sent.push((topic.to_string(), payload, *qos));
                    Packet::Publish(publish)
                }
            };
            buf.extend_from_slice(&packet.to_bytes(V5));
        }
    }
    (buf, sent)
}

/// The next `n` PUBLISH packets `client` receives (acknowledging QoS 1), as (topic,
/// payload); an outbound topic alias is resolved as a client would.
async fn receive(client: &mut Client, n: usize) -> Vec<(String, String)> {
    let mut aliases = std::collections::HashMap::new();
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let publish = client.expect_publish_acked().await;
        let mut topic = publish.topic().to_string();
        if let Some(alias) = publish.properties().topic_alias() {
            if topic.is_empty() {
                topic = aliases.get(&alias).cloned().expect("a known alias");
            } else {
                aliases.insert(alias, topic.clone());
            }
        }
        got.push((
            topic,
            String::from_utf8_lossy(publish.payload()).into_owned(),
        ));
    }
    got
}

/// A burst in one write: runs of QoS 0 on two topics, broken by a QoS 1 message, a
/// retained one and PINGREQs. A 5.0 subscriber of everything (with outbound topic aliases)
/// and a 3.1.1 subscriber of one topic each get every message they match, once, in the
/// publisher's order; the publisher gets its PUBACK and PINGRESPs.
#[tokio::test]
async fn a_burst_reaches_subscribers_in_the_publishers_order() {
    let broker = TestBroker::start().await;
    let mut all = broker.raw(V5).await;
    let mut connect = Connect::new(V5, "all");
    connect.properties.topic_alias_maximum = Some(4);
    all.connect(connect).await;
    all.subscribe_with(
        vec![("r/#", SubscriptionOptions::with_qos(QoS::AtLeastOnce))],
        Some(3),
    )
    .await;
    let mut one = broker.client(V3, "one").await;
    one.subscribe("r/a", QoS::AtMostOnce).await;
    let mut publisher = broker.client(V5, "publisher").await;

    let (buf, sent) = burst(&[
        (100, Item::Publish("r/a", QoS::AtMostOnce, false)),
        (1, Item::Publish("r/a", QoS::AtLeastOnce, false)),
        (100, Item::Publish("r/b", QoS::AtMostOnce, false)),
        (1, Item::Publish("r/a", QoS::AtMostOnce, true)),
        (150, Item::Publish("r/a", QoS::AtMostOnce, false)),
        (2, Item::Ping),
        (10, Item::Publish("r/a", QoS::AtMostOnce, false)),
    ]);
    publisher.send_bytes(&buf).await;

    let expected: Vec<(String, String)> = sent
        .iter()
        .map(|(t, p, _)| (t.clone(), p.clone()))
        .collect();
    assert_eq!(receive(&mut all, expected.len()).await, expected);
    let to_one: Vec<_> = expected
        .iter()
        .filter(|(t, _)| t == "r/a")
        .cloned()
        .collect();
    assert_eq!(receive(&mut one, to_one.len()).await, to_one);
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(match publisher.recv().await {
            Packet::PubAck(_) => "puback",
            Packet::PingResp => "pingresp",
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(answers, ["puback", "pingresp", "pingresp"]);
    all.expect_nothing(std::time::Duration::from_millis(200))
        .await;
}

/// A SUBSCRIBE in the middle of a burst takes effect exactly there: the publisher, now a
/// subscriber of its own topic, gets the messages it sent after the SUBSCRIBE and none
/// of those before (the run before it is routed first).
#[tokio::test]
async fn a_subscribe_inside_a_burst_sees_only_what_follows_it() {
    let broker = TestBroker::start().await;
    let mut publisher = broker.client(V5, "self").await;
    let (mut buf, _) = burst(&[(50, Item::Publish("s/x", QoS::AtMostOnce, false))]);
    let subscribe = tern_codec::Subscribe {
        packet_id: PacketId::new(900).expect("non-zero"),
        properties: Default::default(),
        filters: vec![("s/x".into(), SubscriptionOptions::with_qos(QoS::AtMostOnce))],
    };
    buf.extend_from_slice(&Packet::Subscribe(Box::new(subscribe)).to_bytes(V5));
    let (after, _) = burst(&[(50, Item::Publish("s/x", QoS::AtMostOnce, false))]);
    buf.extend_from_slice(&after);
    publisher.send_bytes(&buf).await;
    match publisher.recv().await {
        Packet::SubAck(_) => {}
        other => panic!("expected SUBACK first, got {other:?}"),
    }
    let got = receive(&mut publisher, 50).await;
    let expected: Vec<_> = (0..50)
        .map(|i| ("s/x".to_string(), i.to_string()))
        .collect();
    assert_eq!(got, expected, "only the 50 sent after the SUBSCRIBE");
    publisher
        .expect_nothing(std::time::Duration::from_millis(200))
        .await;
}

/// The publisher's acknowledgements of `sent` (QoS 1: PUBACK, QoS 2: PUBREC), as (packet
/// id, reason code), in the order they come.
async fn acknowledgements(publisher: &mut Client, owed: usize) -> Vec<(u16, u8)> {
    let mut got = Vec::with_capacity(owed);
    while got.len() < owed {
        match publisher.recv().await {
            Packet::PubAck(ack) => got.push((ack.packet_id.get(), ack.reason_code.0)),
            Packet::PubRec(rec) => got.push((rec.packet_id.get(), rec.reason_code.0)),
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

/// A burst of QoS 1 runs (longer than one run holds, on two topics, one without
/// subscribers), broken by QoS 0 and QoS 2 messages: the subscriber gets every message in
/// the publisher's order, and the publisher its PUBACKs and PUBRECs in the order of its
/// PUBLISH packets ([MQTT-4.6.0-2], [MQTT-4.6.0-3]), each with its packet id, 0x10 (No
/// matching subscribers) where nobody subscribed.
#[tokio::test]
async fn a_qos1_burst_is_delivered_and_acknowledged_in_order() {
    let broker = TestBroker::start().await;
    let mut sub = broker.client(V5, "sub").await;
    sub.subscribe("q/#", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(V5, "publisher").await;
    let (buf, sent) = burst(&[
        (150, Item::Publish("q/a", QoS::AtLeastOnce, false)),
        (5, Item::Publish("q/a", QoS::AtMostOnce, false)),
        (70, Item::Publish("q/b", QoS::AtLeastOnce, false)),
        (3, Item::Publish("none/x", QoS::AtLeastOnce, false)),
        (2, Item::Publish("q/a", QoS::ExactlyOnce, false)),
        (40, Item::Publish("q/a", QoS::AtLeastOnce, false)),
    ]);
    publisher.send_bytes(&buf).await;

    let expected: Vec<(String, String)> = sent
        .iter()
        .filter(|(t, _, _)| t.starts_with("q/"))
        .map(|(t, p, _)| (t.clone(), p.clone()))
        .collect();
    assert_eq!(receive(&mut sub, expected.len()).await, expected);
    let owed: Vec<(u16, u8)> = sent
        .iter()
        .enumerate()
        .filter(|(_, (_, _, qos))| *qos != QoS::AtMostOnce)
        .map(|(i, (t, _, _))| ((i + 1) as u16, if t == "none/x" { 0x10 } else { 0 }))
        .collect();
    assert_eq!(acknowledgements(&mut publisher, owed.len()).await, owed);
    publisher
        .expect_nothing(std::time::Duration::from_millis(200))
        .await;
}
