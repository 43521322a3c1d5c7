//! SUBSCRIBE / UNSUBSCRIBE conformance (MQTT 3.1.1 and 5.0 sections 3.8 to 3.11, 4.7, 4.8):
//! wildcards and `$` topics, SUBACK/UNSUBACK reason codes, invalid filters, No Local,
//! Retain As Published, Retain Handling, Subscription Identifiers, overlapping
//! subscriptions and shared subscriptions.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tern_codec::{
    ByteStr, Packet, PacketId, ProtocolVersion, PubAck, PubComp, PubRec, PublishQoS, QoS,
    ReasonCode, RetainHandling, Subscribe, SubscriptionOptions,
};
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const QUIET: Duration = Duration::from_millis(250);

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::with_qos(qos)
}

/// Receives publishes until `QUIET` passes without one; acknowledges each (QoS 2 flows
/// may interleave with further PUBLISH packets).
async fn drain(client: &mut Client) -> Vec<tern_codec::Publish> {
    let mut got = Vec::new();
    while let Some(packet) = client.recv_within(QUIET).await {
        match packet {
            Packet::Publish(p) => {
                match (p.qos(), p.packet_id()) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        client.send(&Packet::PubAck(PubAck::new(id))).await
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        client.send(&Packet::PubRec(PubRec::new(id))).await
                    }
                    _ => {}
                }
                got.push(p);
            }
            Packet::PubRel(rel) => {
                client
                    .send(&Packet::PubComp(PubComp::new(rel.packet_id)))
                    .await
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    got
}

// [MQTT-4.7.1-1] [MQTT-4.7.1-2] 4.7.1: `#` matches the parent and any number of levels,
// `+` exactly one level (empty levels included); [MQTT-4.7.2-1]: topics starting with `$`
// are not matched by filters starting with a wildcard. Both versions.
#[tokio::test]
async fn wildcards_and_dollar_topics_mqtt_4_7_1_and_4_7_2_1() {
    let broker = TestBroker::start().await;
    let topics = [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport",
        "sport/",
        "/finance",
        "a//c",
        "$foo/bar",
        "$foo",
    ];
    let cases: [(&str, &[&str]); 12] = [
        (
            "sport/#",
            &[
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport",
                "sport/",
            ],
        ),
        ("sport/tennis/+", &["sport/tennis/player1"]),
        ("sport/+", &["sport/"]),
        ("+", &["sport"]),
        ("+/+", &["sport/", "/finance"]),
        ("/+", &["/finance"]),
        ("a/+/c", &["a//c"]),
        ("a//c", &["a//c"]),
        (
            "#",
            &[
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport",
                "sport/",
                "/finance",
                "a//c",
            ],
        ),
        ("+/bar", &[]),
        ("$foo/+", &["$foo/bar"]),
        ("$foo/#", &["$foo/bar", "$foo"]),
    ];
    for version in [V5, V3] {
        let mut subs = Vec::new();
        for (i, (filter, _)) in cases.iter().enumerate() {
            let mut sub = broker.client(version, &format!("wc-{i}")).await;
            let suback = sub.subscribe(filter, QoS::AtLeastOnce).await;
            assert_eq!(suback.reason_codes, vec![ReasonCode(1)], "{filter}");
            subs.push(sub);
        }
        let mut publisher = broker.client(version, "wc-pub").await;
        for topic in topics {
            publisher
                .publish(topic, topic.as_bytes(), QoS::AtLeastOnce, false)
                .await;
        }
        // Drain all subscribers concurrently (each waits for QUIET of silence).
        let handles: Vec<_> = subs
            .into_iter()
            .map(|mut sub| tokio::spawn(async move { drain(&mut sub).await }))
            .collect();
        for ((filter, expected), handle) in cases.iter().zip(handles) {
            let got: Vec<String> = handle
                .await
                .expect("drain task")
                .iter()
                .map(|p| p.topic().to_string())
                .collect();
            assert_eq!(got, *expected, "{version:?} filter {filter}");
        }
    }
}

// [MQTT-4.7.2-1]: `$SYS` topics published by the broker reach `$SYS/#` but not `#`.
#[tokio::test]
async fn sys_topics_not_matched_by_leading_wildcard() {
    let broker = TestBroker::start_with(|c| c.sys.interval_secs = 1).await;
    let mut all = broker.client(V5, "sys-all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut plus = broker.client(V3, "sys-plus").await;
    plus.subscribe("+/broker/#", QoS::AtMostOnce).await;
    let mut sys = broker.client(V3, "sys-sys").await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let got = sys.expect_publish().await;
    assert!(got.topic().starts_with("$SYS/"), "{:?}", got.topic());
    all.expect_nothing(QUIET).await;
    plus.expect_nothing(Duration::from_millis(10)).await;
    // Clients may not publish into $SYS (the broker's namespace).
    let mut publisher = broker.client(V5, "sys-pub").await;
    publisher
        .publish("$SYS/fake", b"x", QoS::AtMostOnce, false)
        .await;
    publisher.ping().await;
    while let Some(p) = sys.recv_within(Duration::from_millis(100)).await {
        if let Packet::Publish(p) = p {
            assert_ne!(p.topic(), "$SYS/fake");
        }
    }
}

// [MQTT-3.8.4-6] (5.0) / [MQTT-3.8.4-5] [MQTT-3.9.3-1] (3.1.1): one SUBACK reason code per
// filter, in order, with the granted QoS.
#[tokio::test]
async fn suback_reason_code_per_filter_in_order() {
    let broker = TestBroker::start().await;
    for version in [V5, V3] {
        let mut client = broker.client(version, "suback").await;
        let suback = client
            .subscribe_with(
                vec![
                    ("s/2", opts(QoS::ExactlyOnce)),
                    ("s/0", opts(QoS::AtMostOnce)),
                    ("s/+/1", opts(QoS::AtLeastOnce)),
                    ("t/#", opts(QoS::ExactlyOnce)),
                ],
                None,
            )
            .await;
        assert_eq!(
            suback.reason_codes,
            vec![ReasonCode(2), ReasonCode(0), ReasonCode(1), ReasonCode(2)],
            "{version:?}"
        );
        // Each granted QoS is applied: QoS 2 message on s/0 arrives at QoS 0.
        let mut publisher = broker.client(version, "suback-pub").await;
        publisher
            .publish("s/0", b"x", QoS::ExactlyOnce, false)
            .await;
        let got = client.expect_publish().await;
        assert_eq!(got.qos(), QoS::AtMostOnce);
        client.disconnect().await;
        publisher.disconnect().await;
    }
}

async fn send_subscribe(client: &mut Client, filter: &str) {
    let subscribe = Subscribe {
        packet_id: PacketId::new(77).expect("id"),
        properties: Default::default(),
        filters: vec![(ByteStr::from(filter), opts(QoS::AtMostOnce))],
    };
    client.send(&Packet::Subscribe(Box::new(subscribe))).await;
}

// [MQTT-4.7.1-1] [MQTT-4.7.1-2] [MQTT-4.8.2-1] [MQTT-4.8.2-2]: an invalid filter is a
// malformed SUBSCRIBE: 5.0 DISCONNECT 0x8F (Topic Filter invalid), 3.1.1 socket closed
// ([MQTT-4.8.0-1] 3.1.1).
#[tokio::test]
async fn invalid_filter_disconnects() {
    let broker = TestBroker::start().await;
    for filter in [
        "a/#/b",
        "a#",
        "a/b+",
        "+a",
        "$share/g",
        "$share//a",
        "$share/g+/a",
    ] {
        let mut v5 = broker.client(V5, "bad-filter5").await;
        send_subscribe(&mut v5, filter).await;
        let d = v5.expect_disconnect().await.expect("DISCONNECT");
        assert_eq!(d.reason_code, ReasonCode::TOPIC_FILTER_INVALID, "{filter}");

        let mut v3 = broker.client(V3, "bad-filter3").await;
        send_subscribe(&mut v3, filter).await;
        assert_eq!(v3.expect_disconnect().await, None, "{filter}");
    }
}

// [MQTT-3.11.3-1] 3.11.2.1 (5.0): UNSUBACK has a reason code per filter, 0x11 when there
// was no such subscription; [MQTT-3.10.4-1] [MQTT-3.10.4-2]: after UNSUBSCRIBE nothing more
// is sent for that filter. 3.1.1: UNSUBACK with the packet id (no codes on the wire).
#[tokio::test]
async fn unsuback_0x11_when_no_subscription() {
    let broker = TestBroker::start().await;
    for version in [V5, V3] {
        let mut client = broker.client(version, "unsub").await;
        client.subscribe("u/a", QoS::AtLeastOnce).await;
        client.subscribe("u/+", QoS::AtLeastOnce).await;
        let unsuback = client.unsubscribe(&["u/a", "u/none", "u/a"]).await;
        if version.is_v5() {
            assert_eq!(
                unsuback.reason_codes,
                vec![
                    ReasonCode::SUCCESS,
                    ReasonCode::NO_SUBSCRIPTION_EXISTED,
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                ]
            );
        }
        let mut publisher = broker.client(version, "unsub-pub").await;
        publisher
            .publish("u/a", b"x", QoS::AtLeastOnce, false)
            .await;
        // Still matched by u/+, exactly once.
        assert_eq!(client.expect_publish_acked().await.topic(), "u/a");
        client.expect_nothing(QUIET).await;
        client.unsubscribe(&["u/+"]).await;
        publisher
            .publish("u/a", b"x", QoS::AtLeastOnce, false)
            .await;
        client.expect_nothing(QUIET).await;
        client.disconnect().await;
        publisher.disconnect().await;
    }
}

// [MQTT-3.8.3-3]: No Local: messages are not forwarded to the connection that published
// them; other subscribers and subscriptions without No Local still get them.
#[tokio::test]
async fn no_local_mqtt_3_8_3_3() {
    let broker = TestBroker::start().await;
    let mut client = broker.client(V5, "nl").await;
    let no_local = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtLeastOnce)
    };
    client.subscribe_with(vec![("nl/a", no_local)], None).await;
    client.subscribe("nl/b", QoS::AtLeastOnce).await;
    let mut other = broker.client(V5, "nl-other").await;
    other.subscribe_with(vec![("nl/#", no_local)], None).await;
    client
        .publish("nl/a", b"mine", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(other.expect_publish_acked().await.payload(), b"mine");
    client.expect_nothing(QUIET).await;
    // Without No Local the publisher gets its own message.
    client
        .publish("nl/b", b"echo", QoS::AtMostOnce, false)
        .await;
    assert_eq!(client.expect_publish().await.payload(), b"echo");
    assert_eq!(other.expect_publish().await.payload(), b"echo");
    // Messages from others reach a No Local subscription.
    other
        .publish("nl/a", b"theirs", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(client.expect_publish_acked().await.payload(), b"theirs");
    other.expect_nothing(QUIET).await;
}

// [MQTT-3.3.1-12] [MQTT-3.3.1-13] (5.0), [MQTT-3.3.1-9] (3.1.1): on live delivery RETAIN is
// kept only with Retain As Published.
#[tokio::test]
async fn retain_as_published_mqtt_3_3_1_12_and_13() {
    let broker = TestBroker::start().await;
    let mut rap = broker.client(V5, "rap1").await;
    rap.subscribe_with(
        vec![(
            "rap/#",
            SubscriptionOptions {
                retain_as_published: true,
                ..opts(QoS::AtLeastOnce)
            },
        )],
        None,
    )
    .await;
    let mut no_rap = broker.client(V5, "rap0").await;
    no_rap.subscribe("rap/#", QoS::AtLeastOnce).await;
    let mut v3 = broker.client(V3, "rap3").await;
    v3.subscribe("rap/#", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(V5, "rap-pub").await;
    for retain in [true, false] {
        publisher
            .publish("rap/t", b"x", QoS::AtLeastOnce, retain)
            .await;
        assert_eq!(rap.expect_publish_acked().await.retain, retain);
        assert!(!no_rap.expect_publish_acked().await.retain);
        assert!(!v3.expect_publish_acked().await.retain);
    }
    publisher.publish("rap/t", b"", QoS::AtMostOnce, true).await;
}

fn retain_handling(rh: RetainHandling) -> SubscriptionOptions {
    SubscriptionOptions {
        retain_handling: rh,
        ..opts(QoS::AtLeastOnce)
    }
}

// [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11]: Retain Handling 0 sends retained
// messages at every subscribe, 1 only when the subscription is new, 2 never.
#[tokio::test]
async fn retain_handling_0_1_2_mqtt_3_3_1_9_to_11() {
    let broker = TestBroker::start().await;
    let mut publisher = broker.client(V5, "rh-pub").await;
    publisher
        .publish("rh/t", b"kept", QoS::AtLeastOnce, true)
        .await;
    for (rh, first, again) in [
        (RetainHandling::SendAtSubscribe, true, true),
        (RetainHandling::SendIfNew, true, false),
        (RetainHandling::DoNotSend, false, false),
    ] {
        let mut client = broker.client(V5, "rh-sub").await;
        for expected in [first, again] {
            client
                .subscribe_with(vec![("rh/#", retain_handling(rh))], None)
                .await;
            if expected {
                let p = client.expect_publish_acked().await;
                assert!(p.retain);
                assert_eq!(p.payload(), b"kept");
            }
            client.expect_nothing(QUIET).await;
        }
        // Live messages flow whatever the Retain Handling.
        publisher
            .publish("rh/t", b"kept", QoS::AtLeastOnce, true)
            .await;
        assert!(!client.expect_publish_acked().await.retain);
        client.disconnect().await;
    }
    // 3.1.1: retained messages at every subscribe (like Retain Handling 0).
    let mut v3 = broker.client(V3, "rh-v3").await;
    for _ in 0..2 {
        v3.subscribe("rh/#", QoS::AtLeastOnce).await;
        assert!(v3.expect_publish_acked().await.retain);
    }
    publisher.publish("rh/t", b"", QoS::AtMostOnce, true).await;
}

fn sorted_ids(p: &tern_codec::Publish) -> Vec<u32> {
    let mut ids = p
        .properties()
        .subscription_identifiers()
        .collect::<Vec<_>>();
    ids.sort();
    ids
}

// [MQTT-3.8.4-3] replace; 3.8.2.1.2 / [MQTT-3.3.4-3] [MQTT-3.3.4-4]: each subscription keeps
// its own identifier; a message matching two overlapping subscriptions is sent once with
// both identifiers; a subscription without identifier adds none.
#[tokio::test]
async fn subscription_identifiers_per_subscription_mqtt_3_3_4_3_and_4() {
    let broker = TestBroker::start().await;
    let mut client = broker.client(V5, "sid").await;
    client
        .subscribe_with(vec![("sid/+", opts(QoS::AtLeastOnce))], Some(5))
        .await;
    client
        .subscribe_with(vec![("sid/b", opts(QoS::AtLeastOnce))], Some(7))
        .await;
    client
        .subscribe_with(vec![("sid/b/#", opts(QoS::AtLeastOnce))], None)
        .await;
    let mut other = broker.client(V5, "sid-other").await;
    other
        .subscribe_with(vec![("sid/+", opts(QoS::AtLeastOnce))], Some(1000))
        .await;
    let mut publisher = broker.client(V5, "sid-pub").await;
    for (topic, ids, other_ids) in [
        ("sid/a", vec![5], Some(vec![1000])),
        ("sid/b", vec![5, 7], Some(vec![1000])),
        ("sid/b/c", vec![], None),
    ] {
        publisher
            .publish(topic, b"x", QoS::AtLeastOnce, false)
            .await;
        let got = client.expect_publish_acked().await;
        assert_eq!(got.topic(), topic);
        assert_eq!(sorted_ids(&got), ids, "{topic}");
        client.expect_nothing(Duration::from_millis(100)).await;
        if let Some(other_ids) = other_ids {
            assert_eq!(sorted_ids(&other.expect_publish_acked().await), other_ids);
        }
    }
    // Re-subscribing replaces the subscription and its identifier.
    client
        .subscribe_with(vec![("sid/b", opts(QoS::AtLeastOnce))], Some(9))
        .await;
    publisher
        .publish("sid/b", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(sorted_ids(&client.expect_publish_acked().await), vec![5, 9]);
    client.expect_nothing(QUIET).await;
}

// [MQTT-3.3.4-2] (5.0) / [MQTT-3.3.5-1] (3.1.1): overlapping subscriptions of one client
// get ONE copy at the highest granted QoS.
#[tokio::test]
async fn overlapping_subscriptions_one_copy_at_highest_qos_mqtt_3_3_4_2() {
    let broker = TestBroker::start().await;
    for version in [V5, V3] {
        let mut client = broker.client(version, "ov").await;
        client.subscribe("ov/+", QoS::AtMostOnce).await;
        client.subscribe("ov/#", QoS::ExactlyOnce).await;
        client.subscribe("ov/x", QoS::AtLeastOnce).await;
        let mut publisher = broker.client(version, "ov-pub").await;
        for (qos, expected) in [
            (QoS::ExactlyOnce, QoS::ExactlyOnce),
            (QoS::AtLeastOnce, QoS::AtLeastOnce),
            (QoS::AtMostOnce, QoS::AtMostOnce),
        ] {
            publisher.publish("ov/x", b"x", qos, false).await;
            let got = drain(&mut client).await;
            assert_eq!(got.len(), 1, "{version:?}: one copy");
            assert_eq!(got[0].qos(), expected);
        }
        client.disconnect().await;
        publisher.disconnect().await;
    }
}

// 4.8.2: a shared subscription delivers each message to exactly one member, round robin;
// 3.1.1 clients may join shared groups too.
#[tokio::test]
async fn shared_subscription_round_robin_each_message_once() {
    let broker = TestBroker::start().await;
    let mut members = Vec::new();
    for (i, version) in [V5, V3, V5].into_iter().enumerate() {
        let mut m = broker.client(version, &format!("sh-{i}")).await;
        let suback = m.subscribe("$share/grp/sh/+", QoS::AtLeastOnce).await;
        assert_eq!(suback.reason_codes, vec![ReasonCode(1)]);
        members.push(m);
    }
    let mut publisher = broker.client(V5, "sh-pub").await;
    for i in 0..9u8 {
        publisher
            .publish("sh/t", &[i], QoS::AtLeastOnce, false)
            .await;
    }
    let mut seen = BTreeMap::new();
    for (i, m) in members.iter_mut().enumerate() {
        let got = drain(m).await;
        assert_eq!(got.len(), 3, "member {i}: round robin gives each 3 of 9");
        for p in got {
            assert!(seen.insert(p.payload()[0], i).is_none(), "delivered twice");
        }
    }
    assert_eq!(seen.len(), 9);
}

// 4.8.2: a shared subscription is identified by its name AND its filter: the same group name
// on two filters is two groups, each getting its own copy.
#[tokio::test]
async fn shared_group_is_name_and_filter() {
    let broker = TestBroker::start().await;
    let mut a = broker.client(V5, "shf-a").await;
    a.subscribe("$share/g/shf/+", QoS::AtLeastOnce).await;
    let mut b = broker.client(V5, "shf-b").await;
    b.subscribe("$share/g/shf/#", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(V5, "shf-pub").await;
    for i in 0..4u8 {
        publisher
            .publish("shf/x", &[i], QoS::AtLeastOnce, false)
            .await;
    }
    for m in [&mut a, &mut b] {
        let got: Vec<u8> = drain(m).await.iter().map(|p| p.payload()[0]).collect();
        assert_eq!(got, vec![0, 1, 2, 3]);
    }
}

// 4.8.2 / 3.8.4 (5.0): no retained messages are sent for a shared subscription.
#[tokio::test]
async fn no_retained_messages_on_shared_subscribe() {
    let broker = TestBroker::start().await;
    let mut publisher = broker.client(V5, "shr-pub").await;
    publisher
        .publish("shr/t", b"retained", QoS::AtLeastOnce, true)
        .await;
    for version in [V5, V3] {
        let mut member = broker.client(version, "shr-member").await;
        member.subscribe("$share/g/shr/#", QoS::AtLeastOnce).await;
        member.expect_nothing(QUIET).await;
        // The same client, non-shared: gets it.
        member.subscribe("shr/#", QoS::AtLeastOnce).await;
        assert!(member.expect_publish_acked().await.retain);
        member.disconnect().await;
    }
    publisher
        .publish("shr/t", b"", QoS::AtLeastOnce, true)
        .await;
}

// 4.8.2: a client in a shared group that is also subscribed directly gets both copies (the
// shared delivery is not merged with its own subscription), each with its own identifier.
#[tokio::test]
async fn shared_and_direct_subscription_both_deliver() {
    let broker = TestBroker::start().await;
    for version in [V5, V3] {
        let mut client = broker.client(version, "shd").await;
        client
            .subscribe_with(
                vec![("$share/g/shd/#", opts(QoS::AtLeastOnce))],
                Some(1).filter(|_| version.is_v5()),
            )
            .await;
        client
            .subscribe_with(
                vec![("shd/+", opts(QoS::AtLeastOnce))],
                Some(2).filter(|_| version.is_v5()),
            )
            .await;
        let mut publisher = broker.client(version, "shd-pub").await;
        publisher
            .publish("shd/x", b"x", QoS::AtLeastOnce, false)
            .await;
        let got = drain(&mut client).await;
        assert_eq!(got.len(), 2, "{version:?}: shared + direct copy");
        if version.is_v5() {
            let mut ids: Vec<Vec<u32>> = got.iter().map(sorted_ids).collect();
            ids.sort();
            assert_eq!(ids, vec![vec![1], vec![2]]);
        }
        client.disconnect().await;
        publisher.disconnect().await;
    }
}

// 4.8.2: shared groups apply the member's granted QoS ([MQTT-4.8.2-3]); members that leave
// stop receiving; the remaining one gets everything.
#[tokio::test]
async fn shared_member_leaving_and_granted_qos() {
    let broker = TestBroker::start().await;
    let mut a = broker.client(V5, "shq-a").await;
    a.subscribe("$share/q/shq/t", QoS::AtMostOnce).await;
    let mut b = broker.client(V5, "shq-b").await;
    b.subscribe("$share/q/shq/t", QoS::ExactlyOnce).await;
    let mut publisher = broker.client(V5, "shq-pub").await;
    for i in 0..4u8 {
        publisher
            .publish("shq/t", &[i], QoS::ExactlyOnce, false)
            .await;
    }
    let mut by_qos: HashMap<&str, Vec<QoS>> = HashMap::new();
    by_qos.insert("a", drain(&mut a).await.iter().map(|p| p.qos()).collect());
    by_qos.insert("b", drain(&mut b).await.iter().map(|p| p.qos()).collect());
    assert_eq!(by_qos["a"], vec![QoS::AtMostOnce; 2]);
    assert_eq!(by_qos["b"], vec![QoS::ExactlyOnce; 2]);
    let unsuback = a.unsubscribe(&["$share/q/shq/t"]).await;
    assert_eq!(unsuback.reason_codes, vec![ReasonCode::SUCCESS]);
    for i in 0..3u8 {
        publisher
            .publish("shq/t", &[i], QoS::AtLeastOnce, false)
            .await;
    }
    assert_eq!(drain(&mut b).await.len(), 3);
    a.expect_nothing(Duration::from_millis(50)).await;
}

// [MQTT-3.3.4-3] 3.8.2.1.2: a retained message sent because of a SUBSCRIBE carries that
// subscription's identifier.
#[tokio::test]
async fn retained_on_subscribe_carries_subscription_identifier() {
    let broker = TestBroker::start().await;
    let mut publisher = broker.client(V3, "rsid-pub").await;
    publisher
        .publish("rsid/t", b"kept", QoS::AtLeastOnce, true)
        .await;
    let mut client = broker.client(V5, "rsid").await;
    client
        .subscribe_with(vec![("rsid/+", opts(QoS::AtLeastOnce))], Some(77))
        .await;
    let got = client.expect_publish_acked().await;
    assert!(got.retain);
    assert_eq!(
        got.properties()
            .subscription_identifiers()
            .collect::<Vec<_>>(),
        vec![77]
    );
    publisher
        .publish("rsid/t", b"", QoS::AtLeastOnce, true)
        .await;
}

// [MQTT-4.7.2-1] for retained messages: a retained message on a `$` topic is not sent for
// a filter starting with a wildcard, but is for a filter naming the `$` level.
#[tokio::test]
async fn retained_dollar_topics_not_matched_by_leading_wildcard() {
    let broker = TestBroker::start().await;
    let mut publisher = broker.client(V5, "rdol-pub").await;
    publisher
        .publish("$app/state", b"s", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish("app/state", b"a", QoS::AtLeastOnce, true)
        .await;
    for version in [V5, V3] {
        let mut client = broker.client(version, "rdol").await;
        for filter in ["#", "+/state"] {
            client.subscribe(filter, QoS::AtLeastOnce).await;
            let got = client.expect_publish_acked().await;
            assert_eq!(got.topic(), "app/state", "{version:?} {filter}");
            client.expect_nothing(Duration::from_millis(100)).await;
        }
        client.subscribe("$app/+", QoS::AtLeastOnce).await;
        assert_eq!(client.expect_publish_acked().await.topic(), "$app/state");
        client.disconnect().await;
    }
    publisher
        .publish("$app/state", b"", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish("app/state", b"", QoS::AtLeastOnce, true)
        .await;
}

// [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error (DISCONNECT 0x82).
#[tokio::test]
async fn no_local_on_shared_subscription_is_protocol_error_mqtt_3_8_3_4() {
    let broker = TestBroker::start().await;
    let mut client = broker.client(V5, "nl-shared").await;
    let subscribe = Subscribe {
        packet_id: PacketId::new(1).expect("id"),
        properties: Default::default(),
        filters: vec![(
            ByteStr::from("$share/g/nl/#"),
            SubscriptionOptions {
                no_local: true,
                ..opts(QoS::AtLeastOnce)
            },
        )],
    };
    client.send(&Packet::Subscribe(Box::new(subscribe))).await;
    let d = client.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::PROTOCOL_ERROR);
}

// [MQTT-3.8.3-3] with overlapping subscriptions: a No Local subscription is skipped for the
// publisher's own messages, its other matching subscription still delivers, with only its
// own identifier.
#[tokio::test]
async fn no_local_with_overlapping_subscription() {
    let broker = TestBroker::start().await;
    let mut client = broker.client(V5, "nlo").await;
    let no_local = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::ExactlyOnce)
    };
    client
        .subscribe_with(vec![("nlo/#", no_local)], Some(1))
        .await;
    client
        .subscribe_with(vec![("nlo/+", opts(QoS::AtLeastOnce))], Some(2))
        .await;
    // Publish QoS 2 by hand: our own copy arrives before the PUBREC.
    let mut own = tern_codec::Publish::new("nlo/t", &b"own"[..]);
    own.set_qos(PublishQoS::ExactlyOnce(PacketId::new(500).expect("id")));
    client.send(&Packet::Publish(own)).await;
    let mut got = Vec::new();
    loop {
        match client.recv().await {
            Packet::PubRec(rec) => {
                let rel = tern_codec::PubRel::new(rec.packet_id);
                client.send(&Packet::PubRel(rel)).await;
            }
            Packet::PubComp(_) => break,
            Packet::Publish(p) => {
                client.ack(&p).await;
                got.push(p);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got.extend(drain(&mut client).await);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].qos(),
        QoS::AtLeastOnce,
        "only the nlo/+ subscription matched"
    );
    assert_eq!(
        got[0]
            .properties()
            .subscription_identifiers()
            .collect::<Vec<_>>(),
        vec![2]
    );
}

// 3.11.2.1: UNSUBACK 0x11 for a shared subscription the client does not have (another
// member of the group, or the same filter outside the group, does not count).
#[tokio::test]
async fn unsubscribe_shared_not_member_0x11() {
    let broker = TestBroker::start().await;
    let mut member = broker.client(V5, "ush-member").await;
    member.subscribe("$share/g/ush/#", QoS::AtLeastOnce).await;
    let mut other = broker.client(V5, "ush-other").await;
    other.subscribe("ush/#", QoS::AtLeastOnce).await;
    let unsuback = other
        .unsubscribe(&["$share/g/ush/#", "$share/h/ush/#", "ush/#"])
        .await;
    assert_eq!(
        unsuback.reason_codes,
        vec![
            ReasonCode::NO_SUBSCRIPTION_EXISTED,
            ReasonCode::NO_SUBSCRIPTION_EXISTED,
            ReasonCode::SUCCESS
        ]
    );
    // The real member is unaffected.
    let mut publisher = broker.client(V3, "ush-pub").await;
    publisher
        .publish("ush/x", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(member.expect_publish_acked().await.payload(), b"x");
    other.expect_nothing(QUIET).await;
}
