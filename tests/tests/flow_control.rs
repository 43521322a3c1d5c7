//! Flow control without silent loss (issue #17).
//!
//! - Retained replay is paced by the subscriber: every matching retained message reaches a
//!   subscriber that keeps reading, whatever their number ([MQTT-3.3.1-9]: with Retain
//!   Handling 0 the Server MUST send the retained messages matching the filter;
//!   [MQTT-3.8.4-3] in 3.1.1), and live messages keep their order per topic
//!   ([MQTT-4.6.0-6]: every topic is an Ordered Topic on non-shared subscriptions).
//! - A QoS 1/2 subscriber that stops reading costs at most its session's `max_queued_bytes`
//!   (queued and inflight together) plus its writer cap, and is disconnected (0x97) once its
//!   window has not moved for `slow_consumer_timeout_ms` while messages wait.
//!
//! Correctness only, with small limits; the RSS and latency numbers are tern-bench's
//! (`retained-replay`, `stuck-qos1`).

use std::time::{Duration, Instant};

use tern_broker::message::Message;
use tern_broker::metrics::Metrics;
use tern_broker::router::RouteScratch;
use tern_codec::{Connect, Packet, ProtocolVersion, Publish, PublishQoS, QoS};
use tern_tests::{Client, TestBroker};
use tokio::net::TcpSocket;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Stores `count` retained messages of `payload_bytes` on `{prefix}/{i}` at `qos`, through
/// the broker's own publish path (as a client's PUBLISH would, without the round trips).
fn retain_many(broker: &TestBroker, prefix: &str, count: usize, payload_bytes: usize, qos: QoS) {
    let now = tokio::time::Instant::now();
    let mut scratch = RouteScratch::default();
    for i in 0..count {
        let mut publish = Publish::new(format!("{prefix}/{i}"), vec![b'r'; payload_bytes]);
        if qos != QoS::AtMostOnce {
            let id = tern_codec::PacketId::new(1).expect("non-zero");
            publish.set_qos(PublishQoS::with_id(qos, id));
        }
        publish.retain = true;
        broker
            .broker()
            .publish(&Message::new(publish, now, None), &mut scratch, now);
    }
    assert_eq!(
        Metrics::get(&broker.broker().metrics().retained_messages),
        count as u64
    );
}

/// Reads (and acknowledges) PUBLISH packets until `want` distinct topics arrived or nothing
/// came for `idle`; returns how many distinct topics arrived.
async fn read_retained(client: &mut Client, want: usize, idle: Duration) -> usize {
    let mut seen = std::collections::HashSet::new();
    while seen.len() < want {
        match client.recv_within(idle).await {
            Some(Packet::Publish(p)) => {
                assert!(
                    p.retain,
                    "sent because of the SUBSCRIBE: RETAIN 1 [MQTT-3.3.1-8]"
                );
                client.ack(&p).await;
                seen.insert(p.topic().to_string());
            }
            Some(other) => panic!("expected PUBLISH, got {other:?}"),
            None => break,
        }
    }
    seen.len()
}

// Finding 1 of issue #17: 3,000 retained messages of 1 KiB and a QoS 0 subscriber that
// reads as fast as it can got only about 1 MiB of them (the writer cap); [MQTT-3.3.1-9]
// wants all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_replay_qos0_3000_all_delivered_mqtt_3_3_1_9() {
    let broker = TestBroker::start().await;
    retain_many(&broker, "rc", 3000, 1024, QoS::AtMostOnce);
    let mut sub = broker.client(V5, "replay-qos0").await;
    sub.subscribe("rc/#", QoS::AtMostOnce).await;
    let got = read_retained(&mut sub, 3000, Duration::from_secs(3)).await;
    assert_eq!(
        got, 3000,
        "every retained message reaches a reading subscriber"
    );
    assert_eq!(
        Metrics::get(&broker.broker().metrics().dropped_qos0_slow_consumer),
        0
    );
}

