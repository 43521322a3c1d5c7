//! `tern-bench compare`: starts Tern, Mosquitto and rumqttd on loopback ports with
//! equivalent settings, runs a suite of scenarios against each in turn (a fresh broker per
//! scenario, so one run's leftovers never colour the next), and writes the JSON lines, a
//! markdown table with ratios and SVG bar charts.
//!
//! Every scenario runs as a child `tern-bench` process (its CPU accounting is then its own)
//! with a hard time limit. Brokers are started by this process and stopped by PID, also
//! when a run fails ([`BrokerProc`] kills on drop).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::Value;

use crate::svg;

/// Options of `compare`.
#[derive(Debug, Clone, Args)]
pub(crate) struct CompareArgs {
    /// Brokers to run, in order: tern, mosquitto, rumqttd, flashmq, tern-before (a
    /// second Tern build, `--tern-before-bin`, to compare a change in the same run), and
    /// the same Tern with persistence off (tern-mem) or `durability = "write"|"sync"`
    /// (tern-write, tern-sync) for the persistent-session case.
    #[arg(long, value_delimiter = ',', default_value = "tern,mosquitto,rumqttd")]
    brokers: Vec<String>,
    /// `full` (the targets, about 10 minutes) or `quick` (small smoke sizes).
    #[arg(long, default_value = "full")]
    suite: String,
    /// Only the cases whose name contains one of these (comma separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Runs of each case against each broker; the table shows the median.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Measured seconds of the QoS 2 fan-out case (the issue asks for 30).
    #[arg(long, default_value_t = 30.0)]
    qos2_duration_secs: f64,
    /// Directory for latest.md, latest.jsonl and the SVG charts.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Tern binary (`cargo build --release -p tern-broker`).
    #[arg(long, default_value = "target/release/tern")]
    tern_bin: PathBuf,
    /// Mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto_bin: PathBuf,
    /// rumqttd binary (default: ~/.cargo/bin/rumqttd).
    #[arg(long)]
    rumqttd_bin: Option<PathBuf>,
    /// FlashMQ binary (default: ~/.cache/flashmq-1.26.2/build/flashmq, where
    /// `../shared/peers/build-flashmq.sh` puts it).
    #[arg(long)]
    flashmq_bin: Option<PathBuf>,
    /// Run FlashMQ with its default Nagle's algorithm on (`tcp_nodelay false`) instead of
    /// TCP_NODELAY, which Tern always sets and Mosquitto is given here. With Nagle a small
    /// write only queues while earlier data is unacknowledged, and the sending happens when
    /// the client's ACK arrives, in the kernel work the client's process is charged for:
    /// the broker's CPU per delivery drops and the load generator's rises.
    #[arg(long)]
    flashmq_nagle: bool,
    /// The Tern build that `tern-before` runs (e.g. one built from the commit before a
    /// change, with `CARGO_TARGET_DIR` elsewhere).
    #[arg(long)]
    tern_before_bin: Option<PathBuf>,
    /// First loopback port; each broker takes two from here on.
    #[arg(long, default_value_t = 28830)]
    base_port: u16,
}

/// What a case measures, which decides the table rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Flow,
    Idle,
    Connstorm,
    /// `sse` / `ws`: Tern's HTTP bridges; the other brokers have none.
    Bridge,
    /// `retained-replay` (issue #17).
    Replay,
    /// `stuck-qos1` (issue #17).
    Stuck,
}

/// One scenario invocation of the suite.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    title: String,
    kind: Kind,
    v5: bool,
    args: Vec<String>,
    timeout_secs: u64,
    /// Run against Tern only (the others show `–`).
    tern_only: bool,
}

fn case(name: &str, title: &str, kind: Kind, v5: bool, args: &str, timeout_secs: u64) -> Case {
    Case {
        name: name.to_owned(),
        title: title.to_owned(),
        kind,
        v5,
        args: args.split_whitespace().map(str::to_owned).collect(),
        timeout_secs,
        tern_only: false,
    }
}

/// A Tern-only case on the SSE / WebSocket JSON bridges.
fn bridge_case(name: &str, title: &str, args: &str, timeout_secs: u64) -> Case {
    Case {
        tern_only: true,
        ..case(name, title, Kind::Bridge, false, args, timeout_secs)
    }
}

