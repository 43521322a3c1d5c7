//! Tern nodes over three clustered nats-servers (issue #12): a NATS cluster with JetStream
//! (three servers, routes on 127.0.0.1, KV buckets with three replicas) and three in-process
//! Tern nodes, each connected to a different server with all three in `nats_urls`.
//! Cross-node publish/subscribe, retained messages, a takeover, and the SIGKILL of one
//! nats-server: its node moves to another server and cross-node traffic resumes. Then
//! SUBACKs with nodes on different servers: a message published on one right after a SUBACK
//! on the other always arrives (under bulk traffic on the route between the servers), what
//! a SUBACK costs, and members that do not confirm. Skipped (with the reason printed) when
//! nats-server is not installed; under `CI=true` it must be.

use std::time::Duration;

use tern_codec::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use tern_tests::cluster_support::NatsServer;
use tern_tests::{Client, TestBroker};

mod bridge_support;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Node `i` (n1, n2, n3) on server `i`, the other servers after it in `nats_urls`.
async fn node(servers: &[NatsServer], i: usize) -> TestBroker {
    let mut urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    urls.rotate_left(i);
    let node = TestBroker::start_with(|c| {
        servers[i].join(c, &format!("n{}", i + 1));
        c.cluster.nats_urls = urls;
        c.cluster.kv_replicas = 3;
        c.cluster.connect_timeout_ms = 10_000;
        // A NATS server's loss stalls the buckets (three replicas) while their streams
        // elect new leaders (NATS's Raft election timeout is 4 to 9 s): heartbeats must
        // not be declared dead meanwhile.
        c.cluster.node_lease_ms = 30_000;
    })
    .await;
    // It has joined once its cluster engine is attached (the buckets with three replicas
    // can take seconds to create while the NATS cluster places them).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while node.broker().cluster().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "n{} never joined",
            i + 1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node
}

/// A 5.0 persistent session (Clean Start 0, expiry 300 s); returns it and Session Present.
async fn persistent(node: &TestBroker, client_id: &str) -> (Client, bool) {
    let mut client = Client::tcp(node.addr, V5).await;
    let mut connect = Connect::new(V5, client_id);
    connect.clean_start = false;
    connect.keep_alive_secs = 0;
    connect.properties.session_expiry_interval_secs = Some(300);
    let connack = client
        .connect_within(connect, Duration::from_secs(20))
        .await;
    assert_eq!(connack.code, ReasonCode::SUCCESS, "{connack:?}");
    (client, connack.session_present)
}

/// Publishes on `from` (QoS 0, a fresh payload each round) until `sub` receives one on
/// `topic` (at most `within`): cross-node traffic flows from `from` to `sub`'s node.
/// Messages of earlier rounds and other topics are acknowledged and passed over.
async fn until_delivered(from: &mut Client, sub: &mut Client, topic: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    for round in 0u32.. {
        let payload = format!("round {round}");
        from.publish(topic, payload.as_bytes(), QoS::AtMostOnce, false)
            .await;
        let mut arrived = false;
        while let Some(Packet::Publish(got)) = sub.recv_within(Duration::from_millis(200)).await {
            sub.ack(&got).await;
            arrived |= got.topic() == topic;
        }
        if arrived {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cross-node delivery on {topic} within {within:?}"
        );
    }
}

/// Waits until `sub` (subscribed again each round) gets retained message `payload` on
/// `filter` from its node's store (at most 10 s).
async fn until_retained(node: &TestBroker, client_id: &str, filter: &str, payload: &[u8]) {
    let mut sub = node.client(V5, client_id).await;
    for _ in 0..50 {
        sub.subscribe(filter, QoS::AtLeastOnce).await;
        if let Some(Packet::Publish(p)) = sub.recv_within(Duration::from_millis(200)).await {
            if p.payload() == payload {
                assert!(p.retain, "[MQTT-3.3.1-8] RETAIN 1 on a retained message");
                sub.disconnect().await;
                return;
            }
        }
        sub.unsubscribe(&[filter]).await;
    }
    panic!("retained message on {filter} not seen on this node");
}

