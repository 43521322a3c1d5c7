//! Several Tern nodes as one broker over NATS (issue #12): a real nats-server with
//! JetStream on 127.0.0.1 and in-process nodes joined to it. Skipped (with the reason
//! printed) when nats-server is not installed; under `CI=true` it must be.

use std::time::Duration;

use tern_codec::{ProtocolVersion, QoS, SubscriptionOptions};
use tern_tests::cluster_support::NatsServer;
use tern_tests::{Client, TestBroker};

mod bridge_support;

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

/// On a single NATS server the SUBACK costs one local round trip, nothing more: quick for
/// one filter and for a SUBSCRIBE of 100 (their round trips are shared). Prints the
/// latencies.
#[tokio::test]
async fn suback_latency_on_one_nats_server() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let mut sub = client(&nodes[0], V5, "sub").await;
    let (one, hundred) = tern_tests::cluster_support::suback_latencies_ms(&mut sub, "lat").await;
    println!("one NATS server: SUBACK {one:.2} ms (100 filters {hundred:.2} ms)");
    assert!(one < 500.0, "one filter took {one} ms");
    assert!(hundred < 2000.0, "100 filters took {hundred} ms");
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
    // A node that joins later has read the bucket before it takes clients: the first
    // SUBSCRIBE gets the message.
    let late = TestBroker::start_with(|c| nats.join(c, "late")).await;
    let mut first = client(&late, V5, "first").await;
    first.subscribe("r/#", QoS::AtLeastOnce).await;
    assert_eq!(first.expect_publish().await.payload(), b"kept");
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

