//! Support for the MQTT bridge tests: a real Mosquitto started on 127.0.0.1 on a free port
//! (its configuration in a temp dir of its own), a TCP proxy that can cut every
//! connection through it, a bridge definition builder, and helpers to collect messages.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tern_broker::config::mqtt_bridges::{BridgeProtocol, Direction, MqttBridgeConfig, TopicRule};
use tern_codec::{Connect, Packet, ProtocolVersion, Publish, QoS};
use tern_tests::{skip_unless_ci, Client};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Where Mosquitto is installed.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A temp dir unique to this test: the process id and a counter (the tests of one binary
/// run in parallel in one process).
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "tern-mqtt-bridge-{name}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Whether Mosquitto is there; prints why the test is skipped (fails under CI=true).
pub fn mosquitto_available() -> bool {
    if Path::new(MOSQUITTO).exists() {
        return true;
    }
    skip_unless_ci(&format!(
        "{MOSQUITTO} not found; install mosquitto (.ci/run does)"
    ));
    false
}

/// A Mosquitto process of this test.
pub struct Mosquitto {
    child: Option<std::process::Child>,
    /// Its listener.
    pub port: u16,
    /// Its temp dir (configuration, log).
    pub dir: PathBuf,
}

impl Mosquitto {
    /// Starts Mosquitto with `extra` lines after the listener (whose own options, e.g.
    /// TLS, follow it), anonymous access allowed unless `extra` sets `allow_anonymous`.
    pub async fn start(name: &str, extra: &str) -> Mosquitto {
        Mosquitto::start_on(name, free_port(), extra).await
    }

    /// Like [`Mosquitto::start`], on `port`.
    pub async fn start_on(name: &str, port: u16, extra: &str) -> Mosquitto {
        let dir = temp_dir(name);
        let anonymous = if extra.contains("allow_anonymous") {
            ""
        } else {
            "allow_anonymous true\n"
        };
        let config = format!(
            "listener {port} 127.0.0.1\n{extra}\n{anonymous}persistence false\n\
             log_dest file {log}\nlog_type all\n",
            log = dir.join("mosquitto.log").display()
        );
        std::fs::write(dir.join("mosquitto.conf"), config).expect("write conf");
        let mut mosquitto = Mosquitto {
            child: None,
            port,
            dir,
        };
        mosquitto.spawn().await;
        mosquitto
    }

    async fn spawn(&mut self) {
        let child = std::process::Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("mosquitto did not listen on {}: {}", self.port, self.log());
    }

    /// `host:port` of its listener.
    pub fn remote(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL, by the PID of the process this test started.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same configuration.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A bridge definition with one rule; the rest at the defaults, reconnects quick.
pub fn bridge(
    name: &str,
    remote: &str,
    protocol: BridgeProtocol,
    rules: Vec<TopicRule>,
) -> MqttBridgeConfig {
    MqttBridgeConfig {
        name: name.into(),
        remotes: vec![remote.into()],
        protocol,
        client_id: format!("bridge-{name}"),
        clean_start: false,
        session_expiry_secs: 3600,
        keep_alive_secs: 60,
        username: None,
        password: None,
        tls: None,
        try_private: true,
        local_client_id: format!("tern-bridge-{name}"),
        local_username: name.into(),
        max_inflight: 100,
        reconnect_min_ms: 50,
        reconnect_max_ms: 500,
        connect_timeout_ms: 3000,
        topics: rules,
    }
}

/// A topic rule.
pub fn rule(pattern: &str, direction: Direction, qos: u8, local: &str, remote: &str) -> TopicRule {
    TopicRule {
        pattern: pattern.into(),
        direction,
        qos,
        local_prefix: local.into(),
        remote_prefix: remote.into(),
    }
}

/// A connected raw client (clean start) to `addr`.
pub async fn client(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Client {
    let mut client = Client::tcp(addr, version).await;
    let connack = client.connect(Connect::new(version, client_id)).await;
    assert_eq!(connack.code.0, 0, "CONNACK refused: {connack:?}");
    client
}

/// Waits until `check` holds (polling, at most 10 s: a bridge's first connect waits for
/// Mosquitto and the broker to start, which the parallel tests of a loaded CI machine slow
/// down), or fails with `what`.
pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The next PUBLISH within `wait` (acknowledged, QoS 2 completed), skipping other
/// packets; `None` if none came.
pub async fn next_publish(client: &mut Client, wait: Duration) -> Option<Publish> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let packet = client.recv_within(left).await?;
        match packet {
            Packet::Publish(p) => {
                ack(client, &p).await;
                return Some(p);
            }
            Packet::PubRel(rel) => {
                client
                    .send(&Packet::PubComp(tern_codec::PubComp::new(rel.packet_id)))
                    .await;
            }
            _ => {}
        }
    }
}

async fn ack(client: &mut Client, publish: &Publish) {
    match publish.qos() {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => {
            if let Some(id) = publish.packet_id() {
                client
                    .send(&Packet::PubAck(tern_codec::PubAck::new(id)))
                    .await;
            }
        }
        QoS::ExactlyOnce => {
            if let Some(id) = publish.packet_id() {
                client
                    .send(&Packet::PubRec(tern_codec::PubRec::new(id)))
                    .await;
            }
        }
    }
}

/// Every PUBLISH until `quiet` passes without one.
pub async fn drain(client: &mut Client, quiet: Duration) -> Vec<Publish> {
    let mut out = Vec::new();
    while let Some(p) = next_publish(client, quiet).await {
        out.push(p);
    }
    out
}

/// A TCP proxy to `target` whose connections can all be cut at once (the remote's
/// process stays up: its sessions survive, unlike a kill).
pub struct Proxy {
    /// Where to connect to reach `target`.
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    freeze: watch::Sender<u64>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0.
    pub async fn start(target: SocketAddr) -> Arc<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (cut, _) = watch::channel(0u64);
        let (freeze, _) = watch::channel(0u64);
        let proxy = Arc::new(Proxy {
            addr: listener.local_addr().expect("addr"),
            cut,
            freeze,
        });
        let (cut, freeze) = (proxy.cut.clone(), proxy.freeze.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut_rx = cut.subscribe();
                let mut freeze_rx = freeze.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                        _ = cut_rx.changed() => return,
                        _ = freeze_rx.changed() => {}
                    }
                    // Frozen: both sockets stay open and nothing passes, until a cut.
                    let _ = cut_rx.changed().await;
                    drop((inbound, outbound));
                });
            }
        });
        proxy
    }

    /// Stops forwarding on every open connection without closing it (a dead link that
    /// only keep alive notices); new connections pass.
    pub fn freeze(&self) {
        self.freeze.send_modify(|n| *n += 1);
    }

    /// Cuts every connection through the proxy (new ones are accepted).
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}
