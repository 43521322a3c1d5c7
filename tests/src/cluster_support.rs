//! Cluster tests' support: a `nats-server` child process with JetStream on 127.0.0.1 (a
//! free port, its own store directory), or three of them forming a NATS cluster
//! ([`NatsServer::start_cluster`]), and Tern nodes joined to them.
//!
//! A test calls [`NatsServer::start`] (or `start_cluster`) first: it returns `None` (after
//! printing why) when nats-server is not installed, and fails under `CI=true`, where it
//! must be.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tern_broker::config::Config;

use crate::TestBroker;

/// Numbers each server of this process, so that temp directories never collide.
static SERVERS: AtomicU32 = AtomicU32::new(0);

/// A running nats-server (killed, by its PID, when dropped).
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    /// More arguments: `--server_name`, `--cluster_name`, `--cluster` and `--routes` of a
    /// clustered server, `-c` with the configuration file of one started with settings.
    args: Vec<String>,
    /// The configuration file written for it, if any (removed when dropped).
    config_file: Option<PathBuf>,
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl NatsServer {
    /// Starts a nats-server with JetStream; `None` when it is not installed (skipped).
    pub fn start() -> Option<NatsServer> {
        NatsServer::start_with_config("")
    }

    /// Starts a nats-server with JetStream and `settings` (nats-server configuration
    /// syntax, e.g. `max_payload: 65536`) in a configuration file; `None` when it is not
    /// installed (skipped).
    pub fn start_with_config(settings: &str) -> Option<NatsServer> {
        if !crate::require_tool("nats-server") {
            return None;
        }
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let store = std::env::temp_dir().join(format!("tern-nats-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&store);
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store: store.clone(),
            args: Vec::new(),
            config_file: None,
        };
        if !settings.is_empty() {
            let file = store.with_extension("conf");
            std::fs::write(&file, settings).expect("write the nats-server configuration");
            server.args = vec!["-c".into(), file.display().to_string()];
            server.config_file = Some(file);
        }
        server.restart();
        Some(server)
    }

    /// Starts `count` nats-servers with JetStream forming one NATS cluster (routes on
    /// 127.0.0.1, each its own `server_name` and store) and returns once every one of them
    /// answers JetStream requests (a meta leader is elected); `None` when nats-server is
    /// not installed (skipped).
    ///
    /// # Panics
    /// If JetStream is not ready on all of them within 30 s.
    pub fn start_cluster(count: usize) -> Option<Vec<NatsServer>> {
        if !crate::require_tool("nats-server") {
            return None;
        }
        let route_ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_name = format!("tern-test-{}", SERVERS.load(Ordering::Relaxed));
        let mut servers = Vec::with_capacity(count);
        for (i, route_port) in route_ports.iter().enumerate() {
            let n = SERVERS.fetch_add(1, Ordering::Relaxed);
            let store = std::env::temp_dir().join(format!("tern-nats-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&store);
            let mut server = NatsServer {
                child: None,
                port: free_port(),
                store,
                config_file: None,
                args: vec![
                    "--server_name".into(),
                    format!("s{}", i + 1),
                    "--cluster_name".into(),
                    cluster_name.clone(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route_port}"),
                    "--routes".into(),
                    routes.clone(),
                ],
            };
            server.restart();
            servers.push(server);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for server in &servers {
            while !server.jetstream_ready() {
                assert!(Instant::now() < deadline, "JetStream cluster not ready");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Some(servers)
    }

    /// Whether the server answers a JetStream request (`$JS.API.INFO`) without an error,
    /// asked over a plain NATS connection within 2 s.
    pub fn jetstream_ready(&self) -> bool {
        use std::io::{BufRead, BufReader, Write};
        let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut writer = match stream.try_clone() {
            Ok(writer) => writer,
            Err(_) => return false,
        };
        let request = "CONNECT {\"verbose\":false}\r\nSUB _INBOX.ready 1\r\n\
                       PUB $JS.API.INFO _INBOX.ready 0\r\n\r\n";
        if writer.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut lines = BufReader::new(stream).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.starts_with("PING") {
                let _ = writer.write_all(b"PONG\r\n");
            } else if line.starts_with("MSG _INBOX.ready") {
                return matches!(lines.next(), Some(Ok(body)) if !body.contains("\"error\""));
            }
        }
        false
    }

    /// The URL nodes connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store; returns once it accepts
    /// connections.
    ///
    /// # Panics
    /// If it does not listen within 10 s.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart while running");
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `config` joined to this server as `node_name`.
    pub fn join(&self, config: &mut Config, node_name: &str) {
        config.cluster.enabled = true;
        config.cluster.node_name = node_name.to_string();
        config.cluster.nats_urls = vec![self.url()];
        config.cluster.connect_timeout_ms = 5000;
    }

    /// `count` in-process nodes joined to this server (`n1`, `n2`, …).
    pub async fn nodes(&self, count: usize) -> Vec<TestBroker> {
        let mut nodes = Vec::with_capacity(count);
        for i in 1..=count {
            let name = format!("n{i}");
            nodes.push(TestBroker::start_with(|c| self.join(c, &name)).await);
        }
        nodes
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
        if let Some(file) = &self.config_file {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A 5.0 client of `addr` with a will on `wills/{client_id}` delayed by `delay_secs` and
/// Session Expiry `expiry_secs` (Clean Start 0).
pub async fn with_will(
    addr: std::net::SocketAddr,
    client_id: &str,
    delay_secs: u32,
    expiry_secs: u32,
) -> crate::Client {
    let mut client = crate::Client::tcp(addr, tern_codec::ProtocolVersion::V5).await;
    let mut connect = tern_codec::Connect::new(tern_codec::ProtocolVersion::V5, client_id);
    connect.clean_start = false;
    connect.keep_alive_secs = 0;
    connect.properties.session_expiry_interval_secs = Some(expiry_secs);
    connect.will = Some(tern_codec::LastWill {
        topic: tern_codec::ByteStr::from(format!("wills/{client_id}")),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: tern_codec::QoS::AtLeastOnce,
        retain: false,
        properties: tern_codec::WillProperties {
            will_delay_interval_secs: Some(delay_secs),
            ..Default::default()
        },
    });
    let connack = client.connect(connect).await;
    assert_eq!(connack.code, tern_codec::ReasonCode::SUCCESS, "{connack:?}");
    client
}

/// SUBACK latencies of `client` in milliseconds, on fresh filters under `tag/`: the median
/// of 20 SUBSCRIBEs of one filter, and the median of 3 SUBSCRIBEs of 100 filters each
/// (every filter unsubscribed again afterwards).
pub async fn suback_latencies_ms(client: &mut crate::Client, tag: &str) -> (f64, f64) {
    use tern_codec::{QoS, SubscriptionOptions};
    let opts = SubscriptionOptions::with_qos(QoS::AtLeastOnce);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut ones = Vec::new();
    for i in 0..20 {
        let filter = format!("{tag}/one/{i}");
        let started = Instant::now();
        client.subscribe_with(vec![(&filter, opts)], None).await;
        ones.push(started.elapsed().as_secs_f64() * 1000.0);
        client.unsubscribe(&[&filter]).await;
    }
    let mut hundreds = Vec::new();
    for round in 0..3 {
        let filters: Vec<String> = (0..100)
            .map(|i| format!("{tag}/many/{round}/{i}"))
            .collect();
        let started = Instant::now();
        client
            .subscribe_with(filters.iter().map(|f| (f.as_str(), opts)).collect(), None)
            .await;
        hundreds.push(started.elapsed().as_secs_f64() * 1000.0);
        let names: Vec<&str> = filters.iter().map(String::as_str).collect();
        client.unsubscribe(&names).await;
    }
    (median(ones), median(hundreds))
}
