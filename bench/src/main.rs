//! `tern-bench`: an MQTT load generator that measures any broker (Tern, Mosquitto, rumqttd)
//! with the same scenarios, and `tern-bench compare`, which starts all three on loopback
//! and runs the scenarios against each in turn.
//!
//! Each scenario prints one JSON line on stdout (and a live progress line on stderr unless
//! `--quiet`). Latency comes from a timestamp in the payload ([`payload`]); counts and the
//! HDR histogram live in [`stats`]; the wire format on the hot path is in [`mqtt`]; the
//! scenarios in [`scenarios`]; broker start-up and the results table in [`compare`].
//!
//! The generator shares the machine with the broker, so it is lean: one task per connection
//! on a single-threaded runtime by default (`--threads`), reused buffers, many PUBLISH
//! packets per write, no allocation per message. Its own CPU use is in every report
//! (`generator.cpu_pct`, 100 = one core): near 100 it is the bottleneck, not the broker.

mod bridge;
mod compare;
mod flowctl;
mod mqtt;
mod payload;
mod procfs;
mod scenarios;
mod stats;
mod svg;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use tern_codec::ProtocolVersion;

use scenarios::{FlowOpts, FlowPlan, Target};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "tern-bench",
    version,
    about = "Measure MQTT brokers: fan-out, fan-in, p2p, idle, connection storm, slow consumer",
    long_about = "Measure MQTT brokers on 127.0.0.1. Each scenario prints one JSON line on \
                  stdout and a progress line on stderr. `compare` starts Tern, Mosquitto and \
                  rumqttd and runs a suite against each."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The scenarios and `compare`.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// P publishers, S subscribers all subscribed to the one topic (every message to all).
    Fanout {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        flow: FlowArgs,
        /// Number of publishers.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Number of subscribers.
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
    },
    /// P publishers on distinct topics to one subscriber on a wildcard (or a shared group).
    Fanin {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        flow: FlowArgs,
        /// Number of publishers.
        #[arg(long, default_value_t = 10)]
        publishers: usize,
        /// Instead of one subscriber, a `$share/g/...` group of this many (0 = no group).
        #[arg(long, default_value_t = 0)]
        shared: usize,
    },
    /// N publisher/subscriber pairs, each pair on its own topic.
    P2p {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        flow: FlowArgs,
        /// Number of pairs.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
    },
    /// One publisher, S subscribers of which the first never reads: the others' latency and
    /// the broker's memory.
    Slowconsumer {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        flow: FlowArgs,
        /// Number of subscribers, the slow one included.
        #[arg(long, default_value_t = 10)]
        subscribers: usize,
    },
    /// N retained messages, then one subscriber to their wildcard that reads as fast as it
    /// can: how many arrive, how fast, and the broker's RSS growth meanwhile (issue #17).
    RetainedReplay {
        #[command(flatten)]
        target: TargetArgs,
        /// Retained messages stored before the subscriber comes.
        #[arg(long, default_value_t = 3000)]
        retained: u64,
        /// Payload bytes of each.
        #[arg(long, default_value_t = 1024)]
        payload_bytes: usize,
        /// QoS of the subscription (the messages are stored at QoS 1).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
    },
    /// S QoS 1 subscribers that never read, large QoS 1 messages to them at a fixed rate,
    /// and an innocent QoS 1 pair on its own topic: broker peak RSS, the innocent latency,
    /// stuck subscribers disconnected (issue #17).
    StuckQos1 {
        #[command(flatten)]
        target: TargetArgs,
        /// Subscribers that never read.
        #[arg(long, default_value_t = 2)]
        stuck: usize,
        /// Payload bytes of the large messages.
        #[arg(long, default_value_t = 1_000_000)]
        payload_bytes: usize,
        /// Large messages per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Seconds the large messages are published.
        #[arg(long, default_value_t = 20.0)]
        duration_secs: f64,
        /// Innocent messages (64 B) per second.
        #[arg(long, default_value_t = 200.0)]
        innocent_rate: f64,
    },
    /// N idle connections with one subscription each: broker RSS per connection (needs
    /// --broker-pid), as the slope over several steps.
    Idle {
        #[command(flatten)]
        target: TargetArgs,
        /// Connections to open in total.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Steps to open them in; RSS is read after each (at least 2).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Pause after each step before reading RSS, in seconds.
        #[arg(long, default_value_t = 2.0)]
        settle_secs: f64,
        /// QoS of the subscriptions.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
    },
    /// Connections per second and CONNACK latency: loops of connect/CONNECT/CONNACK/
    /// DISCONNECT.
    Connstorm {
        #[command(flatten)]
        target: TargetArgs,
        /// Connections attempted at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Measured window in seconds.
        #[arg(long, default_value_t = 5.0)]
        duration_secs: f64,
        /// Unmeasured lead-in in seconds.
        #[arg(long, default_value_t = 1.0)]
        warmup_secs: f64,
    },
    /// Tern only: N Server-Sent Events subscribers (`GET /sse?filter=F`) in steps: broker
    /// RSS per subscriber (slope), then publish-to-event latency at the largest step.
    Sse {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        bridge: BridgeArgs,
    },
    /// Tern only: the same with WebSocket JSON clients (`GET /ws`, `subscribe` op).
    Ws {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        bridge: BridgeArgs,
    },
    /// Start Tern, Mosquitto and rumqttd on loopback ports and run a suite against each.
    Compare(compare::CompareArgs),
    /// Crash consistency (issue #11), the long run: the crash checker drives the `tern`
    /// binary next to this one (or `TERN_BIN`) with QoS 1/2 and retained publishers and
    /// persistent subscribers, SIGKILLs and restarts it `--cycles` times on one data
    /// directory, and reports what was acknowledged, lost, duplicated or reordered. Exits 1
    /// on any loss (or duplicate) unless `--durability none`.
    CrashLoop {
        /// SIGKILLs.
        #[arg(long, default_value_t = 50)]
        cycles: u32,
        /// `[persistence] durability`: sync, write or none.
        #[arg(long, default_value = "sync")]
        durability: String,
    },
}

