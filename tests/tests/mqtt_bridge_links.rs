//! MQTT bridges when the link is not kind: the remote killed (SIGKILL) and restarted while
//! QoS 1 messages flow, connections cut under QoS 2, failover to the next remote, TLS with
//! a test CA (and a client certificate), wrong credentials, reload.
//!
//! Spec statements checked (MQTT 5.0):
//! - [MQTT-4.4.0-1]: on reconnect with Clean Start 0 and a session, the client resends
//!   unacknowledged PUBLISH packets (DUP = 1) and PUBREL packets: the cut tests.
//! - [MQTT-4.6.0-1]: resent PUBLISH packets go in the order first sent, and
//!   [MQTT-4.6.0-5]: a server sends the messages of one topic and QoS in the order
//!   received: every test here checks the order at the subscriber across the hops.
//! - [MQTT-4.3.3-6], [MQTT-4.3.3-10]: no PUBLISH resent after PUBREL, and a resent
//!   PUBLISH is not delivered onward twice: QoS 2 exactly once across the cuts.

mod mqtt_bridge_support;

use std::sync::Arc;
use std::time::Duration;

use mqtt_bridge_support::*;
use tern_broker::config::mqtt_bridges::{BridgeProtocol, BridgeTls, Direction, Secret};
use tern_broker::metrics::bridge_links::{LinkState, LinkStatus};
use tern_codec::{ProtocolVersion, QoS};
use tern_tests::{Client, TestBroker};

fn link(tern: &TestBroker) -> Arc<LinkStatus> {
    tern.broker().bridge_links().all()[0].clone()
}

async fn up(tern: &TestBroker) {
    let link = link(tern);
    wait_for("the bridge to come up", || link.state() == LinkState::Up).await;
}

/// The sequence numbers in `payloads` (decimal text).
fn numbers(client_msgs: &[tern_codec::Publish]) -> Vec<u32> {
    client_msgs
        .iter()
        .map(|p| {
            std::str::from_utf8(p.payload())
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u32::MAX)
        })
        .collect()
}

/// Publishes 1..=count at `qos` on `tern`, one every `gap`, in a task.
fn publish_sequence(
    publisher: Client,
    qos: QoS,
    count: u32,
    gap: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut publisher = publisher;
    tokio::spawn(async move {
        for n in 1..=count {
            publisher
                .publish("seq/n", n.to_string().as_bytes(), qos, false)
                .await;
            tokio::time::sleep(gap).await;
        }
    })
}

/// Collects until `count` distinct numbers arrived (or `limit` passes).
async fn collect(sub: &mut Client, count: u32, limit: Duration) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut distinct = std::collections::BTreeSet::new();
    while (distinct.len() as u32) < count && tokio::time::Instant::now() < deadline {
        if let Some(p) = next_publish(sub, Duration::from_millis(200)).await {
            let n = numbers(std::slice::from_ref(&p))[0];
            distinct.insert(n);
            got.push(n);
        }
    }
    got
}

/// Each number of 1..=count first seen in order, none missing.
fn assert_all_in_order(got: &[u32], count: u32) {
    let mut seen = std::collections::BTreeSet::new();
    let firsts: Vec<u32> = got.iter().copied().filter(|n| seen.insert(*n)).collect();
    let expected: Vec<u32> = (1..=count).collect();
    assert_eq!(firsts, expected, "every message, in order (got {got:?})");
}

async fn subscriber(addr: std::net::SocketAddr, qos: QoS) -> Client {
    let mut sub = client(addr, ProtocolVersion::V5, "seq-sub").await;
    sub.subscribe("seq/#", qos).await;
    sub
}

#[tokio::test]
async fn remote_killed_and_restarted_while_qos1_flows() {
    if !mosquitto_available() {
        return;
    }
    let mut mosquitto = Mosquitto::start("kill", "").await;
    let remote = mosquitto.remote();
    let tern = TestBroker::start_with(|c| {
        let mut b = bridge(
            "cloud",
            &remote,
            BridgeProtocol::V5,
            vec![rule("seq/#", Direction::Out, 1, "", "")],
        );
        // The subscriber on the restarted Mosquitto (which kept nothing) is back first.
        b.reconnect_min_ms = 800;
        b.reconnect_max_ms = 1000;
        c.mqtt_bridges = vec![b];
    })
    .await;
    up(&tern).await;
    let count = 300;
    let mut sub = subscriber(mosquitto.addr(), QoS::AtLeastOnce).await;
    let publisher = tern.client(ProtocolVersion::V5, "seq-pub").await;
    let flow = publish_sequence(publisher, QoS::AtLeastOnce, count, Duration::from_millis(5));
    let mut got = collect(&mut sub, 80, Duration::from_secs(10)).await;
    mosquitto.kill();
    // The rest of the flow queues in the bridge meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    mosquitto.restart().await;
    let mut sub = subscriber(mosquitto.addr(), QoS::AtLeastOnce).await;
    got.extend(collect(&mut sub, count, Duration::from_secs(20)).await);
    flow.await.expect("publisher");
    got.extend(
        drain(&mut sub, Duration::from_millis(500))
            .await
            .iter()
            .map(|p| numbers(std::slice::from_ref(p))[0]),
    );
    assert_all_in_order(&got, count);
    let link = link(&tern);
    assert!(LinkStatus::get(&link.counters.disconnects) >= 1);
    assert!(LinkStatus::get(&link.counters.connects) >= 2);
    tern.running.stop().await;
}

