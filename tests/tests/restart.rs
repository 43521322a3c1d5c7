//! Restarts of the real `tern` binary as a user sees them (issue #11): a graceful restart
//! (SIGTERM) keeps everything even without a log; a damaged log tail (torn, garbage after
//! it, a flipped byte) and a corrupt checkpoint are recovered from: the broker starts, says
//! what it did, and what was acknowledged before the damage is there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tern_broker::journal::record::Record;
use tern_codec::{Connect, Packet, ProtocolVersion, QoS};
use tern_tests::crash_checker::{self, damage, BrokerConfig, BrokerProcess, Options, Stop};
use tern_tests::Client;

const V5: ProtocolVersion = ProtocolVersion::V5;
/// Messages queued for the offline subscriber before the damage.
const QUEUED: usize = 20;

/// Three graceful restarts under load with durability `none`: no log at all, so
/// everything rests on the checkpoint written at shutdown; nothing may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_restarts_keep_everything_even_without_a_log() {
    let mut options = Options::new("term", "none");
    options.stop = Stop::Term;
    options.cycles = 3;
    options.checkpoint_interval_secs = 3600;
    let outcome = crash_checker::run(options).await;
    eprintln!("{}", outcome.report);
    assert!(
        outcome.report.is_clean(),
        "loss across graceful restarts:\n{}\nbroker log:\n{}",
        outcome.report,
        outcome.log_tail
    );
    assert!(outcome.report.owed > 1000, "{}", outcome.report);
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = crash_checker::data_dir(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Publishes `payloads` at QoS 1 from a non-persistent client; each must be acknowledged.
async fn publish_all(broker: &BrokerProcess, payloads: impl IntoIterator<Item = String>) {
    let mut publisher = Client::tcp(broker.addr(), V5).await;
    publisher.connect(Connect::new(V5, "pub")).await;
    for payload in payloads {
        let code = publisher
            .publish("t", payload.as_bytes(), QoS::AtLeastOnce, false)
            .await;
        assert_eq!(code.map(|c| c.0), Some(0));
    }
    publisher.disconnect().await;
}

/// A persistent subscriber to `t`, offline, with `m0..m{QUEUED}` queued (acknowledged to
/// the publisher); then the broker is killed.
async fn queued_then_killed(dir: &Path, durability: &str) -> BrokerProcess {
    let mut broker = BrokerProcess::start(&BrokerConfig::new(dir, durability));
    let (mut sub, _) = broker.persistent("sub").await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    publish_all(&broker, (0..QUEUED).map(|i| format!("m{i}"))).await;
    broker.stop(Stop::Kill);
    broker
}

/// The subscriber's session comes back and delivers what it had queued; returns the
/// payloads.
async fn drain_subscriber(broker: &BrokerProcess) -> Vec<String> {
    let (mut sub, present) = broker.persistent("sub").await;
    assert!(present, "the session survived");
    let mut got = Vec::new();
    while let Some(packet) = sub.recv_within(Duration::from_millis(500)).await {
        if let Packet::Publish(publish) = packet {
            got.push(String::from_utf8_lossy(publish.payload()).into_owned());
            sub.ack(&publish).await;
        }
    }
    sub.disconnect().await;
    got
}

fn payloads(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// After recovery from damage, the log goes on from the cut: a message acknowledged now
/// survives the next kill.
async fn log_goes_on_after_recovery(broker: &mut BrokerProcess) {
    publish_all(broker, ["after".to_owned()]).await;
    broker.stop(Stop::Kill);
    broker.restart();
    assert_eq!(drain_subscriber(broker).await, ["after"]);
}

/// Whether the frame holds an `Out` record (a queued message), alone or with its body.
fn holds_out(frame: &damage::Frame) -> bool {
    match &frame.record {
        Some(Record::Out(_)) => true,
        Some(Record::Batch(records)) => records.iter().any(|r| matches!(r, Record::Out(_))),
        _ => false,
    }
}

/// The index of the last frame holding an `Out` record.
fn last_out(frames: &[damage::Frame]) -> usize {
    frames.iter().rposition(holds_out).expect("an Out frame")
}

/// How many `Out` frames come before frame `index`.
fn outs_before(frames: &[damage::Frame], index: usize) -> usize {
    frames[..index].iter().filter(|f| holds_out(f)).count()
}

/// A log truncated in the middle of its last message (a torn write): the broker starts,
/// logs where it cut, and every message before the torn one is delivered, in order.
#[tokio::test]
async fn torn_tail_is_cut_and_everything_before_it_kept() {
    let dir = fresh_dir("torn");
    let mut broker = queued_then_killed(&dir, "sync").await;
    let frames = damage::frames(&dir);
    let last = last_out(&frames);
    damage::tear_frame(&frames[last]);
    broker.restart();
    assert!(
        broker.logged("write-ahead log read"),
        "{}",
        broker.log_tail(20)
    );
    let kept = outs_before(&frames, last);
    assert_eq!(kept, QUEUED - 1);
    assert_eq!(drain_subscriber(&broker).await, payloads(0..kept));
    log_goes_on_after_recovery(&mut broker).await;
    broker.stop(Stop::Term);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Garbage after the last frame (a write that never completed its header): ignored,
/// nothing lost.
#[tokio::test]
async fn garbage_after_the_tail_is_ignored() {
    let dir = fresh_dir("garbage");
    let mut broker = queued_then_killed(&dir, "write").await;
    let frames = damage::frames(&dir);
    let end = frames.last().expect("frames");
    damage::write_at(
        &end.segment,
        end.offset + end.len,
        b"\x17\x00\x00\x00garbage!garbage!",
    );
    broker.restart();
    assert!(
        broker.logged("write-ahead log read"),
        "{}",
        broker.log_tail(20)
    );
    assert_eq!(drain_subscriber(&broker).await, payloads(0..QUEUED));
    log_goes_on_after_recovery(&mut broker).await;
    broker.stop(Stop::Term);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A flipped byte inside a frame in the middle of the log: the CRC catches it, recovery
/// stops there (later frames are not replayed after a gap) and keeps everything before.
#[tokio::test]
async fn flipped_byte_stops_recovery_at_that_frame() {
    let dir = fresh_dir("flip");
    let mut broker = queued_then_killed(&dir, "sync").await;
    let frames = damage::frames(&dir);
    // The third Out record from the end.
    let outs: Vec<usize> = (0..frames.len())
        .filter(|&i| holds_out(&frames[i]))
        .collect();
    let damaged = outs[outs.len() - 3];
    damage::flip_byte_in(&frames[damaged]);
    broker.restart();
    assert!(broker.logged("CRC mismatch"), "{}", broker.log_tail(20));
    let kept = outs_before(&frames, damaged);
    assert_eq!(drain_subscriber(&broker).await, payloads(0..kept));
    log_goes_on_after_recovery(&mut broker).await;
    broker.stop(Stop::Term);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint whose middle is garbled: the broker logs it, moves it aside (kept for
/// inspection), recovers from the log alone and starts. What the log holds after the
/// checkpoint's cut is there (a session opened since, its subscription and queued
/// messages); what only the checkpoint held is gone: that is the documented price of a
/// corrupt checkpoint (the log before it was recycled).
#[tokio::test]
async fn corrupt_checkpoint_is_moved_aside_and_the_log_replayed() {
    let dir = fresh_dir("badsnap");
    let mut broker = queued_then_killed(&dir, "sync").await;
    broker.restart();
    // A graceful stop writes a checkpoint (once the broker handles SIGTERM: after a round
    // trip, not right after it logs that it listens).
    round_trip(&broker).await;
    let status = broker.stop(Stop::Term);
    let checkpoint = damage::checkpoint_path(&dir);
    let size = std::fs::metadata(&checkpoint)
        .unwrap_or_else(|e| {
            panic!(
                "no checkpoint after SIGTERM ({e}, {status:?}):\n{}",
                broker.log_tail(20)
            )
        })
        .len();
    // After the checkpoint: a new session with messages queued on another topic, only in
    // the log.
    broker.restart();
    let (mut late, _) = broker.persistent("late").await;
    late.subscribe("u", QoS::AtLeastOnce).await;
    late.disconnect().await;
    let mut publisher = Client::tcp(broker.addr(), V5).await;
    publisher.connect(Connect::new(V5, "pub")).await;
    for i in 0..5 {
        let code = publisher
            .publish("u", format!("n{i}").as_bytes(), QoS::AtLeastOnce, false)
            .await;
        assert_eq!(code.map(|c| c.0), Some(0));
    }
    broker.stop(Stop::Kill);

    damage::write_at(&checkpoint, size / 2, b"\xde\xad\xbe\xef");
    broker.restart();
    assert!(
        broker.logged("checkpoint unreadable"),
        "{}",
        broker.log_tail(20)
    );
    let aside = std::fs::read_dir(&dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("checkpoint") && name != "checkpoint.snap"
        });
    assert!(aside, "the corrupt checkpoint was kept aside");
    let (mut late, present) = broker.persistent("late").await;
    assert!(
        present,
        "the session journaled after the checkpoint is back"
    );
    for i in 0..5 {
        let publish = late.expect_publish_acked().await;
        assert_eq!(publish.payload(), format!("n{i}").as_bytes());
    }
    late.disconnect().await;
    // What the corrupt checkpoint held may be gone, or back from the log: the log is kept
    // back to the checkpoint before it (bodies there may be referred to after the cut).
    broker.stop(Stop::Term);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until a SIGTERM will reach the broker's handler: a connection round trip, then
/// 300 ms. `tern` logs that it listens (and its listener tasks serve clients) before its
/// main task installs the SIGTERM handler; a SIGTERM in between ends it by the default
/// action, with no last checkpoint (seen under load: exit by signal 15).
async fn round_trip(broker: &BrokerProcess) {
    let mut client = Client::tcp(broker.addr(), V5).await;
    client.connect(Connect::new(V5, "ping")).await;
    client.ping().await;
    client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// A crash while a checkpoint was being written leaves `checkpoint.tmp` half written: it is
/// not the checkpoint, and everything is there.
#[tokio::test]
async fn half_written_checkpoint_tmp_is_ignored() {
    let dir = fresh_dir("snaptmp");
    let mut broker = queued_then_killed(&dir, "sync").await;
    broker.restart();
    round_trip(&broker).await;
    let status = broker.stop(Stop::Term);
    assert!(
        damage::checkpoint_path(&dir).exists(),
        "no checkpoint after SIGTERM ({status:?}):\n{}",
        broker.log_tail(20)
    );
    std::fs::write(dir.join("checkpoint.tmp"), b"TERNSNAP\x01\x00half").expect("write tmp");
    broker.restart();
    assert_eq!(drain_subscriber(&broker).await, payloads(0..QUEUED));
    broker.stop(Stop::Term);
    let _ = std::fs::remove_dir_all(&dir);
}
