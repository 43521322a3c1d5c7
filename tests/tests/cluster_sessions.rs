//! Sessions across the nodes of a cluster (issue #12): a takeover hands the session over
//! to the new node, and a dead node's sessions and wills are taken up by a survivor. A real
//! nats-server with JetStream on 127.0.0.1, in-process nodes and `tern` processes. Skipped
//! (with the reason printed) when nats-server is not installed; under `CI=true` it must be.

use std::time::Duration;

use futures_util::StreamExt as _;

use tern_codec::{Connect, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
use tern_tests::cluster_support::{with_will, NatsServer};
use tern_tests::{Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A 5.0 client resuming or starting a persistent session (Clean Start 0, expiry 300 s),
/// with `receive_maximum`; returns it and Session Present.
async fn persistent(
    addr: std::net::SocketAddr,
    client_id: &str,
    receive_maximum: Option<u16>,
) -> (Client, bool) {
    let mut client = Client::tcp(addr, V5).await;
    let mut connect = Connect::new(V5, client_id);
    connect.clean_start = false;
    connect.keep_alive_secs = 0;
    connect.properties.session_expiry_interval_secs = Some(300);
    connect.properties.receive_maximum = receive_maximum;
    let connack = client.connect(connect).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS, "{connack:?}");
    (client, connack.session_present)
}

/// Waits (at most 10 s) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A persistent client with three messages in flight (sent, not acknowledged) and two
/// queued behind its Receive Maximum of 3 on node A connects again on node B: the old
/// connection gets DISCONNECT 0x8E, the new one Session Present 1, the five messages in
/// order (the three in flight again with DUP) with the subscription identifier, and the
/// subscription works for what is published on A afterwards.
#[tokio::test]
async fn takeover_hands_the_session_over_to_the_new_node() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let (mut old, _) = persistent(nodes[0].addr, "dev", Some(3)).await;
    let options = SubscriptionOptions::with_qos(QoS::AtLeastOnce);
    old.subscribe_with(vec![("q/#", options)], Some(5)).await;
    let mut publisher = nodes[0].client(V5, "pub").await;
    for i in 0..5 {
        let topic = format!("q/{i}");
        publisher
            .publish(&topic, b"m", QoS::AtLeastOnce, false)
            .await;
    }
    for i in 0..3 {
        assert_eq!(old.expect_publish().await.topic(), format!("q/{i}"));
    }
    let (mut new, present) = persistent(nodes[1].addr, "dev", None).await;
    assert!(present, "[MQTT-3.2.2-3] Session Present 1 on the new node");
    let disconnect = old.expect_disconnect().await.expect("DISCONNECT");
    // [MQTT-3.1.4-3]: the existing connection is closed with 0x8E.
    assert_eq!(disconnect.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    for i in 0..5 {
        let got = new.expect_publish().await;
        assert_eq!(got.topic(), format!("q/{i}"));
        // [MQTT-4.4.0-1]: unacknowledged PUBLISH packets are resent with DUP on resume.
        assert_eq!(got.dup, i < 3, "DUP of q/{i}");
        let ids: Vec<u32> = got.properties().subscription_identifiers().collect();
        assert_eq!(ids, vec![5], "[MQTT-3.3.4-3] the subscription identifier");
        new.ack(&got).await;
    }
    assert!(!nodes[0].broker().has_session("dev"), "ended on A");
    publisher
        .publish("q/after", b"a", QoS::AtLeastOnce, false)
        .await;
    let got = new.expect_publish().await;
    assert_eq!(got.topic(), "q/after");
    new.ack(&got).await;
    new.expect_nothing(Duration::from_millis(300)).await;
}

/// A session far larger than one NATS message moves whole: on a nats-server with a
/// `max_payload` of 64 KiB, a persistent QoS 1 subscriber on A with Receive Maximum 10 has
/// 10 messages in flight (received, not acknowledged) and 1,490 queued (1 KiB each, some
/// 1.6 MB: 25 and more handover chunks, so A also waits for B to take a window of them);
/// it connects again on B with Clean Start 0: Session Present 1, and all 1,500 messages
/// arrive exactly once, in order, the 10 in flight again with DUP.
#[tokio::test]
async fn a_session_larger_than_one_nats_message_moves_whole() {
    const MESSAGES: u32 = 1500;
    const IN_FLIGHT: u32 = 10;
    let Some(nats) = NatsServer::start_with_config("max_payload: 65536\n") else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let (mut old, _) = persistent(nodes[0].addr, "big", Some(IN_FLIGHT as u16)).await;
    old.subscribe("b/#", QoS::AtLeastOnce).await;
    let mut publisher = nodes[0].client(V5, "pub").await;
    for i in 0..MESSAGES {
        let mut payload = vec![b'.'; 1024];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        publisher
            .publish("b/big", &payload, QoS::AtLeastOnce, false)
            .await;
    }
    for i in 0..IN_FLIGHT {
        assert_eq!(old.expect_publish().await.payload()[..4], i.to_be_bytes());
    }
    let a = nodes[0].broker().clone();
    let queued = a.session("big").expect("on A").delivery().queued();
    assert_eq!(queued as u32, MESSAGES - IN_FLIGHT, "queued on A");
    let (mut new, present) = persistent(nodes[1].addr, "big", None).await;
    assert!(present, "[MQTT-3.2.2-3] Session Present 1 on the new node");
    let disconnect = old.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    for i in 0..MESSAGES {
        let got = new.expect_publish().await;
        // [MQTT-4.6.0-6]: in order; [MQTT-4.4.0-1]: the unacknowledged ones with DUP.
        assert_eq!(got.payload()[..4], i.to_be_bytes(), "message {i}");
        assert_eq!(got.payload().len(), 1024);
        assert_eq!(got.dup, i < IN_FLIGHT, "DUP of message {i}");
        new.ack(&got).await;
    }
    new.expect_nothing(Duration::from_millis(500)).await;
    let stats = nodes[1].broker().cluster().expect("cluster").stats();
    assert_eq!(stats["handovers"].as_u64(), Some(1), "{stats}");
    assert_eq!(stats["handovers_incomplete"].as_u64(), Some(0), "{stats}");
    let stats = a.cluster().expect("cluster").stats();
    assert_eq!(
        stats["handover_messages_dropped"].as_u64(),
        Some(0),
        "{stats}"
    );
}

/// A plain NATS client of `nats` that says in the owners bucket that node `fake` owns
/// `client_id`, and listens on that node's takeover subject: a stand-in for another node.
/// (A node has created the bucket.)
async fn fake_owner(
    nats: &NatsServer,
    client_id: &str,
) -> (async_nats::Client, async_nats::Subscriber) {
    use base64::Engine as _;
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    let jetstream = async_nats::jetstream::new(client.clone());
    let owners = jetstream
        .get_key_value("tern_owners")
        .await
        .expect("owners bucket");
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client_id);
    owners.put(key, "fake".into()).await.expect("owner written");
    let takeovers = client
        .subscribe("tern.takeover.fake")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    (client, takeovers)
}