async fn cut_under_qos2(protocol: BridgeProtocol) {
    if !mosquitto_available() {
        return;
    }
    let mosquitto = Mosquitto::start("cut", "").await;
    let proxy = Proxy::start(mosquitto.addr()).await;
    let remote = proxy.addr.to_string();
    let tern = TestBroker::start_with(|c| {
        c.mqtt_bridges = vec![bridge(
            "cloud",
            &remote,
            protocol,
            vec![rule("seq/#", Direction::Out, 2, "", "")],
        )];
    })
    .await;
    up(&tern).await;
    let count = 200;
    let mut sub = subscriber(mosquitto.addr(), QoS::ExactlyOnce).await;
    let publisher = tern.client(ProtocolVersion::V5, "seq-pub").await;
    let flow = publish_sequence(publisher, QoS::ExactlyOnce, count, Duration::from_millis(3));
    let cutter = tokio::spawn(async move {
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            proxy.cut();
        }
    });
    let mut got = collect(&mut sub, count, Duration::from_secs(20)).await;
    flow.await.expect("publisher");
    cutter.await.expect("cutter");
    got.extend(numbers(&drain(&mut sub, Duration::from_millis(700)).await));
    // QoS 2 end to end and the remote kept the bridge's session: exactly once, in order.
    assert_eq!(got, (1..=count).collect::<Vec<_>>(), "{protocol:?}");
    assert!(LinkStatus::get(&link(&tern).counters.disconnects) >= 1);
    tern.running.stop().await;
}

#[tokio::test]
async fn connections_cut_under_qos2_v5_exactly_once_in_order() {
    cut_under_qos2(BridgeProtocol::V5).await;
}

#[tokio::test]
async fn connections_cut_under_qos2_v311_exactly_once_in_order() {
    cut_under_qos2(BridgeProtocol::V311).await;
}

#[tokio::test]
async fn remotes_fail_over_in_order() {
    if !mosquitto_available() {
        return;
    }
    let mosquitto = Mosquitto::start("failover", "").await;
    // Nothing listens on the first remote.
    let dead = format!("127.0.0.1:{}", free_port());
    let remote = mosquitto.remote();
    let tern = TestBroker::start_with(|c| {
        let mut b = bridge(
            "cloud",
            &dead,
            BridgeProtocol::V5,
            vec![rule("f/#", Direction::Out, 1, "", "")],
        );
        b.remotes.push(remote.clone());
        c.mqtt_bridges = vec![b];
    })
    .await;
    up(&tern).await;
    let link = link(&tern);
    assert_eq!(link.remote(), remote);
    assert!(LinkStatus::get(&link.counters.connect_failures) >= 1);
    let mut sub = client(mosquitto.addr(), ProtocolVersion::V5, "sub").await;
    sub.subscribe("f/#", QoS::AtLeastOnce).await;
    let mut publisher = tern.client(ProtocolVersion::V5, "pub").await;
    publisher
        .publish("f/1", b"x", QoS::AtLeastOnce, false)
        .await;
    assert!(next_publish(&mut sub, Duration::from_secs(2))
        .await
        .is_some());
    tern.running.stop().await;
}

