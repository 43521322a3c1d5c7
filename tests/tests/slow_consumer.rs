//! Slow consumers (DESIGN.md "Sessions and flow"): a subscriber that stops reading costs
//! the broker at most its writer's byte cap; QoS 0 messages past the cap are dropped for it
//! alone and counted; other subscribers get every message; a client that stays over the
//! cap longer than `slow_consumer_timeout_ms` is disconnected (0x97 quota exceeded).
//!
//! Real TCP (the point is the kernel's socket buffers filling up), bounded in time. The
//! tests in this file run one at a time: they measure the process (RSS, open sockets).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_broker::metrics::Metrics;
use tern_codec::{Connect, Packet, ProtocolVersion, Publish, QoS};
use tern_tests::{Client, TestBroker};
use tokio::net::TcpSocket;

const V5: ProtocolVersion = ProtocolVersion::V5;
const CAP: usize = 64 * 1024;
const PAYLOAD: usize = 1024;

/// The tests here measure the whole process: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The state (as in `/proc/net/tcp`: 01 established, 04 FIN_WAIT1, ...) of the TCP socket
/// from `local` to `remote`, if it exists.
fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<u8> {
    fn hex(addr: SocketAddr) -> String {
        let SocketAddr::V4(v4) = addr else {
            panic!("IPv4 only")
        };
        let ip = u32::from_le_bytes(v4.ip().octets());
        format!("{ip:08X}:{:04X}", v4.port())
    }
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 3 && fields[1] == local && fields[2] == remote)
            .then(|| u8::from_str_radix(fields[3], 16).expect("state"))
    })
}

const TCP_ESTABLISHED: u8 = 1;

async fn start(slow_consumer_timeout_ms: u64) -> TestBroker {
    TestBroker::start_with(|c| {
        c.limits.writer_cap_bytes = CAP;
        c.limits.max_packet_size_bytes = 16 * 1024;
        c.limits.slow_consumer_timeout_ms = slow_consumer_timeout_ms;
    })
    .await
}

/// A subscriber whose socket has a small receive buffer and which never reads after its
/// SUBACK.
async fn stuck_subscriber(broker: &TestBroker) -> (Client, SocketAddr) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(broker.addr).await.expect("connect");
    let local = stream.local_addr().expect("local addr");
    let mut client = Client::new(Box::new(stream), V5);
    let mut connect = Connect::new(V5, "stuck");
    connect.keep_alive_secs = 0;
    client.connect(connect).await;
    client.subscribe("flood/#", QoS::AtMostOnce).await;
    (client, local)
}

/// `count` QoS 0 PUBLISH packets of `PAYLOAD` bytes, encoded once.
fn flood_packet(version: ProtocolVersion) -> Vec<u8> {
    Packet::Publish(Publish::new("flood/x", vec![0x5a; PAYLOAD]))
        .to_bytes(version)
        .to_vec()
}

/// Publishes messages `from..to` (QoS 0), never more than `window` ahead of what
/// `received` says the reading subscriber got (so the reader's own writer never reaches
/// its cap).
async fn flood(
    publisher: &mut Client,
    from: usize,
    count: usize,
    window: usize,
    received: &AtomicUsize,
    deadline: Instant,
) {
    let one = flood_packet(V5);
    let mut sent = from;
    while sent < count {
        assert!(
            Instant::now() < deadline,
            "flood too slow: {sent} of {count} sent"
        );
        let room = (received.load(Ordering::Acquire) + window).saturating_sub(sent);
        if room == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        let n = room.min(count - sent).min(16);
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * n).collect();
        publisher.send_bytes(&batch).await;
        sent += n;
    }
}

/// A reading subscriber that counts the messages it gets.
fn reader(mut client: Client, received: Arc<AtomicUsize>) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        while let Some(packet) = client.next_packet().await {
            match packet {
                Packet::Publish(p) => {
                    assert_eq!(p.payload().len(), PAYLOAD);
                    received.fetch_add(1, Ordering::AcqRel);
                }
                Packet::PingResp => return client,
                other => panic!("reader got {other:?}"),
            }
        }
        panic!("reader's connection closed");
    })
}