/// Runs `mosquitto_sub` on `node` for `filters` until it has `count` messages (`%t|%p`
/// lines); returns once its subscriptions are in force cluster-wide.
async fn mosquitto_sub(
    node: &TestBroker,
    version: &str,
    filters: &[&str],
    count: usize,
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new("mosquitto_sub");
    command
        .args(["-h", "127.0.0.1", "-p", &node.addr.port().to_string()])
        .args(["-V", version, "-q", "2", "-F", "%t|%p", "-W", "20"])
        .args(["-C", &count.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    for filter in filters {
        command.args(["-t", filter]);
    }
    let child = command.spawn().expect("mosquitto_sub");
    let broker = node.broker();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.trie_entries() < filters.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto_sub did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for filter in filters {
        if let Some(ready) = broker.interest_ready(filter) {
            ready.await;
        }
    }
    child
}

/// mosquitto_pub on A, mosquitto_sub on B, both protocol versions, every QoS: topics with
/// the subject's special characters, spaces, empty levels and non-ASCII arrive intact, once
/// per client even where two of its filters match.
#[tokio::test]
async fn mosquitto_clients_across_nodes_with_awkward_topics() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    if !tern_tests::require_tool("mosquitto_sub") {
        return;
    }
    let nodes = nats.nodes(2).await;
    let topics = [
        "a.b/c",
        "a*b/>",
        "sp ace/x",
        "empty//level",
        "ünï/cödé",
        "/lead",
        "trail/",
        "~e/x",
    ];
    for (version, qos) in [("mqttv311", "1"), ("mqttv5", "2"), ("mqttv5", "0")] {
        let sub = mosquitto_sub(&nodes[1], version, &["#", "+/x"], topics.len()).await;
        for (i, topic) in topics.iter().enumerate() {
            let status = tokio::process::Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &nodes[0].addr.port().to_string()])
                .args([
                    "-V",
                    version,
                    "-q",
                    qos,
                    "-t",
                    topic,
                    "-m",
                    &format!("m{i}"),
                ])
                .status()
                .await
                .expect("mosquitto_pub");
            assert!(status.success());
        }
        let out = sub.wait_with_output().await.expect("mosquitto_sub output");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        let mut expected: Vec<String> = topics
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{t}|m{i}"))
            .collect();
        expected.sort_unstable();
        assert_eq!(lines, expected, "{version} QoS {qos}");
        // Once per client: nothing more came for the topic both filters match.
        assert!(out.status.success(), "{version}: mosquitto_sub timed out");
        while nodes[1].broker().trie_entries() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Waits until `filter`'s interest is in force cluster-wide on `node` (for subscribers that
/// get no SUBACK: the SSE and WebSocket bridges).
async fn interest_in_force(node: &TestBroker, filter: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if node.broker().trie_entries() > 0 {
            match node.broker().interest_ready(filter) {
                Some(ready) => return ready.await,
                None => return,
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no interest in {filter}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SSE and `/ws` clients on B receive messages published on A.
#[tokio::test]
async fn sse_and_websocket_clients_receive_from_other_nodes() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let http = nodes[1].running.http_addr.expect("http");
    let mut sse = bridge_support::SseClient::open(http, "/sse?filter=web/%23", &[]).await;
    assert_eq!(sse.status, 200);
    sse.next().await.expect("opening comment");
    let mut ws = bridge_support::WsClient::connect(http, "/ws", &[]).await;
    let ack = ws
        .request(serde_json::json!({"op": "subscribe", "filters": ["web/+"], "id": 1}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    interest_in_force(&nodes[1], "web/#").await;
    interest_in_force(&nodes[1], "web/+").await;
    let mut publisher = client(&nodes[0], V5, "pub").await;
    publisher
        .publish("web/a", b"hello", QoS::AtLeastOnce, false)
        .await;
    let event = sse.next_event().await;
    assert_eq!(event.json()["topic"], "web/a", "{event:?}");
    let message = ws.recv().await;
    assert_eq!(message["topic"], "web/a", "{message}");
    assert_eq!(message["payload"], "hello");
}

/// NATS stops: each node goes on serving its own clients (a QoS 1 message is delivered
/// locally at once, its PUBACK waits for NATS); NATS comes back: cross-node traffic
/// resumes by itself (the clients resubscribe).
#[tokio::test]
async fn nats_restart_local_traffic_goes_on_and_cross_node_resumes() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let mut local = client(&nodes[0], V5, "local").await;
    local.subscribe("n/#", QoS::AtLeastOnce).await;
    let mut remote = client(&nodes[1], V5, "remote").await;
    remote.subscribe("n/#", QoS::AtLeastOnce).await;
    let mut publisher = client(&nodes[0], V5, "pub").await;
    nats.stop();
    // Delivered here at once; its PUBACK waits for NATS (cluster_acks.rs).
    let id = publisher.next_packet_id();
    let publish = tern_codec::Publish::new("n/1", b"while down".to_vec())
        .with_qos(tern_codec::PublishQoS::with_id(QoS::AtLeastOnce, id));
    publisher.send(&tern_codec::Packet::Publish(publish)).await;
    let got = local.expect_publish().await;
    assert_eq!(got.payload(), b"while down");
    local.ack(&got).await;
    nats.restart();
    match publisher.recv_within(Duration::from_secs(20)).await {
        Some(tern_codec::Packet::PubAck(ack)) => assert_eq!(ack.packet_id, id),
        other => panic!("expected the PUBACK once NATS is back, got {other:?}"),
    }
    // Publish until the other node gets one (the clients reconnect with backoff).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut resumed = false;
    while tokio::time::Instant::now() < deadline && !resumed {
        publisher
            .publish("n/2", b"after", QoS::AtMostOnce, false)
            .await;
        if let Some(tern_codec::Packet::Publish(p)) =
            remote.recv_within(Duration::from_millis(200)).await
        {
            resumed = p.payload() == b"after";
        }
    }
    assert!(
        resumed,
        "cross-node traffic did not resume after NATS restarted"
    );
}

/// A shared group with members on three nodes gets each message exactly once (NATS queue
/// groups pick the node, the node picks the member), a plain subscriber gets them all.
#[tokio::test]
async fn shared_group_over_three_nodes_gets_each_message_once() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(3).await;
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut member = client(node, V5, &format!("member{i}")).await;
        member.subscribe("$share/g/s/#", QoS::AtLeastOnce).await;
        members.push(member);
    }
    let mut plain = client(&nodes[1], V5, "plain").await;
    plain.subscribe("s/#", QoS::AtMostOnce).await;
    let mut publisher = client(&nodes[0], V5, "pub").await;
    const N: usize = 300;
    for i in 0..N {
        let topic = format!("s/{i}");
        publisher
            .publish(&topic, b"x", QoS::AtLeastOnce, false)
            .await;
    }
    for _ in 0..N {
        plain.expect_publish().await;
    }
    let mut seen = std::collections::HashMap::new();
    let mut per_member = Vec::new();
    for member in &mut members {
        let mut got = 0;
        while let Some(tern_codec::Packet::Publish(p)) =
            member.recv_within(Duration::from_millis(300)).await
        {
            member.ack(&p).await;
            *seen.entry(p.topic().to_string()).or_insert(0) += 1;
            got += 1;
        }
        per_member.push(got);
    }
    assert_eq!(
        seen.len(),
        N,
        "every message reached the group ({per_member:?})"
    );
    assert!(
        seen.values().all(|&n| n == 1),
        "exactly once ({per_member:?})"
    );
    assert!(
        per_member.iter().all(|&n| n > 0),
        "spread over the nodes: {per_member:?}"
    );
}

/// `/api/stats` shows this node's part and the members it sees; `/metrics` the counters.
#[tokio::test]
async fn stats_and_metrics_show_the_cluster() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(3).await;
    let mut sub = client(&nodes[1], V5, "sub").await;
    sub.subscribe("m/#", QoS::AtMostOnce).await;
    let mut publisher = client(&nodes[0], V5, "pub").await;
    publisher.publish("m/1", b"x", QoS::AtMostOnce, false).await;
    sub.expect_publish().await;
    let http = nodes[1].running.http_addr.expect("http");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = bridge_support::get(http, "/api/stats", &[]).await;
        assert_eq!(status, 200);
        let stats: serde_json::Value = serde_json::from_str(&body).expect("json");
        let cluster = &stats["cluster"];
        assert_eq!(cluster["node_name"], "n2", "{stats}");
        assert_eq!(cluster["messages_in"], 1, "{stats}");
        let alive = cluster["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["alive"] == true).count());
        if alive == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "members: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, _, metrics) = bridge_support::get(http, "/metrics", &[]).await;
    assert!(
        metrics.contains("tern_cluster_messages_in_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tern_cluster_connected 1"), "{metrics}");
}

/// A CONNECT on B for a client connected to A takes the client id over: A's connection gets
/// DISCONNECT 0x8E, B's session starts afresh (state handover is not done yet).
#[tokio::test]
async fn connect_on_another_node_takes_the_client_over() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let mut first = client(&nodes[0], V5, "dev").await;
    first.subscribe("t/#", QoS::AtLeastOnce).await;
    let mut second = client(&nodes[1], V5, "dev").await;
    let disconnect = first.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(
        disconnect.reason_code,
        tern_codec::ReasonCode::SESSION_TAKEN_OVER
    );
    assert!(
        !nodes[0].broker().has_session("dev"),
        "the session ended on A"
    );
    second.ping().await;
    // And back: the newest CONNECT always wins.
    let mut third = client(&nodes[0], V5, "dev").await;
    let disconnect = second.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(
        disconnect.reason_code,
        tern_codec::ReasonCode::SESSION_TAKEN_OVER
    );
    third.ping().await;
}

/// 100 CONNECTs with one client id spread over three nodes at once: afterwards the id has one
/// owner, and one connection of it is left.
#[tokio::test]
async fn concurrent_connects_across_nodes_leave_one_owner() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(3).await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let addr = addrs[i % 3];
        tasks.spawn(async move {
            let mut c = Client::tcp(addr, V5).await;
            let connack = c.connect(tern_codec::Connect::new(V5, "same")).await;
            assert_eq!(connack.code.0, 0);
            c
        });
    }
    let mut clients = Vec::new();
    while let Some(c) = tasks.join_next().await {
        clients.push(c.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut open = 0;
    for c in &mut clients {
        // A taken-over connection got DISCONNECT and was closed; the live one answers.
        if let Some(tern_codec::Packet::PingResp) = {
            c.send(&tern_codec::Packet::PingReq).await;
            c.recv_within(Duration::from_millis(200)).await
        } {
            open += 1;
        }
    }
    let holders = nodes
        .iter()
        .filter(|n| n.broker().has_session("same"))
        .count();
    assert_eq!(
        (open, holders),
        (1, 1),
        "live connections, nodes holding the session"
    );
}

/// A node cut off from NATS longer than `partition_lease_ms` moves its clients off
/// (DISCONNECT 0x9C, new CONNECTs refused) and takes them again once NATS is back.
#[tokio::test]
async fn a_node_cut_off_from_nats_moves_its_clients_off() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let node = TestBroker::start_with(|c| {
        nats.join(c, "solo");
        c.cluster.partition_lease_ms = 500;
    })
    .await;
    let mut c = client(&node, V5, "c").await;
    nats.stop();
    let disconnect = tokio::time::timeout(Duration::from_secs(5), c.expect_disconnect())
        .await
        .expect("disconnected within the lease")
        .expect("DISCONNECT");
    assert_eq!(
        disconnect.reason_code,
        tern_codec::ReasonCode::USE_ANOTHER_SERVER
    );
    let mut refused = Client::tcp(node.addr, V5).await;
    let connack = refused.connect(tern_codec::Connect::new(V5, "r")).await;
    assert_eq!(connack.code, tern_codec::ReasonCode::USE_ANOTHER_SERVER);
    nats.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut again = Client::tcp(node.addr, V5).await;
        let connack = again.connect(tern_codec::Connect::new(V5, "again")).await;
        if connack.code.0 == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGKILL one node (a `tern` process): the others carry on routing between themselves, and
/// a client of the killed node connects to another one.
#[tokio::test]
async fn sigkill_of_one_node_leaves_the_others_working() {
    use tern_tests::crash_checker::broker_process::{BrokerConfig, BrokerProcess, Stop};
    let Some(nats) = NatsServer::start() else {
        return;
    };
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tern-cluster-kill-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = BrokerConfig::new(&dir.join("data"), "sync");
    config.extra_toml = format!(
        "\n[cluster]\nenabled = true\nnode_name = \"victim\"\nnats_urls = [\"{}\"]\n",
        nats.url()
    );
    let mut victim = BrokerProcess::start(&config);
    let nodes = nats.nodes(2).await;
    let (mut on_victim, _) = victim.persistent("dev").await;
    on_victim.subscribe("k/#", QoS::AtLeastOnce).await;
    let mut sub = client(&nodes[1], V5, "sub").await;
    sub.subscribe("k/#", QoS::AtLeastOnce).await;
    victim.stop(Stop::Kill);
    let mut publisher = client(&nodes[0], V5, "pub").await;
    publisher
        .publish("k/1", b"after the kill", QoS::AtLeastOnce, false)
        .await;
    let got = sub.expect_publish().await;
    assert_eq!(got.payload(), b"after the kill");
    sub.ack(&got).await;
    // The killed node's client moves to a surviving node (its session follows it:
    // cluster_sessions.rs).
    let mut moved = client(&nodes[1], V5, "dev").await;
    moved.ping().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A publisher faster than the way to NATS is held back (no cross-node copy dropped): 3000
/// pipelined QoS 1 messages through a queue of 64 all reach the other node.
#[tokio::test]
async fn a_fast_publisher_is_held_back_not_dropped() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let a = TestBroker::start_with(|c| {
        nats.join(c, "a");
        c.cluster.forward_queue_messages = 64;
    })
    .await;
    let b = TestBroker::start_with(|c| nats.join(c, "b")).await;
    let mut sub = client(&b, V5, "sub").await;
    sub.subscribe("bp/#", QoS::AtLeastOnce).await;
    let mut publisher = client(&a, V5, "pub").await;
    const N: usize = 3000;
    let mut wire = Vec::new();
    for i in 0..N {
        let id = publisher.next_packet_id();
        let publish = tern_codec::Publish::new("bp/x", format!("{i}").into_bytes())
            .with_qos(tern_codec::PublishQoS::AtLeastOnce(id));
        tern_codec::Packet::Publish(publish).encode(V5, &mut wire);
    }
    publisher.send_bytes(&wire).await;
    let mut acked = 0;
    let mut got = 0;
    while got < N {
        let p = sub.expect_publish().await;
        assert_eq!(
            p.payload(),
            format!("{got}").as_bytes(),
            "in order, none missing"
        );
        sub.ack(&p).await;
        got += 1;
        while acked < N {
            match publisher.recv_within(Duration::from_millis(0)).await {
                Some(tern_codec::Packet::PubAck(_)) => acked += 1,
                _ => break,
            }
        }
    }
    let stats = a.broker().cluster().expect("cluster").stats();
    assert_eq!(stats["forward_dropped"], 0, "{stats}");
    assert!(
        stats["publisher_waits"].as_u64() > Some(0),
        "never held back: {stats}"
    );
}

/// A pipelined burst of one publisher over two topics crosses in batches (consecutive
/// messages of one topic in one NATS message): a subscriber of `bt/#` on the other node
/// gets all of them in publishing order; a client whose two filters both match gets each
/// once ([MQTT-3.3.4-2]: overlapping subscriptions, one delivery); fewer NATS messages
/// than MQTT messages went out.
#[tokio::test]
async fn a_burst_crosses_in_batches_in_order_once() {
    burst_crosses_in_batches(QoS::AtLeastOnce).await;
}

/// The same with QoS 0: the receiving node routes each batch's messages as runs
/// (`router/batch.rs`), and every subscriber still gets each message once, in order.
#[tokio::test]
async fn a_qos0_burst_crosses_in_batches_in_order_once() {
    burst_crosses_in_batches(QoS::AtMostOnce).await;
}

async fn burst_crosses_in_batches(qos: QoS) {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nodes = nats.nodes(2).await;
    let mut ordered = client(&nodes[1], V5, "ordered").await;
    ordered.subscribe("bt/#", QoS::AtLeastOnce).await;
    let mut overlapping = client(&nodes[1], V5, "overlapping").await;
    let opts = SubscriptionOptions::with_qos(QoS::AtMostOnce);
    overlapping
        .subscribe_with(vec![("bt/#", opts), ("bt/+", opts)], None)
        .await;
    let mut publisher = client(&nodes[0], V5, "pub").await;
    const N: usize = 2000;
    let topic = |i: usize| if i.is_multiple_of(7) { "bt/b" } else { "bt/a" };
    let mut wire = Vec::new();
    for i in 0..N {
        let id = publisher.next_packet_id();
        let publish = tern_codec::Publish::new(topic(i), format!("{i}").into_bytes())
            .with_qos(tern_codec::PublishQoS::with_id(qos, id));
        tern_codec::Packet::Publish(publish).encode(V5, &mut wire);
    }
    publisher.send_bytes(&wire).await;
    for _ in 0..N * usize::from(qos != QoS::AtMostOnce) {
        match publisher.recv().await {
            tern_codec::Packet::PubAck(_) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    for i in 0..N {
        let p = ordered.expect_publish().await;
        assert_eq!(p.topic(), topic(i));
        assert_eq!(
            p.payload(),
            format!("{i}").as_bytes(),
            "in order, none missing"
        );
        ordered.ack(&p).await;
    }
    let mut seen = vec![false; N];
    for _ in 0..N {
        let p = overlapping.expect_publish().await;
        let i: usize = std::str::from_utf8(p.payload())
            .expect("utf8")
            .parse()
            .expect("number");
        assert!(!seen[i], "message {i} twice");
        seen[i] = true;
    }
    overlapping.expect_nothing(Duration::from_millis(200)).await;
    let stats = nodes[0].broker().cluster().expect("cluster").stats();
    let (messages, nats_messages) = (&stats["messages_out"], &stats["nats_messages_out"]);
    assert_eq!(messages.as_u64(), Some(N as u64), "{stats}");
    assert!(
        nats_messages.as_u64() < messages.as_u64(),
        "no batch: {stats}"
    );
}
