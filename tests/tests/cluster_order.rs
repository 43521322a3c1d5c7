//! Per-topic order across a node's filters (issue #12): a message matching several of a
//! node's filters arrives once per filter, each filter's NATS subscription read by its own
//! task; whichever task routes a message, a topic's messages must reach every subscriber in
//! publishing order ([MQTT-4.6.0-6]: every topic is an Ordered Topic on non-shared
//! subscriptions) and once per client ([MQTT-3.3.4-2]: overlapping subscriptions, one
//! delivery carrying both subscription identifiers). Skipped when nats-server is missing.
//!
//! The deterministic interleaving of the race (a task that finds a copy must not overtake
//! the task still routing the first) is `cluster::ordered`'s unit test; this one drives real
//! nodes on a multi-threaded runtime with a pipelined burst, where the race shows when the
//! lock is missing.

use std::time::Duration;

use tern_codec::{Packet, ProtocolVersion, Publish, PublishQoS, QoS, SubscriptionOptions};
use tern_tests::cluster_support::NatsServer;
use tern_tests::Client;

const V5: ProtocolVersion = ProtocolVersion::V5;
/// Messages per topic.
const N: usize = 3000;
const TOPICS: [&str; 2] = ["t/x", "t/y"];

/// Message `i` of a topic: every fourth at QoS 0, the others at QoS 1.
fn qos_of(i: usize) -> QoS {
    if i % 4 == 3 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// A burst of QoS 1 and QoS 0 messages on two topics, published on A as fast as possible:
/// on B, a client holding `t/+` (id 1), `t/#` (id 2) and `+/x` (id 3), and one holding
/// `t/x` alone, get every QoS 1 message once, each topic's messages of one QoS in
/// publishing order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_filters_keep_each_topics_order_and_deliver_once() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let mut overlapping = nodes[1].client(V5, "overlapping").await;
    let opts = SubscriptionOptions::with_qos(QoS::AtLeastOnce);
    for (id, filter) in [(1, "t/+"), (2, "t/#"), (3, "+/x")] {
        overlapping
            .subscribe_with(vec![(filter, opts)], Some(id))
            .await;
    }
    let mut plain = nodes[1].client(V5, "plain").await;
    plain.subscribe("t/x", QoS::AtLeastOnce).await;
    let mut publisher = nodes[0].client(V5, "pub").await;

    let mut wire = Vec::new();
    for i in 0..N {
        for topic in TOPICS {
            let qos = PublishQoS::with_id(qos_of(i), publisher.next_packet_id());
            let publish = Publish::new(topic, format!("{i}").into_bytes()).with_qos(qos);
            Packet::Publish(publish).encode(V5, &mut wire);
        }
    }
    let acks = N * TOPICS.len() - (0..N).filter(|i| qos_of(*i) == QoS::AtMostOnce).count() * 2;
    let publishing = async move {
        publisher.send_bytes(&wire).await;
        for _ in 0..acks {
            match publisher.recv().await {
                Packet::PubAck(_) => {}
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    };
    let ((), (), ()) = tokio::join!(
        publishing,
        receive_in_order(&mut overlapping, &TOPICS, &[1, 2, 3]),
        receive_in_order(&mut plain, &["t/x"], &[]),
    );
}

/// Reads until every QoS 1 message of `topics` has come, checking for each topic and QoS
/// that numbers only grow (in order, none twice: [MQTT-4.6.0-6] is per topic and QoS, and
/// a QoS 0 message may pass QoS 1 ones waiting for the window, as on one node), that no QoS
/// 1 message is missing (QoS 0 ones may be, past a subscriber's limits), and that each
/// carries subscription identifiers `ids` as far as its topic matches them (`+/x`, id 3,
/// matches only `t/x`).
async fn receive_in_order(client: &mut Client, topics: &[&str], ids: &[u32]) {
    let qos1 = |from: usize| (from..N).find(|i| qos_of(*i) == QoS::AtLeastOnce);
    // Per topic: the next QoS 1 message due, and the last QoS 0 one seen.
    let mut next_qos1: Vec<Option<usize>> = vec![qos1(0); topics.len()];
    let mut last_qos0: Vec<Option<usize>> = vec![None; topics.len()];
    while next_qos1.iter().any(Option::is_some) {
        let p = match client.recv_within(Duration::from_secs(20)).await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?} (next QoS 1: {next_qos1:?})"),
        };
        client.ack(&p).await;
        let t = topics
            .iter()
            .position(|t| *t == p.topic())
            .expect("a subscribed topic");
        let i: usize = std::str::from_utf8(p.payload())
            .expect("utf8")
            .parse()
            .expect("number");
        assert_eq!(p.qos(), qos_of(i), "message {i}");
        if p.qos() == QoS::AtLeastOnce {
            assert_eq!(
                Some(i),
                next_qos1[t],
                "{}: QoS 1 message {i} out of order, twice or after a gap",
                p.topic()
            );
            next_qos1[t] = qos1(i + 1);
        } else {
            assert!(
                last_qos0[t] < Some(i),
                "{}: QoS 0 message {i} after {:?}",
                p.topic(),
                last_qos0[t]
            );
            last_qos0[t] = Some(i);
        }
        let mut got: Vec<u32> = p.properties().subscription_identifiers().collect();
        got.sort_unstable();
        let want: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| *id != 3 || p.topic() == "t/x")
            .collect();
        assert_eq!(got, want, "one copy with every matching identifier");
    }
    // Only QoS 0 messages can still come (the last ones, after the last QoS 1), none twice.
    while let Some(packet) = client.recv_within(Duration::from_millis(300)).await {
        let Packet::Publish(p) = packet else {
            panic!("expected PUBLISH, got {packet:?}");
        };
        let t = topics.iter().position(|t| *t == p.topic()).expect("topic");
        let i: usize = std::str::from_utf8(p.payload())
            .expect("utf8")
            .parse()
            .expect("n");
        assert!(
            p.qos() == QoS::AtMostOnce && last_qos0[t] < Some(i),
            "late {i}"
        );
        last_qos0[t] = Some(i);
    }
}