/// The old owner's chunks arrive with a gap (chunk 0 of 3, then chunk 2): the new node
/// does not put a half session together; it counts the handover as incomplete and goes on
/// as when the old node does not answer (no state stored: a fresh session, Session
/// Present 0), without waiting out `handover_timeout_ms`.
#[tokio::test]
async fn an_incomplete_chunk_set_falls_back_and_is_counted() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let node = TestBroker::start_with(|c| {
        nats.join(c, "n1");
        c.cluster.handover_timeout_ms = 10_000;
    })
    .await;
    let b = node.broker().clone();
    until("the node joined", || b.cluster().is_some()).await;
    let (fake, mut takeovers) = fake_owner(&nats, "gap").await;
    let answer = tokio::spawn(async move {
        let request = takeovers.next().await.expect("a takeover request");
        assert_eq!(&request.payload[..], b"Mgap", "kind M, then the client id");
        let reply = request.reply.expect("a reply inbox");
        for index in [0u32, 2] {
            let mut chunk = 7u64.to_le_bytes().to_vec();
            chunk.extend_from_slice(&index.to_le_bytes());
            chunk.extend_from_slice(&3u32.to_le_bytes());
            chunk.extend_from_slice(b"\x01");
            fake.publish(reply.clone(), chunk.into())
                .await
                .expect("publish");
        }
        fake.flush().await.expect("flush");
    });
    let started = tokio::time::Instant::now();
    let (_client, present) = persistent(node.addr, "gap", None).await;
    assert!(!present, "nothing stored: a fresh session");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    answer.await.expect("the fake owner answered");
    let stats = node.broker().cluster().expect("cluster").stats();
    assert_eq!(stats["handovers_incomplete"].as_u64(), Some(1), "{stats}");
    assert_eq!(stats["handovers"].as_u64(), Some(0), "{stats}");
}

