//! A crash-consistency checker for the `tern` binary: "nothing acknowledged is lost".
//!
//! The checker runs in the test process and is never killed; the broker is a child process
//! ([`broker_process`]) on a data directory of its own, on 127.0.0.1. Publishers
//! ([`publisher`], QoS 1, QoS 2 and retained) and subscribers ([`subscriber`], persistent
//! sessions: Clean Start 0, a Session Expiry) run against it while the controller here
//! kills it (SIGKILL, or SIGTERM for a graceful restart) at random moments and starts it
//! again on the same data directory. Clients reconnect to the new port and resume their
//! sessions. Every acknowledgement, SUBACK and delivery goes into the [`ledger`]; at the
//! end publishing stops, the subscribers drain, retained topics are read back, and
//! [`verdict`] says what was lost, duplicated or reordered.
//!
//! Bounded: a given number of cycles of a given length, a cap on messages per publisher
//! and deadlines on every wait. Wills are left out: the broker does not journal them yet
//! (no `Record::Will` is appended outside the journal module).

pub mod broker_process;
pub mod damage;
pub mod ledger;
mod publisher;
mod subscriber;
pub mod verdict;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tern_codec::{
    ByteStr, Packet, PacketId, ProtocolVersion, PubAck, PublishQoS, QoS, Subscribe,
    SubscriptionOptions,
};

pub use broker_process::{tern_binary, BrokerConfig, BrokerProcess, Stop};
pub use ledger::{Ledger, MessageId};
pub use subscriber::SubscriberKind;
pub use verdict::Report;

use publisher::PublisherSpec;
use subscriber::SubscriberSpec;
use wire::Wire;

/// How long the subscribers may take to drain once publishing stopped.
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);
/// The drain ends early when nothing owed is missing, or nothing arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(3);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Part of the data directory's name.
    pub name: String,
    /// `[persistence] durability`: `"sync"`, `"write"` or `"none"`.
    pub durability: String,
    /// `[persistence] enabled`.
    pub persistence: bool,
    /// `[persistence] checkpoint_interval_secs`.
    pub checkpoint_interval_secs: u64,
    /// How many times the broker is stopped and started again.
    pub cycles: u32,
    /// How the broker is stopped.
    pub stop: Stop,
    /// How long the broker runs before each stop, in ms (picked at random in the range).
    pub uptime_ms: Range<u64>,
    /// Publishers of QoS 1 messages.
    pub qos1_publishers: u32,
    /// Publishers of QoS 2 messages.
    pub qos2_publishers: u32,
    /// Publishers of retained QoS 1 messages (each on its own topic).
    pub retained_publishers: u32,
    /// Subscribers with the given kinds and maximum QoS.
    pub subscribers: Vec<(SubscriberKind, QoS)>,
    /// Messages in flight per publisher.
    pub window: usize,
    /// Least time between two messages of one publisher.
    pub publish_interval: Duration,
    /// Most messages one publisher sends.
    pub max_messages_per_publisher: u64,
    /// Seed of the random stop times.
    pub seed: u64,
}