/// Where the broker is and how the generator runs.
#[derive(Debug, Clone, Args)]
struct TargetArgs {
    /// Broker TCP port on 127.0.0.1 (only loopback is supported).
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Port of the broker the subscribers connect to (default: `--port`): another node of
    /// a Tern cluster, to measure cross-node routing against one node.
    #[arg(long)]
    sub_port: Option<u16>,
    /// MQTT protocol version: 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1", value_parser = mqtt::parse_protocol)]
    protocol: ProtocolVersion,
    /// PID of the broker process: report its CPU time and RSS (from /proc).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Label copied into the JSON line (e.g. the broker's name).
    #[arg(long, default_value = "")]
    label: String,
    /// Generator worker threads; 1 runs everything on one thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Connections set up at once before a run.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// Persistent sessions: every client connects with Clean Start 0 and this Session
    /// Expiry Interval (3.1.1: Clean Session 0), so that a broker with persistence journals
    /// their messages. 0: clean sessions.
    #[arg(long, default_value_t = 0)]
    session_expiry_secs: u32,
}

/// Load and timing of a message flow.
#[derive(Debug, Clone, Args)]
struct FlowArgs {
    /// QoS of publications and subscriptions: 0, 1 or 2.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 16: timestamp, sequence, publisher).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Messages per second per publisher; 0 = as fast as the broker takes them.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Measured window in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Publishing before the measured window, in seconds (not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Longest wait for in-flight messages after publishing stops, in seconds.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    /// Unacknowledged QoS 1/2 messages per publisher (also capped by Receive Maximum).
    #[arg(long, default_value_t = 100)]
    inflight: usize,
    /// QoS 0 at maximum rate (`--rate 0`): most messages per publisher not yet received by
    /// all of its subscribers. The publisher runs as fast as deliveries complete instead of
    /// as fast as its socket takes bytes, so latency measures the broker rather than the
    /// depth of TCP buffers. 0 = open-loop flood.
    #[arg(long, default_value_t = 32)]
    window: usize,
}

/// Options of the bridge scenarios (`sse`, `ws`).
#[derive(Debug, Clone, Args)]
struct BridgeArgs {
    /// Tern's HTTP listener port on 127.0.0.1 ([http] bind).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Cumulative subscriber counts; broker RSS is sampled after each.
    #[arg(long, value_delimiter = ',', default_value = "0,100,500,1000,2000")]
    subscribers: Vec<usize>,
    /// Filter of every subscriber (default: bench/sse/# or bench/ws/#).
    #[arg(long)]
    filter: Option<String>,
    /// Topic the publisher sends to (default: the filter with its `#` replaced by `topic`).
    #[arg(long)]
    topic: Option<String>,
    /// Messages per second of the one publisher (QoS 0), at the largest step.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Payload bytes (at least 32: the timestamp header as hex text).
    #[arg(long, default_value_t = 32)]
    payload_bytes: usize,
    /// Pause after each step before the five RSS samples, in seconds.
    #[arg(long, default_value_t = 3.0)]
    settle_secs: f64,
    /// Publishing before the measured window, in seconds (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Measured window in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Longest wait for in-flight events after publishing stops, in seconds.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
}