/// A node's `tern_cluster_disconnects_total` (from `/metrics`).
async fn nats_disconnects(node: &TestBroker) -> u64 {
    let http = node.running.http_addr.expect("http");
    let (_, _, metrics) = bridge_support::get(http, "/metrics", &[]).await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tern_cluster_disconnects_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("tern_cluster_disconnects_total")
}

/// The whole story on one NATS cluster: pub/sub across the three nodes, retained seen on
/// all, a takeover with the session handed over, then SIGKILL of n1's nats-server: n1
/// reconnects to another server, its clients stay, and traffic between n1 and the other
/// nodes resumes both ways; the KV buckets (three replicas) still take claims and retained
/// messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_three_clustered_nats_servers() {
    let Some(mut servers) = NatsServer::start_cluster(3) else {
        return;
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(node(&servers, i).await);
    }
    // Cross-node publish/subscribe: each node's subscriber gets what the others publish.
    let mut subs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut sub = n.client(V5, &format!("sub{i}")).await;
        sub.subscribe("x/#", QoS::AtLeastOnce).await;
        subs.push(sub);
    }
    let mut pubs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        pubs.push(n.client(V5, &format!("pub{i}")).await);
    }
    for (from, publisher) in pubs.iter_mut().enumerate() {
        let topic = format!("x/from/{from}");
        publisher
            .publish(&topic, b"hello", QoS::AtLeastOnce, false)
            .await;
        for sub in &mut subs {
            let got = sub.expect_publish().await;
            assert_eq!(
                (got.topic(), got.payload()),
                (topic.as_str(), &b"hello"[..])
            );
            sub.ack(&got).await;
        }
    }
    // Retained on n1 is seen on n2 and n3.
    pubs[0]
        .publish("r/1", b"kept", QoS::AtLeastOnce, true)
        .await;
    for n in &nodes[1..] {
        until_retained(n, "reader", "r/#", b"kept").await;
    }
    take_over(&nodes, &mut pubs).await;
    // SIGKILL n1's server (the first of its nats_urls).
    let before = nats_disconnects(&nodes[0]).await;
    servers[0].stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while nats_disconnects(&nodes[0]).await == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "n1 never noticed its server gone: it was not attached to it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // n1's clients stay connected; traffic resumes both ways through the other servers.
    let (first, rest) = pubs.split_at_mut(1);
    until_delivered(
        &mut first[0],
        &mut subs[1],
        "x/after/1",
        Duration::from_secs(20),
    )
    .await;
    until_delivered(
        &mut first[0],
        &mut subs[2],
        "x/after/1b",
        Duration::from_secs(20),
    )
    .await;
    until_delivered(
        &mut rest[0],
        &mut subs[0],
        "x/after/2",
        Duration::from_secs(20),
    )
    .await;
    // A QoS 1 message from n1 is acknowledged (NATS has it: a round trip through the
    // surviving servers) and delivered on n2.
    let id = first[0].next_packet_id();
    let publish = tern_codec::Publish::new("x/after/q1", b"q1".to_vec())
        .with_qos(tern_codec::PublishQoS::with_id(QoS::AtLeastOnce, id));
    first[0].send(&Packet::Publish(publish)).await;
    match first[0].recv_within(Duration::from_secs(20)).await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, id),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // (Earlier rounds' messages of other topics may come first.)
    loop {
        let got = subs[1].expect_publish().await;
        subs[1].ack(&got).await;
        if got.topic() == "x/after/q1" {
            assert_eq!(got.payload(), b"q1");
            break;
        }
    }
    // The buckets survive the loss of one server (once their streams have new leaders:
    // a write in between fails and is logged): a retained message set on n1 reaches n3,
    // and a client id moves from n2 to n1 (a compare-and-swap in the owners bucket).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut reader = nodes[2].client(V5, "reader2").await;
    loop {
        first[0]
            .publish("r/2", b"after", QoS::AtLeastOnce, true)
            .await;
        // The live copy of the publish just made may come too, even before the SUBACK
        // (which waits for the other servers): only a RETAIN 1 copy ([MQTT-3.3.1-8]) shows the
        // retained set.
        let early = subscribe_collecting(&mut reader, "r/2").await;
        if let Some(p) = retained_within(&mut reader, early, Duration::from_millis(500)).await {
            assert_eq!(p.payload(), b"after");
            break;
        }
        reader.unsubscribe(&["r/2"]).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "retained r/2 never on n3"
        );
    }
    loop {
        let mut on_n2 = nodes[1].client(V5, "late").await;
        let _on_n1 = nodes[0].client(V5, "late").await;
        if let Some(Packet::Disconnect(d)) = on_n2.recv_within(Duration::from_secs(3)).await {
            assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no takeover n2 -> n1"
        );
    }
}

