//! `[mqtt]` capabilities: announced in a 5.0 CONNACK (section 3.2.2.3) and enforced with
//! their reason codes, in 5.0 and 3.1.1 (which cannot be told and gets the socket closed or
//! SUBACK 0x80); reloadable for new connections.

use std::time::Duration;

use bytes::Bytes;
use tern_broker::Config;
use tern_codec::{
    Connect, LastWill, Packet, ProtocolVersion, Publish, PublishQoS, QoS, ReasonCode,
    SubscriptionOptions,
};
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Everything off that can be, and Maximum QoS 1.
fn restricted(c: &mut Config) {
    c.mqtt.maximum_qos = 1;
    c.mqtt.retain_available = false;
    c.mqtt.wildcard_subscription_available = false;
    c.mqtt.shared_subscription_available = false;
    c.mqtt.subscription_identifiers_available = false;
}

// [MQTT-3.2.2-9]: a server without QoS 2 sends Maximum QoS; Retain Available, Wildcard
// Subscription Available, Subscription Identifiers Available and Shared Subscription
// Available say 0 when off (3.2.2.3.5, 3.2.2.3.11 to 3.2.2.3.13).
#[tokio::test]
async fn capabilities_announced_in_connack_mqtt_3_2_2_9() {
    let broker = TestBroker::start_with(restricted).await;
    let mut client = broker.raw(V5).await;
    let connack = client.connect(Connect::new(V5, "caps")).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    let p = &connack.properties;
    assert_eq!(p.maximum_qos, Some(1), "[MQTT-3.2.2-9]");
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.wildcard_subscription_available, Some(false));
    assert_eq!(p.subscription_identifiers_available, Some(false));
    assert_eq!(p.shared_subscription_available, Some(false));
    broker.running.stop().await;
    let open = TestBroker::start().await;
    let mut client = open.raw(V5).await;
    let p = client.connect(Connect::new(V5, "caps")).await.properties;
    assert_eq!(p.maximum_qos, None, "2 is the default and is not sent");
    assert_eq!(p.retain_available, Some(true));
    open.running.stop().await;
}

/// Sends `publish` and expects the broker to close: DISCONNECT `code` for 5.0, a bare close
/// for 3.1.1.
async fn expect_closed_by(client: &mut Client, publish: Publish, code: ReasonCode) {
    client.send(&Packet::Publish(publish)).await;
    let disconnect = client.expect_disconnect().await;
    if client.version.is_v5() {
        assert_eq!(disconnect.map(|d| d.reason_code), Some(code));
    } else {
        assert!(disconnect.is_none());
    }
}

fn qos_publish(client: &mut Client, qos: QoS) -> Publish {
    Publish::new("caps/t", Bytes::from_static(b"m"))
        .with_qos(PublishQoS::with_id(qos, client.next_packet_id()))
}

// [MQTT-3.2.2-11]: a client may not publish above the Maximum QoS; one that does is
// disconnected with 0x9B (3.1.1: closed). QoS 1 still works.
#[tokio::test]
async fn publish_above_maximum_qos_disconnect_0x9b_mqtt_3_2_2_11() {
    let broker = TestBroker::start_with(restricted).await;
    for version in [V5, V3] {
        let mut client = broker.client(version, "qos-pub").await;
        let ok = qos_publish(&mut client, QoS::AtLeastOnce);
        client.publish_packet(ok).await;
        let too_high = qos_publish(&mut client, QoS::ExactlyOnce);
        expect_closed_by(&mut client, too_high, ReasonCode::QOS_NOT_SUPPORTED).await;
    }
    broker.running.stop().await;
}

// [MQTT-3.2.2-14]: with Retain Available 0 a client may not publish with RETAIN; one that
// does is disconnected with 0x9A (3.1.1: closed).
#[tokio::test]
async fn publish_retain_unavailable_disconnect_0x9a_mqtt_3_2_2_14() {
    let broker = TestBroker::start_with(restricted).await;
    for version in [V5, V3] {
        let mut client = broker.client(version, "retain-pub").await;
        let mut retained = Publish::new("caps/r", Bytes::from_static(b"m"));
        retained.retain = true;
        expect_closed_by(&mut client, retained, ReasonCode::RETAIN_NOT_SUPPORTED).await;
    }
    broker.running.stop().await;
}

fn will_connect(version: ProtocolVersion, qos: QoS, retain: bool) -> Connect {
    let mut connect = Connect::new(version, "will-caps");
    connect.will = Some(LastWill {
        topic: "caps/will".into(),
        payload: Bytes::from_static(b"gone"),
        qos,
        retain,
        properties: Default::default(),
    });
    connect
}