impl BridgeArgs {
    fn opts(&self, kind: bridge::BridgeKind) -> Result<bridge::BridgeOpts> {
        let name = match kind {
            bridge::BridgeKind::Sse => "sse",
            bridge::BridgeKind::Ws => "ws",
        };
        let filter = self
            .filter
            .clone()
            .unwrap_or_else(|| format!("bench/{name}/#"));
        let topic = match &self.topic {
            Some(t) => t.clone(),
            None => match filter.strip_suffix('#') {
                Some(prefix) => format!("{prefix}topic"),
                None if !filter.contains('+') => filter.clone(),
                None => anyhow::bail!("--topic is needed for the filter {filter:?}"),
            },
        };
        if self.rate.is_nan() || self.rate <= 0.0 {
            anyhow::bail!("--rate must be positive");
        }
        Ok(bridge::BridgeOpts {
            kind,
            http_port: self.http_port,
            steps: self.subscribers.clone(),
            filter,
            topic,
            rate: self.rate,
            payload_bytes: self.payload_bytes.max(payload::HEX_BYTES),
            settle_secs: self.settle_secs.clamp(0.0, 600.0),
            warmup_secs: self.warmup_secs.clamp(0.0, 600.0),
            duration_secs: self.duration_secs.clamp(0.1, 3600.0),
            drain_secs: self.drain_secs.clamp(0.0, 600.0),
        })
    }
}

