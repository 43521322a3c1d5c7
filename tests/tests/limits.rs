//! Each configurable limit, hit: connections (total, per IP, rate per IP), subscriptions per
//! client, topic length and depth, publish rate. Each answers with its reason code (5.0) or
//! the 3.1.1 equivalent, and is counted.

use std::time::Duration;

use tern_broker::metrics::Metrics;
use tern_codec::{Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use tern_tests::{duplex_client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

/// A TCP connection over a limit: its CONNECT gets CONNACK `code` (5.0) or 0x03 Server
/// unavailable (3.1.1, which has neither Server busy nor Quota exceeded), then the close.
async fn assert_refused(broker: &TestBroker, code: ReasonCode) {
    for (version, wire) in [(V5, code), (V3, ReasonCode(0x03))] {
        let mut client = broker.raw(version).await;
        let connect = Packet::Connect(Box::new(tern_codec::Connect::new(version, "refused")));
        client.send_bytes(&connect.to_bytes(version)).await;
        let (reply, closed) = client.read_to_close(Duration::from_secs(2)).await;
        assert!(closed, "{version:?}: not closed");
        let expected: &[u8] = if version.is_v5() {
            &[0x20, 0x03, 0x00, wire.0, 0x00]
        } else {
            &[0x20, 0x02, 0x00, wire.0]
        };
        assert_eq!(reply, expected, "{version:?}");
    }
}

#[tokio::test]
async fn max_connections_total() {
    let broker = TestBroker::start_with(|c| c.limits.max_connections = 2).await;
    let _a = broker.client(V5, "a").await;
    let _b = broker.client(V3, "b").await;
    // Issue #13: 0x89 Server busy.
    assert_refused(&broker, ReasonCode::SERVER_BUSY).await;
    assert_eq!(
        Metrics::get(&broker.broker().metrics().connections_refused_limit),
        2
    );
}

#[tokio::test]
async fn max_connections_per_ip() {
    let broker = TestBroker::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    let a = broker.client(V5, "a").await;
    let _b = broker.client(V5, "b").await;
    // Issue #13: 0x97 Quota exceeded.
    assert_refused(&broker, ReasonCode::QUOTA_EXCEEDED).await;
    assert_eq!(
        Metrics::get(&broker.broker().metrics().connections_refused_per_ip),
        2
    );
    // A closed connection frees its place.
    a.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _c = broker.client(V5, "c").await;
}

#[tokio::test]
async fn connect_rate_per_ip() {
    let broker = TestBroker::start_with(|c| c.limits.max_connect_rate_per_ip = 3).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(broker.client(V5, &format!("r{i}")).await);
    }
    // Issue #13: 0x97 Quota exceeded.
    assert_refused(&broker, ReasonCode::QUOTA_EXCEEDED).await;
    assert_eq!(
        Metrics::get(&broker.broker().metrics().connections_refused_rate),
        2
    );
}

#[tokio::test]
async fn max_subscriptions_per_client_v5_and_v311() {
    let broker = TestBroker::start_with(|c| c.limits.max_subscriptions_per_client = 2).await;
    for (version, refused) in [(V5, ReasonCode::QUOTA_EXCEEDED), (V3, ReasonCode(0x80))] {
        let mut client = broker.client(version, "subs").await;
        assert_eq!(
            client.subscribe("a", QoS::AtMostOnce).await.reason_codes,
            [ReasonCode(0)]
        );
        assert_eq!(
            client.subscribe("b", QoS::AtLeastOnce).await.reason_codes,
            [ReasonCode(1)]
        );
        // Re-subscribing to an existing filter is not a new subscription.
        assert_eq!(
            client.subscribe("a", QoS::AtLeastOnce).await.reason_codes,
            [ReasonCode(1)]
        );
        assert_eq!(
            client.subscribe("c", QoS::AtMostOnce).await.reason_codes,
            [refused]
        );
        client.disconnect().await;
    }
    assert_eq!(
        Metrics::get(&broker.broker().metrics().subscriptions_refused_quota),
        2
    );
}

#[tokio::test]
async fn topic_length_and_depth_limits() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_topic_length_bytes = 16;
        c.limits.max_topic_levels = 3;
    })
    .await;
    let mut client = broker.client(V5, "deep").await;
    let long = "x".repeat(17);
    let suback = client.subscribe(&long, QoS::AtMostOnce).await;
    assert_eq!(suback.reason_codes, [ReasonCode::TOPIC_FILTER_INVALID]);
    let suback = client.subscribe("a/b/c/d", QoS::AtMostOnce).await;
    assert_eq!(suback.reason_codes, [ReasonCode::TOPIC_FILTER_INVALID]);
    assert_eq!(
        client
            .subscribe("a/b/#", QoS::AtMostOnce)
            .await
            .reason_codes,
        [ReasonCode(0)]
    );
    // A PUBLISH past the limits is dropped; 5.0 QoS 1 gets PUBACK 0x90.
    let code = client
        .publish("a/b/c/d", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(code, Some(ReasonCode::TOPIC_NAME_INVALID));
    client.expect_nothing(Duration::from_millis(200)).await;
    assert!(Metrics::get(&broker.broker().metrics().dropped_topic_too_deep) >= 1);
}

// One rule for acknowledging a PUBLISH dropped for its topic depth, as for any refused
// PUBLISH: 5.0 PUBACK/PUBREC 0x90 and the QoS 2 exchange over ([MQTT-4.3.3-9]); 3.1.1
// acknowledged as received ([MQTT-3.3.5-2]), the QoS 2 id kept until PUBREL (it was not).
#[tokio::test]
async fn publish_too_deep_acknowledged_per_version_mqtt_4_3_3_9() {
    let broker = TestBroker::start_with(|c| c.limits.max_topic_levels = 3).await;
    for version in [V5, V3] {
        let client_id = format!("deep-{version:?}");
        let mut client = broker.client(version, &client_id).await;
        tern_tests::check_refused_publish_acks(
            broker.broker(),
            &mut client,
            &client_id,
            "a/b/c/d",
            ReasonCode::TOPIC_NAME_INVALID,
        )
        .await;
        client.ping().await;
        client.disconnect().await;
    }
    broker.running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn publish_rate_slows_the_client_down() {
    let mut config = tern_tests::test_config();
    config.limits.max_publish_rate_per_client = 50;
    let broker = tern_broker::Broker::new(config);
    let mut sub = duplex_client(&broker, V5);
    sub.connect(tern_codec::Connect::new(V5, "rate-sub")).await;
    sub.subscribe("rate/#", QoS::AtMostOnce).await;
    let mut publisher = duplex_client(&broker, V5);
    publisher
        .connect(tern_codec::Connect::new(V5, "rate-pub"))
        .await;
    let start = tokio::time::Instant::now();
    for i in 0..150u32 {
        publisher
            .send(&Packet::Publish(Publish::new(
                "rate/x",
                i.to_be_bytes().to_vec(),
            )))
            .await;
    }
    for _ in 0..150 {
        sub.expect_publish().await;
    }
    // 50 in the initial burst, then 50 per second: at least ~2 s of (paused) time.
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(1900), "took {elapsed:?}");
    assert!(Metrics::get(&broker.metrics().publish_throttled) >= 1);
}
