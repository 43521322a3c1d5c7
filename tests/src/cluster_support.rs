//! Cluster tests' support: a `nats-server` child process with JetStream on 127.0.0.1 (a
//! free port, its own store directory), and Tern nodes joined to it.
//!
//! A test calls [`NatsServer::start`] first: it returns `None` (after printing why) when
//! nats-server is not installed, and fails under `CI=true`, where it must be.

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
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl NatsServer {
    /// Starts a nats-server with JetStream; `None` when it is not installed (skipped).
    pub fn start() -> Option<NatsServer> {
        if !crate::require_tool("nats-server") {
            return None;
        }
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let store = std::env::temp_dir().join(format!("tern-nats-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&store);
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
        };
        server.restart();
        Some(server)
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
    }
}
