//! Operating MQTT bridges: a reload (SIGHUP) leaves unchanged bridges alone and
//! restarts, starts and stops the others; the bridge's queue survives a restart of Tern
//! with persistence on; state and counters in `$SYS/broker/bridge/<name>/...` and
//! `/api/stats`.

mod mqtt_bridge_support;

use std::time::Duration;

use mqtt_bridge_support::*;
use tern_broker::config::mqtt_bridges::{BridgeProtocol, Direction};
use tern_broker::metrics::bridge_links::{LinkState, LinkStatus};
use tern_codec::{ProtocolVersion, QoS};
use tern_tests::TestBroker;

/// A `[[mqtt_bridges]]` table as the `bridge()` helper builds it, in TOML.
fn bridge_toml(name: &str, remote: &str, pattern: &str) -> String {
    format!(
        r#"
[[mqtt_bridges]]
name = "{name}"
remotes = ["{remote}"]
protocol = "5.0"
client_id = "bridge-{name}"
reconnect_min_ms = 50
reconnect_max_ms = 500
connect_timeout_ms = 3000
[[mqtt_bridges.topics]]
pattern = "{pattern}"
direction = "out"
qos = 1
"#
    )
}

#[tokio::test]
async fn reload_keeps_unchanged_bridges_and_restarts_changed_ones() {
    if !mosquitto_available() {
        return;
    }
    let mosquitto = Mosquitto::start("reload", "").await;
    let remote = mosquitto.remote();
    let dir = temp_dir("reload");
    let path = dir.join("tern.toml");
    let listeners = "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n";
    std::fs::write(
        &path,
        format!("{listeners}{}", bridge_toml("keep", &remote, "a/#")),
    )
    .expect("write");
    let initial = tern_broker::Config::load(Some(&path)).expect("config");
    let tern = TestBroker::start_with(|c| c.mqtt_bridges = initial.mqtt_bridges.clone()).await;
    let links = tern.broker().bridge_links();
    let keep = links.all()[0].clone();
    wait_for("keep up", || keep.state() == LinkState::Up).await;
    let reload = |text: String| {
        std::fs::write(&path, format!("{listeners}{text}")).expect("write");
        tern_broker::reload::reload(tern.bridges(), Some(&path), &|_| Ok(())).expect("reload")
    };
    // Unchanged + a new one: the first is not touched.
    let report = reload(format!(
        "{}{}",
        bridge_toml("keep", &remote, "a/#"),
        bridge_toml("added", &remote, "b/#")
    ));
    assert!(report.mqtt_bridges.restarted.is_empty(), "{report:?}");
    assert_eq!(report.mqtt_bridges.started, vec!["added".to_string()]);
    wait_for("added up", || {
        links
            .all()
            .iter()
            .any(|l| l.name == "added" && l.state() == LinkState::Up)
    })
    .await;
    assert_eq!(LinkStatus::get(&keep.counters.connects), 1);
    assert_eq!(LinkStatus::get(&keep.counters.disconnects), 0);
    assert_eq!(keep.state(), LinkState::Up);
    // Changed + removed: restarted (the counters go on) and stopped.
    let report = reload(bridge_toml("keep", &remote, "c/#"));
    assert_eq!(report.mqtt_bridges.restarted, vec!["keep".to_string()]);
    assert_eq!(report.mqtt_bridges.stopped, vec!["added".to_string()]);
    wait_for("keep reconnected", || {
        LinkStatus::get(&keep.counters.connects) == 2 && keep.state() == LinkState::Up
    })
    .await;
    assert!(links.all().iter().all(|l| l.name != "added"));
    let mut sub = client(mosquitto.addr(), ProtocolVersion::V5, "sub").await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    let mut publisher = tern.client(ProtocolVersion::V5, "pub").await;
    publisher
        .publish("a/old", b"1", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("c/new", b"2", QoS::AtLeastOnce, false)
        .await;
    let topics: Vec<String> = drain(&mut sub, Duration::from_millis(700))
        .await
        .iter()
        .map(|p| p.topic().to_string())
        .collect();
    // The old rule's subscription left the bridge's session with the old definition.
    assert_eq!(topics, vec!["c/new".to_string()]);
    // A bad bridge definition is refused and changes nothing.
    std::fs::write(
        &path,
        format!("{listeners}{}", bridge_toml("keep", "nowhere", "c/#")),
    )
    .expect("write");
    let error =
        tern_broker::reload::reload(tern.bridges(), Some(&path), &|_| Ok(())).expect_err("refused");
    let error = error.to_string();
    assert!(
        error.contains("mqtt_bridges `keep`") && error.contains("remotes"),
        "{error}"
    );
    assert_eq!(keep.state(), LinkState::Up);
    let _ = std::fs::remove_dir_all(&dir);
    tern.running.stop().await;
}

#[tokio::test]
async fn queue_survives_a_restart_with_persistence() {
    if !mosquitto_available() {
        return;
    }
    let dir = temp_dir("persist");
    let port = free_port();
    let remote = format!("127.0.0.1:{port}");
    let start = |dir: std::path::PathBuf, remote: String| {
        TestBroker::start_with(move |c| {
            c.persistence.enabled = true;
            c.persistence.dir = dir;
            c.mqtt_bridges = vec![bridge(
                "cloud",
                &remote,
                BridgeProtocol::V5,
                vec![rule("q/#", Direction::Out, 1, "", "")],
            )];
        })
    };
    // The remote is down: the messages queue in the bridge's local session.
    let tern = start(dir.join("data"), remote.clone()).await;
    let mut publisher = tern.client(ProtocolVersion::V5, "pub").await;
    for n in 1..=20u32 {
        publisher
            .publish("q/n", n.to_string().as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    let link = tern.broker().bridge_links().all()[0].clone();
    wait_for("the queue", || LinkStatus::get(&link.queued) > 0).await;
    drop(publisher);
    tern.running.stop().await;
    // The remote comes up (a subscriber waiting on it), then Tern: every message, in
    // order, from the queue Tern kept on disk.
    let mosquitto = Mosquitto::start_on("persist", port, "").await;
    let mut sub = client(mosquitto.addr(), ProtocolVersion::V5, "sub").await;
    sub.subscribe("q/#", QoS::AtLeastOnce).await;
    let tern = start(dir.join("data"), remote.clone()).await;
    let mut got: Vec<u32> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 20 && tokio::time::Instant::now() < deadline {
        if let Some(p) = next_publish(&mut sub, Duration::from_millis(500)).await {
            got.extend(
                std::str::from_utf8(p.payload())
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok()),
            );
        }
    }
    got.extend(
        drain(&mut sub, Duration::from_millis(500))
            .await
            .iter()
            .filter_map(|p| std::str::from_utf8(p.payload()).ok()?.parse::<u32>().ok()),
    );
    assert_eq!(got, (1..=20).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&dir);
    tern.running.stop().await;
}

#[tokio::test]
async fn state_and_counters_in_sys_and_api_stats() {
    let remote = TestBroker::start().await;
    let addr = remote.addr.to_string();
    let tern = TestBroker::start_with(|c| {
        c.http.enabled = true;
        c.mqtt_bridges = vec![bridge(
            "peer",
            &addr,
            BridgeProtocol::V5,
            vec![rule("s/#", Direction::Out, 1, "", "")],
        )];
    })
    .await;
    let link = tern.broker().bridge_links().all()[0].clone();
    wait_for("up", || link.state() == LinkState::Up).await;
    let mut publisher = tern.client(ProtocolVersion::V5, "pub").await;
    publisher
        .publish("s/1", b"x", QoS::AtLeastOnce, false)
        .await;
    wait_for("forwarded", || {
        LinkStatus::get(&link.counters.messages_out) == 1
    })
    .await;
    let mut sys = tern.client(ProtocolVersion::V5, "sys").await;
    sys.subscribe("$SYS/broker/bridge/#", QoS::AtMostOnce).await;
    let mut scratch = tern_broker::router::RouteScratch::default();
    tern_broker::sys::publish_stats(tern.broker(), &mut scratch, tokio::time::Instant::now());
    let stats: Vec<(String, String)> = drain(&mut sys, Duration::from_millis(300))
        .await
        .iter()
        .map(|p| {
            let payload = String::from_utf8_lossy(p.payload()).to_string();
            (p.topic().to_string(), payload)
        })
        .collect();
    let value = |topic: &str| {
        stats
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        value("$SYS/broker/bridge/peer/state").as_deref(),
        Some("up")
    );
    assert_eq!(
        value("$SYS/broker/bridge/peer/messages/out").as_deref(),
        Some("1")
    );
    assert_eq!(value("$SYS/broker/bridge/peer/remote"), Some(addr.clone()));
    let http = tern.running.http_addr.expect("http");
    let body = http_get(http, "/api/stats").await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    let bridge = &json["mqtt_bridges"][0];
    assert_eq!(bridge["name"], "peer");
    assert_eq!(bridge["state"], "up");
    assert_eq!(bridge["messages_out"], 1);
    tern.running.stop().await;
    remote.running.stop().await;
}

/// A plain GET; the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    // Chunked or not: the JSON object is what lies between the outer braces.
    match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => body[a..=b].to_string(),
        _ => body,
    }
}

