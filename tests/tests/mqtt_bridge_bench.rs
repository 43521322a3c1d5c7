//! Throughput and added latency of an MQTT bridge (issue #14): a QoS 1 publisher on Tern,
//! a bridge forwarding to a local Mosquitto, a QoS 1 subscriber on Mosquitto; against the
//! same publisher writing to Mosquitto directly. Ignored (a measurement, not a check): run
//! by hand, in release, on a quiet machine:
//!
//! ```sh
//! cargo test --release -p tern-tests --test mqtt_bridge_bench -- --ignored --nocapture
//! ```

mod mqtt_bridge_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqtt_bridge_support::*;
use tern_broker::config::mqtt_bridges::{BridgeProtocol, Direction};
use tern_codec::{Connect, Decoder, Packet, PacketId, ProtocolVersion, Publish, PublishQoS, QoS};
use tern_tests::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const PAYLOAD_BYTES: usize = 64;
/// QoS 1 messages the publisher keeps unacknowledged.
const WINDOW: usize = 200;

/// Publishes `count` QoS 1 messages to `addr` (at most `rate` per second, if given), each
/// carrying its send time (nanoseconds since `base`); waits for every PUBACK.
async fn publish(addr: SocketAddr, count: u32, rate: Option<u32>, base: Instant) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut read, mut write) = stream.into_split();
    let connect = Connect::new(ProtocolVersion::V5, "bench-pub");
    write
        .write_all(&Packet::Connect(Box::new(connect)).to_bytes(ProtocolVersion::V5))
        .await
        .expect("connect");
    let mut decoder = Decoder::with_version(ProtocolVersion::V5, u32::MAX);
    let mut buf = BytesMut::new();
    loop {
        if let Some(Packet::ConnAck(_)) = decoder.decode(&mut buf).expect("decode") {
            break;
        }
        read.read_buf(&mut buf).await.expect("read");
    }
    let window = Arc::new(Semaphore::new(WINDOW));
    let acks = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut acked = 0;
            while acked < count {
                match decoder.decode(&mut buf).expect("decode") {
                    Some(Packet::PubAck(_)) => {
                        acked += 1;
                        window.add_permits(1);
                    }
                    Some(_) => {}
                    None => {
                        if read.read_buf(&mut buf).await.expect("read") == 0 {
                            return;
                        }
                    }
                }
            }
        })
    };
    let gap = rate.map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
    let start = Instant::now();
    for n in 0..count {
        if let Some(gap) = gap {
            let due = start + gap * n;
            tokio::time::sleep_until(due.into()).await;
        }
        window.acquire().await.expect("window").forget();
        let mut payload = vec![0u8; PAYLOAD_BYTES];
        let sent = base.elapsed().as_nanos() as u64;
        payload[..8].copy_from_slice(&sent.to_le_bytes());
        let id = PacketId::new((n % 60_000 + 1) as u16).expect("id");
        let publish = Publish::new("bench/q1", payload).with_qos(PublishQoS::AtLeastOnce(id));
        write
            .write_all(&Packet::Publish(publish).to_bytes(ProtocolVersion::V5))
            .await
            .expect("write");
    }
    acks.await.expect("acks");
}

/// Receives `count` messages on `addr` (QoS 1); returns the latencies and the time from
/// the first to the last.
async fn receive(addr: SocketAddr, count: u32, base: Instant) -> (Vec<u64>, Duration) {
    let mut sub = client(addr, ProtocolVersion::V5, "bench-sub").await;
    sub.subscribe("bench/#", QoS::AtLeastOnce).await;
    tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(count as usize);
        let mut first = None;
        while (latencies.len() as u32) < count {
            let Some(p) = next_publish(&mut sub, Duration::from_secs(10)).await else {
                break;
            };
            first.get_or_insert_with(Instant::now);
            let mut sent = [0u8; 8];
            sent.copy_from_slice(&p.payload()[..8]);
            let now = base.elapsed().as_nanos() as u64;
            latencies.push(now.saturating_sub(u64::from_le_bytes(sent)));
        }
        let span = first.map_or(Duration::ZERO, |f| f.elapsed());
        (latencies, span)
    })
    .await
    .expect("subscriber")
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn run(
    label: &str,
    publish_to: SocketAddr,
    mosquitto: SocketAddr,
    count: u32,
    rate: Option<u32>,
) {
    let base = Instant::now();
    let receiver = tokio::spawn(receive(mosquitto, count, base));
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(publish_to, count, rate, base).await;
    let (mut latencies, span) = receiver.await.expect("receiver");
    latencies.sort_unstable();
    let got = latencies.len();
    let per_sec = got as f64 / span.as_secs_f64().max(1e-9);
    println!(
        "{label}: rate {} -> received {got}/{count}, {per_sec:.0} msgs/s, latency p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        rate.map_or("max".to_string(), |r| r.to_string()),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand in release (see the module doc)"]
async fn bridge_qos1_throughput_and_added_latency() {
    if !mosquitto_available() {
        return;
    }
    let mosquitto = Mosquitto::start(
        "bench",
        "max_inflight_messages 1000\nmax_queued_messages 100000",
    )
    .await;
    let remote = mosquitto.remote();
    let tern = TestBroker::start_with(|c| {
        let mut b = bridge(
            "bench",
            &remote,
            BridgeProtocol::V5,
            vec![rule("bench/#", Direction::Out, 1, "", "")],
        );
        b.max_inflight = 1000;
        c.mqtt_bridges = vec![b];
    })
    .await;
    let link = tern.broker().bridge_links().all()[0].clone();
    wait_for("up", || {
        link.state() == tern_broker::metrics::bridge_links::LinkState::Up
    })
    .await;
    for (count, rate) in [(5_000, Some(1_000)), (20_000, Some(5_000)), (50_000, None)] {
        run(
            "direct to mosquitto",
            mosquitto.addr(),
            mosquitto.addr(),
            count,
            rate,
        )
        .await;
        run(
            "via tern bridge    ",
            tern.addr,
            mosquitto.addr(),
            count,
            rate,
        )
        .await;
    }
    tern.running.stop().await;
}
