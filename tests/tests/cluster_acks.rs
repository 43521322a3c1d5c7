//! QoS 1/2 acknowledgements in a cluster (issue #12): a PUBACK/PUBREC leaves once NATS has
//! the message (a NATS round trip that followed it has completed), not when it is only
//! queued for NATS. A real nats-server with JetStream on 127.0.0.1, stopped and restarted
//! by the test. Skipped (with the reason printed) when nats-server is not installed; under
//! `CI=true` it must be.

use std::time::Duration;

use tern_codec::{
    Packet, ProtocolVersion, PubAck, PubComp, PubRec, Publish, PublishQoS, QoS, ReasonCode,
};
use tern_tests::cluster_support::NatsServer;
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Sends a PUBLISH at `qos` without waiting for its acknowledgement; returns its packet id.
async fn send_publish(client: &mut Client, topic: &str, qos: QoS) -> tern_codec::PacketId {
    let id = client.next_packet_id();
    let publish = Publish::new(topic, b"m".to_vec()).with_qos(PublishQoS::with_id(qos, id));
    client.send(&Packet::Publish(publish)).await;
    id
}

/// Waits (at most 10 s) until the node says it lost NATS.
async fn until_disconnected(node: &TestBroker) {
    let cluster = node.broker().cluster().expect("cluster").clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster.stats()["connected"].as_bool() != Some(false) {
        assert!(tokio::time::Instant::now() < deadline, "NATS loss not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// While NATS is stopped, a QoS 1 PUBLISH gets no PUBACK and a QoS 2 PUBLISH no PUBREC
/// (local routing has happened; NATS does not have them); once NATS is back both are
/// acknowledged, in order.
#[tokio::test]
async fn acknowledgements_wait_for_nats() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let node = TestBroker::start_with(|c| {
            nats.join(c, name);
            c.cluster.partition_lease_ms = 0; // keep the clients: this test is about acks
        })
        .await;
        nodes.push(node);
    }
    let mut sub = nodes[1].client(V5, "sub").await;
    sub.subscribe("a/#", QoS::ExactlyOnce).await;
    if let Some(ready) = nodes[1].broker().interest_ready("a/#") {
        ready.await;
    }
    let mut publisher = nodes[0].client(V5, "pub").await;
    publisher
        .publish("a/0", b"m", QoS::AtLeastOnce, false)
        .await;
    sub.expect_publish_acked().await;
    nats.stop();
    until_disconnected(&nodes[0]).await;
    let q1 = send_publish(&mut publisher, "a/1", QoS::AtLeastOnce).await;
    let q2 = send_publish(&mut publisher, "a/2", QoS::ExactlyOnce).await;
    publisher.expect_nothing(Duration::from_secs(1)).await;
    nats.restart();
    let acked = publisher.recv_within(Duration::from_secs(20)).await;
    assert!(
        matches!(&acked, Some(Packet::PubAck(a)) if a.packet_id == q1),
        "PUBACK once NATS is back: {acked:?}"
    );
    let received = publisher.recv_within(Duration::from_secs(5)).await;
    assert!(
        matches!(&received, Some(Packet::PubRec(r)) if r.packet_id == q2),
        "PUBREC after it: {received:?}"
    );
    // (Whether node B gets a/1 and a/2 depends on whether it had subscribed again on the
    // restarted server before they arrived: core NATS keeps no copy. Not checked here.)
}

/// 0x10 (No matching subscribers) is for when the server knows there are none: a node
/// that sent the message to NATS does not know of other nodes' subscribers, so it answers
/// 0x00 whether a subscriber on another node gets the message or nobody does (the Reason
/// Code table of PUBACK, 3.4.2.1: "If the Server knows that there are no matching
/// subscribers, it MAY use this Reason Code instead of 0x00"). The same for PUBREC.
#[tokio::test]
async fn subscribers_on_another_node_are_not_reported_missing() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        nodes.push(TestBroker::start_with(|c| nats.join(c, name)).await);
    }
    let mut sub = nodes[1].client(V5, "sub").await;
    sub.subscribe("far/#", QoS::AtLeastOnce).await;
    if let Some(ready) = nodes[1].broker().interest_ready("far/#") {
        ready.await;
    }
    let mut publisher = nodes[0].client(V5, "pub").await;
    for (topic, qos) in [
        ("far/1", QoS::AtLeastOnce),
        ("far/2", QoS::ExactlyOnce),
        ("nobody/1", QoS::AtLeastOnce),
    ] {
        let id = send_publish(&mut publisher, topic, qos).await;
        let code = match publisher.recv_within(Duration::from_secs(10)).await {
            Some(Packet::PubAck(a)) if a.packet_id == id => a.reason_code,
            Some(Packet::PubRec(r)) if r.packet_id == id => r.reason_code,
            other => panic!("acknowledgement of {topic}: {other:?}"),
        };
        assert_eq!(code, ReasonCode::SUCCESS, "{topic}");
    }
    let got = sub.expect_publish_acked().await;
    assert_eq!(got.topic(), "far/1");
}