/// Messages from the remote are published here as the bridge's local user
/// (`local_username`), so the ACL decides: a topic the bridge may write arrives, one it
/// may not is refused by the broker (PUBACK 0x87 Not authorized; the bridge counts
/// it as dropped and says so in its last error) and the remote is still acknowledged.
#[tokio::test]
async fn messages_from_the_remote_are_published_under_the_bridges_acl_identity() {
    if !mosquitto_available() {
        return;
    }
    let mosquitto = Mosquitto::start("acl", "").await;
    let remote = mosquitto.remote();
    let dir = temp_dir("acl");
    let acl = dir.join("acl");
    // Anonymous test clients read everything; the bridge's user writes edge/allowed only.
    std::fs::write(
        &acl,
        "topic read #\nuser cloud-bridge\ntopic write edge/allowed/#\n",
    )
    .expect("acl");
    let tern = TestBroker::start_with(|c| {
        c.auth.acl_file = acl.clone();
        let mut b = bridge(
            "cloud",
            &remote,
            BridgeProtocol::V5,
            vec![rule("#", Direction::In, 1, "edge/", "")],
        );
        b.local_username = "cloud-bridge".into();
        c.mqtt_bridges = vec![b];
    })
    .await;
    let link = tern.broker().bridge_links().all()[0].clone();
    wait_for("up", || link.state() == LinkState::Up).await;
    let mut sub = tern.client(ProtocolVersion::V5, "sub").await;
    sub.subscribe("edge/#", QoS::AtLeastOnce).await;
    let mut publisher = client(mosquitto.addr(), ProtocolVersion::V5, "pub").await;
    publisher
        .publish("denied/x", b"no", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("allowed/x", b"yes", QoS::AtLeastOnce, false)
        .await;
    let topics: Vec<String> = drain(&mut sub, Duration::from_millis(800))
        .await
        .iter()
        .map(|p| p.topic().to_string())
        .collect();
    assert_eq!(topics, vec!["edge/allowed/x".to_string()]);
    assert_eq!(LinkStatus::get(&link.counters.messages_dropped), 1);
    let error = link.last_error().expect("error");
    assert!(error.contains("0x87"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
    tern.running.stop().await;
}

/// A bridge whose remote is down does not hold local traffic back for long: its queue
/// fills (the local session's window and queue), the broker's back-pressure waits for it
/// at most `backpressure_max_wait_ms` once, then marks it slow, and local publishers and
/// subscribers go on.
#[tokio::test]
async fn a_bridge_with_its_remote_down_does_not_stall_local_traffic() {
    let dead = format!("127.0.0.1:{}", free_port());
    let tern = TestBroker::start_with(|c| {
        c.mqtt_bridges = vec![bridge(
            "down",
            &dead,
            BridgeProtocol::V5,
            vec![rule("busy/#", Direction::Out, 1, "", "")],
        )];
    })
    .await;
    let link = tern.broker().bridge_links().all()[0].clone();
    let mut sub = tern.client(ProtocolVersion::V5, "sub").await;
    sub.subscribe("busy/#", QoS::AtMostOnce).await;
    let mut publisher = tern.client(ProtocolVersion::V5, "pub").await;
    let count = 3000u32;
    let started = std::time::Instant::now();
    for n in 0..count {
        publisher
            .publish("busy/n", n.to_string().as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    let elapsed = started.elapsed();
    let got = drain(&mut sub, Duration::from_millis(500)).await.len() as u32;
    assert_eq!(got, count, "the local subscriber got everything");
    assert!(
        elapsed < Duration::from_secs(10),
        "{count} QoS 1 publishes took {elapsed:?} with the bridge's remote down"
    );
    // The bridge holds its window; the rest waits in its session queue.
    assert!(LinkStatus::get(&link.queued) >= 1);
    println!("{count} QoS 1 publishes with the bridge's remote down: {elapsed:?}");
    tern.running.stop().await;
}

/// The bridge's queue survives `kill -9` of Tern (persistence on, `durability = "sync"`):
/// messages acknowledged to the local publisher while the remote was down all reach the
/// remote, in order, once Tern is back.
#[tokio::test]
async fn queue_survives_kill_9_with_persistence() {
    use tern_tests::crash_checker::{BrokerConfig, BrokerProcess, Stop};
    if !mosquitto_available() {
        return;
    }
    let dir = temp_dir("kill9");
    let port = free_port();
    let mut config = BrokerConfig::new(&dir.join("data"), "sync");
    config.extra_toml = format!(
        r#"
[[mqtt_bridges]]
name = "cloud"
remotes = ["127.0.0.1:{port}"]
client_id = "bridge-cloud"
reconnect_min_ms = 50
reconnect_max_ms = 200
[[mqtt_bridges.topics]]
pattern = "k/#"
direction = "out"
qos = 1
"#
    );
    let mut tern = BrokerProcess::start(&config);
    let mut publisher = client(tern.addr(), ProtocolVersion::V5, "pub").await;
    for n in 1..=20u32 {
        publisher
            .publish("k/n", n.to_string().as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    drop(publisher);
    tern.stop(Stop::Kill);
    let mosquitto = Mosquitto::start_on("kill9", port, "").await;
    let mut sub = client(mosquitto.addr(), ProtocolVersion::V5, "sub").await;
    sub.subscribe("k/#", QoS::AtLeastOnce).await;
    tern.restart();
    // Until all 20 came (a loaded machine may take seconds to recover and reconnect),
    // then a short quiet time for duplicates.
    let mut got: Vec<u32> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 20 && tokio::time::Instant::now() < deadline {
        if let Some(p) = next_publish(&mut sub, Duration::from_millis(500)).await {
            got.extend(
                std::str::from_utf8(p.payload())
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok()),
            );
        }
    }
    got.extend(
        drain(&mut sub, Duration::from_millis(500))
            .await
            .iter()
            .filter_map(|p| std::str::from_utf8(p.payload()).ok()?.parse::<u32>().ok()),
    );
    assert_eq!(got, (1..=20).collect::<Vec<_>>(), "{}", tern.log_tail(30));
    tern.stop(Stop::Term);
    drop(mosquitto);
    let _ = std::fs::remove_dir_all(&dir);
}
