//! Publisher back-pressure: a publisher faster than its subscriber is slowed down instead of
//! losing QoS 0 messages, and a subscriber that stops reading holds a publisher back only
//! for `backpressure_max_wait_ms` before it is treated as slow.

use std::time::{Duration, Instant};

use tern_broker::metrics::Metrics;
use tern_codec::{Packet, ProtocolVersion, Publish, QoS};
use tern_tests::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const COUNT: u32 = 20_000;

/// All COUNT messages as one burst of bytes.
fn burst() -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..COUNT {
        let publish = Publish::new("bp/x", format!("{i:08}").into_bytes());
        Packet::Publish(publish).encode(V3, &mut bytes);
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_publisher_slow_subscriber_loses_nothing() {
    // Small caps so that the subscriber's buffer would overflow many times over without
    // back-pressure; the subscriber's wait is long enough never to be marked slow.
    let broker = TestBroker::start_with(|c| {
        c.limits.max_packet_size_bytes = 4096;
        c.limits.writer_cap_bytes = 8192;
        c.limits.writer_soft_cap_bytes = 2048;
        c.limits.backpressure_max_wait_ms = 5_000;
        c.limits.max_publish_rate_per_client = 0;
    })
    .await;
    let mut sub = broker.client(V3, "bp-sub").await;
    sub.subscribe("bp/#", QoS::AtMostOnce).await;
    let mut publisher = broker.client(V3, "bp-pub").await;
    let bytes = burst();
    let send = tokio::spawn(async move {
        publisher.send_bytes(&bytes).await;
        publisher
    });
    // Read slowly: a few messages, then a pause.
    for i in 0..COUNT {
        let publish = sub.expect_publish().await;
        assert_eq!(
            publish.payload(),
            format!("{i:08}").into_bytes(),
            "in order, none lost"
        );
        if i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _publisher = send.await.expect("sender");
    let metrics = &broker.broker().metrics();
    assert_eq!(Metrics::get(&metrics.dropped_qos0_slow_consumer), 0);
    assert!(
        Metrics::get(&metrics.backpressure_waits) > 0,
        "the publisher was held back"
    );
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_subscriber_holds_the_publisher_back_only_briefly() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_packet_size_bytes = 4096;
        c.limits.writer_cap_bytes = 8192;
        c.limits.writer_soft_cap_bytes = 2048;
        c.limits.backpressure_max_wait_ms = 100;
        c.limits.max_publish_rate_per_client = 0;
        // Keep the backlog in the broker, where the policy sees it, not in kernel buffers.
        c.limits.socket_send_buffer_bytes = 4096;
    })
    .await;
    // A subscriber that never reads (and a small receive buffer, so it fills soon).
    let stuck = tokio::net::TcpStream::connect(broker.addr)
        .await
        .expect("connect");
    socket2::SockRef::from(&stuck)
        .set_recv_buffer_size(4096)
        .expect("rcvbuf");
    let mut stuck = stuck;
    let mut connect = Vec::new();
    Packet::Connect(Box::new(tern_codec::Connect::new(V3, "stuck"))).encode(V3, &mut connect);
    let subscribe = tern_codec::Subscribe {
        packet_id: 1.try_into().expect("id"),
        properties: Default::default(),
        filters: vec![(
            "bp/#".into(),
            tern_codec::SubscriptionOptions::with_qos(QoS::AtMostOnce),
        )],
    };
    Packet::Subscribe(Box::new(subscribe)).encode(V3, &mut connect);
    stuck.write_all(&connect).await.expect("send");
    let mut ack = [0u8; 9];
    stuck.read_exact(&mut ack).await.expect("CONNACK + SUBACK");

    let mut reader = broker.client(V3, "bp-reader").await;
    reader.subscribe("bp/#", QoS::AtMostOnce).await;
    let mut publisher = broker.client(V3, "bp-pub").await;
    let started = Instant::now();
    publisher.send_bytes(&burst()).await;
    for i in 0..COUNT {
        let Some(packet) = reader.recv_within(Duration::from_secs(3)).await else {
            let m = &broker.broker().metrics();
            panic!(
                "reader stalled after {i} messages (slow marked {}, waits {}, dropped {})",
                Metrics::get(&m.backpressure_slow_consumers),
                Metrics::get(&m.backpressure_waits),
                Metrics::get(&m.dropped_qos0_slow_consumer)
            );
        };
        let Packet::Publish(publish) = packet else {
            panic!("expected PUBLISH, got {packet:?}")
        };
        assert_eq!(publish.payload(), format!("{i:08}").into_bytes());
    }
    let elapsed = started.elapsed();
    let metrics = &broker.broker().metrics();
    assert!(
        Metrics::get(&metrics.backpressure_slow_consumers) >= 1,
        "the stuck one was marked slow"
    );
    assert!(
        Metrics::get(&metrics.dropped_qos0_slow_consumer) > 0,
        "its QoS 0 overflow was dropped"
    );
    // Once marked slow it stops holding the publisher back: far less than one wait per message.
    println!("publisher with a stuck subscriber: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    broker.running.stop().await;
}
