//! Crash consistency of the real `tern` binary (issue #11): the checker in
//! `tern_tests::crash_checker` loads it with QoS 1/2 publishers and persistent subscribers
//! and SIGKILLs it at random moments, restarting it on the same data directory. With
//! durability `sync` or `write` nothing the broker acknowledged may be lost (a process kill
//! leaves written data in the OS); with `none` the same checker must see loss, which
//! proves it can fail.

use std::time::Duration;

use tern_broker::journal::record::Record;
use tern_codec::{Packet, PacketId, PubComp, PubRec, PubRel, Publish, PublishQoS, QoS};
use tern_tests::crash_checker::{
    self, damage, BrokerConfig, BrokerProcess, Options, Outcome, Stop,
};

fn assert_nothing_acknowledged_lost(outcome: &Outcome) {
    let report = &outcome.report;
    eprintln!("{report}");
    assert!(
        report.is_clean(),
        "loss, duplicate or reorder after SIGKILL (seed {:#x}):\n{report}\nbroker log:\n{}",
        outcome.options.seed,
        outcome.log_tail
    );
    assert!(
        report.acked > 500,
        "too little load to mean anything: {report}"
    );
    assert!(report.owed > 1000, "too few deliveries owed: {report}");
    assert!(report.starts > outcome.options.cycles, "{report}");
}

/// Eight SIGKILLs under load, durability `sync` (acknowledged after fdatasync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_sync_loses_nothing_acknowledged() {
    let mut options = Options::new("sync", "sync");
    options.cycles = 10;
    assert_nothing_acknowledged_lost(&crash_checker::run(options).await);
}

/// Five SIGKILLs under load, durability `write` (acknowledged after write(2)): a process
/// kill leaves what was written in the page cache, so the guarantee is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_write_loses_nothing_acknowledged() {
    let options = Options::new("write", "write");
    assert_nothing_acknowledged_lost(&crash_checker::run(options).await);
}

/// The checker can fail: with durability `none` (checkpoints only, and none within the
/// run) a SIGKILL loses acknowledged messages and sessions, and the checker says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_durability_none_is_caught_losing() {
    let mut options = Options::new("none", "none");
    options.cycles = 3;
    options.checkpoint_interval_secs = 3600;
    let outcome = crash_checker::run(options).await;
    eprintln!("{}", outcome.report);
    assert!(
        outcome.report.loss_detected(),
        "durability none survived SIGKILLs: the checker cannot see loss\n{}",
        outcome.report
    );
    assert!(outcome.report.lost_count > 0, "{}", outcome.report);
}

/// The long run (issue #11: "a longer one"): `TERN_CRASH_CYCLES` SIGKILLs (default 200)
/// with `TERN_CRASH_DURABILITY` (default `sync`); prints the summary. Not in CI:
/// `cargo test -p tern-tests --test crash crash_loop_long -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by hand"]
async fn crash_loop_long() {
    let env = |key: &str, default: &str| std::env::var(key).unwrap_or_else(|_| default.into());
    let durability = env("TERN_CRASH_DURABILITY", "sync");
    let mut options = Options::new("long", &durability);
    options.cycles = env("TERN_CRASH_CYCLES", "200").parse().expect("a number");
    options.max_messages_per_publisher = u64::MAX;
    let started = std::time::Instant::now();
    let outcome = crash_checker::run(options).await;
    eprintln!(
        "{} cycles in {:?}",
        outcome.options.cycles,
        started.elapsed()
    );
    assert_nothing_acknowledged_lost(&outcome);
}

/// Found by the checker as QoS 2 duplicates after SIGKILL: the broker used to journal the
/// copy of a QoS 2 PUBLISH queued for each persistent subscriber in one frame and the
/// `Qos2Received` record of the publisher's packet id in a later one. A crash between the
/// two commits kept the copies but forgot the id; the publisher, which never got its
/// PUBREC, resends with DUP and the same packet id ([MQTT-4.3.3]), and the message was
/// routed again: QoS 2 delivered twice. Now the copies and the id are one frame (a journal
/// batch): the test checks that they are, then cuts the log right before that frame (the
/// crash point that used to duplicate) and checks the resend is delivered exactly once.
#[tokio::test]
async fn qos2_resend_after_a_crash_between_route_and_received_id_is_delivered_once() {
    let dir = crash_checker::data_dir("qos2-cut");
    let _ = std::fs::remove_dir_all(&dir);
    let mut broker = BrokerProcess::start(&BrokerConfig::new(&dir, "sync"));
    let (mut sub, _) = broker.persistent("sub").await;
    sub.subscribe("x", QoS::ExactlyOnce).await;
    sub.disconnect().await;
    let (mut publisher, _) = broker.persistent("pub").await;
    let id = PacketId::new(1).expect("non-zero");
    let publish = Publish::new("x", b"once".to_vec()).with_qos(PublishQoS::ExactlyOnce(id));
    publisher.send(&Packet::Publish(publish.clone())).await;
    match publisher.recv().await {
        Packet::PubRec(rec) => assert_eq!(rec.packet_id, id),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    broker.stop(Stop::Kill);
    drop(publisher);

    // The copy for the subscriber and the received id are in one frame: a crash keeps
    // both or neither. Cut the log before it, as a crash just before its commit would.
    let frames = damage::frames(&dir);
    let holds = |f: &damage::Frame, want: fn(&Record) -> bool| match &f.record {
        Some(Record::Batch(records)) => records.iter().any(want),
        Some(record) => want(record),
        None => false,
    };
    let received = frames
        .iter()
        .rposition(|f| holds(f, |r| matches!(r, Record::Qos2Received { .. })))
        .expect("a frame with the Qos2Received id");
    assert!(
        holds(&frames[received], |r| matches!(r, Record::Out(_))),
        "the copy for the subscriber is in the same frame as the id"
    );
    damage::cut_log_at(&dir, &frames[received]);
    broker.restart();

    // The publisher resends what got no PUBREC, with DUP and the same packet id.
    let (mut publisher, present) = broker.persistent("pub").await;
    assert!(present);
    let mut resend = publish;
    resend.dup = true;
    publisher.send(&Packet::Publish(resend)).await;
    match publisher.recv().await {
        Packet::PubRec(rec) => assert_eq!(rec.packet_id, id),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    publisher.send(&Packet::PubRel(PubRel::new(id))).await;
    assert!(matches!(publisher.recv().await, Packet::PubComp(_)));

    // The subscriber, as a QoS 2 receiver: a new packet id is a new message.
    let (mut sub, present) = broker.persistent("sub").await;
    assert!(present);
    let mut delivered = 0;
    while let Some(packet) = sub.recv_within(Duration::from_millis(500)).await {
        match packet {
            Packet::Publish(p) => {
                assert_eq!(p.payload(), b"once");
                delivered += 1;
                let id = p.packet_id().expect("QoS 2");
                sub.send(&Packet::PubRec(PubRec::new(id))).await;
            }
            Packet::PubRel(rel) => {
                sub.send(&Packet::PubComp(PubComp::new(rel.packet_id)))
                    .await
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    broker.stop(Stop::Term);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(delivered, 1, "QoS 2 message delivered {delivered} times");
}