/// A persistent session on n1 with a subscription moves to n3: the old connection gets
/// 0x8E, the new one Session Present 1, and its subscription works for what n2 publishes.
async fn take_over(nodes: &[TestBroker], pubs: &mut [Client]) {
    let (mut old, _) = persistent(&nodes[0], "mover").await;
    old.subscribe("m/#", QoS::AtLeastOnce).await;
    let (mut new, present) = persistent(&nodes[2], "mover").await;
    assert!(present, "[MQTT-3.2.2-3] Session Present 1 on the new node");
    let disconnect = old.expect_disconnect().await.expect("DISCONNECT");
    // [MQTT-3.1.4-3]: the existing connection is closed with 0x8E.
    assert_eq!(disconnect.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    pubs[1]
        .publish("m/1", b"moved", QoS::AtLeastOnce, false)
        .await;
    let got = new.expect_publish().await;
    assert_eq!(got.payload(), b"moved");
    new.ack(&got).await;
}

/// Node `name` on server `i` alone: only that server in `nats_urls`, so that two such nodes
/// really sit on different servers of the NATS cluster.
async fn node_on(servers: &[NatsServer], i: usize, name: &str) -> TestBroker {
    let node = TestBroker::start_with(|c| {
        servers[i].join(c, name);
        c.cluster.kv_replicas = 3;
        c.cluster.connect_timeout_ms = 10_000;
        c.cluster.node_lease_ms = 30_000;
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while node.broker().cluster().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never joined"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node
}

/// Waits until `node` lists `other` as a live member (its heartbeat arrived).
async fn until_alive(node: &TestBroker, other: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = node.broker().cluster().expect("cluster").stats();
        let alive = stats["nodes"].as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .any(|n| n["node_name"] == other && n["alive"] == true)
        });
        if alive {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{other} never seen alive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cluster counter of `node` (`tern_cluster_{name}` in `/metrics`).
fn counter(node: &TestBroker, name: &str) -> u64 {
    let counters = node.broker().cluster().expect("cluster").counters();
    counters
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, v)| *v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// A SUBACK means subscribed on every NATS server: n1 on server 1, n2 on server 2 (each
/// knowing only its own server). 200 times a client on n2 subscribes to a fresh topic and,
/// the moment its SUBACK arrives, a client on n1 publishes one QoS 1 message to it: every
/// one arrives ([MQTT-3.8.4-1] the SUBACK answers the SUBSCRIBE; Tern sends it only once
/// the subscription is in force cluster-wide).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suback_means_subscribed_on_every_nats_server() {
    let Some(servers) = NatsServer::start_cluster(3) else {
        return;
    };
    let a = node_on(&servers, 0, "n1").await;
    let b = node_on(&servers, 1, "n2").await;
    until_alive(&b, "n1").await;
    until_alive(&a, "n2").await;
    let mut publisher = a.client(V5, "pub").await;
    let mut sub = b.client(V5, "sub").await;
    // Bulk traffic from server 2 to server 1 (the route that carries n2's interest to
    // server 1) makes the race tight: interest queued behind it reaches server 1 late.
    let flood = Flood::start(&servers[1], &servers[0]);
    let mut missed = Vec::new();
    for i in 0..200 {
        let topic = format!("race/{i}");
        sub.subscribe(&topic, QoS::AtLeastOnce).await;
        publisher
            .publish(&topic, b"x", QoS::AtLeastOnce, false)
            .await;
        match sub.recv_within(Duration::from_secs(2)).await {
            Some(Packet::Publish(got)) => {
                assert_eq!(got.topic(), topic, "round {i}");
                sub.ack(&got).await;
            }
            None => missed.push(i),
            Some(other) => panic!("round {i}: expected PUBLISH, got {other:?}"),
        }
        sub.unsubscribe(&[&topic]).await;
    }
    let flooded_bytes = flood.stop();
    assert!(
        missed.is_empty(),
        "missed {} of 200: {missed:?}",
        missed.len()
    );
    assert!(flooded_bytes > 0, "the flood carried nothing");
    assert_eq!(counter(&b, "interest_unconfirmed"), 0);
}

/// Bulk NATS traffic through the route between two servers: a raw publisher on `from`
/// sends 32 KiB messages as fast as it can to a raw subscriber on `to` that discards them.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Flood {
    fn start(from: &NatsServer, to: &NatsServer) -> Flood {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connect = |server: &NatsServer| {
            let addr = server.url().trim_start_matches("nats://").to_string();
            std::net::TcpStream::connect(addr).expect("connect to nats-server")
        };
        let mut reader = connect(to);
        reader
            .write_all(b"CONNECT {\"verbose\":false}\r\nSUB flood 1\r\n")
            .expect("subscribe");
        reader
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        // Server 1's interest reaches server 2 before the flood starts.
        std::thread::sleep(Duration::from_millis(500));
        let mut writer = connect(from);
        writer
            .write_all(b"CONNECT {\"verbose\":false}\r\n")
            .expect("connect");
        let reading = stop.clone();
        let read = std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            while !reading.load(Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => {}
                }
            }
            total
        });
        let writing = stop.clone();
        let write = std::thread::spawn(move || {
            let mut message = b"PUB flood 32768\r\n".to_vec();
            message.extend(std::iter::repeat_n(b'x', 32768));
            message.extend(b"\r\n");
            while !writing.load(Ordering::Relaxed) {
                if writer.write_all(&message).is_err() {
                    break;
                }
            }
            0
        });
        Flood {
            stop,
            threads: vec![read, write],
        }
    }

    /// Stops the flood; returns how many bytes the subscriber received.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap_or(0))
            .sum()
    }
}

