//! The `tern` binary as a child process: finding (and building) it, writing its
//! configuration, starting it on a data directory, and ending it with SIGKILL or SIGTERM.
//! It owns the child and the thread that drains its log; nothing here speaks MQTT.
//!
//! Only the child this module spawned is ever signalled, by its PID.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long a start may take before it counts as failed (recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd broker gets to drain and checkpoint before it is killed.
const TERM_TIMEOUT: Duration = Duration::from_secs(20);
/// Log lines kept over all runs (the oldest are dropped).
const LOG_LINES_KEPT: usize = 5000;

/// The `tern` binary of this build profile, built once per test process.
///
/// This crate cannot use `CARGO_BIN_EXE_tern` (that is only set for the broker crate's own
/// tests), so it takes `target/<profile>/tern`, next to the test executables, after running
/// `cargo build -p tern-broker --bin tern` once: a no-op when `cargo test --workspace`
/// already built it, and no stale binary when only `-p tern-tests` was built.
/// `TERN_BIN` overrides both.
///
/// # Panics
/// If the build fails or the binary is not where Cargo put it.
pub fn tern_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("TERN_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("current exe");
        // A test: target/<profile>/deps/<test> -> target/<profile>; tern-bench:
        // target/<profile>/tern-bench -> target/<profile>.
        let dir = exe.parent().expect("executable in a directory");
        let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().expect("target/<profile>/deps")
        } else {
            dir
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        // Without the variables Cargo set for this test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR,
        // ...): build scripts that watch them would otherwise run again and relink the
        // binary every time.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .iter()
            .any(|prefix| key.starts_with(prefix))
            {
                build.env_remove(&*key);
            }
        }
        build
            .args(["build", "--quiet", "-p", "tern-broker", "--bin", "tern"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p tern-broker failed");
        let bin = profile_dir.join("tern");
        assert!(bin.is_file(), "{} missing after cargo build", bin.display());
        bin
    })
    .clone()
}

/// What the broker is started with; written to `tern.toml` beside the data directory.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The data directory (`[persistence] dir`).
    pub data_dir: PathBuf,
    /// `[persistence] enabled`.
    pub persistence: bool,
    /// `"sync"`, `"write"` or `"none"`.
    pub durability: String,
    /// `[persistence] checkpoint_interval_secs`.
    pub checkpoint_interval_secs: u64,
    /// `[persistence] segment_bytes` (at least 1 MiB).
    pub segment_bytes: u64,
    /// More TOML appended to the file (e.g. `[[mqtt_bridges]]` tables, `[cluster]`); empty
    /// by default.
    pub extra_toml: String,
}

impl BrokerConfig {
    /// Persistence on, in `data_dir`, with `durability`; checkpoints every 2 s and 1 MiB
    /// segments, so that a short run crosses both.
    pub fn new(data_dir: &Path, durability: &str) -> BrokerConfig {
        BrokerConfig {
            data_dir: data_dir.to_path_buf(),
            persistence: true,
            durability: durability.to_owned(),
            checkpoint_interval_secs: 2,
            segment_bytes: 1 << 20,
            extra_toml: String::new(),
        }
    }

    fn toml(&self) -> String {
        // Queues large enough that nothing the checker sends is dropped for space: a drop
        // would be reported as loss.
        format!(
            r#"[[listeners]]
kind = "tcp"
bind = "127.0.0.1:0"

[http]
enabled = false

[sys]
interval_secs = 0

[limits]
max_queued_messages = 1000000
max_queued_bytes = 1073741824

[persistence]
enabled = {}
dir = "{}"
durability = "{}"
fsync_interval_ms = 100
checkpoint_interval_secs = {}
segment_bytes = {}
max_disk_bytes = 0

[log]
level = "info"
format = "text"
"#,
            self.persistence,
            self.data_dir.display(),
            self.durability,
            self.checkpoint_interval_secs,
            self.segment_bytes,
        ) + &self.extra_toml
    }
}

/// How a running broker is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL: a crash; nothing is flushed or checkpointed.
    Kill,
    /// SIGTERM: a graceful shutdown (connections drained, last checkpoint).
    Term,
}

/// A `tern` child process and its log.
pub struct BrokerProcess {
    config_path: PathBuf,
    child: Option<Child>,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    starts: u32,
}