/// A node cut off from NATS past its lease moves its clients off: a publisher whose QoS 1
/// message NATS never confirmed gets DISCONNECT 0x9C and no PUBACK (it sends the message
/// again on its next connection, [MQTT-4.4.0-1]).
#[tokio::test]
async fn a_client_moved_off_was_never_told_its_message_was_taken() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let node = TestBroker::start_with(|c| {
        nats.join(c, "solo");
        c.cluster.partition_lease_ms = 1000;
    })
    .await;
    let mut publisher = node.client(V5, "pub").await;
    nats.stop();
    until_disconnected(&node).await;
    send_publish(&mut publisher, "a/1", QoS::AtLeastOnce).await;
    let next = publisher.recv_within(Duration::from_secs(10)).await;
    match next {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::USE_ANOTHER_SERVER),
        other => panic!("expected DISCONNECT 0x9C and no PUBACK, got {other:?}"),
    }
}

/// Two clustered nodes taking packets of up to 4 MiB (and buffering up to 8 MiB for a
/// subscriber), NATS at its default `max_payload` (1 MiB).
async fn two_nodes_with_large_packets(nats: &NatsServer) -> Vec<TestBroker> {
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let node = TestBroker::start_with(|c| {
            nats.join(c, name);
            c.limits.max_packet_size_bytes = 4 << 20;
            // As a valid configuration must (at least `max_packet_size_bytes`).
            c.limits.writer_cap_bytes = 8 << 20;
        })
        .await;
        nodes.push(node);
    }
    nodes
}

/// Waits until `filter`'s interest is in force in NATS on `node`.
async fn interest_ready(node: &TestBroker, filter: &str) {
    if let Some(ready) = node.broker().interest_ready(filter) {
        ready.await;
    }
}

/// 2 MiB of varied bytes (a cut or a shifted chunk shows).
fn large_payload() -> Vec<u8> {
    (0..2usize << 20).map(|i| (i % 251) as u8).collect()
}