fn suite(args: &CompareArgs) -> Result<Vec<Case>> {
    use Kind::*;
    let q2 = args.qos2_duration_secs;
    let cases = match args.suite.as_str() {
        "full" => vec![
            case("fanout-q0-1x1000", "fan-out QoS 0, 1 -> 1000, max rate, 64 B", Flow, false,
                 "fanout --qos 0 --publishers 1 --subscribers 1000 --duration-secs 10 --warmup-secs 2 --drain-secs 5", 90),
            case("p2p-q0-100", "p2p QoS 0, 100 pairs, max rate, 64 B", Flow, false,
                 "p2p --qos 0 --pairs 100 --duration-secs 10 --warmup-secs 2 --drain-secs 5", 60),
            case("p2p-q1-100", "p2p QoS 1, 100 pairs, max rate, 64 B", Flow, false,
                 "p2p --qos 1 --pairs 100 --duration-secs 10 --warmup-secs 2 --drain-secs 5", 60),
            case("p2p-q1-100-v5", "p2p QoS 1, 100 pairs, max rate, 64 B, MQTT 5", Flow, true,
                 "p2p --qos 1 --pairs 100 --duration-secs 5 --warmup-secs 1 --drain-secs 5", 60),
            case("p2p-q1-100-persistent", "p2p QoS 1, 100 pairs, persistent sessions (expiry 300 s), max rate, MQTT 5", Flow, true,
                 "p2p --qos 1 --pairs 100 --session-expiry-secs 300 --duration-secs 8 --warmup-secs 2 --drain-secs 5", 60),
            case("fanout-q2-100x2000", &format!("fan-out QoS 2, 100 pubs x 1 msg/s -> 2000 subs, {q2} s"), Flow, false,
                 &format!("fanout --qos 2 --publishers 100 --subscribers 2000 --rate 1 --duration-secs {q2} --warmup-secs 3 --drain-secs 10"), q2 as u64 + 150),
            case("fanin-q1-100x1", "fan-in QoS 1, 100 pubs -> 1 sub, max rate", Flow, false,
                 "fanin --qos 1 --publishers 100 --duration-secs 5 --warmup-secs 1 --drain-secs 5", 60),
            case("fanin-shared-q1-10x4", "fan-in QoS 1, 10 pubs -> $share group of 4, max rate", Flow, false,
                 "fanin --qos 1 --publishers 10 --shared 4 --duration-secs 5 --warmup-secs 1 --drain-secs 5", 60),
            case("slowconsumer-q1", "slow consumer QoS 1, 1 pub x 2000 msg/s, 1 KiB -> 10 subs (1 never reads)", Flow, false,
                 "slowconsumer --qos 1 --subscribers 10 --rate 2000 --payload-bytes 1024 --duration-secs 10 --warmup-secs 1 --drain-secs 3", 60),
            case("connstorm", "connection storm, 16 at a time (generator on 2 threads)", Connstorm, false,
                 "connstorm --concurrency 16 --duration-secs 5 --warmup-secs 1 --threads 2", 40),
            case("idle-10000", "idle, 10,000 connections with 1 subscription each", Idle, false,
                 "idle --connections 10000 --steps 5 --settle-secs 2", 150),
            case("retained-replay-q0-3000", "retained replay QoS 0, 3,000 x 1 KiB -> 1 sub on rc/#", Replay, false,
                 "retained-replay --retained 3000 --payload-bytes 1024 --qos 0", 60),
            case("retained-replay-q0-50000", "retained replay QoS 0, 50,000 x 1 KiB -> 1 sub on rc/#", Replay, false,
                 "retained-replay --retained 50000 --payload-bytes 1024 --qos 0", 120),
            case("retained-replay-q1-20000", "retained replay QoS 1, 20,000 x 1 KiB -> 1 sub on rc/#", Replay, true,
                 "retained-replay --retained 20000 --payload-bytes 1024 --qos 1", 120),
            case("stuck-qos1", "2 stuck QoS 1 subs, 1 MB x 20 msg/s for 20 s; innocent QoS 1 pair at 200 msg/s", Stuck, true,
                 "stuck-qos1 --stuck 2 --payload-bytes 1000000 --rate 20 --duration-secs 20 --innocent-rate 200", 90),
            case("stuck-qos1-40s", "the same for 40 s: past Tern's default slow_consumer_timeout_ms (30 s)", Stuck, true,
                 "stuck-qos1 --stuck 2 --payload-bytes 1000000 --rate 20 --duration-secs 40 --innocent-rate 200", 120),
            bridge_case("sse-2000", "SSE (Tern only): 0..2000 idle subscribers, then 1 pub x 50 msg/s -> all",
                 "sse --subscribers 0,100,500,1000,2000 --rate 50 --settle-secs 3 --duration-secs 10", 180),
            bridge_case("ws-2000", "WebSocket JSON (Tern only): 0..2000 idle subscribers, then 1 pub x 50 msg/s -> all",
                 "ws --subscribers 0,100,500,1000,2000 --rate 50 --settle-secs 3 --duration-secs 10", 180),
        ],
        "quick" => vec![
            case("fanout-q0-1x100", "fan-out QoS 0, 1 -> 100, max rate", Flow, false,
                 "fanout --qos 0 --publishers 1 --subscribers 100 --duration-secs 2 --warmup-secs 1 --drain-secs 2", 30),
            case("p2p-q1-20", "p2p QoS 1, 20 pairs, max rate", Flow, false,
                 "p2p --qos 1 --pairs 20 --duration-secs 2 --warmup-secs 1 --drain-secs 2", 30),
            case("p2p-q1-20-v5", "p2p QoS 1, 20 pairs, MQTT 5", Flow, true,
                 "p2p --qos 1 --pairs 20 --duration-secs 2 --warmup-secs 1 --drain-secs 2", 30),
            case("fanout-q2-10x100", "fan-out QoS 2, 10 pubs x 10 msg/s -> 100 subs", Flow, false,
                 "fanout --qos 2 --publishers 10 --subscribers 100 --rate 10 --duration-secs 2 --warmup-secs 1 --drain-secs 3", 30),
            case("fanin-shared-q1-5x2", "fan-in QoS 1, 5 pubs -> $share group of 2", Flow, false,
                 "fanin --qos 1 --publishers 5 --shared 2 --duration-secs 2 --warmup-secs 1 --drain-secs 2", 30),
            case("slowconsumer-q1", "slow consumer QoS 1", Flow, false,
                 "slowconsumer --qos 1 --subscribers 5 --rate 1000 --payload-bytes 1024 --duration-secs 2 --warmup-secs 1 --drain-secs 2", 30),
            case("connstorm", "connection storm", Connstorm, false,
                 "connstorm --concurrency 8 --duration-secs 2 --warmup-secs 1", 30),
            case("idle-1000", "idle, 1000 connections", Idle, false,
                 "idle --connections 1000 --steps 3 --settle-secs 1", 60),
            case("retained-replay-q0-3000", "retained replay QoS 0, 3,000 x 1 KiB", Replay, false,
                 "retained-replay --retained 3000 --payload-bytes 1024 --qos 0", 60),
            case("stuck-qos1", "2 stuck QoS 1 subs, 1 MB x 20 msg/s for 5 s", Stuck, true,
                 "stuck-qos1 --stuck 2 --payload-bytes 1000000 --rate 20 --duration-secs 5 --innocent-rate 200", 60),
            bridge_case("sse-200", "SSE (Tern only), 0..200 subscribers, 50 msg/s",
                 "sse --subscribers 0,100,200 --rate 50 --settle-secs 1 --duration-secs 2", 60),
            bridge_case("ws-200", "WebSocket JSON (Tern only), 0..200 subscribers, 50 msg/s",
                 "ws --subscribers 0,100,200 --rate 50 --settle-secs 1 --duration-secs 2", 60),
        ],
        other => bail!("unknown suite {other:?}: full or quick"),
    };
    Ok(cases
        .into_iter()
        .filter(|c| args.only.is_empty() || args.only.iter().any(|o| c.name.contains(o.as_str())))
        .collect())
}