impl BrokerProcess {
    /// Writes the configuration next to the data directory and starts the broker; returns
    /// once it listens (recovery done).
    ///
    /// # Panics
    /// If the binary cannot be started or does not listen within 30 s.
    pub fn start(config: &BrokerConfig) -> BrokerProcess {
        std::fs::create_dir_all(&config.data_dir).expect("create data dir");
        let config_path = config.data_dir.with_extension("toml");
        std::fs::write(&config_path, config.toml()).expect("write config");
        let mut process = BrokerProcess {
            config_path,
            child: None,
            addr: "127.0.0.1:0".parse().expect("addr"),
            log: Arc::new(Mutex::new(Vec::new())),
            starts: 0,
        };
        process.restart();
        process
    }

    /// The MQTT listener of the running broker (a new port after every restart).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A 5.0 client of `client_id` with Clean Start 0 and a one-hour expiry, connected;
    /// with Session Present.
    pub async fn persistent(&self, client_id: &str) -> (crate::Client, bool) {
        let v5 = tern_codec::ProtocolVersion::V5;
        let mut client = crate::Client::tcp(self.addr, v5).await;
        let mut connect = tern_codec::Connect::new(v5, client_id);
        connect.clean_start = false;
        connect.properties.session_expiry_interval_secs = Some(3600);
        let connack = client.connect(connect).await;
        assert_eq!(connack.code.0, 0, "{connack:?}");
        (client, connack.session_present)
    }

    /// How many times the broker was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The PID of the running broker, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the broker again on the same configuration and data directory (after
    /// [`BrokerProcess::stop`]).
    ///
    /// # Panics
    /// If it is still running, cannot be started or does not listen within 30 s.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart while running");
        let mut child = Command::new(tern_binary())
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tern");
        self.starts += 1;
        let stderr = child.stderr.take().expect("piped stderr");
        let (addr_tx, addr_rx) = mpsc::channel();
        let log = self.log.clone();
        let run = self.starts;
        std::thread::spawn(move || drain_log(stderr, run, &log, &addr_tx));
        let addr = addr_rx.recv_timeout(START_TIMEOUT);
        self.child = Some(child);
        match addr {
            Ok(addr) => self.addr = addr,
            Err(_) => {
                let status = self.stop(Stop::Kill);
                panic!(
                    "tern did not listen within {START_TIMEOUT:?} ({status:?}); log:\n{}",
                    self.log_tail(40)
                );
            }
        }
    }

    /// Ends the broker with `how` and waits for it to exit (a SIGTERM that does not end it
    /// within 20 s is followed by SIGKILL). Returns its exit status; `None` if it was not
    /// running.
    pub fn stop(&mut self, how: Stop) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        match how {
            // `Child::kill` is SIGKILL on Unix.
            Stop::Kill => {
                let _ = child.kill();
            }
            Stop::Term => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + TERM_TIMEOUT;
                while Instant::now() < deadline {
                    if let Ok(Some(status)) = child.try_wait() {
                        if !status.success() {
                            // E.g. a SIGTERM that came before the broker's handler was
                            // installed, just after it logged that it listens.
                            self.push_log(format!("checker: SIGTERM ended tern with {status}"));
                        }
                        return Some(status);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                self.push_log("checker: SIGTERM not honoured in time, SIGKILL".into());
                let _ = child.kill();
            }
        }
        child.wait().ok()
    }

    /// The last `lines` lines the broker logged (over all its runs, each prefixed with the
    /// run number).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let from = log.len().saturating_sub(lines);
        log[from..].join("\n")
    }

    /// Whether any logged line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter().any(|l| l.contains(needle))
    }

    fn push_log(&self, line: String) {
        push_line(&self.log, line);
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        // Never leave a broker behind a failed test.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// Reads the broker's log until it exits, keeping the lines and sending the address of
/// its MQTT listener when it is logged.
fn drain_log(
    stderr: std::process::ChildStderr,
    run: u32,
    log: &Mutex<Vec<String>>,
    addr_tx: &mpsc::Sender<SocketAddr>,
) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if line.contains("listening") && line.contains("kind=") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse().ok());
            if let Some(addr) = addr {
                let _ = addr_tx.send(addr);
            }
        }
        push_line(log, format!("[run {run}] {line}"));
    }
}

fn push_line(log: &Mutex<Vec<String>>, line: String) {
    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
    if log.len() >= LOG_LINES_KEPT {
        log.drain(..LOG_LINES_KEPT / 2);
    }
    log.push(line);
}