/// The next PUBLISH within 20 s (a large message takes an object-store round trip on both
/// nodes, in a debug build), acknowledged: PUBACK, or PUBREC, answering the PUBRELs of
/// earlier ones that come in between with PUBCOMP (the broker sends several at once).
async fn next_publish(client: &mut Client) -> Publish {
    loop {
        match client.recv_within(Duration::from_secs(20)).await {
            Some(Packet::Publish(publish)) => {
                match publish.publish_qos() {
                    PublishQoS::AtLeastOnce(id) => {
                        client.send(&Packet::PubAck(PubAck::new(id))).await
                    }
                    PublishQoS::ExactlyOnce(id) => {
                        client.send(&Packet::PubRec(PubRec::new(id))).await
                    }
                    PublishQoS::AtMostOnce => {}
                }
                return publish;
            }
            Some(Packet::PubRel(rel)) => {
                client
                    .send(&Packet::PubComp(PubComp::new(rel.packet_id)))
                    .await
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

/// A message larger than the NATS server's `max_payload` (1 MiB) crosses nodes through the
/// object store: 2 MiB messages published on node A at QoS 0, 1 and 2 by a 5.0 and a 3.1.1
/// client reach a subscriber on node A and one on node B intact, are acknowledged with
/// 0x00, and keep their place between the small messages the same client published right
/// before and after them on the same topic ([MQTT-4.6.0-6]).
#[tokio::test]
async fn a_message_larger_than_nats_takes_crosses_nodes_in_order() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = two_nodes_with_large_packets(&nats).await;
    let mut local = nodes[0].client(V5, "local").await;
    local.subscribe("big/#", QoS::ExactlyOnce).await;
    let mut remote = nodes[1].client(V5, "remote").await;
    remote.subscribe("big/#", QoS::ExactlyOnce).await;
    interest_ready(&nodes[1], "big/#").await;
    let big = large_payload();
    let mut expected = Vec::new();
    for (version, name) in [(V5, "pub5"), (ProtocolVersion::V3_1_1, "pub3")] {
        let mut publisher = nodes[0].client(version, name).await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = format!("big/{name}/{qos:?}");
            for payload in [b"before".to_vec(), big.clone(), b"after".to_vec()] {
                let code = publisher.publish(&topic, &payload, qos, false).await;
                let success = (qos != QoS::AtMostOnce).then_some(ReasonCode::SUCCESS);
                assert_eq!(code, success, "{topic}, {} bytes", payload.len());
                expected.push((topic.clone(), payload));
            }
        }
    }
    for (sub, node) in [(&mut local, "a"), (&mut remote, "b")] {
        let mut got: Vec<(String, Vec<u8>)> = Vec::new();
        for _ in 0..expected.len() {
            let publish = next_publish(sub).await;
            got.push((publish.topic().to_string(), publish.payload().to_vec()));
        }
        // Each topic's messages in publishing order (across topics no order is promised).
        for (topic, _) in &expected {
            let want: Vec<_> = expected.iter().filter(|(t, _)| t == topic).collect();
            let have: Vec<_> = got.iter().filter(|(t, _)| t == topic).collect();
            let sizes = |v: &[&(String, Vec<u8>)]| v.iter().map(|m| m.1.len()).collect::<Vec<_>>();
            assert_eq!(sizes(&have), sizes(&want), "node {node}, {topic}");
            assert!(have == want, "node {node}, {topic}: payload bytes differ");
        }
        // Only the PUBRELs of the last QoS 2 messages may follow.
        while let Some(packet) = sub.recv_within(Duration::from_millis(300)).await {
            match packet {
                Packet::PubRel(rel) => {
                    sub.send(&Packet::PubComp(PubComp::new(rel.packet_id)))
                        .await
                }
                other => panic!("node {node}: nothing more expected, got {other:?}"),
            }
        }
    }
    let stats = nodes[0].broker().cluster().expect("cluster").stats();
    assert_eq!(stats["large_messages_out"], 6, "{stats}");
    assert_eq!(stats["publish_errors"], 0, "{stats}");
    let stats = nodes[1].broker().cluster().expect("cluster").stats();
    assert_eq!(stats["large_messages_in"], 6, "{stats}");
    assert_eq!(stats["large_fetch_errors"], 0, "{stats}");
}

/// A shared group with a member on each of two nodes gets each large message exactly once
/// (section 4.8.2: a message goes to one session of the group): NATS gives the reference
/// to one node, which fetches the message and hands it to its member.
#[tokio::test]
async fn a_shared_group_over_two_nodes_gets_a_large_message_once() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = two_nodes_with_large_packets(&nats).await;
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut member = node.client(V5, &format!("member{i}")).await;
        member.subscribe("$share/g/big/#", QoS::AtLeastOnce).await;
        interest_ready(node, "$share/g/big/#").await;
        members.push(member);
    }
    let big = large_payload();
    let mut publisher = nodes[0].client(V5, "pub").await;
    const N: usize = 6;
    for i in 0..N {
        let code = publisher
            .publish(&format!("big/{i}"), &big, QoS::AtLeastOnce, false)
            .await;
        assert_eq!(code, Some(ReasonCode::SUCCESS));
    }
    let mut seen = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.values().sum::<usize>() < N && tokio::time::Instant::now() < deadline {
        for member in &mut members {
            if let Some(Packet::Publish(p)) = member.recv_within(Duration::from_millis(100)).await {
                member.ack(&p).await;
                assert!(p.payload() == &big[..], "payload bytes differ");
                *seen.entry(p.topic().to_string()).or_insert(0usize) += 1;
            }
        }
    }
    for member in &mut members {
        member.expect_nothing(Duration::from_millis(500)).await;
    }
    assert_eq!(seen.len(), N, "every message reached the group: {seen:?}");
    assert!(seen.values().all(|&n| n == 1), "exactly once: {seen:?}");
}