// Finding 1 at QoS 1: 20,000 retained stopped at queue + inflight (11,024 with the
// defaults); a subscriber that acknowledges gets all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_replay_qos1_20000_all_delivered_mqtt_3_3_1_9() {
    let broker = TestBroker::start().await;
    retain_many(&broker, "rq", 20_000, 1024, QoS::AtLeastOnce);
    let mut sub = broker.client(V5, "replay-qos1").await;
    sub.subscribe("rq/#", QoS::AtLeastOnce).await;
    let got = read_retained(&mut sub, 20_000, Duration::from_secs(3)).await;
    assert_eq!(
        got, 20_000,
        "every retained message reaches an acknowledging subscriber"
    );
    assert_eq!(
        Metrics::get(&broker.broker().metrics().dropped_queue_full),
        0
    );
}

const STUCK_QUEUE_BYTES: usize = 1 << 20;
const STUCK_PAYLOAD_BYTES: usize = 32 * 1024;
const STUCK_TIMEOUT_MS: u64 = 400;

async fn start_small() -> TestBroker {
    TestBroker::start_with(|c| {
        c.limits.writer_cap_bytes = 128 * 1024;
        c.limits.writer_soft_cap_bytes = 16 * 1024;
        c.limits.max_packet_size_bytes = 64 * 1024;
        c.limits.max_queued_bytes = STUCK_QUEUE_BYTES;
        c.limits.slow_consumer_timeout_ms = STUCK_TIMEOUT_MS;
    })
    .await
}

/// A QoS 1 subscriber on `big/#` with a small receive buffer that never reads after its
/// SUBACK; persistent (Session Expiry 300 s).
async fn stuck_qos1(broker: &TestBroker, client_id: &str) -> Client {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(broker.addr).await.expect("connect");
    let mut client = Client::new(Box::new(stream), V5);
    let mut connect = Connect::new(V5, client_id);
    connect.keep_alive_secs = 0;
    connect.clean_start = false;
    connect.properties.session_expiry_interval_secs = Some(300);
    client.connect(connect).await;
    client.subscribe("big/#", QoS::AtLeastOnce).await;
    client
}

/// Bytes the session of `client_id` holds for its client: queued and inflight.
fn held_bytes(broker: &TestBroker, client_id: &str) -> usize {
    let session = broker.broker().session(client_id).expect("session");
    let delivery = session.delivery();
    (delivery.queued() + delivery.inflight()) * (STUCK_PAYLOAD_BYTES + "big/x".len())
}

fn publish_big(broker: &TestBroker, scratch: &mut RouteScratch) {
    let now = tokio::time::Instant::now();
    let id = tern_codec::PacketId::new(1).expect("non-zero");
    let publish = Publish::new("big/x", vec![b'b'; STUCK_PAYLOAD_BYTES])
        .with_qos(PublishQoS::AtLeastOnce(id));
    broker
        .broker()
        .publish(&Message::new(publish, now, None), scratch, now);
}