/// A node of an earlier version asks for the session in one message (`H`): it gets it so,
/// in one handover form, subscriptions and the queued messages that fit.
#[tokio::test]
async fn a_node_asking_in_one_message_gets_the_session_in_one() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(1).await;
    let (mut old, _) = persistent(nodes[0].addr, "one", None).await;
    old.subscribe("o/#", QoS::AtLeastOnce).await;
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    let reply = client
        .request("tern.takeover.n1", bytes::Bytes::from_static(b"Hone"))
        .await
        .expect("an answer");
    assert_eq!(reply.payload[0], 1, "a handover form (version 1)");
    assert!(
        reply.payload.windows(3).any(|w| w == b"o/#"),
        "with the subscription"
    );
    let disconnect = old.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    assert!(
        !nodes[0].broker().has_session("one"),
        "ended on the old node"
    );
}

/// A connected 5.0 client with Session Expiry 0 taken over with Clean Start 0 on another
/// node: its session exists while it is connected, so it continues there (Session
/// Present 1, as on one node) with its subscription, though its expiry is 0.
#[tokio::test]
async fn a_session_with_expiry_0_is_handed_over_while_connected() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let connect = |id: &str| {
        let mut connect = Connect::new(V5, id);
        connect.clean_start = false;
        connect
    };
    let mut old = Client::tcp(nodes[0].addr, V5).await;
    old.connect(connect("zero")).await;
    old.subscribe("z/#", QoS::AtLeastOnce).await;
    let mut new = Client::tcp(nodes[1].addr, V5).await;
    let connack = new.connect(connect("zero")).await;
    assert!(connack.session_present, "[MQTT-3.2.2-3]");
    let disconnect = old.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    let mut publisher = nodes[0].client(V5, "pub").await;
    publisher
        .publish("z/1", b"z", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(new.expect_publish().await.topic(), "z/1");
}