/// A retained message larger than the NATS server's `max_payload` cannot be kept
/// cluster-wide (the retained bucket holds values of one NATS message, and the object store
/// keeps large messages only minutes): it is refused as a whole rather than retained on its
/// node only. 5.0: PUBACK 0x97 Quota exceeded, PUBREC 0x97 (the QoS 2 exchange ends there,
/// [MQTT-4.3.3-9]); 3.1.1 gets its plain acknowledgement ([MQTT-3.3.5-2]: no refusing
/// code); no subscriber gets it, live or retained, and the topic's earlier retained message
/// stays.
#[tokio::test]
async fn a_retained_message_larger_than_nats_takes_is_refused() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = two_nodes_with_large_packets(&nats).await;
    let mut remote = nodes[1].client(V5, "remote").await;
    remote.subscribe("big/#", QoS::AtLeastOnce).await;
    interest_ready(&nodes[1], "big/#").await;
    let mut v5 = nodes[0].client(V5, "pub5").await;
    assert_eq!(
        v5.publish("big/r", b"small", QoS::AtLeastOnce, true).await,
        Some(ReasonCode::SUCCESS)
    );
    let got = next_publish(&mut remote).await;
    assert_eq!((got.topic(), got.payload()), ("big/r", &b"small"[..]));
    // Node B has the small one in its retained store once it applied the bucket's change.
    let cluster_b = nodes[1].broker().cluster().expect("cluster").clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster_b.stats()["retained_applied"].as_u64() < Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retained change not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let big = large_payload();
    assert_eq!(
        v5.publish("big/r", &big, QoS::AtLeastOnce, true).await,
        Some(ReasonCode::QUOTA_EXCEEDED)
    );
    let id = v5.next_packet_id();
    let mut publish =
        Publish::new("big/r", big.clone()).with_qos(PublishQoS::with_id(QoS::ExactlyOnce, id));
    publish.retain = true;
    v5.send(&Packet::Publish(publish)).await;
    match v5.recv().await {
        Packet::PubRec(rec) => assert_eq!(rec.reason_code, ReasonCode::QUOTA_EXCEEDED),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    let mut v3 = nodes[0].client(ProtocolVersion::V3_1_1, "pub3").await;
    v3.publish("big/r", &big, QoS::AtLeastOnce, true).await;
    remote.expect_nothing(Duration::from_millis(500)).await;
    // Not retained anywhere: a new subscriber on either node gets the small one.
    for (i, node) in nodes.iter().enumerate() {
        let mut late = node.client(V5, &format!("late{i}")).await;
        late.subscribe("big/r", QoS::AtLeastOnce).await;
        let got = next_publish(&mut late).await;
        assert_eq!(got.payload(), b"small", "node {i}");
    }
    let stats = nodes[0].broker().cluster().expect("cluster").stats();
    assert_eq!(stats["publish_errors"], 3, "{stats}");
    assert_eq!(stats["large_messages_out"], 0, "{stats}");
}

/// A reference to a large message that cannot be fetched (its object is not in the store:
/// expired, or never stored; or the reference names no object) is skipped and counted in
/// `large_fetch_errors`, and the subscription goes on with the next message. The
/// references are forged from a real envelope seen on NATS.
#[tokio::test]
async fn a_reference_that_cannot_be_fetched_is_skipped_and_counted() {
    use futures_util::StreamExt as _;
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = two_nodes_with_large_packets(&nats).await;
    let mut remote = nodes[1].client(V5, "remote").await;
    remote.subscribe("big/#", QoS::AtLeastOnce).await;
    interest_ready(&nodes[1], "big/#").await;
    let spy = async_nats::connect(nats.url()).await.expect("NATS");
    let mut seen = spy.subscribe("tern.m.>").await.expect("subscribe");
    spy.flush().await.expect("flush");
    let mut publisher = nodes[0].client(V5, "pub").await;
    publisher
        .publish("big/x", b"first", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(next_publish(&mut remote).await.payload(), b"first");
    let real = tokio::time::timeout(Duration::from_secs(5), seen.next())
        .await
        .expect("the envelope on NATS")
        .expect("a message");
    // Header: magic, version, flags, origin (3..11), sequence (11..19), time (19..27).
    let forge = |sequence: u64, name: &[u8]| {
        let mut reference = real.payload[..27].to_vec();
        reference[1] = 4;
        reference[11..19].copy_from_slice(&sequence.to_be_bytes());
        reference.extend_from_slice(name);
        bytes::Bytes::from(reference)
    };
    for reference in [forge(u64::MAX, b"nowhere.1"), forge(u64::MAX - 1, b"")] {
        spy.publish(real.subject.clone(), reference)
            .await
            .expect("publish");
    }
    spy.flush().await.expect("flush");
    publisher
        .publish("big/x", b"second", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(next_publish(&mut remote).await.payload(), b"second");
    // The spy's references and node A's message come over different connections: no order
    // between them, so the count is awaited.
    let cluster_b = nodes[1].broker().cluster().expect("cluster").clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster_b.stats()["large_fetch_errors"].as_u64() < Some(2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            cluster_b.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cluster_b.stats()["large_messages_in"], 0);
    remote.expect_nothing(Duration::from_millis(200)).await;
}