// Finding 2 of issue #17: a QoS 1 subscriber that never reads held its whole inflight
// window (1,024 x message size), uncounted in max_queued_bytes, and was never
// disconnected. Now: queued + inflight stay within max_queued_bytes, the client is
// disconnected once its window has not moved for slow_consumer_timeout_ms while messages
// wait (0x97 attempted, counted), and its persistent session keeps queuing within bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_qos1_bounded_in_bytes_and_disconnected() {
    let broker = start_small().await;
    let _stuck = stuck_qos1(&broker, "stuck").await;
    let mut scratch = RouteScratch::default();
    let started = Instant::now();
    let mut max_held = 0;
    let deadline = started + Duration::from_millis(STUCK_TIMEOUT_MS * 10);
    while Metrics::get(&broker.broker().metrics().slow_consumer_disconnects) == 0 {
        assert!(
            Instant::now() < deadline,
            "stuck QoS 1 consumer not disconnected (held {} bytes)",
            held_bytes(&broker, "stuck")
        );
        publish_big(&broker, &mut scratch);
        max_held = max_held.max(held_bytes(&broker, "stuck"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(STUCK_TIMEOUT_MS),
        "disconnected after {took:?}, before the timeout"
    );
    assert!(
        max_held <= STUCK_QUEUE_BYTES,
        "held {max_held} bytes, over max_queued_bytes"
    );
    // The persistent session stays and keeps queuing, within its bound.
    for _ in 0..100 {
        publish_big(&broker, &mut scratch);
    }
    let session = broker
        .broker()
        .session("stuck")
        .expect("persistent session");
    let held = {
        let delivery = session.delivery();
        assert!(!delivery.is_online());
        delivery.queued() + delivery.inflight()
    };
    assert!(held > 0);
    assert!(held_bytes(&broker, "stuck") <= STUCK_QUEUE_BYTES);
    assert!(Metrics::get(&broker.broker().metrics().dropped_queue_full) > 0);
    assert_eq!(
        Metrics::get(&broker.broker().metrics().disconnects_slow_consumer),
        1
    );
    // What it held waits for its return: resent on resume, then the rest of the queue.
    let mut back = Client::tcp(broker.addr, V5).await;
    let mut connect = Connect::new(V5, "stuck");
    connect.clean_start = false;
    connect.properties.session_expiry_interval_secs = Some(300);
    assert!(back.connect(connect).await.session_present);
    let mut got = 0;
    while let Some(Packet::Publish(p)) = back.recv_within(Duration::from_secs(1)).await {
        back.ack(&p).await;
        got += 1;
    }
    assert_eq!(got, held, "everything held reaches the returning client");
    // All given back but the few KiB an online session keeps taken ahead.
    assert!(broker.broker().budget().used_bytes() <= 4096);
    drop(back);
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.broker().budget().used_bytes() != 0 {
        assert!(Instant::now() < deadline, "budget not given back offline");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// Order between a replay and live traffic: a live message on a topic the replay has not
// reached yet does not overtake that topic's retained message ([MQTT-4.6.0-6]: every topic
// is an Ordered Topic on a non-shared subscription); the live message carries RETAIN 0
// ([MQTT-3.3.1-12]: Retain As Published 0), the replayed ones RETAIN 1 ([MQTT-3.3.1-8]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_message_does_not_overtake_its_topics_retained_one_mqtt_4_6_0_6() {
    let broker = TestBroker::start().await;
    retain_many(&broker, "ord", 200, 16, QoS::AtLeastOnce);
    let mut sub = Client::tcp(broker.addr, V5).await;
    let mut connect = Connect::new(V5, "ord-sub");
    connect.properties.receive_maximum = Some(4);
    sub.connect(connect).await;
    sub.subscribe("ord/#", QoS::AtLeastOnce).await;
    // The window (4) holds the replay back while nothing is acknowledged: "ord/99" sorts
    // after "ord/0".."ord/98"'s first few, so the replay has not reached it yet.
    let mut publisher = broker.client(V5, "ord-pub").await;
    publisher
        .publish("ord/99", b"live", QoS::AtLeastOnce, false)
        .await;
    let mut topics = Vec::new();
    while let Some(Packet::Publish(p)) = sub.recv_within(Duration::from_secs(2)).await {
        sub.ack(&p).await;
        topics.push((p.topic().to_string(), p.retain, p.payload().to_vec()));
    }
    assert_eq!(topics.len(), 201, "200 retained and the live one");
    let retained_at = topics
        .iter()
        .position(|(t, retain, _)| t == "ord/99" && *retain)
        .expect("the retained ord/99");
    let live_at = topics
        .iter()
        .position(|(t, retain, payload)| t == "ord/99" && !*retain && payload == b"live")
        .expect("the live ord/99");
    assert!(
        retained_at < live_at,
        "retained {retained_at}, live {live_at}"
    );
    assert!(
        live_at < 150,
        "the live message did not wait for the whole replay (at {live_at})"
    );
}

// A retained message replaced after the SUBSCRIBE reaches the subscriber live, once, and
// after the one it replaced if that one is sent at all: the replay never sends the newer
// one again (it was stored after the replay began), nor the older one after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_replaced_during_replay_arrives_once() {
    let broker = TestBroker::start().await;
    retain_many(&broker, "rep", 50, 16, QoS::AtLeastOnce);
    let mut sub = Client::tcp(broker.addr, V5).await;
    let mut connect = Connect::new(V5, "rep-sub");
    connect.properties.receive_maximum = Some(2);
    sub.connect(connect).await;
    sub.subscribe("rep/#", QoS::AtLeastOnce).await;
    let mut publisher = broker.client(V5, "rep-pub").await;
    publisher
        .publish("rep/7", b"newer", QoS::AtLeastOnce, true)
        .await;
    let mut rep7 = Vec::new();
    let mut n = 0;
    while let Some(Packet::Publish(p)) = sub.recv_within(Duration::from_secs(2)).await {
        sub.ack(&p).await;
        n += 1;
        if p.topic() == "rep/7" {
            rep7.push(p.payload().to_vec());
        }
    }
    let newer: Vec<_> = rep7.iter().filter(|p| p.as_slice() == b"newer").collect();
    assert_eq!(newer.len(), 1, "the newer one once, live: {rep7:?}");
    assert_eq!(
        rep7.last().map(Vec::as_slice),
        Some(&b"newer"[..]),
        "{rep7:?}"
    );
    assert!(rep7.len() <= 2);
    assert_eq!(n, 49 + rep7.len());
}

// The broker-wide budget: once sessions hold max_total_queued_bytes, a 5.0 QoS 1 PUBLISH
// gets PUBACK 0x97 Quota exceeded and a 3.1.1 one is acknowledged and dropped, both
// counted; when a session gives bytes back, publishes are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_budget_refuses_qos1_publishes_with_0x97() {
    const MESSAGE_BYTES: usize = 8192;
    let broker = TestBroker::start_with(|c| {
        c.limits.max_queued_bytes = 64 * 1024;
        c.limits.max_total_queued_bytes = Some(96 * 1024);
    })
    .await;
    for id in ["off-a", "off-b"] {
        let mut c = Client::tcp(broker.addr, V5).await;
        let mut connect = Connect::new(V5, id);
        connect.clean_start = false;
        connect.properties.session_expiry_interval_secs = Some(300);
        c.connect(connect).await;
        c.subscribe("b/#", QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    let mut v5 = broker.client(V5, "pub5").await;
    let payload = vec![b'p'; MESSAGE_BYTES];
    let mut refused_at = None;
    for i in 0..32 {
        let code = v5.publish("b/x", &payload, QoS::AtLeastOnce, false).await;
        if code == Some(tern_codec::ReasonCode::QUOTA_EXCEEDED) {
            refused_at = Some(i);
            break;
        }
    }
    assert!(refused_at.is_some(), "never refused");
    let metrics = broker.broker().metrics();
    assert!(Metrics::get(&metrics.publishes_refused_total_budget) >= 1);
    assert!(broker.broker().budget().used_bytes() <= 96 * 1024);
    let mut v3 = broker.client(ProtocolVersion::V3_1_1, "pub3").await;
    assert_eq!(
        v3.publish("b/x", &payload, QoS::AtLeastOnce, false).await,
        Some(tern_codec::ReasonCode::SUCCESS),
        "3.1.1: acknowledged as received ([MQTT-3.3.5-2]) and dropped"
    );
    assert!(Metrics::get(&metrics.publishes_refused_total_budget) >= 2);
    // One session comes back and takes its messages: bytes are given back.
    let mut back = Client::tcp(broker.addr, V5).await;
    let mut connect = Connect::new(V5, "off-a");
    connect.clean_start = false;
    connect.properties.session_expiry_interval_secs = Some(300);
    back.connect(connect).await;
    while let Some(Packet::Publish(p)) = back.recv_within(Duration::from_millis(500)).await {
        back.ack(&p).await;
    }
    assert_eq!(
        v5.publish("b/x", &payload, QoS::AtLeastOnce, false).await,
        Some(tern_codec::ReasonCode::SUCCESS)
    );
}