// A subscriber that stops reading: QoS 0 messages past its writer's cap are dropped for it
// and counted, a reading subscriber gets all of them, and the broker's memory for the stuck
// connection stays bounded (the writer never grows past its cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_qos0_dropped_others_get_everything_memory_bounded() {
    let _serial = SERIAL.lock().await;
    let broker = start(60_000).await;
    let b = broker.broker();
    let (stuck, _) = stuck_subscriber(&broker).await;
    let mut good = broker.client(V5, "good").await;
    good.subscribe("flood/#", QoS::AtMostOnce).await;
    let received = Arc::new(AtomicUsize::new(0));
    let reading = reader(good, received.clone());
    let mut publisher = broker.client(V5, "pub").await;

    const COUNT: usize = 20_000;
    // Warm up (allocator, buffers) before measuring.
    flood(
        &mut publisher,
        0,
        500,
        32,
        &received,
        Instant::now() + Duration::from_secs(5),
    )
    .await;
    let rss_before = rss_kib();
    flood(
        &mut publisher,
        500,
        COUNT,
        32,
        &received,
        Instant::now() + Duration::from_secs(5),
    )
    .await;
    publisher.ping().await;
    let rss_after = rss_kib();
    // The reader gets everything: ask it to stop after the last message (PINGRESP).
    let wait = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Acquire) < COUNT {
        assert!(
            Instant::now() < wait,
            "reader got {} of {COUNT}",
            received.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dropped = Metrics::get(&b.metrics().dropped_qos0_slow_consumer);
    let growth_kib = rss_after.saturating_sub(rss_before);
    eprintln!(
        "slow consumer: {COUNT} x {PAYLOAD} B published, reader got {}, dropped for the stuck \
         client {dropped}, RSS {rss_before} KiB -> {rss_after} KiB (+{growth_kib} KiB), writer cap {} KiB",
        received.load(Ordering::Acquire),
        CAP / 1024
    );
    assert_eq!(received.load(Ordering::Acquire), COUNT);
    assert!(dropped > 0, "nothing dropped for a client that never reads");
    // What the stuck client could have taken: its kernel buffers plus twice the cap (the
    // batch being written and the buffer behind it). Everything else was dropped.
    let sent_total = Metrics::get(&b.metrics().messages_sent) as usize;
    let to_stuck = sent_total - COUNT;
    assert_eq!(
        to_stuck + dropped as usize,
        COUNT,
        "every message is sent or dropped"
    );
    // 20 MB went through; the process must not have kept the stuck client's share.
    assert!(
        growth_kib < 8 * 1024,
        "RSS grew by {growth_kib} KiB while flooding a stuck subscriber"
    );
    assert_eq!(Metrics::get(&b.metrics().slow_consumer_disconnects), 0);
    drop(stuck);
    reading.abort();
    broker.running.stop().await;
}

// A client that stays over its writer's cap for longer than `slow_consumer_timeout_ms` is
// disconnected (0x97), and its socket is actually closed by the broker even though the
// client never reads again (the broker does not keep the connection alive trying to flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_disconnected_after_timeout_and_socket_closed() {
    let _serial = SERIAL.lock().await;
    let broker = start(200).await;
    let b = broker.broker();
    let (mut stuck, stuck_addr) = stuck_subscriber(&broker).await;
    assert_eq!(
        tcp_state(broker.addr, stuck_addr),
        Some(TCP_ESTABLISHED),
        "cannot find the broker's end of the stuck connection"
    );
    let mut publisher = broker.client(V5, "pub").await;
    let one = flood_packet(V5);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 64).collect();
    let deadline = Instant::now() + Duration::from_secs(4);
    // Keep publishing until the broker gives up on the stuck client.
    while Metrics::get(&b.metrics().slow_consumer_disconnects) == 0 {
        assert!(
            Instant::now() < deadline,
            "stuck client not disconnected; {} messages dropped for it",
            Metrics::get(&b.metrics().dropped_qos0_slow_consumer)
        );
        publisher.send_bytes(&batch).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publisher.ping().await;
    // The broker closes its end without the client reading: the socket leaves the
    // ESTABLISHED state (FIN_WAIT1 while the kernel still holds unsent bytes, or gone).
    let closed_by = Instant::now() + Duration::from_millis(1500);
    while tcp_state(broker.addr, stuck_addr) == Some(TCP_ESTABLISHED) {
        assert!(
            Instant::now() < closed_by,
            "the broker did not close the stuck client's socket"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client sees the end of the stream after what was buffered (5.0: a DISCONNECT
    // 0x97 may or may not have made it into the buffers).
    let mut last = None;
    let read_all = async {
        while let Some(packet) = stuck.next_packet().await {
            last = Some(packet);
        }
    };
    tokio::time::timeout(Duration::from_secs(3), read_all)
        .await
        .expect("stuck client's connection not closed");
    if let Some(Packet::Disconnect(d)) = &last {
        assert_eq!(d.reason_code, tern_codec::ReasonCode::QUOTA_EXCEEDED);
    }
    assert_eq!(Metrics::get(&b.metrics().clients_connected), 1);
    broker.running.stop().await;
}