impl FlowArgs {
    fn opts(&self) -> FlowOpts {
        FlowOpts {
            qos: self.qos,
            payload_bytes: self.payload_bytes.max(payload::HEADER_BYTES),
            rate: self.rate.max(0.0),
            duration_secs: self.duration_secs.clamp(0.1, 3600.0),
            warmup_secs: self.warmup_secs.clamp(0.0, 600.0),
            drain_secs: self.drain_secs.clamp(0.0, 600.0),
            inflight: self.inflight,
            window: self.window,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = main_with(cli) {
        eprintln!("tern-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn main_with(cli: Cli) -> Result<()> {
    if let Cmd::Compare(args) = cli.cmd {
        return compare::run(args);
    }
    if let Cmd::CrashLoop { cycles, durability } = &cli.cmd {
        return crash_loop(*cycles, durability);
    }
    let target_args = match &cli.cmd {
        Cmd::Fanout { target, .. }
        | Cmd::Fanin { target, .. }
        | Cmd::P2p { target, .. }
        | Cmd::Slowconsumer { target, .. }
        | Cmd::Idle { target, .. }
        | Cmd::RetainedReplay { target, .. }
        | Cmd::StuckQos1 { target, .. }
        | Cmd::Connstorm { target, .. }
        | Cmd::Sse { target, .. }
        | Cmd::Ws { target, .. } => target.clone(),
        Cmd::Compare(_) | Cmd::CrashLoop { .. } => unreachable!("handled above"),
    };
    let runtime = if target_args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(target_args.threads)
            .enable_all()
            .build()?
    };
    let _ = payload::epoch();
    let report = runtime.block_on(run(cli.cmd, &target_args))?;
    println!("{report}");
    Ok(())
}

/// `crash-loop`: runs the crash checker and prints its verdict as one JSON line.
fn crash_loop(cycles: u32, durability: &str) -> Result<()> {
    use tern_tests::crash_checker::{run, Options};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut options = Options::new("bench", durability);
    options.cycles = cycles;
    options.max_messages_per_publisher = u64::MAX;
    let started = std::time::Instant::now();
    let outcome = runtime.block_on(run(options));
    let r = &outcome.report;
    eprintln!("{r}");
    let line = serde_json::json!({
        "scenario": "crash-loop",
        "durability": durability,
        "cycles": cycles,
        "seed": format!("{:#x}", outcome.options.seed),
        "starts": r.starts,
        "acked": r.acked,
        "owed": r.owed,
        "deliveries": r.deliveries,
        "lost": r.lost_count,
        "qos2_duplicates": r.duplicate_count,
        "out_of_order": r.out_of_order_count,
        "retained_lost": r.retained_lost.len(),
        "subscriber_sessions_lost": r.subscriber_sessions_lost,
        "elapsed_secs": stats::round3(started.elapsed().as_secs_f64()),
    });
    println!("{line}");
    if durability != "none" && !r.is_clean() {
        anyhow::bail!("acknowledged messages lost, duplicated or reordered");
    }
    Ok(())
}

/// Runs one scenario and returns its JSON line.
async fn run(cmd: Cmd, t: &TargetArgs) -> Result<Value> {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run_id = format!("tb{:x}x{:x}", std::process::id(), unix & 0xFFFFF);
    mqtt::set_session_expiry_secs(t.session_expiry_secs);
    let target = Target {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, t.port)),
        sub_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, t.sub_port.unwrap_or(t.port))),
        version: t.protocol,
        broker_pid: t.broker_pid,
        connect_concurrency: t.connect_concurrency,
        progress: !t.quiet,
        run_id: run_id.clone(),
    };
    let topic = |s: &str| format!("{run_id}/{s}");
    let mut report = match cmd {
        Cmd::Fanout {
            flow,
            publishers,
            subscribers,
            ..
        } => {
            let plan = FlowPlan {
                name: "fanout",
                pub_topics: vec![topic("fan"); publishers],
                sub_filters: vec![topic("fan"); subscribers],
                fanout_factor: subscribers as u64,
                slow_subscribers: 0,
                params: json!({ "publishers": publishers, "subscribers": subscribers }),
            };
            scenarios::run_flow(&target, &flow.opts(), plan).await?
        }
        Cmd::Fanin {
            flow,
            publishers,
            shared,
            ..
        } => {
            let filter = if shared > 0 {
                format!("$share/g/{}", topic("in/+"))
            } else {
                topic("in/+")
            };
            let plan = FlowPlan {
                name: "fanin",
                pub_topics: (0..publishers).map(|i| topic(&format!("in/{i}"))).collect(),
                sub_filters: vec![filter; shared.max(1)],
                fanout_factor: 1,
                slow_subscribers: 0,
                params: json!({ "publishers": publishers, "shared": shared }),
            };
            scenarios::run_flow(&target, &flow.opts(), plan).await?
        }
        Cmd::P2p { flow, pairs, .. } => {
            let topics: Vec<String> = (0..pairs).map(|i| topic(&format!("p2p/{i}"))).collect();
            let plan = FlowPlan {
                name: "p2p",
                pub_topics: topics.clone(),
                sub_filters: topics,
                fanout_factor: 1,
                slow_subscribers: 0,
                params: json!({ "pairs": pairs }),
            };
            scenarios::run_flow(&target, &flow.opts(), plan).await?
        }
        Cmd::Slowconsumer {
            flow, subscribers, ..
        } => {
            let subscribers = subscribers.max(2);
            let plan = FlowPlan {
                name: "slowconsumer",
                pub_topics: vec![topic("slow")],
                sub_filters: vec![topic("slow"); subscribers],
                fanout_factor: subscribers as u64 - 1,
                slow_subscribers: 1,
                params: json!({ "publishers": 1, "subscribers": subscribers, "slow": 1 }),
            };
            scenarios::run_flow(&target, &flow.opts(), plan).await?
        }
        Cmd::Idle {
            connections,
            steps,
            settle_secs,
            qos,
            ..
        } => scenarios::run_idle(&target, connections, steps, settle_secs, qos).await?,
        Cmd::Connstorm {
            concurrency,
            duration_secs,
            warmup_secs,
            ..
        } => {
            scenarios::run_connstorm(
                &target,
                concurrency,
                duration_secs.clamp(0.1, 3600.0),
                warmup_secs.clamp(0.0, 600.0),
            )
            .await?
        }
        Cmd::Sse { bridge, .. } => {
            bridge::run_bridge(&target, &bridge.opts(bridge::BridgeKind::Sse)?).await?
        }
        Cmd::Ws { bridge, .. } => {
            bridge::run_bridge(&target, &bridge.opts(bridge::BridgeKind::Ws)?).await?
        }
        Cmd::RetainedReplay {
            retained,
            payload_bytes,
            qos,
            ..
        } => flowctl::run_retained_replay(&target, retained, payload_bytes, qos).await?,
        Cmd::StuckQos1 {
            stuck,
            payload_bytes,
            rate,
            duration_secs,
            innocent_rate,
            ..
        } => {
            let opts = flowctl::StuckOpts {
                stuck,
                payload_bytes,
                rate: rate.max(0.1),
                duration_secs: duration_secs.clamp(0.5, 3600.0),
                innocent_rate: innocent_rate.max(0.1),
            };
            flowctl::run_stuck_qos1(&target, opts).await?
        }
        Cmd::Compare(_) | Cmd::CrashLoop { .. } => unreachable!("not run here"),
    };
    report["label"] = json!(t.label);
    report["protocol"] = json!(if t.protocol.is_v5() { "5" } else { "3.1.1" });
    report["port"] = json!(t.port);
    if let Some(sub_port) = t.sub_port {
        report["sub_port"] = json!(sub_port);
    }
    report["unix_time"] = json!(unix);
    Ok(report)
}