/// SUBACKs on a NATS cluster come quickly, for a node alone (no other live node to ask)
/// and for one with a peer on another server: one filter, and a SUBSCRIBE of 100 filters
/// (their confirmations share rounds). Nothing is left unconfirmed. Prints the latencies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suback_latency_on_a_nats_cluster() {
    let Some(servers) = NatsServer::start_cluster(3) else {
        return;
    };
    let a = node_on(&servers, 0, "n1").await;
    let mut sub = a.client(V5, "sub").await;
    let alone = tern_tests::cluster_support::suback_latencies_ms(&mut sub, "alone").await;
    let b = node_on(&servers, 1, "n2").await;
    until_alive(&a, "n2").await;
    let peer = tern_tests::cluster_support::suback_latencies_ms(&mut sub, "peer").await;
    println!(
        "three NATS servers: SUBACK alone {:.2} ms (100 filters {:.2} ms), \
         with a peer on another server {:.2} ms (100 filters {:.2} ms)",
        alone.0, alone.1, peer.0, peer.1
    );
    for (one, hundred) in [alone, peer] {
        assert!(one < 500.0, "one filter took {one} ms");
        assert!(hundred < 2000.0, "100 filters took {hundred} ms");
    }
    assert_eq!(counter(&a, "interest_unconfirmed"), 0);
    drop(b);
}

