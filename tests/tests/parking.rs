//! Parked connections (`limits.park_idle_after_ms`): an idle plain TCP connection gives its
//! task back and waits as a small record; input, output and kicks wake it at once. Each
//! test parks its clients first (it waits until `clients_parked` says so), then checks
//! that a parked connection behaves as a connection with a task: delivery, PINGRESP, keep
//! alive and will, takeover, admin kick, shutdown, and the counters. Named after the
//! normative statements they check. Real sockets on 127.0.0.1, bounded in time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use tern_broker::metrics::Metrics;
use tern_broker::{http_client, Broker};
use tern_codec::{ByteStr, Connect, LastWill, ProtocolVersion, QoS, WillProperties};
use tern_tests::{require_tool, Client, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
/// Short, so that the tests park within a fraction of a second.
const PARK_AFTER_MS: u64 = 100;
/// How long a test waits for connections to park (or a message to arrive) before failing.
const WAIT: Duration = Duration::from_secs(5);
/// What "at once" means for a parked connection woken by input or output.
const AT_ONCE: Duration = Duration::from_millis(500);

async fn start() -> TestBroker {
    TestBroker::start_with(|c| c.limits.park_idle_after_ms = PARK_AFTER_MS).await
}

fn parked(broker: &Broker) -> u64 {
    Metrics::get(&broker.metrics().clients_parked)
}

fn connected(broker: &Broker) -> u64 {
    Metrics::get(&broker.metrics().clients_connected)
}

/// Waits until exactly `n` connections are parked.
async fn until_parked(broker: &Broker, n: u64) {
    let started = Instant::now();
    while parked(broker) != n {
        assert!(
            started.elapsed() < WAIT,
            "{} parked, expected {n}",
            parked(broker)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client connected with `keep_alive_secs` (0: none).
async fn client(
    broker: &TestBroker,
    version: ProtocolVersion,
    id: &str,
    keep_alive_secs: u16,
) -> Client {
    let mut client = broker.raw(version).await;
    let mut connect = Connect::new(version, id);
    connect.keep_alive_secs = keep_alive_secs;
    let connack = client.connect(connect).await;
    assert_eq!(connack.code.0, 0, "{connack:?}");
    client
}

#[tokio::test]
async fn a_parked_subscriber_gets_a_message_at_once_and_parks_again() {
    let broker = start().await;
    let mut sub = client(&broker, V5, "park-sub", 0).await;
    sub.subscribe("park/#", QoS::AtLeastOnce).await;
    until_parked(broker.broker(), 1).await;
    let mut publisher = client(&broker, V5, "park-pub", 0).await;
    let sent = Instant::now();
    publisher
        .publish("park/a", b"hello", QoS::AtLeastOnce, false)
        .await;
    let got = sub.expect_publish_acked().await;
    assert!(sent.elapsed() < AT_ONCE, "took {:?}", sent.elapsed());
    assert_eq!((got.topic(), got.payload()), ("park/a", &b"hello"[..]));
    // Both idle now: both park, and a second message still arrives.
    until_parked(broker.broker(), 2).await;
    publisher
        .publish("park/b", b"again", QoS::AtMostOnce, false)
        .await;
    let got = sub.expect_publish().await;
    assert_eq!(got.payload(), &b"again"[..]);
    broker.running.stop().await;
}

/// [MQTT-3.12.4-1]: the Server MUST send a PINGRESP packet in response to a PINGREQ packet
/// (a parked one too, at once).
#[tokio::test]
async fn a_parked_client_gets_pingresp() {
    let broker = start().await;
    for (version, id) in [(V5, "ping-5"), (V3, "ping-3")] {
        let mut pinger = client(&broker, version, id, 60).await;
        until_parked(broker.broker(), 1).await;
        let sent = Instant::now();
        pinger.ping().await;
        assert!(sent.elapsed() < AT_ONCE, "took {:?}", sent.elapsed());
        until_parked(broker.broker(), 1).await;
        pinger.disconnect().await;
        until_parked(broker.broker(), 0).await;
    }
    broker.running.stop().await;
}

/// [MQTT-3.1.2-22] (5.0; [MQTT-3.1.2-24] in 3.1.1): a client silent for one and a half
/// times its Keep Alive is closed, parked or not; [MQTT-3.1.2-8]: its will is published
/// when the connection closes without DISCONNECT.
#[tokio::test]
async fn a_silent_parked_client_is_closed_after_one_and_a_half_keep_alive_and_its_will_published() {
    let broker = start().await;
    let mut watcher = client(&broker, V5, "will-watcher", 0).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut silent = broker.raw(V5).await;
    let mut connect = Connect::new(V5, "silent");
    connect.keep_alive_secs = 1;
    connect.will = Some(LastWill {
        topic: ByteStr::from("will/silent"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    let connected_at = Instant::now();
    assert_eq!(silent.connect(connect).await.code.0, 0);
    until_parked(broker.broker(), 2).await;
    let disconnect = tokio::time::timeout(WAIT, silent.expect_disconnect())
        .await
        .expect("closed in time");
    let closed_after = connected_at.elapsed();
    assert_eq!(
        disconnect.map(|d| d.reason_code.0),
        Some(0x8D),
        "keep alive timeout"
    );
    assert!(
        closed_after >= Duration::from_millis(1500),
        "{closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_millis(2500),
        "{closed_after:?}"
    );
    let will = watcher.expect_publish_acked().await;
    assert_eq!(
        (will.topic(), will.payload()),
        ("will/silent", &b"gone"[..])
    );
    assert_eq!(
        Metrics::get(&broker.broker().metrics().disconnects_keep_alive),
        1
    );
    broker.running.stop().await;
}

/// [MQTT-3.1.4-3]: a CONNECT with the Client Identifier of a connected client makes the
/// Server send DISCONNECT 0x8E (Session taken over) to the existing one and close it —
/// also when the existing connection is parked.
#[tokio::test]
async fn takeover_of_a_parked_session_sends_0x8e_to_the_old_connection() {
    let broker = start().await;
    let mut old = client(&broker, V5, "taken", 0).await;
    old.subscribe("t/#", QoS::AtLeastOnce).await;
    until_parked(broker.broker(), 1).await;
    let _new = client(&broker, V5, "taken", 0).await;
    let disconnect = tokio::time::timeout(WAIT, old.expect_disconnect())
        .await
        .expect("closed in time");
    assert_eq!(disconnect.map(|d| d.reason_code.0), Some(0x8E));
    assert_eq!(connected(broker.broker()), 1);
    broker.running.stop().await;
}

/// Shutdown closes parked connections like the others: DISCONNECT 0x8B (Server shutting
/// down) to 5.0 clients, end of stream for 3.1.1 ones, and the broker's task ends.
#[tokio::test]
async fn shutdown_closes_parked_connections() {
    let broker = start().await;
    let mut v5 = client(&broker, V5, "down-5", 30).await;
    let mut v3 = client(&broker, V3, "down-3", 30).await;
    until_parked(broker.broker(), 2).await;
    let stopped = tokio::time::timeout(WAIT, broker.running.stop());
    let (stopped, d5, d3) = tokio::join!(stopped, v5.expect_disconnect(), v3.expect_disconnect());
    stopped.expect("shut down in time");
    assert_eq!(d5.map(|d| d.reason_code.0), Some(0x8B));
    assert!(d3.is_none(), "3.1.1 has no DISCONNECT from the server");
}

/// Parked clients are counted: `clients_connected` (and `/metrics`, `$SYS`, which read
/// it) and the admin API's client list include them; `clients_parked` says how many are
/// parked; an admin kick reaches a parked client (0x98).
#[tokio::test]
async fn parked_clients_are_counted_listed_and_kickable() {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    const TOKEN: &str = "parking-test-token-0123456789abcdef";
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tern-parking-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let broker = TestBroker::start_with(|c| {
        c.limits.park_idle_after_ms = PARK_AFTER_MS;
        c.admin.enabled = true;
        c.admin.token_file = token.clone();
    })
    .await;
    let http = broker.running.http_addr.expect("http");
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = client(&broker, V5, &format!("counted-{i}"), 0).await;
        c.subscribe(&format!("c/{i}"), QoS::AtMostOnce).await;
        clients.push(c);
    }
    until_parked(broker.broker(), 3).await;
    assert_eq!(connected(broker.broker()), 3);
    let list = admin_get(http, TOKEN, "/clients").await;
    assert_eq!(list["total"], 3, "{list}");
    let metrics = http_client::send(
        Method::GET,
        &format!("http://{http}/metrics"),
        &[],
        None,
        WAIT,
    )
    .await
    .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("clients_connected 3"), "{text}");
    assert!(text.contains("clients_parked 3"), "{text}");

    let kicked = admin_call(http, TOKEN, Method::POST, "/clients/counted-1/kick").await;
    assert_eq!(kicked, 200);
    let disconnect = tokio::time::timeout(WAIT, clients[1].expect_disconnect())
        .await
        .expect("closed in time");
    assert_eq!(disconnect.map(|d| d.reason_code.0), Some(0x98));
    until_parked(broker.broker(), 2).await;
    let started = Instant::now();
    while connected(broker.broker()) != 2 {
        assert!(
            started.elapsed() < WAIT,
            "the kicked client is still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn admin_call(http: SocketAddr, token: &str, method: Method, path: &str) -> u16 {
    let authorization = format!("Bearer {token}");
    let answer = http_client::send(
        method,
        &format!("http://{http}/api/v1{path}"),
        &[("authorization", authorization.as_str())],
        None,
        WAIT,
    )
    .await
    .expect("request");
    answer.status.as_u16()
}

async fn admin_get(http: SocketAddr, token: &str, path: &str) -> serde_json::Value {
    let authorization = format!("Bearer {token}");
    let answer = http_client::send(
        Method::GET,
        &format!("http://{http}/api/v1{path}"),
        &[("authorization", authorization.as_str())],
        None,
        WAIT,
    )
    .await
    .expect("request");
    serde_json::from_slice(&answer.body).expect("JSON")
}

/// A client that keeps talking is never parked: parking is for idle connections only.
#[tokio::test]
async fn a_busy_connection_is_not_parked() {
    let broker = start().await;
    let mut busy = client(&broker, V5, "busy", 0).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(6 * PARK_AFTER_MS) {
        busy.ping().await;
        assert_eq!(parked(broker.broker()), 0);
        tokio::time::sleep(Duration::from_millis(PARK_AFTER_MS / 4)).await;
    }
    until_parked(broker.broker(), 1).await;
    broker.running.stop().await;
}

/// `park_idle_after_ms = 0` turns parking off.
#[tokio::test]
async fn zero_never_parks() {
    let broker = TestBroker::start_with(|c| c.limits.park_idle_after_ms = 0).await;
    let mut idle = client(&broker, V5, "never", 0).await;
    tokio::time::sleep(Duration::from_millis(5 * PARK_AFTER_MS)).await;
    assert_eq!(parked(broker.broker()), 0);
    idle.ping().await;
    broker.running.stop().await;
}

/// Real clients: a parked `mosquitto_sub` gets what `mosquitto_pub` publishes.
#[tokio::test]
async fn a_parked_mosquitto_sub_gets_a_mosquitto_pub_message() {
    if !require_tool("mosquitto_sub") || !require_tool("mosquitto_pub") {
        return;
    }
    let broker = start().await;
    let port = broker.addr.port().to_string();
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "real/#",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .args(["-i", "real-sub", "-q", "1", "-V", "mqttv5"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub");
    until_parked(broker.broker(), 1).await;
    let status = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "real/x",
            "-m",
            "parked-hello",
        ])
        .args(["-q", "1", "-V", "mqttv5"])
        .status()
        .await
        .expect("mosquitto_pub");
    assert!(status.success());
    let out = tokio::time::timeout(WAIT, sub.wait_with_output())
        .await
        .expect("mosquitto_sub in time")
        .expect("output");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "parked-hello");
    broker.running.stop().await;
}

/// A parked client whose socket closes without DISCONNECT is noticed at once (end of
/// stream wakes it): [MQTT-3.1.2-8] its will is published, and it is no longer counted.
#[tokio::test]
async fn a_parked_client_that_goes_away_is_noticed_at_once() {
    let broker = start().await;
    let mut watcher = client(&broker, V3, "gone-watcher", 0).await;
    watcher.subscribe("will/#", QoS::AtMostOnce).await;
    let mut leaving = broker.raw(V3).await;
    let mut connect = Connect::new(V3, "leaving");
    connect.keep_alive_secs = 0;
    connect.will = Some(LastWill {
        topic: ByteStr::from("will/leaving"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    assert_eq!(leaving.connect(connect).await.code.0, 0);
    until_parked(broker.broker(), 2).await;
    let closed = Instant::now();
    drop(leaving);
    let will = watcher.expect_publish().await;
    assert!(closed.elapsed() < AT_ONCE, "took {:?}", closed.elapsed());
    assert_eq!(will.topic(), "will/leaving");
    assert_eq!(connected(broker.broker()), 1);
    broker.running.stop().await;
}