/// An inbound QoS 2 message awaiting PUBREL moves with the session: the PUBREL sent to the
/// new node completes it, and the message is not delivered twice ([MQTT-4.3.3-9]).
#[tokio::test]
async fn inbound_qos2_state_moves_with_the_session() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let mut watcher = nodes[1].client(V5, "watch").await;
    watcher.subscribe("r/#", QoS::AtMostOnce).await;
    let (mut old, _) = persistent(nodes[0].addr, "q2", None).await;
    let mut publish = tern_codec::Publish::new("r/1", b"once".to_vec());
    let id = old.next_packet_id();
    publish.set_qos(tern_codec::PublishQoS::with_id(QoS::ExactlyOnce, id));
    old.send(&tern_codec::Packet::Publish(publish.clone()))
        .await;
    match old.recv().await {
        tern_codec::Packet::PubRec(rec) => assert_eq!(rec.packet_id, id),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    assert_eq!(watcher.expect_publish().await.payload(), b"once");
    let (mut new, present) = persistent(nodes[1].addr, "q2", None).await;
    assert!(present);
    // The client resends the PUBLISH with DUP, as after a lost connection: the new node
    // knows its id is awaiting PUBREL, answers PUBREC and does not route it again.
    publish.dup = true;
    new.send(&tern_codec::Packet::Publish(publish)).await;
    match new.recv().await {
        tern_codec::Packet::PubRec(rec) => assert_eq!(rec.packet_id, id),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    new.send(&tern_codec::Packet::PubRel(tern_codec::PubRel::new(id)))
        .await;
    match new.recv().await {
        tern_codec::Packet::PubComp(comp) => assert_eq!(comp.packet_id, id),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    watcher.expect_nothing(Duration::from_millis(500)).await;
}

/// The real client: `mosquitto_sub -c -i msq -q 1` on A, killed; three QoS 1 messages are
/// queued for it on A; the same command on B gets them (its session came over, Session
/// Present 1: a fresh session would have none).
#[tokio::test]
async fn mosquitto_sub_resumes_on_another_node_with_its_queued_messages() {
    if !tern_tests::require_tool("mosquitto_sub") {
        return;
    }
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let sub = |node: &TestBroker, count: &str| {
        let mut command = tokio::process::Command::new("mosquitto_sub");
        command
            .args(["-h", "127.0.0.1", "-p", &node.addr.port().to_string()])
            .args(["-c", "-i", "msq", "-q", "1", "-t", "m/#", "-F", "%t|%p"])
            .args(["-C", count, "-W", "20"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        command.spawn().expect("mosquitto_sub")
    };
    let mut first = sub(&nodes[0], "100");
    let a = nodes[0].broker().clone();
    until("mosquitto_sub subscribed on A", || a.trie_entries() == 1).await;
    first.kill().await.expect("kill mosquitto_sub");
    until("the session offline on A", || {
        a.session("msq").is_some_and(|s| !s.delivery().is_online())
    })
    .await;
    let mut publisher = nodes[0].client(V5, "pub").await;
    for i in 0..3 {
        let payload = format!("p{i}");
        let topic = format!("m/{i}");
        publisher
            .publish(&topic, payload.as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    let second = sub(&nodes[1], "3");
    let out = tokio::time::timeout(Duration::from_secs(20), second.wait_with_output())
        .await
        .expect("mosquitto_sub on B finished")
        .expect("mosquitto_sub output");
    let lines = String::from_utf8_lossy(&out.stdout);
    let got: Vec<&str> = lines.lines().collect();
    assert_eq!(
        got,
        vec!["m/0|p0", "m/1|p1", "m/2|p2"],
        "queued messages on B"
    );
    assert!(!nodes[0].broker().has_session("msq"), "ended on A");
}

/// SIGKILL of a `tern` node: after `node_lease_ms` one survivor claims its sessions. The
/// wills of its clients go out once (a non-persistent client's at once, a persistent
/// one's after its delay), and a persistent client that reconnects on a survivor gets
/// Session Present 1 and its subscription back, which works across nodes.
#[tokio::test]
async fn sigkill_of_a_node_publishes_its_wills_and_its_sessions_resume_elsewhere() {
    use tern_tests::crash_checker::broker_process::{BrokerConfig, BrokerProcess, Stop};
    let Some(nats) = NatsServer::start() else {
        return;
    };
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tern-cluster-dead-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = BrokerConfig::new(&dir.join("data"), "sync");
    config.extra_toml = format!(
        "\n[cluster]\nenabled = true\nnode_name = \"victim\"\nnats_urls = [\"{}\"]\nnode_lease_ms = 4000\n",
        nats.url()
    );
    let mut victim = BrokerProcess::start(&config);
    let mut nodes = Vec::new();
    for name in ["s1", "s2"] {
        let node = TestBroker::start_with(|c| {
            nats.join(c, name);
            c.cluster.node_lease_ms = 4000;
        })
        .await;
        nodes.push(node);
    }
    let mut watcher = nodes[1].client(V5, "watch").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let _plain = with_will(victim.addr(), "plain", 0, 0).await;
    let _delayed = with_will(victim.addr(), "delayed", 2, 300).await;
    let (mut dev, _) = persistent(victim.addr(), "dev", None).await;
    dev.subscribe("k/#", QoS::AtLeastOnce).await;
    // The sessions bucket is written in the background: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = tokio::time::Instant::now();
    victim.stop(Stop::Kill);
    let mut wills = Vec::new();
    for _ in 0..2 {
        let got = watcher
            .recv_within(Duration::from_secs(20))
            .await
            .expect("a will within 20 s");
        let tern_codec::Packet::Publish(will) = got else {
            panic!("expected PUBLISH, got {got:?}");
        };
        wills.push((will.topic().to_string(), killed_at.elapsed()));
        watcher.ack(&will).await;
    }
    let topics: Vec<&str> = wills.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, vec!["wills/plain", "wills/delayed"]);
    // The lease counts from the last heartbeat (every 2 s), up to 2 s before the kill.
    assert!(
        wills[0].1 >= Duration::from_secs(2),
        "not before the lease: {wills:?}"
    );
    assert!(
        wills[1].1 >= wills[0].1 + Duration::from_millis(1500),
        "[MQTT-3.1.3-9] the delayed will waits for its delay: {wills:?}"
    );
    watcher.expect_nothing(Duration::from_millis(500)).await;
    let claimed: u64 = nodes
        .iter()
        .map(|n| {
            n.broker().cluster().expect("cluster").stats()["dead_nodes_claimed"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(claimed, 1, "exactly one survivor claimed the dead node");
    let (mut moved, present) = persistent(nodes[0].addr, "dev", None).await;
    assert!(
        present,
        "[MQTT-3.2.2-3] the session came back on a survivor"
    );
    let mut publisher = nodes[1].client(V5, "pub").await;
    publisher
        .publish("k/1", b"after", QoS::AtLeastOnce, false)
        .await;
    let got = moved.expect_publish().await;
    assert_eq!(got.payload(), b"after");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A session handed over to a node with persistence is in that node's journal: its two
/// messages, sent but not acknowledged there, come back (DUP) with the session after a
/// SIGKILL and restart of that node ([MQTT-4.4.0-1]).
#[tokio::test]
async fn a_handed_over_session_survives_a_crash_of_its_new_node() {
    use tern_tests::crash_checker::broker_process::{BrokerConfig, BrokerProcess, Stop};
    let Some(nats) = NatsServer::start() else {
        return;
    };
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("tern-cluster-journal-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = BrokerConfig::new(&dir.join("data"), "sync");
    config.extra_toml = format!(
        "\n[cluster]\nenabled = true\nnode_name = \"durable\"\nnats_urls = [\"{}\"]\n",
        nats.url()
    );
    let mut b = BrokerProcess::start(&config);
    let a = TestBroker::start_with(|c| nats.join(c, "plain")).await;
    let (mut old, _) = persistent(a.addr, "dur", None).await;
    old.subscribe("d/#", QoS::AtLeastOnce).await;
    drop(old);
    let broker = a.broker().clone();
    until("the session offline on A", || {
        broker
            .session("dur")
            .is_some_and(|s| !s.delivery().is_online())
    })
    .await;
    let mut publisher = a.client(V5, "pub").await;
    for topic in ["d/1", "d/2"] {
        publisher
            .publish(topic, b"m", QoS::AtLeastOnce, false)
            .await;
    }
    let (mut moved, present) = persistent(b.addr(), "dur", None).await;
    assert!(present, "[MQTT-3.2.2-3]");
    for topic in ["d/1", "d/2"] {
        assert_eq!(moved.expect_publish().await.topic(), topic);
    }
    // The journal's committer writes back to back: give it a moment, then crash.
    moved.ping().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.stop(Stop::Kill);
    b.restart();
    let (mut again, present) = persistent(b.addr(), "dur", None).await;
    assert!(present, "the session came back from the journal");
    for topic in ["d/1", "d/2"] {
        let got = again.expect_publish().await;
        assert_eq!(got.topic(), topic);
        assert!(got.dup, "[MQTT-4.4.0-1] resent with DUP");
        again.ack(&got).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node declared dead comes back (SIGKILL, claimed by a survivor, restarted with its
/// journal): it drops the sessions the survivor took, so their wills go out once (from
/// the survivor), not once more from the node that recovered them.
#[tokio::test]
async fn a_dead_node_that_comes_back_leaves_claimed_wills_to_the_survivor() {
    use tern_tests::crash_checker::broker_process::{BrokerConfig, BrokerProcess, Stop};
    let Some(nats) = NatsServer::start() else {
        return;
    };
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tern-cluster-back-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = BrokerConfig::new(&dir.join("data"), "sync");
    config.extra_toml = format!(
        "\n[cluster]\nenabled = true\nnode_name = \"back\"\nnats_urls = [\"{}\"]\nnode_lease_ms = 4000\n",
        nats.url()
    );
    let mut victim = BrokerProcess::start(&config);
    let survivor = TestBroker::start_with(|c| {
        nats.join(c, "survivor");
        c.cluster.node_lease_ms = 4000;
    })
    .await;
    let mut watcher = survivor.client(V5, "watch").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let _client = with_will(victim.addr(), "w", 6, 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    victim.stop(Stop::Kill);
    let cluster = survivor.broker().cluster().expect("cluster").clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cluster.stats()["dead_sessions_claimed"].as_u64() != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "not claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    victim.restart();
    let got = watcher.recv_within(Duration::from_secs(20)).await;
    let Some(tern_codec::Packet::Publish(will)) = got else {
        panic!("expected the will, got {got:?}");
    };
    assert_eq!(will.topic(), "wills/w");
    watcher.ack(&will).await;
    // The restarted node's copy would go out 6 s after its restart.
    watcher.expect_nothing(Duration::from_secs(8)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The old node is alive but does not answer (a `tern` process stopped with SIGSTOP):
/// after `handover_timeout_ms` the new node goes on with the state stored in the cluster
/// (Session Present 1, the subscriptions work, the last of a burst of 200 included); once the old node runs again it ends its
/// copy and its connection gets DISCONNECT 0x8E.
#[tokio::test]
async fn a_silent_old_node_leaves_the_stored_state_to_the_new_one() {
    use tern_tests::crash_checker::broker_process::{BrokerConfig, BrokerProcess, Stop};
    let Some(nats) = NatsServer::start() else {
        return;
    };
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("tern-cluster-silent-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = BrokerConfig::new(&dir.join("data"), "sync");
    config.extra_toml = format!(
        "\n[cluster]\nenabled = true\nnode_name = \"silent\"\nnats_urls = [\"{}\"]\n",
        nats.url()
    );
    let mut old_node = BrokerProcess::start(&config);
    let node = TestBroker::start_with(|c| {
        nats.join(c, "new");
        c.cluster.handover_timeout_ms = 1000;
    })
    .await;
    let (mut old, _) = persistent(old_node.addr(), "sil", None).await;
    // 200 SUBSCRIBEs sent back to back: the stored state's writes coalesce (the writer
    // takes what queued during its last write), and the state stored last must hold all.
    let filters: Vec<String> = std::iter::once("s/#".to_owned())
        .chain((1..200).map(|i| format!("f/{i}")))
        .collect();
    for filter in &filters {
        let subscribe = tern_codec::Subscribe {
            packet_id: old.next_packet_id(),
            properties: Default::default(),
            filters: vec![(
                filter.as_str().into(),
                SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            )],
        };
        old.send(&tern_codec::Packet::Subscribe(Box::new(subscribe)))
            .await;
    }
    for _ in &filters {
        let acked = old.recv().await;
        assert!(matches!(acked, tern_codec::Packet::SubAck(_)), "{acked:?}");
    }
    // The sessions bucket is written in the background: give it a moment.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pid = old_node.pid().expect("running").to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let started = tokio::time::Instant::now();
    // The new node waits out handover_timeout_ms first: more than RECV_TIMEOUT's share on
    // a loaded machine (a CI run once took over 5 s here), so the CONNACK gets 20 s.
    let mut new = Client::tcp(node.addr, V5).await;
    let mut connect = Connect::new(V5, "sil");
    connect.clean_start = false;
    connect.keep_alive_secs = 0;
    connect.properties.session_expiry_interval_secs = Some(300);
    let connack = new.connect_within(connect, Duration::from_secs(20)).await;
    assert_eq!(connack.code, ReasonCode::SUCCESS, "{connack:?}");
    let present = connack.session_present;
    let waited = started.elapsed();
    eprintln!("CONNACK after {waited:?} (handover_timeout_ms 1000)");
    signal("-CONT");
    assert!(present, "[MQTT-3.2.2-3] the stored session");
    assert!(waited >= Duration::from_millis(900), "waited {waited:?}");
    let mut publisher = node.client(V5, "pub").await;
    publisher
        .publish("s/1", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(new.expect_publish().await.topic(), "s/1");
    publisher
        .publish("f/199", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(
        new.expect_publish().await.topic(),
        "f/199",
        "the last SUBSCRIBE stored"
    );
    let disconnect = old.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(disconnect.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    old_node.stop(Stop::Kill);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the moving subscriber of [`messages_published_during_handovers`] got: per
/// publisher, each message number in arrival order with its DUP flag.
#[derive(Default)]
struct Received {
    by_publisher: [Vec<(u32, bool)>; 2],
    /// QoS 2 packet ids whose PUBREC was sent and PUBREL not yet received (the
    /// session's state on the client side, kept across connections).
    awaiting_pubrel: std::collections::HashSet<u16>,
}

impl Received {
    /// Takes `packet` (acknowledging it on `client`); false at the end of the connection.
    async fn take(&mut self, client: &mut tern_tests::Client, packet: tern_codec::Packet) -> bool {
        use tern_codec::{Packet, PubAck, PubComp, PubRec, PublishQoS};
        match packet {
            Packet::Publish(p) => {
                let publisher = usize::from(p.payload()[0]);
                let number = u32::from_be_bytes(p.payload()[1..5].try_into().expect("4 bytes"));
                match p.publish_qos() {
                    PublishQoS::AtLeastOnce(id) => {
                        self.by_publisher[publisher].push((number, p.dup));
                        client.send(&Packet::PubAck(PubAck::new(id))).await;
                    }
                    PublishQoS::ExactlyOnce(id) => {
                        // [MQTT-4.3.3-10]: until PUBREL, a PUBLISH with this id is the same one.
                        if self.awaiting_pubrel.insert(id.get()) {
                            self.by_publisher[publisher].push((number, p.dup));
                        }
                        client.send(&Packet::PubRec(PubRec::new(id))).await;
                    }
                    PublishQoS::AtMostOnce => panic!("QoS 0 delivery of {number}"),
                }
                true
            }
            Packet::PubRel(rel) => {
                self.awaiting_pubrel.remove(&rel.packet_id.get());
                client
                    .send(&Packet::PubComp(PubComp::new(rel.packet_id)))
                    .await;
                true
            }
            Packet::Disconnect(_) => false,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// How many distinct messages arrived.
    fn distinct(&self) -> usize {
        self.by_publisher
            .iter()
            .map(|got| {
                got.iter()
                    .map(|(n, _)| *n)
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            })
            .sum()
    }

    /// Reads and acknowledges what `client` gets for `period` (or until it is closed).
    async fn read_for(&mut self, client: &mut tern_tests::Client, period: Duration) {
        let until = tokio::time::Instant::now() + period;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match client.recv_within(left).await {
                Some(packet) => {
                    if !self.take(client, packet).await {
                        return;
                    }
                }
                None => return,
            }
        }
    }

    /// Asserts every number `0..count` of each publisher arrived, at QoS 1 repeated only
    /// as a DUP resend and at QoS 2 not at all, and the first deliveries in order.
    fn check(&self, count: u32, qos: QoS) {
        for (publisher, got) in self.by_publisher.iter().enumerate() {
            let distinct: std::collections::BTreeSet<u32> = got.iter().map(|(n, _)| *n).collect();
            let missing: Vec<u32> = (0..count).filter(|n| !distinct.contains(n)).collect();
            assert!(
                missing.is_empty(),
                "publisher {publisher}: {} of {count} lost, first {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
            let mut seen = std::collections::HashSet::new();
            let mut last_fresh: Option<u32> = None;
            for &(n, dup) in got {
                let first = seen.insert(n);
                match qos {
                    // [MQTT-4.3.3-10]/[MQTT-4.3.3-11]: exactly once.
                    QoS::ExactlyOnce => assert!(first, "publisher {publisher}: {n} twice"),
                    // [MQTT-4.4.0-1]: a repeat only as a resend, with DUP.
                    _ => assert!(first || dup, "publisher {publisher}: {n} again without DUP"),
                }
                if !dup {
                    // [MQTT-4.6.0-6]: in order, resends aside.
                    assert!(
                        last_fresh.is_none_or(|last| n > last),
                        "publisher {publisher}: {n} after {last_fresh:?}"
                    );
                    last_fresh = Some(n);
                }
            }
        }
    }
}

/// Publishes `count` numbered messages (`[publisher, n as u32 big-endian]`) on `h/{publisher}`
/// at `qos` through `client`, one every millisecond or so.
async fn publish_numbered(mut client: tern_tests::Client, publisher: u8, count: u32, qos: QoS) {
    let topic = format!("h/{publisher}");
    for n in 0..count {
        let mut payload = vec![publisher];
        payload.extend_from_slice(&n.to_be_bytes());
        client.publish(&topic, &payload, qos, false).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A persistent subscriber moves between nodes A and B ten times while one publisher on a
/// third node C and one on A publish numbered messages at `qos` without pause (the old
/// connection keeps acknowledging what it gets until it is closed, so some messages the
/// new node queued early were delivered on the old one meanwhile): every
/// message arrives, at QoS 1 repeated only as a resend with DUP, at QoS 2 exactly once,
/// and each publisher's messages in order (resends aside).
async fn messages_published_during_handovers(qos: QoS) {
    const COUNT: u32 = 3000;
    const HANDOVERS: usize = 10;
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(3).await;
    let (mut subscriber, _) = persistent(nodes[0].addr, "mover", None).await;
    subscriber.subscribe("h/#", qos).await;
    let publishers = vec![
        tokio::spawn(publish_numbered(
            nodes[2].client(V5, "pc").await,
            0,
            COUNT,
            qos,
        )),
        tokio::spawn(publish_numbered(
            nodes[0].client(V5, "pa").await,
            1,
            COUNT,
            qos,
        )),
    ];
    let mut received = Received::default();
    for handover in 0..HANDOVERS {
        received
            .read_for(&mut subscriber, Duration::from_millis(300))
            .await;
        let node = &nodes[(handover + 1) % 2];
        // The old connection goes on taking and acknowledging messages until it is closed,
        // while the new one connects.
        let (_, (next, present)) = tokio::join!(
            received.read_for(&mut subscriber, Duration::from_secs(10)),
            persistent(node.addr, "mover", None),
        );
        assert!(
            present,
            "[MQTT-3.2.2-3] Session Present 1 (handover {handover})"
        );
        subscriber = next;
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while received.distinct() < 2 * COUNT as usize && tokio::time::Instant::now() < deadline {
        received
            .read_for(&mut subscriber, Duration::from_millis(200))
            .await;
    }
    received
        .read_for(&mut subscriber, Duration::from_millis(500))
        .await;
    received.check(COUNT, qos);
}

#[tokio::test]
async fn no_qos1_message_is_lost_while_a_session_moves_back_and_forth() {
    messages_published_during_handovers(QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn qos2_messages_arrive_exactly_once_while_a_session_moves_back_and_forth() {
    messages_published_during_handovers(QoS::ExactlyOnce).await;
}

/// The old owner answers the preparation (the session's subscriptions) and then has no
/// session to hand over, and nothing is stored: the new node drops the session it made
/// ahead, and the CONNECT gets a fresh one (Session Present 0, no subscriptions). The
/// handover is asked for with message identities (`N`), since the old node knows the
/// preparation.
#[tokio::test]
async fn a_prepared_session_without_a_handover_is_dropped() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    // A session with a subscription on n2, only to have its form (expiry 0: not stored).
    let mut elsewhere = nodes[1].client(V5, "prep").await;
    elsewhere.subscribe("p/#", QoS::AtLeastOnce).await;
    let session = nodes[1].broker().session("prep").expect("on n2");
    let form = nodes[1].broker().stored_session_form(&session);
    let (fake, mut takeovers) = fake_owner(&nats, "prep").await;
    let mut prepares = fake
        .subscribe("tern.prepare.fake")
        .await
        .expect("subscribe");
    fake.flush().await.expect("flush");
    let answer = tokio::spawn(async move {
        let request = prepares.next().await.expect("a prepare request");
        assert_eq!(&request.payload[..], b"prep");
        let reply = request.reply.expect("a reply inbox");
        fake.publish(reply, form.into()).await.expect("publish");
        let request = takeovers.next().await.expect("a takeover request");
        assert_eq!(&request.payload[..], b"Nprep", "kind N, then the client id");
        let reply = request.reply.expect("a reply inbox");
        fake.publish(reply, bytes::Bytes::new())
            .await
            .expect("publish");
        fake.flush().await.expect("flush");
    });
    let (_client, present) = persistent(nodes[0].addr, "prep", None).await;
    answer.await.expect("the fake owner answered");
    assert!(
        !present,
        "nothing handed over, nothing stored: a fresh session"
    );
    let session = nodes[0].broker().session("prep").expect("on n1");
    assert!(
        session.subscription_snapshot().is_empty(),
        "the prepared session's subscription did not stay"
    );
}