/// Writes a heartbeat of member `name` into the nodes bucket (retried while the bucket's
/// stream, just created with three replicas, has no leader yet).
async fn heartbeat(bucket: &async_nats::jetstream::kv::Store, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = bucket.put(name, "{}".into()).await {
        assert!(tokio::time::Instant::now() < deadline, "heartbeat: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Live members that do not confirm (stand-ins: heartbeats written into the nodes bucket by
/// a raw NATS client): one with no subscriber on its confirm subject (gone, or an earlier
/// version) is passed over at once; one whose subscriber never answers holds the SUBACK
/// for half of `interest_timeout_ms`, then is passed over and counted
/// (`tern_cluster_interest_unconfirmed_total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_do_not_confirm_are_passed_over() {
    let Some(servers) = NatsServer::start_cluster(3) else {
        return;
    };
    let node = TestBroker::start_with(|c| {
        servers[0].join(c, "n1");
        c.cluster.kv_replicas = 3;
        c.cluster.connect_timeout_ms = 10_000;
        c.cluster.node_lease_ms = 30_000;
        c.cluster.interest_timeout_ms = 1000;
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while node.broker().cluster().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "n1 never joined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A raw member on server 2: its heartbeats, and later its confirm subscription.
    let raw = async_nats::connect(servers[1].url())
        .await
        .expect("connect");
    let bucket = async_nats::jetstream::new(raw.clone())
        .get_key_value("tern_nodes")
        .await
        .expect("nodes bucket");
    heartbeat(&bucket, "gone").await;
    until_alive(&node, "gone").await;
    let mut sub = node.client(V5, "sub").await;
    let started = tokio::time::Instant::now();
    sub.subscribe("p/1", QoS::AtLeastOnce).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(450),
        "gone held the SUBACK {took:?}"
    );
    assert_eq!(counter(&node, "interest_unconfirmed"), 0);
    let _never_answers = raw.subscribe("tern.confirm.mute").await.expect("subscribe");
    raw.flush().await.expect("flush");
    heartbeat(&bucket, "mute").await;
    until_alive(&node, "mute").await;
    let started = tokio::time::Instant::now();
    sub.subscribe("p/2", QoS::AtLeastOnce).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "mute held the SUBACK {took:?}"
    );
    assert_eq!(counter(&node, "interest_unconfirmed"), 1);
}

/// Subscribes `client` to `filter` at QoS 1 and returns the PUBLISHes that came before the
/// SUBACK, acknowledged (MQTT 5.0, 3.8.4: "The Server is permitted to start sending PUBLISH
/// packets matching the Subscription before the Server sends the SUBACK packet").
async fn subscribe_collecting(client: &mut Client, filter: &str) -> Vec<tern_codec::Publish> {
    let packet_id = client.next_packet_id();
    let subscribe = tern_codec::Subscribe {
        packet_id,
        properties: Default::default(),
        filters: vec![(
            filter.into(),
            tern_codec::SubscriptionOptions::with_qos(QoS::AtLeastOnce),
        )],
    };
    client.send(&Packet::Subscribe(Box::new(subscribe))).await;
    let mut early = Vec::new();
    loop {
        match client.recv().await {
            Packet::SubAck(suback) => {
                assert_eq!(suback.packet_id, packet_id);
                return early;
            }
            Packet::Publish(publish) => {
                client.ack(&publish).await;
                early.push(publish);
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

/// The first RETAIN 1 message among `early` or arriving within `wait` of each other
/// (live copies, RETAIN 0, are acknowledged and skipped).
async fn retained_within(
    client: &mut Client,
    early: Vec<tern_codec::Publish>,
    wait: Duration,
) -> Option<tern_codec::Publish> {
    if let Some(p) = early.into_iter().find(|p| p.retain) {
        return Some(p);
    }
    while let Some(packet) = client.recv_within(wait).await {
        if let Packet::Publish(p) = packet {
            client.ack(&p).await;
            if p.retain {
                return Some(p);
            }
        }
    }
    None
}