/// PIDs of the processes this run started and has not reaped yet, for the signal handler.
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn track(pid: u32, running: bool) {
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if running {
        started.push(pid);
    } else {
        started.retain(|&p| p != pid);
    }
}

/// On SIGINT or SIGTERM, stops the processes this run started (by PID) and exits, so no
/// broker outlives an interrupted comparison.
fn install_signal_handler() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        let pids = STARTED.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for pid in pids {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        eprintln!("tern-bench compare: interrupted; stopped the processes it started");
        std::process::exit(130);
    });
    Ok(())
}

/// A broker process this run started; killed (by PID, through the handle) when dropped.
struct BrokerProc {
    name: String,
    child: Child,
    /// Port for 3.1.1 clients.
    port_v4: u16,
    /// Port for 5.0 clients.
    port_v5: u16,
}

impl BrokerProc {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        track(self.child.id(), false);
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the broker binaries and scratch files are.
struct Env {
    tern: PathBuf,
    tern_before: Option<PathBuf>,
    mosquitto: PathBuf,
    rumqttd: PathBuf,
    flashmq: PathBuf,
    flashmq_nagle: bool,
    scratch: PathBuf,
    base_port: u16,
}

impl Env {
    fn start(&self, broker: &str, index: usize, tag: &str) -> Result<BrokerProc> {
        let port = self.base_port + 2 * index as u16;
        let log = fs::File::create(self.scratch.join(format!("{broker}-{tag}.log")))?;
        let (mut cmd, port_v5) = match broker {
            "tern" | "tern-before" | "tern-mem" | "tern-write" | "tern-sync" => {
                let bin = match broker {
                    "tern-before" => self
                        .tern_before
                        .as_ref()
                        .context("tern-before needs --tern-before-bin")?,
                    _ => &self.tern,
                };
                let conf = self.scratch.join(format!("{broker}.toml"));
                let data = self.scratch.join(format!("{broker}-data-{tag}-{port}"));
                let _ = fs::remove_dir_all(&data);
                fs::write(&conf, tern_config(port, &data, tern_durability(broker)))?;
                let mut cmd = Command::new(bin);
                cmd.arg("--config").arg(&conf);
                (cmd, port)
            }
            "flashmq" => {
                let conf = self.scratch.join("flashmq.conf");
                fs::write(&conf, flashmq_config(port, !self.flashmq_nagle))?;
                let mut cmd = Command::new(&self.flashmq);
                cmd.arg("--config-file").arg(&conf);
                (cmd, port)
            }
            "mosquitto" => {
                let conf = self.scratch.join("mosquitto.conf");
                fs::write(&conf, mosquitto_config(port))?;
                let mut cmd = Command::new(&self.mosquitto);
                cmd.arg("-c").arg(&conf);
                (cmd, port)
            }
            "rumqttd" => {
                let conf = self.scratch.join("rumqttd.toml");
                fs::write(&conf, rumqttd_config(port, port + 1))?;
                let mut cmd = Command::new(&self.rumqttd);
                cmd.arg("-q").arg("-c").arg(&conf);
                (cmd, port + 1)
            }
            other => bail!("unknown broker {other:?}"),
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {broker} ({:?})", cmd.get_program()))?;
        track(child.id(), true);
        let mut proc = BrokerProc {
            name: broker.to_owned(),
            child,
            port_v4: port,
            port_v5,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in [proc.port_v4, proc.port_v5] {
            let addr = SocketAddr::from(([127, 0, 0, 1], p));
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Some(status) = proc.child.try_wait()? {
                    bail!(
                        "{broker} exited at start-up ({status}); see {:?}",
                        self.scratch
                    );
                }
                if Instant::now() > deadline {
                    bail!("{broker} does not listen on {addr}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(proc)
    }
}

/// Tern: one TCP listener; queues as large as Mosquitto's below; the per-IP connection
/// limits and the per-client publish rate limit off (the other two brokers have none, and
/// every generator connection comes from 127.0.0.1); the HTTP listener (SSE, WebSocket JSON)
/// on the next port; quiet logs.
/// The persistence of a Tern variant: `tern-mem` none, `tern-write` and `tern-sync` that
/// durability; `tern` and `tern-before` the default (on, `sync`).
fn tern_durability(broker: &str) -> Option<&'static str> {
    match broker {
        "tern-mem" => None,
        "tern-write" => Some("write"),
        _ => Some("sync"),
    }
}

fn tern_config(port: u16, data_dir: &std::path::Path, durability: Option<&str>) -> String {
    let http = port + 1;
    let persistence = match durability {
        Some(durability) => format!(
            "[persistence]\nenabled = true\ndir = \"{}\"\ndurability = \"{durability}\"\n",
            data_dir.display()
        ),
        None => "[persistence]\nenabled = false\n".to_owned(),
    };
    persistence
        + &format!(
        "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n\n\
         [http]\nenabled = true\nbind = \"127.0.0.1:{http}\"\nmax_bridge_clients = 10000\n\n[limits]\nmax_connections = 100000\n\
         max_connections_per_ip = 0\nmax_connect_rate_per_ip = 0\nmax_publish_rate_per_client = 0\n\
         max_inflight_messages = 1024\nmax_queued_messages = 100000\n\n[log]\nlevel = \"warn\"\n"
        )
}

/// Mosquitto: TCP_NODELAY, no persistence, large queues, same in-flight window as Tern.
fn mosquitto_config(port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n\
         max_queued_messages 100000\nmax_inflight_messages 1024\nmax_connections -1\n\
         log_dest stderr\nlog_type error\nlog_type warning\nconnection_messages false\n"
    )
}

/// FlashMQ (a benchmark peer only): `../shared/peers/flashmq.conf.example` on `port`, both
/// protocol versions on one listener, large queues and write buffers; TCP_NODELAY like
/// Tern and Mosquitto here unless `nodelay` is false (FlashMQ's default is Nagle).
fn flashmq_config(port: u16, nodelay: bool) -> String {
    format!(
        "thread_count 2\nallow_anonymous true\nlog_level warning\n\
         max_qos_msg_pending_per_client 65535\nclient_max_write_buffer_size 4194304\n\
         listen {{\n  protocol mqtt\n  inet_protocol ip4\n  inet4_bind_address 127.0.0.1\n  port {port}\n  tcp_nodelay {nodelay}\n}}\n"
    )
}

/// rumqttd: large payloads and segments, room for 20,000 connections, no accept delay;
/// v4 and v5 listeners. (rumqttd 0.20 has no TCP_NODELAY option.)
fn rumqttd_config(port_v4: u16, port_v5: u16) -> String {
    let conns = "connection_timeout_ms = 60000\nmax_payload_size = 1048576\nmax_inflight_count = 1024\ndynamic_filters = true\n";
    format!(
        "id = 0\n\n[router]\nid = 0\nmax_connections = 20010\nmax_outgoing_packet_count = 200\n\
         max_segment_size = 104857600\nmax_segment_count = 10\n\n\
         [v4.1]\nname = \"v4-1\"\nlisten = \"127.0.0.1:{port_v4}\"\nnext_connection_delay_ms = 0\n[v4.1.connections]\n{conns}\n\
         [v5.1]\nname = \"v5-1\"\nlisten = \"127.0.0.1:{port_v5}\"\nnext_connection_delay_ms = 0\n[v5.1.connections]\n{conns}"
    )
}

/// One result: a case against a broker.
#[derive(Debug)]
struct Outcome {
    case: String,
    broker: String,
    report: Option<Value>,
    error: Option<String>,
}

/// Entry point of `tern-bench compare`.
pub(crate) fn run(args: CompareArgs) -> Result<()> {
    let cases = suite(&args)?;
    install_signal_handler()?;
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let env = Env {
        tern: args.tern_bin.clone(),
        mosquitto: args.mosquitto_bin.clone(),
        rumqttd: args
            .rumqttd_bin
            .clone()
            .unwrap_or_else(|| PathBuf::from(&home).join(".cargo/bin/rumqttd")),
        flashmq: args
            .flashmq_bin
            .clone()
            .unwrap_or_else(|| PathBuf::from(&home).join(".cache/flashmq-1.26.2/build/flashmq")),
        flashmq_nagle: args.flashmq_nagle,
        tern_before: args.tern_before_bin.clone(),
        scratch: std::env::temp_dir().join(format!("tern-bench-{}", std::process::id())),
        base_port: args.base_port,
    };
    fs::create_dir_all(&env.scratch)?;
    fs::create_dir_all(&args.out_dir)?;
    let me = std::env::current_exe()?;
    let jsonl_path = args.out_dir.join("latest.jsonl");
    let mut jsonl = fs::File::create(&jsonl_path)?;
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for rep in 0..args.repeat.max(1) {
        for case in &cases {
            for (bi, broker) in args.brokers.iter().enumerate() {
                if case.tern_only && broker != "tern" {
                    // No such endpoint: an empty outcome, shown as "–".
                    outcomes.push(Outcome {
                        case: case.name.clone(),
                        broker: broker.clone(),
                        report: None,
                        error: None,
                    });
                    continue;
                }
                eprintln!(
                    "== [{:>4}s] {} on {broker} (run {}/{})",
                    started.elapsed().as_secs(),
                    case.name,
                    rep + 1,
                    args.repeat.max(1)
                );
                let outcome = run_case(&env, &me, case, broker, bi);
                let outcome = match outcome {
                    Ok(report) => {
                        writeln!(jsonl, "{report}")?;
                        Outcome {
                            case: case.name.clone(),
                            broker: broker.clone(),
                            report: Some(report),
                            error: None,
                        }
                    }
                    Err(e) => {
                        eprintln!("   failed: {e:#}");
                        Outcome {
                            case: case.name.clone(),
                            broker: broker.clone(),
                            report: None,
                            error: Some(format!("{e:#}")),
                        }
                    }
                };
                outcomes.push(outcome);
            }
        }
    }
    let md = markdown(&args, &cases, &outcomes, started.elapsed(), &env)?;
    fs::write(args.out_dir.join("latest.md"), &md)?;
    write_charts(&args, &cases, &outcomes)?;
    eprintln!(
        "wrote {} and {}",
        args.out_dir.join("latest.md").display(),
        jsonl_path.display()
    );
    print!("{md}");
    let _ = fs::remove_dir_all(&env.scratch);
    Ok(())
}

/// Starts the broker, runs the case as a child process with a time limit, stops the broker.
fn run_case(env: &Env, me: &Path, case: &Case, broker: &str, index: usize) -> Result<Value> {
    let mut proc = env.start(broker, index, &case.name)?;
    let port = if case.v5 { proc.port_v5 } else { proc.port_v4 };
    let pid = proc.child.id();
    let mut extra = Vec::new();
    if case.kind == Kind::Bridge {
        // Tern's HTTP listener is on the port after its MQTT one (see `tern_config`).
        extra = vec!["--http-port".to_owned(), (proc.port_v4 + 1).to_string()];
    }
    let mut child = Command::new(me)
        .args(&case.args)
        .args(&extra)
        .args(["--port", &port.to_string()])
        .args(["--protocol", if case.v5 { "5" } else { "3.1.1" }])
        .args(["--broker-pid", &pid.to_string(), "--label", broker])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    track(child.id(), true);
    let deadline = Instant::now() + Duration::from_secs(case.timeout_secs);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            track(child.id(), false);
            bail!("timed out after {} s", case.timeout_secs);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    track(child.id(), false);
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut out)?;
    }
    let broker_alive = matches!(proc.child.try_wait(), Ok(None));
    proc.stop();
    if !status.success() {
        bail!(
            "tern-bench exited with {status}{}",
            if broker_alive {
                ""
            } else {
                " (the broker died)"
            }
        );
    }
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow!("no JSON line from tern-bench"))?;
    let mut report: Value = serde_json::from_str(line)?;
    report["case"] = Value::from(case.name.clone());
    report["broker_alive_at_end"] = Value::from(broker_alive);
    eprintln!("   {}", summary(case.kind, &report));
    let _ = &proc.name;
    Ok(report)
}

/// One metric row: how to read it from a report, and which direction is better.
struct Metric {
    label: &'static str,
    get: fn(&Value) -> Option<f64>,
    higher_is_better: bool,
    /// Whether a Tern/other ratio makes sense for this row.
    ratio: bool,
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut v = v;
    for p in path {
        v = v.get(*p)?;
    }
    v.as_f64()
}

fn metrics(kind: Kind) -> Vec<Metric> {
    match kind {
        Kind::Flow => vec![
            Metric {
                label: "delivered msg/s",
                get: |v| f(v, &["delivered_per_sec"]),
                higher_is_better: true,
                ratio: true,
            },
            Metric {
                label: "sent msg/s",
                get: |v| f(v, &["sent_per_sec"]),
                higher_is_better: true,
                ratio: false,
            },
            Metric {
                label: "latency p50 ms",
                get: |v| f(v, &["latency_us", "p50"]).map(|x| x / 1e3),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "latency p99 ms",
                get: |v| f(v, &["latency_us", "p99"]).map(|x| x / 1e3),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "latency max ms",
                get: |v| f(v, &["latency_us", "max"]).map(|x| x / 1e3),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "lost or late %",
                get: |v| f(v, &["lost_pct"]),
                higher_is_better: false,
                ratio: false,
            },
            Metric {
                label: "duplicated",
                get: |v| f(v, &["duplicated"]),
                higher_is_better: false,
                ratio: false,
            },
            Metric {
                label: "out of order",
                get: |v| f(v, &["out_of_order"]),
                higher_is_better: false,
                ratio: false,
            },
            Metric {
                label: "broker CPU µs/delivery",
                get: |v| f(v, &["broker", "cpu_us_per_delivery"]),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "broker CPU %",
                get: |v| f(v, &["broker", "cpu_pct"]),
                higher_is_better: false,
                ratio: false,
            },
            Metric {
                label: "broker RSS max MiB",
                get: |v| f(v, &["broker", "rss_max_kib"]).map(|x| x / 1024.0),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "generator CPU %",
                get: |v| f(v, &["generator", "cpu_pct"]),
                higher_is_better: false,
                ratio: false,
            },
        ],
        Kind::Idle => vec![
            Metric {
                label: "RSS per connection (slope) bytes",
                get: |v| f(v, &["rss_per_conn_bytes"]),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "RSS per connection (vs empty broker) bytes",
                get: |v| f(v, &["rss_per_conn_incl_baseline_bytes"]),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "RSS empty broker KiB",
                get: |v| f(v, &["rss_baseline_kib"]),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "time to open all s",
                get: |v| f(v, &["open_secs"]),
                higher_is_better: false,
                ratio: true,
            },
        ],
        Kind::Bridge => vec![
            Metric {
                label: "RSS per subscriber (slope) bytes",
                get: |v| f(v, &["rss_slope_bytes_per_subscriber"]),
                higher_is_better: false,
                ratio: false,
            },
            Metric {
                label: "latency p50 ms",
                get: |v| f(v, &["latency_us", "p50"]).map(|x| x / 1e3),
                higher_is_better: false,
                ratio: false,
            },
            Metric {
                label: "latency p99 ms",
                get: |v| f(v, &["latency_us", "p99"]).map(|x| x / 1e3),
                higher_is_better: false,
                ratio: false,
            },
            Metric {
                label: "latency max ms",
                get: |v| f(v, &["latency_us", "max"]).map(|x| x / 1e3),
                higher_is_better: false,
                ratio: false,
            },
            Metric {
                label: "lost or late %",
                get: |v| f(v, &["lost_pct"]),
                higher_is_better: false,
                ratio: false,
            },
            Metric {
                label: "delivered msg/s",
                get: |v| f(v, &["delivered_per_sec"]),
                higher_is_better: true,
                ratio: false,
            },
            Metric {
                label: "subscribers at fan-out",
                get: |v| f(v, &["fanout_subscribers"]),
                higher_is_better: true,
                ratio: false,
            },
            Metric {
                label: "broker CPU % (fan-out)",
                get: |v| f(v, &["broker", "cpu_pct"]),
                higher_is_better: false,
                ratio: false,
            },
        ],
        Kind::Replay => vec![
            Metric {
                label: "retained received",
                get: |v| f(v, &["received"]),
                higher_is_better: true,
                ratio: true,
            },
            Metric {
                label: "time to receive all s",
                get: |v| f(v, &["secs_to_receive"]),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "broker RSS growth KiB",
                get: |v| f(v, &["broker_rss_growth_kib"]),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "broker RSS peak KiB",
                get: |v| f(v, &["broker_rss_peak_kib"]),
                higher_is_better: false,
                ratio: true,
            },
        ],
        Kind::Stuck => vec![
            Metric {
                label: "broker RSS peak KiB",
                get: |v| f(v, &["broker_rss_peak_kib"]),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "innocent p99 ms",
                get: |v| f(v, &["innocent_latency_ms", "p99"]),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "stuck disconnected",
                get: |v| f(v, &["stuck_disconnected"]),
                higher_is_better: true,
                ratio: false,
            },
            Metric {
                label: "innocent p50 ms",
                get: |v| f(v, &["innocent_latency_ms", "p50"]),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "innocent max ms",
                get: |v| f(v, &["innocent_latency_ms", "max"]),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "large messages acked",
                get: |v| f(v, &["big_acked"]),
                higher_is_better: true,
                ratio: false,
            },
            Metric {
                label: "large messages refused (0x97)",
                get: |v| f(v, &["big_refused"]),
                higher_is_better: false,
                ratio: false,
            },
        ],
        Kind::Connstorm => vec![
            Metric {
                label: "connections/s",
                get: |v| f(v, &["connections_per_sec"]),
                higher_is_better: true,
                ratio: true,
            },
            Metric {
                label: "CONNACK p50 ms",
                get: |v| f(v, &["connack_latency_us", "p50"]).map(|x| x / 1e3),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "CONNACK p99 ms",
                get: |v| f(v, &["connack_latency_us", "p99"]).map(|x| x / 1e3),
                higher_is_better: false,
                ratio: true,
            },
            Metric {
                label: "failed",
                get: |v| f(v, &["failed"]),
                higher_is_better: false,
                ratio: false,
            },
            Metric {
                label: "broker CPU %",
                get: |v| f(v, &["broker", "cpu_pct"]),
                higher_is_better: false,
                ratio: false,
            },
            Metric {
                label: "generator CPU %",
                get: |v| f(v, &["generator", "cpu_pct"]),
                higher_is_better: false,
                ratio: false,
            },
        ],
    }
}

fn summary(kind: Kind, v: &Value) -> String {
    metrics(kind)
        .iter()
        .take(4)
        .filter_map(|m| (m.get)(v).map(|x| format!("{} {}", m.label, svg::human(x))))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// Median of a metric over the repeats of a case on a broker.
fn value(outcomes: &[Outcome], case: &str, broker: &str, m: &Metric) -> Option<f64> {
    median(
        outcomes
            .iter()
            .filter(|o| o.case == case && o.broker == broker)
            .filter_map(|o| o.report.as_ref().and_then(|r| (m.get)(r)))
            .collect(),
    )
}

fn ratio_cell(tern: Option<f64>, other: Option<f64>, m: &Metric) -> String {
    match (tern, other) {
        (Some(t), Some(o)) if m.ratio && o > 0.0 => {
            let r = t / o;
            // Within 2 % counts as a tie, not a loss.
            let better = if m.higher_is_better {
                r >= 0.98
            } else {
                r <= 1.02
            };
            format!(
                "{}{:.2}×{}",
                if better { "" } else { "**" },
                r,
                if better { "" } else { "**" }
            )
        }
        _ => String::new(),
    }
}

fn pretty_broker(b: &str) -> &str {
    match b {
        "tern" => "Tern",
        "mosquitto" => "Mosquitto",
        "rumqttd" => "rumqttd",
        "flashmq" => "FlashMQ",
        "tern-before" => "Tern before",
        other => other,
    }
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(String::new(), |k| format!(", {} GiB RAM", k / 1024 / 1024));
    format!("{cores} × {cpu}{mem}, Linux {}", kernel.trim())
}

fn tool_version(cmd: &Path, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

fn markdown(
    args: &CompareArgs,
    cases: &[Case],
    outcomes: &[Outcome],
    took: Duration,
    env: &Env,
) -> Result<String> {
    let mut s = String::new();
    let git = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if args.only.is_empty() {
        writeln!(s, "# tern-bench compare: {} suite\n", args.suite)?;
    } else {
        writeln!(s, "# tern-bench compare: {}\n", args.only.join(", "))?;
    }
    writeln!(
        s,
        "- date: {date}; Tern at git {git}; took {} s",
        took.as_secs()
    )?;
    writeln!(s, "- machine: {}", machine())?;
    let names: Vec<String> = args
        .brokers
        .iter()
        .map(|broker| match broker.as_str() {
            "mosquitto" => {
                tool_version(&env.mosquitto, "-h").replace("mosquitto version", "Mosquitto")
            }
            "rumqttd" => tool_version(&env.rumqttd, "--version"),
            "flashmq" if env.flashmq_nagle => {
                "FlashMQ (`--flashmq-bin`, Nagle on: its default)".to_owned()
            }
            "flashmq" => "FlashMQ (`--flashmq-bin`, `tcp_nodelay true`)".to_owned(),
            "tern-before" => "Tern before (`--tern-before-bin`)".to_owned(),
            tern => format!("{tern} (release build)"),
        })
        .collect();
    writeln!(s, "- brokers: {}", names.join(", "))?;
    writeln!(s, "- repeats: {} (cells are medians); load generator on the same machine; MQTT 3.1.1 unless noted; ratios are Tern / other, **bold** where Tern is worse by more than 2 %; – means no data (e.g. no message sent inside the measured window arrived)\n", args.repeat.max(1))?;
    let brokers: Vec<&str> = args.brokers.iter().map(String::as_str).collect();
    // Ratios are to `tern`, or to the first Tern variant listed when there is no `tern`
    // (`--brokers tern-write,tern-mem`: write / in-memory).
    let base = brokers
        .iter()
        .copied()
        .find(|b| *b == "tern")
        .or_else(|| brokers.iter().copied().find(|b| b.starts_with("tern")));
    let others: Vec<&str> = brokers
        .iter()
        .copied()
        .filter(|b| Some(*b) != base)
        .collect();
    let has_tern = base.is_some();
    let base = base.unwrap_or("tern");

    writeln!(s, "## Summary\n")?;
    let mut head = String::from("| case | metric |");
    for b in &brokers {
        write!(head, " {} |", pretty_broker(b))?;
    }
    if has_tern {
        for o in &others {
            write!(head, " {}/{} |", pretty_broker(base), pretty_broker(o))?;
        }
    }
    let cols = head.matches('|').count() - 1;
    writeln!(s, "{head}\n|{}", "---|".repeat(cols))?;
    for c in cases {
        let ms = metrics(c.kind);
        let keys: &[usize] = match c.kind {
            Kind::Flow => &[0, 3, 5],
            Kind::Idle => &[0],
            Kind::Connstorm => &[0, 2],
            Kind::Bridge => &[0, 2, 4],
            Kind::Replay => &[0, 1, 2],
            Kind::Stuck => &[0, 1, 2],
        };
        for &k in keys {
            row(
                &mut s,
                outcomes,
                &c.name,
                &brokers,
                &others,
                has_tern.then_some(base),
                &ms[k],
                &c.name,
            )?;
        }
    }
    writeln!(s)?;
    writeln!(s, "## Details\n")?;
    for c in cases {
        writeln!(s, "### {} — {}\n", c.name, c.title)?;
        writeln!(s, "`tern-bench {}`\n", c.args.join(" "))?;
        writeln!(s, "{}", head.replacen("| case | metric |", "| metric |", 1))?;
        writeln!(s, "|{}", "---|".repeat(cols - 1))?;
        for m in metrics(c.kind) {
            row(
                &mut s,
                outcomes,
                &c.name,
                &brokers,
                &others,
                has_tern.then_some(base),
                &m,
                "",
            )?;
        }
        let errs: Vec<String> = outcomes
            .iter()
            .filter(|o| o.case == c.name)
            .filter_map(|o| {
                o.error
                    .clone()
                    .map(|e| format!("{}: {e}", o.broker))
                    .or_else(|| {
                        let r = o.report.as_ref()?;
                        let errs = r.get("errors")?.as_array()?;
                        let alive = r
                            .get("broker_alive_at_end")
                            .and_then(Value::as_bool)
                            .unwrap_or(true);
                        let disc = r
                            .get("subscriber_disconnects")
                            .and_then(Value::as_u64)
                            .unwrap_or(0);
                        (!errs.is_empty() || !alive || disc > 0).then(|| {
                            format!(
                                "{}: {} subscriber disconnects{}{}",
                                o.broker,
                                disc,
                                if alive { "" } else { ", broker died" },
                                errs.first().map_or(String::new(), |e| format!(
                                    ", first error: {}",
                                    e.as_str().unwrap_or("")
                                ))
                            )
                        })
                    })
            })
            .collect();
        if !errs.is_empty() {
            writeln!(s, "\nNotes: {}", errs.join("; "))?;
        }
        writeln!(s)?;
    }
    writeln!(s, "Charts: [throughput.svg](throughput.svg), [latency.svg](latency.svg). Raw JSON lines: [latest.jsonl](latest.jsonl).")?;
    Ok(s)
}

#[allow(clippy::too_many_arguments)]
fn row(
    s: &mut String,
    outcomes: &[Outcome],
    case: &str,
    brokers: &[&str],
    others: &[&str],
    base: Option<&str>,
    m: &Metric,
    first_col: &str,
) -> Result<()> {
    if first_col.is_empty() {
        write!(s, "| {} |", m.label)?;
    } else {
        write!(s, "| {first_col} | {} |", m.label)?;
    }
    let vals: BTreeMap<&str, Option<f64>> = brokers
        .iter()
        .map(|b| (*b, value(outcomes, case, b, m)))
        .collect();
    for b in brokers {
        match vals[b] {
            Some(v) => write!(s, " {} |", svg::human(v))?,
            None => write!(s, " – |")?,
        }
    }
    if let Some(base) = base {
        for o in others {
            write!(s, " {} |", ratio_cell(vals[base], vals[o], m))?;
        }
    }
    writeln!(s)?;
    Ok(())
}

fn write_charts(args: &CompareArgs, cases: &[Case], outcomes: &[Outcome]) -> Result<()> {
    let series: Vec<&str> = args.brokers.iter().map(|b| pretty_broker(b)).collect();
    let chart = |title: &str, unit: &str, pick: &dyn Fn(&Case) -> Option<Metric>| {
        let groups: Vec<(String, Vec<Option<f64>>)> = cases
            .iter()
            .filter_map(|c| {
                let m = pick(c)?;
                Some((
                    c.name.clone(),
                    args.brokers
                        .iter()
                        .map(|b| value(outcomes, &c.name, b, &m))
                        .collect(),
                ))
            })
            .collect();
        svg::bar_chart(title, unit, &series, &groups)
    };
    let through = chart(
        "Throughput per broker",
        "delivered msg/s (connections/s for connstorm)",
        &|c| {
            metrics(c.kind)
                .into_iter()
                .find(|m| m.label == "delivered msg/s" || m.label == "connections/s")
        },
    );
    let latency = chart(
        "Latency p99 per broker",
        "milliseconds, lower is better",
        &|c| {
            metrics(c.kind)
                .into_iter()
                .find(|m| m.label == "latency p99 ms" || m.label == "CONNACK p99 ms")
        },
    );
    let memory = chart(
        "Broker memory per idle connection",
        "bytes of RSS per connection, lower is better",
        &|c| {
            metrics(c.kind)
                .into_iter()
                .find(|m| m.label.starts_with("RSS per connection (slope)"))
        },
    );
    fs::write(args.out_dir.join("throughput.svg"), through)?;
    fs::write(args.out_dir.join("latency.svg"), latency)?;
    fs::write(args.out_dir.join("memory.svg"), memory)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_ratio() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
        let m = &metrics(Kind::Flow)[3]; // p99, lower is better
        assert_eq!(ratio_cell(Some(2.0), Some(1.0), m), "**2.00×**");
        assert_eq!(ratio_cell(Some(1.0), Some(2.0), m), "0.50×");
    }
}
