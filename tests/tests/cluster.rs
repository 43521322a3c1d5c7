//! Several Tern nodes as one broker over NATS (issue #12): a real nats-server with
//! JetStream on 127.0.0.1 and in-process nodes joined to it. Skipped (with the reason
//! printed) when nats-server is not installed; under `CI=true` it must be.

use std::time::Duration;

use tern_codec::{ProtocolVersion, QoS, SubscriptionOptions};
use tern_tests::cluster_support::NatsServer;
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

async fn client(node: &TestBroker, version: ProtocolVersion, id: &str) -> Client {
    node.client(version, id).await
}

/// Subscribe on B, publish on A: every QoS, both protocol versions, and the granted QoS is
/// the lower of the two.
#[tokio::test]
async fn publish_on_one_node_reaches_a_subscriber_on_another() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    for version in [V3, V5] {
        let mut sub = client(&nodes[1], version, "sub").await;
        sub.subscribe("x/+/z", QoS::ExactlyOnce).await;
        let mut publisher = client(&nodes[0], version, "pub").await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let payload = format!("{version:?} {qos:?}");
            publisher
                .publish("x/y/z", payload.as_bytes(), qos, false)
                .await;
            let got = sub.expect_publish().await;
            assert_eq!(got.topic(), "x/y/z");
            assert_eq!(got.payload(), payload.as_bytes());
            assert_eq!(got.qos(), qos);
            sub.ack(&got).await;
        }
        sub.disconnect().await;
        publisher.disconnect().await;
    }
}

/// A message matching several filters of one node (of one client and of two clients) is
/// delivered once per client, as on one node.
#[tokio::test]
async fn overlapping_filters_deliver_once_per_client() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let mut one = client(&nodes[1], V5, "one").await;
    let opts = SubscriptionOptions::with_qos(QoS::AtLeastOnce);
    one.subscribe_with(vec![("a/#", opts), ("a/+", opts), ("+/b", opts)], None)
        .await;
    let mut two = client(&nodes[1], V5, "two").await;
    two.subscribe("a/b", QoS::AtMostOnce).await;
    let mut publisher = client(&nodes[0], V5, "pub").await;
    publisher
        .publish("a/b", b"1", QoS::AtLeastOnce, false)
        .await;
    let got = one.expect_publish().await;
    assert_eq!(got.qos(), QoS::AtLeastOnce);
    one.ack(&got).await;
    assert_eq!(two.expect_publish().await.payload(), b"1");
    one.expect_nothing(Duration::from_millis(300)).await;
    two.expect_nothing(Duration::from_millis(50)).await;
}

/// "Subscribe on B, then at once publish on A", a thousand times: no miss (the SUBACK waits
/// for NATS to have the node's interest).
#[tokio::test]
async fn subscribe_then_publish_elsewhere_never_misses() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let mut sub = client(&nodes[1], V5, "sub").await;
    let mut publisher = client(&nodes[0], V5, "pub").await;
    for i in 0..1000 {
        let topic = format!("race/{i}");
        sub.subscribe(&topic, QoS::AtMostOnce).await;
        publisher
            .publish(&topic, b"x", QoS::AtMostOnce, false)
            .await;
        let got = sub.expect_publish().await;
        assert_eq!(got.topic(), topic, "round {i}");
        sub.unsubscribe(&[&topic]).await;
    }
}

/// Retained on A is seen by subscribers on B and C (through the bucket's watch), and an
/// empty retained message deletes it everywhere.
#[tokio::test]
async fn retained_messages_are_cluster_wide() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(3).await;
    let mut publisher = client(&nodes[0], V5, "pub").await;
    publisher
        .publish("r/1", b"kept", QoS::AtLeastOnce, true)
        .await;
    for node in &nodes[1..] {
        let mut sub = client(node, V5, "sub").await;
        let mut seen = None;
        for _ in 0..50 {
            sub.subscribe("r/#", QoS::AtLeastOnce).await;
            if let Some(tern_codec::Packet::Publish(p)) =
                sub.recv_within(Duration::from_millis(100)).await
            {
                seen = Some(p);
                break;
            }
            sub.unsubscribe(&["r/#"]).await;
        }
        let got = seen.expect("retained message on another node");
        assert_eq!(got.payload(), b"kept");
        assert!(got.retain);
        sub.disconnect().await;
    }
    publisher.publish("r/1", b"", QoS::AtLeastOnce, true).await;
    let mut gone = false;
    for _ in 0..50 {
        let mut sub = client(&nodes[2], V5, "late").await;
        sub.subscribe("r/#", QoS::AtLeastOnce).await;
        if sub.recv_within(Duration::from_millis(100)).await.is_none() {
            gone = true;
            break;
        }
        sub.disconnect().await;
    }
    assert!(gone, "the delete reached node C");
}

/// `$` topics never match a first-level wildcard across nodes either.
#[tokio::test]
async fn dollar_topics_do_not_match_wildcards_across_nodes() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let mut all = client(&nodes[1], V5, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut plus = client(&nodes[1], V5, "plus").await;
    plus.subscribe("+/x", QoS::AtMostOnce).await;
    let mut dollar = client(&nodes[1], V5, "dollar").await;
    dollar.subscribe("$app/#", QoS::AtMostOnce).await;
    let mut publisher = client(&nodes[0], V5, "pub").await;
    publisher
        .publish("$app/x", b"d", QoS::AtMostOnce, false)
        .await;
    publisher
        .publish("app/x", b"p", QoS::AtMostOnce, false)
        .await;
    assert_eq!(dollar.expect_publish().await.payload(), b"d");
    assert_eq!(all.expect_publish().await.payload(), b"p");
    assert_eq!(plus.expect_publish().await.payload(), b"p");
    dollar.expect_nothing(Duration::from_millis(200)).await;
    all.expect_nothing(Duration::from_millis(10)).await;
    plus.expect_nothing(Duration::from_millis(10)).await;
}