impl Options {
    /// A mixed load: two QoS 1 and two QoS 2 publishers, one retained publisher; two steady
    /// subscribers (QoS 2 and QoS 1), a sleeper and a late subscriber; five SIGKILLs with
    /// `durability`.
    pub fn new(name: &str, durability: &str) -> Options {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Options {
            name: name.to_owned(),
            durability: durability.to_owned(),
            persistence: true,
            checkpoint_interval_secs: 2,
            cycles: 5,
            stop: Stop::Kill,
            uptime_ms: 300..900,
            qos1_publishers: 2,
            qos2_publishers: 2,
            retained_publishers: 1,
            subscribers: vec![
                (SubscriberKind::Steady, QoS::ExactlyOnce),
                (SubscriberKind::Steady, QoS::AtLeastOnce),
                (
                    SubscriberKind::Sleeper {
                        online: Duration::from_millis(150),
                        offline: Duration::from_millis(250),
                    },
                    QoS::ExactlyOnce,
                ),
                (SubscriberKind::Late, QoS::ExactlyOnce),
            ],
            window: 8,
            publish_interval: Duration::from_millis(2),
            max_messages_per_publisher: 50_000,
            seed,
        }
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    /// The verdict.
    pub report: Report,
    /// The options it ran with (the seed included).
    pub options: Options,
    /// The end of the broker's log, for a failure message.
    pub log_tail: String,
}

/// What the client tasks share with the controller.
pub(crate) struct Ctx {
    pub(crate) ledger: Ledger,
    /// The running broker's MQTT address; `None` while it is down.
    addr: Mutex<Option<SocketAddr>>,
    /// New messages may be sent.
    publishing: AtomicBool,
    /// Everyone stops.
    stopped: AtomicBool,
    /// Broker restarts so far.
    restarts: AtomicU32,
    pub(crate) window: usize,
    pub(crate) max_messages: u64,
}

impl Ctx {
    pub(crate) fn publishing(&self) -> bool {
        self.publishing.load(Ordering::Relaxed)
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    pub(crate) fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    fn set_addr(&self, addr: Option<SocketAddr>) {
        *self.addr.lock().unwrap_or_else(PoisonError::into_inner) = addr;
    }

    /// Connects `client_id` (MQTT 5.0) to the running broker, retrying while it is down;
    /// `None` once the checker stops.
    pub(crate) async fn connect(&self, client_id: &str, clean_start: bool) -> Option<(Wire, bool)> {
        self.connect_as(client_id, clean_start, ProtocolVersion::V5)
            .await
    }

    /// [`Ctx::connect`] with the protocol `version`.
    pub(crate) async fn connect_as(
        &self,
        client_id: &str,
        clean_start: bool,
        version: ProtocolVersion,
    ) -> Option<(Wire, bool)> {
        loop {
            if self.stopped() {
                return None;
            }
            let addr = *self.addr.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(addr) = addr {
                if let Ok(connected) = Wire::connect(addr, client_id, clean_start, version).await {
                    return Some(connected);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A small deterministic generator for the stop times (splitmix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, range: &Range<u64>) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1330_11EB);
        z ^= z >> 31;
        range.start + z % (range.end - range.start).max(1)
    }
}

/// Runs the checker: start the broker, load it, stop and restart it `cycles` times, drain,
/// judge. Needs a multi-threaded runtime (starting the broker blocks a thread).
///
/// # Panics
/// If the broker cannot be started (or restarted) at all.
pub async fn run(options: Options) -> Outcome {
    let dir = std::env::temp_dir().join(format!(
        "tern-crash-{}-{}-{:x}",
        options.name,
        std::process::id(),
        options.seed & 0xffff_ffff
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = BrokerConfig::new(&dir, &options.durability);
    config.persistence = options.persistence;
    config.checkpoint_interval_secs = options.checkpoint_interval_secs;
    let began = Instant::now();
    let broker = tokio::task::spawn_blocking(move || BrokerProcess::start(&config))
        .await
        .expect("start tern");
    let ctx = Arc::new(Ctx {
        ledger: Ledger::default(),
        addr: Mutex::new(Some(broker.addr())),
        publishing: AtomicBool::new(false),
        stopped: AtomicBool::new(false),
        restarts: AtomicU32::new(0),
        window: options.window,
        max_messages: options.max_messages_per_publisher,
    });
    let subscribers = spawn_subscribers(&ctx, &options);
    let present = options
        .subscribers
        .iter()
        .filter(|(kind, _)| !matches!(kind, SubscriberKind::Late))
        .count();
    wait_for_subscriptions(&ctx, present).await;
    eprintln!("[checker] subscribed after {:?}", began.elapsed());
    ctx.publishing.store(true, Ordering::Relaxed);
    let publishers = spawn_publishers(&ctx, &options);
    let broker = stop_and_restart(&ctx, broker, &options).await;
    eprintln!("[checker] cycles done after {:?}", began.elapsed());
    // A last stretch on the recovered broker, then the publishers complete what they have
    // in flight and the subscribers drain.
    tokio::time::sleep(Duration::from_millis(options.uptime_ms.start)).await;
    ctx.publishing.store(false, Ordering::Relaxed);
    for publisher in publishers {
        let _ = tokio::time::timeout(DRAIN_DEADLINE, publisher).await;
    }
    drain(&ctx).await;
    eprintln!("[checker] drained after {:?}", began.elapsed());
    let retained = read_retained(&ctx, broker.addr()).await;
    ctx.stopped.store(true, Ordering::Relaxed);
    for subscriber in subscribers {
        let _ = tokio::time::timeout(Duration::from_secs(5), subscriber).await;
    }
    let starts = broker.starts();
    let log_tail = broker.log_tail(60);
    let mut broker = broker;
    tokio::task::spawn_blocking(move || broker.stop(Stop::Term))
        .await
        .expect("stop tern");
    let report = verdict::judge(&ctx.ledger.lock(), &retained, starts);
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        report,
        options,
        log_tail,
    }
}

/// The cycles: let the broker run for a random time, stop it (`options.stop`), start it
/// again on the same data directory and tell the clients its new address.
async fn stop_and_restart(
    ctx: &Ctx,
    mut broker: BrokerProcess,
    options: &Options,
) -> BrokerProcess {
    let mut rng = Rng(options.seed);
    for cycle in 0..options.cycles {
        let uptime_ms = rng.below(&options.uptime_ms);
        tokio::time::sleep(Duration::from_millis(uptime_ms)).await;
        ctx.set_addr(None);
        let how = options.stop;
        broker = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            broker.stop(how);
            broker.restart();
            eprintln!(
                "[checker] cycle {cycle}: up {uptime_ms} ms, {how:?}, back in {:?}",
                t.elapsed()
            );
            broker
        })
        .await
        .expect("restart tern");
        ctx.set_addr(Some(broker.addr()));
        ctx.restarts.fetch_add(1, Ordering::Relaxed);
    }
    broker
}

fn spawn_subscribers(ctx: &Arc<Ctx>, options: &Options) -> Vec<tokio::task::JoinHandle<()>> {
    options
        .subscribers
        .iter()
        .enumerate()
        .map(|(i, &(kind, max_qos))| {
            let spec = SubscriberSpec {
                client_id: format!("crash-sub-{i}"),
                max_qos,
                kind,
            };
            tokio::spawn(subscriber::run(ctx.clone(), spec))
        })
        .collect()
}

fn spawn_publishers(ctx: &Arc<Ctx>, options: &Options) -> Vec<tokio::task::JoinHandle<()>> {
    let mut specs = Vec::new();
    let kinds = [
        (options.qos1_publishers, QoS::AtLeastOnce, false),
        (options.qos2_publishers, QoS::ExactlyOnce, false),
        (options.retained_publishers, QoS::AtLeastOnce, true),
    ];
    for (count, qos, retain) in kinds {
        for _ in 0..count {
            specs.push(PublisherSpec {
                index: specs.len() as u32,
                qos,
                retain,
                // Retained messages replace each other: fewer of them.
                interval: if retain {
                    options.publish_interval * 10
                } else {
                    options.publish_interval
                },
            });
        }
    }
    specs
        .into_iter()
        .map(|spec| tokio::spawn(publisher::run(ctx.clone(), spec)))
        .collect()
}

/// Waits (at most 10 s) until `present` subscribers (all but the late ones) have their
/// SUBACK, so that the messages of the first cycle are owed to them.
async fn wait_for_subscriptions(ctx: &Ctx, present: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let data = ctx.ledger.lock();
        let subscribed = data
            .subscribers
            .iter()
            .filter(|s| s.subscribed.is_some())
            .count();
        if subscribed >= present {
            return;
        }
    }
    let data = ctx.ledger.lock();
    for s in &data.subscribers {
        eprintln!(
            "[checker] not all subscribed: {} {:?}",
            s.client_id, s.subscribed
        );
    }
}

/// Waits until nothing owed is missing, nothing arrived for [`DRAIN_QUIET`], or
/// [`DRAIN_DEADLINE`].
async fn drain(ctx: &Ctx) {
    let deadline = Instant::now() + DRAIN_DEADLINE;
    let mut count = ctx.ledger.delivery_count();
    let mut last_progress = Instant::now();
    while Instant::now() < deadline && last_progress.elapsed() < DRAIN_QUIET {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let report = verdict::judge(&ctx.ledger.lock(), &HashMap::new(), 0);
        if report.lost_count == 0 {
            return;
        }
        let now = ctx.ledger.delivery_count();
        if now != count {
            count = now;
            last_progress = Instant::now();
        }
    }
}

/// What each retained topic holds, read by a fresh clean session.
async fn read_retained(ctx: &Ctx, addr: SocketAddr) -> HashMap<String, MessageId> {
    let topics = ctx.ledger.lock().retained_topics.len();
    let mut held = HashMap::new();
    if topics == 0 {
        return held;
    }
    let read = async {
        let (mut wire, _) = Wire::connect(addr, "crash-retained-reader", true, ProtocolVersion::V5)
            .await
            .ok()?;
        let subscribe = Subscribe {
            packet_id: PacketId::new(1).expect("non-zero"),
            properties: Default::default(),
            filters: vec![(
                ByteStr::from("crash-retained/#"),
                SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            )],
        };
        wire.send(&Packet::Subscribe(Box::new(subscribe)))
            .await
            .ok()?;
        while held.len() < topics {
            let Packet::Publish(publish) = wire.recv().await.ok()? else {
                continue;
            };
            if let Some(m) = MessageId::parse(publish.payload()) {
                held.insert(publish.topic().to_owned(), m);
            }
            if let PublishQoS::AtLeastOnce(id) = publish.publish_qos() {
                wire.send(&Packet::PubAck(PubAck::new(id))).await.ok()?;
            }
        }
        wire.disconnect().await;
        Some(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), read).await;
    held
}

/// The data directory of a run, for tests that damage it between runs.
pub fn data_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tern-crash-{name}-{}", std::process::id()))
}