#[tokio::test]
async fn wrong_credentials_are_the_last_error_and_a_metric() {
    if !mosquitto_available() {
        return;
    }
    let dir = temp_dir("creds");
    let passwd = dir.join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["edge", "right-password"])
        .status();
    if !status.is_ok_and(|s| s.success()) {
        tern_tests::skip_unless_ci("mosquitto_passwd failed or is missing");
        return;
    }
    let extra = format!("password_file {}\nallow_anonymous false", passwd.display());
    let mosquitto = Mosquitto::start("creds", &extra).await;
    let remote = mosquitto.remote();
    let tern = TestBroker::start_with(|c| {
        for (name, password) in [("bad", "wrong-password"), ("good", "right-password")] {
            let mut b = bridge(
                name,
                &remote,
                BridgeProtocol::V5,
                vec![rule("c/#", Direction::Out, 1, "", "")],
            );
            b.username = Some("edge".into());
            b.password = Some(Secret(password.into()));
            c.mqtt_bridges.push(b);
        }
    })
    .await;
    let links = tern.broker().bridge_links().all();
    let (bad, good) = (links[0].clone(), links[1].clone());
    wait_for("the good bridge up", || good.state() == LinkState::Up).await;
    wait_for("the bad bridge's error", || {
        LinkStatus::get(&bad.counters.connect_failures) >= 1
    })
    .await;
    assert_ne!(bad.state(), LinkState::Up);
    let error = bad.last_error().expect("last error");
    // Mosquitto answers a wrong password with 0x87 (5.0) / 5 (3.1.1), "not authorized".
    assert!(
        error.contains("not authorized") || error.contains("bad user name or password"),
        "{error}"
    );
    assert!(
        !error.contains("wrong-password"),
        "the password is never shown"
    );
    // The broker is unaffected.
    let _client = tern.client(ProtocolVersion::V5, "still-serving").await;
    let metrics = tern_broker::http::metrics::render(tern.broker()).expect("render");
    assert!(
        metrics.contains("tern_mqtt_bridge_connect_failures_total{bridge=\"bad\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tern_mqtt_bridge_up{bridge=\"good\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("wrong-password"));
    let _ = std::fs::remove_dir_all(&dir);
    tern.running.stop().await;
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM
/// files in `dir`.
fn pki(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::new()).expect("ca params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Tern Bridge Test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let mut server_params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server = server_params
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("client key");
    let mut client_params = CertificateParams::new(Vec::new()).expect("client params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "tern-edge");
    let client = client_params
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    let write = |file: &str, text: String| std::fs::write(dir.join(file), text).expect("pem");
    write("ca.crt", ca.pem());
    write("server.crt", server.pem());
    write("server.key", server_key.serialize_pem());
    write("client.crt", client.pem());
    write("client.key", client_key.serialize_pem());
}

#[tokio::test]
async fn tls_to_a_remote_with_a_test_ca_and_a_client_certificate() {
    if !mosquitto_available() {
        return;
    }
    let certs = temp_dir("pki");
    pki(&certs);
    let other = temp_dir("pki-other");
    pki(&other);
    let path = |f: &str| certs.join(f).display().to_string();
    let tls_listener = free_port();
    let extra = format!(
        "listener {tls_listener} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
         require_certificate true",
        path("ca.crt"),
        path("server.crt"),
        path("server.key")
    );
    let mosquitto = Mosquitto::start("tls", &extra).await;
    let remote = format!("127.0.0.1:{tls_listener}");
    let tls = |ca: &std::path::Path| BridgeTls {
        ca_file: Some(ca.join("ca.crt")),
        cert_file: Some(certs.join("client.crt")),
        key_file: Some(certs.join("client.key")),
        server_name: Some("localhost".into()),
        insecure: false,
    };
    let tern = TestBroker::start_with(|c| {
        let mut good = bridge(
            "tls",
            &remote,
            BridgeProtocol::V5,
            vec![rule("t/#", Direction::Out, 1, "", "")],
        );
        good.tls = Some(tls(&certs));
        // Trusts another CA: the remote's certificate is refused.
        let mut untrusted = good.clone();
        untrusted.name = "untrusted".into();
        untrusted.client_id = "bridge-untrusted".into();
        untrusted.local_client_id = "tern-bridge-untrusted".into();
        untrusted.tls = Some(tls(&other));
        c.mqtt_bridges = vec![good, untrusted];
    })
    .await;
    let links = tern.broker().bridge_links().all();
    let (good, untrusted) = (links[0].clone(), links[1].clone());
    wait_for("the TLS bridge up", || good.state() == LinkState::Up).await;
    wait_for("the untrusted bridge's error", || {
        LinkStatus::get(&untrusted.counters.connect_failures) >= 1
    })
    .await;
    let error = untrusted.last_error().expect("error");
    assert!(error.contains("tls handshake"), "{error}");
    let mut sub = client(mosquitto.addr(), ProtocolVersion::V5, "sub").await;
    sub.subscribe("t/#", QoS::AtLeastOnce).await;
    let mut publisher = tern.client(ProtocolVersion::V5, "pub").await;
    publisher
        .publish("t/1", b"secret", QoS::AtLeastOnce, false)
        .await;
    let got = next_publish(&mut sub, Duration::from_secs(2)).await;
    assert_eq!(got.map(|p| p.payload().to_vec()), Some(b"secret".to_vec()));
    let _ = std::fs::remove_dir_all(&certs);
    let _ = std::fs::remove_dir_all(&other);
    tern.running.stop().await;
}

/// A remote that answers CONNECT with garbage (and one that accepts and says nothing):
/// only that bridge is affected; its last error says why, it keeps retrying, and the
/// broker serves its clients.
#[tokio::test]
async fn a_remote_sending_garbage_affects_only_its_bridge() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let garbage_addr = garbage.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = garbage.accept().await {
            let mut buf = [0u8; 256];
            let _ = socket.read(&mut buf).await;
            // Packet type 0 is reserved: malformed.
            let _ = socket.write_all(&[0x00, 0x02, 0xff, 0xff]).await;
        }
    });
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let tern = TestBroker::start_with(|c| {
        for (name, remote) in [("garbage", &garbage_addr), ("silent", &silent_addr)] {
            let mut b = bridge(
                name,
                remote,
                BridgeProtocol::V5,
                vec![rule("g/#", Direction::Both, 1, "", "")],
            );
            b.connect_timeout_ms = 300;
            c.mqtt_bridges.push(b);
        }
    })
    .await;
    let links = tern.broker().bridge_links().all();
    wait_for("two failures each", || {
        links
            .iter()
            .all(|l| LinkStatus::get(&l.counters.connect_failures) >= 2)
    })
    .await;
    let garbage_error = links[0].last_error().expect("error");
    assert!(garbage_error.contains("malformed"), "{garbage_error}");
    let silent_error = links[1].last_error().expect("error");
    assert!(silent_error.contains("no CONNACK"), "{silent_error}");
    let mut a = tern.client(ProtocolVersion::V5, "a").await;
    a.subscribe("g/#", QoS::AtLeastOnce).await;
    let mut b = tern.client(ProtocolVersion::V5, "b").await;
    b.publish("g/1", b"local", QoS::AtLeastOnce, false).await;
    assert!(next_publish(&mut a, Duration::from_secs(2)).await.is_some());
    tern.running.stop().await;
}