// [MQTT-3.2.2-12]: a will QoS above the server's is refused with CONNACK 0x9B;
// [MQTT-3.2.2-13]: a will with retain without Retain Available with CONNACK 0x9A. 3.1.1 has
// no such codes: 0x05 (refused, not authorized), the nearest it has.
#[tokio::test]
async fn will_qos_or_retain_refused_connack_0x9b_0x9a_mqtt_3_2_2_12_and_13() {
    let broker = TestBroker::start_with(restricted).await;
    for (qos, retain, code) in [
        (QoS::ExactlyOnce, false, ReasonCode::QOS_NOT_SUPPORTED),
        (QoS::AtMostOnce, true, ReasonCode::RETAIN_NOT_SUPPORTED),
    ] {
        for version in [V5, V3] {
            let mut client = broker.raw(version).await;
            let connack = client.connect(will_connect(version, qos, retain)).await;
            let expected = if version.is_v5() { code.0 } else { 0x05 };
            assert_eq!(connack.code.0, expected, "{version:?} {code:?}");
            assert!(client.expect_disconnect().await.is_none());
        }
    }
    let mut ok = broker.raw(V5).await;
    let connack = ok.connect(will_connect(V5, QoS::AtLeastOnce, false)).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    broker.running.stop().await;
}

// [MQTT-3.2.2-10]: a server without QoS 2 still accepts SUBSCRIBE at QoS 2, granting its
// Maximum QoS.
#[tokio::test]
async fn subscribe_above_maximum_qos_granted_at_maximum_mqtt_3_2_2_10() {
    let broker = TestBroker::start_with(|c| c.mqtt.maximum_qos = 0).await;
    for version in [V5, V3] {
        let mut client = broker.client(version, "sub-qos").await;
        let suback = client.subscribe("caps/q", QoS::ExactlyOnce).await;
        assert_eq!(suback.reason_codes, [ReasonCode::SUCCESS], "{version:?}");
    }
    broker.running.stop().await;
}

// SUBACK reason codes (3.9.3): 0xA2 Wildcard Subscriptions not supported, 0x9E Shared
// Subscriptions not supported, 0xA1 Subscription Identifiers not supported, per filter;
// the other filters of the SUBSCRIBE are granted. 3.1.1: 0x80.
#[tokio::test]
async fn suback_refuses_unavailable_features_0xa2_0x9e_0xa1() {
    let broker = TestBroker::start_with(restricted).await;
    let mut client = broker.client(V5, "sub-caps").await;
    let opts = SubscriptionOptions::with_qos(QoS::AtLeastOnce);
    let suback = client
        .subscribe_with(
            vec![("a/+", opts), ("$share/g/a/b", opts), ("a/b", opts)],
            None,
        )
        .await;
    assert_eq!(
        suback.reason_codes,
        [
            ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
            ReasonCode::GRANTED_QOS_1
        ]
    );
    let suback = client.subscribe_with(vec![("a/b", opts)], Some(7)).await;
    assert_eq!(
        suback.reason_codes,
        [ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED]
    );
    let mut old = broker.client(V3, "sub-caps-3").await;
    let suback = old
        .subscribe_with(vec![("a/#", opts), ("a/c", opts)], None)
        .await;
    assert_eq!(
        suback.reason_codes,
        [ReasonCode(0x80), ReasonCode::GRANTED_QOS_1]
    );
    broker.running.stop().await;
}

// `[mqtt]` reloads like the limits: new connections get the new capabilities, connected
// ones keep those their CONNACK announced.
#[tokio::test]
async fn capabilities_reload_for_new_connections() {
    let dir = std::env::temp_dir().join(format!("tern-caps-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("tern.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[persistence]\nenabled = false\n\
         [mqtt]\nmaximum_qos = 0\nretain_available = false\n",
    )
    .expect("config");
    let broker = TestBroker::start().await;
    let mut before = broker.client(V5, "before").await;
    tern_broker::reload::reload(broker.bridges(), Some(&path), &|_| Ok(())).expect("reload");
    let mut after = broker.raw(V5).await;
    let p = after.connect(Connect::new(V5, "after")).await.properties;
    assert_eq!((p.maximum_qos, p.retain_available), (Some(0), Some(false)));
    let publish = qos_publish(&mut after, QoS::AtLeastOnce);
    expect_closed_by(&mut after, publish, ReasonCode::QOS_NOT_SUPPORTED).await;
    let publish = qos_publish(&mut before, QoS::ExactlyOnce);
    assert_eq!(
        before.publish_packet(publish).await,
        Some(ReasonCode::NO_MATCHING_SUBSCRIBERS)
    );
    before.expect_nothing(Duration::from_millis(100)).await;
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