/// A link that goes silent without closing (a dead NAT entry, a cable pulled far away):
/// keep alive notices it and the bridge reconnects. The bridge sends PINGREQ every keep
/// alive ([MQTT-3.1.2-20]) and, as the spec suggests for a client that gets no PINGRESP
/// within a reasonable time (3.1.2.10), closes the link.
#[tokio::test]
async fn a_silent_link_is_noticed_by_keep_alive() {
    if !mosquitto_available() {
        return;
    }
    let mosquitto = Mosquitto::start("keepalive", "").await;
    let proxy = Proxy::start(mosquitto.addr()).await;
    let remote = proxy.addr.to_string();
    let tern = TestBroker::start_with(|c| {
        let mut b = bridge(
            "cloud",
            &remote,
            BridgeProtocol::V5,
            vec![rule("k/#", Direction::Out, 1, "", "")],
        );
        b.keep_alive_secs = 1;
        c.mqtt_bridges = vec![b];
    })
    .await;
    up(&tern).await;
    let link = link(&tern);
    proxy.freeze();
    wait_for("the link dropped by keep alive", || {
        LinkStatus::get(&link.counters.disconnects) >= 1
    })
    .await;
    let error = link.last_error().expect("error");
    assert!(error.contains("PINGRESP"), "{error}");
    wait_for("reconnected", || {
        LinkStatus::get(&link.counters.connects) >= 2 && link.state() == LinkState::Up
    })
    .await;
    tern.running.stop().await;
}

/// `clean_start = true`: the remote forgets the bridge's session on every connect
/// (Session Present 0), so what was in flight is sent again as new; QoS 1 still loses
/// nothing and keeps the order (duplicates are allowed at QoS 1).
#[tokio::test]
async fn clean_start_bridge_loses_nothing_at_qos1_across_cuts() {
    if !mosquitto_available() {
        return;
    }
    let mosquitto = Mosquitto::start("clean", "").await;
    let proxy = Proxy::start(mosquitto.addr()).await;
    let remote = proxy.addr.to_string();
    let tern = TestBroker::start_with(|c| {
        let mut b = bridge(
            "cloud",
            &remote,
            BridgeProtocol::V5,
            vec![rule("seq/#", Direction::Out, 1, "", "")],
        );
        b.clean_start = true;
        b.session_expiry_secs = 0;
        c.mqtt_bridges = vec![b];
    })
    .await;
    up(&tern).await;
    let count = 200;
    let mut sub = subscriber(mosquitto.addr(), QoS::AtLeastOnce).await;
    let publisher = tern.client(ProtocolVersion::V5, "seq-pub").await;
    let flow = publish_sequence(publisher, QoS::AtLeastOnce, count, Duration::from_millis(3));
    let cutter = tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            proxy.cut();
        }
    });
    let mut got = collect(&mut sub, count, Duration::from_secs(20)).await;
    flow.await.expect("publisher");
    cutter.await.expect("cutter");
    got.extend(numbers(&drain(&mut sub, Duration::from_millis(500)).await));
    assert_all_in_order(&got, count);
    assert!(LinkStatus::get(&link(&tern).counters.connects) >= 2);
    tern.running.stop().await;
}
